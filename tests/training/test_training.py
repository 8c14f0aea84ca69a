"""The trainer on a small synthetic task: it learns, it resumes, its files are what inference expects.

The task (tests/helpers_training.py): 10 CT-like cases of about 24x48x48 voxels at 2x1x1 mm, an organ
(label 1, 90 HU in 40 HU tissue, noise 15 HU) with a small lesion inside (label 2); the plan is shrunk
to a 16x32x32 patch and a 4-stage U-Net of 8..64 features, batch 2.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoseg.errors import AutosegError, CheckpointError
from autoseg.checkpoint import load_checkpoint
from autoseg.planning.plans import Plans
from autoseg.training.splits import NUM_FOLDS, SPLIT_SEED, fold_cases, load_or_create_splits, make_splits
from autoseg.training.step import INITIAL_LR, poly_lr
from autoseg.training.job import TrainingEvents
from autoseg.training.trainer import Trainer, run_training
from helpers_processes import session_processes
from helpers_training import (CONFIGURATION, LEARNING_EPOCHS, LEARNING_ITERATIONS, TASK_NAME,  # noqa: F401
                              fold_folder, small_task, tiny_settings, trained_small_fold, training_job)

CHECKPOINT_KEYS = {"format", "network_weights", "optimizer_state", "scaler_state", "epoch", "planned_epochs",
                   "iterations_per_epoch", "validation_iterations", "log",
                   "best_ema", "batches_drawn", "identity", "inference", "precision_checked"}
# Organ Dice on the 2 held-out cases, sliding window without TTA: measured 0.95 (0.97 after 80
# iterations); 0.8 leaves margin for other CPUs' arithmetic.
MIN_ORGAN_DICE = 0.8


@pytest.fixture(scope="module")
def trained_fold(trained_small_fold):
    """(fold folder, EpochLog, summary, seconds) of the session's learning run."""
    run = trained_small_fold
    return run.folder, run.log, run.summary, run.seconds


# ------------------------------------------------------------------------------------ learning
def test_short_training_segments_the_held_out_organ(trained_fold):
    _, log, summary, seconds = trained_fold
    organ_dice = summary.mean["1"]["Dice"]
    print(f"organ Dice {organ_dice:.3f} on {len(summary.per_case)} held-out cases after "
          f"{LEARNING_EPOCHS * LEARNING_ITERATIONS} iterations, {seconds:.0f} s with validation")
    assert len(summary.per_case) == 2  # 10 cases, 5 folds
    assert organ_dice > MIN_ORGAN_DICE
    # The loss really went down: Dice+CE starts near 1 + ln(3) - 1/3 for an untrained 3-class net.
    assert log.train_loss[-1] < log.train_loss[0] - 0.5
    assert log.pseudo_dice[-1][0] > 0.7  # the online (patch) validation sees the organ too: measured 0.93


def test_learning_rate_follows_the_poly_schedule(trained_fold):
    _, log, _, _ = trained_fold
    expected = [INITIAL_LR * (1 - e / LEARNING_EPOCHS) ** 0.9 for e in range(LEARNING_EPOCHS)]
    assert log.learning_rate == pytest.approx(expected)
    assert log.learning_rate[0] == INITIAL_LR and log.learning_rate[2] == pytest.approx(0.01 * (1 / 3) ** 0.9)


