"""Untrusted adapter folders (issue 21): sizes a config declares are checked against the saved tensors before
anything is built (``num_experts: 10**9`` used to loop per expert for hours), and non-finite or integer weights,
a non-finite ``alpha`` and pathologically nested JSON are refused with one ``AdapterError`` each; the model is
left untouched."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator

import pytest
import torch
from safetensors.torch import load_file, save_file

from hycam_pl import load_adapter
from hycam_pl.modulation import AdapterError
from hycam_pl.modulation.persistence import CONFIG_FILE, WEIGHTS_FILE, _sha256

from .conftest import tiny_model
from .test_persistence import assert_untouched, saved_adapter, snapshot


@contextlib.contextmanager
def at_most(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _edit_config(directory, edit) -> None:
    path = directory / CONFIG_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _set_option(meta: dict, **values) -> None:
    """A HyCAM option in either adapter format (peft: top level; the earlier hycam_pl format: hycam_config)."""
    (meta["hycam_config"] if "hycam_config" in meta else meta).update(values)


def _edit_weights(directory, edit) -> None:
    path = directory / WEIGHTS_FILE
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    _edit_config(directory, lambda meta: meta.update(weights_sha256=_sha256(path)))


def _refused(directory, match: str) -> None:
    model = tiny_model("llama")
    before = snapshot(model)
    with at_most(20), pytest.raises(AdapterError, match=match):
        load_adapter(model, directory)
    assert_untouched(model, before)


def test_an_absurd_expert_count_is_refused_before_anything_loops(tmp_path):
    _, directory = saved_adapter(tmp_path)
    _edit_config(directory, lambda meta: _set_option(meta, num_experts=10**9))
    _refused(directory, r"num_experts=1000000000 is no dimension of any saved tensor")


def test_an_absurd_rank_is_refused(tmp_path):
    _, directory = saved_adapter(tmp_path)
    _edit_config(directory, lambda meta: _set_option(meta, rank=10**7))
    _refused(directory, r"rank=10000000 is no dimension")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, value):
    _, directory = saved_adapter(tmp_path)

    def poison(tensors):
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value

    _edit_weights(directory, poison)
    _refused(directory, "holds NaN or infinite values")


def test_integer_weights_are_refused(tmp_path):
    _, directory = saved_adapter(tmp_path)

    def to_int(tensors):
        name = sorted(tensors)[0]
        tensors[name] = tensors[name].to(torch.int32)

    _edit_weights(directory, to_int)
    _refused(directory, "dtype torch.int32; adapter weights are floating point")


@pytest.mark.parametrize("alpha", [float("inf"), float("nan")])
def test_a_non_finite_alpha_is_refused(tmp_path, alpha):
    _, directory = saved_adapter(tmp_path)
    _edit_config(directory, lambda meta: _set_option(meta, alpha=alpha))  # json writes Infinity/NaN
    _refused(directory, "alpha")


def test_pathologically_nested_json_is_refused(tmp_path):
    _, directory = saved_adapter(tmp_path)
    (directory / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    _refused(directory, "nested too deeply")
