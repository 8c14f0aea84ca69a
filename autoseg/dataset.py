"""The Decathlon dataset layer: dataset.json in MSD or nnU-Net v2 form -> a `Dataset`.

MSD (v1): `modality` {"0": "CT"}, `labels` {"0": "background", "1": "liver"}, `training`
[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], multi-channel images as 4D files.
nnU-Net v2: `channel_names`, `labels` {"background": 0}, `file_ending`, one file per channel
`imagesTr/CASE_0000.nii.gz`, labels `labelsTr/CASE.nii.gz`.
An MSD `image` may name a folder holding one DICOM series (`autoseg.dicom`; one channel), its `label`
a label map file on the series' grid; the dataset's `file_ending` is then that of its label files.
Either form may state the pixel size of a picture dataset (.png, .jpg, .bmp, .tif): `pixel_spacing`
[y_mm, x_mm], or one number for both (default 1 x 1: picture files hold no physical pixel size).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoseg.errors import DatasetError
from autoseg.io import NATURAL_IMAGE_ENDINGS, SUPPORTED_ENDINGS, file_ending


@dataclass(frozen=True)
class Case:
    case_id: str
    image_files: tuple[Path, ...]  # one file (possibly 4D / RGB) or one per channel
    label_file: Path | None
    # (y, x) mm of a picture's pixels, from dataset.json `pixel_spacing`: pass it to `read_image` /
    # `read_segmentation`. None: 1 x 1 (and always for volumes, whose files hold their spacing).
    pixel_spacing: tuple[float, float] | None = None


@dataclass(frozen=True)
class InvalidEntry:
    """A `training` / `test` entry of dataset.json that cannot be used (kept by `load_dataset(strict=False)`)."""

    case_id: str  # from the entry's file names, else "training[i]"
    kind: str  # "training" or "test"
    index: int  # position in that list
    key: str  # "image", "label", or "" for the entry as a whole
    message: str

    @property
    def where(self) -> str:
        """e.g. "training[3].label"."""
        return f"{self.kind}[{self.index}]" + (f".{self.key}" if self.key else "")


@dataclass
class Dataset:
    root: Path
    name: str
    modality: dict[int, str]  # channel index -> modality name ("CT", "T2", "R", ...)
    labels: dict[int, str]  # label value -> name; 0 is background
    cases: list[Case]
    test_cases: list[Case] = field(default_factory=list)
    file_ending: str = ".nii.gz"
    declared_num_training: int | None = None  # dataset.json `numTraining`, when given
    invalid_entries: list[InvalidEntry] = field(default_factory=list)  # only with strict=False
    pixel_spacing: tuple[float, float] | None = None  # dataset.json `pixel_spacing` (y, x) mm; every Case has it

    @property
    def num_channels(self) -> int:
        return len(self.modality)

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(v for v in self.labels if v != 0)

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DatasetError(f"{self.root}: no training case named {case_id!r}")


def _path_problem(root: Path, relative) -> str | None:
    """What is wrong with a dataset.json file path, or None: it must be relative and stay in `root`.

    The test is on the path as written ("../", absolute), not on where symbolic links lead, so a
    dataset whose imagesTr/ is a link to another disk stays usable.
    """
    if not isinstance(relative, str) or not relative:
        return f"expected a file path, got {relative!r}"
    if Path(relative).is_absolute() or not _entry_path(root, relative).is_relative_to(root):
        return f"path {relative!r} leaves the dataset folder"
    return None


def _entry_path(root: Path, relative: str) -> Path:
    return Path(os.path.normpath(root / relative))


def case_id_from_filename(path: Path, ending: str) -> str:
    return path.name[: -len(ending)] if ending and path.name.endswith(ending) else path.name.split(".")[0]


def _parse_modality(meta: dict, json_path: Path) -> dict[int, str]:
    raw = meta.get("modality", meta.get("channel_names"))
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{json_path}: missing 'modality' (or 'channel_names'), e.g. {{\"0\": \"CT\"}}")
    try:
        modality = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise DatasetError(f"{json_path}: 'modality' keys must be channel numbers, got {list(raw)}") from None
    if sorted(modality) != list(range(len(modality))):
        raise DatasetError(f"{json_path}: 'modality' channels must be 0..{len(modality) - 1}, got {sorted(modality)}")
    return modality


def _parse_labels(meta: dict, json_path: Path) -> dict[int, str]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{json_path}: missing 'labels', e.g. {{\"0\": \"background\", \"1\": \"organ\"}}")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        try:  # MSD: "1": "liver"; v2: "liver": 1
            number, name = (int(key), str(value)) if str(key).lstrip("-").isdigit() else (int(value), str(key))
        except (TypeError, ValueError):
            raise DatasetError(f"{json_path}: 'labels' entry {key!r}: {value!r} is not a label number and name") from None
        labels[number] = name
    if 0 not in labels:
        raise DatasetError(f"{json_path}: 'labels' must define 0 (background)")
    if sorted(labels) != list(range(len(labels))):
        raise DatasetError(f"{json_path}: labels must be consecutive 0..{len(labels) - 1}, got {sorted(labels)}")
    return labels


def _parse_pixel_spacing(meta: dict, json_path: Path, ending: str) -> tuple[float, float] | None:
    """dataset.json `pixel_spacing` as (y, x) mm: [y, x] or one number for both; None when absent."""
    raw = meta.get("pixel_spacing")
    if raw is None:
        return None
    values = [raw, raw] if isinstance(raw, (int, float)) else raw
    if not isinstance(values, list) or len(values) != 2 \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise DatasetError(f"{json_path}: 'pixel_spacing' must be [y, x] in mm or one number for both, "
                           f"e.g. [0.5, 0.5]; got {raw!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise DatasetError(f"{json_path}: 'pixel_spacing' must be positive finite numbers (mm), got {raw!r}")
    if ending not in NATURAL_IMAGE_ENDINGS:
        raise DatasetError(f"{json_path}: 'pixel_spacing' is only for pictures ({', '.join(NATURAL_IMAGE_ENDINGS)}); "
                           f"{ending} files hold their own spacing: remove it")
    return float(values[0]), float(values[1])


def _entry_case_id(root: Path, entry, index: int, kind: str) -> str:
    """Case id of a dataset.json entry for messages: from its image (else label) file name,
    preferring a usable path, else `kind[index]` (e.g. "training[3]")."""
    names = [entry.get(key) for key in ("image", "label")] if isinstance(entry, dict) else [entry]
    names = [n for n in names if isinstance(n, str) and Path(n).name.strip(".")]
    names.sort(key=lambda n: _path_problem(root, n) is not None)  # stable: usable paths first
    return case_id_from_filename(Path(names[0]), file_ending(names[0])) if names else f"{kind}[{index}]"


def _msd_cases(root: Path, meta: dict, json_path: Path) -> tuple[list[Case], list[Case], list[InvalidEntry]]:
    """Training and test cases listed in an MSD dataset.json, and the entries that cannot be used."""
    training = meta.get("training")
    if not isinstance(training, list):
        raise DatasetError(f"{json_path}: 'training' must be a list of {{\"image\", \"label\"}} entries")
    cases, invalid = [], []
    for index, entry in enumerate(training):
        case_id = _entry_case_id(root, entry, index, "training")
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            invalid.append(InvalidEntry(case_id, "training", index, "", "needs 'image' and 'label'"))
            continue
        paths = {}
        for key in ("image", "label"):
            if problem := _path_problem(root, entry[key]):
                invalid.append(InvalidEntry(case_id, "training", index, key, problem))
            else:
                paths[key] = _entry_path(root, entry[key])
        if len(paths) == 2:
            image = paths["image"]
            cases.append(Case(case_id_from_filename(image, file_ending(image)), (image,), paths["label"]))
    tests = []
    for index, entry in enumerate(meta.get("test", []) or []):
        relative = entry.get("image") if isinstance(entry, dict) else entry
        if problem := _path_problem(root, relative):
            invalid.append(InvalidEntry(_entry_case_id(root, entry, index, "test"), "test", index, "", problem))
            continue
        image = _entry_path(root, relative)
        tests.append(Case(case_id_from_filename(image, file_ending(image)), (image,), None))
    return cases, tests, invalid


def _v2_cases(root: Path, folder: str, ending: str, num_channels: int, with_labels: bool) -> list[Case]:
    """nnU-Net v2 layout: CASE_0000{ending} ... per channel; or plain CASE{ending} (e.g. one RGB picture)."""
    image_dir = root / folder
    if not image_dir.is_dir():
        return []
    files = sorted(p for p in image_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith((".", "_")))
    channel_pattern = re.compile(rf"^(.*)_(\d{{4}}){re.escape(ending)}$")
    by_case: dict[str, dict[int, Path]] = {}
    for path in files:
        match = channel_pattern.match(path.name)
        case_id, channel = (match.group(1), int(match.group(2))) if match else (path.name[: -len(ending)], -1)
        by_case.setdefault(case_id, {})[channel] = path
    cases = []
    for case_id, channels in sorted(by_case.items()):
        image_files = (channels[-1],) if -1 in channels else tuple(channels[c] for c in sorted(channels))
        label = None
        if with_labels:
            from autoseg.io import segmentation_ending_for

            label_folder = root / folder.replace("images", "labels")
            label = label_folder / f"{case_id}{ending}"
            if not label.is_file():  # e.g. JPEG photos with PNG masks
                label = label_folder / f"{case_id}{segmentation_ending_for(ending)}"
        cases.append(Case(case_id, image_files, label))
    return cases


def _case_file_ending(case: Case) -> str:
    """The ending of a case's image file, or of its label file where the image is a DICOM series folder."""
    image = case.image_files[0]
    return file_ending(case.label_file if image.is_dir() else image)


