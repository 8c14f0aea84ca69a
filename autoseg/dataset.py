"""The Decathlon dataset layer: dataset.json in MSD or nnU-Net v2 form -> a `Dataset`.

MSD (v1): `modality` {"0": "CT"}, `labels` {"0": "background", "1": "liver"}, `training`
[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}], multi-channel images as 4D files.
nnU-Net v2: `channel_names`, `labels` {"background": 0}, `file_ending`, one file per channel
`imagesTr/CASE_0000.nii.gz`, labels `labelsTr/CASE.nii.gz`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.errors import DatasetError
from autoseg.io import SUPPORTED_ENDINGS, file_ending


@dataclass(frozen=True)
class Case:
    case_id: str
    image_files: tuple[Path, ...]  # one file (possibly 4D / RGB) or one per channel
    label_file: Path | None


@dataclass
class Dataset:
    root: Path
    name: str
    modality: dict[int, str]  # channel index -> modality name ("CT", "T2", "R", ...)
    labels: dict[int, str]  # label value -> name; 0 is background
    cases: list[Case]
    test_cases: list[Case] = field(default_factory=list)
    file_ending: str = ".nii.gz"

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


def _inside(root: Path, relative: str, where: str) -> Path:
    """Resolve a dataset.json path, refusing anything that escapes the dataset folder."""
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{root / 'dataset.json'}: {where}: expected a file path, got {relative!r}")
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{root / 'dataset.json'}: {where}: path {relative!r} leaves the dataset folder")
    return path


def case_id_from_filename(path: Path, ending: str) -> str:
    return path.name[: -len(ending)] if path.name.endswith(ending) else path.name.split(".")[0]


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


def _msd_cases(root: Path, meta: dict, json_path: Path) -> tuple[list[Case], list[Case]]:
    training = meta.get("training")
    if not isinstance(training, list):
        raise DatasetError(f"{json_path}: 'training' must be a list of {{\"image\", \"label\"}} entries")
    cases = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{json_path}: training[{index}] needs 'image' and 'label'")
        image = _inside(root, entry["image"], f"training[{index}].image")
        label = _inside(root, entry["label"], f"training[{index}].label")
        cases.append(Case(case_id_from_filename(image, file_ending(image)), (image,), label))
    tests = []
    for index, entry in enumerate(meta.get("test", []) or []):
        relative = entry["image"] if isinstance(entry, dict) else entry
        image = _inside(root, relative, f"test[{index}]")
        tests.append(Case(case_id_from_filename(image, file_ending(image)), (image,), None))
    return cases, tests


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


def load_dataset(folder: str | Path) -> Dataset:
    """Read `folder/dataset.json` and list the cases. Files are not opened (see `autoseg.check`)."""
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
    if not isinstance(meta, dict):
        raise DatasetError(f"{json_path}: expected a JSON object at the top level")
    modality = _parse_modality(meta, json_path)
    labels = _parse_labels(meta, json_path)
    ending = meta.get("file_ending")
    if "training" in meta:
        cases, tests = _msd_cases(root, meta, json_path)
        ending = ending or (file_ending(cases[0].image_files[0]) if cases else ".nii.gz")
    else:
        if not ending:
            raise DatasetError(f"{json_path}: needs 'training' (MSD) or 'file_ending' (nnU-Net v2 layout)")
        cases = _v2_cases(root, "imagesTr", ending, len(modality), with_labels=True)
        tests = _v2_cases(root, "imagesTs", ending, len(modality), with_labels=False)
    if ending not in SUPPORTED_ENDINGS:
        raise DatasetError(f"{json_path}: unsupported file_ending {ending!r}")
    if not cases:
        raise DatasetError(f"{json_path}: no training cases listed or found")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{json_path}: case {duplicate!r} is listed twice")
    name = str(meta.get("name") or root.name)
    return Dataset(root, name, modality, labels, cases, tests, ending)
