"""Model bundles (autoseg.bundle, autoseg.stages.bundle): exported from a trained workspace, they predict
elsewhere exactly as the workspace does, and a changed or hostile bundle is refused with one line."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg import api
from autoseg.artifacts import write_json
from autoseg.bundle import MANIFEST_NAME, read_manifest
from autoseg.cli import app
from autoseg.demo import make_demo_dataset
from autoseg.errors import BundleError, WorkspaceError
from autoseg.fingerprint import Fingerprint
from autoseg.inference.case import PredictionSettings
from autoseg.io import read_segmentation
from autoseg.planning import plan_experiment
from autoseg.stages.bundle import export_model, import_model
from autoseg.workspace import Workspace
from helpers_training import CONFIGURATION, SMALL_SPEC, TASK_NAME, small_task, trained_small_fold  # noqa: F401

# fp32: the runtime auto measures (ONNX runtimes, torch) all agree with torch fp32 to 1e-3, so predictions
# made by different runs compare equal whichever each measured fastest (bf16 ones need not).
PREDICT = ["--device", "cpu", "--no-tta", "--precision", "fp32"]


def run_cli(*args, expect_exit: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == expect_exit, f"autoseg {' '.join(map(str, args))}:\n{result.output}"
    return result


def predictions_of(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_segmentation(p)[0] for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def exported(small_task, trained_small_fold, tmp_path_factory):  # noqa: F811
    """A workspace with the trained fold 0 after find-best, its prediction of an unseen case, and
    its bundle (exported through the CLI)."""
    from autoseg.training.splits import make_splits

    folder = tmp_path_factory.mktemp("bundle")
    workspace = Workspace(folder / "original")
    shutil.copytree(small_task.reference_folder, workspace.reference_segmentations(TASK_NAME))
    shutil.copy(small_task.preprocessed_folder / "plans.json", workspace.plans_file(TASK_NAME))
    workspace.remember_task(TASK_NAME, small_task.raw_folder)
    results = workspace.task_results(TASK_NAME)
    shutil.copytree(trained_small_fold.folder, results.fold_folder(CONFIGURATION, 0))
    write_json(results.splits_file, make_splits(small_task.case_ids))
    api.find_best(folds=["0"], workers=1, home=workspace.home)
    unseen = make_demo_dataset(folder / "unseen", TASK_NAME, replace(SMALL_SPEC, cases=1, seed=123)) / "imagesTr"
    run_cli("--home", workspace.home, "predict", unseen, folder / "original_out", *PREDICT)
    bundle = folder / "model.zip"
    printed = run_cli("--home", workspace.home, "export-model", bundle).output
    assert f"{TASK_NAME}: {CONFIGURATION} folds 0" in printed and str(bundle) in printed
    return workspace, bundle, unseen, predictions_of(folder / "original_out")


def test_the_manifest_lists_every_member_with_its_checksum(exported):
    workspace, bundle, _, _ = exported
    manifest = read_manifest(bundle)
    assert manifest.task == TASK_NAME and manifest.configurations == [CONFIGURATION]
    assert manifest.folds == {CONFIGURATION: ["0"]} and manifest.schema_version == 1
    assert manifest.autoseg_version == "0.1.0" and manifest.torch_version and manifest.created.endswith("+00:00")
    results = workspace.task_results(TASK_NAME)
    originals = {"plans.json": workspace.plans_file(TASK_NAME),
                 "results/3d_fullres/fold_0/checkpoint_final.pt": results.checkpoint_file(CONFIGURATION, 0),
                 "results/3d_fullres/fold_0/plans.json": results.fold_plans_file(CONFIGURATION, 0),
                 "results/find_best.json": results.selection_file,
                 "results/find_best.txt": results.selection_table_file,
                 "results/postprocessing.json": results.postprocessing_file}
    records = {m.name: m for m in manifest.members}
    assert sorted(records) == sorted([*originals, "results/dataset.json"])
    for name, path in originals.items():
        assert records[name].size == path.stat().st_size
        assert records[name].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    with zipfile.ZipFile(bundle) as z:
        description = json.loads(z.read("results/dataset.json"))
        assert sorted(z.namelist()) == sorted([MANIFEST_NAME, *records])
    # Labels and channels travel; the case lists (patients' file names) stay home.
    assert description["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert description["modality"] == {"0": "CT"} and "training" not in description


@pytest.fixture
def original_moved_away(exported, tmp_path):
    """The bundle copied to another folder while the original workspace is renamed: nothing of it is reachable."""
    workspace, bundle, _, _ = exported
    copy = tmp_path / "elsewhere" / "model.zip"
    copy.parent.mkdir()
    shutil.copy(bundle, copy)
    moved = workspace.home.with_name("moved_away")
    workspace.home.rename(moved)
    yield copy
    moved.rename(workspace.home)


def assert_same_predictions(folder: Path, expected: dict[str, np.ndarray]) -> None:
    predicted = predictions_of(folder)
    assert sorted(predicted) == sorted(expected) == ["demo_000.nii.gz"]
    assert all(np.array_equal(predicted[name], expected[name]) for name in expected)
    assert expected["demo_000.nii.gz"].any()


def test_the_bundle_predicts_elsewhere_as_the_workspace_did(exported, original_moved_away, tmp_path):
    _, _, unseen, expected = exported
    bundle = original_moved_away
    run_cli("--home", tmp_path / "fresh", "predict", unseen, tmp_path / "out", "--model", bundle, *PREDICT)
    assert_same_predictions(tmp_path / "out", expected)
    assert not (tmp_path / "fresh").exists()  # predicting from a bundle writes no workspace
    segmenter = api.Segmenter(tmp_path / "none", model=bundle, device="cpu",
                              settings=PredictionSettings(mirror_axes=(), device="cpu", precision="fp32"))
    assert np.array_equal(segmenter.predict(unseen / "demo_000.nii.gz").segmentation, expected["demo_000.nii.gz"])


def test_an_imported_bundle_predicts_as_the_workspace_did(exported, original_moved_away, tmp_path):
    _, _, unseen, expected = exported
    run_cli("--home", tmp_path / "installed", "import-model", original_moved_away)
    run_cli("--home", tmp_path / "installed", "predict", unseen, tmp_path / "out", *PREDICT)
    assert_same_predictions(tmp_path / "out", expected)


def rewrite(bundle: Path, target: Path, *, replace_member: dict[str, bytes] | None = None,
            drop: tuple[str, ...] = (), add: list[tuple[zipfile.ZipInfo | str, bytes]] = (),
            manifest_change=None) -> Path:
    """A copy of `bundle` with members replaced, dropped or added, and the manifest edited."""
    with zipfile.ZipFile(bundle) as source, zipfile.ZipFile(target, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names some cases write
        for name in source.namelist():
            data = source.read(name)
            if name == MANIFEST_NAME and manifest_change is not None:
                manifest = json.loads(data)
                manifest_change(manifest)
                data = json.dumps(manifest).encode()
            if name not in drop:
                out.writestr(name, (replace_member or {}).get(name, data))
        for info, data in add:
            out.writestr(info, data)
    return target


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


def list_member(name: str, data: bytes):
    def change(manifest):
        manifest["members"].append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return change


PLANS = "plans.json"
TAMPERED = {
    "changed bytes": (dict(replace_member={PLANS: b'{"schema_version": 1}'}),
                      f"member {PLANS} has 21 bytes, the manifest says"),
    "changed bytes, same size": ("flip", f"member {PLANS} does not match its SHA-256 in manifest.json"),
    "extra ../evil": (dict(add=[("../evil", b"x")]), "member '../evil' is not a plain relative path"),
    "../evil listed with its checksum": (dict(add=[("../evil", b"x")], manifest_change=list_member("../evil", b"x")),
                                         "member '../evil' is not a plain relative path"),
    "absolute path": (dict(add=[("/tmp/evil", b"x")]), "member '/tmp/evil' is not a plain relative path"),
    "member not in the manifest": (dict(add=[("results/extra.json", b"{}")]),
                                   "member 'results/extra.json' is not in manifest.json"),
    "member missing": (dict(drop=(PLANS,)), f"member {PLANS} is in manifest.json but not in the bundle"),
    "symlink": (dict(drop=("results/dataset.json",), add=[(symlink_entry("results/dataset.json"), b"/etc/passwd")]),
                "member 'results/dataset.json' is a symbolic link"),
    "duplicate": (dict(add=[(PLANS, b"{}")]), f"member '{PLANS}' appears twice"),
    "not a zip": ("garbage", "not a model bundle (not a readable zip file"),
    "damaged compressed bytes": ("damage", "member results/3d_fullres/fold_0/checkpoint_final.pt "),
    "65 GiB declared": (dict(manifest_change=lambda m: m["members"][0].update(size=65 * 2**30)),
                        "members of more than 64 GiB in all"),
    "task ../x": (dict(manifest_change=lambda m: m.update(task="../x")), "manifest.json: task '../x': not a plain"),
    "configuration ../x": (dict(manifest_change=lambda m: m.update(configurations=["../x"])),
                           "manifest.json: configuration '../x': not a plain"),
    "member outside plans.json and results/": (
        dict(add=[("evil.sh", b"x")], manifest_change=list_member("evil.sh", b"x")),
        "member 'evil.sh' is neither plans.json nor under results/"),
}


@pytest.mark.parametrize("kind", list(TAMPERED))
def test_a_tampered_bundle_is_refused_with_one_line(exported, tmp_path, kind):
    _, bundle, unseen, _ = exported
    change, message = TAMPERED[kind]
    target = tmp_path / "tampered.zip"
    if change == "garbage":
        target.write_bytes(b"PK\x03\x04 not really a zip")
    elif change == "damage":  # bytes in the middle of the checkpoint's compressed stream
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
        target.write_bytes(bytes(data))
    elif change == "flip":
        with zipfile.ZipFile(bundle) as z:
            plans = z.read(PLANS)
        rewrite(bundle, target, replace_member={PLANS: plans.replace(b"3d_fullres", b"3d_fullreZ", 1)})
    else:
        rewrite(bundle, target, **change)
    for args in (["predict", unseen, tmp_path / "out", "--model", target, *PREDICT], ["import-model", target]):
        result = run_cli("--home", tmp_path / "home", *args, expect_exit=1)
        assert result.output.count("\n") == 1 and message in result.output, result.output
        assert "Traceback" not in result.output and str(target) in result.output
    with pytest.raises(BundleError, match=re.escape(message)):
        api.import_model(target, home=tmp_path / "home")
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "results").exists()
    assert [p.name for p in (tmp_path / "home").iterdir()] == []  # no staging folder left behind


def test_import_refuses_an_existing_task_and_installs_under_another_name(exported, tmp_path):
    _, bundle, _, _ = exported
    workspace = Workspace(tmp_path / "home")
    assert import_model(workspace, bundle).task == TASK_NAME
    with pytest.raises(WorkspaceError, match=f"already has a task {TASK_NAME} .*--task-name NEW"):
        import_model(workspace, bundle)
    run_cli("--home", workspace.home, "import-model", bundle, "--task-name", "Task901_Copy")
    assert workspace.current_task() == "Task901_Copy"
    copy = workspace.task_results("Task901_Copy")
    assert copy.checkpoint_file(CONFIGURATION, 0).read_bytes() == \
        workspace.task_results(TASK_NAME).checkpoint_file(CONFIGURATION, 0).read_bytes()
    assert copy.dataset_file.is_file() and workspace.plans_file("Task901_Copy").is_file()
    with pytest.raises(BundleError, match=r"task name '\.\./x': not a plain name"):
        import_model(workspace, bundle, task_name="../x")


def test_a_prediction_the_bundle_cannot_make_names_what_it_holds(exported, tmp_path):
    _, bundle, unseen, _ = exported
    holds = f"it holds {CONFIGURATION} folds 0"
    for options, message in ((["--config", "2d"], f"no configuration 2d in the bundle ({holds})"),
                             (["--folds", "3"], f"no fold 3 of {CONFIGURATION} in the bundle ({holds})"),
                             (["--checkpoint", "best"], "holds final checkpoints only"),
                             (["--task", TASK_NAME], "either a task")):
        result = run_cli("predict", unseen, tmp_path / "out", "--model", bundle, *PREDICT, *options, expect_exit=1)
        assert message in result.output and result.output.count("\n") == 1


def test_a_cascade_travels_with_its_previous_stage(tmp_path):
    """The liver plan's 3d_cascade_fullres predicts from 3d_lowres: exporting it packs both."""
    reference = Path(__file__).resolve().parents[2] / "fingerprints" / "Task03_Liver.json"
    workspace = Workspace(tmp_path / "home")
    plan_experiment(Fingerprint.load(reference)).save(workspace.plans_file("Task03_Liver"))
    results = workspace.task_results("Task03_Liver")
    for configuration, fold in (("3d_lowres", 0), ("3d_lowres", 1), ("3d_cascade_fullres", 0), ("2d", 0)):
        results.checkpoint_file(configuration, fold).parent.mkdir(parents=True)
        results.checkpoint_file(configuration, fold).write_bytes(b"weights")  # not loaded here
    manifest = export_model(workspace, tmp_path / "cascade.zip", task="Task03_Liver",
                            configurations=["3d_cascade_fullres"]).manifest
    assert manifest.configurations == ["3d_cascade_fullres"]
    assert manifest.folds == {"3d_cascade_fullres": ["0"], "3d_lowres": ["0", "1"]}
    assert sorted(m.name for m in manifest.members if m.name.endswith(".pt")) == [
        "results/3d_cascade_fullres/fold_0/checkpoint_final.pt", "results/3d_lowres/fold_0/checkpoint_final.pt",
        "results/3d_lowres/fold_1/checkpoint_final.pt"]
    description = json.loads(zipfile.ZipFile(tmp_path / "cascade.zip").read("results/dataset.json"))
    assert description["name"] == "Task03_Liver" and description["labels"] == {"0": "background", "1": "liver",
                                                                                "2": "cancer"}
    with pytest.raises(WorkspaceError, match="fold 4 of 3d_lowres not trained"):
        export_model(workspace, tmp_path / "other.zip", task="Task03_Liver", configurations=["3d_lowres"],
                     folds=["4"])


