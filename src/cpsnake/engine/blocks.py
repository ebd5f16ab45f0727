"""Block-wise segmentation of one large 2-D image: where blocks are cut, and how they are assembled
into one label image.

An image is cut into square *cores* of ``block`` px that tile it exactly; each block works on its core
grown by ``halo`` px on every side (clipped to the image), its *read region*. Per block:

1. **Flows of the read region equal to the whole image's** (:func:`region_flows`). The network's output
   depends on where its tiles fall, so a block does not tile its own crop: it takes the tiles of the
   *whole image's* tile grid (:mod:`cpsnake.engine.tiles`: padding, starts, flips) that overlap the region, runs
   them, and blends them with the same taper weights in the same (row-major) order, so that each pixel's
   weighted sum is the whole image's. With a diameter, the resized image's pixels and the flows resized
   back are computed from the same bilinear taps as the whole image's resize (:func:`tiles.resize_region`).
   The flows equal :func:`cpsnake.engine.infer.predict`'s on the whole image up to the network's own batch
   arithmetic (tiles share batches differently; 0 difference on this CPU in the tests).
2. **Masks of the read region**, by :func:`cpsnake.engine.reconstruct.compute_masks` on those flows, with
   ``max_size_fraction`` taken of the *whole image's* pixels.
3. **Ownership**: a block keeps the objects whose centroid (``floor`` of the mean pixel row and column, in
   image coordinates) lies in its core. Cores tile the image, so an object is kept by exactly one block.
   An object lies wholly in its owner's read region when ``halo`` exceeds its largest distance from its
   centroid (and its pixels' flow paths stay inside); an owned object that reaches a side of the read
   region that is not the image's edge may be cut, and is reported with the fix (a larger halo).

The kept objects are written into one label image; a pixel already taken by an object of an earlier block
stays with it (counted and reported: it does not happen when each object is whole in its owner). Labels
are then numbered 1..N by their first pixel in raster order, as the whole-image reconstruction numbers
them, so block-wise labels equal the whole image's wherever the masks agree.

Shapes: images ``(C, Y, X)``, flows ``(3, Y, X)``, labels ``(Y, X)``; regions ``(y0, y1, x0, x1)``, half-open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cpsnake.bounds import AUTO_BLOCK
from cpsnake.errors import CpsnakeError

__all__ = [
    "Block",
    "block_grid",
    "auto_block_size",
    "default_halo",
    "region_flows",
    "owned_objects",
    "Assembler",
    "segment_blocks",
    "check_block_size",
    "seed_block",
    "finish_blocks",
    "halo_advice",
]

AUTO_WHOLE = 4096 * 4096  # auto: images up to this many pixels are segmented whole (above: cpsnake.bounds.AUTO_BLOCK)


@dataclass(frozen=True)
class Block:
    """One block: ``index`` (row, col) in the grid, its ``core`` and its ``read`` region ``(y0, y1, x0, x1)``."""

    index: tuple[int, int]
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]


def block_grid(shape: tuple[int, int], block: int, halo: int) -> list[Block]:
    """Blocks of an image of ``shape`` (Y, X), row-major: cores of ``block`` px (the last ones shorter) that
    tile the image, read regions grown by ``halo`` px and clipped to it."""
    Y, X = shape
    if block < 1 or halo < 0:
        raise ValueError(f"block {block}, halo {halo}: expected block >= 1 and halo >= 0")
    out = []
    for r, y0 in enumerate(range(0, Y, block)):
        for c, x0 in enumerate(range(0, X, block)):
            y1, x1 = min(y0 + block, Y), min(x0 + block, X)
            out.append(
                Block(
                    (r, c),
                    (y0, y1, x0, x1),
                    (max(0, y0 - halo), min(Y, y1 + halo), max(0, x0 - halo), min(X, x1 + halo)),
                )
            )
    return out


def default_halo(diameter: float | None) -> int:
    """``--block-halo`` when not given: 96 px (three times the 30 px cells Cellpose-SAM sees), or three times
    the cell ``diameter`` given: room for each object's radius and its pixels' paths to its centre."""
    return 96 if diameter in (None, "auto") else max(32, int(round(3 * float(diameter))))


def auto_block_size(shape: tuple[int, int]) -> int:
    """``--block-size`` when not given: 0 (the whole image at once) up to 4096 x 4096 pixels, else 2048."""
    return 0 if shape[0] * shape[1] <= AUTO_WHOLE else AUTO_BLOCK


# --- flows of a region, on the whole image's tile grid ---------------------------------------------


def region_flows(
    net,
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    region: tuple[int, int, int, int],
    *,
    channels: int,
    diameter: float | None = None,
    tile_overlap: float = 0.1,
    augment: bool = False,
    batch_size: int = 8,
    device=None,
    dtype=None,
) -> np.ndarray:
    """Flows ``(3, y1 - y0, x1 - x0)`` of ``region`` of a normalized image, equal to the whole image's.

    Parameters
    ----------
    net : the network (as :func:`cpsnake.engine.infer.predict_many`)
    read : ``read(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` float32, the normalized image's pixels
    shape : (Y, X) of the whole image
    region : (y0, y1, x0, x1) within it
    channels : C, the normalized image's channels (at most the network's inputs)
    diameter, tile_overlap, augment, batch_size, device, dtype : as :func:`cpsnake.engine.infer.predict`
    """
    import torch

    from cpsnake.engine import tiles as T
    from cpsnake.engine.infer import net_device_dtype, tiling

    spec = tiling(net)
    Y, X = shape
    y0, y1, x0, x1 = region
    scale = spec.scale(diameter)
    net_shape = (int(Y * scale), int(X * scale)) if scale is not None else (Y, X)  # cellpose's rounding (scaled_shape)
    # the network-space rows / columns the region's flows are resized from
    if scale is not None:
        ty0, ty1, _ = T._linear_taps(net_shape[0], Y)
        tx0, tx1, _ = T._linear_taps(net_shape[1], X)
        a0, a1 = int(ty0[y0:y1].min()), int(ty1[y0:y1].max()) + 1
        b0, b1 = int(tx0[x0:x1].min()), int(tx1[x0:x1].max()) + 1
    else:
        a0, a1, b0, b1 = y0, y1, x0, x1
    grid = T.tile_layout(net_shape, spec.bsize, tile_overlap, augment=augment, to_tile=spec.to_tile)
    top, _, left, _ = grid.pads
    ty, tx = grid.tile
    rows = [r for r, s in enumerate(grid.ystarts) if s < a1 + top and s + ty > a0 + top]
    cols = [c for c, s in enumerate(grid.xstarts) if s < b1 + left and s + tx > b0 + left]
    e0, e1 = grid.ystarts[rows[0]], grid.ystarts[rows[-1]] + ty  # extent, padded network coordinates
    f0, f1 = grid.xstarts[cols[0]], grid.xstarts[cols[-1]] + tx
    ext = np.zeros((spec.in_chans, e1 - e0, f1 - f0), np.float32)  # zero padding and zero channels
    v0, v1 = max(e0 - top, 0), min(e1 - top, net_shape[0])  # the part inside the network-space image
    w0, w1 = max(f0 - left, 0), min(f1 - left, net_shape[1])
    if scale is not None:
        part = T.resize_region(read, (Y, X), net_shape, (v0, v1, w0, w1))
    else:
        part = np.asarray(read(v0, v1, w0, w1), np.float32)
    ext[:channels, v0 + top - e0 : v1 + top - e0, w0 + left - f0 : w1 + left - f0] = part
    del part
    net_device, net_dtype = net_device_dtype(net)
    device = torch.device(device) if device is not None else net_device
    dtype = dtype if dtype is not None else net_dtype
    if isinstance(net, torch.nn.Module):
        net.to(device=device, dtype=dtype).eval()
    order = [(r, c) for r in rows for c in cols]  # row-major: the whole image's blending order
    outputs = np.empty((len(order), 3, ty, tx), np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = []
            for r, c in order[s : s + batch_size]:
                ys, xs = grid.ystarts[r] - e0, grid.xstarts[c] - f0
                tile = ext[:, ys : ys + ty, xs : xs + tx]
                flips = grid.flips(r, c)
                batch.append(np.flip(tile, flips) if flips else tile)
            x = torch.from_numpy(np.ascontiguousarray(np.stack(batch))).to(device=device, dtype=dtype)
            outputs[s : s + len(batch)] = net(x).float().cpu().numpy()
    del ext
    mask = T.taper_mask(ty, tx)
    acc = np.zeros((3, e1 - e0, f1 - f0), np.float64)
    weight = np.zeros((e1 - e0, f1 - f0), np.float64)
    for k, (r, c) in enumerate(order):
        out = T.unflip(outputs[k], grid.flips(r, c))
        ys, xs = grid.ystarts[r] - e0, grid.xstarts[c] - f0
        acc[:, ys : ys + ty, xs : xs + tx] += out * mask
        weight[ys : ys + ty, xs : xs + tx] += mask
    del outputs
    sl = (slice(a0 + top - e0, a1 + top - e0), slice(b0 + left - f0, b1 + left - f0))
    flows = (acc[(slice(None), *sl)] / weight[sl]).astype(np.float32)
    if scale is not None:
        flows = T.resize_region(
            lambda p, q, u, v: flows[:, p - a0 : q - a0, u - b0 : v - b0], net_shape, (Y, X), (y0, y1, x0, x1)
        )
    return flows


# --- ownership and assembly -------------------------------------------------------------------------


def owned_objects(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Which objects of a block's read-region labels the block keeps, and which of those may be cut.

    Parameters
    ----------
    labels : (h, w) int ndarray, the labels of ``block.read``
    block : Block
    shape : (Y, X) of the whole image

    Returns
    -------
    keep : (K,) int64, the labels whose centroid (floor of the mean row and column, image coordinates)
        lies in ``block.core``, ascending
    cut : (M,) int64, those of ``keep`` that reach a side of the read region that is not the image's edge
    """
    ry0, ry1, rx0, rx1 = block.read
    cy0, cy1, cx0, cx1 = block.core
    flat = labels.ravel()
    n = np.bincount(flat)
    ids = np.flatnonzero(n)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids.astype(np.int64), ids.astype(np.int64)
    h, w = labels.shape
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    sy = np.bincount(flat, weights=rows)[ids]
    sx = np.bincount(flat, weights=cols)[ids]
    cy = ry0 + np.floor_divide(sy, n[ids]).astype(np.int64)  # exact: sums of integers below 2**53
    cx = rx0 + np.floor_divide(sx, n[ids]).astype(np.int64)
    keep = ids[(cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)].astype(np.int64)
    Y, X = shape
    edges = []
    if ry0 > 0:
        edges.append(labels[0])
    if ry1 < Y:
        edges.append(labels[-1])
    if rx0 > 0:
        edges.append(labels[:, 0])
    if rx1 < X:
        edges.append(labels[:, -1])
    on_edge = np.unique(np.concatenate(edges)) if edges else np.zeros(0, labels.dtype)
    return keep, keep[np.isin(keep, on_edge)]


class Assembler:
    """Collects the objects each block keeps into one label image ``(Y, X)`` (see the module docstring).

    ``add(block, labels)`` for each block, in any order, then ``finish()`` numbers the objects by their
    first pixel in raster order and returns the labels (int32) and a report dict. ``labels``, when given, is
    where the label image is built instead of memory: a zeroed ``(Y, X)`` int32 array that reads and writes
    regions by slicing (e.g. a Zarr array on disk); only one block's region and one band of rows are held.
    """

    BAND = 1024  # rows per band of finish()'s renumbering pass

    def __init__(self, shape: tuple[int, int], labels=None):
        self.shape = tuple(shape)
        self.labels = np.zeros(self.shape, np.int32) if labels is None else labels  # or an on-disk int32 array
        self.first: list[int] = []  # raster index of each object's first pixel, by temporary id - 1
        self.cut: list[tuple[int, int]] = []  # (block row, block col) of each object that may be cut
        self.conflicts = 0  # pixels claimed by two blocks' objects

    def add(self, block: Block, labels: np.ndarray) -> int:
        """Write the objects ``block`` keeps from ``labels`` (the labels of its read region); returns how many."""
        keep, cut = owned_objects(labels, block, self.shape)
        if keep.size == 0:
            return 0
        ry0, ry1, rx0, rx1 = block.read
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[keep] = np.arange(len(self.first) + 1, len(self.first) + 1 + keep.size)
        new = lut[labels]
        target = np.array(self.labels[ry0:ry1, rx0:rx1])
        free = (new > 0) & (target == 0)
        self.conflicts += int(np.count_nonzero((new > 0) & (target != 0)))
        target[free] = new[free]
        self.labels[ry0:ry1, rx0:rx1] = target
        idx = np.flatnonzero(new.ravel())
        first = np.full(keep.size, np.iinfo(np.int64).max, np.int64)
        yy, xx = np.divmod(idx, rx1 - rx0)
        np.minimum.at(first, new.ravel()[idx] - lut[keep[0]], (ry0 + yy) * self.shape[1] + rx0 + xx)
        self.first.extend(first.tolist())
        self.cut.extend([block.index] * cut.size)
        return int(keep.size)

    def finish(self) -> tuple[np.ndarray, dict]:
        """Renumber in place, a band of rows at a time; returns the label array and the report."""
        order = np.argsort(np.asarray(self.first, np.int64), kind="stable")
        lut = np.zeros(len(self.first) + 1, np.int32)
        lut[order + 1] = np.arange(1, order.size + 1)
        present = np.zeros(len(self.first) + 1, bool)
        Y = self.shape[0]
        for y in range(0, Y, self.BAND):  # an object whose every pixel was taken earlier vanishes
            present[np.unique(np.asarray(self.labels[y : y + self.BAND]))] = True
        if not present[1:].all():  # close the gaps: ids stay in first-pixel order
            lut[order + 1] = 0
            kept = order[present[order + 1]]
            lut[kept + 1] = np.arange(1, kept.size + 1)
        for y in range(0, Y, self.BAND):
            self.labels[y : y + self.BAND] = lut[np.asarray(self.labels[y : y + self.BAND])]
        report = {"objects": int(present[1:].sum()), "cut": len(self.cut), "conflict_pixels": self.conflicts}
        return self.labels, report


# --- the whole chain, block by block ----------------------------------------------------------------


def segment_blocks(
    net,
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    *,
    channels: int,
    block: int,
    halo: int,
    diameter: float | None = None,
    tile_overlap: float = 0.1,
    augment: bool = False,
    batch_size: int = 8,
    device=None,
    dtype=None,
    cellprob_threshold: float = 0.0,
    flow_threshold: float = 0.4,
    niter: int | None = None,
    min_size: int = 15,
    max_size_fraction: float = 0.4,
    reconstruct_device=None,
    scratch: str | None = None,
    progress: Callable[[str, Block], None] | None = None,
    labels=None,
) -> tuple[np.ndarray, dict]:
    """Labels ``(Y, X)`` int32 of a normalized image segmented block by block (see the module docstring).

    ``read``, ``shape``, ``channels`` and the network options as :func:`region_flows`; the reconstruction
    options as :func:`cpsnake.engine.reconstruct.compute_masks` (``niter`` None: 200 / the network's scale, as
    cellpose); ``block`` the core side and ``halo`` the context in pixels.

    Two passes, because one step of the reconstruction is not local: the flow-error check diffuses every
    mask's own flows for ``2 * max(h + w + 2)`` steps, the maximum over *all* masks of the image (cellpose's
    rule). Pass 1, per block: flows, then masks up to the check (:func:`cpsnake.engine.reconstruct.seed_masks`);
    the block's flows and masks go to a scratch folder (``scratch``, default the system's temporary
    folder; one block's worth of memory), and the largest owned mask sets the block's diffusion length.
    Pass 2, per block: the check with the whole image's diffusion length, holes, min size
    (:func:`cpsnake.engine.reconstruct.finish_masks`), ownership and assembly.

    ``labels``: where the label image is built (see :class:`Assembler`; default in memory), e.g. a Zarr array
    on disk, so that memory follows the block and not the image.

    Returns the labels and a report: ``blocks``, ``block``, ``halo``, ``objects``, ``cut`` (owned objects
    that reach their read region's edge: possibly cut, raise the halo) and ``conflict_pixels``.
    """
    from cpsnake.io.outputs import scratch_folder

    check_block_size(net, block)
    store = labels
    check = flow_threshold is not None and flow_threshold > 0
    grid = block_grid(shape, block, halo)
    heat_niter = 0
    with scratch_folder("cpsnake-blocks-", scratch) as tmp:
        for k, b in enumerate(grid):  # pass 1: flows and masks up to the flow-error check
            if progress is not None:
                progress("flows", b)
            seeds, dP, n = seed_block(
                net,
                read,
                shape,
                b,
                channels=channels,
                diameter=diameter,
                tile_overlap=tile_overlap,
                augment=augment,
                batch_size=batch_size,
                device=device,
                dtype=dtype,
                cellprob_threshold=cellprob_threshold,
                niter=niter,
                max_size_fraction=max_size_fraction,
                keep_flows=check,
            )
            heat_niter = max(heat_niter, n)
            np.save(f"{tmp}/{k}_labels.npy", seeds)
            if check:
                np.save(f"{tmp}/{k}_dP.npy", dP)
            del seeds, dP

        def load(k):
            return np.load(f"{tmp}/{k}_labels.npy"), np.load(f"{tmp}/{k}_dP.npy") if check else None

        out, report = finish_blocks(
            grid,
            load,
            shape,
            heat_niter,
            flow_threshold=flow_threshold,
            min_size=min_size,
            reconstruct_device=reconstruct_device,
            labels=store,
            progress=progress,
        )
    report.update(block=block, halo=halo)
    return out, report


def check_block_size(net, block: int) -> None:
    """A block must hold at least 2 of the network's tiles: one clear line otherwise."""
    from cpsnake.engine.infer import tiling

    if block < 2 * tiling(net).bsize:
        raise CpsnakeError(
            f"block size {block} px, expected at least 2 tiles ({2 * tiling(net).bsize} px) for this "
            "network; give a larger --block-size, or 0 for the whole image at once"
        )


def seed_block(
    net,
    read: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    block: Block,
    *,
    channels: int,
    diameter: float | None = None,
    tile_overlap: float = 0.1,
    augment: bool = False,
    batch_size: int = 8,
    device=None,
    dtype=None,
    cellprob_threshold: float = 0.0,
    niter: int | None = None,
    max_size_fraction: float = 0.4,
    keep_flows: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pass 1 of one block: its flows and its masks up to the flow-error check.

    Returns the masks of ``block.read`` ``(h, w)`` int32, its flows ``(2, h, w)`` float32 (dY, dX; None
    unless ``keep_flows``) and the diffusion length its owned masks ask for, ``2 * max(h + w + 2)`` of their
    bounding boxes (0 without masks): pass 2 uses the maximum over all blocks. Options as
    :func:`segment_blocks`.
    """
    from scipy import ndimage as ndi

    from cpsnake.engine.infer import tiling
    from cpsnake.engine.reconstruct import seed_masks

    Y, X = shape
    niter = niter or int(200 / (tiling(net).scale(diameter) or 1.0))
    flows = region_flows(
        net,
        read,
        shape,
        block.read,
        channels=channels,
        diameter=diameter,
        tile_overlap=tile_overlap,
        augment=augment,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    area = (block.read[1] - block.read[0]) * (block.read[3] - block.read[2])
    labels = seed_masks(
        flows,
        cellprob_threshold=cellprob_threshold,
        niter=niter,
        max_size_fraction=max_size_fraction * (Y * X) / area,
        origin=block.read[::2],
        full_shape=shape,
    )
    keep, _ = owned_objects(labels, block, shape)
    slices = ndi.find_objects(labels)
    heat_niter = 0
    for i in keep.tolist():
        sy, sx = slices[i - 1]
        heat_niter = max(heat_niter, 2 * (sy.stop - sy.start + sx.stop - sx.start + 2))
    return labels, (np.ascontiguousarray(flows[:2]) if keep_flows else None), heat_niter


def finish_blocks(
    grid: list[Block],
    load: Callable[[int], tuple[np.ndarray, np.ndarray | None]],
    shape: tuple[int, int],
    heat_niter: int,
    *,
    flow_threshold: float = 0.4,
    min_size: int = 15,
    reconstruct_device=None,
    labels=None,
    progress: Callable[[str, Block], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Pass 2: each block's masks (``load(k) -> (masks, dP)`` of :func:`seed_block`) through the flow-error
    check with the whole image's diffusion length ``heat_niter``, holes and min size, then ownership and
    assembly (:class:`Assembler`, building in ``labels`` when given). Returns the labels and the report."""
    from cpsnake.engine.reconstruct import finish_masks

    check = flow_threshold is not None and flow_threshold > 0
    assembler = Assembler(shape, labels)
    for k, b in enumerate(grid):
        if progress is not None:
            progress("masks", b)
        seeds, dP = load(k)
        masks = finish_masks(
            seeds,
            dP if check else None,
            flow_threshold=flow_threshold if check else 0,
            min_size=min_size,
            device=reconstruct_device,
            heat_niter=heat_niter or None,
        )
        assembler.add(b, masks)
    out, report = assembler.finish()
    report.update(blocks=len(grid))
    return out, report


def halo_advice(report: dict) -> str | None:
    """The warning for a report with possibly cut objects (None when there are none)."""
    if not report.get("cut"):
        return None
    return (
        f"{report['cut']} object(s) reach the edge of their block's context (halo {report['halo']} px) and may be "
        f"cut at a block border; expected every object within the halo; rerun with --block-halo "
        f"{max(2 * report['halo'], 64)} (about the largest cell diameter), or --block-size 0 if the image fits"
    )
