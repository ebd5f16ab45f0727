"""cpsnake.export.measure3d against scikit-image's ``regionprops`` (the reference for counts, centroids, boxes and
intensities) and against the analytic surface of ellipsoids (for the Crofton surface area), on small
synthetic stacks with anisotropic voxels.

Parity with regionprops is to float64 round-off (``rtol=1e-12``) or exact for integers. The surface area
is an estimate: its tolerances are stated where they are used. Each test's docstring names a plausible
bug it catches.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from cpsnake.errors import CpsnakeError
from cpsnake.export.measure3d import _DIRECTIONS, crofton_weights, measure_3d
from cpsnake.export.table import columns_3d

skimage_measure = pytest.importorskip("skimage.measure")

SPACING = (2.0, 0.5, 0.5)  # (dz, dy, dx): z steps four times the pixel size, as in a confocal stack


# --- synthetic stacks and the analytic surfaces -----------------------------------------------------


def ellipsoid(shape, centre, semi, spacing, rotation=None):
    """(Z, Y, X) bool: voxels whose centre lies in the ellipsoid of physical semi-axes ``semi`` (along the
    columns of ``rotation``, default z, y, x) about the physical point ``centre`` (index * spacing)."""
    grids = np.meshgrid(*(np.arange(n) * s - c for n, s, c in zip(shape, spacing, centre)), indexing="ij")
    p = np.stack(grids, axis=-1)
    if rotation is not None:
        p = p @ rotation
    return ((p / np.asarray(semi, dtype=float)) ** 2).sum(axis=-1) <= 1


def rotation(angle_z, angle_x):
    """3x3 rotation matrix (columns = the ellipsoid's axes in (z, y, x) coordinates)."""
    cz, sz, cx, sx = math.cos(angle_z), math.sin(angle_z), math.cos(angle_x), math.sin(angle_x)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # turns y towards x
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # turns z towards y
    return about_z @ about_x


def ellipsoid_area(a, b, c):
    """Exact surface area of an ellipsoid (Legendre's elliptic-integral form)."""
    from scipy.special import ellipeinc, ellipkinc

    a, b, c = sorted((a, b, c), reverse=True)
    if math.isclose(a, c):
        return 4 * math.pi * a * a
    phi = math.acos(c / a)
    m = (a * a * (b * b - c * c)) / (b * b * (a * a - c * c))
    s = math.sin(phi)
    return 2 * math.pi * c * c + 2 * math.pi * a * b / s * (ellipeinc(phi, m) * s * s + ellipkinc(phi, m) * (1 - s * s))


def thomsen_area(a, b, c, p=1.6075):
    """Knud Thomsen's approximation of an ellipsoid's surface area (relative error at most 1.061 %)."""
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def crofton_limit(semi, spacing, rot=None):
    """What the 13-direction Crofton estimate tends to for a large ellipsoid: 4 * sum_v c_v * P(u_v), with
    P(u) = pi a b c |diag(1/semi) R^T u| the ellipsoid's projected area along the unit direction u."""
    weights = crofton_weights(spacing)
    vol = float(np.prod(spacing))
    rot = np.eye(3) if rot is None else rot
    total = 0.0
    for v in _DIRECTIONS:
        u = np.asarray(v, dtype=float) * spacing
        length = np.linalg.norm(u)
        share = weights[v] * length / (2 * vol)  # c_v
        projected = math.pi * np.prod(semi) * np.linalg.norm((rot.T @ (u / length)) / np.asarray(semi))
        total += 4 * share * projected
    return total


def stack_of_ellipsoids():
    """(Z, Y, X) int64 labels of four ellipsoids with sparse ids (one touching the stack's first plane and
    its x border) and a (2, Z, Y, X) float image: a gradient plus noise, and a second channel of integers."""
    shape = (14, 48, 56)
    lab = np.zeros(shape, np.int64)
    objects = [  # id, centre (physical z, y, x), semi-axes
        (5, (12.3, 6.1, 7.2), (6.0, 4.0, 5.0)),
        (17, (14.0, 17.5, 20.0), (5.0, 5.5, 3.5)),
        (40_000, (3.0, 18.0, 3.1), (4.0, 3.0, 3.6)),  # touches z = 0 and x = 0
        (9, (20.0, 6.0, 20.0), (3.0, 2.0, 2.5)),
    ]
    for lab_id, centre, semi in objects:
        lab[ellipsoid(shape, centre, semi, SPACING)] = lab_id
    rng = np.random.default_rng(1)
    z, y, x = np.indices(shape)
    img = np.stack([
        100.0 + 3.0 * z + 0.5 * y - 0.25 * x + rng.normal(0, 5, shape),
        rng.integers(0, 4096, shape).astype(np.float64),
    ], axis=1)  # fmt: skip
    return lab, img  # (Z, C, Y, X)


def regionprops_table(lab, img, spacing):
    """scikit-image's per-object values for the same stack, ascending ids; image as (Z, Y, X, C)."""
    props = [
        "label",
        "area",
        "centroid",
        "bbox",
        "equivalent_diameter_area",
        "intensity_mean",
        "intensity_min",
        "intensity_max",
        "intensity_std",
        "num_pixels",
    ]
    table = skimage_measure.regionprops_table(lab, np.moveaxis(img, 1, -1), properties=props, spacing=spacing)
    return pd.DataFrame(table).sort_values("label").reset_index(drop=True)


# --- parity with regionprops ---------------------------------------------------------------------------


def test_table_matches_regionprops_with_anisotropic_voxels():
    """Volume, voxel count, centroid, bounding box and equivalent diameter equal scikit-image's.

    Catches: centroid axes swapped or calibrated with the wrong voxel side (dz for x), the half-voxel
    convention dropped, an exclusive box end reported as a size (off by one), a volume not multiplied by
    dz dy dx, rows out of id order."""
    lab, img = stack_of_ellipsoids()
    ours = measure_3d(lab, img, voxel_size=SPACING)
    ref = regionprops_table(lab, img, SPACING)
    dz, dy, dx = SPACING
    assert list(ours["label"]) == [5, 9, 17, 40_000] == list(ref["label"])
    assert np.array_equal(ours["voxels"], ref["num_pixels"])
    np.testing.assert_allclose(ours["volume"], ref["area"], rtol=1e-12)
    np.testing.assert_allclose(ours["equivalent_diameter"], ref["equivalent_diameter_area"], rtol=1e-12)
    # regionprops puts a voxel's centre at index * spacing; cpsnake (as ImageJ) at (index + 0.5) * spacing
    np.testing.assert_allclose(ours["centroid_z"], ref["centroid-0"] + dz / 2, rtol=1e-12)
    np.testing.assert_allclose(ours["centroid_y"], ref["centroid-1"] + dy / 2, rtol=1e-12)
    np.testing.assert_allclose(ours["centroid_x"], ref["centroid-2"] + dx / 2, rtol=1e-12)
    for start, size, axis in (("bz", "depth", 0), ("by", "height", 1), ("bx", "width", 2)):
        assert np.array_equal(ours[start], ref[f"bbox-{axis}"])
        assert np.array_equal(ours[size], ref[f"bbox-{axis + 3}"] - ref[f"bbox-{axis}"])
    touching = ours.set_index("label").loc[40_000]
    assert touching["bz"] == 0 and touching["bx"] == 0


def test_intensities_match_regionprops_per_channel():
    """Mean, Min, Max per channel equal regionprops'; StdDev is the sample standard deviation (n - 1),
    i.e. regionprops' population value times sqrt(n / (n - 1)), as ImageJ and cpsnake.export.measure report it.

    Catches: channels mixed up or columns misnamed, a population standard deviation (ddof=0), min and max
    taken over the bounding box instead of the object, background counted in the mean."""
    lab, img = stack_of_ellipsoids()
    ours = measure_3d(lab, img, voxel_size=SPACING)
    ref = regionprops_table(lab, img, SPACING)
    n = ref["num_pixels"].to_numpy(dtype=float)
    for c in range(2):
        np.testing.assert_allclose(ours[f"Mean_c{c + 1}"], ref[f"intensity_mean-{c}"], rtol=1e-12)
        np.testing.assert_array_equal(ours[f"Min_c{c + 1}"], ref[f"intensity_min-{c}"])
        np.testing.assert_array_equal(ours[f"Max_c{c + 1}"], ref[f"intensity_max-{c}"])
        np.testing.assert_allclose(
            ours[f"StdDev_c{c + 1}"], ref[f"intensity_std-{c}"] * np.sqrt(n / (n - 1)), rtol=1e-10
        )


def test_stddev_of_one_voxel_is_zero_and_offsets_do_not_cancel():
    """A one-voxel object has StdDev 0 (ImageJ's value, not nan); values 1e9 + {0, 1, 2} give exactly 1.

    Catches: 0/0 for n = 1; the one-pass formula (sum of squares - n mean^2) in float64, which loses the
    digits of a small spread on a large offset."""
    lab = np.zeros((3, 4, 5), np.uint16)
    lab[1, 1, 1] = 2
    lab[0, 2, 2:5] = 7
    img = np.zeros(lab.shape)
    img[1, 1, 1] = 42.0
    img[0, 2, 2:5] = 1e9 + np.array([0.0, 1.0, 2.0])
    ours = measure_3d(lab, img).set_index("label")
    assert ours.loc[2, "StdDev"] == 0.0 and ours.loc[2, "Mean"] == 42.0
    assert ours.loc[7, "StdDev"] == 1.0 and ours.loc[7, "Mean"] == 1e9 + 1


# --- surface area ---------------------------------------------------------------------------------------


def test_crofton_weights_of_cubic_voxels_are_morpholibj_constants():
    """For cubic voxels the direction shares are MorphoLibJ's published constants (Voronoi cells of the 26
    directions) and one crossing along an axis adds 2 * c * dx^2; for any voxel size the shares sum to 1.

    Catches: shares of one direction instead of the pair +-v (half the area), the crossing area not divided
    by the step's physical length, weights that do not follow the voxel size."""
    w = crofton_weights((1.0, 1.0, 1.0))
    expected = {1: 0.04577789120476 * 2, 2: 0.03698062787608 * 2, 3: 0.03519563978232 * 2}
    for v, weight in w.items():
        order = sum(map(abs, v))
        np.testing.assert_allclose(weight * math.sqrt(order) / 2, expected[order], rtol=1e-11)
    w = crofton_weights((0.7, 0.7, 0.7))
    np.testing.assert_allclose(w[(0, 0, 1)], 2 * expected[1] * 0.7**2, rtol=1e-11)
    for spacing in [(1.0, 1.0, 1.0), SPACING, (0.3, 1.0, 2.5), (50.0, 1.0, 1.0)]:
        w = crofton_weights(spacing)
        vol = float(np.prod(spacing))
        shares = [w[v] * np.linalg.norm(np.asarray(v) * spacing) / (2 * vol) for v in _DIRECTIONS]
        assert min(shares) > 0
        np.testing.assert_allclose(sum(shares), 1.0, rtol=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), SPACING])
