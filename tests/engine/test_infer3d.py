"""The network over a stack in 3-D (cpsnake.engine.infer3d): parity with cellpose 4's do_3D path (_run_net + run_3D)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from nets import CellposeWrap, TinyConv
from reference import cellpose

from cpsnake.engine import infer3d
from cpsnake.errors import CpsnakeError


def _stack(z, c, y, x, seed=3):
    return np.random.default_rng(seed).random((z, c, y, x), dtype=np.float32)


def _cellpose_3d(net, stack, *, diameter=None, anisotropy=None):
    """cellpose 4.2.1.1's CellposeModel._run_net(do_3D=True) on a (Z, C, Y, X) stack -> (4, Z, Y, X)."""
    models = cellpose("cellpose.models")
    fake = SimpleNamespace(net=CellposeWrap(net), backbone="sam_vitl")
    rescale = 1.0 if diameter is None else 30.0 / diameter
    dP, cellprob, _ = models.CellposeModel._run_net(
        fake, stack.transpose(0, 2, 3, 1), rescale=rescale, resample=True, bsize=256, do_3D=True, anisotropy=anisotropy
    )
    return np.concatenate([dP, cellprob[None]])


@pytest.mark.parametrize(
    "shape, diameter, anisotropy",
    [
        ((6, 1, 40, 50), None, None),  # planes smaller than a tile, no resizing
        ((5, 2, 70, 300), None, 2.0),  # Z stretched, two tiles along X
        ((7, 3, 60, 45), 45.0, 1.5),  # every axis resized, and back
    ],
)
def test_predict_3d_matches_cellpose_run_3d(opencv_without_ipp, shape, diameter, anisotropy):
    net = TinyConv(seed=11)
    stack = _stack(*shape)
    ours = infer3d.predict_3d(net, stack, diameter=diameter, anisotropy=anisotropy)
    ref = _cellpose_3d(net, stack, diameter=diameter, anisotropy=anisotropy)
    assert ours.shape == ref.shape == (4, shape[0], shape[2], shape[3]) and ours.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-5 * scale, np.abs(ours - ref).max() / scale


def test_views_are_summed_not_averaged():
    """A network that answers 1 everywhere: dZ, dY, dX = 2 (two views each), cellprob = 3 (three views)."""
    import torch

    def ones(x):
        return torch.ones((x.shape[0], 3, *x.shape[2:]), dtype=x.dtype)

    flows = infer3d.predict_3d(ones, _stack(3, 1, 20, 24))
    assert np.array_equal(flows[:3], np.full((3, 3, 20, 24), 2, np.float32))
    assert np.array_equal(flows[3], np.full((3, 20, 24), 3, np.float32))


def test_resize_3d_is_yx_then_z(opencv_without_ipp):
    transforms = cellpose("cellpose.transforms")
    stack = _stack(5, 2, 30, 41)
    ours = infer3d.resize_3d(stack, (9, 17, 60))
    ref = transforms.resize_image_3d(stack.transpose(0, 2, 3, 1), (9, 17, 60)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_smooth_flows_3d_smooths_flows_not_cellprob():
    flows = np.zeros((4, 9, 9, 9), np.float32)
    flows[:, 4, 4, 4] = 1.0
    out = infer3d.smooth_flows_3d(flows.copy(), [2, 0, 0])
    assert out[3, 4, 4, 4] == 1.0 and out[0, 3, 4, 4] > 0 and out[0, 4, 3, 4] == 0  # along z only
    assert np.array_equal(infer3d.smooth_flows_3d(flows.copy(), 0), flows)
    with pytest.raises(CpsnakeError, match="flow3d-smooth"):
        infer3d.smooth_flows_3d(flows, [1, 2])


@pytest.mark.parametrize(
    "stack, anisotropy, match",
    [
        (np.zeros((1, 1, 20, 20), np.float32), None, "at least 2 planes"),
        (np.zeros((20, 20), np.float32), None, r"expected a stack \(Z, C, Y, X\)"),
        (np.zeros((3, 1, 20, 20), np.float32), 0.0, "anisotropy 0.0; expected a positive number"),
        (np.zeros((3, 1, 20, 20), np.float32), -1.0, "anisotropy -1.0"),
        (np.zeros((3, 1, 20, 20), np.float32), 0.1, r"leaves 0 x 20 x 20 voxels"),
    ],
)
def test_bad_stacks_are_one_clear_error(stack, anisotropy, match):
    with pytest.raises(CpsnakeError, match=match):
        infer3d.predict_3d(TinyConv(), stack, anisotropy=anisotropy)
