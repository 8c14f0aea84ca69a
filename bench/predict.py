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
one fresh subprocess per variant and repeat (variants round-robin, `--pipeline-repeats` times: load from other
processes hits all alike; times are the minimum over repeats, memory the maximum), so that each peak
resident set size (ru_maxrss) is its own. Each subprocess first predicts one patch-sized crop (torch
and oneDNN set-up) before anything is measured.
  core / core_tta:   `autoseg.inference.case` as `autoseg predict` runs it (batched windows,
                     Gaussian weights, softmax averaged, per-class restore with a running argmax);
                     without / with mirror TTA (8 passes);
  naive / naive_tta: the straightforward version: windows one at a time, no Gaussian (plain mean),
                     sum + count accumulators per class (bench/sliding_window.py), softmax of the
                     whole volume, all classes restored at once (`restore_to_original`), np.argmax.
The network is a per-voxel threshold of the normalized intensity (organ vs the rest; costs almost
nothing), so this part measures what the pipeline itself costs in time and memory; a real network
adds its own time per window (part "precision") and a fixed activation memory per window batch
(independent of the volume size). Memory: "base" is the RSS with torch and the network loaded and one
window predicted (what does not grow with the image); "+ image" after loading the input image
(float32, 4 bytes per voxel, as `read_image` returns it); "B/voxel" is (peak - base) divided by the
number of input voxels, the input image included: peak RSS of a volume = base + B/voxel x voxels.
(Reading a compressed int16 NIfTI adds 2 bytes per voxel while it is converted, before the peak.)

Part "precision" (network-dominated speed): a small 4-stage U-Net (bench/sliding_window.py), trained
here for `--train-steps` steps on crops of another synthetic CT, predicts a smaller volume (already in
the network's grid) with the sliding window only, no TTA: fp32, bf16 autocast, channels_last_3d,
both, and the naive sliding window (fp32), interleaved round-robin `--repeats` times in one process
(load from other processes hits all alike; the minimum is the least disturbed time). Agreement Dice
per class of each segmentation vs the fp32 one says whether the faster precision segments the same;
Dice vs the true labels says the network learned something to agree on.

Measured 2026-12-01 on the shared 2-core AMD EPYC (avx512_bf16, 23 GiB, no GPU), torch 2.13 CPU, 1 thread:
pipeline, 300x512x512 (78.6 M voxels; 50.4 M on the network grid), one run each:
    core       13.1 s  6.0 Mvox/s  peak 2.0 GB  23.6 B/voxel (preprocess 10.8, windows 13.5, export 23.6)
    naive      17.7 s  4.5 Mvox/s  peak 2.8 GB  32.8 B/voxel          -> core 1.35x faster, 0.72x memory
    core_tta   39.3 s  2.0 Mvox/s  peak 2.1 GB  23.0 B/voxel
    naive_tta  28.5 s  2.8 Mvox/s  peak 2.8 GB  34.0 B/voxel          -> core 0.73x: with a free network the
               softmax of every pass (issue 5 asks for softmax averaged over TTA) dominates; one real window
               costs far more (below).
  600x512x512 (157 M voxels, the 512x512x600 CT of issue 5), 2 threads: core 64 s, peak 3.6 GB (22.3 B/voxel);
    naive peak 5.2 GB (32.9 B/voxel). Add a planned liver 3d_fullres network's activations (128^3 patch,
    32..320 features, fp32): 1.5 GB per window in the batch (2.8 GB for the CPU default of 2 windows).
precision, 64x192x192, U-Net 4..32 features, patch 32x64x64 (--features 16 on the quick volume in brackets):
    bf16 1.39x (1.95x), channels_last_3d 0.93x (0.96x), bf16 + channels_last 1.60x (1.69x) vs fp32;
    agreement Dice vs fp32 organ 0.9989 (0.9989); the naive unbatched window 0.13x (0.19x): one window at a
    time is slow on a CPU too (a batch-1 conv3d here costs 2-4x a batch-2 one per window).
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
# Adam at 1e-2 for 60 steps of 2 patch-sized crops segments the organ (Dice 0.75-0.9 on the precision
# volume; 3e-2 sometimes collapses to all background). Enough to have something to agree on.
TRAIN_LEARNING_RATE = 1e-2
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

    from autoseg.inference.model import TrainedModel

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
    """Peak resident set size so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    """Resident set size now (MB): /proc/self/statm, else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _rss_mb()
    return pages * resource.getpagesize() / 2 ** 20


