"""cpsnake.stacks.stitch against cellpose 4.2.1.1's ``utils.stitch3D`` (the reference), on tiny synthetic stacks.

Parity is exact: the same label values, voxel for voxel (``np.array_equal``), at every threshold tried.
Each test's docstring names a plausible bug it catches.
"""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from reference import cellpose
from synthetic import voronoi_cells

from cpsnake.errors import CpsnakeError
from cpsnake.stacks.stitch import stitch_planes

THRESHOLDS = [0.1, 0.25, 0.5, 0.9]


def reference(masks, threshold):
    """cellpose's stitch3D on a copy (it overwrites its input), its 0/0 warnings and progress bar muted."""
    utils = cellpose("cellpose.utils")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return utils.stitch3D(masks.copy(), stitch_threshold=threshold)


def assert_parity(masks, threshold):
    ours = stitch_planes(masks, threshold)
    theirs = reference(masks, threshold)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), f"{np.count_nonzero(ours != theirs)} voxels differ"
    return ours


def relabel(plane, rng, spread=3):
    """The plane's objects renumbered by a random permutation into ids 1..spread*N (gaps, shuffled order)."""
    n = int(plane.max())
    lut = np.zeros(n + 1, np.int64)
    lut[1:] = rng.choice(np.arange(1, spread * n + 1), size=n, replace=False)
    return lut[plane]


def ellipse(shape, cy, cx, ay, ax, angle):
    y, x = np.ogrid[: shape[0], : shape[1]]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (y - cy) * c + (x - cx) * s, -(y - cy) * s + (x - cx) * c
    return (u / ay) ** 2 + (v / ax) ** 2 <= 1


