"""The CLI from a separate process, as a user types it: attach by name, steer, read logs.
And the README's main command, end to end, with a short duration."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.cli import command_payload, parse_assignments

from .conftest import PACE_S, REPO, SHARED_DATA, assert_plain, regression_config

CLI = [str(Path(sys.executable).parent / "ray-interactive")]


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}, cwd=REPO
    )


def test_shorthand_assignments_build_commands() -> None:
    assert command_payload("update_optimizer", parse_assignments(["lr=1e-4", "group=decay"])) == {
        "kind": "update_optimizer",
        "params": {"lr": 1e-4},
        "group": "decay",
    }
    assert command_payload("set_data_mixture", parse_assignments(["base=0.7", "live=0.3"]))["weights"] == {
        "base": 0.7,
        "live": 0.3,
    }
    assert parse_assignments(["betas=[0.9,0.95]", "a.b=x"]) == {"betas": [0.9, 0.95], "a": {"b": "x"}}


def test_arguments_that_are_not_text_or_out_of_range_are_refused_in_one_line_before_anything_is_sent() -> None:
    """A byte that is not UTF-8 (``--comment $'\\xff'``: a lone surrogate in Python's argv)
    used to reach ray.init and come back as a long Ray traceback. Nothing connects here: an
    unreachable address would say so if anything tried."""
    nowhere = {"RAY_ADDRESS": "127.0.0.1:9"}
    cases = [
        (["send", "r", "pause", "--comment", "\udcff"], "error: argument --comment: not valid text: byte 0xff at position 0"),
        (["send", "r", "update_optimizer", "lr=\udcff1"], "error: argument key=value: not valid text: byte 0xff at position 3"),
        (["send", "r\udcc3", "pause"], "error: argument run: not valid text: byte 0xc3 at position 1"),
        (["--namespace", "\udcfe", "status", "r"], "error: argument --namespace: not valid text: byte 0xfe"),
        (["send", "r", "pause", "--wait", "--timeout", "nan"], "argument --timeout: expected a number of seconds from 0 to 1e9, got 'nan'"),
        (["--namespace", "", "status", "r"], "argument --namespace: must not be empty"),  # was Ray's traceback
        (["ui", "r", "--ui-port", "99999"], "argument --ui-port: expected a port from 0 to 65535, got '99999'"),
        (["run", "--example", "regression", "--http-ingest", "99999"], "expected [HOST:]PORT with a port from 0 to 65535"),
        (["run", "--example", "regression", "--set", "batch_size=0", "--set", "schedule.kind=exp"],
         "error: invalid run configuration: batch_size must be greater than or equal to 1, got 0; "
         "schedule.kind must be one of 'constant', 'linear', 'cosine' or 'step', got 'exp'"),
    ]
    for args, message in cases:
        out = cli(*args, timeout=60, **nowhere)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, (args, out.stderr)
        assert_plain(out.stderr.splitlines()[-1], limit=300)
        assert "Traceback" not in out.stderr and "cannot reach" not in out.stderr, out.stderr
    out = cli("send", "r", "pause", "--comment", "\udcff", **nowhere)
    assert out.stderr.count("\n") == 1 and out.stdout == ""  # one line, nothing else
    out = cli("cancel", "r", "\u00b2", **nowhere)  # "²".isdigit(), but int("²") raised
    assert "Traceback" not in out.stderr and out.returncode == 2, out.stderr


def test_attach_from_another_process_and_steer(ray_cluster: dict[str, Any], tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path, name="cli-run"))
    client = handle.client()
    addr = ["--address", ray_cluster["address"]]

    out = cli(*addr, "send", "cli-run", "update_optimizer", "lr=4e-4", "--wait")
    assert out.returncode == 0, out.stderr
    assert "update_optimizer: accepted" in out.stdout and "applied at step" in out.stdout
    assert client.snapshot()["groups"][0]["hparams"]["lr"] == pytest.approx(4e-4)

    out = cli(*addr, "send", "cli-run", "update_optimizer", "lr=-1")
    assert out.returncode == 1 and "rejected: lr must be in (0, 10], not -1" in out.stdout

    out = cli(*addr, "status", "cli-run")
    assert out.returncode == 0 and "cli-run: running | step" in out.stdout and "loss =" in out.stdout

    out = cli(*addr, "log", "cli-run")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert any(re.search(r" cli .*update_optimizer +applied +@\d+", x) for x in lines), lines
    assert any("rejected" in x and "lr must be" in x for x in lines)

    out = cli(*addr, "runs")
    assert "cli-run" in out.stdout.split()
    rows = client.commands()
    assert [r["source"] for r in rows] == ["cli", "cli"]

    # As the README says, from a fresh shell: no --address, no Ray variables set at all
    # (Ray reads RAY_AUTH_MODE at import; the package sets it before that).
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([*CLI, "status", "cli-run"], capture_output=True, text=True, timeout=120, env=bare, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cli-run: running | step" in out.stdout
    assert out.stderr == ""  # Ray's INFO lines (2 a call, with ANSI codes) are not the answer

    # The control API: with no way to Ray at all, the run directory's API answers, by path
    # or by name under the runs root, and prints nothing but the answer.
    run_dir = Path(handle.config.resolved_run_dir)
    assert (run_dir / "api_url").read_text().startswith("http://127.0.0.1:")
    assert (run_dir / "api_token").stat().st_mode & 0o777 == 0o600
    nowhere = {"RAY_ADDRESS": "127.0.0.1:9"}
    out = cli("status", str(run_dir), **nowhere)
    assert out.returncode == 0 and "cli-run: running | step" in out.stdout and out.stderr == "", out.stderr
    out = cli("--runs-dir", str(run_dir.parent), "send", "run", "update_optimizer", "lr=3e-4", "--wait", **nowhere)
    assert out.returncode == 0 and "applied at step" in out.stdout and out.stderr == "", out.stderr
    out = cli("log", "run", "-n", "1", RAY_INTERACTIVE_RUNS=str(run_dir.parent), **nowhere)
    assert re.search(r" cli .*update_optimizer +applied", out.stdout), out.stdout
    out = cli("send", str(run_dir), "update_optimizer", "lr=-1", **nowhere)
    assert out.returncode == 1 and "rejected: lr must be in (0, 10], not -1" in out.stdout
    out = cli("checkpoints", str(run_dir), **nowhere)
    assert out.returncode == 0 and out.stderr == ""
    assert client.snapshot()["groups"][0]["hparams"]["lr"] == pytest.approx(3e-4)
    check_api_refusals(run_dir)


def check_api_refusals(run_dir: Path) -> None:
    """The control API refuses what is not a request of its own with a JSON error."""
    url, token = (run_dir / "api_url").read_text().strip(), (run_dir / "api_token").read_text().strip()

    def call(path: str, body: bytes | None = None, auth: str | None = f"Bearer {token}") -> tuple[int, Any]:
        req = urllib.request.Request(url + path, data=body, headers={"Authorization": auth} if auth else {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert call("/v1/status", auth=None)[0] == 401
    assert call("/v1/status", auth="Bearer " + "x" * 43) == (401, {"error": "invalid token"})
    code, doc = call("/v1/status")
    assert code == 200 and doc["run"] == "cli-run"
    code, doc = call("/v1/commands", body=b"{not json")
    assert code == 400 and "must be a command as JSON" in doc["error"]
    code, doc = call("/v1/commands?source=cli", body=json.dumps({"kind": "warp_speed"}).encode())
    assert code == 200 and doc["status"] == "rejected" and "warp_speed" in doc["message"]
    code, doc = call("/v1/commands?source=nobody", body=json.dumps({"kind": "pause"}).encode())
    assert code == 200 and doc["status"] == "rejected" and "source" in doc["message"]
    assert call("/v1/commands/no-such-id")[0] == 404
    code, doc = call("/v1/metrics?since=-3")
    assert code == 400 and "since must be a whole number" in doc["error"]
    code, doc = call("/v1/commands/x?wait=99")
    assert code == 400 and "wait must be" in doc["error"]
    code, doc = call("/v1/nothing")
    assert code == 404 and "GET /v1/status" in doc["error"]
    code, doc = call("/v1/metrics?keys=loss&since=0")
    assert code == 200 and doc["loss"]["value"], doc


def test_clear_errors_for_missing_run_bad_args_and_unreachable_cluster(ray_cluster: dict[str, Any]) -> None:
    out = cli("--address", ray_cluster["address"], "status", "no-such-run")
    assert out.returncode == 2 and "no run named 'no-such-run'" in out.stderr
    out = cli("--address", "127.0.0.1:9", "status", "x")
    assert out.returncode == 2 and "cannot reach a Ray cluster at 127.0.0.1:9" in out.stderr
    out = cli("status", "x", RAY_ADDRESS="127.0.0.1:9")  # the environment is honoured too
    assert out.returncode == 2 and "cannot reach a Ray cluster at 127.0.0.1:9" in out.stderr
    out = cli("--address", ray_cluster["address"], "send", "x", "warp_speed")
    assert out.returncode == 2 and "unknown command kind 'warp_speed'" in out.stderr
    # ray.init records the command line: a byte that is not UTF-8 in it was a Ray traceback
    out = cli("--address", ray_cluster["address"], "send", "x", "pause", "--comment", "\udcff")
    assert out.returncode == 2 and out.stderr.startswith("error: argument --comment: not valid text: byte 0xff")
    assert "Traceback" not in out.stderr
    out = cli("run", "--example", "regression", "--set", "batch_size=0")
    assert out.returncode == 2 and "batch_size" in out.stderr and "greater than or equal to 1" in out.stderr
    out = cli("run", "--example", "regression", "--set", "bogus=1")
    assert out.returncode == 2 and "bogus" in out.stderr
    out = cli("run", "--config", "/nonexistent/run.json")
    assert out.returncode == 2 and "cannot read /nonexistent/run.json" in out.stderr
    out = cli("run", "--config", str(REPO / "README.md"))
    assert out.returncode == 2 and "is not valid JSON" in out.stderr


@pytest.mark.slow
def test_lm_demo_runs_its_tour_and_exits_cleanly(tmp_path: Path) -> None:
    """`make demo-lm` with a short duration: trains, takes the tour's commands, stops."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        ["make", "demo-lm", "DURATION=15", f"DATA={SHARED_DATA / 'wikitext-2'}", f"DEMO_ARGS=--run-dir {tmp_path / 'demo'} --no-ui"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "stopped at step" in text
    assert "save_checkpoint" in text and "applied at step" in text
    assert "rejected: lr must be in (0, 10]" in text
    assert (tmp_path / "demo" / "checkpoints").is_dir()


def test_resume_from_the_cli_extends_max_steps(ray_cluster: dict[str, Any], tmp_path: Path) -> None:
    """`run --resume DIR --max-steps N` continues a finished run to N steps."""
    run_dir = tmp_path / "r"
    common = ["--quiet", "--run-dir", str(run_dir), "--set", "torch_threads=1", "--set", "trainer_num_cpus=0"]
    addr = ["--address", ray_cluster["address"]]
    first = cli(*addr, "run", "--example", "regression", "--name", "cli-resume", "--max-steps", "20", *common, timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "stopped at step 20" in first.stdout
    again = cli(*addr, "run", "--resume", str(run_dir), "--max-steps", "35", *common, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stopped at step 35" in again.stdout
    out = cli(*addr, "run", "--resume", str(run_dir), "--name", "other", timeout=60)
    assert out.returncode == 2 and "cannot be renamed" in out.stderr


def test_a_finished_run_is_read_from_its_directory_and_a_duration_stop_is_the_systems(
    ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    """After a run has ended its actors are gone: status, log and checkpoints read its run
    directory (by name under ./runs, or by path, with or without a cluster)."""
    run_dir = tmp_path / "runs" / "done-run"
    addr = ["--address", ray_cluster["address"]]
    first = cli(*addr, "run", "--example", "regression", "--name", "done-run", "--duration", "6", "--quiet",
                "--task-arg", f"pace_s={PACE_S}",
                "--run-dir", str(run_dir), "--set", "torch_threads=1",
                "--set", "trainer_num_cpus=0", timeout=240)
    assert first.returncode == 0, first.stderr[-2000:]

    def here(*args: str, **env: str) -> subprocess.CompletedProcess[str]:  # from the directory that holds runs/
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**os.environ, **env})

    out = here(*addr, "status", "done-run")
    assert out.returncode == 0, out.stderr
    assert re.search(r"done-run: stopped \| step \d+ \| branch main", out.stdout), out.stdout
    assert f"finished: read from {run_dir}" in out.stdout and out.stderr == "", out.stderr
    assert not (run_dir / "api_url").exists()  # the API went with the run: nothing to try
    out = here("status", "done-run", RAY_ADDRESS="127.0.0.1:9")  # and no Ray is asked
    assert out.returncode == 0 and "done-run: stopped" in out.stdout and out.stderr == "", out.stderr
    out = here(*addr, "log", "done-run")
    assert out.returncode == 0 and re.search(r"#\d+ system stop +applied", out.stdout), out.stdout
    rows = [json.loads(x) for x in here(*addr, "log", "done-run", "--json").stdout.splitlines()]
    assert [(r["source"], r["comment"]) for r in rows if r["kind"] == "stop"] == [("system", "--duration 6 s reached")]
    out = here(*addr, "checkpoints", "done-run")
    assert out.returncode == 0 and "final" in out.stdout
    # No cluster at all (nothing listens at that address): the directory still answers.
    out = here("--address", "127.0.0.1:9", "status", str(run_dir))
    assert out.returncode == 0 and "done-run: stopped" in out.stdout, out.stderr
    # It cannot be steered, and says how to go on.
    out = here(*addr, "send", "done-run", "pause")
    assert out.returncode == 2 and "resume it with" in out.stderr and str(run_dir) in out.stderr
