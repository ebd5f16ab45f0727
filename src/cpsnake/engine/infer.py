"""Tiled network inference: a normalized image -> flows (dY, dX, cellprob logits). Arrays in, arrays out.

The input is a normalized float32 ``(C, Y, X)`` image (C = 1..3, :mod:`cpsnake.engine.normalize`); the flows
are float32 ``(3, Y, X)`` = dY, dX, cellprob logits at the input's size. The command that reads
NORMALIZED.tif and writes FLOWS.tif is :mod:`cpsnake.steps.infer`; the device and precision names of
``--device`` and ``--precision`` become torch's in :mod:`cpsnake.models.device`.

The method (as Cellpose-SAM / cellpose 4.x):

- Channels: fewer than 3 are padded with zero channels (the network sees ``(B, 3, 256, 256)``; for
  Cellpose-SAM this equals cellpose's use of the first C input channels of the patch embedding).
- Diameter ``d`` (optional): the image is resized by ``30 / d`` (bilinear, pixel-centre aligned) before the
  network and the three output maps are resized back to the input size afterwards. The flow *values* are not
  rescaled (as cellpose); ``cpsnake reconstruct --diameter`` follows them for ``200 * d / 30`` iterations.
- Padding, 256x256 tiles (overlap 0.1 by default), taper-weighted blending and the flipped tiles of
  ``--augment`` (cellpose's test-time augmentation) are cellpose 4's: see :mod:`cpsnake.engine.tiles`.
- A progress bar over tiles goes to stderr for long images.

Python API: :func:`predict_many` (several images, their tiles pooled into shared network batches),
:func:`predict` (one image, with a diameter), :func:`run_net` (one image at its own scale).

torch, and :mod:`cpsnake.models.unet` (which imports torch), are imported inside the functions that run the
network, so that importing this module does not import torch; tqdm too, as only a long image shows a bar.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from cpsnake.engine.tiles import BSIZE, TileLayout, blend_tiles, make_tiles, resize
from cpsnake.errors import CpsnakeError
from cpsnake.io import limits

if TYPE_CHECKING:
    import torch

__all__ = [
    "run_net",
    "predict",
    "predict_many",
    "resized_shape",
    "scaled_shape",
    "Tiling",
    "tiling",
    "net_device_dtype",
]

PROGRESS_MIN_TILES = 32  # progress=None shows a bar from this many tiles on


# --- the network over tiles ---------------------------------------------------------------------


def net_device_dtype(net: Callable) -> tuple["torch.device", "torch.dtype"]:
    """Device and dtype of a network's first floating-point parameter (cpu, float32 for a callable without any)."""
    import torch

    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    floats = [p for p in params if p.is_floating_point()]
    if floats:
        return floats[0].device, floats[0].dtype
    return torch.device("cpu"), torch.float32


@dataclass(frozen=True)
class Tiling:
    """How a network sees an image: tile side, whether small images are padded to a whole tile, input
    channels, and the diameter (px) it sees cells at. See :func:`tiling`."""

    bsize: int
    to_tile: bool
    in_chans: int
    diam_mean: float
    diam_labels: float | None = None  # the U-Net's scale when no diameter is given (cellpose 3)

    def scale(self, diameter: float | None) -> float | None:
        """Resize factor of the image for a cell ``diameter`` (None: as the family does without one);
        None when the image is used at its own size."""
        if diameter is None:
            diameter = self.diam_labels
            if diameter is None or diameter <= 0:
                return None
        factor = self.diam_mean / diameter
        return None if factor == 1.0 else factor


def tiling(net: Callable) -> Tiling:
    """The :class:`Tiling` of a network: Cellpose-SAM (and any other callable) 256 px tiles, small images
    padded to a tile, 3 channels, cells at 30 px, the image's own scale without a diameter; the
    classic U-Net 224 px tiles, small images not padded to a tile (cellpose 3), its input channels, its
    ``diam_mean``, and ``diam_mean / diam_labels`` without a diameter (cellpose 3's default rescale)."""
    from cpsnake.models.unet import TILE, UNet

    if isinstance(net, UNet):
        return Tiling(TILE, False, net.in_chans, float(net.diam_mean), float(net.diam_labels))
    return Tiling(BSIZE, True, 3, 30.0)


