#!/usr/bin/env bash
# Step predict: the validation cases (fold 5 'val' of splits_final.json) into WORK_DIR/validation/predictions
# and nnUNet_raw imagesTs into WORK_DIR/test/predictions, with every fold of FOLDS (ensembled).
# --continue_prediction makes a re-run after an interruption predict only the missing cases.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start predict || exit 0

raw="$nnUNet_raw/$DATASET"
splits="$nnUNet_preprocessed/$DATASET/splits_final.json"
[ -f "$splits" ] || die "$splits is missing; run the convert step first"

# The validation inputs and labels as symlinks into nnUNet_raw (no copies of the images).
val="$WORK_DIR/validation"
rm -rf "$val/images" "$val/labels"
mkdir -p "$val/images" "$val/labels"
mapfile -t cases < <(python -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))[5]["val"]))' "$splits")
[ "${#cases[@]}" -gt 0 ] || die "$splits: fold 5 has no validation cases"
for case in "${cases[@]}"; do
    ln -s "$raw/imagesTr/${case}_0000.nii.gz" "$val/images/${case}_0000.nii.gz"
    ln -s "$raw/labelsTr/$case.nii.gz" "$val/labels/$case.nii.gz"
done
log "${#cases[@]} validation cases linked in $val/images and $val/labels"

predict_args
nnUNetv2_predict_multitask -i "$val/images" -o "$val/predictions" "${PREDICT_ARGS[@]}"
nnUNetv2_predict_multitask -i "$raw/imagesTs" -o "$WORK_DIR/test/predictions" "${PREDICT_ARGS[@]}"
mark_done predict
