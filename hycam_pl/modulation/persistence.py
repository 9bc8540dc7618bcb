"""Save and load the adapter: safetensors weights plus a JSON file with the config and the base model's identity.

The folder is a peft adapter folder (``peft_type: HYCAM``): ``peft.PeftModel.from_pretrained`` loads it once
``hycam_pl.peft`` is imported, and :func:`load_adapter` loads it into a plain model with :func:`attach`. Its JSON
holds the HyCAM options at the top level (the fields of ``hycam_pl.peft.HyCAMPeftConfig``), the base model's
identity (``base_model_identity``) and the weights' checksum; the weights are keyed the way peft keys them
(``base_model.model.<parameter name in the base model>``). Folders of the earlier hycam_pl-only format
(``hycam_config`` + ``base_model``, keys ``layers.<i>.<path>``) still load.

Loading validates everything (identity, checksum, keys, shapes, dtypes) before it touches the model, so a bad
adapter directory raises and leaves the model exactly as it was. Writes go to temporary files that are
renamed into place, so a crash mid-write leaves the previous adapter intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hycam_pl.io import commit, stage
from hycam_pl.modulation.architectures import find_decoder, model_type_of, resolve_architecture
from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.layer import ContextualModulation
from hycam_pl.modulation.model import (
    ADAPTER_NAME,
    attach,
    detach,
    find_state,
    hidden_size_of,
    modulated_layers,
    validate_for_model,
)

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1  # the earlier hycam_pl-only format, still read
PEFT_TYPE = "HYCAM"  # ``peft_type`` of the peft format, registered with peft by ``hycam_pl.peft``
PEFT_KEY_PREFIX = "base_model.model."  # how peft prefixes the base model's parameter names in adapter files
IDENTITY_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


class AdapterError(ValueError):
    pass


def base_identity(model: nn.Module) -> dict[str, Any]:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "model_type": model_type_of(model),
        "hidden_size": hidden_size_of(model),
        "num_hidden_layers": len(find_decoder(model)[1]),
        "vocab_size": getattr(text_config, "vocab_size", None),
        "name_or_path": getattr(config, "name_or_path", "") or "",
    }


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors, keyed ``layers.<i>.<path>`` independently of the wrapping model class."""
    state = find_state(model)
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    tensors: dict[str, torch.Tensor] = {}
    for i, module in modulated_layers(model).items():
        for name, param in module.named_parameters():
            tensors[f"layers.{i}.{ADAPTER_NAME}.{name}"] = param.detach()
        if state.config.train_norms:
            for norm_name in spec.norms:
                norm = getattr(layers[i], norm_name, None)
                for name, param in norm.named_parameters() if norm is not None else ():
                    tensors[f"layers.{i}.{norm_name}.{name}"] = param.detach()
    return tensors


def _expected_shapes(model: nn.Module, config: HyCAMConfig, indices: list[int]) -> dict[str, tuple[int, ...]]:
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    hidden = hidden_size_of(model)
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):
        template = ContextualModulation(hidden, config, 0)
    for i in indices:
        for name, param in template.named_parameters():
            shapes[f"layers.{i}.{ADAPTER_NAME}.{name}"] = tuple(param.shape)
        if config.train_norms:
            for norm_name in spec.norms:
                norm = getattr(layers[i], norm_name, None)
                for name, param in norm.named_parameters() if norm is not None else ():
                    shapes[f"layers.{i}.{norm_name}.{name}"] = tuple(param.shape)
    return shapes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory`` (created if needed), as a
    peft adapter folder (see the module docstring)."""
    state = find_state(model)
    keys = peft_key_map(model, state.config, state.layer_indices)
    internal = adapter_state_dict(model)
    meta = peft_adapter_config(model, state.config, state.layer_indices)
    return write_adapter_files(directory, {keys[name]: tensor for name, tensor in internal.items()}, meta)


def attention_module_names(model: nn.Module, indices: list[int]) -> list[str]:
    """The full module names (as in ``model.named_modules()``) of the attention blocks of decoder layers ``indices``:
    the modules the peft tuner wraps."""
    spec = resolve_architecture(model)
    return [f"{name}.{spec.attention}" for name in _layer_names(model, indices)]


def norm_module_names(model: nn.Module, indices: list[int]) -> list[str]:
    """The full names of the norms of layers ``indices`` that ``train_norms`` trains (peft's ``modules_to_save``)."""
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    return [
        f"{name}.{norm}"
        for i, name in zip(indices, _layer_names(model, indices))
        for norm in spec.norms
        if isinstance(getattr(layers[i], norm, None), nn.Module)
    ]


def _layer_names(model: nn.Module, indices: list[int]) -> list[str]:
    _, layers = find_decoder(model)
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(layers[i])] for i in indices]


