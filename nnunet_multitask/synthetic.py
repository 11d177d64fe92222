"""Synthetic CT-like pancreas data in the users' raw layout (the built-in demo and test set).

Layout written (exactly what users download)::

    train/subtype<k>/quiz_<k>_<id>.nii.gz  +  quiz_<k>_<id>_0000.nii.gz
    validation/subtype<k>/...              (same)
    test/quiz_<id>_0000.nii.gz             (images only)

Each case is an abdominal ROI in Hounsfield units: fat with soft-tissue "bowel" blobs (some with
air), enhancing vessels (a splenic vein hugging the pancreas, an SMV and an aorta running along z),
a pancreas drawn as a lobulated tube of varying radius along a smooth 3D Bezier curve, and one
lesion inside or bulging out of it. The subtype sets the lesion's appearance: 0 cyst-like
(hypodense, homogeneous, sharp, round), 1 solid (hypoenhancing, textured, fuzzy, irregular),
2 mixed (textured core with an enhancing rim of random strength; the weakest rims look like 1). The
parenchyma carries a secondary sign (:data:`PARENCHYMA_HU`): normal around cysts, hypoattenuating
around solid lesions, in between for mixed ones, with overlapping ranges.
With ``anatomy_masks`` the images are painted on real masks instead of random shapes.
Everything is drawn from ``numpy.random.default_rng([seed, case index])``: same seed, same bytes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from dataclasses import asdict, dataclass, replace
from math import comb
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from nnunet_multitask.io import atomic_directory, atomic_path, write_json_atomic
from nnunet_multitask.labels import (
    CHANNEL_SUFFIX, FILE_ENDING, LESION_LABEL, PANCREAS_LABEL, SUBTYPES, case_id_from_filename,
    is_debris, subtype_from_case_id,
)

SPLITS = ("train", "validation", "test")
#: Offsets that turn exact mask labels into the "1.0000153 / 2.0000305" of the original release.
QUIRK_MASK_EPS = 1.53e-5
#: NIfTI scaling used for the int16 quirk images: HU = stored * slope + inter.
QUIRK_SLOPE, QUIRK_INTER = 0.5, -1024.0
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Shapes are (x, y, z) voxels in nibabel order, spacing in mm."""
    seed: int = 0
    train_per_subtype: int = 10
    val_per_subtype: int = 4
    n_test: int = 6
    shape_min: tuple[int, int, int] = (64, 64, 24)
    shape_max: tuple[int, int, int] = (80, 80, 32)
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)
    spacing_jitter: float = 0.05          # relative, in-plane only
    small_lesion_fraction: float = 0.2    # share of lesions under ~0.5 ml
    noise_hu: float = 12.0
    quirks: bool = False
    anatomy_masks: str | None = None      # folder of real quiz_<k>_<id>.nii.gz masks
    num_processes: int = 1


# ----------------------------------------------------------------------------- shapes and fields
def _smooth_field(rng, shape, spacing, scale_mm: float) -> np.ndarray:
    """Zero-mean, unit-std random field with structures of about ``scale_mm`` (coarse grid, upsampled)."""
    coarse = [max(4, int(np.ceil(n * s / scale_mm * 2)) + 1) for n, s in zip(shape, spacing)]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="wrap")
    field = ndimage.zoom(field, [n / c for n, c in zip(shape, coarse)], order=1, mode="nearest")
    field = field[tuple(slice(0, n) for n in shape)]
    field = np.pad(field, [(0, n - m) for n, m in zip(shape, field.shape)], mode="edge")
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _grid(shape, spacing):
    """Voxel-centre coordinates in mm, as broadcastable x, y, z arrays."""
    return [(np.arange(n, dtype=np.float32) * s).reshape([-1 if a == i else 1 for a in range(3)])
            for i, (n, s) in enumerate(zip(shape, spacing))]


