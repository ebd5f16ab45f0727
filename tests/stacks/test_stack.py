"""Stacks end to end (cpsnake.stacks.stack, cpsnake.stacks.track, `cpsnake segment` on stacks).

The parity tests run cellpose 4.2.1.1's own ``CellposeModel.eval`` (stitch_threshold, do_3D) with the bundled
Cellpose-SAM network on crops of the demo stack (real nuclei, synthetic in depth), so the
glue is compared too: whole-stack normalization, niter, per-plane min_size, 3-D hole filling.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from nets import CellposeWrap
from paths import ROOT
from reference import cellpose

from cpsnake.errors import CpsnakeError
from cpsnake.stacks import stack as stack_mod
from cpsnake.stacks.planes import offset_planes
from cpsnake.stacks.track import track_frames

DEMO = ROOT / "resources" / "demo" / "stacks"


@pytest.fixture(scope="module")
def bundled_net():
    from cpsnake.models import weights
    from cpsnake.models.registry import load_model

    return load_model(weights.resolve("nuclei_small"), device="cpu")


def _stack(crop=64, planes=8):
    """The middle ``planes`` planes of the demo stack (real nuclei, synthetic in depth: tests/make_demo_stack.py),
    cropped to ``crop`` x ``crop``, and the matching planes of its truth."""
    z0 = (12 - planes) // 2
    sub = (slice(z0, z0 + planes), slice(0, crop), slice(0, crop))
    return tifffile.imread(DEMO / "nuclei_zstack.tif")[sub], tifffile.imread(DEMO / "nuclei_zstack_truth.tif")[sub]


def _cellpose_eval(net, stack, **kw):
    models = cellpose("cellpose.models")

    class Fake(models.CellposeModel):
        def __init__(self):  # cellpose's eval with our network inside: no weights file, no download
            self.net = CellposeWrap(net)
            self.device = torch.device("cpu")
            self.backbone = "sam_vitl"

    masks, flows, _ = Fake().eval(stack, z_axis=0, channel_axis=None, batch_size=8, **kw)
    return masks, flows


def _matched(a, b, iou=0.9):
    """Fraction of objects of a and of b matched one to one at IoU >= iou."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    both = (a > 0) & (b > 0)
    pairs, n = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    sa, sb = np.bincount(a.ravel()), np.bincount(b.ravel())
    good = n / (sa[pairs[0]] + sb[pairs[1]] - n) >= iou
    return good.sum() / max(a.max(), 1), good.sum() / max(b.max(), 1)


def test_stitch_mode_equals_cellpose_eval(bundled_net):
    stack, _ = _stack(crop=96, planes=10)
    ours, _, record, _ = stack_mod.segment_stack(bundled_net, stack[:, None], mode="stitch", stitch_threshold=0.25)
    ref, _ = _cellpose_eval(bundled_net, stack, stitch_threshold=0.25)
    assert record["scope"] == "stack" and ours.shape == ref.shape == stack.shape
    assert ours.max() >= 10  # it finds the nuclei
    assert _matched(ours, ref, 0.99) == (1.0, 1.0)


def test_3d_mode_equals_cellpose_eval(bundled_net):
    stack, _ = _stack(crop=48, planes=6)
    ours, flows, _, _ = stack_mod.segment_stack(bundled_net, stack[:, None], mode="3d", anisotropy=2.0)
    ref, ref_flows = _cellpose_eval(bundled_net, stack, do_3D=True, anisotropy=2.0)
    assert flows.shape == (4, *stack.shape)
    np.testing.assert_allclose(flows[:3], ref_flows[1], rtol=0, atol=1e-4 * np.abs(ref_flows[1]).max())
    assert ours.max() >= 3 and _matched(ours, ref, 0.99) == (1.0, 1.0)


def test_planes_mode_numbers_every_plane_after_the_previous_ones(bundled_net):
    from cpsnake.run.segment import segment_image

    stack, _ = _stack(crop=64, planes=4)
    ours, _, record, _ = stack_mod.segment_stack(bundled_net, stack[:, None], mode="planes")
    assert record["scope"] == "plane" and len(record["planes"]) == 4
    shift = 0
    for z in range(4):
        alone = segment_image(bundled_net, stack[z][None])[0]
        assert np.array_equal(ours[z], np.where(alone > 0, alone + shift, 0))
        shift += int(alone.max())


