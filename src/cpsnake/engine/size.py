"""Cell size estimation for classic Cellpose U-Nets (``--diameter auto``), as cellpose 3's ``SizeModel``.

A *size model* is cellpose 3's ``size_<model>.npy`` beside the model file (or given with
``--size-model``): a linear regression from the network's style vector to the log of the cell diameter
(``A`` and ``smean``, one entry per style channel; ``ymean``; ``diam_mean``). Estimation, as
``SizeModel.eval`` 3.1.1.3 does it, in two passes over the image:

1. run the network at its default scale (``diam_mean / diam_labels``) and take the image's style (the
   unit-length sum of its tiles' styles); ``diam_style = max(5, exp(A . (style - smean) + log(diam_mean)
   + ymean))``;
2. run it again with the image resized by ``diam_mean / diam_style``, reconstruct masks at that size
   (flow following *without* interpolation, ``niter`` 200, the default thresholds), resize them back
   to the image (nearest neighbour) and take the diameter of the median-area mask, ``2 sqrt(area / pi)``.

Either value falls back to ``diam_mean`` when it is 0 or NaN (no style, or no mask found).

The ``.npy`` file holds a pickled dict, which cpsnake never unpickles freely: :func:`read_size_model`
admits only numpy arrays, numpy scalars and plain containers (as ``torch.load(weights_only=True)`` does
for model files), and checks the shapes.

:func:`auto_diameter` is what ``--diameter auto`` calls: the estimate of one image, said on stderr.
:mod:`cpsnake.models.unet` (which imports torch) is imported inside :func:`size_model_for`, so that importing
this module does not import torch.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np

from cpsnake.engine import infer
from cpsnake.engine.reconstruct import compute_masks
from cpsnake.errors import CpsnakeError, library_text
from cpsnake.io import files

__all__ = [
    "read_size_model",
    "size_model_path",
    "size_model_for",
    "diameter_from_style",
    "estimate_diameter",
    "auto_diameter",
]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def read_size_model(path: str | os.PathLike, *, style_channels: int | None = None) -> dict:
    """The parameters of a cellpose size model file: ``A (S,)``, ``smean (S,)``, ``ymean``, ``diam_mean``.

    Raises a one-line CpsnakeError for a file that is not such a ``.npy``, holds anything but arrays
    and numbers, lacks a key, or whose style length differs from ``style_channels`` (the network's).
    """
    path = Path(path)
    fix = "pass the size_<model>.npy that cellpose saved with this model, or run without --diameter auto"
    raw = files.read_bytes(path, "a cellpose size model (.npy)", limit=16 * 2**20)
    try:
        fh = io.BytesIO(raw)
        version = np.lib.format.read_magic(fh)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format {version}")
        header = readers[version](fh)  # (shape, fortran, dtype)
        if header[2] == np.dtype(object):
            obj = _ArraysOnly(fh).load()
            obj = obj.reshape(()).item() if isinstance(obj, np.ndarray) else obj
        else:
            raise ValueError(f"an array of {header[2]} {header[0]}, not a dict")
    except (ValueError, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        raise CpsnakeError(
            f"{path}: found no cellpose size model ({library_text(exc)}); expected a .npy "
            f"dict of A, smean, ymean, diam_mean; {fix}"
        ) from None
    if not isinstance(obj, dict) or not {"A", "smean", "ymean", "diam_mean"} <= set(obj):
        found = f"a dict of {len(obj)} keys" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CpsnakeError(f"{path}: found {found}, expected a dict with A, smean, ymean and diam_mean; {fix}")
    try:
        params = {
            "A": np.asarray(obj["A"], np.float64).reshape(-1),
            "smean": np.asarray(obj["smean"], np.float64).reshape(-1),
            "ymean": float(np.asarray(obj["ymean"], np.float64)),
            "diam_mean": float(np.asarray(obj["diam_mean"], np.float64)),
        }
    except (TypeError, ValueError) as exc:
        raise CpsnakeError(
            f"{path}: found size model values that are not numbers ({library_text(exc)}); expected "
            f"arrays of numbers; {fix}"
        ) from None
    if not all(np.all(np.isfinite(v)) for v in params.values()):
        raise CpsnakeError(f"{path}: found NaN or infinite size model values; expected finite numbers; {fix}")
    S = params["A"].size
    if params["smean"].size != S or (style_channels is not None and S != style_channels) or not params["diam_mean"] > 0:
        raise CpsnakeError(
            f"{path}: found a size model for styles of {S} values (smean {params['smean'].size}, "
            f"diam_mean {params['diam_mean']}), expected {style_channels or S} values (the network's "
            f"deepest width) and a positive diam_mean; {fix}"
        )
    return params


def size_model_path(model_path: str | os.PathLike) -> Path:
    """Where cellpose keeps a model's size model: ``size_<model file name>.npy`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(f"size_{model_path.stem if model_path.suffix == '.pt' else model_path.name}.npy")


def size_model_for(net, model_path: str | os.PathLike, size_model: str | os.PathLike | None = None) -> dict:
    """The size model parameters for ``--diameter auto``: ``size_model`` or ``size_<model>.npy`` beside the model.

    A one-line CpsnakeError for a Cellpose-SAM network (it has no style vector; cellpose 4 dropped size
    models) and for a U-Net without a size model file.
    """
    from cpsnake.models.unet import UNet

    if not isinstance(net, UNet):
        raise CpsnakeError(
            f"{model_path}: found a Cellpose-SAM model, expected a classic Cellpose U-Net with a size "
            "model for --diameter auto (Cellpose-SAM is trained to work at any size); give a "
            "diameter in pixels, or leave it out"
        )
    path = Path(size_model) if size_model else size_model_path(model_path)
    if not path.is_file():
        raise CpsnakeError(
            f"{path}: no size model for {model_path}; expected cellpose's size_<model>.npy beside the "
            "model file (or --size-model FILE) for --diameter auto; give a diameter in pixels instead"
        )
    return read_size_model(path, style_channels=int(net.nbase[-1]))


def diameter_from_style(style: np.ndarray, params: dict) -> float:
    """Step 1: the regression of the log diameter on the style (at least 5 px; ``diam_mean`` if undefined)."""
    style = np.asarray(style, np.float64).reshape(-1)
    d = float(
        np.maximum(5.0, np.exp(params["A"] @ (style - params["smean"]) + np.log(params["diam_mean"]) + params["ymean"]))
    )
    return params["diam_mean"] if d == 0 or np.isnan(d) else d


def estimate_diameter(net, img: np.ndarray, params: dict, **predict_opts) -> tuple[float, float]:
    """``(diam, diam_style)`` of a normalized image ``(C, Y, X)`` (see the module docstring).

    ``predict_opts``: ``batch_size``, ``tile_overlap``, ``augment``, ``device``, ``dtype`` as for
    :func:`cpsnake.engine.infer.predict_many`.
    """
    diam_mean = params["diam_mean"]
    _, style = next(infer.predict_many(net, [img], with_style=True, **predict_opts))
    diam_style = diameter_from_style(style, params)
    # pass 2: flows at the size model's scale, not resized back (cellpose's resample=False)
    scale = diam_mean / diam_style
    flows = next(infer.predict_many(net, [img], scales=[scale], resample=False, **predict_opts))
    small = compute_masks(flows, interp=False, niter=200)
    Y, X = img.shape[1:]
    rows = (np.arange(Y) * (small.shape[0] / Y)).astype(np.intp)  # OpenCV's INTER_NEAREST
    cols = (np.arange(X) * (small.shape[1] / X)).astype(np.intp)
    masks = small[np.minimum(rows, small.shape[0] - 1)][:, np.minimum(cols, small.shape[1] - 1)]
    _, counts = np.unique(masks, return_counts=True)
    counts = counts[1:] if masks.min() == 0 else counts
    diam = float(np.median(np.sqrt(counts)) / (np.pi**0.5 / 2)) if counts.size else 0.0
    return (diam_mean if diam == 0 or np.isnan(diam) else diam), diam_style


def auto_diameter(
    net, img: np.ndarray, model_path, size_model, opts: dict, *, source: object = "image", params: dict | None = None
) -> float:
    """``--diameter auto``: the size model's estimate for one normalized image ``(C, Y, X)``, said on stderr.

    ``params``: the size model (:func:`size_model_for`), else read for ``model_path`` / ``size_model``; ``opts``:
    the inference keywords (``batch_size``, ``tile_overlap``, ``augment``, ``device``, ``dtype`` are used)."""
    params = size_model_for(net, model_path, size_model) if params is None else params
    keep = {k: opts[k] for k in ("batch_size", "tile_overlap", "augment", "device", "dtype") if k in opts}
    diam, diam_style = estimate_diameter(net, img, params, **keep)
    print(
        f"{source}: estimated cell diameter {diam:.2f} px (from the style alone {diam_style:.2f} px)", file=sys.stderr
    )
    return diam
