"""nnUNetv2_predict_multitask and MultitaskPredictor on the tiny trained model (``tiny_run``)."""
from __future__ import annotations

import csv
import gzip
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnunet_multitask.aggregation import foreground_weight
from nnunet_multitask.labels import PROBABILITY_CSV, SUBTYPE_CSV
from nnunet_multitask.predictor import (
    FAST,
    MultitaskPredictor,
    PredictionInputError,
    SpeedOptions,
    bf16_autocast_supported,
    build_parser,
    case_sized_tile,
    find_input_cases,
    speed_options,
    total_strides,
)
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


@pytest.mark.parametrize("image, expected", [
    ((30, 58, 58), (32, 64, 64)),     # fits: one tile, rounded up to the strides (4, 8, 8)
    ((20, 40, 50), (24, 64, 64)),     # smaller than the patch: the patch
    # too big for 4 patch volumes: 4 x 2 x 1 tiles of 24x80x184 (2.8 M voxels computed) instead of
    # the patch's 4 x 3 x 5 tiles (5.9 M voxels)
    ((59, 117, 181), (24, 80, 184)),
])
def test_case_sized_tile(image, expected):
    tile = case_sized_tile(image, (24, 64, 64), (4, 8, 8), max_voxels=4 * 24 * 64 * 64, step_size=0.5)
    assert tile == expected


def test_total_strides_of_the_tiny_plans(predictor_factory):
    assert total_strides(predictor_factory().configuration_manager) == (4, 8, 8)


def count_network_calls(predictor: MultitaskPredictor, data: torch.Tensor) -> tuple[int, list, torch.Tensor]:
    shapes = []
    handle = predictor.network.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), o.dtype)))
    try:
        logits, _ = predictor.predict_case(data)
    finally:
        handle.remove()
    return len(shapes), shapes, logits


def test_case_sized_tiles_make_one_call_per_mirror(predictor_factory):
    patch = predictor_factory().configuration_manager.patch_size
    data = torch.randn(1, patch[0] + 6, patch[1] - 6, patch[2] - 6)  # two tiles along the first axis
    plans_calls, _, plans_logits = count_network_calls(predictor_factory(), data)
    tiled = predictor_factory(case_sized_tiles=True)
    calls, shapes, logits = count_network_calls(tiled, data)
    assert (plans_calls, calls) == (2 * 8, 8)
    assert {s for s, _ in shapes} == {(1, 1, patch[0] + 8, patch[1], patch[2])}
    assert logits.shape == plans_logits.shape == (3, *data.shape[1:])
    assert tuple(tiled.configuration_manager.patch_size) == tuple(patch)  # the plans' tile is back


def test_case_sized_tiles_fall_back_to_the_plans_tiles_when_out_of_memory(predictor_factory, monkeypatch):
    patch = tuple(predictor_factory().configuration_manager.patch_size)
    data = torch.randn(1, patch[0] + 6, patch[1] - 6, patch[2] - 6)
    expected, _ = predictor_factory(use_mirroring=False).predict_case(data)
    predictor = predictor_factory(case_sized_tiles=True, use_mirroring=False)
    forward = predictor.network.forward

    def patch_sized_only(x):
        if tuple(x.shape[2:]) != patch:
            raise torch.OutOfMemoryError("simulated: the case-sized tile does not fit")
        return forward(x)

    monkeypatch.setattr(predictor.network, "forward", patch_sized_only)
    logits, probabilities = predictor.predict_case(data)
    torch.testing.assert_close(logits, expected)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)


def test_mixed_precision_without_native_bfloat16_is_ignored_with_a_notice(predictor_factory, monkeypatch, capsys):
    monkeypatch.setattr("nnunet_multitask.predictor.bf16_autocast_supported", lambda: False)
    predictor = predictor_factory(mixed_precision=True, use_mirroring=False)
    assert "--mixed-precision ignored" in capsys.readouterr().out
    _, shapes, _ = count_network_calls(predictor, torch.randn(1, *predictor.configuration_manager.patch_size))
    assert {dtype for _, dtype in shapes} == {torch.float32}


@pytest.mark.skipif(not bf16_autocast_supported(), reason="this CPU has no native bfloat16")
def test_mixed_precision_runs_the_network_in_bfloat16(predictor_factory):
    patch = predictor_factory().configuration_manager.patch_size
    data = torch.randn(1, *patch)
    _, shapes, logits = count_network_calls(predictor_factory(mixed_precision=True, use_mirroring=False), data)
    _, full_shapes, full_logits = count_network_calls(predictor_factory(use_mirroring=False), data)
    assert {dtype for _, dtype in shapes} == {torch.bfloat16} and {d for _, d in full_shapes} == {torch.float32}
    # bfloat16 keeps 8 bits of mantissa: logits agree to about a percent, the labels almost everywhere
    difference = torch.abs(logits.float() - full_logits.float())
    print(f"mean |diff| {difference.mean():.4f}, max |logit| {full_logits.abs().max():.2f}, "
          f"same label {(logits.argmax(0) == full_logits.argmax(0)).float().mean():.4f}")
    assert difference.mean() < 0.01 * full_logits.abs().max()
    assert (logits.argmax(0) == full_logits.argmax(0)).float().mean() > 0.98


