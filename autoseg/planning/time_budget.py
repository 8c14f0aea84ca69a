"""What compute-aware planning decided, as stored in plans.json, and durations as people write them.

`BudgetDecision` is a configuration's "budget" entry: the network, schedule and precision that train
one fold within the time budget, with the predictions they were chosen from (`autoseg.budget` makes
it). `OverBudget` is its "over_budget" entry when not even the cheapest network fits. Both live here,
beside the plan that holds them, so reading a plan never needs the solver.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from autoseg.errors import PlanError

BUDGET_SCHEMA_VERSION = 1


@dataclass
class BudgetDecision:
    """What `solve_budget` chose for one configuration and why; stored in plans.json as
    configurations[name]["budget"]. Seconds are predictions of the device's cost model."""

    configuration: str
    time_budget_seconds: float
    device: str
    precision: str
    patch_size: list[int]
    batch_size: int
    base_features: int
    features_per_stage: list[int]
    epochs: int
    iterations_per_epoch: int
    validation_iterations_per_epoch: int
    seconds_per_iteration: float  # predicted, one training iteration of the chosen candidate
    seconds_per_epoch: float  # training + validation + overhead
    seconds_final_validation: float  # sliding-window prediction of the fold's validation cases
    seconds_per_fold: float  # fold_total_seconds: epochs, their bookkeeping, final validation, start-up
    minimum_budget_seconds: float  # the cheapest rung of the ladder
    planned_patch_size: list[int]  # the unconstrained plan's, for comparison
    planned_batch_size: int
    planned_seconds_per_iteration: float
    patch_coverage: float  # patch volume / planned patch volume
    cost_model_max_relative_error: float
    seconds_per_iteration_by_precision: dict[str, float] = field(default_factory=dict)
    final_validation_mirroring: bool = True  # whether the fold's final validation mirrors (see solve_budget)
    schema_version: int = BUDGET_SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "budget") -> "BudgetDecision":
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema_version") != BUDGET_SCHEMA_VERSION:
            raise PlanError(f"{where}: schema_version {data.get('schema_version')!r}, expected "
                            f"{BUDGET_SCHEMA_VERSION}; re-run the planning with a time budget")
        expected = {f.name for f in fields(cls)}
        optional = {"seconds_per_iteration_by_precision", "final_validation_mirroring"}
        missing, unknown = sorted(expected - set(data) - optional), sorted(set(data) - expected)
        if missing or unknown:
            raise PlanError(f"{where}: missing fields {missing}, unknown fields {unknown}")
        return cls(**data)



@dataclass(frozen=True)
class OverBudget:
    """Set instead of a BudgetDecision when not even a configuration's cheapest network trains one fold
    within the budget: the configuration keeps the unconstrained plan, and `autoseg train` refuses it
    unless given an explicit schedule."""

    time_budget_seconds: float
    minimum_budget_seconds: float
    device: str
    precision: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "over_budget") -> "OverBudget":
        expected = {f.name: f.type for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != set(expected):
            raise PlanError(f"{where}: expected an object with exactly the fields {', '.join(expected)}")
        for name in expected:
            kind = str if name in ("device", "precision") else (int, float)
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise PlanError(f"{where}: field '{name}' is {data[name]!r}, of the wrong type")
        return cls(**data)


def format_duration(seconds: float) -> str:
    """'45s', '4m10s', '2h05m', '1d03h' (rounded up to the unit shown)."""
    seconds = int(math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = int(math.ceil(seconds / 60))
    if minutes < 24 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    hours = int(math.ceil(minutes / 60))
    return f"{hours // 24}d{hours % 24:02d}h"


def parse_duration(text: str) -> float:
    """Seconds in '90', '45s', '15m', '2h', '1h30m', '1d' (units d, h, m, s; a bare number is seconds)."""
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        return float(cleaned)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise PlanError(f"time budget {text!r}: expected e.g. '45m', '2h', '1h30m' or seconds")
    unit_seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return float(sum(float(n) * unit_seconds[u] for n, u in parts))
