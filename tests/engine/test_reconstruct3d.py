"""cpsnake.engine.reconstruct3d and cpsnake.engine.heat3d: 3-D masks from flows, parity with cellpose 4.2.1.1
(do_3D=True).

Flows are made from synthetic ellipsoid stacks (24 x 64 x 64, 30 objects) by cellpose's own
``masks_to_flows_gpu_3d`` (x5, the network's scale), clean or with Gaussian noise on flows and cellprob.
Each test's docstring names a bug it catches.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from reference import cellpose
from scipy import ndimage as ndi

from cpsnake.engine import heat3d, reconstruct3d
from cpsnake.errors import CpsnakeError

SHAPE = (24, 64, 64)


def ellipsoids(shape=SHAPE, n=30, seed=0, rz=(3, 5), ryx=(5, 9)):
    """Random ellipsoids (Z, Y, X) int32 labels 1..n, each painted only where no earlier one lies."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        c = rng.uniform((0, 0, 0), shape)
        r = (rng.uniform(*rz), rng.uniform(*ryx), rng.uniform(*ryx))
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        lab[inside & (lab == 0)] = k
    return lab


@functools.lru_cache(maxsize=None)
def _cellpose_mu(seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cellpose("cellpose.dynamics").masks_to_flows_gpu_3d(ellipsoids(seed=seed))


def clean_flows(seed: int) -> np.ndarray:
    """(4, Z, Y, X) float32: cellpose's 3-D flows x5 and cellprob logits +-4."""
    lab = ellipsoids(seed=seed)
    flows = np.empty((4, *lab.shape), np.float32)
    flows[:3] = _cellpose_mu(seed) * 5
    flows[3] = np.where(lab > 0, 4.0, -4.0)
    return flows


def noisy_flows(seed: int, sd_flow: float = 1.5, sd_prob: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    flows = clean_flows(seed)
    flows[:3] += rng.normal(0, sd_flow, flows[:3].shape).astype(np.float32)
    flows[3] += rng.normal(0, sd_prob, flows.shape[1:]).astype(np.float32)
    return flows


def reference(flows, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cellpose("cellpose.dynamics").resize_and_compute_masks(flows[:3], flows[3], do_3D=True, **kw)
    return out.astype(np.int32)


def ap(a, b, iou=0.9):
    """(AP = TP / (TP + FP + FN) at IoU >= iou, TP, #a, #b) between two label images."""
    na, nb = int(a.max()), int(b.max())
    if na == nb == 0:
        return 1.0, 0, 0, 0
    inter = np.bincount(a.ravel().astype(np.int64) * (nb + 1) + b.ravel(), minlength=(na + 1) * (nb + 1))
    inter = inter.reshape(na + 1, nb + 1)[1:, 1:]
    sa, sb = np.bincount(a.ravel(), minlength=na + 1)[1:], np.bincount(b.ravel(), minlength=nb + 1)[1:]
    tp = int((inter / (sa[:, None] + sb[None, :] - inter) >= iou).sum())
    return tp / (na + nb - tp), tp, na, nb


# --- heat diffusion in 3-D --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_to_flows_3d_equals_cellpose(seed):
    """Our 3-D flows are cellpose's to the bit (after float32 rounding).

    Catches: the 2-D rule carried over (3x3x3 / 27 neighbours, or the rounded mean as the source), the
    wrong number of iterations (6 * max(dz + dy + dx + 3)), the neighbours summed in another order, a
    slab packing that lets two boxes touch, heat of touching objects left out of the gradient.
    """
    lab = ellipsoids(seed=seed)
    ours = heat3d.masks_to_flows_3d(lab)
    assert ours.shape == (3, *SHAPE) and ours.dtype == np.float32
    assert np.array_equal(ours, _cellpose_mu(seed).astype(np.float32))


def test_object_centers_3d_inside_and_skipped_labels():
    """A concave object gets a source voxel inside it; skipped label values give the same flows.

    Catches: the source put at the rounded mean even when that voxel is outside the object, and label
    values used as box indices (sparse labels).
    """
    lab = np.zeros((9, 16, 16), np.int32)
    lab[1:8, 2:14, 2:14] = 1
    lab[1:8, 5:11, 5:14] = 0  # open to +x: the mean lies outside
    lab[2:5, 2:5, 0:2] = 2  # thin object at the x border
    centers = heat3d.object_centers_3d(lab, ndi.find_objects(lab))
    assert (lab[tuple(centers.T)] == [1, 2]).all()
    gappy = np.where(lab > 0, lab * 7 + 3, 0)
    assert np.array_equal(heat3d.masks_to_flows_3d(gappy), heat3d.masks_to_flows_3d(lab))


# --- masks from flows: parity with cellpose ---------------------------------------------------------------


def test_clean_flows_same_labels_as_cellpose():
    """Clean flows: the same label stack as cellpose, numbering included, and (nearly) the truth.

    Catches: the step not divided by 5, x and z swapped in the sampling grid (cellpose's grid is (x, y, z)).
    """
    flows = clean_flows(0)
    ours = reconstruct3d.compute_masks_3d(flows)
    theirs = reference(flows)
    assert ours.dtype == np.int32 and ours.shape == SHAPE
    assert ap(ours, theirs)[0] == 1.0
    assert np.array_equal(ours, theirs)
    assert ap(ours, ellipsoids(seed=0), iou=0.5)[0] >= 0.9  # touching ellipsoids: some boundary voxels drift


@pytest.mark.parametrize(
    "seed, sd_flow, sd_prob", [(0, 1.5, 2.0), (1, 1.5, 2.0), (2, 1.5, 2.0), (0, 3.0, 3.0), (1, 3.0, 3.0)]
)
def test_noisy_flows_agree_with_cellpose(seed, sd_flow, sd_prob):
    """Noisy flows and cellprob: AP at IoU 0.9 between ours and cellpose's >= 0.99, in fact identical labels.

    Catches (the very noisy cases): end points rounded instead of truncated, local maxima over 3x3x3
    instead of 5x5x5, growth through bins with > 1 instead of > 2 end points; (all) a 6- instead of
    26-connected seed growth; (seed 2) fill_voids' face-scan quirk not reproduced.
    """
    flows = noisy_flows(seed, sd_flow, sd_prob)
    ours = reconstruct3d.compute_masks_3d(flows)
    theirs = reference(flows)
    score, tp, na, nb = ap(ours, theirs)
    assert na > 15
    assert score >= 0.99
    assert np.array_equal(ours, theirs)


def test_overlapping_seed_windows_equal_cellpose():
    """Two end-point clusters 7 bins apart joined by a bridge of 3-count bins: both seeds grow into the
    bridge and the seed taken later (the larger count, though first in raster order) wins it, as in
    cellpose's ``get_masks_torch``.

    Catches: seeds taken in raster order instead of ascending count, overlaps won by the earlier seed.
    """
    import torch

    shape = (12, 30, 30)
    pts = [((6, 15, 10), 80), ((6, 15, 17), 50)] + [((6, 15, x), 3) for x in range(11, 17)]
    p = np.concatenate([np.tile(np.array(c, np.float32)[:, None] + 0.25, n) for c, n in pts], axis=1)
    idx = np.arange(p.shape[1]) * 7  # distinct start voxels
    ours = reconstruct3d.get_masks_3d(p, idx, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = cellpose("cellpose.dynamics").get_masks_torch(
            torch.from_numpy(p).int(), np.unravel_index(idx, shape), shape
        )
    assert ours.max() == 2
    assert np.array_equal(ours, theirs.astype(np.int32))


@pytest.mark.parametrize("n_seeds", [2, 20])
def test_equal_counts_meeting_take_torchs_order_as_cellpose(n_seeds):
    """Seeds with the same count whose windows share bridge bins: which wins a bin is decided by the order of
    equal counts, which is torch's (unstable) sort in cellpose. Ours ranks them in torch's order without
    torch (:mod:`cpsnake.engine.tieorder`); the labels equal ``get_masks_torch``'s.

    Catches: a stable order where ties decide (20 seeds: torch's order differs from the stable one).
    """
    import torch

    shape = (12, 30, 30 + 7 * n_seeds)
    pts = []
    for k in range(n_seeds):  # a row of equal clusters, neighbours joined by 3-count bridges
        x = 10 + 7 * k
        pts.append(((6, 15, x), 40))
        if k + 1 < n_seeds:
            pts += [((6, 15, x + d), 3) for d in range(1, 7)]
    p = np.concatenate([np.tile(np.array(c, np.float32)[:, None] + 0.25, n) for c, n in pts], axis=1)
    idx = np.arange(p.shape[1]) * 7
    ours = reconstruct3d.get_masks_3d(p, idx, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = cellpose("cellpose.dynamics").get_masks_torch(
            torch.from_numpy(p).int(), np.unravel_index(idx, shape), shape
        )
    assert ours.max() == n_seeds
    assert np.array_equal(ours, theirs.astype(np.int32))


def test_settable_thresholds_agree_with_cellpose():
    """cellprob_threshold, niter, min_size (voxels) and max_size_fraction as cellpose applies them in 3-D.

    Catches: max_size_fraction taken of one plane's pixels instead of the stack's voxels, min_size
    applied per plane, niter ignored.
    """
    flows = noisy_flows(1)
    kw = dict(cellprob_threshold=-1.0, niter=80, min_size=300, max_size_fraction=0.008)
    ours = reconstruct3d.compute_masks_3d(flows, **kw)
    theirs = reference(flows, **kw)
    default = reconstruct3d.compute_masks_3d(flows)
    assert 0 < ours.max() < default.max()  # the thresholds bite
    assert np.array_equal(ours, theirs)


def test_reconstruction_does_not_import_torch():
    """3-D reconstruction runs without torch, ties between equal seed counts included (importing torch costs
    ~0.5 GB, the half of cellpose's peak memory that the benchmark's target leaves no room for).

    Catches: a torch import back in the 3-D path (follower, histogram, seed order, hole filling).
    """
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from cpsnake.engine import reconstruct3d
pts = []
for k in range(20):
    pts.append(((6, 15, 10 + 7 * k), 40))
    pts += [((6, 15, 10 + 7 * k + d), 3) for d in range(1, 7)]
p = np.concatenate([np.tile(np.array(c, np.float32)[:, None] + 0.25, n) for c, n in pts], axis=1)
tie = reconstruct3d.get_masks_3d(p, np.arange(p.shape[1]) * 7, (12, 30, 170))
rng = np.random.default_rng(0)
flows = rng.normal(0, 3, (4, 8, 40, 40)).astype(np.float32)
full = reconstruct3d.compute_masks_3d(flows, flow_threshold=0.4)
print(tie.max(), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["20", "False"]


@pytest.mark.parametrize("shape, niter", [((7, 30, 41), 200), ((2, 5, 9), 37), ((16, 16, 16), 1)])
def test_compiled_follower_equals_grid_sample_to_the_bit(shape, niter):
    """cpsnake.engine.follow3d against cellpose's own step loop (torch grid_sample, 5-D, align_corners=False, clamp),
    on random steps large enough to push points out of the stack and against its faces."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    dP = rng.normal(0, 8, (3, *shape)).astype(np.float32)
    cell = rng.random(shape) > 0.3
    idx = np.flatnonzero(cell)
    ours = reconstruct3d.follow_flows_3d(dP, cell, idx, niter=niter, block=97)
    # cellpose's steps_interp in 3-D, written out
    ext = [float(L - 1) for L in shape[::-1]]
    im = torch.from_numpy(np.stack([dP[2 - k] * cell / np.float32(5.0) for k in range(3)])[None].astype(np.float32))
    for k in range(3):
        im[:, k] *= 2.0 / ext[k]
    zyx = np.unravel_index(idx, shape)
    pt = torch.from_numpy(np.stack([zyx[2 - k].astype(np.float32) for k in range(3)], 1)[None, None, None].copy())
    for k in range(3):
        pt[..., k] /= ext[k]
    pt = pt * 2 - 1
    for _ in range(niter):
        d = F.grid_sample(im, pt, align_corners=False)
        for k in range(3):
            pt[..., k] = torch.clamp(pt[..., k] + d[:, k], -1.0, 1.0)
    pt = (pt + 1) * 0.5
    for k in range(3):
        pt[..., k] *= ext[k]
    ref = np.stack([pt[0, 0, 0, :, 2 - k].numpy() for k in range(3)])
    assert np.array_equal(ours, ref), np.abs(ours - ref).max()


def test_blocks_and_threads_give_the_same_labels(monkeypatch):
    """Points followed in many small blocks on several threads, seeds grown in small chunks: the same
    labels as one block and one chunk.

    Catches: a block's points written to another block's slot, the last (short) block never followed,
    seed labels restarting at 1 in every chunk.
    """
    from cpsnake.engine import dynamics, heat

    flows = noisy_flows(2)
    whole = reconstruct3d.compute_masks_3d(flows, block=1 << 30)
    monkeypatch.setattr(dynamics, "workers", lambda: 4)  # dynamics.run_blocks' pool
    monkeypatch.setattr(heat, "workers", lambda: 4)
    monkeypatch.setattr(reconstruct3d, "_SEED_CHUNK", 5)
    parts = reconstruct3d.compute_masks_3d(flows, block=997)
    assert whole.max() > 15 and np.array_equal(parts, whole)


# --- hole filling and min_size in 3-D ----------------------------------------------------------------------


def voids():
    """Objects with a 3-D void, a tunnel (holes in planes but no 3-D void), a void opened only along an
    edge (still a void for 6-connectivity), an object inside another's void, a small object."""
    lab = np.zeros((16, 40, 40), np.int32)
    lab[1:8, 1:10, 1:10] = 1
    lab[3:6, 4:7, 4:7] = 0  # closed void
    lab[1:15, 12:20, 1:9] = 2
    lab[:, 15:17, 4:6] = 0  # tunnel through all z: open at both ends
    lab[1:15, 12:20, 4:6] = np.where(lab[1:15, 12:20, 4:6] == 0, 0, 2)
    lab[1:8, 22:30, 1:9] = 3
    lab[2:7, 23:29, 2:8] = 0  # void ...
    lab[1, 23, 1] = 0  # ... and a gap on the box face touching it only along an edge
    lab[9:15, 1:11, 11:21] = 4
    lab[10:14, 3:9, 13:19] = 5  # object 5 fills 4's void: absorbed
    lab[12, 5, 15] = 0
    lab[10:12, 30:32, 30:32] = 6  # 8 voxels
    lab[9:15, 25:35, 12:22] = 7
    lab[11:13, 28:31, 15:18] = 0  # void of 18 voxels
    return lab


@pytest.mark.parametrize("min_size", [15, 9, 0, -1])
def test_fill_holes_and_remove_small_masks_3d_equals_cellpose(min_size):
    """Our 3-D void filling and min_size equal cellpose's ``fill_holes_and_remove_small_masks`` (fill_voids).

    Catches: holes filled plane by plane (the tunnel would be closed), 26-connected background (the edge
    opening would keep object 3's void open), min_size taken per plane.
    """
    lab = voids()
    ours = reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=min_size)
    theirs = cellpose("cellpose.utils").fill_holes_and_remove_small_masks(lab.copy(), min_size=min_size)
    assert np.array_equal(ours, theirs)


def test_void_rule_equals_fill_voids_on_random_masks():
    """Random blobs in small boxes: our voids are exactly ``fill_voids.fill``'s (what cellpose calls),
    including the box-face voxels its face scan misses (which some of these cases hit).

    Catches: the face-scan quirk not reproduced (noisy stacks then differ from cellpose by a voxel, as
    seed 2 did before it was), a face scanned in C instead of Fortran order, the run flag reset per row.
    """
    fill = cellpose("fill_voids").fill
    rng = np.random.default_rng(0)
    quirky = 0
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(1, 9, 3))
        m = ndi.gaussian_filter(rng.random(shape), 0.7) > rng.uniform(0.35, 0.6)
        lab = m.astype(np.int32)
        ours = reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=0)
        assert np.array_equal(ours, fill(m).astype(np.int32)), shape
        exact = reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=0, exact_voids=True)
        quirky += not np.array_equal(exact, ours)
    assert quirky >= 1


def test_exact_voids_leaves_box_face_voxels():
    """The smallest case of fill_voids' face-scan quirk: a background voxel on the box face at (0, 0, 1)
    is filled by default (as cellpose) and left alone with exact_voids=True.

    Catches: exact_voids ignored, or the quirk applied to every face voxel.
    """
    lab = np.ones((8, 10, 3), np.int32)
    for z, y, x in [(0, 0, 1), (0, 9, 0), (7, 0, 0)]:
        lab[z, y, x] = 0
    default = reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=0)
    exact = reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=0, exact_voids=True)
    assert default[0, 0, 1] == 1 and default[0, 9, 0] == 0 and default[7, 0, 0] == 0
    assert np.array_equal(exact, lab)