@dataclass
class _Pending:
    """One image on its way through the pooled tile stream (see :func:`predict_many`)."""

    tiles: np.ndarray  # (N, C, ty, tx) float32
    layout: TileLayout
    size: tuple[int, int] | None  # (Y, X) to resize the flows back to; None: no resizing
    outputs: np.ndarray  # (N, 3, ty, tx) float32, filled as batches come back
    done: int = 0  # tiles whose outputs are in
    bar: object = None  # tqdm progress bar, or None
    styles: np.ndarray | None = None  # (N, S) per-tile styles of a U-Net, when asked for


def _as_network_input(
    img: np.ndarray,
    diameter: float | None,
    tile_overlap: float,
    augment: bool,
    max_pixels: int | None = None,
    spec: Tiling = Tiling(BSIZE, True, 3, 30.0),
    scale: float | None = None,
    resample: bool = True,
) -> _Pending:
    """Resize for the diameter (or by ``scale``), pad with zero channels to the network's inputs, tile."""
    img = np.asarray(img)
    if img.ndim != 3 or not 1 <= img.shape[0] <= spec.in_chans:
        raise CpsnakeError(
            f"found an image of shape {tuple(img.shape)}; expected (C, Y, X) with C = 1..{spec.in_chans} channels for "
            f"this network; choose at most {spec.in_chans} with --channels"
        )
    if diameter is not None and not diameter > 0:
        raise ValueError(f"diameter {diameter}, expected a positive number of pixels")
    size = None
    scale = spec.scale(diameter) if scale is None else (None if scale == 1.0 else scale)
    if scale is not None:
        why = (
            f"diameter {diameter:g}: resizing by {spec.diam_mean:g}/{diameter:g}"
            if diameter
            else f"resizing by {scale:g}"
        )
        size = img.shape[1:] if resample else None
        img = resize(img, scaled_shape(img.shape, scale, max_pixels, why=why))
    if img.shape[0] < spec.in_chans:  # zero channels: for CPSAM the same as using the first C kernel channels
        img = np.concatenate([img, np.zeros((spec.in_chans - img.shape[0], *img.shape[1:]), img.dtype)])
    tiles, layout = make_tiles(img, spec.bsize, tile_overlap, augment=augment, to_tile=spec.to_tile)
    return _Pending(tiles, layout, size, np.empty((len(tiles), 3, *layout.tile), np.float32))


def _finish(item: _Pending):
    flows = blend_tiles(item.outputs, item.layout, yx_channels=(0, 1))
    flows = flows if item.size is None else resize(flows, item.size)
    if item.styles is None:
        return flows
    style = item.styles.sum(axis=0)  # the image's style: its tiles' styles summed, unit length (cellpose 3)
    return flows, style / (style**2).sum() ** 0.5


