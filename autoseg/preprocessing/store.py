"""The preprocessed store: every case of a configuration as memory-mappable arrays, written once.

    OUTPUT/CASE.npy       float32 (C, z, y, x), normalized and resampled (transposed order)
    OUTPUT/CASE_seg.npy   int16 (z, y, x): -1 outside the nonzero region, 0 background, 1..K
    OUTPUT/CASE.json      CaseProperties (written last: a case is done when its .json is there)

Uncompressed .npy so the trainer can `np.load(mmap_mode="r")` and read one patch without loading
or decompressing the volume. Chosen by bench/preprocess.py (numbers recorded there): a 128^3 patch
reads in 3.5 ms from .npy, 10 ms from blosc2 (nnU-Net >= 2.6's format, 2.2x smaller on disk, an extra
dependency), 2.7 s from .npz (whole-volume decompression). A rerun skips cases whose
`source_signature` (input file sizes and modification times + the preprocessing settings) still
matches; a failing case is recorded and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autoseg.artifacts import read_json, remove_abandoned_temporaries, save_npy, write_json
from autoseg.case_validation import CaseRequirements, read_case
from autoseg.dataset import Case
from autoseg.dicom import files_of
from autoseg.errors import AutosegError, WorkspaceError
from autoseg.hardware import FLOAT32_BYTES, available_memory_bytes
from autoseg.io import Geometry
from autoseg.preprocessing.pipeline import CaseProperties, preprocess_case, target_spacing_for
from autoseg.processes import process_pool

# Bump when the preprocessing code changes what it writes: every stored case is then redone.
PREPROCESSING_CODE_VERSION = 1
# Peak memory of one case divided by the float32 bytes of the larger of its original and resampled
# image (all channels). bench/preprocess.py measures 3.1 (200x512x512 CT) to 3.4 (100x256x256) for
# preprocess_case with the input counted; rounded up to 4 for the reader's own copies (SimpleITK
# buffer + numpy array before the float32 conversion).
PEAK_MEMORY_FACTOR = 4.0

ProgressCallback = Callable[[str, str], None]  # (case_id, "written" | "skipped" | "failed")


def _plain(value: Any) -> Any:
    """ChannelIntensity-like objects and tuples -> JSON-compatible dicts and lists."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class CasePreprocessor:
    """A configuration's preprocessing settings, callable on one dataset `Case`.

    Plain values only (picklable for worker processes, hashable into a signature): the lead builds
    it from a plan `Configuration` (spacing, normalization, use_mask_for_norm, 2d or not) and the
    plan's transpose_forward and intensity_per_channel, and from the dataset the `requirements` every
    case is checked against when it is read (they change nothing that is written, so they are not
    part of the settings signature).
    """

    transpose_forward: tuple[int, ...]
    target_spacing: tuple[float, ...]
    normalization: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_stats: Mapping[str, Any]
    requirements: CaseRequirements
    is_2d_config: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "transpose_forward", tuple(int(a) for a in self.transpose_forward))
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        object.__setattr__(self, "normalization", tuple(str(s) for s in self.normalization))
        object.__setattr__(self, "use_mask_for_norm", tuple(bool(m) for m in self.use_mask_for_norm))
        object.__setattr__(self, "intensity_stats", _plain(self.intensity_stats))

    @property
    def settings_signature(self) -> str:
        settings = {"code_version": PREPROCESSING_CODE_VERSION, **_plain(asdict(self))}
        del settings["requirements"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def __call__(self, case: Case) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
        """Read `case`, check it against the requirements (a DatasetError names the file) and preprocess it."""
        image, geometry, segmentation = read_case(case, self.requirements)
        return self.preprocess(image, segmentation, geometry, case.case_id)

    def preprocess(self, image: np.ndarray, segmentation: np.ndarray | None, geometry: Geometry,
                   case_id: str = "") -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
        """`preprocess_case` of arrays already read (image (C, z, y, x), segmentation or None) with
        these settings."""
        return preprocess_case(image, segmentation, geometry, transpose_forward=self.transpose_forward,
                               target_spacing=self.target_spacing, normalization=self.normalization,
                               use_mask_for_norm=self.use_mask_for_norm, intensity_stats=self.intensity_stats,
                               is_2d_config=self.is_2d_config, case_id=case_id)

    def estimated_peak_bytes(self, case: Case) -> int:
        """Peak memory to preprocess `case`, from its first image file's header (bytes)."""
        from autoseg.io import read_header

        geometry, values_per_voxel = read_header(case.image_files[0], case.pixel_spacing)
        channels = len(case.image_files) * values_per_voxel
        original = float(np.prod(geometry.shape))
        spacing_t = [geometry.spacing_zyx[a] for a in self.transpose_forward]
        target = target_spacing_for(spacing_t, self.target_spacing, self.is_2d_config)
        resampled = float(np.prod([s / t for s, t in zip(spacing_t, target)])) * original
        return int(PEAK_MEMORY_FACTOR * FLOAT32_BYTES * channels * max(original, resampled))


def source_signature(case: Case, settings_signature: str) -> str:
    """Hash of the case's input files (name, size, modification time), their stated pixel spacing
    (pictures) and the settings."""
    parts = [case.case_id, settings_signature]
    if case.pixel_spacing is not None:
        parts.append(f"pixel_spacing:{list(case.pixel_spacing)}")
    images = [file for path in case.image_files for file in files_of(Path(path))]  # a DICOM folder: its files
    for path in (*images, *((case.label_file,) if case.label_file else ())):
        stat = Path(path).stat()
        parts.append(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def case_files(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    """(data .npy, segmentation .npy, properties .json) paths of one stored case."""
    folder = Path(folder)
    return folder / f"{case_id}.npy", folder / f"{case_id}_seg.npy", folder / f"{case_id}.json"


def is_up_to_date(folder: Path, case: Case, signature: str) -> bool:
    """True when the case is stored complete and its stored signature equals `signature`."""
    data_file, seg_file, json_file = case_files(folder, case.case_id)
    if not (json_file.is_file() and data_file.is_file()):
        return False
    try:
        stored = read_json(json_file)
    except AutosegError:
        return False
    return stored.get("source_signature") == signature and (case.label_file is None or seg_file.is_file())


def preprocessed_case_ids(folder: Path) -> list[str]:
    """The cases stored in `folder` (a case is complete once its CASE.json is written), sorted."""
    return sorted(p.name[:-len(".json")] for p in Path(folder).glob("*.json"))


def cases_not_up_to_date(folder: Path, cases: Sequence[Case], settings_signature: str) -> list[str]:
    """The ids of `cases` that `preprocess_dataset` would not skip: not stored in `folder`, or stored from
    other files or settings (`is_up_to_date`), or whose input files are gone."""
    stale = []
    for case in cases:
        try:
            signature = source_signature(case, settings_signature)
        except OSError:  # an input file is missing or unreadable: preprocessing it would fail
            stale.append(case.case_id)
            continue
        if not is_up_to_date(folder, case, signature):
            stale.append(case.case_id)
    return stale


def worker_count(requested: int, peak_bytes_per_case: int, available_bytes: int, cpu_count: int, num_cases: int) -> int:
    """Processes to run: no more than asked, than CPUs, than cases, than fit in memory; 0 (run in
    this process) only when 0 was asked; at least 1 otherwise, even when memory looks short."""
    if requested <= 0:
        return 0
    fit_in_memory = available_bytes // max(1, peak_bytes_per_case)
    return max(1, min(requested, cpu_count, num_cases, fit_in_memory))


@dataclass
class CaseFailure:
    case_id: str
    error: str  # "ExceptionType: message"
    details: str = ""  # traceback of unexpected (non-autoseg) errors


@dataclass
class PreprocessSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[CaseFailure] = field(default_factory=list)
    workers: int = 0


def _write_case(case: Case, preprocessor: Callable, folder: Path, signature: str) -> CaseFailure | None:
    """Preprocess and store one case (runs in a worker). Errors come back as a CaseFailure.

    The case is read, checked and preprocessed in memory first: a case that fails leaves what was
    stored for it untouched."""
    try:
        data_file, seg_file, json_file = case_files(folder, case.case_id)
        data, segmentation, properties = preprocessor(case)
        json_file.unlink(missing_ok=True)  # the case is not done until its new .json is written
        save_npy(data_file, data)
        del data
        if segmentation is not None:
            save_npy(seg_file, segmentation.astype(np.int16, copy=False))
        write_json(json_file, replace(properties, case_id=case.case_id, source_signature=signature).to_json())
        return None
    except AutosegError as e:
        return CaseFailure(case.case_id, f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - a bug in one case must not stop the others; traceback kept
        return CaseFailure(case.case_id, f"{type(e).__name__}: {e}", traceback.format_exc())


def preprocess_dataset(cases: Sequence[Case], preprocessor: CasePreprocessor | Callable, output_folder: str | Path, *,
                       workers: int, progress: ProgressCallback | None = None,
                       available_bytes: int | None = None) -> PreprocessSummary:
    """Preprocess every case into output_folder, skipping those already stored with the same signature.

    preprocessor: `CasePreprocessor` (or any picklable callable case -> (data, seg, properties) with
    a `settings_signature` and, for workers > 0, `estimated_peak_bytes(case)`).
    workers: 0 runs in this process; otherwise a spawn process pool of
    min(workers, CPUs, cases, available memory // estimated peak of the largest case) processes.
    progress(case_id, outcome) is called once per case. Never raises for a single case's error:
    failures are listed in the summary.
    """
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(folder)  # of an earlier run killed while writing
    summary = PreprocessSummary()
    report = progress or (lambda case_id, outcome: None)
    todo: list[tuple[Case, str]] = []
    for case in cases:
        try:
            signature = source_signature(case, preprocessor.settings_signature)
        except OSError as e:  # an input file is missing or unreadable
            summary.failures.append(CaseFailure(case.case_id, f"{type(e).__name__}: {e.filename}: {e.strerror}"))
            report(case.case_id, "failed")
            continue
        if is_up_to_date(folder, case, signature):
            summary.skipped.append(case.case_id)
            report(case.case_id, "skipped")
        else:
            todo.append((case, signature))

    def record(case: Case, failure: CaseFailure | None) -> None:
        if failure is None:
            summary.written.append(case.case_id)
        else:
            summary.failures.append(failure)
        report(case.case_id, "failed" if failure else "written")

    summary.workers = _choose_workers(workers, [c for c, _ in todo], preprocessor, available_bytes)
    if summary.workers == 0:
        for case, signature in todo:
            record(case, _write_case(case, preprocessor, folder, signature))
        return summary
    with process_pool(summary.workers) as pool:
        futures = {pool.submit(_write_case, case, preprocessor, folder, signature): case for case, signature in todo}
        for future in as_completed(futures):
            try:
                failure = future.result()
            except BrokenProcessPool:
                failure = CaseFailure(futures[future].case_id, "a worker process died (killed, most likely out of "
                                      "memory); rerun with fewer workers to finish the remaining cases")
            record(futures[future], failure)
    return summary


def _choose_workers(requested: int, cases: Sequence[Case], preprocessor: Any, available_bytes: int | None) -> int:
    if requested <= 0 or not cases:
        return 0
    estimate = getattr(preprocessor, "estimated_peak_bytes", None)
    peak = 1
    for case in cases:
        try:
            peak = max(peak, estimate(case)) if estimate else peak
        except Exception:  # noqa: BLE001 - unreadable header: the case itself will report the error
            continue
    available = available_memory_bytes() if available_bytes is None else available_bytes
    return worker_count(requested, peak, available, os.cpu_count() or 1, len(cases))


def load_case(folder: str | Path, case_id: str,
              mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """(data float32 (C, z, y, x), segmentation int16 (z, y, x) or None, properties) of a stored case.
    With mmap the arrays are read-only memory maps: slicing a patch reads only that patch."""
    data_file, seg_file, json_file = case_files(Path(folder), case_id)
    if not (json_file.is_file() and data_file.is_file()):
        raise WorkspaceError(f"{folder}: case {case_id!r} is not preprocessed (no {data_file.name} / "
                             f"{json_file.name}); run `autoseg preprocess`")
    properties = CaseProperties.from_json(read_json(json_file), where=str(json_file))
    mode = "r" if mmap else None
    data = np.load(data_file, mmap_mode=mode)
    segmentation = np.load(seg_file, mmap_mode=mode) if seg_file.is_file() else None
    return data, segmentation, properties