def _tube_sdf(grid, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to a tube: union of spheres along a densely sampled curve."""
    gx, gy, gz = grid
    sdf = None
    for (px, py, pz), r in zip(points, radii):
        d = np.sqrt((gx - px) ** 2 + (gy - py) ** 2 + (gz - pz) ** 2) - r
        sdf = d if sdf is None else np.minimum(sdf, d)
    return sdf


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    n = len(ctrl) - 1
    basis = np.stack([comb(n, k) * t ** k * (1 - t) ** (n - k) for k in range(n + 1)], axis=1)
    return basis @ ctrl


def _random_anatomy(rng, shape, spacing, small_fraction: float):
    """Labels (uint8) of a curved pancreas tube with one lesion, and the splenic-vein tube's sdf."""
    ext = np.array(shape) * np.array(spacing)
    grid = _grid(shape, spacing)
    L = min(ext[0], ext[1])
    # head (x low, thick) -> body -> tail (x high, thin, higher z): an oblique curved organ
    ctrl = np.array([
        [0.15, rng.uniform(0.45, 0.65), rng.uniform(0.28, 0.38)],
        [rng.uniform(0.35, 0.45), rng.uniform(0.15, 0.85), rng.uniform(0.35, 0.55)],
        [rng.uniform(0.55, 0.65), rng.uniform(0.15, 0.85), rng.uniform(0.45, 0.65)],
        [0.87, rng.uniform(0.3, 0.6), rng.uniform(0.62, 0.72)],
    ]) * ext
    t = np.linspace(0, 1, 56)
    centre = _bezier(ctrl, t)
    r_head, r_tail = rng.uniform(0.15, 0.2) * L, rng.uniform(0.07, 0.1) * L
    radii = (r_head + (r_tail - r_head) * t ** 0.7) * (1 + 0.12 * np.sin(2 * np.pi * (rng.uniform(1, 2.5) * t + rng.uniform())))
    sdf = _tube_sdf(grid, centre, radii) + rng.uniform(0.8, 1.6) * _smooth_field(rng, shape, spacing, 4.0)  # lobulation
    pancreas = sdf < 0

    # lesion: a rotated, perturbed ellipsoid centred within the pancreas radius of a curve point
    i = rng.integers(6, len(t) - 6)
    small = rng.uniform() < small_fraction
    r_les = radii.mean() * (rng.uniform(0.35, 0.75) if small else rng.uniform(1.1, 1.6))
    direction = rng.standard_normal(3)
    c = centre[i] + direction / np.linalg.norm(direction) * rng.uniform(0, 0.6) * radii[i]
    axes = rng.uniform(0.75, 1.3, 3)
    axes = r_les * axes / np.prod(axes) ** (1 / 3)
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    d = [g - cc for g, cc in zip(grid, c)]
    q = sum(((d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k]) / axes[k]) ** 2 for k in range(3))
    lesion_sdf = (np.sqrt(q) - 1) * r_les
    labels = pancreas.astype(np.uint8) * PANCREAS_LABEL
    roughness = rng.uniform(0.05, 0.25) * r_les
    lesion = lesion_sdf + roughness * _smooth_field(rng, shape, spacing, max(1.5, r_les / 2)) < 0
    if not lesion.any():  # a tiny lesion that fell between voxel centres: keep its centre voxel
        lesion[tuple(np.clip(np.round(c / np.array(spacing)).astype(int), 0, np.array(shape) - 1))] = True
    labels[lesion] = LESION_LABEL
    # splenic vein: runs along the dorsal side (+y) of the pancreas
    rv = rng.uniform(2.0, 3.5)
    vein = centre + np.stack([np.zeros_like(t), radii + rv + 1.0, np.zeros_like(t)], 1)
    vein_sdf = _tube_sdf(grid, vein[::2], np.full(len(vein[::2]), rv))
    return labels, vein_sdf, centre[0]


# ----------------------------------------------------------------------------- painting
def _background(rng, shape, spacing, head=None) -> np.ndarray:
    """Fat with soft-tissue blobs (bowel, some air/fluid filled) and vertical enhancing vessels."""
    ext = np.array(shape) * np.array(spacing)
    img = -100 + 15 * _smooth_field(rng, shape, spacing, 6.0)
    organ_field = _smooth_field(rng, shape, spacing, 12.0)
    organ = organ_field > rng.uniform(0.3, 0.8)
    img = np.where(organ, rng.uniform(25, 50) + 6 * _smooth_field(rng, shape, spacing, 3.0)
                    + 5 * _smooth_field(rng, shape, spacing, 10.0), img)
    lumen = organ & (organ_field > 1.3) & (_smooth_field(rng, shape, spacing, 5.0) > 0.3)
    img = np.where(lumen, -850.0 if rng.uniform() < 0.5 else 10.0, img)
    gx, gy, _ = _grid(shape, spacing)
    head = np.array([0.15, 0.55, 0.3]) * ext if head is None else head
    for x, y, r, hu in (  # SMV beside the head, aorta posterior
        (head[0] + rng.uniform(0.08, 0.15) * ext[0], head[1] - rng.uniform(0.1, 0.2) * ext[1], rng.uniform(3, 5), rng.uniform(150, 190)),
        (rng.uniform(0.35, 0.6) * ext[0], rng.uniform(0.85, 0.95) * ext[1], rng.uniform(7, 10), rng.uniform(170, 210)),
    ):
        img = np.where((gx - x) ** 2 + (gy - y) ** 2 < r * r, hu, img)
    return img.astype(np.float32)