def peft_key_map(model: nn.Module, config: HyCAMConfig, indices: list[int]) -> dict[str, str]:
    """``layers.<i>.<path>`` (:func:`adapter_state_dict`'s keys) -> the key peft uses for the same tensor."""
    spec = resolve_architecture(model)
    _, layers = find_decoder(model)
    with torch.device("meta"):
        template = ContextualModulation(hidden_size_of(model), config, 0)
    keys: dict[str, str] = {}
    for i, name in zip(indices, _layer_names(model, indices)):
        for param, _ in template.named_parameters():
            keys[f"layers.{i}.{ADAPTER_NAME}.{param}"] = (
                f"{PEFT_KEY_PREFIX}{name}.{spec.attention}.{ADAPTER_NAME}.{param}"
            )
        if config.train_norms:
            for norm_name in spec.norms:
                norm = getattr(layers[i], norm_name, None)
                for param, _ in norm.named_parameters() if norm is not None else ():
                    keys[f"layers.{i}.{norm_name}.{param}"] = f"{PEFT_KEY_PREFIX}{name}.{norm_name}.{param}"
    return keys


def peft_adapter_config(model: nn.Module, config: HyCAMConfig, indices: list[int]) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft-format HyCAM folder (``hycam_pl.peft.HyCAMPeftConfig``'s fields)."""
    identity = base_identity(model)
    return {
        "peft_type": PEFT_TYPE,
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": identity["name_or_path"] or None,
        **config.to_dict(),
        "target_modules": attention_module_names(model, indices),
        "modules_to_save": norm_module_names(model, indices) if config.train_norms else None,
        "base_model_identity": identity,
    }


def write_adapter_files(
    directory: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """The weights and ``meta`` + their checksum as a pair, each renamed into place only once both are written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    # Both files are complete before either replaces its predecessor: the config holds the weights' checksum,
    # so a failure while writing either one must leave the previous pair in place.
    staged_weights = stage(weights, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    try:
        meta = {**meta, "weights_sha256": _sha256(Path(staged_weights))}

        def write_json(path: str) -> None:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2)

        staged_config = stage(config, write_json)
    except BaseException:
        os.unlink(staged_weights)
        raise
    commit(staged_weights, weights)
    commit(staged_config, config)
    return directory


def read_adapter_weights(directory: str | os.PathLike, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The saved tensors, after checking they are present and match the checksum in ``meta``."""
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"adapter weights not found: {weights}")
    if meta.get("weights_sha256") and _sha256(weights) != meta["weights_sha256"]:
        raise AdapterError(
            f"adapter weights {weights} do not match the checksum in {CONFIG_FILE} (corrupt or replaced)"
        )
    try:
        return load_file(weights)
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"adapter weights {weights} are corrupt: {error}") from None


# Sizes an adapter or checkpoint config declares (HyCAM's experts and rank, the mixtures' and LoRA's ``r``):
# each must be a dimension of some saved tensor before anything is built or looped over from it.
SIZE_FIELDS = ("num_experts", "rank", "r")
MAX_CONFIG_DEPTH = 32  # adapter configs are a few levels deep; deeper ones are refused, not recursed into


