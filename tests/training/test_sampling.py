import json
import math

import numpy as np
import pytest

from autoseg.training.sampling import (
    PatchSampler,
    PreprocessedFolder,
    enlarged_patch_size,
    is_forced_foreground,
    read_padded_patch,
    split_batch,
)


def write_case(folder, case_id, data, seg):
    """A case in the layout of docs/contracts.md, foreground locations = every labelled voxel."""
    np.save(folder / f"{case_id}.npy", data.astype(np.float32))
    np.save(folder / f"{case_id}_seg.npy", seg.astype(np.int16))
    locations = {str(label): np.argwhere(seg == label).tolist() for label in np.unique(seg) if label > 0}
    (folder / f"{case_id}.json").write_text(json.dumps({"case_id": case_id, "foreground_locations": locations}))


@pytest.fixture
def store(tmp_path):
    """Two cases of 2 channels x 24x48x48: one with a 2x2x2 label-1 cube in a corner and a 2x2x2 label-2
    cube in the opposite corner (far from the centre, so random patches rarely hit them), one without
    foreground. Seg is -1 on the first x column (outside the nonzero region)."""
    shape = (24, 48, 48)
    seg = np.zeros(shape, np.int16)
    seg[:, :, 0] = -1
    seg[1:3, 1:3, 1:3] = 1
    seg[-3:-1, -3:-1, -3:-1] = 2
    data = np.random.default_rng(0).normal(size=(2,) + shape)
    write_case(tmp_path, "with_fg", data, seg)
    write_case(tmp_path, "no_fg", data, np.zeros(shape, np.int16))
    return tmp_path


def test_enlarged_patch_equals_patch_without_rotation_and_scaling():
    assert enlarged_patch_size((16, 32, 32), [(0, 0)] * 3, (1.0, 1.0)) == (16, 32, 32)
    assert enlarged_patch_size((32, 48), [(0, 0)], (1.0, 1.4)) == (32, 48)


def test_enlarged_patch_by_hand():
    # 2D square 32x32 rotated by up to 30 degrees: 32 * (cos 30 + sin 30) = 43.7 -> 44
    assert enlarged_patch_size((32, 32), [(-math.pi / 6, math.pi / 6)], (1.0, 1.0)) == (44, 44)
    # scaling down to 0.85 alone: 16/0.85 = 18.8 -> 19, 32/0.85 = 37.6 -> 38
    assert enlarged_patch_size((16, 32, 32), [(0, 0)] * 3, (0.85, 1.25)) == (19, 38, 38)
    # any rotation of a square fits in its diagonal: 32 * sqrt(2) = 45.25 -> 46
    assert enlarged_patch_size((32, 32), [(-math.pi, math.pi)], (1.0, 1.0)) == (46, 46)


def test_enlarged_patch_in_plane_rotation_keeps_axis_0():
    size = enlarged_patch_size((8, 32, 32), [(-math.pi, math.pi), (0, 0), (0, 0)], (1.0, 1.0))
    assert size == (8, 46, 46)
    full = enlarged_patch_size((8, 32, 32), [(-0.5, 0.5)] * 3, (0.85, 1.25))
    assert all(f > p for f, p in zip(full, (8, 32, 32)))


def test_forced_foreground_rule_follows_nnunet_rounding():
    assert [is_forced_foreground(j, 1) for j in range(1)] == [False]
    assert [is_forced_foreground(j, 2) for j in range(2)] == [False, True]
    assert [is_forced_foreground(j, 3) for j in range(3)] == [False, False, True]  # round(2.01) = 2
    assert [is_forced_foreground(j, 6) for j in range(6)] == [False] * 4 + [True] * 2  # round(4.02) = 4


