#!/usr/bin/env python
"""End-to-end inference time and accuracy: stock ``nnUNetv2_predict`` against
``nnUNetv2_predict_multitask`` (default and ``--fast``), on one trained checkpoint and the same cases.

Each mode runs as a user runs it: one subprocess per prediction, into a fresh output folder, with
the tool's own defaults (mirroring on, ``-step_size 0.5``, ``-npp 3 -nps 3``,
``-chk checkpoint_final.pth``); all three get the same ``-d -p -tr -c -f -device`` and the same
environment (``nnUNet_extTrainer`` set to our trainer folder; thread variables only where
``--threads`` says so, then equally for all). The modes alternate: ``--rounds`` rounds of
[stock, default, fast], the order rotated by one every round (S D F, D F S, F S D, ...), so machine
noise and cache effects hit every mode alike. The wall time of a mode is the median over rounds.

Accuracy (first round's outputs) against the ground-truth labels: whole-pancreas Dice (label > 0)
and lesion Dice (label == 2) per case with :func:`nnunet_multitask.metrics.dice`, mean over cases
(NaN, i.e. both masks empty, left out, as nnU-Net does); the predicted subtype (argmax of
``subtype_probabilities.csv``) of default and fast: agreement between them, and accuracy against the
``case_subtypes`` of ``dataset.json`` where known. Stock nnU-Net predicts no subtype.

Targets (printed with PASS/FAIL): default <= 1.05x stock wall time; --fast >= 5x faster than stock
end to end, its mean Dice (pancreas and lesion) within 0.01 of default's, and the same subtype as
default on >= 95% of cases.

Strategies one by one, and where --fast's time goes: every variant of
:func:`strategy_variants` (the in-process reference, each strategy of ``--fast`` alone, the
preset, and the strategies it leaves out) runs once in this process on the same cases
(``MultitaskPredictor.predict_folder(..., in_process=True)``), giving ``total_seconds``,
``network_seconds`` (inside ``predict_case``) and, with labels, Dice and subtype agreement against
the reference. The process-level strategies (direct load, gc freeze) are timed as fresh processes
that import, load the model and exit (:func:`process_costs`). From these and the subprocess runs,
the seconds each strategy saved between default mode and ``--fast`` are estimated.

A timing-only run of the three modes on real CT sizes follows when ``--real-ct`` (default
``../shared/data/quiz_ct_test`` relative to the repo root) exists; it is skipped with a message
otherwise.

Without ``--dataset`` a small synthetic dataset is built and a ``nnUNetTrainerMultitask_CPUSmoke``
model trained on it (2 epochs of 2 iterations) in a temp folder: the timings hold, the accuracy
numbers are meaningless. Every output goes to a temp folder, deleted at the end unless --keep-tmp.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scratch import scratch_folder  # bench/ is on sys.path when a benchmark runs as a script

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL_CT = REPO_ROOT.parent / "shared" / "data" / "quiz_ct_test"
BIN = Path(sys.executable).parent
PLANS_DEFAULT = "nnUNetResEncUNetMPlans"
SMOKE_TRAINER = "nnUNetTrainerMultitask_CPUSmoke"
SYNTH_ID, SYNTH_NAME = 991, "BenchInference"
MODES = ("stock", "default", "fast")
TOOL = {"stock": "nnUNetv2_predict", "default": "nnUNetv2_predict_multitask", "fast": "nnUNetv2_predict_multitask"}
EXTRA = {"stock": [], "default": [], "fast": ["--fast"]}
#: Targets of issue 4.
DEFAULT_MAX_RATIO = 1.05      # default / stock wall time
FAST_MIN_SPEEDUP = 5.0        # stock / fast wall time
FAST_MAX_DICE_DROP = 0.01     # |mean Dice fast - mean Dice default|
FAST_MIN_AGREEMENT = 0.95     # same subtype as default
TOTAL_RE = re.compile(r"predicted \d+ case\(s\) in ([0-9.]+) s")
FAST_LABEL = "--fast"
MIXED_LABEL = "+ mixed precision"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="dataset ID or name of a trained model in $nnUNet_results; default: build a "
                                     "synthetic dataset and train a CPUSmoke model in a temp folder (accuracy meaningless)")
    p.add_argument("--configuration", default="3d_tiny")
    p.add_argument("--trainer", default="nnUNetTrainerMultitask")
    p.add_argument("--plans", default=PLANS_DEFAULT)
    p.add_argument("--fold", default="5", help="fold of the model (also picks the validation cases)")
    p.add_argument("--images", type=Path, help="folder of <case>_0000.nii.gz (default: the fold's validation cases "
                                               "from $nnUNet_raw/<dataset>/imagesTr per splits_final.json)")
    p.add_argument("--labels", type=Path, help="folder of <case>.nii.gz ground truth (default: labelsTr)")
    p.add_argument("--real-ct", type=Path, default=DEFAULT_REAL_CT,
                   help="folder of real CT <case>_0000.nii.gz for a timing-only run (default %(default)s)")
    p.add_argument("--real-ct-cases", type=int, default=0, help="use only the first N real CT cases (0: all)")
    p.add_argument("--real-ct-rounds", type=int, default=None, help="rounds of the real CT run (default --rounds)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of [stock, default, fast], order rotated each round")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="set OMP/MKL/OPENBLAS_NUM_THREADS to this for every mode "
                                                "(default: the environment's, unchanged)")
    p.add_argument("--strategies-only", action="store_true",
                   help="only the in-process table of strategies one by one (no subprocess timing, no real CT)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary folder (printed)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- model and cases
def _run(cmd: list[str], env: dict) -> None:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:])
        raise RuntimeError(f"command failed ({result.returncode}): {' '.join(cmd)}")


def train_smoke_model(tmp: Path, args, env: dict) -> str:
    """Synthetic dataset -> converted, fingerprinted, committed plans, preprocessed -> 2-epoch CPUSmoke
    model, all under ``tmp`` (as tests/conftest.py does). Returns the dataset name."""
    from nnunet_multitask.conversion import convert_dataset
    from nnunet_multitask.plans import install_plans
    from nnunet_multitask.synthetic import SyntheticConfig, generate_dataset

    generate_dataset(tmp / "synthetic", SyntheticConfig(seed=0, train_per_subtype=2, val_per_subtype=1, n_test=0,
                                                        shape_min=(48, 48, 16), shape_max=(56, 56, 20)))
    target = convert_dataset(tmp / "synthetic", SYNTH_ID, SYNTH_NAME, env["nnUNet_raw"], env["nnUNet_preprocessed"],
                             num_processes=1, progress=False)
    train_env = {**env, "nnUNet_n_proc_DA": "0", "nnUNet_compile": "false"}
    _run([str(BIN / "nnUNetv2_extract_fingerprint"), "-d", str(SYNTH_ID), "-np", "1"], train_env)
    install_plans(SYNTH_ID, args.plans, env["nnUNet_preprocessed"], env["nnUNet_raw"])
    _run([str(BIN / "nnUNetv2_preprocess"), "-d", str(SYNTH_ID), "-plans_name", args.plans,
          "-c", args.configuration, "-np", "1"], train_env)
    _run([str(BIN / "nnUNetv2_train"), str(SYNTH_ID), args.configuration, args.fold, "-tr", args.trainer,
          "-p", args.plans, "-device", args.device], train_env)
    return target.name


def resolve_dataset(dataset: str, env: dict) -> str:
    """``777`` -> ``Dataset777_Name`` as found in nnUNet_results (else nnUNet_raw / nnUNet_preprocessed)."""
    if dataset.startswith("Dataset"):
        return dataset
    prefix = f"Dataset{int(dataset):03d}_"
    for root in ("nnUNet_results", "nnUNet_raw", "nnUNet_preprocessed"):
        if env.get(root) and Path(env[root]).is_dir():
            found = sorted(p.name for p in Path(env[root]).glob(prefix + "*") if p.is_dir())
            if len(found) == 1:
                return found[0]
    raise FileNotFoundError(f"no folder {prefix}* in $nnUNet_results / $nnUNet_raw / $nnUNet_preprocessed")


def validation_cases(dataset_name: str, fold: str, env: dict, tmp: Path) -> tuple[Path, Path]:
    """The fold's validation images and labels from nnUNet_raw, symlinked into two temp folders."""
    candidates = [Path(env[r]) / dataset_name / "splits_final.json"
                  for r in ("nnUNet_preprocessed", "nnUNet_raw") if env.get(r)]
    splits_file = next((p for p in candidates if p.is_file()), None)
    if splits_file is None:
        raise FileNotFoundError(f"no splits_final.json in {[str(p) for p in candidates]}; pass --images/--labels")
    cases = json.loads(splits_file.read_text())[int(fold)]["val"]
    raw = Path(env["nnUNet_raw"]) / dataset_name
    images, labels = tmp / "cases" / "images", tmp / "cases" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for case in sorted(cases):
        (images / f"{case}_0000.nii.gz").symlink_to(raw / "imagesTr" / f"{case}_0000.nii.gz")
        (labels / f"{case}.nii.gz").symlink_to(raw / "labelsTr" / f"{case}.nii.gz")
    print(f"cases          {len(cases)} validation cases of fold {fold} ({splits_file})")
    return images, labels


