"""The evaluation driver: outputs, figures, nnU-Net agreement and each kind of bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnunet_multitask import cli
from nnunet_multitask.labels import PROBABILITY_CSV, PROBABILITY_CSV_HEADER, SUBTYPE_CSV, SUBTYPE_CSV_HEADER
from nnunet_multitask.plots import EvaluationInputError, evaluate_folder, main

CASES = {"quiz_0_001": 0, "quiz_1_002": 1, "quiz_2_003": 2, "quiz_0_004": 0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_nifti(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), dtype=np.uint8) -> Path:
    """Save ``data`` (nibabel's x, y, z order) with a diagonal affine."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), str(path))
    return path


def label_volume(shift: int = 0) -> np.ndarray:
    """16 x 16 x 8 pancreas block with a lesion cube; ``shift`` moves both along x."""
    volume = np.zeros((16, 16, 8), np.uint8)
    volume[3 + shift : 13 + shift, 4:12, 2:6] = 1
    volume[6 + shift : 9 + shift, 6:9, 3:5] = 2
    return volume


def write_csvs(pred: Path, subtypes: dict[str, int], probabilities: dict[str, list[float]] | None = None) -> None:
    rows = [(f"{c}.nii.gz", k) for c, k in subtypes.items()]
    with open(pred / SUBTYPE_CSV, "w", newline="") as f:
        csv.writer(f).writerows([SUBTYPE_CSV_HEADER, *rows])
    if probabilities is not None:
        with open(pred / PROBABILITY_CSV, "w", newline="") as f:
            csv.writer(f).writerows([PROBABILITY_CSV_HEADER, *[(n, k, *probabilities[n[:-7]]) for n, k in rows]])


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """Flat ground truth, a prediction folder (two cases shifted by one voxel, one misclassified)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    predicted = {}
    for i, (case, subtype) in enumerate(CASES.items()):
        write_nifti(gt / f"{case}.nii.gz", label_volume())
        write_nifti(pred / f"{case}.nii.gz", label_volume(shift=i % 2))
        predicted[case] = subtype if i else 1
    probabilities = {c: np.round(np.eye(3)[k] * 0.7 + 0.1, 6).tolist() for c, k in predicted.items()}
    write_csvs(pred, predicted, probabilities)
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "pancreas": 1, "lesion": 2},
        "numTraining": len(CASES), "file_ending": ".nii.gz", "case_subtypes": CASES,
    }))
    return {"gt": gt, "pred": pred, "out": tmp_path / "out", "dataset_json": dataset_json}


def run(folders, **kwargs) -> dict:
    kwargs.setdefault("num_processes", 1)
    return evaluate_folder(folders["pred"], folders["gt"], folders["out"], folders["dataset_json"], n_resamples=200, **kwargs)


def assert_png(path: Path) -> None:
    from PIL import Image
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path
    with Image.open(path) as image:
        image.verify()
    assert matplotlib.image.imread(path).shape[0] > 200


def test_evaluate_folder_writes_metrics_figures_report(folders):
    metrics = run(folders, num_processes=2)
    out = folders["out"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["n_cases_evaluated"] == 4 and metrics["n_missing_predictions"] == 0
    # shifted cases: pancreas 8x8x4 blocks overlap 9/10 along x -> Dice 0.9; lesion 2/3
    dice = {0: 1.0, 1: 0.9}
    assert metrics["headline"]["dice_pancreas"]["value"] == pytest.approx(np.mean([dice[i % 2] for i in range(4)]))
    assert metrics["headline"]["dice_lesion"]["value"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["headline"]["accuracy"]["value"] == 0.75
    for h in metrics["headline"].values():
        assert h["ci95"][0] <= h["value"] <= h["ci95"][1]
    assert metrics["headline"]["dice_pancreas"]["pass"] is True
    assert metrics["classification"]["ece"] is not None
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["case"] for r in rows] == sorted(CASES) and rows[0]["status"] == "ok"
    for name in ("confusion_matrix", "dice_per_label", "dice_vs_volume", "roc_pr", "reliability"):
        assert_png(out / f"{name}.png")
    report = (out / "report.md").read_text()
    assert "| Whole-pancreas Dice (label > 0) | 0.950 |" in report and "![Reliability diagram](reliability.png)" in report
    assert ">= 0.91 | PASS" in report


def test_cli_evaluate_and_eval_plots(folders, capsys):
    argv = ["--pred", str(folders["pred"]), "--labels", str(folders["gt"]), "--out", str(folders["out"]), "--num-processes", "1"]
    assert cli.main(["evaluate", *argv]) == 0
    assert "Whole-pancreas Dice (label > 0): 0.950" in capsys.readouterr().out
    (folders["pred"] / PROBABILITY_CSV).write_text("Names,Subtype\n")
    assert main(argv) == 1
    assert str(folders["pred"] / PROBABILITY_CSV) in capsys.readouterr().err


def test_raw_layout_with_float_masks_and_folder_subtypes(tmp_path, folders):
    raw = tmp_path / "validation"
    for case, subtype in CASES.items():
        noisy = label_volume().astype(np.float32) * 1.0000153  # as stored in the users' download
        write_nifti(raw / f"subtype{subtype}" / f"{case}.nii.gz", noisy, dtype=np.float32)
        write_nifti(raw / f"subtype{subtype}" / f"{case}_0000.nii.gz", np.zeros((16, 16, 8)), dtype=np.int16)
    metrics = evaluate_folder(folders["pred"], raw, folders["out"], num_processes=1, n_resamples=50)
    assert metrics["n_cases_evaluated"] == 4 and metrics["classification"]["n"] == 4
    assert metrics["headline"]["dice_pancreas"]["value"] == pytest.approx(0.95)


def test_agrees_with_nnunet_compute_metrics_on_folder(folders):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    dataset = json.loads(folders["dataset_json"].read_text())
    labels = [dataset["labels"]["pancreas"], dataset["labels"]["lesion"], (1, 2)]
    summary = folders["pred"] / "summary.json"
    compute_metrics_on_folder(str(folders["gt"]), str(folders["pred"]), str(summary), SimpleITKIO(),
                              dataset["file_ending"], labels, num_processes=1)
    agreement = run(folders)["nnunet_summary_agreement"]
    assert agreement["agree"] and agreement["values_compared"] == 3 * len(CASES)

    content = json.loads(summary.read_text())
    content["metric_per_case"][0]["metrics"]["2"]["Dice"] = 0.123
    summary.write_text(json.dumps(content))
    metrics = run(folders)
    assert not metrics["nnunet_summary_agreement"]["agree"]
    case = Path(content["metric_per_case"][0]["prediction_file"]).name[: -len(".nii.gz")]
    assert any(case in w and "dice_lesion" in w for w in metrics["warnings"])


# ------------------------------------------------------------------ bad input


def test_missing_prediction_is_reported_and_rest_evaluated(folders):
    (folders["pred"] / "quiz_1_002.nii.gz").unlink()
    metrics = run(folders)
    assert metrics["missing_predictions"] == ["quiz_1_002"] and metrics["n_missing_predictions"] == 1
    assert metrics["n_cases_evaluated"] == 3
    assert "quiz_1_002" in (folders["out"] / "report.md").read_text()


@pytest.mark.parametrize(
    "bad, expected",
    [
        (dict(data=label_volume()[:, :, :6]), "shape"),
        (dict(data=label_volume(), spacing=(1.0, 1.0, 3.0)), "spacing"),
        (dict(data=label_volume(), origin=(5.0, 0.0, 0.0)), "origin"),
        (dict(data=label_volume() * 2), "labels [4] outside"),
    ],
    ids=["shape", "spacing", "origin", "label"],
)
def test_bad_prediction_mask_is_excluded_by_name(folders, bad, expected):
    write_nifti(folders["pred"] / "quiz_2_003.nii.gz", **bad)
    metrics = run(folders)
    assert list(metrics["excluded_cases"]) == ["quiz_2_003"] and metrics["n_cases_evaluated"] == 3
    reason = metrics["excluded_cases"]["quiz_2_003"]
    assert expected in reason and "quiz_2_003.nii.gz" in reason


def test_non_integer_ground_truth_is_excluded_by_name(folders):
    write_nifti(folders["gt"] / "quiz_0_004.nii.gz", label_volume() * 1.2, dtype=np.float32)
    reason = run(folders)["excluded_cases"]["quiz_0_004"]
    assert "non-integer" in reason and str(folders["gt"] / "quiz_0_004.nii.gz") in reason


def test_csv_missing_case_is_left_out_of_classification(folders):
    (folders["pred"] / PROBABILITY_CSV).unlink()
    write_csvs(folders["pred"], {"quiz_0_001": 1, "quiz_1_002": 1, "quiz_2_003": 2})
    metrics = run(folders)
    assert metrics["classification"]["cases_without_prediction"] == ["quiz_0_004"]
    assert metrics["classification"]["n"] == 3 and metrics["headline"]["accuracy"]["n"] == 3
    assert any("quiz_0_004" in w and SUBTYPE_CSV in w for w in metrics["warnings"])


def test_csv_duplicate_case_is_fatal(folders):
    with open(folders["pred"] / SUBTYPE_CSV, "a") as f:
        f.write("quiz_1_002.nii.gz,2\n")
    with pytest.raises(EvaluationInputError, match=r"subtype_results\.csv line 6: quiz_1_002\.nii\.gz: duplicate"):
        run(folders)


@pytest.mark.parametrize(
    "row, expected",
    [((0.5, 0.2, 0.2), "quiz_2_003: probabilities sum to 0.900000"), ((1.2, -0.1, -0.1), "quiz_2_003: probabilities .* outside")],
    ids=["sum", "range"],
)
def test_bad_probabilities_are_fatal(folders, row, expected):
    path = folders["pred"] / PROBABILITY_CSV
    text = path.read_text().splitlines()
    text[3] = ",".join(["quiz_2_003.nii.gz", "0", *map(str, row)])
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(EvaluationInputError, match=expected) as error:
        run(folders)
    assert str(path) in str(error.value)
