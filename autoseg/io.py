"""Reading and writing images, with their geometry, in autoseg's axis order.

Every reader returns arrays in (channel, z, y, x) order (segmentations (z, y, x)) together with a
`Geometry` that the writer uses to put a prediction back exactly where the input was.
Volumes (.nii.gz, .nii, .mhd/.raw, .nrrd, .mha) go through SimpleITK; 2D natural images
(.png, .jpg, .bmp, .tif) become pseudo-3D arrays with a single z slice, whose pixels are 1 x 1 mm
unless the caller states their size (`pixel_spacing`, from dataset.json or the plan).

A folder is a DICOM series (`autoseg.dicom`). Only this module and that one import SimpleITK:
in-memory SimpleITK images (the Python API) are converted here too (`image_from_sitk`, `segmentation_to_sitk`).
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.artifacts import write_atomic
from autoseg.dicom import DicomSeries, dicom_series_of, read_series, series_layout
from autoseg.errors import ImageReadError

VOLUME_ENDINGS = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")
NATURAL_IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SUPPORTED_ENDINGS = VOLUME_ENDINGS + NATURAL_IMAGE_ENDINGS

# Spacing given to the dummy z axis of 2D images: far coarser than any in-plane spacing, so the
# planner never pools or resamples along it.
PSEUDO_3D_Z_SPACING = 999.0


def is_picture_spacing(spacing_zyx: Sequence[float]) -> bool:
    """Whether a (z, y, x) spacing is that of pictures read as one slice (the dummy z spacing)."""
    return spacing_zyx[0] >= PSEUDO_3D_Z_SPACING
NATURAL_IMAGE_PIXEL_SPACING = 1.0  # in-plane spacing (mm) of a picture whose pixel size nobody states;
# the dpi in its file is never used (see `_geometry_of`)
# Lossy formats cannot hold a label map: predictions for such inputs are written as PNG.
LOSSY_ENDINGS = (".jpg", ".jpeg")
# Binary masks drawn in image editors are often stored as 0 (background) / 255 (foreground).
BINARY_MASK_FOREGROUND = 255
# Two grids agree when spacing, origin and direction differ by at most this, relative (absolute below 1).
GEOMETRY_TOLERANCE = 1e-3


class MaskValuesRemappedWarning(UserWarning):
    """A 0/255 picture mask was read as 0/1 labels (the message names the file)."""


@dataclass(frozen=True)
class Geometry:
    """Where an image lies in physical space.

    shape and spacing_zyx are in autoseg's (z, y, x) order (voxels, mm); origin_xyz and
    direction (row-major 3x3) are in ITK's physical (x, y, z) convention, as stored in the file.
    """

    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    is_natural_2d: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Geometry":
        numbers = {name: tuple(float(v) for v in data[name]) for name in ("spacing_zyx", "origin_xyz", "direction")}
        return cls(shape=tuple(int(v) for v in data["shape"]), **numbers,
                   is_natural_2d=bool(data.get("is_natural_2d", False)))

    def agrees_with(self, other: "Geometry", tolerance: float = GEOMETRY_TOLERANCE) -> str | None:
        """None when both describe the same grid, else a description of the first difference."""
        if self.shape != other.shape:
            return f"shape {list(self.shape)} != {list(other.shape)}"
        for name in ("spacing_zyx", "origin_xyz", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = np.maximum(1.0, np.abs(a))
            if np.any(np.abs(a - b) > tolerance * scale):
                return f"{name.split('_')[0]} {np.round(a, 4).tolist()} != {np.round(b, 4).tolist()}"
        return None


def file_ending(path: str | Path) -> str:
    name = str(path).lower()
    return next((ending for ending in SUPPORTED_ENDINGS if name.endswith(ending)), Path(name).suffix)


def _unreadable(path: Path, error: Exception) -> ImageReadError:
    lines = str(error).strip().splitlines()
    reason = lines[-1][:200] if lines else type(error).__name__
    if "Unable to determine ImageIO reader" in reason:  # SimpleITK's words for "no format matches these bytes"
        reason = f"damaged, or not a {file_ending(path)} file"
    return ImageReadError(f"{path}: cannot be read ({reason})")


def _header_reader(path: Path):
    """A SimpleITK ImageFileReader that has read the file's header (no voxels)."""
    import SimpleITK as sitk

    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if file_ending(path) not in SUPPORTED_ENDINGS:
        raise ImageReadError(f"{path}: unsupported file type (supported: {', '.join(SUPPORTED_ENDINGS)})")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    try:
        header.ReadImageInformation()
    except (RuntimeError, OSError) as e:
        raise _unreadable(path, e) from None
    return header