def predict_many(
    net: Callable,
    images: Iterable[np.ndarray],
    *,
    diameters: float | Sequence[float | None] | None = None,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
    max_pixels: int | None = None,
    scales: Sequence[float] | None = None,
    resample: bool = True,
    with_style: bool = False,
) -> Iterator[np.ndarray]:
    """Flows of several normalized images, their tiles pooled into shared network batches.

    Tiles of consecutive images fill each batch of ``batch_size`` tiles (32 tiles on a GPU even when
    every image has 1-4; tiles of different sizes, which a U-Net gets for images narrower than a tile,
    go to separate batches), and the next image is padded, resized and tiled in a background thread while
    the network runs. The tiling follows the network's family (:func:`tiling`). Each image's flows equal
    :func:`predict` on that image alone (the same tiles go
    through the same network; only which tiles share a batch differs).

    Parameters
    ----------
    net : torch.nn.Module or callable
        Maps a float tensor ``(B, 3, 256, 256)`` to ``(B, 3, 256, 256)`` = dY, dX, cellprob logits.
        A module is set to eval mode and, if ``device`` / ``dtype`` are given, moved there.
    images : iterable of (C, Y, X) ndarray
        Normalized images, C = 1..3 (fewer than 3 channels are padded with zero channels). Read lazily:
        at most the current and the next image are held besides the tiles in flight.
    diameters : float, sequence of (float or None), or None
        Typical cell diameter in pixels, for every image or one per image: the image is resized to
        ``(int(Y * 30 / d), int(X * 30 / d))`` before tiling and the flows resized back to (Y, X).
        Flow values are not rescaled.
    batch_size, tile_overlap, augment, device, dtype, progress
        As :func:`run_net`; ``progress`` counts the tiles of the image being prepared.
    max_pixels : int, optional
        Most samples an image resized for its diameter may hold (:func:`cpsnake.io.limits.max_pixels`).
    scales : sequence of float, optional
        Resize factor of each image, instead of one from ``diameters`` (cellpose's ``rescale``).
    resample : bool
        Resize the flows back to the image's size (True), or return them at the network's size.
    with_style : bool
        Also the image's style vector (U-Net only): its tiles' styles summed and scaled to unit length,
        as cellpose 3's ``run_net`` (for :mod:`cpsnake.engine.size`).

    Yields
    ------
    (3, Y, X) float32 ndarray per image, in the order given: dY, dX, cellprob logits at its size; with
    ``with_style`` a tuple (flows, style (S,) float32).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}, expected >= 1")
    if isinstance(net, torch.nn.Module):
        if device is not None or dtype is not None:
            net.to(device=device, dtype=dtype)
        net.eval()
    net_device, net_dtype = net_device_dtype(net)
    device = torch.device(device) if device is not None else net_device
    dtype = dtype if dtype is not None else net_dtype
    per_image = diameters if isinstance(diameters, (list, tuple)) else None
    source = iter(images)
    spec = tiling(net)
    spec_style = int(getattr(net, "nbase", [0])[-1])

    if with_style and not hasattr(net, "forward_with_style"):
        raise CpsnakeError(
            "a style vector needs a classic Cellpose U-Net; this network has none (Cellpose-SAM "
            "has no style): give --diameter, or use a U-Net model with its size model"
        )
    run = net.forward_with_style if with_style else net

    def prepare(k: int, img: np.ndarray) -> _Pending:
        d = per_image[k] if per_image is not None else diameters
        item = _as_network_input(
            img,
            d,
            tile_overlap,
            augment,
            max_pixels,
            spec,
            scale=None if scales is None else scales[k],
            resample=resample,
        )
        if with_style:
            item.styles = np.zeros((len(item.tiles), spec_style), np.float32)
        return item

    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():

        def submit(k: int):
            img = next(source, None)
            return None if img is None else pool.submit(prepare, k, img)

        queue: list[_Pending] = []  # images whose tiles are (partly) in flight, oldest first
        ahead, k, cursor = submit(0), 0, 0  # cursor: next tile of queue[-1] to send
        while True:
            batch: list[tuple[_Pending, int]] = []
            while len(batch) < batch_size:
                if not queue or cursor == len(queue[-1].tiles):
                    if ahead is None:
                        break
                    queue.append(ahead.result())  # errors of one image surface here, in order
                    k, cursor = k + 1, 0
                    ahead = submit(k)
                    _show(queue[-1], progress)
                    continue
                if batch and queue[-1].layout.tile != batch[0][0].layout.tile:
                    break  # tiles of another size (an image narrower than a U-Net tile): the next batch
                take = min(batch_size - len(batch), len(queue[-1].tiles) - cursor)
                batch += [(queue[-1], i) for i in range(cursor, cursor + take)]
                cursor += take
            if batch:
                x = torch.from_numpy(np.stack([item.tiles[i] for item, i in batch])).to(device=device, dtype=dtype)
                y = run(x)
                if with_style:
                    y, st = y
                    st = st.float().cpu().numpy()
                    for (item, i), v in zip(batch, st):
                        item.styles[i] = v
                if tuple(y.shape[1:]) != (3, *x.shape[2:]):
                    raise ValueError(
                        f"network output of shape {tuple(y.shape)}, expected (B, 3, {x.shape[2]}, {x.shape[3]})"
                    )
                y = y.float().cpu().numpy()
                for (item, i), out in zip(batch, y):
                    item.outputs[i] = out
                    item.done += 1
                    if item.bar is not None:
                        item.bar.update(1)
            while queue and queue[0].done == len(queue[0].tiles):
                item = queue.pop(0)
                if item.bar is not None:
                    item.bar.close()
                yield _finish(item)
            if not batch and ahead is None and not queue:
                return


def _show(item: _Pending, progress: bool | None) -> None:
    """Attach a tqdm bar over the image's tiles (stderr) when asked, or from PROGRESS_MIN_TILES on."""
    if progress if progress is not None else len(item.tiles) >= PROGRESS_MIN_TILES:
        from tqdm import tqdm

        item.bar = tqdm(total=len(item.tiles), unit="tile", desc="infer", mininterval=1.0)


