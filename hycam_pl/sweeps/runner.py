"""Run a sweep's unfinished trials on Ray Tune (a local Ray instance, or a cluster with ``address``), then
aggregate. Which trials are finished is read from the trial directories, never from Ray's state, so a rerun
of the same command after an interruption runs exactly the unfinished ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hycam_pl.callbacks.record import RUN_RECORD
from hycam_pl.io import write_json_atomically, write_text_atomically
from hycam_pl.sweeps import trial as trial_module
from hycam_pl.sweeps.aggregate import TrialRecord, aggregate, read_record
from hycam_pl.sweeps.lock import sweep_lock
from hycam_pl.sweeps.spec import (
    LOG_NAME,
    LOG_VERSION,
    TRIALS_DIR,
    SweepError,
    SweepSpec,
    Trial,
    trial_config,
)
from hycam_pl.sweeps.trial import CONFIG, FAILED, INTERRUPTED, RESULT, RUN_CONFIG, read_json

TRIAL_JSON = "trial.json"
TUNE_DIR = ".tune"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


@dataclass
class PlannedTrial:
    trial: Trial
    directory: Path
    config: dict[str, Any]  # as recorded: the trial's own paths relative to the sweep directory
    status: str  # done | failed | pending
    resume: bool = False

    @property
    def run_config(self) -> dict[str, Any]:
        """The config the CLI runs: the trial's paths resolved (the sweep directory is absolute here)."""
        return trial_config(self.trial.config, self.directory)


def trial_dir(sweep_dir: Path, trial: Trial) -> Path:
    return sweep_dir / TRIALS_DIR / trial.id


def plan(spec: SweepSpec, sweep_dir: Path, retry_failed: bool = False) -> list[PlannedTrial]:
    """Each trial's state from its directory. A finished trial whose recorded config differs from what the
    sweep file gives now is refused (its results would be mislabelled); anything unfinished is redone."""
    planned = []
    for trial in spec.trials():
        directory = trial_dir(sweep_dir, trial)
        config = trial_config(trial.config, Path(TRIALS_DIR) / trial.id)
        recorded = read_json(directory / TRIAL_JSON)
        same = recorded is not None and _canonical(recorded.get("config")) == _canonical(config)
        status = read_record(trial, directory).status if same else "pending"
        if status == "interrupted":  # terminated (SIGTERM, Ctrl-C): unfinished, resumes from its last.ckpt
            status = "pending"
        if recorded is not None and not same and (directory / RESULT).exists():
            raise SweepError(
                f"{spec.path}: trial {trial.id!r} finished in {directory} with a different config than the sweep "
                "file gives now; pass another --output, or delete that trial directory to run it again"
            )
        if status == "failed":
            failure = read_json(directory / FAILED) or {}
            killed = isinstance(failure.get("exit_code"), int) and failure["exit_code"] < 0
            if retry_failed or killed:  # killed by a signal (interrupted, out of memory): unfinished
                status = "pending"
        resume = same and status == "pending" and (directory / "checkpoints" / "last.ckpt").is_file()
        planned.append(PlannedTrial(trial, directory, config, status, resume))
    return planned


def _canonical(value: Any) -> str:
    """The config as text with its own trial directory written as ``<trial>``: relative to the sweep directory
    as recorded now, or an absolute path as trials recorded before, so that trials finished in another
    checkout or clone (committed results) count as the same trials here."""
    text = json.dumps(value, sort_keys=True, default=str)
    root = value.get("trainer", {}).get("default_root_dir") if isinstance(value, dict) else None
    if isinstance(root, str) and root:
        text = text.replace(json.dumps(root)[1:-1], "<trial>")
    return text


def prepare(spec: SweepSpec, item: PlannedTrial) -> None:
    """A clean trial directory with its config (unless resuming its own checkpoint)."""
    if item.directory.exists() and not item.resume:
        shutil.rmtree(item.directory)
    item.directory.mkdir(parents=True, exist_ok=True)
    (item.directory / FAILED).unlink(missing_ok=True)
    (item.directory / INTERRUPTED).unlink(missing_ok=True)
    header = f"# trial {item.trial.id} of sweep {spec.name} ({spec.path})\n"
    recorded = (
        f"{header}# the trial's own directories are relative to the sweep directory; {RUN_CONFIG} (not kept with the\n"
        f"# results) is this config with them resolved, what `hycam fit`/`hycam test` ran\n"
    )
    for name, text in (
        (CONFIG, recorded + yaml.safe_dump(item.config, sort_keys=False)),
        (RUN_CONFIG, header + yaml.safe_dump(item.run_config, sort_keys=False)),
    ):
        write_text_atomically(item.directory / name, text)
    write_json_atomically(
        item.directory / TRIAL_JSON,
        {
            "id": item.trial.id,
            "variant": item.trial.variant,
            "point": item.trial.point,
            "seed": item.trial.seed,
            "config": item.config,
        },
    )


