"""``check-submission`` on a valid folder and on each kind of bad folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnunet_multitask import cli
from nnunet_multitask.labels import SUBTYPE_CSV
from nnunet_multitask.submission import check_submission
from test_evaluation import label_volume, write_nifti

CASES = ("quiz_037", "quiz_038")
GOOD_CSV = "Names,Subtype\nquiz_037.nii.gz,0\nquiz_038.nii.gz,2\n"


@pytest.fixture
def submission(tmp_path) -> tuple[Path, Path]:
    """A valid output folder and its test images."""
    pred, images = tmp_path / "pred", tmp_path / "images"
    for case in CASES:
        write_nifti(images / f"{case}_0000.nii.gz", np.zeros((16, 16, 8)), origin=(3.0, 2.0, 1.0), dtype=np.int16)
        write_nifti(pred / f"{case}.nii.gz", label_volume(), origin=(3.0, 2.0, 1.0))
    (pred / SUBTYPE_CSV).write_text(GOOD_CSV)
    return pred, images


def test_good_submission_has_no_problems(submission, capsys):
    assert check_submission(*submission) == []
    assert cli.main(["check-submission", str(submission[0]), "--images", str(submission[1])]) == 0
    assert "OK" in capsys.readouterr().out


def mask(**kwargs):
    """A mutation writing quiz_038's mask with changed data or geometry."""
    kwargs.setdefault("data", label_volume())
    kwargs.setdefault("origin", (3.0, 2.0, 1.0))
    return lambda pred, images: write_nifti(pred / "quiz_038.nii.gz", **kwargs)


def csv_text(text: str):
    return lambda pred, images: (pred / SUBTYPE_CSV).write_text(text)


BAD = {
    "missing mask": (lambda pred, images: (pred / "quiz_038.nii.gz").unlink(), "quiz_038.nii.gz: missing mask"),
    "extra mask": (lambda pred, images: write_nifti(pred / "quiz_099.nii.gz", label_volume()), "quiz_099.nii.gz: no matching image"),
    "shape": (mask(data=label_volume()[:, :, :7]), "quiz_038.nii.gz: shape (7, 16, 16) != (8, 16, 16)"),
    "spacing": (mask(spacing=(1.0, 1.0, 2.5)), "quiz_038.nii.gz: spacing"),
    "origin": (mask(origin=(3.0, 2.0, 1.5)), "quiz_038.nii.gz: origin"),
    "direction": (mask(spacing=(-1.0, 1.0, 2.0)), "quiz_038.nii.gz: direction"),
    "float pixels": (mask(dtype=np.float32), "quiz_038.nii.gz: pixel type 32-bit float"),
    "labels": (mask(data=label_volume() + 1), "quiz_038.nii.gz: labels [3] outside"),
    "csv missing": (lambda pred, images: (pred / SUBTYPE_CSV).unlink(), f"{SUBTYPE_CSV}: missing"),
    "csv header": (csv_text(GOOD_CSV.replace("Names,Subtype", "names,subtype")), "header 'names,subtype' != 'Names,Subtype'"),
    "csv missing row": (csv_text("Names,Subtype\nquiz_037.nii.gz,0\n"), "no row for quiz_038.nii.gz"),
    "csv duplicate": (csv_text(GOOD_CSV + "quiz_038.nii.gz,1\n"), "line 4: quiz_038.nii.gz: duplicate row"),
    "csv subtype": (csv_text(GOOD_CSV.replace(",2", ",3")), "line 3: quiz_038.nii.gz: subtype '3' not in [0, 1, 2]"),
    "csv float subtype": (csv_text(GOOD_CSV.replace(",2", ",2.0")), "subtype '2.0' not in"),
    "csv name": (csv_text(GOOD_CSV.replace("quiz_038.nii.gz", "quiz_038")), "line 3: name 'quiz_038' should be"),
    "csv unknown case": (csv_text(GOOD_CSV + "quiz_099.nii.gz,1\n"), "row quiz_099.nii.gz has no test image"),
}


@pytest.mark.parametrize("name", BAD)
def test_each_bad_submission_is_reported(submission, name):
    mutate, expected = BAD[name]
    mutate(*submission)
    problems = check_submission(*submission)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_listed_and_exit_code(submission, capsys):
    names = ("labels", "csv duplicate", "extra mask")
    for name in names:
        BAD[name][0](*submission)
    write_nifti(submission[0] / "quiz_037.nii.gz", label_volume(), origin=(0.0, 2.0, 1.0))
    problems = check_submission(*submission)
    assert any("quiz_037.nii.gz: origin" in p for p in problems), problems
    for name in names:
        assert any(BAD[name][1] in p for p in problems), (name, problems)
    assert cli.main(["check-submission", str(submission[0]), "--images", str(submission[1])]) == 1
    assert f"{len(problems)} problem(s)" in capsys.readouterr().out