#: Pancreatic parenchyma attenuation range (HU) per subtype.
PARENCHYMA_HU = {0: (95.0, 115.0), 1: (68.0, 90.0), 2: (84.0, 106.0)}


def _paint(rng, img, labels, spacing, subtype: int, noise_hu: float) -> np.ndarray:
    """Paint pancreas and lesion (subtype-specific) onto ``img``, add partial volume and noise."""
    shape = labels.shape
    # secondary sign seen by the whole organ, not only at the lesion: solid tumours come with
    # hypoattenuating (atrophic, obstructed) parenchyma, cysts with normal parenchyma; subtype 2
    # overlaps both, so this cue alone cannot separate the classes
    pancreas_hu = rng.uniform(*PARENCHYMA_HU[subtype])
    fine = _smooth_field(rng, shape, spacing, 1.5)
    img = np.where(labels > 0, pancreas_hu + 8 * fine, img)
    lesion = labels == LESION_LABEL
    if lesion.any():
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in ndimage.find_objects(lesion.astype(np.uint8))[0])
        inside = ndimage.distance_transform_edt(lesion[box], sampling=spacing)  # mm to the margin
        tex = _smooth_field(rng, inside.shape, spacing, 2.0)
        if subtype == 0:    # cyst: water-like, homogeneous, sharp
            value, margin_mm = rng.uniform(0, 22) + 3 * tex, 0.0
        elif subtype == 1:  # solid, hypoenhancing, heterogeneous, ill-defined
            value, margin_mm = rng.uniform(28, 52) + rng.uniform(8, 14) * tex, rng.uniform(1.0, 2.5)
        else:               # mixed: textured core (partly cystic), enhancing rim of random strength
            core = rng.uniform(15, 45) + 12 * tex - 15 * (_smooth_field(rng, inside.shape, spacing, 3.0) > 1.0)
            rim_hu = core + rng.uniform(0.5, 1.0) * (rng.uniform(110, 150) - core)
            value = np.where(inside <= rng.uniform(1.5, 3.0), rim_hu, core)
            margin_mm = 0.0
        weight = np.clip(inside / margin_mm, 0, 1) if margin_mm else 1.0
        sub = img[box]
        img[box] = np.where(lesion[box], weight * value + (1 - weight) * sub, sub)
    img = ndimage.gaussian_filter(img, [0.6 / s * np.min(spacing) for s in spacing])  # partial volume
    img = img + rng.normal(0, noise_hu, shape)
    return np.clip(img, HU_MIN, HU_MAX).astype(np.float32)


# ----------------------------------------------------------------------------- writing
def _save(path: Path, data: np.ndarray, affine: np.ndarray, slope_inter=None) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def _write_image(path: Path, hu: np.ndarray, affine, kind: str) -> None:
    """``kind``: int16 (plain HU), int16_scaled (slope/inter), int32 or float64."""
    if kind == "int16_scaled":
        stored = np.round((hu - QUIRK_INTER) / QUIRK_SLOPE).astype(np.int16)
        _save(path, stored, affine, (QUIRK_SLOPE, QUIRK_INTER))
    elif kind == "float64":
        _save(path, hu.astype(np.float64), affine)
    else:
        _save(path, np.round(hu).astype(kind), affine)


def _write_mask(path: Path, labels: np.ndarray, affine, quirk: bool, index: int) -> None:
    if not quirk:
        _save(path, labels.astype(np.uint8), affine)
    else:  # float masks a hair off the integers, as in the original release
        dtype = np.float32 if index % 2 == 0 else np.float64
        _save(path, (labels + labels * QUIRK_MASK_EPS).astype(dtype), affine)


