"""Post-training int8 quantization of an exported network, for OpenVINO's int8 kernels (`--runtime openvino
--precision int8`).

    quantized = cached_quantized_onnx(onnx_model, calibration=lambda: windows, cache_folder=folder)

The convolutions' weights become int8 (one scale per output channel) and their inputs uint8 (one scale per
tensor, from the calibration windows' activations: the 99.999th percentile, as the largest value lets a
few outliers waste the 256 levels). onnxruntime's quantizer writes the result as QuantizeLinear /
DequantizeLinear pairs around each convolution (its QDQ format), which OpenVINO reads as int8 convolutions.

Which convolutions stay in floating point, and why: those whose output has the input's full resolution
(the first encoder stage, the last decoder stage and its upsampling, the segmentation head). Quantizing
one convolution at a time of the versus task's network (bench/versus_nnunet.sh; 20 windows), those flipped
2-5x more voxels than any other; with them in float the labels of the five test cases agreed with torch
fp32 at 0.9994-0.9998 (Dice), against 0.9976-0.9991 with every convolution quantized. They are cheap where
the first stage is anisotropic (14% of that network's MACs) and OpenVINO runs them at bf16 where the CPU has it.

The calibration should cover the intensities the network will see: windows of several cases (one case's
windows left another case at 0.9973). Calibrating runs onnxruntime fp32 over each window keeping every
activation, then a histogram per tensor: about 10 s for 4 windows of the versus task's network on a 2-core
CPU, so the quantized model is cached next to its export (`onnx_export.cached_export_onnx`), keyed by the
export's bytes: the first calibration made for a network is the one kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from autoseg.errors import AutosegError
from autoseg.network.onnx_export import INPUT_NAME

CALIBRATION_PERCENTILE = 99.999
QUANTIZED_OPS = ("Conv", "ConvTranspose")


class QuantizationError(AutosegError):
    """The network cannot be quantized (no calibration windows, a graph the quantizer rejects)."""


def full_resolution_convolutions(onnx_model: bytes, spatial: tuple[int, ...]) -> list[str]:
    """The names of the (transposed) convolutions whose output has the input's spatial shape `spatial`
    (found by ONNX shape inference with the input fixed to that shape)."""
    import onnx

    model = onnx.load_from_string(onnx_model)
    input_dims = next(value for value in model.graph.input if value.name == INPUT_NAME).type.tensor_type.shape.dim
    for dim, size in zip(list(input_dims)[2:], spatial):
        dim.ClearField("dim_param")
        dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
              for value in [*inferred.value_info, *inferred.output]}
    return [node.name for node in inferred.node if node.op_type in QUANTIZED_OPS
            and shapes.get(node.output[0], [])[2:] == list(spatial)]


def quantize_onnx(onnx_model: bytes, calibration_windows: np.ndarray) -> bytes:
    """The int8 (QDQ) form of `onnx_model` calibrated on `calibration_windows` (N, C, *spatial) float32:
    windows of preprocessed images at the size the network will run (`sliding_window.probe_windows`)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    windows = np.ascontiguousarray(calibration_windows, dtype=np.float32)
    if windows.ndim < 4 or len(windows) == 0:
        raise QuantizationError(f"int8 quantization needs calibration windows (N, C, *spatial), got {windows.shape}")

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.remaining = iter(range(len(windows)))

        def get_next(self):
            index = next(self.remaining, None)
            return None if index is None else {INPUT_NAME: windows[index:index + 1]}

    keep_float = full_resolution_convolutions(onnx_model, tuple(windows.shape[2:]))
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(onnx_model)
        try:  # onnxruntime's quantizer prints its progress and logs advice: the core stays quiet
            with contextlib.redirect_stdout(io.StringIO()), _logging_off():
                quantize_static(str(source), str(target), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep_float,
                                calibrate_method=CalibrationMethod.Percentile,
                                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
        except Exception as error:  # onnxruntime raises plain exceptions of many kinds
            raise QuantizationError(f"int8 quantization failed: {error}") from error
        return target.read_bytes()


@contextlib.contextmanager
def _logging_off():
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def cached_quantized_onnx(onnx_model: bytes, calibration: Callable[[], np.ndarray | None],
                          cache_folder: Path | None) -> bytes:
    """`quantize_onnx(onnx_model, calibration())`, read from `cache_folder` when an earlier run quantized the
    same export (then `calibration` is not called). A QuantizationError when it must quantize and
    `calibration()` gives None."""
    path = None
    if cache_folder is not None:
        path = Path(cache_folder) / f"{hashlib.sha256(onnx_model).hexdigest()[:16]}.int8.onnx"
        if path.is_file():
            os.utime(path)  # most recently used, for the cache's pruning
            return path.read_bytes()
    windows = calibration()
    if windows is None:
        raise QuantizationError("int8 needs images to calibrate on: predict a folder of cases, or use "
                                "--precision bf16 or fp32")
    quantized = quantize_onnx(onnx_model, windows)
    if path is not None:
        from autoseg.artifacts import write_atomic

        write_atomic(path, lambda temporary: Path(temporary).write_bytes(quantized))
    return quantized
