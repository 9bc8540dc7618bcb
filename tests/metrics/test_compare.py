"""``hycam compare``: paired bootstrap intervals, paired tests and Holm on constructed per-example files with a
known effect, on identical runs, with seeds, and the CLI in a subprocess (its outputs and its refusals)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hycam_pl.metrics.compare import (
    ComparisonError,
    Row,
    compare_groups,
    load_groups,
    main,
    verdict,
)
from hycam_pl.metrics.paired import GroupValues, holm, paired_difference, paired_test

REPO = Path(__file__).resolve().parents[2]
TASKS = ("arithmetic", "qa")
EXAMPLES = 120  # per task
SCORED = 60  # generated examples per task (scores only on these)


def write_run(path: Path, losses: dict[str, np.ndarray], correct: dict[str, np.ndarray]) -> Path:
    """An examples.jsonl as ``hycam test`` writes it: loss on every example, scores on the first SCORED."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for task in TASKS:
        for i, loss in enumerate(losses[task]):
            record = {"task": task, "id": f"{task}-{i}-ab12", "loss_sum": float(loss) * 10, "num_tokens": 10}
            if i < SCORED:
                record.update(
                    prediction="x",
                    reference="y",
                    exact_match=bool(correct[task][i]),
                    task_score=float(correct[task][i]),
                )
            lines.append(json.dumps(record))
    (path / "examples.jsonl").write_text("\n".join(lines) + "\n")
    (path / "results.json").write_text("{}\n")
    return path


def runs_with_effect(
    tmp_path: Path, loss_effect: float, extra_correct: int, seed: int = 0
) -> tuple[Path, Path]:
    """Reference and other on the same examples: the other's loss is lower by ``loss_effect`` per example
    (plus noise), and it answers ``extra_correct`` more examples per task correctly (and none fewer)."""
    rng = np.random.default_rng(seed)
    losses_reference, losses_other, correct_reference, correct_other = {}, {}, {}, {}
    for task in TASKS:
        difficulty = 0.5 + rng.gamma(2.0, 0.5, EXAMPLES)  # shared by both runs: what pairing cancels
        losses_reference[task] = difficulty + rng.normal(0, 0.05, EXAMPLES)
        losses_other[task] = difficulty - loss_effect + rng.normal(0, 0.05, EXAMPLES)
        right = np.zeros(SCORED)
        right[: SCORED // 3] = 1
        correct_reference[task] = right
        better = right.copy()
        better[SCORED // 3 : SCORED // 3 + extra_correct] = 1
        correct_other[task] = better
    return (
        write_run(tmp_path / "reference", losses_reference, correct_reference),
        write_run(tmp_path / "other", losses_other, correct_other),
    )


def rows_by_key(rows) -> dict[tuple[str, str], object]:
    return {(row.task, row.metric): row for row in rows}


def test_a_known_effect_is_covered_and_detected(tmp_path: Path) -> None:
    reference, other = runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=12)
    groups = load_groups({"base": [reference], "tuned": [other / "results.json"]})
    assert {metric for _, metric in rows_by_key(compare_groups(groups, resamples=200))} == {
        "loss",
        "task_score",
    }
    rows = rows_by_key(compare_groups(groups, ["loss", "task_score", "exact_match"]))
    assert {task for task, _ in rows} == {*TASKS, "macro"}
    for task in (*TASKS, "macro"):
        loss = rows[(task, "loss")]
        assert loss.test == "wilcoxon"
        assert loss.ci_low < -0.1 < loss.ci_high and loss.ci_high < 0  # covers the true effect, excludes 0
        assert loss.p_holm < 0.05
        score = rows[(task, "task_score")]
        assert score.test == "mcnemar"  # binary answers of single runs: exact sign test on discordant pairs
        assert score.difference == pytest.approx(12 / SCORED)  # the paired mean difference, exactly
        assert score.ci_low < 12 / SCORED < score.ci_high and score.ci_low > 0
        assert score.p == pytest.approx(
            2 * 0.5 ** (12 if task != "macro" else 24)
        )  # 12 (24) discordant, one way
        assert score.p_holm < 0.05 and score.p_holm >= score.p
    assert rows[("macro", "exact_match")].examples == 2 * SCORED


def test_identical_runs_differ_by_exactly_zero_and_nothing_is_significant(tmp_path: Path) -> None:
    reference, _ = runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=12)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "examples.jsonl").write_bytes((reference / "examples.jsonl").read_bytes())
    rows = compare_groups(load_groups({"a": [reference], "b": [copy]}))
    assert rows
    for row in rows:
        assert row.difference == 0.0 and row.ci_low == 0.0 and row.ci_high == 0.0, row
        assert row.p == 1.0 and row.p_holm == 1.0, row


