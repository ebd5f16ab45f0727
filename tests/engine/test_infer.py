"""Tiled inference (cpsnake.engine.tiles, cpsnake.engine.infer, cpsnake.steps.infer): tile/untile round trip, parity
with cellpose 4's core.run_net, pooled tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import CellposeWrap, TinyConv

from cpsnake.engine import infer, tiles
from cpsnake.errors import CpsnakeError
from cpsnake.steps import infer as infer_step


def _image(c, y, x, seed=1):
    return np.random.default_rng(seed).random((c, y, x), dtype=np.float32)


def _cellpose_run_net(net, img, augment=False):
    from cellpose import core

    yf, _ = core.run_net(
        CellposeWrap(net), img.transpose(1, 2, 0)[None], batch_size=8, augment=augment, tile_overlap=0.1, bsize=256
    )
    return yf[0].transpose(2, 0, 1)  # Y X 3 -> 3 Y X


# --- tiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 100, 150), (2, 256, 256), (1, 300, 700), (3, 241, 513)])
@pytest.mark.parametrize("augment", [False, True])
def test_blending_identity_outputs_gives_back_the_image(shape, augment):
    img = _image(*shape)
    cut, layout = tiles.make_tiles(img, 256, 0.1, augment=augment)
    # an identity network sees flipped tiles and returns them flipped: blending must undo the flips
    out = tiles.blend_tiles(cut, layout, yx_channels=None)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("length", [1, 50, 239, 240, 241, 255, 256, 257, 700, 1000, 1023])
def test_padding_matches_cellpose(length):
    from cellpose import transforms

    ref = transforms.get_pad_yx(length, length, min_size=(256, 256))
    assert tiles.pad_widths(length, 256) == ref[:2]


def test_tile_count_follows_the_overlap_formula():
    # 1000 px pads to 1024 (multiple of 16 plus a 16 px margin): ceil(1.2 * 1024 / 256) = 5 tiles
    _, layout = tiles.make_tiles(np.zeros((1, 1000, 700), np.float32))
    assert layout.padded_shape == (1024, 720)
    assert len(layout.ystarts) == 5 and len(layout.xstarts) == 4
    assert layout.ystarts[0] == 0 and layout.ystarts[-1] == 1024 - 256


def test_taper_mask_matches_cellpose():
    from cellpose import transforms

    np.testing.assert_allclose(tiles.taper_mask(256), transforms._taper_mask(256, 256), rtol=0, atol=1e-15)


def test_overlap_outside_range_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        tiles.make_tiles(np.zeros((1, 300, 300), np.float32), 256, 0.7)


# --- parity with cellpose's run_net --------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(1, 100, 150), (3, 256, 256), (2, 1000, 700)], ids=["smaller-than-tile", "one-tile", "1000x700"]
)
def test_run_net_matches_cellpose(shape):
    torch.manual_seed(0)
    net = TinyConv()
    img = _image(*shape)
    ours = infer.run_net(net, img, batch_size=8, tile_overlap=0.1)
    ref = _cellpose_run_net(net, img)
    assert ours.shape == (3, *shape[1:]) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("shape", [(3, 256, 256), (1, 300, 520)])
def test_augmented_run_net_matches_cellpose(shape):
    net = TinyConv(seed=3)
    img = _image(*shape, seed=4)
    ours = infer.run_net(net, img, augment=True)
    ref = _cellpose_run_net(net, img, augment=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)
    # the augmentation changes the result (the net is not flip-equivariant), so the test can fail
    assert np.abs(ours - infer.run_net(net, img)).max() > 1e-3


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("src, dst", [((300, 410), (200, 273)), ((200, 273), (300, 410)), ((7, 5), (20, 3))])
def test_resize_matches_opencv_linear(opencv_without_ipp, channels, src, dst):
    img = np.random.default_rng(0).random((channels, *src), dtype=np.float32) * 3 - 1
    ref = opencv_without_ipp.resize(img.transpose(1, 2, 0), dst[::-1], interpolation=opencv_without_ipp.INTER_LINEAR)
    ref = ref.reshape(*dst, channels).transpose(2, 0, 1)
    np.testing.assert_allclose(tiles.resize(img, dst), ref, rtol=0, atol=3e-7)


def test_diameter_path_matches_cellpose(opencv_without_ipp):
    from types import SimpleNamespace

    from cellpose import models

    net = TinyConv(seed=5)
    img = _image(2, 300, 410, seed=6)
    d = 45.0
    ours = infer.predict(net, img, diameter=d)
    fake_model = SimpleNamespace(net=CellposeWrap(net), backbone="sam_vitl")
    dP, cellprob, _ = models.CellposeModel._run_net(
        fake_model, img.transpose(1, 2, 0)[None], rescale=30.0 / d, resample=True, bsize=256
    )
    ref = np.concatenate([dP[:, 0], cellprob])  # (2, 1, Y, X), (1, Y, X) -> (3, Y, X)
    assert ours.shape == ref.shape == (3, 300, 410)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)


def test_diameter_too_large_is_an_error():
    with pytest.raises(CpsnakeError, match="smaller diameter"):
        infer.predict(TinyConv(), _image(1, 10, 10), diameter=400)


def test_bfloat16_is_close_to_float32():
    net = TinyConv(seed=7)
    img = _image(1, 200, 300, seed=8)
    f32 = infer.run_net(net, img)
    bf16 = infer.run_net(TinyConv(seed=7), img, dtype=torch.bfloat16)
    assert bf16.dtype == np.float32
    assert 0 < np.abs(bf16 - f32).max() < 0.1


def test_callable_without_parameters_is_accepted():
    def net(x):
        return torch.stack([x[:, 0], -x[:, 1], x.sum(1)], 1)

    img = _image(2, 300, 400)
    out = infer.run_net(net, img)
    np.testing.assert_allclose(out, np.stack([img[0], -img[1], img.sum(0)]), rtol=0, atol=1e-6)


def test_progress_bar_goes_to_stderr(capsys):
    infer.run_net(lambda x: x, _image(3, 300, 300), progress=True)
    captured = capsys.readouterr()
    assert "tile" in captured.err and captured.out == ""


# --- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array, found",
    [
        (np.zeros((4, 20, 20), np.float32), "shape"),
        (np.zeros((2, 3, 20, 20), np.float32), "shape"),
        (np.zeros((1, 20, 20), np.uint16), "dtype"),
        (np.full((1, 20, 20), np.nan, np.float32), "NaN"),
    ],
    ids=["4-channels", "stack", "integers", "nan"],
)
def test_bad_input_is_one_error_line_and_no_output(tmp_path, capsys, array, found):
    import tifffile

    src, dst = tmp_path / "norm.tif", tmp_path / "flows.tif"
    tifffile.imwrite(src, array, photometric="minisblack")
    assert infer_step.main([str(src), str(dst), "--model", "unused.pt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cpsnake infer: error:") and found in err[0] and "norm.tif" in err[0]
    assert list(tmp_path.iterdir()) == [src]


def test_missing_input_is_one_error_line(tmp_path, capsys):
    assert infer_step.main([str(tmp_path / "nope.tif"), str(tmp_path / "f.tif"), "--model", "x"]) == 1
    assert "no such file" in capsys.readouterr().err


# --- with our Cellpose-SAM network (model.py) ----------------------------------------------------


def test_tiny_cpsam_run_net_matches_cellpose():
    from cpsnake.models.cpsam import build_cpsam

    torch.manual_seed(0)
    net = build_cpsam("tiny").eval()
    img = _image(1, 300, 200, seed=9)  # one channel: we pad with zeros, cellpose slices the patch kernel
    ours = infer.run_net(net, img)
    ref = _cellpose_run_net(net, img)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=2e-6)


def test_cli_writes_calibrated_flows_with_a_tiny_model(tmp_path):
    import tifffile

    from cpsnake import cli
    from cpsnake.io.flows import read_flows
    from cpsnake.io.tiff import write_tiff
    from cpsnake.models.cpsam import build_cpsam
    from cpsnake.models.registry import load_model
    from cpsnake.models.state import save_model

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    save_model(build_cpsam("tiny"), weights)
    img = _image(2, 90, 130, seed=10)
    src, dst = tmp_path / "norm.tif", tmp_path / "flows.tif"
    write_tiff(src, img, axes="CYX", pixel_size=(0.5, 0.25), unit="um")
    argv = ["infer", str(src), str(dst), "--model", str(weights), "--device", "cpu", "--diameter", "20"]
    assert cli.main(argv) == 0
    flows, meta = read_flows(dst)
    assert flows.shape == (3, 90, 130) and flows.dtype == np.float32 and np.isfinite(flows).all()
    assert meta["pixel_size"] == pytest.approx((0.5, 0.25)) and meta["unit"] in ("micron", "um", "µm")
    with tifffile.TiffFile(dst) as tif:
        assert tif.series[0].axes == "CYX"
    # the CLI computes what the API computes with the loaded model
    expected = infer.predict(load_model(weights), img, diameter=20)
    np.testing.assert_allclose(flows, expected, rtol=0, atol=1e-6)


def test_cli_refuses_overlap_outside_range(tmp_path, capsys):
    from cpsnake.io.tiff import write_tiff

    src = tmp_path / "norm.tif"
    write_tiff(src, _image(1, 20, 20), axes="CYX")
    assert infer_step.main([str(src), str(tmp_path / "f.tif"), "--model", "x", "--tile-overlap", "0.9"]) == 1
    assert "--tile-overlap 0.9" in capsys.readouterr().err
    assert not (tmp_path / "f.tif").exists()


# --- several images, tiles pooled ---------------------------------------------------------------------


class CountingNet(torch.nn.Module):
    """Wraps a network and records the batch size of every call."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.net(x)


