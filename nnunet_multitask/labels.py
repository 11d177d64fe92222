"""Label, subtype and naming conventions shared by every part of the package.

The case-to-subtype table lives in the nnU-Net ``dataset.json`` under the key
``case_subtypes`` (``{"quiz_0_041": 0, ...}``, training and validation cases only), next to
``subtype_names``. nnU-Net ignores unknown keys and copies ``dataset.json`` into
``nnUNet_preprocessed/<dataset>/`` and into every results folder, so the trainer, the
predictor and the evaluation all read the same table from wherever they run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

#: nnU-Net label map of the segmentation task.
LABELS: dict[str, int] = {"background": 0, "pancreas": 1, "lesion": 2}
PANCREAS_LABEL = LABELS["pancreas"]
LESION_LABEL = LABELS["lesion"]

#: Lesion subtypes, in the order of the classification head's outputs.
SUBTYPES: tuple[int, ...] = (0, 1, 2)
N_SUBTYPES = len(SUBTYPES)
SUBTYPE_NAMES: dict[str, str] = {str(k): f"subtype{k}" for k in SUBTYPES}

#: Keys we add to ``dataset.json``.
CASE_SUBTYPES_KEY = "case_subtypes"
SUBTYPE_NAMES_KEY = "subtype_names"

#: Largest distance of a stored mask value from its label (float masks such as 1.0000153 exist).
MASK_ROUNDING_TOLERANCE = 1e-3

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"

#: Fold index (in ``splits_final.json``) of the dataset's own train/validation split.
#: Folds 0-4 are nnU-Net's 5-fold cross-validation over the training cases only.
OFFICIAL_SPLIT_FOLD = 5

#: ``quiz_<subtype>_<id>`` (labelled cases) or ``quiz_<id>`` (test cases).
LABELLED_CASE_RE = re.compile(r"^quiz_(?P<subtype>\d+)_(?P<id>\d+)$")

#: Names of operating-system debris found in users' downloads.
DEBRIS_DIRS = frozenset({"__MACOSX"})
DEBRIS_FILES = frozenset({".DS_Store"})


def is_debris(path: Path) -> bool:
    """True for macOS resource forks (``._*``), ``.DS_Store`` and anything under ``__MACOSX/``."""
    return (
        path.name in DEBRIS_FILES
        or path.name.startswith("._")
        or any(part in DEBRIS_DIRS for part in path.parts)
    )


def case_id_from_filename(name: str) -> str:
    """``quiz_0_041_0000.nii.gz`` or ``quiz_0_041.nii.gz`` -> ``quiz_0_041``."""
    if not name.endswith(FILE_ENDING):
        raise ValueError(f"{name}: expected a file ending in {FILE_ENDING}")
    stem = name[: -len(FILE_ENDING)]
    return stem[: -len(CHANNEL_SUFFIX)] if stem.endswith(CHANNEL_SUFFIX) else stem


def subtype_from_case_id(case_id: str) -> int | None:
    """The subtype encoded in a labelled case's name, or None for a test-style name."""
    match = LABELLED_CASE_RE.match(case_id)
    return int(match.group("subtype")) if match else None


def read_case_subtypes(dataset_json: Mapping | str | os.PathLike) -> dict[str, int]:
    """The case-to-subtype table of a dataset.

    Args:
        dataset_json: the parsed ``dataset.json`` or its path.

    Raises:
        KeyError: the dataset was not converted by :mod:`nnunet_multitask.conversion`
            (no ``case_subtypes`` key); the message names the file when a path was given.
    """
    source = str(dataset_json) if not isinstance(dataset_json, Mapping) else "dataset.json"
    if not isinstance(dataset_json, Mapping):
        dataset_json = json.loads(Path(dataset_json).read_text())
    if CASE_SUBTYPES_KEY not in dataset_json:
        raise KeyError(
            f"{source}: no '{CASE_SUBTYPES_KEY}' table; convert the dataset with "
            "dataset_conversion.py so that the subtypes are recorded"
        )
    return {case: int(subtype) for case, subtype in dataset_json[CASE_SUBTYPES_KEY].items()}


#: Prediction CSVs written beside the segmentations (the users' brief fixes the first one).
SUBTYPE_CSV = "subtype_results.csv"
SUBTYPE_CSV_HEADER: tuple[str, str] = ("Names", "Subtype")
PROBABILITY_CSV = "subtype_probabilities.csv"
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"prob_subtype{k}" for k in SUBTYPES)
PROBABILITY_CSV_HEADER: tuple[str, ...] = SUBTYPE_CSV_HEADER + PROBABILITY_COLUMNS
