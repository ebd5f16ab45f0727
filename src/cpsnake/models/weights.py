"""Model weights: a registry of names, a sha256-checked download cache (``cpsnake weights list|fetch``:
:mod:`cpsnake.steps.weights`).

A model is given by registry name or by path, wherever a model is asked for::

    cpsnake weights list  [--cache-dir D]
    cpsnake weights fetch NAME [--cache-dir D] [--base-url URL] [--revision REV]   # prints the file's path

Registry (:data:`REGISTRY`, name -> :class:`Entry`):

- ``cpsam_v2``, ``cpsam``: Cellpose-SAM ViT-L weights (1.2 GB each) from the Hugging Face repository
  ``mouseland/cellpose-sam`` at revision ``main`` (what cellpose itself downloads). A moving revision is
  safe because size and sha256 are pinned: if the file there ever changes, the fetch fails loudly.
  Pin a commit with ``--revision COMMIT`` (env ``CPSNAKE_WEIGHTS_REVISION``); sites with their own copy
  point ``--base-url URL`` (env ``CPSNAKE_WEIGHTS_URL``) at a folder holding files named ``cpsam``,
  ``cpsam_v2``.
- ``nuclei_small``, ``nuclei_unet``: the small models bundled with the repository
  (``resources/models/NAME.pt``; ``nuclei_unet`` is a classic Cellpose U-Net with its size model
  ``size_nuclei_unet.npy`` beside it), verified by size and sha256 like a download (hashed on every use:
  they are small).

Cache: ``--cache-dir`` / ``cache_dir=`` > env ``CPSNAKE_CACHE`` > ``~/.cache/cpsnake``. A download goes to
``NAME.part`` (resumed with an HTTP Range request after an interruption when the server allows it, else
restarted), is checked for size and sha256, and only then renamed to ``NAME``. Two processes fetching
the same file take turns on ``NAME.lock`` (``fcntl.flock``; POSIX only, no locking on Windows). After a
file is verified, ``NAME.sha256`` records ``sha256 size mtime_ns``; while the file's size and mtime
still match that stamp it is trusted without rehashing and without any network call. A cached file
that fails verification is deleted and fetched again.

Any failure (unknown name, HTTP error, refused connection, truncated body, wrong size or hash) raises
one :class:`CpsnakeError` line, and nothing is left under the final name (a truncated ``.part`` is kept
so the next fetch resumes it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Mapping

from cpsnake.errors import CpsnakeError
from cpsnake.io import files

__all__ = [
    "Entry",
    "REGISTRY",
    "REVISION",
    "HF_BASE",
    "registry_entry",
    "resolve",
    "fetch",
    "cache_dir_default",
    "entry_status",
    "human_size",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
REVISION = "main"
HF_BASE = "https://huggingface.co/mouseland/cellpose-sam/resolve/{revision}"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Entry:
    """One registry entry.

    Attributes
    ----------
    name : str
        Registry name; also the file name in the cache and under the download base URL.
    size, sha256 : int, str or None
        Expected size in bytes and hex sha256. ``None`` only for a bundled file not yet made
        (resolving it is then an error that prints the values to fill in).
    base : str or None
        Download base URL (``{revision}`` is filled in); ``None`` for bundled entries.
    bundled : Path or None
        File shipped with the repository; ``None`` for downloads.
    note : str
        One line for ``cpsnake weights list``.
    """

    name: str
    size: int | None
    sha256: str | None
    base: str | None = None
    bundled: Path | None = None
    note: str = ""

    def url(self, *, base_url: str | None = None, revision: str | None = None) -> str:
        base = base_url or (self.base or "").format(revision=revision or REVISION)
        return base.rstrip("/") + "/" + self.name


REGISTRY: Mapping[str, Entry] = MappingProxyType(
    {
        "cpsam_v2": Entry(
            "cpsam_v2",
            1_233_586_851,
            "0f1cc3f7ecdd8a037a57c6c48d9d8921391be4cbce3fa9f13c3e3a2e1253c667",
            base=HF_BASE,
            note="Cellpose-SAM v2, ViT-L (cellpose 4 default)",
        ),
        "cpsam": Entry(
            "cpsam",
            1_233_587_898,
            "e1440429eb384f95afe32bcba6510f90d518eaedc917ede549bed6804004abe2",
            base=HF_BASE,
            note="Cellpose-SAM, ViT-L (as published)",
        ),
        # size and sha256 of resources/models/nuclei_small.pt (see resources/models/MODEL_CARD.md)
        "nuclei_small": Entry(
            "nuclei_small",
            9_140_833,
            "d76ec8490cb0720fe77816191d33a34191d318c6c31551b749c9732e9d1f69d8",
            bundled=REPO_ROOT / "resources" / "models" / "nuclei_small.pt",
            note="small 'tiny' model for nuclei, fast on CPU (bundled)",
        ),
        # size and sha256 of resources/models/nuclei_unet.pt (see resources/models/MODEL_CARD_nuclei_unet.md)
        "nuclei_unet": Entry(
            "nuclei_unet",
            6_736_909,
            "a84e537d34e7356ec098f7fca8b9e2f50c899ffb31ce99361b60e2a652613081",
            bundled=REPO_ROOT / "resources" / "models" / "nuclei_unet.pt",
            note="classic Cellpose U-Net for nuclei, with its size model (bundled)",
        ),
    }
)


def cache_dir_default(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else env ``CPSNAKE_CACHE``, else ``~/.cache/cpsnake``."""
    return Path(cache_dir or os.environ.get("CPSNAKE_CACHE") or "~/.cache/cpsnake").expanduser()


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