def test_min_size_counts_voxels_of_the_whole_object():
    """A column 3x3 voxels wide and 10 planes deep (90 voxels) is kept at min_size 15 and dropped at 100.

    Catches: min_size applied to each plane's 2-D piece (9 pixels < 15 would drop it).
    """
    lab = np.zeros((12, 20, 20), np.int32)
    lab[1:11, 5:8, 5:8] = 1
    assert reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=15).max() == 1
    assert reconstruct3d.fill_holes_and_remove_small_masks_3d(lab.copy(), min_size=100).max() == 0


# --- the 3-D flow-error check (cellpose has none in 3-D) ---------------------------------------------------


def test_flow_errors_3d_known_answers():
    """0 for the masks' own flows, 4 for the flows reversed, and the fraction of moving voxels for zero flows.

    Catches: the error not divided by the object's voxel count, dP not divided by 5, the z component left
    out (the 2-D check's two components), errors assigned to the wrong label.
    """
    lab = ellipsoids(seed=0)
    mu = heat3d.masks_to_flows_3d(lab)
    dP = (mu * 5).astype(np.float32)
    err = reconstruct3d.flow_errors_3d(lab, dP)
    assert err.shape == (30,) and np.abs(err).max() < 1e-10
    err = reconstruct3d.flow_errors_3d(lab, -dP)
    assert np.allclose(err, 4.0, atol=1e-5)
    dP[:, lab == 3] = 0  # object 3 only: error = its share of voxels with a non-zero flow (all of them)
    err = reconstruct3d.flow_errors_3d(lab, dP)
    moving = (np.abs(mu[:, lab == 3]).sum(0) > 0).mean()
    assert abs(err[2] - moving) < 1e-6 and moving > 0.95
    assert np.abs(np.delete(err, 2)).max() < 1e-10


