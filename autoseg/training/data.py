"""The training and validation batch streams of one fold, assembled from the plan's configuration.

Training batches: enlarged patches (so rotation and scaling never bring in empty corners), a third
forced onto foreground, nnU-Net's augmentation, in `num_workers` background processes.
Validation batches: patches of the final size from the held-out cases, no augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autoseg.training.augmentation import rotation_and_dummy_2d_for, training_transforms, validation_transforms
from autoseg.training.loader import make_loader
from autoseg.training.sampling import PatchSampler, PreprocessedFolder, enlarged_patch_size


def make_training_loaders(*, data_folder: Path, configuration, train_ids: Sequence[str], val_ids: Sequence[str],
                          batch_size: int, num_workers: int, seed: int, extra_transforms: Sequence = (),
                          source=None):
    """(training loader, validation loader): endless iterators of {"data", "seg"} batches.

    source: where cases are read (default: the preprocessed folder); the cascade passes one that
    appends the previous stage's segmentation.
    """
    patch_size = list(configuration.patch_size)
    setup = rotation_and_dummy_2d_for(patch_size, configuration.dimension)
    cases = source or PreprocessedFolder(Path(data_folder))
    train_sampler = PatchSampler(cases, train_ids, patch_size, batch_size,
                                 read_patch_size=enlarged_patch_size(patch_size, setup.rotation_range_rad))
    train_transforms = training_transforms(
        patch_size, dimension=configuration.dimension, rotation_range_deg=setup.rotation_range_deg,
        do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
        use_mask_for_norm_any=any(configuration.use_mask_for_norm), extra_transforms=extra_transforms)
    val_sampler = PatchSampler(cases, val_ids, patch_size, batch_size)
    train = make_loader(train_sampler, train_transforms, num_workers, seed)
    # Validation batches are cheap (no augmentation): one worker at most keeps them off the main thread.
    val = make_loader(val_sampler, validation_transforms(extra_transforms), min(1, num_workers), seed + 10_000)
    return train, val