def test_blank_plane_is_zero_plane_by_plane_and_a_blank_stack_is_one_error():
    stack = np.random.default_rng(0).integers(0, 200, (3, 1, 20, 20)).astype(np.uint8)
    stack[0] = 0
    out, record = stack_mod.normalize_stack(stack, per_plane=True)
    assert not out[0].any() and out[1].any() and "constant" in record["planes"][0]["per_channel"][0]["status"]
    with pytest.raises(CpsnakeError, match="found a constant image"):
        stack_mod.normalize_stack(np.zeros((3, 1, 20, 20), np.uint8), per_plane=True)


def test_offset_planes():
    lab = np.array([[[1, 2]], [[0, 1]], [[0, 0]], [[2, 1]]])
    assert offset_planes(lab).tolist() == [[[1, 2]], [[0, 3]], [[0, 0]], [[5, 4]]]


# --- tracking --------------------------------------------------------------------------------------


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_track_keeps_ids_of_moving_cells_and_numbers_new_ones():
    """A moves right 2 px per frame, B stays, C appears in frame 2, B vanishes after frame 3; each frame's own
    ids are shuffled."""
    T, shape = 5, (40, 60)
    frames = np.zeros((T, *shape), np.int32)
    for t in range(T):
        own = [3, 1, 2] if t % 2 else [1, 2, 3]
        frames[t][_disc(shape, 10, 10 + 2 * t, 5)] = own[0]  # A
        if t <= 3:
            frames[t][_disc(shape, 30, 40, 6)] = own[1]  # B
        if t >= 2:
            frames[t][_disc(shape, 10, 50, 4)] = own[2]  # C
    out = track_frames(frames, 0.25)
    a, b, c = out[:, 10, 10 + 2 * np.arange(T)].diagonal(), out[:4, 30, 40], out[2:, 10, 50]
    assert set(a.tolist()) == {1} and set(b.tolist()) == {2} and set(c.tolist()) == {3}
    assert out.max() == 3


def test_track_gives_a_new_id_below_the_threshold_and_works_on_3d_frames():
    shape = (3, 20, 30)
    frames = np.zeros((2, *shape), np.int32)
    frames[0, :, 2:12, 2:12] = 1
    frames[1, :, 2:12, 9:19] = 1  # IoU 30 / 170 = 0.18 in every plane
    assert track_frames(frames, 0.25)[1].max() == 2
    assert track_frames(frames, 0.15)[1].max() == 1


def test_track_splits_keep_one_id_for_the_larger_overlap():
    frames = np.zeros((2, 20, 40), np.int32)
    frames[0, 5:15, 5:30] = 1
    frames[1, 5:15, 5:20] = 1  # the larger daughter keeps the mother's id
    frames[1, 5:15, 22:30] = 2
    out = track_frames(frames, 0.25)
    assert out[1, 10, 10] == 1 and out[1, 10, 25] == 2


# --- the command line on stacks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def zstack(tmp_path_factory):
    stack, truth = _stack(crop=64, planes=6)
    path = tmp_path_factory.mktemp("stack") / "z.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "ZYX", "spacing": 1.0, "unit": "micron"},
    )
    return path, truth


