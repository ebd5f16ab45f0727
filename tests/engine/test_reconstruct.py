"""cpsnake.engine.reconstruct: masks from flows, parity with cellpose 4.2.1.1, thresholds; the CLI
(cpsnake.steps.reconstruct)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import cellpose
from scipy import ndimage as ndi
from synthetic import clean_flows, noisy_flows, voronoi_cells

from cpsnake.engine import dynamics, heat, reconstruct
from cpsnake.io.flows import write_flows
from cpsnake.io.labels import read_labels
from cpsnake.steps import reconstruct as reconstruct_step


def reference(flows, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cellpose("cellpose.dynamics").resize_and_compute_masks(flows[:2], flows[2], **kw).astype(np.int32)


def match(a, b, iou=0.9):
    """(true positives at IoU >= iou, #a, #b); iou >= 0.5 makes matches unique."""
    na, nb = int(a.max()), int(b.max())
    inter = np.bincount(a.ravel().astype(np.int64) * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1))
    inter = inter.reshape(na + 1, nb + 1)[1:, 1:]
    sa, sb = np.bincount(a.ravel(), minlength=na + 1)[1:], np.bincount(b.ravel(), minlength=nb + 1)[1:]
    j = inter / (sa[:, None] + sb[None, :] - inter)
    return int((j >= iou).sum()), na, nb


def test_clean_flows_give_back_separate_masks():
    labels = voronoi_cells((96, 128), seed=5)
    # one background pixel between neighbours: nothing can drift into the next cell
    edge = ndi.maximum_filter(labels, size=3) != ndi.minimum_filter(np.where(labels > 0, labels, 1 << 30), size=3)
    labels[edge] = 0
    labels = dynamics.fill_holes_and_remove_small_masks(labels, min_size=15)
    masks = reconstruct.compute_masks(clean_flows(labels))
    tp, n_ours, n_true = match(masks, labels, iou=0.99)
    assert masks.dtype == np.int32
    assert tp == n_true == n_ours > 10  # every object matched at IoU >= 0.99
    assert np.array_equal(masks, reference(clean_flows(labels)))


def test_clean_flows_touching_cells_same_as_cellpose():
    labels = voronoi_cells((96, 128), seed=5)
    labels = dynamics.fill_holes_and_remove_small_masks(labels, min_size=15)
    masks = reconstruct.compute_masks(clean_flows(labels))
    assert np.array_equal(masks, reference(clean_flows(labels)))
    # against the truth, a few boundary pixels of touching cells drift to the neighbour (in Cellpose too)
    tp, n_ours, n_true = match(masks, labels, iou=0.95)
    assert tp == n_true == n_ours


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_flows_agree_with_cellpose(seed):
    labels = voronoi_cells((128, 160), spacing=22, seed=seed)
    flows = noisy_flows(labels, seed)
    ours = reconstruct.compute_masks(flows)
    theirs = reference(flows)
    tp, na, nb = match(ours, theirs)
    assert na > 10
    assert tp / (na + nb - tp) >= 0.99  # AP at IoU 0.9, ours vs theirs
    assert np.array_equal(ours, theirs)  # in fact the same labels, numbering included


def test_settable_thresholds_agree_with_cellpose():
    labels = voronoi_cells((96, 128), spacing=20, seed=7)
    flows = noisy_flows(labels, 7)
    kw = dict(cellprob_threshold=-1.0, flow_threshold=0.8, niter=80, min_size=30, max_size_fraction=0.3)
    ours = reconstruct.compute_masks(flows, **kw)
    assert np.array_equal(ours, reference(flows, **kw))


def test_all_background_gives_empty_labels():
    flows = np.zeros((3, 40, 50), np.float32)
    flows[2] = -5
    out = reconstruct.compute_masks(flows)
    assert out.shape == (40, 50) and out.dtype == np.int32 and not out.any()
    assert not reconstruct.compute_masks(np.zeros((3, 0, 0), np.float32)).size


def test_no_seed_gives_empty_labels():
    flows = np.zeros((3, 40, 50), np.float32)
    flows[2, 10, 10] = 5  # a few cell pixels cannot make a histogram peak above 10 end points
    flows[2, 20, 20:25] = 5
    assert not reconstruct.compute_masks(flows).any()


def test_flow_threshold_drops_inconsistent_mask():
    labels = np.zeros((60, 60), np.int32)
    labels[10:30, 10:30] = 1
    labels[35:55, 35:55] = 2
    flows = clean_flows(labels)
    flows[0, 35:55, 35:55] = 5.0  # mask 2: uniform downward flow, unlike the flows of any mask
    flows[1, 35:55, 35:55] = 0.0
    kept = reconstruct.compute_masks(flows, flow_threshold=0.4)
    unchecked = reconstruct.compute_masks(flows, flow_threshold=0)
    assert kept.max() < unchecked.max()
    assert np.array_equal(kept, reference(flows, flow_threshold=0.4))


def test_max_size_fraction_drops_big_mask():
    labels = np.zeros((40, 40), np.int32)
    labels[2:38, 2:38] = 1  # 81% of the image
    flows = clean_flows(labels)
    assert reconstruct.compute_masks(flows).max() == 0
    assert reconstruct.compute_masks(flows, max_size_fraction=0.9).max() == 1