def _generate_case(job: dict) -> dict:
    cfg: SyntheticConfig = job["config"]
    rng = np.random.default_rng([cfg.seed, job["index"]])
    subtype = job["subtype"]
    if job.get("mask_file"):
        mask_img = nib.load(job["mask_file"])
        raw = np.asarray(mask_img.dataobj, dtype=np.float64)
        labels = np.rint(raw).astype(np.uint8)
        if np.abs(raw - labels).max() > 1e-3 or labels.max() > LESION_LABEL:
            raise ValueError(f"{job['mask_file']}: mask values are not 0/1/2")
        affine, spacing = mask_img.affine, tuple(float(z) for z in mask_img.header.get_zooms()[:3])
        img, shape = _background(rng, labels.shape, spacing), labels.shape
    else:
        lo, hi = np.array(cfg.shape_min), np.array(cfg.shape_max)
        shape = tuple(int(v) for v in rng.integers(lo, hi + 1))
        jitter = 1 + cfg.spacing_jitter * rng.uniform(-1, 1)
        spacing = (round(cfg.spacing[0] * jitter, 3), round(cfg.spacing[1] * jitter, 3), float(cfg.spacing[2]))
        labels, vein_sdf, head = _random_anatomy(rng, shape, spacing, cfg.small_lesion_fraction)
        img = _background(rng, shape, spacing, head)
        img = np.where(vein_sdf < 0, rng.uniform(140, 190), img).astype(np.float32)
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = rng.uniform(-200, 200, 3).round(2)
    hu = _paint(rng, img, labels, spacing, subtype, cfg.noise_hu)

    out, i = Path(job["out_dir"]), job["index"]
    kind = ("int16_scaled", "float64", "int32")[i % 3] if cfg.quirks else "int16"
    _write_image(out / job["image"], hu, affine, kind)
    if job.get("mask"):
        _write_mask(out / job["mask"], labels, affine, cfg.quirks, i)
    voxel_ml = float(np.prod(spacing)) / 1000
    return {
        "case_id": job["case_id"], "split": job["split"], "subtype": subtype, "image": job["image"],
        "mask": job.get("mask"), "shape": list(shape), "spacing": list(spacing), "image_dtype": kind,
        "pancreas_ml": round(float((labels > 0).sum()) * voxel_ml, 3),
        "lesion_ml": round(float((labels == LESION_LABEL).sum()) * voxel_ml, 3),
        "source_mask": job.get("mask_file"),
    }


def _plan_jobs(cfg: SyntheticConfig, out_dir: Path) -> list[dict]:
    """One job per case: split, subtype, unique 3-digit id (shuffled, so ids say nothing about subtypes)."""
    rng = np.random.default_rng([cfg.seed, 10**6])
    slots = [(split, k) for split, n in (("train", cfg.train_per_subtype), ("validation", cfg.val_per_subtype))
             for k in SUBTYPES for _ in range(n)]
    slots += [("test", SUBTYPES[j % len(SUBTYPES)]) for j in range(cfg.n_test)]
    masks: dict[int, list[Path]] = {k: [] for k in SUBTYPES}
    if cfg.anatomy_masks:
        for f in sorted(Path(cfg.anatomy_masks).glob(f"*{FILE_ENDING}")):
            k = subtype_from_case_id(case_id_from_filename(f.name))
            if not is_debris(f) and k in masks and not f.name[: -len(FILE_ENDING)].endswith(CHANNEL_SUFFIX):
                masks[k].append(f)
        for k in SUBTYPES:
            masks[k] = [masks[k][j] for j in rng.permutation(len(masks[k]))]
            need = sum(1 for _, s in slots if s == k)
            if len(masks[k]) < need:
                raise ValueError(f"{cfg.anatomy_masks}: {need} subtype-{k} masks needed, {len(masks[k])} found")
    if len(slots) > 999:
        raise ValueError("at most 999 cases (ids are 3 digits)")
    ids = rng.permutation(np.arange(1, 1000))[: len(slots)]
    jobs = []
    for index, ((split, k), cid) in enumerate(zip(slots, ids)):
        job = {"config": cfg, "index": index, "split": split, "subtype": k, "out_dir": str(out_dir)}
        if masks[k]:
            job["mask_file"] = str(masks[k].pop(0))
        if split == "test":
            job.update(case_id=f"quiz_{cid:03d}", image=f"test/quiz_{cid:03d}{CHANNEL_SUFFIX}{FILE_ENDING}")
        else:
            case = f"quiz_{k}_{cid:03d}"
            folder = f"{split}/subtype{k}"
            job.update(case_id=case, image=f"{folder}/{case}{CHANNEL_SUFFIX}{FILE_ENDING}", mask=f"{folder}/{case}{FILE_ENDING}")
        jobs.append(job)
    return jobs


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(66)


