"""Raw quiz layout -> ``nnUNet_raw/Dataset<ID>_<Name>/`` (+ ``splits_final.json`` in nnUNet_preprocessed).

Input (``source``)::

    train/subtype<k>/quiz_<k>_<id>.nii.gz + quiz_<k>_<id>_0000.nii.gz
    validation/subtype<k>/...   (optional)
    test/quiz_<id>_0000.nii.gz  (optional)

Output: ``imagesTr``/``labelsTr`` with the training AND validation cases (the split file keeps them
apart), ``imagesTs``, ``dataset.json`` (with the case -> subtype table) and ``splits_final.json``:
folds 0-4 are nnU-Net's 5-fold split of the training cases only, fold ``OFFICIAL_SPLIT_FOLD`` is
train -> val. Every problem of the input is collected and raised together in one
:class:`DatasetLayoutError`; nothing is written to the target unless all cases convert (the dataset
is built in a hidden temporary sibling folder and renamed at the end). The input is only read.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from nnunet_multitask.io import atomic_directory, atomic_path, write_json_atomic
from nnunet_multitask.labels import (
    CASE_SUBTYPES_KEY, CHANNEL_SUFFIX, FILE_ENDING, LABELS, LABELLED_CASE_RE, MASK_ROUNDING_TOLERANCE,
    OFFICIAL_SPLIT_FOLD, SUBTYPE_NAMES, SUBTYPE_NAMES_KEY, SUBTYPES, case_id_from_filename, is_debris, subtype_from_case_id,
)

DEFAULT_DATASET_ID = 777
DEFAULT_DATASET_NAME = "PancreasQuiz"
#: Geometry tolerances between an image and its mask.
SPACING_RTOL, ORIGIN_ATOL_MM, DIRECTION_ATOL = 1e-3, 1e-2, 1e-3
LABELLED_SPLITS = ("train", "validation")
CV_SEED, CV_FOLDS = 12345, 5


class DatasetLayoutError(ValueError):
    """The input cannot be converted; ``problems`` lists every reason, each naming its file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in the input dataset:\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    return f"Dataset{dataset_id:03d}_{dataset_name}"


