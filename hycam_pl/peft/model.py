"""``HyCAMModel``: the peft tuner that wraps each selected layer's self-attention in a :class:`HyCAMLayer`.

What it shares with ``hycam_pl.attach`` (hycam_pl/modulation/model.py): the validation of a config against a model,
the per-model :class:`ModulationState` (the routing record of each forward, the balance loss, the telemetry read by
``hycam_pl.balance_loss`` / ``hycam_pl.routing_statistics``), and the modulation modules themselves. What it adds is
peft's bookkeeping: named adapters, ``set_adapter``, ``disable_adapter``, saving and loading.

The balance loss reaches training through the model's own loss (the documented hook): in training, when the base
model computes a loss (``labels`` given), a forward hook the tuner puts on it adds ``balance_coef * L_bal`` to it, so ``transformers.Trainer``, TRL's
``SFTTrainer`` and plain loops that call ``outputs.loss.backward()`` all train the routers with no extra code. Under
gradient accumulation the Trainer passes ``num_items_in_batch``; the term is then weighted by this micro-batch's
share of the step's label tokens, matching how the task loss is normalised, so a step adds ``balance_coef`` times
the token-weighted mean of its micro-batches' ``L_bal``. Evaluation losses stay the task loss alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from hycam_pl.modulation.architectures import find_decoder, model_type_of, resolve_architecture
from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.layer import ContextualModulation
from hycam_pl.modulation.model import balance_loss, hidden_size_of, validate_for_model
from hycam_pl.modulation.persistence import (
    AdapterError,
    attention_module_names,
    base_identity,
    identity_mismatches,
    norm_module_names,
)
from hycam_pl.modulation.routing import STATE_ATTR, ModulationState, install_forward_record
from hycam_pl.peft.config import HyCAMPeftConfig
from hycam_pl.peft.layer import MERGE_REFUSAL, HyCAMLayer


class HyCAMModel(BaseTuner):
    """Creates CAM / HyCAM adapters on a Hugging Face decoder (see :class:`HyCAMPeftConfig`).

    Use it through peft: ``get_peft_model(model, HyCAMPeftConfig(...))``, ``PeftModel.from_pretrained(base, folder)``
    (after ``import hycam_pl.peft``).
    """

    prefix: str = "hycam"
    tuner_layer_cls = HyCAMLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> None:
        self._hycam_configs: dict[str, HyCAMConfig] = {}
        self._layer_of_module: dict[str, int] = {}
        self._state: ModulationState | None = None
        self._residual_handles: dict[str, Any] = {}
        self._adding = adapter_name
        super().__init__(model, config, adapter_name, **kwargs)
        self._activate()

    # ------------------------------------------------------------------------------------ creating adapters
    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config  # target_modules come from ``layers``, in _prepare_model (which sees the model)

    def _prepare_model(self, peft_config: HyCAMPeftConfig, model: nn.Module) -> None:
        """Check the config against the model (as ``attach`` does) and fill in what peft matches modules with."""
        config = peft_config.to_hycam_config()
        indices = validate_for_model(model, config)
        identity = base_identity(model)
        if peft_config.base_model_identity is None:
            peft_config.base_model_identity = identity
        else:
            mismatched = identity_mismatches(peft_config.base_model_identity, identity)
            if mismatched:
                saved = peft_config.base_model_identity.get("name_or_path") or "unnamed"
                raise AdapterError(
                    f"this HyCAM adapter was trained on a different base model ({saved}): "
                    + "; ".join(mismatched)
                )
        spec = resolve_architecture(model)
        if config.apply_to == "residual_sum" and spec.post_attention_norm is not None:
            raise NotImplementedError(
                f"apply_to='residual_sum' on {model_type_of(model)!r} modulates the output of "
                f"{spec.post_attention_norm}, which the peft tuner (it wraps the attention block) does not see; use "
                "apply_to='attention_output' or hycam_pl.attach"
            )
        targets = attention_module_names(model, indices)
        if peft_config.target_modules is not None and sorted(peft_config.target_modules) != sorted(targets):
            raise ValueError(
                f"HyCAMPeftConfig.target_modules={peft_config.target_modules!r} is not what layers={config.layers!r} "
                f"selects ({targets}); HyCAM wraps the self-attention of the chosen layers: set `layers` and leave "
                "target_modules unset"
            )
        peft_config.target_modules = targets
        if config.train_norms:
            peft_config.modules_to_save = norm_module_names(model, indices)
        self._hycam_configs[self._adding] = config
        self._layer_of_module.update(zip(targets, indices))
        if self._state is None:
            self._state = ModulationState(config, model_type_of(model), indices)
            decoder, layers = find_decoder(model)
            install_forward_record(model, decoder, layers[indices[0]], self._state)
            self._state.handles.append(model.register_forward_hook(self._add_balance_loss, with_kwargs=True))

    def _create_and_replace(
        self,
        peft_config: HyCAMPeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        config = self._hycam_configs[adapter_name]
        index = self._layer_of_module[current_key]
        base = target.get_base_layer() if isinstance(target, HyCAMLayer) else target
        reference = next(base.parameters())
        dtype = reference.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        module = ContextualModulation(hidden_size_of(self.model), config, index)
        module = module.to(device=reference.device, dtype=dtype).train(base.training)
        module._state = self._state
        if isinstance(target, HyCAMLayer):
            target.update_layer(adapter_name, module)
            layer = target
        else:
            layer = HyCAMLayer(target, adapter_name, module)
            self._replace_module(parent, target_name, layer, target)
        if config.apply_to == "residual_sum" and current_key not in self._residual_handles:
            norm = getattr(parent, resolve_architecture(self.model).input_norm)
            self._residual_handles[current_key] = norm.register_forward_pre_hook(layer.capture_residual)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass  # the adapter's dtype is HyCAMConfig.dtype, as with hycam_pl.attach

    # --------------------------------------------------------------------------------- active adapter
    def _activate(self) -> None:
        """Point the shared state (balance loss, telemetry) at the active adapter's config and modules."""
        state = self._state
        if state is None:
            return
        active = [name for name in self.active_adapters if name in self._hycam_configs]
        if not active:
            state.modules = {}
            return
        name = active[0]
        state.config = self._hycam_configs[name]
        state.modules = {
            layer.hycam[name].layer_index: layer.hycam[name]
            for layer in self.model.modules()
            if isinstance(layer, HyCAMLayer) and name in layer.hycam
        }
        state.layer_indices = sorted(state.modules)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        self._adding = adapter_name  # read by _prepare_model, which peft calls without the name
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except BaseException:
            self._hycam_configs.pop(adapter_name, None)
            raise
        self._activate()

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._activate()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._hycam_configs.pop(adapter_name, None)
        self._activate()

    # --------------------------------------------------------------------------------- the balance loss
    def _add_balance_loss(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        """Forward hook on the base model (every peft wrapper calls it, whatever the task type)."""
        loss = getattr(output, "loss", None)
        state = self._state
        if loss is None or state is None or not state.modules or not model.training:
            return output
        config = state.config
        record = state.current
        if not config.num_experts or not config.balance_coef or record is None or not record.layers:
            return output  # CAM, a zero coefficient, adapters disabled
        if not (torch.is_grad_enabled() and record.grad_enabled):
            return output
        weight = config.balance_coef * _micro_batch_share(kwargs)
        output.loss = loss + weight * balance_loss(model).to(loss.dtype)
        return output

    # --------------------------------------------------------------------------------- what does not apply
    def _check_merge_allowed(self) -> None:
        raise ValueError(MERGE_REFUSAL)

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            raise ValueError(MERGE_REFUSAL)
        for handle in self._residual_handles.values():
            handle.remove()
        self._residual_handles = {}
        if self._state is not None:
            for handle in self._state.handles:
                handle.remove()
            decoder, _ = find_decoder(self.model)
            if getattr(decoder, STATE_ATTR, None) is self._state:
                delattr(decoder, STATE_ATTR)
            self._state = None
        return super()._unload_and_optionally_merge(merge=False, **kwargs)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        if isinstance(new_module, HyCAMLayer):
            super()._replace_module(parent, child_name, new_module, child)
        else:  # unloading: put the original module back as it was (peft's version assumes it has a ``weight``)
            setattr(parent, child_name, new_module)

    # ``bias`` is HyCAM's option (biases in the adapter's own linears), not peft's (which base biases to train):
    # the base-tuner methods that read ``config.bias`` in peft's sense are given peft's "none".
    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        with _peft_bias_none(self.peft_config.values()):
            super()._mark_only_adapters_as_trainable(model)

    def _check_new_adapter_config(self, config: PeftConfig) -> None:
        with _peft_bias_none(self.peft_config.values()):
            super()._check_new_adapter_config(config)

    def disable_adapter_layers(self) -> None:
        self._enable_adapter_layers(enabled=False)

    @classmethod
    def _get_learnable_bias_state_dict(
        cls, model: nn.Module, state_dict: dict[str, torch.Tensor], config: PeftConfig
    ) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """``...self_attn.hycam.<adapter>.shared.linear.weight`` -> ``...self_attn.hycam.shared.linear.weight``: the
        adapter name sits right after ``hycam``, not second to last as peft's default assumes."""
        return key.replace(f".{cls.prefix}.{adapter_name}.", f".{cls.prefix}.", 1)


def _micro_batch_share(kwargs: dict[str, Any]) -> float | torch.Tensor:
    """This micro-batch's share of the step's label tokens when the Trainer normalises the loss over the whole
    accumulated step (it passes ``num_items_in_batch``); else 1 (the Trainer divides by the accumulation steps)."""
    total = kwargs.get("num_items_in_batch")
    labels = kwargs.get("shift_labels")
    if labels is None and kwargs.get("labels") is not None:
        labels = kwargs["labels"][..., 1:]  # causal LM: the loss predicts labels[1:]
    if total is None or labels is None:
        return 1.0
    return labels.ne(-100).sum() / total


@contextmanager
def _peft_bias_none(configs: Iterable[Any]) -> Iterator[None]:
    """Temporarily set ``bias`` to peft's ``"none"`` on HyCAM configs (see :class:`HyCAMModel`)."""
    hycam = [c for c in configs if isinstance(c, HyCAMPeftConfig)]
    saved = [c.bias for c in hycam]
    for config in hycam:
        config.bias = "none"
    try:
        yield
    finally:
        for config, value in zip(hycam, saved):
            config.bias = value
