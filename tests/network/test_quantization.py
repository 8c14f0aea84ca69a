"""int8 quantization: the convolutions kept in float are exactly those at the input's resolution; the
quantized graph holds int8 weights for the others; calibration is required, and cached by export."""

import numpy as np
import pytest

from autoseg.network import build_network
from autoseg.network.architecture import Architecture
from autoseg.network.onnx_export import export_onnx
from autoseg.network.quantization import (QuantizationError, cached_quantized_onnx, full_resolution_convolutions,
                                          quantize_onnx)


@pytest.fixture(scope="module")
def exported():
    import torch

    torch.manual_seed(0)
    # 3 stages, the first anisotropic: stride 1, then 2 and 2.
    architecture = Architecture("plain_unet", 3, 1, 2, [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                                [[1, 1, 1], [2, 2, 2], [2, 2, 2]], deep_supervision=False)
    return export_onnx(build_network(architecture).eval(), input_channels=1, dimension=3)


def test_the_full_resolution_convolutions_are_the_first_and_last_stages_and_the_head(exported):
    names = full_resolution_convolutions(exported, (8, 16, 16))
    # encoder stage 0 (2 convs), the last upsampling, decoder stage 1 (2 convs), the segmentation head
    assert len(names) == 6
    assert sum("encoder_stages.0/" in name for name in names) == 2
    assert not any("encoder_stages.1/" in name or "encoder_stages.2/" in name for name in names)
    assert sum("ConvTranspose" in name for name in names) == 1
    assert any("segmentation" in name for name in names)


def test_quantization_makes_the_other_convolutions_int8(exported):
    import onnx

    windows = np.random.default_rng(0).standard_normal((3, 1, 8, 16, 16), dtype=np.float32)
    quantized = onnx.load_from_string(quantize_onnx(exported, windows))
    nodes = quantized.graph.node
    float_convs = set(full_resolution_convolutions(exported, (8, 16, 16)))
    convs = [node for node in nodes if node.op_type in ("Conv", "ConvTranspose")]
    producers = {output: node for node in nodes for output in node.output}
    # A quantized convolution reads its input through QuantizeLinear -> DequantizeLinear; a float one does not.
    dequantized = {node.name for node in convs if producers.get(node.input[0]) is not None
                   and producers[node.input[0]].op_type == "DequantizeLinear"}
    assert dequantized == {node.name for node in convs} - float_convs
    assert len(dequantized) == len(convs) - 6 > 0


def test_calibration_is_required_and_the_quantized_form_is_cached(exported, tmp_path):
    with pytest.raises(QuantizationError, match="int8 needs images to calibrate on"):
        cached_quantized_onnx(exported, lambda: None, tmp_path)
    with pytest.raises(QuantizationError, match="needs calibration windows"):
        quantize_onnx(exported, np.zeros((0, 1, 8, 16, 16), np.float32))
    calls = []

    def windows():
        calls.append(1)
        return np.random.default_rng(1).standard_normal((2, 1, 8, 16, 16), dtype=np.float32)

    first = cached_quantized_onnx(exported, windows, tmp_path)
    again = cached_quantized_onnx(exported, windows, tmp_path)
    assert first == again and len(calls) == 1
    assert len(list(tmp_path.glob("*.int8.onnx"))) == 1