# ----------------------------------------------------------------------------- layout scan
def scan_layout(source: str | Path) -> tuple[list[dict], list[str]]:
    """Pair images and masks; return (cases, problems). Reads no image data.

    Each case is ``{"case_id", "split", "subtype", "image", "mask"}`` (``mask``/``subtype`` None
    for test cases). Debris (``__MACOSX``, ``._*``, ``.DS_Store``) is ignored.
    """
    source = Path(source)
    problems: list[str] = []
    cases: list[dict] = []
    if not source.is_dir():
        return [], [f"{source}: input folder does not exist"]
    if not (source / "train").is_dir():
        problems.append(f"{source / 'train'}: missing train/ folder (expected train/subtype<k>/...)")
    for split in LABELLED_SPLITS:
        split_dir = source / split
        if not split_dir.is_dir():
            continue
        for sub in sorted(split_dir.iterdir()):
            if is_debris(sub.relative_to(source)):
                continue
            if not sub.is_dir():
                problems.append(f"{sub}: unexpected file (cases belong in {split}/subtype<k>/)")
                continue
            if sub.name not in {f"subtype{k}" for k in SUBTYPES}:
                problems.append(f"{sub}: unknown subtype folder (expected one of "
                                f"{', '.join(f'subtype{k}' for k in SUBTYPES)})")
                continue
            folder_subtype = int(sub.name[len("subtype"):])
            pairs: dict[str, dict[str, Path]] = defaultdict(dict)
            for f in sorted(sub.iterdir()):
                if is_debris(f.relative_to(source)):
                    continue
                if not f.is_file() or not f.name.endswith(FILE_ENDING):
                    problems.append(f"{f}: unexpected entry (expected *{FILE_ENDING} files)")
                    continue
                case_id = case_id_from_filename(f.name)
                kind = "image" if f.name.endswith(CHANNEL_SUFFIX + FILE_ENDING) else "mask"
                pairs[case_id][kind] = f
            for case_id, files in pairs.items():
                any_file = files.get("mask") or files.get("image")
                if not LABELLED_CASE_RE.match(case_id):
                    problems.append(f"{any_file}: name does not match quiz_<subtype>_<id>")
                    continue
                if subtype_from_case_id(case_id) != folder_subtype:
                    problems.append(f"{any_file}: subtype {subtype_from_case_id(case_id)} in the file name "
                                    f"disagrees with its folder {sub.name}")
                    continue
                if "image" not in files:
                    problems.append(f"{files['mask']}: mask without image ({case_id}{CHANNEL_SUFFIX}{FILE_ENDING} missing)")
                elif "mask" not in files:
                    problems.append(f"{files['image']}: image without mask ({case_id}{FILE_ENDING} missing)")
                else:
                    cases.append({"case_id": case_id, "split": split, "subtype": folder_subtype,
                                  "image": files["image"], "mask": files["mask"]})
    test_dir = source / "test"
    if test_dir.is_dir():
        for f in sorted(test_dir.iterdir()):
            if is_debris(f.relative_to(source)):
                continue
            if not (f.is_file() and f.name.endswith(CHANNEL_SUFFIX + FILE_ENDING)):
                problems.append(f"{f}: unexpected entry in test/ (expected *{CHANNEL_SUFFIX}{FILE_ENDING} images)")
                continue
            cases.append({"case_id": case_id_from_filename(f.name), "split": "test", "subtype": None,
                          "image": f, "mask": None})
    seen: dict[str, Path] = {}
    for case in cases:
        if case["case_id"] in seen:
            problems.append(f"{case['image']}: duplicate case id {case['case_id']} (also {seen[case['case_id']]})")
        else:
            seen[case["case_id"]] = case["image"]
    n_train = sum(c["split"] == "train" for c in cases)
    if (source / "train").is_dir() and n_train < CV_FOLDS:
        problems.append(f"{source / 'train'}: {n_train} complete training case(s); "
                        f"at least {CV_FOLDS} are needed for the {CV_FOLDS}-fold split")
    return cases, problems


# ----------------------------------------------------------------------------- per-case work
def _geometry(affine: np.ndarray):
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return spacing, affine[:3, :3] / spacing, affine[:3, 3]


