"""Writing and reading artifacts.

Writing is atomic: write to a temporary name in the same folder, then rename. A crash or kill at any
moment leaves either the old file or the new one, never half of one.

Reading a versioned artifact (a JSON object with "schema_version") checks the version before building
anything from it, so a file of another version fails with one line saying which file, the version
expected and what to re-run, instead of a confusing missing field later on.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

from autoseg.errors import AutosegError

Artifact = TypeVar("Artifact")


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created here rather than by tempfile.mkstemp, whose files are private (0600): an artifact gets the
    # permissions of any new file (0666 less the umask).
    tmp_name = str(path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(tmp_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


# write_atomic's temporary names: .NAME.PID.HEX.tmp, and .NAME.PID.HEX.tmp.ENDING where a writer needs the ending.
TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp(\..+)?$")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_abandoned_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in `folder` (those whose
    writing process is gone); a rerun of the stage calls it, so a kill leaves no debris behind."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp*")):
        match = TEMPORARY_NAME.match(path.name)
        if match and not _process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_json(path: str | Path, data: Any) -> Path:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")

    return write_atomic(path, dump)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise AutosegError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def check_schema(data: Any, expected_version: int, where: str, what_to_do: str) -> None:
    """Raise an AutosegError unless `data` is a JSON object whose "schema_version" is `expected_version`.

    where: the file (or the artifact's name when it came from elsewhere); what_to_do: how to make a
    current one, e.g. "re-run `autoseg find-best`".
    """
    if not isinstance(data, dict):
        raise AutosegError(f"{where}: expected a JSON object, got {type(data).__name__}; {what_to_do}")
    version = data.get("schema_version")
    if version != expected_version:
        raise AutosegError(f"{where}: schema_version {version!r}, expected {expected_version}; {what_to_do}")


def build_versioned(data: Any, build: Callable[[dict], Artifact], *, expected_version: int, where: str,
                    what: str, what_to_do: str) -> Artifact:
    """`build(data)` once `check_schema` passed; a missing or mistyped field becomes an AutosegError
    "WHERE: malformed WHAT (the field)"."""
    check_schema(data, expected_version, where, what_to_do)
    try:
        return build(data)
    except (KeyError, TypeError, ValueError) as e:
        raise AutosegError(f"{where}: malformed {what} ({e})") from None


def load_artifact(path: str | Path, from_json: Callable[[Any, str], Artifact],
                  file_name_in_folder: str | None = None) -> Artifact:
    """`from_json(data, where)` of the JSON file `path`; where is the file's path.

    file_name_in_folder: the artifact's standard file name, read when `path` is a folder holding it.
    """
    path = Path(path)
    if file_name_in_folder is not None and path.is_dir():
        path = path / file_name_in_folder
    return from_json(read_json(path), str(path))


def save_npy(path: str | Path, array) -> Path:
    import numpy as np

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomic(path, dump)