MIXED = [(1, 60, 80), (3, 300, 200), (2, 256, 256), (1, 40, 500), (3, 130, 97)]


@pytest.mark.parametrize("augment", [False, True])
def test_pooled_tiles_equal_one_image_at_a_time(augment):
    """Images of 1-8 tiles share network batches of 32 (2 calls instead of 5+), with per-image diameters,
    and each image's flows equal ``predict`` on it alone (<= 1e-6)."""
    from cpsnake.models.cpsam import build_cpsam

    torch.manual_seed(0)
    net = CountingNet(build_cpsam("tiny", depth=1)).eval()
    images = [_image(*shape, seed=k) for k, shape in enumerate(MIXED)]
    diameters = [None, 20.0, None, 45.0, None]
    alone = [infer.predict(net, img, diameter=d, augment=augment) for img, d in zip(images, diameters)]
    calls_alone = len(net.calls)
    net.calls.clear()
    pooled = list(infer.predict_many(net, iter(images), diameters=diameters, batch_size=32, augment=augment))
    n_tiles = sum(net.calls)
    assert len(net.calls) == -(-n_tiles // 32) < calls_alone
    assert all(c == 32 for c in net.calls[:-1])
    for a, p, img in zip(alone, pooled, images):
        assert p.shape == (3, *img.shape[1:])
        np.testing.assert_allclose(p, a, rtol=0, atol=1e-6)


def test_pooled_reads_images_lazily_and_keeps_their_order():
    """Images are taken from the iterator as their tiles are needed, plus one ahead (being tiled in the
    background): with batches of one tile, the first image's flows come after reading at most two."""
    taken = []

    def source():
        for k, shape in enumerate(MIXED):
            taken.append(k)
            yield _image(*shape, seed=k)

    net = TinyConv()
    out = infer.predict_many(net, source(), batch_size=1)
    first = next(out)
    assert len(taken) <= 2
    rest = list(out)
    assert [f.shape[1:] for f in [first, *rest]] == [s[1:] for s in MIXED]
    np.testing.assert_allclose(rest[-1], infer.run_net(net, _image(*MIXED[-1], seed=4)), atol=1e-6)


def test_pooled_with_no_images_yields_nothing():
    assert list(infer.predict_many(TinyConv(), [])) == []
