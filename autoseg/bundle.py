"""Model bundles: what prediction needs from a workspace, in one zip file that another machine can use.

A bundle holds its task's workspace files under fixed member names (`member_name` / `member_destination`
map them to a `Workspace`): `plans.json` (HOME/preprocessed/TASK/plans.json) and `results/...`
(HOME/results/TASK/...: checkpoints, the folds' plans, find_best.json, postprocessing.json, dataset.json),
plus `manifest.json` (`BundleManifest`): versions, creation time, and the size and SHA-256 of every other
member. Which files go in is decided by `autoseg.stages.bundle`; this module writes and reads the file.

Unpacking trusts nothing in the zip: every member name must be a plain relative path (no absolute path,
no `..`, no backslash), listed in the manifest once and present once; symlinks are refused; each member is
read only up to its manifest size (zip bombs), hashed while it is written, and refused with one line
naming it when its checksum differs. The manifest is not signed: the checksums catch changed or damaged
files, the name rules catch hostile ones. Nothing is unpickled here (JSON only; checkpoints are loaded
later with torch.load(weights_only=True)).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator

from autoseg import __version__
from autoseg.artifacts import build_versioned, write_atomic
from autoseg.errors import BundleError
from autoseg.workspace import Workspace

BUNDLE_SCHEMA_VERSION = 1
BUNDLE_FORMAT = "autoseg-model-bundle"
MANIFEST_NAME = "manifest.json"
PLANS_MEMBER = "plans.json"
RESULTS_PREFIX = "results/"
# A manifest lists a few dozen members; anything bigger is not one.
MAX_MANIFEST_BYTES = 16 * 2**20
# The most a bundle may declare in all: five folds of two large 3D U-Nets are about 2 GiB.
MAX_BUNDLE_BYTES = 64 * 2**30
_CHUNK_BYTES = 2**20
# One path part: letters, digits and . _ + - (no separators, drive letters, spaces or control characters).
_PART = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SYMLINK_MODE, _FILE_TYPE_MASK = 0o120000, 0o170000
# What reading a damaged or unusual member raises: a CRC error or truncation of changed compressed bytes
# (BadZipFile, EOFError, zlib.error), an encrypted member (RuntimeError), an unknown compression method.
_UNREADABLE = (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError)


@dataclass(frozen=True)
class MemberRecord:
    """One member of a bundle: its name in the zip, its size in bytes and its SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass
class BundleManifest:
    """manifest.json: what the bundle is (task, configurations and folds) and what it holds.

    configurations: those exported for prediction (with their cascade's earlier stages in `folds`);
    folds: {configuration: [fold, ...]} whose final checkpoints are members; created: ISO 8601, UTC.
    """

    task: str
    configurations: list[str]
    folds: dict[str, list[str]]
    members: list[MemberRecord]
    autoseg_version: str
    torch_version: str
    created: str
    format: str = BUNDLE_FORMAT
    schema_version: int = BUNDLE_SCHEMA_VERSION

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "format": self.format, "task": self.task,
                "configurations": self.configurations, "folds": self.folds,
                "autoseg_version": self.autoseg_version, "torch_version": self.torch_version,
                "created": self.created, "members": [m.to_json() for m in self.members]}

    @classmethod
    def from_json(cls, data, where: str) -> "BundleManifest":
        manifest = build_versioned(data, cls._from_fields, expected_version=BUNDLE_SCHEMA_VERSION, where=where,
                                   what="bundle manifest", what_to_do="export the bundle again with this autoseg")
        if manifest.format != BUNDLE_FORMAT:
            raise BundleError(f"{where}: format {manifest.format!r}, expected {BUNDLE_FORMAT!r}")
        check_part(manifest.task, f"{where}: task")
        for name in [*manifest.configurations, *manifest.folds]:  # they name folders when predicting
            check_part(name, f"{where}: configuration")
        for folds in manifest.folds.values():
            for fold in folds:
                check_part(fold, f"{where}: fold")
        return manifest

    @classmethod
    def _from_fields(cls, data: dict) -> "BundleManifest":
        members = [MemberRecord(str(m["name"]), int(m["size"]), str(m["sha256"])) for m in data["members"]]
        return cls(str(data["task"]), [str(c) for c in data["configurations"]],
                   {str(c): [str(f) for f in folds] for c, folds in data["folds"].items()}, members,
                   str(data["autoseg_version"]), str(data["torch_version"]), str(data["created"]),
                   str(data["format"]))