# ------------------------------------------------------------------------------------ artifacts
def test_fold_folder_holds_checkpoints_progress_plot_and_one_log_line_per_epoch(trained_fold):
    folder, log, _, _ = trained_fold
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt", "checkpoint_final.pt"):
        assert (folder / name).is_file(), name
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (folder / "training_log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"epoch {e}" for e in range(1, LEARNING_EPOCHS + 1)]
    assert f"train loss {log.train_loss[-1]:.4f}" in lines[-1]


@pytest.mark.parametrize("name", ["checkpoint_final.pt", "checkpoint_best.pt"])
def test_checkpoint_holds_only_plain_types(trained_fold, small_task, name):
    folder, log, _, _ = trained_fold
    # weights_only=True refuses anything but tensors and plain Python containers/numbers/strings.
    state = torch.load(folder / name, map_location="cpu", weights_only=True)
    assert set(state) == CHECKPOINT_KEYS
    assert state["format"] == 1 and state["planned_epochs"] == LEARNING_EPOCHS
    assert state["identity"]["dataset_name"] == small_task.plans.dataset_name
    assert state["identity"]["patch_size"] == [16, 32, 32]
    assert state["inference"] == {"mirror_axes": [0, 1, 2], "precision": "fp32"}
    assert all(isinstance(t, torch.Tensor) for t in state["network_weights"].values())
    if name == "checkpoint_final.pt":
        assert state["epoch"] == LEARNING_EPOCHS
        assert state["log"]["train_loss"] == log.train_loss
        assert state["best_ema"] == max(log.ema_pseudo_dice)
        assert state["batches_drawn"] == {"train": LEARNING_EPOCHS * LEARNING_ITERATIONS,
                                          "validation": LEARNING_EPOCHS * 2}
        json.dumps(state["log"])  # the history is JSON-able (NaN aside)


def test_the_fold_keeps_a_copy_of_the_plan_it_was_trained_with_for_its_checkpoints(trained_fold, small_task):
    folder, _, _, _ = trained_fold
    assert Plans.load(folder / "plans.json").to_json() == small_task.plans.to_json()


def test_best_checkpoint_is_the_epoch_of_the_highest_ema_pseudo_dice(trained_fold):
    folder, log, _, _ = trained_fold
    best = load_checkpoint(folder / "checkpoint_best.pt")
    best_epoch = int(np.argmax(log.ema_pseudo_dice)) + 1
    assert best["epoch"] == best_epoch
    assert best["best_ema"] == pytest.approx(log.ema_pseudo_dice[best_epoch - 1])


# ------------------------------------------------------------------------------------ resume
def _momentum_buffers(optimizer_state: dict) -> list[torch.Tensor]:
    return [optimizer_state["state"][i]["momentum_buffer"] for i in sorted(optimizer_state["state"])]


def test_resume_extends_a_finished_run_with_its_optimizer_state(small_task, tmp_path):
    job = training_job(small_task, tmp_path)
    folder = fold_folder(tmp_path)
    first = run_training(job, tiny_settings(epochs=1, iterations_per_epoch=2))
    saved = load_checkpoint(folder / "checkpoint_final.pt")
    assert saved["epoch"] == 1

    messages, at_resume = [], {}
    resumed_job = training_job(small_task, tmp_path, resume=True)
    trainer = Trainer(resumed_job, tiny_settings(epochs=2, iterations_per_epoch=2), None)

    def on_message(message):
        messages.append(message)
        if message.startswith("resumed"):  # restore() has just run: capture what it restored
            # Copies: the optimizer updates its buffers in place on the next step.
            at_resume["buffers"] = [b.clone() for b in _momentum_buffers(trainer.optimizer.state_dict())]
            at_resume["epoch"] = trainer.epoch
            at_resume["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer.events = TrainingEvents(on_message=on_message)
    log = trainer.run()

    assert at_resume["epoch"] == 1
    saved_buffers = _momentum_buffers(saved["optimizer_state"])
    restored_buffers = at_resume["buffers"]
    assert len(restored_buffers) == len(saved_buffers) > 0
    assert all(torch.equal(a, b) for a, b in zip(restored_buffers, saved_buffers))
    assert any(b.abs().sum() > 0 for b in restored_buffers)  # a real state, not fresh zeros
    assert all(torch.equal(at_resume["weights"][k], v) for k, v in saved["network_weights"].items())
    assert messages[0] == "resumed from checkpoint_latest.pt at epoch 1"
    # Epoch 2 of 2 starts at 0.01 * (1 - 1/2)^0.9 = 5.36e-3.
    assert messages[1] == "learning-rate schedule recomputed over 2 epochs (was 1); lr now 5.36e-03"
    assert len(log.train_loss) == 2 and log.train_loss[:1] == first.train_loss
    assert log.learning_rate == pytest.approx([INITIAL_LR, poly_lr(1, 2, INITIAL_LR)])
    final = load_checkpoint(folder / "checkpoint_final.pt")
    assert final["epoch"] == 2 and final["planned_epochs"] == 2
    # The log file says what happened between epochs 1 and 2, and the checkpoint keeps it.
    lines = (folder / "training_log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "note after epoch 1", "note after epoch 1",
                                                      "epoch 2"]
    assert lines[1] == "note after epoch 1: resumed from checkpoint_latest.pt at epoch 1"
    assert lines[2] == "note after epoch 1: " + messages[1]
    assert final["log"]["notes"] == [[1, messages[0]], [1, messages[1]]]


def test_resume_of_a_run_already_at_its_epochs_trains_nothing_more(small_task, tmp_path):
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=1))
    messages = []
    log = run_training(training_job(small_task, tmp_path, resume=True), tiny_settings(epochs=1),
                       TrainingEvents(on_message=messages.append))
    assert len(log.train_loss) == 1
    assert messages[-1] == "already trained for 1 epochs; pass a larger --epochs to extend"


