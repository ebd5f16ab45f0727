"""A ``torch.save`` file looked into without torch: what each tensor declares, checked before anything is loaded.

A weights file can make the loader allocate far more than its size: a tensor may declare a shape of
10^10 elements over a one-element storage (stride 0, an "expanded" view), or tensors whose shapes
describe a network of 10^12 parameters. :func:`check` reads only the file's table of contents and
refuses such a file with one line before torch is even imported (importing torch alone costs about
0.9 GB of resident memory here), so a hostile file never costs more than a few hundred MB.

How: ``torch.save`` writes a zip holding ``FOLDER/data.pkl`` (the pickled container; every tensor is a
call ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a
persistent id ``('storage', torch.<Type>Storage, key, location, numel)``) and ``FOLDER/data/<key>`` (the
raw bytes of each storage). :func:`records` unpickles ``data.pkl`` with stand-ins for exactly these
names (nothing else is ever imported or called) and returns one :class:`TensorRecord` per tensor.
A file it cannot read this way (the legacy non-zip format, other globals) gives ``None``; then
:func:`cpsnake.models.state.load_state_dict_file` applies the same checks to the loaded tensors instead.

:func:`check` refuses, naming the file and the first offending key:

* a storage whose record in the zip holds fewer bytes than it declares;
* a view that reaches outside its storage, or a negative size or stride;
* a view with more elements than its storage holds (``numel * itemsize > storage bytes``: stride 0 /
  expanded storage), which would be materialised at full size on the first copy;
* more than ``max_parameters`` elements in all (:data:`cpsnake.io.limits.MAX_PARAMETERS`), or an encoder
  whose shapes (:func:`infer_architecture`) describe a network above that;
* a NaN or infinite value in any float tensor (a network with NaN weights finds no cells and says
  nothing: it is refused instead).

Float values are checked through a read-only memory map of the file, a chunk at a time.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cpsnake.errors import CpsnakeError
from cpsnake.io import files, limits

__all__ = ["TensorRecord", "records", "check", "infer_architecture", "parameter_count"]

# storage type -> (numpy dtype in little-endian order, kind: "f" float, "bf16", "c" complex, "i" other)
_TYPES = {
    "FloatStorage": ("<f4", "f"), "DoubleStorage": ("<f8", "f"), "HalfStorage": ("<f2", "f"),
    "BFloat16Storage": ("<u2", "bf16"), "ComplexFloatStorage": ("<f4", "c"), "ComplexDoubleStorage": ("<f8", "c"),
    "LongStorage": ("<i8", "i"), "IntStorage": ("<i4", "i"), "ShortStorage": ("<i2", "i"),
    "CharStorage": ("<i1", "i"), "ByteStorage": ("<u1", "i"), "BoolStorage": ("<u1", "i"),
}  # fmt: skip
_ITEMSIZE = {"ComplexFloatStorage": 8, "ComplexDoubleStorage": 16}
MAX_PICKLE_BYTES = 256 * 2**20
MAX_NODES = 10_000_000  # containers and values walked in data.pkl
CHUNK = 1 << 24  # elements per finiteness check


class _Unknown(Exception):
    """data.pkl uses something beyond plain containers and tensors: leave the file to torch's own loader."""


@dataclass(frozen=True)
class _Storage:
    type_name: str
    key: str
    numel: int

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE.get(self.type_name, np.dtype(_TYPES[self.type_name][0]).itemsize)


@dataclass(frozen=True)
class TensorRecord:
    """What one tensor in a ``torch.save`` file declares (nothing of it is loaded).

    Attributes
    ----------
    key : dotted path in the saved container (``encoder.blocks.0.attn.qkv.weight``; ``model.W2`` in a checkpoint)
    storage : type name (``FloatStorage``), key and element count of the storage it views
    offset, shape, stride : the view, in elements
    """

    key: str
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def span(self) -> int:
        """Elements of the storage the view reaches, from ``offset`` (0 for an empty tensor)."""
        if self.numel == 0:
            return 0
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple) or not all(isinstance(v, int) for v in values):
        raise _Unknown(what)
    return values


