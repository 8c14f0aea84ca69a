"""Training one fold of one configuration: nnU-Net's loop in small named steps.

    run_training(job, settings, events)
        set up network, optimizer, loss, data (or restore them from the latest checkpoint)
        for each epoch: train_epoch -> validate_epoch -> log -> checkpoints -> progress plot
        save the final checkpoint

What to train and how is `autoseg.training.job`; the run's history `autoseg.training.epoch_log`. The
core never prints: progress goes through `TrainingEvents` callbacks that the CLI turns into bars and
lines. With torch.distributed initialised (torchrun), the batch is split across ranks
(`autoseg.training.distributed`) and only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from autoseg.checkpoint import check_identity, identity_of_configuration, load_checkpoint, save_checkpoint
from autoseg.device import autocast_dtype, dtype_of, pick_device, precision_of
from autoseg.errors import AutosegError, CheckpointError
from autoseg.training.distributed import Ranks
from autoseg.training.epoch_log import EpochLog, dice_per_class, foreground_counts, record_epoch
from autoseg.training.job import TrainingEvents, TrainingJob, TrainingSettings
from autoseg.training.loss import loss_for_architecture
from autoseg.training.step import forward_with_loss, make_grad_scaler, make_optimizer, poly_lr, train_step

# Saving the latest checkpoint may take at most this share of the training time (automatic interval).
CHECKPOINT_TIME_SHARE = 0.03
# The measured epoch time is compared with the plan's prediction after this many epochs.
TIMING_CHECK_EPOCHS = 3


class Trainer:
    def __init__(self, job: TrainingJob, settings: TrainingSettings, events: TrainingEvents | None = None):
        import torch

        self.job, self.settings = job, settings
        self.events = events or TrainingEvents()
        self.dist = Ranks()
        self.configuration = job.plans.configuration(job.configuration_name)
        self.device = pick_device(settings.device)
        self.amp_dtype = autocast_dtype(settings.precision, self.device)
        self.precision = precision_of(self.amp_dtype)
        self.precision_checked = False
        if settings.seed is not None:
            torch.manual_seed(settings.seed + self.dist.rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.network = self._build_network()
        self.optimizer = make_optimizer(self.network.parameters(), settings.initial_lr)
        self.scaler = make_grad_scaler(self.device, self.amp_dtype)
        self.loss = loss_for_architecture(self.configuration.architecture, self.configuration.batch_dice,
                                          self.dist.active, self.configuration.loss)
        self.log = EpochLog()
        self.epoch = 0
        self.best_ema: float | None = None
        # Batches each data stream has delivered: where a resumed run continues them (exact resume).
        self.batches_drawn = {"train": 0, "validation": 0}
        self.checkpoint_every = settings.checkpoint_every
        self.identity = identity_of_configuration(job.plans, job.configuration_name)

    # ------------------------------------------------------------------------------------ set-up
    def _build_network(self):
        import torch

        from autoseg.network import build_network

        network = build_network(self.configuration.architecture).to(self.device)
        if self.settings.channels_last and self.configuration.dimension == 3:
            network = network.to(memory_format=torch.channels_last_3d)
        self.model = network  # unwrapped module: what checkpoints hold
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            return DistributedDataParallel(network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return network

    def _batch_size_per_rank(self) -> int:
        return self._batch_slot()[1]

    def _batch_slot(self) -> tuple[int, int, int]:
        """(index of this rank's first sample in the global batch, its samples, global batch size): the
        plan's batch split across ranks (nnU-Net's rule, at least one sample per rank)."""
        from autoseg.training.sampling import split_batch

        sizes = split_batch(self.configuration.batch_size, self.dist.world)
        return sum(sizes[:self.dist.rank]), sizes[self.dist.rank], sum(sizes)

    def _data_seed(self) -> int:
        """--seed, else one random seed drawn per process: unseeded runs see different batches."""
        if self.settings.seed is not None:
            return self.settings.seed
        if getattr(self, "_random_data_seed", None) is None:
            import secrets

            self._random_data_seed = secrets.randbelow(2**31)
        return self._random_data_seed

    def _previous_stage_inputs(self) -> dict:
        """A cascade stage also reads the previous stage's predictions from results/TASK (an error
        naming the folds still to train when some are missing); {} for any other configuration."""
        from autoseg.cascade import previous_stage_inputs

        return previous_stage_inputs(self.job.plans, self.job.configuration_name, self.job.results,
                                     [*self.job.train_ids, *self.job.val_ids])

    def _loaders(self):
        from autoseg.training.data import make_training_loaders

        seed = self._data_seed() + 1000 * self.dist.rank
        first_sample, batch_size, global_batch_size = self._batch_slot()
        cascade = self._previous_stage_inputs()
        return make_training_loaders(
            data_folder=self.job.data_folder, configuration=self.configuration,
            train_ids=self.job.train_ids, val_ids=self.job.val_ids,
            batch_size=batch_size, first_global_index=first_sample, global_batch_size=global_batch_size,
            num_workers=self.settings.num_workers, seed=seed, first_train_batch=self.batches_drawn["train"],
            first_validation_batch=self.batches_drawn["validation"], **cascade)

    # ------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        return {
            "network_weights": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scaler_state": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "planned_epochs": self.settings.epochs,
            "iterations_per_epoch": self.settings.iterations_per_epoch,
            "validation_iterations": self.settings.validation_iterations,
            "log": asdict(self.log),
            "best_ema": self.best_ema,
            "batches_drawn": dict(self.batches_drawn),
            "identity": self.identity,
            "inference": {"mirror_axes": list(range(self.configuration.dimension)),
                          "precision": self.precision},
            "precision_checked": self.precision_checked,
        }

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        check_identity(state, self.identity, path)
        self.model.load_state_dict(state["network_weights"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        if self.scaler and state.get("scaler_state"):
            self.scaler.load_state_dict(state["scaler_state"])
        self.epoch = int(state["epoch"])
        self.log = EpochLog(**state["log"])
        self.best_ema = self._best_ema_so_far(state.get("best_ema"))
        # Older checkpoints lack the positions: those of a run of these iterations without a precision check.
        self.batches_drawn = state.get("batches_drawn") or {
            "train": self.epoch * self.settings.iterations_per_epoch,
            "validation": self.epoch * self.settings.validation_iterations}
        if state.get("precision_checked"):  # keep the check's verdict (e.g. a fall-back to fp32)
            self.precision_checked = True
            self._set_precision(state["inference"]["precision"])
        if self.dist.is_main:
            from autoseg.training.progress import rewrite_log

            rewrite_log(self.job.log_file, self.log)
        planned = int(state.get("planned_epochs", self.settings.epochs))
        self._note(f"resumed from {path.name} at epoch {self.epoch}")
        if planned != self.settings.epochs:
            self._note(f"learning-rate schedule recomputed over {self.settings.epochs} epochs "
                       f"(was {planned}); lr now {poly_lr(self.epoch, self.settings.epochs, self.settings.initial_lr):.2e}")
        for key, what in (("iterations_per_epoch", "training iterations per epoch"),
                          ("validation_iterations", "validation iterations per epoch")):
            if key in state and int(state[key]) != getattr(self.settings, key):
                self._note(f"{what} now {getattr(self.settings, key)} (was {int(state[key])})")
        if self.epoch >= self.settings.epochs:
            self.events.on_message(f"already trained for {self.epoch} epochs; pass a larger --epochs to extend")

    def _note(self, text: str) -> None:
        """A message for the user that also belongs in the run's history (log, training_log.txt)."""
        self.log.notes.append([self.epoch, text])
        if self.dist.is_main:
            from autoseg.training.progress import append_note

            append_note(self.job.log_file, self.epoch, text)
        self.events.on_message(text)

    def _best_ema_so_far(self, restored: float | None) -> float | None:
        """The higher of the restored best EMA and the best checkpoint's: resuming from a latest checkpoint
        older than the best one must not let a worse epoch overwrite the best checkpoint."""
        best_file = self.job.checkpoint_file("best")
        if not best_file.is_file():
            return restored
        try:
            stored = load_checkpoint(best_file).get("best_ema")
        except CheckpointError:  # damaged: the next best epoch rewrites it
            return restored
        if stored is None or (restored is not None and restored >= stored):
            return restored
        return float(stored)

    def _save(self, which: str) -> float:
        """Rank 0: write the "final", "best" or "latest" checkpoint; returns the seconds it took."""
        if not self.dist.is_main:
            return 0.0
        started = time.perf_counter()
        save_checkpoint(self.state(), self.job.checkpoint_file(which))
        return time.perf_counter() - started

    # ------------------------------------------------------------------------------------ steps
    def train_step(self, batch) -> float:
        data, target = self._to_device(batch)
        return train_step(self.network, self.loss, self.optimizer, self.scaler, data, target, self.amp_dtype)

    def validation_step(self, batch) -> tuple[float, np.ndarray]:
        """(loss, [tp, fp, fn] per foreground class) on the highest-resolution output."""
        import torch

        data, target = self._to_device(batch)
        with torch.no_grad():
            outputs, loss = forward_with_loss(self.network, self.loss, data, target, self.amp_dtype)
        return float(loss), foreground_counts(outputs, target)

    def _to_device(self, batch):
        import torch

        data = torch.as_tensor(batch["data"]).to(self.device, non_blocking=True)
        target = torch.as_tensor(batch["seg"]).long().to(self.device, non_blocking=True)
        if self.settings.channels_last and data.ndim == 5:
            data = data.contiguous(memory_format=torch.channels_last_3d)
        return data, target

    # ------------------------------------------------------------------------------------ epochs
    def train_epoch(self, loader) -> tuple[float, float]:
        """(mean loss, seconds spent waiting for data)."""
        self.network.train()
        losses, waited = [], 0.0
        total = self.settings.iterations_per_epoch
        for iteration in range(total):
            started = time.perf_counter()
            batch = next(loader)
            waited += time.perf_counter() - started
            losses.append(self.train_step(batch))
            self.events.on_iteration(iteration + 1, total)
        mean = self.dist.sum(np.array([np.mean(losses)]))[0] / self.dist.world
        return float(mean), waited

    def validate_epoch(self, loader) -> tuple[float, list[float]]:
        self.network.eval()
        losses, counts = [], 0
        for _ in range(self.settings.validation_iterations):
            loss, batch_counts = self.validation_step(next(loader))
            losses.append(loss)
            counts = counts + batch_counts
        dice = dice_per_class(self.dist.sum(np.asarray(counts, dtype=np.float64)))
        mean_loss = self.dist.sum(np.array([np.mean(losses)]))[0] / self.dist.world
        return float(mean_loss), dice

    def _checkpoints_after_epoch(self, record: dict) -> None:
        if self.best_ema is None or record["ema_pseudo_dice"] > self.best_ema:
            self.best_ema = record["ema_pseudo_dice"]
            self._save("best")
        every = self.checkpoint_every or 1
        if self.epoch % every == 0:
            save_seconds = self._save("latest")
            if self.settings.checkpoint_every is None and save_seconds > 0:
                # Keep saving under CHECKPOINT_TIME_SHARE of the time spent training.
                self.checkpoint_every = max(1, math.ceil(save_seconds / (CHECKPOINT_TIME_SHARE * record["epoch_seconds"])))

    def _write_logs(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        from autoseg.training.progress import append_log_line, plot_progress

        append_log_line(self.job.log_file, record)
        plot_progress(self.log, self.job.progress_plot_file)

    def _prepare_output_folder(self) -> None:
        """Rank 0: drop half-written checkpoints of a killed save; keep a copy of the plan the run trains
        with (prediction uses it after a re-plan); a run from scratch starts a new log."""
        if not self.dist.is_main:
            return
        from autoseg.checkpoint import remove_partial_checkpoints
        from autoseg.training.progress import rewrite_log

        remove_partial_checkpoints(self.job.output_folder)
        self.job.plans.save(self.job.plans_copy_file)
        if not self.job.resume:
            rewrite_log(self.job.log_file, self.log)

    def run(self) -> EpochLog:
        import torch

        if not self.job.resume:
            self._previous_stage_inputs()  # refuse a cascade without its inputs before making its folder
        self.job.output_folder.mkdir(parents=True, exist_ok=True)
        self._prepare_output_folder()
        if self.job.resume:
            latest, final = self.job.checkpoint_file("latest"), self.job.checkpoint_file("final")
            source = latest if latest.is_file() else final
            if not source.is_file():
                raise AutosegError(f"--resume: no checkpoint in {self.job.output_folder}; train without --resume")
            self.restore(source)
            if self.job.pretrained is not None:
                self._note(f"--pretrained {self.job.pretrained} not loaded: resuming continues from {source.name}")
        elif self.job.pretrained is not None:
            from autoseg.training.pretrained import load_pretrained

            self._note(load_pretrained(self.model, self.configuration.architecture, self.job.pretrained).message())
        if self.device.type == "cpu" and self.settings.cpu_threads:
            torch.set_num_threads(self.settings.cpu_threads)
        if self.epoch < self.settings.epochs:
            train_loader, val_loader = self._loaders()
            try:
                self._epochs(train_loader, val_loader)
            finally:
                for loader in (train_loader, val_loader):
                    if hasattr(loader, "close"):
                        loader.close()
        self._save("latest")
        self._save("final")
        return self.log

    def _epochs(self, train_loader, val_loader) -> None:
        while self.epoch < self.settings.epochs:
            started = time.perf_counter()
            lr = poly_lr(self.epoch, self.settings.epochs, self.settings.initial_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            train_loss, waited = self.train_epoch(train_loader)
            val_loss, dice = self.validate_epoch(val_loader)
            self.epoch += 1
            record = record_epoch(self.log, self.epoch, train_loss, val_loss, dice, lr,
                                  time.perf_counter() - started, waited)
            if self._precision_check_due():
                self.check_mixed_precision(val_loader)
            self.batches_drawn = {"train": train_loader.next_index, "validation": val_loader.next_index}
            self._checkpoints_after_epoch(record)
            self._write_logs(record)
            self.events.on_epoch_end(record)
            self._report_timing()

    # ------------------------------------------------------------------------------------ checks
    def _set_precision(self, name: str) -> None:
        self.amp_dtype = dtype_of(name)
        self.precision = name
        if name != "fp16":
            self.scaler = None

    def _precision_check_due(self) -> bool:
        from autoseg.training.expectations import precision_check_epoch

        return (self.settings.confirm_precision and self.amp_dtype is not None and not self.precision_checked
                and self.epoch >= precision_check_epoch(self.settings.epochs))

    def check_mixed_precision(self, loader) -> tuple[float, float]:
        """Segment the same validation batches with the mixed-precision and the fp32 forward of the current
        weights (`autoseg.training.precision_check`); fall back to fp32 for the rest of training (and for
        inference) when mixed precision loses Dice. Returns (fp32 Dice, mixed Dice)."""
        from autoseg.training.precision_check import compare_precisions

        batches = (self._to_device(next(loader)) for _ in range(self.settings.validation_iterations))
        verdict = compare_precisions(self.network, batches, self.device.type, self.precision, self.amp_dtype,
                                     self.dist.sum)
        self.precision_checked = True
        if not verdict.holds:
            self._set_precision("fp32")
        self.events.on_message(verdict.message(self.epoch))
        return verdict.fp32_dice, verdict.mixed_dice

    def _report_timing(self) -> None:
        """Once, after TIMING_CHECK_EPOCHS epochs (the first one warms up workers and kernels), the
        measured epoch time against the plan's prediction."""
        from autoseg.training.expectations import timing_report

        expected = self.settings.expected_epoch_seconds
        check_at = min(TIMING_CHECK_EPOCHS, self.settings.epochs)
        if expected is None or self.epoch != check_at or len(self.log.epoch_seconds) < check_at:
            return
        seconds = self.log.epoch_seconds[-check_at:]
        measured = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
        text, _ = timing_report(f"time per epoch after {self.epoch} epoch(s)", expected, measured)
        self.events.on_message(text)


def run_training(job: TrainingJob, settings: TrainingSettings, events: TrainingEvents | None = None) -> EpochLog:
    return Trainer(job, settings, events).run()
