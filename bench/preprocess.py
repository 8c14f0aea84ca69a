"""Preprocessing speed and memory on a CT-sized synthetic case, against the simplest baseline.

    .venv/bin/python bench/preprocess.py            # 200x512x512 at 2.5x0.8x0.8 mm (needs ~6 GB RAM, ~2 minutes)
    .venv/bin/python bench/preprocess.py --quick    # 100x256x256, < 1 minute on 2 cores
    .venv/bin/python bench/preprocess.py --target 1.0,0.8,0.8   # another target spacing (z,y,x mm)

Default target spacing (2.0, 0.7, 0.7) mm: every axis changes and the case is anisotropic (2.5 / 0.8 > 3),
so autoseg takes its separate-axis path (cubic in-plane per slice, nearest slice along z).
Each variant runs in its own subprocess, as a preprocessing worker would: peak memory is the process's
high-water mark (VmHWM) minus its resident size after imports, so the case's own arrays (input
included) are counted. Variants:
  resample_image        autoseg.preprocessing.resample_image (separate axis)
  zoom_order3_baseline  scipy.ndimage.zoom(order=3) on the whole volume (what one writes first;
                        note: cubic along z too, so not the same result)
  resample_segmentation one-hot linear per label (labels -1, 0, 1)
  preprocess_case       the whole forward pipeline (crop, CT normalization, resampling, locations)
  restore_probabilities restore_to_original of 2-class probabilities (inference export); its
                        peak is what it adds to the probabilities already in memory
then the read time of one random training patch from the stored case: .npy (memory-mapped), a
compressed .npz, and, when the optional `blosc2` package is importable, a blosc2 file written as
nnU-Net >= 2.6 does (LZ4HC level 5, one-patch chunks); and the ratios against the baseline.

Recorded (2-core development machine shared with other jobs, load ~7: absolute times are pessimistic,
ratios within a run are what to read; blosc2 4.14.1 installed only for the measurement):

  full (200x512x512 -> 250x585x585)     seconds  cases/s  peak MiB  peak / float32 image
    resample_image                        9.9     0.101      635     1.94
    zoom_order3_baseline                 36.9     0.027     1371     4.20
    resample_segmentation                 6.1     0.164      473     1.45
    preprocess_case                      13.6     0.074     1000     3.06
    restore_probabilities                 4.5     0.225      601     1.84
  resample_image is 3.7x faster than the baseline with 2.2x less peak memory; a whole preprocess_case
  is 2.7x faster than the baseline's resampling alone. --quick: 4.9x faster, 2.35x less memory;
  preprocess_case peak 3.49x the float32 image (store.PEAK_MEMORY_FACTOR = 4 covers 3.06 to 3.49).
  --quick --target 1.0,0.8,0.8 (the in-plane grid is kept, slices are copied): 20.5x faster than the
  baseline, 2.1x less memory.

  patch read, 128^3 from the 250x585x585 case:  .npy mmap 3.5 ms (326 MiB on disk),
  blosc2 10.0 ms (148 MiB), .npz 2,659 ms (186 MiB); --quick 64x128x128: .npy 1.3 ms, blosc2 16.7 ms, .npz 279 ms.
  Decision (autoseg.preprocessing.store): uncompressed .npy read with np.load(mmap_mode="r"). It reads
  a patch 3 to 13x faster than blosc2 from the page cache and needs no extra dependency; blosc2 halves
  the disk space (2.2x smaller here) and would pay off where disk space or a slow network filesystem
  is the limit. .npz must decompress the whole volume for every patch: ruled out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_SHAPE, QUICK_SHAPE = (200, 512, 512), (100, 256, 256)
SPACING = (2.5, 0.8, 0.8)
DEFAULT_TARGET_SPACING = (2.0, 0.7, 0.7)
FULL_PATCH, QUICK_PATCH = (128, 128, 128), (64, 128, 128)
CT_STATS = {"0": {"mean": 40.0, "std": 60.0, "median": 40.0, "min": -1000.0, "max": 1500.0,
                  "percentile_00_5": -200.0, "percentile_99_5": 300.0}}


def memory_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_memory() -> int:
    """Reset the process's high-water mark (Linux clear_refs); returns the resident KiB now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return memory_kib("VmRSS")