# --- verification stamps --------------------------------------------------------------------------


def _stamp_path(final: Path) -> Path:
    return final.with_name(final.name + ".sha256")


def _stamp_ok(final: Path, entry: Entry) -> bool:
    """True when ``final`` exists and its stamp says it was hashed at its current size and mtime."""
    try:
        st = final.stat()
        digest, size, mtime = _stamp_path(final).read_text().split()
    except (OSError, ValueError):
        return False
    return digest == entry.sha256 and int(size) == st.st_size == entry.size and int(mtime) == st.st_mtime_ns


def _write_stamp(final: Path, digest: str) -> None:
    from cpsnake.io.outputs import atomic_output

    st = final.stat()
    with atomic_output(_stamp_path(final)) as tmp:
        tmp.write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n")


def _verify(path: Path, entry: Entry, what: str) -> str | None:
    """None if ``path`` has the entry's size and sha256, else a description of what was found."""
    size = path.stat().st_size
    if size != entry.size:
        return f"{what} {path} has {size} bytes, expected {entry.size}"
    digest = files.sha256(path, expected="a weights file")
    if digest != entry.sha256:
        return f"{what} {path} has sha256 {digest}, expected {entry.sha256}"
    return None


@contextlib.contextmanager
def _locked(lock: Path, *, progress: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock`` (created if needed) for the block; no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows: no inter-process lock
        yield
        return
    with open(lock, "a+") as fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process to finish {lock.with_suffix('')}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


# --- download ---------------------------------------------------------------------------------------


def _open(url: str, start: int):
    """urlopen ``url`` asking for bytes from ``start`` on; CpsnakeError for HTTP/connection errors."""
    from cpsnake import __version__

    headers = {"User-Agent": f"cpsnake/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:
            return None  # the .part already holds everything the server has
        raise CpsnakeError(
            f"{url}: HTTP {exc.code} {exc.reason}, expected the weights file; check the model name, "
            "--base-url / CPSNAKE_WEIGHTS_URL and --revision"
        ) from None
    except urllib.error.URLError as exc:
        raise CpsnakeError(
            f"{url}: cannot connect ({exc.reason}); check the network, or use --base-url for a "
            "mirror, or give the path of a local weights file instead of the name"
        ) from None
    except OSError as exc:  # timeouts, resets before the headers
        raise CpsnakeError(f"{url}: connection failed ({exc}); try again, or use --base-url for a mirror") from None


def _download(url: str, part: Path, entry: Entry, *, progress: bool) -> None:
    """Bring ``part`` to the complete body of ``url``: resume from its current size if the server sends
    206 for a Range request, else start over. CpsnakeError (``part`` kept) if the body ends early."""
    import http.client

    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    if entry.size is not None and have > entry.size:
        part.unlink()
        have = 0
    resp = _open(url, have)
    if resp is None:  # 416: nothing more to get; the caller verifies what we have
        return
    with resp:
        resumed = have > 0 and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length is not None else entry.size
        got, interrupted = have, None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(  # an OSError writing: see fetch
                total=expected,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=entry.name,
                file=sys.stderr,
                disable=not progress,
                mininterval=1.0,
            ) as bar,
        ):
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.IncompleteRead, OSError) as exc:
                    interrupted = exc
                    break
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if interrupted is not None:
            raise CpsnakeError(
                f"{url}: download interrupted after {got} of {expected} bytes ({interrupted}); "
                f"run the fetch again to resume {part}"
            )
    if expected is not None and got < expected:
        raise CpsnakeError(
            f"{url}: body truncated, got {got} of {expected} bytes; run the fetch again to resume {part}"
        )


