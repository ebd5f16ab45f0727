"""Writing outputs: under a temporary name first, one line for every failure on the output side, an image's
files all or none, and a link named like an output never followed.

Every file and folder cpsnake writes goes through :func:`atomic_output`: it is written under a temporary name
beside its final name (``.NAME.tif.<pid>.tmp.tif``; a folder, e.g. an OME-Zarr, ``.NAME.zarr.<pid>.tmp``) and
renamed to the final name only when complete, so no partial file ever sits under a final name; if the writer
fails the temporary file is removed.

**What may be replaced.** A final name may hold nothing, a regular file (for a file) or a folder (for a
folder, e.g. ``masks/NAME.zarr``: replaced whole). Anything else there is refused before anything is
written, with one line: a symbolic link (to anything, or to nothing), a folder where a file goes, a file
where a folder goes, a FIFO, socket or device. A link is never followed: nothing is written through it and
neither it nor what it points at is deleted. (Folders *above* the final name may be links: a ``masks``
folder linked to another disk is written into.)

**Errors.** An ``OSError`` while making the folders, writing or renaming becomes a one-line
:class:`~cpsnake.errors.CpsnakeError` naming the output and the fix (:func:`output_error`): a full disk or
quota, a read-only file system, permission denied, a file where a folder is needed (``--out`` naming a file,
or a parent that is a file), a folder under a file's name, a path too long.

**All or nothing.** Inside ``with all_or_nothing():`` (one per image: ``cpsnake segment`` and each image of a
``cpsnake batch`` step) the renames wait for the end of the block. If the block fails, every temporary file of
it is removed and no final name is touched. If it succeeds, every final name is checked, then the files are
renamed into place one by one, a previous file or folder first moved aside; if a rename fails, the renames
already done are undone (the previous files put back) and the block fails with one line. Files moved aside
and temporary files are always removed. A process killed (SIGKILL) while it writes leaves hidden temporary
files and never a partial file under a final name; killed in the instant of the renames, it may leave part of
an image's files in place (in the workflow its job then has no manifest and runs again).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

from cpsnake.errors import CpsnakeError, one_line

__all__ = [
    "atomic_output",
    "all_or_nothing",
    "written",
    "make_folder",
    "writable_folder",
    "check_output",
    "check_target",
    "output_error",
    "discard",
    "scratch_folder",
]

_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("cpsnake_pending_outputs", default=None)

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISREG, "a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), f"a file of mode {mode:o}")


def _blocker(path: Path) -> Path | None:
    """The first existing component of ``path`` (from the root) that is not a folder, or None."""
    for p in (*reversed(path.parents), path):
        if os.path.lexists(p) and not os.path.isdir(p):
            return p
    return None


def _free_bytes(folder: Path) -> float:
    """Bytes free for this user on the disk holding ``folder`` (its nearest existing parent); inf if unknown."""
    for p in (folder, *folder.parents):
        if os.path.isdir(p):
            try:
                st = os.statvfs(p)
            except OSError:
                return float("inf")
            return st.f_bavail * st.f_frsize
    return float("inf")


def output_error(path: str | os.PathLike, exc: OSError) -> CpsnakeError:
    """A one-line CpsnakeError for an ``OSError`` raised while writing the output ``path``: the path, what was
    found (by errno), what was expected and the fix."""
    path = Path(path)
    folder = path if os.path.isdir(path) else path.parent
    why = f"cannot be written ({exc.strerror or one_line(exc) or type(exc).__name__})"
    code = exc.errno
    if code is None and _free_bytes(folder) < 2**20:  # a short write ("N requested and M written") on a full disk
        code = errno.ENOSPC
    if code in (errno.ENOSPC, errno.EDQUOT):
        found = "a full disk (or quota)"
        fix = f"free space on the disk holding {folder} (see `df -h {folder}`) or write to another disk"
    elif code == errno.EROFS:
        found, fix = "a read-only file system", "write to a folder on a writable disk"
    elif code in (errno.EACCES, errno.EPERM):
        found = "no permission to write there"
        fix = f"give yourself write permission (`ls -ld {folder}`) or write elsewhere"
    elif code in (errno.ENOTDIR, errno.EEXIST) and _blocker(path) is not None:
        blocker = _blocker(path)
        found = f"{_kind(os.lstat(blocker).st_mode)} where a folder is needed ({blocker})"
        fix = "move or rename it, or write elsewhere"
    elif code == errno.EISDIR:
        found, fix = "a folder under the output name", "move or remove it, or write elsewhere"
    elif code == errno.ENAMETOOLONG:
        found, fix = "a name too long for the file system", "use a shorter name or folder"
    elif code == errno.ELOOP:
        found, fix = "a loop of symbolic links in the path", f"fix the links (see `ls -l {folder}`)"
    else:
        found, fix = f"error {errno.errorcode.get(code, code)}", "check the folder, its permissions and the free space"
    return CpsnakeError(f"{path}: {why}: found {found}; expected a writable output; {fix}")


def make_folder(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; an ``OSError`` (a file in the way, read-only, no permission, ...) is a one-line
    CpsnakeError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    return path


def writable_folder(path: str | os.PathLike) -> Path:
    """Check that files can be written in the folder ``path`` before any work is done: the folder is made
    (:func:`make_folder`), a probe file created and removed in it, and the folders made for the probe removed
    again, so a check leaves nothing behind; a folder that cannot be written is a one-line CpsnakeError (root
    ignores permissions but not a read-only disk)."""
    import tempfile

    path = Path(path)
    made = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
    make_folder(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".cpsnake-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                os.rmdir(p)
    return path


def check_output(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Every output-side refusal that can be known before the work: ``path``'s folder made and probed
    (:func:`writable_folder`) and its final name checked (:func:`check_target`)."""
    writable_folder(Path(path).parent)
    check_target(path, folder=folder)


