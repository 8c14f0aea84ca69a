import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import ImageReadError
from autoseg.io import Geometry, read_image, read_segmentation, write_image, write_segmentation

GEOMETRY = Geometry(shape=(5, 6, 7), spacing_zyx=(3.0, 0.8, 0.7), origin_xyz=(10.0, -20.0, 5.5),
                    direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mhd", ".nrrd"])
def test_formats_give_same_array_and_geometry(tmp_path, ending):
    array = np.random.default_rng(0).normal(size=GEOMETRY.shape).astype(np.float32)
    path = write_image(array, GEOMETRY, tmp_path / f"image{ending}")
    read, geometry = read_image(path)
    assert read.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(read[0], array)
    assert geometry.agrees_with(GEOMETRY) is None
    np.testing.assert_allclose(geometry.spacing_zyx, (3.0, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(geometry.origin_xyz, (10.0, -20.0, 5.5), rtol=1e-6)


def test_4d_msd_image_becomes_channels(tmp_path):
    channels = [np.full((4, 5, 6), c, np.float32) for c in range(3)]
    images = []
    for array in channels:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.5, 0.6, 2.0))
        images.append(image)
    sitk.WriteImage(sitk.JoinSeries(images), str(tmp_path / "multi.nii.gz"))
    data, geometry = read_image(tmp_path / "multi.nii.gz")
    assert data.shape == (3, 4, 5, 6)
    assert [data[c].mean() for c in range(3)] == [0, 1, 2]
    np.testing.assert_allclose(geometry.spacing_zyx, (2.0, 0.6, 0.5))


def test_per_channel_files_are_concatenated(tmp_path):
    for c in range(2):
        write_image(np.full(GEOMETRY.shape, c + 1, np.float32), GEOMETRY, tmp_path / f"case_{c:04d}.nii.gz")
    data, _ = read_image([tmp_path / "case_0000.nii.gz", tmp_path / "case_0001.nii.gz"])
    assert data.shape == (2, 5, 6, 7) and data[1].max() == 2


def test_segmentation_round_trip_keeps_geometry(tmp_path):
    seg = np.zeros(GEOMETRY.shape, np.int16)
    seg[1:3, 2:4, 3:6] = 2
    write_segmentation(seg, GEOMETRY, tmp_path / "seg.nii.gz")
    read, geometry = read_segmentation(tmp_path / "seg.nii.gz")
    np.testing.assert_array_equal(read, seg)
    assert geometry.agrees_with(GEOMETRY) is None


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")


def test_non_integer_label_is_an_error(tmp_path):
    write_image(np.full(GEOMETRY.shape, 0.5, np.float32), GEOMETRY, tmp_path / "seg.nii.gz")
    with pytest.raises(ImageReadError, match="non-integer"):
        read_segmentation(tmp_path / "seg.nii.gz")


def test_geometry_json_round_trip():
    assert Geometry.from_json(GEOMETRY.to_json()) == GEOMETRY


@pytest.mark.parametrize("ending", [".nii.gz", ".mhd", ".nrrd"])
def test_nan_survives_reading(tmp_path, ending):
    # SimpleITK's own NIfTI reader turns NaN into 0; `autoseg check` must see it in every format.
    array = np.ones(GEOMETRY.shape, np.float32)
    array[1, 2, 3] = np.nan
    read, _ = read_image(write_image(array, GEOMETRY, tmp_path / f"nan{ending}"))
    assert np.isnan(read).sum() == 1 and np.isnan(read[0, 1, 2, 3])


def test_4d_msd_image_keeps_the_3d_geometry(tmp_path):
    images = []
    for c in range(2):
        image = sitk.GetImageFromArray(np.full((4, 5, 6), c, np.float32))
        image.SetSpacing((0.5, 0.6, 2.0))
        image.SetOrigin((1.0, 2.0, 3.0))
        image.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        images.append(image)
    joined = sitk.JoinSeries(images)  # 4D: the 4th axis gets spacing 1, origin 0
    joined.SetOrigin((1.0, 2.0, 3.0, 0.0))
    direction = np.eye(4)
    direction[:3, :3] = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    joined.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(joined, str(tmp_path / "multi.nii.gz"))
    _, geometry = read_image(tmp_path / "multi.nii.gz")
    assert geometry.shape == (4, 5, 6)
    np.testing.assert_allclose(geometry.origin_xyz, (1.0, 2.0, 3.0))
    np.testing.assert_allclose(geometry.direction, (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    # a prediction written with it lies where a 3D channel would
    seg_path = write_segmentation(np.zeros((4, 5, 6), np.int16), geometry, tmp_path / "seg.nii.gz")
    assert read_segmentation(seg_path)[1].agrees_with(geometry) is None


def test_channel_files_with_different_grids_are_refused(tmp_path):
    write_image(np.zeros(GEOMETRY.shape, np.float32), GEOMETRY, tmp_path / "c_0000.nii.gz")
    other = Geometry(GEOMETRY.shape, (3.0, 0.8, 0.9), GEOMETRY.origin_xyz, GEOMETRY.direction)
    write_image(np.zeros(GEOMETRY.shape, np.float32), other, tmp_path / "c_0001.nii.gz")
    with pytest.raises(ImageReadError, match="c_0001.nii.gz: channel geometry differs"):
        read_image([tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"])


def test_a_segmentation_keeps_its_images_format_in_one_file(tmp_path):
    from autoseg.io import segmentation_ending_for

    assert [segmentation_ending_for(e) for e in (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr", ".jpg", ".png")] \
        == [".nii.gz", ".nii", ".mha", ".mha", ".nrrd", ".nrrd", ".png", ".png"]
    labels = np.zeros((3, 4, 5), dtype=np.int16)
    labels[1, 2, 3] = 2
    geometry = Geometry(shape=(3, 4, 5), spacing_zyx=(2.5, 0.8, 0.7), origin_xyz=(1.0, 2.0, 3.0))
    path = write_segmentation(labels, geometry, tmp_path / f"case{segmentation_ending_for('.mhd')}")
    back, back_geometry = read_segmentation(path)
    assert np.array_equal(back, labels) and back_geometry.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.mha"]  # no .raw beside it


def test_whole_images_are_written_as_read_image_reads_them(tmp_path):
    from autoseg.io import picture_geometry, write_image_channels

    channels = np.random.default_rng(0).normal(size=(2, *GEOMETRY.shape)).astype(np.float32)
    msd, msd_geometry = read_image(write_image_channels(channels, GEOMETRY, tmp_path / "multi.nii.gz"))
    np.testing.assert_array_equal(msd, channels)  # one 4D file, channels along the 4th axis
    assert msd_geometry.agrees_with(GEOMETRY) is None
    one, _ = read_image(write_image_channels(channels[:1], GEOMETRY, tmp_path / "one.nii.gz"))
    np.testing.assert_array_equal(one, channels[:1])
    rgb = np.random.default_rng(1).integers(0, 256, (3, 1, 6, 7)).astype(np.uint8)
    picture, picture_geometry_read = read_image(write_image_channels(rgb, picture_geometry(6, 7), tmp_path / "rgb.png"))
    np.testing.assert_array_equal(picture, rgb)
    assert picture_geometry_read == picture_geometry(6, 7)
    with pytest.raises(ValueError, match="does not match"):
        write_image_channels(channels[:, :2], GEOMETRY, tmp_path / "wrong.nii.gz")


def test_header_gives_the_geometry_and_channels_without_the_voxels(tmp_path):
    from autoseg.io import picture_geometry, read_header, write_image_channels

    path = write_image_channels(np.zeros((3, *GEOMETRY.shape), np.float32), GEOMETRY, tmp_path / "multi.nii.gz")
    geometry, values_per_voxel = read_header(path)
    assert geometry == read_image(path)[1] and values_per_voxel == 3
    picture = write_image_channels(np.zeros((3, 1, 6, 7), np.uint8), picture_geometry(6, 7), tmp_path / "rgb.png")
    assert read_header(picture, pixel_spacing=(0.5, 0.25)) == (picture_geometry(6, 7, (0.5, 0.25)), 3)
    with pytest.raises(ImageReadError, match="not found"):
        read_header(tmp_path / "missing.nii.gz")


def test_in_memory_simpleitk_images_convert_with_their_geometry():
    from autoseg.io import image_from_sitk, is_sitk_image, segmentation_to_sitk

    array = np.random.default_rng(0).normal(size=GEOMETRY.shape).astype(np.float32)
    scalar = sitk.GetImageFromArray(array)
    scalar.SetSpacing(tuple(reversed(GEOMETRY.spacing_zyx)))
    scalar.SetOrigin(GEOMETRY.origin_xyz)
    scalar.SetDirection(GEOMETRY.direction)
    for image, channels in ((scalar, 1), (sitk.Compose(scalar, scalar), 2), (sitk.JoinSeries([scalar, scalar]), 2)):
        assert is_sitk_image(image)
        data, geometry = image_from_sitk(image)
        assert data.dtype == np.float32 and data.shape == (channels, *GEOMETRY.shape)
        np.testing.assert_array_equal(data[-1], array)
        assert geometry.agrees_with(GEOMETRY) is None
    assert not is_sitk_image(array)
    with pytest.raises(ImageReadError, match="2D image"):
        image_from_sitk(sitk.GetImageFromArray(array[0]))
    labels = np.zeros(GEOMETRY.shape, np.int16)
    labels[1, 2, 3] = 300
    for values, pixel_type in ((labels, sitk.sitkInt16), (labels.clip(0, 2), sitk.sitkUInt8)):
        result = segmentation_to_sitk(values, GEOMETRY)
        assert result.GetPixelID() == pixel_type  # the smallest type, as write_segmentation writes
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result), values)
        assert image_from_sitk(result)[1].agrees_with(GEOMETRY) is None
