"""Argument validation shared by every public function.

Each check raises :class:`ValueError` whose message names the parameter, the
offending value and how to fix it. Checks accept scalars or numpy arrays and
return ``numpy.asarray(value, dtype=float64)`` so closed forms can be vectorised
over hyperparameter grids.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "as_float_array",
    "check_finite",
    "check_positive",
    "check_nonnegative",
    "check_lr_wd",
    "check_momentum",
    "check_beta",
    "check_positive_int",
    "check_whole",
    "check_steps",
    "MAX_STEPS",
    "as_number",
    "finite_number",
    "positive_number",
    "nonnegative_number",
    "momentum_number",
    "beta_number",
    "lr_wd_numbers",
]

#: The most steps a run may have: step numbers up to ``2**53`` are exact in float64 (and
#: far inside the int64 step column), about 100 days at a nanosecond per step.
MAX_STEPS = 2**53


def _describe(value: NDArray[np.float64]) -> str:
    bad = np.asarray(value).ravel()
    if bad.size == 1:
        return repr(float(bad[0]))
    return f"array containing {float(bad[0])!r}" if bad.size else "empty array"


def _count(n: object) -> str:
    """A whole number for a message: its digits when short, else ``1.000e+400`` style."""
    text = str(n)
    digits = text.lstrip("-")
    if len(digits) <= 16 or not digits.isdigit():
        return text
    return f"{text[: len(text) - len(digits)]}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_large(name: str, value: object) -> ValueError:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, int):
        return ValueError(
            f"{name} = {_count(value)} is beyond the float64 range; pass a finite number"
        )
    big = _first_beyond_float(value)
    shown = _count(big) if big is not None else "an integer"
    return ValueError(f"{name} holds {shown}, beyond the float64 range; pass finite numbers")


def _first_beyond_float(value: object) -> int | None:
    """The first Python int in a (nested) list or tuple that no float64 can hold."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) >= 2**1024 - 2**970 else None
    if isinstance(value, np.ndarray):
        value = value.ravel().tolist()
    if isinstance(value, list | tuple):
        for v in value:
            big = _first_beyond_float(v)
            if big is not None:
                return big
    return None


def _text_or_bool(value: object) -> bool:
    """True for text and booleans, alone or as the elements of an array or a list."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "USb"
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value).dtype.kind in "USb"
        except (TypeError, ValueError):  # ragged: the conversion below names it
            return False
    return False


def as_float_array(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Convert ``value`` to a float64 array, with a clear error for non-numbers.

    Text (``"0.1"``, which numpy would parse) and booleans are not numbers here: a
    quoted value or a flag passed by mistake is refused with its name.
    """
    if _text_or_bool(value):
        raise ValueError(f"{name} must be a number or an array of numbers, got {_short(value)}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:  # a Python int beyond the float range
        raise _too_large(name, value) from None
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or an array of numbers, got {_short(value)}"
        ) from None
    return arr


#: Plain Python numbers take a path without numpy reductions (about 20x faster for a
#: scalar); ``bool`` is not among them and goes through numpy as before.
_PLAIN = (float, int)


