"""The README's "Use the method on your own model" snippet runs as written; its first section has two commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_method_snippet_runs_as_written(tmp_path):
    code = re.search(r"```python\n(.*?)```", section("Use the method on your own model"), re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "my-adapter" / "adapter_model.safetensors").is_file()
    assert "'trainable':" in result.stdout


@pytest.mark.slow
def test_peft_snippet_runs_as_written(tmp_path):
    """The "HyCAM with peft and transformers" example: get_peft_model, Trainer, save and PeftModel reload."""
    code = re.search(r"```python\n(.*?)```", section("HyCAM with peft and transformers"), re.S).group(1)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = (tmp_path / "my-peft-adapter" / "adapter_config.json").read_text()
    assert '"peft_type": "HYCAM"' in config
    assert "trainable params:" in result.stdout and "'train_loss':" in result.stdout


def test_first_section_has_the_quickstart_and_test_commands():
    first = section("Quickstart")
    commands = re.search(r"```bash\n(.*?)```", first, re.S).group(1).strip().splitlines()
    assert [c.split("#")[0].strip() for c in commands] == [
        "bash scripts/quickstart.sh",
        "bash scripts/test.sh",
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
