"""Starting a run: create its named actors on the local or a remote Ray cluster."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ray_interactive.core.checkpoints import list_checkpoints
from ray_interactive.core.config import RunConfig, actor_name, shard_actor_name
from ray_interactive.core.resume import how_to_resume
from ray_interactive.runtime.buffer_actor import BufferActor
from ray_interactive.runtime.client import RunClient
from ray_interactive.runtime.connection import init_ray
from ray_interactive.runtime.controller_actor import ControllerActor
from ray_interactive.runtime.lifecycle import release_run
from ray_interactive.runtime.trainer_actor import TrainerActor

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run's trainer failed (its loop raised, or it was lost and not restarted)."""


@dataclass
class RunHandle:
    """The actors of a run started by this process (the controller runs and watches the
    training loop, restarting a lost trainer)."""

    config: RunConfig
    controller: Any
    trainer: Any
    buffer: Any
    ingest_url: str | None = None  # where the run serves HTTP ingest (config.http_ingest)
    shards: tuple[Any, ...] = ()  # the buffer's other shards (config.buffer_shards > 1)

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the loop to end; returns the final status (None on timeout). A run
        that failed raises :class:`RunFailed` with why."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
            ended = ray.get(self.controller.wait_end.remote(min(left, 60.0)))
            if ended is not None:
                how, what = ended
                if how == "failed":
                    raise RunFailed(what)
                return dict(what)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def client(self) -> Any:
        return RunClient(self.config.name, self.config.namespace, self.controller)

    def shutdown(self) -> None:
        """Flush the controller, then kill the run's actors."""
        try:
            ray.get(self.controller.close.remote(), timeout=30)
        except Exception:
            log.warning("controller did not close cleanly")
        try:  # end-of-stream marks; data is safe without
            ray.get([b.close.remote() for b in (self.buffer, *self.shards)], timeout=30)
        except Exception:
            log.warning("buffer did not close cleanly")
        if self.ingest_url is not None:
            from ray_interactive.runtime.ingest_server import stop_ingest_server

            stop_ingest_server(self.config.name, self.config.namespace)
        for actor in (self.trainer, self.buffer, *self.shards, self.controller):
            try:
                ray.kill(actor)
            except Exception:
                pass
        # ray.kill is asynchronous: the names are free (for a resume) when this returns. Only
        # this handle's actors count: a run resumed under the same name since is not ours.
        roles = {"trainer": self.trainer, "buffer": self.buffer, "controller": self.controller}
        ours = {actor_name(self.config.name, role): actor for role, actor in roles.items()}
        ours.update({shard_actor_name(self.config.name, k + 1): actor for k, actor in enumerate(self.shards)})
        if not _wait_released(ours, self.config.namespace):
            log.warning("the actors of run %s are still going away", self.config.name)


