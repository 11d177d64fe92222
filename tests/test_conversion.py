"""Raw layout -> nnUNet_raw dataset: clean and quirky inputs, one test per bad input, nnU-Net's own check."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import shared_data
from nnunet_multitask import conversion, synthetic
from nnunet_multitask.conversion import DatasetLayoutError, convert_dataset
from nnunet_multitask.labels import CASE_SUBTYPES_KEY, LABELS, OFFICIAL_SPLIT_FOLD, SUBTYPE_NAMES, SUBTYPE_NAMES_KEY

SMALL = synthetic.SyntheticConfig(seed=7, train_per_subtype=2, val_per_subtype=1, n_test=2,
                                  shape_min=(36, 36, 12), shape_max=(40, 40, 14), spacing=(1.0, 1.0, 2.0))
NAME = "Dataset777_PancreasQuiz"


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean_src(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "raw"
    synthetic.generate_dataset(out, SMALL)
    return out


@pytest.fixture(scope="module")
def quirky_src(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "quirky"
    synthetic.generate_dataset(out, replace(SMALL, quirks=True))
    return out


@pytest.fixture
def bad_src(clean_src, tmp_path) -> Path:
    """A writable copy of the clean set, to break."""
    return Path(shutil.copytree(clean_src, tmp_path / "bad"))


def _convert(src, root, **kw):
    return convert_dataset(src, raw_root=root / "raw", preprocessed_root=root / "pre", num_processes=1,
                           progress=False, **kw)


def _expect_error(src, tmp_path, *needles):
    with pytest.raises(DatasetLayoutError) as info:
        _convert(src, tmp_path)
    for needle in needles:
        assert str(needle) in str(info.value), str(info.value)
    assert not (tmp_path / "raw" / NAME).exists()
    assert not [p for p in (tmp_path / "raw").iterdir()]  # no half-written or temporary folder left
    return info.value


def _first(src: Path, pattern: str) -> Path:
    return sorted(src.glob(pattern))[0]


def _rewrite_mask(mask: Path, data=None, affine=None):
    img = nib.load(str(mask))
    data = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), str(mask))


# ----------------------------------------------------------------------------- clean and quirky inputs
def test_clean_conversion(clean_src, nnunet_dirs):
    before = _tree_hash(clean_src)
    target = convert_dataset(clean_src, num_processes=2, progress=False)  # roots from the environment
    assert target == nnunet_dirs["nnUNet_raw"] / NAME
    assert _tree_hash(clean_src) == before  # the input is only read

    ds = json.loads((target / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == LABELS and ds["file_ending"] == ".nii.gz"
    assert ds["numTraining"] == 9 and ds[SUBTYPE_NAMES_KEY] == SUBTYPE_NAMES
    labelled = sorted(p for p in clean_src.glob("[tv]*/subtype*/quiz_*.nii.gz") if not p.name.endswith("_0000.nii.gz"))
    assert ds[CASE_SUBTYPES_KEY] == {p.name[:-7]: int(p.parent.name[-1]) for p in labelled}

    cases = sorted(ds[CASE_SUBTYPES_KEY])
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == sorted(p.name for p in (clean_src / "test").iterdir())

    splits = json.loads((target / "splits_final.json").read_text())
    assert splits == json.loads((nnunet_dirs["nnUNet_preprocessed"] / NAME / "splits_final.json").read_text())
    val_ids = {p.name[:-7] for p in labelled if p.parts[-3] == "validation"}
    train_ids = sorted(set(cases) - val_ids)
    assert len(splits) == 6 and len(val_ids) == 3
    for fold in splits[:OFFICIAL_SPLIT_FOLD]:
        assert sorted(fold["train"] + fold["val"]) == train_ids and not set(fold["train"]) & set(fold["val"])
    assert splits[OFFICIAL_SPLIT_FOLD] == {"train": train_ids, "val": sorted(val_ids)}
    assert not any(set(f["train"]) & val_ids for f in splits)

    for case in cases:
        split = "validation" if case in val_ids else "train"
        src_dir = clean_src / split / f"subtype{case[5]}"
        seg = nib.load(str(target / "labelsTr" / f"{case}.nii.gz"))
        img = nib.load(str(target / "imagesTr" / f"{case}_0000.nii.gz"))
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        assert np.array_equal(img.get_fdata(), nib.load(str(src_dir / f"{case}_0000.nii.gz")).get_fdata())
        assert np.allclose(seg.affine, img.affine)


def test_quirky_conversion(quirky_src, tmp_path):
    before = _tree_hash(quirky_src)
    target = _convert(quirky_src, tmp_path)
    assert _tree_hash(quirky_src) == before
    src_images = {p.name: p for p in quirky_src.rglob("quiz_*_0000.nii.gz") if "__MACOSX" not in p.parts}
    out_images = sorted((target / "imagesTr").iterdir()) + sorted((target / "imagesTs").iterdir())
    assert sorted(p.name for p in out_images) == sorted(src_images)  # no debris converted
    dtypes = set()
    for out in out_images:
        src = nib.load(str(src_images[out.name]))
        dtypes.add(src.get_data_dtype().name)
        written = nib.load(str(out))
        assert written.get_data_dtype() in (np.int16, np.float32)
        assert np.allclose(written.get_fdata(), src.get_fdata(), rtol=0, atol=1e-3), out.name  # HU incl. scaling
        assert np.allclose(written.affine, src.affine)
    assert {"int16", "int32", "float64"} <= dtypes
    for seg in (target / "labelsTr").iterdir():
        data = np.asarray(nib.load(str(seg)).dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1, 2}


def test_rerun_refuses_then_overwrite_is_identical(clean_src, tmp_path):
    target = _convert(clean_src, tmp_path)
    first = _tree_hash(target)
    with pytest.raises(FileExistsError, match=NAME):
        _convert(clean_src, tmp_path)
    assert conversion.main([str(clean_src), "--raw-root", str(tmp_path / "raw"), "--no-progress"]) == 1
    assert conversion.main([str(clean_src), "--raw-root", str(tmp_path / "raw"), "--preprocessed-root",
                            str(tmp_path / "pre"), "--overwrite", "-np", "1", "--no-progress"]) == 0
    assert _tree_hash(target) == first
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [NAME]


def test_requires_raw_root(clean_src, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(ValueError, match="nnUNet_raw"):
        convert_dataset(clean_src)


# ----------------------------------------------------------------------------- one test per bad input
def test_float_mask_off_label(bad_src, tmp_path):
    mask = _first(bad_src, "train/subtype1/quiz_1_???.nii.gz")
    data = np.asarray(nib.load(str(mask)).dataobj).astype(np.float32)
    data[0, 0, 0] = 1.4
    _rewrite_mask(mask, data)
    _expect_error(bad_src, tmp_path, mask, "1.4")


def test_shape_mismatch(bad_src, tmp_path):
    mask = _first(bad_src, "train/subtype0/quiz_0_???.nii.gz")
    _rewrite_mask(mask, np.asarray(nib.load(str(mask)).dataobj)[:-1])
    _expect_error(bad_src, tmp_path, mask, mask.name.replace(".nii", "_0000.nii"), "shape")


def test_spacing_mismatch(bad_src, tmp_path):
    mask = _first(bad_src, "validation/subtype2/quiz_2_???.nii.gz")
    affine = nib.load(str(mask)).affine.copy()
    affine[2, 2] *= 1.5
    _rewrite_mask(mask, affine=affine)
    _expect_error(bad_src, tmp_path, mask, "spacing")


def test_origin_mismatch(bad_src, tmp_path):
    mask = _first(bad_src, "train/subtype2/quiz_2_???.nii.gz")
    affine = nib.load(str(mask)).affine.copy()
    affine[:3, 3] += 5.0
    _rewrite_mask(mask, affine=affine)
    _expect_error(bad_src, tmp_path, mask, "origin")


def test_unpaired_image(bad_src, tmp_path):
    mask = _first(bad_src, "train/subtype0/quiz_0_???.nii.gz")
    mask.unlink()
    _expect_error(bad_src, tmp_path, mask.name.replace(".nii", "_0000.nii"), "image without mask")


def test_unpaired_mask(bad_src, tmp_path):
    image = _first(bad_src, "train/subtype1/quiz_1_*_0000.nii.gz")
    image.unlink()
    _expect_error(bad_src, tmp_path, image.name.replace("_0000", ""), "mask without image")


def test_unknown_subtype_folder(bad_src, tmp_path):
    (bad_src / "train" / "subtype0").rename(bad_src / "train" / "subtype3")
    _expect_error(bad_src, tmp_path, bad_src / "train" / "subtype3", "unknown subtype folder")


def test_subtype_name_disagrees_with_folder(bad_src, tmp_path):
    moved = []
    for f in sorted((bad_src / "train" / "subtype0").iterdir())[:2]:  # one image/mask pair
        moved.append(f.rename(bad_src / "train" / "subtype1" / f.name))
    _expect_error(bad_src, tmp_path, moved[0].name, "disagrees with its folder subtype1")


def test_missing_train_folder(bad_src, tmp_path):
    shutil.rmtree(bad_src / "train")
    _expect_error(bad_src, tmp_path, bad_src / "train", "missing train/")


def test_duplicate_case_id(bad_src, tmp_path):
    pair = sorted((bad_src / "train" / "subtype2").iterdir())[:2]
    for f in pair:
        shutil.copy(f, bad_src / "validation" / "subtype2" / f.name)
    _expect_error(bad_src, tmp_path, "duplicate case id", bad_src / "validation" / "subtype2" / pair[1].name)


def test_target_exists_without_overwrite(clean_src, tmp_path):
    (tmp_path / "raw" / NAME).mkdir(parents=True)
    with pytest.raises(FileExistsError, match="overwrite") as info:
        _convert(clean_src, tmp_path)
    assert str(tmp_path / "raw" / NAME) in str(info.value)
    assert not any((tmp_path / "raw" / NAME).iterdir())


def test_several_problems_reported_together(bad_src, tmp_path):
    lone_mask = _first(bad_src, "train/subtype0/quiz_0_???.nii.gz")
    lone_mask.with_name(lone_mask.name.replace(".nii", "_0000.nii")).unlink()
    (bad_src / "validation" / "subtype7").mkdir()
    bad_mask = _first(bad_src, "train/subtype2/quiz_2_???.nii.gz")
    data = np.asarray(nib.load(str(bad_mask)).dataobj).astype(np.float32)
    data[1, 1, 1] = 2.5
    _rewrite_mask(bad_mask, data)
    error = _expect_error(bad_src, tmp_path, lone_mask, "subtype7", bad_mask, "2.5")
    assert len(error.problems) == 3


# ----------------------------------------------------------------------------- nnU-Net and real data
@pytest.mark.slow  # about a minute on 2 CPU cores
def test_nnunet_plan_and_preprocess_verifies(clean_src, nnunet_dirs):
    convert_dataset(clean_src, num_processes=1, progress=False)
    exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    result = subprocess.run([str(exe), "-d", "777", "-pl", "nnUNetPlannerResEncM", "-c", "3d_fullres", "-np", "1",
                             "--verify_dataset_integrity"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify_dataset_integrity Done" in result.stdout and "mismatch" not in result.stdout
    pre = nnunet_dirs["nnUNet_preprocessed"] / NAME
    assert (pre / "nnUNetResEncUNetMPlans.json").is_file() and (pre / "dataset.json").is_file()
    assert json.loads((pre / "splits_final.json").read_text()) == json.loads(
        (nnunet_dirs["nnUNet_raw"] / NAME / "splits_final.json").read_text())


def test_real_masks_via_anatomy_mode(tmp_path):
    real = shared_data("quiz_masks/train")
    masks = tmp_path / "masks"  # links to 6 small real masks, 2 per subtype
    masks.mkdir()
    for k in (0, 1, 2):
        for f in sorted(real.glob(f"quiz_{k}_*.nii.gz"), key=lambda p: p.stat().st_size)[:2]:
            (masks / f.name).symlink_to(f)
    src = tmp_path / "src"
    synthetic.generate_dataset(src, replace(SMALL, train_per_subtype=2, val_per_subtype=0, n_test=0,
                                            anatomy_masks=str(masks), quirks=True))
    target = _convert(src, tmp_path)
    for seg in (target / "labelsTr").iterdir():
        data = np.asarray(nib.load(str(seg)).dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1, 2}
    assert len(json.loads((target / "dataset.json").read_text())[CASE_SUBTYPES_KEY]) == 6
