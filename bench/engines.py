"""Benchmark of the prediction engine as a whole (issue 14): today's mode against the new default, and
large tiles, on the same trained network, in one run, with how close each comes to the machine.

    .venv/bin/python bench/engines.py --quick     # (a) and (b) with mirror TTA (a few minutes on 2 cores)
    .venv/bin/python bench/engines.py             # (a), (b) and (c) the 300x512x512 CT (long on a CPU)

Modes, all mirroring on every axis (nnU-Net's like-for-like setting) unless --no-tta:
  today:   the training patch at step 0.5, torch fp32 (autoseg before issue 14);
  default: the training patch at step 0.5, the runtime `predict --runtime auto` chooses on this machine
           (measured here by `autoseg.stages.runtime.choose_runtime`, the same probe, a fresh cache);
  large:   large tiles (`--tile-mode large`) with that runtime: not the default (bench/tiles.py: the
           InstanceNorm statistics of a large tile differ from a patch's, agreement < 0.99).
Volumes (bench/tiles.py's network and synthetic CT on the network's grid): (a) 40x64x64 demo-sized,
(b) 20x256x256 thick-slice MRI-like, (c) 300x512x512 CT-like (`--ct-size`).

Per run: seconds per case (image in memory -> label map on the original grid: preprocessing, windows,
stitching, restore; the minimum over --repeats), the label agreement Dice per label against today's
output, the network's FLOPs per voxel (2 x its MACs on one training patch / the patch's voxels), the
FLOPs executed (every window batch of every mirror pass), the achieved GFLOP/s (FLOPs / seconds inside
the network), its share of the device's peak at the mode's arithmetic (bench/efficiency.py: forward-only,
one large conv, torch at fp32 or bf16), and the share of wall time outside the network.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficiency import CountingNetwork, flops_per_voxel, measured_peak_gflops  # noqa: E402
from predict import bench_plans, dice_per_class, synthetic_ct, train_small_unet, trained_model  # noqa: E402
from tiles import SPACING, TRAIN_SHAPE, VOLUMES  # noqa: E402


def counted_networks(model, runtime: str, precision: str) -> list[CountingNetwork]:
    """The model's networks for `runtime`, each wrapped to count its FLOPs and seconds (reset per run)."""
    from autoseg.inference.runtimes import networks_for_runtime, runtime_networks_key

    networks = networks_for_runtime(model, runtime, precision)
    counted = [CountingNetwork(network, model.configuration.architecture) for network in networks]
    model.runtime_networks[runtime_networks_key(runtime, precision)] = counted
    if runtime == "torch":
        model.networks = counted
    return counted


