"""Checkpoints: written atomically, loaded with weights_only=True, checked against the plan.

A checkpoint holds plain tensors and JSON-able values only:
{"format": 1, "network_weights", "optimizer_state", "scaler_state" (or None), "epoch" (epochs done),
 "planned_epochs", "iterations_per_epoch", "validation_iterations", "log" {name: [per-epoch values]}, "best_ema",
 "batches_drawn" {"train", "validation"} (where a resumed run continues its data streams), "identity" {dataset_name,
 configuration, architecture, patch_size, fingerprint_signature}, "inference" {"mirror_axes": [...], "precision": ...},
 "precision_checked"}
"""

from __future__ import annotations

import re
from pathlib import Path

from autoseg.artifacts import write_atomic
from autoseg.errors import CheckpointError
from autoseg.network.architecture import Architecture
from autoseg.planning.plans import Plans
from autoseg.workspace import CHECKPOINT_NAMES, checkpoint_file_name

CHECKPOINT_FORMAT = 1
# How torch's weights-only unpickler begins its refusal of a file that holds pickled Python objects.
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


def save_checkpoint(state: dict, path: Path) -> Path:
    import torch

    return write_atomic(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp))


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint saves that were killed before their rename
    (`autoseg.artifacts.write_atomic` names them .NAME.XXXX.tmp); returns what was removed."""
    removed = []
    for which in CHECKPOINT_NAMES:
        for path in sorted(Path(folder).glob(f".{checkpoint_file_name(which)}.*.tmp")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint (the file is empty); "
                              "delete it or resume from another one")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on an unusual pickle protocol: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if WEIGHTS_ONLY_REFUSAL in str(e):
            raise CheckpointError(_pickled_code_message(path, str(e))) from None
        raise _damaged(path, e) from None
    except Exception as e:  # noqa: BLE001 - whatever torch raises on bytes it cannot parse, the file is unusable
        raise _damaged(path, e) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an autoseg checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def _pickled_code_message(path: Path, torch_message: str) -> str:
    """A checkpoint holding Python objects beyond tensors and plain containers: unpickling it could run
    any code, so it is never loaded (torch names the first such object "GLOBAL module.name")."""
    found = re.search(r"GLOBAL (\S+)", torch_message)
    what = f" (it names {found.group(1)})" if found else ""
    return (f"{path}: not a weights-only checkpoint: it holds pickled Python objects{what}, and unpickling them "
            "could run code, so autoseg refuses to; use a checkpoint written by autoseg")


def _damaged(path: Path, error: Exception) -> CheckpointError:
    # The first line of torch's message, or the exception's name when it has none.
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
    return CheckpointError(f"{path}: damaged or truncated checkpoint ({reason}); delete it or resume from another one")


def resume_schedule(folder: Path) -> dict:
    """The schedule the run in the fold folder `folder` was training with ({"epochs", "iterations_per_epoch",
    "validation_iterations"}, those its checkpoint records), from its latest checkpoint else its final
    one; {} without a readable checkpoint (the trainer then says what is wrong).
    Memory-mapped: the weights are not read."""
    import torch

    for which in ("latest", "final"):
        path = Path(folder) / checkpoint_file_name(which)
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
    """Refuse a checkpoint made for another plan (different dataset, network, patch or data)."""
    found, expected = dict(state.get("identity", {})), dict(expected)
    for identity in (found, expected):
        # Compared as Architecture.to_json writes them: fields added since a checkpoint was saved take their
        # defaults (conv_block "plain"), and defaults are left out on both sides.
        if isinstance(identity.get("architecture"), dict):
            try:
                identity["architecture"] = Architecture.from_json(identity["architecture"]).to_json()
            except TypeError:  # a field this version does not know: differs, reported below
                pass
    for key in ("dataset_name", "configuration", "architecture", "patch_size", "fingerprint_signature"):
        if found.get(key) != expected.get(key):
            # An architecture is too long for a one-line message; the other values are short.
            values = "" if key == "architecture" else f": checkpoint {found.get(key)!r}, plan {expected.get(key)!r}"
            raise CheckpointError(f"{path}: checkpoint was trained for a different plan ({key} differs{values}); "
                                  "re-plan or train from scratch")
