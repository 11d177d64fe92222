"""A real CPU run of ``nnUNetv2_train -tr nnUNetTrainerMultitask_CPUSmoke`` on a converted
synthetic set (session fixture ``tiny_run``), then resume, ``--val`` and stock prediction."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

from nnunet_multitask.labels import PROBABILITY_CSV, SUBTYPE_CSV, read_case_subtypes
from nnunet_multitask.trainer import LOG_KEYS, SUBTYPE_METRICS_JSON, SUBTYPE_PROGRESS_PNG, balanced_class_weights

from conftest import SMOKE_TRAINER, TINY_CONFIGURATION, TINY_PLANS, run_command


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def val_cases(tiny_run) -> list[str]:
    splits = json.loads((tiny_run.model_folder.parents[1].parent / "nnUNet_preprocessed" / tiny_run.dataset_name
                         / "splits_final.json").read_text())
    return sorted(splits[tiny_run.fold]["val"])


def test_training_writes_checkpoint_with_head_and_history(tiny_run):
    fold = tiny_run.model_folder / f"fold_{tiny_run.fold}"
    checkpoint = load_checkpoint(fold / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == SMOKE_TRAINER
    assert any(k.startswith("subtype_head.") for k in checkpoint["network_weights"])
    for key in LOG_KEYS:
        assert len(checkpoint["logging"][key]) == 2, key
    for png in ("progress.png", SUBTYPE_PROGRESS_PNG):
        assert (fold / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "subtype: train_loss" in log and "val_macro_f1" in log


def test_final_validation_writes_subtype_files(tiny_run):
    validation = tiny_run.model_folder / f"fold_{tiny_run.fold}" / "validation"
    cases = val_cases(tiny_run)
    assert json.loads((validation / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0
    assert sorted(p.name[:-7] for p in validation.glob("*.nii.gz")) == cases
    with open(validation / SUBTYPE_CSV) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Names", "Subtype"]
    assert [r[0] for r in rows[1:]] == [c + ".nii.gz" for c in cases]
    with open(validation / PROBABILITY_CSV) as f:
        probability_rows = list(csv.DictReader(f))
    for row, subtype_row in zip(probability_rows, rows[1:]):
        probabilities = np.array([float(row[f"prob_subtype{k}"]) for k in range(3)])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert int(row["Subtype"]) == int(subtype_row[1]) == int(np.argmax(probabilities))
    metrics = json.loads((validation / SUBTYPE_METRICS_JSON).read_text())
    truth = read_case_subtypes(tiny_run.model_folder / "dataset.json")
    assert {k: v["target"] for k, v in metrics["per_case"].items()} == {c: truth[c] for c in cases}
    predicted = np.array([metrics["per_case"][c]["predicted"] for c in cases])
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == np.array([truth[c] for c in cases])))


def use_env(monkeypatch, env: dict) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA"):
        monkeypatch.setenv(name, env[name])


def test_resume_restores_head_and_history_and_trains_on(tiny_run, tmp_path, monkeypatch):
    results = tmp_path / "nnUNet_results"
    shutil.copytree(tiny_run.env["nnUNet_results"], results)
    use_env(monkeypatch, dict(tiny_run.env, nnUNet_results=str(results)))
    fold = results / tiny_run.dataset_name / tiny_run.model_folder.name / f"fold_{tiny_run.fold}"
    before = load_checkpoint(fold / "checkpoint_final.pth")
    shutil.move(fold / "checkpoint_final.pth", fold / "checkpoint_latest.pth")

    trainer = get_trainer_from_args(tiny_run.dataset_name, TINY_CONFIGURATION, tiny_run.fold, SMOKE_TRAINER,
                                    TINY_PLANS, continue_training=True, device=torch.device("cpu"))
    trainer.num_epochs = 3
    maybe_load_checkpoint(trainer, continue_training=True, validation_only=False)
    head = trainer.network.subtype_head.state_dict()
    for key, value in head.items():
        torch.testing.assert_close(value, before["network_weights"][f"subtype_head.{key}"])
    assert trainer.current_epoch == 2
    assert trainer.logger.get_value("val_subtype_accuracy", None) == before["logging"]["val_subtype_accuracy"]

    trainer.run_training()
    after = load_checkpoint(fold / "checkpoint_final.pth")
    assert after["current_epoch"] == 3
    for key in LOG_KEYS:
        assert len(after["logging"][key]) == 3
        assert after["logging"][key][:2] == before["logging"][key]
    assert not torch.equal(after["network_weights"]["subtype_head.mlp.5.weight"],
                           before["network_weights"]["subtype_head.mlp.5.weight"])


def test_validation_only_rewrites_validation(tiny_run, tmp_path):
    env = dict(tiny_run.env, nnUNet_results=str(tmp_path / "results"))
    shutil.copytree(tiny_run.env["nnUNet_results"], env["nnUNet_results"])
    validation = tmp_path / "results" / tiny_run.dataset_name / tiny_run.model_folder.name / f"fold_{tiny_run.fold}" / "validation"
    shutil.rmtree(validation)
    run_command(("nnUNetv2_train", tiny_run.dataset_name, TINY_CONFIGURATION, str(tiny_run.fold), "-tr", SMOKE_TRAINER,
                 "-p", TINY_PLANS, "-device", "cpu", "--val"), env)
    assert (validation / SUBTYPE_CSV).is_file() and (validation / "summary.json").is_file()


def test_stock_predict_runs_on_our_checkpoint(tiny_run, tmp_path):
    out = tmp_path / "stock"
    images = tiny_run.model_folder.parents[1].parent / "nnUNet_raw" / tiny_run.dataset_name / "imagesTs"
    tiny_run.run("nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", tiny_run.dataset_name,
                 "-c", TINY_CONFIGURATION, "-tr", SMOKE_TRAINER, "-p", TINY_PLANS, "-f", str(tiny_run.fold),
                 "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1")
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert written == sorted(p.name.replace("_0000", "") for p in images.glob("*.nii.gz"))


def test_balanced_class_weights():
    weights = balanced_class_weights([0, 1, 1, 1, 2, 2])
    torch.testing.assert_close(weights, torch.tensor([2.0, 2 / 3, 1.0]))
    assert balanced_class_weights([1, 1])[0] == 0


def test_missing_subtype_is_a_clear_error_at_start(tiny_run, tmp_path, monkeypatch):
    pre = tmp_path / "nnUNet_preprocessed"
    shutil.copytree(tiny_run.env["nnUNet_preprocessed"], pre)
    dataset_json = pre / tiny_run.dataset_name / "dataset.json"
    content = json.loads(dataset_json.read_text())
    dropped = sorted(content["case_subtypes"])[0]
    del content["case_subtypes"][dropped]
    dataset_json.write_text(json.dumps(content))
    use_env(monkeypatch, dict(tiny_run.env, nnUNet_preprocessed=str(pre), nnUNet_results=str(tmp_path / "results")))
    trainer = get_trainer_from_args(tiny_run.dataset_name, TINY_CONFIGURATION, tiny_run.fold, SMOKE_TRAINER,
                                    TINY_PLANS, device=torch.device("cpu"))
    with pytest.raises(KeyError, match=dropped):
        trainer.on_train_start()
