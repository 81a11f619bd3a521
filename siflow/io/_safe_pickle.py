"""Reading pickles and ``torch.save`` files without running code from them, and without torch.

A pickle can name any importable callable and call it (``os.system`` through
``__reduce__``), so no pickle is ever handed to :func:`pickle.load`. Here
:class:`RestrictedUnpickler` resolves only an allowlist of names
(:data:`ALLOWED`), each mapped to a function of this module that builds plain
data:

- torch tensors and storages (``torch._utils._rebuild_tensor_v2``,
  ``torch.FloatStorage``..., ``torch.storage._load_from_bytes``) become numpy
  arrays, rebuilt from the raw storage bytes with bounds checked: torch is
  never imported, so these files read the same with and without it;
- numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct``,
  ``numpy.dtype``, ``numpy.core.multiarray.scalar``);
- ``collections.OrderedDict``, ``set``/``frozenset``, and ``_codecs.encode``
  for latin-1 text (how protocol 2 stores bytes).

Any other name, a persistent id that is not a storage, a storage view out of
bounds, or a declared size that would inflate (decompression bomb) raises
``ValueError``. This is the same allowlist idea as ``torch.load(weights_only=True)``,
narrower (no torch classes are instantiated) and with numpy scalars allowed
(the ideal-gas trace stores them, which ``weights_only=True`` refuses).

A pickle cut short or garbled (a run killed while it appended a dump) is a
``ValueError`` naming the file, whether it is truncated or damaged, and the fix:
for a file of appended dumps, the byte to cut it at to keep the complete dumps
before the bad one.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from siflow.io._text import check_zip_members

__all__ = ["RestrictedUnpickler", "load_pickles", "load_torch_file", "is_torch_zip", "ALLOWED"]

# torch storage class name -> numpy dtype (little endian, as torch.save writes)
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # widened to float32 below
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Largest tensor rebuilt from a storage, relative to the storage (a stride-0 view of
#: one element blown up to terabytes is a memory bomb).
_MAX_VIEW_RATIO = 64


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class _Storage:
    data: np.ndarray | None  # None until the legacy layout's bytes are read
    dtype: np.dtype
    bfloat16: bool = False


@dataclass
class _LazyTensor:
    """A tensor of the legacy layout, whose storage bytes follow the object."""

    args: tuple[Any, ...]


def _rebuild_tensor(
    storage: Any, offset: int, size: Any, stride: Any, *_args: Any, **_kw: Any
) -> np.ndarray:
    """A torch tensor as a numpy array: ``storage[offset + sum(i_k * stride_k)]``."""
    if not isinstance(storage, _Storage):
        raise ValueError("a tensor refers to something that is not a storage")
    if storage.data is None:
        return _LazyTensor((storage, offset, size, stride))
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    data = storage.data
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError(f"a tensor has an invalid shape {size} / stride {stride}")
    count = int(np.prod(size, dtype=np.int64)) if size else 1
    if count == 0:
        out = np.empty(size, dtype=data.dtype)
    else:
        last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset < 0 or last >= data.size:
            raise ValueError(
                f"a tensor view (offset {offset}, shape {size}, stride {stride}) reaches past "
                f"its storage of {data.size} elements: the file is corrupt"
            )
        if count > _MAX_VIEW_RATIO * max(data.size, 1):
            raise ValueError(f"a tensor of {count} elements from {data.size} stored: refused")
        item = data.itemsize
        out = np.lib.stride_tricks.as_strided(
            data[int(offset) :], shape=size, strides=tuple(s * item for s in stride)
        ).copy()
    if storage.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_parameter(data: Any, *_args: Any) -> Any:
    return data


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise ValueError("a numpy scalar without a dtype and bytes")
    if dtype.hasobject or len(data) != dtype.itemsize:
        raise ValueError("a numpy scalar of the wrong size or an object dtype")
    return np.frombuffer(data, dtype=dtype)[0]


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise ValueError("numpy array reconstruction of a class other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin-1")


def _dtype(*args: Any) -> np.dtype:
    if not args or not isinstance(args[0], str):
        raise ValueError("numpy dtype from something other than a type code")
    dt = np.dtype(args[0])
    if dt.hasobject:
        raise ValueError("object dtypes are refused")
    return dt


def _load_from_bytes(data: Any) -> Any:
    if not isinstance(data, bytes):
        raise ValueError("torch.storage._load_from_bytes without bytes")
    return _load_legacy(io.BytesIO(data), "a tensor's embedded torch.save payload")


#: ``(module, name)`` -> what the restricted unpickler builds instead.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
}
ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED` names; anything else is a ``ValueError``.

    ``storages`` maps a ``torch.save`` persistent id (``("storage", type, key,
    location, numel)``) to its raw bytes; without it a persistent id is refused.
    """

    def __init__(
        self, file: IO[bytes], label: str, storages: Callable[[str], bytes | None] | None = None
    ) -> None:
        super().__init__(file)
        self.stream = file
        self._label = label
        self._storages = storages
        self._cache: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 pickles name Python 2's modules (__builtin__.set): the same names,
        # mapped as pickle's own find_class maps them, then checked against the allowlist
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        target = ALLOWED.get((module, name))
        if target is None:
            raise ValueError(
                f"{self._label} asks to load {module}.{name}, which a training log never needs; "
                f"refused (siflow reads data from pickles, never code)"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        if (
            self._storages is None
            or not isinstance(pid, tuple)
            or len(pid) < 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
        ):
            raise ValueError(f"{self._label} holds a reference that is not a tensor storage")
        kind, key = pid[1], str(pid[2])
        if key not in self._cache:
            raw = self._storages(key)
            dtype = kind.dtype
            usable = 0 if raw is None else len(raw) - len(raw) % dtype.itemsize
            data = None if raw is None else np.frombuffer(raw[:usable], dtype=dtype)
            self._cache[key] = _Storage(data, dtype, kind.name == "BFloat16Storage")
        return self._cache[key]


_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    RecursionError,
    MemoryError,
    OverflowError,
    UnicodeDecodeError,
)


