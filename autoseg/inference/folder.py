"""A folder of images to a folder of segmentations, one case after another.

    summary = predict_folder(model, "in/", "out/", settings)

Inputs are grouped into cases (one file per case, nnU-Net's per-channel CASE_0000 layout, or DICOM
series: `autoseg.dicom.series_cases`); each output has the input's format where that format can hold a
label map (NIfTI for DICOM input), or is a DICOM-SEG with `output_format="dicom-seg"` (DICOM input
only). While the network runs on one case, the next case is read and preprocessed in one background
thread and the previous one restored and written in another. A case that fails is recorded and the others go on.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autoseg.artifacts import remove_abandoned_temporaries
from autoseg.dicom import DicomSeries, dicom_series_of, series_cases
from autoseg.errors import AutosegError
from autoseg.inference.case import PredictionSettings, predict_probabilities, preprocess_for, \
    probabilities_to_prediction
from autoseg.inference.model import TrainedModel
from autoseg.io import SUPPORTED_ENDINGS, Geometry, file_ending, read_image, segmentation_ending_for, \
    write_segmentation

OUTPUT_FORMATS = ("nifti", "dicom-seg")  # nifti: the input's own format, NIfTI for DICOM input

# Called in the writer thread once a case's segmentation is written: (case id, its input files, the
# int16 (z, y, x) segmentation, its geometry, the input's). What predict --statistics / --preview hang here.
AfterCase = Callable[[str, list, np.ndarray, Geometry], None]


@dataclass
class FolderSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # case id -> one-line error naming the file
    windows: int = 0  # sliding windows run (each with all its TTA passes and folds)
    network_seconds: float = 0.0  # wall time spent in the sliding window

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.network_seconds if self.network_seconds else 0.0


CHANNEL_FILE = re.compile(r"^(.*)_(\d{4})$")  # nnU-Net v2 per-channel layout: CASE_0000, CASE_0001, ...


def group_input_files(folder: Path, num_channels: int,
                      channel_names: Sequence[str] | None = None) -> dict[str, list[Path | DicomSeries]]:
    """case id -> image files. Accepts one file per case (3D, 4D multi-channel, RGB) or the
    per-channel layout CASE_0000.nii.gz, CASE_0001.nii.gz (channel files in channel order). A folder
    without such files holds DICOM series (`autoseg.dicom.series_cases`, with the channels' names).

    Names ending in _NNNN are channel files only when every such number is a channel of the model
    (< num_channels) and some case has _0000; otherwise (e.g. a 1-channel task whose cases are
    called scan_0001, scan_0002) the whole name is the case id. `missing_channel_files` says
    which channel files a case lacks.
    """
    folder = Path(folder)
    if folder.is_file():
        ending = file_ending(folder)
        return {folder.name[: -len(ending)]: [folder]}
    if not folder.is_dir():
        raise AutosegError(f"{folder}: input folder not found")
    images = [path for path in sorted(folder.iterdir())
              if path.is_file() and not path.name.startswith(".") and file_ending(path) in SUPPORTED_ENDINGS]
    if not images:
        names = channel_names or [str(channel) for channel in range(num_channels)]
        if cases := series_cases(folder, names):
            return cases
        raise AutosegError(f"{folder}: no DICOM series and no images with a supported ending "
                           f"({', '.join(SUPPORTED_ENDINGS)})")
    stems = {path: path.name[: -len(file_ending(path))] for path in images}
    matches = {path: CHANNEL_FILE.match(stem) for path, stem in stems.items()}
    numbers = [int(m.group(2)) for m in matches.values() if m]
    per_channel = bool(numbers) and max(numbers) < num_channels and 0 in numbers
    groups: dict[str, dict[int, Path]] = {}
    for path in images:
        match = matches[path] if per_channel else None
        if match:
            groups.setdefault(match.group(1), {})[int(match.group(2))] = path
        else:
            groups.setdefault(stems[path], {})[-1] = path
    return {case_id: [channels[-1]] if -1 in channels else [channels[c] for c in sorted(channels)]
            for case_id, channels in groups.items()}


def missing_channel_files(case_id: str, files: list[Path], num_channels: int) -> list[str]:
    """Names of the per-channel files CASE_NNNN a case needs but lacks ([] for single-file cases,
    whose channel count is checked after reading) and DICOM cases (grouped by `series_cases`)."""
    if is_dicom_case(files):
        return []
    stem = files[0].name[: -len(file_ending(files[0]))]
    if stem == case_id:
        return []
    ending = file_ending(files[0])
    present = {path.name for path in files}
    return [name for name in (f"{case_id}_{c:04d}{ending}" for c in range(num_channels)) if name not in present]


def is_dicom_case(files: list[Path | DicomSeries]) -> bool:
    return isinstance(files[0], DicomSeries) or files[0].is_dir()


def output_ending(input_files: list[Path | DicomSeries], output_format: str = "nifti") -> str:
    """.dcm for a DICOM-SEG; .nii.gz for DICOM input; else the input's format, except where that format
    cannot hold a label map exactly (JPEG) or is a header/data pair (.mhd): see `segmentation_ending_for`."""
    if output_format == "dicom-seg":
        return ".dcm"
    return ".nii.gz" if is_dicom_case(input_files) else segmentation_ending_for(file_ending(input_files[0]))


def output_path_for(output_folder: Path, case_id: str, input_files: list[Path | DicomSeries],
                    output_format: str = "nifti") -> Path:
    return output_folder / f"{case_id}{output_ending(input_files, output_format)}"


def check_output_format(cases: dict[str, list[Path | DicomSeries]], output_format: str) -> None:
    """A one-line AutosegError for an unknown format, or for DICOM-SEG of cases that are not DICOM series."""
    if output_format not in OUTPUT_FORMATS:
        raise AutosegError(f"--output-format {output_format!r}: expected {' or '.join(OUTPUT_FORMATS)}")
    not_dicom = [files[0] for files in cases.values() if not is_dicom_case(files)]
    if output_format == "dicom-seg" and not_dicom:
        raise AutosegError(f"--output-format dicom-seg needs DICOM input (a DICOM-SEG references its source "
                           f"series), but {not_dicom[0]} is not a DICOM series; use --output-format nifti")


def write_case_segmentation(segmentation, geometry, path: Path, output_format: str,
                            input_files: list[Path | DicomSeries], label_names: dict[int, str]) -> Path:
    """Write one case's int (z, y, x) segmentation: a label map file, or a DICOM-SEG referencing the series
    of the case's first channel (label_names: foreground label value -> name, the segments')."""
    if output_format == "dicom-seg":
        from autoseg.dicom_seg import write_dicom_seg

        return write_dicom_seg(segmentation, dicom_series_of(input_files[0]), label_names, path)
    return write_segmentation(segmentation, geometry, path)


def foreground_label_names(model: TrainedModel) -> dict[int, str]:
    return {int(value): name for value, name in model.plans.labels.items() if int(value) != 0}


def channel_names(model: TrainedModel) -> list[str]:
    """dataset.json's channel names ("modality") in channel order."""
    return [model.plans.modality[channel] for channel in sorted(model.plans.modality, key=int)]


