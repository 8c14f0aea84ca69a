"""ONNX export: probabilities within 1e-3 of torch fp32 for random-weight 2D and 3D U-Nets and for a trained
demo fold, at a shape other than the one exported (dynamic batch and spatial axes); a wrong export is caught
by the parity check; the network comes back in the state it was in."""

import pytest
import torch

from autoseg.network import build_network
from autoseg.network.architecture import Architecture
from autoseg.network.onnx_export import (PARITY_TOLERANCE, ExportError, check_parity, export_onnx,
                                         onnxruntime_session)
from helpers_training import CONFIGURATION, small_task, trained_small_fold  # noqa: F401

pytest.importorskip("onnxruntime")


def small_unet(dimension: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ones, twos = [1] * dimension, [2] * dimension
    return build_network(Architecture("plain_unet", dimension, 2, 3, [4, 8, 16], [[3] * dimension] * 3,
                                      [ones, twos, twos]))


@pytest.mark.parametrize("dimension, exported, predicted", [
    (2, (32, 32), (2, 2, 48, 40)),
    (3, (8, 16, 16), (2, 2, 12, 20, 24)),
])
def test_random_unet_matches_torch_at_another_shape(dimension, exported, predicted):
    network = small_unet(dimension)
    onnx_model = export_onnx(network, input_channels=2, dimension=dimension, example_spatial=exported)
    image = torch.randn(predicted, generator=torch.Generator().manual_seed(1))
    assert check_parity(network, onnx_model, image) < PARITY_TOLERANCE
    # Only the highest-resolution logits, at the input's spatial shape.
    outputs = onnxruntime_session(onnx_model).run(None, {"image": image.numpy()})
    assert len(outputs) == 1 and outputs[0].shape == (predicted[0], 3, *predicted[2:])


def test_export_leaves_the_network_as_it_was_and_writes_the_file(tmp_path):
    network = small_unet(3).train()
    assert network.deep_supervision
    path = tmp_path / "model.onnx"
    onnx_model = export_onnx(network, input_channels=2, dimension=3, example_spatial=(8, 8, 8), path=path)
    assert network.training and network.deep_supervision
    assert path.read_bytes() == onnx_model
    assert check_parity(network, path, torch.randn(1, 2, 8, 16, 8)) < PARITY_TOLERANCE


def test_an_export_of_other_weights_fails_the_parity_check():
    other = export_onnx(small_unet(3, seed=1), input_channels=2, dimension=3, example_spatial=(8, 8, 8))
    with pytest.raises(ExportError, match=r"differs from the torch network by .* \(more than 0.001\)") as error:
        check_parity(small_unet(3, seed=0), other, torch.randn(1, 2, 8, 8, 8))
    assert "\n" not in str(error.value)


def test_exports_are_cached_by_weights_and_the_most_recent_kept(tmp_path, monkeypatch):
    from autoseg.network import onnx_export

    network = small_unet(3)
    first = onnx_export.cached_export_onnx(network, input_channels=2, dimension=3, cache_folder=tmp_path,
                                           example_spatial=(8, 8, 8))
    assert [path.read_bytes() for path in tmp_path.glob("*.onnx")] == [first]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    with monkeypatch.context() as patched:  # the same network: read back, not exported
        patched.setattr(onnx_export, "export_onnx", no_export)
        assert onnx_export.cached_export_onnx(network, input_channels=2, dimension=3, cache_folder=tmp_path) == first
    # Other weights are another export; with keep=1 only the newest stays.
    other = onnx_export.cached_export_onnx(small_unet(3, seed=1), input_channels=2, dimension=3, cache_folder=tmp_path,
                                           example_spatial=(8, 8, 8), keep=1)
    assert other != first and [path.read_bytes() for path in tmp_path.glob("*.onnx")] == [other]
    assert check_parity(small_unet(3, seed=1), other, torch.randn(1, 2, 8, 8, 8)) < PARITY_TOLERANCE


def test_a_wrong_example_shape_is_a_clear_error():
    with pytest.raises(ExportError, match="has not 3 axes"):
        export_onnx(small_unet(3), input_channels=2, dimension=3, example_spatial=(8, 8))


def test_trained_demo_fold_matches_torch(small_task, trained_small_fold):
    from autoseg.inference.model import load_trained_model
    from autoseg.workspace import TaskResults

    model = load_trained_model(TaskResults(trained_small_fold.results_folder), small_task.plans, CONFIGURATION,
                               device="cpu")
    network, patch = model.networks[0], model.configuration.patch_size
    onnx_model = export_onnx(network, input_channels=1, dimension=3, example_spatial=tuple(patch))
    # A real case at a shape other than the exported patch: its first patch and that patch mirrored, side by side.
    from autoseg.preprocessing.store import load_case

    data = torch.from_numpy(load_case(small_task.data_folder, small_task.case_ids[0], mmap=False)[0])
    crop = data[None, :, :patch[0], :patch[1], :patch[2]]
    image = torch.cat([crop, crop.flip(-1)], dim=-1).float()
    assert check_parity(network, onnx_model, image) < PARITY_TOLERANCE
