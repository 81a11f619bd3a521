"""Held-out runs: networks, data and optimizers that the labelled set never saw.

The event detector's defaults were chosen on the labelled set (``analysis/labelled_runs.py``:
BatchNorm without affine terms, digits and mnist1d, plain SGD). This script trains small
networks of other kinds on other data sets that ship with scikit-learn, and shows what the
detector finds on them, for a check by eye:

- ``lnmlp``: LayerNorm without affine terms after each weight matrix (tanh);
- ``bnaffine``: BatchNorm *with* learnable scale and shift (the usual practice: only the
  weight matrices before the BatchNorms are scale-invariant);
- ``bnconv``: a two-layer ConvNet with affine BatchNorm on the 8x8 digits;
- ``wide``: one BatchNorm layer of 128 units;
- in later batches: ``gnconv`` and ``lnconv`` (GroupNorm with 4 groups or one, no affine
  terms), ``deepmlp`` and ``mlp`` (BatchNorm MLPs, 4 x 32 and 2 x 64), ``resmlp`` and
  ``resconv`` (residual blocks with affine BatchNorm), ``dropmlp`` (``mlp`` with dropout
  0.1), ``wsconv`` (weight-standardised convolutions, no normalization layer), ``rmsmlp``
  (RMSNorm, no affine terms), ``qkformer`` and ``prelnformer`` (post- and pre-LayerNorm
  transformer blocks with QK-norm on the digits' rows as tokens), ``deepconv`` (four
  convolutions with affine BatchNorm, 32-64 channels), ``wnmlp`` (PyTorch's weight
  normalization, no normalization layer), ``cosmlp`` (a BatchNorm MLP with a trained
  cosine classifier), ``gelumlp`` (``mlp`` with GELU), ``widemlp`` (six BatchNorm layers
  of width 128), ``dwconv`` (depthwise-separable convolutions with affine BatchNorm),
  ``silumlp`` (``mlp`` with SiLU), ``rnnln`` (a recurrent cell with LayerNorm over the
  digits' rows), ``postbn`` (affine BatchNorm after the ReLU) and ``embln`` (an embedding
  bag with LayerNorm on generated bags of tokens, ``tokens``);

on the wine, breast-cancer, iris and digits data and four generated sets (standardised),
with full-batch GD, SGD (batch 8-256), heavy ball, Nesterov, AdamW, Adam with its coupled
L2 decay, cosine, step, warmup, restart, linear, one-cycle and reduce-on-plateau schedules,
and cross-entropy, cross-entropy with label smoothing 0.1, squared error or one-vs-rest
binary cross-entropy or the multi-class hinge loss (``Run.loss``), or squared error on two
regression sets.
The last layer is rescaled to Frobenius norm 10 and frozen, as in the seed paper (one run
trains it, with weight decay); one run shifts the digits by up to a pixel at every step;
some clip the gradient norm, replace part of the labels by random ones, or are recorded
every few steps (every 5th; once per 14-step epoch with the epoch's mean loss); the seventh
batch trains with momentum 0.9 at a small lr*wd, as the usual recipes do; the eighth runs
the one-cycle schedule (lr and momentum cycled), bfloat16 autocast, and weight decay on the
weight matrices only; the ninth adds data scikit-learn generates (``moons``, ``synth``), a
four-layer BatchNorm ConvNet (``deepconv``) and a pre-LayerNorm transformer block
(``prelnformer``); the tenth weight normalization, a cosine classifier, Adam's coupled
decay, gradient accumulation (four micro-batches per step, the loss logged after each, as
a training loop does) and ``ReduceLROnPlateau``; the eleventh regression, one-vs-rest
cross-entropy, GELU, a wide six-layer MLP and depthwise-separable convolutions; the
twelfth the hinge loss, a recurrent cell, BatchNorm after the ReLU, an embedding bag, batch
8 and SiLU with heavy ball; the thirteenth held-out networks (``gnconv1d``: 1-D convolutions
with GroupNorm) on mnist1d's generated signals (``mnist1d``, the ``analysis`` extra). Every
run is recorded with :class:`siflow.torch_probe.SIRecorder` (one torch thread; about 27
minutes for all).

The runs of thirteen batches were labelled against their plotted norm and loss
(``analysis/data/heldout/labels.json``, whose note says how each batch was labelled;
doubtful events are listed as ``ambiguous`` and neither counted nor missed); ``detect``
scores the detector's recall and precision on them, batch by batch.
Their logs are committed in ``analysis/data/heldout`` with the columns the detector reads
(step, rho, loss, lr), so ``detect`` runs from a fresh clone.

Usage::

    python analysis/heldout_runs.py detect     # committed logs: events, scores, figure
    python analysis/heldout_runs.py train      # retrain: full logs to runs/heldout/logs
    python analysis/heldout_runs.py train --update-data   # the committed logs
    python analysis/heldout_runs.py detect --logs runs/heldout/logs
    python analysis/heldout_runs.py transfer   # the period transfer on held-out networks
    python analysis/heldout_runs.py train --transfer --update-data   # its committed logs
    python analysis/heldout_runs.py lastbatch  # a smaller last batch in each epoch
    python analysis/heldout_runs.py train --lastbatch --update-data  # its committed logs
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siflow._cli import ArgumentParser, run_main
from siflow._fileio import atomic_write, ensure_dir, require
from siflow.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "heldout"
DATA = ROOT / "analysis" / "data" / "heldout"
#: The columns of the committed logs: what the event detector reads.
KEPT = ("lr", "momentum")
LAST_LAYER_NORM = 10.0


@dataclass(frozen=True)
class Run:
    """One held-out training run."""

    name: str
    data: str  # "wine", "cancer", "iris", "digits"; generated: "moons", "synth", "tokens", ...
    net: str  # "lnmlp", "bnaffine", "bnconv", "wide", "gnconv", "lnconv", ... (build)
    lr: float
    wd: float
    steps: int
    batch: int = 0  # 0 = full batch
    momentum: float = 0.0
    optimizer: str = "sgd"  # "sgd", "adamw" or "adam" (PyTorch's Adam: coupled L2 decay)
    schedule: str = ""  # "", "cosine", "step", "warmup", "restarts", ... (make_schedule)
    seed: int = 0
    nesterov: bool = False
    loss: str = "ce"  # "ce", "smooth" (label smoothing 0.1), "mse", "bce" (one-hot), "hinge"
    every: int = 1  # the recorder writes every k-th step
    frozen: bool = True  # the last layer at norm 10 and frozen; False: trained, with wd
    augment: bool = False  # digits images shifted by up to one pixel, new shifts every step
    clip: float = 0.0  # clip the gradient norm of the trained weights at this value (0: off)
    label_noise: float = 0.0  # this fraction of the labels replaced by random ones, once
    mean_loss: bool = False  # the loss written is the mean over the ``every`` steps up to it
    bf16: bool = False  # forward pass under bfloat16 autocast (mixed precision)
    decay_weights_only: bool = False  # wd on weight matrices only (not norms' scales, biases)
    accumulate: int = 1  # micro-batches of ``batch`` per step, the loss logged after each
    # "random": each batch drawn with replacement; "epochs": shuffled epochs whose last
    # batch holds the remainder (a DataLoader's default); "drop_last": the remainder dropped
    loader: str = "random"


RUNS = (
    Run("wine_lnmlp_gd", "wine", "lnmlp", 0.5, 1e-2, 2500),
    Run("wine_bnaffine_gd", "wine", "bnaffine", 1.0, 5e-3, 3000),
    Run("iris_wide_gd", "iris", "wide", 1.0, 1e-2, 2000),
    Run("cancer_bnaffine_sgd", "cancer", "bnaffine", 0.5, 1e-2, 2500, batch=64),
    Run("cancer_wide_sgdmom", "cancer", "wide", 0.1, 1e-2, 3000, batch=64, momentum=0.9),
    Run("digits_bnconv_sgd", "digits", "bnconv", 0.5, 1e-2, 2500, batch=128),
    Run("digits_bnconv_adamw", "digits", "bnconv", 3e-3, 0.5, 2500, batch=128, optimizer="adamw"),
    Run("digits_lnmlp_sgd", "digits", "lnmlp", 1.0, 1e-2, 2500, batch=256),
    Run("wine_lnmlp_adamw_gd", "wine", "lnmlp", 1e-2, 0.3, 3000, optimizer="adamw"),
    Run("cancer_bnaffine_gd_cosine", "cancer", "bnaffine", 1.0, 1e-2, 3000, schedule="cosine"),
    Run("iris_lnmlp_gdmom", "iris", "lnmlp", 0.1, 1e-2, 3000, momentum=0.9),
    # second batch: looked at while the loud rule's steepest half and the loss window's end
    # at the next rise were written (docs/theory.md, "Destabilization events")
    Run("digits_gnconv_gd", "digits", "gnconv", 0.5, 1e-2, 2500, seed=7),
    Run("cancer_deepmlp_sgd32", "cancer", "deepmlp", 0.3, 1e-2, 3000, batch=32, seed=7),
    Run("wine_resmlp_gdmom", "wine", "resmlp", 0.05, 1e-2, 3000, momentum=0.9, seed=7),
    Run("iris_wide_nesterov", "iris", "wide", 0.1, 1e-2, 3000, momentum=0.9, seed=7, nesterov=True),
    Run("digits_mlp_gd_step", "digits", "mlp", 1.0, 1e-2, 3000, schedule="step", seed=7),
    Run(
        "digits_lnmlp_adamw",
        "digits",
        "lnmlp",
        3e-3,
        0.3,
        3000,
        batch=128,
        optimizer="adamw",
        seed=7,
    ),
    Run("cancer_bnaffine_gd_lowwd", "cancer", "bnaffine", 1.0, 1e-3, 5000, seed=7),
    Run("digits_wide_gd_lr2", "digits", "wide", 2.0, 5e-3, 3000, seed=7),
    # third batch: labelled blind (plots without the detector's events), after those changes
    Run("digits_resconv_sgd64", "digits", "resconv", 0.5, 5e-3, 2500, batch=64, seed=11),
    Run("cancer_lnmlp_gdmom", "cancer", "lnmlp", 0.05, 2e-2, 3000, momentum=0.9, seed=11),
    Run("wine_wide_sgd16", "wine", "wide", 0.3, 1e-2, 3000, batch=16, seed=11),
    Run(
        "digits_deepmlp_gd_warmup", "digits", "deepmlp", 1.0, 5e-3, 3000, schedule="warmup", seed=11
    ),
    Run("iris_bnaffine_adamw", "iris", "bnaffine", 1e-2, 0.5, 3000, optimizer="adamw", seed=11),
    Run(
        "digits_wide_nesterov_sgd128",
        "digits",
        "wide",
        0.1,
        1e-2,
        3000,
        batch=128,
        momentum=0.9,
        seed=11,
        nesterov=True,
    ),
    Run("cancer_mlp_gd_restarts", "cancer", "mlp", 1.0, 1e-2, 3000, schedule="restarts", seed=11),
    Run("wine_deepmlp_gd", "wine", "deepmlp", 0.5, 2e-2, 2500, seed=11),
    # fourth batch: labelled blind, other losses (label smoothing, squared error) and a
    # LayerNorm ConvNet (GroupNorm with one group)
    Run("digits_mlp_gd_smooth", "digits", "mlp", 1.0, 1e-2, 3000, seed=13, loss="smooth"),
    Run("digits_lnconv_gd", "digits", "lnconv", 0.5, 1e-2, 2500, seed=13),
    Run("cancer_wide_gd_mse", "cancer", "wide", 0.5, 1e-2, 3000, seed=13, loss="mse"),
    Run(
        "digits_lnconv_sgd32mom",
        "digits",
        "lnconv",
        0.05,
        1e-2,
        3000,
        batch=32,
        momentum=0.9,
        seed=13,
    ),
    Run("iris_deepmlp_gd_cosine", "iris", "deepmlp", 1.0, 1e-2, 3000, schedule="cosine", seed=13),
    Run(
        "wine_bnaffine_sgd64_smooth",
        "wine",
        "bnaffine",
        0.5,
        2e-2,
        3000,
        batch=64,
        seed=13,
        loss="smooth",
    ),
    Run("digits_resconv_gd", "digits", "resconv", 0.3, 1e-2, 2500, seed=13),
    Run("cancer_deepmlp_gd_mse", "cancer", "deepmlp", 1.0, 5e-3, 3000, seed=13, loss="mse"),
    # fifth batch: labelled blind; a trained last layer, weight standardisation instead of
    # a normalization layer, dropout, data augmentation, a linear decay schedule, lr*wd of
    # 1e-3 and 5e-2, and a log written every 5th step
    Run(
        "digits_mlp_sgd64_trained",
        "digits",
        "mlp",
        0.5,
        1e-2,
        3000,
        batch=64,
        seed=17,
        frozen=False,
    ),
    Run("digits_wsconv_gd", "digits", "wsconv", 0.5, 1e-2, 2500, seed=17),
    Run("wine_dropmlp_gd", "wine", "dropmlp", 1.0, 1e-2, 3000, seed=17),
    Run("digits_bnconv_gd_augment", "digits", "bnconv", 0.5, 1e-2, 2500, seed=17, augment=True),
    Run("cancer_mlp_gd_wd5e-2", "cancer", "mlp", 1.0, 5e-2, 1500, seed=17),
    Run("digits_bnconv_sgd128_lowwd", "digits", "bnconv", 1.0, 1e-3, 6000, batch=128, seed=17),
    Run("iris_lnmlp_gd_every5", "iris", "lnmlp", 0.5, 1e-2, 4000, seed=17, every=5),
    Run(
        "digits_resmlp_sgd128_linear",
        "digits",
        "resmlp",
        0.5,
        1e-2,
        3000,
        batch=128,
        schedule="linear",
        seed=17,
    ),
    # sixth batch: labelled blind; gradient clipping, labels partly replaced by random ones,
    # a log written once per 14-step epoch with the epoch's mean loss (and every 3rd step of
    # a full-batch run with the mean of the 3 steps), a large lr at small wd
    Run(
        "digits_bnconv_sgd128_clip",
        "digits",
        "bnconv",
        0.5,
        1e-2,
        2500,
        batch=128,
        seed=19,
        clip=1.0,
    ),
    Run(
        "digits_mlp_sgd128_epochs",
        "digits",
        "mlp",
        0.3,
        1e-2,
        7000,
        batch=128,
        seed=19,
        every=14,
        mean_loss=True,
    ),
    Run("wine_lnmlp_gd_noisy", "wine", "lnmlp", 0.5, 1e-2, 3000, seed=19, label_noise=0.15),
    Run("digits_deepmlp_gd_noisy", "digits", "deepmlp", 0.5, 1e-2, 3000, seed=19, label_noise=0.1),
    Run("iris_wide_gd_lr3", "iris", "wide", 3.0, 3e-3, 3000, seed=19),
    Run(
        "cancer_resmlp_gdmom_clip",
        "cancer",
        "resmlp",
        0.05,
        1e-2,
        3000,
        momentum=0.9,
        seed=19,
        clip=1.0,
    ),
    Run(
        "wine_bnaffine_gd_every3",
        "wine",
        "bnaffine",
        1.0,
        1e-2,
        3000,
        seed=19,
        every=3,
        mean_loss=True,
    ),
    # seventh batch: labelled blind; the usual recipe of momentum 0.9 at a small lr*wd
    # (5e-5 to 2.5e-4; 5e-4 to 2.5e-3 in lr * wd / (1 - momentum)), Nesterov and heavy ball
    Run(
        "digits_resconv_sgd128mom_recipe",
        "digits",
        "resconv",
        0.1,
        5e-4,
        12000,
        batch=128,
        momentum=0.9,
        seed=23,
    ),
    Run(
        "digits_mlp_sgd64_nesterov_recipe",
        "digits",
        "mlp",
        0.05,
        1e-3,
        12000,
        batch=64,
        momentum=0.9,
        seed=23,
        nesterov=True,
    ),
    Run("wine_lnmlp_gdmom_lowlr", "wine", "lnmlp", 0.02, 5e-3, 8000, momentum=0.9, seed=23),
    Run(
        "cancer_bnaffine_sgd32mom",
        "cancer",
        "bnaffine",
        0.05,
        5e-3,
        8000,
        batch=32,
        momentum=0.9,
        seed=23,
    ),
    # eighth batch: labelled blind; a transformer block with QK-norm, RMSNorm, the one-cycle
    # schedule (lr and momentum cycled), bfloat16 autocast, weight decay on the weight
    # matrices only (the "no decay" group first)
    Run("digits_qkformer_gd", "digits", "qkformer", 0.5, 1e-2, 3000, seed=29),
    Run("digits_qkformer_sgd64", "digits", "qkformer", 0.3, 1e-2, 4000, batch=64, seed=29),
    Run("digits_rmsmlp_gd", "digits", "rmsmlp", 0.5, 1e-2, 2500, seed=29),
    Run(
        "digits_rmsmlp_sgd128_onecycle",
        "digits",
        "rmsmlp",
        0.3,
        5e-3,
        5000,
        batch=128,
        momentum=0.9,
        schedule="onecycle",
        seed=29,
    ),
    Run("digits_bnaffine_gd_bf16", "digits", "bnaffine", 0.5, 1e-2, 2500, seed=29, bf16=True),
    Run(
        "cancer_bnaffine_sgd64_nodecay",
        "cancer",
        "bnaffine",
        0.5,
        1e-2,
        3000,
        batch=64,
        seed=29,
        decay_weights_only=True,
    ),
    # ninth batch: labelled blind; data scikit-learn generates (two moons; 4000 points of
    # 30 features in 4 classes), a four-layer BatchNorm ConvNet, a pre-LayerNorm
    # transformer block whose only scale-invariant weights are the query and key (QK-norm)
    Run("moons_mlp_gd", "moons", "mlp", 1.0, 1e-2, 3000, seed=31),
    Run("synth_bnaffine_sgd256", "synth", "bnaffine", 0.5, 1e-2, 4000, batch=256, seed=31),
    Run("synth_deepmlp_gd", "synth", "deepmlp", 0.5, 1e-2, 3000, seed=31),
    Run("digits_deepconv_sgd128", "digits", "deepconv", 0.2, 1e-2, 4000, batch=128, seed=31),
    Run("digits_prelnformer_gd", "digits", "prelnformer", 0.5, 1e-2, 3000, seed=31),
    Run(
        "moons_wide_sgd32mom",
        "moons",
        "wide",
        0.05,
        1e-2,
        4000,
        batch=32,
        momentum=0.9,
        seed=31,
    ),
    # tenth batch: labelled blind; weight normalization without a normalization layer, a
    # cosine classifier (a trained, scale-invariant last layer), PyTorch's Adam with its
    # coupled L2 decay, gradient accumulation, ReduceLROnPlateau on the training loss
    Run("digits_wnmlp_gd", "digits", "wnmlp", 0.5, 1e-2, 2500, seed=37),
    Run("digits_cosmlp_gd", "digits", "cosmlp", 0.5, 1e-2, 2500, seed=37, frozen=False),
    Run(
        "digits_bnaffine_gd_adam", "digits", "bnaffine", 1e-2, 1e-2, 2500, optimizer="adam", seed=37
    ),
    Run(
        "wine_lnmlp_sgd32_adam",
        "wine",
        "lnmlp",
        3e-3,
        1e-1,
        3000,
        batch=32,
        optimizer="adam",
        seed=37,
    ),
    Run("digits_mlp_sgd64x4", "digits", "mlp", 1.0, 1e-2, 3000, batch=64, accumulate=4, seed=37),
    Run("digits_mlp_gd_plateau", "digits", "mlp", 1.0, 1e-2, 4000, schedule="plateau", seed=37),
    # eleventh batch: labelled blind; regression (squared error on a real target, with an
    # irreducible noise floor), one-vs-rest binary cross-entropy, GELU, a six-layer MLP of
    # width 128, depthwise-separable convolutions
    Run("digits_gelumlp_gd", "digits", "gelumlp", 0.5, 1e-2, 2500, seed=41),
    Run("digits_widemlp_gd", "digits", "widemlp", 0.5, 1e-2, 2500, seed=41),
    Run("digits_mlp_gd_bce", "digits", "mlp", 0.3, 1e-2, 3000, loss="bce", seed=41),
    Run("friedman_mlp_gd", "friedman", "mlp", 0.1, 5e-2, 3000, seed=41),
    Run("diabetes_mlp_sgd64", "diabetes", "mlp", 0.5, 1e-2, 3000, batch=64, seed=41),
    Run("digits_dwconv_sgd128", "digits", "dwconv", 0.2, 1e-2, 4000, batch=128, seed=41),
    # twelfth batch: labelled blind; a multi-class hinge loss (exactly zero once every
    # margin is met), a recurrent cell with LayerNorm over the digits' rows, BatchNorm after
    # the ReLU, an embedding bag with LayerNorm on generated token counts, batch 8, SiLU with
    # heavy ball
    Run("digits_mlp_gd_hinge", "digits", "mlp", 0.5, 1e-2, 3000, loss="hinge", seed=47),
    Run("digits_rnnln_gd", "digits", "rnnln", 0.5, 1e-2, 3000, seed=47),
    Run("digits_postbn_sgd128", "digits", "postbn", 0.5, 1e-2, 3000, batch=128, seed=47),
    Run("tokens_embln_sgd64", "tokens", "embln", 0.5, 1e-2, 3000, batch=64, seed=47),
    Run("digits_mlp_sgd8", "digits", "mlp", 0.1, 1e-2, 4000, batch=8, seed=47),
    Run("digits_silumlp_gdmom", "digits", "silumlp", 0.05, 1e-2, 4000, momentum=0.9, seed=47),
    # thirteenth batch: labelled blind; held-out networks on mnist1d's generated 1-D signals
    # (the labelled set's second data set): a LayerNorm MLP, 1-D convolutions with GroupNorm,
    # affine BatchNorm, a residual MLP with heavy ball, BatchNorm after the ReLU, a four-layer
    # MLP at batch 32 under a cosine schedule
    Run("mnist1d_lnmlp_gd", "mnist1d", "lnmlp", 0.5, 1e-2, 3000, seed=53),
    Run("mnist1d_gnconv1d_sgd64", "mnist1d", "gnconv1d", 0.5, 1e-2, 3000, batch=64, seed=53),
    Run("mnist1d_bnaffine_sgd128", "mnist1d", "bnaffine", 1.0, 5e-3, 3000, batch=128, seed=53),
    Run("mnist1d_resmlp_gdmom", "mnist1d", "resmlp", 0.1, 1e-2, 4000, momentum=0.9, seed=53),
    Run("mnist1d_postbn_gd", "mnist1d", "postbn", 0.5, 1e-2, 3000, seed=53),
    Run(
        "mnist1d_deepmlp_sgd32_cosine",
        "mnist1d",
        "deepmlp",
        0.5,
        1e-2,
        3000,
        batch=32,
        schedule="cosine",
        seed=53,
    ),
)


#: Regression data (``load_data``): a standardised real target, one network output.
REGRESSION = ("friedman", "diabetes")


#: The period transfer on held-out networks (``transfer``): digits, full-batch GD, on the
#: labelled set's grid: calibrated at lr 0.5, wd 0.01 and predicted at lr 1, wd 0.01, at
#: lr 0.5, wd 0.02 and at lr 0.5, wd 5e-3; each run 15 free-decay times ``2/(lr wd)`` long.
TRANSFER_NETS = ("gelumlp", "wnmlp", "cosmlp")
TRANSFER_GRID = ((0.5, 1e-2), (1.0, 1e-2), (0.5, 2e-2), (0.5, 5e-3))
TRANSFER_DATA = DATA / "transfer"


#: A smaller last batch (``lastbatch``): the digits MLP at batch 64 in shuffled epochs, as
#: a DataLoader yields them; 1797 = 28 x 64 + 5, so each epoch ends with 5 samples through
#: BatchNorm, or, with ``drop_last``, after 28 full batches.
LASTBATCH_DATA = DATA / "lastbatch"
#: Samples in scikit-learn's digits.
N_DIGITS = 1797


def lastbatch_runs() -> list[Run]:
    """The two runs of the smaller-last-batch experiment, alike but for the loader."""
    return [
        Run(f"digits_mlp_sgd64_{loader}", "digits", "mlp", 0.5, 1e-2, 3000, batch=64,
            seed=43, loader=loader)
        for loader in ("epochs", "drop_last")
    ]  # fmt: skip


def transfer_runs() -> list[Run]:
    """The runs of the held-out period transfer (:data:`TRANSFER_NETS`, :data:`TRANSFER_GRID`);
    the first of each network calibrates."""
    return [
        Run(
            f"digits_{net}_gd_lr{lr:g}_wd{wd:g}",
            "digits",
            net,
            lr,
            wd,
            int(round(15 * 2 / (lr * wd) / 100) * 100),
            seed=43,
            frozen=net != "cosmlp",  # the cosine classifier is trained
        )
        for net in TRANSFER_NETS
        for lr, wd in TRANSFER_GRID
    ]


def load_data(name: str, torch: Any) -> tuple[Any, Any]:
    """Standardised inputs (float32) and labels (int64) of a scikit-learn data set, or of
    data scikit-learn generates with a fixed seed: ``"moons"`` (two interleaved half
    circles, 1000 points, noise 0.2) and ``"synth"`` (4000 points of 30 features, 10 of
    them informative, in 4 classes of two clusters each); ``"tokens"``: generated bags of
    tokens, their ids (:func:`_token_counts`); ``"mnist1d"``: mnist1d's 4000 signals of 40
    points in 10 classes (``make_dataset``, generated offline). Regression (:data:`REGRESSION`;
    the target standardised, float32): ``"diabetes"`` (442 patients, 10 features) and
    ``"friedman"`` (Friedman's first problem, 4000 points of 10 features, 5 of them used,
    with noise of standard deviation 1: a squared error that cannot fall below about
    ``1/var(y)`` of the standardised target)."""
    datasets = require("sklearn.datasets", "analysis", "scikit-learn")
    loaders = {
        "wine": datasets.load_wine,
        "cancer": datasets.load_breast_cancer,
        "iris": datasets.load_iris,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    if name == "tokens":
        return _token_counts(torch)
    if name == "mnist1d":  # generated from its templates (make_dataset), no download
        d = require("mnist1d.data", "analysis", "mnist1d").make_dataset()
        data, target = np.asarray(d["x"], dtype=np.float64), np.asarray(d["y"])
        x = torch.tensor((data - data.mean(0)) / (data.std(0) + 1e-8), dtype=torch.float32)
        return x, torch.tensor(target, dtype=torch.int64)
    if name == "friedman":
        data, target = datasets.make_friedman1(n_samples=4000, noise=1.0, random_state=0)
    elif name == "moons":
        data, target = datasets.make_moons(n_samples=1000, noise=0.2, random_state=0)
    elif name == "synth":
        data, target = datasets.make_classification(
            n_samples=4000,
            n_features=30,
            n_informative=10,
            n_redundant=5,
            n_classes=4,
            random_state=0,
        )
    else:
        d = loaders[name]()
        data, target = d.data, d.target
    x = torch.tensor((data - data.mean(0)) / (data.std(0) + 1e-8), dtype=torch.float32)
    if name in REGRESSION:
        return x, torch.tensor((target - target.mean()) / target.std(), dtype=torch.float32)
    return x, torch.tensor(target, dtype=torch.int64)


#: The generated token data (``"tokens"``): sequences, their length, the vocabulary, classes.
TOKENS = (3000, 16, 64, 4)


def _token_counts(torch: Any) -> tuple[Any, Any]:
    """Generated bags of tokens (:data:`TOKENS`): each class draws its tokens from its own
    distribution over the vocabulary (a softmax of Gaussian scores, fixed seed), so the
    class is in the token counts, with overlap between classes; token ids (int64)."""
    n, length, vocab, classes = TOKENS
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(1.5 * torch.randn(classes, vocab, generator=gen), dim=1)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = torch.multinomial(probs[y], length, replacement=True, generator=gen)
    return x, y


def _rnn_ln(torch: Any, width: int = 32) -> Any:
    """A recurrent cell over the 8 rows of an 8x8 digits image: ``h <- tanh(LN(W [x_t, h]))``
    from ``h = 0``, ``W`` bias-free and LayerNorm without affine terms (``W`` is
    scale-invariant); the last ``h`` is the output."""
    nn = torch.nn

    class RNNLN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Linear(8 + width, width, bias=False)
            self.norm = nn.LayerNorm(width, elementwise_affine=False)

        def forward(self, x: Any) -> Any:
            rows = x.reshape(-1, 8, 8)
            h = rows.new_zeros(rows.shape[0], width)
            for t in range(8):
                h = torch.tanh(self.norm(self.w(torch.cat([rows[:, t], h], dim=1))))
            return h

    return RNNLN()


def _residual_block(torch: Any, kind: str, width: int) -> Any:
    """``relu(x + BN(W x))``, ``W`` a bias-free linear map (``"mlp"``) or 3x3 convolution
    (``"conv"``), BatchNorm with learnable scale and shift."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            if kind == "conv":
                self.w = nn.Conv2d(width, width, 3, padding=1, bias=False)
                self.bn = nn.BatchNorm2d(width)
            else:
                self.w = nn.Linear(width, width, bias=False)
                self.bn = nn.BatchNorm1d(width)

        def forward(self, x: Any) -> Any:
            return torch.relu(x + self.bn(self.w(x)))

    return Block()