def synthetic_ct(shape) -> tuple[np.ndarray, np.ndarray]:
    """Air (-1000 HU) around an elliptic body (40 HU + noise) holding an ellipsoid organ (label 1),
    built slice by slice so no full-size float64 temporaries exist."""
    z_size, y_size, x_size = shape
    rng = np.random.default_rng(0)
    image = np.empty((1, *shape), dtype=np.float32)
    seg = np.zeros(shape, dtype=np.int16)
    y, x = np.ogrid[:y_size, :x_size]
    body = ((y - y_size / 2) / (0.4 * y_size)) ** 2 + ((x - x_size / 2) / (0.45 * x_size)) ** 2 < 1
    for z in range(z_size):
        organ_radius = 1 - ((z - z_size / 2) / (0.3 * z_size)) ** 2
        organ = ((y - 0.45 * y_size) / (0.15 * y_size)) ** 2 + ((x - 0.4 * x_size) / (0.2 * x_size)) ** 2 < organ_radius
        noise = rng.standard_normal((y_size, x_size), dtype=np.float32) * 20
        image[0, z] = np.where(body, 40 + noise, -1000) + np.where(organ, 20, 0)
        seg[z] = organ
    return image, seg


def run_variant(name: str, shape, target_spacing, scratch: Path) -> dict:
    from scipy import ndimage

    from autoseg.io import Geometry
    from autoseg.preprocessing import (new_shape_for, preprocess_case, resample_image, resample_segmentation,
                                       restore_to_original, separate_axis_for)

    rss_after_imports = memory_kib("VmRSS")
    image, seg = synthetic_ct(shape)
    new_shape = new_shape_for(shape, SPACING, target_spacing)
    axis = separate_axis_for(SPACING, target_spacing)
    start = time.perf_counter()
    if name == "resample_image":
        out = resample_image(image, new_shape, axis)
    elif name == "zoom_order3_baseline":
        # One 3D call per channel: zooming the 4D array would also pad the channel axis for the spline filter.
        factors = [n / o for n, o in zip(new_shape, shape)]
        out = np.stack([ndimage.zoom(channel, factors, order=3, output=np.float32, mode="nearest", grid_mode=True)
                        for channel in image])
    elif name == "resample_segmentation":
        seg[:, :4] = -1  # a strip outside the nonzero region, as cropping marks it
        out = resample_segmentation(seg, new_shape, axis)
    elif name in ("preprocess_case", "restore_probabilities"):
        geometry = Geometry(shape=tuple(shape), spacing_zyx=SPACING)
        data, out, properties = preprocess_case(
            image, seg, geometry, transpose_forward=[0, 1, 2], target_spacing=target_spacing,
            normalization=["ct"], use_mask_for_norm=[False], intensity_stats=CT_STATS)
        if name == "preprocess_case":
            seconds = time.perf_counter() - start
            np.save(scratch / "case.npy", data)
            np.savez_compressed(scratch / "case.npz", data=data)
            if blosc2 is not None:
                write_blosc2(scratch / "case.b2nd", data, QUICK_PATCH if shape == QUICK_SHAPE else FULL_PATCH)
        else:
            del image, seg, data
            probabilities = np.stack([out == 0, out == 1]).astype(np.float32)
            del out
            rss_after_imports = reset_peak_memory()  # count only what the restore itself adds
            start = time.perf_counter()
            out = restore_to_original(probabilities, properties, is_segmentation=False)
    else:
        raise SystemExit(f"unknown variant {name}")
    if name != "preprocess_case":
        seconds = time.perf_counter() - start
    peak_mib = (memory_kib("VmHWM") - rss_after_imports) / 1024
    image_mib = 4 * max(np.prod(shape), np.prod(new_shape)) / 2**20  # float32, larger grid
    return {"variant": name, "seconds": round(seconds, 2), "cases_per_second": round(1 / seconds, 3),
            "peak_mib": round(peak_mib), "peak_over_float32_image": round(peak_mib / image_mib, 2),
            "output_shape": "x".join(map(str, out.shape))}


try:  # optional: not a dependency of autoseg; measured when installed
    import blosc2
except ImportError:
    blosc2 = None