def subset(folder: Path, n: int, tmp: Path) -> Path:
    """``folder`` itself, or the first ``n`` images of it symlinked into a temp folder."""
    files = sorted(p for p in folder.iterdir() if p.name.endswith("_0000.nii.gz") and not p.name.startswith("._"))
    if n <= 0 or n >= len(files):
        return folder
    target = tmp / "real_ct_subset"
    target.mkdir()
    for p in files[:n]:
        (target / p.name).symlink_to(p.resolve())
    return target


# ----------------------------------------------------------------------------- timing
def command(mode: str, images: Path, out: Path, dataset_name: str, args) -> list[str]:
    return [str(BIN / TOOL[mode]), "-i", str(images), "-o", str(out), "-d", dataset_name, "-p", args.plans,
            "-tr", args.trainer, "-c", args.configuration, "-f", args.fold, "-chk", "checkpoint_final.pth",
            "-device", args.device, *EXTRA[mode]]


def timed_run(mode: str, images: Path, out: Path, dataset_name: str, args, env: dict) -> dict:
    """Wall seconds of one prediction subprocess (and the predict_folder seconds it printed, if any)."""
    cmd = command(mode, images, out, dataset_name, args)
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-5000:])
        raise RuntimeError(f"{mode} failed ({result.returncode}): {' '.join(cmd)}")
    match = TOTAL_RE.search(result.stdout)
    return {"wall": wall, "total": float(match.group(1)) if match else None}