class _Killed(Exception):
    pass


def _kill_after(epoch: int):
    def on_epoch_end(record):
        if record["epoch"] == epoch:
            raise _Killed()

    return TrainingEvents(on_epoch_end=on_epoch_end)


def test_a_run_killed_after_its_first_epoch_leaves_a_loadable_latest_checkpoint(small_task, tmp_path):
    folder = fold_folder(tmp_path)
    # Default (automatic) checkpoint interval: the first epoch always saves checkpoint_latest.
    with pytest.raises(_Killed):
        run_training(training_job(small_task, tmp_path), tiny_settings(epochs=2, checkpoint_every=None),
                     _kill_after(1))
    assert not (folder / "checkpoint_final.pt").exists()
    latest = load_checkpoint(folder / "checkpoint_latest.pt")
    assert latest["epoch"] == 1 and len(latest["log"]["train_loss"]) == 1
    messages = []
    log = run_training(training_job(small_task, tmp_path, resume=True), tiny_settings(epochs=2),
                       TrainingEvents(on_message=messages.append))
    assert messages == ["resumed from checkpoint_latest.pt at epoch 1"]  # same plan: no schedule change
    assert len(log.train_loss) == 2 and log.train_loss[0] == latest["log"]["train_loss"][0]
    assert load_checkpoint(folder / "checkpoint_final.pt")["epoch"] == 2


def test_resume_from_an_older_checkpoint_rewrites_the_log_to_match_it(small_task, tmp_path):
    folder = fold_folder(tmp_path)
    # Checkpoints every 2 epochs, killed after epoch 3 (before the final checkpoint): checkpoint_latest
    # holds epoch 2, the log 3 lines.
    with pytest.raises(_Killed):
        run_training(training_job(small_task, tmp_path), tiny_settings(epochs=3, checkpoint_every=2),
                     _kill_after(3))
    assert load_checkpoint(folder / "checkpoint_latest.pt")["epoch"] == 2
    assert len((folder / "training_log.txt").read_text().splitlines()) == 3
    run_training(training_job(small_task, tmp_path, resume=True), tiny_settings(epochs=3, checkpoint_every=2))
    lines = (folder / "training_log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "note after epoch 2", "epoch 3"]
    assert lines[2] == "note after epoch 2: resumed from checkpoint_latest.pt at epoch 2"
    # Resumed again from the final checkpoint: the earlier note survives the rewrite, the new one follows.
    run_training(training_job(small_task, tmp_path, resume=True), tiny_settings(epochs=4, checkpoint_every=2))
    lines = (folder / "training_log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "note after epoch 2", "epoch 3",
                                                      "note after epoch 3", "note after epoch 3", "epoch 4"]


def test_resume_from_a_latest_checkpoint_older_than_the_best_keeps_the_best_score(small_task, tmp_path):
    from autoseg.checkpoint import save_checkpoint

    folder = fold_folder(tmp_path)
    with pytest.raises(_Killed):
        run_training(training_job(small_task, tmp_path), tiny_settings(epochs=3, checkpoint_every=2),
                     _kill_after(3))
    # Make the best checkpoint the best there could be (as if epoch 3 had reached EMA 1.0).
    best = load_checkpoint(folder / "checkpoint_best.pt")
    save_checkpoint({**best, "best_ema": 1.0}, folder / "checkpoint_best.pt")
    assert load_checkpoint(folder / "checkpoint_latest.pt")["best_ema"] < 1.0
    trainer = Trainer(training_job(small_task, tmp_path, resume=True), tiny_settings(epochs=4))
    trainer.restore(folder / "checkpoint_latest.pt")
    assert trainer.best_ema == 1.0
    trainer.run()  # no later epoch beats 1.0, so checkpoint_best.pt is left as it was
    assert load_checkpoint(folder / "checkpoint_best.pt")["best_ema"] == 1.0


# ------------------------------------------------------------------------------------ exact resume
# 3 short epochs with the automatic checkpoint interval (checkpoint_latest after epoch 1, then every N).
EXACT_RESUME_SETTINGS = dict(epochs=3, iterations_per_epoch=2, validation_iterations=1, seed=7,
                             checkpoint_every=None)
LOGGED_CURVES = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "learning_rate")


