"""Compute-aware planning: fit each configuration of a plan into a time budget on this machine.

    speed.py         the cost model (seconds per training iteration) and what it is fitted from
    measurement.py   timing probe networks and the data pipeline on this device, cached per machine
    candidates.py    smaller patches, narrower networks, smaller batches; the probes to time
    time_model.py    the schedule for a number of iterations and the predicted seconds of a fold
    solver.py        the degradation ladder: the first candidate whose fold fits the budget
    compute_aware.py end to end: measure, solve each configuration, keep the best precision

It sits above training (it times the trainer's own step and data pipeline); the decision it makes is
stored in the plan as `autoseg.planning.time_budget.BudgetDecision`.
"""