def check_part(text: str, what: str) -> str:
    """`text` if it can be one part of a path (a task name, a configuration); else a BundleError."""
    if not _PART.match(text) or text in (".", ".."):
        raise BundleError(f"{what} {text!r}: not a plain name (letters, digits, . _ + - only)")
    return text


def check_member_name(name: str, where: str) -> str:
    """A relative POSIX path of plain parts, none of them `..`: it cannot leave the unpacking folder."""
    if not name or name.startswith("/") or any(not _PART.match(p) or p in (".", "..") for p in name.split("/")):
        raise BundleError(f"{where}: member {name!r} is not a plain relative path; refused")
    return name


def member_name(workspace: Workspace, task_name: str, path: Path) -> str:
    """The bundle name of a file of the task's workspace: its plans, or a file of its results."""
    if Path(path) == workspace.plans_file(task_name):
        return PLANS_MEMBER
    return RESULTS_PREFIX + Path(path).relative_to(workspace.task_results(task_name).root).as_posix()


def member_destination(workspace: Workspace, task_name: str, name: str, where: str) -> Path:
    """Where member `name` (already checked by `check_member_name`) belongs in `workspace` for the task."""
    if name == PLANS_MEMBER:
        return workspace.plans_file(task_name)
    if name.startswith(RESULTS_PREFIX):
        return workspace.task_results(task_name).root.joinpath(*name[len(RESULTS_PREFIX):].split("/"))
    raise BundleError(f"{where}: member {name!r} is neither {PLANS_MEMBER} nor under {RESULTS_PREFIX}; refused")


# ------------------------------------------------------------------------------------------------ writing