def test_surface_area_of_a_ball_converges_to_4_pi_r2(spacing):
    """A digitised ball's estimated area approaches 4 pi R^2 as R grows (the 13-direction quadrature is exact
    for a sphere, so only the digitisation error remains): under 2.5 % from R = 6, under 0.5 % at R = 24
    (24 voxels for cubic voxels; 12 planes and 48 pixels at SPACING); sphericity then within 0.5 % of 1.

    Catches: crossings counted on one side of each pair only (half the area), a direction missing from
    the sum, a weight that goes with the wrong step once voxels are anisotropic."""
    errors = []
    for radius in (6.0, 12.0, 24.0):
        shape = tuple(int(2 * radius / s) + 4 for s in spacing)
        centre = tuple((n - 1) / 2 * s + 0.13 for n, s in zip(shape, spacing))
        lab = ellipsoid(shape, centre, (radius,) * 3, spacing).astype(np.uint8)
        row = measure_3d(lab, lab, voxel_size=spacing).iloc[0]
        errors.append(abs(row["surface_area"] / (4 * math.pi * radius**2) - 1))
    assert errors[0] < 0.025 and errors[-1] < 0.005, errors
    assert errors[-1] < errors[0]
    assert abs(row["sphericity"] - 1) < 0.005


def test_surface_area_of_ellipsoids_against_the_analytic_surface():
    """Ellipsoids (one turned off the axes) in voxels 4x deeper than wide, from about 130 to 40,000 voxels.

    Against the exact area: within 6 % from about 1,000 voxels (the documented bias of 13 directions for
    such voxels -- the quadrature of the projections over unevenly spread directions -- is -1.8 %, -4.7 %
    and -0.5 % for these three shapes), within 10 % for the smallest (radii of 2 planes). Against that
    quadrature's own limit the error (digitisation) shrinks as the object grows: under 0.5 % at the
    largest size, and smaller than at the smallest. The exact area agrees with Knud Thomsen's
    approximation to 1.1 %.

    Catches: one diagonal counted twice and its mirror image never (invisible on mirror-symmetric, axis-
    aligned shapes; seen on the turned ellipsoid), a weight given to the wrong direction (the z axis's to
    the x axis), a bias that grows with size (e.g. face counting, +50 %)."""
    cases = [((6.0, 4.0, 5.0), None), ((9.0, 3.6, 5.4), None), ((8.0, 3.0, 5.0), rotation(0.6, 0.5))]
    for semi0, rot in cases:
        assert abs(thomsen_area(*semi0) / ellipsoid_area(*semi0) - 1) < 0.011
        to_limit = []
        for scale, tolerance in ((0.5, 0.10), (1.0, 0.06), (3.0, 0.06)):
            semi = tuple(scale * s for s in semi0)
            reach = max(semi)
            shape = tuple(int(2 * reach / s) + 4 for s in SPACING)
            centre = tuple((n - 1) / 2 * s + 0.11 for n, s in zip(shape, SPACING))
            lab = ellipsoid(shape, centre, semi, SPACING, rot).astype(np.int32)
            area = measure_3d(lab, lab, voxel_size=SPACING)["surface_area"].iloc[0]
            assert abs(area / ellipsoid_area(*semi) - 1) < tolerance, (semi, area / ellipsoid_area(*semi) - 1)
            to_limit.append(abs(area / crofton_limit(semi, SPACING, rot) - 1))
        assert to_limit[-1] < 0.005 and to_limit[-1] < to_limit[0], (semi0, to_limit)