def _read_and_preprocess(model, files, case_id, settings):
    missing = missing_channel_files(case_id, files, model.num_input_channels)
    if missing:
        raise AutosegError(f"case {case_id}: missing channel file(s) {', '.join(missing)} next to {files[0]} "
                           f"(the model reads {model.num_input_channels} channel(s))")
    image, geometry = read_image(files, model.pixel_spacing)
    return preprocess_for(model, image, geometry, case_id, settings)


def case_images(model: TrainedModel, input_path: Path, first: int, count: int) -> list[np.ndarray]:
    """Cases `first` to `first + count - 1` of `input_path` (in the order predict takes them) preprocessed
    for `model`, each (C, *spatial): real images to measure runtimes on and calibrate int8 with
    (`autoseg.stages.runtime`). Empty for a cascade stage (its input needs the low-res stage's prediction);
    a case that cannot be read is left out: predicting it reports why, case by case."""
    if model.previous_stage is not None:
        return []
    try:
        cases = list(group_input_files(input_path, model.num_input_channels, channel_names(model)).items())
    except AutosegError:
        return []
    images = []
    for case_id, files in cases[first:first + count]:
        try:
            images.append(_read_and_preprocess(model, files, case_id, None)[0])
        except AutosegError:
            continue
    return images


def calibration_cases(model: TrainedModel, input_path: Path) -> list[np.ndarray]:
    """The cases int8 is calibrated on (`case_images`): up to CALIBRATION_IMAGES after the first, whose
    windows are the runtime probe, so its agreement is measured on windows it was not calibrated on; the
    first when it is alone."""
    from autoseg.inference.runtimes import CALIBRATION_IMAGES

    return case_images(model, input_path, 1, CALIBRATION_IMAGES) or case_images(model, input_path, 0, 1)


