"""A trial's CLI process keeps the niceness Ray gave its worker: it runs in a session of its own (so a Ctrl-C on the
sweep does not reach it), and on kernels with autogroup scheduling that session's autogroup takes the worker's
niceness. Before, each trial's autogroup ran at nice 0 and a test suite beside two trials ran at half speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hycam_pl.sweeps import trial as trial_module
from hycam_pl.sweeps.runner import payload, plan, prepare
from tests.sweeps.test_sweep_plan import _spec

RAY_WORKER_NICE = 15  # what Ray gives its workers
PROBE = (
    "import os; print(open('/proc/self/autogroup').read().split()[-1], os.getpriority(os.PRIO_PROCESS, 0), "
    "os.getsid(0) == os.getpid())"
)


def _autogroups_adjustable() -> bool:
    """Whether a new session may set its autogroup's niceness here (no autogroups, or a read-only /proc: no)."""
    if not Path("/proc/self/autogroup").exists():
        return False
    write = "import os; open('/proc/self/autogroup', 'w').write(str(os.getpriority(os.PRIO_PROCESS, 0)))"
    probe = subprocess.run([sys.executable, "-c", write], start_new_session=True, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _autogroups_adjustable(), reason="no adjustable autogroup scheduling here")
def test_the_trial_process_gets_its_own_session_at_the_worker_niceness(tmp_path: Path, monkeypatch) -> None:
    spec = _spec(tmp_path, tmp_path / "out")
    item = plan(spec, spec.output)[0]
    prepare(spec, item)
    real_run = subprocess.run
    seen: list[str] = []

    def run_the_probe(argv, **kwargs):
        # the trial's own process options, with a probe instead of the CLI, in a child niced as a Ray worker is
        prepare_trial_process = kwargs["preexec_fn"]

        def as_a_ray_worker() -> None:
            os.nice(max(0, RAY_WORKER_NICE - os.getpriority(os.PRIO_PROCESS, 0)))  # raising needs no rights
            prepare_trial_process()

        done = real_run([sys.executable, "-c", PROBE], **{**kwargs, "preexec_fn": as_a_ray_worker})
        seen.append(f"{argv[3]} exit {done.returncode}")
        return subprocess.CompletedProcess(argv, 2)  # a failed fit: the trial stops after this stage

    monkeypatch.setattr(trial_module.subprocess, "run", run_the_probe)
    trial_module.execute(payload(spec, item, tmp_path))
    assert seen == ["fit exit 0"], (item.directory / "fit.stderr.log").read_text()
    autogroup_nice, process_nice, own_session = (item.directory / "fit.stdout.log").read_text().split()
    expected = str(max(RAY_WORKER_NICE, os.getpriority(os.PRIO_PROCESS, 0)))
    assert (autogroup_nice, process_nice, own_session) == (expected, expected, "True")