def test_touching_objects_each_get_their_whole_surface():
    """Two boxes that share a face each measure as if alone: the shared face counts for both.

    Catches: only object-background crossings counted (the shared face lost), a crossing between two
    objects given to one of them only."""
    lab = np.zeros((6, 9, 12), np.int32)
    lab[1:5, 2:7, 2:6] = 3
    lab[1:5, 2:7, 6:10] = 8
    both = measure_3d(lab, lab, voxel_size=SPACING).set_index("label")
    for lab_id in (3, 8):
        alone = measure_3d(np.where(lab == lab_id, lab, 0), lab, voxel_size=SPACING)
        assert both.loc[lab_id, "surface_area"] == pytest.approx(alone["surface_area"].iloc[0], rel=1e-12)


def test_object_touching_the_stack_border_is_closed_by_the_border():
    """A box in a corner of the stack (touching the first and last plane, y = 0, x = 0 and the last x) measures
    what the same box inside a larger stack does: the stack is padded with background.

    Catches: crossings to outside the stack dropped (the top or bottom plane's face missing, or the faces at
    y = 0 / x = X - 1), a box start or size clipped wrongly at the border."""
    inside = np.zeros((7, 8, 9), np.uint8)
    inside[2:5, 3:6, 2:7] = 1
    corner = inside[2:5, 3:7, 2:7]  # z 0..2 (all planes), y 0..2, x 0..4 = the last column
    a = measure_3d(inside, inside, voxel_size=SPACING).iloc[0]
    b = measure_3d(corner, corner, voxel_size=SPACING).iloc[0]
    assert b["surface_area"] == pytest.approx(a["surface_area"], rel=1e-12)
    assert (b["bz"], b["by"], b["bx"], b["depth"], b["height"], b["width"]) == (0, 0, 0, 3, 3, 5)
    assert b["volume"] == a["volume"] == 45 * 0.5
    # the area of a small box is that of the 13-direction estimate, not the box's 2 (ab + bc + ca) exactly
    box = 2 * (3 * 2.0 * 1.5 + 3 * 2.0 * 2.5 + 1.5 * 2.5)
    assert abs(a["surface_area"] / box - 1) < 0.25


