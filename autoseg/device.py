"""Devices and precisions: which torch device to run on, and which autocast dtype a precision means.

Training, inference and the device benchmark all ask the same questions here, so a precision name
("fp32", "bf16", "fp16") maps to a dtype in one place. torch is imported inside the functions, so
importing this module stays cheap.
"""

from __future__ import annotations

import platform
from pathlib import Path

from autoseg.errors import AutosegError

PRECISIONS = ("fp32", "bf16", "fp16")
CPUINFO_PATH = Path("/proc/cpuinfo")
# CPU flags that give bf16 matrix arithmetic in hardware (oneDNN uses them for bf16 convolutions).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def pick_device(requested: str):
    """torch.device for auto (CUDA when present, else CPU), cuda, cuda:N (one rank of a multi-GPU run),
    cpu or mps; an AutosegError saying why when that device is not available."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    kind, _, index = requested.partition(":")
    if kind not in ("cuda", "cpu", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise AutosegError(f"--device {requested!r}: expected auto, cuda, cuda:N, cpu or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise AutosegError(f"--device {requested}: no CUDA GPU is visible to torch (this torch build may be CPU-only)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise AutosegError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise AutosegError("--device mps: Apple MPS is not available here")
    return torch.device(requested)


def device_type(requested: str) -> str:
    """"cpu", "cuda" or "mps" for a --device value (auto resolved as `pick_device` does)."""
    return pick_device(requested).type


def check_precision(precision: str, allow_auto: bool = True) -> None:
    """An AutosegError naming the choices when `precision` is not one of them."""
    choices = ("auto", *PRECISIONS) if allow_auto else PRECISIONS
    if precision not in choices:
        raise AutosegError(f"--precision {precision!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")


def dtype_of(precision: str):
    """The autocast dtype of a precision name: None for fp32 (no autocast)."""
    import torch

    check_precision(precision, allow_auto=False)
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_of(amp_dtype) -> str:
    """The precision name of an autocast dtype (None: fp32)."""
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def _read_cpuinfo() -> str:
    try:
        return CPUINFO_PATH.read_text()
    except OSError:  # not Linux
        return ""


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo, else what platform knows)."""
    for line in _read_cpuinfo().splitlines():
        if line.split(":")[0].strip() in ("model name", "Hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_supports_bf16(cpuinfo_text: str | None = None, capability: str | None = None) -> bool:
    """True when the CPU has hardware bf16 (AVX-512 BF16 or AMX) and torch uses AVX-512 kernels.

    `cpuinfo_text` defaults to /proc/cpuinfo (empty elsewhere: False), `capability` to
    torch.backends.cpu.get_cpu_capability() (e.g. "AVX2", "AVX512").
    """
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    flags = set()
    for line in text.splitlines():
        if line.split(":")[0].strip() == "flags":
            flags.update(line.split(":", 1)[1].split())
    return capability.upper().startswith("AVX512") and any(flag in flags for flag in CPU_BF16_FLAGS)


def choose_precision(device: str, bf16_supported: bool) -> str:
    """The mixed precision to propose: fp16 on CUDA, bf16 autocast on CPUs with hardware bf16
    (`cpu_supports_bf16`), fp32 elsewhere (MPS, older CPUs). A proposal is only measured, not
    taken: bf16 on AVX-512 BF16 without AMX is not always faster, so the planner keeps the precision
    whose budget decision is better (`autoseg.budget.compute_aware.best_decision`).
    """
    kind = device.split(":")[0]
    if kind == "cuda":
        return "fp16"
    if kind == "cpu" and bf16_supported:
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str, device, cpu_bf16: bool | None = None):
    """The autocast dtype of a precision; "auto" is the device's mixed precision (`choose_precision`),
    which the trainer confirms on its first epochs. `cpu_bf16` states whether the CPU has hardware
    bf16 (default: read from the machine)."""
    if precision == "auto":
        if device.type == "cpu" and cpu_bf16 is None:
            cpu_bf16 = cpu_supports_bf16()
        precision = choose_precision(device.type, bool(cpu_bf16))
    return dtype_of(precision)


def inference_autocast_dtype(precision: str, device, trained_precision: str):
    """The autocast dtype to predict with: an explicit precision as asked; "auto" is fp16 on CUDA and on
    other devices the training's bf16 when it kept it (its precision check passed), else fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return dtype_of("fp16")
        precision = trained_precision if trained_precision == "bf16" else "fp32"
    return dtype_of(precision)
