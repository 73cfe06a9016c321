"""The guarded rollout's logic in the controller: canary first, the verdict as a command,
stable replicas never on an unjudged version, decisions in the command history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ray_interactive.core.command_log import replay_commands
from ray_interactive.core.commands import CommandStatus
from ray_interactive.core.config import Guard, RolloutConfig, RunConfig, TaskSpec
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import ReplicaReport
from ray_interactive.core.rollout import decide
from ray_interactive.core.weights import WeightVersion

REGRESSION = "ray_interactive.examples.regression:RegressionTask"


def controller(tmp: Path, enabled: bool = True, keep: int = 8, recover: bool = False) -> Controller:
    rollout = RolloutConfig(enabled=enabled, guards={"loss": Guard(better="lower", margin=0.1)})
    return Controller(RunConfig(name="unit", task=TaskSpec(target=REGRESSION), run_dir=tmp / "run", rollout=rollout,
                                weights_keep=keep), recover=recover)


def publish(c: Controller, version: int) -> None:
    c.weights_published(WeightVersion(version=version, step=version, branch="main", time=time.time(), reason="periodic"))


def report(c: Controller, name: str, version: int) -> tuple[bool, int | None, bool]:
    o = c.replica_report(ReplicaReport(name=name, version=version, pid=1, host="h"))
    return o.follow, o.version, o.canary


def test_decide_holds_each_guard_within_its_margin_and_refuses_what_it_cannot_judge() -> None:
    guards = {"loss": Guard(better="lower", margin=0.1), "success": Guard(better="higher", margin=0.0)}
    assert decide({"loss": 1.0, "success": 0.5}, {"loss": 1.08, "success": 0.5}, guards).promote
    v = decide({"loss": 1.0, "success": 0.5}, {"loss": 1.2, "success": 0.6}, guards)
    assert not v.promote and any("loss" in r and "failed" in r for r in v.reasons)
    assert not decide({"loss": 1.0, "success": 0.5}, {"loss": 0.9, "success": 0.4}, guards).promote
    assert not decide({"loss": 1.0}, {"loss": float("nan"), "success": 1.0}, guards).promote
    assert not decide({"loss": 1.0, "success": 0.5}, {"success": 0.5}, guards).promote  # no loss figure
    assert decide({}, {"loss": 3.0, "success": 0.1}, guards).promote  # nothing to compare with: not worse


def test_a_guard_against_the_base_ignores_a_lucky_stable_and_bounds_what_adds_up() -> None:
    """Held to stable with no margin, one lucky stable figure blocks every later version; a
    guard against the base (version 0) does not, and small losses cannot add up past it."""
    to_stable = {"acc": Guard(better="higher", margin=0.0)}
    to_base = {"acc": Guard(better="higher", margin=0.03, against="base")}
    base, lucky_stable, canary = {"acc": 0.69}, {"acc": 0.72}, {"acc": 0.69}
    assert not decide(lucky_stable, canary, to_stable, base).promote
    v = decide(lucky_stable, canary, to_base, base)
    assert v.promote and "vs base 0.69" in v.reasons[0]
    assert not decide({"acc": 0.67}, {"acc": 0.65}, to_base, base).promote  # 4 points under the base, whatever stable is
    assert decide({"acc": 0.5}, {"acc": 0.9}, to_base, None).promote  # no base figure: nothing to compare with
    with pytest.raises(ValueError):
        Guard.model_validate({"against": "newest"})


def test_a_new_version_reaches_only_the_canary_until_it_is_promoted(tmp_path: Path) -> None:
    c = controller(tmp_path)
    for name in ("b", "a"):
        assert report(c, name, 0) == (False, 0, False)  # nothing promoted: their own weights
    publish(c, 1)
    assert report(c, "a", 0) == (False, 1, True)  # the first by name is the canary
    assert report(c, "b", 0) == (False, 0, False)
    publish(c, 2)  # while version 1 is judged, 2 waits
    assert c.rollout()["canary"] == 1
    rec = c.submit({"kind": "promote_version", "version": 1, "figures": {"canary": {"loss": 0.5}}}, source="system")
    assert rec.status is CommandStatus.APPLIED and rec.seq is None and "promoted" in (rec.message or "")
    assert "version 2 is the next canary" in (rec.message or "")
    assert report(c, "a", 1) == (False, 2, True) and report(c, "b", 0) == (False, 1, False)
    report(c, "b", 1)  # it moved to the promoted version
    rec = c.submit({"kind": "rollback_version", "figures": {"canary": {"loss": 9.0}}}, source="system")
    assert rec.status is CommandStatus.APPLIED and "rolled back" in (rec.message or "")
    assert report(c, "a", 2) == (False, 1, False)  # the canary back on stable
    publish(c, 3)
    assert c.rollout()["canary"] == 3 and c.rollout()["rejected"] == [2]
    view = c.rollout()
    assert [d["action"] for d in view["decisions"]] == ["promoted", "rolled back"]
    assert view["figures"]["1"] == {"loss": 0.5} and view["figures"]["2"] == {"loss": 9.0}
    replicas = {r["name"]: r for r in view["replicas"]}
    assert replicas["b"]["versions_served"] == [0, 1] and replicas["a"]["canary"]
    # not training commands: a replay of the log never sends them to a loop
    assert replay_commands(tmp_path / "run" / "commands.jsonl") == []


def test_bad_rollout_commands_are_refused_with_the_reason(tmp_path: Path) -> None:
    c = controller(tmp_path)
    assert "no canary to promote" in (c.submit({"kind": "promote_version"}).message or "")
    publish(c, 1)
    assert "is not the canary" in (c.submit({"kind": "promote_version", "version": 5}).message or "")
    assert "takes no at_step" in (c.submit({"kind": "rollback_version", "at_step": 10}).message or "")
    assert "no weights version 7" in (c.submit({"kind": "pin_version", "version": 7}).message or "")
    assert "no version is pinned" in (c.submit({"kind": "pin_version"}).message or "")
    off = controller(tmp_path / "off", enabled=False)
    publish(off, 1)
    assert "no guarded rollout" in (off.submit({"kind": "promote_version"}).message or "")
    assert report(off, "a", 0) == (True, None, False)  # without a rollout every replica follows the newest


def test_a_pin_holds_every_replica_and_unpinning_resumes_the_rollout(tmp_path: Path) -> None:
    c = controller(tmp_path)
    publish(c, 1)
    assert c.submit({"kind": "pin_version", "version": 1}, source="ui").status is CommandStatus.APPLIED
    assert report(c, "a", 0) == (False, 1, False) and report(c, "b", 0) == (False, 1, False)
    publish(c, 2)
    assert c.rollout()["canary"] is None  # the automatic rollout waits
    assert c.submit({"kind": "pin_version"}, source="ui").status is CommandStatus.APPLIED
    assert c.rollout()["canary"] == 2 and report(c, "a", 1) == (False, 2, True)


def test_stable_and_canary_versions_stay_kept_beyond_weights_keep(tmp_path: Path) -> None:
    c = controller(tmp_path, keep=2)
    publish(c, 1)
    c.submit({"kind": "promote_version"}, source="system")  # stable 1
    for v in range(2, 7):
        publish(c, v)  # 2 is the canary
    kept = [v["version"] for v in c.weight_versions()]
    assert 1 in kept and 2 in kept and 6 in kept and len(kept) == 4


def test_a_restarted_controller_keeps_the_decisions(tmp_path: Path) -> None:
    c = controller(tmp_path)
    publish(c, 1)
    c.submit({"kind": "promote_version"}, source="system")
    publish(c, 2)
    c.submit({"kind": "rollback_version"}, source="system")
    c.flush()
    again = controller(tmp_path, recover=True)
    view = again.rollout()
    assert view["stable"] == 1 and view["rejected"] == [2] and view["canary"] is None
    assert report(again, "a", 0) == (False, 1, False)


def test_with_no_canary_replicas_every_replica_stays_on_stable_until_the_verdict(tmp_path: Path) -> None:
    """``canary_replicas=0``: the judge's offline evaluation alone decides; no user is
    served an unjudged version, not even by a lone replica."""
    c = Controller(RunConfig(name="unit", task=TaskSpec(target=REGRESSION), run_dir=tmp_path / "run",
                             rollout=RolloutConfig(enabled=True, canary_replicas=0)))
    assert report(c, "only", 0) == (False, 0, False)
    publish(c, 1)
    assert c.rollout()["canary"] == 1  # waiting for the judge
    assert report(c, "only", 0) == (False, 0, False)  # still stable
    assert c.replicas()[0]["canary"] is False
    c.submit({"kind": "rollback_version", "version": 1, "figures": {"canary": {"loss": 9.0}}}, source="system")
    publish(c, 2)
    assert report(c, "only", 0) == (False, 0, False)
    c.submit({"kind": "promote_version", "version": 2, "figures": {"canary": {"loss": 0.1}}}, source="system")
    assert report(c, "only", 0) == (False, 2, False)  # promoted: now it serves it


@pytest.mark.parametrize("bad", [{"enabled": True, "canary_replicas": -1},
                                 {"enabled": True, "guards": {"loss": {"better": "sideways"}}},
                                 {"enabled": True, "guards": {"loss": {"margin": -1}}}])
def test_bad_rollout_configs_are_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        RolloutConfig.model_validate(bad)
