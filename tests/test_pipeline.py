"""scripts/pipeline.sh end to end with scripts/ci.conf (a tiny synthetic set, 2 short epochs on the CPU):
every artefact, re-runs that skip finished work, --from, and a failing step named in the message."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from nnunet_multitask.labels import OFFICIAL_SPLIT_FOLD
from nnunet_multitask.submission import check_submission

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "scripts" / "pipeline.sh"
STEPS = ("convert", "preprocess", "train", "predict", "evaluate", "package")
DATASET = "Dataset778_PancreasCI"
MODEL = "nnUNetTrainerMultitask_CPUSmoke__nnUNetResEncUNetMPlans__3d_tiny"

pytestmark = pytest.mark.slow


def write_config(path: Path, work_dir: Path, **overrides: str) -> Path:
    """scripts/ci.conf with WORK_DIR (and any other key) replaced: later assignments win when sourced."""
    lines = [(REPO / "scripts" / "ci.conf").read_text(), f"WORK_DIR='{work_dir}'"]
    lines += [f"{key}='{value}'" for key, value in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORK_DIR", "NNUNET_MT_TRAINER_PATH")}
    return subprocess.run(["bash", str(PIPELINE), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=900)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    work = root / "work"
    config = write_config(root / "ci.conf", work)
    result = pipeline(config)
    assert result.returncode == 0, f"pipeline failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return work, config, result


def test_every_artefact(ci_run):
    work, _, result = ci_run
    raw, pre = work / "nnUNet_raw" / DATASET, work / "nnUNet_preprocessed" / DATASET
    # convert: 6 train + 3 validation cases in imagesTr, 2 test images, the subtype table, 6 folds
    assert len(list((raw / "imagesTr").glob("*_0000.nii.gz"))) == 9
    assert len(list((raw / "labelsTr").glob("*.nii.gz"))) == 9
    test_images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))
    assert len(test_images) == 2
    assert len(json.loads((raw / "dataset.json").read_text())["case_subtypes"]) == 9
    splits = json.loads((pre / "splits_final.json").read_text())
    assert len(splits) == 6
    val_cases = sorted(splits[OFFICIAL_SPLIT_FOLD]["val"])
    assert len(val_cases) == 3 and len(splits[OFFICIAL_SPLIT_FOLD]["train"]) == 6
    # preprocess: the committed plans, installed, and the 3d_tiny data
    assert json.loads((pre / "nnUNetResEncUNetMPlans.json").read_text())["dataset_name"] == DATASET
    assert any((pre / "nnUNetResEncUNetMPlans_3d_tiny").iterdir())
    # train
    assert (work / "nnUNet_results" / DATASET / MODEL / "fold_5" / "checkpoint_final.pth").is_file()
    # predict: validation (inputs linked into nnUNet_raw) and test
    val = work / "validation"
    assert sorted(p.name for p in (val / "images").iterdir()) == [f"{c}_0000.nii.gz" for c in val_cases]
    assert all(p.is_symlink() and p.exists() for p in (val / "labels").iterdir())
    assert sorted(p.name for p in (val / "predictions").glob("*.nii.gz")) == [f"{c}.nii.gz" for c in val_cases]
    rows = read_csv(val / "predictions" / "subtype_results.csv")
    assert rows[0] == ["Names", "Subtype"]
    assert sorted(r[0] for r in rows[1:]) == [f"{c}.nii.gz" for c in val_cases]
    assert all(r[1] in ("0", "1", "2") for r in rows[1:])
    test_pred = work / "test" / "predictions"
    assert len(list(test_pred.glob("*.nii.gz"))) == 2 and len(read_csv(test_pred / "subtype_results.csv")) == 3
    # evaluate
    report = work / "report"
    assert "headline" in json.loads((report / "metrics.json").read_text())
    assert (report / "report.md").read_text().startswith("# Evaluation report")
    assert list(report.glob("*.png"))
    # package
    assert check_submission(work / "submission", raw / "imagesTs") == []
    assert not (work / "submission.partial").exists()
    # markers and the closing summary
    assert all((work / ".done" / step).is_file() for step in STEPS)
    assert f"report: {report / 'report.md'}" in result.stdout
    assert "Subtype macro-F1:" in result.stdout.split("== finished ==")[1]


def test_rerun_skips_every_step(ci_run):
    work, config, _ = ci_run
    checkpoint = work / "nnUNet_results" / DATASET / MODEL / "fold_5" / "checkpoint_final.pth"
    mtime = checkpoint.stat().st_mtime_ns
    start = time.monotonic()
    result = pipeline(config)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 90
    for step in STEPS:
        assert f"{step}: skip: done already" in result.stdout
    assert checkpoint.stat().st_mtime_ns == mtime


def test_from_redoes_later_steps_only(ci_run):
    work, config, _ = ci_run
    checkpoint = work / "nnUNet_results" / DATASET / MODEL / "fold_5" / "checkpoint_final.pth"
    mtime = checkpoint.stat().st_mtime_ns
    result = pipeline(config, "--from", "evaluate")
    assert result.returncode == 0, result.stderr
    assert "not running 'train'" in result.stdout
    assert "evaluate: start" in result.stdout and "package: start" in result.stdout
    assert check_submission(work / "submission", work / "nnUNet_raw" / DATASET / "imagesTs") == []
    assert checkpoint.stat().st_mtime_ns == mtime


def test_failing_step_is_named(tmp_path):
    work = tmp_path / "work"
    config = write_config(tmp_path / "bad.conf", work, SOURCE=tmp_path / "no_such_download")
    result = pipeline(config)
    assert result.returncode != 0
    assert "pipeline: step 'convert' failed" in result.stderr
    assert "no_such_download" in result.stdout  # the step's own explanation
    assert not (work / ".done" / "convert").exists()
    assert "== preprocess ==" not in result.stdout


def test_bad_usage_and_config(tmp_path):
    result = pipeline(write_config(tmp_path / "c.conf", tmp_path / "w"), "--from", "nonsense")
    assert result.returncode != 0 and "unknown step 'nonsense'" in result.stderr
    result = pipeline(write_config(tmp_path / "d.conf", tmp_path / "w", FAST="yes"))
    assert result.returncode != 0 and "FAST must be 0 or 1" in result.stderr
