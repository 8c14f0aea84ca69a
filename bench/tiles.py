"""Benchmark of inference tiles: today's sliding window (training patch, step 0.5) against large tiles,
on the same trained network, in the same run.

    .venv/bin/python bench/tiles.py --quick     # (a) with and without TTA, (b) without, ~2 minutes on 2 cores
    .venv/bin/python bench/tiles.py             # (a), (b) and (c) the 300x512x512 CT (long on a CPU)

The network: bench/predict.py's small 4-stage U-Net (`--features` at stage 0, downsampling 8 per axis),
trained for `--train-steps` steps on `--patch` crops of a synthetic CT (bench/predict.py `synthetic_ct`:
body, organ, lesion) on the network's grid. The volumes, generated on that grid (another seed, so other
noise; the anatomy scales with the volume):
  (a) demo   40x64x64, the size of the demo task's cases;
  (b) mri    20x256x256, a thick-slice MRI-like volume (few slices, large in-plane);
  (c) ct     300x512x512, a CT-like volume (--full only).
Each volume goes through `predict_probabilities` as `autoseg predict` runs it (tile chooser, memory
budget, batched windows, stitching), with patch mode and large mode, without and with mirror TTA.
Printed per run: seconds (minimum over `--repeats`), the speed-up of large vs patch, the windows
and their size, and the label agreement Dice per label of large vs patch (the issue's bar is 0.99),
with each mode's Dice against the true labels as a sanity check that the network segments at all.

Weighting and overlap of large tiles (part "variants", without TTA; --quick: volume (a) only): the
flat-top window (weight 1 inside, a Gaussian fall-off to exp(-8) over the overlap) on tiles of the
training patch's size (what stitching alone changes), on the chosen tiles at overlaps of 0, 8, 16 and
32 voxels, and a Gaussian of sigma = tile / 8 (nnU-Net's window, scaled to the tile) at 16 voxels;
agreement with patch mode says which blends the tiles' borders best.

Measured 2026-12-02 on the shared 2-core AMD EPYC (load average ~12), torch 2.13 CPU, 1 thread, fp32,
--quick (U-Net 4..32 features, patch 16x48x48, downsampling 8; seconds are one run each, noisy):
  60 training steps (organ Dice vs truth 0.93 in patch mode on (a)):
    (a) 40x64x64   TTA off: patch 3.3 s (16 windows)  large 1.2 s (2 x 24x64x64)   2.71x  agreement organ 0.9313
    (a) 40x64x64   TTA on:  patch 34.1 s              large 9.8 s                   3.49x  agreement organ 0.9337
    (b) 20x256x256 TTA off: patch 77.8 s (200)        large 25.1 s (2 x 16x256x256) 3.10x  agreement organ 0.5229
        (vs truth: patch 0.568, large 0.870: the 48x48 patch sees too little of the larger organ)
    variants on (a): patch-sized tiles with the flat-top window 0.9990; chosen tiles with overlap 0 / 8 /
    16 / 32: 0.9337 / 0.9313 / 0.9313 / 0.9313; a tile-sized Gaussian 0.9314.
  200 training steps: (a) 3.55x / 3.33x (TTA off / on), agreement 0.6938 / 0.7625; (b) 3.40x, 0.5415.
  --features 8, 100 steps: (a) 3.16x / 2.83x, agreement 0.9377 / 0.9377 (vs truth patch 0.955, large 0.903).
  The lesion is never predicted by this network in either mode (agreement "nan": both empty).
  So the stitching (window, overlap) agrees with patch mode; the tile size does not, through the
  InstanceNorm statistics. Below the 0.99 bar: patch mode stays the default (`DEFAULT_TILE_MODE`).
  (c) at 300x512x512 was not run on this machine (patch mode with TTA takes hours on 2 busy cores);
    --quick --volumes ct --ct-size 64 192 192 (60 steps, TTA off): patch 40.8 s (343 windows), large
    7.9 s (2 x 64x104x192), 5.15x, agreement organ 0.5355 (vs truth: patch 0.556, large 0.931).
  The anatomy of (b) and (c) is larger than the training volume's (it scales with the volume), which
  the 16x48x48 patch sees too little of: there large tiles are closer to the truth, not to patch mode.
Batches: a batch of one makes PyTorch's CPU conv3d fall back from oneDNN to its native kernel
(slow_conv3d) wherever batch x channels x depth x height <= 20480, 2-6x slower per voxel here; the
chooser therefore fills whole batches of 2 on a CPU (an image of one tile is cut in two).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import bench_plans, dice_per_class, synthetic_ct, train_small_unet, trained_model  # noqa: E402

VOLUMES = {"demo": [40, 64, 64], "mri": [20, 256, 256], "ct": [300, 512, 512]}
TRAIN_SHAPE = [48, 128, 128]
SPACING = [2.5, 1.0, 1.0]


def predict_labels(model, data, settings, repeats: int):
    """(int16 labels, best seconds, tiling) of `predict_probabilities` on preprocessed data."""
    from autoseg.inference.case import choose_tiling, predict_probabilities

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        probabilities = predict_probabilities(model, data, settings)
        seconds.append(time.perf_counter() - start)
    labels = probabilities.argmax(0).numpy().astype(np.int16)
    return labels, min(seconds), choose_tiling(model, data.shape[1:], settings)


def windows(tiling, shape, step_fraction: float) -> int:
    from autoseg.inference.sliding_window import padded_shape, tile_starts, window_starts

    image = padded_shape(shape, tiling.window)
    starts = (window_starts(image, tiling.window, step_fraction) if tiling.overlap is None
              else tile_starts(image, tiling.window, tiling.overlap))
    return int(np.prod([len(s) for s in starts]))


def compare_modes(name, model, data, label, args, tta_options) -> None:
    from autoseg.inference.case import PredictionSettings

    for tta in tta_options:
        runs = {}
        for mode in ("patch", "large"):
            settings = PredictionSettings(tile_mode=mode, mirror_axes=None if tta else (), precision="fp32")
            runs[mode] = predict_labels(model, data, settings, args.repeats)
        (patch, patch_s, patch_tiling), (large, large_s, large_tiling) = runs["patch"], runs["large"]
        agreement = dice_per_class(large, patch)
        truth = {mode: dice_per_class(labels, label) for mode, (labels, _, _) in runs.items()}
        print(f"{name:5s} {list(data.shape[1:])!s:15s} tta {'on ' if tta else 'off'}"
              f" | patch {patch_s:6.1f} s ({windows(patch_tiling, data.shape[1:], 0.5)} x {patch_tiling.window})"
              f" | large {large_s:6.1f} s ({windows(large_tiling, data.shape[1:], 0.5)} x {large_tiling.window})"
              f" | {patch_s / large_s:5.2f}x | agreement Dice organ {agreement[1]:.4f} lesion {agreement[2]:.4f}"
              f" | vs truth organ {truth['patch'][1]:.3f}/{truth['large'][1]:.3f}"
              f" lesion {truth['patch'][2]:.3f}/{truth['large'][2]:.3f} (patch/large)")


def compare_variants(name, model, data, args) -> None:
    """Large-tile variants without TTA, against patch mode: tiles of the training patch's size with the
    flat-top window (isolates the weighting and overlap from the tile size), the chosen tiles with the
    flat-top at several overlaps, and with a tile-sized Gaussian."""
    from autoseg.inference import sliding_window, stitching
    from autoseg.inference.case import PredictionSettings
    from autoseg.inference.sliding_window import axis_profiles

    patch, _, _ = predict_labels(model, data, PredictionSettings(tile_mode="patch", mirror_axes=()), 1)
    patch_tiles = mock.patch.object(sliding_window, "choose_tile_size", lambda image, patch, *_, **__: list(patch))
    tile_gaussian = mock.patch.object(stitching, "tile_profiles", lambda tile, _, use: axis_profiles(tile, use))
    variants = [("patch-sized, flat-top 16", 16, patch_tiles)]
    variants += [(f"flat-top, overlap {overlap}", overlap, contextlib.nullcontext()) for overlap in (0, 8, 16, 32)]
    variants.append(("gaussian tile/8, overlap 16", 16, tile_gaussian))
    for label, overlap, context in variants:
        settings = PredictionSettings(tile_mode="large", tile_overlap=overlap, mirror_axes=())
        with context:
            large, seconds, tiling = predict_labels(model, data, settings, 1)
        agreement = dice_per_class(large, patch)
        print(f"  {name:5s} {label:28s} tile {tiling.window} x {windows(tiling, data.shape[1:], 0.5)}"
              f" {seconds:6.1f} s  agreement Dice organ {agreement[1]:.4f} lesion {agreement[2]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="volumes (a) and (b) only, one repeat")
    parser.add_argument("--volumes", nargs="+", choices=list(VOLUMES), default=None)
    parser.add_argument("--ct-size", type=int, nargs=3, default=VOLUMES["ct"], help="volume (c), z y x voxels")
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-variants", action="store_true", help="skip the weighting / overlap variants")
    args = parser.parse_args()
    volumes = args.volumes or (["demo", "mri"] if args.quick else list(VOLUMES))
    args.repeats = args.repeats or (1 if args.quick else 2)
    import torch

    from autoseg.inference.case import preprocess_for
    from autoseg.io import Geometry

    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    plans = bench_plans(SPACING, SPACING, args.patch, args.features)
    network, train_seconds = train_small_unet(plans, args.features, args.train_steps, TRAIN_SHAPE)
    model = trained_model(plans, [network])
    print(f"torch {torch.__version__}, {args.threads} thread(s); U-Net {args.features} features at stage 0 trained "
          f"{args.train_steps} steps on {args.patch} crops ({train_seconds:.0f} s); fp32; time = min of {args.repeats}")
    sizes = {**VOLUMES, "ct": args.ct_size}
    for name in volumes:
        image, label = synthetic_ct(sizes[name], SPACING, seed=2)
        data, _ = preprocess_for(model, image, Geometry(shape=tuple(sizes[name]), spacing_zyx=tuple(SPACING)))
        # --quick: the thick-slice volume without TTA only (patch mode with TTA takes minutes there).
        compare_modes(name, model, data, label, args, (False,) if args.quick and name != "demo" else (False, True))
        if not args.no_variants and (name == "demo" or not args.quick) and name != "ct":
            compare_variants(name, model, data, args)


if __name__ == "__main__":
    main()
