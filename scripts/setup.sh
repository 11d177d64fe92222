#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the package into it.
# TORCH_SPEC picks the torch build: the default is the CPU build that CI uses; on a GPU
# workstation set TORCH_SPEC=torch (or install your CUDA torch first and set TORCH_SPEC="").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NNUNET_MT_VENV:-$root/.venv}"
torch_spec="${TORCH_SPEC-torch==2.13.0}"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # torch is pinned in the same resolve so that nnunetv2's dependencies cannot swap it for another build
    "$venv/bin/python" -m pip install -q ${torch_spec:+"$torch_spec"} -e "$root[test]"
    touch "$stamp"
fi
