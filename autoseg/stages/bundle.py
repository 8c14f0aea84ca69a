"""export-model and import-model: which files of a workspace a model bundle takes, and installing one.

A bundle (`autoseg.bundle`) holds what `predict` reads for the configurations it was exported with:
the task's plans.json, each chosen fold's final checkpoint and the plan it was trained with, find-best's
choice when it is the exported configurations, the postprocessing decision (applied as in the workspace,
whichever configuration predicts), dataset.json's description of the task without its case lists, and
the earlier stages of a cascade. Unpacked, it is a workspace of its own, so prediction from a bundle runs
the same code as prediction in a workspace (`autoseg.api.load_models`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from autoseg.artifacts import read_json
from autoseg.bundle import BundleContents, BundleManifest, check_part, extract_bundle, member_name, write_bundle
from autoseg.errors import BundleError, WorkspaceError
from autoseg.planning.plans import Plans
from autoseg.selection import load_choice
from autoseg.stages.choice import default_prediction_configurations
from autoseg.workspace import Workspace

# The checkpoint a bundle carries of each fold.
BUNDLED_CHECKPOINT = "final"
# dataset.json keys that describe the task rather than list its cases (case file names stay home).
DESCRIPTION_KEYS = ("name", "description", "reference", "licence", "release", "tensorImageSize", "modality",
                    "channel_names", "labels", "regions", "regions_class_order", "pixel_spacing", "file_ending")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: BundleManifest
    # With --onnx: "CONFIG fold F" -> the max probability difference of its ONNX network against torch fp32.
    onnx_parity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportResult:
    task: str  # the name it was installed under
    manifest: BundleManifest


def with_previous_stages(plans: Plans, configurations: Sequence[str]) -> list[str]:
    """The configurations and, after each cascade stage, the stages it predicts from."""
    packed: list[str] = []
    for name in configurations:
        while name and name not in packed:
            packed.append(name)
            name = plans.configuration(name).previous_stage
    return packed


def dataset_description(workspace: Workspace, task_name: str, plans: Plans) -> dict:
    """dataset.json without its case lists: the imported one, else the raw one, else from the plan."""
    imported = workspace.task_results(task_name).dataset_file
    raw = workspace.current_dataset_folder(task_name)
    source = imported if imported.is_file() else raw / "dataset.json" if raw else None
    if source is None or not source.is_file():
        return {"name": task_name, "modality": dict(plans.modality), "labels": dict(plans.labels)}
    meta = read_json(source)
    return {key: meta[key] for key in DESCRIPTION_KEYS if key in meta}


def bundle_contents(workspace: Workspace, task_name: str, configurations: Sequence[str] | None,
                    folds: Sequence[str] | None, scratch: Path) -> BundleContents:
    """The files of an export. Those made for it go to `scratch`: dataset.json's description (and the
    ONNX networks of `add_onnx_networks`: a member may be any file under results/)."""
    plans = Plans.load(workspace.plans_file(task_name))
    results = workspace.task_results(task_name)
    chosen = list(configurations) if configurations else default_prediction_configurations(results, plans,
                                                                                            BUNDLED_CHECKPOINT)
    packed = with_previous_stages(plans, chosen)
    files = {member_name(workspace, task_name, workspace.plans_file(task_name)): workspace.plans_file(task_name)}
    folds_of = {}
    for name in packed:
        check_part(name, "configuration")
        folds_of[name] = [str(f) for f in folds] if folds else results.trained_folds(name, BUNDLED_CHECKPOINT)
        if not folds_of[name]:
            raise WorkspaceError(f"{results.configuration_folder(name)}: no fold has a final checkpoint to export")
        for fold in folds_of[name]:
            checkpoint = results.checkpoint_file(name, fold, BUNDLED_CHECKPOINT)
            if not checkpoint.is_file():
                raise WorkspaceError(f"{checkpoint}: not found (fold {fold} of {name} not trained to the end)")
            fold_files = [checkpoint, results.fold_plans_file(name, fold)]
            files.update((member_name(workspace, task_name, f), f) for f in fold_files if f.is_file())
    choice = load_choice(results)
    extra = [results.postprocessing_file]
    if choice is not None and sorted(choice.chosen) == sorted(chosen):
        extra += [results.selection_file, results.selection_table_file]
    files.update((member_name(workspace, task_name, f), f) for f in extra if f.is_file())
    description = scratch / "dataset.json"
    description.write_text(json.dumps(dataset_description(workspace, task_name, plans), indent=2) + "\n")
    files[member_name(workspace, task_name, results.dataset_file)] = description
    return BundleContents(task_name, chosen, folds_of, files)


def add_onnx_networks(workspace: Workspace, contents: BundleContents, scratch: Path) -> dict[str, float]:
    """Each bundled fold's network as ONNX (results/CONFIG/fold_F/network.onnx, dynamic batch and spatial
    axes), each checked against torch fp32 on a random patch (`onnx_export.check_parity`, < 1e-3 in
    probability, else an ExportError). Returns "CONFIG fold F" -> the measured difference."""
    import torch

    from autoseg.inference.model import load_trained_model
    from autoseg.network.onnx_export import check_parity, export_onnx

    plans = Plans.load(workspace.plans_file(contents.task))
    results = workspace.task_results(contents.task)
    parity, generator = {}, torch.Generator().manual_seed(0)
    for name, folds in contents.folds.items():
        for fold in folds:
            model = load_trained_model(results, plans, name, folds=[fold], checkpoint=BUNDLED_CHECKPOINT, device="cpu")
            architecture, patch = model.configuration.architecture, list(model.configuration.patch_size)
            target = scratch / name / f"fold_{fold}" / "network.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            onnx_model = export_onnx(model.networks[0], input_channels=architecture.input_channels,
                                     dimension=architecture.dimension, example_spatial=tuple(patch), path=target)
            image = torch.randn((1, architecture.input_channels, *patch), generator=generator)
            parity[f"{name} fold {fold}"] = check_parity(model.networks[0], onnx_model, image)
            contents.files[member_name(workspace, contents.task, results.onnx_file(name, fold))] = target
    return parity


def export_model(workspace: Workspace, bundle_path: Path, *, task: str | None = None,
                 configurations: Sequence[str] | None = None, folds: Sequence[str] | None = None,
                 onnx: bool = False) -> ExportResult:
    """Pack the task's models (default: find-best's choice, every fold with a final checkpoint); with
    `onnx`, each fold's network as ONNX too, checked against torch at export."""
    task_name = workspace.trained_task_name(task)
    with tempfile.TemporaryDirectory(prefix="autoseg-export-") as scratch:
        contents = bundle_contents(workspace, task_name, configurations, folds, Path(scratch))
        parity = add_onnx_networks(workspace, contents, Path(scratch)) if onnx else {}
        return ExportResult(Path(bundle_path), write_bundle(Path(bundle_path), contents), parity)