def _read_voxels(path: Path):
    """(array in SimpleITK's numpy order, header) of one file, its size checked from the header first.

    NIfTI voxels come from nibabel: SimpleITK's NIfTI reader silently replaces NaN with 0, which
    would hide exactly the corruption `autoseg check` must find. The header (geometry, in ITK's
    convention) always comes from SimpleITK, so every format describes space the same way.
    """
    import SimpleITK as sitk

    from autoseg.hardware import available_memory_bytes, image_size_problem

    header = _header_reader(path)
    # An image too large to read is refused from its header: a damaged or forged header must not end in a
    # MemoryError or the out-of-memory killer (see `image_size_problem`).
    if problem := image_size_problem(header.GetSize(), _values_per_voxel(header), available_memory_bytes()):
        raise ImageReadError(f"{path}: {problem}")
    try:
        if file_ending(path) in (".nii.gz", ".nii"):
            import nibabel

            voxels = np.asanyarray(nibabel.load(str(path)).dataobj)
            if voxels.ndim <= 4 and header.GetNumberOfComponents() == 1:
                return voxels.transpose(), header
        image = sitk.ReadImage(str(path))
        return sitk.GetArrayFromImage(image), image
    except (RuntimeError, OSError, EOFError, ValueError, zlib.error) as e:
        raise _unreadable(path, e) from None


def read_header(path: str | Path | DicomSeries, pixel_spacing: Sequence[float] | None = None) -> tuple[Geometry, int]:
    """(geometry, values per voxel) of one file (or DICOM series) from its header(s) alone, without reading
    the voxels. pixel_spacing: as for `read_image`."""
    if series := dicom_series_of(path):
        layout = series_layout(series)
        return Geometry(layout.shape_zyx, layout.spacing_zyx, layout.origin_xyz, layout.direction), layout.components
    header = _header_reader(Path(path))
    return _geometry_of(header, Path(path), pixel_spacing), _values_per_voxel(header)


def _values_per_voxel(header) -> int:
    """The file's channels: 4D MSD files, vector and colour pixels (a picture's alpha included)."""
    size = header.GetSize()
    return _components(header) * (int(size[3]) if len(size) == 4 else 1)


def _components(image) -> int:
    """Values per pixel of a SimpleITK Image or ImageFileReader (they name the method differently)."""
    count = getattr(image, "GetNumberOfComponents", None) or image.GetNumberOfComponentsPerPixel
    return count()


def _is_picture(image, ending: str) -> bool:
    """True for 2D images and natural-image files (`ending`: the file's, "" for an in-memory image)."""
    return image.GetDimension() == 2 or ending in NATURAL_IMAGE_ENDINGS


def picture_geometry(height: int, width: int, pixel_spacing: Sequence[float] | None = None) -> Geometry:
    """Geometry of a 2D natural image of height x width pixels: one pseudo-3D slice.

    A picture's dpi is a print size, not a pixel size, and tools write it inconsistently (ITK turns
    72 dpi in a JPEG or TIFF into 0.35 mm but ignores it in a PNG): a JPEG photo and its PNG mask
    would disagree. Pixels of natural images are therefore 1 x 1, as in nnU-Net, unless the caller
    states their (y, x) size in mm (`pixel_spacing`).
    """
    y_mm, x_mm = pixel_spacing if pixel_spacing is not None else (NATURAL_IMAGE_PIXEL_SPACING,) * 2
    return Geometry(shape=(1, int(height), int(width)), spacing_zyx=(PSEUDO_3D_Z_SPACING, float(y_mm), float(x_mm)),
                    is_natural_2d=True)


def _volume_geometry(image) -> Geometry:
    """Geometry of the first three dimensions of a 3D or 4D SimpleITK Image or ImageFileReader (4D
    MSD files stack channels in the 4th)."""
    dim = image.GetDimension()
    size = image.GetSize()
    spacing = image.GetSpacing()[:3]
    origin = image.GetOrigin()[:3]
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3].ravel()
    return Geometry(
        shape=(int(size[2]), int(size[1]), int(size[0])),
        spacing_zyx=(float(spacing[2]), float(spacing[1]), float(spacing[0])),
        origin_xyz=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction),
    )


def _geometry_of(image, path: Path, pixel_spacing: Sequence[float] | None = None) -> Geometry:
    """Geometry of one file's SimpleITK Image or ImageFileReader (see `picture_geometry`,
    `_volume_geometry`). pixel_spacing: (y, x) mm of a picture's pixels; ignored for volumes."""
    if _is_picture(image, file_ending(path)):
        size = image.GetSize()
        return picture_geometry(size[1], size[0], pixel_spacing)
    if image.GetDimension() not in (3, 4):
        raise ImageReadError(f"{path}: {image.GetDimension()}D image; expected 2D, 3D or 4D (channels last)")
    return _volume_geometry(image)


