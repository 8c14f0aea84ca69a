"""What scoring the TTA choices costs the fold validation: `validate_fold` mirrored as before (the 8
passes of all axes, one accumulator, one restore) against the same validation scoring the candidate
mirror sets too (off, each axis, all: the same 8 passes, 5 accumulators, 5 restores and Dice), both in
this run, interleaved round-robin `--repeats` times (the minimum is the least disturbed time). Times
are this process's CPU seconds (1 thread): on a machine shared with other jobs its wall time varies
by 2x from run to run, its CPU time far less.

    .venv/bin/python bench/validation_tta.py --quick     # 1-3 minutes on 2 cores
    .venv/bin/python bench/validation_tta.py             # demo-sized cases, the demo plan's network width

The task: the synthetic demo (`--shape` voxels per case, `--cases` validation cases), planned and
preprocessed as in tests/helpers_training.py with `--patch` and `--features` (first stage; doubling per
stage, capped at 8x); the network is untrained (its cost does not depend on its weights).

Measured 2026-12-02 on the shared 2-core AMD EPYC (no GPU), torch 2.13 CPU, 1 thread, load 3-4 from
other jobs (minimum CPU seconds of 6 and 4 alternating repeats):
    --quick (2 cases 24x48x48, patch 16x32x32, 8 features: a nearly free network, the worst case)
        all axes only (before) 3.27 s/case, 5 mirror sets scored 3.70 s/case: 1.13x
    2 demo cases 40x64x64, patch 32x64x64, 32 features (the demo plan's width)
        all axes only (before) 62.9 s/case, 5 mirror sets scored 58.5 s/case: 0.93x, i.e. the extra
        accumulators and restores are below the run-to-run noise (~10%) once the network costs
        what a planned one does (a profile of one validation: 91% in the network passes, the 5
        restores to the original grid 2%).
Memory: one (num_classes, *network grid) float32 accumulator per set, 5 in 3D instead of 1 (a
300x512x512 CT with 3 classes: about 1 GB each), for the validation only; predict keeps one.
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
    """CPU seconds of one `validate_fold` (mirrored); without `score_sets` only the all-axes set, as before."""
    from helpers_training import CONFIGURATION

    import autoseg.inference.mirroring as mirroring
    from autoseg.training.validation import validate_fold

    candidates = mirroring.candidate_mirror_sets
    if not score_sets:
        mirroring.candidate_mirror_sets = lambda dimension: {"all": tuple(range(dimension))}
    try:
        started = time.process_time()
        validate_fold(task.plans, CONFIGURATION, results, "0", task.data_folder, task.reference_folder, case_ids,
                      device="cpu", use_tta=True)
        return time.process_time() - started
    finally:
        mirroring.candidate_mirror_sets = candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases and network")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 64, 64])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.shape, args.patch, args.features = 2, [24, 48, 48], [16, 32, 32], 8
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        task, results, case_ids = trained_like_fold(Path(tmp), args)
        timed_validation(task, results, case_ids[:1], score_sets=True)  # warm-up: imports, oneDNN set-up
        times = {"all axes only (before)": [], "5 mirror sets scored": []}
        for repeat in range(args.repeats):  # the order alternates, so that neither always runs first
            for score_sets in (repeat % 2 == 1, repeat % 2 == 0):
                name = "5 mirror sets scored" if score_sets else "all axes only (before)"
                times[name].append(timed_validation(task, results, case_ids, score_sets=score_sets))
    baseline = min(times["all axes only (before)"])
    print(f"{len(case_ids)} cases of {tuple(args.shape)}, patch {tuple(args.patch)}, {args.features} base features, "
          f"1 thread, minimum of {args.repeats}")
    for name, seconds in times.items():
        print(f"  {name:<24} {min(seconds):7.2f} s  {min(seconds) / len(case_ids):6.2f} s/case  "
              f"{min(seconds) / baseline:5.2f}x")


if __name__ == "__main__":
    main()
