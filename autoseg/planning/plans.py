"""plans.json: the experiment plan every later stage reads (schema in docs/contracts.md).

`Plans.configurations` keeps the entries as stored, so a user can edit the file and derive a
configuration from another with `inherits_from` (e.g. `"3d_fullres_bs8": {"inherits_from":
"3d_fullres", "batch_size": 8}`). `Plans.configuration(name)` resolves the inheritance and returns a
validated `Configuration`. Loading validates every configuration with explicit checks and raises
`PlanError` naming the file, the configuration and the field.

Inheritance is a shallow merge, as in nnU-Net: each top-level key of the child replaces the parent's
(an `architecture` given in the child replaces the parent's architecture as a whole).
"""

from __future__ import annotations

import copy
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from autoseg.artifacts import read_json, write_json
from autoseg.errors import AutosegError, PlanError
from autoseg.fingerprint import ChannelIntensity
from autoseg.io import is_picture_spacing
from autoseg.network.architecture import ARCHITECTURES, Architecture
from autoseg.preprocessing.normalization import NORMALIZATION_SCHEMES
from autoseg.planning.time_budget import BudgetDecision, OverBudget

PLANS_SCHEMA_VERSION = 1


@dataclass
class Configuration:
    """One trainable configuration. Spacings/shapes are in the plan's transposed axis order.

    `spacing` and `median_shape` have 3 values also for 2D configurations (axis 0: the spacing and
    size of the arrays the 2D model slices, see planner); `patch_size` has `dimension` values.
    """

    dimension: int  # 2 or 3
    spacing: list[float]  # target spacing, mm
    median_shape: list[float]  # median image shape after resampling, voxels
    patch_size: list[int]  # voxels, a multiple of architecture.total_downsampling()
    batch_size: int
    batch_dice: bool
    normalization: list[str]  # per channel, one of NORMALIZATION_SCHEMES
    use_mask_for_norm: list[bool]  # per channel
    architecture: Architecture
    estimated_memory_gb: float
    data_identifier: str  # folder under preprocessed/TASK/ holding the arrays
    previous_stage: str | None = None
    next_stage: str | None = None
    inherits_from: str | None = None
    # Set by compute-aware planning (`autoseg plan --time-budget`): the schedule and precision to train
    # with and the timings they were predicted from; or, when not even the cheapest network fits,
    # `over_budget` instead (the entry keeps the unconstrained plan).
    budget: BudgetDecision | None = None
    over_budget: OverBudget | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "configuration", num_channels: int | None = None) -> "Configuration":
        """Build from a fully resolved entry (no missing fields); validate every field."""
        optional = {f.name for f in fields(cls) if f.default is not MISSING}
        _check_fields(data, {f.name for f in fields(cls)}, where, optional)
        data = {**{name: None for name in optional}, **data}
        architecture = _architecture_from_json(data["architecture"], f"{where}: field 'architecture'")
        budget = data["budget"] and BudgetDecision.from_json(data["budget"], f"{where}: field 'budget'")
        over_budget = data["over_budget"] and OverBudget.from_json(data["over_budget"], f"{where}: field 'over_budget'")
        configuration = cls(**{**data, "architecture": architecture, "budget": budget, "over_budget": over_budget})
        try:
            _validate_configuration(configuration, where, num_channels)
        except (TypeError, ValueError) as e:  # a field of the wrong JSON type
            raise PlanError(f"{where}: malformed configuration ({e})") from None
        return configuration