def test_direct_load_builds_the_same_model_without_nnunets_trainer_search(predictor_factory, monkeypatch):
    searched = predictor_factory()

    def no_search(name):
        raise AssertionError(f"nnU-Net's trainer search was called for {name}")

    monkeypatch.setattr("nnunetv2.inference.predict_from_raw_data.recursive_find_trainer_class_by_name", no_search)
    direct = predictor_factory(direct_load=True)
    assert type(direct.network) is type(searched.network) and direct.trainer_name == searched.trainer_name
    assert direct.allowed_mirroring_axes == searched.allowed_mirroring_axes
    assert direct.configuration_manager.configuration == searched.configuration_manager.configuration
    for mine, theirs in zip(direct.list_of_parameters, searched.list_of_parameters, strict=True):
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    for (name, mine), (_, theirs) in zip(direct.network.state_dict().items(), searched.network.state_dict().items(),
                                         strict=True):
        assert torch.equal(mine, theirs), name


def test_in_plane_mirroring_drops_the_slice_axis(predictor_factory):
    patch = predictor_factory().configuration_manager.patch_size
    data = torch.randn(1, *patch)
    full = predictor_factory()
    in_plane = predictor_factory(in_plane_mirroring=True)
    assert full.allowed_mirroring_axes == (0, 1, 2) and in_plane.allowed_mirroring_axes == (1, 2)
    full_calls, full_shapes, _ = count_network_calls(full, data)
    calls, _, logits = count_network_calls(in_plane, data)
    assert (full_calls, calls) == (8, 4)
    # the same 4 passes as nnU-Net's mirroring restricted to axes (1, 2) by hand
    full.allowed_mirroring_axes = (1, 2)
    torch.testing.assert_close(logits, full.predict_case(data)[0])


@pytest.mark.parametrize("flags, frozen", [([], False), (["--gc-freeze"], True), (["--fast"], True)])
def test_gc_freeze_after_the_model_is_loaded(tiny_run, predictor_factory, tmp_path, monkeypatch, flags, frozen):
    from nnunet_multitask import predictor as module

    calls = []
    monkeypatch.setattr(module.gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(module.MultitaskPredictor, "predict_folder",
                        lambda self, *a, **k: calls.append("predict") or module.PredictionReport())
    assert module.main(["-i", str(tiny_test_images(tiny_run)), "-o", str(tmp_path), "-d", tiny_run.dataset_name,
                        "-c", TINY_CONFIGURATION, "-tr", SMOKE_TRAINER, "-f", str(tiny_run.fold), "-device", "cpu",
                        *flags]) == 0
    assert calls == (["freeze", "predict"] if frozen else ["predict"])


def test_every_trainer_of_the_package_has_the_direct_load_prefix():
    from nnunet_multitask import trainer as trainers
    from nnunet_multitask.predictor import MULTITASK_TRAINER_PREFIX

    names = [name for name, obj in vars(trainers).items()
             if isinstance(obj, type) and issubclass(obj, trainers.nnUNetTrainerMultitask)]
    assert len(names) > 5 and all(name.startswith(MULTITASK_TRAINER_PREFIX) for name in names)


@pytest.mark.parametrize("argv, expected", [
    ([], SpeedOptions()),
    (["--fast"], FAST),
    (["--fast", "--disable_tta"], replace(FAST, use_mirroring=False)),
    (["--fast", "--case-sized-tiles"], replace(FAST, case_sized_tiles=True)),
    (["--in-process", "--fast-resampling"], SpeedOptions(in_process=True, fast_resampling=True)),
    (["--case-sized-tiles", "--mixed-precision", "--direct-load", "--in-plane-mirroring", "--gc-freeze"],
     SpeedOptions(case_sized_tiles=True, mixed_precision=True, direct_load=True, in_plane_mirroring=True,
                  gc_freeze=True)),
])
def test_speed_options_from_the_command_line(argv, expected):
    args = build_parser().parse_args(["-i", "in", "-o", "out", "-d", "1", *argv])
    assert speed_options(args) == expected



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


@pytest.mark.parametrize("direct_load", [False, True])
def test_checkpoint_without_head_is_a_clear_error(tiny_run, tmp_path, monkeypatch, direct_load):
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
    predictor = MultitaskPredictor(device=torch.device("cpu"), direct_load=direct_load)
    with pytest.raises(PredictionInputError, match="no subtype head"):
        predictor.initialize_from_trained_model_folder(str(model), (tiny_run.fold,))

    checkpoint["trainer_name"] = SMOKE_TRAINER  # our trainer, but the head's weights are missing
    torch.save(checkpoint, checkpoint_file)
    monkeypatch.setenv("nnUNet_extTrainer", tiny_run.env["nnUNet_extTrainer"])
    with pytest.raises(PredictionInputError, match="checkpoint_final.pth.*no subtype head weights"):
        predictor.initialize_from_trained_model_folder(str(model), (tiny_run.fold,))
