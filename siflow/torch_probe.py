"""Record scale-invariant (SI) metrics inside a PyTorch training loop.

Two lines added to an existing loop are enough::

    rec = SIRecorder(model, optimizer, every=1)     # after building the optimizer
    ...                                            # the loop is unchanged
    rec.save("run.csv")                            # once, at the end (or pass path= to flush)

The recorder hooks ``optimizer.step`` (``register_step_pre_hook`` /
``register_step_post_hook``): before a recorded step it copies the SI weights
``w_t`` and their loss gradients ``g_t`` (``p.grad``; PyTorch adds coupled weight
decay inside ``step``, so ``p.grad`` is the gradient of the loss alone); after the
step it reads ``w_{t+1}`` and computes, for every SI group and for all of them
together (the concatenated vector):

===========================  =====================================================
column                       formula (exact, no expansion in ``lr*wd``)
===========================  =====================================================
``rho``                      ``|w_t|``
``grad_norm_sphere``         ``g~ = |w_t| |g_t|`` (gradient on the unit sphere)
``elr``                      ``lr / |w_t|^2``
``angular_update``           ``angle(w_t, w_{t+1}) = atan2(|d_perp|, |w_t| + <w_t, d>/|w_t|)``
                             with ``d = w_{t+1} - w_t`` and ``d_perp`` its part
                             orthogonal to ``w_t`` (accurate for tiny angles)
``relative_update``          ``|w_{t+1} - w_t| / |w_t|``
``radial``                   ``<g_t, w_t> / (|g_t| |w_t|)``: 0 for an exactly SI
                             loss (docs/theory.md section 0); nonzero when
                             invariance is broken, e.g. by BatchNorm's ``eps``
``sharpness_sphere``         top eigenvalue of the Riemannian Hessian on the
                             unit sphere, by power iteration (on request)
``loss``                     the value passed to :meth:`SIRecorder.log_loss`
===========================  =====================================================

With ``every > 1`` the columns above describe the logged step only, and a
destabilization lasting a few steps can fall between two rows. The recorder
therefore also measures the total angular update at every step (one copy of the
SI weights per step; ``window=False`` turns this off) and gives each row the
statistics of the ``every`` steps it stands for (``t, ..., t + every - 1``):
``angular_update_rms_window`` (RMS angle) and ``log_cos_mean_window`` (mean of
``ln cos Delta``; for plain SGD on an SI loss
``rho_{t+1}/rho_t = (1 - lr wd)/cos Delta_t`` exactly, so this mean over a long
window tends to ``ln(1 - lr wd)``).

Totals go into the :class:`~siflow.trajectory.Trajectory` fields; per-group
values into ``extra`` as ``rho/<group>``, ``grad_norm_sphere/<group>``,
``elr/<group>``, ``angular_update/<group>``, ``relative_update/<group>``,
``radial/<group>``; the total
``radial``, the raw ``grad_norm`` and ``sharpness_tangent`` are in ``extra`` too.
``meta`` holds ``lr``, ``wd``, ``momentum`` (``betas`` for Adam-type optimizers and
Lion), ``optimizer``, ``groups``, ``group_sizes`` (elements per SI group),
``n_params`` (all SI elements) and ``source``; the hyperparameters are the configured
ones (a scheduler's peak: ``max_lr``, ``max_momentum``). A scheduler that changes the
first param group's lr, weight decay or momentum term makes the per-row column
``lr``, ``wd``, ``momentum`` (SGD-type: heavy ball, Nesterov) or ``beta1``
(``betas[0]``: Adam-type, Lion) of the value each step ran with (OneCycleLR cycles the
momentum by default; ``meta["notes"]`` then says so). Row ``t`` describes step ``t``:
the weights before it, the gradient it used, and the rotation it made.

SI groups are found by tracing the module graph (:func:`find_si_groups`), can be
checked numerically (:func:`check_scale_invariance`) or passed explicitly.

torch is an optional dependency (``pip install "siflow[torch]"``): importing this
module without torch raises ``ImportError`` with the pip command.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._fileio import require
from siflow._validate import check_positive, check_positive_int, check_whole, positive_number
from siflow.trajectory import Trajectory

torch = require("torch", "torch", '"torch==2.13.0"')
nn = torch.nn

__all__ = [
    "JOINT_GROUP",
    "PAIR_SUFFIX",
    "SIRecorder",
    "is_rank_zero",
    "rotational_equilibrium_of",
    "find_si_groups",
    "freeze_classifier",
    "check_scale_invariance",
    "sphere_sharpness",
]

#: Layers whose output is invariant to a positive rescaling of their input.
NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
#: Functional normalizations (``torch.nn.functional``) that always use the input's own
#: statistics; ``batch_norm`` and ``instance_norm`` count when the call says so.
_NORM_FUNCTIONS = {"layer_norm", "rms_norm", "group_norm", "normalize"}
#: Layers whose weight is SI when their output is normalized (no other use).
WEIGHT_TYPES: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)


def _is_weight_layer(mod: Any) -> bool:
    """A layer whose output is positively homogeneous of degree 1 in its weight:
    :data:`WEIGHT_TYPES`, or an ``nn.Embedding`` or ``nn.EmbeddingBag`` (its rows summed,
    averaged, weighted by ``per_sample_weights`` or maxed: ``max(c a) = c max(a)`` for
    ``c > 0``) without ``max_norm`` (which would renormalize the rows it reads) and with
    dense gradients."""
    if isinstance(mod, WEIGHT_TYPES):
        return True
    return (
        isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and mod.max_norm is None and not mod.sparse
    )


#: Positively homogeneous (degree 1) maps allowed between the weight and the norm layer.
PASS_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Upsample,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
#: Padding that copies the border from the input (homogeneous, and a per-channel constant
#: stays one), and shuffles that move entries to other positions (homogeneous).
_COPYING_PADS: tuple[type, ...] = (
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)
_SHUFFLES: tuple[type, ...] = (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)


def _homogeneous_module(mod: Any) -> bool:
    """A module that is positively homogeneous of degree 1 in its input and holds no weight
    of its own: :data:`PASS_MODULES`, padding by 0 (``ZeroPad2d``, ``ConstantPad2d(p, 0)``)
    or by the input's own border (reflection, replication, circular), and the pixel and
    channel shuffles."""
    if isinstance(mod, PASS_MODULES + _COPYING_PADS + _SHUFFLES):
        return True
    return isinstance(mod, nn.modules.padding._ConstantPadNd) and mod.value == 0


#: Rectifiers: positively homogeneous, but a bias before them does not pass through.
RECTIFIER_TYPES: tuple[type, ...] = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
#: Clamps that are rectifiers when their lower bound is 0 and they have no upper one.
_CLAMPS = {"clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_"}
_RECTIFIER_FUNCTIONS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "prelu"}
_PASS_FUNCTIONS = {
    "relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "flatten", "dropout", "dropout1d",
    "dropout2d", "dropout3d", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "amax",
    "amin",
}  # fmt: skip
_PASS_METHODS = {"relu", "view", "reshape", "flatten", "contiguous", "amax", "amin"}
#: Operations that may move a channel's entries to other positions or axes.
_RESHAPES = {
    "view", "reshape", "unflatten", "permute", "transpose", "squeeze", "unsqueeze",
    "getitem", "mean", "sum", "pixel_shuffle", "pixel_unshuffle", "amax", "amin",
}  # fmt: skip

GroupSpec = Mapping[str, Sequence[Any]] | Sequence[str] | None


# --------------------------------------------------------------------------- set-up
def freeze_classifier(layer: Any, norm: float = 10.0) -> None:
    """Fix a network's last layer as the seed paper does: rescaled, bias zero, frozen.

    Lobacheva et al. (NeurIPS 2021) rescale the classifier's weight to Frobenius norm
    ``norm`` (10 in their experiments), set its bias to zero and do not train it, so
    that every trained weight of a network whose other layers feed normalizations is
    scale-invariant.

    Parameters
    ----------
    layer : torch.nn.Linear (or any module with ``weight`` and optional ``bias``)
    norm : float
        Frobenius norm of the weight afterwards.
    """
    norm = positive_number("norm", norm)
    weight = getattr(layer, "weight", None)
    if weight is None:
        raise ValueError(f"layer must have a weight to rescale, got {type(layer).__name__}")
    with torch.no_grad():
        weight.mul_(norm / weight.norm())
        if getattr(layer, "bias", None) is not None:
            layer.bias.zero_()
    layer.requires_grad_(False)


# --------------------------------------------------------------------------- detection
def _const_arg(node: Any, index: int, name: str, default: Any) -> Any:
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _norm_kind(node: Any, modules: Mapping[str, Any]) -> str | None:
    """What a graph node normalizes with, or ``None`` when it is not a normalization.

    ``"batch"`` (BatchNorm: each channel's batch mean is subtracted), ``"channel"``
    (InstanceNorm, one-channel GroupNorm: each channel's mean over its positions),
    ``"mixed"`` (LayerNorm, GroupNorm over several channels: the mean over several
    channels is subtracted, a per-channel bias does not cancel), ``"scale"`` (RMSNorm,
    ``F.normalize``: no mean is subtracted at all). Functional calls count when they
    normalize with the input's own statistics (``F.batch_norm(..., training=True)``).
    """
    if node.op == "call_module":
        mod = modules.get(node.target)
        return _module_norm_kind(mod) if isinstance(mod, NORM_TYPES) else None
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", "")
    if name in _NORM_FUNCTIONS:
        return "scale" if name in ("rms_norm", "normalize") else "mixed"
    if name == "batch_norm" and _const_arg(node, 5, "training", False) is True:
        return "batch"
    if name == "instance_norm" and _const_arg(node, 5, "use_input_stats", True) is True:
        return "channel"
    return None


#: The ``layer`` of a bias that is one number added to every entry (``z + 1``).
_SCALAR_BIAS = "scalar"


def _cancels_bias(kind: str, layer: Any, norm: Any = None) -> bool:
    """Whether a normalization of ``kind`` (:func:`_norm_kind`) cancels a per-channel bias
    of ``layer`` (or one number added to every entry, ``layer`` :data:`_SCALAR_BIAS`: every
    kind that subtracts a mean). BatchNorm always for a convolution (its bias lies along the channel
    axis); InstanceNorm and one-channel GroupNorm after a convolution (their mean over
    positions holds its per-channel bias). A ``Linear`` bias lies along the last axis,
    the BatchNorm's channels only when the output is two-dimensional: with the BatchNorm
    module ``norm`` known, its ``num_features`` must equal ``out_features`` (a
    ``BatchNorm1d`` over ``(N, L, F)`` normalizes each of the ``L`` positions, across
    the biases of the ``F`` features; a functional ``batch_norm`` has no module to ask).
    LayerNorm, RMSNorm and GroupNorm over several channels mix channels with different
    biases.
    """
    if layer is _SCALAR_BIAS:
        return kind != "scale"
    if isinstance(layer, nn.Linear):
        features = getattr(norm, "num_features", layer.out_features)  # F.batch_norm: no module
        return kind == "batch" and features == layer.out_features
    return kind in ("batch", "channel") and isinstance(layer, nn.modules.conv._ConvNd)


def _module_norm_kind(mod: Any) -> str:
    """:func:`_norm_kind` of a normalization module."""
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return "batch"
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm) or (
        isinstance(mod, nn.GroupNorm) and mod.num_groups == mod.num_channels
    ):
        return "channel"
    return "scale" if isinstance(mod, getattr(nn, "RMSNorm", ())) else "mixed"


def _bias_ok(layer: Any, kind: str, broken: bool = False, norm: Any = None) -> bool:
    """A bias before the norm layer keeps the weight SI only if the norm removes it
    (:func:`_cancels_bias`) and it reaches the norm as a per-channel constant, which
    an operation of :func:`_breaks_bias` in between (``broken``) undoes:
    ``relu(c W x + b) != c relu(W x + b)``.
    """
    bias = getattr(layer, "bias", None)
    return bias is None or (_cancels_bias(kind, layer, norm) and not broken)


def _flat_output(node: Any, layer: Any) -> bool:
    """False for a ``Linear`` whose output is known (from shape propagation with an
    example input) to have more than two dimensions: its bias then lies along an axis
    other than a BatchNorm's channels."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return not isinstance(layer, nn.Linear) or shape is None or len(shape) == 2


def _breaks_bias(node: Any, modules: Mapping[str, Any]) -> bool:
    """Whether a homogeneous operation turns a per-channel bias into something a
    normalization does not subtract.

    Rectifiers (``relu(c z + b) != c relu(z) + b``); dropout (the mask multiplies the
    bias entry by entry); average pooling with zero padding counted in the divisor
    (border outputs hold a fraction of the bias); constant padding (the border is not
    biased); reshapes, permutations, indexing, reductions and pixel shuffles (the bias may
    no longer lie along the channel axis). Pooling without padding, max pooling,
    upsampling, ``flatten`` from dimension 1 on, reflecting, replicating or circular
    padding and a channel shuffle keep it.
    """
    if _is_rectifier(node, modules):
        return True
    if node.op == "call_module":
        mod = modules.get(node.target)
        if isinstance(mod, nn.modules.dropout._DropoutNd | nn.Unflatten):
            return True
        if isinstance(mod, nn.modules.pooling._AvgPoolNd):
            padded = any(np.atleast_1d(mod.padding))
            return padded and (mod.count_include_pad or mod.divisor_override is not None)
        if isinstance(mod, nn.Flatten):
            return mod.start_dim == 0
        # a zero border is not biased; a pixel shuffle spreads a channel over positions
        return isinstance(
            mod, nn.modules.padding._ConstantPadNd | nn.PixelShuffle | nn.PixelUnshuffle
        )
    name = _op_name(node)
    if name.startswith("dropout") or name in _RESHAPES:
        return True
    if name in ("avg_pool1d", "avg_pool2d", "avg_pool3d"):
        padded = any(np.atleast_1d(_const_arg(node, 3, "padding", 0)))
        counted = _const_arg(node, 5, "count_include_pad", True)
        return padded and (counted or _const_arg(node, 6, "divisor_override", None) is not None)
    if name == "flatten":
        return _const_arg(node, 1, "start_dim", 0) == 0
    if name == "pad":
        return _const_arg(node, 2, "mode", "constant") == "constant"
    return False


def _op_name(node: Any) -> str:
    """The operation a graph node calls: a method's name, a function's ``__name__``, or the
    module path of a ``call_module`` node."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def _passes_through(node: Any, modules: Mapping[str, Any]) -> bool:
    """Whether a node between a weight layer and its norm is a positively homogeneous map
    (:func:`_homogeneous_module`, :data:`_PASS_FUNCTIONS`, :data:`_PASS_METHODS`, a clamp
    at 0 from below) that the single-weight search walks through."""
    if node.op == "call_module":
        return _homogeneous_module(modules.get(node.target))
    if node.op == "call_function":
        return _op_name(node) in _PASS_FUNCTIONS or _zero_clamp(node)
    if node.op == "call_method":
        return node.target in _PASS_METHODS or _zero_clamp(node)
    return False


def _is_rectifier(node: Any, modules: Mapping[str, Any]) -> bool:
    """A ReLU, LeakyReLU or PReLU (module, function or method), or a clamp at 0 from below
    (:func:`_zero_clamp`): positively homogeneous, but not shift-free."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), RECTIFIER_TYPES)
    name = _op_name(node)
    return name in _RECTIFIER_FUNCTIONS or _zero_clamp(node)


def _zero_clamp(node: Any) -> bool:
    """A clamp (function or method) with lower bound 0 and no upper bound: a ReLU,
    ``clamp(c z, min=0) = c clamp(z, min=0)`` for ``c > 0`` (any other bound is not
    homogeneous)."""
    if node.op not in ("call_function", "call_method"):
        return False
    name = _op_name(node)
    if name not in _CLAMPS:
        return False
    low = _const_arg(node, 1, "min", None)
    high = None if name.startswith("clamp_min") else _const_arg(node, 2, "max", None)
    return isinstance(low, int | float) and low == 0 and high is None


def _holders(modules: Mapping[str, Any]) -> dict[int, list[str]]:
    """The modules holding each parameter object (by ``id``): a tied weight has several."""
    held: dict[int, list[str]] = {}
    for name, mod in modules.items():
        for p in mod._parameters.values():
            if p is not None:
                held.setdefault(id(p), []).append(name)
    return held


def _read_parameter(modules: Mapping[str, Any], target: str) -> Any:
    """The parameter a ``get_attr`` node reads (``None`` for anything else)."""
    owner, _, attr = str(target).rpartition(".")
    mod = modules.get(owner)
    return None if mod is None else mod._parameters.get(attr)


def _called_weights(graph: Any, modules: Mapping[str, Any]) -> tuple[dict[str, int], set[str]]:
    """``(calls, unsafe)``: how many graph nodes call each weight layer, and the layers
    whose weight the graph also reads directly (``get_attr``), that share a parameter with
    another module (a tied embedding and output layer: their other use may not show as
    theirs), or that sit inside a module the trace did not enter (their uses are not
    visible)."""
    calls: dict[str, int] = {}
    opaque: list[str] = []
    read: set[str] = set()
    held = _holders(modules)
    for node in graph.nodes:
        if node.op == "call_module":
            mod = modules.get(node.target)
            if _is_weight_layer(mod):
                calls[node.target] = calls.get(node.target, 0) + 1
            elif not isinstance(mod, NORM_TYPES) and not _homogeneous_module(mod):
                opaque.append(f"{node.target}.")
        elif node.op == "get_attr":
            read.add(str(node.target).rsplit(".", 1)[0])
            p = _read_parameter(modules, node.target)
            read.update(held.get(id(p), ()) if p is not None else ())
    tied = {name for names in held.values() if len(names) > 1 for name in names}
    inside = {
        name
        for name, mod in modules.items()
        if _is_weight_layer(mod) and any(name.startswith(o) for o in opaque)
    }
    return calls, read | inside | tied


def _fx_groups(
    graph: Any, modules: Mapping[str, Any], usage: tuple[dict[str, int], set[str]]
) -> list[str]:
    """Weights whose output reaches a normalization alone, in the traced ``graph``
    (``usage``: :func:`_called_weights` of the graph)."""
    from torch import fx

    found: list[str] = []
    calls, unsafe = usage
    for node in graph.nodes:
        kind = _norm_kind(node, modules)
        if kind is None:
            continue
        src = node.args[0] if node.args else None
        norm = modules.get(node.target) if node.op == "call_module" else None
        broken = False
        while src is not None and isinstance(src, fx.Node) and len(src.users) == 1:
            mod = modules.get(src.target) if src.op == "call_module" else None
            if _is_weight_layer(mod):
                ok = calls.get(src.target) == 1 and src.target not in unsafe
                broken = broken or not _flat_output(src, mod)
                if ok and _bias_ok(mod, kind, broken, norm) and mod.weight is not None:
                    found.append(f"{src.target}.weight")
                break
            if not _passes_through(src, modules):
                break
            broken = broken or _breaks_bias(src, modules)
            src = src.args[0] if src.args else None
    return found


#: Name of the group of weights that are scale-invariant only together (:func:`find_si_groups`).
JOINT_GROUP = "jointly_si"
_ADD_FUNCTIONS = {"add", "iadd", "sub", "isub", "cat", "stack"}
#: The concatenations among them (their number operands are dimensions, not addends).
_JOINS = {"cat", "stack"}
#: Operations that keep a tensor's degree of homogeneity (besides the pass-through ones).
_HOMOGENEOUS = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d", "getitem",
    "leaky_relu", "mean", "neg", "pad", "permute", "squeeze", "sum", "transpose",
    "unsqueeze", "dropout1d", "dropout2d", "to", "float", "double", "half", "bfloat16",
    "type_as", "clone",
}  # fmt: skip
#: Operations whose result does not depend on the tensor's scale (shapes).
_SHAPE_QUERIES = {"size", "dim", "numel"}
#: Tensor attributes (``getattr`` nodes) that do not depend on its values, and those that
#: are its entries moved (``x.T``).
_METADATA_ATTRS = {
    "shape", "dtype", "device", "ndim", "layout", "is_cuda", "requires_grad", "names",
    "is_sparse", "is_quantized", "is_meta", "itemsize", "nbytes",
}  # fmt: skip
_TRANSPOSED_ATTRS = {"T", "mT", "H", "mH"}
#: Products of their tensor operands (degrees add); the value is the position of a
#: bias operand added to the product (``F.linear(x, W, b)``), if the operation has one.
_PRODUCTS: dict[str, int | None] = {
    "matmul": None, "mm": None, "bmm": None, "einsum": None, "outer": None, "mul": None,
    "mul_": None, "imul": None, "linear": 2, "bilinear": 3, "conv1d": 2, "conv2d": 2,
    "conv3d": 2, "conv_transpose1d": 2, "conv_transpose2d": 2, "conv_transpose3d": 2,
    "embedding": None,
}  # fmt: skip
#: Norms of a tensor: ``|c z| = c |z|`` for ``c > 0``, any norm.
_NORMS = {"norm", "linalg_norm", "linalg_vector_norm", "linalg_matrix_norm", "abs"}
#: Powers of a tensor, and statistics homogeneous like one (``var(c z) = c**2 var(z)``),
#: with the factor they apply to its degree (``pow``: its exponent).
_POWERS = {
    "sqrt": 0.5, "rsqrt": -0.5, "square": 2.0, "reciprocal": -1.0, "pow": None,
    "var": 2.0, "std": 1.0,
}  # fmt: skip


class _Degree:
    """How a graph value scales when the weights of a candidate set are multiplied by c.

    ``k``: the value is multiplied by ``c**k`` (a product adds degrees, a power
    multiplies them); ``src``: the candidate weights it depends
    on since the last normalization; ``biased``: a bias was added to a scaled value (only
    a normalization that subtracts the per-channel mean cancels it, :func:`_cancels_bias`);
    ``layer``: the weight layer that added it; ``eps``: the bias is a normalization's
    epsilon (:func:`_adds_epsilon`), ignored under a power as a norm layer's is.
    """

    __slots__ = ("biased", "eps", "k", "layer", "src")

    def __init__(
        self,
        k: float = 0,
        src: frozenset[str] = frozenset(),
        biased: bool = False,
        layer: Any = None,
        eps: bool = False,
    ):
        self.k, self.src, self.biased, self.layer, self.eps = k, src, biased, layer, eps


def _node_args(node: Any, fx: Any) -> list[Any]:
    flat: list[Any] = []
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, list | tuple):
            flat += [b for b in a if isinstance(b, fx.Node)]
        elif isinstance(a, fx.Node):
            flat.append(a)
    return flat


