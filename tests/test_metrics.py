"""Metrics against hand-computed examples and against scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from nnunet_multitask import metrics as M


def test_dice_hand_example_and_empty_rules():
    ref = np.array([1, 1, 1, 0], bool)
    pred = np.array([1, 1, 0, 1], bool)
    assert M.dice(ref, pred) == pytest.approx(2 * 2 / (3 + 3))
    assert math.isnan(M.dice(np.zeros(4, bool), np.zeros(4, bool)))  # nnU-Net's rule
    assert M.dice(ref, np.zeros(4, bool)) == 0.0


def test_volume_ml():
    mask = np.zeros((4, 4, 4), bool)
    mask[:2, :, :] = True  # 32 voxels of 2 x 1 x 0.5 mm^3 = 32 mm^3
    assert M.volume_ml(mask, (2.0, 1.0, 0.5)) == pytest.approx(0.032)


def test_segmentation_metrics_hand_example():
    ref = np.array([[[0, 1, 1, 2, 2, 0]]])
    pred = np.array([[[1, 1, 2, 2, 0, 0]]])
    result = M.segmentation_metrics(ref, pred, (1.0, 1.0, 2.0))
    assert result["dice_pancreas"] == pytest.approx(2 * 3 / (4 + 4))  # label > 0
    assert result["dice_label1"] == pytest.approx(2 * 1 / (2 + 2))
    assert result["dice_lesion"] == pytest.approx(2 * 1 / (2 + 2))
    assert result["gt_volume_ml_pancreas"] == pytest.approx(4 * 2 / 1000)
    assert result["pred_volume_ml_lesion"] == pytest.approx(2 * 2 / 1000)
    with pytest.raises(ValueError, match="shape"):
        M.segmentation_metrics(ref, pred[..., :5], (1, 1, 1))


def test_surface_dice_hand_example_respects_spacing():
    # in a 1 x 1 x 10 image every mask voxel is a border voxel
    ref, pred = np.zeros((1, 1, 10), bool), np.zeros((1, 1, 10), bool)
    ref[..., 2:5], pred[..., 3:7] = True, True
    # S_R = {2,3,4}: distances to S_P 1,0,0; S_P = {3,4,5,6}: distances to S_R 0,0,1,2
    assert M.surface_dice(ref, pred, (1, 1, 1), tolerance_mm=1.0) == pytest.approx(6 / 7)
    # 2 mm along the last axis doubles the distances: 2,0,0 and 0,0,2,4
    assert M.surface_dice(ref, pred, (1, 1, 2), tolerance_mm=1.0) == pytest.approx(4 / 7)
    assert M.surface_dice(ref, ref, (1, 1, 2)) == 1.0
    assert math.isnan(M.surface_dice(ref & False, pred & False, (1, 1, 1)))
    assert M.surface_dice(ref, pred & False, (1, 1, 1)) == 0.0


def test_classification_hand_example():
    y_true, y_pred = [0, 0, 1, 2], [0, 1, 1, 2]
    result = M.classification_metrics(y_true, y_pred)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    # per-class F1: 2/3, 2/3, 1
    assert result["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert result["per_class"]["0"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert result["per_class"]["1"]["precision"] == 0.5
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert M.macro_f1(np.array(y_true), np.array(y_pred)) == pytest.approx(7 / 9)
    assert M.accuracy(np.array(y_true), np.array(y_pred)) == 0.75


def test_probability_metrics_hand_example():
    y_true = np.array([0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.4, 0.0], [0.3, 0.05, 0.65]])
    # Brier, sum form: (0.01+0.0025+0.0025) + (0.36+0.36+0) + (0.09+0.0025+0.1225), / 3 cases
    expected_sum = (0.015 + 0.72 + 0.215) / 3
    assert M.brier_scores(y_true, probs) == pytest.approx((expected_sum, expected_sum / 3))
    # top-label confidences 0.9 (right), 0.6 (wrong), 0.65 (right), each alone in its bin
    assert M.expected_calibration_error(y_true, probs) == pytest.approx((0.1 + 0.6 + 0.35) / 3)
    confidence, accuracy, count = M.reliability_bins(y_true, probs)
    assert count.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 1, 0]
    assert accuracy[5] == 0.0 and confidence[8] == pytest.approx(0.9)
    perfect = M.classification_metrics(y_true, y_true, np.eye(3))
    assert perfect["auroc_ovr_macro"] == 1.0 and perfect["average_precision_ovr_macro"] == 1.0
    assert perfect["brier_sum"] == 0.0 and perfect["ece"] == 0.0


def test_classification_agrees_with_sklearn():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), y_true] += 0.3  # informative but imperfect
    probs /= probs.sum(axis=1, keepdims=True)
    y_pred = probs.argmax(axis=1)
    result = M.classification_metrics(y_true, y_pred, probs)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred)
    assert [result["per_class"][str(k)]["recall"] for k in range(3)] == pytest.approx(recall.tolist())
    assert result["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred).tolist()
    assert result["auroc_ovr_macro"] == pytest.approx(skm.roc_auc_score(y_true, probs, multi_class="ovr"))
    assert result["average_precision_ovr_macro"] == pytest.approx(
        skm.average_precision_score(M.one_hot(y_true), probs, average="macro")
    )
    per_class_brier = [skm.brier_score_loss(y_true == k, probs[:, k]) for k in range(3)]
    assert result["brier_per_class_mean"] == pytest.approx(np.mean(per_class_brier))


def test_bootstrap_ci_deterministic_and_contains_estimate():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.6, 1.0, 40)
    ci = M.bootstrap_ci(np.mean, values, seed=3)
    assert ci == M.bootstrap_ci(np.mean, values, seed=3)
    assert ci != M.bootstrap_ci(np.mean, values, seed=4)
    assert ci[0] < values.mean() < ci[1]
    y_true = rng.integers(0, 3, 50)
    y_pred = np.where(rng.uniform(size=50) < 0.7, y_true, rng.integers(0, 3, 50))
    low, high = M.bootstrap_ci(M.macro_f1, y_true, y_pred, n_resamples=300, seed=0)
    assert low < M.macro_f1(y_true, y_pred) < high
    assert M.bootstrap_ci(np.mean, np.full(5, 0.5)) == (0.5, 0.5)
    assert all(math.isnan(x) for x in M.bootstrap_ci(np.mean, np.array([])))
