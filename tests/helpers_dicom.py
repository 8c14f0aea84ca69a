"""Synthetic DICOM series for tests: a volume written slice by slice as CT Image Storage files with pydicom.

    files = write_ct_series(folder, volume_zyx, spacing_zyx=(2.5, 0.8, 0.7), origin_xyz=(-20, 5, 30),
                            direction=ROTATED)

Slice k lies at origin + k * spacing_z * (third column of `direction`), so SimpleITK's series reader gives
back exactly this geometry; the files are written in shuffled order under non-sortable names, so a reader
that sorted by file name would get the slices wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# x axis along -y, y axis along +x (a rotation of 90 degrees about z): a direction that is not the identity.
ROTATED = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(folder: Path, volume_zyx: np.ndarray, spacing_zyx=(2.5, 0.8, 0.7), origin_xyz=(-20.0, 5.0, 30.0),
                    direction=ROTATED, *, series_uid: str | None = None, study_uid: str | None = None,
                    description: str = "CT", seed: int = 0) -> list[Path]:
    """Write `volume_zyx` (integers within int16) as one DICOM file per slice into `folder`; returns the
    files in slice order. series_uid / study_uid: generated unless given (to put series in one study)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    row_cosines, column_cosines, normal = matrix[:, 0], matrix[:, 1], matrix[:, 2]
    order = np.random.default_rng(seed).permutation(len(volume_zyx))
    files = [folder / f"IM{int(position):04d}" for position in order]
    for index, path in enumerate(files):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "SYN001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = \
            "20260101", "120000", "", "", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "CT", 1, index + 1, description
        ds.Manufacturer, ds.PositionReferenceIndicator = "autoseg tests", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin_xyz) + index * spacing_zyx[0] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cosines, *column_cosines)]
        ds.PixelSpacing = [float(spacing_zyx[1]), float(spacing_zyx[2])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing_zyx[0])
        ds.Rows, ds.Columns = volume_zyx.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(volume_zyx[index], dtype=np.int16).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    return files