def check_finite(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Require every element of ``value`` to be finite (no NaN or inf)."""
    if type(value) in _PLAIN:
        try:
            v = float(value)
        except OverflowError:
            raise _too_large(name, value) from None
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}; pass a finite number")
        return np.asarray(v)
    arr = as_float_array(name, value)
    if not np.all(np.isfinite(arr)):
        bad = arr[~np.isfinite(arr)]
        raise ValueError(f"{name} must be finite, got {_describe(bad)}; pass a finite number")
    return arr


def check_positive(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Require ``value > 0`` and finite."""
    arr = check_finite(name, value)
    if arr.ndim == 0 and float(arr) > 0:
        return arr
    if np.any(arr <= 0):
        raise ValueError(
            f"{name} must be > 0, got {_describe(arr[arr <= 0])}; pass a positive value"
        )
    return arr


def check_nonnegative(name: str, value: ArrayLike) -> NDArray[np.float64]:
    """Require ``value >= 0`` and finite."""
    arr = check_finite(name, value)
    if arr.ndim == 0 and float(arr) >= 0:
        return arr
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {_describe(arr[arr < 0])}; pass a value >= 0")
    return arr


def check_lr_wd(
    lr: ArrayLike, wd: ArrayLike, *, wd_positive: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate a learning rate and a weight decay together.

    Requires ``lr > 0``, ``wd > 0`` (or ``wd >= 0`` when ``wd_positive`` is false) and
    ``lr * wd < 1`` (otherwise the decay factor ``1 - lr*wd`` is not a contraction).
    """
    lr_arr = check_positive("lr", lr)
    wd_arr = check_positive("wd", wd) if wd_positive else check_nonnegative("wd", wd)
    if lr_arr.ndim == 0 and wd_arr.ndim == 0 and float(lr_arr) * float(wd_arr) < 1:
        return lr_arr, wd_arr
    with np.errstate(over="ignore"):  # an overflow to inf is >= 1 and reported below
        prod = lr_arr * wd_arr
    if np.any(prod >= 1):
        raise ValueError(
            f"lr*wd must be < 1 (the weight-decay factor 1 - lr*wd must be positive), "
            f"got lr*wd = {_describe(prod[prod >= 1])}; lower lr or wd"
        )
    return lr_arr, wd_arr


def check_momentum(momentum: ArrayLike, name: str = "momentum") -> NDArray[np.float64]:
    """Require ``0 <= momentum < 1``."""
    arr = check_finite(name, momentum)
    if arr.ndim == 0 and 0.0 <= float(arr) < 1.0:
        return arr
    if np.any((arr < 0) | (arr >= 1)):
        raise ValueError(
            f"{name} must be in [0, 1), got {_describe(arr[(arr < 0) | (arr >= 1)])}; pass e.g. 0.9"
        )
    return arr


def check_beta(name: str, beta: ArrayLike) -> NDArray[np.float64]:
    """Require an averaging coefficient (Adam/Lion beta) in ``[0, 1)``."""
    return check_momentum(beta, name=name)


def _whole(value: object) -> int | None:
    """``value`` as an int when it is a whole number (an int, or a float with no fraction;
    not a ``bool``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_whole(name: str, value: object, minimum: int = 0) -> int:
    """Require a whole number ``>= minimum`` (an int, or a float with no fraction; ``bool``
    is rejected); returns it as an int."""
    n = _whole(value)
    if n is None:
        raise ValueError(f"{name} must be an integer, got {_short(value)}; pass a whole number")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}; pass a value >= {minimum}")
    return n


def check_positive_int(name: str, value: object) -> int:
    """Require a positive integer (``bool`` is rejected)."""
    n = _whole(value)
    if n is None:
        raise ValueError(
            f"{name} must be a positive integer, got {_short(value)}; pass a whole number >= 1"
        )
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}; pass a value >= 1")
    return n


def check_steps(name: str, value: object, fix: str | None = None) -> int:
    """Require a step count in ``[1, MAX_STEPS]`` (:func:`check_positive_int` and a bound)."""
    steps = check_positive_int(name, value)
    if steps > MAX_STEPS:
        raise ValueError(
            f"{name} must be at most 2**53 = {MAX_STEPS:.4g} (step numbers beyond it are not "
            f"exact in float64), got {_count(steps)}; {fix or f'pass a smaller {name}'}"
        )
    return steps


# ----------------------------------------------------------------- one number
def as_number(name: str, value: ArrayLike) -> float:
    """The number a checked value holds, for parameters that take one number.

    ``float(value)`` for a scalar or 0-d array; a list or an array (even of one
    element) raises a :class:`ValueError` naming ``name``, instead of numpy's
    ``TypeError`` about 0-dimensional arrays.
    """
    if np.ndim(value) == 0:
        return float(value)  # type: ignore[arg-type]
    raise ValueError(
        f"{name} must be one number, got an array of shape {np.shape(value)}; pass a single value"
    )


def finite_number(name: str, value: ArrayLike) -> float:
    """:func:`check_finite` of one number, as a float."""
    return as_number(name, check_finite(name, value))


def positive_number(name: str, value: ArrayLike) -> float:
    """:func:`check_positive` of one number, as a float."""
    return as_number(name, check_positive(name, value))


def nonnegative_number(name: str, value: ArrayLike) -> float:
    """:func:`check_nonnegative` of one number, as a float."""
    return as_number(name, check_nonnegative(name, value))


def momentum_number(momentum: ArrayLike, name: str = "momentum") -> float:
    """:func:`check_momentum` of one number, as a float."""
    return as_number(name, check_momentum(momentum, name))


def beta_number(name: str, beta: ArrayLike) -> float:
    """:func:`check_beta` of one number, as a float."""
    return as_number(name, check_beta(name, beta))


def lr_wd_numbers(lr: ArrayLike, wd: ArrayLike, *, wd_positive: bool = True) -> tuple[float, float]:
    """:func:`check_lr_wd` of one learning rate and one weight decay, as floats."""
    lr_arr, wd_arr = check_lr_wd(lr, wd, wd_positive=wd_positive)
    return as_number("lr", lr_arr), as_number("wd", wd_arr)