def test_segment_stitched_stack_writes_a_calibrated_hyperstack_rois_and_3d_table(zstack, tmp_path, capsys):
    from cpsnake.export.roi_import import read_rois, rois_to_labels
    from cpsnake.io.labels import read_labels
    from cpsnake.run import segment

    path, _ = zstack
    assert segment.main([str(path), "--out", str(tmp_path), "--stitch-threshold", "0.25"]) == 0
    labels, meta = read_labels(tmp_path / "masks" / "z.tif")
    with tifffile.TiffFile(tmp_path / "masks" / "z.tif") as tif:
        ij = tif.imagej_metadata
    assert labels.shape == (6, 64, 64) and ij["slices"] == 6 and ij["spacing"] == 1.0 and ij["unit"] == "micron"
    assert meta["pixel_size"] == (0.5, 0.5)
    rois = read_rois(tmp_path / "rois" / "z.zip")
    assert all(r.z_position >= 1 for _, r in rois) and rois[0][1].name.split("-")[1].startswith("z")
    assert np.array_equal(rois_to_labels(rois, labels.shape), labels)
    import pandas as pd

    table = pd.read_csv(tmp_path / "measurements" / "z.csv")
    assert len(table) == labels.max() and list(table.columns[:3]) == ["label", "image", "voxels"]
    counts = np.bincount(labels.ravel())[1:]
    assert np.array_equal(table["voxels"], counts)
    np.testing.assert_allclose(table["volume"], counts * 1.0 * 0.5 * 0.5)


def test_segment_time_series_tracks_and_tables_carry_frames(tmp_path):
    from cpsnake.io.labels import read_labels
    from cpsnake.run import segment

    stack, _ = _stack(crop=64, planes=3)
    movie = np.stack([np.roll(stack[1], 2 * t, axis=1) for t in range(3)])  # one plane drifting right
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TYX", "finterval": 5.0})
    assert segment.main([str(path), "--out", str(tmp_path / "o"), "--track"]) == 0
    labels, _ = read_labels(tmp_path / "o" / "masks" / "movie.tif")
    with tifffile.TiffFile(tmp_path / "o" / "masks" / "movie.tif") as tif:
        assert tif.imagej_metadata["frames"] == 3 and tif.imagej_metadata["finterval"] == 5.0
    # every cell found in frames 0, 1 and 2 at its drifted place keeps its id (untracked frames share none)
    kept = 0
    for cell in set(np.unique(labels[0])) - {0}:
        where = np.nonzero(labels[0] == cell)
        later = [np.bincount(labels[t][where[0], (where[1] + 2 * t) % 64]).argmax() for t in (1, 2)]
        if all(v > 0 for v in later):
            assert later == [cell, cell]
            kept += 1
    assert kept >= 2
    import pandas as pd

    table = pd.read_csv(tmp_path / "o" / "measurements" / "movie.csv")
    assert "frame" in table.columns and "slice" not in table.columns and set(table["frame"]) == {1, 2, 3}


def test_segment_tz_hyperstack_stitches_each_frame_and_tracks_3d_objects(tmp_path):
    from cpsnake.export.roi_import import read_rois
    from cpsnake.io.labels import read_labels
    from cpsnake.run import segment

    stack, _ = _stack(crop=48, planes=4)
    movie = np.stack([stack, np.roll(stack, 1, axis=2)])  # 2 frames, the second moved down 1 px
    path = tmp_path / "tz.tif"
    tifffile.imwrite(path, movie, imagej=True, metadata={"axes": "TZYX", "spacing": 2.0, "finterval": 10.0})
    assert segment.main([str(path), "--out", str(tmp_path / "o"), "--stitch-threshold", "0.25", "--track"]) == 0
    labels, _ = read_labels(tmp_path / "o" / "masks" / "tz.tif")
    with tifffile.TiffFile(tmp_path / "o" / "masks" / "tz.tif") as tif:
        ij = tif.imagej_metadata
    assert labels.shape == (2, 4, 48, 48) and (ij["frames"], ij["slices"], ij["spacing"], ij["finterval"]) == (
        2,
        4,
        2.0,
        10.0,
    )
    first = set(np.unique(labels[0])) - {0}
    assert first and first == set(np.unique(labels[1])) - {0}  # every 3-D object kept its id in frame 2
    names = [r.name for _, r in read_rois(tmp_path / "o" / "rois" / "tz.zip")]
    assert all(len(n.split("-")) == 3 and n.split("-")[1][0] == "t" and n.split("-")[2][0] == "z" for n in names)
    import pandas as pd

    table = pd.read_csv(tmp_path / "o" / "measurements" / "tz.csv")
    assert list(table.columns[:4]) == ["label", "image", "frame", "voxels"] and len(table) == 2 * len(first)


