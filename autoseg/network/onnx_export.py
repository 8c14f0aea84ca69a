"""A built network as an ONNX model, and the check that the export computes what torch computes.

    onnx_bytes = export_onnx(network, input_channels=1, dimension=3)         # or path=... to write a file
    difference = check_onnx_parity(network, onnx_bytes, torch.randn(1, 1, 32, 64, 64))

The export is of the inference network: eval mode, deep supervision off (only the highest-resolution
logits), float32. Its input `image` (B, C, *spatial) and output `logits` (B, K, *spatial) have dynamic
batch and spatial axes, so one export serves every tile size of the sliding window (each spatial size a
multiple of the architecture's total downsampling, as for torch).

Why the TorchScript exporter (`dynamo=False`) and not torch.export's: on this 2-core CPU it exports a
small 3D U-Net in about 3 s against about 60 s, and gives the same graph with dynamic spatial axes (both
were checked at a second input shape, max probability difference ~5e-6). InstanceNorm exports as ONNX
InstanceNormalization, which always normalizes with the input's own statistics, as the network does.

Exporting takes about 1.5 s for an nnU-Net-sized 3D U-Net here (`import onnx` included), a fifth of what
`autoseg predict` spends outside the network on five small cases: `cached_export_onnx` keeps the exports
in a folder (the workspace's `onnx_cache`), keyed by everything the graph depends on.

onnxruntime is imported only by `check_parity`/`onnxruntime_session`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Largest |softmax(ONNX) - softmax(torch fp32)| accepted: float32 reassociation gives ~1e-6, a wrong graph ~1.
PARITY_TOLERANCE = 1e-3
SPATIAL_AXIS_NAMES = ("z", "y", "x")


class ExportError(AutosegError):
    """The network cannot be exported, or its export does not compute what the torch network computes."""


@contextlib.contextmanager
def inference_form(network: "torch.nn.Module"):
    """The network in eval mode with deep supervision off for the block; its previous state restored after."""
    was_training = network.training
    deep_supervision = getattr(network, "deep_supervision", None)
    network.eval()
    if deep_supervision is not None:
        network.deep_supervision = False
    try:
        yield network
    finally:
        network.train(was_training)
        if deep_supervision is not None:
            network.deep_supervision = deep_supervision


def dynamic_axes(dimension: int) -> dict[str, dict[int, str]]:
    """Batch and spatial axes of the input and output named as dynamic: {name: {axis: label}}."""
    axes = {0: "batch", **{2 + i: SPATIAL_AXIS_NAMES[-dimension:][i] for i in range(dimension)}}
    return {INPUT_NAME: axes, OUTPUT_NAME: dict(axes)}


def export_onnx(network: "torch.nn.Module", *, input_channels: int, dimension: int,
                example_spatial: tuple[int, ...] | None = None, path: str | Path | None = None) -> bytes:
    """The ONNX model (bytes; also written to `path` when given) of `network` in its inference form.

    example_spatial: the spatial shape traced (default 32 per axis; any size the network accepts: the
    exported model takes other sizes too). The network's parameters must be float32 on the CPU.
    """
    import torch

    example_spatial = tuple(example_spatial or (32,) * dimension)
    if len(example_spatial) != dimension:
        raise ExportError(f"example_spatial {list(example_spatial)} has not {dimension} axes")
    example = torch.zeros((1, input_channels, *example_spatial))
    buffer = io.BytesIO()
    with inference_form(network), warnings.catch_warnings():
        # The exporter warns that InstanceNorm uses input statistics in eval mode: that is what it should do.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes(dimension))
        except Exception as error:  # noqa: BLE001 - the exporter raises many types; one line for the user
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ExportError(f"ONNX export failed: {first_line}") from error
    model = buffer.getvalue()
    if path is not None:
        from autoseg.artifacts import write_atomic

        write_atomic(Path(path), lambda temporary: Path(temporary).write_bytes(model))
    return model


def weights_hash(network: "torch.nn.Module") -> str:
    """A short hash of a network's parameters and buffers (their names, shapes and values)."""
    digest = hashlib.sha1()
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_key(network: "torch.nn.Module", input_channels: int, dimension: int) -> str:
    """What an export depends on, hashed: the weights, the modules (their repr holds kernels, strides and
    padding), the input, torch's version (its exporter) and the opset."""
    import torch

    described = f"{weights_hash(network)}|{network!r}|{input_channels}|{dimension}|{torch.__version__}|{ONNX_OPSET}"
    return hashlib.sha1(described.encode()).hexdigest()[:16]


def cached_export_onnx(network: "torch.nn.Module", *, input_channels: int, dimension: int,
                       cache_folder: Path | None, example_spatial: tuple[int, ...] | None = None,
                       keep: int = 8) -> bytes:
    """`export_onnx(network)` read from `cache_folder` when an earlier call exported the same network there
    (`export_key`), else exported and stored; the `keep` most recently used exports stay, older ones (of
    retrained models, mostly) are deleted. Without a folder, a plain export. `example_spatial`: as for
    `export_onnx` (the graph does not depend on it)."""
    if cache_folder is None:
        return export_onnx(network, input_channels=input_channels, dimension=dimension,
                           example_spatial=example_spatial)
    path = Path(cache_folder) / f"{export_key(network, input_channels, dimension)}.onnx"
    if path.is_file():
        os.utime(path)  # most recently used
        return path.read_bytes()
    model = export_onnx(network, input_channels=input_channels, dimension=dimension,
                        example_spatial=example_spatial, path=path)
    older = sorted(Path(cache_folder).glob("*.onnx"), key=lambda file: file.stat().st_mtime, reverse=True)[keep:]
    for stale in older:
        stale.unlink(missing_ok=True)
    return model


def onnxruntime_session(onnx_model: bytes | str | Path, threads: int | None = None):
    """An onnxruntime InferenceSession on the CPU (`threads` intra-op threads, default onnxruntime's)."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed (pip install onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    model = str(onnx_model) if isinstance(onnx_model, Path) else onnx_model
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def max_probability_difference(reference_logits: "torch.Tensor", logits: "torch.Tensor") -> float:
    """max |softmax(reference) - softmax(logits)| over classes (axis 1) and voxels, in float32."""
    import torch

    return float((torch.softmax(reference_logits.float(), 1) - torch.softmax(logits.float(), 1)).abs().max())


def check_parity(network: "torch.nn.Module", onnx_model: bytes | str | Path, image: "torch.Tensor",
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """The max probability difference between the ONNX model (onnxruntime, CPU) and the torch network
    (fp32, inference form) on `image` (B, C, *spatial); an ExportError when it exceeds `tolerance`."""
    import torch

    with inference_form(network), torch.inference_mode():
        reference = network(image.float().cpu())
    session = onnxruntime_session(onnx_model)
    logits = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: image.float().cpu().numpy()})[0])
    difference = max_probability_difference(reference, logits)
    if not difference <= tolerance:  # also catches NaN
        raise ExportError(f"the ONNX export differs from the torch network by {difference:.3g} in probability "
                          f"(more than {tolerance:g}) on an input of shape {list(image.shape)}")
    return difference