def _channels_first(array: np.ndarray, image, ending: str) -> np.ndarray:
    """Array of one SimpleITK Image or file (`image` is its Image or header) as (C, z, y, x).
    ending: the file's (see `file_ending`), "" for an in-memory image."""
    components = _components(image)
    if _is_picture(image, ending):
        if components > 1:  # (y, x, colour) -> (colour, 1, y, x)
            has_alpha = components in (2, 4) and ending in NATURAL_IMAGE_ENDINGS  # gray + alpha, RGBA
            colour = array[..., :-1] if has_alpha else array
            return np.moveaxis(colour, -1, 0)[:, None]
        return array.reshape(1, 1, *array.shape[-2:])
    if components > 1:  # vector volume (z, y, x, c)
        return np.moveaxis(array, -1, 0)
    if array.ndim == 4:  # 4D MSD file: numpy order (c, z, y, x)
        return array
    return array[None]


def read_image(paths: str | Path | DicomSeries | Sequence[str | Path | DicomSeries],
               pixel_spacing: Sequence[float] | None = None) -> tuple[np.ndarray, Geometry]:
    """Read one case's image as float32 (C, z, y, x).

    `paths` is one file (3D, 4D MSD multi-channel, or an RGB picture) or one file per channel
    (nnU-Net v2 layout `case_0000.nii.gz`, `case_0001.nii.gz`); the channels are concatenated; a folder (or
    `DicomSeries`) is a DICOM series. pixel_spacing: (y, x) pixel size in mm of a picture (default 1 x 1).
    """
    paths = [paths] if isinstance(paths, (str, Path, DicomSeries)) else paths
    arrays, geometry = [], None
    for path in paths:
        if series := dicom_series_of(path):
            array, this_geometry = image_from_sitk(read_series(series))
        else:
            voxels, header = _read_voxels(Path(path))
            this_geometry = _geometry_of(header, Path(path), pixel_spacing)
            array = _channels_first(voxels, header, file_ending(path)).astype(np.float32, copy=False)
        if geometry is not None and (difference := geometry.agrees_with(this_geometry)):
            raise ImageReadError(f"{path}: channel geometry differs from {paths[0]}: {difference}")
        geometry = geometry or this_geometry
        arrays.append(array)
    return np.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0], geometry


def _picture_mask_as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Label values of a picture mask (C, 1, y, x): gray copies in RGB collapse to one channel and a
    0/255 binary mask becomes 0/1, with a `MaskValuesRemappedWarning` naming the file."""
    if array.shape[0] > 1 and np.all(array == array[:1]):  # mask saved as RGB with R == G == B
        array = array[:1]
    values = np.unique(array)
    if BINARY_MASK_FOREGROUND in values and set(values.tolist()) <= {0, BINARY_MASK_FOREGROUND}:
        warnings.warn(f"{path}: mask values 0/{BINARY_MASK_FOREGROUND} read as labels 0/1",
                      MaskValuesRemappedWarning, stacklevel=3)
        array = (array == BINARY_MASK_FOREGROUND).astype(np.uint8)
    return array


def read_segmentation(path: str | Path, pixel_spacing: Sequence[float] | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a label map as int16 (z, y, x). Non-integer values are an error.

    Picture masks (.png, .tif, ...): a 0/255 mask is read as 0/1 with a `MaskValuesRemappedWarning`,
    and an RGB mask whose three channels are equal as one channel. pixel_spacing: as for `read_image`.
    """
    path = Path(path)
    voxels, header = _read_voxels(path)
    geometry = _geometry_of(header, path, pixel_spacing)
    array = _channels_first(np.asarray(voxels), header, file_ending(path))
    if geometry.is_natural_2d:
        array = _picture_mask_as_labels(array, path)
    if array.shape[0] != 1:
        raise ImageReadError(f"{path}: a label map must have one channel, found {array.shape[0]}")
    array = array[0]
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageReadError(f"{path}: label map contains NaN or inf")
        if np.any(array != np.round(array)):
            raise ImageReadError(f"{path}: label map has non-integer values")
    if array.size and (array.min() < -32768 or array.max() > 32767):
        raise ImageReadError(f"{path}: label values outside the int16 range")
    return array.astype(np.int16), geometry


