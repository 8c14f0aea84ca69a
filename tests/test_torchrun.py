"""Training across machines: `autoseg train --nnodes 2 --node-rank R --master-addr A --master-port P`, run
here as two "machines" on one (two launches, one CPU process each, over gloo) sharing one workspace.

Each launch is the real command line (launcher -> torchrun agent -> rank), so this costs six Python
starts with torch: kept to one epoch of one iteration, without validation.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.hardware import usable_cpus
from autoseg.torchrun import Nodes
from helpers_training import CONFIGURATION, small_task  # noqa: F401 - a fixture

REPOSITORY = Path(__file__).resolve().parents[1]


def test_one_machine_is_standalone_and_several_need_node_0s_address():
    assert Nodes().torchrun_arguments() == ["--standalone"]
    assert Nodes(2, 1, "10.0.0.5", 29600).torchrun_arguments() == [
        "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.5", "--master-port=29600"]
    with pytest.raises(AutosegError, match="--nnodes 2: give --master-addr"):
        Nodes(2, 1).torchrun_arguments()
    with pytest.raises(AutosegError, match="--node-rank 2: expected 0 .. 1"):
        Nodes(2, 2, "10.0.0.5").torchrun_arguments()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_train_one_fold_into_one_shared_workspace(small_task, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    shutil.copytree(small_task.preprocessed_folder.parent.parent, home)  # raw/, preprocessed/, current_task.json
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "autoseg.cli", "--home", str(home), "train", CONFIGURATION,
                               "--epochs", "1", "--iterations", "1", "--val-iterations", "1", "--workers", "0",
                               "--device", "cpu", "--no-validate", "--nnodes", "2", "--node-rank", str(rank),
                               "--master-addr", "127.0.0.1", "--master-port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
             for rank in (0, 1)]
    outputs = []
    for node in nodes:
        try:
            # Beyond torchrun's exit barrier (300 s): once in a dozen full suites node 0 had trained and written
            # its checkpoint, then did not exit within 300 s; past the barrier's timeout its agent exits anyway.
            outputs.append(node.communicate(timeout=420)[0])
        finally:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], outputs
    node_0, node_1 = outputs
    # One group of two processes; each node's threads are its own CPUs' (one process per node here).
    assert f"2 processes, {usable_cpus()} CPU thread(s) per process" in node_0
    assert "checkpoints and progress.png in" in node_0 and "training " not in node_1
    results = home / "results" / small_task.plans.dataset_name
    assert [p.relative_to(results).as_posix() for p in results.rglob("checkpoint_final.pt")] == [
        f"{CONFIGURATION}/fold_0/checkpoint_final.pt"]
    fold = results / CONFIGURATION / "fold_0"
    assert len((fold / "training_log.txt").read_text().splitlines()) == 1  # one epoch, logged once
    checkpoint = torch.load(fold / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1 and (results / "splits.json").is_file()
