"""A plain loop on two real ranks (gloo, two processes; no Ray): rank 0's commands are
applied by both ranks at the same step, a checkpoint written by rank 0 is loaded by both
(each rank gets its own RNG back), and a stop ends both. The run's controller is the one
part left out: rank 0's commands are handed to its core as its puller would."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ray_interactive.core.commands import (
    CommandRecord,
    CommandStatus,
    LoadCheckpoint,
    Pause,
    Resume,
    SaveCheckpoint,
    Stop,
    UpdateOptimizer,
)
from ray_interactive.train import loop
from ray_interactive.train.ranks import FollowerRun

WORLD = 2


def record(seq: int, command: Any) -> CommandRecord:
    return CommandRecord(command=command, seq=seq, status=CommandStatus.ACCEPTED)


def open_run(config: Any, address: Any, resume: bool = False, resume_from: Any = None) -> FollowerRun:
    return FollowerRun(next_seq=1, resume_from=None)  # rank 0 without a controller (see the module doc)


def rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # each rank its own data stream, from the global RNG
        rows, sent = [], set()
        with loop.steer("ranks-unit", ddp, opt, open_run=open_run, run_dir=Path(out) / "run", max_steps=40) as s:
            while s.running:
                step = s.state.step
                if rank == 0 and s.state.branch == "main" and step not in sent:
                    sent.add(step)
                    if step == 3:
                        s.core.deliver([record(1, UpdateOptimizer(params={"lr": 0.05})), record(2, SaveCheckpoint()),
                                        record(3, Pause(at_step=6))])
                        threading.Timer(0.5, s.core.deliver, ([record(4, Resume())],)).start()
                    if step == 9:
                        s.core.deliver([record(5, LoadCheckpoint(checkpoint_id="main@4", branch="again"))])
                if rank == 0 and s.state.branch == "again" and s.state.step == 12 and 12 not in sent:
                    sent.add(12)
                    s.core.deliver([record(6, Stop())])
                x = torch.randn(8, 4)
                loss = ddp(x).pow(2).mean()
                loss.backward()
                s.step(loss=loss)
                lr = opt.param_groups[0]["lr"]  # what this step used
                rows.append({"step": s.state.step, "branch": s.state.branch, "lr": lr, "loss": loss.item(),
                             "weights": float(sum(p.detach().double().sum() for p in model.parameters()))})
        Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still winding down there may
    # abort the process ("terminate called without an active exception") after all is done.
    sys.stdout.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return out


def test_every_rank_applies_every_command_at_the_same_step(ranks_out: Path) -> None:
    r0, r1 = (json.loads((ranks_out / f"rank{r}.json").read_text()) for r in range(WORLD))
    key = [(r["step"], r["branch"], r["lr"]) for r in r0]
    assert key == [(r["step"], r["branch"], r["lr"]) for r in r1]
    assert [r["weights"] for r in r0] == pytest.approx([r["weights"] for r in r1], rel=1e-12)  # DDP kept them equal
    assert [r["lr"] for r in r0[:4]] == [0.1, 0.1, 0.1, 0.05]  # arrived at step 3: the step to 4 used it, on both
    assert r0[-1]["branch"] == "again" and r0[-1]["step"] == 13  # the stop ended both at once


def test_a_load_gives_every_rank_its_own_rng_back(ranks_out: Path) -> None:
    for rank in range(WORLD):
        rows = json.loads((ranks_out / f"rank{rank}.json").read_text())
        main = {r["step"]: r["loss"] for r in rows if r["branch"] == "main"}
        again = {r["step"]: r["loss"] for r in rows if r["branch"] == "again"}
        assert set(again) == set(range(4, 14))  # 4: the step after which the load came
        for step in (5, 6, 7, 8, 9):  # same weights, same data drawn: the same losses
            assert again[step] == pytest.approx(main[step], rel=1e-6), (rank, step)
    ckpt = ranks_out / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if (p / "state.json").exists()) == ["again@13", "main@4"]
    doc = json.loads((ckpt / "main@4" / "state.json").read_text())
    assert len(doc["state"]["ranks_rng"]) == WORLD
