"""``compare_to`` and ``select``/``select_from`` on hand-made trial directories, without running any trial:
results.md's paired comparisons (the code of ``hycam compare``), the validation-loss selection file, and a later
sweep reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hycam_pl.sweeps.aggregate import aggregate, read_record
from hycam_pl.sweeps.runner import trial_dir
from hycam_pl.sweeps.spec import SweepError, load_sweep

EXAMPLES = 60


def write_sweep(tmp_path: Path, name: str, **keys) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "learning_rate": 1.0e-3,
                    "method": {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 2}},
                }
            }
        )
    )
    sweep = tmp_path / f"{name}.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "base": str(base),
                "output": str(tmp_path / name),
                "metrics": ["macro/loss"],
                **keys,
            }
        )
    )
    return sweep


def finish(spec, directory: Path, loss_of, val_loss_of=None) -> None:
    """Each trial done, with examples.jsonl (per-example losses ``loss_of(trial)`` + noise) and a validation loss."""
    for trial in spec.trials():
        folder = trial_dir(directory, trial)
        run = folder / "logs" / "version_0"
        run.mkdir(parents=True)
        rng = np.random.default_rng(trial.seed)
        losses = loss_of(trial) + np.linspace(0, 1, EXAMPLES) + rng.normal(0, 0.01, EXAMPLES)
        lines = [
            json.dumps({"task": "qa" if i % 2 else "code", "id": str(i), "loss_sum": 4 * v, "num_tokens": 4})
            for i, v in enumerate(losses)
        ]
        (run / "examples.jsonl").write_text("\n".join(lines) + "\n")
        result = {"status": "done", "metrics": {"macro/loss": float(np.mean(losses))}, "fit_s": 1.0}
        if val_loss_of is not None:
            result["validation"] = {"val/macro/loss": val_loss_of(trial)}
        (folder / "result.json").write_text(json.dumps(result))


def test_compare_to_pairs_every_other_variant_with_it(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        "methods",
        variants={"hycam": {}, "lora": {"model.method": "lora"}, "same": {"model.method.rank": 4}},
        seeds=[0, 1],
        compare_to="hycam",
    )
    spec = load_sweep(sweep)
    effect = {"hycam": 0.0, "lora": 0.3, "same": 0.0}
    finish(spec, spec.output, lambda trial: effect[trial.variant])
    records = [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()]
    aggregate(spec, records, spec.output)
    markdown = (spec.output / "results.md").read_text()
    assert "## Paired comparisons with variant `hycam`" in markdown
    assert "| lora vs hycam | **macro** | loss | 60 |" in markdown
    assert "![paired differences](forest.png)" in markdown
    verdicts = markdown.split("Verdicts (macro):")[1].split("| comparison |")[0]
    assert "- hycam's macro loss is lower (better) than lora's by 0.3" in verdicts
    assert "- No difference in macro loss between hycam and same is detectable at this size" in verdicts
    pairs = json.loads((spec.output / "comparison.json").read_text())["pairs"]
    assert set(pairs) == {"lora vs hycam", "same vs hycam"}
    lora = pairs["lora vs hycam"]["macro"]["loss"]
    assert (
        lora["difference"] == pytest.approx(0.3, abs=0.01) and lora["ci_low"] > 0.25 and lora["p_holm"] < 0.05
    )
    same = pairs["same vs hycam"]["macro"]["loss"]  # same seeds, same noise: identical runs
    assert same["difference"] == 0.0 and same["p"] == 1.0
    assert (spec.output / "forest.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_to_a_grid_value_and_groups_without_examples(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, "experts", grid={"model.method.num_experts": [0, 2, 4]}, compare_to=0)
    spec = load_sweep(sweep)
    assert spec.compare_to == ("model.method.num_experts", 0)
    finish(spec, spec.output, lambda trial: 0.1 * trial.point["model.method.num_experts"])
    missing = next(t for t in spec.trials() if t.point["model.method.num_experts"] == 4)
    (trial_dir(spec.output, missing) / "logs" / "version_0" / "examples.jsonl").unlink()
    records = [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()]
    aggregate(spec, records, spec.output)
    markdown = (spec.output / "results.md").read_text()
    assert "## Paired comparisons with `model.method.num_experts` = 0" in markdown
    assert "| num_experts=2 vs num_experts=0 | **macro** | loss |" in markdown
    assert (
        f"num_experts=4 vs num_experts=0: not compared, no per-example results (`examples.jsonl`) for {missing.id}"
        in markdown
    )
    with pytest.raises(SweepError, match="compare_to: 3 is neither a variant"):
        load_sweep(write_sweep(tmp_path, "bad", grid={"model.method.num_experts": [0, 2]}, compare_to=3))


def test_selection_on_validation_loss_and_a_later_sweep_using_it(tmp_path: Path) -> None:
    rates = [1.0e-4, 1.0e-3]
    sweep = write_sweep(
        tmp_path,
        "tune",
        grid={"model.learning_rate": rates},
        variants={"hycam": {}, "lora": {"model.method": "lora"}},
        seeds=[0, 1],
        select="model.learning_rate",
    )
    spec = load_sweep(sweep)
    # validation prefers 1e-3 for hycam and 1e-4 for lora; the test losses say the opposite (never used)
    best = {"hycam": 1.0e-3, "lora": 1.0e-4}
    finish(
        spec,
        spec.output,
        loss_of=lambda t: 0.0 if t.point["model.learning_rate"] != best[t.variant] else 1.0,
        val_loss_of=lambda t: (
            (1.0 if t.point["model.learning_rate"] == best[t.variant] else 2.0) + 0.1 * t.seed
        ),
    )
    records = [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()]
    aggregate(spec, records, spec.output)
    chosen = json.loads((spec.output / "selection.json").read_text())
    assert chosen["key"] == "model.learning_rate" and chosen["metric"] == "val/macro/loss"
    assert {name: v["chosen"] for name, v in chosen["variants"].items()} == best
    hycam = chosen["variants"]["hycam"]
    assert hycam["complete"] and [v["validation_loss"] for v in hycam["values"]] == pytest.approx(
        [2.05, 1.05]
    )
    assert hycam["values"][1]["per_seed"] == {"0": 1.0, "1": pytest.approx(1.1)}
    assert (
        "## Selection of `model.learning_rate` on validation loss" in (spec.output / "results.md").read_text()
    )

    later = write_sweep(
        tmp_path,
        "compare",
        variants={"hycam": {}, "lora": {"model.method": "lora"}},
        select_from=str(spec.output / "selection.json"),
    )
    rates_used = {t.variant: t.config["model"]["learning_rate"] for t in load_sweep(later).trials()}
    assert rates_used == best
    # An ablation of one method runs every point at that method's rate (the variant names need not match).
    ablation = write_sweep(
        tmp_path,
        "experts",
        grid={"model.method.num_experts": [0, 2, 4]},
        select_from=str(spec.output / "selection.json"),
        select_variant="lora",
    )
    assert {t.config["model"]["learning_rate"] for t in load_sweep(ablation).trials()} == {best["lora"]}
    unknown = write_sweep(
        tmp_path,
        "unknown",
        grid={"model.method.num_experts": [0]},
        select_from=str(spec.output / "selection.json"),
        select_variant="dora",
    )
    with pytest.raises(SweepError, match="select_variant: 'dora' has no selection in"):
        load_sweep(unknown)
    with pytest.raises(SweepError, match="select_variant: .* must be a variant name"):
        load_sweep(write_sweep(tmp_path, "alone", grid={"model.method.num_experts": [0]}, select_variant="x"))
    extra = write_sweep(
        tmp_path, "extra", variants={"dora": {}}, select_from=str(spec.output / "selection.json")
    )
    with pytest.raises(SweepError, match="has no selection for variant 'dora'"):
        load_sweep(extra)
    (trial_dir(spec.output, spec.trials()[0]) / "result.json").unlink()  # an unfinished value: incomplete
    aggregate(spec, [read_record(t, trial_dir(spec.output, t)) for t in spec.trials()], spec.output)
    with pytest.raises(SweepError, match="incomplete"):
        load_sweep(later)
    with pytest.raises(SweepError, match="select: .* must be the sweep's only grid key"):
        load_sweep(
            write_sweep(tmp_path, "bad", grid={"model.method.num_experts": [1]}, select="model.learning_rate")
        )
