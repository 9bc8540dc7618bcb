"""The checks and the error reporting behind the CLI, in-process: cheap, and precise about what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hycam_pl.training.validation as validation
from hycam_pl import HyCAMConfig, adapter_state_dict, attach, load_adapter, save_adapter
from hycam_pl.backbone import load_backbone
from hycam_pl.data import DataError
from hycam_pl.methods import HyCAMMethod
from hycam_pl.modulation import AdapterError, is_attached
from hycam_pl.training import MultiTaskLM
from hycam_pl.training.validation import (
    find_user_error,
    report_user_errors,
    validate_model_options,
)
from tests.reliability.helpers import TINY_BACKBONE

SMALL = {**TINY_BACKBONE, "hidden_size": 32, "intermediate_size": 64}


def HYCAM(init_args: dict) -> dict:  # noqa: N802 (reads like the config it stands for)
    return {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": init_args}


# ------------------------------------------------------------------------------------ error reporting
def _raise_from_torch() -> None:
    torch.zeros(2) @ torch.zeros(3)  # a RuntimeError raised inside torch, not a user error


def test_wrapped_hycam_error_is_found_behind_the_wrapper() -> None:
    try:
        try:
            HyCAMConfig(num_experts=2, rank=0)
        except ValueError as error:
            raise ValueError("Does not validate against any of the Union subtypes ...") from error
    except ValueError as wrapper:
        found = find_user_error(wrapper)
    assert found is not None and "HyCAMConfig.rank=0 is invalid" in str(found)


def test_errors_not_raised_by_hycam_pl_are_not_user_errors() -> None:
    with pytest.raises(RuntimeError) as raised:
        _raise_from_torch()
    assert find_user_error(raised.value) is None
    plain = ValueError("raised in a test module, not in hycam_pl")
    try:
        raise plain
    except ValueError:
        pass
    assert find_user_error(plain) is None


@pytest.mark.parametrize(
    ("error", "code"),
    [(DataError("task 'x': a.jsonl: line 3: invalid JSON"), 2), (FloatingPointError("non-finite loss"), 3)],
)
def test_report_user_errors_prints_one_line_and_exits(monkeypatch, capsys, error, code) -> None:
    monkeypatch.setattr(validation, "_raised_in_package", lambda e: True)
    with pytest.raises(SystemExit) as exited, report_user_errors():
        raise error
    assert exited.value.code == code
    assert capsys.readouterr().err == f"error: {error}\n"


def test_report_user_errors_keeps_tracebacks_for_bugs_and_on_request(monkeypatch) -> None:
    with pytest.raises(RuntimeError), report_user_errors():
        _raise_from_torch()
    monkeypatch.setenv(validation.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="rank=0 is invalid"), report_user_errors():
        HyCAMConfig(num_experts=2, rank=0)


def test_multi_line_messages_become_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(validation, "_raised_in_package", lambda e: True)
    with pytest.raises(SystemExit), report_user_errors():
        raise ValueError("model.method: bad value\n  allowed: 1, 2\n")
    assert capsys.readouterr().err == "error: model.method: bad value allowed: 1, 2\n"


# ------------------------------------------------------------------------------- model options, no model
@pytest.fixture
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate_model_options built a model")

    monkeypatch.setattr("hycam_pl.backbone.load_backbone", refuse)
    monkeypatch.setattr("hycam_pl.modulation.model.attach", refuse)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"method": "lora2"},
            r"model\.method='lora2' is unknown; choose one of: cam, dora, full, hycam, hydralora, ia3, lora, molora",
        ),
        ({"method": HYCAM({"num_experts": 0, "tau": 0})}, r"model\.method: HyCAMConfig\.tau=0 is invalid"),
        (
            {"method": HYCAM({"num_experts": 2, "rank": 65})},
            r"model\.method\.rank=65 exceeds the hidden_size=64",
        ),
        (
            {"method": HYCAM({"layers": [1, 2]})},
            r"model\.method\.layers: .*\[2\] out of range.*2 decoder layers",
        ),
        (
            {"method": HYCAM({"ranks": 4})},
            r"model\.method: HyCAMMethod: .*unexpected keyword argument 'ranks'",
        ),
        ({"backbone": {"hidden_size": 8}}, r"model\.backbone: a config dict needs 'model_type'"),
    ],
)
def test_model_options_are_checked_without_building_a_model(no_model_building, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        validate_model_options({"backbone": TINY_BACKBONE, **options})


def test_valid_options_pass(no_model_building) -> None:
    validate_model_options({"backbone": TINY_BACKBONE, "method": HYCAM({"num_experts": 4, "rank": 64})})
    validate_model_options({"backbone": TINY_BACKBONE, "method": "cam"})
    # an expert sweep's K = 0 point: routing options without experts are ignored
    validate_model_options(
        {"backbone": TINY_BACKBONE, "method": HYCAM({"num_experts": 0, "rank": 4, "tau": 1.0})}
    )
    validate_model_options({"backbone": "not/cached-offline", "method": "full"})  # the loader reports that


# -------------------------------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained (well, randomised) on a model with hidden_size 32."""
    model = attach(load_backbone(SMALL), HyCAMConfig(num_experts=2, rank=4))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    return save_adapter(model, tmp_path_factory.mktemp("small") / "adapter")


