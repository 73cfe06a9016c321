"""A run on a simulated 4-node Ray cluster (``ray.cluster_utils.Cluster``: a head and three
worker nodes, each a real raylet with its own object store), one node removed mid-run.

Run by ``tests/test_multinode.py`` in a process of its own (a driver joins one cluster,
and the test session already has one). Prints one JSON line, ``RESULT {...}``, that the
test checks:

* the two DDP ranks and the two buffer shards run on different nodes;
* clients ingest throughout; a node holding a rank (and a shard, where one does) is removed
  (``remove_node``); Ray brings the shard back on another node from the run directory
  (storage every node reaches: here one machine's disk); the trainer's lost rank is
  restarted from the newest checkpoint; training goes on;
* every acknowledged row is in the primary exactly once.

    python tests/multinode_scenario.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.cluster_utils import Cluster

from ray_interactive.core.config import BufferConfig, RunConfig, TaskSpec
from ray_interactive.examples.regression import live_schema, make_table
from ray_interactive.runtime.launch import start_run

IN_DIM = 32
NODE_ARGS: dict[str, Any] = {"object_store_memory": 150 * 2**20}


def live_rows(start: int, n: int) -> Any:
    import pyarrow as pa

    t = make_table(n, IN_DIM, seed=start)
    return pa.table({"x": t.column("x"), "y": np.arange(start, start + n, dtype=np.float32)}, schema=live_schema(IN_DIM))


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.2)


def train_worker_nodes() -> list[str]:
    """Nodes of the Ray Train workers alive now (GCS's actor table; no dashboard needed)."""
    from ray._private.state import actors

    return [a["Address"]["NodeID"] for a in actors().values()
            if a["State"] == "ALIVE" and "RayTrainWorker" in a.get("ActorClassName", "")]


def scorer_deployment() -> Any:
    """A small model on Ray Serve, two replicas (spread over the nodes by Serve), each with
    a ``ReplicaLink``: it follows the run's weights and logs every request it answers as a
    row of the live source, answering only once the row is acknowledged (durable)."""
    import asyncio

    from ray import serve

    # On the "data" nodes, where Serve spreads them: the node lost holds a replica too.
    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0, "resources": {"data": 0.01}},
                      health_check_period_s=1.0,
                      health_check_timeout_s=10.0, graceful_shutdown_timeout_s=5.0)
    class Scorer:
        def __init__(self, run: str, namespace: str) -> None:
            import torch

            import ray_interactive as ri
            from ray_interactive.examples.regression import RegressionTask

            self.torch = torch
            self.model = RegressionTask(in_dim=IN_DIM).build_model().eval()
            self.link = ri.ReplicaLink(run, self.model, namespace=namespace, max_delay_s=0.005)
            self.node = ray.get_runtime_context().get_node_id()

        async def score(self, i: int) -> dict[str, Any]:
            row = live_rows(i, 1)
            with self.link.lock, self.torch.inference_mode():
                x = self.torch.tensor(np.stack(row.column("x").to_numpy(zero_copy_only=False)), dtype=self.torch.float32)
                self.model(x)
                version = self.link.version
            ack = await asyncio.wrap_future(self.link.log(row, "live"))
            self.link.answered()
            return {"id": i, "ack": ack, "node": self.node, "replica": self.link.name, "version": version}

        def __del__(self) -> None:
            self.link.close(timeout=5)

    return Scorer