def payload(spec: SweepSpec, item: PlannedTrial, cwd: Path) -> dict[str, Any]:
    """What the Ray worker needs to run the trial (plain data: the worker imports nothing of hycam_pl)."""
    return {
        "id": item.trial.id,
        "dir": str(item.directory),
        "cwd": str(cwd),
        "resume": item.resume,
        "metrics": spec.metrics,
        "results": f"{LOG_NAME}/version_{LOG_VERSION}/results.json",
        "record": f"{LOG_NAME}/version_{LOG_VERSION}/{RUN_RECORD}",
    }


def _trial_name(trial: Any) -> str:
    return trial.config["trial"]["id"]


class _Progress:
    """Prints one line per trial start and end with the done / running / pending counts."""

    def __init__(self, name: str, total: int, done: int, failed: int, pending: int) -> None:
        self.name, self.total = name, total
        self.done, self.failed, self.running, self.pending = done, failed, 0, pending

    def line(self, event: str) -> None:
        print(
            f"[sweep {self.name}] {self.done}/{self.total} done, {self.failed} failed, {self.running} running, "
            f"{self.pending} pending | {event}",
            flush=True,
        )

    def started(self, trial_id: str, resume: bool = False) -> None:
        self.running += 1
        self.pending -= 1
        self.line(f"started {trial_id}{' (resuming from its last.ckpt)' if resume else ''}")

    def finished(self, trial_id: str, result: dict[str, Any], metrics: list[str]) -> None:
        self.running -= 1
        times = ", ".join(f"{k[:-2]} {result[k]:.0f} s" for k in ("fit_s", "test_s") if k in result)
        if result.get("status") == "done":
            self.done += 1
            shown = ", ".join(
                f"{m}={result[m]:.4g}" for m in metrics if isinstance(result.get(m), (int, float))
            )
            self.line(f"done {trial_id} ({times}): {shown}")
        elif result.get("status") == "interrupted":
            self.pending += 1
            self.line(f"INTERRUPTED {trial_id} ({times}): runs again next time, from its last.ckpt")
        else:
            self.failed += 1
            self.line(f"FAILED {trial_id} ({times}): {result.get('error', 'unknown error')}")

    def errored(self, trial_id: str, message: str) -> None:
        self.running -= 1
        self.failed += 1
        self.line(f"FAILED {trial_id} (the trial itself raised): {message}")


def run_on_ray(
    spec: SweepSpec,
    items: list[PlannedTrial],
    progress: _Progress,
    sweep_dir: Path,
    cwd: Path,
    address: str | None,
) -> None:
    """Run ``items`` as one Ray Tune experiment: one grid-search point per trial, FIFO, no search, no retries."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune progress tables: ours are shorter
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # results live in the trial dirs
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from ray import cloudpickle, tune

    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    # The trainable travels by value, so workers need neither torch nor hycam_pl imported (only the CLI does).
    cloudpickle.register_pickle_by_value(trial_module)
    metrics = spec.metrics

    class Progress(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.started(_trial_name(trial), trial.config["trial"]["resume"])

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            progress.finished(_trial_name(trial), trial.last_result or {}, metrics)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            error = getattr(trial, "error_file", None)
            progress.errored(_trial_name(trial), f"see {error}" if error else "no error file")

    started = time.monotonic()
    connect(ray, address)
    where = f"Ray cluster at {address}" if address else "a local Ray instance"
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    gpus = ray.cluster_resources().get("GPU", 0)
    print(
        f"[sweep {spec.name}] {where} ({len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs) "
        f"joined in {time.monotonic() - started:.1f} s; each trial uses {spec.resources['cpu']:g} CPU(s), "
        f"{spec.resources['gpu']:g} GPU(s)",
        flush=True,
    )
    try:
        check_resources(spec, nodes, where)
        for item in items:  # only once Ray has the resources: a refused sweep leaves its trials as they were
            prepare(spec, item)
        tuner = tune.Tuner(
            tune.with_resources(trial_module.run_trial, {k: v for k, v in spec.resources.items() if v}),
            param_space={"trial": tune.grid_search([payload(spec, item, cwd) for item in items])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=f"run-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str((sweep_dir / TUNE_DIR).resolve()),
                verbose=0,
                callbacks=[Progress()],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
    finally:
        ray.shutdown()


def connect(ray: Any, address: str | None) -> None:
    """``ray.init``: a new private instance without ``address``, else join that cluster. A cluster that cannot
    be joined is one ``error:`` line naming the address and the usual causes (Ray's own message names neither:
    "Failed to connect to Ray cluster at ...", after its retries)."""
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if not address:
        ray.init(address="local", **options)  # "local": always a new instance, never an unrelated running one
        return
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as error:
        auth = os.environ.get(AUTH_MODE_ENV, "")
        hint = (
            f"{f'{AUTH_MODE_ENV}={auth}' if auth else f'{AUTH_MODE_ENV} is not set'}; a cluster started with "
            "'ray start' checks a token when its head found one "
            f"(Ray 2.60): set {AUTH_MODE_ENV}=token and give this machine the cluster's token (~/.ray/auth_token, "
            "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN; 'ray get-auth-token' on the head prints it)"
            if auth.lower() != "token"
            else f"{AUTH_MODE_ENV}=token: is this machine's token the cluster's ('ray get-auth-token' on the head)?"
        )
        raise SweepError(
            f"--address {address}: could not join the Ray cluster ({_cause(error)}). Is a head running there "
            f"('ray start --head') and reachable from this machine? {hint}"
        ) from error


def _cause(error: BaseException) -> str:
    """The innermost message of an exception chain, on one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    return " ".join(str(error).split())[:300] or type(error).__name__