def test_batch_shapes_and_dtypes_3d(store):
    sampler = PatchSampler(PreprocessedFolder(store), ["with_fg", "no_fg"], (16, 32, 32), batch_size=3,
                           read_patch_size=(20, 40, 40))
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert batch["data"].shape == (3, 2, 20, 40, 40) and batch["data"].dtype == np.float32
    assert batch["seg"].shape == (3, 1, 20, 40, 40) and batch["seg"].dtype == np.int16
    assert len(batch["case_ids"]) == 3 and set(batch["case_ids"]) <= {"with_fg", "no_fg"}


def test_batch_shapes_2d_configuration_on_3d_arrays(store):
    sampler = PatchSampler(PreprocessedFolder(store), ["with_fg"], (32, 32), batch_size=2,
                           read_patch_size=(40, 44))
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert batch["data"].shape == (2, 2, 40, 44) and batch["seg"].shape == (2, 1, 40, 44)


@pytest.mark.parametrize("patch_size, read_size", [((8, 16, 16), (10, 20, 20)), ((16, 16), (20, 20))])
def test_forced_foreground_sample_contains_foreground(store, patch_size, read_size):
    sampler = PatchSampler(PreprocessedFolder(store), ["with_fg"], patch_size, batch_size=2,
                           read_patch_size=read_size)
    rng = np.random.default_rng(1)
    labels_seen = set()
    for _ in range(20):
        forced_seg = sampler.sample_batch(rng)["seg"][1]
        labels = set(np.unique(forced_seg)) - {-1, 0}
        assert labels, "the forced-foreground sample has no foreground"
        labels_seen |= labels
    assert labels_seen == {1, 2}  # both labels are drawn


def test_case_without_foreground_falls_back_to_random_patch(store):
    sampler = PatchSampler(PreprocessedFolder(store), ["no_fg"], (8, 16, 16), batch_size=2)
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert set(np.unique(batch["seg"])) <= {-1, 0}


def test_patch_outside_the_image_is_padded():
    array = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) + 1
    patch = read_padded_patch(array, start=(-1, 3), size=(3, 4), pad_value=0)
    assert patch.shape == (2, 3, 4)
    expected_channel0 = [[0, 0, 0, 0], [4, 5, 0, 0], [9, 10, 0, 0]]
    np.testing.assert_array_equal(patch[0], expected_channel0)
    seg_patch = read_padded_patch(np.zeros((4, 5), np.int16), start=(-1, 3), size=(3, 4), pad_value=-1)
    np.testing.assert_array_equal(seg_patch, [[-1, -1, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1]])


def test_image_smaller_than_patch_is_padded_to_it(tmp_path):
    write_case(tmp_path, "tiny", np.ones((1, 4, 6, 6)), np.ones((4, 6, 6)))
    sampler = PatchSampler(PreprocessedFolder(tmp_path), ["tiny"], (8, 8, 8), batch_size=1)
    batch = sampler.sample_batch(np.random.default_rng(0))
    assert batch["data"].shape == (1, 1, 8, 8, 8)
    # 4x6x6 voxels of the image, the rest padding
    assert batch["data"].sum() == 4 * 6 * 6 and (batch["seg"] == 1).sum() == 4 * 6 * 6
    assert (batch["seg"] == -1).sum() == 8 ** 3 - 4 * 6 * 6


class RecordingArray:
    """Array stand-in that records which regions were read."""

    def __init__(self, array):
        self.array, self.shape, self.ndim, self.dtype = array, array.shape, array.ndim, array.dtype
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.array[key]


class RecordingCases:
    def __init__(self, data, seg):
        self.data, self.seg = RecordingArray(data), RecordingArray(seg)

    def arrays(self, case_id):
        return self.data, self.seg

    def foreground_locations(self, case_id):
        return {1: np.argwhere(self.seg.array == 1)}