def _adds_number(node: Any) -> bool:
    """Whether a sum or difference has a plain number among its operands (``z + 1``)."""
    operands = list(node.args) + [v for k, v in node.kwargs.items() if k != "alpha"]
    return any(isinstance(a, int | float) and not isinstance(a, bool) for a in operands)


#: Largest number added to a scaled value that counts as a normalization's epsilon.
EPS_MAX = 1e-3


def _adds_epsilon(node: Any, name: str) -> bool:
    """Whether a sum adds one small positive number (``0 < eps <= EPS_MAX``) to a tensor:
    the epsilon of a hand-written normalization, ``x * rsqrt(mean(x**2) + eps)`` (Llama's
    and Qwen's RMSNorm) or ``(x - m) / sqrt(var + eps)``. Like a norm layer's ``eps``, it
    is taken as 0 there (:func:`_power_degree`); the invariance is then exact for
    ``eps = 0``."""
    numbers = [
        a
        for a in list(node.args) + [v for k, v in node.kwargs.items() if k != "alpha"]
        if isinstance(a, int | float) and not isinstance(a, bool)
    ]
    return name in ("add", "iadd") and len(numbers) == 1 and 0 < numbers[0] <= EPS_MAX


def _product_degree(node: Any, ins: list[_Degree], args: list[Any], name: str) -> _Degree | None:
    """Degree of a product of tensors (:data:`_PRODUCTS`), or ``None`` when it breaks the
    homogeneity: a biased factor, or a bias operand whose degree differs from the
    product's (``F.linear(x, c W, b)`` with a fixed ``b``)."""
    if len(ins) == 1 and name in ("mul", "mul_", "imul"):
        return ins[0]  # a tensor times a constant: a per-channel bias stays one
    at = _PRODUCTS[name]
    bias = _const_arg(node, at, "bias", None) if at is not None else None
    factors = [d for a, d in zip(args, ins, strict=True) if a is not bias]
    if any(d.biased for d in ins):
        return None
    k = sum(d.k for d in factors)
    src = frozenset().union(*(d.src for d in ins))
    if bias is not None and not any(a is bias for a in args):
        return None if k else _Degree(0, src)  # a constant bias: fine only unscaled
    if bias is not None:
        kb = ins[next(i for i, a in enumerate(args) if a is bias)].k
        if kb != k:
            return None
    return _Degree(k, src)


def _attention_degree(node: Any, deg: Mapping[Any, _Degree], fx: Any) -> _Degree | None:
    """Degree of ``F.scaled_dot_product_attention(q, k, v, ...)``: linear in the values,
    ``softmax(q k' s) (c v) = c softmax(q k' s) v``; ``None`` when the queries, the keys or
    the mask are scaled, or the values biased."""
    zero = _Degree()
    operands = [_const_arg(node, i, n, None) for i, n in enumerate(("query", "key", "value"))]
    q, k, v = (deg.get(a, zero) for a in operands)
    others = [deg.get(a, zero) for a in _node_args(node, fx) if all(a is not o for o in operands)]
    if q.k or q.biased or k.k or k.biased or v.biased or any(d.k or d.biased for d in others):
        return None
    return _Degree(v.k, v.src)


