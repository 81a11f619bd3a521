"""A ``torch.fx`` graph of what one forward pass computed (for :func:`find_si_groups`).

``torch.fx.symbolic_trace`` fails on models whose ``forward`` branches on tensor values
or shapes (most Hugging Face models since ``transformers`` 5 dropped its own tracer). A
real forward pass has no such limit: :func:`record_graph` runs the model once on an
example batch under a :class:`torch.overrides.TorchFunctionMode` and writes every
operation it performs into a ``torch.fx.Graph`` laid out as ``symbolic_trace`` lays it
out, so the graph analyses of :mod:`siflow.torch_probe` apply unchanged:

* a call of a leaf module (``torch.fx``'s rule: a ``torch.nn`` module other than
  ``Sequential``) is one ``call_module`` node, and nothing inside it is recorded;
* a ``torch`` or ``torch.nn.functional`` function is a ``call_function`` node, a tensor
  method a ``call_method`` node, an operator (``x + y``, ``x[i]``) a ``call_function`` of
  :mod:`operator`;
* a parameter or buffer read outside a leaf module is a ``get_attr`` node of its name;
  the example inputs are ``placeholder`` nodes; every node holds its output's shape in
  ``meta["tensor_meta"].shape``.

The graph is what this batch took (a branch the batch did not take is absent), and it is
complete for the parameters: any tensor that depends on a trainable parameter through an
operation the mode did not see (an autograd ``grad_fn`` on a tensor the graph does not
know), and any in-place operation on a tensor sharing memory with another recorded one (a
view, or the base of one), is a ``ValueError``, so that a
scale-invariance proof on the graph is never a proof on part of the computation.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from siflow._fileio import require

torch = require("torch", "torch", '"torch==2.13.0"')

__all__ = ["RecordingIncomplete", "record_graph", "run_model"]


class RecordingIncomplete(ValueError):
    """The forward pass computes from the parameters by means the recording cannot follow."""


#: Attribute reads and queries whose result does not depend on a tensor's values.
_METADATA = {
    "size", "dim", "numel", "nelement", "shape", "ndim", "dtype", "device", "layout",
    "is_floating_point", "is_complex", "is_contiguous", "requires_grad", "is_cuda",
    "stride", "storage_offset", "element_size", "get_device", "data_ptr", "names",
    "is_sparse", "is_quantized", "is_meta", "is_leaf", "grad_fn", "_version", "__len__",
    "is_nested", "itemsize", "nbytes", "is_inference",
}  # fmt: skip
#: Python operators (and in-place arithmetic methods): the :mod:`operator` function
#: ``torch.fx`` records for them, and whether the tensor is the right operand
#: (``__radd__``: ``other + self``).
_OPERATORS = {
    "__add__": (operator.add, False), "__radd__": (operator.add, True),
    "__sub__": (operator.sub, False), "__rsub__": (operator.sub, True),
    "__mul__": (operator.mul, False), "__rmul__": (operator.mul, True),
    "__truediv__": (operator.truediv, False), "__rtruediv__": (operator.truediv, True),
    "__div__": (operator.truediv, False), "__rdiv__": (operator.truediv, True),
    "__floordiv__": (operator.floordiv, False), "__rfloordiv__": (operator.floordiv, True),
    "__matmul__": (operator.matmul, False), "__rmatmul__": (operator.matmul, True),
    "__pow__": (operator.pow, False), "__rpow__": (operator.pow, True),
    "__mod__": (operator.mod, False), "__neg__": (operator.neg, False),
    "__abs__": (operator.abs, False), "__getitem__": (operator.getitem, False),
    "__setitem__": (operator.setitem, False), "__iadd__": (operator.iadd, False),
    "__isub__": (operator.isub, False), "__imul__": (operator.imul, False),
    "__itruediv__": (operator.itruediv, False), "add_": (operator.iadd, False),
    "sub_": (operator.isub, False), "mul_": (operator.imul, False),
    "div_": (operator.itruediv, False),
}  # fmt: skip


#: Operators that write into their first operand.
_IN_PLACE = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__"}


def _tensors(value: Any) -> list[Any]:
    """The tensors in a (nested) tuple, list, mapping or Hugging Face ``ModelOutput``."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _is_method(func: Any) -> bool:
    """A tensor method (``x.permute``), not a function."""
    return getattr(func, "__objclass__", None) is torch._C.TensorBase or getattr(
        func, "__qualname__", ""
    ).startswith(("Tensor.", "TensorBase."))


