"""Benchmark of `autoseg predict` on a large synthetic CT: voxels/s, peak memory per voxel, and the
network precisions, each against a baseline measured in the same run.

    .venv/bin/python bench/predict.py --quick       # < 2 minutes on 2 cores
    .venv/bin/python bench/predict.py               # 300x512x512 at 2.5x0.8x0.8 mm (~10 minutes on 2 cores)
    .venv/bin/python bench/predict.py --parts pipeline --size 600 512 512 --variants core   # the 24 GiB CT

The volume: a synthetic CT (Hounsfield units: air -1000, body 40, organ 90, lesion 20, noise 15),
(z, y, x) = `--size` voxels at `--spacing` mm, labels 0 background / 1 organ / 2 lesion. The plan
(made here, not by the planner): target spacing `--target-spacing` (in-plane 0.8 -> 1.0 mm, so both
resampling directions run), CT normalization, 3 classes.

Part "pipeline" (the whole predict path: preprocessing, sliding window, export to the original grid):
one fresh subprocess per variant, so that each peak resident set size (ru_maxrss) is its own.
  core / core_tta:   `autoseg.inference.predictor` as `autoseg predict` runs it (batched windows,
                     Gaussian weights, softmax averaged, per-class restore with a running argmax);
                     without / with mirror TTA (8 passes);
  naive / naive_tta: the straightforward version: windows one at a time, no Gaussian (plain mean),
                     sum + count accumulators per class (bench/sliding_window.py), softmax of the
                     whole volume, all classes restored at once (`restore_to_original`), np.argmax.
The network is a per-voxel threshold of the normalized intensity (organ vs the rest; costs almost
nothing), so this part measures what the pipeline itself costs in time and memory; a real network
adds its own time per window (part "precision") and a fixed activation memory per window batch
(independent of the volume size). Memory: "setup" is the RSS with torch, the network and the input
image (float32, 4 bytes per voxel, as `read_image` returns it) loaded; "B/voxel" is (peak - setup)
divided by the number of input voxels: what predicting adds per voxel of the input.

Part "precision" (network-dominated speed): a small 4-stage U-Net (bench/sliding_window.py), trained
here for `--train-steps` steps on crops of another synthetic CT, predicts a smaller volume (already in
the network's grid) with the sliding window only, no TTA: fp32, bf16 autocast, channels_last_3d,
both, and the naive sliding window (fp32), interleaved round-robin `--repeats` times in one process
(load from other processes hits all alike; the minimum is the least disturbed time). Agreement Dice
per class of each segmentation vs the fp32 one says whether the faster precision segments the same;
Dice vs the true labels says the network learned something to agree on.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sliding_window import NUM_CLASSES, naive_sliding_window, small_architecture  # noqa: E402

CT_HU = {"air": -1000.0, "body": 40.0, "organ": 90.0, "lesion": 20.0, "noise": 15.0}
# Foreground (organ + lesion) intensity statistics as a fingerprint would give them for CT_HU.
CT_STATS = {"mean": 80.0, "std": 25.0, "median": 88.0, "min": -20.0, "max": 150.0,
            "percentile_00_5": 0.0, "percentile_99_5": 140.0}
# Organ is above 65 HU: normalized, (65 - 80) / 25 = -0.6.
ORGAN_THRESHOLD_NORMALIZED = -0.6
PIPELINE_VARIANTS = ["core", "naive", "core_tta", "naive_tta"]  # core first: the others are compared with it
# Adam at 3e-2 segments the organ (Dice ~0.93 on the precision volume) after 40 steps of 2 crops.
TRAIN_LEARNING_RATE = 3e-2
PRECISIONS = {"fp32": (None, False), "bf16": ("bf16", False), "channels_last_3d": (None, True),
              "bf16+channels_last": ("bf16", True)}


# ------------------------------------------------------------------------------------------ data


def synthetic_ct(shape, spacing, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 (1, z, y, x) HU and uint8 (z, y, x) labels, generated one slab of slices at a time
    (no full-size float64 temporaries)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    extent = np.array(shape) * np.array(spacing)
    image = np.empty((1, *shape), np.float32)
    label = np.zeros(shape, np.uint8)
    y = (np.arange(shape[1], dtype=np.float32) * spacing[1])[:, None]
    x = (np.arange(shape[2], dtype=np.float32) * spacing[2])[None, :]
    body = ((y - extent[1] / 2) / (extent[1] * 0.45)) ** 2 + ((x - extent[2] / 2) / (extent[2] * 0.45)) ** 2 <= 1
    organ_centre, organ_radii = extent * np.array([0.5, 0.45, 0.4]), extent * np.array([0.3, 0.22, 0.2])
    lesion_centre, lesion_radius = organ_centre + organ_radii * np.array([0.2, -0.3, 0.2]), organ_radii.min() * 0.35
    for z0 in range(0, shape[0], 16):
        z = (np.arange(z0, min(z0 + 16, shape[0]), dtype=np.float32) * spacing[0])[:, None, None]
        organ = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), organ_centre, organ_radii)) <= 1
        lesion = sum(((g - c) / lesion_radius) ** 2 for g, c in zip((z, y, x), lesion_centre)) <= 1
        organ, lesion = organ & body, lesion & organ & body
        slab = np.where(body, CT_HU["body"], CT_HU["air"]).astype(np.float32) * np.ones(organ.shape, np.float32)
        slab[organ] = CT_HU["organ"]
        slab[lesion] = CT_HU["lesion"]
        slab += (rng.standard_normal(slab.shape, dtype=np.float32) * CT_HU["noise"]) * body
        image[0, z0:z0 + len(slab)] = slab
        label[z0:z0 + len(slab)] = organ.astype(np.uint8) + lesion
    return image, label


def bench_plans(spacing, target_spacing, patch, features: int):
    from autoseg.planning.plans import Plans

    architecture = small_architecture(features).to_json()
    return Plans.from_json({
        "schema_version": 1, "dataset_name": "Bench_SyntheticCT", "fingerprint_signature": "bench",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "original_median_spacing": list(spacing), "original_median_shape": [300.0, 512.0, 512.0],
        "intensity_per_channel": {"0": CT_STATS}, "gpu_memory_gb": 8.0,
        "configurations": {"3d_fullres": {
            "dimension": 3, "spacing": list(target_spacing), "median_shape": [300.0, 410.0, 410.0],
            "patch_size": list(patch), "batch_size": 2, "batch_dice": False, "normalization": ["ct"],
            "use_mask_for_norm": [False], "architecture": architecture, "estimated_memory_gb": 1.0,
            "data_identifier": "3d_fullres", "previous_stage": None, "next_stage": None,
            "inherits_from": None}}})


def trained_model(plans, networks, device: str = "cpu"):
    import torch

    from autoseg.inference.predictor import TrainedModel

    return TrainedModel(plans, "3d_fullres", plans.configuration("3d_fullres"), networks, ["bench"],
                        torch.device(device), [0, 1, 2])


def threshold_network():
    """Per-voxel 'network': organ where the normalized intensity is above the organ threshold.
    (B, 1, *patch) -> (B, 3, *patch) logits; class 2 (lesion) is never chosen."""
    import torch

    class Threshold(torch.nn.Module):
        def forward(self, batch):
            organ = 8.0 * (batch[:, :1] - ORGAN_THRESHOLD_NORMALIZED)
            return torch.cat([torch.zeros_like(organ), organ, torch.full_like(organ, -4.0)], dim=1)

    return Threshold().eval()


def dice_per_class(a: np.ndarray, b: np.ndarray, labels=(1, 2)) -> dict[int, float]:
    result = {}
    for label in labels:
        x, y = a == label, b == label
        total = int(x.sum()) + int(y.sum())
        result[label] = 2.0 * int(np.logical_and(x, y).sum()) / total if total else float("nan")
    return result


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """Process CPU time (user + system, all threads): steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -------------------------------------------------------------------------------- part: pipeline


