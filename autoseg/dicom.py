"""DICOM series in: finding the series in folders and reading one with SimpleITK's series reader (GDCM).

A series is the set of files sharing a SeriesInstanceUID, whatever their names; GDCM orders them along
the slice normal (by ImagePositionPatient), which is the order of the volume's z axis and of the frames
of a DICOM-SEG written for it (`autoseg.dicom_seg`). Before the voxels are read, every slice's header
is checked: the same rows and columns, orientation and pixel spacing, and evenly spaced positions. ITK
itself only warns about a missing slice and reads the series as a stretched volume.

`autoseg.io.read_image` reads a folder (or a `DicomSeries`) through here and turns the SimpleITK image
into autoseg's arrays and `Geometry`; this module knows nothing of them, so that io may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.errors import AutosegError, ImageReadError

# Gaps between consecutive slices may differ by this fraction of the median gap (rounding of positions).
SLICE_GAP_TOLERANCE = 0.01
# Orientation cosines and pixel spacings of the slices of one series agree to this (absolute).
SLICE_HEADER_TOLERANCE = 1e-4


@dataclass(frozen=True)
class DicomSeries:
    """One series found in `folder`: its files in slice order (GDCM's, along the slice normal)."""

    folder: Path
    uid: str  # SeriesInstanceUID
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        """The folder's name: what messages about an input call the series."""
        return self.folder.name

    def __str__(self) -> str:
        return str(self.folder)


@dataclass(frozen=True)
class SeriesLayout:
    """A series' grid from its slice headers: shape and spacing in autoseg's (z, y, x) order (voxels, mm),
    origin and direction (row-major 3x3) in ITK's physical (x, y, z) convention, as `io.Geometry`."""

    shape_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]
    components: int  # values per pixel (3 for RGB)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return self.shape_zyx[::-1]


def find_series(folder: Path) -> list[DicomSeries]:
    """Every DICOM series whose files lie directly in `folder` (not in its subfolders), by SeriesInstanceUID."""
    import SimpleITK as sitk

    if not any(path.is_file() for path in folder.iterdir()):
        return []  # spares ITK's warning that it found no series
    reader = sitk.ImageSeriesReader
    return [DicomSeries(folder, uid, tuple(Path(name) for name in reader.GetGDCMSeriesFileNames(str(folder), uid)))
            for uid in reader.GetGDCMSeriesIDs(str(folder))]


