"""Every shipped YAML parses through the real CLI parser (``--print_config``); overrides and interpolation work."""

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from hycam_pl.cli import main
from hycam_pl.methods import METHODS, AdaptationMethod, resolve_method

from .conftest import REPO

CONFIGS = REPO / "configs"
PAPER_BASE = CONFIGS / "paper" / "hycam.yaml"
MODEL_FRAGMENTS = sorted((CONFIGS / "paper" / "models").glob("*.yaml"))
ABLATIONS = sorted((CONFIGS / "ablations").glob("*.yaml"))  # overlays, checked on top of tiny.yaml
TRAINER_OVERLAYS = sorted((CONFIGS / "trainer").glob("*.yaml"))  # strategies, also over tiny.yaml
# Sweep files are not hycam configs; tests/sweeps/test_sweep_files.py loads and validates them.
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))


def print_config(*config_files: Path, overrides: tuple[str, ...] = ()) -> dict:
    args = ["fit"]
    for path in config_files:
        args += ["-c", str(path)]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit) as exit_info:
        main([*args, *overrides, "--print_config"])
    assert exit_info.value.code in (0, None), buffer.getvalue()
    return yaml.safe_load(buffer.getvalue())


def shipped_configs() -> list[tuple[Path, ...]]:
    """Standalone configs alone; model fragments with the paper base they extend; ablations over tiny.yaml."""
    standalone = [
        (p,)
        for p in sorted(CONFIGS.rglob("*.yaml"))
        if p.parent.name not in ("models", "ablations", "trainer", "sweeps")
    ]
    return (
        standalone
        + [(PAPER_BASE, fragment) for fragment in MODEL_FRAGMENTS]
        + [(CONFIGS / "tiny.yaml", overlay) for overlay in ABLATIONS]
        + [(CONFIGS / "tiny.yaml", overlay) for overlay in TRAINER_OVERLAYS]
    )


def test_every_yaml_under_configs_is_covered():
    covered = {path for combo in shipped_configs() for path in combo} | set(SWEEPS)
    assert covered == set(CONFIGS.rglob("*.yaml"))
    assert len(MODEL_FRAGMENTS) == 5


@pytest.mark.parametrize("files", shipped_configs(), ids=lambda files: "+".join(p.stem for p in files))
def test_shipped_config_parses(files):
    config = print_config(*files)
    method = config["model"]["method"]
    assert (isinstance(method, str) and method in METHODS) or set(method) == {"class_path", "init_args"}
    assert isinstance(resolve_method(method), AdaptationMethod)
    assert config["data"]["tasks"], "a config must name its tasks"
    if files[-1] in MODEL_FRAGMENTS:
        fragment = yaml.safe_load(files[-1].read_text())
        assert config["model"]["backbone"] == fragment["model"]["backbone"]
        assert config["data"]["tokenizer"] == fragment["model"]["backbone"]
        assert (
            config["trainer"]["precision"] == "bf16-mixed"
            and config["model"]["activation_checkpointing"] is True
        )


def test_quickstart_interpolation_and_overrides():
    config = print_config(
        CONFIGS / "tiny.yaml", overrides=("--model.method.num_experts", "8", "--data.max_length", "128")
    )
    assert config["model"]["method"]["init_args"]["num_experts"] == 8
    assert config["model"]["backbone"]["max_position_embeddings"] == 128  # ${data.max_length}
    assert config["model"]["backbone"]["model_type"] == "llama"


def test_quickstart_is_smollm2_and_passes_every_check_before_training():
    """The config `bash scripts/quickstart.sh` runs: parsed by the CLI, model options validated against the real
    backbone's config, its data tokenised with the real tokenizer (nothing trained)."""
    from hycam_pl.data import MultiTaskDataModule
    from hycam_pl.training.validation import validate_model_options

    config = print_config(CONFIGS / "quickstart.yaml")
    model, data = config["model"], config["data"]
    assert model["backbone"] == data["tokenizer"] == "smollm2-135m-instruct"
    assert config["trainer"]["accelerator"] == "cpu" and config["trainer"]["max_steps"] <= 100
    assert any(c["class_path"] == "hycam_pl.callbacks.ProgressLog" for c in config["trainer"]["callbacks"])
    validate_model_options(model)  # method, HyCAM options and their fit to SmolLM2's config
    datamodule = MultiTaskDataModule(**{**data, "cache_dir": None})
    datamodule.setup("fit")
    assert len(datamodule.tokenizer) == 49152
    assert datamodule.tokenizer.chat_template and all(t["prompt_format"] == "chat" for t in data["tasks"])
    report = str(datamodule._report)
    rows = [line.split() for line in report.splitlines()[1:]]  # a header line, then one row per task
    assert [row[0] for row in rows] == ["arithmetic", "code", "qa", "list_ops"]
    assert all(row[-2:] == ["0", "0"] for row in rows), report  # nothing truncated or dropped at max_length
