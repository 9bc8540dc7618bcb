"""One layer's modulation: the shared CAM, the stacked experts and the router, plus the hooks that apply them.

The module is registered as a child of the layer's attention (``self_attn.hycam``) so that no base parameter is
renamed. It acts through forward hooks: a pre-hook on the attention captures its input ``x``, a forward hook on
the *modulation site* (the attention, or for Gemma 2/3 in ``residual_sum`` mode the post-attention norm) rewrites
the output, and in ``residual_sum`` mode a pre-hook on the input norm captures the residual ``h``.
Hooks are bound methods, so a modulated model pickles (``ddp_spawn``) and deep-copies.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hycam_pl.modulation.config import HyCAMConfig
from hycam_pl.modulation.experts import StackedExperts, selected_mix_backward, selected_mix_forward
from hycam_pl.modulation.router import GumbelRouter, Routing
from hycam_pl.modulation.routing import ModulationState, flat_token_mask, record_routing


class SharedCAM(nn.Module):
    """The full-rank shared gate ``S(x) = SiLU(x W_s + b_s)``, zero-initialised so it starts at 0."""

    def __init__(self, hidden_size: int, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.linear(x))


class ContextualModulation(nn.Module):
    """Computes ``D(x) = M(x) - 1 = S(x) + sum_k g_k(x) E_k(x)`` and applies it to the attention output."""

    def __init__(self, hidden_size: int, config: HyCAMConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.apply_to = config.apply_to
        self.scale_by_experts = bool(config.balance_scale_by_experts)
        self.shared = SharedCAM(hidden_size, config.bias) if config.shared else None
        if config.num_experts > 0:
            self.experts = StackedExperts(
                hidden_size, config.num_experts, config.rank, config.scaling, config.bias
            )
            self.router = GumbelRouter(
                hidden_size, config.num_experts, config.tau, config.hard, config.eval_routing, config.bias
            )
        else:
            self.experts = None
            self.router = None
        # Plain attributes (not submodules, not parameters): the shared per-model state and per-forward stashes.
        self._state: ModulationState | None = None
        self._attention_input: torch.Tensor | None = None
        self._residual: torch.Tensor | None = None

    def modulation_delta(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        """x: (..., d) -> (D with x's leading shape, routing of the flattened tokens or None)."""
        flat = self._flat_input(x)
        delta = self.shared(flat) if self.shared is not None else None
        routing = None
        if self.experts is not None:
            routing = self.router(flat)
            mixed = self.experts.mix(flat, routing.gates, routing.index)
            delta = mixed if delta is None else delta + mixed
        return delta.view(*x.shape[:-1], delta.shape[-1]), routing

    def _flat_input(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if not torch.is_autocast_enabled(flat.device.type):
            # The first parameter, without walking the module tree (``next(self.parameters())`` costs more than
            # the expert arithmetic at one token per step).
            first = self.shared.linear.weight if self.shared is not None else self.experts.weight_A
            flat = flat.to(first.dtype)
        return flat

    def modulate(self, x: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, Routing | None]:
        """``a * M(x)`` (``apply_to`` the attention output) and the routing (or None).

        In training with hard routing (or CAM alone) one fused function applies the gate and keeps for backward
        only the attention output, the shared CAM's pre-activation and the selected experts' pre-activation,
        recomputing ``D`` (SiLU and the gate sum) in backward; the plain graph also keeps ``D``, one more
        (tokens, d) tensor per layer. Outputs and gradients equal the plain ones (tests/modulation/test_fused_gate.py).
        """
        if not (torch.is_grad_enabled() and self.training):
            delta, routing = self.modulation_delta(x)
            return attn + (attn * delta).to(attn.dtype), routing  # a * M, exact when D == 0
        flat = self._flat_input(x)
        pre_shared = self.shared.linear(flat) if self.shared is not None else None
        routing = self.router(flat) if self.experts is not None else None
        if routing is not None and routing.index is None:  # soft routing: the dense mixture, plain graph
            mixed = self.experts.mix(flat, routing.gates)
            delta = mixed if pre_shared is None else F.silu(pre_shared) + mixed
            return attn + (attn * delta.view(*x.shape[:-1], delta.shape[-1])).to(attn.dtype), routing
        experts: tuple = (None,) * 5
        if routing is not None:
            middle = self.experts.middle(flat)
            up_weight, up_bias = self.experts.scaled_up()
            experts = (middle, routing.gates, up_weight, up_bias, routing.index)
        out = _GateApplication.apply(attn.reshape(flat.shape[0], -1), pre_shared, *experts)
        return out.view(attn.shape), routing

    # ----------------------------------------------------------------------------------------------- hooks
    def _capture_attention_input(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._attention_input = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def _capture_residual(self, module: nn.Module, args: tuple) -> None:
        self._residual = args[0]

    def _modulate_site_output(
        self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any
    ) -> Any:
        x = self._attention_input
        if x is None:
            raise RuntimeError(
                f"HyCAM layer {self.layer_index}: the modulation site ran before its attention input was seen; "
                "this architecture's layer does not call attention the way its registry entry says."
            )
        self._attention_input = None
        residual, self._residual = self._residual, None
        return self.modulate_output(x, output, residual)

    def modulate_output(self, x: torch.Tensor, output: Any, residual: torch.Tensor | None = None) -> Any:
        """The modulation site's ``output`` (a tensor, or a tuple whose first item is the attention output)
        modulated by ``M(x)``, with the routing recorded for the balance loss and telemetry.

        ``x`` is the attention input; ``residual`` is the layer's residual stream ``h`` (``apply_to=residual_sum``
        only). The one entry point of both ways HyCAM is applied: :func:`hycam_pl.attach`'s hooks and the peft
        tuner layer (``hycam_pl.peft``), so the two compute the same function.
        """
        attn = output[0] if isinstance(output, tuple) else output
        record = self._state.record_for_forward() if self._state is not None else None
        token_mask = flat_token_mask(record.token_mask if record else None, x.shape[:-1], self.layer_index)
        if self.apply_to == "residual_sum":
            if residual is None:
                raise RuntimeError(
                    f"HyCAM layer {self.layer_index}: apply_to='residual_sum' needs the layer's residual stream, "
                    "and none was captured before the attention ran"
                )
            delta, routing = self.modulation_delta(x)
            modulated = attn + ((residual + attn) * delta).to(attn.dtype)  # (h + a) * M - h
        else:
            modulated, routing = self.modulate(x, attn)
        if routing is not None and record is not None:
            modulated = self._record_routing(modulated, routing, token_mask, x.shape[0], record)
        if isinstance(output, tuple):
            return (modulated, *output[1:])
        return modulated

    def _record_routing(
        self,
        modulated: torch.Tensor,
        routing: Routing,
        token_mask: torch.Tensor | None,
        batch_size: int,
        record: Any,
    ) -> torch.Tensor:
        return record_routing(
            modulated,
            routing,
            token_mask,
            batch_size,
            record,
            self.layer_index,
            self.training,
            self.scale_by_experts,
        )


class _GateApplication(torch.autograd.Function):
    """``a + a * D`` with ``D = SiLU(z) + g_sel * SiLU(pre)`` (either term optional), saving ``a``, ``z`` and the
    selected experts' inputs but not ``D``: backward recomputes it (two SiLUs, cheap next to the matmuls).

    Inputs: attn (tokens, d); z, the shared CAM's pre-activation (tokens, d) or None; then the selected-expert
    mix's ``middle, gates, up_weight, up_bias, index`` (see :func:`selected_mix_forward`) or five Nones.
    """

    @staticmethod
    def forward(ctx, attn, z, middle, gates, up_weight, up_bias, index):  # type: ignore[override]
        delta = F.silu(z) if z is not None else None
        mix_saved = None
        if index is not None:
            mixed, mix_saved = selected_mix_forward(middle, gates, up_weight, up_bias, index)
            delta = mixed if delta is None else delta + mixed
        ctx.has_z, ctx.has_mix = z is not None, mix_saved is not None
        ctx.mix_dtypes = mix_saved[0] if mix_saved is not None else None
        ctx.delta_dtype = delta.dtype
        ctx.save_for_backward(attn, z, *(mix_saved[1:] if mix_saved is not None else ()))
        return attn + (attn * delta).to(attn.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        attn, z, *mix = ctx.saved_tensors
        mix_saved = (ctx.mix_dtypes, *mix) if ctx.has_mix else None
        # Recompute D exactly as forward did.
        delta = F.silu(z) if ctx.has_z else None
        if mix_saved is not None:
            _, _, gates, _, _, index, pre = mix_saved
            with torch.autocast(pre.device.type, enabled=False):
                mixed = gates.gather(1, index[:, None]).to(pre.dtype) * F.silu(pre)
            delta = mixed if delta is None else delta + mixed
        product_dtype = torch.promote_types(attn.dtype, delta.dtype)
        grad_product = grad_out.to(product_dtype)
        grad_attn = grad_out + (grad_product * delta).to(attn.dtype)
        grad_delta = (grad_product * attn).to(ctx.delta_dtype)
        grad_z = (
            torch.ops.aten.silu_backward(grad_delta, z) if ctx.has_z and ctx.needs_input_grad[1] else None
        )
        grads_mix: tuple = (None,) * 4
        if mix_saved is not None and any(ctx.needs_input_grad[2:6]):
            grads_mix = selected_mix_backward(grad_delta, mix_saved, tuple(ctx.needs_input_grad[2:6]))
        return grad_attn, grad_z, *grads_mix, None