def declared_sizes(values: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, int]]:
    """``(dotted.key, value)`` for every integer :data:`SIZE_FIELDS` entry in a nested config."""
    if depth > MAX_CONFIG_DEPTH:
        raise AdapterError(f"{prefix or 'config'} is nested more than {MAX_CONFIG_DEPTH} levels deep")
    found: list[tuple[str, int]] = []
    if callable(getattr(values, "to_dict", None)):  # a config object (HyCAMConfig, MixtureConfig)
        values = values.to_dict()
    if isinstance(values, dict):
        for key, value in values.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in SIZE_FIELDS and isinstance(value, int) and not isinstance(value, bool):
                found.append((name, value))
            elif isinstance(value, (dict, list)):
                found.extend(declared_sizes(value, name, depth + 1))
    elif isinstance(values, list):
        for i, value in enumerate(values):
            found.extend(declared_sizes(value, f"{prefix}[{i}]", depth + 1))
    return found


def check_sizes_fit_tensors(values: Any, tensors: dict[str, Any], where: str) -> None:
    """Refuse a config whose declared sizes (:data:`SIZE_FIELDS`) are no dimension of any saved tensor: building
    a model from it would allocate or loop over sizes the weights do not have (``num_experts: 1000000000``)."""
    dims = {int(d) for tensor in tensors.values() for d in getattr(tensor, "shape", ())}
    for name, value in declared_sizes(values):
        if value > 0 and value not in dims:
            raise AdapterError(
                f"{where}: {name}={value} is no dimension of any saved tensor (largest {max(dims, default=0)}); "
                "the config does not describe these weights"
            )


MAX_DECLARED_SIZE = 1 << 16  # no real adapter has more experts or a larger rank; a larger one is tampering


def check_size_limits(values: Any, where: str) -> None:
    """Refuse declared sizes (:data:`SIZE_FIELDS`) above :data:`MAX_DECLARED_SIZE`, for configs whose tensors
    are not all at hand (a checkpoint's hyper-parameters also hold options another method ignores)."""
    for name, value in declared_sizes(values):
        if value > MAX_DECLARED_SIZE:
            raise AdapterError(f"{where}: {name}={value} exceeds {MAX_DECLARED_SIZE}; refusing to build it")


