#!/usr/bin/env bash
# Side by side with nnU-Net 2.8.1 on the same synthetic task, on this machine, in one run:
# prediction seconds of one fold of the same size of network, both mirroring on every axis.
#
#   bench/versus_nnunet.sh [WORKDIR]        (peer venv built first by ../shared/peer/setup_peer.sh)
#
# Knobs (defaults in brackets): CASES [12] training cases, TEST_CASES [5], SHAPE [40,64,64] (z,y,x),
# SPACING [2.0,1.0,1.0], EPOCHS [2] x ITERS [10] of nnU-Net's training (its prediction speed does not
# depend on the weights), AUTOSEG_EPOCHS [10] x AUTOSEG_ITERS [25] of autoseg's (about 11 minutes here;
# the agreement check needs a network that segments: a barely trained one's labels flip on rounding
# noise), OLD_ARGS: autoseg's
# prediction as it was before issue 14 (training patch at step 0.5, torch fp32), NEW_ARGS: today's
# defaults (none). Both autoseg runs and nnU-Net's mirror on all axes (--tta all).
#
# autoseg's new default is timed twice: "cold" measures the runtime choice (`predict --runtime auto`, once
# per machine and model; `autoseg train` makes it in its fold validation, skipped here by --no-validate),
# "cached" reads it back, as every later prediction does.
#
# Prints: both plans, "predict_s=" per system (and autoseg with --tile-mode large), the ratios, the label
# agreement Dice of the new default and of large tiles against the old output (issue 14 asks >= 0.99),
# and every system's organ Dice against the test cases' true labels.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WORK=$(realpath -m "${1:-/tmp/autoseg_versus_nnunet}")
BIN=${BIN:-"$ROOT/.venv/bin"}
PEER=${PEER:-"$ROOT/../shared/peer"}
CASES=${CASES:-12} TEST_CASES=${TEST_CASES:-5} SHAPE=${SHAPE:-40,64,64} SPACING=${SPACING:-2.0,1.0,1.0}
EPOCHS=${EPOCHS:-2} ITERS=${ITERS:-10}
AUTOSEG_EPOCHS=${AUTOSEG_EPOCHS:-10} AUTOSEG_ITERS=${AUTOSEG_ITERS:-25}
OLD_ARGS=${OLD_ARGS:---tile-mode patch --runtime torch --precision fp32}
NEW_ARGS=${NEW_ARGS:-}
TASK=Task901_Versus
rm -rf "$WORK" && mkdir -p "$WORK"

now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

echo "== dataset: $CASES training + $TEST_CASES test cases of $SHAPE voxels"
"$BIN/python" - "$WORK/raw" "$TASK" "$CASES" "$TEST_CASES" "$SHAPE" "$SPACING" <<'PY'
import sys
from autoseg.demo import DemoSpec, make_demo_dataset
out, task, cases, tests, shape, spacing = sys.argv[1:]
make_demo_dataset(out, task, DemoSpec(cases=int(cases), test_cases=int(tests),
                                      shape=tuple(int(v) for v in shape.split(",")),
                                      spacing=tuple(float(v) for v in spacing.split(","))))
PY

echo "== nnU-Net 2.8.1 (convert, plan, preprocess, $EPOCHS x $ITERS iterations, validate, predict with TTA)"
PEER_ITERS=$ITERS PEER_VAL_ITERS=2 bash "$PEER/peer_nnunet.sh" "$WORK/raw/$TASK" "$WORK/nnunet" "$EPOCHS" \
    | tee "$WORK/nnunet.log" | grep -E "^(plan|stage=predict)"
NNUNET_S=$(grep -o "stage=predict wall_s=[0-9.]*" "$WORK/nnunet.log" | cut -d= -f3)