def drifting_ellipses(seed, z=12, shape=(80, 112)):
    """(Z, Y, X) int32 stack of ellipses that drift, grow or shrink and turn from plane to plane.

    Some appear after plane 0 or vanish before the last plane; one splits in two (two halves moving
    apart), two merge into one; plane z // 2 holds no object. Each plane is relabelled at random (gaps).
    """
    rng = np.random.default_rng(seed)
    tracks = []  # (z0, z1, cy, cx, vy, vx, ay, ax, grow, angle, spin)
    for _ in range(14):
        z0 = int(rng.integers(0, z // 2)) if rng.random() < 0.4 else 0
        z1 = int(rng.integers(z // 2, z + 1)) if rng.random() < 0.4 else z
        tracks.append(
            (
                z0,
                z1,
                rng.uniform(8, shape[0] - 8),
                rng.uniform(8, shape[1] - 8),
                rng.uniform(-1.5, 1.5),
                rng.uniform(-1.5, 1.5),
                rng.uniform(3, 8),
                rng.uniform(3, 8),
                rng.uniform(-0.4, 0.4),
                rng.uniform(0, np.pi),
                rng.uniform(-0.2, 0.2),
            )
        )
    cy, cx = shape[0] / 2, shape[1] / 2
    split, merge = z // 3, 2 * z // 3
    planes = []
    for k in range(z):
        lab = np.zeros(shape, np.int32)
        n = 0
        for z0, z1, y0, x0, vy, vx, ay, ax, grow, ang, spin in tracks:
            if z0 <= k < z1:
                n += 1
                g = max(1.5, 1 + grow * (k - z0))
                dz = k - z0
                lab[ellipse(shape, y0 + vy * dz, x0 + vx * dz, ay * g**0.5, ax * g**0.5, ang + spin * k)] = n
        # split: one ellipse, then two halves moving apart
        gap = 0 if k < split else 2 * (k - split + 1)
        for dx in (0,) if k < split else (-gap - 3, gap + 3):
            n += 1
            lab[ellipse(shape, cy - 20, cx + dx, 6, 6 if k < split else 4, 0)] = n
        # merge: two ellipses closing in, then one
        gap = 0 if k >= merge else 3 * (merge - k)
        for dx in (0,) if k >= merge else (-gap - 4, gap + 4):
            n += 1
            lab[ellipse(shape, cy + 22, cx + dx, 5, 8 if k >= merge else 4, 0)] = n
        planes.append(relabel(lab, rng) if k != z // 2 else np.zeros(shape, np.int64))
    return np.stack(planes).astype(np.int32)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drifting_ellipses_equal_cellpose(seed, threshold):
    """Objects that drift, resize, appear, vanish, split and merge, an empty plane, shuffled sparse ids.

    Catches: matching plane z + 1 against plane z's *original* ids instead of its stitched ids; numbering
    new ids by rank among the objects present (cellpose counts absent ids too); dropping the
    "each object of plane z keeps only its best partner" step (a split would then give both halves one id).
    """
    out = assert_parity(drifting_ellipses(seed), threshold)
    assert out.dtype == np.int32


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_voronoi_planes_equal_cellpose(seed, threshold):
    """Touching Voronoi cells, unrelated or jittered from plane to plane, every plane renumbered at random.

    Catches: a wrong IoU (e.g. a union that does not subtract the intersection), an IoU equal to the
    threshold refused (``>`` for ``>=``), no "best partner of each object of plane z" step. (Applying
    the threshold after that step instead of before gives the same labels: not a bug.)
    """
    rng = np.random.default_rng(seed)
    planes = []
    for k in range(8):
        cells = voronoi_cells((64, 80), spacing=12, seed=100 * seed + k // 2, radius=(4, 9))
        if k % 2:  # same cells as the plane before, shifted by a pixel or two
            cells = np.roll(cells, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        planes.append(relabel(cells, rng, spread=2))
    assert_parity(np.stack(planes).astype(np.int32), threshold)


def test_exact_ties_and_threshold_equal_cellpose():
    """Exact IoU ties and an IoU exactly at the threshold, with a known answer.

    Catches: ``>`` for ``>=`` at the threshold; taking the largest id (not the smallest) on a tie;
    computing the next plane's overlaps from the original pieces rather than the stitched ids (two tied
    halves share an id and are one object for the plane after).
    """
    m = np.zeros((4, 12, 16), np.int32)
    m[0, 2:6, 2:6] = 1  # a 4x4 square ...
    m[1, 2:6, 2:4] = 4  # ... split into two 4x2 halves: IoU 0.5 each, a tie for square 1
    m[1, 2:6, 4:6] = 2
    m[2, 2:6, 2:7] = 7  # the square and a column: IoU 0.8 with the two halves as one id, 0.4 with each
    m[0, 8:10, 8:12] = 3  # 2x4 bar, and below it two bars it overlaps with IoU 0.5 each:
    m[0, 8:10, 12:16] = 5  # its neighbour, 2x4
    m[1, 8:10, 10:14] = 6  # straddles both: IoU 4/12 with each, equal -> the smallest id (3)
    out = assert_parity(m, 0.5)
    assert set(np.unique(out[1][m[1] > 0])) == {1, 9}  # halves tie at exactly 0.5: both take id 1; bar 6 new: 5 + 6 - 2
    assert out[2, 3, 3] == 1  # continues id 1 through the tied halves
    out = assert_parity(m, 0.25)
    assert out[1, 8, 11] == 3
    for t in (0.1, 0.9):
        assert_parity(m, t)


def test_empty_planes_equal_cellpose():
    """Empty planes at the start, in the middle, at the end, and an all-empty stack, with cellpose's quirk.

    Catches: treating an empty neighbour the same before and after the first stitched pair. Before it,
    cellpose keeps the next plane's ids and resets the running maximum to that plane's largest id, so
    plane 2 below reuses plane 0's ids 1 and 2; after it, the plane after a gap gets all new ids.
    """
    m = np.zeros((7, 8, 8), np.int32)
    m[0, 0:3, 0:3], m[0, 5:8, 5:8] = 1, 2  # plane 1 empty
    m[2, 4:7, 0:3], m[2, 0:2, 5:8] = 2, 1  # unrelated objects, ids 1 and 2 again
    m[3, 4:7, 0:3], m[3, 0:2, 0:2] = 1, 9  # stitched pair: 1 continues 2; 9 is new
    m[5, 4:7, 0:3] = 3  # after the gap (plane 4 empty): a new id
    for t in THRESHOLDS:
        out = assert_parity(m, t)
    assert out[2, 0, 5] == 1 and out[2, 4, 0] == 2  # ids shared with plane 0's unrelated objects
    assert out[3, 4, 0] == 2 and out[3, 0, 0] == 2 + 9 - 1  # M = 2, id 9 -> 2 + 9 - (1 matched below)
    assert out[5, 4, 0] == 10 + 3 and not out[6].any()
    assert_parity(np.zeros((3, 5, 5), np.uint16), 0.25)
    lone = np.zeros((3, 5, 5), np.int32)
    lone[2, 1:3, 1:3] = 4
    assert_parity(lone, 0.25)


def test_sparse_huge_id_known_answer_and_small_memory():
    """An id of 3,000,000,000 in a plane: correct ids, and no table up to the largest id.

    Catches: a per-id table (dense IoU matrix, lookup table, bincount) sized by the largest id, which
    would need gigabytes here; new ids computed in a dtype that wraps.
    """
    big = 3_000_000_000
    m = np.zeros((3, 16, 16), np.int64)
    m[0, 0:4, 0:4], m[0, 8:12, 8:12] = big, 2
    m[1, 0:4, 0:4], m[1, 8:12, 8:12], m[1, 12:16, 0:4] = 5, 2, 7  # 5 continues big, 2 continues 2, 7 new
    m[2, 12:16, 0:4], m[2, 0:2, 12:14] = big + 1, 1  # big + 1 continues the new object, 1 is new
    tracemalloc.start()
    out = stitch_planes(m, 0.25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20
    assert out.dtype == np.int64
    assert out[1, 0, 0] == big and out[1, 8, 8] == 2
    new7 = big + 7 - 2  # M = big; id 7 with 2 matched ids (2, 5) below it
    assert out[1, 12, 0] == new7
    assert out[2, 12, 0] == new7 and out[2, 0, 12] == new7 + 1
    # uint32 input whose new ids would pass 2**32 - 1: promoted to int64, not wrapped
    m32 = m.astype(np.uint32)
    m32[1][m32[1] == 7] = 2_000_000_000
    out32 = stitch_planes(m32, 0.25)
    assert out32.dtype == np.int64 and out32[1, 12, 0] == big + 2_000_000_000 - 2
    # last (needs cellpose): the same stack with the big id scaled down gives cellpose's answer, id for id
    small = np.where(m >= big, m - big + 300, m)  # (cellpose's dense IoU tables stay small)
    mapped = np.where(out >= big, out - big + 300, out)
    assert np.array_equal(mapped, reference(small, 0.25))


def test_output_dtype_and_input_untouched():
    """uint16 stays uint16 when the ids fit, uint8 is widened before it overflows; the input is not changed.

    Catches: writing the stitched ids into the caller's array (as cellpose does); new ids wrapping
    around in a small dtype.
    """
    m = drifting_ellipses(0).astype(np.uint16)
    before = m.copy()
    out = stitch_planes(m, 0.25)
    assert np.array_equal(m, before) and out.dtype == np.uint16
    m8 = np.zeros((3, 20, 20), np.uint8)
    m8[:, 0:2, 0:2] = 200  # stitched through
    m8[0, 10:12, 10:12] = 1
    m8[1:, 15:17, 15:17] = [[[250]], [[1]]]  # new in plane 1: id 200 + 250 - 1 = 449, over 255
    out8 = stitch_planes(m8, 0.25)
    assert out8.dtype == np.uint32 and out8[2, 15, 15] == 449
    assert np.array_equal(out8, reference(m8.astype(np.int32), 0.25))


@pytest.mark.parametrize(
    "masks, threshold, found",
    [
        (np.zeros((8, 8), np.int32), 0.25, "2 dimensions"),
        (np.zeros((2, 2, 8, 8), np.int32), 0.25, "4 dimensions"),
        (np.zeros((1, 8, 8), np.int32), 0.25, "1 plane"),
        (np.zeros((3, 8, 8), np.float32), 0.25, "dtype float32"),
        (np.zeros((3, 8, 8), bool), 0.25, "dtype bool"),
        (np.full((3, 8, 8), -1, np.int32), 0.25, "negative label -1"),
        (np.zeros((3, 8, 8), np.int32), 0.0, "threshold 0.0"),
        (np.zeros((3, 8, 8), np.int32), 1.5, "threshold 1.5"),
        (np.zeros((3, 8, 8), np.int32), float("nan"), "threshold nan"),
        (np.zeros((3, 8, 8), np.int32), "high", "threshold 'high'"),
        (np.full((2, 2, 2), 2**63, np.uint64), 0.25, "sum to"),
    ],
    ids=[
        "2d",
        "4d",
        "one-plane",
        "float",
        "bool",
        "negative",
        "threshold-0",
        "threshold-1.5",
        "threshold-nan",
        "threshold-str",
        "ids-overflow",
    ],
)
def test_bad_input_is_one_clear_line(masks, threshold, found):
    """Each refusal names what was found and what was expected, on one line.

    Catches: bad input slipping through to a numpy error deep inside (or a silent wrong result, e.g.
    float labels truncated, a threshold of 0 linking every touching pair).
    """
    with pytest.raises(CpsnakeError) as err:
        stitch_planes(masks, threshold)
    msg = str(err.value)
    assert found in msg and "expected" in msg and "\n" not in msg