def test_export_with_onnx_packs_each_folds_network_and_checks_it_against_torch(exported, tmp_path):
    """--onnx adds results/CONFIG/fold_F/network.onnx, listed in the manifest; run by onnxruntime on a
    patch of another size than the export's (dynamic axes), its probabilities match the checkpoint's
    torch network within 1e-3, as the parity printed at export says."""
    import torch

    from autoseg.inference.model import load_trained_model
    from autoseg.network.onnx_export import max_probability_difference, onnxruntime_session
    from autoseg.planning import Plans

    workspace, _, _, _ = exported
    bundle = tmp_path / "with_onnx.zip"
    printed = run_cli("--home", workspace.home, "export-model", bundle, "--onnx").output
    member = f"results/{CONFIGURATION}/fold_0/network.onnx"
    assert member in {m.name for m in read_manifest(bundle).members}
    difference = float(re.search(r"ONNX 3d_fullres fold 0: max probability difference vs torch fp32 ([0-9.e+-]+)",
                                 printed).group(1))
    assert difference < 1e-3
    with zipfile.ZipFile(bundle) as archive:
        onnx_model = archive.read(member)
    results = workspace.task_results(TASK_NAME)
    model = load_trained_model(results, Plans.load(workspace.plans_file(TASK_NAME)), CONFIGURATION, folds=["0"],
                               device="cpu")
    patch = list(model.configuration.patch_size)
    image = torch.randn((1, 1, patch[0], patch[1] * 2, patch[2]), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model.networks[0](image)
    logits = onnxruntime_session(onnx_model).run(None, {"image": image.numpy()})[0]
    assert max_probability_difference(reference, torch.from_numpy(logits)) < 1e-3
