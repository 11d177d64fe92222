"""``nnunet-multitask check-submission PRED_DIR --images IMAGES_DIR``: verify a test-set output folder.

A valid folder holds, for every test image ``<case>_0000.nii.gz`` of IMAGES_DIR, one mask
``<case>.nii.gz`` with the image's geometry (shape; spacing and origin within
:data:`GEOMETRY_ATOL_MM` mm; direction cosines within :data:`DIRECTION_ATOL`), an integer pixel
type and labels in {0, 1, 2}; and a ``subtype_results.csv`` whose header is exactly
``Names,Subtype`` with one row ``<case>.nii.gz,<k>`` per case, k in {0, 1, 2}. Every problem
found is listed (not only the first); the command exits 1 when there is any.

The mask and CSV readers here are shared with the evaluation (:mod:`nnunet_multitask.plots`).
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_multitask.labels import (
    CHANNEL_SUFFIX,
    FILE_ENDING,
    LABELS,
    MASK_ROUNDING_TOLERANCE,
    SUBTYPE_CSV,
    SUBTYPE_CSV_HEADER,
    SUBTYPES,
    case_id_from_filename,
    is_debris,
)

#: Largest accepted difference of spacing and origin, in mm (float32 headers round at ~1e-5 mm).
GEOMETRY_ATOL_MM = 1e-3
#: Largest accepted difference of a direction-cosine entry.
DIRECTION_ATOL = 1e-4
VALID_LABELS = frozenset(LABELS.values())


@dataclass(frozen=True)
class Geometry:
    """Image grid: ``shape`` in array order (z, y, x); ``spacing`` (mm), ``origin`` (mm) and
    ``direction`` (row-major 3x3) in SimpleITK's (x, y, z) order."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> "Geometry":
        return cls(
            tuple(reversed(image.GetSize())), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        )

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Voxel size in mm in array order, as the metrics expect."""
        return tuple(reversed(self.spacing))


def read_geometry(path: Path) -> Geometry:
    """Geometry of an image, from its header only (the pixels are not loaded)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Geometry.of(reader)


def read_mask(path: Path, tolerance: float = MASK_ROUNDING_TOLERANCE) -> tuple[np.ndarray, Geometry]:
    """A label mask as a ``uint8`` array (z, y, x) and its geometry.

    Float values are rounded to the nearest integer when within ``tolerance`` of it.

    Raises:
        ValueError: naming ``path``, when a value is farther than ``tolerance`` from an integer
            or a label is outside {0, 1, 2}.
    """
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    rounded = np.rint(array)
    if np.issubdtype(array.dtype, np.floating) and array.size and np.abs(array - rounded).max() > tolerance:
        raise ValueError(f"{path}: non-integer label values (max distance to an integer "
                         f"{np.abs(array - rounded).max():.4g} > {tolerance})")
    unexpected = sorted({int(v) for v in np.unique(rounded)} - VALID_LABELS)
    if unexpected:
        raise ValueError(f"{path}: labels {unexpected} outside {sorted(VALID_LABELS)}")
    return rounded.astype(np.uint8), Geometry.of(image)


def geometry_problems(reference: Geometry, other: Geometry) -> list[str]:
    """Human-readable differences of ``other`` from ``reference`` (empty when they match)."""
    if reference.shape != other.shape:
        return [f"shape {other.shape} != {reference.shape}"]
    checks = (("spacing", GEOMETRY_ATOL_MM), ("origin", GEOMETRY_ATOL_MM), ("direction", DIRECTION_ATOL))
    return [
        f"{name} {tuple(np.round(getattr(other, name), 5))} != {tuple(np.round(getattr(reference, name), 5))}"
        for name, atol in checks
        if not np.allclose(getattr(reference, name), getattr(other, name), rtol=0, atol=atol)
    ]