def _power_degree(node: Any, first: _Degree, name: str) -> _Degree | None:
    """Degree of a power (:data:`_POWERS`) or norm (:data:`_NORMS`) of one tensor, or
    ``None`` (a biased input, or an exponent that is not a constant number). A power of
    ``z + eps`` with a normalization's epsilon (:func:`_adds_epsilon`) is that of ``z``."""
    if first.biased and not (first.eps and name in _POWERS):
        return None
    if name in _NORMS:
        return _Degree(first.k, first.src)
    factor = _POWERS[name]
    if factor is None:
        e = _const_arg(node, 1, "exponent", None)
        if isinstance(e, bool) or not isinstance(e, int | float):
            return None
        factor = float(e)
    return _Degree(first.k * factor, first.src)


#: Positions of the affine ``weight`` and ``bias`` of the functional normalizations.
_NORM_AFFINE = {
    "layer_norm": (2, 3), "group_norm": (2, 3), "rms_norm": (2, None),
    "batch_norm": (3, 4), "instance_norm": (3, 4),
}  # fmt: skip


def _affine_degree(node: Any, args: list[Any], ins: list[_Degree], name: str) -> _Degree | None:
    """Degree of a normalization's output from its other tensor operands (``args``, of
    degrees ``ins``): the input's scale is gone, but a functional call's affine terms
    (``F.layer_norm(x, s, g, b)``) scale the output: ``N(x) c g + c b = c (N(x) g + b)``.
    ``None`` when they are not scaled alike (``g`` scaled, ``b`` not), or when another
    operand (running statistics) is scaled."""
    weight_at, bias_at = _NORM_AFFINE.get(name, (None, None))
    weight = _const_arg(node, weight_at, "weight", None) if weight_at is not None else None
    bias = _const_arg(node, bias_at, "bias", None) if bias_at is not None else None
    of = {id(a): d for a, d in zip(args, ins, strict=True)}
    zero = _Degree()
    kw = of.get(id(weight), zero)
    kb = of.get(id(bias), kw) if bias is not None else kw
    others = [d for a, d in zip(args, ins, strict=True) if a is not weight and a is not bias]
    if kw.biased or kb.k != kw.k or kb.biased or any(d.k or d.biased for d in others):
        return None
    return _Degree(kw.k, kw.src | kb.src) if kw.k else zero


def _joint_conflict(graph: Any, modules: Mapping[str, Any], cand: set[str], fx: Any) -> set[str]:
    """Candidate weights to drop at the first place where scaling ``cand`` changes the output.

    Propagates :class:`_Degree` through the traced graph: a weight layer in ``cand``
    raises the degree by one (with its bias also in ``cand``, the layer's output is
    scaled as a whole: degree one, no bias, and only for an unscaled input), a
    parameter in ``cand`` read directly has degree one; a normalization resets it to 0
    (its own affine terms, if scaled, set it: :func:`_affine_degree`); positively
    homogeneous maps keep it; products (``matmul``, ``einsum``, ``F.linear``,
    ``mul``...) add the degrees of their factors,
    a quotient subtracts them, norms keep them and powers multiply them (so
    ``W / W.norm()`` has degree 0); a sum or concatenation needs equal degrees; any other
    operation, and the model's output, need degree 0. Returns the candidates behind
    the first violation (empty when none: scaling all of ``cand`` by ``c > 0`` leaves
    the output unchanged).
    """
    deg: dict[Any, _Degree] = {}
    zero = _Degree()
    for node in graph.nodes:
        args = _node_args(node, fx)
        ins = [deg.get(a, zero) for a in args]
        first = ins[0] if ins else zero
        scaled = [d for d in ins if d.k or d.biased]
        if node.op == "get_attr" and node.target in cand:
            deg[node] = _Degree(1, frozenset({node.target}))
            continue
        if node.op in ("placeholder", "get_attr"):
            deg[node] = zero
            continue
        if node.op == "output":
            return set().union(*(d.src for d in scaled)) if scaled else set()
        name = _op_name(node)
        mod = modules.get(node.target) if node.op == "call_module" else None
        if _is_weight_layer(mod):
            if first.biased:
                return set(first.src)
            w, b = f"{node.target}.weight", f"{node.target}.bias"
            if b in cand:
                # W and b scaled together: c (W x + b) only for an unscaled input x
                if w not in cand or first.k:
                    return set(first.src) | {w, b} & cand
                deg[node] = _Degree(1, first.src | {w, b})
                continue
            k, src = (first.k + 1, first.src | {w}) if w in cand else (first.k, first.src)
            biased = k > 0 and getattr(mod, "bias", None) is not None
            # a bias off the channel axis is cancelled by no normalization
            deg[node] = _Degree(k, src, biased, layer=mod if _flat_output(node, mod) else None)
        elif (kind := _norm_kind(node, modules)) is not None:
            if first.biased and not _cancels_bias(kind, first.layer, mod):
                return set(first.src)
            affine = _affine_degree(node, args[1:], ins[1:], name)
            if affine is None:
                return set().union(*(d.src for d in scaled))
            deg[node] = affine
        elif name == "pad" and _pads_nonzero(node):
            if first.k or first.biased:
                return set(first.src)  # a constant border is not scaled
            deg[node] = zero
        elif (
            _homogeneous_module(mod)
            or name in _PASS_FUNCTIONS
            or name in _PASS_METHODS
            or name in _HOMOGENEOUS
            or _zero_clamp(node)
        ):
            if first.biased and _breaks_bias(node, modules):
                return set(first.src)
            deg[node] = first
        elif name in _SHAPE_QUERIES:
            deg[node] = zero
        elif name == "getattr":  # x.shape, x.T, x.data, ...
            attr = _const_arg(node, 1, "name", None)
            if attr in _TRANSPOSED_ATTRS and not first.biased:
                deg[node] = _Degree(first.k, first.src)
            elif attr in _METADATA_ATTRS or not scaled:
                deg[node] = zero
            else:
                return set().union(*(d.src for d in scaled))
        elif name in _ADD_FUNCTIONS and ins:
            if name in _JOINS:  # an empty part (a fresh key/value cache) adds nothing
                kept = [d for a, d in zip(args, ins, strict=True) if not _is_empty(a)]
                ins, first = kept or ins, (kept or ins)[0]
            if len({(d.k, d.biased) for d in ins}) > 1:
                return set().union(*(d.src for d in ins))
            src = frozenset().union(*(d.src for d in ins))
            if first.k and not first.biased and name not in _JOINS and _adds_number(node):
                # c z + 1: a constant every entry shares, removed by a norm that subtracts a
                # mean (_cancels_bias)
                deg[node] = _Degree(first.k, src, True, _SCALAR_BIAS, eps=_adds_epsilon(node, name))
            else:
                deg[node] = _Degree(first.k, src, first.biased, first.layer)
        elif node.op != "call_module" and name == "scaled_dot_product_attention":
            attention = _attention_degree(node, deg, fx)
            if attention is None:
                return set().union(*(d.src for d in scaled))
            deg[node] = attention
        elif node.op != "call_module" and name in _PRODUCTS:
            product = _product_degree(node, ins, args, name)
            if product is None:
                return set().union(*(d.src for d in scaled))
            deg[node] = product
        elif node.op != "call_module" and name in ("truediv", "div", "div_", "itruediv"):
            if len(ins) == 1 and node.args and node.args[0] is args[0]:
                deg[node] = first  # divided by a constant
                continue
            if any(d.biased for d in ins):
                return set().union(*(d.src for d in scaled))
            num = _const_arg(node, 0, "input", None)
            den = _const_arg(node, 1, "other", None)
            k = (deg.get(num, zero).k if isinstance(num, fx.Node) else 0) - (
                deg.get(den, zero).k if isinstance(den, fx.Node) else 0
            )
            deg[node] = _Degree(k, frozenset().union(*(d.src for d in ins)))
        elif node.op != "call_module" and (name in _NORMS or name in _POWERS) and len(ins) == 1:
            power = _power_degree(node, first, name)
            if power is None:
                return set(first.src)
            deg[node] = power
        elif scaled:
            return set().union(*(d.src for d in scaled))
        else:
            deg[node] = zero
    return set()


def _is_empty(node: Any) -> bool:
    """Whether a graph value is known (from its recorded shape) to hold no entries."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return shape is not None and 0 in tuple(shape)


def _pads_nonzero(node: Any) -> bool:
    """Whether a ``pad`` call fills its border with a constant other than 0 (not
    homogeneous: ``pad(c z, value=v) != c pad(z, value=v)``)."""
    mode = _const_arg(node, 2, "mode", "constant")
    value = _const_arg(node, 3, "value", None)
    return mode == "constant" and value is not None and value != 0


def _in_called_modules(graph: Any, modules: Mapping[str, Any]) -> set[int]:
    """``id`` of every parameter held by a module the graph calls (or by a module inside
    one), whatever its name: a tied parameter's use there does not show as a read."""
    called = [str(n.target) for n in graph.nodes if n.op == "call_module"]
    return {
        id(p)
        for name, mod in modules.items()
        if any(name == c or name.startswith(f"{c}.") for c in called)
        for p in mod.parameters()
    }


def _direct_parameters(
    graph: Any, params: Mapping[str, Any], exclude: Iterable[str], inside: set[int]
) -> list[str]:
    """Trainable parameters the traced ``graph`` reads directly (``get_attr``: ``x @ self.W``,
    ``F.linear(x, self.W)``, ``torch.einsum(..., self.W)``), in graph order, other than
    those of a module the graph calls, under any name (``inside``:
    :func:`_in_called_modules`; their other use is not visible), of a reparametrized layer
    (:func:`_reparametrized_si`) and those in ``exclude``."""
    skip = set(exclude)
    out: list[str] = []
    for node in graph.nodes:
        name = str(node.target)
        if (
            node.op == "get_attr"
            and name in params
            and name not in out
            and name not in skip
            and params[name].requires_grad
            and ".parametrizations." not in f".{name}"
            and id(params[name]) not in inside
        ):
            out.append(name)
    return out


def _fx_direct_groups(graph: Any, modules: Mapping[str, Any], direct: list[str]) -> list[str]:
    """The parameters of ``direct`` (:func:`_direct_parameters`) that are SI alone: scaling
    one of them leaves the output unchanged (:func:`_joint_conflict` of it alone)."""
    from torch import fx

    return [name for name in direct if not _joint_conflict(graph, modules, {name}, fx)]


#: Suffix of the name of a group holding a layer's weight and bias (:func:`find_si_groups`).
PAIR_SUFFIX = ".weight+bias"


def _trainable(mod: Any, attr: str) -> bool:
    p = mod._parameters.get(attr)
    return isinstance(p, nn.Parameter) and p.requires_grad  # not reparametrized, not frozen


def _fx_layer_groups(
    graph: Any,
    modules: Mapping[str, Any],
    usage: tuple[dict[str, int], set[str]],
    exclude: Iterable[str],
) -> tuple[list[str], list[str]]:
    """``(alone, pairs)``: weight layers (called once, weight not in ``exclude``) whose
    weight is SI alone, proved on the whole graph (:func:`_joint_conflict`; this finds
    those :func:`_fx_groups` does not follow, e.g. through a ``permute`` into a
    LayerNorm), and the layers whose weight is SI only together with their bias
    (a ConvNeXt convolution or a patch embedding before a LayerNorm, which does not
    subtract each channel's mean): ``LN(c (W x + b)) = LN(W x + b)``.
    """
    from torch import fx

    calls, unsafe = usage
    skip = set(exclude)
    alone: list[str] = []
    pairs: list[str] = []
    for name, mod in modules.items():
        w = f"{name}.weight"
        if (
            not _is_weight_layer(mod)
            or calls.get(name) != 1
            or name in unsafe
            or w in skip
            or not _trainable(mod, "weight")
        ):
            continue
        if not _joint_conflict(graph, modules, {w}, fx):
            alone.append(w)
        elif _trainable(mod, "bias") and not _joint_conflict(
            graph, modules, {w, f"{name}.bias"}, fx
        ):
            pairs.append(name)
    return alone, pairs


