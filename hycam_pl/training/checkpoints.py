"""The one checkpoint reader: every checkpoint a user points at is read here, and nothing in it can run code.

Why: a checkpoint is a pickle, and unpickling runs whatever callable the file names. ``hycam export``,
``--ckpt_path`` (a file, a folder, ``last`` found in a copied runs directory), resume and the sweep runner all
read files a user downloaded or copied, so every read goes through :func:`read_checkpoint`:

- a checkpoint *file* is read by ``torch.load(weights_only=True)`` with an explicit allow-list
  (:data:`CHECKPOINT_GLOBALS`) of the few non-tensor types Lightning and hycam_pl put in their own
  checkpoints; anything else is refused with one line naming the object, never constructed;
- a torch *distributed checkpoint* folder (FSDP2 / ModelParallel with ``save_distributed_checkpoint``) is read
  by our own restricted unpickler: its ``.metadata`` (which torch reads with plain ``pickle``) may only name
  torch's checkpoint-metadata classes, its non-tensor items and Lightning's ``meta.pt`` go through the
  weights-only loader above, and the tensor sizes it declares must fit in the data files present;
- a *DeepSpeed* folder is read by DeepSpeed's own code, which unpickles fully; so every ``*.pt`` in it is first
  validated by the weights-only loader (Lightning's and DeepSpeed's own state types allow-listed), and a folder
  holding anything else is refused unless the user sets ``HYCAM_TRUST_CHECKPOINT_CODE=1`` (or passes
  ``hycam export --trust-checkpoint-code``): the trade-off is a second (memory-mapped) read of each file against
  running arbitrary code from a downloaded folder.

Lightning's own loading of ``--ckpt_path`` (the strategy's ``load_checkpoint``) is routed through
:func:`install_safe_checkpoint_loading`: files load with ``weights_only=True`` and this allow-list, folders are
validated here before the strategy (or DeepSpeed) reads them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import math
import os
import pathlib
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hycam_pl.methods import upgrade_hparams
from hycam_pl.methods.base import method_classes

TRUST_ENV = "HYCAM_TRUST_CHECKPOINT_CODE"  # "1": DeepSpeed folders that fail validation are read anyway
CKPT_SUFFIX = ".ckpt"
DISTRIBUTED_METADATA = ".metadata"  # torch.distributed.checkpoint's metadata file (a plain pickle)
LIGHTNING_META = "meta.pt"  # Lightning's non-tensor state beside a distributed checkpoint
# Declared tensor bytes may exceed the data files' bytes by this much (headers, alignment) before a distributed
# checkpoint is refused: its metadata sizes are allocated before any data is read.
DECLARED_SLACK_BYTES = 64 << 20

# The non-tensor types Lightning and hycam_pl write into checkpoints (hyper-parameters may hold paths; a
# method's options are plain data, see AdaptationMethod.spec; ModelCheckpoint's state a timedelta; Lightning's
# AttributeDict). Each is constructed only from plain data, and none runs code when built. Strings are resolved lazily (optional packages).
_CHECKPOINT_GLOBAL_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "jsonargparse._namespace.Namespace",
    # DeepSpeed's own state in its model/optimizer files (loss scaling, ZeRO stage).
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_PLAIN_GLOBALS: tuple[Any, ...] = (
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
    argparse.Namespace,
    datetime.timedelta,
)
_DISTRIBUTED_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout from its name: getattr(torch, name)
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    *(("pathlib", cls.__name__) for cls in _PLAIN_GLOBALS if cls.__module__ == "pathlib"),
}


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would need code to run (or unbounded work) to be read; refused."""


def checkpoint_globals() -> list[Any]:
    """The allow-list given to ``torch.load(weights_only=True)`` besides torch's own tensor and container types."""
    found = list(_PLAIN_GLOBALS)
    for name in _CHECKPOINT_GLOBAL_NAMES:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            continue  # an optional package that is not installed: its types cannot be in our checkpoints
    # Plain-data config classes methods declare (hyper-parameters of earlier releases held them).
    found.extend(t for cls in method_classes() for t in cls.checkpoint_types if t not in found)
    return found


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


@contextmanager
def allowed_globals() -> Iterator[None]:
    """``torch.load(weights_only=True)`` inside accepts :func:`checkpoint_globals` too (this thread only)."""
    with torch.serialization.safe_globals(checkpoint_globals()):
        yield


def load_weights_only(source: str | os.PathLike | io.BytesIO, label: str, **load_options: Any) -> Any:
    """``torch.load`` that cannot run code: tensors, plain Python values and the allow-listed types only.
    Raises :class:`UnsafeCheckpointError` naming ``label`` and the refused object."""
    try:
        with allowed_globals():
            return torch.load(source, map_location="cpu", weights_only=True, **load_options)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error) and "Unsupported" not in str(error):
            raise
        raise _refusal(label, str(error)) from None


