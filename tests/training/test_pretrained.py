"""Fine-tuning from a checkpoint: a 2-class model's weights into the 3-class small task (all but the
heads load, and it trains), another network family refused, --resume winning over --pretrained."""

from dataclasses import replace

import pytest
import torch

from autoseg.checkpoint import save_checkpoint
from autoseg.errors import CheckpointError
from autoseg.network import build_network
from autoseg.training.pretrained import load_pretrained

from helpers_training import CONFIGURATION, small_task, tiny_settings, training_job  # noqa: F401


def two_class_checkpoint(small_task, folder, **architecture_changes):  # noqa: F811
    """A checkpoint of the small task's network with 2 classes (background + one), random weights."""
    architecture = replace(small_task.plans.configuration(CONFIGURATION).architecture, num_classes=2,
                           **architecture_changes)
    torch.manual_seed(1)
    network = build_network(architecture)
    path = save_checkpoint({"network_weights": network.state_dict(), "identity": {"architecture": architecture.to_json()}},
                           folder / "two_classes.pt")
    return path, network


def test_a_two_class_model_loads_into_a_three_class_network_all_but_the_heads(small_task, tmp_path):  # noqa: F811
    path, source = two_class_checkpoint(small_task, tmp_path)
    architecture = small_task.plans.configuration(CONFIGURATION).architecture
    assert architecture.num_classes == 3
    target = build_network(architecture)
    result = load_pretrained(target, architecture, path)

    heads = sorted(name for name in target.state_dict() if name.startswith("segmentation_heads."))
    assert result.skipped == heads and len(heads) == 2 * (architecture.num_stages - 1)  # weight and bias each
    assert len(result.loaded) == len(target.state_dict()) - len(heads)
    for name in result.loaded:
        torch.testing.assert_close(target.state_dict()[name], source.state_dict()[name])
    assert f"loaded {len(result.loaded)} of {len(target.state_dict())}" in result.message()
    assert "segmentation_heads.0.weight" in result.message()


def test_another_network_family_is_refused(small_task, tmp_path):  # noqa: F811
    architecture = small_task.plans.configuration(CONFIGURATION).architecture
    path, _ = two_class_checkpoint(small_task, tmp_path, name="resenc", convs_per_stage=1,
                                   blocks_per_stage=[1] * architecture.num_stages)
    with pytest.raises(CheckpointError, match=r"needs a plain_unet checkpoint, this one holds resenc"):
        load_pretrained(build_network(architecture), architecture, path)


def test_training_from_a_pretrained_checkpoint_and_resume_wins(small_task, tmp_path):  # noqa: F811
    from autoseg.checkpoint import load_checkpoint
    from autoseg.training.job import TrainingEvents
    from autoseg.training.trainer import run_training

    path, source = two_class_checkpoint(small_task, tmp_path)
    job = replace(training_job(small_task, tmp_path / "results"), pretrained=path)
    messages = []
    log = run_training(job, tiny_settings(), TrainingEvents(on_message=messages.append))
    assert log.epoch_seconds and messages[0].startswith("pretrained: loaded")
    assert any("pretrained: loaded" in note for _, note in log.notes)
    trained = load_checkpoint(job.checkpoint_file("final"))["network_weights"]
    # One SGD step from the loaded weights: close to the source's, far from a fresh initialisation.
    first_conv = "encoder_stages.0.0.0.weight"
    change = (trained[first_conv] - source.state_dict()[first_conv]).abs().max().item()
    assert change < 0.05 * source.state_dict()[first_conv].abs().max().item()

    resumed_messages = []
    # Resuming the finished run (no further epoch: cheap) keeps its own weights and says so.
    run_training(replace(job, resume=True), tiny_settings(), TrainingEvents(on_message=resumed_messages.append))
    assert any("not loaded: resuming continues from checkpoint_latest.pt" in m for m in resumed_messages)
