#!/usr/bin/env bash
# Step train: nnUNetv2_train for each fold of FOLDS. A finished fold is skipped, an interrupted one resumed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start train || exit 0

model="$nnUNet_results/$DATASET/${TRAINER}__${PLANS}__${CONFIGURATION}"
for fold in $FOLDS; do
    dir="$model/fold_$fold"
    train=(nnUNetv2_train "$DATASET_ID" "$CONFIGURATION" "$fold" -tr "$TRAINER" -p "$PLANS" -device "$DEVICE")
    if [ -f "$dir/checkpoint_final.pth" ] && [ -f "$dir/validation/summary.json" ]; then
        log "skip: fold $fold is trained ($dir/checkpoint_final.pth)"
    elif [ -f "$dir/checkpoint_final.pth" ]; then
        # Interrupted during the final validation: only redo that (--c would rewrite the checkpoint).
        log "fold $fold: trained, running its final validation"
        "${train[@]}" --val
    elif [ -f "$dir/checkpoint_latest.pth" ]; then
        log "fold $fold: resuming from $dir/checkpoint_latest.pth"
        "${train[@]}" --c
    else
        log "fold $fold: training"
        "${train[@]}"
    fi
done
mark_done train
