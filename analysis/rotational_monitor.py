"""Rotational monitor on a tiny transformer: which layers reach rotational equilibrium?

A two-block pre-LayerNorm transformer (width 32, 2 heads, MLP 4x, learned
positions) learns next-token prediction on sequences from a fixed random Markov
chain (16 symbols, rows drawn from a Dirichlet(0.2), generated from a seed: no
download), trained with AdamW (lr 5e-3, weight decay 1.0 on the weight matrices
and the embeddings, none on biases and LayerNorm gains; betas (0.9, 0.98);
batch 32, sequences of 24) on one CPU thread. None of these weights is exactly
scale-invariant: the residual stream is normalized only as a whole.

:class:`siflow.torch_probe.SIRecorder` records every weight matrix as its own
group at every step; for each we compare the measured angular update and
relative update ``|dw|/|w|`` with the equilibrium of the optimizer in use
(:func:`siflow.torch_probe.rotational_equilibrium_of`, i.e.
``theory.adamw_equilibrium_angle`` and ``theory.equilibrium_relative_update``).
A layer is called "in equilibrium" when the RMS of both over the last quarter of
the run is within 15% of the prediction.

Outputs (default ``runs/rotational_monitor/``): ``log.npz`` (the recorder's
trajectory), ``results.json`` (per layer: measured, predicted, ratio) and the
figure ``rotational_monitor.png`` (``--figure`` to put it elsewhere)::

    python analysis/rotational_monitor.py                      # about 20 s
    python analysis/rotational_monitor.py --figure figures/rotational_monitor.png
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siflow._cli import ArgumentParser, run_main
from siflow._fileio import atomic_write, ensure_dir, require

VOCAB, WIDTH, HEADS, BLOCKS, SEQ, BATCH = 16, 32, 2, 2, 24, 32
LR, WD, BETAS = 1e-2, 1.0, (0.9, 0.98)
ALPHA = 1.0  # Dirichlet concentration of the transition rows
TOLERANCE = 0.15  # |measured / predicted - 1| for "in equilibrium"


# ------------------------------------------------------------------------- model
def build_model(torch: Any, seed: int) -> Any:
    """The tiny pre-LN transformer (causal self-attention, GELU MLP)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(WIDTH)
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
            self.proj = nn.Linear(WIDTH, WIDTH)
            self.ln2 = nn.LayerNorm(WIDTH)
            self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
            self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

        def forward(self, h: Any) -> Any:
            b, t, _ = h.shape
            q, k, v = self.qkv(self.ln1(h)).split(WIDTH, dim=-1)
            q, k, v = (z.view(b, t, HEADS, WIDTH // HEADS).transpose(1, 2) for z in (q, k, v))
            att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.proj(att.transpose(1, 2).reshape(b, t, WIDTH))
            return h + self.fc2(nn.functional.gelu(self.fc1(self.ln2(h))))

    class TinyTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(VOCAB, WIDTH)
            self.pos = nn.Parameter(0.02 * torch.randn(SEQ, WIDTH))
            self.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
            self.ln_f = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, VOCAB)

        def forward(self, x: Any) -> Any:
            h = self.tok(x) + self.pos[: x.shape[1]]
            for blk in self.blocks:
                h = blk(h)
            return self.head(self.ln_f(h))

    torch.manual_seed(seed)
    return TinyTransformer()


def transition_matrix(seed: int) -> Any:
    """The chain's transition matrix: rows drawn from a Dirichlet(``ALPHA``)."""
    return np.random.default_rng(seed).dirichlet(np.full(VOCAB, ALPHA), size=VOCAB)


def entropy_rate(trans: Any) -> float:
    """``-sum_i pi_i sum_j P_ij ln P_ij`` (nats/token): the loss of the true chain."""
    vals, vecs = np.linalg.eig(trans.T)
    pi = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    pi = pi / pi.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(trans > 0, np.log(trans), 0.0)
    return float(-(pi[:, None] * trans * logp).sum())


def markov_batches(torch: Any, steps: int, seed: int) -> tuple[Any, Any]:
    """``steps`` batches of sequences from a fixed random Markov chain (inputs, targets)."""
    trans = transition_matrix(seed)
    rng = np.random.default_rng(seed + 1000)
    cum = np.cumsum(trans, axis=1)
    seqs = np.empty((steps * BATCH, SEQ + 1), dtype=np.int64)
    seqs[:, 0] = rng.integers(0, VOCAB, size=len(seqs))
    for t in range(1, SEQ + 1):
        u = rng.random(len(seqs))[:, None]
        seqs[:, t] = np.minimum((u > cum[seqs[:, t - 1]]).sum(axis=1), VOCAB - 1)
    seqs = torch.from_numpy(seqs.reshape(steps, BATCH, SEQ + 1))
    return seqs[:, :, :-1], seqs[:, :, 1:]


def weight_groups(model: Any) -> dict[str, list[Any]]:
    """Every weight matrix and embedding (the parameters with weight decay)."""
    return {n: [p] for n, p in model.named_parameters() if p.ndim >= 2}


# ---------------------------------------------------------------------- training
def train(steps: int, seed: int) -> tuple[Any, dict[str, tuple[float, float]], float]:
    """Train with the recorder on; return its trajectory, the equilibria and seconds."""
    torch = require("torch", "torch", '"torch==2.13.0"')
    from siflow.torch_probe import SIRecorder, rotational_equilibrium_of

    torch.set_num_threads(1)
    model = build_model(torch, seed)
    groups = weight_groups(model)
    decay = [p for ps in groups.values() for p in ps]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        betas=BETAS,
    )
    rec = SIRecorder(model, opt, every=1, groups=groups, meta={"seed": seed, "task": "markov"})
    xs, ys = markov_batches(torch, steps, seed + 1)
    t0 = time.perf_counter()
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xs[t]).reshape(-1, VOCAB), ys[t].reshape(-1))
        loss.backward()
        opt.step()
        rec.log_loss(loss)
    elapsed = time.perf_counter() - t0
    rec.close()
    eq = {name: rotational_equilibrium_of(opt, ps[0]) for name, ps in groups.items()}
    return rec.trajectory(), eq, elapsed


