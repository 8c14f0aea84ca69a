"""DistributedDataParallel training: 2 CPU processes over gloo train one tiny epoch together.

The processes are started with torch.multiprocessing.spawn and initialise the process group themselves
(what the CLI does from torchrun's variables); the trainer picks the group up. Rank 1 is given its own
output folder so the test can see that it writes nothing; each rank reports what it saw as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoseg.training.loss import deep_supervision_loss_weights
from helpers_training import fold_folder, small_task, tiny_settings, training_job  # noqa: F401

WORLD_SIZE = 2


def _train_on_rank(rank: int, task, folder: Path) -> None:
    """One spawned process: join the group, train, report."""
    import torch.distributed as dist

    from autoseg.training.trainer import Trainer

    torch.set_num_threads(1)  # 2 processes on a 2-core machine
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        trainer = Trainer(training_job(task, folder / f"rank{rank}"), tiny_settings(seed=3, iterations_per_epoch=2))
        log = trainer.run()
        report = {
            "rank": rank,
            "batch_size_per_rank": trainer._batch_size_per_rank(),
            "batch_slot": list(trainer._batch_slot()),
            "loss_weights": list(trainer.loss.weights),
            "train_loss": log.train_loss,
            "pseudo_dice": log.pseudo_dice,
            "weights_sum": float(sum(p.double().sum() for p in trainer.model.parameters())),
            "is_ddp": type(trainer.network).__name__,
        }
        (folder / f"report_{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_run(small_task, tmp_path_factory):  # noqa: F811
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_train_on_rank, args=(small_task, folder), nprocs=WORLD_SIZE, join=True)
    reports = [json.loads((folder / f"report_{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    return folder, reports


def test_each_rank_trains_half_the_batch_with_every_head_in_the_loss(distributed_run, small_task):  # noqa: F811
    _, reports = distributed_run
    assert small_task.plans.configuration("3d_fullres").batch_size == 2
    for report in reports:
        assert report["is_ddp"] == "DistributedDataParallel"
        assert report["batch_size_per_rank"] == 1
        # Rank r holds sample r of the global batch of 2, so rank 1's is the forced-foreground one.
        assert report["batch_slot"] == [report["rank"], 1, 2]
        # 4 stages -> 3 outputs: (1, 1/2, 0) / 1.5, the 0 raised to 1e-6 so DDP sees a gradient everywhere.
        assert report["loss_weights"] == pytest.approx([2 / 3, 1 / 3, 1e-6])
    assert deep_supervision_loss_weights(3, distributed=False)[-1] == 0


def test_ranks_agree_on_losses_metrics_and_weights(distributed_run):
    _, (first, second) = distributed_run
    assert first["train_loss"] == second["train_loss"]  # all-reduced means
    assert first["pseudo_dice"] == second["pseudo_dice"]  # all-reduced tp/fp/fn
    # Same initial weights (DDP broadcasts rank 0's) and averaged gradients -> same weights after training.
    assert first["weights_sum"] == pytest.approx(second["weights_sum"], rel=1e-6)


def test_only_rank_0_writes_and_its_checkpoint_has_the_single_process_format(distributed_run, small_task,
                                                                           tmp_path):  # noqa: F811
    from autoseg.training.trainer import run_training

    folder, reports = distributed_run
    rank_0, rank_1 = fold_folder(folder / "rank0"), fold_folder(folder / "rank1")
    assert list(rank_1.iterdir()) == []
    written = {p.name for p in rank_0.iterdir()}
    assert written == {"checkpoint_best.pt", "checkpoint_latest.pt", "checkpoint_final.pt", "progress.png",
                       "training_log.txt", "plans.json"}  # plans.json: the plan the fold was trained with
    distributed = torch.load(rank_0 / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    run_training(training_job(small_task, tmp_path), tiny_settings(seed=3, iterations_per_epoch=2))
    single = torch.load(fold_folder(tmp_path) / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert set(distributed) == set(single)
    assert set(distributed["network_weights"]) == set(single["network_weights"])  # no "module." prefix
    assert distributed["identity"] == single["identity"]
    assert distributed["epoch"] == 1 and distributed["log"]["train_loss"] == reports[0]["train_loss"]
    assert len((rank_0 / "training_log.txt").read_text().splitlines()) == 1
