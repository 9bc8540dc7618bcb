"""Sweeps over expert counts: every shipped config takes ``num_experts`` 0/1/2/4/8 or ``method cam`` as a single
override (the configs set ``rank``, a routing option that means nothing without experts: ignored, said once)."""

from __future__ import annotations

import warnings

import pytest

from hycam_pl.methods import HyCAMMethod, resolve_method
from hycam_pl.modulation import config as config_module
from hycam_pl.modulation import read_adapter_config
from hycam_pl.training.validation import validate_model_options
from tests.reliability.helpers import run_hycam, run_hycam_in_process

from .conftest import tiny_quickstart
from .test_configs import print_config, shipped_configs

SWEEP = {
    **{f"num_experts={k}": ("--model.method.num_experts", str(k)) for k in (0, 1, 2, 4, 8)},
    "method=cam": ("--model.method", "cam"),
}
EXPECTED_EXPERTS = {**{f"num_experts={k}": k for k in (0, 1, 2, 4, 8)}, "method=cam": 0}


# Configs that fix the very structure an expert-count sweep varies are not swept over: plain-CAM configs
# (smollm2/cam.yaml, the cam_only ablation) pin K = 0, and no_shared_cam with K = 0 would leave nothing to train,
# which is refused with an error.
STRUCTURAL_ABLATIONS = {"cam_only", "no_shared_cam", "cam"}
SWEEPABLE = [files for files in shipped_configs() if files[-1].stem not in STRUCTURAL_ABLATIONS]


@pytest.mark.parametrize("files", SWEEPABLE, ids=lambda files: "+".join(p.stem for p in files))
def test_every_shipped_config_accepts_each_sweep_override(files, monkeypatch):
    for name, override in SWEEP.items():
        config = print_config(*files, overrides=override)
        if not isinstance(resolve_method(config["model"]["method"]), HyCAMMethod):
            continue
        monkeypatch.setattr(config_module, "_WARNED", set())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            validate_model_options(
                config["model"]
            )  # the CLI's pre-check: method, HyCAM options, backbone fit
        ignored = [w for w in caught if "ignored" in str(w.message)]
        # num_experts 0 ignores the config's routing options, saying so once; method cam replaces the method
        # (its defaults set none); otherwise silence
        assert len(ignored) == (1 if name == "num_experts=0" else 0), [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """One step of ``hycam fit`` per override on the tiny config (which sets ``rank: 8``); ``num_experts 0``
    through the console script (its stderr is what a user sees), the others in-process."""
    results = {}
    for name, override in SWEEP.items():
        root = tmp_path_factory.mktemp(name.replace("=", "-"))
        config = tiny_quickstart(root, max_steps=1, val_every=1, num_examples=8)
        args = ["fit", "-c", str(config), *override, "--trainer.limit_val_batches", "0"]
        if name == "num_experts=0":
            results[name] = (run_hycam(args, root), root)
        else:
            config_module._WARNED.clear()
            results[name] = (run_hycam_in_process(args, root), root)
    return results


@pytest.mark.parametrize("name", list(SWEEP))
def test_sweep_override_trains_through_the_cli(sweep_runs, name):
    result, root = sweep_runs[name]
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = root / "runs" / "tiny" / "version_0" / "adapter"
    saved = read_adapter_config(adapter)["config"]
    assert saved.num_experts == EXPECTED_EXPERTS[name]
    if saved.num_experts == 0:
        assert saved.rank is None and saved.tau is None
    else:
        assert saved.rank == 8


def test_num_experts_zero_warns_once_on_stderr(sweep_runs):
    result, _ = sweep_runs["num_experts=0"]
    lines = [line for line in result.stderr.splitlines() if "num_experts=0 (plain CAM)" in line]
    assert len(lines) == 1 and "rank=8 is ignored" in lines[0], result.stderr[-3000:]