def _name_of(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property read (x.shape, x.T): the property's name
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _Recording:
    """The graph under construction and the map from live tensors to its nodes."""

    def __init__(self, model: Any) -> None:
        from torch import fx

        self.graph = fx.Graph()
        self.nodes: dict[int, Any] = {}
        self.alive: list[Any] = []  # keeps recorded tensors alive: ids stay unique
        self.viewed: set[int] = set()  # ids of tensors a recorded view shares memory with
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.names.update({id(b): n for n, b in model.named_buffers()})
        self.depth = 0  # > 0 inside a leaf module
        self.pending: list[tuple[Any, Any]] = []  # the inputs of the leaf module running
        self.constants = 0

    def bind(self, tensor: Any, node: Any) -> None:
        self.nodes[id(tensor)] = node
        self.alive.append(tensor)
        if tensor._base is not None:
            self.viewed.add(id(tensor._base))
        node.meta["tensor_meta"] = SimpleNamespace(shape=tuple(tensor.shape))

    def node_of(self, t: Any) -> Any:
        """The node of tensor ``t``: recorded, a parameter or buffer, or a constant."""
        node = self.nodes.get(id(t))
        if node is not None:
            return node
        name = self.names.get(id(t))
        if name is None:
            if t.grad_fn is not None:
                raise RecordingIncomplete(
                    "the forward pass computes a tensor from the parameters by an operation "
                    "the recording did not see"
                )
            name = f"_tensor_constant{self.constants}"
            self.constants += 1
        node = self.graph.get_attr(name)
        self.bind(t, node)
        return node

    def arg(self, value: Any) -> Any:
        """``value`` with its tensors replaced by their nodes (lists, tuples, mappings)."""
        if isinstance(value, torch.Tensor):
            return self.node_of(value)
        if isinstance(value, list):
            return [self.arg(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.arg(v) for v in value)
        if isinstance(value, Mapping):
            return {k: self.arg(v) for k, v in value.items()}
        return value

    def bind_output(self, out: Any, node: Any) -> None:
        """Bind a call's output: a tensor to ``node``, the tensors of a tuple to
        ``getitem`` nodes of it."""
        if isinstance(out, torch.Tensor):
            self.bind(out, node)
        elif isinstance(out, list | tuple):
            for i, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    self.bind(item, self.graph.call_function(operator.getitem, (node, i)))

    def function(self, func: Any, args: tuple, kwargs: Mapping[str, Any], out: Any) -> None:
        name = _name_of(func)
        if name in _METADATA:
            return
        fargs = self.arg(args)
        fkwargs = self.arg(dict(kwargs))
        if getattr(func, "__name__", "") == "__get__":  # x.T, x.data: as torch.fx records it
            node = self.graph.call_function(builtins.getattr, (fargs[0], name))
        elif name in _OPERATORS:
            target, swap = _OPERATORS[name]
            if swap:
                fargs = (fargs[1], fargs[0], *fargs[2:])
            node = self.graph.call_function(target, fargs, fkwargs)
        elif _is_method(func):
            node = self.graph.call_method(name, fargs, fkwargs)
        else:
            node = self.graph.call_function(func, fargs, fkwargs)
        in_place = name.endswith("_") and not name.startswith("__") or name in _IN_PLACE
        mutated = args[0] if args and in_place else None
        mutated = kwargs.get("out", mutated)
        if isinstance(mutated, torch.Tensor):
            if mutated._base is not None or id(mutated) in self.viewed:
                raise RecordingIncomplete(
                    f"the forward pass writes in place ({name}) into a tensor that shares "
                    f"memory with another"
                )
            self.bind(mutated, node)
        if out is not mutated:
            self.bind_output(out, node)


def _bookkeeping(step: Any, *args: Any) -> None:
    """Run one recording step; its own failures are :class:`RecordingIncomplete` (not the
    model's errors, which pass through unchanged)."""
    try:
        step(*args)
    except RecordingIncomplete:
        raise
    except Exception as exc:  # noqa: BLE001 - an operation the recording cannot describe
        raise RecordingIncomplete(
            f"the recording cannot describe an operation ({type(exc).__name__}: {exc})"
        ) from None


def _mode(rec: _Recording) -> Any:
    from torch.overrides import TorchFunctionMode

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if rec.depth == 0:
                _bookkeeping(rec.function, func, args, kwargs, out)
            return out

    return Mode()


def _leaf_hooks(model: Any, rec: _Recording) -> list[Any]:
    """Hooks that record each call of a leaf module (``torch.fx``'s rule) as one
    ``call_module`` node."""
    from torch import fx

    handles = []
    leaf = fx.Tracer().is_leaf_module

    def before(mod: Any, args: tuple, kwargs: dict) -> None:
        if rec.depth == 0:
            with torch._C.DisableTorchFunction():  # the bookkeeping is not recorded
                _bookkeeping(lambda: rec.pending.append((rec.arg(args), rec.arg(kwargs))))
        rec.depth += 1

    def after(name: str) -> Any:
        def hook(mod: Any, args: tuple, kwargs: dict, out: Any) -> None:
            rec.depth -= 1
            if rec.depth == 0:
                fargs, fkwargs = rec.pending.pop()
                with torch._C.DisableTorchFunction():
                    _bookkeeping(
                        lambda: rec.bind_output(out, rec.graph.call_module(name, fargs, fkwargs))
                    )

        return hook

    for name, mod in model.named_modules():
        if name and leaf(mod, name):
            handles.append(mod.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(
                mod.register_forward_hook(after(name), with_kwargs=True, always_call=True)
            )
    return handles


def run_model(model: Any, example_input: Any) -> Any:
    """``model(**x)`` for a mapping (a Hugging Face batch), ``model(*x)`` for a tuple or
    list (positional inputs, as Lightning runs ``example_input_array``), else ``model(x)``."""
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, list | tuple):
        return model(*example_input)
    return model(example_input)


def record_graph(model: Any, example_input: Any) -> Any:
    """The graph of one forward pass of ``model`` on ``example_input`` (see the module).

    ``example_input`` is passed as :func:`run_model` passes it. The pass runs with
    autograd on (the completeness check needs it); the caller restores buffers and the
    random state. Raises :class:`RecordingIncomplete` when the recording cannot be
    complete; the model's own errors pass through.
    """
    rec = _Recording(model)
    named = example_input.items() if isinstance(example_input, Mapping) else [("x", example_input)]
    for key, value in named:
        for t in _tensors(value):
            rec.bind(t, rec.graph.placeholder(str(key)))
    handles = _leaf_hooks(model, rec)
    try:
        with torch.enable_grad(), _mode(rec):
            out = run_model(model, example_input)
        results = [rec.node_of(t) for t in _tensors(out)]
    finally:
        for h in handles:
            h.remove()
    rec.graph.output(results)
    return rec.graph
