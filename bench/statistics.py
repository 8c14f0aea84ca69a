"""Time `predict --statistics` and `--preview` on one CT-sized case: autoseg's one-pass statistics against
the plain per-label loop (a full-volume comparison per label), and the preview PNG.

The case: a float32 image and an int16 label map with LABELS box-shaped structures of varied sizes (the
fraction of voxels labelled is printed). Both statistics methods compute the same numbers (checked), so
the ratio is the cost of the method alone.

    python bench/statistics.py            # 300 x 512 x 512, 40 labels
    python bench/statistics.py --quick    # 100 x 256 x 256, 40 labels
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from autoseg.figures import write_preview
from autoseg.io import Geometry
from autoseg.statistics import case_statistics

LABELS = 40
SEED = 0


def synthetic_case(shape: tuple[int, int, int], labels: int = LABELS, seed: int = SEED):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 100, (1, *shape)).astype(np.float32)
    segmentation = np.zeros(shape, np.int16)
    for value in range(1, labels + 1):
        size = [int(rng.integers(n // 10, n // 4)) for n in shape]
        corner = [int(rng.integers(0, n - s)) for n, s in zip(shape, size)]
        segmentation[tuple(slice(c, c + s) for c, s in zip(corner, size))] = value
    return image, segmentation


def per_label_loop(segmentation: np.ndarray, image: np.ndarray, labels: int) -> list[tuple[int, float, float]]:
    """The plain way: a mask per label over the whole volume. (voxels, mean, median) per label."""
    rows = []
    for value in range(1, labels + 1):
        mask = segmentation == value
        inside = image[0][mask].astype(np.float64)
        np.nonzero(mask)  # the bounding box's coordinates
        rows.append((int(mask.sum()), float(inside.mean()) if inside.size else None,
                     float(np.median(inside)) if inside.size else None))
    return rows


def timed(function, *arguments):
    started = time.perf_counter()
    result = function(*arguments)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    shape = (100, 256, 256) if args.quick else (300, 512, 512)
    image, segmentation = synthetic_case(shape)
    geometry = Geometry(shape, (1.5, 0.8, 0.8))
    names = {v: f"structure {v}" for v in range(1, LABELS + 1)}
    ours, ours_seconds = timed(case_statistics, "case", segmentation, image, geometry, names, ["CT"])
    loop, loop_seconds = timed(per_label_loop, segmentation, image, LABELS)
    for entry, (voxels, mean, median) in zip(ours.labels, loop):
        assert entry.voxels == voxels and entry.intensity["CT"]["median"] == median
        assert mean is None or abs(entry.intensity["CT"]["mean"] - mean) <= 1e-9 * max(1.0, abs(mean))
    with tempfile.TemporaryDirectory() as folder:
        write_preview(segmentation[:, :8, :8], image[:, :, :8, :8], Geometry((shape[0], 8, 8), geometry.spacing_zyx),
                      names, Path(folder) / "warm.png")  # matplotlib's imports and fonts, paid once per predict
        _, preview_seconds = timed(write_preview, segmentation, image, geometry, names, Path(folder) / "p.png")
    labelled = float(np.count_nonzero(segmentation)) / segmentation.size
    print(f"case {shape} voxels, {LABELS} labels, {labelled:.0%} labelled")
    print(f"statistics, one pass:    {ours_seconds:6.2f} s")
    print(f"statistics, label loop:  {loop_seconds:6.2f} s  ({loop_seconds / ours_seconds:.2f}x the one pass)")
    print(f"preview PNG:             {preview_seconds:6.2f} s  ({preview_seconds / ours_seconds:.2f}x the statistics)")


if __name__ == "__main__":
    main()