autoseg() { "$BIN/autoseg" --home "$WORK/autoseg" "$@"; }
echo "== autoseg (plan with nnU-Net's defaults: no time budget, same-size network; train $AUTOSEG_EPOCHS x $AUTOSEG_ITERS)"
autoseg plan "$WORK/raw/$TASK" | grep -E "3d_fullres|patch|features" | head -8
autoseg preprocess -c 3d_fullres >/dev/null
autoseg train 3d_fullres --fold 0 --epochs "$AUTOSEG_EPOCHS" --iterations "$AUTOSEG_ITERS" --val-iterations 2 --no-validate \
    --workers 0 >/dev/null
predict() {  # predict NAME ARGS...: time `autoseg predict` of the test images
    local name=$1; shift
    local t0; t0=$(now)
    # shellcheck disable=SC2068
    autoseg predict "$WORK/raw/$TASK/imagesTs" "$WORK/pred_$name" --folds 0 --tta all --overwrite $@ >"$WORK/predict_$name.log"
    echo "$(seconds_since "$t0")"
}
OLD_S=$(predict old $OLD_ARGS)
COLD_S=$(predict new $NEW_ARGS)
cp "$WORK/predict_new.log" "$WORK/predict_new_cold.log"
NEW_S=$(predict new $NEW_ARGS)
LARGE_S=$(predict large $NEW_ARGS --tile-mode large)
grep -i "runtime" "$WORK/predict_new_cold.log" | head -2 || true
echo "predict_s nnunet=$NNUNET_S autoseg_old=$OLD_S autoseg_new_cold=$COLD_S autoseg_new=$NEW_S autoseg_large=$LARGE_S"
awk -v n="$NNUNET_S" -v o="$OLD_S" -v c="$COLD_S" -v w="$NEW_S" -v l="$LARGE_S" 'BEGIN {
    printf "speed-up vs nnU-Net: old %.2fx, new cold %.2fx, new cached %.2fx, large tiles %.2fx; new cached vs old %.2fx\n",
           n / o, n / c, n / w, n / l, o / w }'
# The test cases' true labels: the same generator and seed, every case written with its label.
"$BIN/python" - "$WORK/truth" "$TASK" "$CASES" "$TEST_CASES" "$SHAPE" "$SPACING" <<'PY'
import sys
from autoseg.demo import DemoSpec, make_demo_dataset
out, task, cases, tests, shape, spacing = sys.argv[1:]
make_demo_dataset(out, task, DemoSpec(cases=int(cases) + int(tests), test_cases=0,
                                      shape=tuple(int(v) for v in shape.split(",")),
                                      spacing=tuple(float(v) for v in spacing.split(","))))
PY
"$BIN/python" - "$WORK" "$TASK" <<'PY'
import sys
from pathlib import Path
import numpy as np
from autoseg.io import read_segmentation
work, task = Path(sys.argv[1]), sys.argv[2]
truth = work / "truth" / task / "labelsTr"
def dice(a, b, k):
    return 2 * np.sum((a == k) & (b == k)) / max(1, np.sum(a == k) + np.sum(b == k))
old = work / "pred_old"
for name in ("new", "large"):
    for path in sorted(old.glob("*.nii.gz")):
        a, b = read_segmentation(path)[0], read_segmentation(work / f"pred_{name}" / path.name)[0]
        labels = [int(k) for k in np.union1d(np.unique(a), np.unique(b)) if k]
        print(f"agreement {name} vs old {path.name}: " + " ".join(f"label {k} {dice(a, b, k):.4f}" for k in labels))
folders = {"nnunet": work / "nnunet" / "pred_test", "old": old, "new": work / "pred_new", "large": work / "pred_large"}
for name, folder in folders.items():
    scores = [dice(read_segmentation(folder / path.name)[0], read_segmentation(truth / path.name)[0], 1)
              for path in sorted(old.glob("*.nii.gz"))]
    print(f"organ Dice vs truth {name:7s} " + " ".join(f"{d:.4f}" for d in scores) + f" mean {np.mean(scores):.4f}")
PY