def _fx_joint_weights(
    graph: Any,
    modules: Mapping[str, Any],
    exclude: Iterable[str],
    usage: tuple[dict[str, int], set[str]],
    direct: Sequence[str] = (),
) -> list[str]:
    """Trainable Linear/Conv weights and directly read parameters (``direct``), not in
    ``exclude``, that are SI together (``usage``: :func:`_called_weights` of the graph).

    The largest set the graph proves jointly scale-invariant, found by dropping the
    weights behind each violation (:func:`_joint_conflict`) until none is left: in a
    pre-activation ResNet, the convolutions whose outputs meet in residual sums before
    the next normalization.
    """
    from torch import fx

    skip = set(exclude)
    calls, unsafe = usage
    cand = [
        f"{name}.weight"
        for name, mod in modules.items()
        if _is_weight_layer(mod)
        and _trainable(mod, "weight")
        and f"{name}.weight" not in skip
        and name not in unsafe
        and name in calls
    ] + [name for name in direct if name not in skip]
    keep = set(cand)
    while keep:
        drop = _joint_conflict(graph, modules, keep, fx) & keep
        if not drop:
            break
        keep -= drop
    return [w for w in cand if w in keep]


def _hook_groups(model: Any, example_input: Any) -> list[str]:
    """Forward-hook heuristic: a weight layer whose output tensor is a norm layer's input."""
    from siflow._recorded_graph import run_model

    produced: dict[int, tuple[str, Any]] = {}
    found: list[str] = []
    handles = []

    def on_weight(name: str) -> Callable[..., None]:
        def hook(mod: Any, inputs: Any, output: Any) -> None:
            produced[id(output)] = (name, mod)

        return hook

    def on_norm(mod: Any, inputs: Any) -> None:
        hit = produced.get(id(inputs[0]))
        if hit is None:
            return
        # a Linear's bias lies along the last axis: BatchNorm's channels only in 2-D
        flat = not isinstance(hit[1], nn.Linear) or inputs[0].dim() == 2
        if _bias_ok(hit[1], _module_norm_kind(mod), not flat, mod):
            found.append(f"{hit[0]}.weight")

    for name, mod in model.named_modules():
        if _is_weight_layer(mod):
            handles.append(mod.register_forward_hook(on_weight(name)))
        elif isinstance(mod, NORM_TYPES):
            handles.append(mod.register_forward_pre_hook(on_norm))
    buffers = _save_buffers(model)
    try:
        with torch.no_grad(), _rng_kept(model):
            run_model(model, example_input)
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own forward
        raise _not_a_batch(exc) from None
    finally:
        for h in handles:
            h.remove()
        _restore_buffers(model, buffers)
    return list(dict.fromkeys(found))


def _rng_kept(model: Any) -> Any:
    """A context in which a forward pass draws random numbers (dropout) without
    changing the random state the training loop sees: the CPU generator and those of
    the CUDA devices holding the model's parameters are restored afterwards."""
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    return torch.random.fork_rng(devices=cuda)


def find_si_groups(
    model: Any, example_input: Any = None, method: str = "auto"
) -> dict[str, list[Any]]:
    """Find the scale-invariant weights of a model.

    A ``Linear``/``Conv`` weight (or an ``nn.Embedding`` or ``nn.EmbeddingBag`` table
    without ``max_norm``) is SI when its output reaches a normalization layer (BatchNorm,
    LayerNorm, GroupNorm, InstanceNorm, RMSNorm, or their functional forms when they use
    the input's own statistics) only through positively homogeneous maps (ReLU,
    LeakyReLU, PReLU, a clamp at 0 from below, pooling, dropout, upsampling, flatten,
    view, padding by 0 or by the input's own border, pixel and channel shuffles, the
    largest or smallest entry along a dimension, ``amax``/``amin``) and is used nowhere
    else: ``Norm(h(c W x)) = Norm(c h(W x)) = Norm(h(W x))`` for ``c > 0`` (exact when the
    norm's ``eps`` is 0). The norm layer's own affine
    terms, if any, come after the normalization and do not change this; they are not
    SI themselves and are not returned. A bias before the norm is allowed only where
    the norm subtracts each channel's mean (BatchNorm; InstanceNorm or one-channel
    GroupNorm after a convolution) and the bias reaches it as a per-channel constant:
    no rectifier, dropout, zero padding (constant ``pad``, average pooling that counts
    its padding), reshape or permutation in between; a ``Linear`` bias only before a
    ``BatchNorm`` over its ``out_features`` channels, and only with a two-dimensional
    output, which is checked when ``example_input`` is a tensor (the traced graph is
    run once on it to know the shapes; without it a ``Linear`` applied to ``(N, L, F)``
    with ``L = F`` before ``BatchNorm1d(L)`` cannot be told from the 2-D case).
    "Nowhere else": the layer is called once in the traced graph, its weight is not read
    directly, and it is not inside a module the trace does not enter (``torch.fx`` keeps
    ``nn.TransformerEncoderLayer`` or ``nn.MultiheadAttention`` whole; nothing inside
    them is reported).

    Parameters
    ----------
    model : torch.nn.Module
    example_input : Tensor, tuple or mapping, optional
        Needed for ``method="run"`` and ``"hooks"`` (and as the fallback of ``"auto"``
        when the model cannot be traced by ``torch.fx``); a mapping is passed as keyword
        arguments (``model(**batch)``, a Hugging Face batch), a tuple or list as
        positional arguments (``model(*inputs)``, Lightning's convention).
    method : {"auto", "fx", "run", "hooks"}
        ``"fx"`` traces the module graph symbolically. ``"run"`` runs one forward pass
        on ``example_input`` and records every operation it performs into a graph of
        the same form (:mod:`siflow._recorded_graph`), analysed as ``"fx"``'s: it works
        where the forward branches on values (most Hugging Face models), describes the
        branches this batch took, and is refused (``ValueError``) when the pass computes
        from the parameters by means the recording cannot see. ``"hooks"`` runs one
        forward pass and matches a weight layer's output tensor with a norm layer's
        input. Buffers and the random state are restored after a pass. The hook
        heuristic sees direct connections only and cannot see a second use of the same
        output (a residual branch), so it can report a weight that is not SI: confirm
        its groups with :func:`check_scale_invariance`. ``"auto"``: ``"fx"``, else
        ``"run"``, else ``"hooks"``.

    Weights that are SI only together (with ``"auto"`` or ``"fx"``): in a
    pre-activation ResNet a convolution whose output is added to the shortcut before
    the next normalization is not SI alone, but all such convolutions scaled together
    are. Those form one more group, :data:`JOINT_GROUP` (``"jointly_si"``), with all
    their parameters: the largest set the traced graph proves invariant (degrees of
    homogeneity propagated through sums, positively homogeneous maps and
    normalizations), disjoint from the single-weight groups.

    A model whose class defines no ``forward`` (a ``LightningModule`` that computes its
    loss in ``training_step`` from ``self.net(x)``) gets the groups of its child modules,
    each traced on its own (``"fx"``/``"auto"``), named from the model (``net.0.weight``).

    Wrappers are looked through (:func:`_unwrapped`: ``torch.compile``, ``DataParallel``,
    ``DistributedDataParallel``): the groups are those of the module inside (the same
    tensors, named without the ``_orig_mod.`` or ``module.`` prefix).

    A weight whose layer has a bias the normalization does not cancel (a LayerNorm after
    a convolution, as in ConvNeXt, or after a patch embedding) is SI together with that
    bias, ``N(c (W x + b)) = N(W x + b)``: such a layer is one group
    ``"<module>.weight+bias"`` (:data:`PAIR_SUFFIX`) holding both, when its weight is not
    SI alone. A weight shared by two layers (tied) is never reported, and a functional
    normalization's own affine terms (``F.layer_norm(x, s, g, b)``) scale its output.
    Hand-written normalizations are followed through their operations
    (``x * rsqrt(mean(x**2) + eps)``, Llama's and Qwen's RMSNorm; ``(x - m) / sqrt(var +
    eps)``); an ``eps`` of at most :data:`EPS_MAX` is taken as 0 there, as a norm layer's
    ``eps`` is.

    A parameter read only through ``F.normalize`` (the weight of a cosine classifier) is SI
    by construction and reported under its name (``"fx"``/``"auto"``); ``F.normalize`` of a
    weight layer's output counts as a normalization like LayerNorm.

    Parameters the model reads directly (``"fx"``/``"auto"``: ``x @ self.W``,
    ``torch.einsum(..., self.W)``, ``F.linear(x, self.W)``, ``F.conv2d(x, self.K)``,
    ``self.W / self.W.norm()``, a gain ``h * self.g`` before a LayerNorm) are followed by
    their degree of homogeneity through the graph: products add degrees, quotients
    subtract them, norms keep them, powers multiply them, sums need equal degrees, a
    normalization returns 0 and anything else needs 0. One whose degree is 0 at the
    output when it alone is scaled is reported under its name; the others may join
    :data:`JOINT_GROUP`. A number added to a scaled value (``z + 1``) is removed only by
    a normalization that subtracts a mean (not RMSNorm or ``F.normalize``).

    Weight- and spectral-normalized layers (``torch.nn.utils.parametrizations`` or the
    older ``torch.nn.utils`` hooks): their direction ``v`` is SI by construction, whatever
    follows the layer, and is reported under its parameter name (any ``method``).

    Returns
    -------
    dict
        Group name (``"<module>.weight"``) to a one-element list of the parameter,
        in graph order, then the ``"<module>.weight+bias"`` groups (the weight and the
        bias), then possibly :data:`JOINT_GROUP` to its parameters.
    """
    if method not in ("auto", "fx", "run", "hooks"):
        raise ValueError(f"method must be 'auto', 'fx', 'run' or 'hooks', got {method!r}")
    model = _unwrapped(model)
    if method != "hooks" and _forward_undefined(model):
        return _children_groups(model, method)
    if method in ("hooks", "run") and example_input is None:
        raise ValueError(f"method={method!r} needs example_input=<a batch the model accepts>")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    graph = None if method in ("hooks", "run") else _fx_graph(model, example_input, method)
    if graph is None and method != "hooks":
        graph = _run_graph(model, example_input, method)
    if graph is None:
        names, pairs, joint = _hook_groups(model, example_input), [], []
    else:
        names, pairs, joint = _graph_groups(graph, modules, params)
    names += [n for n in _reparametrized_si(model) if n not in names]
    groups = {n: [params[n]] for n in names if n in params and params[n].requires_grad}
    for layer in pairs:
        groups[f"{layer}{PAIR_SUFFIX}"] = [params[f"{layer}.weight"], params[f"{layer}.bias"]]
    if joint:
        groups[JOINT_GROUP] = [params[n] for n in joint]
    return groups


def _fx_graph(model: Any, example_input: Any, method: str) -> Any:
    """The ``torch.fx`` graph of ``model`` with output shapes where ``example_input`` is a
    tensor; ``None`` when it cannot be traced and a recorded run can stand in
    (``method="auto"`` with an example input), else a ``ValueError`` naming the fix."""
    try:
        traced = _trace(model)
    except Exception as exc:  # torch.fx raises many types on untraceable code
        if method == "fx" or example_input is None:
            raise ValueError(
                f"torch.fx could not trace the model ({type(exc).__name__}: {exc}); pass "
                f"example_input= to record one forward pass instead, or groups= explicitly"
            ) from None
        return None
    _propagate_shapes(traced, model, example_input)
    return traced.graph


def _run_graph(model: Any, example_input: Any, method: str) -> Any:
    """The graph recorded from one forward pass on ``example_input``
    (:func:`siflow._recorded_graph.record_graph`; buffers and random state restored);
    ``None`` when it cannot be recorded completely and ``method="auto"`` (the hook
    heuristic then stands in), else a ``ValueError``."""
    from siflow._recorded_graph import RecordingIncomplete, record_graph

    buffers = _save_buffers(model)
    try:
        with _rng_kept(model):
            return record_graph(model, example_input)
    except RecordingIncomplete as exc:
        if method == "run":
            raise ValueError(
                f"one forward pass on example_input could not be recorded ({exc}); pass "
                f"groups= explicitly, or method='hooks'"
            ) from None
        return None
    except Exception as exc:  # noqa: BLE001 - any failure of the model's own forward
        raise _not_a_batch(exc) from None
    finally:
        _restore_buffers(model, buffers)


