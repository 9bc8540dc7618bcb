"""``hycam sweep --address`` on a real Ray cluster started with ``ray start`` (a head and a second node), inside a
private loopback-only network namespace (see ``ray_cluster_driver.py``; needs root for ``unshare -n``).

Checked: both trials finish, each on a node of that cluster (recorded in ``result.json``), with token
authentication on; a driver killed mid-trial and rerun against the same cluster resumes the interrupted trial
from its checkpoint; a sweep asking for a GPU on this CPU cluster stops with one ``error:`` line; a driver
without ``RAY_AUTH_MODE=token`` gets one line saying how to pass the token; the cluster is stopped by the
process ids of its own ``ray start --block`` processes and leaves nothing running.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.training.conftest import REPO

pytestmark = pytest.mark.slow
TRIALS = ("learning_rate=0.003-seed=0", "learning_rate=0.001-seed=0")


def _namespaces_available() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8)"
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace (root needed): {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    reason = _namespaces_available()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("cluster") / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    driver = f"ip link set lo up && exec {sys.executable} -m tests.sweeps.ray_cluster_driver {out}"
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", driver],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads((out / "report.json").read_text())
    assert "error" not in found, f"{found['error']}\nhead: {found.get('head_log', '')[-2000:]}"
    found["out"] = out
    phases = ("head_start_s", "worker_start_s")
    print(
        "seconds: "
        + ", ".join(f"{name} {found[name]:.0f}" for name in phases)
        + f", interrupted after {found['interrupted']['killed_after_s']:.0f}"
        + "".join(f", {name} {found[name]['seconds']:.0f}" for name in ("resumed", "gpu", "no_auth"))
    )
    return found


def test_both_trials_finish_on_the_nodes_of_the_cluster(report: dict) -> None:
    resumed = report["resumed"]
    assert resumed["rc"] == 0, resumed["stdout"] + resumed["stderr"]
    assert f"Ray cluster at {report['address']} (2 nodes, 4 CPUs, 0 GPUs)" in resumed["stdout"]
    assert "2/2 done, 0 failed" in resumed["stdout"]
    results = report["results"]
    assert sorted(results) == sorted(TRIALS)
    for result in results.values():
        assert result["status"] == "done" and result["metrics"]["macro/loss"] > 0
        assert result["ray"]["cluster"] == report["address"]  # not a private instance
        assert result["ray"]["node_ip"] == "127.0.0.1"
    # each trial takes the 2 CPUs of one node, so the two ran at once on the two nodes
    assert len({result["ray"]["node_id"] for result in results.values()}) == 2
    out = report["out"]
    with (out / "sweep" / "results.csv").open() as table:
        assert {row["trial"]: row["status"] for row in csv.DictReader(table)} == dict.fromkeys(TRIALS, "done")


def test_killed_driver_rerun_resumes_the_interrupted_trial(report: dict) -> None:
    interrupted = report["interrupted"]
    assert not interrupted["ended_by_itself"], interrupted["log"]
    assert interrupted["checkpointed"] and not interrupted["finished_at_kill"], interrupted
    # the cluster ended the dead driver's trials: no CLI process kept running, no trial marked failed
    assert interrupted["trial_processes_left"] == []
    for files in report["trial_files_after_kill"].values():
        assert "result.json" not in files and "failed.json" not in files
    resumed = report["resumed"]["stdout"]
    assert "0 done, 0 failed earlier, 2 to run" in resumed
    for trial in interrupted["checkpointed"]:
        assert f"started {trial} (resuming from its last.ckpt)" in resumed
        log = (report["out"] / "sweep" / "trials" / trial / "fit.stderr.log").read_text()
        assert "Restored all states from the checkpoint" in log


def test_a_gpu_sweep_on_a_cpu_cluster_stops_with_one_line(report: dict) -> None:
    gpu = report["gpu"]
    assert gpu["rc"] == 2, gpu
    errors = [line for line in gpu["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in gpu["stderr"], gpu["stderr"]
    assert "resources {cpu: 1, gpu: 1} per trial: no node of the Ray cluster" in errors[0]
    assert "its nodes have 2 CPUs and 0 GPUs" in errors[0]
    assert gpu["seconds"] < 150  # refused, not waiting for a GPU
    assert report["refused_trials_exist"] == [False, False]  # no trial prepared for a refused sweep


def test_a_driver_without_token_mode_is_told_how_to_pass_the_token(report: dict) -> None:
    no_auth = report["no_auth"]
    assert no_auth["rc"] == 2, no_auth
    errors = [line for line in no_auth["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, no_auth["stderr"]
    assert f"--address {report['address']}: could not join the Ray cluster" in errors[0]
    assert "RAY_AUTH_MODE=token" in errors[0] and "RAY_AUTH_TOKEN_PATH" in errors[0]


def test_the_cluster_stops_by_its_own_pids_and_leaves_nothing_running(report: dict) -> None:
    assert len(report["pids"]) == 2
    assert all(code != "killed" for code in report["stopped"]), report["stopped"]  # SIGTERM was enough
    assert report["left_after_stop"] == []