def start_run(
    config: RunConfig,
    resume: bool = False,
    resume_from: str | None = None,
    detached: bool = False,
    address: str | None = None,
) -> RunHandle:
    """Create the run's controller, buffer and trainer and start training.

    With ``resume``, the run continues from its latest checkpoint (or ``resume_from``,
    a checkpoint id) in ``config.run_dir``, with its command log, metrics and branches.
    """
    if config.task is None:
        raise ValueError("a run of our Trainer needs a task (config.task); a loop of your own is steered in-process "
                         "with ri.steer(...) or ri.hf.steer(trainer, ...)")
    init_ray(address, namespace=config.namespace)
    ns = config.namespace
    checkpoint_path = check_new_run(config, resume, resume_from)
    run_dir = config.resolved_run_dir
    name = actor_name(config.name, "controller")

    lifetime = "detached" if detached else None
    cfg = config.model_dump(mode="json")
    cfg["run_dir"] = str(run_dir)  # actors may run elsewhere: pass the absolute path
    # The three start side by side (each a process to spawn); the trainer asks the controller
    # for the number of its first command itself.
    pin = {role: {"resources": res} for role, res in config.placement.items()}  # custom resources
    controller = ControllerActor.options(name=name, namespace=ns, lifetime=lifetime, **pin.get("controller", {})).remote(
        cfg, recover=resume)
    # Shards go to different nodes where there are several (SPREAD); each is its own process.
    spread = {"scheduling_strategy": "SPREAD"} if config.buffer_shards > 1 else {}
    buffer, *shards = [
        BufferActor.options(name=shard_actor_name(config.name, k), namespace=ns, lifetime=lifetime, **spread,
                            **pin.get("buffer", {})).remote(cfg, k)
        for k in range(config.buffer_shards)
    ]
    # Inside the actor its one GPU is cuda:0 whatever the config named ("cuda:1" picks none).
    wants_gpu = config.device == "auto" or config.device.startswith("cuda")
    # Many workers: the GPUs go to Ray Train's workers; this actor only runs them.
    gpus = 1 if wants_gpu and config.workers == 1 and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if gpus and config.device.startswith("cuda:"):
        cfg["device"] = "cuda"
    trainer = TrainerActor.options(
        name=actor_name(config.name, "trainer"),
        namespace=ns,
        lifetime=lifetime,
        num_cpus=config.trainer_num_cpus if config.workers == 1 else 0,
        num_gpus=gpus,
        max_restarts=config.max_restarts,  # recovered from the newest checkpoint by the controller
        max_task_retries=0,
        **pin.get("trainer", {}),
    ).remote(cfg, checkpoint_path)
    try:
        # constructor errors show here
        ray.get([controller.ready.remote(), buffer.ready.remote(), trainer.ready.remote(), *(s.ready.remote() for s in shards)])
    except Exception:
        for actor in (trainer, buffer, *shards, controller):
            ray.kill(actor)
        raise
    ingest_url = _start_http_ingest(config, run_dir, detached, (trainer, buffer, *shards, controller))
    ray.get(controller.attach.remote(trainer, buffer, supervise=True))
    wait_for_snapshot(controller)
    return RunHandle(RunConfig.model_validate(cfg), controller, trainer, buffer, ingest_url, tuple(shards))


def check_new_run(config: RunConfig, resume: bool = False, resume_from: str | None = None) -> str | None:
    """Refuse a name that is running or a directory that holds a run (unless resuming);
    return the checkpoint directory to resume from."""
    ns = config.namespace
    if actor_name(config.name, "controller") in {
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns
    }:
        running = f"a run named {config.name!r} is already running; pick another --name or stop it first"
        status = _status_of(config.name, ns)
        if status is None:  # not answering: perhaps going away (a shutdown just killed it)
            try:
                _wait_gone(config.name, ns, timeout=15.0)
            except ValueError:
                raise ValueError(running) from None
        elif status not in ("stopped", "failed"):
            raise ValueError(running)
        else:
            log.info("run %s had ended (%s); releasing its actors", config.name, status)
            release_run(config.name, ns)  # a detached run that ended: nothing of it is still at work
            _wait_gone(config.name, ns)
    run_dir = config.resolved_run_dir
    check_shards(run_dir, config.buffer_shards)
    if resume:
        ckpts = list_checkpoints(run_dir / "checkpoints")
        if resume_from is not None:
            ckpts = [c for c in ckpts if c.id == resume_from]
        if not ckpts:
            what = f"checkpoint {resume_from!r}" if resume_from else "checkpoints"
            raise ValueError(f"cannot resume: no {what} in {run_dir / 'checkpoints'}")
        path = run_dir / "checkpoints" / ckpts[-1].id
        check_workers(path, config.workers)
        return str(path)
    if (run_dir / "commands.jsonl").exists():
        raise ValueError(f"{run_dir} already holds a run: {how_to_resume(config)}, or choose another name or run_dir")
    return None


def check_shards(run_dir: Path, shards: int) -> None:
    """Rows a shard acknowledged may not be merged into the primary yet: a run goes on with
    at least as many shards as its directory holds."""
    held = [int(p.name.split("-", 1)[1]) for p in (run_dir / "buffer").glob("shard-*") if p.name.split("-", 1)[1].isdigit()]
    if held and max(held) >= shards:
        raise ValueError(f"{run_dir / 'buffer'} holds {max(held) + 1} buffer shards, whose rows may not all be merged "
                         f"into the first yet: go on with --buffer-shards {max(held) + 1} (or more), not {shards}")


