"""Synthetic label images shared by the reconstruction tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cpsnake.engine import dynamics, heat


def voronoi_cells(shape=(96, 128), spacing=24, seed=0, radius=(8, 12)):
    """Touching roundish cells: jittered grid seeds, Voronoi regions clipped at a random radius. (Y, X) int32."""
    rng = np.random.default_rng(seed)
    gy, gx = np.meshgrid(
        np.arange(spacing / 2, shape[0], spacing), np.arange(spacing / 2, shape[1], spacing), indexing="ij"
    )
    pts = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-spacing / 4, spacing / 4, (gy.size, 2))
    pts = np.clip(np.round(pts).astype(int), 0, np.array(shape) - 1)
    free = np.ones(shape, bool)
    free[pts[:, 0], pts[:, 1]] = False
    dist, (iy, ix) = ndi.distance_transform_edt(free, return_indices=True)
    seed_label = np.zeros(shape, np.int32)
    seed_label[pts[:, 0], pts[:, 1]] = np.arange(1, len(pts) + 1)
    labels = seed_label[iy, ix]
    labels[dist > rng.uniform(*radius, len(pts) + 1)[labels]] = 0
    return labels


def pseudo_stack(image: np.ndarray, labels: np.ndarray, *, planes: int = 12, z_step: float = 2.0, seed: int = 0):
    """A Z stack made from a real 2-D image and its labels: every object becomes an ellipsoid-like body.

    Object ``i`` (equivalent radius ``r`` px) is centred at a random depth and reaches ``r`` px above and
    below it (``r / z_step`` planes); at depth ``d`` from its centre its section is its 2-D mask shrunk about
    its centroid by ``sqrt(1 - (d / r)**2)``, filled with its own pixels (sampled the same way). Background
    planes are the image's background pixels. Returns ``(stack (Z, Y, X) of image.dtype, labels (Z, Y, X)
    int32)``; later objects win where two overlap.
    """
    rng = np.random.default_rng(seed)
    Y, X = labels.shape
    bg = image[labels == 0]
    stack = (
        rng.choice(bg, size=(planes, Y, X)).astype(image.dtype) if bg.size else np.zeros((planes, Y, X), image.dtype)
    )
    stack = ndi.uniform_filter(stack.astype(np.float32), size=(1, 3, 3)).astype(image.dtype)
    out = np.zeros((planes, Y, X), np.int32)
    yy, xx = np.mgrid[0:Y, 0:X]
    ids = np.unique(labels[labels > 0])
    for new, i in enumerate(ids, start=1):
        m = labels == i
        cy, cx = ndi.center_of_mass(m)
        r = np.sqrt(m.sum() / np.pi)
        zc = rng.uniform(0.3, 0.7) * (planes - 1)
        for z in range(planes):
            d = abs(z - zc) * z_step
            if d >= r:
                continue
            s = np.sqrt(1.0 - (d / r) ** 2)
            sy = np.clip(np.round(cy + (yy - cy) / s).astype(int), 0, Y - 1)
            sx = np.clip(np.round(cx + (xx - cx) / s).astype(int), 0, X - 1)
            inside = m[sy, sx]
            stack[z][inside] = image[sy[inside], sx[inside]]
            out[z][inside] = new
    return stack, out


def hard_shapes() -> np.ndarray:
    """(48, 64) int32 labels with the cases that break centre-line polygons: a 10x6 rectangle, a ring (hole),
    a label in two pieces, a 1-px object, 1-px lines (straight and diagonal), diagonal pinches, an island
    in a hole, labels touching every border, touching neighbours and random speckle."""
    a = np.zeros((48, 64), np.int32)
    a[2:8, 2:12] = 1  # 10 x 6 rectangle
    a[2:11, 14:23] = 2
    a[5:8, 17:20] = 0  # ring with a hole
    a[6, 18] = 3  # island inside the hole (another label)
    a[13:16, 2:5] = 4
    a[13:16, 8:11] = 4  # two pieces
    a[20, 20] = 5  # single pixel
    a[24, 2:30] = 6  # horizontal line
    for i in range(8):
        a[27 + i, 2 + i] = 7  # diagonal line (pixels touch at corners only)
    a[30:33, 14:17] = 8
    a[33:36, 17:20] = 8  # two blocks touching at one corner
    a[0, 30:64] = 9  # top border
    a[0:48, 63] = 10  # right border
    a[47, 0:40] = 11  # bottom border
    a[20:40, 0] = 12  # left border
    a[12:20, 30:40] = 13
    a[12:20, 40:50] = 14  # touching neighbours
    a[14:17, 33:36] = 0  # hole in 13
    a[15, 34] = 13  # island of the same label inside its own hole
    rng = np.random.default_rng(1)
    speck = rng.integers(0, 3, (10, 12))
    a[36:46, 30:42] = np.where(speck > 0, speck + 14, 0)  # labels 15, 16 in many pieces with holes
    return a


def ellipses(shape=(300, 340), n=160, seed=0, r=(4, 11)) -> np.ndarray:
    """Random non-overlapping-ish ellipses, labels in first-appearance order (as a reconstruction numbers)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(*r), rng.uniform(*r)
        lab[(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & (lab == 0)] = k
    return dynamics.renumber(lab)


def nuclei_mosaic(side: int = 1024) -> np.ndarray:
    """(side, side) uint8 mosaic of a real nuclei field (66 nuclei, CC0, tests/data), rotated copies, offset by
    half a field so that the mosaic's own seams do not fall on the block borders."""
    import tifffile
    from paths import ROOT

    src = tifffile.imread(ROOT / "tests" / "data" / "nuclei_val" / "images" / "dsb2018_7aa1aaa5e032a980.tif")
    rng = np.random.default_rng(0)
    n = side // 256 + 2
    rows = [np.concatenate([np.rot90(src, rng.integers(4)) for _ in range(n)], axis=1) for _ in range(n)]
    return np.concatenate(rows, axis=0)[128 : 128 + side, 128 : 128 + side]


def wide_labels() -> np.ndarray:
    """A sparse (64, 70000) label image with objects on both sides of x = 32,767, 60,535 and 65,535 (where
    16-bit ROI bounds stop: signed, ImageJ's unsigned reading, unsigned), one with a hole and one in two
    pieces (composite ROIs), and one touching the last column."""
    lab = np.zeros((64, 70000), np.int32)
    for k, x in enumerate([100, 32760, 40000, 60530, 65530, 69990], start=1):
        lab[5 + 3 * k : 20 + 3 * k, x : x + 10] = k
    lab[30:50, 50000:50020] = 7
    lab[36:44, 50006:50014] = 0  # a hole
    lab[30:40, 66000:66010] = 8
    lab[45:55, 66020:66030] = 8  # a second piece
    lab[40:60, 32750:32800] = 9  # straddles 32,767 with a notch
    lab[50:60, 32770:32780] = 0
    return lab


def write_ome_zarr(path, data, version: str, chunks=(1, 256, 256), scale=(1.0, 0.5, 0.5), unit="micrometer"):
    """An OME-Zarr image written by ome-zarr-py (the community's reference writer), then its scale and units
    set in the multiscales metadata as NGFF says."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    store = parse_url(str(path), mode="w", fmt=fmt).store
    root = zarr.group(store=store, zarr_format=2 if version == "0.4" else 3)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": unit},
        {"name": "x", "type": "space", "unit": unit},
    ]
    write_image(data, root, axes=axes, storage_options={"chunks": chunks}, fmt=fmt)
    attrs = root.attrs.asdict()
    ms = attrs["ome"]["multiscales"] if version == "0.5" else attrs["multiscales"]
    ms[0]["axes"] = axes
    for k, ds in enumerate(ms[0]["datasets"]):
        ds["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, scale[1] * 2**k, scale[2] * 2**k]}]
    root.attrs.update(attrs)


def clean_flows(labels):
    """Flows the network would ideally give: unit flows x5, cellprob logits +-4."""
    flows = np.empty((3, *labels.shape), np.float32)
    flows[:2] = heat.masks_to_flows(labels) * 5
    flows[2] = np.where(labels > 0, 4.0, -4.0)
    return flows


def noisy_flows(labels, seed):
    rng = np.random.default_rng(seed)
    flows = clean_flows(labels)
    flows[:2] += rng.normal(0, 1.5, flows[:2].shape).astype(np.float32)
    flows[2] += rng.normal(0, 2.0, labels.shape).astype(np.float32)
    return flows