def _assert_same_run(log: dict, weights: dict, reference_log: dict, reference_weights: dict) -> None:
    """Bit-identical: every logged curve (NaN equal to NaN) and every tensor of the final weights."""
    for name in LOGGED_CURVES:
        np.testing.assert_array_equal(np.asarray(log[name], dtype=np.float64),
                                      np.asarray(reference_log[name], dtype=np.float64), err_msg=name)
    assert weights.keys() == reference_weights.keys()
    differing = [key for key in weights if not torch.equal(weights[key], reference_weights[key])]
    assert not differing, f"final weights differ from the uninterrupted run's: {differing[:5]}"


@pytest.fixture(scope="module")
def uninterrupted_seeded_run(small_task, tmp_path_factory) -> dict:
    """The final checkpoint of a seeded run of EXACT_RESUME_SETTINGS, never interrupted (in-process data)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    run_training(training_job(small_task, folder), tiny_settings(**EXACT_RESUME_SETTINGS))
    return load_checkpoint(fold_folder(folder) / "checkpoint_final.pt")


def test_a_seeded_run_killed_after_its_first_epoch_resumes_to_the_uninterrupted_run(small_task, tmp_path,
                                                                                   uninterrupted_seeded_run):
    """The data streams continue where the checkpoint left them, with any number of workers (the
    reference ran in-process, this run with 2 workers)."""
    settings = tiny_settings(**EXACT_RESUME_SETTINGS, num_workers=2)
    with pytest.raises(_Killed):
        run_training(training_job(small_task, tmp_path), settings, _kill_after(1))
    trainer = Trainer(training_job(small_task, tmp_path, resume=True), settings)
    torch_random_state = torch.get_rng_state()
    log = trainer.run()
    # Training draws nothing from torch's random state (no dropout), so checkpoints need not hold it.
    assert torch.equal(torch.get_rng_state(), torch_random_state)
    reference = uninterrupted_seeded_run
    _assert_same_run(asdict(log), trainer.model.state_dict(), reference["log"], reference["network_weights"])
    final = load_checkpoint(fold_folder(tmp_path) / "checkpoint_final.pt")
    assert final["batches_drawn"] == reference["batches_drawn"] == {"train": 6, "validation": 3}


def test_the_precision_checks_validation_batches_count_in_the_checkpointed_stream_position(small_task, tmp_path):
    """The mixed-precision check after epoch 1 draws validation_iterations more validation batches: a run
    resumed after it must continue the validation stream after those too."""
    run_training(training_job(small_task, tmp_path), tiny_settings(precision="bf16", confirm_precision=True))
    state = load_checkpoint(fold_folder(tmp_path) / "checkpoint_latest.pt")
    assert state["precision_checked"] and state["epoch"] == 1
    assert state["batches_drawn"] == {"train": 1, "validation": 2}


@pytest.mark.parametrize("keep", [0, 100, 0.5, -50])
def test_truncated_checkpoint_raises_checkpoint_error(trained_fold, tmp_path, keep):
    source = (trained_fold[0] / "checkpoint_final.pt").read_bytes()
    size = int(len(source) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(source) + keep)
    damaged = tmp_path / "checkpoint_latest.pt"
    damaged.write_bytes(source[:size])
    with pytest.raises(CheckpointError, match="damaged or truncated checkpoint") as error:
        load_checkpoint(damaged)
    assert str(damaged) in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_of_another_plan_is_refused(trained_small_fold, small_task):
    from helpers_training import small_plans

    other = small_plans(small_task.plans, base_features=4)  # same task, a narrower network
    job = training_job(small_task, trained_small_fold.results_folder, resume=True)
    job.plans = other
    with pytest.raises(CheckpointError, match="different plan \\(architecture differs\\)"):
        Trainer(job, tiny_settings(epochs=8)).run()


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture
def workspace(small_task, tmp_path) -> Path:
    """A writable copy of the small task's workspace (plans, arrays, current task)."""
    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    return home


