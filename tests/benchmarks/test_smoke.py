"""The benchmarks run in smoke mode (one step each) so they cannot rot; their numbers are not checked here."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_step_benchmark_smoke(tmp_path):
    report = load("step").main(["--smoke", "--out", str(tmp_path / "step")])
    names = [row["variant"] for row in report["results"]]
    assert {"frozen", "lora_r8_qv", "hycam_k4", "hycam_k8", "reference_k4", "reference_k8", "full"} <= set(
        names
    )
    assert {"molora", "hydralora"} <= set(names)  # the routed baselines are measured when registered
    rows = {row["variant"]: row for row in report["results"]}
    assert rows["hycam_k8"]["trainable"] == rows["reference_k8"]["trainable"]  # same method, other layout
    assert all(math.isfinite(row["vs_lora"]) and row["tokens_per_s"] > 0 for row in report["results"])
    assert (tmp_path / "step.json").is_file() and "| hycam_k8 |" in (tmp_path / "step.md").read_text()


def test_generate_benchmark_smoke():
    report = load("generate").main(["--smoke"])
    assert report["selected_equals_dense"] is True
    assert set(report["vs_bare"]) == {"bare", "hycam_selected", "hycam_dense"}


@pytest.mark.slow
def test_data_benchmark_smoke():
    report = load("data").main(["--smoke"])
    padding = report["padding"]
    assert padding["length_grouping=16"]["padded_fraction"] < padding["length_grouping=0"]["padded_fraction"]
    assert report["ms_per_step"]["bare"] > 0 and report["ms_per_step"]["lightning"] > 0


@pytest.mark.slow
def test_memory_benchmark_smoke(tmp_path):
    report = load("memory").main(["--smoke", "--out", str(tmp_path / "memory")])
    stages = [row["stage"] for row in report["stages"]]
    assert "fit: first training step" in stages and "test: loss, generation, scores, figures" in stages
    assert report["peak_mb"] >= 0.95 * max(row["rss_mb"] for row in report["stages"]) > 0
    assert "ray" not in report["heavy_modules_after_run"]  # fit and test never import the sweep machinery
    assert (tmp_path / "memory.json").is_file() and "| import hycam_pl.cli |" in (
        tmp_path / "memory.md"
    ).read_text()