def run_net(
    net: Callable,
    img: np.ndarray,
    *,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Run a tile network over a whole image: pad, tile, batch, blend.

    Parameters
    ----------
    net : torch.nn.Module or callable
        Maps a float tensor ``(B, 3, 256, 256)`` to ``(B, 3, 256, 256)`` = dY, dX, cellprob logits.
        A module is set to eval mode and, if ``device`` / ``dtype`` are given, moved there
        (``nn.Module.to`` works in place).
    img : (C, Y, X) ndarray
        Normalized image, C = 1..3 (fewer than 3 channels are padded with zero channels).
    batch_size : int
        Tiles per network call.
    tile_overlap : float
        Overlap fraction of neighbouring tiles, in [0.05, 0.5].
    augment : bool
        Flip test-time augmentation (see the module docstring).
    device, dtype : optional
        Where and in which precision the network runs; None: those of the net's parameters (cpu, float32
        for a callable without parameters).
    progress : bool or None
        Progress bar over tiles on stderr; None: only from ``PROGRESS_MIN_TILES`` tiles on.

    Returns
    -------
    (3, Y, X) float32 ndarray
        dY, dX, cellprob logits at the image's size.
    """
    own_size = tiling(net).diam_mean  # a diameter equal to the network's own: no resizing
    return predict(
        net,
        img,
        diameter=own_size,
        batch_size=batch_size,
        tile_overlap=tile_overlap,
        augment=augment,
        device=device,
        dtype=dtype,
        progress=progress,
    )


def resized_shape(
    shape: Sequence[int], diameter: float, max_pixels: int | None = None, *, base: float = 30.0
) -> tuple[int, int]:
    """(Y', X') of a (C, Y, X) image resized by ``base / diameter`` for the network (``base``: the diameter
    the network sees cells at, 30 for Cellpose-SAM); a CpsnakeError when that leaves no pixel or more
    than ``max_pixels`` samples (:func:`cpsnake.io.limits.max_pixels`)."""
    return scaled_shape(
        shape, base / diameter, max_pixels, why=f"diameter {diameter:g}: resizing by {base:g}/{diameter:g}"
    )


def scaled_shape(
    shape: Sequence[int], scale: float, max_pixels: int | None = None, *, why: str = ""
) -> tuple[int, int]:
    """(int(Y * scale), int(X * scale)) of a (C, Y, X) image (cellpose's rounding), checked as :func:`resized_shape`."""
    C, Y, X = (int(n) for n in shape[-3:])
    why = why or f"resizing by {scale:g}"
    Yr, Xr = int(Y * scale), int(X * scale)
    if Yr < 1 or Xr < 1:
        raise CpsnakeError(
            f"{why}: the {Y}x{X} image would have {Yr}x{Xr} pixels; expected at least 1x1; give a smaller diameter"
        )
    limit = limits.max_pixels(max_pixels)
    if Yr * Xr * C > limit:
        raise CpsnakeError(
            f"{why}: the {Y}x{X} image would have {Yr}x{Xr} pixels ({Yr * Xr * C:,} samples), more than the limit "
            f"of {limit:,}; expected the typical cell diameter in pixels (e.g. 17); give a larger diameter, or "
            f"raise the limit with {limits.RAISE}"
        )
    return Yr, Xr


def predict(
    net: Callable,
    img: np.ndarray,
    *,
    diameter: float | None = None,
    batch_size: int = 8,
    tile_overlap: float = 0.1,
    augment: bool = False,
    device: "str | torch.device | None" = None,
    dtype: "torch.dtype | None" = None,
    progress: bool | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Flows of a normalized image, optionally at the scale where cells are 30 px across.

    Parameters
    ----------
    img : (C, Y, X) ndarray
        Normalized image, C = 1..3.
    diameter : float, optional
        Typical cell diameter in pixels: the image is resized to ``(int(Y * 30 / d), int(X * 30 / d))``
        before the network and the outputs resized back to (Y, X). Flow values are not rescaled.
        The resized image may hold at most ``max_pixels`` samples (:func:`cpsnake.io.limits.max_pixels`).
    Other parameters : as :func:`run_net`.

    Returns
    -------
    (3, Y, X) float32 ndarray
        dY, dX, cellprob logits at the input's size.
    """
    return next(
        predict_many(
            net,
            [img],
            diameters=diameter,
            batch_size=batch_size,
            tile_overlap=tile_overlap,
            augment=augment,
            device=device,
            dtype=dtype,
            progress=progress,
            max_pixels=max_pixels,
        )
    )
