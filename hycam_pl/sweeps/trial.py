"""One trial on a Ray worker: ``hycam fit`` then ``hycam test --ckpt_path last`` in subprocesses, then markers.

This module uses only the standard library (and ``ray.tune.report``) and is shipped to the workers by value,
so a worker never imports torch or hycam_pl itself: the CLI subprocesses do, each trial isolated in its own
process. Its state lives in files in the trial directory, written atomically:

- ``result.json``: the trial finished; its metrics (the "done" marker: a finished trial is never run again);
- ``failed.json``: a CLI command exited with an error; the stage, exit code and the end of its stderr;
- ``interrupted.json``: a CLI command was terminated (SIGTERM: exit 143, SIGINT: 130, or killed by a signal):
  the trial is unfinished, never done, and runs again (resuming from its ``last.ckpt``).

A trial without any of them (its worker was killed) is unfinished and runs again too.

None holds an absolute path of this machine (results are committed and resumed in other checkouts): paths
under the working directory are written relative to it, the Python executable as ``python``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hycam_pl.io import write_json_atomically

RESULT = "result.json"
FAILED = "failed.json"
INTERRUPTED = "interrupted.json"
# ``hycam``'s exit codes after SIGINT and SIGTERM (hycam_pl.training.signals; not imported: this module runs on
# workers without torch); a negative code is a process killed by a signal.
INTERRUPTED_EXIT_CODES = (130, 143)
# the trial's config as recorded (committed): its own paths relative to the sweep directory
CONFIG = "config.yaml"
RUN_CONFIG = "config.run.yaml"  # the same with those paths resolved on this machine: what the CLI runs
RECORD_CALLBACK = (
    "hycam_pl.callbacks.RunRecord"  # writes run_record.json (parameters, options, versions, ...)
)
TAIL_LINES = 20


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stderr_tail(text: str, lines: int = TAIL_LINES) -> list[str]:
    """The last non-empty lines, each progress-bar line reduced to what it showed last (after its last CR)."""
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in kept if line.strip()][-lines:]


def error_line(tail: list[str]) -> str:
    """hycam's one-line ``error:`` if there is one, else the last line (a traceback's exception)."""
    for line in reversed(tail):
        if line.startswith("error:"):
            return line
    return tail[-1] if tail else "(no output on stderr)"


def flatten(results: dict[str, Any]) -> dict[str, float | None]:
    """``{task: {metric: v}}`` from ``hycam test``'s results.json as ``{"task/metric": v}``."""
    return {
        f"{task}/{metric}": value
        for task, values in results.items()
        if isinstance(values, dict)
        for metric, value in values.items()
    }


def _relative_to(cwd: str) -> Any:
    """A function writing paths under ``cwd`` relative to it and the Python executable as ``python``."""
    prefix = str(Path(cwd)).rstrip(os.sep) + os.sep

    def local(text: str) -> str:
        return text.replace(sys.executable, "python").replace(prefix, "")

    return local


def prepare_trial_process() -> None:
    """Run in the CLI's child process after it became its own session (``start_new_session``), before the CLI.

    Linux only, both best effort:

    - the CLI gets SIGTERM when its worker dies (Ray kills workers when a sweep is interrupted);
    - its new session's scheduling autogroup takes the worker's niceness. Ray starts workers at nice 15 so that a
      sweep yields to the user's own work, but with autogroup scheduling (the default on desktop and many server
      kernels) niceness only ranks processes within one session: a CLI in a session of its own at autogroup nice
      0 gets as much CPU as everything else the user runs together (measured here: a test suite beside two trials
      ran at half speed).
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    try:
        with open("/proc/self/autogroup", "w", encoding="ascii") as autogroup:
            autogroup.write(str(os.getpriority(os.PRIO_PROCESS, 0)))
    except OSError:  # no autogroups in this kernel, or not allowed: scheduling stays as it is
        pass


def run_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: ``config["trial"]`` says where the trial lives and what to report."""
    spec = config["trial"]
    import ray
    from ray import tune

    context = ray.get_runtime_context()
    # Where it ran: a cluster node (its id and address) or the sweep's private instance; kept in the markers.
    node = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    outcome = execute(spec, {**node, "cluster": context.gcs_address})
    tune.report(outcome)


def execute(spec: dict[str, Any], ray_node: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one trial (both CLI stages) and write its marker (with ``ray_node``, where it ran); return what
    Tune reports."""
    where = {"ray": ray_node} if ray_node else {}
    trial_dir = Path(spec["dir"])
    config = str(trial_dir / RUN_CONFIG)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "hycam_pl.cli"]
    resume = ["--ckpt_path", "last"] if spec.get("resume") else []
    stages = [
        ("fit", [*command, "fit", "-c", config, f"--trainer.callbacks+={RECORD_CALLBACK}", *resume]),
        ("test", [*command, "test", "-c", config, "--ckpt_path", "last"]),
    ]
    local = _relative_to(spec["cwd"])
    seconds: dict[str, float] = {}
    for stage, argv in stages:
        start = time.monotonic()
        with (
            open(trial_dir / f"{stage}.stdout.log", "w", encoding="utf-8") as out,
            open(trial_dir / f"{stage}.stderr.log", "w+", encoding="utf-8") as err,
        ):
            code = subprocess.run(
                argv,
                cwd=spec["cwd"],
                env=env,
                stdout=out,
                stderr=err,
                check=False,
                # Its own session: a Ctrl-C on the sweep reaches Ray (which stops the trial, so it stays
                # unfinished), not the CLI (whose clean exit code would mark the trial failed).
                start_new_session=True,
                preexec_fn=prepare_trial_process,
            ).returncode
            err.seek(0)
            tail = [local(line) for line in stderr_tail(err.read())]
        seconds[f"{stage}_s"] = round(time.monotonic() - start, 2)
        if code < 0 or code in INTERRUPTED_EXIT_CODES:
            interruption = {"status": "interrupted", "stage": stage, "exit_code": code, **seconds, **where}
            write_json_atomically(trial_dir / INTERRUPTED, interruption)
            return {"status": "interrupted", "error": f"hycam {stage} interrupted (exit {code})", **seconds}
        if code != 0:
            failure = {
                "status": "failed",
                "stage": stage,
                "exit_code": code,
                "error": error_line(tail),
                "stderr_tail": tail,
                "command": [local(part) for part in argv],
                **seconds,
                **where,
            }
            write_json_atomically(trial_dir / FAILED, failure)
            return {"status": "failed", "error": failure["error"], **seconds}
    results = read_json(trial_dir / spec["results"])
    if results is None:
        failure = {
            "status": "failed",
            "stage": "test",
            "exit_code": 0,
            "error": f"hycam test wrote no results file at {spec['results']}",
            "stderr_tail": [],
            **seconds,
            **where,
        }
        write_json_atomically(trial_dir / FAILED, failure)
        return {"status": "failed", "error": failure["error"], **seconds}
    metrics = flatten(results)
    record = read_json(trial_dir / spec["record"]) or {}
    fit = {"resumed": bool(spec.get("resume")), **record.pop("fit", {})}
    (trial_dir / FAILED).unlink(missing_ok=True)
    (trial_dir / INTERRUPTED).unlink(missing_ok=True)
    write_json_atomically(
        trial_dir / RESULT, {"status": "done", "metrics": metrics, **seconds, "fit": fit, **record, **where}
    )
    reported = {name: metrics.get(name) for name in spec["metrics"]}
    return {"status": "done", **{k: v for k, v in reported.items() if v is not None}, **seconds}