def test_seeds_are_resampled_as_well_as_examples() -> None:
    """Three seeds per group whose runs differ by a per-seed offset: resampling seeds widens the interval
    beyond what the same data averaged over seeds gives (examples only), and it still covers the effect."""
    rng = np.random.default_rng(3)
    examples = 150
    difficulty = rng.gamma(2.0, 0.5, examples)
    offsets = np.array([[-0.15], [0.0], [0.15]])
    reference = difficulty + offsets + rng.normal(0, 0.05, (3, examples))
    other = difficulty - 0.1 + offsets[::-1] * 0.8 + rng.normal(0, 0.05, (3, examples))
    ones = np.ones((3, examples))
    seeded = paired_difference([(GroupValues(reference, ones), GroupValues(other, ones))], resamples=2000)
    averaged = paired_difference(
        [
            (
                GroupValues(reference.mean(0, keepdims=True), ones[:1]),
                GroupValues(other.mean(0, keepdims=True), ones[:1]),
            )
        ],
        resamples=2000,
    )
    assert seeded.difference == pytest.approx(averaged.difference)
    assert seeded.ci_low < -0.1 < seeded.ci_high
    assert (seeded.ci_high - seeded.ci_low) > 3 * (averaged.ci_high - averaged.ci_low)
    assert seeded.detectable > averaged.detectable > 0
    # the test is over examples, each group's values averaged over its runs (a per-example difference test)
    p, test = paired_test([(GroupValues(reference, ones), GroupValues(other, ones))])
    assert test == "wilcoxon" and p < 1e-6


def test_examples_are_resampled_within_each_task() -> None:
    """The macro interval of two tasks with opposite effects is the stratified one: each resample keeps every
    task's size, so the macro difference stays near the mean of the two task differences; pooling examples
    across tasks would mix the tasks and widen it."""
    size = 80
    tasks = []
    for effect in (1.0, -1.0):
        reference = np.zeros((1, size))
        other = np.full((1, size), effect) + np.linspace(-0.01, 0.01, size)
        tasks.append((GroupValues(reference, np.ones((1, size))), GroupValues(other, np.ones((1, size)))))
    macro = paired_difference(tasks, resamples=2000)
    assert macro.difference == pytest.approx(0.0, abs=1e-12)
    assert -0.01 < macro.ci_low < macro.ci_high < 0.01


def test_token_weighted_loss_difference_equals_the_reports() -> None:
    """The loss difference is sum(loss_sum)/sum(num_tokens) of one run minus the other's: results.json's."""
    tokens = np.array([[2.0, 8.0, 5.0]])
    loss_sum_reference, loss_sum_other = np.array([[4.0, 8.0, 5.0]]), np.array([[2.0, 8.0, 10.0]])
    found = paired_difference(
        [(GroupValues(loss_sum_reference / tokens, tokens), GroupValues(loss_sum_other / tokens, tokens))],
        resamples=200,
    )
    assert found.difference == pytest.approx(20 / 15 - 17 / 15)