def test_slices_counts_planes_that_hold_voxels():
    """An object in planes 1 and 4 (a gap of two planes) has slices = 2 and depth = 4.

    Catches: slices taken from the bounding box depth, planes counted once per voxel."""
    lab = np.zeros((6, 5, 5), np.int64)
    lab[1, 1:3, 1:3] = 4
    lab[4, 2, 2] = 4
    lab[2:5, 0, 0] = 6
    ours = measure_3d(lab, np.ones(lab.shape)).set_index("label")
    assert (ours.loc[4, "slices"], ours.loc[4, "depth"], ours.loc[4, "bz"]) == (2, 4, 1)
    assert (ours.loc[6, "slices"], ours.loc[6, "depth"]) == (3, 3)


# --- ids, channels, the empty case --------------------------------------------------------------------


def test_huge_sparse_ids_with_small_memory():
    """Ids 3,000,000,000 and 7 measure like 1 and 2 (same rows but the label), with a peak below 8 MiB.

    Catches: a table up to the largest id (np.bincount(labels) or a lookup table: 3e9 entries, gigabytes),
    ids truncated to int32, rows ordered by first appearance instead of by id."""
    lab, img = stack_of_ellipsoids()
    small = np.zeros(lab.shape, np.uint32)
    small[lab == 5], small[lab == 17] = 2, 1
    big = np.zeros(lab.shape, np.uint64)
    big[lab == 5], big[lab == 17] = 3_000_000_000, 7
    tracemalloc.start()
    ours = measure_3d(big, img, voxel_size=SPACING)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20
    assert list(ours["label"]) == [7, 3_000_000_000] and ours["label"].dtype == np.int64
    ref = measure_3d(small, img, voxel_size=SPACING)
    pd.testing.assert_frame_equal(ours.drop(columns="label"), ref.drop(columns="label"))