@pytest.mark.parametrize(
    "axes, shape, flags, match",
    [
        ("YX", (40, 40), ["--do-3d"], "found a 2-D image .* given --do-3d"),
        ("TYX", (3, 40, 40), ["--do-3d"], "time series of 2-D frames .* given --do-3d"),
        ("TYX", (3, 40, 40), ["--stitch-threshold", "0.3"], "given --stitch-threshold"),
        ("ZYX", (3, 40, 40), ["--track"], "Z stack without a time axis given --track"),
        ("ZYX", (3, 40, 40), ["--do-3d", "--anisotropy", "0"], "--anisotropy 0: found 0; expected a Z step"),
        ("ZYX", (3, 40, 40), ["--do-3d", "--stitch-threshold", "0.3"], "--do-3d and --stitch-threshold both given"),
        ("ZYX", (3, 40, 40), ["--stitch-threshold", "1.5"], r"--stitch-threshold 1.5: found 1.5; expected an IoU"),
    ],
)
def test_bad_stack_requests_are_one_clear_line(tmp_path, capsys, tiny_model, axes, shape, flags, match):
    from cpsnake.run import segment

    path = tmp_path / "s.tif"
    data = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": axes})
    rc = segment.main([str(path), "--out", str(tmp_path / "o"), "--model", str(tiny_model), *flags])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and __import__("re").search(match, lines[0]), err
    assert not (tmp_path / "o" / "masks" / "s.tif").exists()


def test_single_plane_given_do_3d_is_refused():
    with pytest.raises(CpsnakeError, match="at least 2 planes for --do-3d"):
        stack_mod.segment_stack(None, np.zeros((1, 1, 20, 20), np.uint8), mode="3d")


@pytest.mark.parametrize(
    "flags, norm",
    [(["--stitch-threshold", "0.25"], ["--norm3d"]), (["--do-3d"], ["--norm3d"]), ([], [])],
    ids=["stitch", "3d", "planes"],
)
def test_step_commands_give_segments_labels(tmp_path, flags, norm):
    """normalize -> infer -> reconstruct -> rois -> measure on a stack equals `cpsnake segment` (the workflow's
    path)."""
    from cpsnake.cli import main as cli

    stack, _ = _stack(crop=48, planes=5)
    img = tmp_path / "s.tif"
    tifffile.imwrite(img, stack, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    assert cli(["segment", str(img), "--out", str(tmp_path / "seg"), *flags]) == 0
    infer_flags = [f for f in flags if f == "--do-3d"]
    recon_flags = [f for f in flags if f != "--do-3d"]
    n, f, m = tmp_path / "n.tif", tmp_path / "f.tif", tmp_path / "m.tif"
    assert cli(["normalize", str(img), str(n), *norm]) == 0
    assert cli(["infer", str(n), str(f), "--model", "nuclei_small", *infer_flags]) == 0
    assert cli(["reconstruct", str(f), str(m), *recon_flags]) == 0
    assert cli(["rois", str(m), str(tmp_path / "r.zip")]) == 0
    per_slice = [] if flags else ["--per-slice"]  # plane by plane: 2-D objects, ImageJ's rows per slice
    assert cli(["measure", str(m), str(img), str(tmp_path / "t.csv"), *per_slice]) == 0
    ours, seg = tifffile.imread(m), tifffile.imread(tmp_path / "seg" / "masks" / "s.tif")
    assert ours.shape == (5, 48, 48) and ours.max() > 0 and np.array_equal(ours, seg)
    with tifffile.TiffFile(m) as tif:
        assert tif.imagej_metadata["spacing"] == 2.0
    assert (tmp_path / "t.csv").read_text() == (tmp_path / "seg" / "measurements" / "s.csv").read_text()
    import zipfile

    def entries(p):
        with zipfile.ZipFile(p) as z:
            return [(i.filename, z.read(i)) for i in z.infolist()]

    assert entries(tmp_path / "r.zip") == entries(tmp_path / "seg" / "rois" / "s.zip")
