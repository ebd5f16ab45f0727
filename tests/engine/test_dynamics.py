"""cpsnake.engine.dynamics against cellpose 4.2.1.1 (the reference) on tiny synthetic label images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import cellpose
from scipy import ndimage as ndi
from synthetic import voronoi_cells

from cpsnake.engine import dynamics, heat


def odd_shapes():
    """Concave (C-shape: mean outside the object), border-touching, 1-pixel, thin, touching objects."""
    lab = np.zeros((40, 50), np.int32)
    lab[5:20, 5:20] = 1
    lab[9:16, 9:20] = 0  # C open to the right: rounded mean lies outside
    lab[0:6, 30:50] = 2  # touches the top and right border
    lab[30, 10] = 3  # single pixel
    lab[25:27, 20:45] = 4  # thin bar
    lab[27:35, 25:33] = 5  # touches the bar
    return lab


def reference_flows(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cellpose("cellpose.dynamics").masks_to_flows_gpu(labels.astype(np.int64))[0]


@pytest.mark.parametrize(
    "labels",
    [voronoi_cells(), voronoi_cells(seed=3, spacing=18), odd_shapes()],
    ids=["voronoi", "voronoi-dense", "odd-shapes"],
)
def test_masks_to_flows_equals_cellpose(labels):
    ours = heat.masks_to_flows(labels)
    theirs = reference_flows(labels)
    assert ours.shape == (2, *labels.shape) and ours.dtype == np.float32
    # same diffusion order and float64 arithmetic: equal up to float32 rounding of the output
    assert np.abs(ours - theirs).max() <= 1e-6


def test_masks_to_flows_unit_length_inside_zero_outside():
    labels = voronoi_cells()
    mu = heat.masks_to_flows(labels)
    norm = np.sqrt((mu**2).sum(0))
    inside = norm[labels > 0]
    # unit length, except where the heat gradient is exactly zero (e.g. a 1-pixel object)
    assert np.all(np.isclose(inside, 1.0, atol=1e-5) | (inside == 0))
    assert (inside > 0).mean() > 0.99
    assert not mu[:, labels == 0].any()


def test_masks_to_flows_skipped_labels_same_as_consecutive():
    labels = odd_shapes()
    gappy = np.where(labels > 0, labels * 7 + 3, 0)
    assert np.array_equal(heat.masks_to_flows(gappy), heat.masks_to_flows(labels))


def test_masks_to_flows_empty():
    mu = heat.masks_to_flows(np.zeros((8, 9), np.int32))
    assert mu.shape == (2, 8, 9) and not mu.any()


def test_object_centers_concave_object_inside():
    labels = odd_shapes()
    centers = heat.object_centers(labels, ndi.find_objects(labels))
    assert (labels[centers[:, 0], centers[:, 1]] == np.arange(1, labels.max() + 1)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, _ = cellpose("cellpose.dynamics").get_centers(labels, ndi.find_objects(labels))
    assert np.array_equal(centers, ref)


def test_renumber_first_appearance_like_fastremap():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 3, 9, 12, 40], size=(20, 30)).astype(np.int32)
    ours = dynamics.renumber(labels.copy())
    theirs = cellpose("fastremap").renumber(labels.copy())[0]
    assert np.array_equal(ours, theirs)


def nested_holes():
    lab = np.zeros((60, 80), np.int32)
    lab[5:25, 5:25] = 1
    lab[10:15, 10:15] = 0  # background hole
    lab[5:30, 40:70] = 2
    lab[10:20, 50:60] = 3  # lies in 2's hole
    lab[13:16, 53:56] = 0  # and has a hole of its own
    lab[40:55, 5:20] = 4
    lab[45, 10] = 0  # one-pixel hole
    lab[41:43, 30:31] = 5  # small (2 px)
    lab[40:50, 60:75] = 6
    lab[44:46, 66:70] = 0
    lab[44, 70] = 0
    lab[50:52, 40:42] = 7
    lab[51, 41] = 0  # L-shape: its bounding-box corner is background but not a hole
    return lab


@pytest.mark.parametrize("min_size", [15, 5, 0, -1])
def test_fill_holes_and_remove_small_masks_equals_cellpose(min_size):
    lab = nested_holes()
    ours = dynamics.fill_holes_and_remove_small_masks(lab.copy(), min_size=min_size)
    theirs = cellpose("cellpose.utils").fill_holes_and_remove_small_masks(lab.copy(), min_size=min_size)
    assert np.array_equal(ours, theirs)


def test_fill_holes_fills_background_holes():
    lab = nested_holes()
    out = dynamics.fill_holes_and_remove_small_masks(lab.copy(), min_size=0)
    assert out[12, 12] == out[5, 5] and out[45, 10] == out[40, 5]


def test_flow_errors_equal_cellpose():
    labels = voronoi_cells(seed=1)
    rng = np.random.default_rng(2)
    dP = (heat.masks_to_flows(labels) * 5 + rng.normal(0, 2.0, (2, *labels.shape))).astype(np.float32)
    ours = dynamics.flow_errors(labels, dP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, _ = cellpose("cellpose.dynamics").flow_error(labels, dP)
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, rtol=1e-10, atol=1e-12)