def check_tensor_values(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Adapter weights are finite floating-point tensors: an integer tensor or a NaN/infinity is refused."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise AdapterError(
                f"{where}: tensor {name} has dtype {tensor.dtype}; adapter weights are floating point"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{where}: tensor {name} holds NaN or infinite values")


def tensor_problems(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped tensors, as short phrases (empty when they fit)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in expected.keys() & tensors.keys() if tuple(tensors[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if wrong:
        problems.append(
            "wrong shapes " + ", ".join(f"{k}: {tuple(tensors[k].shape)} != {expected[k]}" for k in wrong[:5])
        )
    return problems


def read_json_config(path: Path) -> Any:
    """A JSON config file; a corrupt, non-UTF-8 or pathologically nested one is one :class:`AdapterError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"adapter config {path} is corrupt: {error}") from None
    except RecursionError:
        raise AdapterError(f"adapter config {path} is nested too deeply to be a config") from None


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The folder's JSON plus ``config`` (the :class:`HyCAMConfig`), ``base_model`` (the base model's identity) and
    ``format`` (``peft`` or ``hycam_pl-v1``), for either format."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"adapter config not found: {path} (is {directory} a saved hycam_pl adapter?)"
        )
    meta = read_json_config(path)
    if isinstance(meta, dict) and "peft_type" in meta:
        if meta["peft_type"] != PEFT_TYPE:
            raise AdapterError(
                f"adapter config {path} is a peft {meta['peft_type']!r} adapter, not HyCAM; load it with "
                "peft.PeftModel.from_pretrained"
            )
        if not isinstance(meta.get("base_model_identity"), dict):
            raise AdapterError(
                f"adapter config {path} is missing 'base_model_identity' (the base model's identity)"
            )
        names = {f.name for f in fields(HyCAMConfig)}
        meta["hycam_config"] = {k: v for k, v in meta.items() if k in names}
        meta["base_model"] = meta["base_model_identity"]
        meta["layer_indices"] = _layer_indices_of(meta.get("target_modules"), path)
        meta["format"] = "peft"
    elif not isinstance(meta, dict) or "hycam_config" not in meta or "base_model" not in meta:
        raise AdapterError(f"adapter config {path} is missing 'hycam_config' or 'base_model'")
    else:
        meta["format"] = f"hycam_pl-v{meta.get('format_version', FORMAT_VERSION)}"
    try:
        meta["config"] = HyCAMConfig.from_dict(dict(meta["hycam_config"]))
    except (TypeError, ValueError) as error:
        raise AdapterError(f"adapter config {path}: {error}") from None
    return meta


def _layer_indices_of(target_modules: Any, path: Path) -> list[int]:
    """The decoder-layer indices of a peft folder's ``target_modules`` (``model.layers.3.self_attn`` -> 3: the
    last ``.<number>.`` of each name), as the earlier format stored them in ``layer_indices``."""
    if not isinstance(target_modules, list) or not all(isinstance(name, str) for name in target_modules):
        raise AdapterError(f"adapter config {path}: 'target_modules' must be a list of module names")
    indices = []
    for name in target_modules:
        found = re.findall(r"\.(\d+)\.", name)
        if not found:
            raise AdapterError(f"adapter config {path}: target module {name!r} names no decoder layer")
        indices.append(int(found[-1]))
    return sorted(set(indices))


def identity_mismatches(saved: dict[str, Any], actual: dict[str, Any], label: str = "model") -> list[str]:
    """``"<field>: adapter <saved> vs <label> <actual>"`` for each identity field that differs; fields the
    caller could not determine (None in ``actual``) are not compared."""
    return [
        f"{k}: adapter {saved.get(k)!r} vs {label} {actual[k]!r}"
        for k in IDENTITY_FIELDS
        if actual.get(k) is not None and saved.get(k) != actual[k]
    ]


def check_base_matches(model: nn.Module, meta: dict[str, Any], directory: str | os.PathLike) -> None:
    """Refuse an adapter whose saved base-model identity (``meta["base_model"]``) differs from ``model``'s."""
    saved = meta.get("base_model", {})
    mismatched = identity_mismatches(saved, base_identity(model))
    if mismatched:
        raise AdapterError(
            f"adapter {directory} was trained on a different base model ({saved.get('name_or_path') or 'unnamed'}): "
            + "; ".join(mismatched)
        )


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Attach (if needed) and load a saved adapter. On any error the model is left untouched."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    config: HyCAMConfig = meta["config"]
    check_base_matches(model, meta, directory)
    tensors = read_adapter_weights(directory, meta)
    weights = directory / WEIGHTS_FILE
    check_tensor_values(tensors, f"adapter weights {weights}")
    check_sizes_fit_tensors(meta["hycam_config"], tensors, f"adapter config {directory / CONFIG_FILE}")
    indices = validate_for_model(model, config)
    expected = _expected_shapes(model, config, indices)
    if meta["format"] == "peft":  # checked under the file's own keys, so errors name what is in the file
        keys = peft_key_map(model, config, indices)
        expected = {keys[k]: shape for k, shape in expected.items()}
    problems = tensor_problems(expected, tensors)
    if meta["format"] == "peft" and not problems:
        internal = {peft: name for name, peft in keys.items()}
        tensors = {internal[k]: v for k, v in tensors.items()}
    if problems:
        raise AdapterError(
            f"adapter weights {directory / WEIGHTS_FILE} do not fit config {CONFIG_FILE}: "
            + "; ".join(problems)
        )

    existing = find_state(model, required=False)
    if existing is not None and existing.config != config:
        raise AdapterError(
            f"the model already has a HyCAM adapter with a different config ({existing.config}); "
            f"call hycam_pl.detach(model) before loading {directory}"
        )
    newly_attached = existing is None
    if newly_attached:
        attach(model, config)
    try:
        _copy_into(model, tensors)
    except BaseException:
        if newly_attached:
            detach(model)
        raise
    return model


@torch.no_grad()
def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    _, layers = find_decoder(model)
    targets = {}
    for key in tensors:
        _, index, rest = key.split(".", 2)
        targets[key] = layers[int(index)].get_parameter(
            rest if not rest.startswith(ADAPTER_NAME) else f"{resolve_architecture(model).attention}.{rest}"
        )
    for key, target in targets.items():
        target.copy_(tensors[key].to(device=target.device, dtype=target.dtype))