#: Memo indices above this are refused before unpickling: CPython grows its memo table
#: to the largest index, so one bit flipped in a LONG_BINPUT asks for gigabytes.
_MAX_MEMO = 1 << 24


#: The fix named when a single pickle (a torch file's ``data.pkl``) is damaged.
_RESAVE = "re-save it from the run (torch.save), or use an intact copy"


def _damaged(label: str, exc: BaseException, fix: str, state: str) -> ValueError:
    """One line: the file, its ``state`` (truncated, damaged ...) with the low-level reason,
    and the fix."""
    detail = " ".join(str(exc).split())[:200]
    if not isinstance(exc, ValueError) or not detail:
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return ValueError(f"{label} is {state} ({detail}); {fix}")


def _scan(fh: IO[bytes], label: str, fix: str) -> None:
    """Walk the next pickle's opcodes (no objects built): refuse absurd memo indices.

    A stream that ends before its ``STOP`` (a cut file) or holds an unknown opcode (a
    garbled one) is a ``ValueError`` naming ``label`` and ``fix``; so is a memo index out
    of range.
    """
    start = fh.tell()
    ops = pickletools.genops(fh)
    while True:
        try:
            op, arg, _pos = next(ops)
        except StopIteration:
            break
        except Exception as exc:  # genops raises ValueError, EOFError ... on a bad stream
            state = "truncated" if not fh.read(1) else "damaged"
            raise _damaged(label, exc, fix, state) from None
        if op.name in ("LONG_BINPUT", "LONG_BINGET", "PUT", "GET") and (
            not isinstance(arg, int) or not 0 <= arg < _MAX_MEMO
        ):
            raise ValueError(
                f"{label}: a pickle memo index {arg!r} is out of range: corrupt; {fix}"
            )
    fh.seek(start)


def _load_one(unpickler: RestrictedUnpickler, label: str, fix: str = _RESAVE) -> Any:
    """The next pickle of ``unpickler``'s stream, scanned first (:func:`_scan`).

    A ``ValueError`` of the allowlist (it names ``label``) passes as it is; any other
    failure (a truncated stream, an unsupported protocol, a tensor view that does not fit
    its storage) says the file is damaged, with ``fix``.
    """
    _scan(unpickler.stream, label, fix)
    try:
        return unpickler.load()
    except ValueError as exc:
        if str(exc).startswith(label):
            raise
        raise _damaged(label, exc, fix, "damaged or holds data siflow does not read") from None
    except _PICKLE_ERRORS as exc:
        raise _damaged(label, exc, fix, "damaged or truncated") from None


