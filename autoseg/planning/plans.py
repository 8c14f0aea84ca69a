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
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from autoseg.artifacts import read_json, write_json
from autoseg.errors import AutosegError, PlanError
from autoseg.fingerprint import ChannelIntensity
from autoseg.io import is_picture_spacing
from autoseg.network.architecture import ARCHITECTURES, CONV_BLOCKS, Architecture
from autoseg.planning.loss_choice import default_loss, loss_from_json
from autoseg.preprocessing.normalization import NORMALIZATION_SCHEMES
from autoseg.planning.rules import RESENC_PRESETS
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
    loss: dict = field(default_factory=default_loss)  # autoseg.planning.loss_choice; absent or null = Dice + CE

    def to_json(self) -> dict:
        data = asdict(self)
        data["architecture"] = self.architecture.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "configuration", num_channels: int | None = None,
                  num_labels: int | None = None) -> "Configuration":
        """Build from a fully resolved entry (no missing fields); validate every field, against the plan's
        channels and labels when given."""
        optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
        _check_fields(data, {f.name for f in fields(cls)}, where, optional)
        data = {**{name: None for name in optional}, **data}
        architecture = _architecture_from_json(data["architecture"], f"{where}: field 'architecture'")
        budget = data["budget"] and BudgetDecision.from_json(data["budget"], f"{where}: field 'budget'")
        over_budget = data["over_budget"] and OverBudget.from_json(data["over_budget"], f"{where}: field 'over_budget'")
        loss = loss_from_json(data["loss"], where)
        configuration = cls(**{**data, "architecture": architecture, "budget": budget, "over_budget": over_budget,
                               "loss": loss})
        try:
            _validate_configuration(configuration, where, num_channels, num_labels)
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
    preset: str | None = None  # the ResEnc preset (M, L, XL) the plan was sized with; written only when set

    @property
    def configuration_names(self) -> list[str]:
        return list(self.configurations)

    def configuration(self, name: str, where: str = "plans") -> Configuration:
        """The configuration `name` with its inheritance chain applied, validated."""
        if name not in self.configurations:
            raise PlanError(f"{where}: no configuration '{name}'; available: {', '.join(self.configurations)}")
        resolved = _resolve_inheritance(self.configurations, name, where)
        inherited = resolved.get("architecture") if "architecture" not in self.configurations[name] else None
        if resolved.get("previous_stage") and isinstance(inherited, dict):
            # A cascade stage inherits its parent's network but also reads the previous stage's
            # segmentation as one-hot channels, one per foreground label.
            architecture = dict(inherited)
            architecture["input_channels"] = len(self.modality) + self.num_foreground_labels
            resolved = {**resolved, "architecture": architecture}
        return Configuration.from_json(resolved, f"{where}: configuration '{name}'", len(self.modality),
                                       len(self.labels))

    @property
    def networks(self) -> list[str]:
        """The networks (NETWORK_BUILDERS keys) of the plan's configurations, each once, in plan order."""
        names = [self.configuration(name).architecture.name for name in self.configurations]
        return list(dict.fromkeys(names))

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
            **({"preset": self.preset} if self.preset is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "plans") -> "Plans":
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != PLANS_SCHEMA_VERSION:
            raise PlanError(f"{where}: field 'schema_version' is {version!r}, expected {PLANS_SCHEMA_VERSION}; "
                            "re-run `autoseg plan`")
        _check_fields(data, {f.name for f in fields(cls)}, where, optional={"preset"})
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
        except UnicodeDecodeError:
            raise PlanError(f"{path}: not a text file; re-run `autoseg plan`") from None
        return cls.from_json(data, where=str(path))


def has_own_network(entry: dict) -> bool:
    """A plans.json entry that is complete or sets its own architecture (a network variant such as
    3d_fullres_resenc inherits only its data from its parent), rather than following its parent's network."""
    return not entry.get("inherits_from") or "architecture" in entry


# --- validation ---------------------------------------------------------------------------------
# Every field is checked for its type, range and length when plans.json is loaded: a hand-edited plan
# fails here in one line naming the field, never later inside preprocessing or training.
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
    required = {f.name for f in fields(Architecture) if f.default is MISSING}
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


