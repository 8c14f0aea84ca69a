"""CPU precision benchmark for the 3D U-Net: fp32 vs bf16 autocast vs channels_last_3d vs both.

For each variant, from the same initial weights and the same batch:
- training step (forward + deep-supervised Dice+CE loss + backward + SGD step): seconds per step;
- inference (forward, no grad, deep supervision off): seconds per forward and the max abs difference
  of the softmax output against fp32;
and a short training run on a fixed synthetic sphere batch in fp32 and bf16 from the same init,
reporting the final Dice on that batch, to see whether bf16 still learns.

Speed-ups are ratios against fp32 measured in the same run. Usage:
    .venv/bin/python bench/precision.py [--quick] [--repeats N] [--dice-steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from dataclasses import dataclass

import torch

from autoseg.network import build_network, count_parameters
from autoseg.network.architecture import Architecture
from autoseg.training.loss import build_training_loss

# nnU-Net's optimiser settings (SGD, lr 0.01, momentum 0.99, Nesterov) for the timed steps.
LEARNING_RATE, MOMENTUM = 1e-2, 0.99
# The Dice check must converge in ~30 steps on one batch; at lr 0.01 the net still predicts all
# background after 30 steps (Dice 0 in both precisions, which compares nothing), at 0.1 it reaches ~0.9.
DICE_CHECK_LEARNING_RATE = 0.1


@dataclass
class Variant:
    name: str
    bf16: bool
    channels_last: bool

    def autocast(self):
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, tensor_or_module):
        if self.channels_last:
            return tensor_or_module.to(memory_format=torch.channels_last_3d)
        return tensor_or_module


VARIANTS = [Variant("fp32", False, False), Variant("bf16", True, False),
            Variant("channels_last_3d", False, True), Variant("bf16+channels_last", True, True)]


def unet_3d(features: list[int], num_classes: int = 2) -> Architecture:
    stages = len(features)
    return Architecture(name="plain_unet", dimension=3, input_channels=1, num_classes=num_classes,
                        features_per_stage=features, kernel_sizes=[[3, 3, 3]] * stages,
                        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1))


def sphere_batch(batch: int, patch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (B, 1, p, p, p): a bright sphere of random radius/centre plus noise; target (B, 1, p, p, p) int64."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.arange(patch, dtype=torch.float32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    images, targets = [], []
    for _ in range(batch):
        centre = patch / 2 + (torch.rand(3, generator=generator) - 0.5) * patch / 4
        radius = patch * (0.15 + 0.15 * torch.rand(1, generator=generator).item())
        inside = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= radius**2
        images.append(inside.float() + 0.5 * torch.randn(inside.shape, generator=generator))
        targets.append(inside.long())
    return torch.stack(images)[:, None], torch.stack(targets)[:, None]


def training_step(model, optimizer, loss_fn, image, target, variant: Variant) -> float:
    optimizer.zero_grad(set_to_none=True)
    with variant.autocast():
        outputs = model(image)
    loss = loss_fn(outputs, target)  # the loss casts to float32 itself
    loss.backward()
    optimizer.step()
    return loss.item()


def fresh_training_setup(initial_model, variant: Variant, n_outputs: int, learning_rate: float = LEARNING_RATE):
    model = variant.prepare(copy.deepcopy(initial_model)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=MOMENTUM, nesterov=True)
    return model, optimizer, build_training_loss(batch_dice=True, n_outputs=n_outputs)


def time_interleaved(steps: dict[str, callable], repeats: int, warm_up: int = 2) -> dict[str, list[float]]:
    """Seconds of each call of each step function. Calls are interleaved round-robin across the
    variants so that load from other processes on a shared CPU hits them all alike."""
    for step in steps.values():
        for _ in range(warm_up):  # allocations, oneDNN kernel selection
            step()
    timings = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            timings[name].append(time.perf_counter() - start)
    return timings


def training_step_function(initial_model, architecture, image, target, variant):
    model, optimizer, loss_fn = fresh_training_setup(initial_model, variant, architecture.num_stages - 1)
    image = variant.prepare(image)
    return lambda: training_step(model, optimizer, loss_fn, image, target, variant)


def inference_function(initial_model, image, variant):
    """A no-grad forward (deep supervision off) returning float32 softmax (B, C, *spatial), contiguous."""
    model = variant.prepare(copy.deepcopy(initial_model)).eval()
    model.deep_supervision = False
    image = variant.prepare(image)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), variant.autocast():
            return torch.softmax(model(image).float(), dim=1).contiguous()

    return forward


def foreground_dice(model, image, target, variant) -> float:
    model.eval()
    model.deep_supervision = False
    with torch.inference_mode(), variant.autocast():
        predicted = model(variant.prepare(image)).float().argmax(1, keepdim=True)
    model.deep_supervision = True
    tp = ((predicted == 1) & (target == 1)).sum().item()
    fp = ((predicted == 1) & (target != 1)).sum().item()
    fn = ((predicted != 1) & (target == 1)).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)


def dice_after_training(initial_model, architecture, image, target, variant, steps) -> tuple[float, float]:
    """(final loss, Dice on the training batch) after `steps` SGD steps on one fixed batch."""
    model, optimizer, loss_fn = fresh_training_setup(initial_model, variant, architecture.num_stages - 1,
                                                     DICE_CHECK_LEARNING_RATE)
    prepared = variant.prepare(image)
    loss = float("nan")
    for _ in range(steps):
        model.train()
        loss = training_step(model, optimizer, loss_fn, prepared, target, variant)
    return loss, foreground_dice(model, image, target, variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small network and 32^3 patch (2-3 minutes on a busy 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--dice-steps", type=int, default=30, help="training steps for the Dice check")
    args = parser.parse_args()

    features, patch, batch = ([16, 32, 64, 128], 32, 2) if args.quick else ([32, 64, 128, 256], 64, 2)
    repeats = args.repeats or 7
    torch.manual_seed(0)
    architecture = unet_3d(features)
    initial_model = build_network(architecture)
    image, target = sphere_batch(batch, patch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; U-Net features {features}, "
          f"{count_parameters(initial_model) / 1e6:.2f} M parameters; batch {batch} x 1 x {patch}^3; "
          f"{repeats} interleaved timed repeats after 2 warm-ups")

    train = time_interleaved({v.name: training_step_function(initial_model, architecture, image, target, v)
                              for v in VARIANTS}, repeats)
    forwards = {v.name: inference_function(initial_model, image, v) for v in VARIANTS}
    infer = time_interleaved(forwards, repeats)
    reference = forwards["fp32"]()
    # On a shared CPU other processes only ever add time: the minimum is the least disturbed
    # estimate, the median shows how much the disturbance was. Speed-ups use the minimum.
    print(f"\n{'variant':<20}{'train s/step min / median':>27}{'speed-up':>10}"
          f"{'infer s/fwd min / median':>27}{'speed-up':>10}{'max|softmax - fp32|':>22}")
    for variant in VARIANTS:
        difference = (forwards[variant.name]() - reference).abs().max().item()
        cells = []
        for timings in (train, infer):
            best, typical = min(timings[variant.name]), statistics.median(timings[variant.name])
            cells.append(f"{best:>17.3f} / {typical:<7.3f}{min(timings['fp32']) / best:>10.2f}")
        print(f"{variant.name:<20}{cells[0]}{cells[1]}{difference:>22.2e}")

    small = unet_3d([8, 16, 32])
    torch.manual_seed(1)
    small_model = build_network(small)
    small_patch = 32
    image, target = sphere_batch(2, small_patch, seed=2)
    print(f"\nDice check: U-Net features {small.features_per_stage}, batch 2 x 1 x {small_patch}^3 spheres, "
          f"{args.dice_steps} SGD steps (lr {DICE_CHECK_LEARNING_RATE}) from the same init")
    for variant in VARIANTS[:2]:
        loss, dice = dice_after_training(small_model, small, image, target, variant, args.dice_steps)
        print(f"{variant.name:<20} final loss {loss:+.4f}   Dice on the batch {dice:.4f}")


if __name__ == "__main__":
    main()