def test_channel_columns_and_image_layouts():
    """(Z, Y, X) and (1, Z, Y, X) images give the same table without channel suffixes; two channels give
    _c1 and _c2 columns in ImageJ's order; unit and voxel size travel in ``attrs``.

    Catches: a (Z, Y, X) image read as Z channels, suffixes on a single channel (the 2-D table has none),
    the unit dropped."""
    lab = np.zeros((3, 4, 5), np.int32)
    lab[1, 1:3, 1:4] = 1
    img = np.arange(60, dtype=np.uint16).reshape(3, 4, 5)
    one = measure_3d(lab, img, voxel_size=(1.5, 0.2, 0.2), unit="micron")
    pd.testing.assert_frame_equal(one, measure_3d(lab, img[:, None], voxel_size=(1.5, 0.2, 0.2), unit="micron"))
    assert list(one.columns) == columns_3d(1) and "Mean" in one.columns
    assert one.attrs == {"unit": "micron", "voxel_size": (1.5, 0.2, 0.2)}
    two = measure_3d(lab, np.stack([img, 2 * img], axis=1))
    assert list(two.columns[-8:]) == [
        "Mean_c1",
        "Mean_c2",
        "StdDev_c1",
        "StdDev_c2",
        "Min_c1",
        "Min_c2",
        "Max_c1",
        "Max_c2",
    ]
    assert two["Mean_c2"].iloc[0] == 2 * two["Mean_c1"].iloc[0] == 2 * img[lab == 1].mean()


