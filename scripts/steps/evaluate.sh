#!/usr/bin/env bash
# Step evaluate: metrics, figures and report.md of the validation predictions in WORK_DIR/report.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start evaluate || exit 0

nnunet-multitask evaluate --pred "$WORK_DIR/validation/predictions" --labels "$WORK_DIR/validation/labels" \
    --out "$WORK_DIR/report" --dataset-json "$nnUNet_raw/$DATASET/dataset.json" --num-processes "$NUM_PROCESSES"
mark_done evaluate
