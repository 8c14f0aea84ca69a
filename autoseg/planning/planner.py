"""Experiment planning: from a dataset fingerprint to plans.json's configurations.

`plan_experiment(fingerprint, gpu_memory_gb)` follows nnU-Net v2's ExperimentPlanner: target
spacing and transpose, normalization per channel, then for each configuration an initial patch,
shrunk until it fits the GPU memory budget, its U-Net topology and batch size (rules in
`autoseg.planning.rules`).

Configurations:
- `3d_fullres` unless the dataset holds 2D images; `3d_lowres` + `3d_cascade_fullres` when the
  full-res patch covers < 25% of the median image (and the low-res image is >= 2x smaller);
- `2d` always: slices along the transposed axis 0, planned on the in-plane spacing and shape.
  Its in-plane spacing is by construction the full-res one, so it reads the 3d_fullres arrays
  (`data_identifier` "3d_fullres", its `spacing`/`median_shape` are theirs, axis 0 included) and
  needs no preprocessing of its own; only datasets of 2D images get a "2d" array folder.
- with `networks` (NETWORK_BUILDERS keys besides plain_unet): `3d_fullres_NETWORK` and `2d_NETWORK`,
  each derived (`inherits_from`) from the plain configuration whose spacing and arrays it shares, with
  its own network, patch and batch fitted to the memory target (`network_variant`). The plain U-Net's
  configurations are always planned: the others derive from them, and they stay the default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from autoseg.errors import PlanError
from autoseg.fingerprint import Fingerprint
from autoseg.network import NETWORK_BUILDERS
from autoseg.planning import rules
from autoseg.planning.plans import Configuration, Plans
from autoseg.preprocessing.resampling import new_shape_for


@dataclass(frozen=True)
class PlanningInputs:
    """What every configuration's planning needs besides its spacing and median shape."""

    input_channels: int
    num_classes: int  # including background
    num_cases: int
    normalization: list[str]
    use_mask_for_norm: list[bool]
    gpu_memory_gb: float
    preset: str | None = None  # a ResEnc preset (rules.RESENC_PRESETS): its calibration for resenc


# The plain configurations other networks are planned beside (3d_lowres and the cascade are not).
VARIANT_PARENTS = ("3d_fullres", "2d")
# The fields a network variant sets itself; the rest (spacing, normalization, data) it inherits.
VARIANT_FIELDS = ("patch_size", "batch_size", "architecture", "estimated_memory_gb")


def plan_experiment(fingerprint: Fingerprint, gpu_memory_gb: float = rules.DEFAULT_GPU_MEMORY_GB,
                    networks: list[str] | None = None, preset: str | None = None) -> Plans:
    """Plans for a dataset; spacings and shapes inside are in transposed (coarsest-first) order.

    `networks`: NETWORK_BUILDERS keys to plan beside the plain U-Net (module docstring); `preset`: a ResEnc
    preset, recorded in the plan (gpu_memory_gb is the caller's: `rules.memory_target_gb`)."""
    check_networks(networks)
    fp = fingerprint
    target_spacing = rules.fullres_target_spacing(fp.median_spacing, fp.spacing_percentile_10,
                                                  fp.median_cropped_shape)
    forward, backward = rules.transpose_for(target_spacing)
    spacing = _permute(target_spacing, forward)
    median_shape = _permute(median_resampled_shape(fp, target_spacing), forward)
    inputs = replace(_planning_inputs(fp, gpu_memory_gb), preset=preset)

    configurations: dict[str, Configuration | dict] = {}
    fullres = lowres = None
    if not fp.is_2d_images and median_shape[0] > 1:  # a stack of single slices has no 3D context
        fullres = plan_configuration(spacing, median_shape, 3, inputs, data_identifier="3d_fullres")
        lowres = plan_lowres(fullres, inputs)
    configurations["2d"] = plan_configuration(spacing, median_shape, 2, inputs,
                                              data_identifier="3d_fullres" if fullres else "2d")
    if fullres is not None:
        # Batch dice only with a low-res stage, as nnU-Net (it found this works best empirically).
        configurations["3d_fullres"] = replace(fullres, batch_dice=lowres is not None)
    if lowres is not None:
        configurations["3d_lowres"] = replace(lowres, batch_dice=False, next_stage="3d_cascade_fullres")
        configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    for network in [n for n in networks or [] if n != rules.NETWORK_NAME]:
        for parent in [p for p in VARIANT_PARENTS if p in configurations]:
            configurations[f"{parent}_{network}"] = network_variant(parent, configurations[parent], network, inputs)

    return Plans(
        dataset_name=fp.dataset_name, fingerprint_signature=fp.dataset_signature,
        modality=dict(fp.modality), labels=dict(fp.labels),
        transpose_forward=forward, transpose_backward=backward,
        original_median_spacing=_permute(fp.median_spacing, forward),
        original_median_shape=_permute(fp.median_cropped_shape, forward),
        intensity_per_channel=dict(fp.intensity_per_channel), gpu_memory_gb=float(gpu_memory_gb), preset=preset,
        configurations={name: c.to_json() if isinstance(c, Configuration) else c for name, c in configurations.items()},
    )


