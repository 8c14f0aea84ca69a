"""Build fingerprints/TaskXX_Name.json for the ten MSD tasks, for planning without the images.

Usage: python bench/make_reference_fingerprints.py [--msd-dir /work/shared/msd] [--out fingerprints]

Sources:
- Task06_Lung: the fingerprint nnU-Net v2 wrote for the 63 MSD Lung training cases
  (MSD_DIR/Task06_Lung.nnunet_fingerprint.json; per-case spacings and cropped shapes, CT foreground
  intensity statistics).
- The other nine: the published min / median / max table of MSD_DIR/README.md (raw sizes and spacings,
  (x, y, z) there, converted here to autoseg's (z, y, x)), typed in below.

Choices for the summary-only tasks (each written into the file's `source`):
- median spacing / shape: the published medians. The cropped shape is the raw one (relative size 1.0:
  CT and the cropped MRI tasks have no zero background), except BrainTumour, whose skull-stripped
  volumes crop to the brain; its cropped shape (138, 170, 138) is an estimate, not a measurement.
- spacing_percentile_10: the median. Only min / median / max are published, and slice thicknesses are
  a few discrete values (e.g. 0.7, 1, 1.5, 2.5, 5 mm) with most cases at the median, so no
  interpolation between min and median estimates the 10th percentile better; the median is the
  conservative choice (the planner then keeps the median spacing even for anisotropic tasks).
- intensity statistics: placeholders (not from data) per modality; they only matter for "ct"
  normalization and must be replaced by a real fingerprint before training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoseg.fingerprint import CaseFingerprint, ChannelIntensity, Fingerprint

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MSD_DIR = Path("/work/shared/msd")
SUMMARY_SOURCE = ("built from published summary statistics: MSD (Simpson et al. 2019, arXiv:1902.09063; "
                  "Antonelli et al. 2022) for cases and labels, openmedlab Awesome-Medical-Dataset per-task pages "
                  "for median size and spacing (see /work/shared/msd/README.md). spacing_percentile_10 = median "
                  "spacing (only min/median/max published). Intensity statistics are PLACEHOLDERS, not from data.")

# Placeholder foreground intensity statistics (not measured): soft tissue in HU for CT, arbitrary
# MRI units otherwise. Only "ct" normalization reads them.
PLACEHOLDER_CT = ChannelIntensity(mean=100.0, std=60.0, median=100.0, min=-1024.0, max=3071.0,
                                  percentile_00_5=-100.0, percentile_99_5=300.0)
PLACEHOLDER_MRI = ChannelIntensity(mean=500.0, std=250.0, median=480.0, min=0.0, max=4000.0,
                                   percentile_00_5=20.0, percentile_99_5=1500.0)

# task -> (channel names as MSD dataset.json, labels as MSD dataset.json, training cases,
#          median size (x, y, z) voxels, median spacing (x, y, z) mm)
SUMMARY_TASKS = {
    "Task01_BrainTumour": (["FLAIR", "T1w", "t1gd", "T2w"],
                           ["background", "edema", "non-enhancing tumor", "enhancing tumour"],
                           484, (240, 240, 155), (1.0, 1.0, 1.0)),
    "Task02_Heart": (["MRI"], ["background", "left atrium"], 20, (320, 320, 115), (1.25, 1.25, 1.37)),
    "Task03_Liver": (["CT"], ["background", "liver", "cancer"], 131, (512, 512, 432), (0.7676, 0.7676, 1.0)),
    "Task04_Hippocampus": (["MRI"], ["background", "Anterior", "Posterior"], 260, (35, 50, 36), (1.0, 1.0, 1.0)),
    "Task05_Prostate": (["T2", "ADC"], ["background", "PZ", "TZ"], 32, (320, 320, 20), (0.63, 0.63, 3.6)),
    "Task07_Pancreas": (["CT"], ["background", "pancreas", "cancer"], 281, (512, 512, 93), (0.80, 0.80, 2.5)),
    "Task08_HepaticVessel": (["CT"], ["background", "Vessel", "Tumour"], 303, (512, 512, 49), (0.80, 0.80, 5.0)),
    "Task09_Spleen": (["CT"], ["background", "spleen"], 41, (512, 512, 90), (0.79, 0.79, 5.0)),
    "Task10_Colon": (["CT"], ["background", "colon cancer primaries"], 126, (512, 512, 95), (0.78, 0.78, 5.0)),
}
# Skull-stripped BraTS volumes crop to the brain's bounding box: estimated (z, y, x) median, not measured.
BRAIN_TUMOUR_CROPPED_SHAPE_ZYX = (138, 170, 138)


def summary_fingerprint(task: str) -> Fingerprint:
    """Reference fingerprint from the published medians (no per-case entries)."""
    channels, labels, num_cases, size_xyz, spacing_xyz = SUMMARY_TASKS[task]
    raw_shape = [float(v) for v in reversed(size_xyz)]
    spacing = [float(v) for v in reversed(spacing_xyz)]
    cropped_shape, source = raw_shape, SUMMARY_SOURCE
    if task == "Task01_BrainTumour":
        cropped_shape = [float(v) for v in BRAIN_TUMOUR_CROPPED_SHAPE_ZYX]
        source += (" Cropped shape (138, 170, 138) and relative size after cropping are ESTIMATES of the "
                   "brain's bounding box in skull-stripped volumes, not measured.")
    relative_size = float(np.prod(cropped_shape) / np.prod(raw_shape))
    is_ct = channels == ["CT"]
    return Fingerprint(
        dataset_name=task,
        modality={str(i): name for i, name in enumerate(channels)},
        labels={str(i): name for i, name in enumerate(labels)},
        num_cases=num_cases, median_spacing=spacing, spacing_percentile_10=list(spacing),
        median_cropped_shape=cropped_shape, median_relative_size_after_cropping=relative_size,
        intensity_per_channel={str(i): PLACEHOLDER_CT if is_ct else PLACEHOLDER_MRI for i in range(len(channels))},
        source=source,
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
        intensity_per_channel=intensity, cases=cases,
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
