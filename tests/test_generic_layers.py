"""The generic layers (training/, callbacks/, sweeps/, cli/) know methods only through the method interface: they
import no particular method and name none, and ``MultiTaskLM`` keeps to the Lightning steps and optimizers
(under 350 lines). A new method is then one registration, not edits here (issue 20)."""

from __future__ import annotations

import ast
from pathlib import Path

from hycam_pl.methods import METHODS
from hycam_pl.methods.base import AdaptationMethod

PACKAGE = Path(__file__).resolve().parents[1] / "hycam_pl"
GENERIC = ["training", "callbacks", "sweeps", "cli"]
# What the generic layers may import from hycam_pl.methods: the package's registry/resolution API, the interface
# (base), the counter and the translation of earlier releases' options (legacy).
ALLOWED_METHOD_MODULES = {"hycam_pl.methods", "hycam_pl.methods.base", "hycam_pl.methods.legacy"}
# "full" is also torch's state-dict type (``state_dict_type: "full"``), not only the full fine-tuning method.
AMBIGUOUS_NAMES = {"full"}


def method_class_names() -> set[str]:
    found: set[str] = set()
    pending = list(AdaptationMethod.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return found


def generic_files() -> list[Path]:
    return sorted(p for folder in GENERIC for p in (PACKAGE / folder).rglob("*.py"))


def mentions(path: Path) -> list[str]:
    """Imports of particular methods, identifiers naming method classes, and string constants that are a
    registered method's name, found in code (comments and docstrings are not code)."""
    classes, names = method_class_names(), set(METHODS) - AMBIGUOUS_NAMES
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hycam_pl.methods"):
            if node.module not in ALLOWED_METHOD_MODULES:
                found.append(f"{where} imports {node.module}")
            found += [f"{where} imports {a.name}" for a in node.names if a.name in classes]
        elif isinstance(node, ast.Name) and node.id in classes:
            found.append(f"{where} names {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in classes:
            found.append(f"{where} names {node.attr}")
        elif isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in names:
            found.append(f"{where} names the method {node.value!r}")
    return found


def test_the_generic_layers_name_no_particular_method() -> None:
    assert (
        len(method_class_names()) >= len(METHODS) - 1
    )  # the check sees the methods (ia3/dora share a class)
    found = [f"{path.parent.name}/{line}" for path in generic_files() for line in mentions(path)]
    assert not found, "\n".join(found)


def test_the_check_finds_a_method_named_in_a_generic_layer(tmp_path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from hycam_pl.methods.hycam import HyCAMMethod\n"
        "def pick(options):\n"
        "    '''cam is documented here (a docstring: allowed).'''\n"
        "    return HyCAMMethod() if options.get('method') == 'cam' else None\n",
        encoding="utf-8",
    )
    found = mentions(sample)
    assert len(found) == 4, found  # the import (module and class), the class named, the string "cam"


def test_multitasklm_keeps_to_the_steps_and_optimizers() -> None:
    lines = (PACKAGE / "training" / "module.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 350, f"training/module.py has {len(lines)} lines"