def alternate(images: Path, out_root: Path, dataset_name: str, rounds: int, args, env: dict,
              keep_first: bool) -> dict[str, list[dict]]:
    """``rounds`` rounds of the three modes, order rotated each round; fresh output folder per run.
    The first round's outputs are kept when ``keep_first`` (for accuracy), the rest deleted."""
    runs = {mode: [] for mode in MODES}
    for r in range(rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        line = []
        for mode in order:
            out = out_root / f"{mode}_round{r}"
            runs[mode].append(timed_run(mode, images, out, dataset_name, args, env))
            line.append(f"{mode} {runs[mode][-1]['wall']:.1f} s")
            if not (keep_first and r == 0):
                shutil.rmtree(out, ignore_errors=True)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(line), flush=True)
    return runs


def median_wall(runs: list[dict]) -> float:
    return statistics.median(r["wall"] for r in runs)


# ----------------------------------------------------------------------------- accuracy
def accuracy(out: Path, labels: Path, true_subtypes: dict[str, int]) -> dict:
    import nibabel as nib
    import numpy as np

    from nnunet_multitask.labels import LESION_LABEL, PROBABILITY_CSV
    from nnunet_multitask.metrics import dice
    from nnunet_multitask.subtype_tables import read_probability_table

    pancreas, lesion = [], []
    for reference_file in sorted(labels.glob("*.nii.gz")):
        prediction_file = out / reference_file.name
        if not prediction_file.is_file():
            raise FileNotFoundError(f"{prediction_file}: no prediction for {reference_file}")
        reference = np.rint(np.asanyarray(nib.load(reference_file).dataobj)).astype(np.uint8)
        prediction = np.asanyarray(nib.load(prediction_file).dataobj).astype(np.uint8)
        pancreas.append(dice(reference > 0, prediction > 0))
        lesion.append(dice(reference == LESION_LABEL, prediction == LESION_LABEL))
    result = {"n": len(pancreas), "dice_pancreas": float(np.nanmean(pancreas)) if pancreas else float("nan"),
              "dice_lesion": float(np.nanmean(lesion)) if not np.all(np.isnan(lesion)) else float("nan"),
              "subtypes": None, "subtype_accuracy": None}
    table = out / PROBABILITY_CSV
    if table.is_file():
        result["subtypes"] = {case: int(np.argmax(p)) for case, p in read_probability_table(table).items()}
        known = [c for c in result["subtypes"] if c in true_subtypes]
        if known:
            result["subtype_accuracy"] = float(np.mean([result["subtypes"][c] == true_subtypes[c] for c in known]))
            result["subtype_known"] = len(known)
    return result