def test_load_adapter_rejects_another_base_model_and_leaves_it_untouched(small_adapter: Path) -> None:
    model = load_backbone(TINY_BACKBONE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match=r"different base model.*hidden_size: adapter 32 vs model 64"):
        load_adapter(model, small_adapter)
    assert not is_attached(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_adapter_option_is_checked_against_backbone_and_hycam(no_model_building, small_adapter: Path) -> None:
    with pytest.raises(
        ValueError, match=r"model\.adapter=.*different base model.*hidden_size: adapter 32 vs"
    ):
        validate_model_options(
            {
                "backbone": TINY_BACKBONE,
                "method": HYCAM({"num_experts": 2, "rank": 4}),
                "adapter": str(small_adapter),
            }
        )
    with pytest.raises(
        ValueError, match=r"different HyCAM configuration.*rank: adapter 4 vs model\.method 8"
    ):
        validate_model_options(
            {"backbone": SMALL, "method": HYCAM({"num_experts": 2, "rank": 8}), "adapter": str(small_adapter)}
        )
    with pytest.raises(ValueError, match=r"model\.adapter=.*model\.method='full' has no adapter to load"):
        validate_model_options({"backbone": SMALL, "method": "full", "adapter": str(small_adapter)})
    with pytest.raises(FileNotFoundError, match=r"model\.adapter: adapter config not found"):
        validate_model_options({"backbone": SMALL, "adapter": str(small_adapter.parent / "missing")})
    validate_model_options(
        {"backbone": SMALL, "method": HYCAM({"num_experts": 2, "rank": 4}), "adapter": str(small_adapter)}
    )


def test_multitasklm_starts_from_a_saved_adapter(small_adapter: Path) -> None:
    module = MultiTaskLM(SMALL, method=HyCAMMethod(num_experts=2, rank=4), adapter=str(small_adapter))
    expected = adapter_state_dict(load_adapter(load_backbone(SMALL), small_adapter))
    actual = adapter_state_dict(module.model)
    assert expected.keys() == actual.keys() and all(torch.equal(actual[k], expected[k]) for k in expected)


def test_multitasklm_rejects_an_adapter_of_another_base_model(small_adapter: Path) -> None:
    with pytest.raises(
        ValueError, match=r"model\.adapter.*different base model.*hidden_size: adapter 32 vs model 64"
    ):
        MultiTaskLM(TINY_BACKBONE, method=HyCAMMethod(num_experts=2, rank=4), adapter=str(small_adapter))
