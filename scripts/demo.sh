#!/usr/bin/env bash
# Quick start: set up the environment, then run the whole pipeline on the built-in synthetic dataset on the CPU.
# Outputs go to ./work/demo (or $WORK_DIR). Extra arguments go to pipeline.sh (e.g. --from evaluate).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec bash "$root/scripts/pipeline.sh" "$root/scripts/demo.conf" "$@"
