#!/usr/bin/env bash
# Step convert: SOURCE (a download with train/ validation/ test/, or `synthetic`) -> nnUNet_raw/DatasetXXX_Name,
# plus splits_final.json (folds 0-4: CV over train; fold 5: train -> validation) in nnUNet_preprocessed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start convert || exit 0

source_dir="$SOURCE"
if [ "$SOURCE" = synthetic ]; then
    source_dir="$WORK_DIR/download"
    # A sub-marker, so that an interrupted conversion does not regenerate the data.
    if [ -f "$DONE_DIR/convert.synthesize" ]; then
        log "skip: synthetic download already in $source_dir"
    else
        # shellcheck disable=SC2086  # SYNTHETIC_ARGS is a list of options
        nnunet-multitask synthesize "$source_dir" $SYNTHETIC_ARGS --num-processes "$NUM_PROCESSES" --overwrite
        mark_done convert.synthesize
    fi
fi
[ -d "$source_dir" ] || die "SOURCE '$source_dir' is not a folder (expected train/ validation/ test/ or 'synthetic')"

# No marker means any existing target is a leftover of an interrupted run under WORK_DIR: replace it.
# Folders the user keeps (USE_ENV_NNUNET_DIRS=1) are never overwritten: convert then reports the clash.
overwrite=()
if [ "$USE_ENV_NNUNET_DIRS" != 1 ]; then overwrite=(--overwrite); fi
nnunet-multitask convert "$source_dir" -d "$DATASET_ID" -n "$DATASET_NAME" -np "$NUM_PROCESSES" \
    --no-progress "${overwrite[@]}"
mark_done convert
