"""Device speeds with chosen coefficients, for tests of compute-aware planning.

`seed_speed_cache(home)` writes them into a workspace's device_speed.json as `autoseg plan --time-budget`
would have cached this machine's measurements, so planning reuses them instead of benchmarking and
the tests do not depend on how busy the CPU is.
"""

from __future__ import annotations

import json
from pathlib import Path

from autoseg.budget.compute_aware import precisions_to_measure
from autoseg.budget.speed import CostModel, DEVICE_SPEED_SCHEMA_VERSION, DeviceSpeed, identity_key, machine_identity

# A slow 2-core CPU (seconds fixed, per activation element, per MAC); bf16 twice as fast per unit of work.
SLOW_CPU = (0.05, 3.6e-8, 8.6e-11)


def fake_speed(precision: str, dimension: int, speedup: float = 1.0) -> DeviceSpeed:
    fixed, per_element, per_mac = SLOW_CPU
    return DeviceSpeed(device="cpu", precision=precision, dimension=dimension,
                       model=CostModel(fixed, per_element / speedup, per_mac / speedup), max_relative_error=0.05,
                       identity=machine_identity("cpu", precision, dimension))


def seed_speed_cache(home: Path, bf16_speedup: float = 2.0) -> None:
    """This machine's measurements, as `autoseg plan --time-budget` would have cached them."""
    measurements = {}
    for dimension in (2, 3):
        for precision in precisions_to_measure("cpu"):
            speed = fake_speed(precision, dimension, bf16_speedup if precision == "bf16" else 1.0)
            measurements[identity_key(speed.identity)] = speed.to_json()
    home.mkdir(parents=True, exist_ok=True)
    (home / "device_speed.json").write_text(json.dumps({"schema_version": DEVICE_SPEED_SCHEMA_VERSION,
                                                        "measurements": measurements}))
