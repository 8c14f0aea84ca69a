"""Compute-aware planning on this machine: what `solve_budget` chooses per time budget, and how far the
cost model's predicted seconds per iteration are from a few real training steps of the chosen network.

    .venv/bin/python bench/plan_budget.py [--quick] [--device cpu] [--cache PATH] [--refresh]

Datasets (fingerprints built here, no data needed):
  thick_mri: 30 MRI cases of 24 x 256 x 256 voxels at 6 x 0.8 x 0.8 mm (nnU-Net plans 24x256x256);
  demo_ct:   20 CT cases of 40 x 64 x 64 voxels at 2 x 1 x 1 mm (the size of `autoseg demo`).
Budgets: 15m, 30m, 2h, 8h (--quick: 15m and 2h) for one fold of 3d_fullres.

Steps: the micro-benchmark of each dataset's probes at fp32 and, where the device offers it, bf16
(`measure_speeds`, as `autoseg plan --time-budget`; cached in --cache, default
/tmp/autoseg_bench_device_speed.json; --refresh measures again); then per budget the decision
(`best_decision`: the precision whose plan loses the least) and the MEASURED median seconds of
--steps timed training iterations (after one warm-up) of the chosen patch/width/batch at that precision,
plus on a CPU the measured seconds to sample and augment one batch (the loader worker shares the cores,
as the prediction assumes). Wall-clock: on a shared machine the load average
(printed) tells how much of the error is contention.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from autoseg.fingerprint import ChannelIntensity, Fingerprint
from autoseg.planning import plan_experiment
from autoseg.budget.candidates import candidate_architecture
from autoseg.budget.solver import apply_budget
from autoseg.planning.time_budget import format_duration, parse_duration
from autoseg.budget.compute_aware import best_decision, measure_speeds
from autoseg.budget.measurement import time_data_pipeline, time_training_iteration
from autoseg.budget.speed import Probe
from autoseg.device import cpu_supports_bf16

INTENSITY = ChannelIntensity(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                             percentile_99_5=1.0)
BUDGETS = ["15m", "30m", "2h", "8h"]
QUICK_BUDGETS = ["15m", "2h"]
CONFIGURATION = "3d_fullres"


def fingerprint(name: str, modality: str, num_cases: int, shape: list[float], spacing: list[float]) -> Fingerprint:
    return Fingerprint(dataset_name=name, modality={"0": modality}, labels={"0": "background", "1": "organ"},
                       num_cases=num_cases, median_spacing=spacing, spacing_percentile_10=spacing,
                       median_cropped_shape=shape, median_relative_size_after_cropping=1.0,
                       intensity_per_channel={"0": INTENSITY})


DATASETS = {
    "thick_mri": fingerprint("Task900_ThickMRI", "T2", 30, [24.0, 256.0, 256.0], [6.0, 0.8, 0.8]),
    "demo_ct": fingerprint("Task901_DemoCT", "CT", 20, [40.0, 64.0, 64.0], [2.0, 1.0, 1.0]),
}


def measured_speeds(plans, device: str, cache: str, refresh: bool):
    """The 3D measurements `autoseg plan --time-budget` uses (cached in `cache`), printed with their fit."""
    started = time.perf_counter()
    speeds = measure_speeds(plans, device, Path(cache), refresh=refresh)[3]
    took = time.perf_counter() - started
    for speed in speeds:
        precision = speed.precision
        m = speed.model
        print(f"  {precision}: cost model {m.seconds_fixed:.3f} s + {m.seconds_per_element:.3g} s/element + "
              f"{m.seconds_per_mac:.3g} s/MAC; worst fit error on the probes {speed.max_relative_error:.1%}; "
              f"benchmark {speed.measured_seconds:.1f} s ({'cached' if took < 0.5 * speed.measured_seconds else 'measured now'})")
        if speed.data_pipeline is not None:
            d = speed.data_pipeline
            print(f"      data pipeline per batch: {d.seconds_fixed:.3f} s + {d.seconds_per_voxel:.3g} s/voxel")
        for s in speed.samples:
            print(f"      probe patch {s.patch_size} width {s.features_per_stage[0]} batch {s.batch_size}: "
                  f"{s.seconds:.3f} s measured, {m.seconds(s.elements, s.macs):.3f} s fitted")
    return speeds


def run_dataset(name: str, budgets: list[str], device: str, cache: str, refresh: bool, steps: int) -> list[str]:
    fp = DATASETS[name]
    plans = plan_experiment(fp)
    planned = plans.configuration(CONFIGURATION)
    print(f"\n{name}: plan {CONFIGURATION} patch {planned.patch_size} batch {planned.batch_size} "
          f"features {planned.architecture.features_per_stage}")
    speeds = measured_speeds(plans, device, cache, refresh)
    for speed in speeds:
        print(f"  planned network at {speed.precision}: predicted "
              f"{speed.seconds_per_iteration(planned.architecture, planned.patch_size, planned.batch_size):.1f} s/it")
    rows = []
    for budget in budgets:
        seconds = parse_duration(budget)
        # The precision is chosen as `autoseg plan` chooses it: the one whose decision loses the least.
        decision = best_decision(plans, CONFIGURATION, seconds, speeds, fp.num_cases)
        apply_budget(plans, CONFIGURATION, decision)  # validates the budgeted configuration
        architecture = candidate_architecture(planned, decision.patch_size, decision.base_features)
        probe = Probe(architecture, decision.patch_size, decision.batch_size)
        import torch

        network = time_training_iteration(probe, torch.device(device), decision.precision, warmup_steps=1,
                                          timed_steps=steps, clock=time.perf_counter, seed=0)
        # On a CPU the loader worker shares the cores, so an iteration costs network + data (as predicted).
        data = (time_data_pipeline(decision.patch_size, decision.batch_size, architecture.input_channels, steps,
                                   time.perf_counter, seed=0) if device == "cpu" else 0.0)
        measured = network + data
        error = (decision.seconds_per_iteration - measured) / measured
        other = ", ".join(f"{p} {s:.2f}" for p, s in decision.seconds_per_iteration_by_precision.items()
                          if p != decision.precision)
        rows.append(f"| {name} | {budget} | {decision.patch_size} | {decision.base_features} | {decision.batch_size} | "
                    f"{decision.epochs} x {decision.iterations_per_epoch} | {decision.precision} | "
                    f"{decision.seconds_per_iteration:.2f} | {network:.2f} + {data:.2f} | {error:+.0%} | "
                    f"{format_duration(decision.seconds_per_fold)} | {format_duration(decision.seconds_final_validation)} | "
                    f"{other} | {os.getloadavg()[0]:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="budgets 15m and 2h only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default="/tmp/autoseg_bench_device_speed.json")
    parser.add_argument("--refresh", action="store_true", help="measure again even when cached")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per chosen candidate")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, hardware bf16: {cpu_supports_bf16()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.datasets:
        rows += run_dataset(name, QUICK_BUDGETS if args.quick else BUDGETS, args.device, args.cache, args.refresh, args.steps)
    print("\n| dataset | budget | patch | width | batch | epochs x its | precision | predicted s/it | measured s/it "
          "(network + data) | error | predicted fold | of which final val. | other precision s/it | load |")
    print("|" + "---|" * 14)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
