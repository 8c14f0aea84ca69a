"""Experiment planning: fingerprint -> plans.json (configurations, patch sizes, networks, batch sizes).

Public API:
- `plan_experiment(fingerprint, gpu_memory_gb=8.0) -> Plans`
- `Plans`, `Configuration` (plans.json; `Plans.load(path)`, `plans.save(path)`, `plans.configuration(name)`)
- `format_plan_summary(plans) -> str`
"""

from autoseg.planning.planner import plan_experiment
from autoseg.planning.plans import PLANS_SCHEMA_VERSION, Configuration, Plans
from autoseg.planning.summary import format_plan_summary

__all__ = ["plan_experiment", "Plans", "Configuration", "PLANS_SCHEMA_VERSION", "format_plan_summary"]
