"""SI detection on random small models: every claim is checked by rescaling.

Each model feeds two of three sources (a Linear with or without a bias, ``x @ W``,
``x @ V.T``) through a few random operations from :data:`UNARY`, joins them by one of
:data:`BINARY` and ends in a linear head. :func:`find_si_groups` (``torch.fx`` and the
recorded forward pass) must claim no group that rescaling contradicts; the count of
claims keeps the test from passing by claiming nothing.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")

from siflow.torch_probe import check_scale_invariance, find_si_groups  # noqa: E402

nn = torch.nn
F = torch.nn.functional

#: Operations on a (16, 6) activation, some homogeneous, some not, some normalizing.
UNARY = {
    "relu": lambda s, z: F.relu(z),
    "leaky_relu": lambda s, z: F.leaky_relu(z, 0.1),
    "gelu": lambda s, z: F.gelu(z),
    "tanh": lambda s, z: torch.tanh(z),
    "softmax": lambda s, z: torch.softmax(z, -1),
    "twice": lambda s, z: z * 2,
    "plus_one": lambda s, z: z + 1,
    "plus_eps": lambda s, z: z + 1e-6,
    "center": lambda s, z: z - z.mean(-1, keepdim=True),
    "square": lambda s, z: z.pow(2),
    "abs": lambda s, z: z.abs(),
    "rms_norm": lambda s, z: z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-14),
    "unit": lambda s, z: z / z.norm(dim=-1, keepdim=True),
    "normalize": lambda s, z: F.normalize(z, dim=-1),
    "layer_norm": lambda s, z: s.ln(z),
    "batch_norm": lambda s, z: s.bn(z),
    "layer_norm_affine": lambda s, z: F.layer_norm(z, (6,), s.g, s.b, 1e-14),
    "linear": lambda s, z: s.l2(z),
    "f_linear": lambda s, z: F.linear(z, s.W2, s.b2),
    "matmul": lambda s, z: z @ s.W2,
    "double_transpose": lambda s, z: z.T.T,
    "data": lambda s, z: z.data,
    "detach": lambda s, z: z.detach(),
    "minus_max": lambda s, z: z - z.max(-1, keepdim=True).values,
    "clamp": lambda s, z: z.clamp(min=0),
    "where": lambda s, z: torch.where(z > 0, z, 0.5 * z),
    "exp": lambda s, z: torch.exp(z * 0.1),
    "by_std": lambda s, z: z / (z.var(-1, keepdim=True) + 1e-14).sqrt(),
    "times_sum": lambda s, z: z * z.sum(-1, keepdim=True),
    "gain": lambda s, z: z * s.g,
    "shift": lambda s, z: z + s.b,
    "reshape": lambda s, z: z.view(z.shape[0], 2, 3).reshape(z.shape[0], 6),
    "flip": lambda s, z: z.flip(-1),
    "dropout": lambda s, z: F.dropout(z, 0.3, True),
    "cumsum": lambda s, z: z.cumsum(-1),
    "times_item": lambda s, z: z * float(z.abs().mean().item()),
    "by_std_method": lambda s, z: z / z.std(-1, keepdim=True),
    "round": lambda s, z: torch.round(z),
}
#: Ways to join the two branches.
BINARY = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "cat": lambda a, b: torch.cat([a, b], 1)[:, ::2],
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / (b.abs() + 1),
    "stack": lambda a, b: torch.stack([a, b], 0).mean(0),
    "maximum": torch.maximum,
    "first": lambda a, b: a,
}
SOURCES = ("linear_a", "linear_b", "matmul", "transposed")


class Program(nn.Module):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.sources = rng.sample(SOURCES, 2)
        self.ops_a = rng.choices(list(UNARY), k=rng.randint(0, 4))
        self.ops_b = rng.choices(list(UNARY), k=rng.randint(0, 3))
        self.join = rng.choice(list(BINARY))
        self.la = nn.Linear(5, 6, bias=rng.random() < 0.5)
        self.lb = nn.Linear(5, 6, bias=rng.random() < 0.5)
        self.W = nn.Parameter(torch.randn(5, 6))
        self.V = nn.Parameter(torch.randn(6, 5))
        self.W2 = nn.Parameter(torch.randn(6, 6))
        self.b2 = nn.Parameter(torch.randn(6))
        self.g = nn.Parameter(torch.randn(6))
        self.b = nn.Parameter(torch.randn(6))
        self.l2 = nn.Linear(6, 6, bias=rng.random() < 0.5)
        self.ln = nn.LayerNorm(6, eps=1e-14)
        self.bn = nn.BatchNorm1d(6, eps=1e-14)
        self.h = nn.Linear(6, 2)

    def source(self, name: str, x):
        if name == "linear_a":
            return self.la(x)
        if name == "linear_b":
            return self.lb(x)
        return x @ self.W if name == "matmul" else x @ self.V.T

    def forward(self, x):
        a, b = (self.source(name, x) for name in self.sources)
        for op in self.ops_a:
            a = UNARY[op](self, a)
        for op in self.ops_b:
            b = UNARY[op](self, b)
        return self.h(BINARY[self.join](a, b))

    def __repr__(self) -> str:
        return f"Program({self.sources}, {self.ops_a}, {self.ops_b}, {self.join})"


def _checked_claims(make, shape: tuple[int, ...], count: int, seed: int, method: str) -> int:
    """The claims of :func:`find_si_groups` on ``count`` random models ``make(rng)``, each
    asserted to leave the loss unchanged under rescaling; returns how many there were."""
    rng = random.Random(seed)
    claims = 0
    for i in range(count):
        torch.manual_seed(i)
        model = make(rng).double().train()
        x = torch.randn(*shape, dtype=torch.float64)
        y = torch.randint(0, 2, (shape[0],))

        def loss_fn(model=model, x=x, y=y):
            return F.cross_entropy(model(x), y)

        try:
            groups = find_si_groups(model, example_input=x, method=method)
        except ValueError:  # torch.fx cannot trace .item()
            assert method == "fx" and "times_item" in model.ops_a + model.ops_b
            continue
        for name, params in groups.items():
            claims += 1
            change = check_scale_invariance(loss_fn, params, model=model)
            assert change < 1e-8, (model, name, change)
    return claims


@pytest.mark.parametrize("method", ["fx", "run"])
def test_no_claim_on_random_models_is_contradicted_by_rescaling(method):
    # the models hold many SI groups; many are found
    assert _checked_claims(Program, (16, 5), 300, 2026, method) > 100


#: Operations on a (6, 4, H, W) feature map: per-channel biases meet each normalization.
CONV_UNARY = {
    "relu": lambda s, z: F.relu(z),
    "batch_norm": lambda s, z: s.bn(z),
    "group_norm_per_channel": lambda s, z: s.gn1(z),
    "group_norm_two_groups": lambda s, z: s.gn2(z),
    "instance_norm": lambda s, z: s.inorm(z),
    "layer_norm_channels": lambda s, z: s.ln(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
    "max_pool": lambda s, z: F.max_pool2d(z, 2, 1, 1),
    "avg_pool_padded": lambda s, z: F.avg_pool2d(z, 3, 1, 1),
    "avg_pool": lambda s, z: F.avg_pool2d(z, 2, 1),
    "zero_pad": lambda s, z: F.pad(z, (1, 1, 1, 1)),
    "one_pad": lambda s, z: F.pad(z, (1, 1, 1, 1), value=1.0),
    "reflect_pad": lambda s, z: F.pad(z, (1, 1, 1, 1), mode="reflect"),
    "conv": lambda s, z: s.c2(z),
    "conv_1x1": lambda s, z: s.c3(z),
    "upsample": lambda s, z: F.interpolate(z, scale_factor=2),
    "dropout2d": lambda s, z: F.dropout2d(z, 0.3, True),
    "plus_one": lambda s, z: z + 1,
    "twice": lambda s, z: 2 * z,
    "flatten_view": lambda s, z: z.flatten(2).view(z.shape),
    "transpose_hw": lambda s, z: z.permute(0, 1, 3, 2),
    "sigmoid": lambda s, z: torch.sigmoid(z),
    "center": lambda s, z: z - z.mean((2, 3), keepdim=True),
    "channel_shift": lambda s, z: z + s.cb,
    "channel_gain": lambda s, z: z * s.cg,
    "adaptive_pool": lambda s, z: F.adaptive_avg_pool2d(z, 4),
    "crop": lambda s, z: z[:, :, 1:-1, 1:-1],
}
CONV_BINARY = {
    "add": lambda a, b: a + b,
    "cat": lambda a, b: torch.cat([a, b], 1)[:, :4],
    "first": lambda a, b: a,
    "mul": lambda a, b: a * b,
}


class ConvProgram(nn.Module):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=rng.random() < 0.5)
        self.c0 = nn.Conv2d(1, 4, 3, padding=1, bias=rng.random() < 0.5)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=rng.random() < 0.5)
        self.c3 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4, eps=1e-14)
        self.gn1 = nn.GroupNorm(4, 4, eps=1e-14)
        self.gn2 = nn.GroupNorm(2, 4, eps=1e-14)
        self.inorm = nn.InstanceNorm2d(4, eps=1e-14, affine=True)
        self.ln = nn.LayerNorm(4, eps=1e-14)
        self.cb = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.cg = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.h = nn.Linear(4, 2)
        self.ops_a = rng.choices(list(CONV_UNARY), k=rng.randint(0, 4))
        self.ops_b = rng.choices(list(CONV_UNARY), k=rng.randint(0, 3))
        self.join = rng.choice(list(CONV_BINARY))

    def forward(self, x):
        a, b = self.c1(x), self.c0(x)
        for op in self.ops_a:
            a = CONV_UNARY[op](self, a)
        for op in self.ops_b:
            b = CONV_UNARY[op](self, b)
        a, b = F.adaptive_avg_pool2d(a, 4), F.adaptive_avg_pool2d(b, 4)
        return self.h(CONV_BINARY[self.join](a, b).mean((2, 3)))

    def __repr__(self) -> str:
        return f"ConvProgram({self.ops_a}, {self.ops_b}, {self.join})"


@pytest.mark.parametrize("method", ["fx", "run"])
def test_no_claim_on_random_conv_models_is_contradicted_by_rescaling(method):
    assert _checked_claims(ConvProgram, (6, 1, 8, 8), 200, 2027, method) > 100
