"""A real Ray cluster on this machine for ``test_ray_cluster.py``, run inside a loopback-only network namespace.

``python -m tests.sweeps.ray_cluster_driver OUT_DIR`` (started by the test under ``unshare -n`` with ``lo`` up, so
Ray binds 127.0.0.1 and nothing leaves the namespace) does what a user does with a cluster:

1. ``ray start --head --block`` (2 CPUs) and ``ray start --address ... --block`` (a second node, 2 CPUs), with the
   token authentication Ray 2.60 turns on when the head finds a token (generated here with
   ``ray get-auth-token --generate`` into the head's own home);
2. ``hycam sweep --address 127.0.0.1:<port>`` of two trials on the tiny config from a driver that has the token
   only through ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (as on another machine), killed (SIGKILL) as
   soon as a trial has written a checkpoint, then rerun to the end against the same cluster;
3. meanwhile, a sweep asking for a GPU per trial on this CPU cluster, and a driver without ``RAY_AUTH_MODE=token``;
4. stops the cluster by the process ids of its own two ``ray start --block`` processes (never ``ray stop``, which
   ends every Ray process of the machine) and looks for leftover processes.

Everything observed goes into ``OUT_DIR/report.json``; the test asserts on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tests.training.conftest import REPO, tiny_quickstart

RAY = str(Path(sys.executable).with_name("ray"))
TRIALS = ("learning_rate=0.003-seed=0", "learning_rate=0.001-seed=0")
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> float:
    """Seconds until ``text`` appears in ``log``; raises if the process ends first or time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if text in log.read_text(errors="replace"):
            return time.monotonic() - start
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{log.name}: no {text!r} after {timeout} s:\n{log.read_text()[-3000:]}")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's live processes that contain ``text`` (other than this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")
            )
        except (OSError, StopIteration):
            continue
        if text in cmdline and "zombie" not in state:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def sweep_command(sweep: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "hycam_pl.cli", "sweep", "-c", str(sweep), "--address", address]


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run to the end; exit code ("timeout" if it ran out of time), output and seconds."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as error:
        code, stdout, stderr = "timeout", str(error.stdout or ""), str(error.stderr or "")
    return {"rc": code, "stdout": stdout, "stderr": stderr, "seconds": round(time.monotonic() - start, 1)}


def write_sweep(out: Path, name: str, resources: dict[str, float]) -> Path:
    sweep = out / f"{name}.yaml"
    spec = {
        "name": name,
        "base": str(out / "tiny.yaml"),
        "output": str(out / name),
        "grid": {"model.learning_rate": [0.003, 0.001]},  # any method
        "seeds": [0],
        "metrics": ["macro/loss"],
        "resources": resources,
    }
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
    return sweep


