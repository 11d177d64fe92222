"""Segmentation and classification metrics: plain functions over numpy arrays.

Conventions
-----------
* Label volumes are integer arrays in array order ``(z, y, x)``; ``spacing`` is the voxel size
  in mm in the same order. Volumes are reported in ml (1 ml = 1000 mm^3).
* Empty masks follow nnU-Net's ``compute_metrics_on_folder``: when reference and prediction are
  both empty the Dice (and the surface Dice) is **NaN**, and NaN cases are left out of every mean
  (``np.nanmean``). When exactly one of them is empty the score is 0.
* Classes are the lesion subtypes ``labels.SUBTYPES`` (0, 1, 2); ``probabilities`` has shape
  ``(n_cases, N_SUBTYPES)`` and rows summing to 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

from nnunet_multitask.labels import LESION_LABEL, N_SUBTYPES, PANCREAS_LABEL, SUBTYPES

#: Tolerance of the normalised surface Dice, in mm.
SURFACE_TOLERANCE_MM = 2.0
#: Equal-width confidence bins over [0, 1] of the expected calibration error.
ECE_BINS = 10

# ------------------------------------------------------------------ segmentation


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice = 2|R∩P| / (|R| + |P|) of two boolean masks; NaN when both are empty."""
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    denominator = int(reference.sum()) + int(prediction.sum())
    if denominator == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(reference, prediction).sum()) / denominator


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in ml: voxel count x voxel volume (mm^3) / 1000."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing)) / 1000.0