@dataclass
class Plans:
    dataset_name: str
    fingerprint_signature: str  # Fingerprint.dataset_signature the plan was made from
    modality: dict[str, str]  # channel index -> name
    labels: dict[str, str]  # label value -> name
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing: list[float]  # transposed order, mm
    original_median_shape: list[float]  # transposed order, voxels (after cropping)
    intensity_per_channel: dict[str, ChannelIntensity]
    gpu_memory_gb: float
    configurations: dict[str, dict]  # entries as stored: complete, or partial with inherits_from
    schema_version: int = PLANS_SCHEMA_VERSION

    @property
    def configuration_names(self) -> list[str]:
        return list(self.configurations)

    def configuration(self, name: str, where: str = "plans") -> Configuration:
        """The configuration `name` with its inheritance chain applied, validated."""
        if name not in self.configurations:
            raise PlanError(f"{where}: no configuration '{name}'; available: {', '.join(self.configurations)}")
        resolved = _resolve_inheritance(self.configurations, name, where)
        if resolved.get("previous_stage") and "architecture" not in self.configurations[name]:
            # A cascade stage inherits its parent's network but also reads the previous stage's
            # segmentation as one-hot channels, one per foreground label.
            architecture = dict(resolved["architecture"])
            architecture["input_channels"] = len(self.modality) + self.num_foreground_labels
            resolved = {**resolved, "architecture": architecture}
        return Configuration.from_json(resolved, f"{where}: configuration '{name}'", len(self.modality))

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        """(y, x) mm of the pictures a plan for 2D pictures was made for (dataset.json `pixel_spacing`, else
        1 x 1): picture files hold no spacing, so they are read at it. None for volumes."""
        spacing_zyx = [self.original_median_spacing[axis] for axis in self.transpose_backward]
        return (float(spacing_zyx[1]), float(spacing_zyx[2])) if is_picture_spacing(spacing_zyx) else None

    @property
    def num_foreground_labels(self) -> int:
        return sum(1 for value in self.labels if int(value) != 0)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "dataset_name": self.dataset_name,
            "fingerprint_signature": self.fingerprint_signature,
            "modality": dict(self.modality),
            "labels": dict(self.labels),
            "transpose_forward": list(self.transpose_forward),
            "transpose_backward": list(self.transpose_backward),
            "original_median_spacing": list(self.original_median_spacing),
            "original_median_shape": list(self.original_median_shape),
            "intensity_per_channel": {k: asdict(v) for k, v in self.intensity_per_channel.items()},
            "gpu_memory_gb": self.gpu_memory_gb,
            "configurations": {name: _jsonable(entry) for name, entry in self.configurations.items()},
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "plans") -> "Plans":
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != PLANS_SCHEMA_VERSION:
            raise PlanError(f"{where}: field 'schema_version' is {version!r}, expected {PLANS_SCHEMA_VERSION}; "
                            "re-run `autoseg plan`")
        _check_fields(data, {f.name for f in fields(cls)}, where)
        try:
            intensities = {k: ChannelIntensity(**v) for k, v in data["intensity_per_channel"].items()}
        except (TypeError, AttributeError) as e:
            raise PlanError(f"{where}: field 'intensity_per_channel' is malformed ({e})") from None
        plans = cls(**{**data, "intensity_per_channel": intensities})
        _validate_plans(plans, where)
        return plans

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        try:
            data = read_json(path)
        except AutosegError as e:
            raise PlanError(str(e)) from None
        return cls.from_json(data, where=str(path))


def keep_user_configurations(plans: Plans, previous_entries: dict[str, Any]) -> tuple[Plans, list[str], list[str]]:
    """Re-planning regenerates plans.json from the fingerprint; a configuration the user added to the old
    file (a name the planner does not make) and that still resolves on the new plan, such as
    `{"inherits_from": "3d_fullres", "batch_size": 8}`, is carried over. A complete entry (no
    inherits_from) is not: its spacing, network and statistics were the old plan's.

    Returns (plans with the kept entries, names kept, names dropped with the reason).
    """
    entries = dict(plans.configurations)
    kept, dropped = [], []
    for name, entry in previous_entries.items():
        if name in entries or not isinstance(entry, dict):
            continue
        if not entry.get("inherits_from"):
            dropped.append(f"{name} (a complete entry of the old plan; derive it with inherits_from to keep it)")
            continue
        candidate = Plans(**{**vars(plans), "configurations": {**entries, name: copy.deepcopy(entry)}})
        try:
            candidate.configuration(name)
        except PlanError as error:
            dropped.append(f"{name} ({error})")
            continue
        entries[name] = copy.deepcopy(entry)
        kept.append(name)
    return Plans(**{**vars(plans), "configurations": entries}), kept, dropped


# --- validation ---------------------------------------------------------------------------------
def _jsonable(entry: dict) -> dict:
    """A deep copy, so that editing the JSON never edits the plans."""
    return {k: (v.to_json() if isinstance(v, Architecture) else copy.deepcopy(v)) for k, v in entry.items()}


def _check_fields(data: dict, expected: set[str], where: str, optional: set[str] = frozenset()) -> None:
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = sorted(expected - optional - set(data))
    if missing:
        raise PlanError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    unknown = sorted(set(data) - expected)
    if unknown:
        raise PlanError(f"{where}: unknown field {', '.join(repr(u) for u in unknown)} "
                        f"(known: {', '.join(sorted(expected))})")


def _architecture_from_json(data: Any, where: str) -> Architecture:
    known = {f.name for f in fields(Architecture)}
    required = known - {"convs_per_stage", "deep_supervision"}
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected a JSON object")
    missing = sorted(required - set(data))
    if missing:
        raise PlanError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise PlanError(f"{where}: unknown field {', '.join(repr(u) for u in unknown)}")
    if data["name"] not in ARCHITECTURES:
        raise PlanError(f"{where}: field 'name' is {data['name']!r}, not a registered architecture "
                        f"({', '.join(ARCHITECTURES)})")
    return Architecture.from_json(data)


