"""What a label image may hold, checked in one place: :func:`check_labels`.

A label image numbers its objects: 0 = background, 1..N = objects (ids need not be consecutive). Every reader
of label files (:func:`cpsnake.io.labels.read_labels`, the PNG labels of :mod:`cpsnake.training.evaluate`) and
every function that takes a label array (:func:`cpsnake.stacks.stitch.stitch_planes`,
:func:`cpsnake.export.measure3d.measure_3d`) asks :func:`check_labels`, so all hold labels to one rule:

* integers, unsigned or signed, without negative values;
* ids up to 2**63 - 1, so that they fit in int64 (checked for files always, for arrays where asked: a caller
  with a tighter bound of its own says so itself);
* from a file also floats that hold whole non-negative numbers up to 2**53 (Fiji saves labels as 32-bit
  float above 65,535 objects); a NaN or infinite value, a fraction or a negative value is refused;
* never a bool mask (it does not number its objects), complex numbers or text.

The refusals have two wordings, for two audiences: a file's messages name its path and the fix in Fiji
(:data:`LABELS_FIX`); an array's name the function it was passed to and the fix in numpy. The shape a label
image must have is each caller's (a plane, a stack, at least two planes ...), so callers check it themselves.

numpy is imported by :func:`check_labels`, not by this module, so that importing it costs nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cpsnake.errors import CpsnakeError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["LABELS_FIX", "check_labels"]

LABELS_FIX = (
    "save the labels as an integer image, 0 = background and 1..N = objects (Fiji: Image > Type > 16-bit; from a "
    "binary mask: Analyze > Analyze Particles with Show: Count Masks)"
)
_MAX_ID = 2**63 - 1  # ids are int64
_MAX_FLOAT_ID = 2**53  # the largest whole number below which every whole number is a float64


def check_labels(
    labels, where: str | os.PathLike, *, source: str = "array", noun: str = "image", ids_in: str | None = None
) -> np.ndarray:
    """``labels`` as an ndarray when its values are labels (see the module docstring), else a CpsnakeError.

    Parameters
    ----------
    labels : array-like of any shape
    where : what the messages name first: the file's path (``source="file"``) or the function (``"array"``)
    source : ``"file"``: labels read from a file (whole floats accepted; Fiji's fix, :data:`LABELS_FIX`);
        ``"array"``: labels passed to a function (integers only; numpy's fix)
    noun : arrays: what the message calls the labels ("an integer label image", "... label stack")
    ids_in : arrays: also refuse ids above 2**63 - 1, saying that ids are int64 in this (e.g. ``"the table"``)

    Returns
    -------
    ``np.asarray(labels)``, unchanged (not converted).
    """
    import numpy as np

    lab = np.asarray(labels)
    if source == "file":
        _check_file(lab, where)
        return lab
    if source != "array":
        raise ValueError(f"source {source!r}, expected 'file' or 'array'")
    if not np.issubdtype(lab.dtype, np.integer):
        raise CpsnakeError(
            f"{where}: found labels of dtype {lab.dtype}, expected an integer label {noun} (0 = background, "
            "1..N = objects); convert label images with astype(np.int32), masks with a labelling"
        )
    if np.issubdtype(lab.dtype, np.signedinteger) and lab.size and int(lab.min()) < 0:
        raise CpsnakeError(
            f"{where}: found a negative label {int(lab.min())}, expected 0 = background and positive ids; "
            "relabel the objects with ids 1..N"
        )
    if ids_in is not None and lab.dtype == np.uint64 and lab.size and int(lab.max()) > _MAX_ID:
        raise CpsnakeError(
            f"{where}: found label {int(lab.max())}, expected ids up to 2**63 - 1 (ids are int64 in {ids_in}); "
            "relabel the objects with ids 1..N"
        )
    return lab


def _check_file(data: np.ndarray, path) -> None:
    """The checks of labels read from a file (see :func:`check_labels`)."""
    import numpy as np

    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            raise CpsnakeError(
                f"{path}: found {data.size - int(finite.sum())} NaN or infinite labels; expected whole "
                f"numbers; {LABELS_FIX}"
            )
        del finite
        if np.any(data != np.round(data)) or (data.size and data.min() < 0):
            raise CpsnakeError(
                f"{path}: found float labels with fractional or negative values; expected whole numbers "
                f">= 0; {LABELS_FIX}"
            )
        if data.size and data.max() > _MAX_FLOAT_ID:
            raise CpsnakeError(
                f"{path}: found float labels above 2**53, which a float cannot hold exactly; {LABELS_FIX}"
            )
    elif data.dtype.kind == "b":
        raise CpsnakeError(f"{path}: found a binary (bool) mask, expected labels that number each object; {LABELS_FIX}")
    elif data.dtype.kind not in "ui":
        raise CpsnakeError(f"{path}: found labels of type {data.dtype}, expected integers; {LABELS_FIX}")
    elif data.size and data.min() < 0:
        raise CpsnakeError(
            f"{path}: found negative labels (smallest {data.min()}); expected 0 = background and "
            f"1..N = objects; {LABELS_FIX}"
        )
    if data.dtype.kind == "u" and data.dtype.itemsize == 8 and data.size and data.max() > _MAX_ID:
        raise CpsnakeError(f"{path}: found label {data.max()}, above 2**63 - 1; {LABELS_FIX}")