def _validate_architecture(architecture: Architecture, dimension: int, where: str,
                           input_channels: int | None, num_classes: int | None) -> None:
    a, where = architecture, f"{where}: field 'architecture'"
    _require(a.dimension == dimension, where, "dimension", a.dimension, f"{dimension}, the configuration's dimension")
    _require(_is_integer(a.input_channels), where, "input_channels", a.input_channels, "an integer >= 1")
    _require(_is_integer(a.num_classes, minimum=2), where, "num_classes", a.num_classes, "an integer >= 2")
    if input_channels is not None:
        _require(a.input_channels == input_channels, where, "input_channels", a.input_channels,
                 f"{input_channels}: one per channel of the plan's modality (in a cascade stage, and one per "
                 "foreground label)")
    if num_classes is not None:
        _require(a.num_classes == num_classes, where, "num_classes", a.num_classes,
                 f"{num_classes}: one per label of the plan, background included")
    _require(_is_list(a.features_per_stage, None, _is_integer) and len(a.features_per_stage) > 0, where,
             "features_per_stage", a.features_per_stage, "a list of positive integers, one per stage")
    for name in ("kernel_sizes", "strides"):
        _require(_is_list(getattr(a, name), a.num_stages, lambda axes: _is_list(axes, dimension, _is_integer)),
                 where, name, getattr(a, name), f"{a.num_stages} stages of {dimension} positive integers")
    _require(_is_integer(a.convs_per_stage), where, "convs_per_stage", a.convs_per_stage, "an integer >= 1")
    _require(isinstance(a.deep_supervision, bool), where, "deep_supervision", a.deep_supervision, "true or false")
    _require(a.conv_block in CONV_BLOCKS, where, "conv_block", a.conv_block, f"one of {', '.join(CONV_BLOCKS)}")
    _require(a.conv_block != "rep" or all(k % 2 for kernel in a.kernel_sizes for k in kernel), where, "kernel_sizes",
             a.kernel_sizes, "odd sizes with conv_block 'rep' (its 1x1 branch sits at the kernel's centre)")
    _require(a.blocks_per_stage is None or _is_list(a.blocks_per_stage, a.num_stages, _is_integer), where,
             "blocks_per_stage", a.blocks_per_stage, f"null or {a.num_stages} positive integers, one per stage")
    _require((a.name == "resenc") == (a.blocks_per_stage is not None), where, "blocks_per_stage",
             a.blocks_per_stage, "a list for resenc (its residual blocks per encoder stage), null for other networks")


