"""Benchmark of autoseg.inference.sliding_window against a naive sliding window, in the same run.

    .venv/bin/python bench/sliding_window.py --quick        # 128x256x256 volume
    .venv/bin/python bench/sliding_window.py                # 300x512x512 volume (slow on CPU)

The sliding-window core alone, on random data. The whole `autoseg predict` path (preprocessing,
export, memory per voxel, precisions) is measured by bench/predict.py, which reuses the network
and the naive baseline defined here.

Network: `build_plain_unet` of a small 4-stage 3D Architecture (`--features` at stage 0, doubling
per stage; random weights, eval mode, deep supervision off); only its cost matters, not its output.
The network's cost is the same in every variant; a lighter network makes the stitching overhead,
which is what differs, a larger share of the time.

Variants, each in a fresh subprocess so that peak memory is its own:
  naive: windows one at a time, no Gaussian (plain mean), accumulators sum + count per class in
         float32 (as nnU-Net v1 kept `aggregated_nb_of_predictions` per class);
  core:  `predict_sliding_window` with `--batch-windows` windows per call, Gaussian weighting
         (each window pre-divided by the separable weight sum: no weight buffer), softmax averaged;
  core_bf16: core with the networks under torch.autocast(bfloat16) (not run by default; pays off
         on CPUs with avx512_bf16/AMX, and is the float16 path on CUDA).
each without and with mirror TTA (8 passes).

Time: wall seconds and process CPU seconds (user + system); on a shared machine the CPU time is
the steadier of the two.

Memory: peak resident set size (resource.getrusage ru_maxrss) of the subprocess after setup
(torch, network, input volume) and after prediction; "delta" is what prediction added on top.
Accumulator bytes per voxel are computed from the buffers each variant allocates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time

NUM_CLASSES = 3


def small_architecture(base_features: int, patch_dimension: int = 3):
    """The benchmark U-Net: 4 stages, `base_features` doubling per stage, 3x3(x3) kernels, stride 2
    below stage 0 (patches must be divisible by 8), NUM_CLASSES outputs, no deep supervision."""
    from autoseg.network.architecture import Architecture

    stages = 4
    return Architecture(
        name="plain_unet", dimension=patch_dimension, input_channels=1, num_classes=NUM_CLASSES,
        features_per_stage=[base_features * 2 ** s for s in range(stages)],
        kernel_sizes=[[3] * patch_dimension] * stages,
        strides=[[1] * patch_dimension] + [[2] * patch_dimension] * (stages - 1),
        deep_supervision=False)


def build_network(base_features: int, patch_dimension: int = 3):
    import torch

    from autoseg.network.unet import build_plain_unet

    torch.manual_seed(0)
    return build_plain_unet(small_architecture(base_features, patch_dimension)).eval()


def naive_sliding_window(network, image, patch_size, mirror: bool):
    """The straightforward version: one window per call, plain mean, per-class count map."""
    import torch

    from autoseg.inference.sliding_window import DEFAULT_STEP_FRACTION, mirror_axes_combinations, window_starts

    spatial = image.shape[1:]
    summed = torch.zeros((NUM_CLASSES, *spatial))
    counts = torch.zeros((NUM_CLASSES, *spatial))
    flips = mirror_axes_combinations(range(len(patch_size)) if mirror else ())
    for corner in itertools.product(*window_starts(spatial, patch_size, DEFAULT_STEP_FRACTION)):
        window = (slice(None), *(slice(s, s + p) for s, p in zip(corner, patch_size)))
        with torch.no_grad():
            # contiguous: conv3d on a strided view of the volume is several times slower on CPU
            batch = image[window][None].contiguous()
            logits = sum(network(batch.flip([a + 2 for a in f])).flip([a + 2 for a in f])
                         for f in flips) / len(flips)
        summed[window] += logits[0]
        counts[window] += 1
    return summed / counts


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(args) -> dict:
    """Runs inside the subprocess: one variant, measured."""
    import torch

    from autoseg.inference.stitching import predict_sliding_window

    torch.set_num_threads(args.threads)
    network = build_network(args.features)
    image = torch.randn(1, *args.size)
    rss_setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mirror = args.variant.endswith("tta")
    windows = []
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if args.variant.startswith("naive"):
        naive_sliding_window(network, image, args.patch, mirror)
        accumulator_bytes = 2 * NUM_CLASSES * 4
    else:
        predict_sliding_window(
            [network], image, args.patch, num_classes=NUM_CLASSES,
            mirror_axes=None if mirror else (), batch_windows=args.batch_windows,
            autocast_dtype=torch.bfloat16 if "bf16" in args.variant else None,
            progress=lambda done, total: windows.append(total))
        accumulator_bytes = NUM_CLASSES * 4
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_seconds() - cpu_start
    rss_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    voxels = int(torch.tensor(args.size).prod())
    return {"variant": args.variant, "seconds": seconds, "voxels_per_s": voxels / seconds,
            "cpu_seconds": cpu_seconds, "voxels_per_cpu_s": voxels / cpu_seconds,
            "windows": windows[-1] if windows else None,
            "rss_setup_mb": rss_setup_kb / 1024, "rss_peak_mb": rss_peak_kb / 1024,
            "accumulator_bytes_per_voxel": accumulator_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128x256x256 instead of 300x512x512")
    parser.add_argument("--size", type=int, nargs=3, default=None)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 128, 128])
    parser.add_argument("--batch-windows", type=int, default=2)
    parser.add_argument("--features", type=int, default=None,
                        help="U-Net features at stage 0 (default 4 with --quick, else 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+",
                        default=["naive", "core", "naive_tta", "core_tta"])
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the subprocess
    args = parser.parse_args()
    args.size = args.size or ([128, 256, 256] if args.quick else [300, 512, 512])
    args.features = args.features or (4 if args.quick else 8)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    print(f"volume {args.size}, patch {args.patch}, {NUM_CLASSES} classes, "
          f"U-Net 4 stages {args.features}..{args.features * 8} features, "
          f"{args.threads} threads, batch_windows {args.batch_windows}")
    results = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--variant", variant, "--size", *map(str, args.size),
                   "--patch", *map(str, args.patch), "--threads", str(args.threads),
                   "--batch-windows", str(args.batch_windows), "--features", str(args.features)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results[variant] = result
        print(f"{variant:13s} {result['seconds']:6.1f} s {result['voxels_per_s'] / 1e6:6.3f} Mvox/s"
              f" | CPU {result['cpu_seconds']:6.1f} s"
              f" {result['voxels_per_cpu_s'] / 1e6:6.3f} Mvox/CPU-s"
              f"  windows {result['windows'] or '-'}"
              f"  peak RSS {result['rss_peak_mb']:7.0f} MB"
              f" (+{result['rss_peak_mb'] - result['rss_setup_mb']:.0f} MB over setup)"
              f"  accumulators {result['accumulator_bytes_per_voxel']} B/voxel")
    for suffix, core_name in itertools.product(("", "_tta"), ("core", "core_bf16")):
        naive, core = results.get("naive" + suffix), results.get(core_name + suffix)
        if naive and core:
            print(f"speed {core_name}/naive{suffix or ' (no TTA)'}: "
                  f"{core['voxels_per_s'] / naive['voxels_per_s']:.2f}x wall, "
                  f"{core['voxels_per_cpu_s'] / naive['voxels_per_cpu_s']:.2f}x CPU time")


if __name__ == "__main__":
    main()