def _validate_architecture(architecture: Architecture, dimension: int, where: str) -> None:
    where = f"{where}: field 'architecture'"
    if architecture.dimension != dimension:
        raise PlanError(f"{where}: dimension {architecture.dimension} != configuration dimension {dimension}")
    n_stages = architecture.num_stages
    for name in ("kernel_sizes", "strides"):
        per_stage = getattr(architecture, name)
        if len(per_stage) != n_stages or any(len(v) != dimension for v in per_stage):
            raise PlanError(f"{where}: field '{name}' must have {n_stages} stages of {dimension} values, "
                            f"got {per_stage}")
    if architecture.input_channels < 1 or architecture.num_classes < 2:
        raise PlanError(f"{where}: input_channels must be >= 1 and num_classes >= 2, got "
                        f"{architecture.input_channels} and {architecture.num_classes}")


def _validate_configuration(configuration: Configuration, where: str, num_channels: int | None) -> None:
    c = configuration
    if c.dimension not in (2, 3):
        raise PlanError(f"{where}: field 'dimension' is {c.dimension!r}, expected 2 or 3")
    for name in ("spacing", "median_shape"):
        if len(getattr(c, name)) != 3:
            raise PlanError(f"{where}: field '{name}' must have 3 values (z, y, x), got {getattr(c, name)}")
    if len(c.patch_size) != c.dimension:
        raise PlanError(f"{where}: field 'patch_size' {c.patch_size} has {len(c.patch_size)} values, "
                        f"dimension is {c.dimension}")
    if any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in c.patch_size):
        raise PlanError(f"{where}: field 'patch_size' {c.patch_size} must hold positive integers")
    if not isinstance(c.batch_size, int) or c.batch_size < 1:
        raise PlanError(f"{where}: field 'batch_size' is {c.batch_size!r}, must be an integer >= 1")
    unknown = [n for n in c.normalization if n not in NORMALIZATION_SCHEMES]
    if unknown:
        raise PlanError(f"{where}: field 'normalization' has unknown scheme {unknown[0]!r} "
                        f"(known: {', '.join(NORMALIZATION_SCHEMES)})")
    if num_channels is not None:
        for name in ("normalization", "use_mask_for_norm"):
            if len(getattr(c, name)) != num_channels:
                raise PlanError(f"{where}: field '{name}' has {len(getattr(c, name))} entries for "
                                f"{num_channels} channels")
    _validate_architecture(c.architecture, c.dimension, where)
    divisor = c.architecture.total_downsampling()
    if any(p % d for p, d in zip(c.patch_size, divisor)):
        raise PlanError(f"{where}: field 'patch_size' {c.patch_size} is not divisible by the network's "
                        f"total downsampling {divisor}")


def _resolve_inheritance(entries: dict[str, dict], name: str, where: str) -> dict:
    """Merge `name`'s entry over its ancestors' (child keys win); detect missing parents and cycles."""
    not_objects = [n for n, entry in entries.items() if not isinstance(entry, dict)]
    if not_objects:
        raise PlanError(f"{where}: configuration '{not_objects[0]}' is not a JSON object")
    chain = [name]
    while (parent := entries[chain[-1]].get("inherits_from")) is not None:
        if parent not in entries:
            raise PlanError(f"{where}: configuration '{chain[-1]}' field 'inherits_from' names "
                            f"'{parent}', which does not exist; available: {', '.join(entries)}")
        if parent in chain:
            raise PlanError(f"{where}: configuration '{name}' field 'inherits_from' forms a cycle: "
                            f"{' -> '.join(chain + [parent])}")
        chain.append(parent)
    resolved: dict = {}
    for ancestor in reversed(chain):
        resolved.update(entries[ancestor])
    return resolved


def _validate_plans(plans: Plans, where: str) -> None:
    n_axes = len(plans.transpose_forward)
    if sorted(plans.transpose_forward) != list(range(n_axes)) or n_axes != 3:
        raise PlanError(f"{where}: field 'transpose_forward' {plans.transpose_forward} is not a permutation of [0, 1, 2]")
    inverse = [plans.transpose_forward.index(axis) for axis in range(n_axes)]
    if list(plans.transpose_backward) != inverse:
        raise PlanError(f"{where}: field 'transpose_backward' {plans.transpose_backward} does not undo "
                        f"transpose_forward {plans.transpose_forward} (expected {inverse})")
    if not isinstance(plans.configurations, dict) or not plans.configurations:
        raise PlanError(f"{where}: field 'configurations' must name at least one configuration")
    for name in plans.configurations:
        plans.configuration(name, where)
