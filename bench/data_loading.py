"""How fast does the training data pipeline deliver batches, and would the network wait for them?

Builds a synthetic preprocessed store (random CT-like data, one label) in a temporary folder, then measures
for 0, 1, 2 (or --workers) background workers:
  * batches/s of sampling + the full nnU-Net augmentation (3D patch, batch 2, rotation ±30°, enlarged reads);
  * the time a consumer waits per batch when it spends --fake-work-ms per batch on "the network"
    (time.sleep, i.e. a GPU step that leaves the CPU free).
Also the split of the in-process time between reading patches and augmenting them.

    .venv/bin/python bench/data_loading.py --quick      # 64^3 patch, a few batches
    .venv/bin/python bench/data_loading.py              # 128^3 patch
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from autoseg.training.augmentation import rotation_and_dummy_2d_for, training_transforms
from autoseg.training.data import read_patch_size_for
from autoseg.training.loader import make_loader
from autoseg.training.sampling import PatchSampler, PreprocessedFolder


def build_store(folder: Path, cases: int, shape: tuple[int, int, int], channels: int = 1,
                foreground_signal: float = 0.0) -> list[str]:
    """A preprocessed store of `cases` cases (docs/contracts.md layout): data (channels, *shape) float32
    noise, label 1 on the central third of each axis (plus foreground_signal there, so that a network
    can learn it; 0 keeps it pure noise), -1 on the first two x columns."""
    rng = np.random.default_rng(0)
    ids = []
    for index in range(cases):
        case_id = f"case_{index:03d}"
        data = rng.normal(size=(channels,) + shape).astype(np.float32)
        seg = np.zeros(shape, np.int16)
        centre = tuple(slice(s // 3, 2 * s // 3) for s in shape)
        seg[centre] = 1
        data[(slice(None),) + centre] += foreground_signal
        seg[:, :, :2] = -1
        np.save(folder / f"{case_id}.npy", data)
        np.save(folder / f"{case_id}_seg.npy", seg)
        voxels = np.argwhere(seg == 1)
        chosen = voxels[rng.choice(len(voxels), size=min(len(voxels), 10_000), replace=False)]
        (folder / f"{case_id}.json").write_text(json.dumps({"case_id": case_id,
                                                            "foreground_locations": {"1": chosen.tolist()}}))
        ids.append(case_id)
    return ids


def make_pipeline(folder: Path, case_ids: list[str], patch: tuple[int, ...], batch_size: int):
    """(sampler, transforms, read patch size) as training builds them (autoseg.training.data)."""
    setup = rotation_and_dummy_2d_for(patch, len(patch))
    read_size = read_patch_size_for(patch, setup)
    sampler = PatchSampler(PreprocessedFolder(folder), case_ids, patch, batch_size, read_patch_size=read_size)
    transforms = training_transforms(patch, dimension=len(patch), rotation_range_deg=setup.rotation_range_deg,
                                     do_dummy_2d=setup.do_dummy_2d, mirror_axes=setup.mirror_axes,
                                     use_mask_for_norm_any=False)
    return sampler, transforms, read_size


def time_in_process_split(sampler, transforms, batches: int) -> tuple[float, float]:
    """Mean seconds per batch for reading and for augmenting, in this process (one BLAS thread, as the
    loader runs it)."""
    from threadpoolctl import threadpool_limits

    np.random.seed(0)
    with threadpool_limits(1):
        return _split_loop(sampler, transforms, batches, np.random.default_rng(0))


def _split_loop(sampler, transforms, batches: int, rng) -> tuple[float, float]:
    read_s = augment_s = 0.0
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = sampler.sample_batch(rng)
        t1 = time.perf_counter()
        transforms(**batch)
        t2 = time.perf_counter()
        read_s += t1 - t0
        augment_s += t2 - t1
    return read_s / batches, augment_s / batches


def measure(sampler, transforms, workers: int, batches: int, fake_work_s: float) -> tuple[float, float, float]:
    """(batches/s with no consumer work, mean wait per batch with fake work, startup seconds)."""
    started = time.perf_counter()
    with make_loader(sampler, transforms, num_workers=workers, seed=0) as loader:
        next(loader)  # startup and first batch
        startup = time.perf_counter() - started
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        throughput = batches / (time.perf_counter() - t0)
    with make_loader(sampler, transforms, num_workers=workers, seed=1) as loader:
        next(loader)
        waited = 0.0
        for _ in range(batches):
            time.sleep(fake_work_s)  # the network's step; the workers keep producing meanwhile
            t0 = time.perf_counter()
            next(loader)
            waited += time.perf_counter() - t0
    return throughput, waited / batches, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64^3 patch instead of 128^3")
    parser.add_argument("--batches", type=int, default=None, help="batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fake-work-ms", type=float, default=None,
                        help="consumer work per batch (default: 150 quick, 500 full)")
    args = parser.parse_args()
    patch = (64, 64, 64) if args.quick else (128, 128, 128)
    batches = args.batches or (6 if args.quick else 10)
    fake_work_ms = args.fake_work_ms if args.fake_work_ms is not None else (150.0 if args.quick else 500.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        read_size = read_patch_size_for(patch, rotation_and_dummy_2d_for(patch, 3))
        image_shape = tuple(int(s * 1.2) for s in read_size)
        case_ids = build_store(folder, cases=3, shape=image_shape)
        sampler, transforms, read_size = make_pipeline(folder, case_ids, patch, batch_size=2)
        print(f"patch {patch}, read {read_size}, images {image_shape}, batch 2, {batches} batches per run")
        read_s, augment_s = time_in_process_split(sampler, transforms, batches)
        print(f"in process: read {read_s * 1e3:.0f} ms + augment {augment_s * 1e3:.0f} ms per batch")
        print(f"{'workers':>7} {'batches/s':>10} {'startup s':>10} {'wait/batch ms at ' + str(int(fake_work_ms)) + ' ms work':>30}")
        for workers in args.workers:
            throughput, wait_s, startup = measure(sampler, transforms, workers, batches, fake_work_ms / 1e3)
            print(f"{workers:>7} {throughput:>10.2f} {startup:>10.2f} {wait_s * 1e3:>30.0f}")


if __name__ == "__main__":
    main()
