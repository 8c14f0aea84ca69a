"""A human-readable account of a plan: one column per configuration, stage tables, decision notes.

The notes are derived from the plan itself (not stored in plans.json), so they also describe plans a
user edited by hand.
"""

from __future__ import annotations

from autoseg.network.cost import flops_per_voxel, network_cost
from autoseg.planning import rules
from autoseg.planning.plans import Configuration, Plans, has_own_network
from autoseg.planning.time_budget import BudgetDecision, OverBudget, format_duration


def format_plan_summary(plans: Plans) -> str:
    configurations = {name: plans.configuration(name) for name in plans.configurations}
    budgets = [c.budget for c in configurations.values() if c.budget is not None]
    sized_for = f"a {plans.gpu_memory_gb:g} GB GPU" + (f" (ResEnc preset {plans.preset})" if plans.preset else "")
    if budgets:
        sized_for = (f"{format_duration(budgets[0].time_budget_seconds)} of training per fold on this machine's "
                     f"{budgets[0].device} (within {sized_for})")
    lines = [
        f"{plans.dataset_name}: plans for {sized_for}",
        f"transpose: forward {plans.transpose_forward}, backward {plans.transpose_backward}",
        f"original median spacing (mm, transposed): {_xs(plans.original_median_spacing)}; "
        f"median shape after cropping: {_xs(plans.original_median_shape)}",
        "",
        _configuration_table(configurations),
    ]
    budgeted = {name: c for name, c in configurations.items() if c.budget is not None and c.over_budget is None}
    if budgeted:
        lines += ["", _budget_table(budgeted)]
    over_budget = [_over_budget_line(name, c.over_budget) for name, c in configurations.items() if c.over_budget]
    if over_budget:
        lines += ["", *over_budget]
    for name, configuration in configurations.items():
        if has_own_network(plans.configurations[name]):
            lines += ["", f"{name} stages:", _stage_table(configuration)]
    notes = decision_notes(plans)
    if notes:
        lines += ["", "notes:"] + [f"- {note}" for note in notes]
    return "\n".join(lines)


def decision_notes(plans: Plans) -> list[str]:
    """Why the plan looks as it does, one sentence per decision that departs from the obvious."""
    notes = []
    if plans.transpose_forward != sorted(plans.transpose_forward):
        notes.append(f"transposed: original axis {plans.transpose_forward[0]} has the coarsest spacing and comes first")
    names = plans.configurations
    if "3d_fullres" in names:
        fullres = plans.configuration("3d_fullres")
        median_coarse = plans.original_median_spacing[0]
        if abs(fullres.spacing[0] - median_coarse) > 1e-6:
            notes.append(f"anisotropic: coarse axis spacing {fullres.spacing[0]:.3g} mm from the 10th percentile "
                         f"instead of the median {median_coarse:.3g} mm")
        coverage = rules.patch_coverage(fullres.patch_size, fullres.median_shape)
        if "3d_lowres" in names:
            lowres = plans.configuration("3d_lowres")
            notes.append(f"3d_lowres: full-res patch covers {coverage:.0%} of the median image (< "
                         f"{rules.LOWRES_MIN_PATCH_COVERAGE:.0%}); low-res spacing {_xs(lowres.spacing, 3)} mm, "
                         f"its patch covers {rules.patch_coverage(lowres.patch_size, lowres.median_shape):.0%}")
        elif coverage < rules.LOWRES_MIN_PATCH_COVERAGE:
            notes.append(f"no 3d_lowres although the full-res patch covers {coverage:.0%} of the median image: "
                         f"a low-res image large enough for a {rules.LOWRES_MIN_PATCH_COVERAGE:.0%} patch would not be "
                         f"{rules.LOWRES_MIN_VOXEL_REDUCTION:g}x smaller")
        else:
            notes.append(f"no 3d_lowres: the full-res patch covers {coverage:.0%} of the median image")
        if any(k == 1 for k in fullres.architecture.kernel_sizes[0]):
            notes.append(f"3d_fullres first-stage kernel {fullres.architecture.kernel_sizes[0]}: thick axes "
                         "are convolved in-plane until pooling makes them similar")
    if "2d" in names and plans.configuration("2d").data_identifier == "3d_fullres":
        notes.append("2d reads the 3d_fullres arrays (same in-plane spacing), no separate preprocessing")
    first = plans.configuration(next(iter(names)))
    for index, channel in enumerate(sorted(plans.modality, key=int)):
        if first.use_mask_for_norm[index]:
            notes.append(f"channel {channel} ({plans.modality[channel]}): z-score inside the nonzero mask "
                         f"(cropping keeps <= {rules.USE_MASK_MAX_RELATIVE_SIZE:.0%} of the median volume)")
    return notes


