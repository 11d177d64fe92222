#!/usr/bin/env bash
# Set everything up from nothing and run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${NNUNET_MT_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