def files_of(path: Path) -> list[Path]:
    """The files an image path stands for: itself, or the files directly in a DICOM series folder (for
    signatures that notice a changed, added or removed slice)."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def dicom_series_of(path) -> DicomSeries | None:
    """The DICOM series an image path stands for (a DicomSeries, or a folder holding one series); None
    for a file."""
    if isinstance(path, DicomSeries):
        return path
    return single_series(Path(path)) if Path(path).is_dir() else None


def single_series(folder: Path) -> DicomSeries:
    """The one series in `folder`; none or several is an ImageReadError naming the folder."""
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: folder not found")
    found = find_series(folder)
    if not found:
        raise ImageReadError(f"{folder}: no DICOM series in this folder")
    if len(found) > 1:
        raise ImageReadError(f"{folder}: {len(found)} DICOM series in one folder (SeriesInstanceUIDs "
                             f"{', '.join(s.uid for s in found)}); put each series in its own folder")
    return found[0]


def _slice_header(path: Path, series: DicomSeries):
    import SimpleITK as sitk

    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    try:
        header.ReadImageInformation()
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise ImageReadError(f"{series}: {path.name} cannot be read ({lines[-1][:200] if lines else error})") from None
    return header


def series_layout(series: DicomSeries) -> SeriesLayout:
    """The grid of `series` from its slice headers; a series that is not one evenly spaced stack of equal
    slices (mixed sizes, orientations or spacings, a missing or duplicated slice) is an ImageReadError
    naming the folder."""
    headers = [_slice_header(path, series) for path in series.files]
    first = headers[0]
    if len(headers) == 1 and first.GetSize()[2] > 1:  # one multi-frame file: its header holds the grid
        return SeriesLayout(first.GetSize()[::-1], first.GetSpacing()[::-1], first.GetOrigin(), first.GetDirection(),
                            int(first.GetNumberOfComponents()))
    for path, header in zip(series.files, headers):
        pair = f"{path.name} and {series.files[0].name}"
        if header.GetSize() != first.GetSize():
            raise ImageReadError(f"{series}: slices of different sizes ({pair}: {header.GetSize()[:2]} and "
                                 f"{first.GetSize()[:2]} columns x rows, {header.GetSize()[2]} and "
                                 f"{first.GetSize()[2]} frames)")
        if not np.allclose(header.GetDirection(), first.GetDirection(), atol=SLICE_HEADER_TOLERANCE):
            raise ImageReadError(f"{series}: slices of different orientation ({pair})")
        if not np.allclose(header.GetSpacing()[:2], first.GetSpacing()[:2], atol=SLICE_HEADER_TOLERANCE):
            raise ImageReadError(f"{series}: slices of different pixel spacing ({pair})")
    if first.GetSize()[2] > 1:
        raise ImageReadError(f"{series}: {len(headers)} multi-frame files in one series; expected one file per "
                             "slice, or one multi-frame file")
    normal = np.asarray(first.GetDirection()).reshape(3, 3)[:, 2]
    positions = np.asarray([header.GetOrigin() for header in headers]) @ normal
    slice_gap = _even_slice_gap(np.diff(positions), series)
    direction = np.asarray(first.GetDirection()).reshape(3, 3)
    if len(headers) > 1:  # the third axis runs from the first slice to the last, as ITK reads it
        step = np.asarray(headers[-1].GetOrigin()) - np.asarray(first.GetOrigin())
        direction[:, 2] = step / np.linalg.norm(step)
    (columns, rows), (x_mm, y_mm) = first.GetSize()[:2], first.GetSpacing()[:2]
    return SeriesLayout((len(headers), int(rows), int(columns)), (slice_gap, float(y_mm), float(x_mm)),
                        tuple(map(float, first.GetOrigin())), tuple(map(float, direction.ravel())),
                        int(first.GetNumberOfComponents()))


def _even_slice_gap(gaps: np.ndarray, series: DicomSeries) -> float:
    """The distance between consecutive slices (mm; 1 for a single slice); uneven gaps are an error."""
    if gaps.size == 0:
        return 1.0
    gaps = np.abs(gaps)
    if gaps.min() <= SLICE_HEADER_TOLERANCE:
        raise ImageReadError(f"{series}: two slices at the same position (a duplicated slice, or two series "
                             "sharing one SeriesInstanceUID)")
    median = float(np.median(gaps))
    if np.any(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median):
        raise ImageReadError(f"{series}: slices unevenly spaced (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm, "
                             f"median {median:.3g}): a missing slice? {len(series.files)} files")
    return median


def read_series(series: DicomSeries):
    """The SimpleITK image of `series` (its headers checked by `series_layout` first, its size against the
    memory available)."""
    import SimpleITK as sitk

    from autoseg.hardware import available_memory_bytes, image_size_problem

    layout = series_layout(series)
    if problem := image_size_problem(layout.size_xyz, layout.components, available_memory_bytes()):
        raise ImageReadError(f"{series}: {problem}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path in series.files])
    try:
        return reader.Execute()
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise ImageReadError(f"{series}: cannot be read as a DICOM series ({lines[-1][:200] if lines else error})") \
            from None


# ----------------------------------------------------------------------------- cases of a prediction input


def series_cases(folder: Path, channel_names: Sequence[str]) -> dict[str, list[DicomSeries | Path]]:
    """case id -> one series per channel, from a folder of DICOM input (see the README, "DICOM"):

    - one channel: every series found in `folder` or its subfolders (one level) is a case, named after
      its folder, or after its SeriesInstanceUID where a folder holds several series;
    - several channels: each subfolder CASE of `folder` is a case, holding one folder per channel named
      by the channel's index (0, 0000) or its dataset.json name (case-insensitive), one series each
      (these folders are listed here and searched for their series when the case is read, so that a
      folder holding none or several fails that case alone).
    A layout that does not say which series is which channel is an AutosegError naming the folder.
    """
    folders = [folder, *(p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith("."))]
    if len(channel_names) > 1:
        return {case.name: _channel_series(case, channel_names) for case in folders[1:]}
    cases: dict[str, list[DicomSeries | Path]] = {}
    for holder in folders:
        found = find_series(holder)
        for series in found:
            case_id = holder.name if len(found) == 1 else series.uid
            if case_id in cases:
                raise AutosegError(f"{holder}: case {case_id!r} found twice; rename the folder")
            cases[case_id] = [series]
    return cases


def _channel_series(case: Path, channel_names: Sequence[str]) -> list[Path]:
    """The folder of each channel's series in a multi-channel case folder, in channel order."""
    by_channel: dict[int, Path] = {}
    names = [name.lower() for name in channel_names]
    for sub in sorted(p for p in case.iterdir() if p.is_dir() and not p.name.startswith(".")):
        key = sub.name.lower()
        channel = int(key) if key.isdigit() else names.index(key) if key in names else None
        if channel is None or channel >= len(names):
            raise AutosegError(f"{sub}: not a channel folder (expected the channel's index 0..{len(names) - 1} "
                               f"or name {', '.join(channel_names)})")
        if channel in by_channel:
            raise AutosegError(f"{case}: channel {channel} given twice ({by_channel[channel].name}, {sub.name})")
        by_channel[channel] = sub
    missing = [channel_names[c] for c in range(len(names)) if c not in by_channel]
    if missing:
        raise AutosegError(f"{case}: no folder for channel(s) {', '.join(missing)} (one subfolder per channel, "
                           f"named by index or name: {', '.join(channel_names)})")
    return [by_channel[c] for c in range(len(names))]