# ---------------------------------------------------------------------- analysis
def summarize(traj: Any, eq: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Per layer: RMS angle and relative update over the last quarter vs the equilibrium."""
    n = len(traj)
    tail = slice(3 * n // 4, n)
    out: dict[str, dict[str, float]] = {}
    for name, (ang_eq, rel_eq) in eq.items():
        ang = float(np.sqrt(np.mean(traj.extra[f"angular_update/{name}"][tail] ** 2)))
        rel = float(np.sqrt(np.mean(traj.extra[f"relative_update/{name}"][tail] ** 2)))
        r_ang, r_rel = ang / ang_eq, rel / rel_eq
        out[name] = {
            "angle_rms": ang,
            "angle_eq": ang_eq,
            "angle_ratio": r_ang,
            "relative_update_rms": rel,
            "relative_update_eq": rel_eq,
            "relative_update_ratio": r_rel,
            "radial_mean": float(np.mean(traj.extra[f"radial/{name}"][tail])),
            "in_equilibrium": bool(abs(r_ang - 1) <= TOLERANCE and abs(r_rel - 1) <= TOLERANCE),
        }
    return out


def rolling_rms(x: Any, window: int) -> Any:
    """RMS over the last ``window`` values at each step (shorter at the start)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=float) ** 2)])
    k = np.arange(1, len(x) + 1)
    lo = np.maximum(k - window, 0)
    return np.sqrt((c[k] - c[lo]) / (k - lo))


def _kind(name: str) -> str:
    for key in ("qkv", "proj", "fc1", "fc2", "tok", "head"):
        if key in name:
            return key
    return "pos"