def _cut_fix(path: Path, dumps: int, start: int) -> str:
    """How to recover the ``dumps`` complete dumps before a damaged one at byte ``start``."""
    if dumps == 0:
        return "its first dump is damaged: use an intact copy of the file"
    cut = path.with_name(f"{path.stem}_cut{path.suffix}")
    return (
        f"dump {dumps + 1} (from byte {start}) is the first bad one: keep the {dumps} complete "
        f"dump{'s' if dumps > 1 else ''} before it (head -c {start} {str(path)!r} > "
        f"{str(cut)!r}, then read that file), or use an intact copy"
    )


def load_pickles(path: Path) -> Iterator[Any]:
    """Each object of a file of appended pickle dumps, read with :class:`RestrictedUnpickler`.

    Raises
    ------
    ValueError
        A dump is cut short or garbled (the message names the byte to cut the file at
        to keep the complete dumps before it), or asks for a name outside :data:`ALLOWED`.
    """
    label = repr(str(path))
    size = path.stat().st_size
    dumps = 0
    with open(path, "rb") as fh:
        while fh.tell() < size:
            fix = _cut_fix(path, dumps, fh.tell())
            yield _load_one(RestrictedUnpickler(fh, label), label, fix)
            dumps += 1


def _load_legacy(fh: IO[bytes], label: str) -> Any:
    """The legacy (non-zip) ``torch.save`` layout: magic, version, sys info, object, storages."""
    magic = _load_one(RestrictedUnpickler(fh, label), label)
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{label} is not a torch.save payload (bad magic number)")
    _load_one(RestrictedUnpickler(fh, label), label)  # protocol version
    _load_one(RestrictedUnpickler(fh, label), label)  # sys info
    main = RestrictedUnpickler(fh, label, lambda key: None)
    obj = _load_one(main, label)
    keys = _load_one(RestrictedUnpickler(fh, label), label)
    if not isinstance(keys, list):
        raise ValueError(f"{label}: the storage key list is missing")
    for key in keys:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{label} is truncated (storage {key!r} missing)")
        (numel,) = struct.unpack("<q", head)
        storage = main._cache.get(str(key))
        if storage is None or numel < 0:
            raise ValueError(f"{label}: storage {key!r} is not referenced or has a bad size")
        nbytes = numel * storage.dtype.itemsize
        raw = fh.read(nbytes)
        if len(raw) < nbytes:
            raise ValueError(f"{label} is truncated (storage {key!r} short)")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _resolve(obj)


def _resolve(obj: Any) -> Any:
    """Replace the legacy layout's lazy tensors by arrays, now that the bytes are read."""
    if isinstance(obj, _LazyTensor):
        return _rebuild_tensor(*obj.args)
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _resolve(v)
        return obj
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    return obj


def is_torch_zip(path: Path) -> str | None:
    """The record prefix (``archive``) when ``path`` is a zip-format ``torch.save`` file."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return None
    for name in names:
        if name.endswith("/data.pkl") and name.count("/") == 1:
            return name.split("/")[0]
    return None


def _not_torch_zip(path: Path, label: str) -> ValueError:
    """Why ``path`` is no zip-format ``torch.save`` file: cut short, or another layout."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return ValueError(f"{label} cannot be read ({exc.strerror or exc})")
    if not head:
        return ValueError(
            f"{label} is empty (the run was stopped while saving it?); use an intact copy"
        )
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return ValueError(
            f"{label} begins as a zip-format torch.save file but has no readable zip directory "
            f"(truncated, or still being written); pass it again once it is complete, or use "
            f"an intact copy"
        )
    return ValueError(
        f"{label} is not a zip-format torch.save file (torch >= 1.6); re-save it with "
        f"torch.save or pass the right fmt="
    )


def load_torch_file(path: Path) -> Any:
    """The object of a zip-format ``torch.save`` file, tensors as numpy arrays (no torch)."""
    label = repr(str(path))
    prefix = is_torch_zip(path)
    if prefix is None:
        raise _not_torch_zip(path, label)
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip_members(zf, label, path.stat().st_size)

            def storage(key: str) -> bytes:
                try:
                    return zf.read(f"{prefix}/data/{key}")
                except KeyError:
                    raise ValueError(f"{label} lacks tensor storage {key!r}") from None

            fh = io.BytesIO(zf.read(f"{prefix}/data.pkl"))
            return _load_one(RestrictedUnpickler(fh, label, storage), label)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ValueError(
            f"{label} is a damaged torch file ({type(exc).__name__}: {exc}); {_RESAVE}"
        ) from None
