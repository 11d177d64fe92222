#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the package into it.
# TORCH_SPEC pins torch and torchvision in the same resolve as nnunetv2, so that its dependencies
# cannot swap torch for another build. torchvision must import (nnU-Net's trainer discovery imports
# timm, which imports torchvision), so torch and torchvision are pinned as a matching pair.
# Set TORCH_SPEC="" to keep a torch you installed yourself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NNUNET_MT_VENV:-$root/.venv}"
torch_spec="${TORCH_SPEC-torch==2.14.1 torchvision==0.29.1}"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
    "$venv/bin/python" -m pip install -q $torch_spec -e "$root[test]"
    touch "$stamp"
fi