def draw(traj: Any, summary: dict[str, dict[str, float]], path: Path) -> Path:
    """Angle and relative update against their equilibria; measured/predicted per layer."""
    require("matplotlib", "matplotlib", "matplotlib")
    import matplotlib.pyplot as plt

    from siflow.plot import save_figure

    colors = {
        "qkv": "C0",
        "proj": "C1",
        "fc1": "C2",
        "fc2": "C3",
        "tok": "C4",
        "head": "C5",
        "pos": "C7",
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    names = list(summary)
    for name in names:
        c = colors.get(_kind(name), "k")
        for ax, col in zip(axes[:2], ("angular_update", "relative_update"), strict=True):
            ax.plot(traj.step, rolling_rms(traj.extra[f"{col}/{name}"], 20), color=c, lw=0.9)
    s0 = summary[names[0]]
    for ax, key, label in (
        (axes[0], "angle_eq", "angular update (rad/step, RMS over 20 steps)"),
        (axes[1], "relative_update_eq", "relative update |dw|/|w| (RMS over 20 steps)"),
    ):
        ax.axhline(s0[key], color="k", ls="--", lw=1.2, label="AdamW equilibrium (theory)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    for kind, c in colors.items():
        axes[0].plot([], [], color=c, label=kind)
    axes[0].legend(fontsize=8, ncol=2)
    y = np.arange(len(names))
    ax = axes[2]
    ax.barh(y - 0.2, [summary[n]["angle_ratio"] for n in names], 0.4, label="angle")
    ax.barh(y + 0.2, [summary[n]["relative_update_ratio"] for n in names], 0.4, label="|dw|/|w|")
    ax.axvspan(1 - TOLERANCE, 1 + TOLERANCE, color="0.85", zorder=0, label=f"±{TOLERANCE:.0%}")
    ax.axvline(1.0, color="k", lw=1)
    ax.set_yticks(y, [n.replace(".weight", "") for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured / equilibrium, last quarter of the run")
    ax.set_xlim(
        0, 1.4 * max(max(s["angle_ratio"], s["relative_update_ratio"]) for s in summary.values())
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Rotational monitor: tiny transformer, AdamW lr={LR:g} wd={WD:g} "
        f"betas={BETAS}, {len(traj)} steps"
    )
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| layer | angle RMS | angle eq. | ratio | |dw|/|w| RMS | eq. | ratio | in equilibrium |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['angle_rms']:.4g} | {s['angle_eq']:.4g} | {s['angle_ratio']:.3f} | "
            f"{s['relative_update_rms']:.4g} | {s['relative_update_eq']:.4g} | "
            f"{s['relative_update_ratio']:.3f} | {'yes' if s['in_equilibrium'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="rotational_monitor.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/rotational_monitor", help="output directory")
    parser.add_argument("--figure", default=None, help="figure path (default <out>/...png)")
    args = parser.parse_args(argv)
    if args.steps < 40:
        raise ValueError(f"--steps must be at least 40, got {args.steps}")
    out = ensure_dir(Path(args.out))
    traj, eq, elapsed = train(args.steps, args.seed)
    summary = summarize(traj, eq)
    log = traj.save(out / "log.npz")
    with atomic_write(out / "results.json") as fh:
        json.dump({"train_seconds": elapsed, "steps": args.steps, "layers": summary}, fh, indent=1)
    fig = draw(traj, summary, Path(args.figure) if args.figure else out / "rotational_monitor.png")
    print(table(summary))
    n_eq = sum(s["in_equilibrium"] for s in summary.values())
    final_loss = float(np.mean(traj.loss[-50:]))
    print(
        f"\n{n_eq}/{len(summary)} layers in rotational equilibrium (within {TOLERANCE:.0%}); "
        f"loss {traj.loss[0]:.3f} -> {final_loss:.3f} (mean of the last 50 steps; the "
        f"chain's entropy rate is {entropy_rate(transition_matrix(args.seed + 1)):.3f}); "
        f"training {elapsed:.1f} s for {args.steps} steps"
    )
    print(f"wrote {log}, {out / 'results.json'}, {fig}")
    if not math.isfinite(final_loss):
        raise ValueError("training diverged (non-finite loss); lower the learning rate")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="rotational_monitor.py"))
