#!/usr/bin/env bash
# `make demo`: the whole pipeline on a synthetic CT task, end to end, on whatever machine this is.
# Usage: bench/demo.sh BIN_DIR   (the virtual environment's bin folder)
set -euo pipefail
BIN=${1:-.venv/bin}
HOME_DIR=${DEMO_HOME:-demo_workspace}
BUDGET=${DEMO_BUDGET:-5m}
autoseg() { "$BIN/autoseg" --home "$HOME_DIR" "$@"; }

echo "== 1. synthetic MSD dataset (12 training + 2 test CT cases of about 40x64x64)"
autoseg demo-data "$HOME_DIR/raw" --task-name Task900_Demo --cases 12 --shape 40,64,64 --spacing 2.0,1.0,1.0
autoseg check Task900_Demo
echo "== 2. fingerprint and plan, sized for a ${BUDGET} training budget on this machine"
autoseg plan Task900_Demo --time-budget "$BUDGET"
echo "== 3. preprocess"
autoseg preprocess
echo "== 4. train fold 0 (plan's epochs and iterations), validate on its held-out cases"
autoseg train 3d_fullres --fold 0 --workers 1
echo "== 5. predict the test images (mirror TTA), and score them against their generated labels"
autoseg predict "$HOME_DIR/raw/Task900_Demo/imagesTs" "$HOME_DIR/predictions" --overwrite
"$BIN/python" - "$HOME_DIR" <<'PY'
import sys
from pathlib import Path
from autoseg.demo import DemoSpec, make_demo_dataset
# The test images' labels are not in the dataset (as in MSD): regenerate them deterministically.
home = Path(sys.argv[1])
reference = make_demo_dataset(home / "reference", "Task900_Demo",
                              DemoSpec(cases=14, shape=(40, 64, 64), spacing=(2.0, 1.0, 1.0), test_cases=0))
for path in (reference / "labelsTr").iterdir():
    if path.name not in {p.name for p in (home / "predictions").iterdir()}:
        path.unlink()
PY
autoseg evaluate "$HOME_DIR/predictions" "$HOME_DIR/reference/Task900_Demo/labelsTr"  # labels named by the task
