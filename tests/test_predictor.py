"""nnUNetv2_predict_multitask and MultitaskPredictor on the tiny trained model (``tiny_run``)."""
from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunet_multitask.aggregation import foreground_weight
from nnunet_multitask.labels import PROBABILITY_CSV, SUBTYPE_CSV
from nnunet_multitask.predictor import MultitaskPredictor, PredictionInputError, find_input_cases
from nnunet_multitask.subtype_tables import merge_parts, part_file_name, read_probability_table, write_subtype_tables

from conftest import SMOKE_TRAINER, TINY_CONFIGURATION, TINY_PLANS, shared_data


@pytest.fixture
def predictor_factory(tiny_run, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(name, tiny_run.env[name])

    def make(**kwargs) -> MultitaskPredictor:
        predictor = MultitaskPredictor(device=torch.device("cpu"), allow_tqdm=False, **kwargs)
        predictor.initialize_from_trained_model_folder(str(tiny_run.model_folder), (tiny_run.fold,))
        return predictor

    return make


def tiny_test_images(tiny_run) -> Path:
    return Path(tiny_run.env["nnUNet_raw"]) / tiny_run.dataset_name / "imagesTs"


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_command_writes_segmentations_and_both_csvs(tiny_run, tmp_path):
    out = tmp_path / "pred"
    images = tiny_test_images(tiny_run)
    tiny_run.run("nnUNetv2_predict_multitask", "-i", str(images), "-o", str(out), "-d", tiny_run.dataset_name,
                 "-c", TINY_CONFIGURATION, "-tr", SMOKE_TRAINER, "-p", TINY_PLANS, "-f", str(tiny_run.fold),
                 "-device", "cpu", "-npp", "1", "-nps", "1")
    cases = sorted(p.name.replace("_0000", "") for p in images.glob("*.nii.gz"))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == cases
    rows = read_rows(out / SUBTYPE_CSV)
    assert rows[0] == ["Names", "Subtype"] and [r[0] for r in rows[1:]] == cases
    assert all(r[1] in {"0", "1", "2"} for r in rows[1:])
    probabilities = read_probability_table(out / PROBABILITY_CSV)
    for name, subtype in rows[1:]:
        p = probabilities[name[: -len(".nii.gz")]]
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and int(np.argmax(p)) == int(subtype)
    for case in cases:
        image = nib.load(images / case.replace(".nii.gz", "_0000.nii.gz"))
        segmentation = nib.load(out / case)
        assert segmentation.shape == image.shape
        np.testing.assert_allclose(segmentation.affine, image.affine, atol=1e-4)


def test_probabilities_are_the_foreground_weighted_mean_over_tiles(predictor_factory):
    predictor = predictor_factory(use_mirroring=False)
    patch = predictor.configuration_manager.patch_size
    data = torch.randn(1, patch[0] + 6, patch[1] + 30, patch[2] + 20)
    slicers = predictor._internal_get_sliding_window_slicers(data.shape[1:])
    assert len(slicers) > 1
    predictor.network.eval()
    weighted, total = torch.zeros(3), 0.0
    with torch.no_grad():
        for sl in slicers:
            segmentation = predictor.network(data[sl][None])
            w = float(foreground_weight(segmentation)[0])
            weighted += w * torch.softmax(predictor.network.subtype_logits[0].float(), 0)
            total += w
    _, probabilities = predictor.predict_case(data)
    torch.testing.assert_close(probabilities, weighted / total, atol=1e-5, rtol=1e-4)


def test_parts_and_merge_equal_one_run(predictor_factory, tiny_run, tmp_path):
    images = tiny_test_images(tiny_run)
    single = predictor_factory(use_mirroring=False).predict_folder(images, tmp_path / "one", in_process=True)
    parts = tmp_path / "parts"
    for part_id in (1, 0):
        predictor_factory(use_mirroring=False).predict_folder(images, parts, in_process=True, num_parts=2,
                                                              part_id=part_id)
        assert (parts / part_file_name(part_id, 2)).is_file()
    assert read_rows(parts / SUBTYPE_CSV) == read_rows(tmp_path / "one" / SUBTYPE_CSV)
    merged = read_probability_table(parts / PROBABILITY_CSV)
    assert merged.keys() == single.probabilities.keys()
    for case, p in single.probabilities.items():
        np.testing.assert_allclose(merged[case], p, atol=2e-6)
    (parts / part_file_name(1, 2)).unlink()
    with pytest.raises(FileNotFoundError, match=part_file_name(1, 2)):
        merge_parts(parts)


def test_continue_prediction_keeps_earlier_rows(predictor_factory, tiny_run, tmp_path):
    images, out = tiny_test_images(tiny_run), tmp_path / "out"
    first = predictor_factory(use_mirroring=False).predict_folder(images, out, in_process=True)
    kept, redone = sorted(first.probabilities)
    (out / f"{redone}.nii.gz").unlink()
    table = read_probability_table(out / PROBABILITY_CSV)
    table[kept] = np.array([0.2, 0.3, 0.5])  # marks the row: a re-prediction would overwrite it
    write_subtype_tables(out, table)
    second = predictor_factory(use_mirroring=False).predict_folder(images, out, in_process=True,
                                                                   continue_prediction=True)
    assert second.predicted == [redone]
    final = read_probability_table(out / PROBABILITY_CSV)
    np.testing.assert_allclose(final[kept], [0.2, 0.3, 0.5])
    np.testing.assert_allclose(final[redone], first.probabilities[redone], atol=2e-6)


def test_in_process_pipeline_gives_the_default_result(predictor_factory, tiny_run, tmp_path):
    """The in-process strategy only removes worker processes: same segmentations, same subtypes.
    Mirroring and fast resampling change numbers; the benchmark measures what they cost on a trained
    model (this 4-iteration model has most voxels near a decision boundary)."""
    images = tiny_test_images(tiny_run)
    default = predictor_factory().predict_folder(images, tmp_path / "default", num_processes_preprocessing=1,
                                                 num_processes_segmentation_export=1)
    fast = predictor_factory().predict_folder(images, tmp_path / "fast", in_process=True)
    assert default.probabilities.keys() == fast.probabilities.keys()
    for case in default.probabilities:
        np.testing.assert_allclose(default.probabilities[case], fast.probabilities[case], atol=1e-4)
        a = np.asarray(nib.load(tmp_path / "default" / f"{case}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "fast" / f"{case}.nii.gz").dataobj)
        assert np.mean(a == b) > 0.999
    assert 0 < fast.network_seconds < fast.total_seconds


def test_fast_resampling_changes_only_the_interpolation_orders(predictor_factory):
    default, fast = predictor_factory().configuration_manager, predictor_factory(fast_resampling=True).configuration_manager
    assert (default.configuration["resampling_fn_data_kwargs"]["order"], default.configuration["resampling_fn_probabilities_kwargs"]["order"]) == (3, 1)
    assert (fast.configuration["resampling_fn_data_kwargs"]["order"], fast.configuration["resampling_fn_probabilities_kwargs"]["order"]) == (1, 0)
    assert {k: v for k, v in fast.configuration.items() if "resampling" not in k} == \
        {k: v for k, v in default.configuration.items() if "resampling" not in k}


def test_fast_preset_command_runs(tiny_run, tmp_path):
    out = tmp_path / "fast"
    result = tiny_run.run("nnUNetv2_predict_multitask", "-i", str(tiny_test_images(tiny_run)), "-o", str(out),
                          "-d", tiny_run.dataset_name, "-c", TINY_CONFIGURATION, "-tr", SMOKE_TRAINER,
                          "-f", str(tiny_run.fold), "-device", "cpu", "--fast")
    assert "predicted 2 case(s)" in result.stdout
    assert len(read_rows(out / SUBTYPE_CSV)) == 3 and len(list(out.glob("*.nii.gz"))) == 2


def test_real_ct_runs_through(predictor_factory, tmp_path):
    real = shared_data("quiz_ct_test")
    picked = tmp_path / "real"
    picked.mkdir()
    for name in ("quiz_037_0000.nii.gz", "quiz_048_0000.nii.gz"):  # int16 and other storage types
        shutil.copy(real / name, picked / name)
    report = predictor_factory(use_mirroring=False, fast_resampling=True).predict_folder(
        picked, tmp_path / "out", in_process=True)
    assert report.problems == [] and sorted(report.probabilities) == ["quiz_037", "quiz_048"]
    for case in report.probabilities:
        image = nib.load(picked / f"{case}_0000.nii.gz")
        assert nib.load(tmp_path / "out" / f"{case}.nii.gz").shape == image.shape


@pytest.fixture
def messy_input(tiny_run, tmp_path) -> Path:
    folder = tmp_path / "messy"
    shutil.copytree(tiny_test_images(tiny_run), folder)
    good = sorted(folder.iterdir())[0]
    shutil.copy(good, folder / "quiz_900.nii.gz")                 # no _0000 channel suffix
    shutil.copy(good, folder / "quiz_901_0000.nii")                # wrong file ending
    blob = good.read_bytes()
    (folder / "quiz_902_0000.nii.gz").write_bytes(blob[: len(blob) // 2])   # truncated
    (folder / "quiz_903_0000.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))  # corrupt
    return folder


@pytest.mark.parametrize("bad,expected", [
    ("quiz_900.nii.gz", "_0000 channel suffix"),
    ("quiz_901_0000.nii", "wrong file ending"),
    ("quiz_902_0000.nii.gz", "cannot read NIfTI"),
    ("quiz_903_0000.nii.gz", "cannot read NIfTI"),
])
def test_bad_input_is_named_and_the_rest_is_predicted(tiny_run, messy_input, bad, expected):
    cases, problems = find_input_cases(messy_input)
    assert [p for p in problems if bad in p and expected in p]
    assert len(problems) == 4 and len(cases) == len(list(tiny_test_images(tiny_run).iterdir()))


def test_bad_inputs_leave_only_finished_cases_in_the_csv(predictor_factory, tiny_run, messy_input, tmp_path):
    out = tmp_path / "out"
    report = predictor_factory(use_mirroring=False).predict_folder(messy_input, out, in_process=True)
    good = sorted(p.name.replace("_0000.nii.gz", "") for p in tiny_test_images(tiny_run).iterdir())
    assert report.predicted == good and len(report.problems) == 4
    assert [r[0] for r in read_rows(out / SUBTYPE_CSV)[1:]] == [c + ".nii.gz" for c in good]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictionInputError, match="empty.*no images"):
        find_input_cases(tmp_path / "empty")


def test_checkpoint_without_head_is_a_clear_error(tiny_run, tmp_path, monkeypatch):
    results = tmp_path / "results"
    model = results / tiny_run.dataset_name / f"nnUNetTrainer__{TINY_PLANS}__{TINY_CONFIGURATION}"
    shutil.copytree(tiny_run.model_folder, model)
    checkpoint_file = model / f"fold_{tiny_run.fold}" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    checkpoint["network_weights"] = {k: v for k, v in checkpoint["network_weights"].items()
                                     if not k.startswith("subtype_head.")}
    torch.save(checkpoint, checkpoint_file)
    monkeypatch.setenv("nnUNet_results", str(results))
    predictor = MultitaskPredictor(device=torch.device("cpu"))
    with pytest.raises(PredictionInputError, match="no subtype head"):
        predictor.initialize_from_trained_model_folder(str(model), (tiny_run.fold,))

    checkpoint["trainer_name"] = SMOKE_TRAINER  # our trainer, but the head's weights are missing
    torch.save(checkpoint, checkpoint_file)
    monkeypatch.setenv("nnUNet_extTrainer", tiny_run.env["nnUNet_extTrainer"])
    with pytest.raises(PredictionInputError, match="checkpoint_final.pth.*no subtype head weights"):
        predictor.initialize_from_trained_model_folder(str(model), (tiny_run.fold,))