def check_bundle_request(manifest: BundleManifest, where: str, configurations: Sequence[str] | None,
                         folds: Sequence[str] | None, checkpoint: str) -> None:
    """Refuse, naming what the bundle holds, a prediction it cannot make."""
    held = "; ".join(f"{name} folds {','.join(f)}" for name, f in manifest.folds.items())
    if checkpoint != BUNDLED_CHECKPOINT:
        raise BundleError(f"{where}: a model bundle holds final checkpoints only, not --checkpoint {checkpoint}")
    for name in configurations or manifest.configurations:
        if name not in manifest.folds:
            raise BundleError(f"{where}: no configuration {name} in the bundle (it holds {held})")
        missing = [f for f in folds or [] if f not in manifest.folds[name]]
        if missing:
            raise BundleError(f"{where}: no fold {missing[0]} of {name} in the bundle (it holds {held})")


def import_model(workspace: Workspace, bundle_path: Path, *, task_name: str | None = None) -> ImportResult:
    """Install the bundle's task into the workspace (as `task_name` if given) and make it the current
    task. Every member is checked in a folder inside the workspace first, then moved in by renames."""
    workspace.home.mkdir(parents=True, exist_ok=True)
    staging = Workspace(Path(tempfile.mkdtemp(prefix=".import-", dir=workspace.home)))
    try:
        manifest = extract_bundle(bundle_path, staging, task_name)
        name = task_name or manifest.task
        results, plans = workspace.task_results(name).root, workspace.plans_file(name)
        existing = results if results.exists() else plans
        if existing.exists():
            raise WorkspaceError(f"{workspace.home} already has a task {name} ({existing}); import with "
                                 "--task-name NEW, or remove it first")
        results.parent.mkdir(parents=True, exist_ok=True)
        plans.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging.task_results(name).root, results)
        os.replace(staging.plans_file(name), plans)
    finally:
        shutil.rmtree(staging.home, ignore_errors=True)
    workspace.remember_task(name, None)
    return ImportResult(name, manifest)
