"""The synthetic generator: layout, determinism, balance, anatomy, quirks, real-mask mode."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_data
from nnunet_multitask import synthetic
from nnunet_multitask.labels import LESION_LABEL, PANCREAS_LABEL, SUBTYPES, is_debris

#: Small volumes so that each test takes about a second.
SMALL = synthetic.SyntheticConfig(seed=3, train_per_subtype=2, val_per_subtype=1, n_test=2,
                                  shape_min=(40, 40, 14), shape_max=(44, 44, 16), spacing=(1.0, 1.0, 2.0))


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "raw"
    return out, synthetic.generate_dataset(out, SMALL)


def test_layout_names_and_balance(small_set):
    root, summary = small_set
    files = _files(root)
    ids = []
    for split, n in (("train", 2), ("validation", 1)):
        for k in SUBTYPES:
            folder = [f for f in files if f.parent == Path(split, f"subtype{k}")]
            masks = [f for f in folder if not f.name.endswith("_0000.nii.gz")]
            assert len(folder) == 2 * n and len(masks) == n
            for m in masks:
                assert re.fullmatch(rf"quiz_{k}_\d{{3}}\.nii\.gz", m.name)
                assert (root / split / f"subtype{k}" / m.name.replace(".nii.gz", "_0000.nii.gz")).is_file()
                ids.append(m.name[7:10])
    test = [f for f in files if f.parts[0] == "test"]
    assert len(test) == 2 and all(re.fullmatch(r"quiz_\d{3}_0000\.nii\.gz", f.name) for f in test)
    ids += [f.name[5:8] for f in test]
    assert len(ids) == len(set(ids)) == 11
    assert len(files) == 9 * 2 + 2  # nothing else, no debris without quirks
    assert summary["counts"]["train"] == {"0": 2, "1": 2, "2": 2}


def test_ct_like_volume(small_set):
    root, summary = small_set
    for case in summary["cases"]:
        img = nib.load(str(root / case["image"]))
        assert img.get_data_dtype() == np.int16
        assert np.allclose(img.header.get_zooms(), case["spacing"])
        assert all(lo <= n <= hi for lo, n, hi in zip(SMALL.shape_min, img.shape, SMALL.shape_max))
        hu = img.get_fdata()
        assert (hu < -60).mean() > 0.2 and (hu > 140).any() and hu.std() > 40  # fat, vessels, structure
        if case["mask"]:
            m = _array(root / case["mask"])
            assert m.dtype == np.uint8 and set(np.unique(m)) == {0, PANCREAS_LABEL, LESION_LABEL}
            assert 60 < hu[m == PANCREAS_LABEL].mean() < 130


def test_pancreas_is_elongated_and_lesion_touches_it(small_set):
    root, summary = small_set
    for case in (c for c in summary["cases"] if c["mask"]):
        m = _array(root / case["mask"])
        coords = np.argwhere(m > 0) * np.array(case["spacing"])
        eig = np.sort(np.linalg.eigvalsh(np.cov(coords.T)))
        assert np.sqrt(eig[-1] / eig[0]) > 2.0, case["case_id"]  # a tube along a curve, not a blob
        lesion = m == LESION_LABEL
        assert (ndimage.binary_dilation(lesion) & (m == PANCREAS_LABEL)).any(), case["case_id"]


def test_deterministic_per_seed(tmp_path, small_set):
    root, _ = small_set
    again = tmp_path / "again"
    synthetic.generate_dataset(again, SMALL)
    assert _files(again) == _files(root)
    for f in _files(root):
        assert (again / f).read_bytes() == (root / f).read_bytes(), f
    other = tmp_path / "other"
    synthetic.generate_dataset(other, replace(SMALL, seed=4))
    a = [_array(root / f) for f in _files(root) if f.parts[0] == "train"]
    b = [_array(other / f) for f in _files(other) if f.parts[0] == "train"]
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def test_subtype_changes_lesion_appearance(tmp_path):
    cfg = replace(SMALL, train_per_subtype=4, val_per_subtype=0, n_test=0, small_lesion_fraction=0.0, noise_hu=0.0)
    summary = synthetic.generate_dataset(tmp_path / "raw", cfg)
    means = {k: [] for k in SUBTYPES}
    for case in summary["cases"]:
        m = _array(tmp_path / "raw" / case["mask"])
        hu = nib.load(str(tmp_path / "raw" / case["image"])).get_fdata()
        means[case["subtype"]].append(hu[ndimage.binary_erosion(m == LESION_LABEL)].mean())
    assert max(means[0]) < 30 < min(means[1])  # cysts are water-like, solid lesions are not


def test_quirks(tmp_path):
    out = tmp_path / "raw"
    summary = synthetic.generate_dataset(out, replace(SMALL, quirks=True))
    kinds = {c["image_dtype"] for c in summary["cases"]}
    assert kinds == {"int16_scaled", "float64", "int32"}
    for case in summary["cases"]:
        img = nib.load(str(out / case["image"]))
        if case["image_dtype"] == "int16_scaled":
            assert img.get_data_dtype() == np.int16
            assert img.dataobj.slope == synthetic.QUIRK_SLOPE and img.dataobj.inter == synthetic.QUIRK_INTER
            assert -1024 <= img.get_fdata().min() and (np.asarray(img.dataobj.get_unscaled()) >= 0).all()
        if case["mask"]:
            m = np.asarray(nib.load(str(out / case["mask"])).dataobj)
            assert m.dtype in (np.float32, np.float64)
            nonint = m[(m != np.round(m))]
            assert nonint.size and np.abs(nonint - np.round(nonint)).max() < 1e-4  # 1.0000153, 2.0000305
    debris = [f for f in _files(out) if is_debris(f)]
    assert any(f.parts[0] == "__MACOSX" for f in debris)
    assert any(f.name == ".DS_Store" for f in debris)
    assert any(f.name.startswith("._") and f.parts[0] != "__MACOSX" for f in debris)


def test_refuses_existing_folder_unless_overwrite(tmp_path):
    out = tmp_path / "raw"
    cfg = replace(SMALL, train_per_subtype=1, val_per_subtype=0, n_test=1)
    assert synthetic.main([str(out), "--train-per-subtype", "1", "--val-per-subtype", "0", "--n-test", "1",
                           "--shape-min", "32", "32", "12", "--shape-max", "32", "32", "12"]) == 0
    assert synthetic.main([str(out)]) == 1
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate_dataset(out, cfg)
    synthetic.generate_dataset(out, cfg, overwrite=True)
    assert len(_files(out)) == 3 * 2 + 1 and not list(tmp_path.glob(".raw.*"))


def test_anatomy_masks_from_real_data(tmp_path):
    real = shared_data("quiz_masks/train")
    masks = tmp_path / "masks"  # links to the smallest real masks (never copies)
    masks.mkdir()
    for k in SUBTYPES:
        for f in sorted(real.glob(f"quiz_{k}_*.nii.gz"), key=lambda p: p.stat().st_size)[:2]:
            (masks / f.name).symlink_to(f)
    cfg = replace(SMALL, train_per_subtype=1, val_per_subtype=0, n_test=1, anatomy_masks=str(masks))
    summary = synthetic.generate_dataset(tmp_path / "raw", cfg)
    for case in summary["cases"]:
        src = nib.load(case["source_mask"])
        img = nib.load(str(tmp_path / "raw" / case["image"]))
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        assert Path(case["source_mask"]).name.startswith(f"quiz_{case['subtype']}_")
        if case["mask"]:
            assert np.array_equal(_array(tmp_path / "raw" / case["mask"]), np.rint(src.get_fdata()).astype(np.uint8))
