"""What scoring the TTA choices costs the fold validation: `validate_fold` mirrored as before (the 8
passes of all axes, one accumulator, one restore) against the same validation scoring the candidate
mirror sets too (off, each axis, all: the same 8 passes, 5 accumulators, 5 restores and Dice), both in
this run, interleaved round-robin `--repeats` times (the minimum is the least disturbed time).

    .venv/bin/python bench/validation_tta.py --quick     # ~1 minute on 2 cores
    .venv/bin/python bench/validation_tta.py             # demo-sized cases, the demo plan's network width

The task: the synthetic demo (`--shape` voxels per case, `--cases` validation cases), planned and
preprocessed as in tests/helpers_training.py with `--patch` and `--features` (first stage; doubling per
stage, capped at 8x); the network is untrained (its cost does not depend on its weights).

Measured 2026-12-02 on the shared 2-core AMD EPYC (no GPU), torch 2.13 CPU, loaded by other jobs:
    (fill in from the run below)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def trained_like_fold(home: Path, args):
    """(small task, TaskResults, validation case ids) with an untrained fold 0 saved as its checkpoint."""
    import torch
    from helpers_training import CONFIGURATION, make_small_task

    from autoseg.checkpoint import identity_of_configuration, save_checkpoint
    from autoseg.demo import DemoSpec
    from autoseg.network import build_network
    from autoseg.workspace import TaskResults

    spec = DemoSpec(cases=args.cases, shape=tuple(args.shape), spacing=(2.0, 1.0, 1.0), test_cases=0)
    task = make_small_task(home, spec, patch_size=tuple(args.patch), base_features=args.features)
    results = TaskResults(home / "results" / task.raw_folder.name)
    torch.manual_seed(0)
    network = build_network(task.plans.configuration(CONFIGURATION).architecture)
    save_checkpoint({"network_weights": network.state_dict(), "optimizer_state": {}, "scaler_state": None,
                     "epoch": 1, "planned_epochs": 1, "log": {}, "best_ema": 0.0,
                     "identity": identity_of_configuration(task.plans, CONFIGURATION),
                     "inference": {"precision": "fp32"}},
                    results.checkpoint_file(CONFIGURATION, "0"))
    return task, results, task.case_ids


def timed_validation(task, results, case_ids, score_sets: bool) -> float:
    """Seconds of one `validate_fold` (mirrored); without `score_sets` only the all-axes set, as before."""
    from helpers_training import CONFIGURATION

    import autoseg.inference.mirroring as mirroring
    from autoseg.training.validation import validate_fold

    candidates = mirroring.candidate_mirror_sets
    if not score_sets:
        mirroring.candidate_mirror_sets = lambda dimension: {"all": tuple(range(dimension))}
    try:
        started = time.perf_counter()
        validate_fold(task.plans, CONFIGURATION, results, "0", task.data_folder, task.reference_folder, case_ids,
                      device="cpu", use_tta=True)
        return time.perf_counter() - started
    finally:
        mirroring.candidate_mirror_sets = candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases and network, 2 repeats")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 64, 64])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.shape, args.patch, args.features, args.repeats = 2, [24, 48, 48], [16, 32, 32], 8, 2
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        task, results, case_ids = trained_like_fold(Path(tmp), args)
        timed_validation(task, results, case_ids[:1], score_sets=True)  # warm-up: imports, oneDNN set-up
        times = {"all axes only (before)": [], "5 mirror sets scored": []}
        for _ in range(args.repeats):
            times["all axes only (before)"].append(timed_validation(task, results, case_ids, score_sets=False))
            times["5 mirror sets scored"].append(timed_validation(task, results, case_ids, score_sets=True))
    baseline = min(times["all axes only (before)"])
    print(f"{len(case_ids)} cases of {tuple(args.shape)}, patch {tuple(args.patch)}, {args.features} base features, "
          f"1 thread, minimum of {args.repeats}")
    for name, seconds in times.items():
        print(f"  {name:<24} {min(seconds):7.2f} s  {min(seconds) / len(case_ids):6.2f} s/case  "
              f"{min(seconds) / baseline:5.2f}x")


if __name__ == "__main__":
    main()