def test_cli_resume_from_truncated_checkpoint_is_a_one_line_error(workspace, trained_fold):
    from autoseg.cli import app

    fold_folder = workspace / "results" / TASK_NAME / CONFIGURATION / "fold_0"
    fold_folder.mkdir(parents=True)
    source = (trained_fold[0] / "checkpoint_final.pt").read_bytes()
    (fold_folder / "checkpoint_latest.pt").write_bytes(source[: len(source) // 2])
    result = CliRunner().invoke(app, ["--home", str(workspace), "train", CONFIGURATION, "--fold", "0", "--resume",
                                      "--epochs", "2", "--iterations", "1", "--val-iterations", "1",
                                      "--workers", "0", "--device", "cpu", "--no-validate"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "checkpoint_latest.pt: damaged or truncated checkpoint" in errors[0]


# ------------------------------------------------------------------------------------ seeds, workers
def test_same_seed_gives_identical_cpu_runs_and_another_seed_does_not(small_task, tmp_path):
    def losses(seed, folder):
        log = run_training(training_job(small_task, tmp_path / folder), tiny_settings(seed=seed, iterations_per_epoch=2))
        weights = load_checkpoint(fold_folder(tmp_path / folder) / "checkpoint_final.pt")["network_weights"]
        return log.train_loss + log.val_loss, weights

    first, first_weights = losses(7, "a")
    second, second_weights = losses(7, "b")
    other, _ = losses(8, "c")
    assert first == second
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert other != first


def test_background_workers_feed_an_epoch_reproducibly(small_task, tmp_path):
    logs = [run_training(training_job(small_task, tmp_path / run), tiny_settings(num_workers=2, iterations_per_epoch=2))
            for run in ("a", "b")]
    log = logs[0]
    assert len(log.train_loss) == 1 and math.isfinite(log.train_loss[0])
    assert log.data_wait_seconds[0] >= 0
    assert (fold_folder(tmp_path / "a") / "checkpoint_final.pt").is_file()
    # With a seed, the batches from 2 workers depend only on the seed: same losses twice.
    assert logs[1].train_loss == log.train_loss and logs[1].val_loss == log.val_loss


# ------------------------------------------------------------------------------------ splits
def _ids(n: int) -> list[str]:
    return [f"case_{i:02d}" for i in range(n)]


def test_splits_are_a_seeded_five_fold_kfold_over_sorted_ids():
    from sklearn.model_selection import KFold

    ids = _ids(12)
    splits = make_splits(list(reversed(ids)))  # input order does not matter
    assert len(splits) == NUM_FOLDS == 5
    expected = KFold(n_splits=5, shuffle=True, random_state=SPLIT_SEED).split(ids)
    for split, (train, val) in zip(splits, expected):
        assert split == {"train": [ids[i] for i in train], "val": [ids[i] for i in val]}
    validated = sorted(case for split in splits for case in split["val"])
    assert validated == ids  # every case validated exactly once
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]
    assert all(not set(s["train"]) & set(s["val"]) for s in splits)


def test_fewer_cases_than_folds_gives_one_fold_per_case_and_one_case_is_refused():
    assert [len(s["val"]) for s in make_splits(_ids(3))] == [1, 1, 1]
    with pytest.raises(AutosegError, match="at least 2 cases"):
        make_splits(_ids(1))


def test_splits_file_is_written_once_and_reused(tmp_path):
    path = tmp_path / "splits.json"
    created = load_or_create_splits(path, _ids(10))
    assert json.loads(path.read_text()) == created
    # Later calls read the file (a new case list does not reshuffle existing folds).
    assert load_or_create_splits(path, list(reversed(_ids(10))) + ["case_10"]) == created


def test_user_edited_splits_are_respected(tmp_path):
    path = tmp_path / "splits.json"
    edited = [{"train": ["case_00", "case_01"], "val": ["case_02"]}, {"train": ["case_02"], "val": ["case_00"]}]
    path.write_text(json.dumps(edited))
    splits = load_or_create_splits(path, _ids(4))
    assert splits == edited
    assert fold_cases(splits, 1, _ids(4)) == (["case_02"], ["case_00"])
    with pytest.raises(AutosegError, match="fold 2 does not exist: splits.json has folds 0..1"):
        fold_cases(splits, 2, _ids(4))


def test_splits_naming_unknown_cases_are_refused(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([{"train": ["case_00", "gone_07"], "val": ["case_01"]}]))
    with pytest.raises(AutosegError, match=r"fold 0 names unknown cases \['gone_07'\]"):
        load_or_create_splits(path, _ids(2))


def test_fold_all_trains_and_validates_on_every_case():
    ids = _ids(4)
    assert fold_cases(make_splits(ids), "all", list(reversed(ids))) == (ids, ids)
    assert fold_cases(make_splits(ids), "2", ids) == tuple(make_splits(ids)[2].values())


# ------------------------------------------------------------------------------------ optimisation step
def _gradient_norm(module) -> float:
    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in module.parameters() if p.grad is not None)))