def _not_a_batch(exc: BaseException) -> ValueError:
    """The error for an ``example_input`` the model's forward fails on (first line only)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return ValueError(
        f"example_input does not run through the model ({type(exc).__name__}: {first}); "
        f"pass a batch the model accepts (a tensor, a tuple of positional inputs, or a "
        f"mapping of keyword arguments)"
    )


def _graph_groups(
    graph: Any, modules: Mapping[str, Any], params: Mapping[str, Any]
) -> tuple[list[str], list[str], list[str]]:
    """``(alone, pairs, joint)`` of a traced or recorded graph: the parameters SI alone,
    the layers SI with their bias (:func:`_fx_layer_groups`) and the jointly SI set."""
    usage = _called_weights(graph, modules)
    inside = _in_called_modules(graph, modules)
    names = _fx_groups(graph, modules, usage) + _normalized_parameters(graph, params, inside)
    direct = _direct_parameters(graph, params, names, inside)
    names += _fx_direct_groups(graph, modules, direct)
    alone, pairs = _fx_layer_groups(graph, modules, usage, names)
    names += alone
    paired = [f"{layer}.{attr}" for layer in pairs for attr in ("weight", "bias")]
    joint = _fx_joint_weights(graph, modules, names + paired, usage, direct)
    return names, pairs, joint


def _forward_undefined(model: Any) -> bool:
    """Whether the model's class defines no ``forward`` of its own: ``nn.Module``'s
    placeholder, or a ``LightningModule`` whose computation lives in ``training_step``."""
    fwd = getattr(type(model), "forward", None)
    return fwd is nn.Module.forward or getattr(fwd, "__qualname__", "") == (
        "LightningModule.forward"
    )


def _children_groups(model: Any, method: str) -> dict[str, list[Any]]:
    """:func:`find_si_groups` of a module without a ``forward``: the groups of each child
    module (named from the model, ``net.0.weight``), their joint groups merged (sets
    that are invariant separately are invariant together). A weight is SI within its
    child, which the model's own code (a ``training_step``) reaches only through the
    child's output, unless that code reads the weight directly: not visible here. A
    child that cannot be traced contributes nothing (an error only when no child could
    be traced)."""
    groups: dict[str, list[Any]] = {}
    joint: list[Any] = []
    failures: list[str] = []
    for name, child in model.named_children():
        if not any(p.requires_grad for p in child.parameters()):
            continue
        try:
            found = find_si_groups(child, method=method)
        except ValueError as exc:
            failures.append(f"{name}: {exc}")
            continue
        for group, tensors in found.items():
            if group == JOINT_GROUP:
                joint += tensors
            else:
                groups[f"{name}.{group}"] = tensors
    if failures and not groups and not joint:
        raise ValueError(
            f"{type(model).__name__} has no forward; its submodules could not be traced "
            f"({'; '.join(failures)}); pass groups= explicitly"
        )
    if joint:
        groups[JOINT_GROUP] = joint
    return groups


def _unwrapped(model: Any) -> Any:
    """The module inside ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``) and
    ``DataParallel``/``DistributedDataParallel`` (``module``), however nested: their own
    ``forward`` cannot be traced, the module they wrap can."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, parallel):
            model = model.module
        else:
            return model


def _normalized_parameters(graph: Any, params: Mapping[str, Any], inside: set[int]) -> list[str]:
    """Parameters the traced ``graph`` reads only through ``F.normalize`` (a cosine
    classifier's ``F.linear(h, F.normalize(W))``): ``normalize(c W) = normalize(W)`` for
    ``c > 0`` and any ``p``-norm, so such a parameter is SI by construction. A parameter of
    a module the graph also calls is left out, under any name (``inside``:
    :func:`_in_called_modules`; its other use is not visible). ``params``: the model's
    named parameters."""
    uses: dict[str, list[bool]] = {}
    for node in graph.nodes:
        if node.op != "get_attr" or node.target not in params:
            continue
        uses.setdefault(node.target, []).extend(
            u.op == "call_function"
            and getattr(u.target, "__name__", "") == "normalize"
            and bool(u.args)
            and u.args[0] is node
            for u in node.users
        )
    return [
        name
        for name, ok in uses.items()
        if ok and all(ok) and params[name].requires_grad and id(params[name]) not in inside
    ]


def _trace(model: Any) -> Any:
    """``torch.fx.symbolic_trace`` of ``model`` that traces a wrapped submodule
    (``self.backbone = torch.compile(...)``, a nested ``DataParallel``) through the module
    inside it (:func:`_unwrapped`); its layers keep their paths, e.g.
    ``backbone._orig_mod.0``."""
    from torch import fx

    class Tracer(fx.Tracer):
        def call_module(self, mod: Any, forward: Any, args: Any, kwargs: Any) -> Any:
            inner = _unwrapped(mod)
            if inner is not mod:
                return super().call_module(inner, inner.forward, args, kwargs)
            return super().call_module(mod, forward, args, kwargs)

    graph = Tracer().trace(model)
    return fx.GraphModule(model, graph)


def _reparametrized_si(model: Any) -> list[str]:
    """Parameters that a weight or spectral normalization makes SI by construction.

    Weight normalization computes ``W = g v / |v|`` and spectral normalization
    ``W = v / sigma(v)`` (``sigma`` from power iteration on normalized vectors, so
    ``sigma(c v) = c sigma(v)``): the layer's weight, and the loss, are unchanged when
    ``v`` is multiplied by ``c > 0``, whatever follows the layer (Salimans & Kingma 2016;
    Miyato et al. 2018). ``v`` is ``parametrizations.<name>.original1`` (weight norm) or
    ``.original`` (spectral norm) of ``torch.nn.utils.parametrizations``, and
    ``<name>_v`` or ``<name>_orig`` of the older hook-based ``torch.nn.utils``
    functions. Only a tensor with that one parametrization is reported.
    """
    from torch.nn.utils import parametrizations as par
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found: list[str] = []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        for tensor, plist in getattr(mod, "parametrizations", {}).items():
            if len(plist) != 1:
                continue
            if isinstance(plist[0], par._WeightNorm):
                found.append(f"{prefix}parametrizations.{tensor}.original1")
            elif isinstance(plist[0], par._SpectralNorm):
                found.append(f"{prefix}parametrizations.{tensor}.original")
        for hook in mod._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                found.append(f"{prefix}{hook.name}_v")
            elif isinstance(hook, SpectralNorm):
                found.append(f"{prefix}{hook.name}_orig")
    return found


def _propagate_shapes(traced: Any, model: Any, example_input: Any) -> None:
    """Record each node's output shape (``node.meta["tensor_meta"]``) by running the traced
    graph once on ``example_input`` (a tensor; a floating one is cast to the dtype of the
    model's parameters, e.g. a float32 input of a bf16 model); the model's buffers and the
    random state are restored. Without a tensor input, or when the run fails, shapes stay
    unknown (torch's own report of the failure, printed to stderr, is not shown)."""
    if not isinstance(example_input, torch.Tensor):
        return
    import contextlib
    import io

    from torch.fx.passes.shape_prop import ShapeProp

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None and example_input.is_floating_point():
        example_input = example_input.to(dtype)
    buffers = _save_buffers(model)
    try:
        with torch.no_grad(), _rng_kept(model), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(traced).propagate(example_input)
    except Exception:  # noqa: BLE001 - shapes are an optional refinement
        for node in traced.graph.nodes:
            node.meta.pop("tensor_meta", None)
    finally:
        _restore_buffers(model, buffers)


def _save_buffers(model: Any) -> list[tuple[Any, Any]]:
    return [(b, b.detach().clone()) for b in model.buffers()]


def _restore_buffers(model: Any, saved: list[tuple[Any, Any]]) -> None:
    with torch.no_grad():
        for buf, value in saved:
            buf.copy_(value)


def _rng_rewinder(devices: Sequence[int]) -> Callable[[], None]:
    """A function that puts the CPU generator, and those of the CUDA ``devices``, back to
    their present states (each evaluation of a loss then draws the same random numbers)."""
    cpu = torch.random.get_rng_state()
    cuda = [torch.cuda.get_rng_state(d) for d in devices]

    def rewind() -> None:
        torch.random.set_rng_state(cpu)
        for d, state in zip(devices, cuda, strict=True):
            torch.cuda.set_rng_state(state, d)

    return rewind


def check_scale_invariance(
    loss_fn: Callable[[], Any],
    params: Iterable[Any],
    factors: Sequence[float] = (0.5, 2.0, 10.0),
    model: Any = None,
) -> float:
    """Largest relative change of the loss when ``params`` are rescaled together.

    Evaluates ``loss_fn()`` at ``w`` and at ``c w`` for each ``c`` in ``factors``
    (all other parameters fixed) and returns ``max_c |L(cw) - L(w)| / max(|L(w)|, 1e-30)``.
    An SI group gives rounding-level values (~1e-7 in float32; BatchNorm's ``eps``
    adds about ``eps / var`` of the pre-norm activations); a non-SI group gives
    order-one values. The parameters are restored exactly afterwards, and so are
    ``model``'s buffers (BatchNorm running statistics) when ``model`` is given. Every
    evaluation draws the same random numbers (the same dropout masks), and the random
    state the caller sees is left as it was.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn() -> scalar tensor``: the loss on a fixed batch at the current weights.
    params : iterable of Tensor
        The group to rescale.
    factors : sequence of float
        Positive scale factors to try.
    model : torch.nn.Module, optional
        Whose buffers to restore after each evaluation.
    """
    params = list(params)
    if not params:
        raise ValueError("params is empty; pass the tensors of the group to check")
    fac = check_positive("factors", list(factors))
    if fac.ndim != 1 or fac.size == 0:
        raise ValueError("factors must be a non-empty sequence of positive numbers")
    saved_p = [p.detach().clone() for p in params]
    saved_b = _save_buffers(model) if model is not None else []
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            same_draws = _rng_rewinder(devices)
            base = float(loss_fn())
            if model is not None:
                _restore_buffers(model, saved_b)
            worst = 0.0
            for c in fac:
                for p, p0 in zip(params, saved_p, strict=True):
                    p.copy_(p0 * float(c))
                same_draws()  # the same dropout masks as the first evaluation
                val = float(loss_fn())
                if model is not None:
                    _restore_buffers(model, saved_b)
                worst = max(worst, abs(val - base) / max(abs(base), 1e-30))
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, saved_p, strict=True):
                p.copy_(p0)
        if model is not None:
            _restore_buffers(model, saved_b)
    return worst


# --------------------------------------------------------------------------- sharpness
def sphere_sharpness(
    loss_fn: Callable[[], Any],
    groups: Mapping[str, Sequence[Any]],
    iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    model: Any = None,
) -> tuple[float, float]:
    """Top eigenvalue of the Riemannian Hessian on the sphere(s) of the SI groups.

    Each group ``w_g`` lives on its sphere of radius ``rho_g``; the tangent space is
    ``{v : <v_g, w_g> = 0 for every g}`` with projector ``P``. The Riemannian Hessian
    of the loss restricted to this product of spheres is (Absil et al. 2008,
    Riemannian Hessian of a submanifold; exact)::

        Hess[v] = P H P v - sum_g (<w_g, grad_g L> / rho_g^2) (P v)_g

    where ``H`` is the Euclidean Hessian over the SI parameters (others held fixed).
    The second term vanishes for an exactly SI loss (docs/theory.md section 0). The
    returned ``lam`` is its top eigenvalue (raw coordinates), found by power
    iteration with Hessian-vector products (double backward), with a spectral shift
    when the largest-magnitude eigenvalue is negative. The unit-sphere sharpness
    is ``S = rho^2 * lam`` with ``rho`` the norm of all SI parameters together; for
    one group this is exactly the top eigenvalue of the Riemannian Hessian on the
    unit sphere, and in general ``elr * S = lr * lam`` so the stability condition
    of docs/theory.md section 2 reads ``elr * S < 2 (1 - lr*wd)`` as for one group.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn() -> scalar tensor`` at the current weights, with autograd enabled;
        use a fixed batch (the same one every call).
    groups : mapping of str to sequence of Tensor
        The SI groups.
    iters, tol : int, float
        Maximum power iterations and relative tolerance on the eigenvalue.
    seed : int
        Seed of the starting vector.
    model : torch.nn.Module, optional
        Whose buffers (BatchNorm running statistics) are restored afterwards.

    Returns
    -------
    (lam, S) : tuple of float
        Tangent-space top eigenvalue in raw coordinates and unit-sphere sharpness.
    """
    lam, s, _ = _sharpness(loss_fn, groups, iters, tol, seed, model, None)
    return lam, s


def _sharpness(
    loss_fn: Callable[[], Any],
    groups: Mapping[str, Sequence[Any]],
    iters: int,
    tol: float,
    seed: int,
    model: Any,
    init: Any,
) -> tuple[float, float, Any]:
    """:func:`sphere_sharpness` that also returns the top eigenvector (a warm start)."""
    iters = check_positive_int("iters", iters)
    seed = check_whole("seed", seed, 0)
    tol = positive_number("tol", tol)
    params = [p for ps in groups.values() for p in ps]
    if not params:
        raise ValueError("groups is empty; pass at least one SI group")
    sizes = [[p.numel() for p in ps] for ps in groups.values()]
    saved_b = _save_buffers(model) if model is not None else []
    try:
        with torch.enable_grad():
            return _power_sharpness(loss_fn, params, sizes, iters, tol, seed, init)
    finally:
        # after all Hessian-vector products: autograd checks the buffers' versions
        if model is not None:
            _restore_buffers(model, saved_b)


