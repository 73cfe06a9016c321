"""A plain loop on two real ranks (gloo, two processes; no Ray): rank 0's commands are
applied by both ranks at the same step, a checkpoint written by rank 0 is loaded by both
(each rank gets its own RNG back), and a stop ends both. The run's controller is the one
part left out: rank 0's commands are handed to its core as its puller would."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ray_interactive.core.checkpoints import read_checkpoint
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
from ray_interactive.train.ranks import without_controller

WORLD = 2


def record(seq: int, command: Any) -> CommandRecord:
    return CommandRecord(command=command, seq=seq, status=CommandStatus.ACCEPTED)


def whole(p: torch.Tensor) -> torch.Tensor:
    return p.full_tensor() if hasattr(p, "full_tensor") else p  # a shard (FSDP): the whole parameter


def rank_main(rank: int, port: int, out: str, wrap: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        if wrap == "fsdp":  # FSDP2: each rank holds a shard of every parameter
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            ddp = fully_shard(model)
        else:
            ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # each rank its own data stream, from the global RNG
        rows, sent = [], set()
        with loop.steer("ranks-unit", ddp, opt, open_run=without_controller(), run_dir=Path(out) / "run",
                        max_steps=40) as s:
            while s.running:
                step = s.state.step
                if rank == 0 and s.state.branch == "main" and step not in sent:
                    sent.add(step)
                    if step == 3:
                        s.core.deliver([record(1, UpdateOptimizer(params={"lr": 0.05})), record(2, SaveCheckpoint()),
                                        record(3, Pause(at_step=6))])
                        threading.Timer(0.5, s.core.deliver, ([record(4, Resume())],)).start()
                    if step == 9:
                        s.core.deliver([record(5, LoadCheckpoint(checkpoint_id="main@5", branch="again"))])
                if rank == 0 and s.state.branch == "again" and s.state.step == 12 and 12 not in sent:
                    sent.add(12)
                    s.core.deliver([record(6, Stop())])
                x = torch.randn(8, 4)
                loss = ddp(x).pow(2).mean()
                loss.backward()
                s.step(loss=loss)
                lr = opt.param_groups[0]["lr"]  # what this step used
                rows.append({"step": s.state.step, "branch": s.state.branch, "lr": lr, "loss": loss.item(),
                             "weights": float(sum(whole(p.detach()).double().sum() for p in model.parameters()))})
            unsupported = sorted(s.core.frontend.unsupported)
        Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
        Path(out, f"unsupported{rank}.json").write_text(json.dumps(unsupported))
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still winding down there may
    # abort the process ("terminate called without an active exception") after all is done.
    sys.stdout.flush()
    os._exit(0)


def reshard_main(rank: int, port: int, out: str, world: int) -> None:
    """Continue the sharded run from main@5 on ``world`` ranks: the weights it reads."""
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    resume = Path(out) / "run" / "checkpoints" / "main@5"
    with loop.steer("ranks-reshard", model, opt, run_dir=Path(out) / f"run{world}", max_steps=5,
                    open_run=without_controller(resume)) as s:
        got = {"step": s.state.step, "weights": float(sum(whole(p.detach()).double().sum() for p in model.parameters()))}
    if rank == 0:
        Path(out, f"resharded{world}.json").write_text(json.dumps(got))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def ranks_out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .conftest import free_port  # here, not at the top: the spawned ranks import this module, not Ray

    out = tmp_path_factory.mktemp(f"ranks-{request.param}")
    mp.spawn(rank_main, args=(free_port(), str(out), request.param), nprocs=WORLD, join=True)
    return out


def test_every_rank_applies_every_command_at_the_same_step(ranks_out: Path) -> None:
    r0, r1 = (json.loads((ranks_out / f"rank{r}.json").read_text()) for r in range(WORLD))
    key = [(r["step"], r["branch"], r["lr"]) for r in r0]
    assert key == [(r["step"], r["branch"], r["lr"]) for r in r1]
    assert [r["weights"] for r in r0] == pytest.approx([r["weights"] for r in r1], rel=1e-12)  # DDP kept them equal
    # handed over at step 3's exchange, which finishes at step 4's: the step to 5 used it, on both
    assert [r["lr"] for r in r0[:5]] == [0.1, 0.1, 0.1, 0.1, 0.05]
    assert r0[-1]["branch"] == "again" and r0[-1]["step"] == 14  # the stop ended both at once


def test_a_load_gives_every_rank_its_own_rng_back(ranks_out: Path) -> None:
    for rank in range(WORLD):
        rows = json.loads((ranks_out / f"rank{rank}.json").read_text())
        main = {r["step"]: r["loss"] for r in rows if r["branch"] == "main"}
        again = {r["step"]: r["loss"] for r in rows if r["branch"] == "again"}
        assert set(again) == set(range(5, 15))  # 5: the step after which the load came
        for step in (6, 7, 8, 9, 10):  # same weights, same data drawn: the same losses
            assert again[step] == pytest.approx(main[step], rel=1e-6), (rank, step)
    ckpt = ranks_out / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if (p / "state.json").exists()) == ["again@14", "main@5"]
    doc = json.loads((ckpt / "main@5" / "state.json").read_text())
    assert len(doc["state"]["ranks_rng"]) == WORLD
    if "fsdp" in ranks_out.name:  # every rank wrote its own shards, in parallel, through DCP
        shards = sorted(p.name for p in (ckpt / "main@5" / "sharded").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"] and doc["sharded"] == {"world": WORLD}
        assert not (ckpt / "main@5" / "model.safetensors").exists()
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        with pytest.raises(ValueError, match="sharded over 2 ranks"):  # one process, unsharded: refused, saying why
            read_checkpoint(ckpt / "main@5", model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))


def test_a_sharded_checkpoint_is_resharded_for_another_number_of_ranks(ranks_out: Path) -> None:
    if "fsdp" not in ranks_out.name:
        pytest.skip("sharded checkpoints are FSDP's")
    from .conftest import free_port

    mp.spawn(reshard_main, args=(free_port(), str(ranks_out), 3), nprocs=3, join=True)
    got = json.loads((ranks_out / "resharded3.json").read_text())
    saved = next(r for r in json.loads((ranks_out / "rank0.json").read_text()) if r["step"] == 5)
    assert got["step"] == 5 and got["weights"] == pytest.approx(saved["weights"], rel=1e-12)


def test_what_cannot_apply_to_a_sharded_model_is_refused_with_the_reason(ranks_out: Path) -> None:
    for rank in range(WORLD):
        refused = json.loads((ranks_out / f"unsupported{rank}.json").read_text())
        sharded = {"update_module", "publish_weights"}
        assert sharded <= set(refused) if "fsdp" in ranks_out.name else not sharded & set(refused)


def test_resume_auto_and_a_launcher_restart_continue_only_a_run_that_has_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray_interactive.core.checkpoints import CheckpointInfo, write_checkpoint
    from ray_interactive.core.resume import resolve_resume

    where = {"run_dir": tmp_path / "run"}
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert resolve_resume("r", where, "auto") is False  # nothing to come back to: a new run
    assert resolve_resume("r", where, False) is False
    model = torch.nn.Linear(2, 1)
    info = CheckpointInfo(id="main@10", branch="main", step=10, created_at=0.0, reason="periodic")
    write_checkpoint(tmp_path / "run" / "checkpoints", info, model, torch.optim.SGD(model.parameters(), lr=0.1), {})
    assert resolve_resume("r", where, "auto") is True
    assert resolve_resume("r", where, False) is False  # a first start never resumes unasked
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun --max-restarts started it again
    assert resolve_resume("r", where, False) is True
    assert resolve_resume("r", where, "main@10") == "main@10"  # what was asked stands
