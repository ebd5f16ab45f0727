"""Real ImageJ (Debian's ij.jar, headless) as the oracle for `cpsnake rois` and `cpsnake measure`.

tests/imagej/RoiOracle.java opens our image and RoiSet.zip with ImageJ's own classes and writes every
ROI's mask and ImageJ's Measure results; the tests require zero differing pixels, Area equal, and every
other column within 1e-4 relative. They skip only where java or ij.jar are missing
(install: apt-get install -y imagej default-jdk-headless); under CI=true that skip is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from paths import DATA as TEST_DATA
from paths import TESTS
from synthetic import hard_shapes, wide_labels

from cpsnake.export.measure import measure_labels
from cpsnake.export.roi_import import roi_mask
from cpsnake.export.rois import labels_to_rois, write_rois
from cpsnake.export.table import INTENSITY_COLUMNS
from cpsnake.io.inputs import read_image
from cpsnake.io.labels import read_labels, write_labels
from cpsnake.io.tiff import write_tiff

pytestmark = pytest.mark.imagej
ORACLE = TESTS / "imagej" / "RoiOracle.java"
IJ_JAR = Path("/usr/share/java/ij.jar")
DATA = TEST_DATA / "nuclei_val"
VAL = sorted(p.stem for p in (DATA / "masks").glob("*.tif"))


@pytest.fixture(scope="session")
def imagej():
    java = shutil.which("java")
    if java is None or not IJ_JAR.is_file():
        pytest.skip(
            "ImageJ not installed (need `java` and /usr/share/java/ij.jar: "
            "apt-get install -y imagej default-jdk-headless)"
        )

    def run(image: Path, rois: Path | None, out: Path) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        cmd = ["timeout", "300", java, "-Djava.awt.headless=true", "-cp", str(IJ_JAR), str(ORACLE), str(image),
               str(rois) if rois else "-", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"ImageJ oracle failed ({proc.returncode}): {proc.stderr[-2000:]}"
        info = dict(line.strip().split("=", 1) for line in (out / "info.txt").read_text().splitlines())
        result = {"info": info}
        if rois:
            masks = []
            for line in (out / "masks.txt").read_text().splitlines():
                name, z, t, x, y, w, h, bits = line.split(" ")
                x, y, w, h = int(x), int(y), int(w), int(h)
                m = np.frombuffer(bits.encode(), np.uint8).reshape(h, w) == ord("1")
                masks.append((name, int(z), int(t), x, y, m))
            result["masks"] = masks
            result["results"] = pd.read_csv(out / "results.tsv", sep="\t")
        return result

    return run


def _paint(shape, x, y, m):
    full = np.zeros(shape, bool)
    h, w = m.shape
    full[y : y + h, x : x + w] = m
    return full


def _check_masks(ij, labels2d_or_3d, stack_axis="z"):
    """Every ROI's ImageJ mask equals its label's pixels, and every label (per plane in stacks) has exactly one ROI.

    Bugs this catches besides wrong outlines: a label (or a whole plane of a stack) without a ROI, a ROI
    given twice, a ROI at the wrong z/t position (its mask then differs from that plane's label).
    """
    lab = labels2d_or_3d
    seen = []
    for name, z, t, x, y, m in ij["masks"]:
        stem = name[:-4]
        lab_id = int(stem.split("-")[0])
        plane = z if stack_axis == "z" else t  # 1-based
        img = lab if lab.ndim == 2 else lab[plane - 1]
        diff = int((_paint(img.shape, x, y, m) != (img == lab_id)).sum())
        assert diff == 0, f"ROI {name}: ImageJ's mask differs from label {lab_id} in {diff} pixels"
        seen.append(lab_id if lab.ndim == 2 else (lab_id, plane))
    if lab.ndim == 2:
        expected = set(np.unique(lab[lab > 0]).tolist())
    else:
        expected = {(int(i), k + 1) for k in range(lab.shape[0]) for i in np.unique(lab[k][lab[k] > 0])}
    assert len(seen) == len(set(seen)), "a label has more than one ROI"
    assert set(seen) == expected, f"labels without a ROI: {sorted(expected - set(seen))[:5]}"


def _check_table(ij, labels, image, pixel_size, z=None):
    """Our table for ``labels`` (Y, X) on ``image`` (C, Y, X) equals ImageJ's rows (those of slice ``z``)."""
    ours = pd.DataFrame(measure_labels(labels, image, pixel_size=pixel_size)).set_index("label")
    res = ij["results"] if z is None else ij["results"][ij["results"]["z"] == z]
    assert len(res) == len(ours) * image.shape[0]
    C = image.shape[0]
    worst = 0.0
    for _, r in res.iterrows():
        lab_id = int(r["name"][:-4].split("-")[0])
        for col in res.columns[4:]:
            key = f"{col}_c{int(r['channel'])}" if (C > 1 and col in INTENSITY_COLUMNS) else col
            ov, iv = float(ours.loc[lab_id, key]), float(r[col])
            if col == "Area":
                assert ov == pytest.approx(iv, rel=1e-12), f"label {lab_id} Area: ours {ov}, ImageJ {iv}"
                assert ours.loc[lab_id, "area_px"] == round(iv / (pixel_size[0] * pixel_size[1] if pixel_size else 1))
            if not np.isfinite(iv):  # ImageJ's NaN / Infinity (e.g. AR for non-square pixels)
                assert ov == iv or (np.isnan(ov) and np.isnan(iv)), f"label {lab_id} {col}: ours {ov}, ImageJ {iv}"
                continue
            rel = abs(ov - iv) / abs(iv) if iv != 0 else abs(ov)
            assert rel <= 1e-4, f"label {lab_id} {col} (channel {r['channel']}): ours {ov}, ImageJ {iv}"
            worst = max(worst, rel)
    return worst


@pytest.mark.parametrize("pixel_size", [None, (0.25, 0.5)], ids=["pixels", "anisotropic"])
def test_hard_shapes_masks_and_measure(imagej, tmp_path, pixel_size):
    lab = hard_shapes()
    img = np.random.default_rng(2).integers(0, 4000, (2,) + lab.shape).astype(np.uint16)
    write_tiff(tmp_path / "img.tif", img, axes="CYX", pixel_size=pixel_size, unit="um" if pixel_size else None)
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    _check_masks(ij, lab)
    cal = (float(ij["info"]["pixelHeight"]), float(ij["info"]["pixelWidth"])) if pixel_size else None
    _check_table(ij, lab, img, cal)


def test_rectangle_10x6_measures_60_px(imagej, tmp_path):
    lab = np.zeros((10, 14), np.int32)
    lab[2:8, 2:12] = 1
    write_tiff(tmp_path / "img.tif", np.ones((1,) + lab.shape, np.uint8), axes="CYX")
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    assert ij["results"]["Area"].tolist() == [60.0]


@pytest.mark.parametrize("name", VAL)
def test_real_val_masks_and_measure_calibrated(imagej, tmp_path, name):
    lab, _ = read_labels(DATA / "masks" / f"{name}.tif")
    img, _ = read_image(DATA / "images" / f"{name}.tif")  # (C, Y, X); RGB becomes 3 channels
    write_tiff(tmp_path / "img.tif", img, axes="CYX", pixel_size=(0.65, 0.65), unit="um")
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    assert ij["info"]["unit"] == "micron"
    _check_masks(ij, lab)
    _check_table(ij, lab, img, (float(ij["info"]["pixelHeight"]), float(ij["info"]["pixelWidth"])))


@pytest.mark.parametrize("axis", ["z", "t"])
def test_stack_rois_carry_positions(imagej, tmp_path, axis):
    lab = np.stack([hard_shapes(), np.roll(hard_shapes(), 5, axis=0), np.roll(hard_shapes(), 7, axis=1)])
    img = np.random.default_rng(4).integers(0, 255, (3, 1) + lab.shape[1:]).astype(np.uint8)
    write_tiff(tmp_path / "img.tif", img, axes="ZCYX" if axis == "z" else "TCYX")
    write_rois(tmp_path / "r.zip", labels_to_rois(lab, stack_axis=axis))
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    assert {(z if axis == "z" else t) for _, z, t, *_ in ij["masks"]} == {1, 2, 3}
    _check_masks(ij, lab, stack_axis=axis)
    if axis == "z":  # Measure on each slice equals our per-slice table
        for z in range(3):
            _check_table(ij, lab[z], img[z], None, z=z + 1)


def test_imported_roi_types_match_imagej_masks(imagej, tmp_path):
    """ROIs as Fiji saves them (rectangle, oval, float polygon, freehand, composite): our mask == ImageJ's."""
    from roifile import ROI_TYPE, ImagejRoi

    shape = (60, 70)
    rng = np.random.default_rng(3)
    rois = [
        ImagejRoi(roitype=ROI_TYPE.RECT, left=3, top=4, right=17, bottom=9, name="rect"),
        ImagejRoi(roitype=ROI_TYPE.OVAL, left=20, top=2, right=33, bottom=11, name="oval"),
        ImagejRoi(roitype=ROI_TYPE.OVAL, left=40, top=3, right=48, bottom=20, name="oval2"),
    ]
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    star = np.stack([30 + (8 + 4 * np.sin(5 * t)) * np.cos(t), 35 + (8 + 4 * np.sin(5 * t)) * np.sin(t)], 1)
    rois.append(ImagejRoi.frompoints(star + rng.uniform(-0.3, 0.3, star.shape), name="freehand"))
    poly = ImagejRoi.frompoints(np.array([[50.2, 30.7], [66.9, 33.1], [61.5, 55.5], [48.3, 50.1]]), name="poly")
    poly.roitype = ROI_TYPE.POLYGON
    rois.append(poly)
    comp = labels_to_rois(hard_shapes()[:, :30])[1]  # the ring: a composite of straight segments
    comp.name = "comp"
    rois.append(comp)
    write_rois(tmp_path / "r.zip", rois)
    write_tiff(tmp_path / "img.tif", np.zeros((1,) + shape, np.uint8), axes="CYX")
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    # one ImageJ mask per ROI, in zip order: zip() below would silently stop at the shorter list
    assert [name for name, *_ in ij["masks"]] == [f"{roi.name}.roi" for roi in rois]
    for roi, (name, _, _, x, y, m) in zip(rois, ij["masks"]):
        ours = roi_mask(roi, shape, entry=name)
        diff = int((ours != _paint(shape, x, y, m)).sum())
        assert diff == 0, f"{name}: our mask differs from ImageJ's in {diff} pixels"


def test_label_hyperstack_keeps_voxel_depth_frame_interval_and_tz_rois(imagej, tmp_path):
    """A (T, Z, Y, X) label hyperstack as `cpsnake segment` writes it for a time series of Z stacks: ImageJ reads
    2 frames x 3 slices, the voxel depth and the frame interval, and every ROI (name LABEL-tT-zZ, hyperstack
    position) masks exactly its label's pixels in its own plane."""
    base = hard_shapes()
    lab = np.stack([np.stack([np.roll(base, 3 * (z + 2 * t), axis=1) for z in range(3)]) for t in range(2)])
    lab[1, 2][lab[1, 2] == lab[1, 2].max()] = 0  # one label missing from one plane
    write_labels(
        tmp_path / "lab.tif", lab, pixel_size=(0.25, 0.25), unit="um", stack_axes="TZ", z_step=1.5, frame_interval=30.0
    )
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    ij = imagej(tmp_path / "lab.tif", tmp_path / "r.zip", tmp_path / "ij")
    info = ij["info"]
    assert (info["slices"], info["frames"], info["unit"]) == ("3", "2", "micron")
    assert float(info["pixelDepth"]) == 1.5 and float(info["frameInterval"]) == 30.0
    seen = set()
    for name, z, t, x, y, m in ij["masks"]:
        lab_id = int(name.split("-")[0])
        assert name[:-4] == f"{lab_id:0{len(str(lab.max()))}d}-t{t}-z{z}"
        plane = lab[t - 1, z - 1]
        assert int((_paint(plane.shape, x, y, m) != (plane == lab_id)).sum()) == 0, name
        seen.add((lab_id, t, z))
    expected = {(int(i), t + 1, z + 1) for t in range(2) for z in range(3) for i in np.unique(lab[t, z]) if i}
    assert seen == expected


@pytest.mark.parametrize("n_labels", [300, 70000])
def test_label_tiff_opens_calibrated_in_imagej(imagej, tmp_path, n_labels):
    lab = np.zeros((4, 20000 // 4 if n_labels > 65535 else 100), np.int64)
    lab.flat[: min(n_labels, lab.size)] = np.arange(1, min(n_labels, lab.size) + 1)
    lab.flat[-1] = n_labels
    dtype = write_labels(tmp_path / "lab.tif", lab, pixel_size=(0.25, 0.5), unit="um")
    info = imagej(tmp_path / "lab.tif", None, tmp_path / "ij")["info"]
    assert info["bitDepth"] == ("16" if n_labels <= 65535 else "32") and str(dtype) in ("uint16", "float32")
    assert info["unit"] == "micron"
    assert float(info["pixelWidth"]) == pytest.approx(0.5) and float(info["pixelHeight"]) == pytest.approx(0.25)


def test_rois_beyond_32767_px_are_exact_in_imagej(imagej, tmp_path):
    """ROIs on an image 70,000 px wide: ImageJ reads every one back to exactly its object's pixels.

    Catches: 16-bit header bounds wrapped (objects beyond x = 32,767 or 65,535 land elsewhere or come back
    empty), float coordinates off by a pixel, composite ROIs beyond 32,767.
    """
    lab = wide_labels()
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "img.tif", (lab % 200).astype(np.uint8), imagej=True)
    write_rois(tmp_path / "r.zip", labels_to_rois(lab))
    ij = imagej(tmp_path / "img.tif", tmp_path / "r.zip", tmp_path / "ij")
    assert ij["info"]["width"] == "70000"
    _check_masks(ij, lab)


def test_labels_beyond_4_gb_are_a_bigtiff_that_imagej_1_cannot_open(tmp_path, monkeypatch, capsys):
    """What Debian's ImageJ 1.53t reads: labels beyond the 4 GB of a classic TIFF are written as a BigTIFF
    OME-TIFF (limit lowered here, so the file is small); ImageJ 1 cannot open BigTIFF at all (so the message
    names Bio-Formats), while cpsnake reads the labels and calibration back exactly. Below the limit the
    same labels are a classic ImageJ TIFF that ImageJ opens (test_label_tiff_opens_calibrated_in_imagej)."""
    import tifffile

    if shutil.which("java") is None or not IJ_JAR.is_file():
        pytest.skip("ImageJ not installed")
    lab = np.zeros((300, 500), np.int64)
    lab[10:50, 20:90], lab[100:200, 300:400] = 3, 70000
    monkeypatch.setattr("cpsnake.io.labels.CLASSIC_TIFF_BYTES", 1000)
    write_labels(tmp_path / "big.tif", lab, pixel_size=(0.25, 0.5), unit="micron")
    err = capsys.readouterr().err
    assert "BigTIFF" in err and "Bio-Formats" in err
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff and tif.is_ome
    got, meta = read_labels(tmp_path / "big.tif")
    assert np.array_equal(got, lab) and meta["pixel_size"] == (0.25, 0.5)
    cmd = [
        "timeout",
        "120",
        "java",
        "-Djava.awt.headless=true",
        "-cp",
        str(IJ_JAR),
        str(ORACLE),
        str(tmp_path / "big.tif"),
        "-",
        str(tmp_path / "ij"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "could not open" in proc.stderr
