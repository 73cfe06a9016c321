"""The cluster: `ray_cluster.yaml` passes Ray's own launcher checks offline, and a run
submitted as a Ray job (the test cluster's job server, with its token auth) is attached
to, steered and stopped from another process, and the job ends SUCCEEDED."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import ray_interactive as ri

from .conftest import PACE_S, REPO, wait_until


def launcher_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def check(doc: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(doc)))


def test_ray_cluster_yaml_is_a_valid_launcher_config() -> None:
    doc = launcher_config()
    check(doc)
    assert doc["head_node_type"] in doc["available_node_types"]
    assert any("torch==2.13.0" in c for c in doc["setup_commands"]), "the pinned torch first"
    assert any("pip install" in c and "ray_interactive" in c for c in doc["setup_commands"])
    misspelt = {**doc, "max_wrkers": 3}  # a wrong key fails, as it would in `ray up`
    with pytest.raises(Exception, match="max_wrkers"):
        check(misspelt)
    no_head = {**doc, "head_node_type": "nope"}
    with pytest.raises(ValueError, match="head_node_type"):
        check(no_head)


def test_rayignore_keeps_the_environment_and_runs_out_of_a_job() -> None:
    ignored = (REPO / ".rayignore").read_text().split()
    for path in (".venv/", "runs/", ".git/", "test-artifacts/", "__pycache__/"):
        assert path in ignored


def test_a_run_submitted_as_a_job_is_steered_and_ends_succeeded(ray_cluster: dict[str, Any], tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    name = "job-run"
    submit = subprocess.run(
        [sys.executable, "-m", "ray_interactive.cli", "--runs-dir", str(tmp_path / "runs"), "submit",
         "--address", ray_cluster["jobs"], "--working-dir", str(REPO), "--job-id", f"ri-test-{tmp_path.name}", "--",
         "run", "--example", "regression", "--name", name, "--quiet", "--task-arg", f"pace_s={PACE_S}"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert submit.returncode == 0, submit.stderr
    assert "submitted job ri-test-" in submit.stdout
    assert f"runs in: {tmp_path / 'runs'}" in submit.stdout
    jobs = JobSubmissionClient(ray_cluster["jobs"])
    job = f"ri-test-{tmp_path.name}"

    def attached() -> Any:
        status = jobs.get_job_status(job)
        assert not status.is_terminal(), f"the job ended {status.value}: {jobs.get_job_logs(job)[-2000:]}"
        try:
            client = ri.connect(name)
        except ri.RunNotFound:
            return None
        return client if client.status()["status"] == "running" else None

    client = wait_until(attached, timeout=240, interval=0.5, what="the job's run to train")
    rec = client.wait(client.send("update_optimizer", params={"lr": 5e-4}), timeout=120)
    assert rec.status.value == "applied", rec.message
    assert client.snapshot()["groups"][0]["hparams"]["lr"] == pytest.approx(5e-4)
    client.stop(timeout=120)
    status = wait_until(lambda: (s := jobs.get_job_status(job)).is_terminal() and s, timeout=180, interval=0.5,
                        what="the job to end")
    logs = jobs.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"run {name}: stopped" in logs
    # The run directory outlived the job's upload folder (Ray deletes that): the CLI reads it
    # afterwards by name, with no cluster asked.
    run_dir = tmp_path / "runs" / name
    assert (run_dir / "config.json").is_file() and (run_dir / "commands.jsonl").is_file()
    out = subprocess.run([sys.executable, "-m", "ray_interactive.cli", "--runs-dir", str(tmp_path / "runs"), "status", name],
                         capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})
    assert out.returncode == 0 and f"{name}: stopped" in out.stdout, out.stderr
