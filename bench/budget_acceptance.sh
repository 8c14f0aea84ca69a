#!/usr/bin/env bash
# Compute-aware planning, end to end on this machine: does one fold train within its time budget, and
# how well does it segment? Two synthetic tasks (the acceptance runs of the compute-aware planning issue):
#   demo_ct:   20 CT cases of about 40x64x64 at 2x1x1 mm, --time-budget 15m, organ Dice on fold 0;
#   thick_mri: 30 MRI cases of 24x256x256 at 6x0.8x0.8 mm, --time-budget 30m, then one test volume
#              predicted with mirror TTA (seconds printed).
# Usage: bench/budget_acceptance.sh [demo_ct|thick_mri|both] [BIN_DIR]   (about 15 and 35 minutes)
# Run it on an otherwise idle machine: the plan's cost model is measured on it, and contention makes
# training slower than predicted (the trainer says by how much).
set -euo pipefail
WHICH=${1:-both}
BIN=${2:-.venv/bin}
ROOT=${ACCEPTANCE_HOME:-/tmp/autoseg_budget_acceptance}
autoseg() { "$BIN/autoseg" --home "$HOME_DIR" "$@"; }

run_task() {  # name, budget, demo-data options...
    local name=$1 budget=$2
    shift 2
    HOME_DIR="$ROOT/$name"
    rm -rf "$HOME_DIR"
    echo "== $name: dataset, plan for $budget, preprocess"
    autoseg demo-data "$HOME_DIR/raw" --task-name Task900_Demo "$@"
    # The device speed is measured afresh for each run, on this machine as it is now.
    autoseg plan Task900_Demo --time-budget "$budget" --device cpu --remeasure
    autoseg preprocess
    echo "== $name: train 3d_fullres fold 0 (plan's schedule and workers), validation of the fold included"
    local started=$SECONDS
    autoseg train 3d_fullres --fold 0
    echo "== $name: fold 0 took $((SECONDS - started)) s for a budget of $budget"
}

if [[ $WHICH == demo_ct || $WHICH == both ]]; then
    run_task demo_ct 15m --cases 20 --shape 40,64,64 --spacing 2.0,1.0,1.0 --modality CT
fi
if [[ $WHICH == thick_mri || $WHICH == both ]]; then
    run_task thick_mri 30m --cases 30 --shape 24,256,256 --spacing 6.0,0.8,0.8 --modality MRI
    echo "== thick_mri: predict one 24x256x256 test volume with mirror TTA"
    test_image=$(ls "$HOME_DIR/raw/Task900_Demo/imagesTs" | head -n 1)
    mkdir -p "$HOME_DIR/one_case"
    cp "$HOME_DIR/raw/Task900_Demo/imagesTs/$test_image" "$HOME_DIR/one_case/"
    started=$SECONDS
    autoseg predict "$HOME_DIR/one_case" "$HOME_DIR/predictions" --config 3d_fullres --overwrite
    echo "== thick_mri: prediction with TTA took $((SECONDS - started)) s (model loading included)"
fi
