import gc
import json
import os
import signal
import time

import numpy as np
import pytest

from autoseg.training.augmentation import rotation_and_dummy_2d_for, training_transforms
from autoseg.errors import BackgroundWorkerError
from autoseg.training.loader import make_loader
from autoseg.training.sampling import PatchSampler, PreprocessedFolder, enlarged_patch_size


class CountingSampler:
    """Batch = the batch's random numbers: data (2, 1, 2, 2, 2) from the generator, seg zeros."""

    def sample_batch(self, rng):
        return {"data": rng.random((2, 1, 2, 2, 2), dtype=np.float32),
                "seg": np.zeros((2, 1, 2, 2, 2), np.int16), "case_ids": ["a", "b"]}


class AddGlobalNoise:
    """Uses the global np.random state, as batchgenerators' transforms do."""

    def __call__(self, **batch):
        batch["data"] = batch["data"] + np.random.uniform(size=batch["data"].shape).astype(np.float32)
        return batch


def explode_on_third_call(calls):
    if calls == 3:
        raise ValueError("boom in worker")


class ExplodingTransform:
    def __init__(self):
        self.calls = 0

    def __call__(self, **batch):
        self.calls += 1
        explode_on_third_call(self.calls)
        return batch


class DieOnSecondCall:
    def __init__(self):
        self.calls = 0

    def __call__(self, **batch):
        self.calls += 1
        if self.calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


def take(loader, count):
    return [next(loader)["data"] for _ in range(count)]


def test_in_process_loader_is_reproducible_and_leaves_global_state_alone():
    np.random.seed(123)
    expected_global = np.random.uniform()
    np.random.seed(123)
    first = take(make_loader(CountingSampler(), AddGlobalNoise(), num_workers=0, seed=5), 3)
    assert np.random.uniform() == expected_global
    second = take(make_loader(CountingSampler(), AddGlobalNoise(), num_workers=0, seed=5), 3)
    other = take(make_loader(CountingSampler(), AddGlobalNoise(), num_workers=0, seed=6), 3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_batch_k_depends_only_on_seed_and_k_whatever_the_workers():
    """The stream is a pure function of (seed, batch index): the same batches from any number of workers,
    and a loader started at batch k (a resumed run) continues the stream exactly."""
    expected = take(make_loader(CountingSampler(), AddGlobalNoise(), num_workers=0, seed=5), 6)
    for workers in (1, 2, 3):
        with make_loader(CountingSampler(), AddGlobalNoise(), num_workers=workers, seed=5) as loader:
            got = take(loader, 6)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    for workers in (0, 2):
        with make_loader(CountingSampler(), AddGlobalNoise(), num_workers=workers, seed=5, first_batch=4) as loader:
            assert loader.next_index == 4
            got = take(loader, 2)
            assert loader.next_index == 6
        for a, b in zip(got, expected[4:]):
            np.testing.assert_array_equal(a, b)
    # No two batches of a stream are alike.
    assert len({batch.tobytes() for batch in expected}) == len(expected)


def test_finite_loader_stops_and_closes():
    loader = make_loader(CountingSampler(), None, num_workers=2, seed=0, num_batches=3)
    assert len(list(loader)) == 3
    assert not any(p.is_alive() for p in loader._processes)
    loader = make_loader(CountingSampler(), None, num_workers=2, seed=0, first_batch=5, num_batches=3)
    assert len(list(loader)) == 3 and loader.next_index == 8
    assert not any(p.is_alive() for p in loader._processes)


def test_worker_exception_is_reraised_with_its_traceback():
    loader = make_loader(CountingSampler(), ExplodingTransform(), num_workers=2, seed=0)
    received = 0
    with pytest.raises(BackgroundWorkerError) as raised:
        for _ in loader:
            received += 1
    # each worker fails on its own 3rd batch: worker 0 on batch 4, after batches 0-3 arrived
    assert received == 4
    text = str(raised.value)
    assert "boom in worker" in text and "ValueError" in text and "explode_on_third_call" in text
    assert "worker 0" in text
    assert not any(p.is_alive() for p in loader._processes)


def test_in_process_exception_is_the_original():
    loader = make_loader(CountingSampler(), ExplodingTransform(), num_workers=0, seed=0)
    take(loader, 2)
    with pytest.raises(ValueError, match="boom in worker"):
        next(loader)


def test_killed_worker_gives_a_clear_error_quickly():
    loader = make_loader(CountingSampler(), DieOnSecondCall(), num_workers=2, seed=0)
    started = time.monotonic()
    with pytest.raises(BackgroundWorkerError) as raised:
        take(loader, 4)
    assert time.monotonic() - started < 5
    text = str(raised.value)
    assert "worker 0" in text and "-9" in text and "SIGKILL" in text


def test_close_and_garbage_collection_stop_the_workers():
    loader = make_loader(CountingSampler(), None, num_workers=2, seed=0)
    next(loader)
    processes = list(loader._processes)
    loader.close()
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(StopIteration):
        next(loader)

    loader = make_loader(CountingSampler(), None, num_workers=1, seed=0)
    next(loader)
    processes = list(loader._processes)
    del loader
    gc.collect()
    for p in processes:
        p.join(timeout=5)
    assert not any(p.is_alive() for p in processes)


def test_real_pipeline_in_workers(tmp_path):
    seg = np.zeros((12, 24, 24), np.int16)
    seg[4:8, 8:16, 8:16] = 1
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(1, 12, 24, 24)).astype(np.float32))
    np.save(tmp_path / "a_seg.npy", seg)
    (tmp_path / "a.json").write_text(json.dumps({"foreground_locations": {"1": np.argwhere(seg == 1).tolist()}}))
    patch = (8, 16, 16)
    setup = rotation_and_dummy_2d_for(patch, 3)
    sampler = PatchSampler(PreprocessedFolder(tmp_path), ["a"], patch, batch_size=2,
                           read_patch_size=enlarged_patch_size(patch, setup.rotation_range_rad))
    transforms = training_transforms(patch, dimension=3, rotation_range_deg=setup.rotation_range_deg,
                                     do_dummy_2d=False, mirror_axes=setup.mirror_axes, use_mask_for_norm_any=False)
    with make_loader(sampler, transforms, num_workers=2, seed=0, num_batches=4) as loader:
        batches = list(loader)
    assert len(batches) == 4
    for batch in batches:
        assert batch["data"].shape == (2, 1) + patch and batch["seg"].dtype == np.int16
        assert set(np.unique(batch["seg"])) <= {0, 1}
        assert (batch["seg"][1] == 1).any()  # forced foreground survives augmentation here


ORPHAN_SCRIPT = """
import sys, time
import numpy as np
from autoseg.training.loader import make_loader

class BigSampler:  # 4 MB batches: the pipes fill up and the workers block in send()
    def sample_batch(self, rng):
        return {"data": rng.random((1, 1, 100, 100, 100), dtype=np.float32)}

train = make_loader(BigSampler(), None, num_workers=2, seed=0)
val = make_loader(BigSampler(), None, num_workers=1, seed=1)  # forked later: holds train's pipe ends
next(train), next(val)
print(" ".join(str(p.pid) for p in train._processes + val._processes), flush=True)
time.sleep(60)
"""


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (an unreaped zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_workers_exit_when_the_consumer_is_killed(tmp_path):
    import subprocess
    import sys

    consumer = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in consumer.stdout.readline().split()]
        assert len(pids) == 3 and all(_running(p) for p in pids)
    finally:
        consumer.kill()  # SIGKILL: no finalizer, no close()
        consumer.wait()
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _running(p)], "orphaned data workers kept running"