def test_only_the_patch_is_read():
    seg = np.zeros((30, 60, 60), np.int16)
    seg[10, 20, 30] = 1
    cases = RecordingCases(np.zeros((1, 30, 60, 60), np.float32), seg)
    sampler = PatchSampler(cases, ["a"], (8, 16, 16), batch_size=2, read_patch_size=(10, 20, 20))
    sampler.sample_batch(np.random.default_rng(0))
    assert len(cases.data.reads) == 2 and len(cases.seg.reads) == 2
    for key in cases.data.reads + cases.seg.reads:
        spatial = [s for s in key if isinstance(s, slice)]
        assert all(s.stop - s.start <= limit for s, limit in zip(spatial[-3:], (10, 20, 20)))


def test_store_is_memory_mapped(store):
    data, seg = PreprocessedFolder(store).arrays("with_fg")
    assert isinstance(data, np.memmap) and isinstance(seg, np.memmap)


def test_same_seed_same_batch(store):
    sampler = PatchSampler(PreprocessedFolder(store), ["with_fg", "no_fg"], (8, 16, 16), batch_size=2)
    first = sampler.sample_batch(np.random.default_rng(7))
    second = sampler.sample_batch(np.random.default_rng(7))
    np.testing.assert_array_equal(first["data"], second["data"])
    np.testing.assert_array_equal(first["seg"], second["seg"])
    assert first["case_ids"] == second["case_ids"]


def test_batch_split_across_ranks_like_nnunet():
    assert split_batch(2, 1) == [2]
    assert split_batch(2, 2) == [1, 1]
    assert split_batch(5, 2) == [3, 2]
    assert split_batch(7, 3) == [3, 2, 2]
    assert split_batch(1, 2) == [1, 1]  # at least one sample per rank


@pytest.mark.parametrize("global_batch, world", [(2, 2), (3, 2), (6, 4), (5, 3)])
def test_ranks_together_force_what_one_process_would(store, global_batch, world):
    """The forced-foreground rule on global sample indices: the union over ranks is nnU-Net's rule for
    the whole batch (a batch of 2 on 2 ranks: rank 1's only sample is forced, rank 0's is not)."""
    sizes = split_batch(global_batch, world)
    forced = []
    for rank, size in enumerate(sizes):
        sampler = PatchSampler(PreprocessedFolder(store), ["with_fg"], (4, 8, 8), size,
                               first_global_index=sum(sizes[:rank]), global_batch_size=global_batch)
        forced += [is_forced_foreground(sampler.first_global_index + j, sampler.global_batch_size)
                   for j in range(size)]
        # and the forced samples really hold foreground (the corner cubes are far from random patches)
        batch = sampler.sample_batch(np.random.default_rng(rank))
        for j in range(size):
            if forced[-size + j]:
                assert (batch["seg"][j] > 0).any()
    assert forced == [is_forced_foreground(j, global_batch) for j in range(global_batch)]
    assert sum(forced) == global_batch - round(global_batch * (1 - 0.33))


def test_a_rank_slot_outside_the_global_batch_is_refused(store):
    with pytest.raises(ValueError, match="do not fit in a global batch of 2"):
        PatchSampler(PreprocessedFolder(store), ["with_fg"], (4, 8, 8), 1, first_global_index=2, global_batch_size=2)


def test_training_reads_enlarged_patches_except_along_a_slice_wise_axis():
    from autoseg.training.augmentation import rotation_and_dummy_2d_for
    from autoseg.training.data import read_patch_size_for

    # Isotropic 3D: rotations up to 30 degrees about every axis and zoom-out to 0.85 need context on all
    # axes: 32 * (cos 30 + sin 30) / 0.85 = 51.4 -> 52.
    assert read_patch_size_for((32, 32, 32), rotation_and_dummy_2d_for((32, 32, 32), 3)) == (52, 52, 52)
    # Slice-wise (dummy 2D, 8 < 64 / 3): in-plane rotation only, axis 0 read at its final size;
    # in-plane any angle: 64 * sqrt(2) / 0.85 = 106.5 -> 107.
    setup = rotation_and_dummy_2d_for((8, 64, 64), 3)
    assert setup.do_dummy_2d
    assert read_patch_size_for((8, 64, 64), setup) == (8, 107, 107)
