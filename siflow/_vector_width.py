"""Let LLVM vectorise a compiled loop with the widest vectors the CPU has.

On CPUs with AVX-512 whose LLVM model carries the ``prefer-256-bit`` tuning (Intel's
cores from Skylake-X on), LLVM's vectorisers use 256-bit vectors even though 512-bit
ones are available, to avoid the clock drop that wide instructions caused on the first
of those cores (numba compiled the same kernels with 512-bit vectors on the AMD EPYC of
``analysis/BENCHMARKS.md``). For the toy
kernels this halves the arithmetic per instruction: on an Intel Xeon with two 512-bit
FMA units, the logistic toy's margin and gradient passes at d=16, n=256 took 186 and
178 ns per step with 256-bit vectors, 116 and 135 ns with 512-bit ones
(``python -m analysis.bench.logistic_parts``, ``analysis/BENCHMARKS.md``).

:func:`prefer_wide_vectors` is a compile-time marker: called at the top of a compiled
function, it emits no instruction and gives that LLVM function the attribute
``"prefer-vector-width"="512"``, which overrides the tuning for that function alone
(LLVM's X86 back end reads it per function, as clang's ``-mprefer-vector-width=512``
does). Nothing else in the process changes: other numba code keeps the CPU's default,
and on CPUs without AVX-512 the attribute has no effect. Functions inlined into the
marked one at numba's level (``inline="always"``) are compiled as part of it.

The attribute is written through llvmlite's function attribute set, which accepts
only LLVM's keyword attributes; the key-value form is added as its textual IR. Should
a future llvmlite store attributes differently, the marker does nothing (the code is
then vectorised as before) rather than fail.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic

__all__ = ["PREFER_WIDE_ATTRIBUTE", "prefer_wide_vectors"]

#: The LLVM function attribute, as textual IR.
PREFER_WIDE_ATTRIBUTE = '"prefer-vector-width"="512"'


def _mark(function: object) -> None:
    """Add :data:`PREFER_WIDE_ATTRIBUTE` to an ``llvmlite.ir.Function``'s attributes."""
    attributes = getattr(function, "attributes", None)
    if isinstance(attributes, set):
        # llvmlite's FunctionAttributes.add accepts only keyword attributes; the set
        # itself prints its members into the function's definition as they are
        set.add(attributes, PREFER_WIDE_ATTRIBUTE)


@intrinsic
def prefer_wide_vectors(typingctx):  # pragma: no cover - compiled
    """Mark the calling compiled function for 512-bit vectors (see the module)."""

    def codegen(context, builder, signature, args):
        _mark(builder.function)
        return context.get_dummy_value()

    return types.none(), codegen