def _write_debris(out_dir: Path, cases: list[dict]) -> None:
    """``__MACOSX/``, ``._*`` resource forks and ``.DS_Store`` files, as in a zip made on a Mac."""
    for path in [out_dir / ".DS_Store"] + [out_dir / f"{s}/subtype{k}/.DS_Store" for s in SPLITS[:2] for k in SUBTYPES]:
        if path.parent.is_dir():
            path.write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    for case in cases[:: max(1, len(cases) // 4)]:
        rel = Path(case["image"])
        for fork in (out_dir / "__MACOSX" / rel.parent / f"._{rel.name}", out_dir / rel.parent / f"._{rel.name}"):
            fork.parent.mkdir(parents=True, exist_ok=True)
            fork.write_bytes(APPLEDOUBLE)


def generate_dataset(out_dir: str | Path, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False) -> dict:
    """Write the synthetic raw dataset to ``out_dir``; return a summary (config and one entry per case).

    The set is built in a temporary sibling folder and renamed into place at the end.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    with atomic_directory(out_dir) as tmp:
        jobs = _plan_jobs(config, tmp)
        if config.num_processes > 1:
            with multiprocessing.get_context("spawn").Pool(config.num_processes) as pool:
                cases = pool.map(_generate_case, jobs)
        else:
            cases = [_generate_case(job) for job in jobs]
        for split in SPLITS:
            (tmp / split).mkdir(exist_ok=True)
        if config.quirks:
            _write_debris(tmp, cases)
    counts = {split: {str(k): sum(c["split"] == split and c["subtype"] == k for c in cases) for k in SUBTYPES}
              for split in SPLITS}
    return {"out_dir": str(out_dir), "config": asdict(config), "counts": counts, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(prog="nnunet-multitask synthesize", description=__doc__.split("\n\n")[0])
    p.add_argument("output", type=Path, help="folder to create (train/, validation/, test/)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-per-subtype", type=int, default=d.train_per_subtype)
    p.add_argument("--val-per-subtype", type=int, default=d.val_per_subtype)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--shape-min", type=int, nargs=3, default=d.shape_min, metavar=("X", "Y", "Z"))
    p.add_argument("--shape-max", type=int, nargs=3, default=d.shape_max, metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=d.spacing, metavar=("X", "Y", "Z"), help="mm")
    p.add_argument("--spacing-jitter", type=float, default=d.spacing_jitter)
    p.add_argument("--small-lesion-fraction", type=float, default=d.small_lesion_fraction)
    p.add_argument("--noise-hu", type=float, default=d.noise_hu)
    p.add_argument("--anatomy-masks", type=str, default=None, metavar="DIR",
                   help="paint on real masks quiz_<k>_<id>.nii.gz from DIR (their shapes, spacings, affines); "
                        "the count options choose how many are used")
    p.add_argument("--quirks", action="store_true", help="float masks off by 1e-5, scaled int16/int32/float64 images, macOS debris")
    p.add_argument("--num-processes", type=int, default=d.num_processes)
    p.add_argument("--summary", type=Path, help="also write the summary JSON here (outside the dataset)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    cfg = replace(d, seed=a.seed, train_per_subtype=a.train_per_subtype, val_per_subtype=a.val_per_subtype,
                  n_test=a.n_test, shape_min=tuple(a.shape_min), shape_max=tuple(a.shape_max),
                  spacing=tuple(a.spacing), spacing_jitter=a.spacing_jitter,
                  small_lesion_fraction=a.small_lesion_fraction, noise_hu=a.noise_hu, quirks=a.quirks,
                  anatomy_masks=a.anatomy_masks, num_processes=a.num_processes)
    try:
        summary = generate_dataset(a.output, cfg, overwrite=a.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f"synthesize: error: {e}", file=sys.stderr)
        return 1
    if a.summary:
        write_json_atomic(a.summary, summary)
    print(f"wrote {len(summary['cases'])} cases to {a.output}: {json.dumps(summary['counts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
