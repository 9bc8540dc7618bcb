"""``hycam sweep`` end to end through Ray Tune on this machine: a grid of two real one-step trials plus a
deliberately failing grid point, then a rerun that starts nothing. One Ray start-up for the whole module.

The grid is over the learning rate with ``select``, so the same run is also a real learning-rate selection on
validation loss (the failing point is a rate whose trial fails, which a selection must survive), read back by a
later sweep's ``select_from``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hycam_pl.sweeps.runner import plan
from hycam_pl.sweeps.spec import SweepError, load_sweep
from tests.training.conftest import REPO, tiny_quickstart

RATES = (0.001, 0.003)
GOOD = ("learning_rate=0.001-seed=0", "learning_rate=0.003-seed=0")
BAD = "learning_rate=0.01-seed=0"  # with rank > hidden_size 64: `hycam fit` stops with an error line, exit 2
METRICS = ["macro/loss", "macro/task_score"]


def run_sweep_cli(sweep: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "hycam_pl.cli", "sweep", "-c", str(sweep)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep")
    base = tiny_quickstart(tmp, max_steps=1, val_every=1, num_examples=8)
    sweep = tmp / "smoke.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "smoke",
                "base": str(base),
                "output": str(tmp / "out"),
                "overrides": {"trainer.val_check_interval": 1},
                # the failing point first: it fails while a good one runs, and costs no extra wall time
                "grid": {
                    "model.learning_rate": [{"value": 0.01, "with": {"model.method.rank": 1000}}, *RATES]
                },
                "select": "model.learning_rate",
                "compare_to": 0.001,
                "seeds": [0],
                "metrics": METRICS,
                "resources": {"cpu": 1},
            },
            sort_keys=False,
        )
    )
    first = run_sweep_cli(sweep, tmp)
    out = tmp / "out"
    stamps = {
        t: (out / "trials" / t / "result.json").stat().st_mtime_ns
        for t in GOOD
        if (out / "trials" / t / "result.json").exists()
    }
    second = run_sweep_cli(sweep, tmp)
    return {"tmp": tmp, "sweep": sweep, "out": out, "first": first, "second": second, "stamps": stamps}


def test_trials_run_and_the_failing_point_is_reported(swept: dict) -> None:
    first, out = swept["first"], swept["out"]
    log = first.stdout + first.stderr
    assert first.returncode == 1, log  # one trial failed
    for trial in GOOD:
        directory = out / "trials" / trial
        assert (directory / "result.json").is_file(), log
        assert (directory / "config.yaml").is_file()
        assert (directory / "checkpoints" / "last.ckpt").is_file()
        run = directory / "logs" / "version_0"
        assert list(run.glob("events.out.tfevents.*")), f"no TensorBoard events in {run}"
        assert (run / "results.json").is_file()
        assert (run / "examples.jsonl").is_file()  # kept per trial, beside results.json (committed with it)
    assert not (out / "trials" / BAD / "result.json").exists()
    failure = yaml.safe_load((out / "trials" / BAD / "failed.json").read_text())
    assert failure["stage"] == "fit" and failure["exit_code"] == 2
    assert "exceeds the hidden_size=64" in failure["error"]
    # progress shows done / running / pending, and the failure with its error line
    assert "running" in first.stdout and "pending" in first.stdout
    assert f"FAILED {BAD}" in first.stdout and "exceeds the hidden_size=64" in first.stdout
    assert "local Ray instance" in first.stdout


def test_table_plots_and_hparams(swept: dict) -> None:
    out = swept["out"]
    rows = {row["trial"]: row for row in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {*GOOD, BAD}
    for trial in GOOD:
        assert rows[trial]["status"] == "done"
        assert float(rows[trial]["macro/loss"]) > 0
    assert rows[BAD]["status"] == "failed" and "exceeds the hidden_size" in rows[BAD]["error"]
    markdown = (out / "results.md").read_text()
    assert "| 0.001 | 1/1 |" in markdown and "| 0.01 | 0/1 |" in markdown and "ddof=1" in markdown
    for metric in METRICS:
        png = out / f"plot_{metric.replace('/', '_')}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert sorted(p.name for p in (out / "hparams").iterdir()) == sorted(GOOD)
    for trial, rate in zip(GOOD, RATES, strict=True):
        accumulator = EventAccumulator(str(out / "hparams" / trial))
        accumulator.Reload()
        content = accumulator.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {k: v.number_value for k, v in start.session_start_info.hparams.items()}
        assert hparams == {"model.learning_rate": pytest.approx(rate), "seed": 0}
        value = accumulator.Scalars("macro/loss")[0].value
        assert value == pytest.approx(float(rows[trial]["macro/loss"]), rel=1e-6)


def test_rerun_starts_no_trial(swept: dict) -> None:
    second, out = swept["second"], swept["out"]
    assert second.returncode == 1, second.stdout + second.stderr  # the failed trial stays failed
    assert "0 to run" in second.stdout
    assert "started" not in second.stdout and "Ray instance" not in second.stdout
    for trial, stamp in swept["stamps"].items():
        assert (out / "trials" / trial / "result.json").stat().st_mtime_ns == stamp
    assert len(swept["stamps"]) == 2


def test_rerun_plan_after_interruption_and_after_an_edit(
    swept: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a rerun would do (read from the trial directories, no Ray): an interrupted trial resumes from its
    checkpoint, failed ones run again only when asked, and a finished trial is never silently replaced."""
    out, sweep = swept["out"], swept["sweep"]
    monkeypatch.chdir(swept["tmp"])
    spec = load_sweep(sweep)
    result = out / "trials" / GOOD[1] / "result.json"
    saved = result.read_bytes()
    result.unlink()  # as if the sweep was killed during this trial's test stage
    try:
        states = {p.trial.id: (p.status, p.resume) for p in plan(spec, out)}
        assert states == {BAD: ("failed", False), GOOD[0]: ("done", False), GOOD[1]: ("pending", True)}
        assert {p.trial.id: p.status for p in plan(spec, out, retry_failed=True)}[BAD] == "pending"
    finally:
        result.write_bytes(saved)
    edited = yaml.safe_load(sweep.read_text())
    edited["overrides"]["trainer.max_steps"] = 2
    changed = swept["tmp"] / "edited.yaml"
    changed.write_text(yaml.safe_dump(edited))
    with pytest.raises(SweepError, match="finished in .* with a different config"):
        plan(load_sweep(changed), out)