def _to_sitk(array_czyx: np.ndarray, geometry: Geometry):
    """A SimpleITK image of (C, z, y, x) values on `geometry`: one channel gives a scalar image,
    several a colour picture (vector pixels) or a 4D MSD volume (channels along the 4th axis)."""
    import SimpleITK as sitk

    if geometry.is_natural_2d:
        if array_czyx.shape[0] == 1:
            return sitk.GetImageFromArray(array_czyx[0, 0])
        return sitk.GetImageFromArray(np.moveaxis(array_czyx[:, 0], 0, -1), isVector=True)
    channels = []
    for channel in array_czyx:
        image = sitk.GetImageFromArray(channel)
        image.SetSpacing(tuple(reversed(geometry.spacing_zyx)))
        image.SetOrigin(geometry.origin_xyz)
        image.SetDirection(geometry.direction)
        channels.append(image)
    return channels[0] if len(channels) == 1 else sitk.JoinSeries(channels)


def _write_sitk(image, path: Path) -> Path:
    """Write a SimpleITK image, atomically except for header/data file pairs."""
    import SimpleITK as sitk

    ending = file_ending(path)
    if ending in (".mhd", ".nhdr"):  # header + data file pair: cannot be renamed as one unit
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))
        return path

    def write(tmp: str) -> None:
        # SimpleITK picks the writer from the file name, so the temporary keeps the real ending.
        real_tmp = tmp + ending
        try:
            sitk.WriteImage(image, real_tmp, useCompression=ending in (".nii.gz", ".nrrd", ".mha"))
            os.replace(real_tmp, tmp)
        finally:
            if os.path.exists(real_tmp):
                os.unlink(real_tmp)

    return write_atomic(path, write)


def write_image(array_zyx: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write a (z, y, x) array (segmentation or one channel) with the given geometry, atomically."""
    return write_image_channels(array_zyx[None], geometry, path)


def write_image_channels(array_czyx: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write a (C, z, y, x) image as `read_image` reads it back: scalar, RGB picture (C = 3) or 4D MSD volume."""
    if tuple(array_czyx.shape[1:]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array_czyx.shape} does not match (C, *{geometry.shape})")
    return _write_sitk(_to_sitk(array_czyx, geometry), Path(path))


def segmentation_ending_for(image_ending: str) -> str:
    """File ending for the label map of an image with `image_ending`: the same one, except that lossy JPEG
    would corrupt labels at every edge (PNG instead) and a header/data pair becomes its single-file variant."""
    return {".jpg": ".png", ".jpeg": ".png", ".mhd": ".mha", ".nhdr": ".nrrd"}.get(image_ending, image_ending)


def write_segmentation(segmentation: np.ndarray, geometry: Geometry, path: str | Path) -> Path:
    """Write an integer label map (z, y, x) in the smallest integer type that holds it.

    Pictures are written unsigned (PNG has no signed pixels): uint8, or uint16 beyond 255 labels.
    """
    if file_ending(path) in LOSSY_ENDINGS:
        raise ValueError(f"{path}: JPEG is lossy and would change label values at edges; write the "
                         f"segmentation as {segmentation_ending_for(file_ending(path))}")
    return write_image(_as_smallest_label_type(segmentation, geometry), geometry, path)


def _as_smallest_label_type(segmentation: np.ndarray, geometry: Geometry) -> np.ndarray:
    """uint8 when the labels fit, else int16, or uint16 for pictures (PNG has no signed pixels)."""
    fits_uint8 = segmentation.size == 0 or (segmentation.min() >= 0 and segmentation.max() < 256)
    dtype = np.uint8 if fits_uint8 else (np.uint16 if geometry.is_natural_2d else np.int16)
    return segmentation.astype(dtype, copy=False)


# ------------------------------------------------------------------- in-memory SimpleITK images


def is_sitk_image(value: object) -> bool:
    import SimpleITK as sitk

    return isinstance(value, sitk.Image)


def image_from_sitk(image) -> tuple[np.ndarray, Geometry]:
    """float32 (C, z, y, x) and the geometry of an in-memory SimpleITK image: 3D scalar (one channel),
    3D vector (components = channels) or 4D scalar (channels along the 4th ITK axis, as MSD files)."""
    import SimpleITK as sitk

    dimension, components = image.GetDimension(), _components(image)
    if dimension not in (3, 4) or (dimension == 4 and components > 1):
        raise ImageReadError(f"SimpleITK image: {dimension}D image with {components} component(s); "
                             "expected 3D (scalar or vector) or 4D scalar")
    array = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    return _channels_first(array, image, ending=""), _volume_geometry(image)


def segmentation_to_sitk(segmentation: np.ndarray, geometry: Geometry):
    """A SimpleITK label image of a (z, y, x) segmentation on `geometry`, in the smallest integer
    type that holds it (as `write_segmentation` writes it)."""
    return _to_sitk(_as_smallest_label_type(segmentation, geometry)[None], geometry)
