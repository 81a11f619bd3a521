"""SIRecorder under torch.distributed: 2 processes, gloo on 127.0.0.1, CPU.

DDP (replicated weights, all-reduced gradients) and FSDP2 (``fully_shard``: each
rank holds half of every weight) runs with a global batch split in two must
record the same metrics as one process on the whole batch; only rank 0 writes.
"""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install siflow[torch])")
nn = torch.nn

from siflow.trajectory import Trajectory  # noqa: E402

STEPS, BATCH, LR, WD, MU = 12, 32, 0.3, 1e-2, 0.9
GROUPS = ["0.weight", "2.weight"]


def _model():
    """LayerNorm normalizes each sample: the gradient of a split batch averages exactly."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16, bias=False),
        nn.LayerNorm(16, elementwise_affine=False),
        nn.Linear(16, 16, bias=False),
        nn.LayerNorm(16, elementwise_affine=False),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).double()


def _batches():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (STEPS, BATCH), generator=gen)
    return x, y


def _train(model, params, rank, world, path, groups):
    from siflow.torch_probe import SIRecorder

    opt = torch.optim.SGD(params, lr=LR, weight_decay=WD, momentum=MU)
    rec = SIRecorder(model, opt, every=1, groups=groups, path=path)
    x, y = _batches()
    lo, hi = rank * BATCH // world, (rank + 1) * BATCH // world
    for t in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[t, lo:hi]), y[t, lo:hi])
        loss.backward()
        opt.step()
    rec.save()
    rec.close()


def _worker(rank, world, port, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        groups = {g: [dict(model.named_parameters())[g]] for g in GROUPS}
        _train(ddp, model.parameters(), rank, world, os.path.join(out, f"ddp{rank}.csv"), groups)

        from torch.distributed.fsdp import fully_shard

        model = _model()
        fully_shard(model[0])
        fully_shard(model[2])
        fully_shard(model)
        params = dict(model.named_parameters())
        assert params["0.weight"].to_local().shape == (16 // world, 8)  # really sharded
        groups = {g: [params[g]] for g in GROUPS}
        _train(model, model.parameters(), rank, world, os.path.join(out, f"fsdp{rank}.csv"), groups)
        # both ranks done before either tears the group down: destroying it while the other
        # rank's gloo threads still run aborted a rank once ("terminate called without an
        # active exception")
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    # every file is written and closed; on a loaded machine gloo's threads could still abort
    # the interpreter's exit the same way (a torch teardown race, not a recorder result), so
    # a rank that finished leaves without running C++ static destructors
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_and_fsdp_equal_single_process_and_only_rank0_writes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp0.csv", "fsdp0.csv"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _model()
        _train(model, model.parameters(), 0, 1, tmp_path / "single.csv", GROUPS)
    finally:
        torch.set_num_threads(threads)
    ref = Trajectory.load(tmp_path / "single.csv")
    assert ref.step.tolist() == list(range(STEPS))
    for name in ("ddp0.csv", "fsdp0.csv"):
        t = Trajectory.load(tmp_path / name)
        assert t.step.tolist() == list(range(STEPS))
        for col in ("rho", "grad_norm_sphere", "elr"):
            np.testing.assert_allclose(t.column(col), ref.column(col), rtol=1e-6, err_msg=name)
        for g in GROUPS:
            for col in ("rho", "grad_norm_sphere", "relative_update"):
                np.testing.assert_allclose(
                    t.extra[f"{col}/{g}"], ref.extra[f"{col}/{g}"], rtol=1e-6, err_msg=name
                )
        # angles are O(1e-2): compare absolutely at the same relative level
        np.testing.assert_allclose(t.angular_update, ref.angular_update, rtol=1e-6, atol=1e-12)
