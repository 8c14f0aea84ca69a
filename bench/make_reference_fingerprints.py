"""Build fingerprints/TaskXX_Name.json for the ten MSD tasks, for planning without the images.

Usage: python bench/make_reference_fingerprints.py [--msd-dir /work/shared/msd] [--out fingerprints]

Sources:
- Task06_Lung: the fingerprint nnU-Net v2 wrote for the 63 MSD Lung training cases
  (MSD_DIR/Task06_Lung.nnunet_fingerprint.json; per-case spacings and cropped shapes, CT foreground
  intensity statistics).
- The other nine: the published min / median / max table of MSD_DIR/README.md (raw sizes and spacings,
  (x, y, z) there, converted here to autoseg's (z, y, x)), typed in below.
- For the thick-slice CT tasks and the CT intensity statistics, the per-task parameters of a MONAI
  DynUNet pipeline for the MSD (dynunet_pipeline/task_params.py, repository duc-ke/MONAI_examples,
  commit 83dcc7bf422275252a323cbad942d3ab687be746), typed in below: its target spacing per task, its
  CT clipping range (read as the foreground 0.5 / 99.5 percentiles) and its normalization mean / std
  (read as the foreground mean / std) -- the quantities nnU-Net's CT normalization uses.

Choices for the summary-only tasks (each written into the file's `source`):
- median spacing / shape: the published medians. The cropped shape is the raw one (relative size 1.0:
  CT and the cropped MRI tasks have no zero background), except BrainTumour, whose skull-stripped
  volumes crop to the brain; its cropped shape (138, 170, 138) is an estimate, not a measurement.
- spacing_percentiles / cropped_shape_percentiles: only "0", "50", "100" (the published min, median
  and max); none for BrainTumour's cropped shape beyond the estimated median.
- spacing_percentile_10: the median, except along z for the anisotropic CT tasks whose MONAI target
  spacing is thinner than the median slice thickness (HepaticVessel 1.5 mm, Spleen 1.6 mm, Colon 3 mm
  against a 5 mm median): nnU-Net's rule gives an anisotropic axis its 10th-percentile spacing, so
  that target is the 10th percentile. Where the target equals the median (Pancreas 2.5 mm, Prostate
  3.6 mm) the median is kept.
- intensity statistics: from the MONAI parameters for the five CT tasks (median, min and max are not
  listed there: median = mean, min / max = the clipping range); placeholders (not from data) for the
  MRI tasks, which only "zscore" normalization (per image) reads, so they do not affect a plan.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.fingerprint import CaseFingerprint, ChannelIntensity, Fingerprint, axis_percentiles

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MSD_DIR = Path("/work/shared/msd")
MONAI_SOURCE = ("MONAI DynUNet MSD pipeline parameters (dynunet_pipeline/task_params.py in github "
                "duc-ke/MONAI_examples, commit 83dcc7bf422275252a323cbad942d3ab687be746)")
SUMMARY_SOURCE = ("built from published summary statistics: MSD (Simpson et al. 2019, arXiv:1902.09063; "
                  "Antonelli et al. 2022) for cases and labels, openmedlab Awesome-Medical-Dataset per-task pages "
                  "for min / median / max size and spacing (see /work/shared/msd/README.md); spacing_percentiles and "
                  "cropped_shape_percentiles hold only those (0, 50, 100).")

# Placeholder foreground intensity statistics (not measured) for MRI channels: "zscore" normalizes
# each image with its own statistics and never reads these.
PLACEHOLDER_MRI = ChannelIntensity(mean=500.0, std=250.0, median=480.0, min=0.0, max=4000.0,
                                   percentile_00_5=20.0, percentile_99_5=1500.0)


@dataclass(frozen=True)
class SummaryTask:
    """One row of the published table ((x, y, z) order as published) plus the MONAI parameters."""

    channels: list[str]  # as MSD dataset.json `modality`
    labels: list[str]  # as MSD dataset.json `labels`
    num_cases: int
    size_xyz: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]  # min, median, max
    spacing_xyz: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]  # min, median, max (mm)
    monai_target_z_mm: float | None = None  # MONAI target slice spacing, thinner than the median
    ct_intensity: tuple[float, float, float, float] | None = None  # MONAI clip low, high, mean, std (HU)


SUMMARY_TASKS = {
    "Task01_BrainTumour": SummaryTask(["FLAIR", "T1w", "t1gd", "T2w"],
                                      ["background", "edema", "non-enhancing tumor", "enhancing tumour"], 484,
                                      ((240, 240, 155),) * 3, ((1.0, 1.0, 1.0),) * 3),
    "Task02_Heart": SummaryTask(["MRI"], ["background", "left atrium"], 20,
                                ((320, 320, 90), (320, 320, 115), (320, 320, 130)), ((1.25, 1.25, 1.37),) * 3),
    "Task03_Liver": SummaryTask(["CT"], ["background", "liver", "cancer"], 131,
                                ((512, 512, 74), (512, 512, 432), (512, 512, 987)),
                                ((0.5566, 0.5566, 0.7), (0.7676, 0.7676, 1.0), (1.0, 1.0, 5.0)),
                                ct_intensity=(-17.0, 201.0, 99.40, 39.36)),
    "Task04_Hippocampus": SummaryTask(["MRI"], ["background", "Anterior", "Posterior"], 260,
                                      ((31, 40, 24), (35, 50, 36), (43, 59, 47)), ((1.0, 1.0, 1.0),) * 3),
    "Task05_Prostate": SummaryTask(["T2", "ADC"], ["background", "PZ", "TZ"], 32,
                                   ((256, 256, 11), (320, 320, 20), (384, 384, 24)),
                                   ((0.60, 0.60, 3.0), (0.63, 0.63, 3.6), (0.75, 0.75, 4.0))),
    "Task07_Pancreas": SummaryTask(["CT"], ["background", "pancreas", "cancer"], 281,
                                   ((512, 512, 37), (512, 512, 93), (512, 512, 751)),
                                   ((0.61, 0.61, 0.70), (0.80, 0.80, 2.5), (0.98, 0.98, 7.5)),
                                   ct_intensity=(-96.0, 215.0, 77.99, 75.4)),
    "Task08_HepaticVessel": SummaryTask(["CT"], ["background", "Vessel", "Tumour"], 303,
                                        ((512, 512, 24), (512, 512, 49), (512, 512, 181)),
                                        ((0.57, 0.57, 0.80), (0.80, 0.80, 5.0), (0.97, 0.97, 8.0)),
                                        monai_target_z_mm=1.5, ct_intensity=(-3.0, 243.0, 104.37, 52.62)),
    "Task09_Spleen": SummaryTask(["CT"], ["background", "spleen"], 41,
                                 ((512, 512, 31), (512, 512, 90), (512, 512, 168)),
                                 ((0.61, 0.61, 1.5), (0.79, 0.79, 5.0), (0.98, 0.98, 8.0)),
                                 monai_target_z_mm=1.6, ct_intensity=(-41.0, 176.0, 99.29, 39.47)),
    "Task10_Colon": SummaryTask(["CT"], ["background", "colon cancer primaries"], 126,
                                ((512, 512, 37), (512, 512, 95), (512, 512, 729)),
                                ((0.54, 0.54, 1.3), (0.78, 0.78, 5.0), (0.98, 0.98, 7.5)),
                                monai_target_z_mm=3.0, ct_intensity=(-30.0, 165.82, 62.18, 32.65)),
}
# Skull-stripped BraTS volumes crop to the brain's bounding box: estimated (z, y, x) median, not measured.
BRAIN_TUMOUR_CROPPED_SHAPE_ZYX = (138, 170, 138)


def _zyx(values) -> list[float]:
    return [float(v) for v in reversed(values)]


def _min_median_max(rows) -> dict[str, list[float]]:
    return {"0": _zyx(rows[0]), "50": _zyx(rows[1]), "100": _zyx(rows[2])}


def summary_fingerprint(task: str) -> Fingerprint:
    """Reference fingerprint from the published min / median / max (no per-case entries)."""
    row = SUMMARY_TASKS[task]
    raw_shape, spacing = _zyx(row.size_xyz[1]), _zyx(row.spacing_xyz[1])
    cropped_shape, cropped_percentiles = raw_shape, _min_median_max(row.size_xyz)
    notes = [SUMMARY_SOURCE]
    if task == "Task01_BrainTumour":
        cropped_shape = [float(v) for v in BRAIN_TUMOUR_CROPPED_SHAPE_ZYX]
        cropped_percentiles = {"50": cropped_shape}
        notes.append("Cropped shape (138, 170, 138) and relative size after cropping are ESTIMATES of the brain's "
                     "bounding box in skull-stripped volumes, not measured.")
    percentile_10 = list(spacing)
    if row.monai_target_z_mm is not None:
        percentile_10[0] = row.monai_target_z_mm
        notes.append(f"spacing_percentile_10 z = {row.monai_target_z_mm} mm, the target slice spacing of the "
                     f"{MONAI_SOURCE} (nnU-Net's rule: an anisotropic axis takes its 10th percentile); y and x: the "
                     "median.")
    else:
        notes.append("spacing_percentile_10 = the median spacing (not published).")
    if row.ct_intensity is not None:
        low, high, mean, std = row.ct_intensity
        intensity = ChannelIntensity(mean=mean, std=std, median=mean, min=low, max=high,
                                     percentile_00_5=low, percentile_99_5=high)
        notes.append(f"CT intensity statistics from the {MONAI_SOURCE}: clipping range = percentile_00_5 / "
                     "percentile_99_5, normalization mean / std = mean / std; median, min and max are not listed "
                     "there and are set to the mean and the clipping range.")
    else:
        intensity = PLACEHOLDER_MRI
        notes.append("Intensity statistics are PLACEHOLDERS, not from data (MRI: per-image z-score never reads them).")
    return Fingerprint(
        dataset_name=task,
        modality={str(i): name for i, name in enumerate(row.channels)},
        labels={str(i): name for i, name in enumerate(row.labels)},
        num_cases=row.num_cases, median_spacing=spacing, spacing_percentile_10=percentile_10,
        median_cropped_shape=cropped_shape,
        median_relative_size_after_cropping=float(np.prod(cropped_shape) / np.prod(raw_shape)),
        intensity_per_channel={str(i): intensity for i in range(len(row.channels))},
        spacing_percentiles=_min_median_max(row.spacing_xyz), cropped_shape_percentiles=cropped_percentiles,
        source=" ".join(notes),
    )


def lung_fingerprint(nnunet_fingerprint_path: Path) -> Fingerprint:
    """Task06_Lung from nnU-Net's own fingerprint (already in (z, y, x) order)."""
    data = json.loads(nnunet_fingerprint_path.read_text())
    spacings = np.asarray(data["spacings"], dtype=np.float64)
    shapes = np.asarray(data["shapes_after_crop"], dtype=np.int64)
    # nnU-Net does not record case ids, original shapes or crop boxes; the median relative size after
    # cropping is 1.0 (CT: no zero background), so each case's original shape is taken as its cropped one.
    cases = [
        CaseFingerprint(case_id=f"lung_case_{i:03d}", spacing=[float(s) for s in spacing],
                        original_shape=[int(n) for n in shape], cropped_shape=[int(n) for n in shape],
                        crop_box=[[0, int(n)] for n in shape], class_voxel_counts={})
        for i, (spacing, shape) in enumerate(zip(spacings, shapes))
    ]
    intensity = {k: ChannelIntensity(**{f: float(v[f]) for f in ChannelIntensity.__dataclass_fields__})
                 for k, v in data["foreground_intensity_properties_per_channel"].items()}
    return Fingerprint(
        dataset_name="Task06_Lung", modality={"0": "CT"}, labels={"0": "background", "1": "cancer"},
        num_cases=len(cases),
        median_spacing=[float(v) for v in np.median(spacings, axis=0)],
        spacing_percentile_10=[float(v) for v in np.percentile(spacings, 10, axis=0)],
        median_cropped_shape=[float(v) for v in np.median(shapes, axis=0)],
        median_relative_size_after_cropping=float(data["median_relative_size_after_cropping"]),
        intensity_per_channel=intensity, spacing_percentiles=axis_percentiles(spacings),
        cropped_shape_percentiles=axis_percentiles(shapes.astype(np.float64)), cases=cases,
        source=("nnU-Net v2 dataset_fingerprint.json of the 63 MSD Lung training cases "
                "(github.com/Usamakhan843/3D-Lung-Tumor-Segmentation-with-nnU-Net, commit "
                "9a89f94664b1945589c4f6be8a5c937c1b817a89; CC-BY-SA-4.0 MSD data): per-case spacings, "
                "cropped shapes and CT foreground intensity statistics are real. Case ids are positional "
                "(nnU-Net does not record them); original_shape = cropped_shape and crop boxes span the "
                "whole image (median relative size after cropping is 1.0); class voxel counts unknown."),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd-dir", type=Path, default=DEFAULT_MSD_DIR)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "fingerprints")
    args = parser.parse_args()
    fingerprints = [summary_fingerprint(task) for task in SUMMARY_TASKS]
    fingerprints.append(lung_fingerprint(args.msd_dir / "Task06_Lung.nnunet_fingerprint.json"))
    for fingerprint in sorted(fingerprints, key=lambda f: f.dataset_name):
        path = fingerprint.save(args.out / f"{fingerprint.dataset_name}.json")
        print(path)


if __name__ == "__main__":
    main()