def _surface(mask: np.ndarray) -> np.ndarray:
    """Border voxels of a mask: voxels of the mask with a 6-neighbour outside it (or outside the image)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def surface_dice(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> float:
    """Normalised surface Dice (NSD) at ``tolerance_mm`` (Metrics Reloaded's boundary metric).

    NSD = (|{s in S_R : d(s, S_P) <= tau}| + |{s in S_P : d(s, S_R) <= tau}|) / (|S_R| + |S_P|),
    with S_R, S_P the border voxels of the masks, d the Euclidean distance in mm between voxel
    centres (anisotropic ``spacing`` respected) and tau = ``tolerance_mm``. Border voxels are
    counted, not surface areas, so this is the voxel approximation of the mesh-based NSD.
    NaN when both masks are empty, 0 when exactly one is.
    """
    reference, prediction = reference.astype(bool), prediction.astype(bool)
    ref_border, pred_border = _surface(reference), _surface(prediction)
    n_ref, n_pred = int(ref_border.sum()), int(pred_border.sum())
    if n_ref + n_pred == 0:
        return float("nan")
    if n_ref == 0 or n_pred == 0:
        return 0.0
    # distance (mm) from every voxel to the nearest border voxel of the other mask
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)
    to_ref = ndimage.distance_transform_edt(~ref_border, sampling=spacing)
    hits = int((to_pred[ref_border] <= tolerance_mm).sum()) + int((to_ref[pred_border] <= tolerance_mm).sum())
    return hits / (n_ref + n_pred)


def segmentation_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = SURFACE_TOLERANCE_MM,
) -> dict[str, float]:
    """Per-case metrics of a label map (0 background, 1 pancreas, 2 lesion).

    Keys: ``dice_pancreas`` (whole pancreas, label > 0), ``dice_label1`` (label == 1),
    ``dice_lesion`` (label == 2), ``nsd_pancreas`` / ``nsd_lesion`` (surface Dice at
    ``tolerance_mm``), and ``{gt,pred}_volume_ml_{pancreas,label1,lesion}``.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs prediction {prediction.shape}")
    regions = {
        "pancreas": (reference > 0, prediction > 0),
        "label1": (reference == PANCREAS_LABEL, prediction == PANCREAS_LABEL),
        "lesion": (reference == LESION_LABEL, prediction == LESION_LABEL),
    }
    result: dict[str, float] = {f"dice_{name}": dice(r, p) for name, (r, p) in regions.items()}
    for name in ("pancreas", "lesion"):
        result[f"nsd_{name}"] = surface_dice(*regions[name], spacing, tolerance_mm)
    for name, (r, p) in regions.items():
        result[f"gt_volume_ml_{name}"] = volume_ml(r, spacing)
        result[f"pred_volume_ml_{name}"] = volume_ml(p, spacing)
    return result


# ------------------------------------------------------------------ classification


def one_hot(y: np.ndarray, n_classes: int = N_SUBTYPES) -> np.ndarray:
    """``(n,)`` integer classes -> ``(n, n_classes)`` 0/1 float matrix."""
    return np.eye(n_classes)[np.asarray(y, dtype=int)]


def brier_scores(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[float, float]:
    """Multiclass Brier score, as ``(sum_form, per_class_mean)``.

    sum_form = mean over cases of sum_k (p_ik - y_ik)^2, in [0, 2] (Brier's original definition);
    per_class_mean = sum_form / K, the mean over cases and classes, which equals the mean of the
    K one-vs-rest binary Brier scores (``sklearn.metrics.brier_score_loss``).
    """
    squared = (np.asarray(probabilities, float) - one_hot(y_true, probabilities.shape[1])) ** 2
    sum_form = float(squared.sum(axis=1).mean())
    return sum_form, sum_form / probabilities.shape[1]


def reliability_bins(
    y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability table: ``(mean_confidence, accuracy, count)`` per bin, each ``(n_bins,)``.

    Confidence is the largest class probability of a case and the case is correct when its
    argmax equals ``y_true``. Bins are equal-width over [0, 1], right-closed ((0, 0.1], ...,
    (0.9, 1]; a confidence of 0 goes to the first bin). Empty bins hold NaN and count 0.
    """
    probabilities = np.asarray(probabilities, float)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(y_true)).astype(float)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
    return mean_confidence, accuracy, count


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over the bins of :func:`reliability_bins`."""
    confidence, accuracy, count = reliability_bins(y_true, probabilities, n_bins)
    filled = count > 0
    return float(np.sum(count[filled] / count.sum() * np.abs(accuracy[filled] - confidence[filled])))


def _one_vs_rest(score: Callable, y_true: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """A binary ranking score per class (NaN for a class that is absent, or the only one, in y_true)."""
    values = []
    for k in range(probabilities.shape[1]):
        positive = np.asarray(y_true) == k
        values.append(float(score(positive, probabilities[:, k])) if 0 < positive.sum() < len(positive) else float("nan"))
    return values


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    probabilities: np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> dict:
    """Subtype classification metrics over ``labels.SUBTYPES``.

    Always: ``accuracy``, ``balanced_accuracy`` (mean per-class recall), ``macro_f1`` (unweighted
    mean of the per-class F1), ``per_class`` precision/recall/F1/support (a class with no
    predicted or no true case scores 0), ``confusion_matrix`` (rows true, columns predicted).
    With ``probabilities``: ``auroc_ovr_macro`` and ``average_precision_ovr_macro`` (one-vs-rest,
    unweighted mean over the classes present in y_true, per-class values alongside),
    ``brier_sum`` / ``brier_per_class_mean`` (:func:`brier_scores`) and ``ece``
    (:func:`expected_calibration_error`, ``n_bins`` equal-width bins).
    """
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    labels = list(SUBTYPES)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    result: dict = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(np.mean(recall[support > 0])) if support.any() else float("nan"),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            str(k): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for k, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if probabilities is not None:
        probabilities = np.asarray(probabilities, float)
        auroc = _one_vs_rest(skm.roc_auc_score, y_true, probabilities)
        ap = _one_vs_rest(skm.average_precision_score, y_true, probabilities)
        brier_sum, brier_mean = brier_scores(y_true, probabilities)
        result.update(
            auroc_ovr_macro=float(np.nanmean(auroc)) if not np.all(np.isnan(auroc)) else float("nan"),
            auroc_ovr_per_class=dict(zip(map(str, labels), auroc)),
            average_precision_ovr_macro=float(np.nanmean(ap)) if not np.all(np.isnan(ap)) else float("nan"),
            average_precision_ovr_per_class=dict(zip(map(str, labels), ap)),
            brier_sum=brier_sum,
            brier_per_class_mean=brier_mean,
            ece=expected_calibration_error(y_true, probabilities, n_bins),
        )
    return result


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean over ``labels.SUBTYPES`` of the per-class F1 (0 for a class never seen)."""
    return float(skm.f1_score(y_true, y_pred, labels=list(SUBTYPES), average="macro", zero_division=0))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of cases with ``y_pred == y_true``."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


# ------------------------------------------------------------------ uncertainty


def bootstrap_ci(
    statistic: Callable[..., float],
    *arrays: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic(*arrays)``.

    Cases (the first axis, shared by all ``arrays``) are resampled jointly with replacement
    ``n_resamples`` times from ``numpy.random.default_rng(seed)``; the interval is the
    ((1 - confidence) / 2, (1 + confidence) / 2) quantile pair of the resampled statistic.
    Returns ``(nan, nan)`` for empty input.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    samples = np.empty(n_resamples)
    for i in range(n_resamples):
        index = rng.integers(0, n, n)
        samples[i] = statistic(*(a[index] for a in arrays))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)