def write_blosc2(path: Path, data: np.ndarray, patch) -> float:
    """nnU-Net >= 2.6's store: LZ4HC level 5, chunks about one patch, small blocks. Returns seconds."""
    start = time.perf_counter()
    chunks = (1, *(min(n, p) for n, p in zip(data.shape[1:], patch)))
    blocks = (1, *(min(n, 16) for n in chunks[1:]))
    blosc2.asarray(np.ascontiguousarray(data), urlpath=str(path), mode="w", chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 2})
    return time.perf_counter() - start


def patch_read_times(scratch: Path, patch, repeats_npy: int = 50, repeats_npz: int = 3) -> dict:
    rng = np.random.default_rng(0)

    def random_slices(shape):
        starts = [int(rng.integers(0, max(1, n - p) + 1)) for n, p in zip(shape[1:], patch)]
        return (slice(None), *(slice(s, s + p) for s, p in zip(starts, patch)))

    shape = np.load(scratch / "case.npy", mmap_mode="r").shape
    start = time.perf_counter()
    for _ in range(repeats_npy):
        np.array(np.load(scratch / "case.npy", mmap_mode="r")[random_slices(shape)])
    npy_seconds = (time.perf_counter() - start) / repeats_npy
    start = time.perf_counter()
    for _ in range(repeats_npz):
        with np.load(scratch / "case.npz") as archive:
            np.array(archive["data"][random_slices(shape)])
    npz_seconds = (time.perf_counter() - start) / repeats_npz
    result = {"patch": "x".join(map(str, patch)), "npy_mmap_ms": round(1000 * npy_seconds, 2),
              "npz_ms": round(1000 * npz_seconds, 1),
              "npz_over_npy": round(npz_seconds / npy_seconds, 1),
              "npy_mib": round((scratch / "case.npy").stat().st_size / 2**20, 1),
              "npz_mib": round((scratch / "case.npz").stat().st_size / 2**20, 1)}
    if blosc2 is not None and (scratch / "case.b2nd").exists():
        start = time.perf_counter()
        for _ in range(repeats_npy):
            np.asarray(blosc2.open(str(scratch / "case.b2nd"), mode="r")[random_slices(shape)])
        b2_seconds = (time.perf_counter() - start) / repeats_npy
        result.update({"blosc2_ms": round(1000 * b2_seconds, 2), "blosc2_over_npy": round(b2_seconds / npy_seconds, 1),
                       "blosc2_mib": round((scratch / "case.b2nd").stat().st_size / 2**20, 1)})
    return result


def ratios(variants: list[dict]) -> dict:
    """autoseg against the plain scipy baseline measured in the same run (> 1: autoseg is better)."""
    by_name = {v["variant"]: v for v in variants}
    ours, baseline = by_name["resample_image"], by_name["zoom_order3_baseline"]
    return {"resample_image_speedup_vs_zoom": round(baseline["seconds"] / ours["seconds"], 2),
            "resample_image_peak_memory_vs_zoom": round(baseline["peak_mib"] / max(1, ours["peak_mib"]), 2),
            "preprocess_case_speed_vs_zoom_alone": round(baseline["seconds"] / by_name["preprocess_case"]["seconds"], 2)}


VARIANTS = ["resample_image", "zoom_order3_baseline", "resample_segmentation", "preprocess_case",
            "restore_probabilities"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100x256x256 instead of 200x512x512")
    parser.add_argument("--target", default=",".join(map(str, DEFAULT_TARGET_SPACING)),
                        help="target spacing z,y,x in mm (default %(default)s)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    target = tuple(float(v) for v in args.target.split(","))
    if args.variant:
        print(json.dumps(run_variant(args.variant, shape, target, Path(args.scratch))))
        return
    results = {"shape": "x".join(map(str, shape)), "spacing_mm": "x".join(map(str, SPACING)),
               "target_spacing_mm": "x".join(map(str, target)), "variants": []}
    with tempfile.TemporaryDirectory() as scratch:
        for name in VARIANTS:
            command = [sys.executable, __file__, "--variant", name, "--scratch", scratch, "--target", args.target]
            command += ["--quick"] if args.quick else []
            finished = subprocess.run(command, capture_output=True, text=True, check=True)
            results["variants"].append(json.loads(finished.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["variants"][-1]), file=sys.stderr)
        results["patch_read"] = patch_read_times(Path(scratch), QUICK_PATCH if args.quick else FULL_PATCH)
    results["ratios"] = ratios(results["variants"])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
