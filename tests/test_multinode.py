"""A run on a simulated multi-node cluster (``ray.cluster_utils.Cluster``, 4 raylets on
this machine), one node removed mid-run: DDP ranks, buffer shards and Serve replicas on
different nodes come back elsewhere, and no acknowledged row is lost. The cluster lives in
a process of its own (``tests/multinode_scenario.py``): a driver joins one cluster, and the
session's is taken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.ray


def test_a_node_lost_mid_run_costs_no_acknowledged_row_and_the_run_goes_on(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own cluster, not the session's
    done = subprocess.run([sys.executable, str(REPO / "tests" / "multinode_scenario.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    (tmp_path / "scenario.log").write_text(done.stdout + done.stderr)  # the whole story, for a failure
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    errors = [ln for ln in done.stderr.splitlines() if "Error" in ln and "(" not in ln[:3]][-5:]
    assert done.returncode == 0, (r, errors, f"see {tmp_path / 'scenario.log'}")
    # Spread: two ranks on two worker nodes, the shards on two nodes, the replicas on two.
    assert len(set(r["rank_nodes"])) == 2 and r["head"] not in r["rank_nodes"]
    assert len(set(r["shard_nodes"])) == 2
    assert len(set(r["replica_nodes"])) == 2
    # The node removed held a rank and a shard; all came back on nodes still there.
    lost = r["removed"]
    assert lost in r["rank_nodes"] and lost in r["shard_nodes"]
    for after in ("rank_nodes_after", "shard_nodes_after", "replica_nodes_after"):
        assert lost not in r[after], (after, r)
    assert len(r["rank_nodes_after"]) == 2 and len(r["shard_nodes_after"]) == 2 and r["replicas_after"] == 2
    # Nothing acknowledged lost (to a client or through a replica), nothing stored twice.
    assert r["missing"] == 0 and r["unique_rows"] == r["stored_rows"] >= r["acked_rows"] > 0
    assert not [e for e in r["errors"] if not e.startswith("serve:")], r["errors"]  # clients never gave up
    assert r["status"] == "running" and r["step_after"] >= r["step_before"] + 20
    assert max(r["served_versions"]) > 0  # the replicas followed the run's weights