def check_resources(spec: SweepSpec, nodes: list[dict[str, Any]], where: str) -> None:
    """A trial runs on one node: refuse a sweep whose per-trial resources no node has, instead of letting Ray
    Tune wait for them forever (it only prints a warning every few minutes)."""
    wanted = {"CPU": spec.resources["cpu"], "GPU": spec.resources["gpu"]}
    if any(all(node.get("Resources", {}).get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
        return
    largest = ", ".join(
        sorted(
            {
                f"{node.get('Resources', {}).get('CPU', 0):g} CPUs and {node.get('Resources', {}).get('GPU', 0):g} GPUs"
                for node in nodes
            }
        )
    )
    raise SweepError(
        f"{spec.path}: resources {{cpu: {wanted['CPU']:g}, gpu: {wanted['GPU']:g}}} per trial: no node of the "
        f"{where} has them (its nodes have {largest or 'nothing'}); lower the resources or add a node that has them"
    )


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    retry_failed: bool = False,
    aggregate_only: bool = False,
    cwd: Path | None = None,
) -> int:
    """Run what is unfinished, aggregate, print where the results are. Exit status 0 when every trial is
    done, 1 when some failed or did not run."""
    cwd = (cwd or Path.cwd()).resolve()
    sweep_dir = spec.output if spec.output.is_absolute() else cwd / spec.output
    with sweep_lock(sweep_dir):  # one sweep per directory: a second one is refused, naming the holder
        return _run_locked(spec, sweep_dir, cwd, address, retry_failed, aggregate_only)


def _run_locked(
    spec: SweepSpec, sweep_dir: Path, cwd: Path, address: str | None, retry_failed: bool, aggregate_only: bool
) -> int:
    planned = plan(spec, sweep_dir, retry_failed)
    to_run = [] if aggregate_only else [p for p in planned if p.status == "pending"]
    # Seed-major: every grid point's first seed runs before any second seed, so an interrupted sweep has
    # covered the whole grid once (stable sort: variants and grid points keep the sweep file's order).
    to_run.sort(key=lambda p: spec.seeds.index(p.trial.seed))
    done = sum(p.status == "done" for p in planned)
    failed = sum(p.status == "failed" for p in planned)
    print(
        f"[sweep {spec.name}] {len(planned)} trials in {sweep_dir}: {done} done, {failed} failed earlier"
        f"{' (kept; --retry-failed runs them again)' if failed else ''}, {len(to_run)} to run",
        flush=True,
    )
    if to_run:
        progress = _Progress(spec.name, len(planned), done, failed, len(to_run))
        run_on_ray(spec, to_run, progress, sweep_dir, cwd, address)
    records: list[TrialRecord] = [read_record(p.trial, p.directory) for p in planned]
    outputs = aggregate(spec, records, sweep_dir)
    done = sum(r.status == "done" for r in records)
    failed_records = [r for r in records if r.status == "failed"]
    for record in failed_records:
        print(
            f"[sweep {spec.name}] FAILED {record.trial.id} (hycam {record.stage}): {record.error}",
            file=sys.stderr,
        )
    print(
        f"[sweep {spec.name}] {done}/{len(records)} done, {len(failed_records)} failed, "
        f"{len(records) - done - len(failed_records)} not run. Results: {outputs['md']}, {outputs['csv']}; "
        f"plots: {', '.join(p.name for p in outputs['plots']) or 'none yet'}; "
        f"tensorboard --logdir {outputs['hparams']} (HParams tab)",
        flush=True,
    )
    if done + len(failed_records) < len(records):
        print(f"[sweep {spec.name}] unfinished trials remain: rerun the same command to run them", flush=True)
    return 0 if done == len(records) else 1
