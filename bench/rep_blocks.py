"""Rep blocks (autoseg.network.rep) against plain blocks: what the training branches cost, whether fused
inference runs at the plain network's speed, and whether they help at equal training time.

For a 3D plain U-Net (`unet_3d` of bench/precision.py) built twice, with `conv_block` "plain" and "rep":
  1. training step: the project's step (`autoseg.training.step.train_step`: deep-supervised Dice + CE,
     nnU-Net's SGD, clipping), rep / plain seconds per step, median of interleaved timed steps;
  2. inference: a no-grad forward of the plain network, of the rep network fused (`fuse_rep_blocks`) and
     unfused, interleaved; ratios against the plain one, and the fused / unfused max abs difference;
  3. Dice at equal training time on the synthetic sphere task (bench/precision.py `sphere_batch`: a bright
     sphere in noise): per seed, both networks train on the same stream of fresh batches, a step of whichever
     has used less of its own compute time, until each has used `--seconds`; then the foreground Dice of the
     (fused) rep and the plain network on held-out batches.

    .venv/bin/python bench/rep_blocks.py --quick          # ~2 minutes on 2 loaded cores
    .venv/bin/python bench/rep_blocks.py --device cuda    # wider network, larger patch, longer training
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precision import sphere_batch, time_interleaved, unet_3d  # noqa: E402

from autoseg.network import build_network  # noqa: E402
from autoseg.network.rep import fuse_rep_blocks  # noqa: E402
from autoseg.training.loss import loss_for_architecture  # noqa: E402
from autoseg.training.step import make_optimizer, train_step  # noqa: E402

VALIDATION_SEED = 10**6


def build(architecture, conv_block: str, device, seed: int):
    torch.manual_seed(seed)
    block_architecture = copy.deepcopy(architecture)
    block_architecture.conv_block = conv_block
    return build_network(block_architecture).to(device), block_architecture


def step_function(network, architecture, image, target):
    loss = loss_for_architecture(architecture, batch_dice=True)
    optimizer = make_optimizer(network.parameters())
    network.train()
    return lambda: train_step(network, loss, optimizer, None, image, target, None)


def forward_function(network, image):
    network = network.eval()
    network.deep_supervision = False

    def forward():
        with torch.inference_mode():
            out = network(image)
        if out.is_cuda:
            torch.cuda.synchronize()
        return out
    return forward


def foreground_dice(network, image, target) -> float:
    network.eval()
    network.deep_supervision = False
    with torch.inference_mode():
        predicted = network(image).argmax(1) == 1
    reference = target[:, 0] == 1
    return float(2 * (predicted & reference).sum() / (predicted.sum() + reference.sum()).clamp_min(1))


def dice_at_equal_time(architecture, device, patch: int, batch: int, seconds: float, seed: int) -> dict:
    """Both networks train on the same batches, each step going to the one that has used less time."""
    runs = {}
    for block in ("plain", "rep"):
        network, block_architecture = build(architecture, block, device, seed)
        runs[block] = dict(network=network, loss=loss_for_architecture(block_architecture, batch_dice=True),
                           optimizer=make_optimizer(network.parameters()), used=0.0, steps=0)
    while min(run["used"] for run in runs.values()) < seconds:
        run = min(runs.values(), key=lambda r: r["used"])
        image, target = sphere_batch(batch, patch, seed=seed * 100_000 + run["steps"])
        run["network"].train()
        started = time.perf_counter()
        train_step(run["network"], run["loss"], run["optimizer"], None, image.to(device), target.to(device), None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        run["used"] += time.perf_counter() - started
        run["steps"] += 1
    image, target = sphere_batch(8, patch, seed=VALIDATION_SEED + seed)
    image, target = image.to(device), target.to(device)
    fuse_rep_blocks(runs["rep"]["network"])
    return {block: (run["steps"], foreground_dice(run["network"], image, target)) for block, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="narrow network, small patch, short training")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, help="training seconds per network and seed (Dice at equal time)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    quick, cuda = args.quick, device.type == "cuda"
    features = [8, 16, 32] if quick else ([32, 64, 128, 256] if cuda else [16, 32, 64, 128])
    patch, batch = (16, 2) if quick else ((64, 2) if cuda else (32, 2))
    seconds = args.seconds or (10.0 if quick else 60.0)
    architecture = unet_3d(features)
    image, target = sphere_batch(batch, patch)
    image, target = image.to(device), target.to(device)
    repeats = 5 if quick else 10
    print(f"device {device}, features {features}, patch {patch}^3, batch {batch}, torch {torch.__version__}")

    plain, plain_architecture = build(architecture, "plain", device, 0)
    rep, rep_architecture = build(architecture, "rep", device, 0)
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in (("plain", plain), ("rep", rep))}
    timings = time_interleaved({"plain": step_function(plain, plain_architecture, image, target),
                                "rep": step_function(rep, rep_architecture, image, target)}, repeats)
    step = {name: statistics.median(values) for name, values in timings.items()}
    print(f"training step: plain {step['plain'] * 1e3:.1f} ms, rep {step['rep'] * 1e3:.1f} ms, "
          f"ratio rep/plain {step['rep'] / step['plain']:.2f} (parameters {params['plain']} vs {params['rep']})")

    unfused = copy.deepcopy(rep)
    fused = fuse_rep_blocks(copy.deepcopy(rep))
    difference = float((forward_function(unfused, image)() - forward_function(fused, image)()).abs().max())
    timings = time_interleaved({"plain": forward_function(plain, image), "rep fused": forward_function(fused, image),
                                "rep unfused": forward_function(unfused, image)}, repeats * 2)
    forward = {name: statistics.median(values) for name, values in timings.items()}
    print(f"inference: plain {forward['plain'] * 1e3:.1f} ms, fused rep / plain {forward['rep fused'] / forward['plain']:.2f}, "
          f"unfused rep / plain {forward['rep unfused'] / forward['plain']:.2f}; fused vs unfused max |diff| {difference:.2e}")

    print(f"Dice at equal training time ({seconds:.0f} s each, sphere task, nnU-Net SGD):")
    dice = {"plain": [], "rep": []}
    for seed in range(args.seeds):
        result = dice_at_equal_time(architecture, device, patch, batch, seconds, seed)
        for block, (steps, value) in result.items():
            dice[block].append(value)
        print(f"  seed {seed}: plain {result['plain'][1]:.3f} ({result['plain'][0]} steps), "
              f"rep {result['rep'][1]:.3f} ({result['rep'][0]} steps)")
    print(f"  mean Dice: plain {statistics.mean(dice['plain']):.3f}, rep {statistics.mean(dice['rep']):.3f}")


if __name__ == "__main__":
    main()
