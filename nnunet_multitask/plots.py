"""``nnunet-multitask evaluate --pred DIR --labels DIR --out DIR``: metrics, figures and report.

Inputs
------
* ``--pred``: one mask ``<case>.nii.gz`` per case, ``subtype_results.csv`` and optionally
  ``subtype_probabilities.csv`` (and ``summary.json`` when ``nnUNetv2_evaluate_folder`` ran there).
* ``--labels``: ground-truth masks, either flat (nnU-Net ``labelsTr``) or in the raw layout
  ``subtype<k>/<case>.nii.gz`` (the ``_0000`` images beside them are ignored).
* Ground-truth subtype, first source that knows the case: ``--dataset-json`` (its
  ``case_subtypes`` table), the ``subtype<k>`` folder, the ``quiz_<k>_<id>`` name. Sources that
  disagree are reported as a warning.

Bad input rule
--------------
*Fatal* (:class:`EvaluationInputError`, message naming the file): a missing or empty folder, a
case in two ``subtype<k>`` folders, a ``--dataset-json`` without the subtype table, a malformed
``subtype_results.csv`` (header, duplicate case, subtype outside {0,1,2}, unparsable row) and a
``subtype_probabilities.csv`` that is malformed, has values outside [0, 1] or rows not summing
to 1 (tolerance :data:`PROBABILITY_SUM_TOL`), or does not describe exactly the cases and subtypes
of ``subtype_results.csv``. These files describe every case, so no number could be trusted.

*Reported and excluded* (listed by case in ``metrics.json`` and ``report.md``, counted,
warned on stderr): a ground-truth case without prediction mask (``missing_predictions``), a case
whose prediction or ground truth cannot be read, has labels outside {0,1,2} or non-integer
values, or differs in shape/geometry (``excluded_cases``; segmentation metrics use the rest), a
case without ``subtype_results.csv`` row or without known ground-truth subtype (left out of the
classification metrics). Predictions without ground truth are listed and ignored. Without
``subtype_results.csv`` at all only segmentation is evaluated.

Outputs (``--out``): ``metrics.json``, ``per_case.csv``, PNG figures and ``report.md``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from sklearn import metrics as skm
from tqdm import tqdm

from nnunet_multitask import metrics as M
from nnunet_multitask.io import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic
from nnunet_multitask.labels import (
    CHANNEL_SUFFIX,
    FILE_ENDING,
    PROBABILITY_CSV,
    PROBABILITY_CSV_HEADER,
    SUBTYPE_CSV,
    SUBTYPES,
    case_id_from_filename,
    is_debris,
    read_case_subtypes,
    subtype_from_case_id,
)
from nnunet_multitask.submission import geometry_problems, parse_subtype_csv, read_mask

#: Targets of the users' brief (met when the point estimate reaches them).
TARGETS: dict[str, float] = {"dice_pancreas": 0.91, "dice_lesion": 0.31, "macro_f1": 0.70}
HEADLINE_NAMES: dict[str, str] = {
    "dice_pancreas": "Whole-pancreas Dice (label > 0)",
    "dice_lesion": "Lesion Dice (label 2)",
    "macro_f1": "Subtype macro-F1",
    "accuracy": "Subtype accuracy",
}
SEGMENTATION_KEYS = (
    "dice_pancreas", "dice_label1", "dice_lesion", "nsd_pancreas", "nsd_lesion",
    "gt_volume_ml_pancreas", "pred_volume_ml_pancreas", "gt_volume_ml_label1",
    "pred_volume_ml_label1", "gt_volume_ml_lesion", "pred_volume_ml_lesion",
)
PROBABILITY_SUM_TOL = 1e-3
#: Largest |ours - nnU-Net's| Dice still counted as agreement with ``summary.json``.
SUMMARY_AGREEMENT_TOL = 1e-6
SUMMARY_JSON = "summary.json"
SUBTYPE_DIR_RE = re.compile(r"^subtype(\d+)$")


class EvaluationInputError(ValueError):
    """Input that makes the whole evaluation untrustworthy; the message names the file."""


# ------------------------------------------------------------------ inputs


def _masks_in(folder: Path) -> dict[str, Path]:
    """``{case_id: path}`` of the label masks of a folder (``_0000`` images and debris skipped)."""
    return {
        case_id_from_filename(p.name): p
        for p in sorted(folder.glob(f"*{FILE_ENDING}"))
        if not is_debris(p) and not p.name.endswith(CHANNEL_SUFFIX + FILE_ENDING)
    }


def find_ground_truth(
    labels_dir: Path, dataset_json: Path | None = None
) -> tuple[dict[str, Path], dict[str, int], list[str]]:
    """Ground-truth masks and subtypes: ``({case: mask}, {case: subtype}, warnings)``.

    Raises:
        EvaluationInputError: no masks, a case in two ``subtype<k>`` folders, or a
            ``dataset_json`` without the ``case_subtypes`` table.
    """
    if not labels_dir.is_dir():
        raise EvaluationInputError(f"{labels_dir}: labels folder not found")
    masks, folder_subtypes = _masks_in(labels_dir), {}
    for sub in sorted(d for d in labels_dir.iterdir() if d.is_dir() and SUBTYPE_DIR_RE.match(d.name)):
        for case, path in _masks_in(sub).items():
            if case in masks:
                raise EvaluationInputError(f"{path}: case {case} also found at {masks[case]}")
            masks[case], folder_subtypes[case] = path, int(SUBTYPE_DIR_RE.match(sub.name).group(1))
    if not masks:
        raise EvaluationInputError(f"{labels_dir}: no ground-truth masks '*{FILE_ENDING}'")
    table: dict[str, int] = {}
    if dataset_json is not None:
        try:
            table = read_case_subtypes(dataset_json)
        except (KeyError, OSError, json.JSONDecodeError) as error:
            raise EvaluationInputError(f"{dataset_json}: {error}") from error
    subtypes, warnings = {}, []
    for case in masks:
        candidates = (table.get(case), folder_subtypes.get(case), subtype_from_case_id(case))
        sources = [s for s in candidates if s is not None]
        if sources:
            subtypes[case] = sources[0]
        if len(set(sources)) > 1:
            warnings.append(f"{case}: ground-truth subtype sources disagree {sources}; using {sources[0]}")
    return masks, subtypes, warnings


def read_probability_csv(path: Path, predicted: dict[str, int]) -> dict[str, np.ndarray]:
    """``subtype_probabilities.csv`` as ``{case: (N_SUBTYPES,) probabilities}``.

    Raises:
        EvaluationInputError: listing every problem (see the module docstring), naming the
            file and the case.
    """
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != PROBABILITY_CSV_HEADER:
        raise EvaluationInputError(f"{path}: header must be {','.join(PROBABILITY_CSV_HEADER)}")
    table: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for line, row in enumerate((r for r in rows[1:] if r), start=2):
        try:
            case, subtype, values = case_id_from_filename(row[0].strip()), int(row[1]), np.array(row[2:], float)
        except (ValueError, IndexError):
            values = None
        if values is None or len(values) != len(SUBTYPES):
            problems.append(f"line {line}: cannot parse {row}")
            continue
        if case in table:
            problems.append(f"{case}: duplicate row")
        elif np.any(values < 0) or np.any(values > 1):
            problems.append(f"{case}: probabilities {values.tolist()} outside [0, 1]")
        elif abs(values.sum() - 1.0) > PROBABILITY_SUM_TOL:
            problems.append(f"{case}: probabilities sum to {values.sum():.6f}, not 1 (tol. {PROBABILITY_SUM_TOL})")
        elif predicted.get(case, subtype) != subtype:
            problems.append(f"{case}: Subtype {subtype} != {predicted[case]} in {SUBTYPE_CSV}")
        table[case] = values
    problems += [f"{case}: in {SUBTYPE_CSV} but not here" for case in predicted if case not in table]
    problems += [f"{case}: not in {SUBTYPE_CSV}" for case in table if case not in predicted]
    if problems:
        raise EvaluationInputError(f"{path}:\n  " + "\n  ".join(problems))
    return table


# ------------------------------------------------------------------ per case


def evaluate_case(task: tuple[str, Path, Path, float]) -> dict[str, Any]:
    """Segmentation metrics of one case ``(case, gt_path, pred_path, tolerance_mm)``.

    Returns ``{"case", "status": "ok", **metrics}`` or ``{"case", "status": "excluded",
    "reason"}``; never raises for a bad file, so one case cannot stop a pool.
    """
    case, gt_path, pred_path, tolerance_mm = task
    try:
        reference, ref_geometry = read_mask(gt_path)
        prediction, pred_geometry = read_mask(pred_path)
    except (ValueError, RuntimeError) as error:  # RuntimeError: SimpleITK cannot read the file
        return {"case": case, "status": "excluded", "reason": str(error).strip().splitlines()[0]}
    mismatch = geometry_problems(ref_geometry, pred_geometry)
    if mismatch:
        reason = f"{pred_path}: {'; '.join(mismatch)} (ground truth {gt_path})"
        return {"case": case, "status": "excluded", "reason": reason}
    metrics = M.segmentation_metrics(reference, prediction, ref_geometry.spacing_zyx, tolerance_mm)
    return {"case": case, "status": "ok", **metrics}


def _run_cases(tasks: list[tuple], num_processes: int) -> list[dict]:
    """:func:`evaluate_case` over ``tasks`` with a progress bar, in a pool when ``num_processes > 1``."""
    progress = dict(total=len(tasks), desc="evaluating", unit="case", file=sys.stderr)
    if num_processes <= 1 or len(tasks) <= 1:
        return [evaluate_case(t) for t in tqdm(tasks, **progress)]
    with multiprocessing.Pool(min(num_processes, len(tasks))) as pool:
        return list(tqdm(pool.imap(evaluate_case, tasks), **progress))


# ------------------------------------------------------------------ aggregation


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, float)
    return array[np.isfinite(array)]


def _headline(value: float, ci: tuple[float, float], n: int, target: float | None) -> dict:
    passed = None if target is None or not math.isfinite(value) else bool(value >= target)
    return {"value": value, "ci95": list(ci), "n": n, "target": target, "pass": passed}


def compare_with_nnunet_summary(summary_path: Path, cases: dict[str, dict]) -> dict:
    """Check our per-case Dice against ``summary.json`` of ``nnUNetv2_evaluate_folder``.

    nnU-Net keys ``"1"``/``"2"`` (labels) map to ``dice_label1``/``dice_lesion`` and the
    region ``"(1, 2)"`` to ``dice_pancreas``; values agree within :data:`SUMMARY_AGREEMENT_TOL`
    (NaN agrees with NaN). Cases we did not evaluate are skipped.
    """
    summary = json.loads(summary_path.read_text())
    key_map = {(1,): "dice_label1", (2,): "dice_lesion", (1, 2): "dice_pancreas"}
    compared, disagreements = 0, []
    for entry in summary.get("metric_per_case", []):
        case = case_id_from_filename(Path(entry["prediction_file"]).name)
        ours = cases.get(case)
        if ours is None or ours["status"] != "ok":
            continue
        for key, values in entry["metrics"].items():
            name = key_map.get(tuple(int(x) for x in re.findall(r"\d+", key)))
            if name is None or "Dice" not in values:
                continue
            theirs = float("nan") if values["Dice"] is None else float(values["Dice"])
            compared += 1
            both_nan = math.isnan(theirs) and math.isnan(ours[name])
            if not both_nan and not abs(theirs - ours[name]) <= SUMMARY_AGREEMENT_TOL:
                disagreements.append(f"{case} {name} (nnU-Net key {key}): ours {ours[name]:.6f}, nnU-Net {theirs:.6f}")
    return {"file": str(summary_path), "values_compared": compared, "agree": not disagreements,
            "disagreements": disagreements}


def _classification(
    cases: list[str], gt: dict[str, int], predicted: dict[str, int], probabilities: dict[str, np.ndarray] | None,
    n_resamples: int, seed: int,
) -> dict:
    """Classification metrics over the cases with both a ground-truth and a predicted subtype."""
    used = [c for c in cases if c in gt and c in predicted]
    result: dict[str, Any] = {
        "cases_without_prediction": [c for c in cases if c not in predicted],
        "cases_without_ground_truth_subtype": [c for c in cases if c not in gt],
    }
    if not used:
        return {**result, "n": 0}
    y_true, y_pred = np.array([gt[c] for c in used]), np.array([predicted[c] for c in used])
    probs = np.stack([probabilities[c] for c in used]) if probabilities else None
    result.update(M.classification_metrics(y_true, y_pred, probs))
    result["ci95"] = {
        name: list(M.bootstrap_ci(fn, y_true, y_pred, n_resamples=n_resamples, seed=seed))
        for name, fn in (("macro_f1", M.macro_f1), ("accuracy", M.accuracy))
    }
    result["_arrays"] = (y_true, y_pred, probs)  # for the figures; dropped before writing JSON
    return result


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def evaluate_folder(
    pred_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    dataset_json: str | Path | None = None,
    num_processes: int = 2,
    tolerance_mm: float = M.SURFACE_TOLERANCE_MM,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Evaluate a prediction folder; write ``metrics.json``, ``per_case.csv``, figures, ``report.md``.

    Returns the metrics dict as written to ``metrics.json`` (NaN as None); ``headline`` holds
    the brief's numbers with their 95% percentile-bootstrap intervals (``n_resamples``, ``seed``).

    Raises:
        EvaluationInputError: fatal bad input (see the module docstring).
    """
    pred_dir, labels_dir, out_dir = Path(pred_dir), Path(labels_dir), Path(out_dir)
    if not pred_dir.is_dir():
        raise EvaluationInputError(f"{pred_dir}: prediction folder not found")
    gt_masks, gt_subtypes, warnings = find_ground_truth(labels_dir, Path(dataset_json) if dataset_json else None)
    pred_masks = _masks_in(pred_dir)
    predicted, probabilities = _read_predicted_subtypes(pred_dir, warnings)

    missing = [c for c in gt_masks if c not in pred_masks]
    extra = [c for c in pred_masks if c not in gt_masks]
    tasks = [(c, gt_masks[c], pred_masks[c], tolerance_mm) for c in gt_masks if c in pred_masks]
    per_case = {r["case"]: r for r in _run_cases(tasks, num_processes)}
    excluded = {c: r["reason"] for c, r in per_case.items() if r["status"] != "ok"}
    ok = [r for r in per_case.values() if r["status"] == "ok"]
    warnings += [f"{c}: no prediction {c}{FILE_ENDING} in {pred_dir}" for c in missing]
    warnings += [f"{c}: excluded: {reason}" for c, reason in excluded.items()]
    warnings += [f"{c}{FILE_ENDING}: prediction without ground truth, ignored" for c in extra]

    segmentation = _segmentation_summary(ok, n_resamples, seed)
    classification = None
    if predicted is not None:
        cases = list(gt_masks)
        classification = _classification(cases, gt_subtypes, predicted, probabilities, n_resamples, seed)
        warnings += [f"{c}: no row in {SUBTYPE_CSV}, not classified"
                     for c in classification["cases_without_prediction"]]
        warnings += [f"{c}: ground-truth subtype unknown, not classified"
                     for c in classification["cases_without_ground_truth_subtype"]]
        warnings += [f"{c}: row in {SUBTYPE_CSV} without ground truth, ignored"
                     for c in predicted if c not in gt_masks]

    result: dict[str, Any] = {
        "pred_dir": str(pred_dir), "labels_dir": str(labels_dir),
        "n_cases_ground_truth": len(gt_masks), "n_cases_evaluated": len(ok),
        "n_missing_predictions": len(missing), "missing_predictions": missing,
        "n_excluded_cases": len(excluded), "excluded_cases": excluded,
        "extra_predictions": extra, "headline": _headlines(segmentation, classification),
        "segmentation": segmentation, "classification": classification,
        "settings": {"surface_tolerance_mm": tolerance_mm, "ece_bins": M.ECE_BINS,
                     "bootstrap": {"n_resamples": n_resamples, "seed": seed, "method": "percentile"}},
        "warnings": warnings,
    }
    if (pred_dir / SUMMARY_JSON).is_file():
        agreement = compare_with_nnunet_summary(pred_dir / SUMMARY_JSON, per_case)
        result["nnunet_summary_agreement"] = agreement
        warnings += [f"{SUMMARY_JSON} disagrees: {d}" for d in agreement["disagreements"]]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    missing_rows = {c: {"case": c, "status": "missing", "reason": f"no {c}{FILE_ENDING} in {pred_dir}"}
                    for c in missing}
    _write_per_case(out_dir / "per_case.csv", {**per_case, **missing_rows}, gt_subtypes, predicted or {})
    figures = write_figures(out_dir, ok, classification)
    safe = _json_safe(result)
    write_json_atomic(out_dir / "metrics.json", safe)
    write_text_atomic(out_dir / "report.md", render_report(safe, figures))
    return safe