def fetch(
    entry: Entry,
    cache_dir: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    revision: str | None = None,
    download: bool = True,
    progress: bool = False,
) -> Path:
    """The verified cached file of a download entry, fetching it first if needed.

    No network call is made while ``CACHE/NAME`` matches its ``NAME.sha256`` stamp. Otherwise, under
    the lock ``CACHE/NAME.lock``: a present but unstamped file is hashed (stamped if right, deleted if
    wrong); a missing one is downloaded to ``NAME.part`` (resumed if possible), verified by size and
    sha256 and renamed. ``download=False`` raises instead of downloading. A cache that cannot be written (read-only,
    full, a file in the way) is a one-line CpsnakeError (:func:`cpsnake.io.outputs.output_error`).
    """
    from cpsnake.io.outputs import make_folder, output_error

    cache = cache_dir_default(cache_dir)
    final = cache / entry.name
    if _stamp_ok(final, entry):
        return final
    make_folder(cache)
    try:
        return _fetch_locked(
            entry, cache, final, base_url=base_url, revision=revision, download=download, progress=progress
        )
    except OSError as exc:
        raise output_error(final, exc) from None


def _fetch_locked(
    entry: Entry, cache: Path, final: Path, *, base_url, revision, download: bool, progress: bool
) -> Path:
    """The body of :func:`fetch`, under the cache's lock for ``entry``."""
    with _locked(cache / f"{entry.name}.lock", progress=progress):
        if _stamp_ok(final, entry):  # another process finished while we waited
            return final
        if os.path.lexists(final) and not os.path.isfile(final):  # a folder, a dead link, ...: refused, kept
            from cpsnake.io.outputs import check_target

            check_target(final)
        if final.exists():
            problem = _verify(final, entry, "cached file")
            if problem is None:
                _write_stamp(final, entry.sha256)
                return final
            print(f"cpsnake weights: {problem}; deleting it", file=sys.stderr)
            final.unlink()
            _stamp_path(final).unlink(missing_ok=True)
        url = entry.url(
            base_url=base_url or os.environ.get("CPSNAKE_WEIGHTS_URL"),
            revision=revision or os.environ.get("CPSNAKE_WEIGHTS_REVISION"),
        )
        if not download:
            raise CpsnakeError(
                f"{final}: model {entry.name!r} is not in the cache; run "
                f"`cpsnake weights fetch {entry.name} --cache-dir {cache}` (source {url})"
            )
        part = cache / f"{entry.name}.part"
        _download(url, part, entry, progress=progress)
        problem = _verify(part, entry, "download")
        if problem is not None:
            part.unlink()
            raise CpsnakeError(
                f"{url}: {problem}; the source holds a different file: check --base-url / "
                "--revision, or the registry entry in cpsnake.models.weights"
            )
        os.replace(part, final)
        _write_stamp(final, entry.sha256)
        return final