def _power_sharpness(
    loss_fn: Callable[[], Any],
    params: list[Any],
    sizes: list[list[int]],
    iters: int,
    tol: float,
    seed: int,
    init: Any,
) -> tuple[float, float, Any]:
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    w = torch.cat([p.detach().reshape(-1) for p in params]).double()
    g = torch.cat([gr.detach().reshape(-1) for gr in grads]).double()
    # group index ranges in the flat vector
    bounds, start = [], 0
    for sz in sizes:
        bounds.append((start, start + sum(sz)))
        start += sum(sz)
    radial = [float(w[a:b] @ g[a:b]) / float(w[a:b] @ w[a:b]) for a, b in bounds]

    def project(v: Any) -> Any:
        out = v.clone()
        for a, b in bounds:
            wa = w[a:b]
            out[a:b] -= (v[a:b] @ wa) / (wa @ wa) * wa
        return out

    def hess(v: Any) -> Any:
        v = project(v)
        chunks, pos = [], 0
        for p in params:
            chunks.append(v[pos : pos + p.numel()].reshape(p.shape).to(p.dtype))
            pos += p.numel()
        dot = sum((gr * c).sum() for gr, c in zip(grads, chunks, strict=True))
        hv = torch.autograd.grad(dot, params, retain_graph=True)
        hv = torch.cat([h.reshape(-1) for h in hv]).double()
        hv = project(hv)
        for (a, b), r in zip(bounds, radial, strict=True):
            hv[a:b] -= r * v[a:b]
        return hv

    gen = torch.Generator().manual_seed(int(seed))

    def power(shift: float, start: Any) -> tuple[float, Any]:
        if start is None or start.shape != w.shape:
            start = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
        v = project(start)
        v /= v.norm()
        lam = 0.0
        for i in range(iters):
            hv = hess(v) - shift * v
            new = float(v @ hv)
            nrm = hv.norm()
            if nrm == 0:
                return new + shift, v
            v = hv / nrm
            if i > 0 and abs(new - lam) <= tol * max(abs(new), 1e-30):
                lam = new
                break
            lam = new
        return lam + shift, v

    lam, vec = power(0.0, init)
    if lam < 0:
        lam, vec = power(lam, None)
    rho2 = float(w @ w)
    return lam, rho2 * lam, vec


# --------------------------------------------------------------------------- rotation
def rotational_equilibrium_of(optimizer: Any, param: Any) -> tuple[float, float]:
    """Equilibrium angular and relative update of ``param`` under ``optimizer``.

    Reads the hyperparameters of the parameter's group (``lr``, ``weight_decay``,
    ``momentum``, ``nesterov``, ``betas``) and the optimizer's class (``SGD``,
    ``AdamW``, ``Lion``) and evaluates :func:`siflow.theory.rotational_equilibrium`.
    A weight whose measured angular update and ``|dw|/|w|`` sit at these values is
    in rotational equilibrium, whether or not it is exactly scale-invariant.

    Returns
    -------
    (angle, relative_update) : tuple of float
        Radians per step and ``|dw|/|w|`` per step; NaN for a group without weight
        decay (no equilibrium).

    Raises
    ------
    ValueError
        If ``param`` is not in ``optimizer`` or the optimizer has no equilibrium
        in :mod:`siflow.theory`.
    """
    from siflow import theory

    for pg in optimizer.param_groups:
        if any(p is param for p in pg["params"]):
            break
    else:
        raise ValueError("param is not updated by optimizer; pass one of its parameters")
    wd = float(pg.get("weight_decay", 0.0))
    if wd == 0.0:
        return math.nan, math.nan
    betas = tuple(float(b) for b in pg.get("betas", (0.9, 0.999)))
    angle, rel = theory.rotational_equilibrium(
        type(optimizer).__name__,
        float(pg["lr"]),
        wd,
        momentum=float(pg.get("momentum", 0.0)),
        betas=(betas[0], betas[1]),
        nesterov=bool(pg.get("nesterov", False)),
    )
    return float(angle), float(rel)


# --------------------------------------------------------------------------- recorder
def is_rank_zero() -> bool:
    """True outside ``torch.distributed`` and on its rank 0: the process that writes."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _normalize_groups(model: Any, groups: GroupSpec, example_input: Any) -> dict[str, list[Any]]:
    if groups is None:
        found = find_si_groups(model, example_input=example_input)
        if not found:
            raise ValueError(
                "no scale-invariant weights found (a Linear/Conv weight feeding a "
                "normalization layer); pass groups= explicitly"
            )
        return found
    out = _explicit_groups(model, groups)
    if not out:
        raise ValueError(
            f"groups={groups!r} names no SI group; pass at least one, e.g. "
            f"groups=['0.weight'], or groups=None to find them"
        )
    return out


def _explicit_groups(model: Any, groups: GroupSpec) -> dict[str, list[Any]]:
    """The groups the caller named (``groups`` not None), possibly none."""
    params = dict(model.named_parameters())
    if isinstance(groups, Mapping):
        out: dict[str, list[Any]] = {}
        for name, ps in groups.items():
            # one tensor or one name is a group of one (a tensor would iterate over its rows)
            members = [ps] if isinstance(ps, str) or torch.is_tensor(ps) else ps
            if not isinstance(members, Iterable):
                raise ValueError(
                    f"group {name!r} is {type(ps).__name__}; pass a list of parameters "
                    f"(tensors) or parameter names"
                )
            found = [_group_member(params, name, p) for p in members]
            if not found:
                raise ValueError(f"group {name!r} is empty; pass at least one tensor")
            out[str(name)] = found
        return out
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, Iterable):
        raise ValueError(
            f"groups must map group names to parameters, or list parameter names, got "
            f"{type(groups).__name__}; pass e.g. groups=['0.weight'] or "
            f"groups={{'layer': [model[0].weight]}}"
        )
    out = {}
    for name in groups:
        if not isinstance(name, str) or name not in params:
            raise ValueError(
                f"groups names {name!r}, which is not a parameter of the model "
                f"(see model.named_parameters())"
            )
        out[str(name)] = [params[name]]
    return out


def _group_member(params: Mapping[str, Any], group: object, p: object) -> Any:
    """A member of an explicit group: a tensor, or the model's parameter of that name."""
    if isinstance(p, str):
        if p not in params:
            raise ValueError(
                f"group {group!r} names {p!r}, which is not a parameter of the model "
                f"(see model.named_parameters())"
            )
        return params[p]
    if not torch.is_tensor(p):
        raise ValueError(
            f"group {group!r} holds a {type(p).__name__}; pass parameters (tensors) or their names"
        )
    return p


def _lr_wd(param_group: Mapping[str, Any]) -> tuple[float, float]:
    """``(lr, weight_decay)`` of an optimizer param group."""
    return float(param_group["lr"]), float(param_group.get("weight_decay", 0.0))


def _configured_lr_wd(param_group: Mapping[str, Any]) -> tuple[float, float]:
    """``(lr, weight_decay)`` the run is configured with, for the log's metadata.

    A PyTorch scheduler stores the configured lr in each param group as ``initial_lr``
    (``max_lr`` for OneCycleLR and CyclicLR, whose ``initial_lr`` is the cycle's start)
    and changes ``lr`` from the first step on: under a warmup the current ``lr`` is the
    warmup's first value (0 for a linear warmup from 0), which is not the run's lr. The
    current ``lr`` is taken when no scheduler has set these keys.
    """
    lr, wd = _lr_wd(param_group)
    for key in ("max_lr", "initial_lr"):
        value = param_group.get(key)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return float(value), wd
    return lr, wd


def _momentum_column(param_group: Mapping[str, Any]) -> str | None:
    """Name of the column of a param group's momentum term: ``"beta1"`` for Adam-type
    optimizers and Lion (``betas``), ``"momentum"`` for SGD-type ones (heavy ball,
    Nesterov), None for an optimizer with neither."""
    if "betas" in param_group:
        return "beta1"
    if "momentum" in param_group:
        return "momentum"
    return None


def _momentum_of(param_group: Mapping[str, Any], column: str | None) -> float:
    """The current value of ``column`` (:func:`_momentum_column`) in ``param_group``:
    ``betas[0]`` or ``momentum``; NaN when it is not a number (never raises)."""
    if column is None:
        return math.nan
    try:
        value = param_group["betas"][0] if column == "beta1" else param_group["momentum"]
        return float(value)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError):
        return math.nan


def _configured_momentum(param_group: Mapping[str, Any], column: str | None) -> float:
    """The momentum (``beta1``) the run is configured with, for the log's metadata.

    As for the lr (:func:`_configured_lr_wd`): a scheduler that cycles it (OneCycleLR,
    CyclicLR with ``cycle_momentum=True``) stores its maximum in the param group as
    ``max_momentum`` (the value it sets at construction) and changes the momentum (or
    ``betas[0]``) from the first step on; the current value is taken when no scheduler
    has set that key. NaN when it is not a number.
    """
    value = param_group.get("max_momentum")
    if column is not None and isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return _momentum_of(param_group, column)


def _recorder_path(path: str | os.PathLike[str] | None) -> Path | None:
    """The file a recorder writes its log to: a name ending in ``.csv`` or ``.npz``, or
    None for no file; anything else is a ValueError naming the fix."""
    if path is None:
        return None
    if not isinstance(path, str | os.PathLike) or Path(path).suffix.lower() not in (
        ".csv",
        ".npz",
    ):
        raise ValueError(f"path must be a file name ending in .csv or .npz, got {path!r}")
    return Path(path)


def _local(t: Any) -> Any:
    """The local tensor of a parameter: its shard for a ``DTensor`` (FSDP2), else itself."""
    to_local = getattr(t, "to_local", None)
    return (t if to_local is None else to_local()).detach()


def _shard_group(tensors: Sequence[Any]) -> Any:
    """Process group over which ``tensors`` are sharded (``DTensor`` with a ``Shard``), or None."""
    found = None
    for t in tensors:
        placements = getattr(t, "placements", None)
        if placements is None or not any(pl.is_shard() for pl in placements):
            continue
        mesh = t.device_mesh
        if mesh.ndim != 1:
            raise ValueError(
                "SI parameters sharded over a multi-dimensional device mesh are not supported; "
                "pass process_group=<the group that holds the shards>"
            )
        found = mesh.get_group()
    return found


def _angle(r2: float, p: float, d: float) -> float:
    """Angle between ``w`` and ``w + dw`` from ``|w|^2``, ``<w, dw>`` and ``|dw|^2``.

    ``atan2(|dw_perp|, |w| + <w, dw>/|w|)`` with ``|dw_perp|^2 = |dw|^2 - <w, dw>^2/|w|^2``:
    exact, and accurate for tiny angles (no ``arccos`` of a cosine near 1).
    """
    if r2 <= 0.0:
        return math.nan
    r = math.sqrt(r2)
    perp2 = max(d - p * p / r2, 0.0)
    return math.atan2(math.sqrt(perp2), r + p / r)


def _put(row: dict[str, float], key: str, gram: Sequence[Sequence[float]], lr: float) -> None:
    """Write one group's columns from its Gram matrix of ``(w_t, g_t, w_t - w_{t+1})``."""
    r2, gw, wd_, g2, d2 = gram[0][0], gram[0][1], -gram[0][2], gram[1][1], gram[2][2]
    rho, gn = math.sqrt(max(r2, 0.0)), math.sqrt(max(g2, 0.0))
    sfx = f"/{key}" if key else ""
    row["rho" + sfx] = rho
    row["grad_norm_sphere" + sfx] = rho * gn
    row["elr" + sfx] = lr / r2 if rho > 0 else math.nan
    row["angular_update" + sfx] = _angle(r2, wd_, d2)
    row["relative_update" + sfx] = math.sqrt(max(d2, 0.0)) / rho if rho > 0 else math.nan
    row["radial" + sfx] = gw / (gn * rho) if gn > 0 and rho > 0 else math.nan
    if not key:
        row["grad_norm"] = gn


def _dense_view(row: Any, start: int, like: Any) -> Any:
    """``like.numel()`` elements of ``row`` from ``start``, shaped and strided as ``like``.

    A parameter stored densely in another memory format (a channels-last conv
    weight) then copies into its slice as one contiguous block.
    """
    n = like.numel()
    dims = sorted((st, sz) for st, sz in zip(like.stride(), like.shape, strict=True) if sz > 1)
    expect, dense = 1, True
    for st, sz in dims:
        dense = dense and st == expect
        expect *= sz
    flat = row[start : start + n]
    if dense and n > 0:
        return flat.as_strided(like.shape, like.stride())
    return flat.view(like.shape)