def _label(option: str, path: Any) -> str:
    """How refusals begin: ``--ckpt_path: refused checkpoint <path>``."""
    return f"{option}: refused checkpoint {path}"


def _refusal(label: str, reason: str) -> UnsafeCheckpointError:
    match = re.search(r"GLOBAL ([\w.]+)", reason) or re.search(r"Unsupported global: ([\w.]+)", reason)
    what = f"an object of type {match.group(1)}" if match else "a pickle instruction that is not plain data"
    return UnsafeCheckpointError(
        f"{label}: it holds {what}, which hycam does not unpickle (a checkpoint may hold only "
        "tensors, plain Python values and the types Lightning and hycam_pl save; anything else could run code "
        "from the file)"
    )


# ---------------------------------------------------------------------------------------------- reading
def read_checkpoint(path: str | os.PathLike, option: str = "checkpoint") -> dict[str, Any]:
    """``{"state_dict", "hyper_parameters", ...}`` of a Lightning checkpoint file, a distributed checkpoint
    folder (FSDP2/ModelParallel) or a DeepSpeed checkpoint folder; ``state_dict`` keys as in ``MultiTaskLM``.
    File tensors are memory-mapped, so a large one costs little to read twice.

    Raises ``FileNotFoundError``/``ValueError`` with one line naming ``option`` and the path: missing, a folder
    that is no checkpoint, truncated or not a checkpoint (then listing the other checkpoints beside it), or
    refused (:class:`UnsafeCheckpointError`: what was refused and why).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{option}: checkpoint not found: {path}")
    if path.is_dir():
        if is_distributed_checkpoint(path):
            return _read_distributed(path, option)
        if is_deepspeed_checkpoint(path):
            return _read_deepspeed(path, option)
        raise ValueError(
            f"{option}: {path} is a directory, neither a checkpoint file nor a DeepSpeed or distributed "
            f"checkpoint folder ({DISTRIBUTED_METADATA})"
        )
    checkpoint = _read_file(path, option)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise ValueError(f"{option}: {path} is not a Lightning checkpoint (no 'state_dict')")
    return dict(checkpoint)


def module_options(checkpoint: Mapping[str, Any], option: str = "checkpoint") -> dict[str, Any]:
    """The constructor options of the module a checkpoint was saved from: its ``hyper_parameters`` with earlier
    releases' method options translated (``methods.upgrade_hparams``) and LightningCLI's private keys
    (``_instantiator``, ``_class_path``) left out."""
    hparams = checkpoint.get("hyper_parameters")
    if not hparams:
        raise ValueError(f"{option}: the checkpoint has no hyper_parameters; was it saved by hycam fit?")
    return {k: v for k, v in upgrade_hparams(hparams, option).items() if not k.startswith("_")}


def load_module(
    cls: type,
    checkpoint_path: str | os.PathLike,
    map_location: Any = None,
    hparams_file: Any = None,
    strict: bool | None = None,
    weights_only: bool | None = None,
    **overrides: Any,
) -> Any:
    """``MultiTaskLM.load_from_checkpoint``: Lightning's loader would unpickle the file its own way and drop the
    options of earlier releases without a word (its signature filter), building another structure. Here the
    file (or folder) is read by :func:`read_checkpoint`, the options are translated (:func:`module_options`),
    then the module is built, checked (``on_load_checkpoint``) and given the saved trainable weights. Lightning's
    arguments this cannot honour are refused, one line each, rather than ignored."""
    refused = {
        "hparams_file": hparams_file is not None
        and "the checkpoint's own hyper-parameters are used (pass a changed option as a keyword argument)",
        "weights_only": weights_only is False
        and "every checkpoint is read weights-only (unpickling one fully can run code from the file)",
        "map_location": map_location is not None
        and not isinstance(map_location, (str, int, torch.device))
        and "give a device (str, int or torch.device); a mapping or a function is not supported",
        "checkpoint_path": not isinstance(checkpoint_path, (str, os.PathLike))
        and "give the path of a checkpoint file or folder (a file object is not supported)",
    }
    for name, reason in refused.items():
        if reason:
            raise ValueError(f"load_from_checkpoint: {name} is not supported here: {reason}")
    option = f"load_from_checkpoint {checkpoint_path}"
    checkpoint = read_checkpoint(checkpoint_path, option)
    module = cls(**{**module_options(checkpoint, option), **overrides})
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint.get("state_dict", {}), strict=bool(strict))
    return module if map_location is None else module.to(map_location)


def _read_file(path: Path, option: str) -> Any:
    try:
        return load_weights_only(path, _label(option, path), mmap=True)
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # zip reader, EOF, bad magic number: all mean "not a complete checkpoint"
        raise _unreadable(path, option, error) from None


def validate_checkpoint(path: str | os.PathLike, option: str = "checkpoint") -> None:
    """Refuse a checkpoint that cannot be read without running code, before a library reads it its own way.
    A file or folder already read unchanged in this process is not read again."""
    path = Path(path)
    key = _stamp(path)
    if key is not None and key in _VALIDATED:
        return
    read_checkpoint(path, option)
    if key is not None:
        _VALIDATED.add(key)


_VALIDATED: set[tuple[str, int, int]] = set()


def _stamp(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    newest = stat.st_mtime_ns
    if path.is_dir():  # a folder changes when any file in it does
        newest = max([newest, *(p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file())])
    return (str(path.resolve()), newest, stat.st_size)


def other_checkpoints(path: Path) -> list[str]:
    """The other ``*.ckpt`` files beside ``path``, newest first (what a user could resume from instead)."""
    directory = path.parent
    if not directory.is_dir():
        return []
    others = [
        p
        for p in directory.glob(f"*{CKPT_SUFFIX}")
        if p.name != path.name and (p.is_file() or is_checkpoint_folder(p))
    ]
    return [str(p) for p in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)]


def _unreadable(path: Path, option: str, error: BaseException) -> ValueError:
    reason = " ".join(str(error).split())[:160] or type(error).__name__
    others = other_checkpoints(path)
    hint = (
        f"other checkpoints in {path.parent}: {', '.join(others)}"
        if others
        else "no other checkpoint beside it"
    )
    return ValueError(
        f"{option}: checkpoint {path} is truncated or not a checkpoint "
        f"({path.stat().st_size} bytes; {type(error).__name__}: {reason}); {hint}"
    )


# ------------------------------------------------------------------------------------ checkpoint folders
def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """A checkpoint saved as a folder: FSDP2's distributed checkpoint or DeepSpeed's (one file per rank)."""
    path = Path(path)
    return path.is_dir() and (is_distributed_checkpoint(path) or is_deepspeed_checkpoint(path))


def is_distributed_checkpoint(path: Path) -> bool:
    return (path / DISTRIBUTED_METADATA).is_file()


def is_deepspeed_checkpoint(path: Path) -> bool:
    return bool(deepspeed_model_states(path)) or (path / "latest").is_file()


def deepspeed_model_states(path: Path) -> list[Path]:
    """Rank 0's model-states file (client state: hyper-parameters), named by ZeRO stage: ``mp_rank_00_...``
    up to stage 2, ``zero_pp_rank_0_mp_rank_00_...`` at stage 3."""
    return sorted(path.glob("*/mp_rank_00_model_states.pt")) or sorted(
        path.glob("*/zero_pp_rank_0_mp_rank_00_model_states.pt")
    )


class _MetadataUnpickler(pickle.Unpickler):
    """Plain ``pickle`` restricted to torch's distributed-checkpoint metadata classes (and dtypes)."""

    def __init__(self, handle: Any, label: str) -> None:
        super().__init__(handle)
        self.label = label

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DISTRIBUTED_METADATA_CLASSES or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.label}: its {DISTRIBUTED_METADATA} names {module}.{name}, which is not "
            "torch distributed-checkpoint metadata; unpickling it could run code from the file"
        )


