"""The classic Cellpose family (cpsnake.models.unet): parity with cellpose 3.1.1.3's CPnet and run_net.

cellpose 3 and 4 share a package name, so cellpose 3 runs in a subprocess with ``.venv/cellpose3`` (where
`make test` installs it with ``pip install --no-deps --target``) on its PYTHONPATH: tests/cellpose3/reference.py,
through the ``cp3`` fixture (conftest.py). Its networks get seeded random weights *and* BatchNorm running
statistics, so that every layer's inference-time normalisation is compared.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cpsnake.engine import infer
from cpsnake.errors import CpsnakeError
from cpsnake.models.registry import family_of, load_model
from cpsnake.models.state import save_model
from cpsnake.models.unet import UNet, build_unet


@pytest.fixture(scope="module")
def cp3_net(cp3, tmp_path_factory):
    """A cellpose 3 default-width network file (seeded random weights, diam_labels 24) and ours loaded from it."""
    state = tmp_path_factory.mktemp("net") / "cp3_random.pt"
    cp3("make_net", state=str(state), nbase=[2, 32, 64, 128, 256], seed=3, diam_mean=30.0, diam_labels=24.0)
    net = load_model(state)
    assert isinstance(net, UNet)
    return state, net


def assert_close(ours, ref, tol=1e-4):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max abs difference {err:.3g} (reference range {float(ref.max() - ref.min()):.3g})"
    return err


def test_network_and_style_equal_cellpose3(cp3, cp3_net, tmp_path):
    state, net = cp3_net
    assert family_of(torch.load(state, weights_only=True)) == "unet"
    assert net.nbase == [2, 32, 64, 128, 256] and float(net.diam_labels) == 24.0
    for shape in [(2, 2, 224, 224), (1, 2, 96, 160)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        np.save(tmp_path / "x.npy", x)
        ref = cp3("net", state=str(state), nbase=[2, 32, 64, 128, 256], inputs=str(tmp_path / "x.npy"))
        with torch.no_grad():
            y, style = net.forward_with_style(torch.from_numpy(x))
        assert_close(y.numpy(), ref["y"], 1e-4)
        assert_close(style.numpy(), ref["style"], 1e-6)
        assert np.abs(ref["y"]).max() > 0.1  # the comparison compares something


@pytest.mark.parametrize(
    "shape, augment, rsz",
    [
        ((2, 100, 150), False, None),  # smaller than a tile: the U-Net runs on the padded image, not a 224 tile
        ((2, 500, 400), False, None),
        ((2, 300, 260), True, None),
        ((1, 180, 90), True, None),  # one channel (the second is zero) and narrower than a tile, augmented
        ((2, 300, 260), False, 0.6),  # resized for a diameter
    ],
)
def test_whole_image_flows_equal_cellpose3_run_net(cp3, cp3_net, tmp_path, shape, augment, rsz):
    state, net = cp3_net
    img = np.random.default_rng(1).random(shape, dtype=np.float32)
    two = np.concatenate([img, np.zeros((2 - shape[0], *shape[1:]), np.float32)])
    np.save(tmp_path / "img.npy", two.transpose(1, 2, 0)[None])  # 1 Y X 2
    ref = cp3(
        "run_net",
        state=str(state),
        nbase=[2, 32, 64, 128, 256],
        image=str(tmp_path / "img.npy"),
        augment=augment,
        tile_overlap=0.1,
        rsz=rsz,
    )
    yref = ref["y"][0].transpose(2, 0, 1)  # Y X 3 -> 3 Y X at the (resized) size
    if rsz is None:
        ours = infer.run_net(net, img, augment=augment)
    else:  # cellpose 3's run_net works at the resized size: compare there
        from cpsnake.engine.tiles import resize

        Yr, Xr = int(shape[1] * rsz), int(shape[2] * rsz)
        ours = infer.run_net(net, resize(img, (Yr, Xr)), augment=augment)
    assert_close(ours, yref, 1e-4)


def test_a_file_of_neither_family_is_one_error(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "odd.pt")
    with pytest.raises(
        CpsnakeError, match=r"found keys conv.weight .*expected a Cellpose-SAM model .* or a cellpose 1-3 U-Net"
    ):
        load_model(tmp_path / "odd.pt")


def test_missing_and_extra_keys_are_one_error(tmp_path):
    state = build_unet().state_dict()
    del state["output.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        CpsnakeError,
        match=r"missing keys output.2.bias; unexpected keys extra.weight; expected a complete cellpose 3 U-Net",
    ):
        load_model(tmp_path / "bad.pt")


def test_save_and_load_round_trip_keeps_batchnorm_counters(tmp_path):
    net = build_unet(nbase=(2, 8, 16), diam_mean=17.0)
    save_model(net, tmp_path / "u.pt")
    sd = torch.load(tmp_path / "u.pt", weights_only=True)
    assert sd["output.0.num_batches_tracked"].dtype == torch.int64
    back = load_model(tmp_path / "u.pt")
    assert back.nbase == [2, 8, 16] and float(back.diam_mean) == 17.0
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net.eval()(x))


@pytest.mark.parametrize("case", ["grey, no diameter (diam_labels)", "grey, diameter 17", "colour [2, 3]", "augment"])
def test_normalized_image_to_flows_equals_cellpose3_eval(cp3, cp3_net, tmp_path, case):
    """Normalization, channels, the scale (diam_mean / diameter, or diam_mean / diam_labels without a
    diameter: 30/24 here) and resizing back, against ``CellposeModel.eval`` (compute_masks off).

    cellpose 3's ``channels=[chan, chan2]`` (1-based, 0 = grey) is ``--channels chan-1,chan2-1`` here;
    ``[0, 0]`` on a grey image is the default (one channel, the second input zero).
    """
    from cpsnake.engine.normalize import normalize, select_channels

    state, net = cp3_net
    rng = np.random.default_rng(2)
    if case.startswith("colour"):
        img = rng.gamma(2.0, 300, (3, 210, 260)).astype(np.uint16)
        channels, ours_channels, axis = [2, 3], [1, 2], 0
    else:
        img = rng.gamma(2.0, 300, (1, 210, 260)).astype(np.uint16)
        channels, ours_channels, axis = [0, 0], None, None
    diameter = 17.0 if "17" in case else None
    np.save(tmp_path / "img.npy", img if axis == 0 else img[0])
    ref = cp3(
        "eval",
        state=str(state),
        image=str(tmp_path / "img.npy"),
        channels=channels,
        diameter=diameter,
        augment=case == "augment",
        channel_axis=axis,
    )
    x, _ = normalize(select_channels(img, ours_channels))
    flows = infer.predict(net, x, diameter=diameter, augment=case == "augment")
    assert_close(flows[:2], ref["dP"], 1e-4)
    assert_close(flows[2], ref["cellprob"], 1e-4)


def test_stack_to_3d_flows_equals_cellpose3_do_3d(cp3, cp3_net, tmp_path, opencv_without_ipp):
    """`--do-3d` with a classic U-Net: the whole stack normalized at once (norm3D), resized for diameter 17
    (Y, X) and anisotropy 2 (Z), the network over the YX, ZY and ZX planes (224 px tiles), views summed,
    resized back, against cellpose 3.1.1.3's ``CellposeModel.eval(do_3D=True)`` (compute_masks off): dZ,
    dY, dX and cellprob. (Catches: anisotropy left out, cellpose 4's 256 px tiles, views averaged.)"""
    diameter, anisotropy = 17.0, 2.0
    from cpsnake.engine import infer3d
    from cpsnake.engine.normalize import normalize

    state, net = cp3_net
    stack = np.random.default_rng(4).gamma(2.0, 300, (6, 60, 70)).astype(np.uint16)
    np.save(tmp_path / "stack.npy", stack)
    ref = cp3(
        "eval3d",
        state=str(state),
        image=str(tmp_path / "stack.npy"),
        channels=[0, 0],
        diameter=diameter,
        anisotropy=anisotropy,
    )
    x, _ = normalize(stack[np.newaxis])  # (C, Z, Y, X): one channel's percentiles over every plane
    flows = infer3d.predict_3d(net, x.transpose(1, 0, 2, 3), diameter=diameter, anisotropy=anisotropy)
    assert_close(flows[:3], ref["dP"], 1e-4)
    assert_close(flows[3], ref["cellprob"], 1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_flow_following_without_interpolation_equals_cellpose3(cp3, tmp_path, seed):
    """``interp=False`` follows the flows as cellpose 3's ``steps2D`` (what its size estimation uses): the
    same end points. (The masks made from them then go through cpsnake's seeding, which is cellpose 4's.)"""
    from synthetic import noisy_flows, voronoi_cells

    from cpsnake.engine import dynamics

    flows = noisy_flows(voronoi_cells((128, 160), spacing=22, seed=seed), seed)
    step = (flows[:2] * (flows[2] > 0) / np.float32(5)).astype(np.float32)
    np.save(tmp_path / "s.npy", step)
    np.save(tmp_path / "c.npy", flows[2])
    ref = cp3("follow", step=str(tmp_path / "s.npy"), cellprob=str(tmp_path / "c.npy"), niter=200)
    ours = dynamics.follow_flows(step, np.nonzero(flows[2] > 0), 200, interp=False)
    np.testing.assert_array_equal(ours, ref["p"])
    assert not np.array_equal(ours, dynamics.follow_flows(step, np.nonzero(flows[2] > 0), 200))  # another algorithm


def _size_file(path, style_channels=256, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "A": rng.normal(0, 0.5, style_channels),
        "smean": rng.normal(0, 0.05, style_channels),
        "ymean": np.float64(-0.1),
        "diam_mean": 30.0,
    }
    np.save(path, params)  # what cellpose 3 writes: a pickled dict in a .npy
    return path


def test_size_from_style_equals_cellpose3_size_model(cp3, cp3_net, tmp_path):
    """``--diameter auto``, pass 1 (style -> diameter by the size model's regression) as ``SizeModel.eval``.

    Pass 2 (masks at that scale, their median diameter) reconstructs with cpsnake's own (cellpose 4's)
    seeding, which differs from cellpose 3's; it is checked against cellpose 3 with a trained model in
    test_bundled_unet.py. A random network finds no masks, so both fall back to diam_mean here.
    """
    from cpsnake.engine import size
    from cpsnake.engine.normalize import normalize

    state, net = cp3_net
    sfile = _size_file(tmp_path / "size_cp3_random.npy")
    img = np.random.default_rng(5).gamma(2.0, 300, (1, 230, 250)).astype(np.uint16)
    np.save(tmp_path / "img.npy", img[0])
    ref = cp3("size", state=str(state), size=str(sfile), image=str(tmp_path / "img.npy"), channels=[0, 0])
    params = size.read_size_model(sfile, style_channels=256)
    diam, diam_style = size.estimate_diameter(net, normalize(img)[0], params)
    assert diam_style == pytest.approx(float(ref["diam_style"]), rel=1e-4)
    assert diam_style != pytest.approx(30.0, rel=1e-3)  # the regression moved it
    assert diam == pytest.approx(float(ref["diam"]), rel=1e-6)


def test_size_model_files_are_read_without_unpickling_objects(tmp_path):
    from cpsnake.engine import size

    assert size.size_model_path(tmp_path / "cyto3") == tmp_path / "size_cyto3.npy"
    assert size.size_model_path(tmp_path / "m.pt") == tmp_path / "size_m.npy"
    size.read_size_model(_size_file(tmp_path / "ok.npy"), style_channels=256)
    with pytest.raises(CpsnakeError, match="styles of 256 values .*expected 128"):
        size.read_size_model(tmp_path / "ok.npy", style_channels=128)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    np.save(tmp_path / "evil.npy", np.array({"A": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(CpsnakeError, match="found no cellpose size model .*not allowed"):
        size.read_size_model(tmp_path / "evil.npy")
    assert not (tmp_path / "pwned").exists()
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(CpsnakeError, match="not a dict"):
        size.read_size_model(tmp_path / "plain.npy")


# --- the U-Net in the pipeline ---------------------------------------------------------------------------


def test_step_commands_and_segment_take_a_unet_and_follow_its_scale(unet_file, tmp_path):
    """`cpsnake infer --diameter 34` on a diam_mean-17 U-Net resizes by 17/34 and records it; `reconstruct`
    then follows 400 steps (cellpose 3: 200 / rescale); `segment` gives the same labels."""
    import tifffile

    from cpsnake import cli
    from cpsnake.io.flows import read_flows
    from cpsnake.io.labels import read_labels

    img = np.random.default_rng(0).gamma(2.0, 300, (90, 120)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", img)
    find = ["--flow-threshold", "0", "--cellprob-threshold", "-0.5"]
    assert cli.main(["normalize", str(tmp_path / "img.tif"), str(tmp_path / "n.tif")]) == 0
    assert (
        cli.main(
            ["infer", str(tmp_path / "n.tif"), str(tmp_path / "f.tif"), "--model", str(unet_file), "--diameter", "34"]
        )
        == 0
    )
    flows, meta = read_flows(tmp_path / "f.tif")
    assert meta["network_scale"] == pytest.approx(0.5)
    assert cli.main(["reconstruct", str(tmp_path / "f.tif"), str(tmp_path / "m.tif"), *find]) == 0
    from cpsnake.engine.reconstruct import compute_masks

    expected = compute_masks(flows, niter=400, flow_threshold=0, cellprob_threshold=-0.5)
    assert np.array_equal(read_labels(tmp_path / "m.tif")[0], expected)
    assert not np.array_equal(expected, compute_masks(flows, niter=200, flow_threshold=0, cellprob_threshold=-0.5))
    out = tmp_path / "seg"
    assert (
        cli.main(
            [
                "segment",
                str(tmp_path / "img.tif"),
                "--out",
                str(out),
                "--model",
                str(unet_file),
                "--diameter",
                "34",
                *find,
            ]
        )
        == 0
    )
    assert np.array_equal(read_labels(out / "masks" / "img.tif")[0], expected)
    assert json.loads((out / "provenance" / "img.json").read_text())["model"]["family"] == "unet"


def test_diameter_auto_errors_are_one_line(unet_file, tiny_model, tmp_path, capsys):
    import tifffile

    from cpsnake import cli

    tifffile.imwrite(tmp_path / "img.tif", np.random.default_rng(0).integers(0, 999, (64, 64)).astype(np.uint16))
    assert (
        cli.main(
            [
                "segment",
                str(tmp_path / "img.tif"),
                "--out",
                str(tmp_path / "a"),
                "--model",
                str(tiny_model),
                "--diameter",
                "auto",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "found a Cellpose-SAM model, expected a classic Cellpose U-Net with a size model" in err[0]
    assert (
        cli.main(
            [
                "segment",
                str(tmp_path / "img.tif"),
                "--out",
                str(tmp_path / "b"),
                "--model",
                str(unet_file),
                "--diameter",
                "auto",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size_unet17.npy: no size model" in err[0]
    _size_file(tmp_path / "small_style.npy", style_channels=8)
    assert (
        cli.main(
            [
                "segment",
                str(tmp_path / "img.tif"),
                "--out",
                str(tmp_path / "c"),
                "--model",
                str(unet_file),
                "--diameter",
                "auto",
                "--size-model",
                str(tmp_path / "small_style.npy"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "styles of 8 values" in err[0] and "expected 32 values" in err[0]
    assert not (tmp_path / "c").exists()