def test_flow_threshold_drops_inconsistent_object_and_is_off_by_default():
    """An object with a uniform flow (no centre) breaks into columns whose flow error is ~2: dropped at
    flow_threshold 0.4, kept by default (as cellpose, which never checks in 3-D); the consistent object stays.

    Catches: the check run by default (cellpose parity lost), or never run when asked.
    """
    lab = np.zeros((16, 40, 40), np.int32)
    lab[2:12, 4:20, 4:20] = 1
    lab[2:12, 22:38, 22:38] = 2
    flows = np.empty((4, *lab.shape), np.float32)
    flows[:3] = heat3d.masks_to_flows_3d(lab) * 5
    flows[3] = np.where(lab > 0, 4.0, -4.0)
    flows[:3, lab == 2] = 0.0
    flows[1, lab == 2] = 5.0  # uniform +y
    unchecked = reconstruct3d.compute_masks_3d(flows)
    checked = reconstruct3d.compute_masks_3d(flows, flow_threshold=0.4)
    assert np.array_equal(unchecked, reference(flows))
    assert unchecked.max() > 2 and checked.max() == 1
    assert (checked == 1).sum() == (lab == 1).sum() and np.array_equal(checked > 0, lab == 1)


def test_max_size_fraction_drops_big_object():
    """An object with 47% of the stack's voxels is dropped at 0.4 and kept at 0.5.

    Catches: the fraction taken of one plane (the object is then always dropped), the test inverted.
    """
    lab = np.zeros((10, 30, 30), np.int32)
    lab[:, 0:30, 0:14] = 1  # 46.7% of the stack's voxels
    flows = np.empty((4, *lab.shape), np.float32)
    flows[:3] = heat3d.masks_to_flows_3d(lab) * 5
    flows[3] = np.where(lab > 0, 4.0, -4.0)
    assert reconstruct3d.compute_masks_3d(flows).max() == 0
    assert reconstruct3d.compute_masks_3d(flows, max_size_fraction=0.5).max() == 1