def check_networks(networks: list[str] | None) -> None:
    """A PlanError naming the first unknown network and the known ones."""
    unknown = [name for name in networks or [] if name not in NETWORK_BUILDERS]
    if unknown:
        raise PlanError(f"networks: {unknown[0]!r} is not a known network; known: {', '.join(NETWORK_BUILDERS)}")


def median_resampled_shape(fingerprint: Fingerprint, target_spacing: list[float]) -> list[float]:
    """Median image shape (voxels, original axis order) after cropping and resampling to `target_spacing`.

    Per case when the fingerprint has cases (median of each case's resampled shape, per axis),
    else from the dataset medians (reference fingerprints from published statistics).
    """
    if fingerprint.cases:
        shapes = [new_shape_for(c.cropped_shape, c.spacing, target_spacing) for c in fingerprint.cases]
        return [float(v) for v in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]
    median_shape = new_shape_for(fingerprint.median_cropped_shape, fingerprint.median_spacing, target_spacing)
    return [float(v) for v in median_shape]


def network_variant(parent_name: str, parent: Configuration, network: str, inputs: PlanningInputs) -> dict:
    """The plans.json entry of `network` planned at `parent`'s spacing: derived from it (`inherits_from`),
    with its own network, patch, batch and memory estimate, and no budget of the parent's."""
    planned = plan_configuration(parent.spacing, parent.median_shape, parent.dimension, inputs,
                                 parent.data_identifier, network)
    own = {name: value for name, value in planned.to_json().items() if name in VARIANT_FIELDS}
    return {"inherits_from": parent_name, **own, "budget": None, "over_budget": None}


def plan_configuration(spacing: list[float], median_shape: list[float], dimension: int, inputs: PlanningInputs,
                       data_identifier: str, network: str = rules.NETWORK_NAME) -> Configuration:
    """One configuration at a target spacing (3 values, transposed); 2D uses the last two axes."""
    plane_spacing, plane_shape = spacing[-dimension:], median_shape[-dimension:]
    reference = rules.memory_reference(network, inputs.preset)
    patch = rules.initial_patch_size(plane_spacing, plane_shape, dimension)
    fitted = rules.fit_patch_to_memory(plane_spacing, plane_shape, patch, inputs.input_channels,
                                       inputs.num_classes, inputs.gpu_memory_gb, network, reference)
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64)) * inputs.num_cases
    batch_size = rules.batch_size_for(fitted.feature_map_elements, fitted.patch_size, dataset_voxels,
                                      inputs.gpu_memory_gb, reference)
    return Configuration(
        dimension=dimension, spacing=[float(s) for s in spacing], median_shape=[float(n) for n in median_shape],
        patch_size=list(fitted.patch_size), batch_size=batch_size, batch_dice=True,
        normalization=list(inputs.normalization), use_mask_for_norm=list(inputs.use_mask_for_norm),
        architecture=fitted.architecture,
        estimated_memory_gb=round(rules.estimated_memory_gb(fitted.feature_map_elements, batch_size, dimension,
                                                            reference), 3),
        data_identifier=data_identifier,
    )


def plan_lowres(fullres: Configuration, inputs: PlanningInputs) -> Configuration | None:
    """The 3d_lowres configuration, or None when the full-res patch already covers enough or it would not help.

    Coarsens the spacing step by step until the low-res patch covers >= 25% of the low-res median image.
    """
    if not rules.needs_lowres(fullres.patch_size, fullres.median_shape):
        return None
    for spacing in rules.lowres_spacings(fullres.spacing):
        median_shape = rules.lowres_median_shape(fullres.spacing, fullres.median_shape, spacing)
        lowres = plan_configuration(spacing, [float(round(n)) for n in median_shape], 3, inputs, "3d_lowres")
        if rules.patch_coverage(lowres.patch_size, median_shape) >= rules.LOWRES_MIN_PATCH_COVERAGE:
            break
    else:
        return None
    if not rules.lowres_is_worthwhile(fullres.median_shape, median_shape):
        return None
    return lowres


def _planning_inputs(fingerprint: Fingerprint, gpu_memory_gb: float) -> PlanningInputs:
    channel_names = [fingerprint.modality[k] for k in sorted(fingerprint.modality, key=int)]
    choices = [rules.normalization_for(name, fingerprint.median_relative_size_after_cropping) for name in channel_names]
    return PlanningInputs(
        input_channels=len(channel_names), num_classes=len(fingerprint.labels), num_cases=fingerprint.num_cases,
        normalization=[scheme for scheme, _ in choices], use_mask_for_norm=[mask for _, mask in choices],
        gpu_memory_gb=float(gpu_memory_gb),
    )


def _permute(values: list, order: list[int]) -> list:
    return [values[axis] for axis in order]
