"""Shared fixtures: nnU-Net folders in a temporary directory, and the optional real data."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------------------------
# A tiny dataset, converted, preprocessed with the committed plans' 3d_tiny configuration and
# trained for two short epochs with nnUNetv2_train: shared by the trainer and predictor tests.
# ---------------------------------------------------------------------------------------------
TINY_DATASET_ID = 901
TINY_CONFIGURATION = "3d_tiny"
TINY_PLANS = "nnUNetResEncUNetMPlans"
SMOKE_TRAINER = "nnUNetTrainerMultitask_CPUSmoke"
BIN = Path(sys.executable).parent


@dataclass
class TinyRun:
    source: Path          # the raw user layout (train/, validation/, test/)
    env: dict             # environment for nnU-Net commands
    dataset_name: str
    model_folder: Path    # nnUNet_results/<dataset>/<trainer>__<plans>__<config>
    fold: int

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_command(command, self.env, check)


def run_command(command, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / command[0]), *command[1:]], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def cpu_nnunet_env(root: Path) -> dict:
    """nnU-Net folders under ``root``, our trainer folder, and process counts sized for 2 cores."""
    from nnunet_multitask.trainer import TRAINER_FOLDER

    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_extTrainer=TRAINER_FOLDER, nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1",
               nnUNet_compile="false", OMP_NUM_THREADS="2")
    return env


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    from nnunet_multitask.conversion import convert_dataset
    from nnunet_multitask.labels import OFFICIAL_SPLIT_FOLD
    from nnunet_multitask.plans import install_plans
    from nnunet_multitask.synthetic import SyntheticConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_run")
    env = cpu_nnunet_env(root)
    source = root / "download"
    generate_dataset(source, SyntheticConfig(train_per_subtype=2, val_per_subtype=1, n_test=2,
                                             shape_min=(48, 48, 16), shape_max=(56, 56, 20)))
    target = convert_dataset(source, TINY_DATASET_ID, "Tiny", env["nnUNet_raw"], env["nnUNet_preprocessed"],
                             num_processes=1, progress=False)
    run_command(("nnUNetv2_extract_fingerprint", "-d", str(TINY_DATASET_ID), "-np", "1"), env)
    install_plans(TINY_DATASET_ID, TINY_PLANS, env["nnUNet_preprocessed"], env["nnUNet_raw"])
    run_command(("nnUNetv2_preprocess", "-d", str(TINY_DATASET_ID), "-plans_name", TINY_PLANS,
                 "-c", TINY_CONFIGURATION, "-np", "1"), env)
    run_command(("nnUNetv2_train", str(TINY_DATASET_ID), TINY_CONFIGURATION, str(OFFICIAL_SPLIT_FOLD),
                 "-tr", SMOKE_TRAINER, "-p", TINY_PLANS, "-device", "cpu"), env)
    model_folder = Path(env["nnUNet_results"]) / target.name / f"{SMOKE_TRAINER}__{TINY_PLANS}__{TINY_CONFIGURATION}"
    return TinyRun(source, env, target.name, model_folder, OFFICIAL_SPLIT_FOLD)