def first_case_image(model: TrainedModel, input_path: Path) -> np.ndarray | None:
    """The first case of `input_path` preprocessed for `model` (`case_images`), None when there is none."""
    images = case_images(model, input_path, 0, 1)
    return images[0] if images else None


def _export(model, holder: list, properties, output_path: Path, settings: PredictionSettings, output_format: str,
            input_files: list, after_case: Sequence[AfterCase] = ()) -> str:
    """Restore, postprocess and write one case, then call the `after_case` hooks. `holder` is
    [probabilities]: emptied here, so the probabilities are freed once restored (the executor keeps its
    arguments until the call ends)."""
    prediction = probabilities_to_prediction(model, holder.pop(), properties, settings.save_probabilities,
                                             settings.postprocess)
    if prediction.probabilities is not None:
        from autoseg.ensembling import save_probabilities

        save_probabilities(output_path.parent / properties.case_id, prediction.probabilities,
                           prediction.geometry, labels=model.label_values)
    write_case_segmentation(prediction.segmentation, prediction.geometry, output_path, output_format, input_files,
                            foreground_label_names(model))
    for hook in after_case:
        hook(properties.case_id, list(input_files), prediction.segmentation, prediction.geometry)
    return str(output_path)


def writable_folder(folder: Path) -> Path:
    """`folder`, created if needed; a one-line error when it cannot be made or written into (checked before
    any case is predicted, so a batch does not fail case by case)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AutosegError(f"{folder}: cannot create the output folder ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AutosegError(f"{folder}: the output folder is not writable")
    remove_abandoned_temporaries(folder)  # of an earlier run killed while writing
    return folder


def predict_folder(model: TrainedModel, input_folder: Path, output_folder: Path,
                   settings: PredictionSettings | None = None, *, overwrite: bool = False,
                   part: tuple[int, int] = (0, 1), on_case: Callable[[str, str], None] | None = None,
                   progress: Callable[[int, int], None] | None = None, output_format: str = "nifti",
                   after_case: Sequence[AfterCase] = ()) -> FolderSummary:
    """Predict every case of `input_folder` (every `part[1]`-th from `part[0]`) into `output_folder`
    (as label map files, or DICOM-SEGs for DICOM input with output_format "dicom-seg").

    Existing outputs are skipped unless `overwrite` (so an interrupted batch resumes). A case that
    fails (unreadable, wrong channels, ...) is recorded with its file name and error and the others
    go on. `on_case(case_id, status)` reports each case as "[done/total] status"; `progress(done,
    total)` the windows of the case being predicted; each of `after_case` is called once a case is written
    (an error there fails the case).

    Pipelining: one reader thread reads and preprocesses the next case, one writer thread restores
    and writes the previous one, while the network runs on the current case. At most one case waits
    in each, so memory stays at three cases in flight.
    """
    settings = settings or PredictionSettings()
    index, count = part
    if not (count >= 1 and 0 <= index < count):
        raise AutosegError(f"--part {index}/{count}: expected 0 <= I < N")
    cases = group_input_files(Path(input_folder), model.num_input_channels, channel_names(model))
    check_output_format(cases, output_format)
    chosen = sorted(cases)[index::count]
    output_folder = writable_folder(Path(output_folder))
    summary = FolderSummary()

    def report(case_id: str, status: str) -> None:
        if on_case is not None:
            done = len(summary.written) + len(summary.skipped) + len(summary.failures)
            on_case(case_id, f"[{done}/{len(chosen)}] {status}")

    def done_before(case_id: str) -> bool:  # probabilities are written first, the segmentation last
        written = output_path_for(output_folder, case_id, cases[case_id], output_format).exists()
        return written and (not settings.save_probabilities or (output_folder / f"{case_id}.npz").exists())

    todo = []
    for case_id in chosen:
        if not overwrite and done_before(case_id):
            summary.skipped.append(case_id)
            report(case_id, "skipped (exists)")
        else:
            todo.append(case_id)

    def read(position: int) -> Future | None:
        if position >= len(todo):
            return None
        case_id = todo[position]
        return reader.submit(_read_and_preprocess, model, cases[case_id], case_id, settings)

    speeds: dict[str, str] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="predict-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="predict-write") as writer:
        pending: list[tuple[str, Future]] = []
        next_input = read(0)
        for position, case_id in enumerate(todo):
            current, next_input = next_input, read(position + 1)
            try:
                data, properties = current.result()
                del current  # the future would keep the preprocessed image alive
                windows, seconds, probabilities = _timed_prediction(model, data, settings, progress)
                del data
            except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch
                _record_failure(summary, report, case_id, cases[case_id], e)
                continue
            summary.windows += windows
            summary.network_seconds += seconds
            speeds[case_id] = f"{windows} windows in {seconds:.1f} s, {windows / max(seconds, 1e-9):.3g} windows/s"
            # Back-pressure: the previous export must be done before this one is queued.
            pending = _collect_finished(pending, summary, report, cases, speeds, wait=True)
            target = output_path_for(output_folder, case_id, cases[case_id], output_format)
            pending.append((case_id, writer.submit(_export, model, [probabilities], properties, target, settings,
                                                   output_format, cases[case_id], after_case)))
            del probabilities
        _collect_finished(pending, summary, report, cases, speeds, wait=True)
    return summary


def _timed_prediction(model, data, settings, progress):
    """(windows, seconds, probabilities) of one case's sliding window."""
    windows = [0]

    def counting(done: int, total: int) -> None:
        windows[0] = total
        if progress is not None:
            progress(done, total)

    started = time.perf_counter()
    probabilities = predict_probabilities(model, data, settings, counting)
    return windows[0], time.perf_counter() - started, probabilities


def _collect_finished(pending, summary: FolderSummary, report, cases, speeds, wait: bool):
    still_running = []
    for case_id, future in pending:
        if not wait and not future.done():
            still_running.append((case_id, future))
            continue
        try:
            summary.written.append(future.result())
            report(case_id, f"written ({speeds.get(case_id, '')})")
        except Exception as e:  # noqa: BLE001 - reported per case, the batch goes on
            _record_failure(summary, report, case_id, cases[case_id], e)
    return still_running


def _record_failure(summary: FolderSummary, report, case_id: str, files: list[Path], error: Exception) -> None:
    message = _one_line(error)
    if not isinstance(error, AutosegError):
        message = f"{type(error).__name__}: {message}"
    if not any(path.name in message for path in files):
        message = f"{', '.join(path.name for path in files)}: {message}"
    summary.failures[case_id] = message
    report(case_id, f"failed: {message}")


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