class StagePeaks:
    """Samples the current RSS every 20 ms in a thread and keeps the maximum per stage (MB)."""

    def __init__(self):
        import threading

        self.stage, self.peaks, self._stop = "setup", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = _current_rss_mb()
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _cpu_seconds() -> float:
    """Process CPU time (user + system, all threads): steadier than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -------------------------------------------------------------------------------- part: pipeline


def run_pipeline_variant(args) -> dict:
    """Inside the subprocess: one variant of the whole predict path, timed by stage."""
    import torch

    from autoseg.inference.case import (PredictionSettings, predict_probabilities, preprocess_for,
                                        probabilities_to_prediction)
    from autoseg.io import Geometry

    torch.set_num_threads(args.threads)
    plans = bench_plans(args.spacing, args.target_spacing, args.patch, args.features)
    model = trained_model(plans, [threshold_network()], args.device)
    tta = args.variant.endswith("_tta")
    warm_up = np.zeros((1, *args.patch), np.float32)
    predict_probabilities(model, warm_up, PredictionSettings(mirror_axes=None if tta else (), precision="fp32"))
    naive_sliding_window(model.networks[0], torch.from_numpy(warm_up), args.patch, tta)
    rss_base = _current_rss_mb()  # torch, the network, one window predicted: what does not grow with the image
    image = np.load(Path(args.work) / "image.npy")
    geometry = Geometry(shape=tuple(image.shape[1:]), spacing_zyx=tuple(args.spacing),
                        origin_xyz=(-200.0, 10.0, 35.0), direction=(1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    rss_setup = _current_rss_mb()
    cpu_start = _cpu_seconds()
    times, windows = {}, [0]
    sampler = StagePeaks()
    sampler.stage = "preprocess"
    start = time.perf_counter()
    data, properties = preprocess_for(model, image, geometry, "bench")
    voxels = int(np.prod(image.shape[1:]))
    del image  # as in `predict_folder`: the reader thread hands on only the preprocessed data
    times["preprocess"] = time.perf_counter() - start
    sampler.stage = "windows"
    start = time.perf_counter()
    if args.variant.startswith("naive"):
        logits = naive_sliding_window(model.networks[0], torch.from_numpy(data), args.patch, tta)
        del data
        probabilities = torch.softmax(logits, dim=0).numpy()
        del logits
        times["windows"] = time.perf_counter() - start
        sampler.stage = "export"
        start = time.perf_counter()
        from autoseg.preprocessing.pipeline import restore_to_original

        restored = restore_to_original(probabilities, properties, is_segmentation=False)
        del probabilities
        segmentation = np.asarray(model.label_values, np.int16)[np.argmax(restored, axis=0)]
        del restored
    else:
        settings = PredictionSettings(mirror_axes=None if tta else (), batch_windows=args.batch_windows, precision="fp32")
        probabilities = predict_probabilities(model, data, settings,
                                              lambda done, total: windows.__setitem__(0, total))
        del data
        times["windows"] = time.perf_counter() - start
        sampler.stage = "export"
        start = time.perf_counter()
        segmentation = probabilities_to_prediction(model, probabilities, properties, False, False).segmentation
        del probabilities
    times["export"] = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    rss_peak = _rss_mb()
    stage_bytes = {stage: (peak - rss_base) * 2 ** 20 / voxels for stage, peak in sampler.stop().items()}
    np.save(Path(args.work) / f"segmentation_{args.variant}.npy", segmentation)
    total = sum(times.values())
    return {"variant": args.variant, "times": times, "total": total, "voxels": voxels,
            "network_voxels": int(np.prod(properties.shape_after_resampling)),
            "voxels_per_s": voxels / total, "cpu_seconds": cpu_seconds, "voxels_per_cpu_s": voxels / cpu_seconds,
            "windows": windows[0] or None,
            "rss_base_mb": rss_base, "rss_setup_mb": rss_setup, "rss_peak_mb": rss_peak,
            "bytes_per_voxel": (rss_peak - rss_base) * 2 ** 20 / voxels, "stage_bytes_per_voxel": stage_bytes}


def _best_of(repeats: list[dict]) -> dict:
    """Minimum times (per stage too) and maximum memory over the repeats of one variant."""
    best = dict(min(repeats, key=lambda r: r["total"]))
    best["times"] = {stage: min(r["times"][stage] for r in repeats) for stage in best["times"]}
    best["cpu_seconds"] = min(r["cpu_seconds"] for r in repeats)
    best["voxels_per_cpu_s"] = best["voxels"] / best["cpu_seconds"]
    for key in ("rss_peak_mb", "bytes_per_voxel"):
        best[key] = max(r[key] for r in repeats)
    best["rss_setup_mb"] = min(r["rss_setup_mb"] for r in repeats)
    best["rss_base_mb"] = min(r["rss_base_mb"] for r in repeats)
    return best


def pipeline_part(args, work: Path) -> None:
    start = time.perf_counter()
    image, label = synthetic_ct(args.size, args.spacing)
    np.save(work / "image.npy", image)
    np.save(work / "label.npy", label)
    del image
    print(f"\n== pipeline: synthetic CT {args.size} voxels at {args.spacing} mm -> network grid at "
          f"{args.target_spacing} mm, patch {args.patch}, 3 classes, per-voxel threshold network, "
          f"{args.threads} thread(s), best of {args.pipeline_repeats} (volume made in {time.perf_counter() - start:.0f} s)")
    runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for _ in range(args.pipeline_repeats):
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
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = {variant: _best_of(repeats) for variant, repeats in runs.items() if repeats}
    for variant, result in results.items():
        segmentation = np.load(work / f"segmentation_{variant}.npy")
        truth_dice = dice_per_class(segmentation, label, (1,))[1]
        agreement = dice_per_class(segmentation, np.load(work / "segmentation_core.npy"), (1,))[1] \
            if (work / "segmentation_core.npy").exists() else float("nan")
        stages = ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["times"].items())
        stage_memory = ", ".join(f"{name} {value:.1f}" for name, value in result["stage_bytes_per_voxel"].items()
                                 if name != "setup")
        print(f"{variant:10s} {result['total']:6.1f} s ({stages})  {result['voxels_per_s'] / 1e6:6.2f} Mvox/s"
              f"  CPU {result['cpu_seconds']:6.1f} s {result['voxels_per_cpu_s'] / 1e6:5.2f} Mvox/CPU-s"
              f"  windows {result['windows'] or '-'}  peak RSS {result['rss_peak_mb']:7.0f} MB"
              f" (base {result['rss_base_mb']:.0f}, + image {result['rss_setup_mb']:.0f})"
              f"  {result['bytes_per_voxel']:5.1f} B/voxel ({stage_memory})"
              f"  organ Dice vs truth {truth_dice:.4f}, vs core {agreement:.4f}")
    for suffix in ("", "_tta"):
        naive, core = results.get("naive" + suffix), results.get("core" + suffix)
        if naive and core:
            print(f"core / naive{suffix or ' (no TTA)'}: {core['voxels_per_s'] / naive['voxels_per_s']:.2f}x "
                  f"voxels/s wall, {core['voxels_per_cpu_s'] / naive['voxels_per_cpu_s']:.2f}x per CPU-s "
                  f"(sliding window alone {naive['times']['windows'] / core['times']['windows']:.2f}x wall), "
                  f"memory added {core['bytes_per_voxel'] / max(naive['bytes_per_voxel'], 1e-9):.2f}x")
    if "core" in results and "core_tta" in results:
        print(f"TTA (8 passes per window) costs {results['core_tta']['cpu_seconds'] / results['core']['cpu_seconds']:.2f}x "
              f"the CPU time ({results['core_tta']['total'] / results['core']['total']:.2f}x the wall time) of no TTA")


# ------------------------------------------------------------------------------- part: precision


def train_small_unet(plans, features: int, steps: int, shape, seed: int = 1):
    """The benchmark U-Net trained with Adam on random patch-sized crops (the plan's patch: a net
    trained on smaller crops than it predicts gets its window centres wrong, which the Gaussian
    then weights most) of a synthetic CT already on the network's grid, normalized by the plan:
    of `shape` voxels (another seed than the predicted volume: other noise, same anatomy), normalized
    by the plan: (network in eval mode, seconds)."""
    import torch

    from autoseg.network.unet import build_plain_unet

    start = time.perf_counter()
    spacing = plans.configuration("3d_fullres").spacing
    crop = tuple(plans.configuration("3d_fullres").patch_size)
    image, label = synthetic_ct(shape, spacing, seed=seed)
    data = normalized(plans, image, spacing)
    torch.manual_seed(seed)
    network = build_plain_unet(small_architecture(features))
    optimizer = torch.optim.Adam(network.parameters(), lr=TRAIN_LEARNING_RATE)
    rng = np.random.default_rng(seed)
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
    from autoseg.inference.case import preprocess_for
    from autoseg.io import Geometry

    model = trained_model(plans, [])
    geometry = Geometry(shape=tuple(image.shape[1:]), spacing_zyx=tuple(spacing))
    data, properties = preprocess_for(model, image, geometry)
    if list(properties.shape_after_resampling) != list(image.shape[1:]):
        raise RuntimeError("the precision volume must already be on the network's grid")
    return data


def precision_part(args) -> None:
    import torch

    from autoseg.inference.stitching import predict_sliding_window

    torch.set_num_threads(args.threads)
    patch = args.precision_patch
    plans = bench_plans(args.target_spacing, args.target_spacing, patch, args.features)
    network, train_seconds = train_small_unet(plans, args.features, args.train_steps, args.precision_size)
    image, label = synthetic_ct(args.precision_size, args.target_spacing, seed=2)
    data = torch.from_numpy(normalized(plans, image, args.target_spacing))
    voxels = int(np.prod(args.precision_size))
    print(f"\n== precision: U-Net {small_architecture(args.features).features_per_stage} trained "
          f"{args.train_steps} steps ({train_seconds:.0f} s); volume {args.precision_size} on the network grid, "
          f"patch {patch}, batch_windows {args.batch_windows}, no TTA, {args.threads} thread(s), "
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
        print("  repeat: " + ", ".join(f"{name} {seconds[-1]:.1f} s" for name, seconds in timings.items()))
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
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats of the precision part")
    parser.add_argument("--pipeline-repeats", type=int, default=None, help="round-robin repeats of the pipeline part")
    parser.add_argument("--batch-windows", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine 2 OpenMP threads on 2 busy cores "
                             "spin-wait for each other and run 2-20x slower; use 2 on an idle machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the pipeline subprocess
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.size = args.size or ([64, 256, 256] if args.quick else [300, 512, 512])
    args.patch = args.patch or ([32, 64, 64] if args.quick else [64, 128, 128])
    args.precision_size = args.precision_size or ([48, 144, 144] if args.quick else [64, 192, 192])
    args.precision_patch = args.precision_patch or ([16, 48, 48] if args.quick else [32, 64, 64])
    args.train_steps = args.train_steps or 60
    args.repeats = args.repeats or 3
    args.pipeline_repeats = args.pipeline_repeats or (2 if args.quick else 1)
    if args.variant:
        print(json.dumps(run_pipeline_variant(args)))
        return
    import torch

    sys.stdout.reconfigure(line_buffering=True)  # results appear as they come, also through a pipe
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    if "pipeline" in args.parts:
        with tempfile.TemporaryDirectory(prefix="autoseg_bench_predict_") as work:
            pipeline_part(args, Path(work))
    if "precision" in args.parts:
        precision_part(args)


if __name__ == "__main__":
    main()