def read_true_subtypes(dataset_name: str, model_folder: Path, env: dict) -> tuple[dict[str, int], str]:
    from nnunet_multitask.labels import read_case_subtypes

    for path in (Path(env.get("nnUNet_raw", "")) / dataset_name / "dataset.json", model_folder / "dataset.json"):
        if path.is_file():
            try:
                return read_case_subtypes(path), str(path)
            except KeyError:
                continue
    return {}, "none (no dataset.json with case_subtypes)"


# ----------------------------------------------------------------------------- strategies one by one
def model_folds(fold: str) -> list:
    """``--fold`` as nnU-Net's predictor takes it."""
    return [fold if fold == "all" else int(fold)]


def strategy_variants():
    """(label, SpeedOptions) pairs, all in-process: the reference (every other strategy at
    nnU-Net's default), the strategies of --fast, the preset, and the ones --fast leaves out."""
    from dataclasses import replace

    from nnunet_multitask.predictor import FAST, SpeedOptions

    reference = SpeedOptions(in_process=True)
    return [
        ("in-process only (reference)", reference),
        (MIXED_LABEL, replace(reference, mixed_precision=True)),
        ("+ in-plane mirroring", replace(reference, in_plane_mirroring=True)),
        (FAST_LABEL, FAST),
        ("+ case-sized tiles (not in --fast)", replace(reference, case_sized_tiles=True)),
        ("--fast --case-sized-tiles", replace(FAST, case_sized_tiles=True)),
        ("+ fast resampling (not in --fast)", replace(reference, fast_resampling=True)),
        ("--fast --disable_tta", replace(FAST, use_mirroring=False)),
    ]


PROCESS_SCRIPT = """
import gc, sys, time
import torch
from nnunet_multitask.predictor import MultitaskPredictor
start = time.perf_counter()
predictor = MultitaskPredictor(device=torch.device("cpu"), direct_load=sys.argv[1] == "1")
predictor.initialize_from_trained_model_folder(sys.argv[3], [sys.argv[4] if sys.argv[4] == "all" else int(sys.argv[4])])
if sys.argv[2] == "1":
    gc.freeze()
print("LOAD", time.perf_counter() - start)
"""
PROCESS_VARIANTS = {"search": ("0", "0"), "direct": ("1", "0"), "direct + gc freeze": ("1", "1")}


