"""Atomic writing of artifacts: write to a temporary name in the same folder, then rename.

A crash or kill at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    return write_atomic(path, dump)


def read_json(path: str | Path) -> Any:
    from autoseg.errors import AutosegError

    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_npy(path: str | Path, array) -> Path:
    import numpy as np

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomic(path, dump)