def read_image_hu(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Image values with the NIfTI scaling (scl_slope/scl_inter) applied, as float64."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float64), img


def mask_to_labels(values: np.ndarray, name: str) -> np.ndarray:
    """Round a (float) mask to uint8 labels; fail if any value is not within tolerance of a label."""
    labels = np.rint(values)
    bad = (np.abs(values - labels) > MASK_ROUNDING_TOLERANCE) | ~np.isin(labels, list(LABELS.values()))
    if bad.any():
        offending = [np.format_float_positional(v, precision=7, trim="-") for v in np.unique(values[bad])]
        raise ValueError(f"{name}: mask values not within {MASK_ROUNDING_TOLERANCE} of {sorted(LABELS.values())}: "
                         f"{', '.join(offending[:8])}{' ...' if len(offending) > 8 else ''} ({int(bad.sum())} voxels)")
    return labels.astype(np.uint8)


def _storable(hu: np.ndarray) -> np.ndarray:
    """int16 when every value is an integer in range (exact), else float32."""
    if np.all(np.isfinite(hu)) and np.array_equal(hu, np.round(hu)) and hu.min(initial=0) >= -32768 and hu.max(initial=0) <= 32767:
        return hu.astype(np.int16)
    return hu.astype(np.float32)


def _save_like(path: Path, data: np.ndarray, ref: nib.Nifti1Image) -> None:
    """Write ``data`` with ``ref``'s affine and sform/qform codes, no scaling."""
    header = ref.header.copy()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, ref.affine, header)
    img.set_sform(ref.affine, int(ref.header["sform_code"]) or 1)
    img.set_qform(ref.affine, int(ref.header["qform_code"]) or 1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _convert_case(job: dict) -> dict:
    """Check and write one case; return ``{"case_id", "error"}`` (errors name the files)."""
    image_path, mask_path, out = job["image"], job["mask"], Path(job["out"])
    try:
        hu, img = read_image_hu(image_path)
        if hu.ndim != 3:
            raise ValueError(f"{image_path}: expected a 3D image, got shape {hu.shape}")
        stored = _storable(hu)
        if not np.allclose(stored, hu, rtol=1e-6, atol=1e-3):
            raise ValueError(f"{image_path}: values cannot be stored as float32 without loss")
        if mask_path is not None:
            mask = nib.load(str(mask_path))
            problems = []
            if mask.shape != img.shape:
                problems.append(f"shape {img.shape} vs {mask.shape}")
            else:
                (si, di, oi), (sm, dm, om) = _geometry(img.affine), _geometry(mask.affine)
                if not np.allclose(si, sm, rtol=SPACING_RTOL, atol=0):
                    problems.append(f"spacing {si.round(4).tolist()} vs {sm.round(4).tolist()}")
                if not np.allclose(oi, om, atol=ORIGIN_ATOL_MM):
                    problems.append(f"origin {oi.round(3).tolist()} vs {om.round(3).tolist()}")
                if not np.allclose(di, dm, atol=DIRECTION_ATOL):
                    problems.append(f"direction {di.round(3).tolist()} vs {dm.round(3).tolist()}")
            if problems:
                raise ValueError(f"{image_path} and {mask_path}: image/mask mismatch: {'; '.join(problems)}")
            labels = mask_to_labels(np.asarray(mask.dataobj, dtype=np.float64), str(mask_path))
            _save_like(out / "labelsTr" / f"{job['case_id']}{FILE_ENDING}", labels, img)  # image geometry
        folder = "imagesTs" if mask_path is None else "imagesTr"
        target = out / folder / f"{job['case_id']}{CHANNEL_SUFFIX}{FILE_ENDING}"
        _save_like(target, stored, img)
        written = np.asarray(nib.load(str(target)).dataobj, dtype=np.float64)
        if not np.allclose(written, hu, rtol=1e-6, atol=1e-3):
            raise ValueError(f"{image_path}: written image {target.name} does not reproduce the input's values")
        return {"case_id": job["case_id"], "error": None}
    except Exception as e:  # noqa: BLE001 - every failure becomes a reported problem naming the file
        message = str(e) if str(image_path) in str(e) or str(mask_path) in str(e) else f"{image_path}: {e!r}"
        return {"case_id": job["case_id"], "error": message}


# ----------------------------------------------------------------------------- splits and json
def make_splits(train_ids: list[str], val_ids: list[str]) -> list[dict[str, list[str]]]:
    """Folds 0-4: nnU-Net's 5-fold CV over the training cases; fold OFFICIAL_SPLIT_FOLD: train -> val."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    folds = generate_crossval_split(sorted(train_ids), seed=CV_SEED, n_splits=CV_FOLDS)
    folds = [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]} for f in folds]
    assert len(folds) == OFFICIAL_SPLIT_FOLD
    return folds + [{"train": sorted(train_ids), "val": sorted(val_ids)}]


def _resolve_root(value, env: str, required: bool) -> Path | None:
    value = value if value is not None else os.environ.get(env)
    if value is None and required:
        raise ValueError(f"no {env}: pass it explicitly or set the {env} environment variable")
    return Path(value) if value is not None else None


def convert_dataset(source: str | Path, dataset_id: int = DEFAULT_DATASET_ID,
                    dataset_name: str = DEFAULT_DATASET_NAME, raw_root: str | Path | None = None,
                    preprocessed_root: str | Path | None = None, overwrite: bool = False,
                    num_processes: int = min(8, os.cpu_count() or 1), progress: bool = True) -> Path:
    """Convert the raw layout in ``source``; return the new ``nnUNet_raw`` dataset folder.

    ``raw_root``/``preprocessed_root`` default to the ``nnUNet_raw``/``nnUNet_preprocessed``
    environment variables (raw is required; without preprocessed only the raw copy of
    ``splits_final.json`` is written).

    Raises:
        DatasetLayoutError: every problem found in the input (layout and per-case content).
        FileExistsError: the target exists and ``overwrite`` is False, or another dataset has the ID.
        ValueError: no raw root.
    """
    source = Path(source).resolve()
    raw_root = _resolve_root(raw_root, "nnUNet_raw", required=True)
    preprocessed_root = _resolve_root(preprocessed_root, "nnUNet_preprocessed", required=False)
    name = dataset_folder_name(dataset_id, dataset_name)
    target = raw_root / name
    clashes = [p for p in raw_root.glob(f"Dataset{dataset_id:03d}_*") if p.name != name] if raw_root.is_dir() else []
    if clashes:
        raise FileExistsError(f"{clashes[0]}: another dataset already uses ID {dataset_id}; pick another ID or remove it")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")

    cases, problems = scan_layout(source)
    with atomic_directory(target) as tmp:
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (tmp / folder).mkdir()
        jobs = [{"case_id": c["case_id"], "image": str(c["image"]), "mask": c["mask"] and str(c["mask"]),
                 "out": str(tmp)} for c in cases]
        bar = dict(total=len(jobs), desc=f"converting {name}", unit="case", disable=not progress)
        if num_processes > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                results = list(tqdm(pool.imap_unordered(_convert_case, jobs), **bar))
        else:
            results = [_convert_case(j) for j in tqdm(jobs, **bar)]
        problems += sorted(r["error"] for r in results if r["error"])
        if problems:
            raise DatasetLayoutError(problems)

        labelled = [c for c in cases if c["split"] in LABELLED_SPLITS]
        from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
        generate_dataset_json(
            str(tmp), channel_names={0: "CT"}, labels=dict(LABELS), num_training_cases=len(labelled),
            file_ending=FILE_ENDING, dataset_name=name,
            description=f"converted from {source} by nnunet_multitask.conversion; imagesTr holds train AND "
                        f"validation cases, fold {OFFICIAL_SPLIT_FOLD} of splits_final.json keeps them apart",
            **{SUBTYPE_NAMES_KEY: dict(SUBTYPE_NAMES),
               CASE_SUBTYPES_KEY: {c["case_id"]: c["subtype"] for c in sorted(labelled, key=lambda c: c["case_id"])}},
        )
        splits = make_splits([c["case_id"] for c in cases if c["split"] == "train"],
                             [c["case_id"] for c in cases if c["split"] == "validation"])
        write_json_atomic(tmp / "splits_final.json", splits)

    if preprocessed_root is not None:
        write_json_atomic(preprocessed_root / name / "splits_final.json", splits)
    else:
        print(f"note: nnUNet_preprocessed is not set; splits_final.json was written only to {target}. "
              f"Copy it to <nnUNet_preprocessed>/{name}/ before training.")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nnunet-multitask convert", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder with train/, validation/ and test/")
    p.add_argument("-d", "--dataset-id", type=int, default=DEFAULT_DATASET_ID)
    p.add_argument("-n", "--dataset-name", default=DEFAULT_DATASET_NAME)
    p.add_argument("--raw-root", type=Path, help="default: $nnUNet_raw")
    p.add_argument("--preprocessed-root", type=Path, help="default: $nnUNet_preprocessed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing target dataset folder")
    p.add_argument("-np", "--num-processes", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        target = convert_dataset(a.source, a.dataset_id, a.dataset_name, a.raw_root, a.preprocessed_root,
                                 a.overwrite, a.num_processes, progress=not a.no_progress)
    except (DatasetLayoutError, FileExistsError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
