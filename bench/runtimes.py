"""Benchmark of the prediction runtimes (`autoseg predict --runtime`) on one sliding window, in one run:
torch fp32 (the baseline), torch bf16 autocast, torch.compile (fp32 and bf16, with --compile), ONNX Runtime
and OpenVINO, then what `--runtime auto`'s probe measures and chooses for the same network.

    .venv/bin/python bench/runtimes.py --quick               # ~2 minutes on 2 busy cores
    .venv/bin/python bench/runtimes.py --compile --threads 2 # adds torch.compile (minutes of compiling)

The network: bench/predict.py's small 4-stage U-Net (`--features` at stage 0), trained there for
`--train-steps` steps on a synthetic CT so that its labels mean something; the volume: another synthetic
CT already on the network's grid, predicted with `predict_sliding_window` (Gaussian weights, batched
windows, no TTA). Variants run interleaved `--repeats` times (load from other processes hits all alike;
the minimum is the least disturbed time). Per variant: seconds, speed vs torch fp32, agreement Dice of
its labels vs torch fp32's (organ, lesion), max |probability difference| vs torch fp32, and the one-time
conversion (ONNX export + session / OpenVINO compile per tile shape on the first call, torch.compile on
the first call: the "first call" column).

Measured 2026-12-02 on the shared 2-core AMD EPYC (AVX2 only: no avx512_bf16 on this host today), torch
2.13, onnxruntime 1.32, openvino 2026.4; --quick --size 32 96 96 --train-steps 30 (27 windows of 16x48x48,
U-Net 8..64 features); seconds = best of 2, agreement = organ Dice of the labels vs torch fp32 (the lesion
is found by none: nan), max |dp| = max probability difference vs torch fp32:
  1 thread, load ~3:     torch fp32 1.84 s; onnxruntime 0.74x (Dice 1.0000, |dp| 4.9e-05); openvino 1.31x
                         (1.0000, 9.5e-05); probe (1.9 s) -> openvino
  2 threads, load ~3:    torch fp32 11.9 s (OpenMP threads spin-waiting on busy cores); onnxruntime 2.71x
                         (1.0000, 2.8e-05); openvino 4.30x (1.0000, 2.8e-04); probe (6.9 s) -> openvino
  1 thread, load ~10, --compile: torch.compile fp32 1.24x (1.0000, 8.6e-07) after a 140 s first call
                         (compiling; an earlier 2-thread try took 300 s, and 180 s more for a second tile
                         shape); onnxruntime 0.84x; openvino 1.52x
  1 thread, load ~10, with bf16: torch bf16 autocast 0.03x (151 s vs 5.1 s; Dice 0.9989, |dp| 9.9e-03):
                         without bf16 hardware it is emulated, and auto does not even measure it here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import bench_plans, cpu_flags, dice_per_class, normalized, synthetic_ct, train_small_unet  # noqa: E402
from sliding_window import NUM_CLASSES, small_architecture  # noqa: E402

# (runtime, precision) of each variant; torch fp32 first: the others are compared with it.
VARIANTS = {"torch fp32": ("torch", "fp32"), "torch bf16": ("torch", "bf16"),
            "torch-compile fp32": ("torch-compile", "fp32"), "torch-compile bf16": ("torch-compile", "bf16"),
            "onnxruntime": ("onnxruntime", "fp32"), "openvino": ("openvino", "fp32")}


def make_runner(network, runtime: str, precision: str, data, patch, args):
    """(a callable predicting the volume's probabilities, seconds to convert the network)."""
    import torch

    from autoseg.device import dtype_of
    from autoseg.inference.runtimes import runtime_network
    from autoseg.inference.stitching import predict_sliding_window

    started = time.perf_counter()
    converted = runtime_network(network, runtime, input_channels=1, dimension=3, threads=args.threads)
    conversion = time.perf_counter() - started
    dtype = dtype_of(precision) if runtime.startswith("torch") else None

    def run():
        return predict_sliding_window([converted], data, patch, num_classes=NUM_CLASSES, mirror_axes=(),
                                      batch_windows=args.batch_windows, autocast_dtype=dtype)
    return run, conversion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller volume and fewer steps")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (fp32 and bf16): slow to compile")
    parser.add_argument("--no-bf16", action="store_true", help="leave torch bf16 out (slow emulation without bf16 hardware)")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=3, default=None, help="volume (z, y, x) on the network grid")
    parser.add_argument("--patch", type=int, nargs=3, default=None)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch-windows", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of torch and of the ONNX runtimes (1 on a shared machine, see bench/predict.py)")
    args = parser.parse_args()
    size = args.size or ([48, 144, 144] if args.quick else [64, 192, 192])
    patch = args.patch or ([16, 48, 48] if args.quick else [32, 64, 64])
    steps = args.train_steps or (40 if args.quick else 60)
    repeats = args.repeats or (2 if args.quick else 3)
    spacing = [2.5, 1.0, 1.0]

    import torch

    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    plans = bench_plans(spacing, spacing, patch, args.features)
    network, train_seconds = train_small_unet(plans, args.features, steps, size)
    image, label = synthetic_ct(size, spacing, seed=2)
    data = torch.from_numpy(normalized(plans, image, spacing))
    print(f"torch {torch.__version__}, {args.threads} thread(s), cpu flags: {cpu_flags()}; U-Net "
          f"{small_architecture(args.features).features_per_stage} trained {steps} steps ({train_seconds:.0f} s); "
          f"volume {size}, patch {patch}, batch_windows {args.batch_windows}, no TTA, {repeats} interleaved repeats")

    names = [name for name in VARIANTS if (args.compile or not name.startswith("torch-compile"))
             and not (args.no_bf16 and name.endswith("bf16"))]
    runners, conversions, first_calls = {}, {}, {}
    for name in names:
        try:
            runners[name], conversions[name] = make_runner(network, *VARIANTS[name], data, patch, args)
        except Exception as error:  # noqa: BLE001 - a runtime missing here is reported, the others go on
            print(f"{name}: unavailable ({error})")
    timings = {name: [] for name in runners}
    outputs = {}
    for repeat in range(repeats + 1):  # repeat 0: the first call (compilation, allocations), not timed
        for name, run in runners.items():
            started = time.perf_counter()
            outputs[name] = run()
            seconds = time.perf_counter() - started
            if repeat == 0:
                first_calls[name] = seconds
                print(f"  first call: {name} {seconds:.2f} s")
            else:
                timings[name].append(seconds)
        if repeat:
            print("  repeat: " + ", ".join(f"{name} {seconds[-1]:.2f} s" for name, seconds in timings.items()))
    reference = outputs["torch fp32"]
    reference_labels = reference.argmax(0).numpy()
    base = min(timings["torch fp32"])
    print(f"{'variant':20s} {'seconds':>8s} {'vs fp32':>8s} {'Dice organ':>10s} {'lesion':>7s} {'max |dp|':>9s} "
          f"{'convert':>8s} {'1st call':>8s}  Dice vs truth organ")
    for name, seconds in timings.items():
        agreement = dice_per_class(outputs[name].argmax(0).numpy(), reference_labels)
        difference = float((outputs[name] - reference).abs().max())
        truth = dice_per_class(outputs[name].argmax(0).numpy(), label)
        print(f"{name:20s} {min(seconds):8.2f} {base / min(seconds):7.2f}x {agreement[1]:10.4f} {agreement[2]:7.4f} "
              f"{difference:9.2e} {conversions[name]:7.1f}s {first_calls[name]:7.1f}s  {truth[1]:.3f}")
    probe_part(network, patch, args)


def probe_part(network, patch, args) -> None:
    """What `--runtime auto` measures on one window of the patch and which runtime it would choose."""
    from autoseg.device import cpu_supports_bf16
    from autoseg.inference.runtimes import fastest_agreeing, measure_runtimes, runtime_candidates

    started = time.perf_counter()
    candidates = runtime_candidates("cpu", "auto", cpu_supports_bf16())
    measurements = measure_runtimes(network, candidates, (args.batch_windows, 1, *patch), threads=args.threads)
    chosen = fastest_agreeing(measurements)
    print(f"auto's probe ({time.perf_counter() - started:.1f} s, {args.batch_windows} window(s) of {patch}): "
          + ", ".join(f"{m.name} {m.seconds:.3f} s (Dice {m.label_agreement_dice:.4f}, |dp| "
                      f"{m.max_probability_difference:.1e}{', ' + m.error if m.error else ''})" for m in measurements)
          + f" -> {chosen.name}")


if __name__ == "__main__":
    main()