@pytest.mark.parametrize("loss_scale, clipped", [(1e6, True), (1e-6, False)])
def test_gradients_are_clipped_to_norm_12(small_task, tmp_path, loss_scale, clipped):
    from autoseg.training.step import GRAD_CLIP_NORM, MOMENTUM, WEIGHT_DECAY

    trainer = Trainer(training_job(small_task, tmp_path), tiny_settings())
    assert GRAD_CLIP_NORM == 12.0
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, MOMENTUM, True,
                                                                                         WEIGHT_DECAY)
    assert (MOMENTUM, WEIGHT_DECAY) == (0.99, 3e-5)
    base_loss = trainer.loss
    trainer.loss = lambda outputs, target: loss_scale * base_loss(outputs, target)
    train_loader, val_loader = trainer._loaders()
    trainer.network.train()
    trainer.train_step(next(train_loader))
    norm = _gradient_norm(trainer.model)  # the gradients the optimizer stepped with
    if clipped:  # a loss a million times larger: its gradient is scaled back to norm 12 exactly
        assert norm == pytest.approx(12.0, rel=1e-4)
    else:  # a tiny gradient is left as it is
        assert 0 < norm < 1e-3


# ------------------------------------------------------------------------------------ devices
def test_device_choice_and_mixed_precision_per_device():
    from autoseg.device import autocast_dtype, pick_device

    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        for name in ("cuda", "cuda:1"):
            with pytest.raises(AutosegError, match=f"--device {name}: no CUDA GPU is visible"):
                pick_device(name)
    for name in ("gpu", "cpu:1", "cuda:x"):
        with pytest.raises(AutosegError, match="expected auto, cuda, cuda:N, cpu or mps"):
            pick_device(name)
    assert pick_device("cpu") == torch.device("cpu")
    # auto: fp16 AMP (with GradScaler) on CUDA, bf16 on a CPU with hardware bf16, fp32 elsewhere.
    assert autocast_dtype("auto", torch.device("cuda")) == torch.float16
    assert autocast_dtype("auto", torch.device("cpu"), cpu_bf16=False) is None
    assert autocast_dtype("auto", torch.device("cpu"), cpu_bf16=True) == torch.bfloat16
    assert autocast_dtype("auto", torch.device("mps")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_unseeded_runs_draw_their_own_data_seed_and_seeded_runs_keep_theirs(small_task, tmp_path):
    job = training_job(small_task, tmp_path)
    unseeded = [Trainer(job, tiny_settings(seed=None)) for _ in range(2)]
    assert unseeded[0]._data_seed() == unseeded[0]._data_seed()  # stable within a run
    assert unseeded[0]._data_seed() != unseeded[1]._data_seed()
    assert Trainer(job, tiny_settings(seed=5))._data_seed() == 5


# ------------------------------------------------------------------------------------ output folder
def test_end_of_training_validation_writes_segmentations_probabilities_and_summary(trained_fold):
    folder, _, summary, _ = trained_fold
    validation = folder / "validation"
    val_ids = json.loads((validation / "validation_info.json").read_text())["cases"]
    assert len(val_ids) == 2
    for case_id in val_ids:
        assert (validation / f"{case_id}.nii.gz").is_file()  # segmentation, in the original geometry
        with np.load(validation / f"{case_id}.npz") as stored:  # probabilities, for ensembling
            probabilities = stored["probabilities"]
        assert probabilities.shape[0] == 3  # background, organ, lesion
        assert np.allclose(probabilities.astype(np.float32).sum(0), 1, atol=1e-2)
    saved = json.loads((validation / "summary.json").read_text())
    assert saved and (validation / "summary.csv").is_file()
    assert summary.mean["1"]["Dice"] > MIN_ORGAN_DICE


def test_a_fresh_run_starts_a_new_log_and_removes_half_written_checkpoints(small_task, tmp_path):
    folder = fold_folder(tmp_path)
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=1))
    partial = folder / ".checkpoint_latest.pt.k3j2.tmp"  # a save killed before its rename
    partial.write_bytes(b"\0" * 100)
    run_training(training_job(small_task, tmp_path), tiny_settings(epochs=1))
    assert not partial.exists()
    lines = (folder / "training_log.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1"]