def interrupted_run(sweep: Path, address: str, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start the sweep, SIGKILL its driver once a trial has a checkpoint, report what the trials looked like."""
    trials = out / "sweep" / "trials"
    log = out / "interrupted.log"
    start = time.monotonic()
    with log.open("w") as sink:
        driver = subprocess.Popen(sweep_command(sweep, address), cwd=out, env=env, stdout=sink, stderr=sink)
    checkpointed = []
    while time.monotonic() - start < 300 and driver.poll() is None and not checkpointed:
        checkpointed = [t for t in TRIALS if (trials / t / "checkpoints" / "last.ckpt").is_file()]
        time.sleep(0.1)
    killed_after = round(time.monotonic() - start, 1)
    ended_by_itself = driver.poll() is not None
    driver.kill()
    driver.wait()
    finished_at_kill = [t for t in TRIALS if (trials / t / "result.json").is_file()]
    # The trials' CLI processes die with their Ray workers (the cluster ends a dead driver's job).
    deadline, alive = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        alive = processes_mentioning(str(trials))
        if not alive:
            break
        time.sleep(0.5)
    return {
        "killed_after_s": killed_after,
        "ended_by_itself": ended_by_itself,
        "checkpointed": checkpointed,
        "finished_at_kill": finished_at_kill,
        "trial_processes_left": alive,
        "seconds_until_trials_gone": round(time.monotonic() - start - killed_after, 1),
        "log": log.read_text()[-4000:],
    }


def stop(process: subprocess.Popen, timeout: float = 60) -> Any:
    """SIGTERM to one ``ray start --block`` process (it stops the node's own Ray processes), SIGKILL if stuck."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "killed"


def main(out: Path) -> None:
    report: dict[str, Any] = {}
    head_home, driver_home = out / "head-home", out / "driver-home"
    driver_home.mkdir(parents=True)
    # Ray's session directory (with its unix sockets, whose paths must stay short) in a directory of our own
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    base_env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    base_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    base_env.pop("RAY_AUTH_MODE", None)
    base_env.pop("RAY_ADDRESS", None)
    # The cluster's machine: its home holds the token `ray start` finds and turns authentication on with.
    cluster_env = dict(base_env, HOME=str(head_home))
    subprocess.run([RAY, "get-auth-token", "--generate"], env=cluster_env, check=True, capture_output=True)
    token_file = head_home / ".ray" / "auth_token"
    # The driver's machine: no token at home; the token comes by RAY_AUTH_TOKEN_PATH, as documented.
    driver_env = dict(
        base_env, HOME=str(driver_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file)
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    report["address"] = address
    tiny_quickstart(out, max_steps=10, val_every=2, num_examples=8)
    node = ["--block", "--num-cpus", "2", "--num-gpus", "0", "--node-ip-address", "127.0.0.1"]
    node += ["--disable-usage-stats"]
    head_cmd = [RAY, "start", "--head", "--port", str(port), "--temp-dir", str(temp_dir), *node]
    head_cmd += ["--include-dashboard", "false"]
    cluster: list[subprocess.Popen] = []
    try:
        with (out / "head.log").open("w") as sink:
            cluster.append(subprocess.Popen(head_cmd, env=cluster_env, stdout=sink, stderr=subprocess.STDOUT))
        report["head_start_s"] = wait_for_line(out / "head.log", "Ray runtime started", cluster[0])
        report["head_log"] = (out / "head.log").read_text()[-3000:]
        with (out / "worker.log").open("w") as sink:
            worker_cmd = [RAY, "start", "--address", address, *node]
            # Joining by an explicit address, Ray uses the token only in token mode (the head's default comes
            # from finding the token; a joining node's does not).
            worker_env = dict(cluster_env, RAY_AUTH_MODE="token")
            cluster.append(
                subprocess.Popen(worker_cmd, env=worker_env, stdout=sink, stderr=subprocess.STDOUT)
            )
        report["worker_start_s"] = wait_for_line(out / "worker.log", "Ray runtime started", cluster[1])
        report["pids"] = [p.pid for p in cluster]

        # Each trial asks for 2 CPUs: one runs on each node at once.
        sweep = write_sweep(out, "sweep", {"cpu": 2})
        report["interrupted"] = interrupted_run(sweep, address, out, driver_env)
        report["trial_files_after_kill"] = {
            t: sorted(p.name for p in (out / "sweep" / "trials" / t).glob("*")) for t in TRIALS
        }
        # The rerun, and meanwhile (to save wall time) two sweeps that must be refused: one asking for a GPU per
        # trial on this CPU cluster, one from a driver without RAY_AUTH_MODE=token.
        gpu = write_sweep(out, "gpu", {"cpu": 1, "gpu": 1})
        no_token = write_sweep(out, "no_token", {"cpu": 1})
        no_auth = {k: v for k, v in driver_env.items() if k != "RAY_AUTH_MODE"}
        with ThreadPoolExecutor(3) as pool:
            resumed = pool.submit(run, sweep_command(sweep, address), out, driver_env, 400)
            refused_gpu = pool.submit(run, sweep_command(gpu, address), out, driver_env, 200)
            refused_token = pool.submit(run, sweep_command(no_token, address), out, no_auth, 200)
            report["resumed"], report["gpu"], report["no_auth"] = (
                resumed.result(),
                refused_gpu.result(),
                refused_token.result(),
            )
        report["results"] = {
            t: json.loads((out / "sweep" / "trials" / t / "result.json").read_text())
            for t in TRIALS
            if (out / "sweep" / "trials" / t / "result.json").is_file()
        }
        report["refused_trials_exist"] = [(out / name / "trials").exists() for name in ("gpu", "no_token")]
    except Exception as error:  # noqa: BLE001 - reported to the test, which shows it
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        report["stopped"] = [stop(p) for p in reversed(cluster)]
        deadline, left = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            left = processes_mentioning(str(temp_dir)) + processes_mentioning(str(out / "sweep"))
            if not left:
                break
            time.sleep(0.5)
        report["left_after_stop"] = left
        if not left:
            shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session logs (the test's tmp_path keeps ours)
        (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