def run_pipeline_variant(args) -> dict:
    """Inside the subprocess: one variant of the whole predict path, timed by stage."""
    import torch

    from autoseg.inference.predictor import (PredictionSettings, predict_probabilities, preprocess_for,
                                             probabilities_to_prediction)
    from autoseg.io import Geometry

    torch.set_num_threads(args.threads)
    image = np.load(Path(args.work) / "image.npy")
    geometry = Geometry(shape=tuple(image.shape[1:]), spacing_zyx=tuple(args.spacing),
                        origin_xyz=(-200.0, 10.0, 35.0), direction=(1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    plans = bench_plans(args.spacing, args.target_spacing, args.patch, args.features)
    model = trained_model(plans, [threshold_network()], args.device)
    tta = args.variant.endswith("_tta")
    rss_setup = _rss_mb()
    cpu_start = _cpu_seconds()
    times, windows = {}, [0]
    start = time.perf_counter()
    data, properties = preprocess_for(model, image, geometry, "bench")
    voxels = int(np.prod(image.shape[1:]))
    del image  # as in `predict_folder`: the reader thread hands on only the preprocessed data
    times["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    if args.variant.startswith("naive"):
        logits = naive_sliding_window(model.networks[0], torch.from_numpy(data), args.patch, tta)
        del data
        probabilities = torch.softmax(logits, dim=0).numpy()
        del logits
        times["windows"] = time.perf_counter() - start
        start = time.perf_counter()
        from autoseg.preprocessing.pipeline import restore_to_original

        restored = restore_to_original(probabilities, properties, is_segmentation=False)
        del probabilities
        segmentation = np.asarray(model.label_values, np.int16)[np.argmax(restored, axis=0)]
        del restored
    else:
        settings = PredictionSettings(use_tta=tta, batch_windows=args.batch_windows, precision="fp32")
        probabilities = predict_probabilities(model, data, settings,
                                              lambda done, total: windows.__setitem__(0, total))
        del data
        times["windows"] = time.perf_counter() - start
        start = time.perf_counter()
        segmentation = probabilities_to_prediction(model, probabilities, properties, False, False).segmentation
        del probabilities
    times["export"] = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    rss_peak = _rss_mb()
    np.save(Path(args.work) / f"segmentation_{args.variant}.npy", segmentation)
    total = sum(times.values())
    return {"variant": args.variant, "times": times, "total": total, "voxels": voxels,
            "network_voxels": int(np.prod(properties.shape_after_resampling)),
            "voxels_per_s": voxels / total, "cpu_seconds": cpu_seconds, "voxels_per_cpu_s": voxels / cpu_seconds,
            "windows": windows[0] or None,
            "rss_setup_mb": rss_setup, "rss_peak_mb": rss_peak,
            "bytes_per_voxel": (rss_peak - rss_setup) * 2 ** 20 / voxels}


def pipeline_part(args, work: Path) -> None:
    start = time.perf_counter()
    image, label = synthetic_ct(args.size, args.spacing)
    np.save(work / "image.npy", image)
    np.save(work / "label.npy", label)
    del image
    print(f"\n== pipeline: synthetic CT {args.size} voxels at {args.spacing} mm -> network grid at "
          f"{args.target_spacing} mm, patch {args.patch}, 3 classes, per-voxel threshold network, "
          f"{args.threads} threads (volume made in {time.perf_counter() - start:.0f} s)")
    results = {}
    for variant in args.variants:
        command = [sys.executable, __file__, "--variant", variant, "--work", str(work),
                   "--size", *map(str, args.size), "--spacing", *map(str, args.spacing),
                   "--target-spacing", *map(str, args.target_spacing), "--patch", *map(str, args.patch),
                   "--features", str(args.features), "--threads", str(args.threads),
                   "--batch-windows", str(args.batch_windows), "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-3000:]}")
            continue
        result = results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        segmentation = np.load(work / f"segmentation_{variant}.npy")
        truth_dice = dice_per_class(segmentation, label, (1,))[1]
        agreement = dice_per_class(segmentation, np.load(work / "segmentation_core.npy"), (1,))[1] \
            if (work / "segmentation_core.npy").exists() else float("nan")
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["times"].items())
        print(f"{variant:10s} {result['total']:6.1f} s ({stages})  {result['voxels_per_s'] / 1e6:6.2f} Mvox/s"
              f"  CPU {result['cpu_seconds']:6.1f} s {result['voxels_per_cpu_s'] / 1e6:5.2f} Mvox/CPU-s"
              f"  windows {result['windows'] or '-'}  peak RSS {result['rss_peak_mb']:7.0f} MB"
              f" (setup {result['rss_setup_mb']:.0f})  {result['bytes_per_voxel']:5.1f} B/voxel"
              f"  organ Dice vs truth {truth_dice:.4f}, vs core {agreement:.4f}")
    for suffix in ("", "_tta"):
        naive, core = results.get("naive" + suffix), results.get("core" + suffix)
        if naive and core:
            print(f"core / naive{suffix or ' (no TTA)'}: {core['voxels_per_s'] / naive['voxels_per_s']:.2f}x "
                  f"voxels/s wall, {core['voxels_per_cpu_s'] / naive['voxels_per_cpu_s']:.2f}x per CPU-s "
                  f"(sliding window alone {naive['times']['windows'] / core['times']['windows']:.2f}x wall), "
                  f"memory added {core['bytes_per_voxel'] / max(naive['bytes_per_voxel'], 1e-9):.2f}x")
    if "core" in results and "core_tta" in results:
        print(f"TTA costs {results['core_tta']['cpu_seconds'] / results['core']['cpu_seconds']:.2f}x the CPU time "
              f"({results['core_tta']['total'] / results['core']['total']:.2f}x the wall time) of no TTA "
              f"(8 passes per window; a cheap network makes this far below 8)")


# ------------------------------------------------------------------------------- part: precision


def train_small_unet(plans, features: int, steps: int, seed: int = 1):
    """The benchmark U-Net trained with Adam on random crops of a synthetic CT already on the
    network's grid, normalized by the plan: (network in eval mode, seconds)."""
    import torch

    from autoseg.network.unet import build_plain_unet

    start = time.perf_counter()
    spacing = plans.configuration("3d_fullres").spacing
    image, label = synthetic_ct((48, 128, 128), spacing, seed=seed)
    data = normalized(plans, image, spacing)
    torch.manual_seed(seed)
    network = build_plain_unet(small_architecture(features))
    optimizer = torch.optim.Adam(network.parameters(), lr=TRAIN_LEARNING_RATE)
    rng = np.random.default_rng(seed)
    crop = (16, 48, 48)
    weights = torch.tensor([1.0, 1.0, 3.0])  # the lesion is small
    for _ in range(steps):
        corners = [[int(rng.integers(0, n - c + 1)) for n, c in zip(label.shape, crop)] for _ in range(2)]
        window = [tuple(slice(s, s + c) for s, c in zip(corner, crop)) for corner in corners]
        batch = torch.from_numpy(np.stack([data[(slice(None), *w)] for w in window]))
        target = torch.from_numpy(np.stack([label[w] for w in window]).astype(np.int64))
        loss = torch.nn.functional.cross_entropy(network(batch), target, weight=weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval(), time.perf_counter() - start


def normalized(plans, image: np.ndarray, spacing) -> np.ndarray:
    from autoseg.inference.predictor import preprocess_for
    from autoseg.io import Geometry

    model = trained_model(plans, [])
    geometry = Geometry(shape=tuple(image.shape[1:]), spacing_zyx=tuple(spacing))
    data, properties = preprocess_for(model, image, geometry)
    if list(properties.shape_after_resampling) != list(image.shape[1:]):
        raise RuntimeError("the precision volume must already be on the network's grid")
    return data


def precision_part(args) -> None:
    import torch

    from autoseg.inference.sliding_window import predict_sliding_window

    torch.set_num_threads(args.threads)
    patch = args.precision_patch
    plans = bench_plans(args.target_spacing, args.target_spacing, patch, args.features)
    network, train_seconds = train_small_unet(plans, args.features, args.train_steps)
    image, label = synthetic_ct(args.precision_size, args.target_spacing, seed=2)
    data = torch.from_numpy(normalized(plans, image, args.target_spacing))
    voxels = int(np.prod(args.precision_size))
    print(f"\n== precision: U-Net {small_architecture(args.features).features_per_stage} trained "
          f"{args.train_steps} steps ({train_seconds:.0f} s); volume {args.precision_size} on the network grid, "
          f"patch {patch}, batch_windows {args.batch_windows}, no TTA, {args.threads} threads, "
          f"{args.repeats} interleaved repeats; cpu flags: {cpu_flags()}")

    def variant(autocast: str | None, channels_last: bool):
        net = copy.deepcopy(network)
        net = net.to(memory_format=torch.channels_last_3d) if channels_last else net
        dtype = {None: None, "bf16": torch.bfloat16}[autocast]
        return lambda: predict_sliding_window([net], data, patch, num_classes=NUM_CLASSES, mirror_axes=(),
                                              batch_windows=args.batch_windows, autocast_dtype=dtype,
                                              channels_last=channels_last)

    runs = {name: variant(*options) for name, options in PRECISIONS.items()}
    runs["naive (fp32)"] = lambda: naive_sliding_window(network, data, patch, mirror=False)
    timings = {name: [] for name in runs}
    cpu_timings = {name: [] for name in runs}
    segmentations = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            output = run()
            timings[name].append(time.perf_counter() - start)
            cpu_timings[name].append(_cpu_seconds() - cpu_start)
            segmentations[name] = output.argmax(0).numpy().astype(np.int16)
    reference = segmentations["fp32"]
    best_fp32, best_fp32_cpu = min(timings["fp32"]), min(cpu_timings["fp32"])
    for name, seconds in timings.items():
        agreement = dice_per_class(segmentations[name], reference)
        truth = dice_per_class(segmentations[name], label)
        cpu = min(cpu_timings[name])
        print(f"{name:20s} {min(seconds):6.1f} s (median {statistics.median(seconds):.1f}, CPU {cpu:.1f} s)"
              f"  {voxels / min(seconds) / 1e6:6.3f} Mvox/s  speed vs fp32 {best_fp32 / min(seconds):5.2f}x wall"
              f" {best_fp32_cpu / cpu:5.2f}x CPU"
              f"  agreement Dice vs fp32 organ {agreement[1]:.4f} lesion {agreement[2]:.4f}"
              f"  | Dice vs truth organ {truth[1]:.3f} lesion {truth[2]:.3f}")


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(flag for flag in wanted if f" {flag}" in flags) or "none of avx2/avx512"


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes and fewer repeats: < 2 minutes")
    parser.add_argument("--parts", nargs="+", default=["pipeline", "precision"], choices=["pipeline", "precision"])
    parser.add_argument("--size", type=int, nargs=3, default=None, help="pipeline volume (z, y, x) voxels")
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 0.8, 0.8])
    parser.add_argument("--target-spacing", type=float, nargs=3, default=[2.5, 1.0, 1.0])
    parser.add_argument("--patch", type=int, nargs=3, default=None)
    parser.add_argument("--features", type=int, default=4, help="U-Net features at stage 0 (precision part)")
    parser.add_argument("--variants", nargs="+", default=PIPELINE_VARIANTS, choices=PIPELINE_VARIANTS)
    parser.add_argument("--precision-size", type=int, nargs=3, default=None)
    parser.add_argument("--precision-patch", type=int, nargs=3, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-windows", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the pipeline subprocess
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or ([80, 256, 256] if args.quick else [300, 512, 512])
    args.patch = args.patch or ([32, 64, 64] if args.quick else [64, 128, 128])
    args.precision_size = args.precision_size or ([32, 96, 96] if args.quick else [64, 192, 192])
    args.precision_patch = args.precision_patch or ([16, 48, 48] if args.quick else [32, 64, 64])
    args.train_steps = args.train_steps or (40 if args.quick else 80)
    args.repeats = args.repeats or (1 if args.quick else 2)
    if args.variant:
        print(json.dumps(run_pipeline_variant(args)))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads")
    if "pipeline" in args.parts:
        with tempfile.TemporaryDirectory(prefix="autoseg_bench_predict_") as work:
            pipeline_part(args, Path(work))
    if "precision" in args.parts:
        precision_part(args)


if __name__ == "__main__":
    main()