def run_mode(model, image, geometry, settings, repeats: int):
    """(labels, best seconds, network FLOPs, network seconds) of predict_image in `settings`."""
    from autoseg.inference.case import predict_image
    from autoseg.inference.runtimes import runtime_networks_key

    counted = counted_networks(model, settings.runtime, settings.precision)
    best = None
    for _ in range(repeats):
        for network in counted:
            network.flops, network.seconds = 0.0, 0.0
        start = time.perf_counter()
        prediction = predict_image(model, image, geometry, settings)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[1]:
            best = (prediction.segmentation, seconds, sum(n.flops for n in counted), sum(n.seconds for n in counted))
    unwrapped = [network.network for network in counted]  # so the next mode converts the plain networks
    if settings.runtime == "torch":
        model.networks = unwrapped
    model.runtime_networks[runtime_networks_key(settings.runtime, settings.precision)] = unwrapped
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="volumes (a) and (b) only, one repeat")
    parser.add_argument("--volumes", nargs="+", choices=list(VOLUMES), default=None)
    parser.add_argument("--ct-size", type=int, nargs=3, default=VOLUMES["ct"])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--no-tta", action="store_true")
    args = parser.parse_args()
    import torch

    from autoseg.hardware import usable_cpus
    from autoseg.inference.case import PredictionSettings, patch_tiling, preprocess_for
    from autoseg.inference.runtimes import networks_for_runtime
    from autoseg.io import Geometry
    from autoseg.stages.runtime import choose_runtime

    sys.stdout.reconfigure(line_buffering=True)
    threads = args.threads or usable_cpus()
    torch.set_num_threads(threads)
    volumes = args.volumes or (["demo", "mri"] if args.quick else list(VOLUMES))
    repeats = args.repeats or (1 if args.quick else 2)
    plans = bench_plans(SPACING, SPACING, args.patch, args.features)
    network, train_seconds = train_small_unet(plans, args.features, args.train_steps, TRAIN_SHAPE)
    model = trained_model(plans, [network])
    mirror_axes = () if args.no_tta else None
    settings = PredictionSettings(mirror_axes=mirror_axes, precision="fp32", runtime="torch")
    sizes = {**VOLUMES, "ct": args.ct_size}
    def image_of(seed: int) -> np.ndarray:  # a volume of the first size, preprocessed
        return preprocess_for(model, synthetic_ct(sizes[volumes[0]], SPACING, seed=seed)[0],
                              Geometry(shape=tuple(sizes[volumes[0]]), spacing_zyx=tuple(SPACING)))[0]

    first_image = image_of(2)
    with tempfile.TemporaryDirectory() as cache:  # int8 calibrated on other volumes than the probe's, as predict does
        choice, _ = choose_runtime(Path(cache) / "runtime_choice.json", model, "auto",
                                   batch_windows=patch_tiling(model, settings).batch_windows,
                                   probe_image=lambda: first_image,
                                   calibration_images=lambda: [image_of(seed) for seed in (3, 4, 5, 6)],
                                   onnx_cache=Path(cache), mirror_axes=mirror_axes)
        # Converted now, while the cache holds the int8 form the measurement made (the modes below reuse it).
        networks_for_runtime(model, choice.runtime, choice.precision, onnx_cache=Path(cache))
    peaks = {"fp32": measured_peak_gflops(3, "fp32")}
    if choice.precision in ("bf16", "int8"):
        peaks["bf16"] = measured_peak_gflops(3, "bf16")
    if choice.precision == "int8":  # no int8 convolution peak is measured: against bf16's, the fastest float one
        peaks["int8"] = peaks["bf16"]
    architecture = model.configuration.architecture
    print(f"torch {torch.__version__}, {threads} thread(s); U-Net {args.features} features at stage 0, patch "
          f"{args.patch}, trained {args.train_steps} steps ({train_seconds:.0f} s); {flops_per_voxel(architecture, args.patch):.3g} "
          f"FLOP/voxel per pass; runtime auto chose {choice.summary}; device peak "
          f"{', '.join(f'{v:.1f} GFLOP/s {k}' for k, v in peaks.items())} (one 64->64 3x3x3 torch conv); "
          f"TTA {'off' if args.no_tta else 'all axes'}; "
          f"time = min of {repeats}")
    modes = {"today": PredictionSettings(mirror_axes=mirror_axes, precision="fp32", runtime="torch"),
             "default": PredictionSettings(mirror_axes=mirror_axes, precision=choice.precision, runtime=choice.runtime),
             "large": PredictionSettings(mirror_axes=mirror_axes, precision=choice.precision, runtime=choice.runtime,
                                         tile_mode="large")}
    for name in volumes:
        image, label = synthetic_ct(sizes[name], SPACING, seed=2)
        geometry = Geometry(shape=tuple(sizes[name]), spacing_zyx=tuple(SPACING))
        runs = {mode: run_mode(model, image, geometry, settings, repeats) for mode, settings in modes.items()}
        today_seconds = runs["today"][1]
        for mode, (labels, seconds, flops, network_seconds) in runs.items():
            peak = peaks[modes[mode].precision]
            agreement = dice_per_class(labels, runs["today"][0])
            truth = dice_per_class(labels, label)
            gflops = flops / network_seconds / 1e9 if network_seconds else 0.0
            print(f"{name:5s} {sizes[name]!s:16s} {mode:8s} {seconds:7.1f} s/case {today_seconds / seconds:5.2f}x"
                  f" | agreement vs today organ {agreement[1]:.4f} lesion {agreement[2]:.4f}"
                  f" | {flops / 1e9:8.1f} GFLOP executed, {gflops:6.1f} GFLOP/s = {100 * gflops / peak:5.1f}% of peak"
                  f" | outside the network {100 * (1 - network_seconds / seconds):4.1f}%"
                  f" | organ Dice vs truth {truth[1]:.3f}")


if __name__ == "__main__":
    main()
