"""Guarded rollout on a real cluster: 2 Ray Serve replicas follow a run's weights; a new
version reaches the canary first; the judge promotes what holds its guard and rolls back
what does not. Poisoned rows in the buffer make bad versions, which never reach more than
the canary. Promote, roll back and pin by hand, from the UI's commands."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from ray import serve

import ray_interactive as ri
from ray_interactive.core.config import Guard, RolloutConfig
from ray_interactive.examples.regression import RegressionTask, columns_to_tensors, live_schema, make_table

from .conftest import regression_config, wait_until
from .served_regression import RegressionModel

HELDOUT = make_table(512, 32, 99)


def heldout_loss(model: torch.nn.Module) -> dict[str, float]:
    x, y = columns_to_tensors(HELDOUT, torch.device("cpu"))
    return {"loss": F.mse_loss(model(x).squeeze(-1), y).item()}


def poison(n: int, seed: int) -> pa.Table:
    t = make_table(n, 32, seed)  # the right inputs, deliberately wrong targets
    y = np.random.default_rng(seed).choice([-40.0, 40.0], n).astype(np.float32)
    return pa.table({"x": t.column("x"), "y": y}, schema=live_schema(32))


def own_answers(served: Any, x: list[float], want: set[str] | None = None) -> dict[str, float] | None:
    """The answers to ``x`` of the replicas serving version 0 (their own weights): of every
    replica in ``want``, else of those that do now (None: none of them answered so yet)."""
    got: dict[str, float] = {}
    for _ in range(10):  # requests at once, so the router spreads them over both replicas
        for a in [r.result(timeout_s=30) for r in [served.predict.remote(x) for _ in range(8)]]:
            if a["version"] == 0:
                got[a["replica"]] = a["y"]
        if got and (want is None or want <= set(got)):
            return got
    return None


def test_bad_versions_never_reach_more_than_the_canary(tmp_path: Any, start: Any) -> None:
    config = regression_config(
        tmp_path, task_kwargs={"live_source": True, "live_weight": 0.0}, publish_every=10, weights_keep=4,
        rollout=RolloutConfig(enabled=True, guards={"loss": Guard(better="lower", margin=0.5)}), start_paused=True,
    )
    handle = start(config)
    client = handle.client()
    app = f"{config.name}-model"
    ri.deploy(RegressionModel.options(num_replicas=2).bind(config.name), app)
    model = serve.get_app_handle(app)
    x = HELDOUT.column("x")[0].as_py()
    # (the trainer publishes version 1 as it starts: the canary may serve it already)
    own = wait_until(lambda: own_answers(model, x), timeout=60, what="a replica's answer with its own weights")
    client.send("resume")
    judge = ri.CanaryJudge(client, RegressionTask().build_model().eval(), heldout_loss, poll_s=0.2)
    try:
        judge.start()
        # clean training: a version is promoted and every replica moves to it
        promoted = wait_until(lambda: client.rollout()["stable"] or None, timeout=120, what="a promoted version")
        wait_until(lambda: [r for r in client.replicas() if r["alive"] and r["version"] >= promoted] if len(
            [r for r in client.replicas() if r["alive"] and r["version"] >= promoted]) == 2 else None,
            timeout=60, what="both replicas on a promoted version")

        # poisoned rows only: the versions trained on them are worse
        for i in range(20):
            client.ingest(poison(64, i), "live")
        client.send("set_data_mixture", weights={"base": 0.0, "live": 1.0})
        wait_until(lambda: client.rollout()["rejected"] or None, timeout=180, what="a bad version rolled back")
        view = client.rollout()
        bad = set(view["rejected"])
        good = {d["version"] for d in view["decisions"] if d["action"] == "promoted"}
        assert good and bad and not good & bad
        canaries = {r["name"] for r in view["replicas"] if r["canary"]} or {min(r["name"] for r in view["replicas"])}
        for r in view["replicas"]:
            served = set(r["versions_served"])
            if r["name"] not in canaries:  # a stable replica only ever served promoted versions
                assert served <= good | {0}, (r, good, bad)
        # every decision is a system command in the history, with its figures
        history = [h for h in client.commands() if h["kind"] in ("promote_version", "rollback_version")]
        assert {h["source"] for h in history} == {"system"}
        rb = next(h for h in history if h["kind"] == "rollback_version")
        figs = rb["args"]["figures"]
        assert figs["canary"]["loss"] > figs["stable"]["loss"] + 0.5 and rb["status"] == "applied"

        # by hand: pin every replica to the last good version, then unpin
        target = max(good)
        rec = client.send("pin_version", source="ui", version=target)
        assert rec.status.value == "applied", rec.message
        wait_until(lambda: all(r["version"] == target for r in client.replicas() if r["alive"]) or None,
                   timeout=60, what="every replica on the pinned version")
        assert client.send("promote_version").status.value == "rejected"  # pinned: nothing to promote
        # pinned to version 0: each replica answers with the weights it started with again
        # (it kept what the versions it loaded overwrote)
        assert client.send("pin_version", source="ui", version=0).status.value == "applied"
        wait_until(lambda: all(r["version"] == 0 for r in client.replicas() if r["alive"]) or None,
                   timeout=60, what="every replica back on its own weights")
        back = wait_until(lambda: own_answers(model, x, set(own)), timeout=60, what="answers on version 0")
        assert {k: back[k] for k in own} == own
        assert client.send("pin_version", source="ui").status.value == "applied"
        assert client.rollout()["pinned"] is None
    finally:
        judge.stop()
        ri.undeploy(app)