def _segmentation_summary(cases: list[dict], n_resamples: int, seed: int) -> dict:
    """Mean of each per-case value over the cases where it is finite, with bootstrap CIs of the scores."""
    summary: dict[str, Any] = {"n_cases": len(cases), "mean": {}, "n_finite": {}, "ci95": {}}
    for key in SEGMENTATION_KEYS:
        values = _finite([c[key] for c in cases])
        summary["mean"][key] = float(values.mean()) if values.size else float("nan")
        summary["n_finite"][key] = int(values.size)
        if key.startswith(("dice", "nsd")):
            summary["ci95"][key] = list(M.bootstrap_ci(np.mean, values, n_resamples=n_resamples, seed=seed))
    return summary


def _headlines(segmentation: dict, classification: dict | None) -> dict[str, dict]:
    """The brief's numbers: value, 95% CI, n, target and pass/fail (point estimate >= target)."""
    headline = {}
    for key in ("dice_pancreas", "dice_lesion"):
        ci = tuple(segmentation["ci95"][key])
        headline[key] = _headline(segmentation["mean"][key], ci, segmentation["n_finite"][key], TARGETS[key])
    if classification and classification["n"]:
        for key in ("macro_f1", "accuracy"):
            ci = tuple(classification["ci95"][key])
            headline[key] = _headline(classification[key], ci, classification["n"], TARGETS.get(key))
    return headline