def parse_subtype_csv(path: Path) -> tuple[dict[str, int], list[str]]:
    """Read ``subtype_results.csv``: ``({case_id: subtype}, problems)``.

    Problems (each naming the file and row): header other than ``Names,Subtype``, a row without
    two fields, a name not ending in ``.nii.gz``, a subtype that is not an integer in
    {0, 1, 2}, a duplicated case. Rows with a problem are left out of the table.
    """
    if not path.is_file():
        return {}, [f"{path}: missing"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}, [f"{path}: empty file"]
    problems: list[str] = []
    if tuple(rows[0]) != SUBTYPE_CSV_HEADER:
        problems.append(f"{path}: header {','.join(rows[0])!r} != {','.join(SUBTYPE_CSV_HEADER)!r}")
    table: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path} line {line}"
        if len(row) != 2:
            problems.append(f"{where}: expected 2 fields, got {len(row)}: {row}")
            continue
        name, value = (cell.strip() for cell in row)
        try:
            case = case_id_from_filename(name)
        except ValueError:
            problems.append(f"{where}: name {name!r} should be '<case>{FILE_ENDING}'")
            continue
        if value not in {str(k) for k in SUBTYPES}:
            problems.append(f"{where}: {name}: subtype {value!r} not in {list(SUBTYPES)}")
        elif case in table:
            problems.append(f"{where}: {name}: duplicate row")
        else:
            table[case] = int(value)
    return table, problems


def _mask_problems(mask_path: Path, image_path: Path) -> list[str]:
    """Problems of one predicted mask against its test image."""
    try:
        image_geometry = read_geometry(image_path)
        mask = sitk.ReadImage(str(mask_path))
    except RuntimeError as error:  # SimpleITK's error for unreadable files
        return [f"{mask_path.name}: cannot read ({str(error).strip().splitlines()[-1]})"]
    problems = [
        f"{mask_path.name}: {p} (image {image_path.name})"
        for p in geometry_problems(image_geometry, Geometry.of(mask))
    ]
    array = sitk.GetArrayViewFromImage(mask)
    if not np.issubdtype(array.dtype, np.integer):
        problems.append(f"{mask_path.name}: pixel type {mask.GetPixelIDTypeAsString()} is not an integer type")
    unexpected = sorted(set(np.unique(array).tolist()) - VALID_LABELS)
    if unexpected:
        problems.append(f"{mask_path.name}: labels {unexpected[:10]} outside {sorted(VALID_LABELS)}")
    return problems


def _files(folder: Path, images: bool) -> dict[str, Path]:
    """``{case_id: path}`` of the NIfTI files of a folder: the ``_0000`` images or the masks."""
    return {
        case_id_from_filename(p.name): p
        for p in sorted(folder.glob(f"*{FILE_ENDING}"))
        if not is_debris(p) and p.name.endswith(CHANNEL_SUFFIX + FILE_ENDING) == images
    }


def check_submission(pred_dir: str | Path, images_dir: str | Path) -> list[str]:
    """Every problem of a test-set output folder (see the module docstring); empty when valid."""
    pred_dir, images_dir = Path(pred_dir), Path(images_dir)
    for folder in (pred_dir, images_dir):
        if not folder.is_dir():
            return [f"{folder}: not a folder"]
    images, masks = _files(images_dir, images=True), _files(pred_dir, images=False)
    if not images:
        return [f"{images_dir}: no test images '*{CHANNEL_SUFFIX}{FILE_ENDING}'"]
    problems = [f"{case}{FILE_ENDING}: missing mask (image {images[case].name})" for case in images if case not in masks]
    problems += [f"{masks[case].name}: no matching image in {images_dir}" for case in masks if case not in images]
    for case in sorted(images.keys() & masks.keys()):
        problems += _mask_problems(masks[case], images[case])
    table, csv_problems = parse_subtype_csv(pred_dir / SUBTYPE_CSV)
    problems += csv_problems
    if not any(p.endswith(": missing") for p in csv_problems):
        problems += [f"{SUBTYPE_CSV}: no row for {case}{FILE_ENDING}" for case in images if case not in table]
        problems += [f"{SUBTYPE_CSV}: row {case}{FILE_ENDING} has no test image" for case in table if case not in images]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-multitask check-submission", description=__doc__.split("\n\n")[0])
    parser.add_argument("pred_dir", type=Path, help="folder with <case>.nii.gz masks and subtype_results.csv")
    parser.add_argument("--images", type=Path, required=True, help="folder with the test images <case>_0000.nii.gz")
    args = parser.parse_args(argv)
    problems = check_submission(args.pred_dir, args.images)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.pred_dir}")
        return 1
    print(f"OK: {args.pred_dir} is a valid submission for {args.images}")
    return 0
