"""Tiny architectures and a tiny synthetic task shared by the network tests.

    architecture = tiny_architecture("unetpp", dimension=3)
    dice = dice_after_training(architecture)      # foreground Dice on fresh images after a short training

The task: a bright square (2D) or box (3D) at a random place in Gaussian noise, label 1 inside. Predicting
everything as foreground scores a Dice of about 0.25 (the box covers about 1/7 of the image), nothing 0.
"""

from __future__ import annotations

import torch

from autoseg.network import build_network
from autoseg.network.architecture import Architecture
from autoseg.training.loss import loss_for_architecture
from autoseg.training.step import train_step

PATCH = {2: [32, 32], 3: [16, 16, 16]}
# Anisotropic on purpose in 3D: the first axis keeps full resolution in stage 1 and has a 1-wide kernel at stage 0.
KERNELS = {2: [[3, 3]] * 3, 3: [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}
STRIDES = {2: [[1, 1], [2, 2], [2, 2]], 3: [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}


def tiny_architecture(name: str, dimension: int, **overrides) -> Architecture:
    fields = dict(name=name, dimension=dimension, input_channels=1, num_classes=2, features_per_stage=[4, 8, 8],
                  kernel_sizes=KERNELS[dimension], strides=STRIDES[dimension])
    return Architecture(**{**fields, **overrides})


def outputs_with_and_without_deep_supervision(architecture: Architecture, batch: int = 2):
    """(the deep-supervision outputs, the single output with deep supervision off) of a fresh network of
    `architecture` on one random batch of PATCH."""
    network = build_network(architecture).eval()
    x = torch.randn(batch, architecture.input_channels, *PATCH[architecture.dimension])
    with torch.no_grad():
        outputs = network(x)
        network.deep_supervision = False
        return outputs, network(x)


def box_images(count: int, dimension: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (count, 1, *PATCH) float, labels (count, 1, *PATCH) int64): one box of half the side per image."""
    shape = PATCH[dimension]
    images = torch.randn(count, 1, *shape, generator=generator) * 0.6
    labels = torch.zeros(count, 1, *shape, dtype=torch.int64)
    for index in range(count):
        box = [slice(int(start), int(start) + size // 2) for size, start in
               zip(shape, (torch.randint(0, size // 2 + 1, (1,), generator=generator) for size in shape))]
        labels[(index, 0, *box)] = 1
    return images + labels.float(), labels


def foreground_dice(logits: torch.Tensor, labels: torch.Tensor) -> float:
    predicted, reference = logits.argmax(1) == 1, labels[:, 0] == 1
    return float(2 * (predicted & reference).sum() / (predicted.sum() + reference.sum()).clamp_min(1))


def dice_after_training(architecture: Architecture, steps: int = 40, loss: dict | None = None, seed: int = 0) -> float:
    """Adam (lr 1e-2, batch 4) through the project's loss and train step, then the Dice on 8 fresh images."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_network(architecture)
    loss_function = loss_for_architecture(architecture, batch_dice=True, loss=loss)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    network.train()
    for _ in range(steps):
        images, labels = box_images(4, architecture.dimension, generator)
        train_step(network, loss_function, optimizer, None, images, labels, None)
    network.eval()
    network.deep_supervision = False
    images, labels = box_images(8, architecture.dimension, generator)
    with torch.no_grad():
        return foreground_dice(network(images), labels)
