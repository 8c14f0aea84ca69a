"""DICOM-SEG out: a label map predicted for a DICOM series, written as one DICOM Segmentation object
with highdicom.

    write_dicom_seg(segmentation_zyx, series, {1: "liver", 2: "tumour"}, "out/case.dcm")

Each foreground label is one BINARY segment named as in dataset.json, produced by an AUTOMATIC algorithm
identified as autoseg and its version. The frames reference the source series' instances: slice z of
the label map is the frame of `series.files[z]`, whose position and orientation it takes, so the
segmentation lies exactly on the source grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from autoseg.artifacts import write_atomic
from autoseg.dicom import DicomSeries
from autoseg.errors import AutosegError

MANUFACTURER = "autoseg"
SEGMENTATION_SERIES_NUMBER = 900  # a number that viewers list after the usual image series


def write_dicom_seg(segmentation_zyx: np.ndarray, series: DicomSeries, label_names: Mapping[int, str],
                    path: str | Path) -> Path:
    """Write `segmentation_zyx` (integer labels, the shape of the series: (slices, rows, columns)) as a
    DICOM-SEG referencing `series`, atomically. label_names: foreground label value -> name."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from autoseg import __version__

    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in series.files]
    if any(int(getattr(source, "NumberOfFrames", 1) or 1) > 1 for source in sources):
        raise AutosegError(f"{series}: DICOM-SEG output is written for series of one file per slice, not for "
                           "multi-frame files; use --output-format nifti")
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if tuple(segmentation_zyx.shape) != expected:
        raise AutosegError(f"{series}: segmentation of shape {list(segmentation_zyx.shape)} for a series of "
                           f"{list(expected)} (slices, rows, columns)")
    algorithm = hd.AlgorithmIdentificationSequence(name="autoseg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=value, segment_label=name, segmented_property_category=codes.cid7150.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        tracking_uid=hd.UID(), tracking_id=name) for value, name in sorted(label_names.items())]
    dtype = np.uint8 if max(label_names, default=0) < 256 else np.uint16
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=segmentation_zyx.astype(dtype), segmentation_type="BINARY",
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=SEGMENTATION_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="autoseg",
        software_versions=__version__, device_serial_number="none", series_description="autoseg segmentation",
        omit_empty_frames=True)
    return write_atomic(Path(path), lambda tmp: segmentation.save_as(tmp, enforce_file_format=True))