# --- edge cases and bad input ------------------------------------------------------------------------------


def test_all_background_and_no_seed_give_empty_labels():
    """No voxel above the threshold, or too few to make a histogram peak: an empty int32 stack.

    Catches: the no-seed case reaching the seed growth (empty arrays to concatenate).
    """
    flows = np.zeros((4, 6, 20, 20), np.float32)
    flows[3] = -5
    out = reconstruct3d.compute_masks_3d(flows)
    assert out.shape == (6, 20, 20) and out.dtype == np.int32 and not out.any()
    flows[3, 2, 5, 5:10] = 5  # 5 cell voxels cannot make a histogram peak above 10 end points
    assert not reconstruct3d.compute_masks_3d(flows).any()


@pytest.mark.parametrize(
    "shape, fill, expect",
    [
        ((3, 6, 16, 16), 0.0, "expected (4, Z, Y, X)"),
        ((6, 16, 16), 0.0, "expected (4, Z, Y, X)"),
        ((4, 1, 16, 16), 0.0, "at least 2 planes"),
        ((4, 6, 16, 16), np.nan, "NaN or infinite"),
        ((4, 6, 16, 16), np.inf, "NaN or infinite"),
    ],
)
def test_bad_input_one_line(shape, fill, expect):
    """Wrong shape, a single plane, non-finite values: one CpsnakeError line that says what was expected.

    Catches: a single plane reaching grid_sample (division by L - 1 = 0 gives NaN end points), NaN flows
    followed silently.
    """
    flows = np.zeros(shape, np.float32)
    if not np.isfinite(fill):
        flows[-1, 2, 3, 4] = fill
    with pytest.raises(CpsnakeError) as e:
        reconstruct3d.compute_masks_3d(flows)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
