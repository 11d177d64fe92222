#!/usr/bin/env bash
# Step preprocess: fingerprint (with nnU-Net's integrity check), the committed plans, nnU-Net preprocessing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
load_config "${1:-}"
step_start preprocess || exit 0

# nnUNetv2_extract_fingerprint itself skips a dataset whose fingerprint exists.
nnUNetv2_extract_fingerprint -d "$DATASET_ID" -np "$NUM_PROCESSES" --verify_dataset_integrity
nnunet-multitask install-plans -d "$DATASET_ID" -p "$PLANS"
nnUNetv2_preprocess -d "$DATASET_ID" -plans_name "$PLANS" -c "$CONFIGURATION" -np "$NUM_PROCESSES"
mark_done preprocess
