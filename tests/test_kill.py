"""SIGKILL of a running `autoseg preprocess` or `autoseg predict` at several moments: no process of the
killed run lives on, and a rerun leaves the files an uninterrupted run leaves, byte for byte.

Each command runs in a session of its own, so every process it started (pool workers, multiprocessing's
resource tracker) is found in /proc by its session id. Only the command's own process is killed, as the
out-of-memory killer or `kill -9 PID` would: the others must notice and end by themselves.
(`autoseg train` is killed the same way in test_training.py.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.processes import ORPHAN_EXIT_CODE, PARENT_CHECK_INTERVAL_S
from helpers_processes import session_processes
from helpers_training import CONFIGURATION, TASK_NAME, small_task  # noqa: F401

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds a command's processes in /proc")

# Longest wait for the command to reach the moment to kill it (a loaded 2-core machine is slow).
REACH_TIMEOUT_S = 120
# Longest wait for the killed command's processes to end (they check every PARENT_CHECK_INTERVAL_S).
EXIT_TIMEOUT_S = 10
# Scheduling slack on a loaded machine, on top of PARENT_CHECK_INTERVAL_S, for a case finished by a worker
# that had not yet seen its parent's death.
LATE_WRITE_SLACK_S = 2.0
# Two cases of 8 windows each (step 1, no TTA): a window takes up to a second on a busy 2-core machine.
PREDICTED_CASES = 2


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (an unreaped zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until_ended(pids: list[int]) -> list[int]:
    """The pids still running after up to EXIT_TIMEOUT_S."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if running(pid)]


def command(home: Path, *arguments) -> list[str]:
    return [sys.executable, "-m", "autoseg.cli", "--home", str(home), *map(str, arguments)]


def run_and_kill(arguments: list[str], moment, log: Path) -> float:
    """Start `arguments`, SIGKILL its first process when `moment(run)` holds, wait until no process of its
    session is left (asserting that none outlives EXIT_TIMEOUT_S) and return the time of the kill."""
    with open(log, "w") as output:
        run = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while not moment(run):
            assert run.poll() is None, f"the command ended before the moment to kill it:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the moment to kill never came:\n{log.read_text()}"
            time.sleep(0.02)
        os.kill(run.pid, signal.SIGKILL)
        killed_at = time.time()
        run.wait()
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while session_processes(run.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not session_processes(run.pid), "processes of the killed command kept running"
    finally:
        if session_processes(run.pid):
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    return killed_at


def digests(folder: Path) -> dict[str, str]:
    """md5 of every file under `folder` by relative path, temporary files left out: a writer killed in the
    middle of a write leaves its `.NAME.PID.ID.tmp` (and `.tmp.nii.gz`), which nothing reads."""
    return {str(path.relative_to(folder)): hashlib.md5(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and not is_temporary(path)}


def is_temporary(path: Path) -> bool:
    """A file of `autoseg.artifacts.write_atomic` not yet renamed onto its name."""
    return path.name.startswith(".") and ".tmp" in path.name


# ------------------------------------------------------------------------------------ the helpers themselves

POOL_OWNER = """
import os, time
from autoseg.processes import process_pool

pool = process_pool(2)
pool.submit(os.getpid).result()  # a worker is up
busy = [pool.submit(time.sleep, 60) for _ in range(2)]
print("ready", flush=True)
time.sleep(60)
"""


def test_pool_workers_end_when_the_process_that_owns_the_pool_is_killed():
    owner = subprocess.Popen([sys.executable, "-c", POOL_OWNER], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert owner.stdout.readline() == "ready\n"
        workers = [pid for pid in session_processes(owner.pid) if pid != owner.pid]
        assert len(workers) >= 2  # the workers and multiprocessing's resource tracker
        owner.kill()
        owner.wait()
        assert wait_until_ended(workers) == []
    finally:
        if session_processes(owner.pid):
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait()


def test_a_process_told_to_watch_an_ended_process_ends_at_once():
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    watcher = subprocess.run([sys.executable, "-c", f"""
import time
from autoseg.processes import exit_when_gone
exit_when_gone({int(ended.stdout)})
time.sleep(60)
"""], timeout=EXIT_TIMEOUT_S)
    assert watcher.returncode == ORPHAN_EXIT_CODE


# A stand-in for `autoseg train --gpus N` (the launcher), torchrun's agent and a rank: torchrun starts each
# rank in a session of its own and, when a rank fails, stops the others and exits.
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
time.sleep(60)
"""
AGENT = """
import os, subprocess, sys
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getppid()), sys.argv[2]], start_new_session=True)
sys.exit(rank.wait())
"""
RANK = """
import os, sys, time
from pathlib import Path
from autoseg.processes import exit_with_torchrun
exit_with_torchrun(int(sys.argv[1]))
Path(sys.argv[2] + ".part").write_text(f"{os.getpid()} {os.getppid()}")
os.replace(sys.argv[2] + ".part", sys.argv[2])
time.sleep(60)
"""


@pytest.mark.parametrize("killed", ["launcher", "agent"])
def test_a_torchrun_rank_ends_when_its_launcher_or_agent_is_killed(tmp_path, killed):
    pid_file = tmp_path / "rank.pid"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, AGENT, RANK, str(pid_file)], start_new_session=True)
    rank = agent = None
    try:
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while not pid_file.is_file():
            assert launcher.poll() is None and time.monotonic() < deadline, "the rank never started"
            time.sleep(0.05)
        rank, agent = map(int, pid_file.read_text().split())
        os.kill(launcher.pid if killed == "launcher" else agent, signal.SIGKILL)
        # The killed launcher stays a zombie until reaped below: the rank must see it as ended all the same.
        assert wait_until_ended([rank, agent]) == []
    finally:
        for pid in (rank, agent):
            if pid is not None and running(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait()


# ------------------------------------------------------------------------------------------- preprocess


@pytest.fixture
def workspace(small_task, tmp_path) -> Path:
    """A writable copy of the small task's workspace (plans, arrays, current task)."""
    home = tmp_path / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    return home