def read_distributed_metadata(path: Path, option: str) -> Any:
    """The folder's ``.metadata``, unpickled with only torch's metadata classes allowed, sizes checked."""
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    label = _label(option, path)
    try:
        with open(path / DISTRIBUTED_METADATA, "rb") as handle:
            metadata = _MetadataUnpickler(handle, label).load()
    except UnsafeCheckpointError:
        raise
    except Exception as error:
        raise ValueError(
            f"{option}: {path / DISTRIBUTED_METADATA} is truncated or not a distributed checkpoint's metadata "
            f"({type(error).__name__}: {' '.join(str(error).split())[:120]})"
        ) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise ValueError(
            f"{option}: {path / DISTRIBUTED_METADATA} is not a distributed checkpoint's metadata"
        )
    declared = 0
    for item in metadata.state_dict_metadata.values():
        if isinstance(item, TensorStorageMetadata):
            declared += math.prod(int(n) for n in item.size) * item.properties.dtype.itemsize
    for info in (metadata.storage_data or {}).values():
        relative = str(getattr(info, "relative_path", ""))
        if not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise UnsafeCheckpointError(
                f"{label}: its {DISTRIBUTED_METADATA} points at {relative!r}, outside the folder"
            )
    present = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    if declared > 2 * present + DECLARED_SLACK_BYTES:
        raise UnsafeCheckpointError(
            f"{label}: its {DISTRIBUTED_METADATA} declares {declared:,} bytes of tensors but "
            f"the folder holds {present:,} bytes"
        )
    return metadata


