"""Small plans and preprocessed synthetic tasks for tests that train, predict or validate.

The planned network for even a tiny dataset is full-size (32..320 features, 5 stages): seconds per
iteration on a CPU. Tests instead shrink the plan the way a user may edit plans.json: a smaller
patch, fewer features, a topology re-derived for that patch by the planner's own rule.

    task = make_small_task(tmp_folder)            # demo data -> fingerprint -> plan -> small plan -> arrays
    job = training_job(task, results_folder, fold=0)   # writes into fold_folder(results_folder, 0)

Test modules get the task once per session with `from helpers_training import small_task` (a fixture).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoseg.demo import DemoSpec, make_demo_dataset

TASK_NAME = "Task900_Demo"
CONFIGURATION = "3d_fullres"
# 10 cases of about 24x48x48 voxels at 2x1x1 mm: the organ is a bright ellipsoid, learnable in ~100 iterations.
SMALL_SPEC = DemoSpec(cases=10, shape=(24, 48, 48), spacing=(2.0, 1.0, 1.0), test_cases=0)
SMALL_PATCH = (16, 32, 32)
SMALL_BASE_FEATURES = 8
SMALL_BATCH_SIZE = 2


def small_plans(plans, patch_size=SMALL_PATCH, base_features: int = SMALL_BASE_FEATURES,
                batch_size: int = SMALL_BATCH_SIZE, configuration_name: str = CONFIGURATION):
    """A copy of `plans` whose `configuration_name` trains a small U-Net on a small patch.

    The topology (kernel sizes, strides, stages) comes from `autoseg.planning.rules.topology_for` at the
    configuration's spacing; features double per stage from `base_features` (capped at 8x base).
    """
    from autoseg.planning.plans import Plans
    from autoseg.planning.rules import architecture_for, topology_for

    configuration = plans.configuration(configuration_name)
    topology = topology_for(configuration.spacing[-configuration.dimension:], list(patch_size),
                            configuration.dimension)
    architecture = architecture_for(topology, configuration.dimension, configuration.architecture.input_channels,
                                    configuration.architecture.num_classes)
    architecture.features_per_stage = [base_features * min(2 ** stage, 8)
                                       for stage in range(architecture.num_stages)]
    entries = copy.deepcopy(plans.to_json())
    entry = entries["configurations"][configuration_name]
    entry.update(patch_size=list(topology.patch_size), batch_size=batch_size, architecture=architecture.to_json())
    # Only the shrunk configuration stays: others may inherit from it or need arrays we do not make.
    entries["configurations"] = {configuration_name: entry}
    return Plans.from_json(entries)


@dataclass(frozen=True)
class SmallTask:
    """A preprocessed synthetic task with a small plan (read-only: copy before modifying)."""

    raw_folder: Path  # the MSD dataset
    preprocessed_folder: Path  # preprocessed/TASK (plans.json, gt_segmentations/, 3d_fullres/)
    plans: object  # autoseg.planning.plans.Plans

    @property
    def data_folder(self) -> Path:
        return self.preprocessed_folder / self.plans.configuration(CONFIGURATION).data_identifier

    @property
    def reference_folder(self) -> Path:
        return self.preprocessed_folder / "gt_segmentations"

    @property
    def case_ids(self) -> list[str]:
        from autoseg.preprocessing.store import preprocessed_case_ids

        return preprocessed_case_ids(self.data_folder)


def make_small_task(home: Path, spec: DemoSpec = SMALL_SPEC, patch_size=SMALL_PATCH,
                    base_features: int = SMALL_BASE_FEATURES) -> SmallTask:
    """Demo data in home/raw, plans and arrays in home/preprocessed/TASK (a CLI workspace layout)."""
    from autoseg.dataset import load_dataset
    from autoseg.fingerprint import load_or_extract
    from autoseg.planning import plan_experiment
    from autoseg.preprocessing.task import preprocess_task
    from autoseg.workspace import Workspace

    workspace = Workspace(Path(home))
    raw = make_demo_dataset(workspace.raw, TASK_NAME, spec)
    dataset = load_dataset(raw)
    fingerprint, _ = load_or_extract(dataset, workspace.fingerprint_file(TASK_NAME), workers=1)
    plans = small_plans(plan_experiment(fingerprint), patch_size, base_features)
    plans.save(workspace.plans_file(TASK_NAME))
    workspace.remember_task(TASK_NAME, raw)
    summaries = preprocess_task(dataset, plans, workspace, TASK_NAME, workers=0)
    failures = [f for summary in summaries.values() for f in summary.failures]
    if failures:
        raise RuntimeError(f"preprocessing the small task failed: {failures}")
    return SmallTask(raw, workspace.preprocessed(TASK_NAME), plans)


def fold_folder(results_folder: Path, fold: int | str = 0) -> Path:
    """Where a job of `training_job(task, results_folder, fold)` writes (the workspace's layout, spelled out)."""
    return Path(results_folder) / CONFIGURATION / f"fold_{fold}"


def training_job(task: SmallTask, results_folder: Path, fold: int | str = 0, resume: bool = False,
                 splits: list[dict] | None = None):
    """A TrainingJob on `task`'s fold writing into the task results `results_folder` (splits: the seeded
    5-fold KFold unless given)."""
    from autoseg.training.job import TrainingJob
    from autoseg.training.splits import fold_cases, make_splits
    from autoseg.workspace import TaskResults

    train_ids, val_ids = fold_cases(splits or make_splits(task.case_ids), fold, task.case_ids)
    return TrainingJob(task.plans, CONFIGURATION, fold, task.data_folder, TaskResults(Path(results_folder)),
                       train_ids, val_ids, resume=resume)


def tiny_settings(**overrides):
    """TrainingSettings for plumbing tests: 1 epoch of 1 iteration, in-process data, CPU, fp32."""
    from autoseg.training.job import TrainingSettings

    values = dict(epochs=1, iterations_per_epoch=1, validation_iterations=1, num_workers=0, device="cpu",
                  precision="fp32", seed=0, checkpoint_every=1)
    values.update(overrides)
    return TrainingSettings(**values)


_SESSION_TASK: list[SmallTask] = []  # made once per test session, whichever module asks first


@pytest.fixture(scope="session")
def small_task(tmp_path_factory) -> SmallTask:
    """The small preprocessed task of this session (read-only: copy before modifying)."""
    if not _SESSION_TASK:
        _SESSION_TASK.append(make_small_task(tmp_path_factory.mktemp("small_task")))
    return _SESSION_TASK[0]


# The learning run: 3 epochs x 20 iterations of batch 2 (15 s on an idle 2-core CPU, ~1.5 min loaded).
LEARNING_EPOCHS, LEARNING_ITERATIONS = 3, 20


@dataclass(frozen=True)
class TrainedFold:
    """Fold 0 of the small task trained for LEARNING_EPOCHS x LEARNING_ITERATIONS, then validated
    without TTA (read-only: copy before modifying)."""

    results_folder: Path  # the task's results (HOME/results/TASK)
    log: object  # autoseg.training.epoch_log.EpochLog
    summary: object  # autoseg.evaluation.EvaluationSummary of the fold's validation
    seconds: float  # training and validation

    @property
    def folder(self) -> Path:
        return fold_folder(self.results_folder, 0)


_SESSION_FOLD: list[TrainedFold] = []


@pytest.fixture(scope="session")
def trained_small_fold(small_task, tmp_path_factory) -> TrainedFold:
    """The small task's fold 0, trained once per test session (the tests that learn share it)."""
    import time

    from autoseg.training.trainer import run_training
    from autoseg.training.validation import validate_fold

    if not _SESSION_FOLD:
        results_folder = tmp_path_factory.mktemp("results")
        job = training_job(small_task, results_folder, fold=0)
        started = time.perf_counter()
        log = run_training(job, tiny_settings(epochs=LEARNING_EPOCHS, iterations_per_epoch=LEARNING_ITERATIONS,
                                              validation_iterations=2, checkpoint_every=None))
        summary = validate_fold(small_task.plans, CONFIGURATION, job.results, "0", small_task.data_folder,
                                small_task.reference_folder, job.val_ids, device="cpu", use_tta=False)
        _SESSION_FOLD.append(TrainedFold(results_folder, log, summary, time.perf_counter() - started))
    return _SESSION_FOLD[0]