def _ws_conv(torch: Any, c_in: int, c_out: int) -> Any:
    """A bias-free 3x3 convolution whose weight is standardised per output channel
    (zero mean, unit standard deviation over its inputs) before use: scale-invariant in
    its weight without a normalization layer."""
    nn = torch.nn

    class WSConv(nn.Conv2d):
        def forward(self, x: Any) -> Any:
            w = self.weight
            mean = w.mean(dim=(1, 2, 3), keepdim=True)
            std = w.std(dim=(1, 2, 3), keepdim=True)
            return self._conv_forward(x, (w - mean) / std, None)

    return WSConv(c_in, c_out, 3, padding=1, bias=False)


def _qk_former(torch: Any, width: int = 32) -> Any:
    """One post-LayerNorm transformer block over the 8 rows of an 8x8 digits image as
    tokens, mean-pooled: token embedding and the query and key projections each followed
    by a LayerNorm without affine terms (QK-norm), so they are scale-invariant; the value
    projection, the MLP's output layer, a learned position embedding and the affine
    LayerNorms after the residual sums are not."""
    nn = torch.nn

    class QKFormer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, width, bias=False)
            self.embed_norm = nn.LayerNorm(width, elementwise_affine=False)
            self.pos = nn.Parameter(torch.zeros(8, width))
            self.q = nn.Linear(width, width, bias=False)
            self.k = nn.Linear(width, width, bias=False)
            self.v = nn.Linear(width, width, bias=False)
            self.q_norm = nn.LayerNorm(width, elementwise_affine=False)
            self.k_norm = nn.LayerNorm(width, elementwise_affine=False)
            self.attn_norm = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, 2 * width, bias=False)
            self.fc1_norm = nn.LayerNorm(2 * width, elementwise_affine=False)
            self.fc2 = nn.Linear(2 * width, width, bias=False)
            self.out_norm = nn.LayerNorm(width)

        def forward(self, x: Any) -> Any:
            h = self.embed_norm(self.embed(x.reshape(-1, 8, 8))) + self.pos
            q, k = self.q_norm(self.q(h)), self.k_norm(self.k(h))
            att = torch.softmax(q @ k.transpose(1, 2) / width**0.5, dim=-1)
            h = self.attn_norm(h + att @ self.v(h))
            h = self.out_norm(h + self.fc2(torch.relu(self.fc1_norm(self.fc1(h)))))
            return h.mean(dim=1)

    return QKFormer()