def test_no_objects_gives_the_columns_and_no_rows():
    """A stack of background gives the header and zero rows, with integer and float columns typed.

    Catches: a crash on empty tables (max of nothing), a table without columns."""
    out = measure_3d(np.zeros((2, 3, 4), np.uint16), np.zeros((2, 2, 3, 4)))
    assert list(out.columns) == columns_3d(2) and len(out) == 0
    assert out["label"].dtype == np.int64 and out["volume"].dtype == np.float64


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, image, voxel_size, match",
    [
        (
            np.zeros((4, 5), np.int32),
            np.zeros((4, 5)),
            (1, 1, 1),
            r"found labels with 2 dimensions \(4, 5\), expected a stack",
        ),
        (np.zeros((1, 2, 4, 5), np.int32), np.zeros((1, 2, 4, 5)), (1, 1, 1), "found labels with 4 dimensions"),
        (np.zeros((3, 4, 5)), np.zeros((3, 4, 5)), (1, 1, 1), "found labels of dtype float64, expected an integer"),
        (-np.ones((3, 4, 5), np.int16), np.zeros((3, 4, 5)), (1, 1, 1), "found a negative label -1"),
        (
            np.zeros((3, 4, 5), np.int32),
            np.zeros((3, 4, 6)),
            (1, 1, 1),
            r"image of shape \(3, 4, 6\), expected \(3, C, 4, 5\)",
        ),
        (np.zeros((3, 4, 5), np.int32), np.zeros((2, 3, 5, 4)), (1, 1, 1), "to match the labels"),
        (np.zeros((3, 4, 5), np.int32), np.zeros((2, 3, 4, 5)), (1, 1, 1), r"looks like \(C, Z, Y, X\).*moveaxis"),
        (
            np.zeros((3, 4, 5), np.int32),
            np.zeros((3, 4, 5), complex),
            (1, 1, 1),
            "dtype complex128, expected real numbers",
        ),
        (
            np.zeros((3, 4, 5), np.int32),
            np.zeros((3, 4, 5)),
            (0, 1, 1),
            r"found voxel_size \(0, 1, 1\), expected three finite positive",
        ),
        (np.zeros((3, 4, 5), np.int32), np.zeros((3, 4, 5)), (1, -0.5, 1), "expected three finite positive"),
        (np.zeros((3, 4, 5), np.int32), np.zeros((3, 4, 5)), (1, 1, math.nan), "expected three finite positive"),
        (np.zeros((3, 4, 5), np.int32), np.zeros((3, 4, 5)), (1, math.inf, 1), "expected three finite positive"),
        (np.zeros((3, 4, 5), np.int32), np.zeros((3, 4, 5)), (1, 1), "expected three finite positive"),
        (np.zeros((3, 4, 5), np.int32), np.zeros((3, 4, 5)), 0.5, "expected three finite positive"),
    ],
)
def test_bad_input_is_one_line(labels, image, voxel_size, match):
    """Each bad input is refused with one CpsnakeError line that says what was found and what to do.

    Catches: a NumPy broadcasting error or a table of nonsense instead of the error (mismatched shapes,
    float labels silently truncated, negative ids ranked as objects, a zero or nan voxel size giving
    volumes of 0 and sphericities of nan)."""
    with pytest.raises(CpsnakeError, match=match) as info:
        measure_3d(labels, image, voxel_size=voxel_size)
    assert "\n" not in str(info.value)
    assert "; " in str(info.value)  # the fix follows


def test_bad_unit_and_too_large_uint64_ids():
    """A unit that is not text, and uint64 ids above 2**63 - 1, are refused.

    Catches: ids wrapped to negative numbers in the int64 label column."""
    lab = np.zeros((2, 3, 3), np.uint64)
    with pytest.raises(CpsnakeError, match="expected a string"):
        measure_3d(lab, lab, unit=3)
    lab[0, 0, 0] = 2**63
    with pytest.raises(CpsnakeError, match=r"expected ids up to 2\*\*63 - 1"):
        measure_3d(lab, lab)
