"""Planning several networks: what `plan --networks plain_unet,resenc` costs in planning time, and what
it plans (parameters, FLOPs per voxel, patch, batch, memory estimate) per reference fingerprint.

    .venv/bin/python bench/plan_networks.py [--quick] [--preset M|L|XL]

Times, in one process: the plain plan (analytical costs, the baseline), then the plan with resenc
(the first meta-device trace of a process also imports torch._dynamo, printed apart), then the same
plan again (every trace cached). Ratios are against the plain plan measured in the same run.
--quick: Hippocampus only; else also Liver and BrainTumour.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from autoseg.fingerprint import Fingerprint
from autoseg.network.cost import flops_per_voxel, network_cost
from autoseg.planning import plan_experiment
from autoseg.planning.rules import memory_target_gb

FINGERPRINTS = Path(__file__).resolve().parents[1] / "fingerprints"


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--preset", choices=["M", "L", "XL"])
    args = parser.parse_args()
    tasks = ["Task04_Hippocampus"] if args.quick else ["Task04_Hippocampus", "Task03_Liver", "Task01_BrainTumour"]
    print(f"load average {os.getloadavg()[0]:.1f}")
    _, warm_up = timed(lambda: __import__("torch._dynamo"))
    print(f"one-time import of torch and torch._dynamo (what the first trace pays): {warm_up:.1f} s")
    memory = memory_target_gb(None, args.preset)
    for task in tasks:
        fingerprint = Fingerprint.load(FINGERPRINTS / f"{task}.json")
        _, plain_seconds = timed(lambda: plan_experiment(fingerprint, memory, preset=args.preset))
        plans, first = timed(lambda: plan_experiment(fingerprint, memory, ["resenc"], args.preset))
        _, cached = timed(lambda: plan_experiment(fingerprint, memory, ["resenc"], args.preset))
        print(f"\n{task}: plan {plain_seconds:.2f} s plain; with resenc {first:.2f} s "
              f"({first / plain_seconds:.1f}x), again {cached:.2f} s ({cached / plain_seconds:.1f}x, traces cached)")
        print(f"{'configuration':20} {'patch':>16} {'batch':>5} {'memory GB':>9} {'params':>8} {'MFLOPs/voxel':>12}")
        for name in plans.configurations:
            c = plans.configuration(name)
            cost = network_cost(c.architecture, c.patch_size)
            print(f"{name:20} {'x'.join(map(str, c.patch_size)):>16} {c.batch_size:>5} {c.estimated_memory_gb:>9.2f} "
                  f"{cost.parameters / 1e6:>7.1f}M {flops_per_voxel(c.architecture, c.patch_size) / 1e6:>12.2f}")


if __name__ == "__main__":
    main()
