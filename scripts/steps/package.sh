#!/usr/bin/env bash
# Step package: the test segmentations + subtype_results.csv as WORK_DIR/submission, checked against imagesTs.
# Built and checked in a side folder first, so WORK_DIR/submission is only ever a complete, valid one.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start package || exit 0

pred="$WORK_DIR/test/predictions"
[ -f "$pred/subtype_results.csv" ] || die "$pred/subtype_results.csv is missing; run the predict step first"
out="$WORK_DIR/submission"
partial="$out.partial"   # left in place on failure, for inspection
rm -rf "$partial" "$out.old"
mkdir -p "$partial"
cp "$pred"/*.nii.gz "$pred/subtype_results.csv" "$partial/"
nnunet-multitask check-submission "$partial" --images "$nnUNet_raw/$DATASET/imagesTs"
if [ -d "$out" ]; then mv "$out" "$out.old"; fi
mv "$partial" "$out"
rm -rf "$out.old"
log "submission: $out"
mark_done package
