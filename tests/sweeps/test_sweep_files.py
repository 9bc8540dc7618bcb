"""Sweep files are validated at load: every shipped sweep expands into trials whose configs hycam accepts, and
a bad sweep file stops with one ``error:`` line naming the file and the key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hycam_pl.cli.sweep import main as sweep_main
from hycam_pl.sweeps.spec import SweepError, load_sweep, trial_config
from hycam_pl.training.validation import validate_model_options
from tests.training.conftest import REPO

SHIPPED = sorted((REPO / "configs" / "sweeps").glob("*.yaml")) + sorted(
    [*(REPO / "experiments").glob("*/sweep.yaml"), *(REPO / "experiments").glob("*/select_lr.yaml")]
)


def test_shipped_sweeps_are_the_expected_ones() -> None:
    assert [str(p.relative_to(REPO)) for p in SHIPPED] == [
        "configs/sweeps/ablations.yaml",
        "configs/sweeps/experts.yaml",
        "configs/sweeps/methods.yaml",
        "experiments/decisive_comparison/select_lr.yaml",
        "experiments/decisive_comparison/sweep.yaml",
        "experiments/decisive_expert_count/sweep.yaml",
        "experiments/expert_count/sweep.yaml",
        "experiments/method_comparison/sweep.yaml",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_sweep_loads_and_every_trial_config_validates(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded from a working directory where the base config(s) are the tiny test config, so the test does
    not depend on the SmolLM2 config (another branch) or its weights."""
    raw = yaml.safe_load(path.read_text())
    bases = raw["base"]
    for base in [bases] if isinstance(bases, str) else bases:
        (tmp_path / base).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / base)
    shutil.copytree(REPO / "configs" / "ablations", tmp_path / "configs" / "ablations")  # variant overlays
    if "select_from" in raw:  # a complete selection, as the tuning sweep writes it, for every variant
        selection = tmp_path / raw["select_from"]
        selection.parent.mkdir(parents=True, exist_ok=True)
        names = [raw["select_variant"]] if "select_variant" in raw else raw["variants"]
        variants = {name: {"chosen": 1.0e-3, "complete": True} for name in names}
        selection.write_text(json.dumps({"key": "model.learning_rate", "variants": variants}))
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(path)
    trials = spec.trials()
    assert len(trials) == len(spec.seeds) * len(spec.variants or [None]) * len(
        next(iter(spec.grid.values()), [0])
    )
    assert len({t.id for t in trials}) == len(trials)
    for trial in trials:
        config = trial_config(trial.config, tmp_path / "trials" / trial.id)
        model = OmegaConf.to_container(OmegaConf.create(config), resolve=True)["model"]  # as the CLI resolves
        validate_model_options(
            model
        )  # the CLI's own pre-check: method, its options, HyCAM options, backbone fit
        assert config["seed_everything"] == trial.seed
        assert config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "trials" / trial.id)


def write(tmp_path: Path, **sweep: object) -> Path:
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "method": {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"num_experts": 2}}
                }
            }
        )
    )
    content = {"base": str(base), "grid": {"model.method.num_experts": [1, 2]}, "metrics": ["macro/loss"]}
    content.update(sweep)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gird": {}}, r"unknown key\(s\) \['gird'\]"),
        (
            {"grid": {"model.method.num_experts": []}},
            r"grid\.model\.method\.num_experts: must be a non-empty list",
        ),
        ({"grid": {}}, r"grid: empty"),
        ({"base": "missing.yaml"}, r"base: config file not found: missing\.yaml"),
        ({"grid": {"modle.hycam.rank": [1]}}, r"grid\.modle\.hycam\.rank: unknown config section 'modle'"),
        ({"metrics": ["task_score"]}, r"metrics: .* '<task>/<metric>'"),
        ({"seeds": [0, 0]}, r"seeds: .* distinct"),
        (
            {"grid": {"model.method.num_experts": [{"value": 1, "oops": 2}]}},
            r"grid\.model\.method\.num_experts: .*with",
        ),
        (
            {"variants": {"x": {"configs": "nope.yaml"}}},
            r"variants\.x\.configs: config file not found: nope\.yaml",
        ),
        (
            {"overrides": {"trainer.logger": False}},
            r"trial num_experts=1-seed=0: trainer\.logger=False: a sweep needs the TensorBoard logger",
        ),
        (
            {"overrides": {"model.method.num_experts.deeper": 1}},
            r"overrides: model\.method\.num_experts\.deeper: ",
        ),
    ],
)
def test_bad_sweep_file_names_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write(tmp_path, **change)
    with pytest.raises(SweepError, match=message) as error:
        load_sweep(path)
    assert str(path) in str(error.value)


def test_cli_reports_one_error_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, grid={"model.method.num_experts": []})
    with pytest.raises(SystemExit) as exit_info:
        sweep_main(["-c", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: grid.model.method.num_experts: must be a non-empty list of values"]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_readme_sweep_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example sweep file is a valid sweep file."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Sweeps") :]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "configs" / "smollm2").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / "configs" / "smollm2" / "hycam.yaml")
    (tmp_path / "my_overlay.yaml").write_text("model:\n  method:\n    init_args:\n      rank: 4\n")
    (tmp_path / "sweep.yaml").write_text(example)
    monkeypatch.chdir(tmp_path)
    spec = load_sweep("sweep.yaml")
    trials = spec.trials()
    assert len(trials) == 3 * 3 * 3
    ablation = next(t for t in trials if t.variant == "ablation" and t.point["model.method.num_experts"] == 2)
    assert ablation.config["model"]["method"]["init_args"] == {"num_experts": 2, "rank": 4, "shared": False}
    cam = next(t for t in trials if t.variant == "hycam" and t.point["model.method.num_experts"] == 0)
    assert cam.config["model"]["method"]["init_args"] == {"num_experts": 0, "rank": 8}
    assert cam.config["model"]["learning_rate"] == 1.0e-3
    soft = next(t for t in trials if t.variant == "soft")
    assert soft.config["model"]["method"]["init_args"]["hard"] is False
    assert cam.config["trainer"]["max_steps"] == 200