def load_dataset(folder: str | Path, strict: bool = True) -> Dataset:
    """Read `folder/dataset.json` and list the cases. Files are not opened (see `autoseg.check`).

    strict: an unusable `training`/`test` entry (path leaving the folder, missing 'label', ...)
    raises a DatasetError; with strict=False such entries are left out of `cases` and listed in
    `invalid_entries`, so `autoseg check` can report all of them with the other problems.
    A dataset.json that is malformed as a whole (bad JSON, modality, labels) always raises.
    """
    root = Path(folder).resolve()
    json_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: missing; a Decathlon dataset needs a dataset.json")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{json_path}: not a UTF-8 text file") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object at the top level")
    modality = _parse_modality(meta, json_path)
    labels = _parse_labels(meta, json_path)
    ending = meta.get("file_ending")
    invalid: list[InvalidEntry] = []
    if "training" in meta:
        cases, tests, invalid = _msd_cases(root, meta, json_path)
        if invalid and strict:
            first = invalid[0]
            raise DatasetError(f"{json_path}: {first.where}: {first.message}")
        ending = ending or (_case_file_ending(cases[0]) if cases else ".nii.gz")
    else:
        if not ending:
            raise DatasetError(f"{json_path}: needs 'training' (MSD) or 'file_ending' (nnU-Net v2 layout)")
        cases = _v2_cases(root, "imagesTr", ending, len(modality), with_labels=True)
        tests = _v2_cases(root, "imagesTs", ending, len(modality), with_labels=False)
    if ending not in SUPPORTED_ENDINGS:
        raise DatasetError(f"{json_path}: unsupported file_ending {ending!r}")
    if not cases and not invalid:
        raise DatasetError(f"{json_path}: no training cases listed or found")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{json_path}: case {duplicate!r} is listed twice")
    declared = meta.get("numTraining")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        raise DatasetError(f"{json_path}: 'numTraining' must be a whole number, got {declared!r}")
    pixel_spacing = _parse_pixel_spacing(meta, json_path, ending)
    if pixel_spacing is not None:
        cases = [replace(case, pixel_spacing=pixel_spacing) for case in cases]
        tests = [replace(case, pixel_spacing=pixel_spacing) for case in tests]
    name = str(meta.get("name") or root.name)
    return Dataset(root, name, modality, labels, cases, tests, ending, declared, invalid, pixel_spacing)
