"""Bad input folders for `autoseg predict` (issue 12's corpus): each bad file is named and the rest are written;
an output folder that cannot be written is one line, no traceback."""

from __future__ import annotations

from test_predict import block_plans, run, trained_workspace  # noqa: F401


def test_a_folder_mixing_a_non_image_a_corrupt_and_an_empty_file_with_good_images(trained_workspace, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in (trained_workspace / "in").iterdir():
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (inputs / "empty.nii.gz").write_bytes(b"")
    output = tmp_path / "out"
    result = run(trained_workspace, str(inputs), str(output), "--no-tta")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "corrupt" in result.output and "empty" in result.output
    assert sorted(p.name for p in output.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    assert not (output / "notes.nii.gz").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(trained_workspace, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the output folder should be")
    result = run(trained_workspace, str(trained_workspace / "in"), str(blocker / "out"), "--no-tta")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "a_file" in error_lines[0]
    assert blocker.read_text() == "a file where the output folder should be"
