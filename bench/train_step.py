"""Training speed of a plan's configuration: seconds per iteration, samples/s, data wait vs compute, peak memory.

For the plan of a fingerprint (`autoseg plan --fingerprint`), on a synthetic preprocessed store of the
plan's patch (bench/data_loading.py `build_store`, a brighter cube to learn), the real training step
(`autoseg.training.trainer.Trainer.train_step`: deep-supervised Dice+CE, SGD, gradient clipping) is
timed for each precision variant (bench/precision.py `VARIANTS`: fp32, bf16 autocast, channels_last_3d,
both; on CUDA also fp16 AMP), interleaved round-robin from the same initial weights and the same batches,
so ratios against fp32 come from the same run and the same load. Each iteration is split into the time
spent waiting for the batch and the compute. Memory: per variant the resident-set high-water during its
steps above the level before them (/proc/self/statm, sampled; freed heap returned with malloc_trim),
the process's ru_maxrss, and torch.cuda.max_memory_allocated on CUDA.

Accuracy, so that a faster precision is kept only when it holds it:
  * the loss trajectories of the timed steps (identical batches and initial weights per variant);
  * the Dice after 30 SGD steps on a fixed sphere batch (bench/precision.py `dice_after_training`);
  * without --quick, also a short real training (3 x 20 iterations) on the synthetic demo task of the
    tests (tests/helpers_training.py) for fp32 and each faster variant, scored by sliding-window Dice on
    its held-out cases.
A variant is "kept" when it is faster than fp32 and its Dice is within
`autoseg.training.expectations.PRECISION_DICE_TOLERANCE` of fp32's.

Do the background workers keep the network fed? The kept variant is run with --workers 0 (batches made
in this process: the wait is the whole data pipeline) and with each of --workers (default 2) background
processes, reporting the share of each iteration spent waiting for data.

    .venv/bin/python bench/train_step.py --fingerprint fingerprints/Task04_Hippocampus.json --quick
    .venv/bin/python bench/train_step.py --fingerprint fingerprints/Task03_Liver.json --config 3d_fullres

--quick: batch 2 instead of the plan's, 3 timed iterations per variant after 1 warm-up, 3 per worker
setting, no demo-task training (about 1.5 minutes on 2 idle cores for Task04's plan, 3.5 on a loaded one).
The demo-task training runs for fp32 and the variants faster than it (--demo-training to add it to --quick).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_loading import build_store
from precision import VARIANTS, Variant, dice_after_training, sphere_batch, time_interleaved, unet_3d

ROOT = Path(__file__).resolve().parent.parent
# The synthetic images are this much larger than the enlarged read patch, per axis.
IMAGE_MARGIN = 1.2
STORE_CASES = 3
FOREGROUND_SIGNAL = 1.0  # in units of the noise's standard deviation
RSS_SAMPLE_INTERVAL_S = 0.002
SPHERE_DICE_STEPS = 30
DEMO_EPOCHS, DEMO_ITERATIONS = 3, 20
FASTER = 1.05  # a variant must beat fp32's compute time by 5 % to count as faster (timing noise)


# ------------------------------------------------------------------------------------ memory
def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_mb() -> float:
    """ru_maxrss of this process (kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def return_freed_heap() -> None:
    """Give freed malloc memory back to the OS, so the next variant's high-water starts low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssSampler:
    """Background thread: the highest RSS seen while each label is current (torch releases the GIL in
    its kernels, so the samples land inside forward and backward)."""

    def __init__(self):
        self.label, self.peaks, self._stop = None, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            label = self.label
            if label is not None:
                self.peaks[label] = max(self.peaks.get(label, 0), current_rss_bytes())
            time.sleep(RSS_SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------ set-up
@dataclass
class StepRecord:
    wait_s: list[float] = field(default_factory=list)
    compute_s: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    rss_above_baseline: list[int] = field(default_factory=list)
    cuda_peak_bytes: list[int] = field(default_factory=list)


def plan_for(fingerprint_path: Path, configuration_name: str | None, batch_size: int | None):
    """(plans with the configuration's batch size possibly overridden, configuration name)."""
    from autoseg.fingerprint import Fingerprint
    from autoseg.planning import Plans, plan_experiment

    plans = plan_experiment(Fingerprint.load(fingerprint_path))
    name = configuration_name or ("3d_fullres" if "3d_fullres" in plans.configurations else "2d")
    if batch_size is not None:
        entries = plans.to_json()
        entries["configurations"][name]["batch_size"] = batch_size
        plans = Plans.from_json(entries)
    return plans, name


def synthetic_store(folder: Path, configuration) -> list[str]:
    from autoseg.training.augmentation import rotation_and_dummy_2d_for
    from autoseg.training.data import read_patch_size_for

    patch = list(configuration.patch_size)
    read = read_patch_size_for(patch, rotation_and_dummy_2d_for(patch, configuration.dimension))
    shape = tuple(int(math.ceil(s * IMAGE_MARGIN)) for s in read)
    if configuration.dimension == 2:
        shape = (8,) + shape  # 2D configurations read one slice of 3D arrays
    return build_store(folder, STORE_CASES, shape, channels=configuration.architecture.input_channels,
                       foreground_signal=FOREGROUND_SIGNAL)


def make_trainer(plans, name: str, data_folder: Path, case_ids: list[str], results_folder: Path, device: str,
                 variant: Variant | None, fp16: bool, workers: int, cpu_threads: int):
    from autoseg.training.job import TrainingJob, TrainingSettings
    from autoseg.training.trainer import Trainer
    from autoseg.workspace import TaskResults

    precision = "fp16" if fp16 else ("bf16" if variant.bf16 else "fp32")
    settings = TrainingSettings(epochs=1, iterations_per_epoch=1, validation_iterations=1, num_workers=workers,
                                device=device, precision=precision, seed=0, checkpoint_every=1,
                                channels_last=bool(variant and variant.channels_last), cpu_threads=cpu_threads)
    job = TrainingJob(plans, name, 0, data_folder, TaskResults(results_folder), case_ids, case_ids)
    trainer = Trainer(job, settings)  # torch.manual_seed(0): the same initial weights for every variant
    trainer.network.train()
    return trainer


def step_function(trainer, loader, record: StepRecord, sampler: RssSampler, label: str):
    """One training iteration, split into waiting for the batch and computing on it."""

    def step() -> None:
        cuda = trainer.device.type == "cuda"
        return_freed_heap()
        baseline = current_rss_bytes()
        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        started = time.perf_counter()
        batch = next(loader)
        fetched = time.perf_counter()
        sampler.label = label
        loss = trainer.train_step(batch)  # float(loss) synchronises a CUDA device
        sampler.label = None
        done = time.perf_counter()
        record.wait_s.append(fetched - started)
        record.compute_s.append(done - fetched)
        record.loss.append(loss)
        record.rss_above_baseline.append(sampler.peaks.pop(label, baseline) - baseline)
        if cuda:
            record.cuda_peak_bytes.append(torch.cuda.max_memory_allocated(trainer.device))

    return step


# ------------------------------------------------------------------------------------ measurements
def time_variants(plans, name, data_folder, case_ids, tmp: Path, device: str, variants, repeats: int,
                  warm_up: int, cpu_threads: int) -> dict[str, StepRecord]:
    sampler = RssSampler()
    records, steps, loaders = {}, {}, []
    try:
        for variant in variants:
            trainer = make_trainer(plans, name, data_folder, case_ids, tmp / variant.name, device, variant,
                                   variant.name == "fp16", workers=0, cpu_threads=cpu_threads)
            train_loader, _ = trainer._loaders()  # workers 0: identical batches for every variant
            loaders.append(train_loader)
            records[variant.name] = StepRecord()
            steps[variant.name] = step_function(trainer, train_loader, records[variant.name], sampler, variant.name)
        time_interleaved(steps, repeats, warm_up=warm_up)
    finally:
        sampler.stop()
        for loader in loaders:
            loader.close()
    return records


def time_workers(plans, name, data_folder, case_ids, tmp: Path, device: str, variant, fp16: bool,
                 worker_counts: list[int], iterations: int, cpu_threads: int) -> dict[int, StepRecord]:
    """Sequential (background workers of two settings would compete): 1 warm-up, then `iterations`."""
    sampler = RssSampler()
    records = {}
    try:
        for workers in worker_counts:
            print(f"  workers {workers}: load average {os.getloadavg()[0]:.1f}", flush=True)
            trainer = make_trainer(plans, name, data_folder, case_ids, tmp / f"workers{workers}", device,
                                   variant, fp16, workers=workers, cpu_threads=cpu_threads)
            train_loader, val_loader = trainer._loaders()
            val_loader.close()
            record = StepRecord()
            step = step_function(trainer, train_loader, record, sampler, f"workers{workers}")
            try:
                step()  # warm-up: worker start, first batches, kernel selection
                record.__init__()
                for _ in range(iterations):
                    step()
            finally:
                train_loader.close()
            records[workers] = record
    finally:
        sampler.stop()
    return records


def data_pipeline_throughput(data_folder: Path, case_ids: list[str], configuration, worker_counts: list[int],
                             batches: int = 6) -> dict[int, float]:
    """Batches/s the training data pipeline makes with no network running (bench/data_loading.py)."""
    from data_loading import make_pipeline, measure

    sampler, transforms, _ = make_pipeline(data_folder, case_ids, tuple(configuration.patch_size),
                                           configuration.batch_size)
    return {count: measure(sampler, transforms, count, batches, fake_work_s=0.0)[0] for count in worker_counts}


def sphere_dice(variants) -> dict[str, tuple[float, float]]:
    """(final loss, Dice) after SPHERE_DICE_STEPS steps on a fixed batch, same init, per CPU variant."""
    architecture = unet_3d([8, 16, 32])
    torch.manual_seed(1)
    from autoseg.network import build_network

    model = build_network(architecture)
    image, target = sphere_batch(2, 32, seed=2)
    return {v.name: dice_after_training(model, architecture, image, target, v, SPHERE_DICE_STEPS)
            for v in variants if v.name != "fp16"}


def demo_task_dice(variants, tmp: Path, device: str, cpu_threads: int) -> dict[str, tuple[float, float]]:
    """(organ Dice on the held-out cases, seconds) after DEMO_EPOCHS x DEMO_ITERATIONS iterations on the
    tests' small synthetic task, per variant (the tests assert > 0.8 for fp32)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_training import CONFIGURATION, make_small_task, tiny_settings, training_job

    from autoseg.training.trainer import run_training
    from autoseg.training.validation import validate_fold

    task = make_small_task(tmp / "demo")
    import autoseg.evaluation  # noqa: F401  first imports (plotting, prediction, metrics) outside the timing
    import autoseg.inference.case  # noqa: F401
    import matplotlib.pyplot  # noqa: F401

    results = {}
    for variant in variants:
        job = training_job(task, tmp / "demo_results" / variant.name)
        started = time.perf_counter()
        precision = "fp16" if variant.name == "fp16" else ("bf16" if variant.bf16 else "fp32")
        run_training(job, tiny_settings(epochs=DEMO_EPOCHS, iterations_per_epoch=DEMO_ITERATIONS,
                                        validation_iterations=2, checkpoint_every=None, device=device,
                                        precision=precision, channels_last=variant.channels_last,
                                        cpu_threads=cpu_threads))
        summary = validate_fold(task.plans, CONFIGURATION, job.results, "0", task.data_folder,
                                task.reference_folder, job.val_ids, device=device, use_tta=False)
        results[variant.name] = (summary.mean["1"]["Dice"], time.perf_counter() - started)
    return results


# ------------------------------------------------------------------------------------ report
def _mb(n_bytes: float) -> float:
    return n_bytes / 2**20


def print_variants(records: dict[str, StepRecord], batch_size: int, warm_up: int) -> dict[str, float]:
    """Table of the timed steps; returns the least compute seconds per variant.

    On a shared CPU other processes only ever add time, so speed-ups use the minimum (the least disturbed
    step, as bench/precision.py does); the median shows how disturbed the run was."""
    print(f"\n{'variant':<20}{'s/it median':>12}{'min':>8}{'samples/s@min':>14}{'wait s':>8}{'compute min':>12}"
          f"{'speed-up':>10}{'RSS +MB':>9}{'cuda MB':>9}   loss per step")
    timed = slice(warm_up, None)
    compute = {name: min(record.compute_s[timed]) for name, record in records.items()}
    for name, record in records.items():
        totals = [w + c for w, c in zip(record.wait_s[timed], record.compute_s[timed])]
        per_it = statistics.median(totals)
        cuda = f"{_mb(max(record.cuda_peak_bytes)):>9.0f}" if record.cuda_peak_bytes else f"{'-':>9}"
        losses = " ".join(f"{v:.4f}" for v in record.loss)
        print(f"{name:<20}{per_it:>12.3f}{min(totals):>8.3f}{batch_size / min(totals):>14.2f}"
              f"{statistics.median(record.wait_s[timed]):>8.3f}{compute[name]:>12.3f}"
              f"{compute['fp32'] / compute[name]:>10.2f}{_mb(max(record.rss_above_baseline)):>9.0f}{cuda}   {losses}")
    return compute


def loss_deviation(records: dict[str, StepRecord]) -> dict[str, float]:
    """Largest |loss - fp32 loss| over the steps (identical batches and initial weights)."""
    reference = records["fp32"].loss
    return {name: max(abs(a - b) for a, b in zip(record.loss, reference)) for name, record in records.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fingerprint", type=Path, default=ROOT / "fingerprints" / "Task04_Hippocampus.json")
    parser.add_argument("--config", default=None, help="configuration (default 3d_fullres, else 2d)")
    parser.add_argument("--quick", action="store_true", help="batch 2, a few iterations, no demo-task training")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plan's batch size")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per variant")
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="background worker counts to compare "
                        "with 0")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--demo-training", action=argparse.BooleanOptionalAction, default=None,
                        help="short real training on the tests' demo task per candidate precision (default: "
                             "on, off with --quick)")
    parser.add_argument("--worker-iterations", type=int, default=None,
                        help="timed iterations per worker setting (default 3 quick, 8 otherwise)")
    args = parser.parse_args()

    from autoseg.hardware import usable_cpus
    from autoseg.network import count_parameters
    from autoseg.training.expectations import PRECISION_DICE_TOLERANCE, mixed_precision_holds
    from autoseg.device import pick_device

    device = pick_device(args.device)
    batch_size = args.batch_size or (2 if args.quick else None)
    repeats = args.iterations or (3 if args.quick else 5)
    worker_iterations = args.worker_iterations or (3 if args.quick else 8)
    demo_training = (not args.quick) if args.demo_training is None else args.demo_training
    warm_up = 1
    plans, name = plan_for(args.fingerprint, args.config, batch_size)
    configuration = plans.configuration(name)
    planned_batch = plan_for(args.fingerprint, args.config, None)[0].configuration(name).batch_size
    cpu_threads = usable_cpus()
    torch.set_num_threads(cpu_threads)
    variants = [v for v in VARIANTS if configuration.dimension == 3 or not v.channels_last]
    if device.type == "cuda":
        variants = variants[:1] + [Variant("fp16", False, False)] + variants[1:]
    from autoseg.network import build_network

    parameters = count_parameters(build_network(configuration.architecture))
    print(f"{plans.dataset_name} {name}: patch {configuration.patch_size}, batch {configuration.batch_size} "
          f"(plan: {planned_batch}), features {configuration.architecture.features_per_stage}, {parameters / 1e6:.2f} M parameters")
    print(f"device {device}, torch {torch.__version__}, {cpu_threads} CPU threads "
          f"(load average {os.getloadavg()[0]:.1f}); {repeats} timed iterations per variant after {warm_up} "
          f"warm-up, interleaved")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_folder = tmp / "store"
        data_folder.mkdir()
        case_ids = synthetic_store(data_folder, configuration)
        started = time.perf_counter()
        records = time_variants(plans, name, data_folder, case_ids, tmp, str(device), variants, repeats, warm_up,
                                cpu_threads)
        compute = print_variants(records, configuration.batch_size, warm_up)
        deviations = loss_deviation(records)
        print(f"(timing phase {time.perf_counter() - started:.0f} s; wait = making the batch in this process, "
              f"workers 0)")

        print(f"\nAccuracy: same initial weights and batches per variant; Dice after {SPHERE_DICE_STEPS} SGD steps "
              f"on a fixed 2 x 32^3 sphere batch (bench/precision.py)")
        dice = sphere_dice(variants)
        demo = {}
        if demo_training:  # only fp32 and the variants that are faster: the check decides whether they are kept
            candidates = [v for v in variants if v.name == "fp32" or compute["fp32"] / compute[v.name] > FASTER]
            demo = demo_task_dice(candidates, tmp, str(device), cpu_threads)
        print(f"{'variant':<20}{'max |loss - fp32|':>18}{'sphere Dice':>12}"
              f"{'demo organ Dice':>17}{'demo s':>8}   verdict")
        kept = "fp32"
        for variant in variants:
            v = variant.name
            sphere = dice.get(v, (math.nan, math.nan))[1]
            demo_dice, demo_s = demo.get(v, (math.nan, math.nan))
            pairs = [(dice["fp32"][1], sphere), (demo.get("fp32", (math.nan,))[0], demo_dice)]
            holds = all(mixed_precision_holds(reference, value) for reference, value in pairs
                        if not (math.isnan(reference) or math.isnan(value)))
            faster = compute["fp32"] / compute[v] > FASTER
            if v == "fp32":
                verdict = "reference"
            elif not holds:
                verdict = f"loses Dice (> {PRECISION_DICE_TOLERANCE} below fp32): not kept"
            elif not faster:
                verdict = "holds Dice, not faster: not kept"
            else:
                verdict = f"holds Dice, {compute['fp32'] / compute[v]:.2f}x faster: candidate"
                # Variants come simplest first: a later one must beat the current choice clearly too.
                if kept == "fp32" or compute[kept] / compute[v] > FASTER:
                    kept = v
            print(f"{v:<20}{deviations[v]:>18.4f}{sphere:>12.4f}{demo_dice:>17.4f}{demo_s:>8.0f}   {verdict}")
        print(f"kept: {kept}")

        kept_variant = next(v for v in variants if v.name == kept)
        counts = [0] + [w for w in args.workers if w > 0]
        workers = time_workers(plans, name, data_folder, case_ids, tmp, str(device), kept_variant, kept == "fp16",
                               counts, worker_iterations, cpu_threads)
        print(f"\nDo the workers keep the network fed? {kept}, {worker_iterations} iterations after 1 warm-up, "
              f"one setting after the other")
        print(f"{'workers':>7}{'s/it':>8}{'samples/s':>11}{'wait s/it':>11}{'compute s/it':>14}{'data-wait share':>17}")
        for count, record in workers.items():
            wait, work = sum(record.wait_s), sum(record.compute_s)
            per_it = (wait + work) / len(record.wait_s)
            print(f"{count:>7}{per_it:>8.3f}{configuration.batch_size / per_it:>11.2f}"
                  f"{wait / len(record.wait_s):>11.3f}{work / len(record.wait_s):>14.3f}{wait / (wait + work):>17.1%}")
        pipeline = data_pipeline_throughput(data_folder, case_ids, configuration, counts)
        print("data pipeline alone (sampling + augmentation, no network): " + ", ".join(
            f"{rate:.2f} batches/s with {count} worker(s)" for count, rate in pipeline.items())
              + f"; it keeps up with any step longer than {1 / max(pipeline.values()):.3f} s")
        print(f"\npeak RSS of this process (ru_maxrss): {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