@dataclass(frozen=True)
class BundleContents:
    """What to pack: the task, its configurations and folds, and each member's file (name -> path)."""

    task: str
    configurations: list[str]
    folds: dict[str, list[str]]
    files: dict[str, Path] = field(default_factory=dict)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_bundle(bundle_path: Path, contents: BundleContents) -> BundleManifest:
    """Write the zip atomically: manifest.json first, then the members in name order."""
    names = sorted(contents.files)
    for name in names:
        check_member_name(name, str(bundle_path))
    records = [MemberRecord(name, contents.files[name].stat().st_size, _sha256_of(contents.files[name]))
               for name in names]
    manifest = BundleManifest(contents.task, list(contents.configurations), dict(contents.folds), records,
                              __version__, metadata.version("torch"),
                              datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def write_zip(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            bundle.writestr(MANIFEST_NAME, json.dumps(manifest.to_json(), indent=2) + "\n")
            for name in names:
                bundle.write(contents.files[name], name)

    write_atomic(bundle_path, write_zip)
    return manifest


# ------------------------------------------------------------------------------------------------ reading


def _open(bundle_path: Path) -> zipfile.ZipFile:
    if not bundle_path.is_file():
        raise BundleError(f"{bundle_path}: model bundle not found")
    try:
        return zipfile.ZipFile(bundle_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{bundle_path}: not a model bundle (not a readable zip file: {e})") from None


def _read_manifest(bundle: zipfile.ZipFile, where: str) -> BundleManifest:
    try:
        info = bundle.getinfo(MANIFEST_NAME)
    except KeyError:
        raise BundleError(f"{where}: no {MANIFEST_NAME}; not an autoseg model bundle") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: {MANIFEST_NAME} of {info.file_size} bytes; refused")
    try:
        with bundle.open(info) as f:
            data = json.loads(f.read(MAX_MANIFEST_BYTES + 1))
    except (*_UNREADABLE, ValueError) as e:
        raise BundleError(f"{where}: {MANIFEST_NAME} is not readable JSON ({e})") from None
    return BundleManifest.from_json(data, f"{where}: {MANIFEST_NAME}")


def _checked_entries(bundle: zipfile.ZipFile, manifest: BundleManifest, where: str) -> dict[str, zipfile.ZipInfo]:
    """The zip's members by name, once each checked against the manifest and the rules above."""
    expected = {record.name: record for record in manifest.members}
    # Names differing only in case would be one file on a case-insensitive file system.
    if len({name.lower() for name in expected}) != len(manifest.members):
        raise BundleError(f"{where}: {MANIFEST_NAME} lists a member twice; refused")
    for name in expected:
        check_member_name(name, where)
    if sum(record.size for record in manifest.members) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{where}: members of more than {MAX_BUNDLE_BYTES // 2**30} GiB in all; refused")
    entries: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in bundle.infolist():
        if info.filename in seen:
            raise BundleError(f"{where}: member {info.filename!r} appears twice; refused")
        seen.add(info.filename)
        if (info.external_attr >> 16) & _FILE_TYPE_MASK == _SYMLINK_MODE:
            raise BundleError(f"{where}: member {info.filename!r} is a symbolic link; refused")
        if info.filename == MANIFEST_NAME:
            continue
        check_member_name(info.filename, where)
        if info.filename not in expected:
            raise BundleError(f"{where}: member {info.filename!r} is not in {MANIFEST_NAME}; refused")
        if info.file_size != expected[info.filename].size:
            raise BundleError(f"{where}: member {info.filename} has {info.file_size} bytes, the manifest says "
                              f"{expected[info.filename].size}; refused")
        entries[info.filename] = info
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise BundleError(f"{where}: member {missing[0]} is in {MANIFEST_NAME} but not in the bundle")
    return entries


def _extract_member(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, record: MemberRecord, destination: Path,
                    where: str) -> None:
    """Copy one member to `destination` (atomically), reading at most its manifest size and hashing it."""

    def copy(tmp: str) -> None:
        digest, written = hashlib.sha256(), 0
        with bundle.open(info) as source, open(tmp, "wb") as target:
            for chunk in iter(lambda: source.read(_CHUNK_BYTES), b""):
                written += len(chunk)
                if written > record.size:
                    raise BundleError(f"{where}: member {record.name} holds more than its {record.size} bytes; "
                                      "refused")
                digest.update(chunk)
                target.write(chunk)
        if written != record.size or digest.hexdigest() != record.sha256:
            raise BundleError(f"{where}: member {record.name} does not match its SHA-256 in {MANIFEST_NAME} "
                              "(changed or damaged); refused")

    try:
        write_atomic(destination, copy)
    except _UNREADABLE as e:
        raise BundleError(f"{where}: member {record.name} is damaged ({e}); refused") from None


def read_manifest(bundle_path: str | Path) -> BundleManifest:
    """The bundle's manifest, once its member names and sizes passed the checks (nothing is unpacked)."""
    bundle_path = Path(bundle_path)
    with _open(bundle_path) as bundle:
        manifest = _read_manifest(bundle, str(bundle_path))
        _checked_entries(bundle, manifest, str(bundle_path))
    return manifest


def extract_bundle(bundle_path: str | Path, workspace: Workspace, task_name: str | None = None) -> BundleManifest:
    """Unpack every member into `workspace` as task `task_name` (default: the bundle's task), each
    checked; a BundleError at the first member that fails (the caller discards the folder)."""
    bundle_path = Path(bundle_path)
    where = str(bundle_path)
    with _open(bundle_path) as bundle:
        manifest = _read_manifest(bundle, where)
        entries = _checked_entries(bundle, manifest, where)
        task = check_part(task_name or manifest.task, "task name")
        root = workspace.home.resolve()
        for record in manifest.members:
            destination = member_destination(workspace, task, record.name, where)
            if not destination.resolve().is_relative_to(root):
                raise BundleError(f"{where}: member {record.name} would be written outside {root}; refused")
            _extract_member(bundle, entries[record.name], record, destination, where)
    return manifest


@contextmanager
def unpacked_bundle(bundle_path: str | Path) -> Iterator[tuple[Workspace, BundleManifest]]:
    """A temporary workspace holding the bundle's task (named as in its manifest), removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="autoseg-bundle-"))
    try:
        workspace = Workspace(folder)
        yield workspace, extract_bundle(bundle_path, workspace)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
