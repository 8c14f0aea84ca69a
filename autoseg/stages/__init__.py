"""The stages behind `autoseg plan` and `autoseg train`, as functions of a workspace and typed options.

    choice.py   which configuration to train, and which to predict with, when none is named
    plan.py     plan_task: fingerprint -> plans.json (optionally fitted into a time budget);
                replan_for_budget: one configuration re-planned for a time budget before training
    train.py    train_fold: one fold of one configuration, validated, with what `autoseg train` reports

They sit above model selection and below the Python API and the command line, which only parse
options, call them and show what they return. They never print: progress and notices go through
callbacks, failures are AutosegErrors.
"""
