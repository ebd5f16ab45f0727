"""Where and in which precision a network (or a torch path of the engine) runs: ``--device`` and ``--precision``.

One resolver for every command: :func:`resolve_device` turns a ``--device`` name into a torch device among
the kinds of device the caller can run on. ``cpsnake infer`` (and ``segment``, ``batch``, ``block``) run the
network on cuda, mps or cpu; reconstruction runs its torch path on CUDA only (it needs float64, which mps
lacks) and otherwise its own CPU path, so it asks for ``kinds=("cuda",)`` and gets None for ``cpu`` and
``mps`` (and for ``auto`` without CUDA). :func:`resolve_dtype` picks the network's precision for a device.

torch is imported inside the functions (not at the top): importing this module must not import torch, so
that every command checks its options and inputs before torch's 2 s and 0.9 GB; a name outside ``kinds``
(``cpu`` for reconstruction) is answered without importing torch at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from cpsnake.errors import CpsnakeError

if TYPE_CHECKING:
    import torch

__all__ = ["AUTO_ORDER", "resolve_device", "resolve_dtype"]

AUTO_ORDER = ("cuda", "mps", "cpu")  # the kinds ``auto`` tries, in this order


def resolve_device(name: str | None = "auto", *, kinds: Sequence[str] | None = None) -> "torch.device | None":
    """The torch device ``name`` means for a caller that runs on ``kinds`` of device (None: any kind torch
    knows); None when it is none of them.

    - ``"auto"``: the first of cuda, mps, cpu (those in ``kinds``) that this machine has; None when none is.
    - ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (or another name torch knows): that device, or None when
      ``kinds`` does not hold its type (the caller's own fallback: reconstruction's CPU path). A named cuda or
      mps device that this machine does not have is a CpsnakeError (use ``auto`` or ``cpu``).
    - None: None (no device asked for).

    A name torch does not know is a CpsnakeError (one line, naming the option).
    """
    if name is None:
        return None
    kind = name.split(":", 1)[0]
    if kinds is not None and name != "auto" and kind in AUTO_ORDER and kind not in kinds:
        return None  # a kind this caller does not run on: answered without importing torch
    import torch

    if name == "auto":
        available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available, "cpu": lambda: True}
        found = next((k for k in AUTO_ORDER if (kinds is None or k in kinds) and available[k]()), None)
        return None if found is None else torch.device(found)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CpsnakeError(f"--device {name}: unknown device; expected auto, cpu or cuda[:N]") from None
    if kinds is not None and dev.type not in kinds:
        return None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CpsnakeError(f"--device {name}: found no CUDA device; use --device auto or cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CpsnakeError(f"--device {name}: found no MPS device; use --device auto or cpu")
    return dev


def resolve_dtype(precision: str, device: "torch.device") -> "torch.dtype":
    """``"auto"`` -> bfloat16 on a GPU, float32 on CPU; ``"float32"`` / ``"bfloat16"`` as named."""
    import torch

    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if precision not in choices:
        raise CpsnakeError(f"--precision {precision}: unknown; expected auto, float32 or bfloat16")
    return choices[precision]
