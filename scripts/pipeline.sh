#!/usr/bin/env bash
# Usage: scripts/pipeline.sh CONFIG [--from STEP]
# Runs the steps (convert preprocess train predict evaluate package) in order; each one skips what is done,
# so re-running after an interruption continues. --from STEP starts at STEP and redoes it and the later steps
# (their markers are cleared; trained folds and finished predictions are still reused, see scripts/steps/).
# The output of every step also goes to WORK_DIR/logs/<step>.log.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

config="${1:-}"
from="${STEPS[0]}"
if [ $# -eq 3 ] && [ "$2" = --from ]; then from="$3"
elif [ $# -ne 1 ]; then die "usage: $0 CONFIG [--from STEP]   (steps: ${STEPS[*]})"; fi
[[ " ${STEPS[*]} " == *" $from "* ]] || die "unknown step '$from' (steps: ${STEPS[*]})"
load_config "$config"
config="$(cd "$(dirname "$config")" && pwd)/$(basename "$config")"   # steps run with the same file

started=0
for step in "${STEPS[@]}"; do
    [ "$step" = "$from" ] && started=1
    if [ "$started" = 0 ]; then log "not running '$step' (--from $from)"; continue; fi
    if [ "$from" != "${STEPS[0]}" ]; then rm -f "$DONE_DIR/$step"; fi
    mkdir -p "$WORK_DIR/logs"
    echo "== $step =="
    status=0 SECONDS=0
    bash "$here/steps/$step.sh" "$config" 2>&1 | tee -a "$WORK_DIR/logs/$step.log" || status=${PIPESTATUS[0]}
    if [ "$status" != 0 ]; then
        echo "pipeline: step '$step' failed (exit $status); fix it and re-run (log: $WORK_DIR/logs/$step.log)" >&2
        exit "$status"
    fi
    echo "== $step: ok (${SECONDS}s) =="
done

echo "== finished =="
echo "report: $WORK_DIR/report/report.md"
echo "submission: $WORK_DIR/submission"
python -c 'import json, sys; from nnunet_multitask.plots import format_headline
print(format_headline(json.load(open(sys.argv[1]))))' "$WORK_DIR/report/metrics.json"
