"""Time largest-foreground-component postprocessing: autoseg (cc3d) against scipy and scikit-image.

The volume is a uint8 label map with one large organ blob (an ellipsoid, label 1) and a few hundred
small islands (2-4 voxel cubes, label 1 or 2) scattered outside it: the shape of a typical raw
prediction. Every method does the same work: label with full connectivity, count component sizes in
one pass (the same bincount over the foreground voxels) and keep the largest foreground component.

    python bench/connected_components.py            # 512 x 512 x 600 (~2 GB of memory, ~20 s)
    python bench/connected_components.py --quick    # 256^3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from autoseg.postprocessing import keep_largest_foreground_component, largest_label

ISLANDS = 300
SEED = 0


def synthetic_prediction(shape: tuple[int, int, int], islands: int = ISLANDS, seed: int = SEED) -> np.ndarray:
    """uint8 (z, y, x): an ellipsoid organ over ~1/3 of each axis plus `islands` small cubes outside it."""
    rng = np.random.default_rng(seed)
    centre = np.array(shape) / 2
    radii = np.array(shape) / 6
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    volume = inside.astype(np.uint8)
    placed = 0
    while placed < islands:
        size = int(rng.integers(2, 5))
        corner = [int(rng.integers(0, n - size)) for n in shape]
        if np.any(np.abs(np.array(corner) - centre) < radii * 1.2):  # keep islands off the organ
            continue
        volume[tuple(slice(c, c + size) for c in corner)] = int(rng.integers(1, 3))
        placed += 1
    return volume


def _keep_largest_with(label_function, segmentation: np.ndarray) -> np.ndarray:
    foreground = segmentation > 0
    components = label_function(foreground)
    removed = foreground & (components != largest_label(components, foreground))
    return np.where(removed, 0, segmentation).astype(segmentation.dtype)


def _scipy_label(mask):
    from scipy import ndimage

    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))[0]


def _skimage_label(mask):
    from skimage import measure

    return measure.label(mask, connectivity=mask.ndim)


def _timed(function, volume, repeats: int) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(volume)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256^3 instead of 512 x 512 x 600")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the fastest is reported")
    args = parser.parse_args()
    shape = (256, 256, 256) if args.quick else (600, 512, 512)
    volume = synthetic_prediction(shape)
    print(f"volume {shape} uint8, {int((volume > 0).sum())} foreground voxels, {ISLANDS} islands; "
          f"best of {args.repeats} runs")

    methods = {
        "autoseg keep_largest_foreground_component (cc3d)": keep_largest_foreground_component,
        "scipy.ndimage.label + bincount": lambda v: _keep_largest_with(_scipy_label, v),
        "skimage.measure.label + bincount": lambda v: _keep_largest_with(_skimage_label, v),
    }
    seconds, results = {}, {}
    for name, function in methods.items():
        seconds[name], results[name] = _timed(function, volume, args.repeats)
    reference_name = next(iter(methods))
    for name in methods:
        same = np.array_equal(results[name], results[reference_name])
        ratio = seconds[name] / seconds[reference_name]
        print(f"{name:<52} {seconds[name]:8.3f} s   {ratio:5.2f}x autoseg   same result: {same}")


if __name__ == "__main__":
    main()