def check_workers(checkpoint: Path, workers: int) -> None:
    """A checkpoint holds one data position per worker: resume it with as many."""
    position = json.loads((checkpoint / "state.json").read_text())["state"].get("data_position") or {}
    saved = len(position["ranks"]) if "ranks" in position else 1
    if saved != workers:
        raise ValueError(f"cannot resume: checkpoint {checkpoint.name} was written by {saved} worker(s) (one data "
                         f"position each); resume it with --workers {saved}, not {workers}")


def _status_of(name: str, namespace: str) -> str | None:
    """The status a run's controller reports (None if it does not answer)."""
    try:
        controller = ray.get_actor(actor_name(name, "controller"), namespace=namespace)
        return str(ray.get(controller.status.remote(), timeout=30)["status"])
    except Exception:  # noqa: BLE001 - gone or not answering: treated as running, refused
        return None


def _wait_released(ours: dict[str, Any], namespace: str, timeout: float = 30.0) -> bool:
    """Until none of these names (name -> actor handle) is held by that actor any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = []
        for name, actor in ours.items():
            try:
                held.append(ray.get_actor(name, namespace=namespace) == actor)
            except ValueError:  # the name is free
                held.append(False)
        if not any(held):
            return True
        time.sleep(0.1)
    return False


def _wait_gone(name: str, namespace: str, timeout: float = 30.0) -> None:
    """Until the run's named actors are gone (ray.kill is asynchronous)."""
    deadline = time.monotonic() + timeout
    prefix = f"{name}."
    while time.monotonic() < deadline:
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace}
        if not any(n.startswith(prefix) for n in names):
            return
        time.sleep(0.1)
    raise ValueError(f"the actors of the ended run {name!r} did not go away within {timeout:g} s")


def _start_http_ingest(config: RunConfig, run_dir: Path, detached: bool, actors: tuple[Any, ...]) -> str | None:
    """Serve HTTP ingest if the config asks for it; if that fails, the run's actors go too."""
    if config.http_ingest is None:
        return None
    from ray_interactive.runtime.ingest_server import MiB, start_ingest_server

    h = config.http_ingest
    try:
        url, _ = start_ingest_server(
            config.name, h.host, h.port, namespace=config.namespace, run_dir=run_dir,
            max_body_bytes=int(h.max_body_mb * MiB), detached=detached,
        )
    except ValueError:
        for actor in actors:
            ray.kill(actor)
        raise
    log.info("HTTP ingest at %s (bearer token in %s)", url, run_dir / "ingest_token")
    return url


def wait_for_snapshot(controller: Any, timeout: float = 60.0) -> None:
    """Return once the trainer has described itself, so commands validate right away."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.get(controller.snapshot.remote()):
            return
        time.sleep(0.05)
    raise TimeoutError("the trainer did not start within a minute")


def replay_run(source_dir: Path, name: str, run_dir: Path | None = None, address: str | None = None) -> RunHandle:
    """Start a new run with ``source_dir``'s config and replay its applied commands.

    The new run starts paused, receives every applied command pinned to the step where it
    took effect (``at_step``), then resumes; on the CPU it reproduces the original losses.
    """
    source_dir = Path(source_dir)
    if not (source_dir / "config.json").exists():
        raise ValueError(f"{source_dir} is not a run directory (no config.json)")
    config = RunConfig.load(source_dir / "config.json").model_copy(
        update={"name": name, "run_dir": run_dir, "start_paused": True}
    )
    handle = start_run(config, address=address)
    client = handle.client()
    submit_replay(client, source_dir)
    client.send("resume", source="replay")  # not pinned: pinned commands keep their order
    return handle


def submit_replay(client: RunClient, source_dir: Path) -> int:
    """Submit ``source_dir``'s applied commands to ``client``'s run, each pinned to the step
    where it took effect (a rejected one is logged); returns how many were accepted."""
    from ray_interactive.core.command_log import replay_commands

    accepted = 0
    for cmd in replay_commands(Path(source_dir) / "commands.jsonl"):
        rec = client.submit(cmd)
        if rec.status.value == "rejected":
            log.warning("replay: %s rejected: %s", cmd.kind, rec.message)
        else:
            accepted += 1
    return accepted
