"""The training loss a configuration names in plans.json, as plain data: `{"name": ..., parameters...}`.

    "loss": {"name": "tversky", "alpha": 0.3, "beta": 0.7}

A missing or null entry is the default, nnU-Net's Dice + CE (plans written before the field existed).
Omitted parameters take their defaults; a loaded configuration always holds the complete entry. The
losses themselves are `autoseg.training.loss` (its `LOSSES` registry has exactly these names).
"""

from __future__ import annotations

import math
from typing import Any

from autoseg.errors import PlanError

DEFAULT_LOSS = "dice_ce"
# name -> {parameter: default}; the references are in autoseg/training/loss.py.
LOSS_PARAMETERS: dict[str, dict[str, float]] = {
    "dice_ce": {"weight_ce": 1.0, "weight_dice": 1.0},
    "generalized_dice": {},
    "tversky": {"alpha": 0.3, "beta": 0.7},  # weights of false positives and false negatives (Salehi 2017)
    "focal_dice": {"gamma": 2.0, "weight_focal": 1.0, "weight_dice": 1.0},  # Lin 2017's gamma
}


def default_loss() -> dict:
    return {"name": DEFAULT_LOSS, **LOSS_PARAMETERS[DEFAULT_LOSS]}


def loss_from_json(data: Any, where: str) -> dict:
    """The complete loss entry (defaults filled in) of a configuration's `loss` field; PlanError naming
    the field when the name is unknown or a parameter is unknown, not a number, or out of range."""
    where = f"{where}: field 'loss'"
    if data is None:
        return default_loss()
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise PlanError(f"{where} is {data!r}, expected an object with a 'name' (one of {', '.join(LOSS_PARAMETERS)})")
    name = data["name"]
    if name not in LOSS_PARAMETERS:
        raise PlanError(f"{where}: unknown loss {name!r} (known: {', '.join(LOSS_PARAMETERS)})")
    defaults = LOSS_PARAMETERS[name]
    unknown = sorted(set(data) - {"name"} - set(defaults))
    if unknown:
        raise PlanError(f"{where}: loss {name!r} has no parameter {', '.join(map(repr, unknown))} "
                        f"(its parameters: {', '.join(defaults) or 'none'})")
    parameters = {**defaults, **{k: v for k, v in data.items() if k != "name"}}
    for key, value in parameters.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise PlanError(f"{where}: parameter {key!r} of loss {name!r} is {value!r}, expected a number >= 0")
    if name == "tversky" and not math.isclose(parameters["alpha"] + parameters["beta"], 1.0, abs_tol=1e-6):
        raise PlanError(f"{where}: tversky alpha + beta must be 1 (Salehi et al.), got "
                        f"{parameters['alpha']} + {parameters['beta']}")
    return {"name": name, **{k: float(v) for k, v in parameters.items()}}