def _preln_former(torch: Any, width: int = 32) -> Any:
    """One pre-LayerNorm transformer block over the 8 rows of an 8x8 digits image as
    tokens, mean-pooled after a final LayerNorm: the query and key projections are
    followed by a LayerNorm without affine terms (QK-norm) and are the only
    scale-invariant weights; the residual stream, the embedding, the value projection
    and the MLP are not normalized after them."""
    nn = torch.nn

    class PreLNFormer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, width, bias=False)
            self.pos = nn.Parameter(torch.zeros(8, width))
            self.attn_in = nn.LayerNorm(width)
            self.q = nn.Linear(width, width, bias=False)
            self.k = nn.Linear(width, width, bias=False)
            self.v = nn.Linear(width, width, bias=False)
            self.q_norm = nn.LayerNorm(width, elementwise_affine=False)
            self.k_norm = nn.LayerNorm(width, elementwise_affine=False)
            self.mlp_in = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, 2 * width, bias=False)
            self.fc2 = nn.Linear(2 * width, width, bias=False)
            self.out_norm = nn.LayerNorm(width)

        def forward(self, x: Any) -> Any:
            h = self.embed(x.reshape(-1, 8, 8)) + self.pos
            z = self.attn_in(h)
            q, k = self.q_norm(self.q(z)), self.k_norm(self.k(z))
            att = torch.softmax(q @ k.transpose(1, 2) / width**0.5, dim=-1)
            h = h + att @ self.v(z)
            h = h + self.fc2(torch.relu(self.fc1(self.mlp_in(h))))
            return self.out_norm(h).mean(dim=1)

    return PreLNFormer()


