"""Intensity normalization per channel, as chosen by the plan (nnU-Net's schemes).

Schemes (plans.json `normalization`, one per channel):
- "ct": clip to the dataset's foreground 0.5/99.5 percentiles, then subtract the dataset-wide
  foreground mean and divide by its standard deviation (the same numbers for every case, so
  Hounsfield units keep their meaning across cases).
- "zscore": per image and channel, (x - mean) / std; with use_mask the statistics come from the
  nonzero region only and voxels outside it are set to 0.
- "rgb_to_0_1": divide 8-bit colour values by 255.
- "none": unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autoseg.errors import DatasetError, PlanError

# Smallest standard deviation divided by, so a constant image does not become inf/NaN (nnU-Net: 1e-8).
STD_EPSILON = 1e-8
RGB_MAX_VALUE = 255.0


def _stat(intensity_stats: Mapping[Any, Any], channel: int, name: str) -> float:
    """One statistic of a channel from {"0": ChannelIntensity or dict} (keys str or int)."""
    stats = intensity_stats.get(str(channel), intensity_stats.get(channel))
    if stats is None:
        raise PlanError(f"intensity_per_channel: no statistics for channel {channel} (needed by 'ct' normalization)")
    value = stats.get(name) if isinstance(stats, Mapping) else getattr(stats, name, None)
    if value is None:
        raise PlanError(f"intensity_per_channel[{channel}]: missing {name!r}")
    return float(value)


def _ct(channel_data: np.ndarray, out: np.ndarray, channel: int, stats: Mapping, mask, use_mask: bool) -> None:
    low, high = _stat(stats, channel, "percentile_00_5"), _stat(stats, channel, "percentile_99_5")
    mean, std = _stat(stats, channel, "mean"), _stat(stats, channel, "std")
    np.clip(channel_data, low, high, out=out)
    out -= mean
    out /= max(std, STD_EPSILON)


def _zscore(channel_data: np.ndarray, out: np.ndarray, channel: int, stats: Mapping, mask, use_mask: bool) -> None:
    if use_mask and mask is None:
        raise ValueError("zscore with use_mask needs the nonzero mask")
    values = channel_data[mask] if use_mask else channel_data
    mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
    std = float(values.std(dtype=np.float64)) if values.size else 1.0
    np.subtract(channel_data, mean, out=out)
    out /= max(std, STD_EPSILON)
    if use_mask:
        out[~mask] = 0.0


def _rgb_to_0_1(channel_data: np.ndarray, out: np.ndarray, channel: int, stats: Mapping, mask, use_mask: bool) -> None:
    low, high = float(channel_data.min()), float(channel_data.max())
    if low < 0 or high > RGB_MAX_VALUE:
        raise DatasetError(f"channel {channel}: values {low:g}..{high:g} outside 0..255, "
                           "but its normalization is 'rgb_to_0_1' (8-bit colour expected)")
    np.divide(channel_data, RGB_MAX_VALUE, out=out)


def _none(channel_data: np.ndarray, out: np.ndarray, channel: int, stats: Mapping, mask, use_mask: bool) -> None:
    out[...] = channel_data


NORMALIZATION_SCHEMES: dict[str, Callable[..., None]] = {
    "ct": _ct,
    "zscore": _zscore,
    "rgb_to_0_1": _rgb_to_0_1,
    "none": _none,
}


def normalize(data: np.ndarray, schemes: Sequence[str], use_mask: Sequence[bool],
              intensity_stats: Mapping[Any, Any], nonzero_mask: np.ndarray | None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Normalize each channel of data (C, z, y, x) -> float32 (C, z, y, x).

    schemes / use_mask: one entry per channel (plans.json `normalization`, `use_mask_for_norm`).
    intensity_stats: plans.json `intensity_per_channel` ({"0": {mean, std, percentile_00_5, ...}}
    or ChannelIntensity values); only "ct" channels read it.
    nonzero_mask: bool (z, y, x), True inside the nonzero region; needed only where use_mask is set.
    out: where to write (may be `data` itself, for in-place normalization of a float32 array).
    """
    if len(schemes) != data.shape[0] or len(use_mask) != data.shape[0]:
        raise PlanError(f"normalization has {len(schemes)} schemes and use_mask_for_norm {len(use_mask)} entries, "
                        f"but the image has {data.shape[0]} channels")
    unknown = [s for s in schemes if s not in NORMALIZATION_SCHEMES]
    if unknown:
        raise PlanError(f"normalization: unknown scheme(s) {unknown}; known: {sorted(NORMALIZATION_SCHEMES)}")
    if out is None:
        out = np.empty(data.shape, dtype=np.float32)
    for channel, (scheme, masked) in enumerate(zip(schemes, use_mask)):
        NORMALIZATION_SCHEMES[scheme](data[channel], out[channel], channel, intensity_stats, nonzero_mask, bool(masked))
    return out
