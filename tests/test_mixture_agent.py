"""The mixture agent on a real run: at an evaluation it reads each source's own held-out
loss and moves sampling weight toward the source that lags, through a journalled,
applied ``set_data_mixture``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ray_interactive.agents.guardrails import Guardrails
from ray_interactive.agents.mixture import MixturePolicy
from ray_interactive.agents.runtime import AgentRunner

from .conftest import regression_config, wait_until


def test_the_mixture_agent_moves_weight_toward_the_lagging_source(tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path, task_kwargs={"extra_source": True}, eval_every=10))
    client = handle.client()
    track = {"base": "eval/base/loss", "extra": "eval/extra/loss"}
    wait_until(lambda: set(track.values()) <= set(client.metric_keys()), what="per-source evaluations")
    policy = MixturePolicy(track, min_change=0.0, floor=0.1, cap=0.9)
    runner = AgentRunner(client, policy, Guardrails(min_interval_s=0.0), at_eval=True)
    entry = runner.tick()
    (sent,) = entry["sent"]
    assert sent["status"] in ("accepted", "applied")
    client.wait(sent["id"])
    figures, before, after = (entry["finding"][k] for k in ("figures", "before", "after"))
    worse = max(figures, key=lambda s: figures[s])
    assert after[worse] > before[worse]  # more of the source that lags
    share = {s: after[s] / sum(after.values()) for s in after}
    assert all(0.1 - 1e-9 <= v <= 0.9 + 1e-9 for v in share.values())
    mixture = wait_until(lambda: (m := client.snapshot()["mixture"]) and m[worse] == pytest.approx(after[worse]) and m,
                         what="the run to take the new mixture")
    assert mixture["extra"] == pytest.approx(after["extra"])
    (cmd,) = [c for c in client.commands() if c["kind"] == "set_data_mixture"]
    assert cmd["status"] == "applied" and cmd["comment"].startswith(f"[mixture] {worse} lags")
