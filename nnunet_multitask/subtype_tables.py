"""The subtype CSVs a prediction folder holds, and the merge of ``-num_parts`` runs.

- ``subtype_results.csv``: ``Names,Subtype`` (the users' brief), e.g. ``quiz_037.nii.gz,0``;
- ``subtype_probabilities.csv``: ``Names,Subtype,prob_subtype0,prob_subtype1,prob_subtype2``.

A run with ``-num_parts N -part_id i`` writes only ``subtype_probabilities.part<i>of<N>.csv``;
:func:`merge_parts` (run automatically by the part that finds all N part files present, or by
``nnunet-multitask merge-subtypes DIR``) combines them into the two files above. Rows are sorted by
case name; every file is written atomically.
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from nnunet_multitask.io import write_csv_atomic
from nnunet_multitask.labels import (
    FILE_ENDING,
    PROBABILITY_CSV,
    PROBABILITY_CSV_HEADER,
    SUBTYPE_CSV,
    SUBTYPE_CSV_HEADER,
    case_id_from_filename,
)

PART_RE = re.compile(r"^subtype_probabilities\.part(?P<part>\d+)of(?P<parts>\d+)\.csv$")


def part_file_name(part_id: int, num_parts: int) -> str:
    return f"subtype_probabilities.part{part_id}of{num_parts}.csv"


def write_probability_table(path: Path, probabilities: Mapping[str, np.ndarray]) -> None:
    """``{case_id: (n_subtypes,) probabilities}`` -> a probability CSV (predicted = argmax)."""
    rows = [(case + FILE_ENDING, int(np.argmax(p)), *(f"{v:.6f}" for v in p))
            for case, p in sorted(probabilities.items())]
    write_csv_atomic(path, PROBABILITY_CSV_HEADER, rows)


def write_subtype_tables(folder: Path, probabilities: Mapping[str, np.ndarray]) -> None:
    """Write ``subtype_results.csv`` and ``subtype_probabilities.csv`` into ``folder``."""
    write_probability_table(folder / PROBABILITY_CSV, probabilities)
    write_csv_atomic(folder / SUBTYPE_CSV, SUBTYPE_CSV_HEADER,
                     [(case + FILE_ENDING, int(np.argmax(p))) for case, p in sorted(probabilities.items())])


def read_probability_table(path: Path) -> dict[str, np.ndarray]:
    """A probability CSV -> ``{case_id: probabilities}``; ``{}`` when the file does not exist.

    Raises:
        ValueError: wrong header or an unparsable row, naming the file and the line.
    """
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != PROBABILITY_CSV_HEADER:
        raise ValueError(f"{path}: header must be {','.join(PROBABILITY_CSV_HEADER)}")
    table = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            table[case_id_from_filename(row[0])] = np.array([float(v) for v in row[2:]])
        except (ValueError, IndexError) as error:
            raise ValueError(f"{path} line {line}: cannot parse {row}: {error}") from None
    return table


def merge_parts(folder: Path) -> dict[str, np.ndarray]:
    """Combine every ``subtype_probabilities.part<i>of<N>.csv`` in ``folder`` into the two tables.

    Raises:
        FileNotFoundError: no part file, or a part of the N is missing (named).
        ValueError: part files of different N, or a case in two parts.
    """
    parts = {}
    for path in folder.iterdir():
        match = PART_RE.match(path.name)
        if match:
            parts[(int(match["part"]), int(match["parts"]))] = path
    if not parts:
        raise FileNotFoundError(f"{folder}: no subtype_probabilities.part<i>of<N>.csv files")
    counts = {n for _, n in parts}
    if len(counts) != 1:
        raise ValueError(f"{folder}: part files from runs with different -num_parts: {sorted(counts)}")
    num_parts = counts.pop()
    missing = [part_file_name(i, num_parts) for i in range(num_parts) if (i, num_parts) not in parts]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (that part has not finished)")
    merged: dict[str, np.ndarray] = {}
    for key in sorted(parts):
        table = read_probability_table(parts[key])
        duplicated = sorted(set(table) & set(merged))
        if duplicated:
            raise ValueError(f"{parts[key]}: cases also in another part: {', '.join(duplicated)}")
        merged.update(table)
    write_subtype_tables(folder, merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-multitask merge-subtypes",
                                     description="merge the subtype CSVs of -num_parts prediction runs")
    parser.add_argument("folder", type=Path, help="the prediction output folder (-o) shared by all parts")
    args = parser.parse_args(argv)
    merged = merge_parts(args.folder)
    print(f"merged {len(merged)} cases into {args.folder / SUBTYPE_CSV} and {args.folder / PROBABILITY_CSV}")
    return 0
