"""The pipeline's stages: each joins the workspace to the modules that do the work, so the Python API
(autoseg.api) and the command line (autoseg.cli) run a stage the same way.

    choice.py     which configuration to train, and which to predict with, when none is named
    plan.py       plan_task: fingerprint -> plans.json (optionally fitted into a time budget);
                  replan_for_budget: one configuration re-planned for a time budget before training
    train.py      train_fold: one fold of one configuration, validated, with what `autoseg train` reports
    dataset.py    check, fingerprint, preprocess
    evaluate.py   which labels to score, then evaluate_folder
    find_best.py  model selection and the postprocessing decision
    postprocess.py, predict.py   applying a decision; predicting a folder with one or several configurations
    bundle.py     export_model / import_model: a task's models in a model bundle and back into a workspace

They sit above model selection and below the Python API and the command line, which only parse
options, call them and show what they return. They never print: progress and notices go through
callbacks, failures are AutosegErrors.
"""