def _read_predicted_subtypes(pred_dir: Path, warnings: list[str]) -> tuple[dict[str, int] | None, dict | None]:
    """Predicted subtypes and probabilities (None when the files are absent); fatal on bad CSVs."""
    csv_path = pred_dir / SUBTYPE_CSV
    if not csv_path.is_file():
        warnings.append(f"{csv_path}: not found, classification not evaluated")
        return None, None
    predicted, problems = parse_subtype_csv(csv_path)
    if problems:
        raise EvaluationInputError("\n".join(problems))
    probability_path = pred_dir / PROBABILITY_CSV
    return predicted, read_probability_csv(probability_path, predicted) if probability_path.is_file() else None


def _write_per_case(path: Path, per_case: dict[str, dict], gt: dict[str, int], predicted: dict[str, int]) -> None:
    """One row per ground-truth case (status ok / excluded / missing); metrics blank unless ok."""
    header = ("case", "status", "gt_subtype", "pred_subtype", *SEGMENTATION_KEYS, "reason")
    rows = [
        (c, r["status"], gt.get(c, ""), predicted.get(c, ""),
         *(f"{r[k]:.6g}" if k in r else "" for k in SEGMENTATION_KEYS), r.get("reason", ""))
        for c, r in sorted(per_case.items())
    ]
    write_csv_atomic(path, header, rows)