def _cosine_head(torch: Any, n_in: int, n_out: int, scale: float = LAST_LAYER_NORM) -> Any:
    """A trained cosine classifier: ``scale * normalize(h) @ normalize(W).T``, each class's
    weight row normalized to unit length, so ``W`` is scale-invariant (row by row)."""
    nn = torch.nn
    f = torch.nn.functional

    class CosineHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)

        def forward(self, h: Any) -> Any:
            return scale * f.normalize(h, dim=1) @ f.normalize(self.weight, dim=1).T

    return CosineHead()


def build(net: str, n_in: int, n_out: int, torch: Any, frozen: bool = True) -> Any:
    """The network, its last layer at Frobenius norm 10 and frozen (or, ``frozen=False``,
    a trained last layer with its bias, as PyTorch initialises it)."""
    nn = torch.nn
    layers: list[Any] = []
    if net == "lnmlp":
        for _ in range(2):
            layers += [nn.Linear(n_in, 32, bias=False), nn.LayerNorm(32, elementwise_affine=False)]
            layers += [nn.Tanh()]
            n_in = 32
    elif net == "bnaffine":
        for _ in range(2):
            layers += [nn.Linear(n_in, 48, bias=False), nn.BatchNorm1d(48), nn.ReLU()]
            n_in = 48
    elif net == "wide":
        layers += [nn.Linear(n_in, 128, bias=False), nn.BatchNorm1d(128, affine=False), nn.ReLU()]
        n_in = 128
    elif net == "bnconv":
        layers += [nn.Unflatten(1, (1, 8, 8))]
        for c_in, c in ((1, 16), (16, 32)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten()]
        n_in = 128
    elif net in ("gnconv", "lnconv"):  # GroupNorm (4 groups, or one: LayerNorm), no affine
        groups = 4 if net == "gnconv" else 1
        layers += [nn.Unflatten(1, (1, 8, 8))]
        for c_in, c in ((1, 16), (16, 32)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False)]
            layers += [nn.GroupNorm(groups, c, affine=False), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten()]
        n_in = 128
    elif net in ("deepmlp", "mlp", "widemlp", "gelumlp", "silumlp"):  # BatchNorm, no affine
        # terms: 4 x 32, 2 x 64, 6 x 128 with ReLU; 2 x 64 with GELU or SiLU
        depth, width = {"deepmlp": (4, 32), "widemlp": (6, 128)}.get(net, (2, 64))
        act = {"gelumlp": nn.GELU, "silumlp": nn.SiLU}.get(net, nn.ReLU)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width, bias=False)]
            layers += [nn.BatchNorm1d(width, affine=False), act()]
            n_in = width
    elif net == "dropmlp":  # BatchNorm without affine terms, 2 x 64, dropout 0.1
        for _ in range(2):
            layers += [nn.Linear(n_in, 64, bias=False), nn.BatchNorm1d(64, affine=False)]
            layers += [nn.ReLU(), nn.Dropout(0.1)]
            n_in = 64
    elif net == "wsconv":  # weight-standardised convolutions, no normalization layer
        layers += [nn.Unflatten(1, (1, 8, 8))]
        for c_in, c in ((1, 16), (16, 32)):
            layers += [_ws_conv(torch, c_in, c), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [nn.Flatten()]
        n_in = 128
    elif net == "resmlp":  # two residual blocks with affine BatchNorm
        layers += [nn.Linear(n_in, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU()]
        layers += [_residual_block(torch, "mlp", 32), _residual_block(torch, "mlp", 32)]
        n_in = 32
    elif net == "resconv":  # residual ConvNet with affine BatchNorm on the 8x8 digits
        layers += [nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(16), nn.ReLU(), _residual_block(torch, "conv", 16)]
        layers += [nn.MaxPool2d(2), _residual_block(torch, "conv", 16), nn.Flatten()]
        n_in = 256
    elif net == "rmsmlp":  # RMSNorm without affine terms after each weight matrix, 2 x 64
        for _ in range(2):
            layers += [nn.Linear(n_in, 64, bias=False)]
            layers += [nn.RMSNorm(64, elementwise_affine=False), nn.ReLU()]
            n_in = 64
    elif net == "qkformer":  # a transformer block on the digits' rows (_qk_former)
        layers += [_qk_former(torch)]
        n_in = 32
    elif net == "prelnformer":  # a pre-LayerNorm block, QK-norm only (_preln_former)
        layers += [_preln_former(torch)]
        n_in = 32
    elif net == "wnmlp":  # weight normalization (PyTorch's parametrization), no norm layer
        weight_norm = torch.nn.utils.parametrizations.weight_norm
        for _ in range(2):
            layers += [weight_norm(nn.Linear(n_in, 64, bias=False)), nn.ReLU()]
            n_in = 64
    elif net == "cosmlp":  # BatchNorm MLP (2 x 64, no affine) with a cosine classifier
        for _ in range(2):
            layers += [nn.Linear(n_in, 64, bias=False)]
            layers += [nn.BatchNorm1d(64, affine=False), nn.ReLU()]
            n_in = 64
        return nn.Sequential(*layers, _cosine_head(torch, n_in, n_out))
    elif net == "dwconv":  # depthwise-separable convolutions with affine BatchNorm
        layers += [nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1, bias=False)]
        layers += [nn.BatchNorm2d(16), nn.ReLU()]
        layers += [nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)]
        layers += [nn.ReLU(), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        n_in = 512
    elif net == "gnconv1d":  # 1-D convolutions with GroupNorm (4 groups, no affine terms)
        layers += [nn.Unflatten(1, (1, n_in))]
        for c_in, c in ((1, 16), (16, 32)):
            layers += [nn.Conv1d(c_in, c, 5, padding=2, bias=False)]
            layers += [nn.GroupNorm(4, c, affine=False), nn.ReLU(), nn.MaxPool1d(2)]
        layers += [nn.Flatten()]
        n_in = 32 * (n_in // 4)
    elif net == "rnnln":  # a recurrent cell with LayerNorm over the digits' rows (_rnn_ln)
        layers += [_rnn_ln(torch)]
        n_in = 32
    elif net == "postbn":  # BatchNorm (affine) after the ReLU: relu is homogeneous, 2 x 64
        for _ in range(2):
            layers += [nn.Linear(n_in, 64, bias=False), nn.ReLU(), nn.BatchNorm1d(64)]
            n_in = 64
    elif net == "embln":  # an embedding bag (mean) with LayerNorm, then a BatchNorm layer
        vocab = TOKENS[2]
        layers += [nn.EmbeddingBag(vocab, 32, mode="mean")]
        layers += [nn.LayerNorm(32, elementwise_affine=False), nn.ReLU()]
        layers += [nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32, affine=False), nn.ReLU()]
        n_in = 32
    elif net == "deepconv":  # four 3x3 convolutions with affine BatchNorm, 32-64 channels
        layers += [nn.Unflatten(1, (1, 8, 8))]
        for c_in, c, pool in ((1, 32, False), (32, 32, True), (32, 64, False), (64, 64, True)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
            layers += [nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        layers += [nn.Flatten()]
        n_in = 256
    else:
        raise ValueError(f"unknown network {net!r}")
    model = nn.Sequential(*layers, nn.Linear(n_in, n_out))
    if frozen:
        from siflow.torch_probe import freeze_classifier

        freeze_classifier(model[-1], LAST_LAYER_NORM)  # seed paper: norm 10, frozen
    return model


def make_schedule(run: Run, opt: Any, torch: Any) -> Any:
    """The run's PyTorch LR scheduler (None for a constant lr): cosine to zero over the run,
    x0.3 at step 1500, a linear warmup from 1 % over 300 steps, cosine restarts every
    1000 steps, a linear decay to 10 % over the run, or PyTorch's one-cycle schedule (the
    lr up from 4 % of its peak over the first 30 % of the run and down to 4e-6 of it, the
    momentum 0.95 to 0.85 and back)."""
    sched = torch.optim.lr_scheduler
    if run.schedule == "cosine":
        return sched.CosineAnnealingLR(opt, run.steps)
    if run.schedule == "step":
        return sched.StepLR(opt, 1500, 0.3)
    if run.schedule == "warmup":
        return sched.LinearLR(opt, 0.01, 1.0, 300)
    if run.schedule == "restarts":
        return sched.CosineAnnealingWarmRestarts(opt, 1000)
    if run.schedule == "linear":
        return sched.LinearLR(opt, 1.0, 0.1, run.steps)
    if run.schedule == "onecycle":  # and the momentum from 0.95 to 0.85 and back
        return sched.OneCycleLR(opt, max_lr=run.lr, total_steps=run.steps)
    if run.schedule == "plateau":  # stepped on the training loss (train)
        return sched.ReduceLROnPlateau(opt, factor=0.5, patience=300, min_lr=run.lr / 8)
    return None


def loss_of(run: Run, logits: Any, y: Any, torch: Any) -> Any:
    """The run's loss: cross-entropy, with label smoothing 0.1 (``"smooth"``), the
    squared error of the logits against one-hot targets (``"mse"``, summed over classes,
    averaged over samples), one-vs-rest binary cross-entropy (``"bce"``, a sigmoid per
    class, averaged over classes and samples), or, on regression data, the squared error
    of the one output against the standardised target."""
    f = torch.nn.functional
    if run.data in REGRESSION:  # squared error of the one output against the target
        return ((logits[:, 0] - y) ** 2).mean()
    if run.loss == "hinge":  # multi-class hinge: exactly zero once every margin is 1
        return f.multi_margin_loss(logits, y)
    if run.loss == "bce":  # one-vs-rest: a sigmoid per class against one-hot targets
        target = f.one_hot(y, logits.shape[1]).to(logits.dtype)
        return f.binary_cross_entropy_with_logits(logits, target)
    if run.loss == "mse":
        target = f.one_hot(y, logits.shape[1]).to(logits.dtype)
        return ((logits - target) ** 2).sum(1).mean()
    return f.cross_entropy(logits, y, label_smoothing=0.1 if run.loss == "smooth" else 0.0)


def shift_digits(x: Any, gen: Any, torch: Any) -> Any:
    """The 8x8 digits images of ``x`` (rows of 64), each shifted by up to one pixel in
    both directions (zero fill), drawn from ``gen``."""
    img = torch.nn.functional.pad(x.reshape(-1, 8, 8), (1, 1, 1, 1))
    di, dj = torch.randint(0, 3, (2, x.shape[0]), generator=gen)
    rows = (torch.arange(8)[None, :] + di[:, None])[:, :, None]
    cols = (torch.arange(8)[None, :] + dj[:, None])[:, None, :]
    return img[torch.arange(x.shape[0])[:, None, None], rows, cols].reshape(-1, 64)


def noisy_labels(y: Any, fraction: float, gen: Any, torch: Any) -> Any:
    """``y`` with the labels of ``round(fraction * len(y))`` samples, drawn from ``gen``,
    replaced by classes drawn uniformly (a replaced label may come out unchanged)."""
    n = round(fraction * len(y))
    idx = torch.randperm(len(y), generator=gen)[:n]
    y = y.clone()
    y[idx] = torch.randint(0, int(y.max()) + 1, (n,), generator=gen)
    return y


def train(run: Run, out: Path) -> dict[str, Any]:
    """Train one run, record it, save ``out/<name>.npz``."""
    torch = require("torch", "torch", '"torch==2.13.0"')
    from siflow.torch_probe import SIRecorder

    torch.set_num_threads(1)
    x, y = load_data(run.data, torch)
    if run.label_noise:
        y = noisy_labels(y, run.label_noise, torch.Generator().manual_seed(run.seed + 2), torch)
    torch.manual_seed(run.seed)
    n_out = 1 if run.data in REGRESSION else int(y.max()) + 1
    model = build(run.net, x.shape[1], n_out, torch, run.frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params}]
    if run.decay_weights_only:  # the usual "no decay" group first, then the weights
        groups = [
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            {"params": [p for p in params if p.ndim >= 2]},
        ]
    if run.net == "wnmlp":  # the weight norm's magnitudes g without decay, as biases
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n.endswith("original0")], "weight_decay": 0.0},
            {"params": [p for n, p in named if not n.endswith("original0")]},
        ]
    if run.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=run.lr, weight_decay=run.wd)
    elif run.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=run.lr, weight_decay=run.wd)
    else:
        opt = torch.optim.SGD(
            groups, lr=run.lr, momentum=run.momentum, weight_decay=run.wd, nesterov=run.nesterov
        )
    sched = make_schedule(run, opt, torch)
    rec = SIRecorder(model, opt, every=run.every, meta={"config": asdict(run), "dataset": run.data})
    gen = torch.Generator().manual_seed(run.seed + 1)
    t0 = time.perf_counter()
    recent: deque[float] = deque(maxlen=run.every)  # the losses a row stands for
    batches = epoch_batches(len(y), run, gen, torch) if run.loader != "random" else None
    for _ in range(run.steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(run.accumulate):
            if run.batch:
                idx = (
                    next(batches)
                    if batches is not None
                    else torch.randint(0, len(y), (run.batch,), generator=gen)
                )
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            if run.augment:
                xb = shift_digits(xb, gen, torch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.bf16):
                logits = model(xb)
            loss = loss_of(run, logits.float(), yb, torch)
            (loss / run.accumulate if run.accumulate > 1 else loss).backward()
            value = float(loss.detach())
            if run.accumulate > 1:  # logged after every backward; the recorder keeps the last
                rec.log_loss(value)
        if run.clip:
            torch.nn.utils.clip_grad_norm_(params, run.clip)
        opt.step()
        recent.append(value)
        if run.accumulate == 1:
            rec.log_loss(sum(recent) / len(recent) if run.mean_loss else value)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(value)
        elif sched is not None:
            sched.step()
        if not math.isfinite(value):
            break
    rec.close()
    traj = rec.trajectory()
    traj.save(out / f"{run.name}.npz")
    return {"name": run.name, "rows": len(traj), "seconds": round(time.perf_counter() - t0, 1)}


def epoch_batches(n: int, run: Run, gen: Any, torch: Any) -> Any:
    """Index batches in shuffled epochs, as a shuffling DataLoader yields them: a new
    permutation of the ``n`` samples each epoch, cut into batches of ``run.batch``; the
    last holds the remainder (``run.loader == "epochs"``) or is dropped (``"drop_last"``)."""
    if run.loader not in ("epochs", "drop_last"):
        raise ValueError(f"loader must be 'random', 'epochs' or 'drop_last', got {run.loader!r}")
    while True:
        for idx in torch.randperm(n, generator=gen).split(run.batch):
            if len(idx) == run.batch or run.loader == "epochs":
                yield idx


def slim(traj: Trajectory, gradient: bool = False) -> Trajectory:
    """The columns the event detector reads (step, rho, loss and an lr column), in float32
    precision, with the run's settings: the committed form of a log (about 25 kB); with
    ``gradient``, the sphere gradient norm too (the equilibrium norm needs it)."""
    import numpy as np

    def f32(a: Any) -> Any:
        return None if a is None else np.asarray(a, dtype=np.float32).astype(np.float64)

    keys = ("lr", "wd", "momentum", "nesterov", "optimizer", "dataset", "source", "config")
    return Trajectory(
        step=traj.step,
        rho=f32(traj.rho),
        loss=f32(traj.loss),
        grad_norm_sphere=f32(traj.grad_norm_sphere) if gradient else None,
        extra={k: f32(traj.extra[k]) for k in KEPT if k in traj.extra},
        meta={k: traj.meta[k] for k in keys if k in traj.meta},
    )


def cmd_train(args: Any) -> int:
    out = DATA if args.update_data else Path(args.out) if args.out else OUT / "logs"
    if args.transfer and args.lastbatch:
        raise ValueError("train --transfer or --lastbatch, not both")
    runs: Sequence[Run] = RUNS
    if args.transfer:
        out, runs = out / "transfer", transfer_runs()
    elif args.lastbatch:
        out, runs = out / "lastbatch", lastbatch_runs()
    out = ensure_dir(out)
    wanted = set(args.only.split(",")) if args.only else None
    for run in runs:
        if wanted is None or run.name in wanted:
            print(train(run, out))
            if args.update_data:
                path = out / f"{run.name}.npz"
                slim(Trajectory.load(path), gradient=args.lastbatch).save(path)
    return 0


def load_labels(
    path: Path = DATA / "labels.json",
) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(events, ambiguous)``: the labelled runs' event steps and the doubtful ones."""
    import json

    if not path.is_file():
        return {}, {}
    raw = json.loads(path.read_text())
    return raw["events"], raw.get("ambiguous", {})


def load_batches(path: Path = DATA / "labels.json") -> dict[str, list[str]]:
    """The labelled runs by batch (``labels.json``'s note says how each was labelled)."""
    import json

    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("batches", {})


def _scores(rows: list[dict[str, Any]]) -> str:
    """``recall r (tp/labelled), precision p (tp/found)`` summed over the per-run rows of
    :func:`siflow.periods.score_detector`."""
    tp, fn, fp = (sum(r[k] for r in rows) for k in ("tp", "fn", "fp"))
    recall = tp / (tp + fn) if tp + fn else math.nan
    precision = tp / (tp + fp) if tp + fp else math.nan
    return f"recall {recall:.3f} ({tp}/{tp + fn}), precision {precision:.3f} ({tp}/{tp + fp})"


def cmd_detect(args: Any) -> int:
    from siflow import periods

    logs = Path(args.logs) if args.logs else DATA
    found = {}
    for run in RUNS:
        path = logs / f"{run.name}.npz"
        if path.is_file():
            traj = Trajectory.load(path)
            ev = periods.find_events(traj)
            found[run.name] = (traj, ev)
            print(f"{run.name}: {len(ev.steps)} events at {ev.steps.tolist()}")
    if not found:
        raise ValueError(f"no held-out logs in {logs}; run 'train' first")
    labels, ambiguous = load_labels()
    res = periods.score_detector({k: t for k, (t, _) in found.items()}, labels, ambiguous)
    if res["runs"]:
        for r in res["runs"]:
            print(f"  {r['run']}: {r['tp']} found, {r['fn']} missed, {r['fp']} false")
        for batch, names in load_batches().items():
            part = [r for r in res["runs"] if r["run"] in names]
            print(f"batch {batch} ({len(names)} runs): {_scores(part)}")
        print(f"labelled runs: {_scores(res['runs'])}")
    plt = require("matplotlib.pyplot", "analysis", "matplotlib")
    fig, axes = plt.subplots(len(found), 1, figsize=(12, 2.4 * len(found)), squeeze=False)
    for ax, (name, (traj, ev)) in zip(axes[:, 0], found.items(), strict=True):
        ax.semilogy(traj.step, traj.rho / traj.rho[0], "b-", lw=0.8, label="rho / rho_0")
        ax.semilogy(traj.step, np.asarray(traj.loss), "r-", lw=0.5, alpha=0.7, label="loss")
        for s in ev.steps:
            ax.axvline(s, color="k", lw=0.6, ls="--")
        ax.set_title(f"{name}: {len(ev.steps)} events (dashed)", fontsize=8)
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    out = ensure_dir(Path(args.out) if args.out else OUT) / "heldout.png"
    with atomic_write(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=80)
    print(f"wrote {out}")
    return 0


def transfer_table(logs: Path = TRANSFER_DATA) -> list[dict[str, Any]]:
    """:func:`siflow.predict.transfer_period` from each network's calibration run to its
    other runs: per run ``net``, ``lr``, ``wd``, the measured median period (the detector's
    events), the predicted one and the relative error."""
    from siflow.periods import find_events
    from siflow.predict import transfer_period

    rows = []
    for net in TRANSFER_NETS:
        runs = [r for r in transfer_runs() if r.net == net]
        paths = [logs / f"{r.name}.npz" for r in runs]
        if not all(p.is_file() for p in paths):
            raise ValueError(
                f"the transfer logs of {net} are not all in {logs}; run 'train --transfer'"
            )
        cal = Trajectory.load(paths[0])
        events = find_events(cal)
        for run, path in zip(runs[1:], paths[1:], strict=True):
            measured = float(np.median(find_events(Trajectory.load(path)).periods))
            pred = transfer_period(cal, run.lr, run.wd, events=events).period
            rows.append(
                {
                    "net": net,
                    "lr": run.lr,
                    "wd": run.wd,
                    "measured": measured,
                    "predicted": pred,
                    "error": pred / measured - 1.0,
                }
            )
    return rows


def cmd_transfer(args: Any) -> int:
    rows = transfer_table(Path(args.logs) if args.logs else TRANSFER_DATA)
    print(f"{'network':<10}{'lr':>6}{'wd':>8}{'measured':>10}{'predicted':>11}{'error':>8}")
    for r in rows:
        print(
            f"{r['net']:<10}{r['lr']:>6g}{r['wd']:>8g}{r['measured']:>10.1f}"
            f"{r['predicted']:>11.1f}{r['error']:>+8.1%}"
        )
    errors = np.abs([r["error"] for r in rows])
    print(
        f"median abs error {np.median(errors):.1%}, worst {np.max(errors):.1%} ({len(rows)} runs)"
    )
    return 0


def lastbatch_table(logs: Path = LASTBATCH_DATA) -> list[dict[str, Any]]:
    """Per run of :func:`lastbatch_runs`: its events, how many start at the step before an
    epoch's last batch, the phase lock found (:func:`siflow.periods.phase_lock`), the
    change of ``ln rho`` over the epochs' last steps and over a median step, the median
    norm, and the overlay's mean norm against the equilibrium norm from the measured
    sphere gradient (:func:`siflow.overlay.analyze`)."""
    from siflow.overlay import analyze
    from siflow.periods import find_events, phase_lock

    rows = []
    for run in lastbatch_runs():
        path = logs / f"{run.name}.npz"
        if not path.is_file():
            raise ValueError(f"no log {path}; run 'train --lastbatch' first")
        traj = Trajectory.load(path)
        per_epoch = (
            math.ceil(N_DIGITS / run.batch) if run.loader == "epochs" else N_DIGITS // run.batch
        )
        ev = find_events(traj)
        d = np.diff(np.log(traj.rho))
        last = d[per_epoch - 1 :: per_epoch]  # rows before each epoch's last update, to after
        lock = phase_lock(traj, ev)
        res = analyze(traj)
        rows.append(
            {
                "run": run.name,
                "steps_per_epoch": per_epoch,
                "events": len(ev),
                "at_epoch_end": int(np.sum(ev.steps % per_epoch == per_epoch - 1)),
                "lock": None if lock is None else (lock.period, lock.phase, lock.count),
                "epoch_end_change": float(np.mean(last)),
                "median_change": float(np.median(d)),
                "median_rho": float(np.median(traj.rho)),
                "norm_mean": res.equilibrium.norm_mean,
                "norm_predicted": res.predictions.norm_predicted,
            }
        )
    return rows


def cmd_lastbatch(args: Any) -> int:
    rows = lastbatch_table(Path(args.logs) if args.logs else LASTBATCH_DATA)
    for r in rows:
        lock = "none" if r["lock"] is None else "period {}, step {}, {} events".format(*r["lock"])
        print(
            f"{r['run']}: {r['events']} events, {r['at_epoch_end']} before an epoch's last "
            f"update ({r['steps_per_epoch']} steps per epoch); phase lock: {lock}; ln rho "
            f"over the epochs' last updates {r['epoch_end_change']:+.4f}, over a median "
            f"step {r['median_change']:+.4f}; median rho {r['median_rho']:.3g}; mean rho "
            f"{r['norm_mean']:.4g} against the equilibrium {r['norm_predicted']:.4g} from "
            f"the measured sphere gradient"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="heldout_runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train the held-out runs")
    p.add_argument("--only", default=None, help="comma-separated run names")
    p.add_argument("--out", default=None, help="log directory (default runs/heldout/logs)")
    p.add_argument(
        "--update-data",
        action="store_true",
        help="write the committed logs (analysis/data/heldout)",
    )
    p.add_argument(
        "--transfer",
        action="store_true",
        help="train the period-transfer runs instead (into a transfer/ folder)",
    )
    p.add_argument(
        "--lastbatch",
        action="store_true",
        help="train the smaller-last-batch runs instead (into a lastbatch/ folder)",
    )
    p = sub.add_parser("detect", help="events, scores on the labelled runs, one figure")
    p.add_argument("--logs", default=None, help="log directory (default analysis/data/heldout)")
    p.add_argument("--out", default=None, help="figure directory (default runs/heldout)")
    p = sub.add_parser("transfer", help="the period transfer on three held-out networks")
    p.add_argument(
        "--logs", default=None, help="log directory (default analysis/data/heldout/transfer)"
    )
    p = sub.add_parser("lastbatch", help="a smaller last batch in each epoch, and without it")
    p.add_argument(
        "--logs", default=None, help="log directory (default analysis/data/heldout/lastbatch)"
    )
    args = parser.parse_args(argv)
    commands = {
        "train": cmd_train,
        "detect": cmd_detect,
        "transfer": cmd_transfer,
        "lastbatch": cmd_lastbatch,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="heldout_runs"))
