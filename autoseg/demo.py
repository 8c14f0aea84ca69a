"""Deterministic synthetic datasets in MSD layout, for the demo and the tests.

Each 3D case is a body (an elliptic cylinder of soft tissue) holding an organ (an ellipsoid,
label 1) with a lesion inside it (a smaller sphere, label 2), at the given spacing, with
noise. CT intensities are in Hounsfield units with air at -1000 outside the body; MRI has a
zero background, so cropping to nonzero has something to remove. Shapes vary a little per case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.io import Geometry, picture_geometry, write_image_channels, write_segmentation

CT_HU = {"air": -1000.0, "body": 40.0, "organ": 90.0, "lesion": 20.0, "noise": 15.0}
MRI_LEVELS = {"body": 300.0, "organ": 650.0, "lesion": 950.0, "noise": 40.0}


@dataclass(frozen=True)
class DemoSpec:
    cases: int = 20
    shape: tuple[int, int, int] = (40, 64, 64)  # (z, y, x) voxels, for 3D
    spacing: tuple[float, float, float] = (2.0, 1.0, 1.0)  # (z, y, x) mm
    modality: str = "CT"  # "CT" or "MRI"
    channels: int = 1
    seed: int = 0
    test_cases: int = 2
    two_d: bool = False  # RGB PNG pictures instead of volumes


def _ellipsoid(grid: list[np.ndarray], center, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def _case_volume(spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
    """One case: image float32 (C, z, y, x), label uint8 (z, y, x), spacing (z, y, x)."""
    shape = tuple(max(8, int(round(s * rng.uniform(0.9, 1.1)))) for s in spec.shape)
    spacing = (spec.spacing[0], *(s * rng.uniform(0.95, 1.05) for s in spec.spacing[1:]))
    grid = np.meshgrid(*[np.arange(n) * sp for n, sp in zip(shape, spacing)], indexing="ij", sparse=True)
    extent = np.array(shape) * np.array(spacing)
    body = _ellipsoid(grid[1:], extent[1:] / 2, extent[1:] * 0.45) & np.ones(shape, bool)
    organ_center = extent / 2 + rng.uniform(-0.08, 0.08, 3) * extent
    organ_radii = extent * rng.uniform(0.22, 0.3, 3)
    organ = _ellipsoid(grid, organ_center, organ_radii) & body
    lesion_radius = organ_radii.min() * rng.uniform(0.3, 0.45)
    lesion_center = organ_center + rng.uniform(-0.3, 0.3, 3) * (organ_radii - lesion_radius)
    lesion = _ellipsoid(grid, lesion_center, [lesion_radius] * 3) & organ
    if not lesion.any():  # a sphere thinner than the slices can miss every voxel centre: widen it to
        # one voxel per axis, which always holds the voxel nearest its centre (0.5^2 * 3 < 1)
        lesion = _ellipsoid(grid, lesion_center, [max(lesion_radius, s) for s in spacing]) & organ
    label = organ.astype(np.uint8) + lesion.astype(np.uint8)
    channels = []
    for channel in range(spec.channels):
        contrast = 1.0 + 0.35 * channel  # channels differ in contrast, as MR sequences do
        if spec.modality.upper() == "CT":
            levels = CT_HU
            image = np.where(body, levels["body"], levels["air"])
        else:
            levels = MRI_LEVELS
            image = np.where(body, levels["body"], 0.0)
        image = np.where(organ, levels["organ"] * contrast, image)
        image = np.where(lesion, levels["lesion"] * contrast, image)
        image = image + rng.normal(0, levels["noise"], shape) * body
        channels.append(image.astype(np.float32))
    return np.stack(channels), label, spacing


def _case_picture(spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One RGB picture (3, y, x) uint8 with a blob-like 'polyp' (label 1)."""
    shape = tuple(max(16, int(round(s * rng.uniform(0.9, 1.1)))) for s in spec.shape[1:])
    yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij", sparse=True)
    center = np.array(shape) * rng.uniform(0.3, 0.7, 2)
    radii = np.array(shape) * rng.uniform(0.12, 0.22, 2)
    blob = ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1
    background = np.array([150.0, 90.0, 80.0])[:, None, None] + 25 * np.sin(xx / 7.0 + yy / 11.0)
    image = np.where(blob, np.array([210.0, 160.0, 120.0])[:, None, None], background)
    image = image + rng.normal(0, 12, (3, *shape))
    return np.clip(image, 0, 255).astype(np.uint8), blob.astype(np.uint8)


def make_demo_dataset(output_folder: str | Path, task_name: str = "Task900_Demo", spec: DemoSpec = DemoSpec()) -> Path:
    """Write `output_folder/task_name/` with imagesTr, labelsTr, imagesTs and dataset.json."""
    root = Path(output_folder) / task_name
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    ending = ".png" if spec.two_d else ".nii.gz"
    training, test = [], []
    for index in range(spec.cases + spec.test_cases):
        case_id = f"{task_name.split('_', 1)[-1].lower()}_{index:03d}"
        is_test = index >= spec.cases
        image_path = root / ("imagesTs" if is_test else "imagesTr") / f"{case_id}{ending}"
        label_path = root / "labelsTr" / f"{case_id}{ending}"
        if spec.two_d:
            image, label = _case_picture(spec, rng)
            image, label = image[:, None], label[None]  # pictures are one-slice volumes
            geometry = picture_geometry(*label.shape[1:])
        else:
            image, label, spacing = _case_volume(spec, rng)
            geometry = Geometry(shape=label.shape, spacing_zyx=tuple(float(s) for s in spacing))
        write_image_channels(image, geometry, image_path)
        if not is_test:
            write_segmentation(label, geometry, label_path)
        if is_test:
            test.append(f"./imagesTs/{image_path.name}")
        else:
            training.append({"image": f"./imagesTr/{image_path.name}", "label": f"./labelsTr/{label_path.name}"})
    if spec.two_d:
        modality = {"0": "R", "1": "G", "2": "B"}
        labels = {"0": "background", "1": "polyp"}
    else:
        names = ["CT"] if spec.modality.upper() == "CT" else [f"MR{c}" for c in range(spec.channels)]
        modality = {str(c): names[c] if c < len(names) else f"CT{c}" for c in range(spec.channels)}
        labels = {"0": "background", "1": "organ", "2": "lesion"}
    meta = {
        "name": task_name,
        "description": "Synthetic autoseg demo data",
        "tensorImageSize": "2D" if spec.two_d else "3D" if spec.channels == 1 else "4D",
        "modality": modality,
        "labels": labels,
        "numTraining": spec.cases,
        "numTest": spec.test_cases,
        "training": training,
        "test": test,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