# ------------------------------------------------------------------ figures


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)  # Agg canvas: no display and no pyplot global state
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_confusion(matrix: np.ndarray, path: Path) -> None:
    """Confusion matrix, counts and row-normalised (rows: true subtype)."""
    matrix = np.asarray(matrix, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = matrix / matrix.sum(axis=1, keepdims=True)
    fig = Figure(figsize=(9, 4))
    panels = ((matrix, "counts", "{:.0f}", None), (normalised, "row-normalised", "{:.2f}", 1))
    for ax, (data, title, fmt, vmax) in zip(fig.subplots(1, 2), panels):
        image = ax.imshow(np.nan_to_num(data), cmap="Blues", vmin=0, vmax=vmax)
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, "-" if np.isnan(value) else fmt.format(value), ha="center", va="center",
                    color="white" if np.nan_to_num(value) > 0.6 * np.nanmax(data) else "black")
        ax.set(xticks=SUBTYPES, yticks=SUBTYPES, xlabel="predicted subtype", ylabel="true subtype", title=title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


def plot_dice_per_label(cases: list[dict], path: Path) -> None:
    """Box plot plus jittered per-case points of each Dice and surface Dice."""
    keys = ("dice_pancreas", "dice_label1", "dice_lesion", "nsd_pancreas", "nsd_lesion")
    data = [_finite([c[k] for c in cases]) for k in keys]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.boxplot(data, showfliers=False, widths=0.5)
    jitter = np.random.default_rng(0)  # fixed jitter: the figure is reproducible
    for i, values in enumerate(data, start=1):
        ax.scatter(i + jitter.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.6, zorder=3)
    ax.set_xticks(range(1, len(keys) + 1), ["pancreas\n(label>0)", "label 1", "lesion", "NSD pancreas", "NSD lesion"])
    ax.axhline(TARGETS["dice_pancreas"], ls="--", lw=0.8, color="grey")
    ax.axhline(TARGETS["dice_lesion"], ls=":", lw=0.8, color="grey")
    title = f"Dice / surface Dice per case (n={len(cases)}); targets 0.91 (dashed), 0.31 (dotted)"
    ax.set(ylim=(-0.02, 1.02), ylabel="score per case", title=title)
    _save(fig, path)


def _minor_log_label(value: float, _position: int) -> str:
    mantissa = value / 10 ** np.floor(np.log10(value))
    return f"{value:g}" if np.isclose(mantissa, 2) or np.isclose(mantissa, 5) else ""


def plot_dice_vs_volume(cases: list[dict], path: Path) -> None:
    """Dice against ground-truth volume (ml) for label 1 and for the lesion."""
    fig = Figure(figsize=(9, 4))
    for ax, name, title in zip(fig.subplots(1, 2), ("label1", "lesion"), ("label 1 (pancreas)", "lesion (label 2)")):
        points = np.array([(c[f"gt_volume_ml_{name}"], c[f"dice_{name}"]) for c in cases], float).reshape(-1, 2)
        points = points[np.isfinite(points[:, 1])]
        ax.scatter(points[:, 0], points[:, 1], s=16, alpha=0.7)
        if len(points) and np.all(points[:, 0] > 0):
            ax.set_xscale("log")  # volumes span orders of magnitude
            # plain numbers at 1, 2, 5 x 10^n instead of crowded scientific notation
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        ax.set(xlabel="ground-truth volume (ml)", ylabel="Dice", ylim=(-0.02, 1.02), title=title)
    _save(fig, path)


def plot_roc_pr(y_true: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """One-vs-rest ROC and precision-recall curves per subtype."""
    fig = Figure(figsize=(9, 4))
    roc_ax, pr_ax = fig.subplots(1, 2)
    for k in SUBTYPES:
        positive = y_true == k
        if not 0 < positive.sum() < len(positive):
            continue  # a curve needs positives and negatives
        fpr, tpr, _ = skm.roc_curve(positive, probabilities[:, k])
        precision, recall, _ = skm.precision_recall_curve(positive, probabilities[:, k])
        roc_ax.plot(fpr, tpr, label=f"subtype {k} (AUC {skm.auc(fpr, tpr):.2f})")
        pr_ax.step(recall, precision, where="post",
                   label=f"subtype {k} (AP {skm.average_precision_score(positive, probabilities[:, k]):.2f})")
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one-vs-rest")
    pr_ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title="precision-recall, one-vs-rest")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    _save(fig, path)


def plot_reliability(y_true: np.ndarray, probabilities: np.ndarray, path: Path) -> None:
    """Top-label reliability diagram (accuracy per confidence bin) with the bin counts."""
    confidence, accuracy, count = M.reliability_bins(y_true, probabilities)
    edges = np.linspace(0, 1, len(count) + 1)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.bar(edges[:-1], np.nan_to_num(accuracy), width=np.diff(edges), align="edge", edgecolor="black", alpha=0.7,
           label="accuracy")
    # marker at the bin's mean confidence: its gap to the bar top is the bin's miscalibration
    ax.plot((edges[:-1] + edges[1:]) / 2, confidence, "o", color="C1", label="mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    for left, n in zip(edges[:-1], count):
        if n:
            ax.text(left + 0.05, 0.02, str(n), ha="center", fontsize=7)
    ece = M.expected_calibration_error(y_true, probabilities)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"reliability, {len(count)} bins (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def write_figures(out_dir: Path, cases: list[dict], classification: dict | None) -> dict[str, str]:
    """Write the figures the data allow; ``{title: file name}`` of those written."""
    figures: dict[str, str] = {}
    if cases:
        plot_dice_per_label(cases, out_dir / "dice_per_label.png")
        plot_dice_vs_volume(cases, out_dir / "dice_vs_volume.png")
        figures.update({"Dice per label": "dice_per_label.png", "Dice vs ground-truth volume": "dice_vs_volume.png"})
    if classification and classification["n"]:
        y_true, _, probabilities = classification["_arrays"]
        plot_confusion(np.array(classification["confusion_matrix"]), out_dir / "confusion_matrix.png")
        figures["Confusion matrix"] = "confusion_matrix.png"
        if probabilities is not None:
            plot_roc_pr(y_true, probabilities, out_dir / "roc_pr.png")
            plot_reliability(y_true, probabilities, out_dir / "reliability.png")
            figures.update({"ROC and precision-recall": "roc_pr.png", "Reliability diagram": "reliability.png"})
    return figures


# ------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_headline(metrics: dict) -> str:
    """Plain-text headline lines ``name: value [low, high] target, PASS/FAIL`` (printed by the CLI)."""
    lines = []
    for key, h in metrics["headline"].items():
        low, high = h["ci95"]
        verdict = "" if h["target"] is None else f"  target >= {h['target']:.2f}: {'PASS' if h['pass'] else 'FAIL'}"
        interval = f"[95% CI {_fmt(low)}, {_fmt(high)}]"
        lines.append(f"{HEADLINE_NAMES[key]}: {_fmt(h['value'])} {interval} (n={h['n']}){verdict}")
    return "\n".join(lines)


def render_report(metrics: dict, figures: dict[str, str]) -> str:
    """One-page Markdown report: headline table with 95% intervals and targets, counts, figures."""
    settings, seg, cls = metrics["settings"], metrics["segmentation"]["mean"], metrics["classification"]
    lines = [
        "# Evaluation report", "",
        f"Predictions `{metrics['pred_dir']}` against `{metrics['labels_dir']}`.", "",
        "| Metric | Value | 95% CI | n | Target | Result |", "|---|---|---|---|---|---|",
    ]
    for key, h in metrics["headline"].items():
        target = "" if h["target"] is None else f">= {h['target']:.2f}"
        result = "" if h["pass"] is None else ("PASS" if h["pass"] else "**FAIL**")
        low, high = h["ci95"]
        lines.append(f"| {HEADLINE_NAMES[key]} | {_fmt(h['value'])} | [{_fmt(low)}, {_fmt(high)}] "
                     f"| {h['n']} | {target} | {result} |")
    lines += [
        "",
        f"Cases: {metrics['n_cases_ground_truth']} with ground truth, {metrics['n_cases_evaluated']} evaluated, "
        f"{metrics['n_missing_predictions']} without prediction, {metrics['n_excluded_cases']} excluded. "
        "Dice means skip cases where both masks are empty (NaN, as in nnU-Net); PASS means the point estimate "
        f"meets the target. Intervals: percentile bootstrap over cases ({settings['bootstrap']['n_resamples']} "
        f"resamples, seed {settings['bootstrap']['seed']}).",
        "",
        f"Label-1 Dice {_fmt(seg['dice_label1'])}; normalised surface Dice at {settings['surface_tolerance_mm']:g} mm: "
        f"pancreas {_fmt(seg['nsd_pancreas'])}, lesion {_fmt(seg['nsd_lesion'])}.",
    ]
    if cls and cls["n"]:
        lines.append(f"Balanced accuracy {_fmt(cls['balanced_accuracy'])}.")
    if cls and "auroc_ovr_macro" in cls:
        lines.append(
            f"AUROC (one-vs-rest, macro) {_fmt(cls['auroc_ovr_macro'])}; average precision (macro) "
            f"{_fmt(cls['average_precision_ovr_macro'])}; Brier {_fmt(cls['brier_sum'])} (sum over classes) / "
            f"{_fmt(cls['brier_per_class_mean'])} (per class); ECE {_fmt(cls['ece'])} ({settings['ece_bins']} bins)."
        )
    agreement = metrics.get("nnunet_summary_agreement")
    if agreement:
        verdict = "all agree." if agreement["agree"] else f"**{len(agreement['disagreements'])} disagree** (metrics.json)."
        lines.append(f"nnU-Net `summary.json`: {agreement['values_compared']} Dice values compared, {verdict}")
    if metrics["warnings"]:
        shown = metrics["warnings"][:15]
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in shown]
        if len(metrics["warnings"]) > len(shown):
            lines.append(f"- ... {len(metrics['warnings']) - len(shown)} more in metrics.json")
    lines += ["", "## Figures", ""] + [f"![{title}]({name})" for title, name in figures.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-multitask evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", required=True, type=Path, help="prediction folder (masks + subtype_results.csv)")
    parser.add_argument("--labels", required=True, type=Path, help="ground-truth masks (flat or subtype<k>/ folders)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dataset-json", type=Path, default=None, help="dataset.json with the case_subtypes table")
    parser.add_argument("--num-processes", type=int, default=2, help="worker processes for the per-case metrics")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_folder(args.pred, args.labels, args.out, args.dataset_json, args.num_processes)
    except EvaluationInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_headline(metrics))
    print(f"wrote {args.out / 'metrics.json'}, per_case.csv, report.md and figures")
    return 0