@dataclass(frozen=True)
class _View:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, _Storage) or not isinstance(offset, int):
        raise _Unknown("tensor")
    return _View(storage, offset, _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch" and name in _TYPES:
            return _StorageType(name)
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Unknown(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise _Unknown("storage")
        return _Storage(pid[1].name, pid[2], pid[4])


def _walk(obj, prefix: str, out: dict, seen: set, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _Unknown("too many objects")
    if isinstance(obj, _View):
        out[prefix] = TensorRecord(prefix, obj.storage, obj.offset, obj.shape, obj.stride)
        return
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in seen:  # shared (memoised) containers are walked once
            return
        seen.add(id(obj))
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            _walk(v, f"{prefix}.{k}" if prefix else str(k), out, seen, budget)


@dataclass(frozen=True)
class _Zip:
    path: str
    folder: str
    entries: dict[str, zipfile.ZipInfo]
    little: bool


def _open_zip(path: str | os.PathLike) -> tuple[_Zip, object] | None:
    """(zip layout, unpickled container) of a torch zip file, or None when it is not one this module reads."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            pkl = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                return None
            folder = pkl[0][: -len("data.pkl")]
            if infos[pkl[0]].file_size > MAX_PICKLE_BYTES:
                raise CpsnakeError(
                    f"{path}: found a {infos[pkl[0]].file_size:,}-byte data.pkl, expected a state dict's "
                    "table of contents of a few MB; the file is not a weights file"
                )
            with zf.open(pkl[0]) as fh:
                data = fh.read(MAX_PICKLE_BYTES + 1)
            order = infos.get(folder + "byteorder")
            little = order is None or zf.read(order)[:6] != b"big"
    except CpsnakeError:
        raise
    except Exception:  # broken zip: torch.load reports it
        return None
    try:
        obj = _Unpickler(io.BytesIO(data)).load()
    except Exception:  # _Unknown names, or a malformed pickle: torch.load decides and reports
        return None
    return _Zip(os.fspath(path), folder, infos, little), obj


def records(path: str | os.PathLike) -> dict[str, TensorRecord] | None:
    """Every tensor a ``torch.save`` zip file declares, by dotted key; None if the file is not read here."""
    opened = _open_zip(path)
    if opened is None:
        return None
    _, obj = opened
    out: dict[str, TensorRecord] = {}
    try:
        _walk(obj, "", out, set(), [MAX_NODES])
    except _Unknown:
        return None
    return out


def _data_offset(path: str, info: zipfile.ZipInfo) -> int | None:
    """Byte offset of a stored (uncompressed) zip entry's data in the file; None if it is compressed."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _nonfinite(values: np.ndarray, kind: str) -> bool:
    if kind == "bf16":  # bfloat16: exponent bits all ones = inf or NaN
        return bool(np.any((values & 0x7F80) == 0x7F80))
    return not bool(np.isfinite(values).all())


def _check_values(z: _Zip, rec: TensorRecord, mm: mmap.mmap | None) -> bool:
    """True if every element the view covers (its span, from its offset) is finite; ints are always fine."""
    dtype, kind = _TYPES[rec.storage.type_name]
    if kind == "i" or rec.numel == 0:
        return True
    dtype = np.dtype(dtype).newbyteorder("<" if z.little else ">")
    per = 2 if kind == "c" else 1  # complex: (real, imag) pairs of floats
    info = z.entries[f"{z.folder}data/{rec.storage.key}"]
    start, count = rec.offset * per, rec.span * per
    offset = _data_offset(z.path, info)
    if offset is not None and mm is not None:
        values = np.frombuffer(mm, dtype=dtype, count=count, offset=offset + start * dtype.itemsize)
        return not any(_nonfinite(values[i : i + CHUNK], kind) for i in range(0, count, CHUNK))
    with zipfile.ZipFile(z.path) as zf, zf.open(info) as fh:  # a compressed entry: stream it
        fh.read(start * dtype.itemsize)
        left = count
        while left:
            n = min(left, CHUNK)
            chunk = np.frombuffer(fh.read(n * dtype.itemsize), dtype=dtype)
            if chunk.size < n or _nonfinite(chunk, kind):
                return False
            left -= n
    return True


_CHECKED: set[tuple] = set()  # (path, size, mtime) of files that passed, so a second check is free


def check(
    path: str | os.PathLike, *, max_parameters: int = limits.MAX_PARAMETERS, what: str = "a weights file"
) -> bool:
    """Refuse a ``torch.save`` file whose declared tensors are unsafe to load (see the module docstring).

    Returns True when the file was inspected (a zip in torch's format with plain containers), False when
    it could not be (then the caller checks the loaded tensors). Only regular files are read.
    """
    st = files.regular_file(path, f"{what} (a torch.save'd state dict)")
    stamp = (os.fspath(path), st.st_size, st.st_mtime_ns, max_parameters)
    if stamp in _CHECKED:
        return True
    opened = _open_zip(path)
    if opened is None:
        return False
    z, obj = opened
    recs: dict[str, TensorRecord] = {}
    try:
        _walk(obj, "", recs, set(), [MAX_NODES])
    except _Unknown:
        return False
    fix = "the file is damaged or not a weights file: download or copy it again, or use a registry name"
    total = 0
    for key, rec in recs.items():
        storage = rec.storage
        info = z.entries.get(f"{z.folder}data/{storage.key}")
        declared = storage.numel * storage.itemsize
        if info is None or info.file_size < declared or storage.numel < 0:
            held = "no record" if info is None else f"{info.file_size:,} bytes"
            raise CpsnakeError(
                f"{path}: tensor {key!r} views a storage declaring {storage.numel:,} elements "
                f"({declared:,} bytes) that holds {held}; expected a complete file; {fix}"
            )
        if (
            any(n < 0 for n in rec.shape)
            or any(s < 0 for s in rec.stride)
            or rec.offset < 0
            or len(rec.shape) != len(rec.stride)
            or rec.offset + rec.span > storage.numel
        ):
            raise CpsnakeError(
                f"{path}: tensor {key!r} declares shape {rec.shape}, stride {rec.stride} and offset "
                f"{rec.offset}, outside its storage of {storage.numel:,} elements; {fix}"
            )
        if rec.numel * storage.itemsize > declared:
            raise CpsnakeError(
                f"{path}: tensor {key!r} declares {rec.numel:,} elements (shape {rec.shape}, stride {rec.stride}) over "
                f"a storage of {storage.numel:,}: an expanded (stride-0) view that would take "
                f"{rec.numel * storage.itemsize:,} bytes once copied; expected a plain tensor per key; {fix}"
            )
        total += rec.numel
    if total > max_parameters:
        raise CpsnakeError(
            f"{path}: found {total:,} parameters in all, more than the limit of {max_parameters:,} "
            f"(a ViT-H network has 632,442,818); expected a Cellpose-SAM state dict; {fix}"
        )
    for prefix in ("encoder.", "image_encoder.", "model.encoder."):
        if any(k.startswith(prefix + "patch_embed.") for k in recs):
            try:
                kw = infer_architecture(recs, prefix=prefix, source=str(path))
            except CpsnakeError:
                break  # inconsistent: the strict key check of the loader names the problem
            n = parameter_count(**kw)
            if n > max_parameters:
                raise CpsnakeError(
                    f"{path}: found encoder shapes (embed dim {kw['embed_dim']}, depth {kw['depth']}, mlp width "
                    f"{int(kw['embed_dim'] * kw['mlp_ratio'])}) that describe a network of {n:,} parameters, more than "
                    f"the limit of {max_parameters:,}; expected a Cellpose-SAM state dict; {fix}"
                )
            break
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else None
        except (OSError, ValueError):
            mm = None
        try:
            for key, rec in recs.items():
                if not _check_values(z, rec, mm):
                    raise CpsnakeError(
                        f"{path}: tensor {key!r} holds NaN or infinite values; expected finite weights (a network "
                        "with them finds no cells); use another weights file, or retrain from the last good checkpoint"
                    )
        finally:
            if mm is not None:
                mm.close()
    _CHECKED.add(stamp)
    return True


# --- architecture from shapes (shared with cpsnake.models.cpsam; no torch needed) -------------------------


def infer_architecture(state: Mapping[str, object], *, prefix: str = "encoder.", source: str = "state dict") -> dict:
    """Keyword arguments of :func:`cpsnake.models.cpsam.build_encoder` that reproduce the encoder stored under
    ``prefix``.

    ``state`` maps keys to anything with a ``shape`` (torch tensors, or :class:`TensorRecord`).
    Raises :class:`CpsnakeError` (naming ``source``) when the tensors that define the architecture
    are missing or inconsistent.
    """

    def get(key: str):
        if prefix + key not in state:
            some = ", ".join(list(state)[:3])
            raise CpsnakeError(
                f"{source}: found no {prefix + key!r} (keys start {some} ...), expected a cellpose-4 "
                "Cellpose-SAM state dict (encoder.*, out.*, W2, diam_labels, diam_mean); pass a cpsam-format file"
            )
        return state[prefix + key]

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        s = tuple(int(n) for n in get(key).shape)
        if len(s) != ndim or min(s) < 1:
            raise CpsnakeError(
                f"{source}: found {prefix + key!r} of shape {s}, expected {ndim} positive dimensions; "
                "pass a cpsam-format file"
            )
        return s

    embed_dim, in_chans, _, patch_size = shape("patch_embed.proj.weight", 4)  # D C p p
    blocks = sorted(
        {
            int(k[len(prefix) + 7 :].split(".")[0])
            for k in state
            if k.startswith(prefix + "blocks.") and k[len(prefix) + 7 :].split(".")[0].isdigit()
        }
    )
    depth = len(blocks)
    if depth == 0 or blocks != list(range(depth)):
        raise CpsnakeError(
            f"{source}: found blocks {blocks[:5]}..., expected {prefix}blocks.0 .. blocks.N-1; "
            "pass a complete cpsam-format file"
        )
    head_dim = shape("blocks.0.attn.rel_pos_h", 2)[1]
    rel = [int(shape(f"blocks.{i}.attn.rel_pos_h", 2)[0] + 1) // 2 for i in range(depth)]
    if embed_dim % head_dim:
        raise CpsnakeError(
            f"{source}: embed dim {embed_dim} is not a multiple of head dim {head_dim}; "
            "pass a complete cpsam-format file"
        )
    tokens = shape("pos_embed", 4)[1]
    return dict(
        embed_dim=int(embed_dim),
        depth=depth,
        num_heads=int(embed_dim // head_dim),
        out_chans=int(shape("neck.0.weight", 4)[0]),
        patch_size=int(patch_size),
        tokens=int(tokens),
        in_chans=int(in_chans),
        mlp_ratio=shape("blocks.0.mlp.lin1.weight", 2)[0] / embed_dim,
        qkv_bias=prefix + "blocks.0.attn.qkv.bias" in state,
        rel_pos_tokens=tuple(rel),
    )


def parameter_count(
    embed_dim: int,
    depth: int,
    num_heads: int,
    out_chans: int,
    *,
    patch_size: int = 8,
    tokens: int = 32,
    in_chans: int = 3,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    rel_pos_tokens=None,
    nout: int = 3,
) -> int:
    """Parameters of the Cellpose-SAM network :func:`cpsnake.models.cpsam.build_encoder` builds from these arguments
    (encoder, readout ``out``, ``W2`` and the two diameters), computed without building it."""
    d, m, hd = embed_dim, int(embed_dim * mlp_ratio), embed_dim // max(num_heads, 1)
    rel = rel_pos_tokens if rel_pos_tokens is not None else tokens
    rel = [rel] * depth if isinstance(rel, int) else list(rel)
    blocks = sum(
        2 * d
        + 3 * d * d
        + (3 * d if qkv_bias else 0)
        + d * d
        + d
        + 2 * (2 * r - 1) * hd
        + 2 * d
        + d * m
        + m
        + m * d
        + d
        for r in rel
    )
    encoder = d * in_chans * patch_size**2 + d + tokens * tokens * d + blocks
    encoder += out_chans * d + 2 * out_chans + out_chans * out_chans * 9 + 2 * out_chans  # neck
    k = nout * patch_size**2
    return encoder + out_chans * k + k + k * k + 2