def scenario(run_dir: Path, out: dict[str, Any]) -> None:
    t_start = time.monotonic()
    # The head takes no rank (0 CPUs) but the run's controller and trainer actor (custom
    # resource "head": the control plane stays with the GCS, without which no node works);
    # a rank fits a worker node (1 CPU): the two ranks land on two of the three, the third
    # is where a lost one comes back. The shards need "data": nodes 0 and 1 have it, so
    # one of them holds a rank and a shard whatever Ray chooses.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"head": 1}, **NODE_ARGS})
    nodes = [cluster.add_node(num_cpus=1, resources={"data": 1} if i < 2 else {}, **NODE_ARGS) for i in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="multinode", logging_level="WARNING")
    config = RunConfig(
        name="multinode",
        task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask",
                      kwargs={"in_dim": IN_DIM, "live_source": True, "live_weight": 0.5, "pace_s": 0.01}),
        run_dir=run_dir,
        workers=2,
        buffer_shards=2,
        checkpoint_every=10,
        publish_every=10,
        max_restarts=5,
        torch_threads=1,
        buffer=BufferConfig(pull_interval_s=0.05),
        placement={"controller": {"head": 0.01}, "trainer": {"head": 0.01}, "buffer": {"data": 0.01}},
    )
    handle = start_run(config)
    client = handle.client()
    out.update(head=cluster.head_node.node_id, workers=[n.node_id for n in nodes])
    wait_until(lambda: client.status()["step"] >= 5, 180, "training to start")
    out["rank_nodes"] = train_worker_nodes()
    out["shard_nodes"] = [ray.get(handle.buffer.node_id.remote()), ray.get(handle.shards[0].node_id.remote())]
    out["controller_node"] = ray.get(handle.controller.node_id.remote())
    out["trainer_node"] = ray.get(handle.trainer.node_id.remote())

    from ray_interactive.runtime.serving import deploy, undeploy

    served = deploy(scorer_deployment().bind(config.name, config.namespace), "scorer")
    acked: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    errors: list[str] = []
    stop = threading.Event()

    def serve_loop() -> None:
        i = 5_000_000
        while not stop.is_set():
            try:  # a request on a lost replica fails; the caller asks again (a new row id)
                answers.append(served.score.remote(i).result(timeout_s=60))
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(f"serve: {type(e).__name__}")
            i += 1
            time.sleep(0.01)

    def ingest_loop() -> None:
        i = 0
        while not stop.is_set():
            try:
                acked.append(client.ingest(live_rows(i * 4, 4), "live", batch_id=f"m{i}", timeout=180))
            except Exception as e:  # noqa: BLE001 - the test reports it
                errors.append(f"{type(e).__name__}: {e}")
                return
            i += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=f, daemon=True) for f in (ingest_loop, serve_loop)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 30 and len({a["node"] for a in answers}) >= 2, 180,
               "ingests and answers from both replicas")
    out["replica_nodes"] = sorted({a["node"] for a in answers})
    # The node to lose: one holding a rank and, where one does, a buffer shard too.
    holders = [n for n in nodes if n.node_id in out["rank_nodes"]]
    victim = max(holders, key=lambda n: (n.node_id in out["shard_nodes"]) + (n.node_id in out["replica_nodes"]))
    out["removed"] = victim.node_id
    out["step_before"] = client.status()["step"]
    out["acked_before"] = len(acked)
    answered_before = len(answers)
    cluster.remove_node(victim)
    t_removed = time.monotonic()
    wait_until(lambda: len(acked) >= out["acked_before"] + 30, 240, "ingests to go on without the node")
    wait_until(lambda: len({a["replica"] for a in answers[answered_before:] if a["node"] != victim.node_id}) >= 2,
               240, "two replicas to answer again, on nodes that are still there")
    try:
        wait_until(lambda: client.status()["step"] >= out["step_before"] + 20, 240, "training to go on without the node")
    finally:
        out["status_after_loss"] = client.status()
    out["heal_s"] = round(time.monotonic() - t_removed, 1)
    out["rank_nodes_after"] = train_worker_nodes()
    stop.set()
    for t in threads:
        t.join(timeout=200)
    late = answers[-50:]  # after the replacement replica is up: none from the lost node
    out["replica_nodes_after"] = sorted({a["node"] for a in late})
    out["replicas_after"] = len({a["replica"] for a in late})
    out["answers"] = len(answers)
    out["served_versions"] = sorted({a["version"] for a in answers})
    out["errors"] = errors
    out["shard_nodes_after"] = [ray.get(handle.buffer.node_id.remote()), ray.get(handle.shards[0].node_id.remote())]
    undeploy("scorer")
    # Every row acknowledged to a client or to a replica; a replica's rows share coalesced
    # ingests, so the sum of its acks overcounts: count the ids.
    expected = np.concatenate([np.arange(int(a["batch_id"][1:]) * 4, int(a["batch_id"][1:]) * 4 + 4) for a in acked]
                              + [np.array([a["id"] for a in answers])])
    total = len(expected)
    wait_until(lambda: client.sources()["live"]["rows"] >= total, 120, "the primary to merge every shard")
    stored = client.read_rows("live", columns=["y"]).column("y").to_numpy().astype(np.int64)
    out["acked_rows"] = total
    out["stored_rows"] = len(stored)
    out["unique_rows"] = len(np.unique(stored))
    out["missing"] = int(len(np.setdiff1d(expected, stored)))
    out["status"] = client.status()["status"]
    out["step_after"] = client.status()["step"]
    client.stop()
    handle.wait(timeout=120)
    handle.shutdown()
    out["seconds"] = round(time.monotonic() - t_start, 1)
    ray.shutdown()
    cluster.shutdown()


def main(run_dir: Path) -> None:
    out: dict[str, Any] = {}
    try:
        scenario(run_dir, out)
    finally:  # what was seen, also when a step failed
        print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