def _read_distributed(path: Path, option: str) -> dict[str, Any]:
    """A torch distributed checkpoint folder without unpickling anything but plain data (see the module doc)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    label = _label(option, path)
    metadata = read_distributed_metadata(path, option)

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata.storage_meta = metadata.storage_meta or _storage_meta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = load_weights_only(value, label)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    checkpoint: dict[str, Any] = {}
    try:
        _load_state_dict(checkpoint, storage_reader=Reader(path), planner=Planner(), no_dist=True)
    except UnsafeCheckpointError:
        raise
    except (Exception, CheckpointException) as error:  # CheckpointException is a BaseException
        if isinstance(getattr(error, "failures", None), Mapping):  # dcp wraps per-rank errors
            for failure in error.failures.values():
                failure = failure[0] if isinstance(failure, tuple) else failure  # (exception, traceback)
                if isinstance(failure, UnsafeCheckpointError):
                    raise failure from None
        raise ValueError(
            f"{option}: distributed checkpoint {path} is incomplete or corrupt "
            f"({type(error).__name__}: {' '.join(str(error).split())[:160]})"
        ) from None
    meta = path / LIGHTNING_META
    if meta.is_file():
        extra = load_weights_only(meta, _label(option, meta))
        if isinstance(extra, Mapping):
            checkpoint.update(extra)
    return checkpoint


def _storage_meta() -> Any:
    from torch.distributed.checkpoint.metadata import StorageMeta

    return StorageMeta()


def _read_deepspeed(path: Path, option: str) -> dict[str, Any]:
    """DeepSpeed (ZeRO 2/3) folder: every ``*.pt`` validated first (see the module doc), then the client state
    (hyper-parameters) and DeepSpeed's own ``zero_to_fp32`` consolidation of the trainable weights."""
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise ValueError(
            f"{option}: {path} is a DeepSpeed checkpoint; reading it needs deepspeed installed"
        ) from None
    states = deepspeed_model_states(path)
    if not states:
        raise ValueError(
            f"{option}: {path} is a DeepSpeed checkpoint folder without model states (*model_states.pt)"
        )
    validate_deepspeed_folder(path, option)
    if trusted():
        client = torch.load(states[0], map_location="cpu", weights_only=False)
    else:
        client = load_weights_only(states[0], _label(option, states[0]), mmap=True)
    weights = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=states[0].parent.name)
    # DeepSpeed names parameters relative to the wrapped LightningModule ("_forward_module." prefix at most).
    state = {k.removeprefix("_forward_module."): v for k, v in weights.items()}
    return {**client, "state_dict": state}


def validate_deepspeed_folder(path: Path, option: str) -> None:
    """Every pickle DeepSpeed will unpickle fully is first read weights-only; refused unless trusted."""
    if trusted():
        return
    for file in sorted(path.rglob("*.pt")):
        try:
            load_weights_only(file, _label(option, file), mmap=True)
        except UnsafeCheckpointError as error:
            raise UnsafeCheckpointError(
                f"{error}; DeepSpeed would unpickle it fully. Set {TRUST_ENV}=1 (or pass hycam export "
                "--trust-checkpoint-code) only for a folder you wrote yourself"
            ) from None


# --------------------------------------------------------------------------- Lightning's own loading
def install_safe_checkpoint_loading(trainer: Any) -> None:
    """Route the strategy's ``load_checkpoint`` (what ``trainer.fit/validate/test(ckpt_path=...)`` calls) through
    this module: a local file loads with ``weights_only=True`` and :func:`checkpoint_globals`; a folder is
    validated by :func:`validate_checkpoint` before the strategy (or DeepSpeed) reads it its own way."""
    strategy = trainer.strategy
    original: Callable[..., Any] = strategy.load_checkpoint
    if getattr(original, "_hycam_safe", False):
        return

    def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        local = isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path)
        if local and Path(checkpoint_path).exists():
            validate_checkpoint(checkpoint_path, "--ckpt_path")
            if Path(checkpoint_path).is_file():
                with allowed_globals():
                    return original(checkpoint_path, weights_only=True)
        return original(checkpoint_path, weights_only=weights_only)

    load_checkpoint._hycam_safe = True  # type: ignore[attr-defined]
    strategy.load_checkpoint = load_checkpoint
