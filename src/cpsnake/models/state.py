"""Model files, family-agnostic: read a state dict safely, check it against a network, write it reproducibly.

Every family's files are plain ``torch.save``'d dicts of tensors (cellpose 3 and 4 write them so);
:func:`load_state_dict_file` reads one with ``weights_only=True`` after :func:`cpsnake.models.statefile.check`
has vetted its table of contents, :func:`check_keys` compares it with a network (missing, unexpected
and mis-shaped keys in one line), :func:`save_model` writes one so that equal weights give equal bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from cpsnake.errors import CpsnakeError, library_text
from cpsnake.io import files, limits
from cpsnake.io.outputs import atomic_output
from cpsnake.models import statefile

__all__ = ["load_state_dict_file", "check_tensors", "check_keys", "save_tensors", "save_model"]


def load_state_dict_file(
    path: str | os.PathLike, *, max_parameters: int = limits.MAX_PARAMETERS
) -> dict[str, torch.Tensor]:
    """Read a ``torch.save``'d dict of tensors with ``weights_only=True`` (never unpickles objects).

    Before anything is loaded, :func:`cpsnake.models.statefile.check` reads the file's table of contents and
    refuses expanded (stride-0) views, storages shorter than declared, more than ``max_parameters``
    elements and NaN/Inf values; a file it cannot read that way (legacy format) gets the same checks on
    the loaded tensors. Raises :class:`CpsnakeError` naming the file if it is missing, not a regular
    file, unreadable/truncated, holds arbitrary Python objects, or is not a dict of tensors.
    """
    import pickle

    path = Path(path)
    if not os.path.lexists(path):
        raise CpsnakeError(
            f"{path}: no such weights file; give an existing path or a registry name (cpsnake weights list)"
        )
    files.regular_file(path, "a weights file (a torch.save'd state dict)")
    inspected = statefile.check(path, max_parameters=max_parameters)
    try:
        try:  # memory-mapped: a 1.2 GB file is not held twice while it is copied into the network
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            raise CpsnakeError(
                f"{path}: refused, the file holds arbitrary Python objects, expected a plain state dict of "
                "tensors (loaded with weights_only=True); re-save it with torch.save(net.state_dict(), path)"
            ) from None
        raise CpsnakeError(
            f"{path}: cannot read ({_first_line(exc)}), expected a torch.save'd state dict; "
            "the file is corrupt or truncated: download or copy it again"
        ) from None
    except Exception as exc:  # zip/EOF/runtime errors of a damaged file
        raise CpsnakeError(
            f"{path}: cannot read ({type(exc).__name__}: {_first_line(exc)}), expected a "
            "torch.save'd state dict; the file is corrupt or truncated: download or copy it again"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CpsnakeError(
            f"{path}: found a {type(state).__name__}, expected a dict of tensors (a state dict); "
            "save with torch.save(net.state_dict(), path)"
        )
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    check_tensors(state, str(path), max_parameters=max_parameters, finite=not inspected)
    return dict(state)


def check_tensors(
    state: Mapping[str, torch.Tensor], source: str, *, max_parameters: int = limits.MAX_PARAMETERS, finite: bool = True
) -> None:
    """The checks of :func:`cpsnake.models.statefile.check`, on loaded tensors: no expanded (stride-0) views, at most
    ``max_parameters`` elements in all, and (``finite``) no NaN or infinite value in a float tensor."""
    fix = "the file is damaged or not a weights file: download or copy it again, or use a registry name"
    total = 0
    for key, t in state.items():
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise CpsnakeError(
                f"{source}: tensor {key!r} declares {t.numel():,} elements "
                f"(shape {tuple(t.shape)}, stride {t.stride()}) "
                f"over a storage of {t.untyped_storage().nbytes():,} bytes: an expanded (stride-0) view; expected a "
                f"plain tensor per key; {fix}"
            )
        total += t.numel()
    if total > max_parameters:
        raise CpsnakeError(
            f"{source}: found {total:,} parameters in all, more than the limit of {max_parameters:,}; "
            f"expected a Cellpose model state dict; {fix}"
        )
    if finite:
        for key, t in state.items():
            if t.is_floating_point() or t.is_complex():
                if not bool(torch.isfinite(t).all()):
                    raise CpsnakeError(
                        f"{source}: tensor {key!r} holds NaN or infinite values; expected finite weights (a network "
                        "with them finds no cells); use another weights file, or retrain from the last good checkpoint"
                    )


def _first_line(exc: BaseException) -> str:
    """The start of a library's message, without the quoted pieces of the file (:func:`errors.library_text`)."""
    return library_text(exc)


def check_keys(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    prefix: str = "",
    expected: str = "a complete cellpose-4 Cellpose-SAM state dict",
) -> None:
    """Raise one CpsnakeError listing missing keys, unexpected keys and shape mismatches."""
    own = {prefix + k: v for k, v in net.state_dict().items()}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]

    def few(xs: list[str]) -> str:
        return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")

    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if extra:
        problems.append(f"unexpected keys {few(extra)}")
    if shapes:
        problems.append(f"wrong shapes (found vs expected) {few(shapes)}")
    if problems:
        raise CpsnakeError(
            f"{source}: found {'; '.join(problems)}; expected {expected}; use a file saved by "
            "cellpose or cpsnake (save_model)"
        )


def save_tensors(obj, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` (tensors and plain containers) to ``path`` atomically; equal contents, equal bytes.

    Given a path, torch names the zip's inner folder after the file (here a temporary name holding the
    process id), so the same weights would give a different sha256 each time; given an open file, the
    name is always ``archive`` (and no second copy is held in memory).
    """
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def save_model(net: nn.Module, path: str | os.PathLike) -> None:
    """Write ``net``'s state dict (floats as float32, CPU tensors; the family's key names) to ``path`` atomically."""
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().to("cpu")
        state[k] = (v.float() if v.is_floating_point() else v).clone()  # BatchNorm's counters stay integers
    save_tensors(state, path)