def process_costs(model_folder: Path, fold: str, env: dict, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per process variant (nnU-Net's trainer search; --direct-load; --direct-load --gc-freeze), the
    median over ``rounds`` alternating fresh processes that import, load the model and exit: the
    load seconds and the wall seconds of the whole process."""
    samples = {name: {"load": [], "wall": []} for name in PROCESS_VARIANTS}
    for _ in range(rounds):
        for name, flags in PROCESS_VARIANTS.items():
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", PROCESS_SCRIPT, *flags, str(model_folder), fold], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
            samples[name]["wall"].append(time.perf_counter() - start)
            samples[name]["load"].append(float(result.stdout.split("LOAD")[-1]))
    return {name: {k: statistics.median(v) for k, v in values.items()} for name, values in samples.items()}


def strategies(images: Path, labels: Path | None, out_root: Path, model_folder: Path, args) -> list[dict]:
    """Each variant once in this process: predict_folder's total and network seconds, and (with
    labels) accuracy."""
    chatter = io.StringIO()  # nnU-Net's trainer search and CPU notices
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        return [_strategy_run(label, speed, images, labels, out_root / f"strategy{i}", model_folder, args)
                for i, (label, speed) in enumerate(strategy_variants())]


def _strategy_run(label: str, speed, images: Path, labels: Path | None, out: Path, model_folder: Path,
                  args) -> dict:
    import torch

    from nnunet_multitask.predictor import MultitaskPredictor, _device

    predictor = MultitaskPredictor.for_speed(speed, _device(args.device), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), model_folds(args.fold), "checkpoint_final.pth")
    report = predictor.predict_folder(images, out, in_process=True)
    if report.problems:
        raise RuntimeError(f"{label}: {report.problems}")
    return {"label": label, "network": report.network_seconds, "total": report.total_seconds,
            "threads": torch.get_num_threads(), "accuracy": accuracy(out, labels, {}) if labels else None}


def print_strategies(rows: list[dict], process: dict[str, dict[str, float]], runs: dict | None) -> None:
    """The table of variants; with the subprocess ``runs``, where --fast's time goes and which
    strategy saved how much of default mode's wall time."""
    reference = rows[0]
    by_label = {row["label"]: row for row in rows}
    print(f"{'variant (in this process, ' + str(reference['threads']) + ' threads)':<40}{'total s':>9}"
          f"{'network s':>11}{'net share':>10}{'speed-up':>10}{'pancreas':>10}{'lesion':>9}{'subtype agree':>15}")
    ref_subtypes = (reference["accuracy"] or {}).get("subtypes") or {}
    for row in rows:
        line = (f"{row['label']:<40}{row['total']:>9.1f}{row['network']:>11.1f}{row['network'] / row['total']:>10.0%}"
                f"{reference['total'] / row['total']:>9.2f}x")
        a = row["accuracy"]
        if a:
            subtypes = a["subtypes"] or {}
            same = sum(subtypes.get(c) == s for c, s in ref_subtypes.items())
            line += (f"{a['dice_pancreas'] - reference['accuracy']['dice_pancreas']:>+10.4f}"
                     f"{a['dice_lesion'] - reference['accuracy']['dice_lesion']:>+9.4f}"
                     f"{f'{same}/{len(ref_subtypes)}':>15}")
        print(line)
    print("  (total: predict_folder seconds; speed-up: reference total / variant total; Dice: mean over cases,\n"
          "   difference to the reference; subtype agree: same argmax as the reference)")
    print("fresh process that imports, loads the model and exits (median of 3):")
    for name, cost in process.items():
        print(f"  {name:<20} load {cost['load']:5.2f} s   process wall {cost['wall']:5.2f} s")
    fast_totals = [r["total"] for r in runs["fast"] if r["total"] is not None] if runs else []
    if not fast_totals:
        return
    default_wall, fast_wall = median_wall(runs["default"]), median_wall(runs["fast"])
    fast_total = statistics.median(fast_totals)
    direct_saving = process["search"]["wall"] - process["direct"]["wall"]
    freeze_saving = process["direct"]["wall"] - process["direct + gc freeze"]["wall"]
    # default mode minus what in-process changes nothing about: estimated wall of --in-process alone
    in_process_wall = fast_wall - fast_total + direct_saving + freeze_saving + reference["total"]
    saved = {
        "in-process (no worker pools; default wall - estimated in-process wall)": default_wall - in_process_wall,
        "mixed precision (reference total - mixed precision total)": reference["total"] - by_label[MIXED_LABEL]["total"],
        "in-plane mirroring (mixed precision total - --fast total)":
            by_label[MIXED_LABEL]["total"] - by_label[FAST_LABEL]["total"],
        "direct load (process wall: search - direct)": direct_saving,
        "gc freeze (process wall: direct - direct + gc freeze)": freeze_saving,
    }
    print(f"\n--fast end to end: {fast_wall:.1f} s wall = process start-up, model load and exit "
          f"{fast_wall - fast_total:.1f} s + predict_folder {fast_total:.1f} s, of which the network "
          f"{by_label[FAST_LABEL]['network']:.1f} s ({by_label[FAST_LABEL]['network'] / by_label[FAST_LABEL]['total']:.0%}"
          f" in the in-process run)")
    print(f"default {default_wall:.1f} s -> --fast {fast_wall:.1f} s: {default_wall - fast_wall:.1f} s saved, by strategy "
          "(estimates from the runs above; they need not add up exactly):")
    for name, seconds in saved.items():
        print(f"  {name:<74}{seconds:7.1f} s  ({seconds / (default_wall - fast_wall):.0%})")


def report_strategies(images: Path, labels: Path | None, tmp: Path, model_folder: Path, args, env: dict,
                      runs: dict | None) -> None:
    print("\nstrategies one by one (in this process, same cases; where --fast's time goes):", flush=True)
    print_strategies(strategies(images, labels, tmp / "out", model_folder, args),
                     process_costs(model_folder, args.fold, env), runs)


# ----------------------------------------------------------------------------- report
def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def _verdict(ok: bool | None) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "FAIL")