def workers_started(run) -> bool:
    return len(session_processes(run.pid)) >= 3  # autoseg, multiprocessing's resource tracker, a worker


def first_case_done(data_folder: Path):
    return lambda run: any(data_folder.glob("*.json"))


def writing_started(folder: Path):
    """The first file has appeared in `folder` (a temporary one while it is written, then the file itself)."""
    return lambda run: folder.is_dir() and any(folder.iterdir())


@pytest.mark.parametrize("moment", ["workers starting", "mid-case", "while writing"])
def test_killed_preprocess_leaves_no_process_and_its_rerun_gives_the_same_files(workspace, small_task, tmp_path,
                                                                              moment):
    preprocessed = workspace / "preprocessed" / TASK_NAME
    data_folder = preprocessed / small_task.data_folder.name
    shutil.rmtree(data_folder)
    shutil.rmtree(preprocessed / "gt_segmentations")
    when = {"workers starting": workers_started, "mid-case": first_case_done(data_folder),
            "while writing": writing_started(data_folder)}[moment]
    arguments = command(workspace, "preprocess", "-j", "2")

    killed_at = run_and_kill(arguments, when, tmp_path / "killed.log")

    done = sorted(path.stem for path in data_folder.glob("*.json"))
    finished_late = [path.name for path in data_folder.glob("*.json")
                     if path.stat().st_mtime > killed_at + PARENT_CHECK_INTERVAL_S + LATE_WRITE_SLACK_S]
    assert finished_late == [], "workers went on writing cases after autoseg was killed"
    rerun = subprocess.run(arguments, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    cases = len(small_task.case_ids)
    assert f"{cases - len(done)} written, {len(done)} up to date, 0 failed" in rerun.stdout
    assert digests(preprocessed) == digests(small_task.preprocessed_folder)


# ---------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def model_home(small_task, tmp_path_factory) -> Path:
    """A copy of the small task's workspace with fold 0 of 3d_fullres: an untrained network saved as its final
    checkpoint (what it predicts does not matter here, only that it predicts the same each time)."""
    import torch

    from autoseg.checkpoint import identity_of_configuration, save_checkpoint
    from autoseg.network import build_network

    home = tmp_path_factory.mktemp("kill") / "workspace"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)
    torch.manual_seed(0)
    network = build_network(small_task.plans.configuration(CONFIGURATION).architecture)
    save_checkpoint({"network_weights": network.state_dict(), "optimizer_state": {}, "scaler_state": None,
                     "epoch": 1, "planned_epochs": 1, "log": {}, "best_ema": 0.0,
                     "identity": identity_of_configuration(small_task.plans, CONFIGURATION),
                     "inference": {"precision": "fp32"}},
                    home / "results" / TASK_NAME / CONFIGURATION / "fold_0" / "checkpoint_final.pt")
    return home


@pytest.fixture(scope="module")
def images(small_task, model_home) -> Path:
    """The first PREDICTED_CASES of the task's images."""
    folder = model_home.parent / "images"
    folder.mkdir()
    for image in sorted((small_task.raw_folder / "imagesTr").glob("*.nii.gz"))[:PREDICTED_CASES]:
        shutil.copy2(image, folder / image.name)
    return folder


def predict_command(home: Path, inputs: Path, output: Path) -> list[str]:
    return command(home, "predict", inputs, output, "--config", CONFIGURATION, "--device", "cpu", "--no-tta",
                   "--step-size", "1")


@pytest.fixture(scope="module")
def uninterrupted_predictions(model_home, images) -> Path:
    output = model_home.parent / "uninterrupted"
    result = subprocess.run(predict_command(model_home, images, output), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return output


def prediction_started(log: Path):
    return lambda run: "predicting with" in log.read_text()


@pytest.mark.parametrize("moment", ["first case", "while writing"])
def test_killed_predict_leaves_no_process_and_its_rerun_gives_the_same_files(model_home, images,
                                                                           uninterrupted_predictions, tmp_path, moment):
    output, log = tmp_path / "predicted", tmp_path / "killed.log"
    when = {"first case": prediction_started(log), "while writing": writing_started(output)}[moment]
    arguments = predict_command(model_home, images, output)

    run_and_kill(arguments, when, log)

    done = [path for path in output.glob("*.nii.gz") if not is_temporary(path)] if output.is_dir() else []
    rerun = subprocess.run(arguments, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{PREDICTED_CASES - len(done)} written, {len(done)} skipped, 0 failed" in rerun.stdout
    assert digests(output) == digests(uninterrupted_predictions)