@pytest.mark.parametrize("epoch_seconds, expected_every", [(10.0, 4), (100.0, 1)])
def test_automatic_checkpoint_interval_keeps_saving_under_3_percent(small_task, tmp_path, epoch_seconds,
                                                                    expected_every):
    """Saving checkpoint_latest takes 1 s: after a 10 s epoch it is saved every ceil(1 / 0.3) = 4 epochs,
    after a 100 s epoch every epoch (1 % of the time)."""
    trainer = Trainer(training_job(small_task, tmp_path), tiny_settings(checkpoint_every=None))
    saved = []

    def fake_save(which):
        saved.append((trainer.epoch, which))
        return 1.0 if which == "latest" else 0.0

    trainer._save = fake_save
    for epoch in range(1, 10):
        trainer.epoch = epoch
        trainer._checkpoints_after_epoch({"ema_pseudo_dice": 0.1 * epoch, "epoch_seconds": epoch_seconds})
    latest = [epoch for epoch, which in saved if which == "latest"]
    assert trainer.checkpoint_every == expected_every
    assert latest == [1] + list(range(expected_every, 10, expected_every))[expected_every == 1:]
    assert [epoch for epoch, which in saved if which == "best"] == list(range(1, 10))  # EMA rose


def _sigkill_during_second_epoch(arguments: list[str], fold: Path) -> None:
    """Start `arguments` (an `autoseg train` command line), SIGKILL the trainer alone somewhere in its
    second epoch (training, validating or saving), and assert that no data worker outlives it."""
    import os
    import signal
    import subprocess

    run = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        log = fold / "training_log.txt"
        while time.monotonic() < deadline and run.poll() is None:
            if log.is_file() and log.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert run.poll() is None, "training ended before it could be killed"
        time.sleep(0.3)  # somewhere in epoch 2: training, validating or saving
        os.kill(run.pid, signal.SIGKILL)  # the trainer alone: its workers must notice and exit
        run.wait()
        deadline = time.monotonic() + 15
        while session_processes(run.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not session_processes(run.pid), "data workers outlived the killed trainer"
    finally:
        if session_processes(run.pid):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()


def _train_command(home: Path, *options: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "autoseg.cli", "--home", str(home), "train", CONFIGURATION, "--fold", "0",
            "--epochs", "3", "--device", "cpu", "--no-validate", *options]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigkill_at_any_moment_then_resume_finishes_the_run(workspace):
    """A real SIGKILL of `autoseg train` (workers included) during its second epoch: the checkpoints left
    load, no data worker outlives it, and --resume finishes the run with one log line per epoch."""
    import subprocess

    fold = workspace / "results" / TASK_NAME / CONFIGURATION / "fold_0"
    arguments = _train_command(workspace, "--iterations", "3", "--val-iterations", "1", "--workers", "2",
                               "--seed", "0", "--checkpoint-every", "1")
    _sigkill_during_second_epoch(arguments, fold)
    latest = load_checkpoint(fold / "checkpoint_latest.pt")
    assert latest["epoch"] in (1, 2)
    result = subprocess.run(arguments + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resumed from checkpoint_latest.pt at epoch {latest['epoch']}" in result.stdout
    assert not list(fold.glob(".*.tmp"))
    lines = [line for line in (fold / "training_log.txt").read_text().splitlines() if line.startswith("epoch")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert load_checkpoint(fold / "checkpoint_final.pt")["epoch"] == 3


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_seeded_run_sigkilled_in_its_second_epoch_resumes_to_the_uninterrupted_run(workspace, tmp_path):
    """`autoseg train --seed` with the automatic checkpoint interval, SIGKILLed mid-epoch 2 and resumed
    (redoing what the killed run had done after its last checkpoint), ends bit-identical to the same
    command never interrupted: final weights and every logged curve."""
    import subprocess

    reference_home = tmp_path / "reference"
    shutil.copytree(workspace, reference_home)
    options = ("--iterations", "2", "--val-iterations", "1", "--workers", "2", "--seed", "7")
    subprocess.run(_train_command(reference_home, *options), capture_output=True, text=True, timeout=300, check=True)
    fold = workspace / "results" / TASK_NAME / CONFIGURATION / "fold_0"
    arguments = _train_command(workspace, *options)
    _sigkill_during_second_epoch(arguments, fold)
    result = subprocess.run(arguments + ["--resume"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "resumed from checkpoint_latest.pt at epoch" in result.stdout
    final = load_checkpoint(fold / "checkpoint_final.pt")
    reference = load_checkpoint(reference_home / "results" / TASK_NAME / CONFIGURATION / "fold_0"
                                / "checkpoint_final.pt")
    _assert_same_run(final["log"], final["network_weights"], reference["log"], reference["network_weights"])


def test_progress_plot_and_log_lines_hold_every_curve(tmp_path):
    import warnings

    from autoseg.training.progress import format_epoch, plot_progress, rewrite_log
    from autoseg.training.epoch_log import EpochLog

    log = EpochLog(train_loss=[1.2, 0.8], val_loss=[1.0, 0.7], pseudo_dice=[[float("nan"), float("nan")], [0.5, 0.25]],
                   ema_pseudo_dice=[0.0, 0.0375], learning_rate=[0.01, 0.005], epoch_seconds=[3.0, 2.5],
                   data_wait_seconds=[0.5, 0.1], notes=[[1, "resumed from checkpoint_latest.pt at epoch 1"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an epoch without any label seen is a gap, not a warning
        plot_progress(log, tmp_path / "progress.png")
    assert (tmp_path / "progress.png").read_bytes()[:4] == b"\x89PNG"
    rewrite_log(tmp_path / "training_log.txt", log)
    assert (tmp_path / "training_log.txt").read_text().splitlines() == [
        "epoch 1: train loss 1.2000, val loss 1.0000, pseudo Dice [nan, nan] (EMA 0.000), lr 1.00e-02, "
        "3.0 s (0.5 s waiting for data)",
        "note after epoch 1: resumed from checkpoint_latest.pt at epoch 1",
        "epoch 2: train loss 0.8000, val loss 0.7000, pseudo Dice [0.500, 0.250] (EMA 0.037), lr 5.00e-03, "
        "2.5 s (0.1 s waiting for data)",
    ]
    assert format_epoch({"epoch": 2, **{k: v[1] for k, v in vars(log).items() if k != "notes"}}).startswith("epoch 2")


def test_a_job_writes_into_its_fold_of_the_task_results(tmp_path):
    from autoseg.training.job import TrainingJob
    from autoseg.workspace import TaskResults

    job = TrainingJob(None, CONFIGURATION, 2, tmp_path / "data", TaskResults(tmp_path / "results"), [], [])
    folder = tmp_path / "results" / CONFIGURATION / "fold_2"
    assert job.output_folder == folder
    assert [job.checkpoint_file(which) for which in ("final", "best", "latest")] == [
        folder / "checkpoint_final.pt", folder / "checkpoint_best.pt", folder / "checkpoint_latest.pt"]
    assert (job.log_file, job.progress_plot_file) == (folder / "training_log.txt", folder / "progress.png")


def test_epoch_records_keep_the_moving_average_of_the_pseudo_dice():
    from autoseg.training.epoch_log import EMA_DECAY, EpochLog, dice_per_class, record_epoch

    dice = dice_per_class(np.array([[8, 2, 2], [0, 0, 0]], dtype=np.float64))  # class 2 seen nowhere
    assert dice[0] == pytest.approx(0.8) and math.isnan(dice[1])
    log = EpochLog()
    first = record_epoch(log, 1, 1.0, 0.9, dice, 0.01, 2.0, 0.5)
    second = record_epoch(log, 2, 0.8, 0.7, [0.4, float("nan")], 0.005, 1.5, 0.25)
    assert first["ema_pseudo_dice"] == pytest.approx(0.8)  # the first epoch starts the average
    assert second["ema_pseudo_dice"] == pytest.approx(EMA_DECAY * 0.8 + (1 - EMA_DECAY) * 0.4)
    assert (second["epoch"], log.train_loss, log.learning_rate) == (2, [1.0, 0.8], [0.01, 0.005])