def test_trial_files_hold_no_absolute_path_and_results_record_how_trials_ran(swept: dict) -> None:
    """The committed trial files name the trial's directories relative to the sweep directory (the CLI ran a
    resolved copy), and result.json / results.csv carry parameter counts, options, validation loss, code and
    library versions, and whether the fit started from scratch."""
    out = swept["out"]
    for trial in (*GOOD, BAD):
        directory = out / "trials" / trial
        for name in ("config.yaml", "trial.json", "result.json", "failed.json"):
            if (directory / name).exists():
                text = (directory / name).read_text()
                assert str(out) not in text and sys.executable not in text, (trial, name)
        recorded = yaml.safe_load((directory / "config.yaml").read_text())
        assert recorded["trainer"]["default_root_dir"] == f"trials/{trial}"
        ran = yaml.safe_load((directory / "config.run.yaml").read_text())
        assert ran["trainer"]["default_root_dir"] == str(directory)
    failure = yaml.safe_load((out / "trials" / BAD / "failed.json").read_text())
    assert failure["command"][:4] == ["python", "-m", "hycam_pl.cli", "fit"]
    assert failure["command"][5] == f"out/trials/{BAD}/config.run.yaml"  # relative to the working directory

    result = yaml.safe_load((out / "trials" / GOOD[0] / "result.json").read_text())
    parameters = result["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"]
    assert [v for k, v in result["effective_options"].items() if k.endswith(".rank")] == [8]  # tiny.yaml's
    assert result["validation"]["val/macro/loss"] > 0
    assert result["fit"] == {"resumed": False, "from_step": 0, "to_step": 1}
    assert len(result["code"]["commit"]) == 40 and isinstance(result["code"]["modified"], bool)
    assert result["versions"]["torch"] and result["versions"]["transformers"] and result["versions"]["peft"]
    row = {r["trial"]: r for r in csv.DictReader((out / "results.csv").open())}[GOOD[0]]
    assert int(row["trainable_params"]) == parameters["trainable"]
    assert int(row["total_params"]) == parameters["total"]
    assert float(row["val/macro/loss"]) == pytest.approx(result["validation"]["val/macro/loss"])
    assert (
        row["fit"] == "scratch" and row["fit_from_step"] == "0" and row["commit"] == result["code"]["commit"]
    )
    assert 'rank":8' in row["effective_options"] and row["torch"] == result["versions"]["torch"]


def test_learning_rate_selected_on_validation_loss_and_used_by_a_later_sweep(
    swept: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """selection.json holds each rate's final validation loss (never a test number) and the lowest; the failed
    rate counts as finished without a loss; a later sweep's select_from sets each trial's rate to the choice."""
    out = swept["out"]
    selection = json.loads((out / "selection.json").read_text())
    assert selection["key"] == "model.learning_rate" and selection["metric"] == "val/macro/loss"
    entry = selection["variants"]["*"]
    values = {v["value"]: v for v in entry["values"]}
    assert values[0.01]["validation_loss"] is None and values[0.01]["failed_seeds"] == [0]
    recorded = {}
    for trial, rate in zip(GOOD, RATES, strict=True):
        result = json.loads((out / "trials" / trial / "result.json").read_text())
        recorded[rate] = result["validation"]["val/macro/loss"]
        assert values[rate]["validation_loss"] == pytest.approx(recorded[rate])
    assert entry["complete"] and entry["chosen"] == min(recorded, key=recorded.get)
    markdown = (out / "results.md").read_text()
    assert "## Selection of `model.learning_rate` on validation loss" in markdown
    assert "## Paired comparisons with `model.learning_rate` = 0.001" in markdown
    # the trials' examples.jsonl, paired by hycam compare's code: loss and the scores, per task and macro
    assert "| learning_rate=0.003 vs learning_rate=0.001 | **macro** | loss |" in markdown
    pairs = json.loads((out / "comparison.json").read_text())["pairs"]
    assert set(pairs) == {
        "learning_rate=0.003 vs learning_rate=0.001"
    }  # the failed point has no trial to pair

    monkeypatch.chdir(swept["tmp"])
    later = swept["tmp"] / "later.yaml"
    later.write_text(
        yaml.safe_dump(
            {
                "base": str(swept["tmp"] / "tiny.yaml"),
                "variants": {"hycam": {}, "cam": {"model.method": "cam"}},
                "select_from": str(out / "selection.json"),
                "metrics": METRICS,
            }
        )
    )
    rates = {t.variant: t.config["model"]["learning_rate"] for t in load_sweep(later).trials()}
    assert rates == {"hycam": entry["chosen"], "cam": entry["chosen"]}
