"""Where runs live: the runs root, and a job's runs kept out of Ray's upload folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_interactive.core.config import RunConfig
from ray_interactive.core.paths import JOB_RUNS_ROOT, RUNS_ENV, find_run_dir, runs_root


def test_the_runs_root_is_the_variable_else_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUNS_ENV, raising=False)
    assert runs_root() == Path("runs")
    assert RunConfig(name="a").resolved_run_dir == tmp_path / "runs" / "a"
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "shared"))
    assert RunConfig(name="a").resolved_run_dir == tmp_path / "shared" / "a"
    assert RunConfig(name="a", run_dir=tmp_path / "own").resolved_run_dir == tmp_path / "own"  # a run's own wins
    monkeypatch.setenv(RUNS_ENV, "~/x")
    assert runs_root() == Path.home() / "x"


def test_a_process_in_rays_upload_folder_keeps_its_runs_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's working_dir is Ray's temporary upload folder, deleted with the job: runs/
    there were lost (`status job1`: no such run)."""
    upload = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    upload.mkdir(parents=True)
    monkeypatch.chdir(upload)
    monkeypatch.delenv(RUNS_ENV, raising=False)
    assert runs_root() == Path(JOB_RUNS_ROOT).expanduser()
    assert not str(RunConfig(name="job1").resolved_run_dir).startswith(str(tmp_path))
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "runs"))  # what `submit` sets for the job
    assert RunConfig(name="job1").resolved_run_dir == tmp_path / "runs" / "job1"


def test_a_run_is_found_by_path_or_by_name_under_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "root" / "r1"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "root"))
    assert find_run_dir("r1") is None  # no config.json: not a run
    (run_dir / "config.json").write_text("{}")
    assert find_run_dir("r1") == run_dir
    assert find_run_dir(str(run_dir)) == run_dir
    assert find_run_dir("root/r1") == run_dir
    assert find_run_dir("nope") is None and find_run_dir("a\0b") is None