def print_table(runs: dict, acc: dict | None) -> None:
    stock = median_wall(runs["stock"])
    head = f"{'mode':<34}{'median wall s':>14}{'vs stock':>10}{'min s':>8}{'max s':>8}"
    if acc:
        head += f"{'pancreas Dice':>15}{'lesion Dice':>13}{'subtype acc':>13}"
    print(head)
    for mode in MODES:
        walls = [r["wall"] for r in runs[mode]]
        name = TOOL[mode] + (" --fast" if mode == "fast" else "")
        line = (f"{name:<34}{median_wall(runs[mode]):>14.1f}{median_wall(runs[mode]) / stock:>9.2f}x"
                f"{min(walls):>8.1f}{max(walls):>8.1f}")
        if acc:
            a = acc[mode]
            line += (f"{_fmt(a['dice_pancreas']):>15}{_fmt(a['dice_lesion']):>13}"
                     f"{(_fmt(a['subtype_accuracy']) if a['subtypes'] is not None else 'no subtype'):>13}")
        print(line)


def timing_verdicts(runs: dict) -> list[tuple[str, bool | None, str]]:
    stock, default, fast = (median_wall(runs[m]) for m in MODES)
    return [
        (f"default <= {DEFAULT_MAX_RATIO}x stock time", default / stock <= DEFAULT_MAX_RATIO,
         f"{default / stock:.3f}x"),
        (f"--fast >= {FAST_MIN_SPEEDUP:g}x faster than stock", stock / fast >= FAST_MIN_SPEEDUP,
         f"{stock / fast:.2f}x faster"),
    ]


