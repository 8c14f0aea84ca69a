"""Checkpoints: written atomically, loaded with weights_only=True, checked against the plan.

A checkpoint holds plain tensors and JSON-able values only:
{"format": 1, "network_weights", "optimizer_state", "scaler_state" (or None), "epoch" (epochs done),
 "planned_epochs", "iterations_per_epoch", "validation_iterations", "log" {name: [per-epoch values]}, "best_ema",
 "batches_drawn" {"train", "validation"} (where a resumed run continues its data streams), "identity" {dataset_name,
 configuration, architecture, patch_size, fingerprint_signature}, "inference" {"mirror_axes": [...], "precision": ...},
 "precision_checked"}
"""

from __future__ import annotations

from pathlib import Path

from autoseg.artifacts import write_atomic
from autoseg.errors import CheckpointError
from autoseg.planning.plans import Plans

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, path: Path) -> Path:
    import torch

    return write_atomic(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp))


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint saves that were killed before their rename
    (`autoseg.artifacts.write_atomic` names them .NAME.XXXX.tmp); returns what was removed."""
    removed = []
    for path in sorted(Path(folder).glob(".checkpoint_*.pt.*.tmp")):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        # The first line of torch's message, or the exception's name when it has none (an empty file).
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({reason}); "
                              "delete it or resume from another one") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an autoseg checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def resume_schedule(folder: Path) -> dict:
    """The schedule the run in `folder` was training with ({"epochs", "iterations_per_epoch",
    "validation_iterations"}, those its checkpoint records), from checkpoint_latest.pt else
    checkpoint_final.pt; {} without a readable checkpoint (the trainer then says what is wrong).
    Memory-mapped: the weights are not read."""
    import torch

    for name in ("checkpoint_latest.pt", "checkpoint_final.pt"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - damaged: load_checkpoint reports it when the trainer resumes
            return {}
        keys = {"planned_epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch",
                "validation_iterations": "validation_iterations"}
        return {ours: int(state[key]) for key, ours in keys.items() if isinstance(state, dict) and key in state}
    return {}


def identity_of_configuration(plans: Plans, configuration_name: str) -> dict:
    """What a checkpoint must match to be used with a plan."""
    configuration = plans.configuration(configuration_name)
    return {
        "dataset_name": plans.dataset_name,
        "configuration": configuration_name,
        "architecture": configuration.architecture.to_json(),
        "patch_size": list(configuration.patch_size),
        "fingerprint_signature": plans.fingerprint_signature,
    }


def check_identity(state: dict, expected: dict, path: Path) -> None:
    """Refuse a checkpoint made for another plan (different network, patch or dataset)."""
    found = state.get("identity", {})
    for key in ("dataset_name", "configuration", "architecture"):
        if found.get(key) != expected.get(key):
            raise CheckpointError(f"{path}: checkpoint was trained for a different plan ({key} differs); "
                                  "re-plan or train from scratch")