class _FlatBuffer:
    """Rows ``(w_t, g_t, w_t - w_{t+1})`` of the SI tensors in one preallocated buffer.

    Each SI tensor (its local shard under FSDP) owns a contiguous slice of every
    row, in group order, so a group is a column range and its Gram matrix
    ``M M^T`` (one matrix product) gives every norm and dot product of the
    recorder at once. The buffer has the parameters' dtype, at least float32: no
    float64 copy, and no half-precision Gram matrix (float16 squares overflow past a
    norm of 256; bfloat16 keeps three digits, and ``w_t - w_{t+1}`` of two bfloat16
    tensors is exact only in a wider type).
    """

    def __init__(self, groups: Mapping[str, Sequence[Any]]) -> None:
        self.tensors = [p for ps in groups.values() for p in ps]
        self._sizes = [len(ps) for ps in groups.values()]
        self._sharded = any(hasattr(p, "to_local") for p in self.tensors)
        self.bounds: list[tuple[int, int]] = []
        self._buf: Any = None
        self._shapes: list[Any] = []
        self._views: list[list[Any]] = []
        self._rows02: Any = None

    def weights(self) -> list[Any]:
        """The SI tensors as stored on this process (their local shards under FSDP)."""
        return [_local(p) for p in self.tensors] if self._sharded else self.tensors

    def store_grads(self) -> None:
        """Row 1 becomes ``g_t``; zeros for a tensor without a gradient (its group's
        gradient columns are then set to NaN by the recorder)."""
        self._ensure()
        views, grads, missing = [], [], []
        for view, p in zip(self._views[1], self.tensors, strict=True):
            if p.grad is None:
                missing.append(view)
            else:
                views.append(view)
                grads.append(_local(p.grad))
        if views:
            torch._foreach_copy_(views, grads)
        if missing:
            torch._foreach_zero_(missing)

    def _ensure(self) -> None:
        if self._buf is not None and not self._sharded:
            return
        local = [_local(p) for p in self.tensors]
        shapes = [t.shape for t in local]
        if self._buf is not None and shapes == self._shapes:
            return
        dtype = torch.float32
        for t in local:
            dtype = torch.promote_types(dtype, t.dtype)
        total = sum(t.numel() for t in local)
        self._buf = torch.empty(3, total, dtype=dtype, device=local[0].device)
        self._rows02 = self._buf[0::2]
        self._shapes = shapes
        self._views = [[], [], []]
        starts, pos = [], 0
        for t in local:
            for row in range(3):
                self._views[row].append(_dense_view(self._buf[row], pos, t))
            starts.append(pos)
            pos += t.numel()
        starts.append(pos)
        self.bounds, k = [], 0
        for n in self._sizes:
            self.bounds.append((starts[k], starts[k + n]))
            k += n

    def store(self, row: int, tensors: Sequence[Any]) -> None:
        self._ensure()
        torch._foreach_copy_(self._views[row], tensors)

    def store_weights(self) -> None:
        """Rows 0 and 2 become ``w_t`` (one ``_foreach_copy_``)."""
        self._ensure()
        ws = self.weights()
        torch._foreach_copy_(self._views[0] + self._views[2], ws + ws)

    def store_update(self) -> None:
        """Row 2 becomes ``w_t - w_{t+1}`` (after :meth:`store_weights` before the step)."""
        self._ensure()
        torch._foreach_sub_(self._views[2], self.weights())

    def group_grams(self) -> Any:
        """``(G, 3, 3)`` Gram matrices of the rows over each group's columns."""
        buf = self._buf
        return torch.stack([buf[:, a:b] @ buf[:, a:b].T for a, b in self.bounds])

    def total_gram(self) -> Any:
        """``2 x 2`` Gram matrix of ``(w_t, w_t - w_{t+1})`` over all SI columns."""
        m = self._rows02
        return m @ m.T


_WINDOW_ONLY: dict[str, Any] = {"row": False}
#: A group's columns that come from its gradient (NaN on a row where it has none).
_GRADIENT_COLUMNS = ("grad_norm_sphere", "radial")


