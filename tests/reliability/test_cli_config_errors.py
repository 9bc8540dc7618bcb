"""Bad configuration through the real ``hycam fit``: one line naming the option, before any model is built."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hycam_pl import HyCAMConfig, attach, save_adapter
from hycam_pl.backbone import load_backbone
from tests.reliability.helpers import (
    TINY_BACKBONE,
    CliResult,
    error_lines,
    files_under,
    run_config,
    run_hycam_in_process,
    run_many,
    write_config,
)

pytestmark = pytest.mark.slow

ADAPTER = "{adapter}"  # replaced by the path of an adapter saved from a smaller (hidden_size=32) model

# name -> (extra CLI arguments, regexes that must all appear in one line)
CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown_method": (["--model.method", "lora2"], (r"model\.method='lora2' is unknown", r"hycam")),
    "bad_routing_option_without_experts": (
        [
            "--model.method.num_experts",
            "0",
            "--model.method.tau",
            "0",
        ],  # ignored without experts, still checked
        (r"HyCAMConfig\.tau=0(\.0)? is invalid",),
    ),
    "rank_above_hidden_size": (["--model.method.rank", "1000"], (r"rank=1000", r"hidden_size=64")),
    "layer_out_of_range": (["--model.method.layers", "[0, 5]"], (r"layers", r"\[5\]", r"out of range")),
    "retired_option": (
        ["--model.hycam.num_experts", "2"],
        (r"model\.hycam is no longer an option", r"model\.method"),
    ),
    "missing_backbone": (
        ["--model.backbone", "no-such-org/no-such-model"],
        (r"model\.backbone", r"no-such-org/no-such-model", r"offline"),
    ),
}
# Parsed by jsonargparse before hycam_pl sees it: its own multi-line "error:" report, exit code 2.
PARSER_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown_hycam_option": (["--model.method.fooo", "3"], (r"fooo",)),
}
ADAPTER_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "adapter_other_base_model": (
        ["--model.adapter", ADAPTER],
        (r"model\.adapter", r"different base model", r"hidden_size: adapter 32 vs model\.backbone 64"),
    ),
    "adapter_missing": (["--model.adapter", "/no/such/adapter"], (r"model\.adapter", r"not found")),
}
IN_SUBPROCESS = {"unknown_method", "rank_above_hidden_size"}


@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backbone = {**TINY_BACKBONE, "hidden_size": 32, "intermediate_size": 64}
    model = attach(load_backbone(backbone), HyCAMConfig(num_experts=2, rank=4))
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, small_adapter: Path) -> dict[tuple[str, str], tuple]:
    cases = {**CASES, **PARSER_CASES, **ADAPTER_CASES}
    roots: dict[tuple[str, str], Path] = {}

    def make_job(name: str, mode: str) -> tuple[list[str], Path]:
        root = tmp_path_factory.mktemp(f"{name}-{mode}")
        config = write_config(root / "config.yaml", run_config(root, every_n_train_steps=1))
        extra = [arg.replace(ADAPTER, str(small_adapter)) for arg in cases[name][0]]
        roots[(mode, name)] = root
        return ["fit", "-c", str(config), *extra], root

    results = run_many(list(cases), make_job, IN_SUBPROCESS)
    return {key: (result, roots[key]) for key, result in results.items()}


def _runs(cases: dict) -> list[tuple[str, str]]:
    return [("in-process", n) for n in cases] + [("hycam", n) for n in sorted(IN_SUBPROCESS & set(cases))]


def _ids(runs: list[tuple[str, str]]) -> list[str]:
    return [f"{mode}-{name}" for mode, name in runs]


def _in_one_line(text: str, fragments: tuple[str, ...]) -> bool:
    return any(all(re.search(f, line) for f in fragments) for line in text.splitlines())


@pytest.mark.parametrize("run", _runs({**CASES, **PARSER_CASES}), ids=_ids(_runs({**CASES, **PARSER_CASES})))
def test_bad_option_stops_before_training_and_names_it(outcomes, run: tuple[str, str]) -> None:
    result, root = outcomes[run]
    fragments = {**CASES, **PARSER_CASES}[run[1]][1]
    assert result.returncode != 0, result.stderr[-2000:]
    assert _in_one_line(result.stderr, fragments), result.stderr[-3000:]
    assert not list(root.rglob("*.ckpt")) and not list(root.rglob("adapter_model.safetensors"))


@pytest.mark.parametrize("run", _runs(CASES), ids=_ids(_runs(CASES)))
def test_bad_option_is_one_error_line_without_traceback(outcomes, run: tuple[str, str]) -> None:
    result, root = outcomes[run]
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and all(re.search(f, lines[0]) for f in CASES[run[1]][1]), result.stderr[-3000:]
    assert files_under(root / "runs") == []


def test_unknown_option_is_a_parser_error(outcomes) -> None:
    """jsonargparse rejects unknown keys itself (usage + ``error:``), exit code 2, no traceback."""
    result, _ = outcomes[("in-process", "unknown_hycam_option")]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert any("fooo" in line for line in result.stderr.splitlines() if "not accepted" in line), result.stderr


@pytest.mark.parametrize("name", ADAPTER_CASES)
def test_adapter_that_does_not_fit_is_one_error_line(outcomes, name: str) -> None:
    result, root = outcomes[("in-process", name)]
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and all(re.search(f, lines[0]) for f in ADAPTER_CASES[name][1]), result.stderr[
        -3000:
    ]
    assert files_under(root / "runs") == []


def test_config_is_checked_before_the_backbone_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 7B backbone must not be loaded only to be told the rank is too large: validation reads its config."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backbone was loaded before the config was validated")

    monkeypatch.setattr("hycam_pl.training.module.load_backbone", refuse)
    config = write_config(tmp_path / "config.yaml", run_config(tmp_path))
    result: CliResult = run_hycam_in_process(
        ["fit", "-c", str(config), "--model.method.rank", "65"], tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        "error: model.method.rank=65 exceeds the hidden_size=64 of model.backbone; use a rank <= 64"
    ]
