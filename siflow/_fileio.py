"""Atomic file output and optional-dependency imports."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import itertools
import math
import os
import re
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_path",
    "claim_folder",
    "ensure_dir",
    "json_ready",
    "remove_stale_temporaries",
    "require",
    "signals_deferred",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: When this module was imported: temporaries older than this cannot be this process's.
_STARTED = time.time()
#: Marker in every temporary name written here: ``.NAME.<pid>-XXXXXXXX.siflow.tmp.EXT``.
_TMP_MARK = ".siflow.tmp"
#: Longest file name (bytes) most file systems take, where ``pathconf`` cannot tell.
NAME_MAX = 255
#: Bytes a temporary name adds to its stem and suffix: ``.``, ``.<pid>-``, 8 random
#: characters and the marker (a pid of up to 10 digits).
_TMP_OVERHEAD = 1 + 1 + 10 + 1 + 8 + len(_TMP_MARK)
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


def _on_read_only_file_system(path: Path) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (False if unknown)."""
    with contextlib.suppress(OSError, AttributeError):
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    return False


def _check_replaceable(path: Path) -> os.stat_result | None:
    """The status of the file ``path`` replaces (None if new); refuse what open() would."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"output path {str(path)!r} is a directory; pass a file name")
    if not _writable(path):
        if _on_read_only_file_system(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
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


def _name_max(directory: Path) -> int:
    """The longest file name (bytes) ``directory`` takes (:data:`NAME_MAX` if unknown)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    return NAME_MAX


def _temporary_stem_and_suffix(name: str, name_max: int = NAME_MAX) -> tuple[str, str]:
    """The stem and suffix a temporary for the file ``name`` is named with.

    The stem of ``name`` where the temporary's name fits in ``name_max`` bytes, else
    the first 16 hex digits of its SHA-256; the suffix of ``name`` (writers such as
    ``numpy.savez`` choose the format by it) unless it alone would not fit.

    Parameters
    ----------
    name : str
        The final file name (no folder).
    name_max : int
        The longest name, in bytes, the folder takes.

    Returns
    -------
    tuple of str
        ``(stem, suffix)``: the temporary is ``.STEM.<pid>-XXXXXXXX.siflow.tmp.SUFFIX``.
    """
    path = Path(name)
    stem, suffix = path.stem, path.suffix
    room = name_max - _TMP_OVERHEAD
    if len(os.fsencode(suffix)) > room - 16:
        suffix = ""
    if len(os.fsencode(stem)) + len(os.fsencode(suffix)) > room:
        stem = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return stem, suffix


def _naming(exc: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """``exc`` naming the output ``path`` instead of the temporary the user never chose.

    An error naming another file (or without an error number) is returned as it is.
    """
    if exc.errno is None:
        return exc
    if tmp is not None and exc.filename is not None and str(exc.filename) != str(tmp):
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and ``path`` is left as it was: readers never see half a file.
    The temporary name keeps the suffix of ``path`` so writers that choose a
    format by suffix (``numpy.savez``, ``matplotlib.savefig``) still work; its stem
    is a short hash where the name would pass the folder's limit (255 bytes on most
    file systems), so any name the file system takes can be written
    (:func:`_temporary_stem_and_suffix`). An ``OSError`` about the temporary names
    ``path`` instead.

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
    stem, suffix = _temporary_stem_and_suffix(path.name, _name_max(parent))
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{stem}.{os.getpid()}-", suffix=f"{_TMP_MARK}{suffix}", dir=parent
        )
    except OSError as exc:
        raise _naming(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _copy_mode_and_owner(tmp_path, old)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise _naming(exc, path, tmp_path) from None
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


#: Signals held by :func:`signals_deferred`: Ctrl-C and a polite termination request.
_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


def _deliver(signum: int, handler: Any) -> None:
    """Act on ``signum`` as ``handler`` (the one restored) would have on arrival."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM during the block; act on them once it has ended.

    A write that must not be cut short (the final save of a finished run) runs to its
    end: a signal arriving meanwhile is recorded, and after the block the handlers in
    place before it are restored and each signal received is handed to its handler,
    as if it had arrived just then (Ctrl-C raises ``KeyboardInterrupt`` after the file
    is complete). Signals reach Python code only in the main thread, so elsewhere
    nothing is installed; an ignored signal, or one whose handler was not set from
    Python, is left alone.

    Yields
    ------
    list of int
        The signals received so far during the block.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    try:
        for signum in _DEFERRED:
            handler = signal.getsignal(signum)
            if handler is None or handler == signal.SIG_IGN:
                continue
            previous[signum] = handler
            signal.signal(signum, hold)
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            _deliver(signum, previous[signum])


def claim_folder(root: Path, name: str, is_ours: Callable[[Path], bool]) -> tuple[Path, bool]:
    """A command's default output folder: ``root/name``, or ``name-2``, ``name-3``, ...

    A new folder is claimed by creating it (``os.mkdir``, which fails when it exists), so
    two commands started together never share one; an existing folder is used again only
    when ``is_ours(folder)`` says it holds this command's earlier output. ``root`` is
    made if missing.

    Returns
    -------
    tuple
        ``(folder, created)``; ``created`` is False for a folder used again.
    """
    root.mkdir(parents=True, exist_ok=True)
    for k in itertools.count(1):
        out = root / (name if k == 1 else f"{name}-{k}")
        try:
            os.mkdir(out)
        except FileExistsError:
            if out.is_dir() and is_ours(out):
                return out, False
            continue
        return out, True
    raise AssertionError("unreachable")  # pragma: no cover


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


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON takes it: dicts and sequences walked, numpy arrays and
    scalars as Python lists and numbers, NaN and infinities as ``None`` (``null``), so
    ``json.dumps(..., allow_nan=False)`` succeeds and any JSON parser reads the file."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())  # numpy arrays and scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