def _validate_configuration(configuration: Configuration, where: str, num_channels: int | None,
                            num_labels: int | None) -> None:
    c = configuration
    _require(c.dimension in (2, 3) and _is_integer(c.dimension), where, "dimension", c.dimension, "2 or 3")
    for name in ("spacing", "median_shape"):
        _require(_is_list(getattr(c, name), 3, _is_positive_number), where, name, getattr(c, name),
                 "3 positive numbers (z, y, x)")
    _require(_is_list(c.patch_size, c.dimension, _is_integer), where, "patch_size", c.patch_size,
             f"{c.dimension} positive integers, one per axis of a {c.dimension}D configuration")
    _require(_is_integer(c.batch_size), where, "batch_size", c.batch_size, "an integer >= 1")
    _require(isinstance(c.batch_dice, bool), where, "batch_dice", c.batch_dice, "true or false")
    _require(_is_list(c.normalization, None, lambda scheme: isinstance(scheme, str)), where, "normalization",
             c.normalization, "a list of scheme names, one per channel")
    unknown = [n for n in c.normalization if n not in NORMALIZATION_SCHEMES]
    if unknown:
        raise PlanError(f"{where}: field 'normalization' has unknown scheme {unknown[0]!r} "
                        f"(known: {', '.join(NORMALIZATION_SCHEMES)})")
    _require(_is_list(c.use_mask_for_norm, None, lambda masked: isinstance(masked, bool)), where,
             "use_mask_for_norm", c.use_mask_for_norm, "a list of true or false, one per channel")
    if num_channels is not None:
        for name in ("normalization", "use_mask_for_norm"):
            if len(getattr(c, name)) != num_channels:
                raise PlanError(f"{where}: field '{name}' has {len(getattr(c, name))} entries for "
                                f"{num_channels} channels")
    _require(_is_finite_number(c.estimated_memory_gb) and c.estimated_memory_gb >= 0, where, "estimated_memory_gb",
             c.estimated_memory_gb, "a number >= 0")
    _require(isinstance(c.data_identifier, str) and re.fullmatch(r"[\w.-]+", c.data_identifier) is not None
             and c.data_identifier.strip(".") != "", where, "data_identifier", c.data_identifier,
             "a folder name (letters, digits, _ . -)")
    for name in ("previous_stage", "next_stage", "inherits_from"):
        value = getattr(c, name)
        _require(value is None or (isinstance(value, str) and value != ""), where, name, value,
                 "null or a configuration name")
    cascade_inputs = num_labels - 1 if c.previous_stage and num_labels is not None else 0
    _validate_architecture(c.architecture, c.dimension, where,
                           None if num_channels is None else num_channels + cascade_inputs, num_labels)
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
    """The plan-wide fields, then every configuration (resolved) and the stages they name."""
    p = plans
    _require(isinstance(p.dataset_name, str) and p.dataset_name != "", where, "dataset_name", p.dataset_name,
             "the dataset's name")
    _require(isinstance(p.fingerprint_signature, str), where, "fingerprint_signature", p.fingerprint_signature,
             "a string")
    _require(_is_numbered(p.modality, minimum=1), where, "modality", p.modality,
             'channel numbers "0", "1", ... with their names')
    _require(_is_numbered(p.labels, minimum=2), where, "labels", p.labels,
             'label values "0" (background), "1", ... with their names')
    _require(_is_list(p.transpose_forward, 3, lambda axis: _is_integer(axis, minimum=0))
             and sorted(p.transpose_forward) == [0, 1, 2], where, "transpose_forward", p.transpose_forward,
             "a permutation of [0, 1, 2]")
    inverse = [p.transpose_forward.index(axis) for axis in range(3)]
    if p.transpose_backward != inverse:
        raise PlanError(f"{where}: field 'transpose_backward' {p.transpose_backward} does not undo "
                        f"transpose_forward {p.transpose_forward} (expected {inverse})")
    for name in ("original_median_spacing", "original_median_shape"):
        _require(_is_list(getattr(p, name), 3, _is_positive_number), where, name, getattr(p, name),
                 "3 positive numbers")
    _require(set(p.intensity_per_channel) == set(p.modality), where, "intensity_per_channel",
             sorted(p.intensity_per_channel), f"statistics for the channels {sorted(p.modality)}")
    for channel, statistics in p.intensity_per_channel.items():
        _require(all(map(_is_finite_number, vars(statistics).values())) and statistics.std >= 0,
                 where, f"intensity_per_channel.{channel}", vars(statistics), "finite numbers, std >= 0")
    _require(_is_positive_number(p.gpu_memory_gb), where, "gpu_memory_gb", p.gpu_memory_gb, "a positive number")
    _require(p.preset is None or p.preset in RESENC_PRESETS, where, "preset", p.preset,
             f"null or one of {', '.join(RESENC_PRESETS)}")
    if not isinstance(p.configurations, dict) or not p.configurations:
        raise PlanError(f"{where}: field 'configurations' must name at least one configuration")
    for name in p.configurations:
        configuration = p.configuration(name, where)
        for field_name in ("previous_stage", "next_stage"):
            stage = getattr(configuration, field_name)
            if stage is not None and stage not in p.configurations:
                raise PlanError(f"{where}: configuration '{name}' field '{field_name}' names '{stage}', which does "
                                f"not exist; available: {', '.join(p.configurations)}")


def _require(ok: bool, where: str, name: str, value: Any, expected: str) -> None:
    """The one-line PlanError for a field that is not what it must be."""
    if not ok:
        raise PlanError(f"{where}: field '{name}' is {value!r}, expected {expected}")


def _is_integer(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_finite_number(value: Any) -> bool:
    """A JSON number (not a string or a bool), neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_number(value: Any) -> bool:
    return _is_finite_number(value) and value > 0


def _is_list(value: Any, length: int | None, is_item) -> bool:
    """A list of `length` items (any number when None) that all pass `is_item`."""
    return isinstance(value, list) and (length is None or len(value) == length) and all(map(is_item, value))


def _is_numbered(names: Any, minimum: int) -> bool:
    """{"0": name, "1": name, ...}: at least `minimum` entries numbered from 0 without gaps, named by strings."""
    return (isinstance(names, dict) and len(names) >= minimum and set(names) == {str(i) for i in range(len(names))}
            and all(isinstance(name, str) for name in names.values()))
