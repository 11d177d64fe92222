"""Shared fixtures: nnU-Net folders in a temporary directory, and the optional real data."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def nnunet_dirs(tmp_path, monkeypatch) -> dict[str, Path]:
    """Point nnUNet_raw / nnUNet_preprocessed / nnUNet_results at fresh temporary folders."""
    dirs = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    return dirs


def shared_data(subfolder: str) -> Path:
    """A folder of ../shared/data, or skip the test with a message when it is absent."""
    path = SHARED_DATA / subfolder
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (only the project's shared checkout has it)")
    return path
