"""Borrowed array views for compiled loops: no reference counting inside the loop.

numba counts references to every array a compiled function holds: a call to another
compiled function (inlined or not) takes a reference to each array argument and
releases it on return, and every view (``a[t]``) takes one on its parent's memory.
Each of these is an atomic operation (``lock inc``/``lock dec``) on the shared count,
which also waits for the core's pending stores. In the simulation loop
(:func:`siflow.simulate._run_chunk`) they were about a tenth of a step of the small
logistic toy (``perf``: ``NRT_incref``/``NRT_decref``, eight arrays per step).

:func:`borrowed` returns the same array (data pointer, shape, strides) without the
pointer to its memory's owner record, so numba counts nothing for it or for views of
it. It is only valid while something else owns the memory: the simulation loop
borrows arrays that its Python caller holds for the whole call. A borrowed view
must never leave the compiled function (it cannot be returned to Python).
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["borrowed"]


@intrinsic
def borrowed(typingctx, a):  # pragma: no cover - compiled
    """``a`` as a view that numba does not count references to (see the module)."""
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return a(a), codegen