def test_min_size_drops_small_masks():
    labels = np.zeros((60, 60), np.int32)
    labels[5:25, 5:25] = 1
    labels[40:45, 40:45] = 2  # 25 px
    flows = clean_flows(labels)
    assert reconstruct.compute_masks(flows, min_size=15).max() == 2
    assert reconstruct.compute_masks(flows, min_size=30).max() == 1


def test_niter_for_diameter():
    assert reconstruct.niter_for_diameter(None) == 200
    assert reconstruct.niter_for_diameter(15.0) == 100  # int(200 / (30 / 15))
    assert reconstruct.niter_for_diameter(60.0) == 400
    assert reconstruct.niter_for_diameter(15.0, 50) == 50


def test_cli_round_trip_keeps_calibration(tmp_path):
    labels = voronoi_cells((64, 80), seed=2)
    labels = dynamics.fill_holes_and_remove_small_masks(labels, min_size=15)
    src, dst = tmp_path / "f.tif", tmp_path / "m.tif"
    write_flows(src, clean_flows(labels), pixel_size=(0.5, 0.5), unit="micron")
    assert reconstruct_step.main([str(src), str(dst), "--niter", "150", "--min-size", "10"]) == 0
    out, meta = read_labels(dst)
    assert meta["pixel_size"] == (0.5, 0.5) and meta["unit"] == "micron"
    assert np.array_equal(out, reconstruct.compute_masks(clean_flows(labels), niter=150, min_size=10))


def test_cli_rejects_stack_with_one_line_and_no_output(tmp_path, capsys):
    import tifffile

    src, dst = tmp_path / "f.tif", tmp_path / "m.tif"
    tifffile.imwrite(src, np.zeros((4, 3, 16, 16), np.float32), photometric="minisblack")
    assert reconstruct_step.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected flows (3, Y, X)" in err
    assert not dst.exists()


def test_cli_rejects_bad_options(tmp_path, capsys):
    src, dst = tmp_path / "f.tif", tmp_path / "m.tif"
    write_flows(src, np.zeros((3, 8, 8), np.float32))
    assert reconstruct_step.main([str(src), str(dst), "--niter", "0"]) == 1
    assert "--niter" in capsys.readouterr().err
    assert reconstruct_step.main([str(src), str(dst), "--diameter", "-3"]) == 1
    assert not dst.exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_many_bands_and_blocks_agree_with_cellpose(monkeypatch, seed):
    """An image large enough that the heat diffusion runs in several atlas bands and flow following in
    several point blocks, on several threads: the paths that the small cases above never reach.

    Bugs this catches that every other test here misses (both checked): heat sources placed with the
    offset of the first band in every band (other flow errors, other masks kept), and the last block of
    points never followed (its end points are garbage).
    """
    labels = voronoi_cells((640, 600), spacing=20, seed=seed)
    flows = noisy_flows(labels, seed)
    bands, blocks = [], []
    from cpsnake.engine import heat

    diffuse, follow = heat._diffuse_band, dynamics.follow_flows

    def count_band(T, *args):
        bands.append(T.shape)
        return diffuse(T, *args)

    def count_blocks(dP, inds, niter=200, *, block=1 << 16, device=None, interp=True):
        blocks.append(-(-len(inds[0]) // block))
        return follow(dP, inds, niter, block=block, device=device, interp=interp)

    monkeypatch.setattr(heat, "_diffuse_band", count_band)
    monkeypatch.setattr(dynamics, "follow_flows", count_blocks)
    monkeypatch.setattr(heat, "workers", lambda: 4)
    monkeypatch.setattr(dynamics, "workers", lambda: 4)
    ours = reconstruct.compute_masks(flows)
    assert len(bands) >= 3 and blocks[0] >= 3, (len(bands), blocks)
    theirs = reference(flows)
    assert ours.max() > 500
    assert np.array_equal(ours, theirs)


# --- the torch path (what a GPU job runs), forced on the CPU device ------------------------------------


def test_torch_path_diffuses_to_the_same_bits():
    import torch

    for labels in (voronoi_cells((200, 230), spacing=20, seed=3), voronoi_cells((64, 80), seed=1)):
        assert np.array_equal(heat.masks_to_flows(labels, device=torch.device("cpu")), heat.masks_to_flows(labels))


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_path_gives_the_cpu_labels(monkeypatch, seed):
    """Flow following, seeding and the flow-error check through torch (device=cpu) give the same labels as
    the numpy path, on an image that uses several atlas bands and point blocks there."""
    import torch

    labels = voronoi_cells((640, 600), spacing=20, seed=seed)
    flows = noisy_flows(labels, seed)
    cpu = reconstruct.compute_masks(flows)
    calls = []
    seed_torch = dynamics._seed_labels_torch
    monkeypatch.setattr(dynamics, "_seed_labels_torch", lambda *a: calls.append(1) or seed_torch(*a))
    dev = reconstruct.compute_masks(flows, device=torch.device("cpu"))
    assert calls, "the torch seeding did not run"
    assert cpu.max() > 500 and np.array_equal(dev, cpu)
    kw = dict(cellprob_threshold=-1.0, flow_threshold=0.8, niter=80, min_size=30, max_size_fraction=0.3)
    assert np.array_equal(
        reconstruct.compute_masks(flows[:, :200, :260], device=torch.device("cpu"), **kw),
        reconstruct.compute_masks(flows[:, :200, :260], **kw),
    )
