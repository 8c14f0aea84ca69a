"""Pictures of results: a case's preview (orthogonal slices with its labels overlaid) and the per-case
Dice bar chart of an evaluation. Drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display), so they can be drawn in a writer thread; written atomically.

    write_preview(segmentation, image, geometry, {1: "liver"}, "out/previews/case.png")
    write_dice_chart(summary, "pred/summary.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from autoseg.artifacts import write_atomic
from autoseg.io import Geometry

PREVIEW_DPI = 100
PREVIEW_PANEL_PX = 400  # each slice panel's width and height in pixels
PREVIEW_LEGEND_PX = 80  # the strip under the panels holding the legend
OVERLAY_ALPHA = 0.45
# Fixed label colours: label value v is drawn in LABEL_COLOURS[(v - 1) % len]; matplotlib's tab10, so a
# label keeps its colour from case to case and from task to task.
LABEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
WINDOW_PERCENTILES = (0.5, 99.5)  # intensity window of the grey image
MAX_CHART_INCHES = 60  # the Dice chart grows with the cases up to this width


def preview_size_px(geometry: Geometry) -> tuple[int, int]:
    """(width, height) in pixels of a case's preview: three panels for a volume, one for a picture."""
    panels = 1 if geometry.is_natural_2d else 3
    return panels * PREVIEW_PANEL_PX, PREVIEW_PANEL_PX + PREVIEW_LEGEND_PX


def label_colour(value: int) -> str:
    return LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]


def label_counts(segmentation: np.ndarray) -> np.ndarray:
    """Voxels of each label value 0, 1, ... (one pass)."""
    return np.bincount(segmentation.ravel().astype(np.int64, copy=False))


def preview_centre(segmentation: np.ndarray, counts: np.ndarray | None = None) -> tuple[int, int, int]:
    """(z, y, x) voxel where the slices cross: the centre of mass of the label with most voxels (the
    volume's centre when nothing is labelled). counts: `label_counts(segmentation)`, if known."""
    counts = label_counts(segmentation) if counts is None else counts
    if counts.size <= 1 or counts[1:].max() == 0:
        return tuple(int(n) // 2 for n in segmentation.shape)
    largest = int(np.argmax(counts[1:])) + 1
    return tuple(int(round(float(axis.mean()))) for axis in np.nonzero(segmentation == largest))


def _panels(volume: np.ndarray, centre, geometry: Geometry) -> list[tuple[str, np.ndarray, tuple, str]]:
    """(title, 2D slice, extent in mm, imshow origin) of the axial, coronal and sagittal planes through
    `centre` (a picture: its one plane). Extents in mm give each panel its physical aspect ratio."""
    z, y, x = centre
    size_z, size_y, size_x = (n * s for n, s in zip(volume.shape, geometry.spacing_zyx))
    axial = ("axial", volume[z], (0, size_x, size_y, 0), "upper")
    if geometry.is_natural_2d:
        return [("image", volume[0], (0, size_x, size_y, 0), "upper")]
    return [axial,
            ("coronal", volume[:, y, :], (0, size_x, 0, size_z), "lower"),
            ("sagittal", volume[:, :, x], (0, size_y, 0, size_z), "lower")]


def _overlay(labels_2d: np.ndarray) -> np.ndarray:
    """RGBA float image of a label slice: each label in its colour, background transparent."""
    from matplotlib.colors import to_rgba

    rgba = np.zeros((*labels_2d.shape, 4), np.float32)
    for value in np.unique(labels_2d):
        if value != 0:
            rgba[labels_2d == value] = (*to_rgba(label_colour(value))[:3], OVERLAY_ALPHA)
    return rgba


def _displayed(image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, float, float]:
    """What the panels show and its (low, high) 0.5-99.5 percentiles: the first channel, (z, y, x); a colour
    picture (3 channels) in colour, (1, y, x, 3)."""
    colour = geometry.is_natural_2d and image.shape[0] == 3
    shown = np.moveaxis(image, 0, -1) if colour else image[0]
    low, high = np.percentile(shown[::max(1, shown.shape[0] // 32)], WINDOW_PERCENTILES)
    return shown, float(low), float(max(high, low + 1e-6))


def write_preview(segmentation: np.ndarray, image: np.ndarray, geometry: Geometry, label_names: Mapping[int, str],
                  path: str | Path, title: str = "") -> Path:
    """A PNG of `preview_size_px(geometry)`: the image's first channel in grey (a colour picture in colour),
    windowed to its 0.5-99.5 percentiles, in three orthogonal planes through `preview_centre`, in voxel
    axis order (coronal and sagittal with z upwards), the labels overlaid in `label_colour`s, a legend
    naming the labels present.

    segmentation: integer (z, y, x); image: (C, z, y, x) on the same grid."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    width, height = preview_size_px(geometry)
    figure = Figure(figsize=(width / PREVIEW_DPI, height / PREVIEW_DPI), dpi=PREVIEW_DPI)
    counts = label_counts(segmentation)
    centre = preview_centre(segmentation, counts)
    shown, low, high = _displayed(image, geometry)
    image_panels = _panels(shown, centre, geometry)
    label_panels = _panels(segmentation, centre, geometry)
    legend_fraction = PREVIEW_LEGEND_PX / height
    for index, ((name, plane, extent, origin), (_, labels, _, _)) in enumerate(zip(image_panels, label_panels)):
        axes = figure.add_axes((index / len(image_panels), legend_fraction, 1 / len(image_panels),
                                1 - legend_fraction - 0.06))
        axes.imshow(np.clip((plane - low) / (high - low), 0, 1), cmap="gray", vmin=0, vmax=1, extent=extent,
                    origin=origin, interpolation="nearest")
        axes.imshow(_overlay(labels), extent=extent, origin=origin, interpolation="nearest")
        axes.set_title(name, fontsize=9)
        axes.set_axis_off()
    present = [int(v) for v in np.flatnonzero(counts) if v != 0]
    handles = [Patch(color=label_colour(v), label=f"{v} {label_names.get(v, v)}") for v in present]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    else:
        figure.text(0.5, legend_fraction / 2, "no labels predicted", ha="center", fontsize=9)
    if title:
        figure.text(0.01, 0.98, title, va="top", fontsize=9)
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=PREVIEW_DPI))


def write_dice_chart(summary, path: str | Path) -> Path:
    """summary.png: per case, one bar per label (and region) with its Dice, grouped by case; the legend
    names each label with its mean Dice. summary: an `autoseg.evaluation.EvaluationSummary`."""
    from matplotlib.figure import Figure

    keys = list(summary.label_names)
    cases = [case.case_id for case in summary.per_case]
    bar_width = 0.8 / max(1, len(keys))
    inches = min(MAX_CHART_INCHES, max(6.0, 0.25 * len(cases) * len(keys) + 2))
    figure = Figure(figsize=(inches, 4.5), dpi=PREVIEW_DPI)
    axes = figure.add_subplot()
    positions = np.arange(len(cases))
    for index, key in enumerate(keys):
        dice = [case.metrics[key]["Dice"] for case in summary.per_case]
        colour = label_colour(int(key)) if key.isdigit() else None
        axes.bar(positions + (index - (len(keys) - 1) / 2) * bar_width, dice, bar_width, color=colour,
                 label=f"{key} {summary.label_names[key]} (mean {summary.mean[key]['Dice']:.3f})")
    axes.set_xticks(positions, cases, rotation=90, fontsize=7)
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice")
    axes.set_title(f"Dice per case ({len(cases)} cases)", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=PREVIEW_DPI))