class SIRecorder:
    """Records SI metrics at every ``every``-th optimizer step.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    optimizer : torch.optim.Optimizer
        Its optimizer; the recorder hooks its ``step``.
    every : int
        Record steps ``0, every, 2*every, ...`` (others cost nothing).
    groups : mapping or sequence of parameter names, optional
        The SI groups: ``{"name": [tensor, ...]}`` or ``["conv1.weight", ...]``.
        Default: :func:`find_si_groups`.
    example_input : Tensor, optional
        For the forward-hook detection when the model cannot be traced.
    sharpness_every : int, optional
        Also compute the unit-sphere sharpness at every ``sharpness_every``-th
        recorded step (a multiple of ``every``) with :func:`sphere_sharpness`;
        needs ``sharpness_loss``. Unmeasured rows hold NaN.
    sharpness_loss : callable, optional
        ``sharpness_loss() -> loss tensor`` on a fixed batch at the current weights.
    sharpness_iters, sharpness_tol : int, float
        Maximum power iterations per measurement and relative tolerance on the
        eigenvalue; each measurement starts from the previous eigenvector.
    path : str or PathLike, optional
        Where :meth:`save` writes by default (``.csv`` or ``.npz``).
    flush_every : int, optional
        Save to ``path`` every ``flush_every`` recorded rows (atomic rewrite) so
        a long run leaves a readable log if it is killed.
    meta : dict, optional
        Extra metadata (seed, dataset, ...) stored with the log.
    window : bool
        With ``every > 1``, also measure the total angular update of every step
        for the window statistics (one copy of the SI weights per step); ``False``
        makes the steps between rows free.
    process_group : torch.distributed.ProcessGroup, optional
        All-reduce (sum) the norms and dot products over this group: for SI
        parameters sharded across processes (FSDP). Found automatically for
        ``DTensor`` parameters sharded on a one-dimensional mesh (FSDP2
        ``fully_shard``). Replicated parameters (DDP) need nothing: every rank
        computes the same values.

    Notes
    -----
    Call :meth:`log_loss` once per step after ``loss.backward()``, before or after
    ``optimizer.step()``: a backward hook tells which step the loss belongs to.
    With gradient accumulation the last loss logged before the step is kept.

    The weights ``w_t`` are copied before a recorded step (into one preallocated
    buffer of the parameters' dtype, at least float32); the gradient ``g_t`` is read from ``p.grad``
    after the step, so a step that computes its gradients inside ``step(closure)``
    (PyTorch Lightning, L-BFGS) is recorded correctly. This assumes the optimizer
    does not modify ``p.grad`` in place, true of the ``torch.optim`` optimizers.
    All norms and dot products of a row come from one Gram matrix per group
    (``M M^T`` with ``M`` the rows ``w_t``, ``g_t``, ``w_t - w_{t+1}``) computed in
    the parameters' dtype or float32 if narrower (float16, bfloat16); the combination
    into the columns is in float64.

    A group with no gradient on a recorded step (a layer skipped by stochastic depth
    or a conditional branch, or frozen part-way through training), which the
    optimizer skips, is recorded all the same: its norm, effective LR and angle
    (0 when nothing moved it), with NaN for its ``grad_norm_sphere`` and ``radial``
    (and the total's, which needs every group). Nothing is raised inside
    ``optimizer.step()``; :meth:`trajectory`'s meta counts such rows
    (``rows_without_gradient``, ``groups_without_gradient``) with a note.

    Under ``torch.distributed`` only rank 0 writes files (:meth:`save`,
    ``flush_every``); every rank records the rows.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        every: int = 1,
        groups: GroupSpec = None,
        example_input: Any = None,
        sharpness_every: int | None = None,
        sharpness_loss: Callable[[], Any] | None = None,
        sharpness_iters: int = 50,
        sharpness_tol: float = 1e-4,
        path: str | os.PathLike[str] | None = None,
        flush_every: int | None = None,
        meta: Mapping[str, Any] | None = None,
        window: bool = True,
        process_group: Any = None,
    ) -> None:
        self.every = check_positive_int("every", every)
        self.window = bool(window) and self.every > 1
        if sharpness_every is not None:
            sharpness_every = check_positive_int("sharpness_every", sharpness_every)
            if sharpness_every % self.every:
                raise ValueError(
                    f"sharpness_every={sharpness_every} must be a multiple of every={self.every}"
                )
            if sharpness_loss is None:
                raise ValueError("sharpness_every needs sharpness_loss=<callable returning loss>")
        self.sharpness_every = sharpness_every
        self.sharpness_loss = sharpness_loss
        self.sharpness_iters = check_positive_int("sharpness_iters", sharpness_iters)
        self.sharpness_tol = positive_number("sharpness_tol", sharpness_tol)
        self._sharp_vec: Any = None
        self.path = _recorder_path(path)
        if flush_every is not None:
            flush_every = check_positive_int("flush_every", flush_every)
            if self.path is None:
                raise ValueError("flush_every needs path=<file .csv or .npz>")
        self.flush_every = flush_every
        self.model = model
        self.optimizer = optimizer
        self.groups = _normalize_groups(model, groups, example_input)
        self._param_group: dict[int, dict[str, Any]] = {}
        for pg in optimizer.param_groups:
            for p in pg["params"]:
                self._param_group[id(p)] = pg
        outside = [
            name
            for name, ps in self.groups.items()
            if any(id(p) not in self._param_group for p in ps)
        ]
        if outside and (groups is not None or len(outside) == len(self.groups)):
            raise ValueError(
                f"group {outside[0]!r} has parameters the optimizer does not update "
                f"(frozen or not passed to it); drop the group or add them to the optimizer"
            )
        for name in outside:  # found groups the optimizer does not fully update
            del self.groups[name]
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(
                f"meta must be a mapping of names to values, got {type(meta).__name__}; "
                f"pass e.g. meta={{'run': 'a'}}"
            )
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.update(self._hyper_meta())
        notes = [self._mixed_groups_note(), self._mixed_members_note()]
        if outside:
            notes.append(
                f"SI groups found but left out, as the optimizer does not update all their "
                f"parameters: {', '.join(outside)}"
            )
        if any(notes):
            self.meta["notes"] = [*self.meta.get("notes", []), *filter(None, notes)]
        self._flatbuf = _FlatBuffer(self.groups)
        self._no_grad = torch.no_grad()
        self._pgroup = process_group
        if self._pgroup is None:
            self._pgroup = _shard_group(self._flatbuf.tensors)
        # local shards of plain tensors under process_group= (FSDP1): their sizes are
        # summed over the group at the first recorded row (a collective every rank runs)
        self._sizes_due = self._pgroup is not None and not all(
            hasattr(p, "to_local") for p in self._flatbuf.tensors
        )
        if not self._sizes_due:
            self._set_sizes([sum(int(p.numel()) for p in ps) for ps in self.groups.values()])
        first = self._param_group[id(next(iter(self.groups.values()))[0])]
        self._mom_column = _momentum_column(first)
        self._mom_meta = (
            self.meta["momentum"]
            if self._mom_column == "momentum"
            else (self.meta.get("betas") or [math.nan])[0]
        )
        self._steps = 0
        self._rows: list[dict[str, float]] = []
        self._taken = 0
        self._pre: dict[str, Any] | None = None
        self._window: list[Any] = [0.0, 0.0, 0]
        self._trail: list[float] = [0.0, 0.0]
        self._trailing: list[float] = []
        self._hyper: list[tuple[float, float, float]] = []
        self._pending_loss: float | None = None
        self._backward_id = 0
        self._loss_backward_id = -1
        self._row_backward_id = -2
        self._new_backward = True
        self._rows_missing_grad = 0
        self._missing_grad: dict[str, int] = {}
        self._steps_without_backward: list[int] = []
        # the first tensor of every group tells that a backward ran (one skipped or
        # frozen group must not hide it)
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
            *(ps[0].register_post_accumulate_grad_hook(self._on_backward)
              for ps in self.groups.values()),
        ]  # fmt: skip

    # ---------------------------------------------------------------- helpers
    def _hyper_meta(self) -> dict[str, Any]:
        pg = self._param_group[id(next(iter(self.groups.values()))[0])]
        betas = pg.get("betas")
        lr, wd = _configured_lr_wd(pg)
        column = _momentum_column(pg)
        meta: dict[str, Any] = {
            "lr": lr,
            "wd": wd,
            "momentum": _configured_momentum(pg, column) if column == "momentum" else 0.0,
            "optimizer": type(self.optimizer).__name__,
            "groups": list(self.groups),
            # each group's own (initial) lr and wd: siflow.io.read(path, group=<name>)
            "group_hyper": {
                name: dict(
                    zip(("lr", "wd"), _configured_lr_wd(self._param_group[id(ps[0])]), strict=True)
                )
                for name, ps in self.groups.items()
            },
            "source": "siflow.torch_probe",
            "every": self.every,
        }
        if pg.get("nesterov"):
            meta["nesterov"] = True
        if pg.get("dampening"):
            meta["dampening"] = float(pg["dampening"])
        if betas is not None:
            meta["betas"] = [float(b) for b in betas]
            if meta["betas"]:  # beta1 as configured (the maximum of a cycling scheduler)
                meta["betas"][0] = _configured_momentum(pg, column)
        return meta

    def _set_sizes(self, sizes: Sequence[int]) -> None:
        """``meta["group_sizes"]`` (elements per SI group) and ``meta["n_params"]`` (all
        SI elements): the ``C`` of the AdamW and Lion equilibrium norms."""
        self.meta["group_sizes"] = {
            name: int(n) for name, n in zip(self.groups, sizes, strict=True)
        }
        self.meta["n_params"] = int(sum(sizes))

    def _sizes_over_shards(self) -> None:
        """Sum the local shards' sizes over the process group (first recorded row)."""
        self._sizes_due = False
        try:
            local = [sum(int(_local(p).numel()) for p in ps) for ps in self.groups.values()]
            device = _local(self._flatbuf.tensors[0]).device
            summed = self._reduce(torch.tensor(local, dtype=torch.int64, device=device))
            self._set_sizes([int(n) for n in summed.tolist()])
        except Exception as exc:  # noqa: BLE001 - never raise inside optimizer.step()
            self.meta["notes"] = [
                *self.meta.get("notes", []),
                f"the SI groups' sizes could not be summed over the process group "
                f"({type(exc).__name__}); meta has no group_sizes",
            ]

    def _momentum_notes(self) -> list[str]:
        """Notes on a per-step ``momentum``/``beta1`` that left the metadata's value."""
        col = self._mom_column
        if col is None or not self._hyper:
            return []
        values = np.array([h[2] for h in self._hyper], dtype=np.float64)
        label = "meta['momentum']" if col == "momentum" else "meta['betas'][0]"
        notes = []
        bad = np.flatnonzero(np.isnan(values))
        if bad.size:
            notes.append(
                f"{col} of the first param group was not a number at {bad.size} recorded "
                f"row(s) (first at step {int(self._rows[bad[0]]['step'])}): NaN in the "
                f"{col} column there"
            )
        ok = values[np.isfinite(values)]
        if ok.size and np.any(ok != self._mom_meta):
            notes.append(
                f"{col} varied during the run ({ok.min():.6g} to {ok.max():.6g} over the "
                f"recorded rows; PyTorch's OneCycleLR and CyclicLR cycle it unless "
                f"cycle_momentum=False): the {col} column holds each row's value, "
                f"{label} = {self._mom_meta:.6g} the configured one"
            )
        return notes

    def _mixed_groups_note(self) -> str | None:
        pgs = [self._param_group[id(ps[0])] for ps in self.groups.values()]
        if len({_lr_wd(g) for g in pgs}) < 2:
            return None
        return (
            "the SI groups sit in optimizer param groups with different lr or weight decay: "
            "lr, wd and momentum here are the first group's, the total's effective LR is NaN, "
            "and the theory applies per group (elr/<group>; group=<name> when reading the log)"
        )

    def _mixed_members_note(self) -> str | None:
        mixed = [
            name
            for name, ps in self.groups.items()
            if len({_lr_wd(self._param_group[id(p)]) for p in ps}) > 1
        ]
        if not mixed:
            return None
        return (
            f"the SI groups {', '.join(mixed)} hold parameters with different lr or weight "
            f"decay (e.g. a bias without weight decay): their lr, wd and elr here are their "
            f"first parameter's, and the norm map with one lr and wd does not hold for them"
        )

    def _on_backward(self, _p: Any) -> None:
        # once per step's backward passes, whichever groups' hooks fire (see _post_hook)
        if self._new_backward:
            self._new_backward = False
            self._backward_id += 1

    def log_loss(self, loss: Any) -> None:
        """Attach the training loss of the current step (a tensor or a number).

        Free on steps that record no row (the tensor is not read).
        """
        fill_last = bool(self._rows) and self._row_backward_id == self._backward_id
        if not fill_last and self._steps % self.every:
            return  # neither the step just taken nor the coming one records a row
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if fill_last:
            # the step that used this backward already ran: fill its row
            self._rows[-1]["loss"] = value
        else:
            self._pending_loss = value
            self._loss_backward_id = self._backward_id

    @property
    def step_count(self) -> int:
        """Number of optimizer steps seen so far."""
        return self._steps

    # ------------------------------------------------------------------ hooks
    def _reduce(self, t: Any) -> Any:
        """Sum ``t`` over the shards' process group (sharded parameters only)."""
        if self._pgroup is not None:
            torch.distributed.all_reduce(t, group=self._pgroup)
        return t

    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        row_due = self._steps % self.every == 0
        if not (row_due or self.window):
            self._pre = None
            return
        with self._no_grad:
            self._flatbuf.store_weights()
        self._pre = {"row": row_due} if row_due else _WINDOW_ONLY
        if row_due and self.sharpness_every and self._steps % self.sharpness_every == 0:
            lam, s, self._sharp_vec = _sharpness(
                self.sharpness_loss,  # type: ignore[arg-type]
                self.groups,
                self.sharpness_iters,
                self.sharpness_tol,
                self._steps,
                self.model,
                self._sharp_vec,
            )
            self._pre["sharpness"] = (lam, s)

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        pre, self._pre = self._pre, None
        step = self._steps
        self._steps += 1
        self._new_backward = True
        if pre is None:
            return
        buf = self._flatbuf
        if pre["row"] and self._sizes_due:
            self._sizes_over_shards()
        if not pre["row"]:
            with self._no_grad:
                buf.store_update()
                (r2, p), (_, d2) = self._reduce(buf.total_gram()).tolist()
            self._add_angle(_angle(r2, -p, d2))
            return
        # a group whose layer was skipped (stochastic depth) or frozen has no gradient:
        # the optimizer skipped it, and its row has NaN gradient columns (never raise here)
        missing = [name for name, ps in self.groups.items() if any(q.grad is None for q in ps)]
        with self._no_grad:
            buf.store_grads()
            buf.store_update()
            grams = self._reduce(buf.group_grams()).tolist()
        names = list(self.groups)
        lrs, wds = zip(*(_lr_wd(self._param_group[id(self.groups[n][0])]) for n in names),
                       strict=True)  # fmt: skip
        row: dict[str, float] = {"step": float(step)}
        for name, gram, lr in zip(names, grams, lrs, strict=True):
            _put(row, name, gram, lr)
        total = [[sum(g[i][j] for g in grams) for j in range(3)] for i in range(3)]
        _put(row, "", total, lrs[0])
        if missing:
            self._no_gradient(row, missing, step)
        if len(set(lrs)) > 1:
            row["elr"] = math.nan  # per-group learning rates differ: see elr/<group>
        if lrs[0] != self.meta["lr"]:
            row["lr"] = lrs[0]
        if wds[0] != self.meta["wd"]:
            row["wd"] = wds[0]
        mom = math.nan
        if self._mom_column is not None:
            mom = _momentum_of(self._param_group[id(self.groups[names[0]][0])], self._mom_column)
            if mom != self._mom_meta:  # a NaN (not a number) is stored too
                row[self._mom_column] = mom
        if "sharpness" in pre:
            row["sharpness_tangent"], row["sharpness_sphere"] = pre["sharpness"]
        if self._pending_loss is not None and self._loss_backward_id == self._backward_id:
            row["loss"] = self._pending_loss
        self._pending_loss = None
        self._row_backward_id = self._backward_id
        self._rows.append(row)
        self._hyper.append((lrs[0], wds[0], mom))
        if self.window:
            self._window = [0.0, 0.0, 0]
        self._add_angle(row["angular_update"])
        trail, self._trail = self._trail, [0.0, 0.0]
        measured = self.window or self.every == 1
        self._trailing.append(math.sqrt(trail[0] / trail[1]) if measured else math.nan)
        if self.flush_every and len(self._rows) % self.flush_every == 0:
            self.save()

    def _no_gradient(self, row: dict[str, float], missing: list[str], step: int) -> None:
        """Blank the gradient columns of ``missing`` groups (and the total's); count them."""
        for name in missing:
            for col in _GRADIENT_COLUMNS:
                row[f"{col}/{name}"] = math.nan
            self._missing_grad[name] = self._missing_grad.get(name, 0) + 1
        for col in (*_GRADIENT_COLUMNS, "grad_norm"):
            row[col] = math.nan
        self._rows_missing_grad += 1
        params = (p for pg in self.optimizer.param_groups for p in pg["params"])
        if all(p.grad is None for p in params):
            self._steps_without_backward.append(step)

    def _gradient_notes(self) -> dict[str, Any]:
        """Meta entries (counts and notes) for the rows recorded without some gradient."""
        if not self._rows_missing_grad:
            return {}
        per_group = ", ".join(f"{k} {v}" for k, v in self._missing_grad.items())
        notes = [
            f"{self._rows_missing_grad} recorded row(s) have SI groups without a gradient "
            f"(a layer skipped, as by stochastic depth, or frozen), which the optimizer did "
            f"not update: those groups' grad_norm_sphere and radial, and the total's, are "
            f"NaN there (rows per group: {per_group})"
        ]
        if self._steps_without_backward:
            empty = self._steps_without_backward
            notes.append(
                f"optimizer.step() ran with no gradient on any parameter at {len(empty)} "
                f"recorded row(s) (first at step {empty[0]}); call loss.backward() before "
                f"optimizer.step()"
            )
        return {
            "rows_without_gradient": self._rows_missing_grad,
            "groups_without_gradient": dict(self._missing_grad),
            "notes": notes,
        }

    def _add_angle(self, angle: float) -> None:
        """Add one step's total angle to the window statistics.

        The last row's forward window (steps ``t .. t + every - 1``) goes into its
        ``*_window`` columns; the trailing sum since the previous row feeds
        :meth:`take_rows` (``angular_update_rms`` of the steps up to a row).
        """
        self._trail[0] += angle * angle
        self._trail[1] += 1
        if not self.window:
            return
        win = self._window
        win[0] += angle * angle
        win[1] += math.log(math.cos(angle)) if angle < math.pi / 2 else math.nan
        win[2] += 1
        row = self._rows[-1]
        row["angular_update_rms_window"] = math.sqrt(win[0] / win[2])
        row["log_cos_mean_window"] = win[1] / win[2]

    # ------------------------------------------------------------------ output
    def trajectory(self) -> Trajectory:
        """The rows recorded so far as a :class:`~siflow.trajectory.Trajectory`."""
        keys: list[str] = []
        for row in self._rows:
            for k in row:
                if k not in keys:
                    keys.append(k)
        cols = {k: np.array([r.get(k, math.nan) for r in self._rows]) for k in keys}
        # a row stores lr/wd (momentum or beta1) only where they differ from the metadata;
        # once a schedule has made the column, every row gets its value
        for j, name in enumerate(("lr", "wd", self._mom_column)):
            if name in cols:
                cols[name] = np.array([h[j] for h in self._hyper], dtype=np.float64)
        if "step" not in cols:
            cols["step"] = np.zeros(0, dtype=np.int64)
        else:
            cols["step"] = cols["step"].astype(np.int64)
        meta = dict(self.meta)
        meta["status"] = "ok"
        momentum_notes = self._momentum_notes()
        if momentum_notes:
            meta["notes"] = [*meta.get("notes", []), *momentum_notes]
        extra = self._gradient_notes()
        if extra:
            meta["notes"] = [*meta.get("notes", []), *extra.pop("notes")]
            meta.update(extra)
        return Trajectory.from_columns(cols, meta)

    def take_rows(self) -> list[dict[str, float]]:
        """The rows recorded since the previous call, for live logging.

        Each is a copy of a row (the columns of :meth:`trajectory`, per-group
        values under ``<column>/<group>``) with more entries: ``lr`` and
        ``wd``, the hyperparameters of the first group at that step, its ``momentum``
        (SGD-type optimizers) or ``beta1`` (``betas[0]``: Adam-type, Lion) at that step
        when the optimizer has one, and ``angular_update_rms``, the RMS of the total
        angular update over the steps since the previous row up to and including this
        one (NaN with ``window=False`` and ``every > 1``, where those steps are not
        measured).
        """
        out = []
        for k in range(self._taken, len(self._rows)):
            rec = dict(self._rows[k])
            rec["lr"], rec["wd"], mom = self._hyper[k]
            if self._mom_column is not None:
                rec[self._mom_column] = mom
            rec["angular_update_rms"] = self._trailing[k]
            out.append(rec)
        self._taken = len(self._rows)
        return out

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the log atomically (``.csv`` or ``.npz``); default ``path`` from init.

        Under ``torch.distributed`` only rank 0 writes; other ranks return the
        path without writing.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("save needs a path (or pass path= to SIRecorder)")
        if not is_rank_zero():
            return target
        return self.trajectory().save(target)

    def close(self) -> None:
        """Remove the hooks (the recorded rows stay available)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> SIRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.path is not None and self._rows:
            self.save()
