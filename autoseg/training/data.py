"""The training and validation batch streams of one fold, assembled from the plan's configuration.

Training batches: enlarged patches (so rotation and scaling never bring in empty corners), a third
forced onto foreground, nnU-Net's augmentation, in `num_workers` background processes.
Validation batches: patches of the final size from the held-out cases, no augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoseg.training.augmentation import (SpatialAugmentationSetup, rotation_and_dummy_2d_for, training_transforms,
                                           validation_transforms)
from autoseg.training.loader import make_loader
from autoseg.training.sampling import PatchSampler, PreprocessedFolder, enlarged_patch_size


def read_patch_size_for(patch_size: Sequence[int], setup: SpatialAugmentationSetup) -> tuple[int, ...]:
    """The enlarged patch (voxels) a training sample is read at, so that rotation and scaling find image
    content in the corners. Slice-wise ("dummy 2D") augmentation never moves content across axis 0, so
    that axis is read at the final size (nnU-Net: initial_patch_size[0] = patch_size[0])."""
    enlarged = enlarged_patch_size(patch_size, setup.rotation_range_rad)
    if setup.do_dummy_2d:
        return (int(patch_size[0]),) + tuple(enlarged[1:])
    return enlarged


def make_training_loaders(*, data_folder: Path, configuration, train_ids: Sequence[str], val_ids: Sequence[str],
                          batch_size: int, num_workers: int, seed: int,
                          first_train_batch: int = 0, first_validation_batch: int = 0,
                          previous_stage_predictions: Path | None = None, foreground_labels: Sequence[int] = (),
                          first_global_index: int = 0, global_batch_size: int | None = None):
    """(training loader, validation loader): endless iterators of {"data", "seg"} batches.

    seed: the streams' seed; first_train_batch, first_validation_batch: the index of each stream's first
    batch (a resumed run continues its streams where its checkpoint left them, see `autoseg.training.loader`).
    batch_size: samples per batch of this process; with DDP, `first_global_index` and
    `global_batch_size` place them in the global batch (see `PatchSampler`), so that a third of the
    global batch is forced onto foreground however it is split.
    previous_stage_predictions: for a cascade stage, the folder of the previous stage's segmentations
    on this grid; they are appended as one-hot channels (perturbed during training).
    """
    patch_size = list(configuration.patch_size)
    setup = rotation_and_dummy_2d_for(patch_size, configuration.dimension)
    cases = PreprocessedFolder(Path(data_folder))
    train_extra, val_extra, image_channels = (), (), None
    if previous_stage_predictions is not None:
        from autoseg.cascade import CascadeCases
        from autoseg.training.augmentation import cascade_transforms

        cases = CascadeCases(cases, previous_stage_predictions, foreground_labels)
        image_channels = configuration.architecture.input_channels - len(foreground_labels)
        train_extra = cascade_transforms(image_channels, training=True)
        val_extra = cascade_transforms(image_channels, training=False)
    slot = dict(first_global_index=first_global_index, global_batch_size=global_batch_size)
    train_sampler = PatchSampler(cases, train_ids, patch_size, batch_size,
                                 read_patch_size=read_patch_size_for(patch_size, setup), **slot)
    train_transforms = training_transforms(
        patch_size, dimension=configuration.dimension, rotation_range_deg=setup.rotation_range_deg,
        do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
        use_mask_for_norm_any=any(configuration.use_mask_for_norm), extra_transforms=train_extra,
        image_channels=image_channels,
        masked_channels=None if image_channels is None else list(range(image_channels)))
    val_sampler = PatchSampler(cases, val_ids, patch_size, batch_size, **slot)
    train = make_loader(train_sampler, train_transforms, num_workers, seed, first_batch=first_train_batch)
    # Validation batches are cheap (no augmentation): one worker at most keeps them off the main thread.
    val = make_loader(val_sampler, validation_transforms(val_extra), min(1, num_workers), seed + 10_000,
                      first_batch=first_validation_batch)
    return train, val