def accuracy_verdicts(acc: dict) -> list[tuple[str, bool | None, str]]:
    rows = []
    for key, name in (("dice_pancreas", "pancreas"), ("dice_lesion", "lesion")):
        d, f = acc["default"][key], acc["fast"][key]
        diff = abs(f - d)
        ok = None if diff != diff else diff <= FAST_MAX_DICE_DROP
        rows.append((f"--fast mean {name} Dice within {FAST_MAX_DICE_DROP} of default", ok,
                     f"{f:.4f} vs {d:.4f} (diff {f - d:+.4f})"))
    sd, sf = acc["default"]["subtypes"] or {}, acc["fast"]["subtypes"] or {}
    common = sorted(set(sd) & set(sf))
    agreement = sum(sd[c] == sf[c] for c in common) / len(common) if common else None
    rows.append((f"--fast same subtype as default on >= {FAST_MIN_AGREEMENT:.0%}",
                 None if agreement is None else agreement >= FAST_MIN_AGREEMENT,
                 "no cases" if agreement is None else
                 f"{agreement:.1%} ({sum(sd[c] == sf[c] for c in common)}/{len(common)} cases)"))
    return rows


def print_verdicts(rows) -> None:
    for name, ok, detail in rows:
        print(f"  {_verdict(ok)}  {name:<52} {detail}")


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        print("error: --rounds must be >= 1", file=sys.stderr)
        return 2
    if args.dataset and not os.environ.get("nnUNet_results"):
        print("error: --dataset needs nnUNet_results (and nnUNet_raw for the default cases) to be set",
              file=sys.stderr)
        return 2
    with scratch_folder("bench_inference_", args.keep_tmp) as tmp:
        return _benchmark(args, tmp)


