"""Atomic file output and optional-dependency imports."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

__all__ = ["atomic_write", "atomic_path", "ensure_dir", "remove_stale_temporaries", "require"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: When this module was imported: temporaries older than this cannot be this process's.
_STARTED = time.time()
#: Marker in every temporary name written here: ``.NAME.<pid>-XXXXXXXX.siflow.tmp.EXT``.
_TMP_MARK = ".siflow.tmp"
_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)-[A-Za-z0-9_]{8}\.siflow\.tmp(\.[^.]+)?$")
#: Names of the temporaries of earlier versions (``.NAME.XXXXXXXX.tmp.EXT``, no pid).
_OLD_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")
_CLEANED: set[str] = set()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): keep its file
    return True


def _is_stale_temporary(entry: os.DirEntry[str]) -> bool:
    """A temporary left by a writer that was killed: older than this process, writer gone."""
    match = _TMP_RE.match(entry.name)
    if match is None and _OLD_TMP_RE.match(entry.name) is None:
        return False
    try:
        if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= _STARTED:
            return False
    except OSError:
        return False
    return match is None or not _pid_alive(int(match["pid"]))


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries that killed writers left in ``directory``; return their paths.

    A temporary is stale when its name is one :func:`atomic_path` gives
    (``.NAME.<pid>-XXXXXXXX.siflow.tmp.EXT``, or ``.NAME.XXXXXXXX.tmp.EXT`` of earlier
    versions), it was last modified before this process started, and the process
    named in it no longer runs. Files that cannot be removed are left alone.
    """
    removed = []
    with contextlib.suppress(OSError), os.scandir(directory) as it:
        for entry in it:
            if _is_stale_temporary(entry):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _writable(path: Path) -> bool:
    """Whether ``open(path, "w")`` would be allowed for this process (effective ids)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def _check_replaceable(path: Path) -> os.stat_result | None:
    """The status of the file ``path`` replaces (None if new); refuse what open() would."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"output path {str(path)!r} is a directory; pass a file name")
    if not _writable(path):
        raise PermissionError(
            f"output file {str(path)!r} is read-only (mode {stat.S_IMODE(st.st_mode):o}); "
            f"make it writable (chmod u+w) or pass another path"
        )
    return st


def _copy_mode_and_owner(tmp: Path, old: os.stat_result | None) -> None:
    """Give ``tmp`` the mode (and, as root, the owner) of the file it replaces.

    A new file gets what ``open()`` would give: ``0o666 & ~umask``.
    """
    if old is None:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    if hasattr(os, "chown"):
        if os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(tmp, old.st_uid, old.st_gid)
        else:  # keep the group when this user may (a member of it)
            with contextlib.suppress(OSError):
                os.chown(tmp, -1, old.st_gid)
    os.chmod(tmp, stat.S_IMODE(old.st_mode))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and ``path`` is left as it was: readers never see half a file.
    The temporary name keeps the suffix of ``path`` so writers that choose a
    format by suffix (``numpy.savez``, ``matplotlib.savefig``) still work.

    Replacing an existing file keeps its permission bits (and, when running as
    root, its owner and group); a file this user could not ``open()`` for
    writing (e.g. mode 0444) is refused with ``PermissionError``. A new file gets
    ``0o666 & ~umask``, as ``open()`` gives. The first write of this process into
    a directory removes the temporaries that killed writers left there
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"output directory {str(parent)!r} does not exist; create it or pass another path"
        )
    old = _check_replaceable(path)
    key = os.path.abspath(parent)
    if key not in _CLEANED:
        remove_stale_temporaries(parent)
        _CLEANED.add(key)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.{os.getpid()}-", suffix=f"{_TMP_MARK}{path.suffix}", dir=parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _copy_mode_and_owner(tmp_path, old)
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file for writing and move it onto ``path`` when closed cleanly."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and check it is a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{str(path)!r} exists and is not a directory; pass another output directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(
            f"directory {str(path)!r} is not writable; pass another output directory"
        )
    return path


def require(module: str, extra: str, pip_name: str | None = None) -> ModuleType:
    """Import an optional dependency or raise ``ImportError`` naming the pip command.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"torch"``.
    extra : str
        The siflow extra that provides it, e.g. ``"torch"``.
    pip_name : str, optional
        What to ``pip install`` directly, when it differs from the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = pip_name or f'"siflow[{extra}]"'
        raise ImportError(
            f"{module} is needed for this feature but is not installed; run: pip install {hint}"
        ) from None