def check_target(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Refuse a final name that holds something cpsnake must not replace (see the module docstring)."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise output_error(path, exc) from None
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return
    expected = "a folder cpsnake wrote (replaced whole)" if folder else "a file cpsnake may replace"
    if stat.S_ISLNK(mode):
        raise CpsnakeError(
            f"{path}: found a symbolic link (to {os.readlink(path)}) under an output name; expected "
            f"{expected}, or nothing; cpsnake never writes through or deletes a link: remove the link "
            f"(`rm {path}` leaves its target alone) or write elsewhere"
        )
    raise CpsnakeError(
        f"{path}: found {_kind(mode)} under an output name; expected {expected}, or nothing; move or "
        "remove it, or write elsewhere"
    )


_SCRATCH_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def scratch_folder(prefix: str, folder: str | os.PathLike | None = None) -> Iterator[str]:
    """A temporary folder (in ``folder``, default the system's: ``$TMPDIR`` or /tmp), removed afterwards.

    Scratch data (block flows, a label image built on disk) is no output, but its disk fills up too: an
    ``OSError`` of a full, read-only or unwritable scratch disk raised inside the block is one line naming
    the folder and the fix (set ``TMPDIR``); other errors pass unchanged.
    """
    import tempfile

    base = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryDirectory(prefix=prefix, dir=folder) as tmp:
            yield tmp
    except OSError as exc:
        if exc.errno not in _SCRATCH_ERRNOS:
            raise
        reason = output_error(base, exc)
        raise CpsnakeError(
            f"scratch folder {reason}; or point TMPDIR at a disk with room (export TMPDIR=/path)"
        ) from None


def discard(path: str | os.PathLike) -> None:
    """Remove a regular file or a folder (its tree; links inside are removed, not followed); leave a link or
    anything else alone; nothing there is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path, ignore_errors=True)
    elif stat.S_ISREG(mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, else delete it.

    The temporary name keeps the final suffix (``.NAME.tif.<pid>.tmp.tif``) so writers that pick a format from
    the extension still work; with ``folder`` it is a folder name (``.NAME.zarr.<pid>.tmp``, not created) for
    a writer that makes a folder. Inside :func:`all_or_nothing` the rename waits for the end of that block.
    The parent folders are made; a final name that must not be replaced and every ``OSError`` on the way
    (the block's own included) are one-line CpsnakeErrors (see the module docstring).
    """
    final = Path(path)
    make_folder(final.parent)
    check_target(final, folder=folder)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp{'' if folder else final.suffix}")
    discard(tmp)  # a leftover of a killed process with this pid
    pending = _PENDING.get()
    try:
        try:
            yield tmp
        except OSError as exc:
            raise output_error(final, exc) from None
        if pending is not None:
            pending.append((tmp, final, folder))
        else:
            _commit([(tmp, final, folder)])
    except BaseException:
        discard(tmp)
        raise


def written(path: str | os.PathLike) -> Path:
    """Where the file written under ``path`` in the current :func:`all_or_nothing` block lies until the block
    ends (its temporary name); ``path`` itself when it is not waiting there."""
    for tmp, final, _ in _PENDING.get() or ():
        if final == Path(path):
            return tmp
    return Path(path)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """The outputs written (by :func:`atomic_output`) inside the block are renamed into place together at its end,
    or none is (see the module docstring). Nested blocks join the outer one."""
    if _PENDING.get() is not None:
        yield
        return
    pending: list = []
    token = _PENDING.set(pending)
    try:
        yield
        _PENDING.reset(token)
        token = None
        _commit(pending)
    finally:
        if token is not None:
            _PENDING.reset(token)
        for tmp, _, _ in pending:
            discard(tmp)


def _commit(items: list[tuple[Path, Path, bool]]) -> None:
    """Rename each ``(tmp, final, folder)`` into place; on a failure undo the renames done, then raise one line."""
    for _, final, folder in items:
        check_target(final, folder=folder)
    done: list[tuple[Path, Path | None]] = []  # (final, the previous file or folder moved aside)
    for tmp, final, folder in items:
        old = None
        try:
            if os.path.lexists(final) and (folder or len(items) > 1):  # kept until every rename is done
                old = final.with_name(f".{final.name}.{os.getpid()}.old")
                discard(old)
                os.rename(final, old)
            try:
                os.replace(tmp, final)
            except OSError:
                if old is not None:
                    os.rename(old, final)
                raise
        except OSError as exc:
            for f, o in reversed(done):
                discard(f)
                if o is not None:
                    with contextlib.suppress(OSError):
                        os.rename(o, f)
            raise output_error(final, exc) from None
        done.append((final, old))
    for _, old in done:
        if old is not None:
            discard(old)