def _benchmark(args, tmp: Path) -> int:
    t0 = time.perf_counter()
    env = dict(os.environ)
    if not args.dataset:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env[name] = str(tmp / name)
            Path(env[name]).mkdir()
            os.environ[name] = env[name]  # before anything imports nnunetv2.paths
    # the trainer folder as `nnunet-multitask trainer-path` prints it (stock predict needs it too)
    env["nnUNet_extTrainer"] = subprocess.run([str(BIN / "nnunet-multitask"), "trainer-path"], stdout=subprocess.PIPE,
                                              text=True, check=True).stdout.strip()
    os.environ["nnUNet_extTrainer"] = env["nnUNet_extTrainer"]
    if args.threads:
        for name in THREAD_VARS:
            env[name] = str(args.threads)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    untrained = not args.dataset
    if untrained:
        if args.trainer == "nnUNetTrainerMultitask":
            args.trainer = SMOKE_TRAINER
        print(f"no --dataset: building a synthetic dataset and training {args.trainer} in {tmp} ...", flush=True)
        dataset_name = train_smoke_model(tmp, args, env)
        origin = f"{dataset_name} (synthetic, {args.trainer} trained here in {time.perf_counter() - t0:.0f} s)"
    else:
        dataset_name = resolve_dataset(args.dataset, env)
        origin = f"{dataset_name} in {env['nnUNet_results']}"
    model_folder = Path(env["nnUNet_results"]) / dataset_name / f"{args.trainer}__{args.plans}__{args.configuration}"
    checkpoint = model_folder / f"fold_{args.fold}" / "checkpoint_final.pth"
    if not checkpoint.is_file():
        print(f"error: {checkpoint} does not exist", file=sys.stderr)
        return 2

    print(f"date           {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine        {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, device "
          f"{args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
          + f", load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"torch          {torch.__version__}; thread variables "
          + (", ".join(f"{v}={env[v]}" for v in THREAD_VARS if v in env) or "unset")
          + "; nnUNet_def_n_proc " + env.get("nnUNet_def_n_proc", "unset"))
    print(f"model          {origin}: {args.trainer}__{args.plans}__{args.configuration}, fold {args.fold} "
          "(checkpoint_final.pth)")
    try:  # before minutes of timing: does this checkpoint load with this code (subtype head and all)?
        from nnunet_multitask.predictor import PredictionInputError
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from nnunet_multitask.predictor import MultitaskPredictor
            MultitaskPredictor(device=torch.device("cpu")).initialize_from_trained_model_folder(
                str(model_folder), model_folds(args.fold), "checkpoint_final.pth")
    except PredictionInputError as error:
        print(f"error: the checkpoint does not load with this code: {error}", file=sys.stderr)
        return 2
    if untrained:
        print("\n" + "!" * 100 + "\n!!! UNTRAINED MODEL (2-epoch smoke run): the ACCURACY NUMBERS BELOW ARE MEANINGLESS; "
              "only the timings count.\n" + "!" * 100)

    if args.images:
        images = args.images.resolve()
        labels = args.labels.resolve() if args.labels else None
        print(f"cases          {images}" + (f", labels {labels}" if labels else ", no labels (timing only)"))
    else:
        images, labels = validation_cases(dataset_name, args.fold, env, tmp)
    print(f"commands       {' '.join(command('stock', Path('IN'), Path('OUT'), dataset_name, args)[1:])}")
    print(f"               nnUNetv2_predict / nnUNetv2_predict_multitask / nnUNetv2_predict_multitask --fast, "
          f"{args.rounds} rounds, order rotated")

    # untimed: read the interpreter, torch and nnU-Net from disk once, so that the first timed run
    # of round 1 does not pay a cold page cache the others do not
    subprocess.run([sys.executable, "-c", "import nnunetv2.inference.predict_from_raw_data, "
                    "nnunet_multitask.predictor"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    if args.strategies_only:
        report_strategies(images, labels, tmp, model_folder, args, env, None)
        print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
        return 0

    # ------------------------------------------------------------- the cases with labels
    print(f"\n== {images.name}: {len(list(images.glob('*_0000.nii.gz')))} cases", flush=True)
    runs = alternate(images, tmp / "out", dataset_name, args.rounds, args, env, keep_first=True)
    acc = None
    true_subtypes, subtype_source = read_true_subtypes(dataset_name, model_folder, env)
    if labels:
        acc = {mode: accuracy(tmp / "out" / f"{mode}_round0", labels, true_subtypes) for mode in MODES}
    print(f"\nsubtype truth  {subtype_source}")
    if untrained:
        print("(UNTRAINED MODEL: Dice and subtype accuracy are meaningless)")
    print()
    print_table(runs, acc)
    verdicts = timing_verdicts(runs) + (accuracy_verdicts(acc) if acc else [])
    print("\ntargets (this machine, these cases):")
    print_verdicts(verdicts)

    report_strategies(images, labels, tmp, model_folder, args, env, runs)

    # ------------------------------------------------------------- real CT, timing only
    real = args.real_ct
    if real and real.is_dir() and any(real.glob("*_0000.nii.gz")):
        real_images = subset(real.resolve(), args.real_ct_cases, tmp)
        n_real = len(list(real_images.glob("*_0000.nii.gz")))
        rounds = args.real_ct_rounds or args.rounds
        print(f"\n== real CT, timing only: {n_real} cases of {real}, {rounds} rounds", flush=True)
        real_runs = alternate(real_images, tmp / "out_real", dataset_name, rounds, args, env, keep_first=False)
        print()
        print_table(real_runs, None)
        real_verdicts = timing_verdicts(real_runs)
        print("\ntargets on real CT sizes (timing):")
        print_verdicts(real_verdicts)
        verdicts += real_verdicts
    else:
        print(f"\nreal CT run skipped: {real} is absent (only the project's shared checkout has it)")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s")
    if untrained:
        print("reminder: UNTRAINED MODEL, accuracy numbers meaningless")
    return 1 if args.check and any(ok is False for _, ok, _ in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