def _bundled(entry: Entry) -> Path:
    path = entry.bundled
    if not path.is_file():
        raise CpsnakeError(
            f"{path}: bundled model {entry.name!r} is missing, expected it in the repository; "
            "use a full checkout of cpsnake, or give another model name or a path"
        )
    if entry.sha256 is None or entry.size is None:
        digest = files.sha256(path, expected="a weights file")
        raise CpsnakeError(
            f"{path}: registry entry {entry.name!r} has no size/sha256 yet; found size "
            f"{path.stat().st_size} sha256 {digest}; enter them in cpsnake.models.weights.REGISTRY"
        )
    problem = _verify(path, entry, "bundled model")
    if problem is not None:
        raise CpsnakeError(f"{problem}; restore the file from the repository (git checkout -- {path.name})")
    return path


def registry_entry(name_or_path: str | os.PathLike, registry: Mapping[str, Entry] | None = None) -> Entry | None:
    """The registry entry that ``name_or_path`` names, or None when it is to be read as a path.

    The one rule for every face (``cpsnake segment``, the steps, the Python API and the workflow, through
    :mod:`cpsnake.run.workflow_args`): a registry name wins over a file of the same name in the working
    folder, so ``cpsam`` means the same weights everywhere; write ``./cpsam`` for the file.
    """
    return (REGISTRY if registry is None else registry).get(os.fspath(name_or_path))


def resolve(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    revision: str | None = None,
    download: bool = True,
    progress: bool = False,
    registry: Mapping[str, Entry] | None = None,
) -> Path:
    """Path of a verified weights file for a registry name, or the given path for a local file.

    A registry name wins over a file of the same name in the working folder (write ``./cpsam`` for
    the file). A name that is neither known nor an existing file is an error listing the known names.

    Parameters
    ----------
    cache_dir, base_url, revision
        Override the cache folder, the download base URL and the revision (see the module docstring).
    download : bool
        If False, a registry file missing from the cache is an error instead of a download.
    registry : mapping, optional
        Name -> :class:`Entry`; default :data:`REGISTRY` (tests pass their own).
    """
    registry = REGISTRY if registry is None else registry
    key = os.fspath(name_or_path)
    entry = registry_entry(key, registry)
    if entry is None:
        path = Path(key).expanduser()
        if os.path.lexists(path):
            if path.is_dir():
                raise CpsnakeError(
                    f"{path}: is a folder, expected a weights file or a model name; pass the weights file "
                    f"inside it (e.g. {path / 'model.pt'}, as `cpsnake train` writes) or a registry name "
                    f"({', '.join(registry)})"
                )
            from cpsnake.io.files import regular_file

            regular_file(path, "a weights file (a torch.save'd state dict) or a model name")
            return path
        looks_like_path = os.sep in key or "/" in key or Path(key).suffix != ""
        if looks_like_path:
            raise CpsnakeError(
                f"{path}: no such weights file; check the path, or use a model name ({', '.join(registry)})"
            )
        raise CpsnakeError(
            f"model {key!r}: unknown name and no such file, expected one of {', '.join(registry)} "
            "or the path of a weights file; see `cpsnake weights list`"
        )
    if entry.bundled is not None:
        return _bundled(entry)
    return fetch(entry, cache_dir, base_url=base_url, revision=revision, download=download, progress=progress)


def entry_status(entry: Entry, cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(status, source) for ``cpsnake weights list``; never hashes a downloaded file, never uses the network."""
    if entry.bundled is not None:
        path = entry.bundled
        if not path.is_file():
            return "missing", str(path)
        if entry.sha256 is None:
            return "present, no sha256 in registry", str(path)
        ok = path.stat().st_size == entry.size and files.sha256(path, expected="a weights file") == entry.sha256
        return ("bundled, verified" if ok else "bundled, HASH MISMATCH"), str(path)
    final = cache_dir_default(cache_dir) / entry.name
    source = entry.url(
        base_url=os.environ.get("CPSNAKE_WEIGHTS_URL"), revision=os.environ.get("CPSNAKE_WEIGHTS_REVISION")
    )
    if _stamp_ok(final, entry):
        return "cached, verified", source
    if final.exists():
        return "cached, not yet verified", source
    part = final.with_name(final.name + ".part")
    if part.exists():
        return f"partial ({human_size(part.stat().st_size)})", source
    return "not cached", source