def test_a_single_example_or_run_is_held_fixed() -> None:
    """scipy cannot resample a set of one: a one-example task is fixed inside the macro, and with nothing left to
    resample there is a difference but no interval."""
    one, five = np.ones((1, 1)), np.ones((1, 5))
    alone = paired_difference([(GroupValues(0 * one, one), GroupValues(one, one))], resamples=200)
    assert alone.difference == 1.0 and np.isnan(alone.ci_low) and np.isnan(alone.ci_high)
    macro = paired_difference(
        [
            (GroupValues(0 * one, one), GroupValues(one, one)),
            (GroupValues(0 * five, five), GroupValues(five + np.arange(5), five)),
        ],
        resamples=500,
    )
    assert macro.difference == pytest.approx(2.0) and macro.ci_low < 2.0 < macro.ci_high


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_refusals(tmp_path: Path) -> None:
    reference, other = runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=3)
    lines = (other / "examples.jsonl").read_text().splitlines()
    shorter = tmp_path / "shorter"
    shorter.mkdir()
    (shorter / "examples.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(ComparisonError, match="example ids differ"):
        load_groups({"a": [reference], "b": [shorter]})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "examples.jsonl").write_text(lines[0] + "\n" + lines[1][:-5] + "\n")
    with pytest.raises(ComparisonError, match=r"broken/examples.jsonl:2: not JSON"):
        load_groups({"a": [broken]})
    (broken / "examples.jsonl").write_text(
        json.dumps({"task": "qa", "id": 1, "loss_sum": "x", "num_tokens": 1})
    )
    with pytest.raises(ComparisonError, match=r"examples.jsonl:1: 'loss_sum' must be a finite number"):
        load_groups({"a": [broken]})
    (broken / "examples.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(ComparisonError, match=r"examples.jsonl:2: example .* appears twice"):
        load_groups({"a": [broken]})
    with pytest.raises(ComparisonError, match="no such file"):
        load_groups({"a": [tmp_path / "nowhere"]})
    with pytest.raises(ComparisonError, match="matches no file"):
        load_groups({"a": [str(tmp_path / "seed*")]})


def test_cli_missing_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference, _ = runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=3)
    assert main([f"a={reference}", f"b={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]


@pytest.mark.slow
def test_cli_writes_table_json_and_forest_plot(tmp_path: Path) -> None:
    """``hycam compare`` in a subprocess: a group of seeds given by a glob against a single run."""
    runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=12)
    for seed in range(2):  # two more seeds of the better run, each with its own noise
        _, other = runs_with_effect(tmp_path / f"s{seed}", loss_effect=0.1, extra_correct=12, seed=0)
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "examples.jsonl").write_bytes((other / "examples.jsonl").read_bytes())
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    out = tmp_path / "comparison"
    command = [sys.executable, "-m", "hycam_pl.cli", "compare", f"base={tmp_path / 'reference'}"]
    command += [f"tuned={tmp_path / 'seed*'}", "--output", str(out), "--resamples", "999"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| tuned vs base | **macro** | task_score | 120 |" in result.stdout
    assert "Verdicts (macro):\n- base's macro loss is higher (worse) than tuned's by " in result.stdout
    payload = json.loads((out / "comparison.json").read_text())
    assert payload["reference"] == "base" and len(payload["groups"]["tuned"]) == 2
    macro = payload["pairs"]["tuned vs base"]["macro"]["task_score"]
    assert macro["difference"] == pytest.approx(0.2) and macro["p_holm"] < 0.05
    assert set(macro) >= {"difference", "ci_low", "ci_high", "p", "p_holm"}
    assert macro["verdict"].startswith("base's macro task_score is lower (worse) than tuned's by 0.2000 [")
    markdown = (out / "comparison.md").read_text()
    assert "tuned vs base" in markdown
    verdicts = markdown.split("## Verdicts (macro)")[1].split("## All rows")[0]
    assert f"- {macro['verdict']}" in verdicts and "base's macro loss is higher (worse)" in verdicts
    assert (out / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_a_malformed_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference, other = runs_with_effect(tmp_path, loss_effect=0.1, extra_correct=3)
    (other / "examples.jsonl").write_text(
        '{"task": "qa", "id": 1, "loss_sum": 1.0, "num_tokens": 2}\n{"task": "qa"}\n'
    )
    assert main([f"a={reference}", f"b={other}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {other / 'examples.jsonl'}:2: 'id' must be a string or an integer"
    ]


ROW = Row(
    other="lora",
    reference="hycam",
    task="macro",
    metric="loss",
    examples=500,
    reference_mean=0.30,
    other_mean=0.331,
    difference=0.031,
    ci_low=0.02,
    ci_high=0.043,
    detectable=0.012,
    test="wilcoxon",
    p=1e-6,
    p_holm=1.2e-5,
)


def test_verdicts_claim_a_difference_only_when_the_corrected_test_rejects() -> None:
    """The sentences READMEs quote: direction from the reference's side, better/worse by the metric's sense,
    the interval as the reference's margin; otherwise "not detectable at this size" with the smallest
    detectable difference, never "no difference"."""
    assert verdict(ROW, 12) == (
        "hycam's macro loss is lower (better) than lora's by 0.0310 [0.0200, 0.0430], "
        "p (Holm, 12 comparisons) = 1.20e-05 (wilcoxon, 500 examples)."
    )
    score = dataclasses.replace(ROW, metric="task_score", difference=-0.05, ci_low=-0.08, ci_high=-0.02)
    assert verdict(score).startswith(
        "hycam's macro task_score is higher (better) than lora's by 0.0500 [0.0200, "
    )
    worse = dataclasses.replace(ROW, task="qa", metric="task_score")
    assert verdict(worse).startswith("hycam's qa task_score is lower (worse) than lora's by 0.0310")
    unseen = dataclasses.replace(ROW, difference=0.012, ci_low=-0.02, ci_high=0.041, p=0.3, p_holm=0.62)
    text = verdict(unseen, 12)
    assert text.startswith("No difference in macro loss between hycam and lora is detectable at this size: ")
    assert (
        "lora - hycam = +0.0120 [-0.0200, +0.0410]" in text
        and "smallest detectable difference is 0.0120" in text
    )
    assert "lower" not in text and "better" not in text
    # interval and test disagree: said, in both directions
    assert "excludes 0, but the corrected test does not reject" in verdict(
        dataclasses.replace(ROW, ci_low=0.001, p_holm=0.2)
    )
    assert "includes 0: the test and the interval disagree" in verdict(
        dataclasses.replace(ROW, ci_low=-0.001)
    )
    assert "no test possible" in verdict(dataclasses.replace(ROW, p=float("nan"), p_holm=float("nan")))
