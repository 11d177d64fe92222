"""Install the committed plans (``plans/`` at the repository root) into a dataset's
``nnUNet_preprocessed/<dataset>/`` folder.

The committed ``nnUNetResEncUNetMPlans.json`` is what nnU-Net's ``nnUNetPlannerResEncM`` plans for
the real pancreas dataset's geometry (3d_fullres: patch 64x128x192, batch 2, spacing 2.0 x 0.73 x
0.73 mm; and 2d), plus ``3d_tiny``, a small configuration for CPU demos and tests. What depends on
the user's images (the CT intensity statistics that CT normalisation uses) is not committed: it is
filled in from the dataset's ``dataset_fingerprint.json`` (``nnUNetv2_extract_fingerprint``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nnunet_multitask.io import write_json_atomic, write_text_atomic

PLANS_DIR = Path(__file__).resolve().parents[1] / "plans"
DEFAULT_PLANS = "nnUNetResEncUNetMPlans"
FINGERPRINT = "dataset_fingerprint.json"


def resolve_dataset_name(dataset: str | int, preprocessed_root: Path) -> str:
    """``777`` or ``Dataset777_Name`` -> ``Dataset777_Name`` as found in ``preprocessed_root``."""
    dataset = str(dataset)
    if dataset.startswith("Dataset"):
        return dataset
    prefix = f"Dataset{int(dataset):03d}_"
    matches = sorted(p.name for p in preprocessed_root.glob(prefix + "*") if p.is_dir())
    if len(matches) != 1:
        raise FileNotFoundError(
            f"{preprocessed_root}: expected one folder {prefix}*, found {matches or 'none'}; "
            "run nnUNetv2_extract_fingerprint first"
        )
    return matches[0]


def install_plans(dataset: str | int, plans_name: str = DEFAULT_PLANS,
                  preprocessed_root: str | os.PathLike | None = None,
                  raw_root: str | os.PathLike | None = None) -> Path:
    """Write ``plans/<plans_name>.json`` into the dataset's preprocessed folder with the dataset's
    name and intensity statistics, and copy the raw ``dataset.json`` beside it (as nnU-Net's
    planners do; ``nnUNetv2_preprocess`` reads it there). Returns the written plans path."""
    root = Path(preprocessed_root or os.environ.get("nnUNet_preprocessed") or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError("nnUNet_preprocessed is not set or does not exist; pass --preprocessed")
    template = PLANS_DIR / f"{plans_name}.json"
    if not template.is_file():
        raise FileNotFoundError(f"{template}: no committed plans of that name")
    dataset_name = resolve_dataset_name(dataset, root)
    fingerprint_file = root / dataset_name / FINGERPRINT
    if not fingerprint_file.is_file():
        raise FileNotFoundError(f"{fingerprint_file}: missing; run nnUNetv2_extract_fingerprint -d {dataset} first")
    plans = json.loads(template.read_text())
    if plans["plans_name"] != plans_name:
        raise ValueError(f"{template}: plans_name {plans['plans_name']!r} differs from the file name")
    fingerprint = json.loads(fingerprint_file.read_text())
    plans["dataset_name"] = dataset_name
    plans["foreground_intensity_properties_per_channel"] = fingerprint["foreground_intensity_properties_per_channel"]
    raw_dataset_json = Path(raw_root or os.environ.get("nnUNet_raw") or "") / dataset_name / "dataset.json"
    if not raw_dataset_json.is_file():
        raise FileNotFoundError(f"{raw_dataset_json}: missing; set nnUNet_raw (or --raw) to the converted dataset's root")
    write_text_atomic(root / dataset_name / "dataset.json", raw_dataset_json.read_text())
    target = root / dataset_name / f"{plans_name}.json"
    write_json_atomic(target, plans)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-multitask install-plans", description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, help="dataset ID or name, e.g. 777")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help=f"committed plans name (default {DEFAULT_PLANS})")
    parser.add_argument("--preprocessed", default=None, help="nnUNet_preprocessed folder (default: $nnUNet_preprocessed)")
    parser.add_argument("--raw", default=None, help="nnUNet_raw folder (default: $nnUNet_raw)")
    args = parser.parse_args(argv)
    print(f"installed {install_plans(args.dataset, args.plans, args.preprocessed, args.raw)}")
    return 0