def _configuration_table(configurations: dict[str, Configuration]) -> str:
    rows = {
        "dimension": lambda c: str(c.dimension),
        "target spacing (mm)": lambda c: _xs(c.spacing, 3),
        "median shape (voxels)": lambda c: _xs(c.median_shape),
        "patch size": lambda c: _xs(c.patch_size),
        "batch size": lambda c: str(c.batch_size),
        "network": lambda c: c.architecture.name,
        "parameters": lambda c: f"{network_cost(c.architecture, c.patch_size).parameters / 1e6:.1f}M",
        "FLOPs / voxel (forward)": lambda c: f"{flops_per_voxel(c.architecture, c.patch_size) / 1e6:.2f}M",
        "stages": lambda c: str(c.architecture.num_stages),
        "normalization": lambda c: ",".join(n + ("+mask" if m else "") for n, m in
                                            zip(c.normalization, c.use_mask_for_norm)),
        "batch dice": lambda c: str(c.batch_dice),
        "estimated memory (GB)": lambda c: f"{c.estimated_memory_gb:.2f}",
        "data identifier": lambda c: c.data_identifier,
        "inherits from": lambda c: c.inherits_from or "-",
        "previous / next stage": lambda c: f"{c.previous_stage or '-'} / {c.next_stage or '-'}",
    }
    header = [""] + list(configurations)
    table = [header] + [[label] + [cell(c) for c in configurations.values()] for label, cell in rows.items()]
    return _render(table)


def _over_budget_line(name: str, over_budget: OverBudget) -> str:
    return (f"{name} does not fit: one fold needs at least {format_duration(over_budget.minimum_budget_seconds)} "
            f"on {over_budget.device} ({over_budget.precision}), more than the "
            f"{format_duration(over_budget.time_budget_seconds)} budget; it keeps the unconstrained plan, and "
            f"`autoseg train {name}` runs only with an explicit --epochs (or re-plan with a larger --time-budget)")


def _budget_table(configurations: dict[str, Configuration]) -> str:
    """What compute-aware planning chose and the times its cost model predicts (one fold each)."""
    def seconds_per_iteration(b: BudgetDecision) -> str:
        others = [f"{p} {s:.3g}" for p, s in b.seconds_per_iteration_by_precision.items() if p != b.precision]
        return f"{b.seconds_per_iteration:.3g}" + (f" ({', '.join(others)})" if others else "")

    rows = {
        "time budget per fold": lambda b: format_duration(b.time_budget_seconds),
        "device, precision": lambda b: f"{b.device}, {b.precision}",
        "epochs x iterations": lambda b: f"{b.epochs} x {b.iterations_per_epoch}",
        "base features": lambda b: str(b.base_features),
        "patch (planned)": lambda b: f"{_xs(b.patch_size)} ({_xs(b.planned_patch_size)})",
        "batch (planned)": lambda b: f"{b.batch_size} ({b.planned_batch_size})",
        "predicted s / iteration": seconds_per_iteration,
        "predicted time / epoch": lambda b: format_duration(b.seconds_per_epoch),
        "final validation": lambda b: (format_duration(b.seconds_final_validation)
                                       + (", mirrored" if b.final_validation_mirroring else ", no mirroring")),
        "predicted time / fold": lambda b: format_duration(b.seconds_per_fold),
        "minimum budget": lambda b: format_duration(b.minimum_budget_seconds),
    }
    header = ["compute-aware plan"] + list(configurations)
    table = [header] + [[label] + [cell(c.budget) for c in configurations.values()] for label, cell in rows.items()]
    return _render(table)


def _stage_table(configuration: Configuration) -> str:
    architecture = configuration.architecture
    blocks = architecture.blocks_per_stage
    table = [["stage", "features", "stride", "kernel"] + (["residual blocks"] if blocks else [])]
    for stage in range(architecture.num_stages):
        table.append([str(stage), str(architecture.features_per_stage[stage]), _xs(architecture.strides[stage]),
                      _xs(architecture.kernel_sizes[stage])] + ([str(blocks[stage])] if blocks else []))
    return _render(table)


def _render(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table)


def _xs(values: list, digits: int | None = None) -> str:
    """[1.0, 0.7676, 0.7676] -> '1 x 0.768 x 0.768'."""
    return " x ".join(f"{v:.{digits}g}" if digits else f"{v:g}" for v in values)
