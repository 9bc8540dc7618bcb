"""Scale-out through Lightning's own strategies: how ``MultiTaskLM`` builds its model under each one.

- Single device, DDP, Lightning's ``fsdp`` (FSDP1): the full model is built once per process on the CPU, as
  before (FSDP1 then wraps it with :class:`FSDPStrategy`'s decoder-layer policy).
- FSDP2 (:class:`FSDP2Strategy`, a ``ModelParallelStrategy``): only rank 0 builds the full model; the other
  ranks build it on the meta device. Every rank shards its copy with ``fully_shard`` (the trainable modules
  first, in units of their own, then each decoder layer, then the root), allocates its local shards, and
  rank 0 broadcasts the weights (``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)``):
  no rank but the first ever holds the whole model, and the weights equal those of the unsharded build.
- DeepSpeed ZeRO-1/2: every rank builds the full model in ``setup`` (these stages shard the optimizer state and
  gradients, never the weights); ``deepspeed.initialize`` takes it from there.
- DeepSpeed ZeRO-3: rank 0 builds the full model in ``setup`` (outside Lightning's ``zero.Init`` context). In
  ``configure_model`` (inside that context) every rank builds the structure, with transformers and peft told
  that ZeRO-3 is on (``HfDeepSpeedConfig``), so each parameter is partitioned as its module is created and
  adapters take their shapes from the config; rank 0's values are then scattered one parameter at a time
  (``GatheredParameters(modifier_rank=0)``): no rank but the first ever holds the whole model.

Checkpoints hold only the trainable weights (gathered to rank 0 on save) and the optimizer state.
"""

from __future__ import annotations

import contextvars
import logging
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from lightning.pytorch.strategies import DeepSpeedStrategy as _LightningDeepSpeedStrategy
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDPStrategy
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint import load as distributed_load
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from hycam_pl.backbone import DTYPES, backbone_config
from hycam_pl.training.adapters import write_adapter
from hycam_pl.training.checkpoints import (
    LIGHTNING_META,
    is_distributed_checkpoint,
    load_weights_only,
    read_checkpoint,
)

log = logging.getLogger(__name__)

# Methods that trainable modules run instead of ``forward`` (FSDP2 must gather their shards around them).
# Methods the modulation hooks call on an FSDP2 unit instead of forward(): each must unshard the unit first.
FORWARD_METHODS = ("modulation_delta", "modulate", "mix")
CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)
GPU_ONLY = {"deepspeed": "DeepSpeed", "fsdp": "Lightning's fsdp (FSDP1)"}


_DEFERRED = contextvars.ContextVar("hycam_deferred_build", default=False)


@contextmanager
def deferred_build() -> Iterator[None]:
    """``MultiTaskLM``s created inside leave their model unbuilt until ``configure_model`` (or first use), so
    a sharded strategy builds it per rank; outside, the constructor builds it at once, as it always did."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def build_deferred() -> bool:
    return _DEFERRED.get()


def strategy_name(strategy: Any) -> str:
    """The strategy's registered name or class path (``""`` for none) from a trainer option or object."""
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, Mapping):
        return str(strategy.get("class_path", ""))
    return type(strategy).__name__ if strategy is not None else ""


def shards_weights(strategy: Any) -> bool:
    """Whether a strategy option names one that shards the weights (FSDP1/2, DeepSpeed, ModelParallel)."""
    name = strategy_name(strategy).lower()
    return any(key in name for key in ("fsdp", "deepspeed", "modelparallel"))


# ------------------------------------------------------------------------------------------ strategies
class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` set up for FSDP2 data parallelism: all ranks shard one model (no tensor
    parallelism), and checkpoints are one file holding the trainable weights gathered to rank 0.

    Lightning's own defaults would make every device of a node a tensor-parallel rank and save distributed
    checkpoint folders of the whole (mostly frozen) model.
    """

    def __init__(
        self,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = 1,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # every process of every node shards the model
            tensor = 1 if self._tensor_parallel_size == "auto" else int(self._tensor_parallel_size)
            self._data_parallel_size = self.num_nodes * self.num_processes // tensor
        super().setup_environment()

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """Only the trainable weights, each gathered in full (collective: every rank runs it); rank 0 keeps them."""
        if self._save_distributed_checkpoint:
            return super().lightning_module_state_dict()
        return trainable_state_dict(self.lightning_module, keep=self.global_rank == 0)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """A distributed-checkpoint folder holds the trainable weights only (``on_save_checkpoint`` keeps no
        others), but Lightning asks it for every weight of the model and fails on the first frozen one
        ("Missing key ... embed_tokens.weight"). Here only the weights and optimizer states the folder holds are
        requested; Lightning's ``meta.pt`` is read weights-only. A checkpoint file is Lightning's to load."""
        path = Path(self.broadcast(checkpoint_path))
        if not is_distributed_checkpoint(path):
            return super().load_checkpoint(checkpoint_path, weights_only)
        keys = self.lightning_module.trainable_keys()
        weights = {k: v for k, v in get_model_state_dict(self.model).items() if k in keys}
        distributed_load({"state_dict": weights}, checkpoint_id=path)
        set_model_state_dict(self.model, weights, options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{index}": get_optimizer_state_dict(self.model, optimizer)}
            distributed_load(state, checkpoint_id=path)
            options = StateDictOptions(cpu_offload=True)
            set_optimizer_state_dict(self.model, optimizer, state[f"optimizer_{index}"], options=options)
        return load_weights_only(path / LIGHTNING_META, f"--ckpt_path {path}")


class FSDPStrategy(_LightningFSDPStrategy):
    """Lightning's ``fsdp`` (FSDP1) with an auto-wrap policy built from the model: each decoder layer is a
    unit, and so is each trainable module inside it, so that frozen and trainable parameters never share a
    flat parameter; ``use_orig_params`` keeps the parameter groups (and ``requires_grad``) per parameter."""

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        use_orig_params: bool = True,
        state_dict_type: str = "full",
        limit_all_gathers: bool = True,
        cpu_offload: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            use_orig_params=use_orig_params,
            limit_all_gathers=limit_all_gathers,
            **kwargs,
        )

    def setup(self, trainer: L.Trainer) -> None:
        if "auto_wrap_policy" not in self.kwargs:
            from torch.distributed.fsdp.wrap import CustomPolicy

            units = {id(m) for m in wrap_units(self.lightning_module.model)}
            self.kwargs["auto_wrap_policy"] = CustomPolicy(lambda module: id(module) in units)
        super().setup(trainer)


class DeepSpeedStrategy(_LightningDeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy``, able to evaluate (``test``/``validate``/``predict --ckpt_path``) from
    a ZeRO-3 checkpoint folder.

    There Lightning asks DeepSpeed's engine to load the weights without the optimizer, and DeepSpeed's
    inference engine then fails (``'DeepSpeedZeRoOffload' object has no attribute
    '_restore_from_bit16_weights'``). Instead the folder's trainable weights are consolidated
    (``zero_to_fp32``, as ``hycam export`` does) and scattered from rank 0 into the partitioned parameters.
    Fitting, and every other stage, are Lightning's.
    """

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if not self._evaluates_zero3_folder(checkpoint_path):
            return super().load_checkpoint(checkpoint_path, weights_only)
        return read_checkpoint(checkpoint_path, "--ckpt_path")

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        if self._evaluates_zero3_folder(self.lightning_module.trainer.ckpt_path):
            scatter_from_rank0(self.lightning_module, checkpoint["state_dict"], self.global_rank)
            return
        super().load_model_state_dict(checkpoint, strict)

    def _evaluates_zero3_folder(self, checkpoint_path: Any) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        fitting = self.lightning_module.trainer.state.fn == TrainerFn.FITTING
        return (
            self.zero_stage_3
            and not fitting
            and checkpoint_path is not None
            and Path(checkpoint_path).is_dir()
        )


def logical_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``module``'s state as the model defines it: ZeRO-3-partitioned parameters
    hold an empty placeholder and report their full shape as ``ds_shape``."""
    return {
        name: tuple(getattr(tensor, "ds_shape", tensor.shape))
        for name, tensor in module.state_dict(keep_vars=True).items()
    }


def scatter_from_rank0(module: nn.Module, values: Mapping[str, torch.Tensor], rank: int) -> None:
    """Rank 0's ``values`` (by parameter name; other ranks pass anything) into ZeRO-3-partitioned parameters,
    one parameter gathered at a time: never more than one whole tensor per rank. Parameters not named in
    ``values`` keep theirs."""
    import deepspeed

    for name, param in module.named_parameters():
        if name not in values:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if rank == 0:
                param.copy_(values[name])


def is_fsdp2(strategy: Any) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


def is_zero3(strategy: Any) -> bool:
    return isinstance(strategy, _LightningDeepSpeedStrategy) and bool(
        getattr(strategy, "zero_stage_3", False)
    )


def offloads_optimizer(strategy: Any) -> bool:
    """Whether DeepSpeed ZeRO keeps the optimizer state in host memory (``offload_optimizer``)."""
    if not isinstance(strategy, _LightningDeepSpeedStrategy):
        return False
    offload = (strategy.config or {}).get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def adamw(
    module: Any, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """torch's AdamW; under ZeRO-Offload DeepSpeed's CPU AdamW (the same update), since DeepSpeed refuses a
    client optimizer there. Every group carries its own ``weight_decay``."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if offloads_optimizer(strategy):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


# Rank 0's full build under ZeRO-3, held from ``setup`` to ``configure_model``. Sharding's own bookkeeping, so it
# lives here rather than on the module; weak keys: a module dropped between the two calls takes it along.
_ZERO3_SOURCES: weakref.WeakKeyDictionary[Any, nn.Module] = weakref.WeakKeyDictionary()


def prepare_model(module: Any) -> None:
    """``MultiTaskLM.setup``: the part of the build that must happen before ``configure_model`` (whose context
    partitions modules under ZeRO-3 as they are created): DeepSpeed ZeRO-1/2 build the full model here; under
    ZeRO-3 rank 0 builds the full model whose values :func:`build_zero3_partitioned` scatters."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if not isinstance(strategy, _LightningDeepSpeedStrategy) or module.model_built:
        return
    if not is_zero3(strategy):
        module.model  # noqa: B018 - builds it
    elif module.trainer.global_rank == 0 and module not in _ZERO3_SOURCES:
        _ZERO3_SOURCES[module] = module.build_model()


def is_sharded(strategy: Any) -> bool:
    """Whether weights are split over ranks (every rank must then run every forward pass)."""
    return isinstance(strategy, (ModelParallelStrategy, _LightningFSDPStrategy)) or is_zero3(strategy)


def needs_synced_generation(trainer: L.Trainer) -> bool:
    return trainer.world_size > 1 and is_sharded(trainer.strategy)


def synchronised_batches(loader: Iterable[Any], module: L.LightningModule) -> Iterator[tuple[Any, bool]]:
    """``(batch, real)``: the loader's batches, then, with sharded weights, repeats of the last one (``real``
    False) until this rank has run as many as the rank with the most (generation there is collective)."""
    batches = list(loader)
    for batch in batches:
        yield batch, True
    if module._trainer is None or not needs_synced_generation(module.trainer) or not batches:
        return
    count = torch.tensor([len(batches)], device=module.device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    for _ in range(int(count.item()) - len(batches)):
        yield batches[-1], False


# --------------------------------------------------------------------------------------- construction
def meta_backbone(source: Any, dtype: str = "float32", attn_implementation: str | None = None) -> nn.Module:
    """The backbone's modules with no storage (meta device), from its config alone: no weights are read."""
    with torch.device("meta"):
        return backbone_structure(source, dtype, attn_implementation)


def backbone_structure(
    source: Any, dtype: str = "float32", attn_implementation: str | None = None
) -> nn.Module:
    """The backbone's modules from its config alone (no weights read), on the current default device or inside
    an allocation context such as ``meta`` or ZeRO-3's ``zero.Init``."""
    config = backbone_config(dict(source) if isinstance(source, Mapping) else source)
    if config is None:
        raise ValueError(
            f"model.backbone={source!r}: its config is not available offline, so the sharded build cannot "
            "create the model without loading it; download it first or point model.backbone at a folder"
        )
    kwargs: dict[str, Any] = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if DTYPES.get(dtype) not in (None, "auto"):
        kwargs["dtype"] = DTYPES[dtype]
    return transformers.AutoModelForCausalLM.from_config(config, **kwargs)


def configure_model(module: Any) -> None:
    """``MultiTaskLM.configure_model``: build the model the way the trainer's strategy needs; idempotent
    (Lightning calls it again for ``test`` after ``fit``)."""
    strategy = module.trainer.strategy if module._trainer is not None else None
    if is_zero3(strategy) and not module.model_built:
        source = _ZERO3_SOURCES.pop(module, None)
        module.model = build_zero3_partitioned(module, strategy.config, source)
        return
    if not is_fsdp2(strategy):
        module.model  # noqa: B018 - builds it (on the CPU) unless already built
        return
    mesh = data_parallel_mesh(module.device_mesh)
    if module.model_built:
        if not is_fully_sharded(module.model):
            fully_shard_model(module.model, mesh)  # built before fit (e.g. by the user): shard it in place
        return
    module.model = build_fully_sharded(module, mesh)


def data_parallel_mesh(mesh: Any) -> Any:
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            "trainer.strategy: hycam_pl shards the model with FSDP2 over data-parallel ranks only; set "
            "tensor_parallel_size: 1 (hycam_pl.training.sharding.FSDP2Strategy does)"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def is_fully_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def build_fully_sharded(module: Any, mesh: Any, device: torch.device | None = None) -> nn.Module:
    """Rank 0 builds the full model (exactly the unsharded build); every rank shards a meta-device copy,
    allocates its local shards and receives the weights from rank 0."""
    import torch.distributed as dist

    rank = dist.get_rank()
    device = device or torch.device("cpu")
    full = module.build_model() if rank == 0 else None
    model = module.build_model(structure_only=True)
    fully_shard_model(model, mesh)
    model.to_empty(device=device)
    state = full.state_dict() if full is not None else {}
    set_model_state_dict(
        model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    _broadcast_buffers_from_rank0(model, full, rank)
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()
    del full, state
    _follow_rank0_rng()
    return model


def build_zero3_partitioned(module: Any, ds_config: dict[str, Any], source: nn.Module | None) -> nn.Module:
    """The model with ZeRO-3-partitioned parameters holding ``source``'s values (rank 0's full build; ``None``
    on the other ranks). Runs inside ``deepspeed.zero.Init`` (Lightning's, in ``configure_model``)."""
    import torch.distributed as dist
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    rank = dist.get_rank()
    if (source is None) != (rank != 0):
        raise RuntimeError(f"rank {rank}: the ZeRO-3 build needs rank 0's full model, and only there")
    # While it is alive, transformers and peft see ZeRO-3: they create weights partitioned, skip initialising
    # them on every rank, and gather the few they must read (DoRA's weight norm).
    zero3_seen = HfDeepSpeedConfig(ds_config)
    try:
        model = module.build_model(partitioned=True)
    finally:
        unset_hf_deepspeed_config()
        del zero3_seen
    # every rank takes part in gathering each parameter; only rank 0 has values to put in
    values = dict(source.named_parameters()) if source is not None else dict(model.named_parameters())
    scatter_from_rank0(model, values, rank)
    _broadcast_buffers_from_rank0(model, source, rank)
    del values
    _follow_rank0_rng()
    return model


def _broadcast_buffers_from_rank0(model: nn.Module, source: nn.Module | None, rank: int) -> None:
    """Every buffer of ``model`` set to rank 0's ``source`` (``None`` elsewhere): non-persistent buffers (rotary
    frequencies) are in no state dict, and a meta-device build leaves them empty."""
    import torch.distributed as dist

    buffers = dict(source.named_buffers()) if source is not None else {}
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if rank == 0:
                buffer.copy_(buffers[name])
            dist.broadcast(buffer, src=0)


def _follow_rank0_rng() -> None:
    """Every rank continues from the random state of rank 0's build (as if each had run the same build)."""
    import torch.distributed as dist

    rng = [torch.get_rng_state()]
    dist.broadcast_object_list(rng, src=0)
    torch.set_rng_state(rng[0])


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers: modules of a class the model declares unsplittable (``_no_split_modules``)."""
    names: set[str] = set()
    for sub in model.modules():
        names.update(getattr(sub, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def trainable_units(model: nn.Module) -> list[nn.Module]:
    """The largest modules inside the decoder layers whose parameters are all trainable (adapters, trained
    norms), skipping containers (never called: their parameters stay in the enclosing unit)."""
    layers = decoder_layers(model)
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if (
            params
            and all(p.requires_grad for p in params)
            and not isinstance(module, CONTAINERS)
            and module not in layers
        ):
            units.append(module)
            return
        for child in module.children():
            visit(child)

    for layer in layers:
        if all(p.requires_grad for p in layer.parameters()):
            continue  # full fine-tuning: the layer is the unit
        for child in layer.children():
            visit(child)
    return units


def wrap_units(model: nn.Module) -> list[nn.Module]:
    """FSDP units, innermost first: the trainable modules, then the decoder layers (the root is the last)."""
    return [*trainable_units(model), *decoder_layers(model)]


def fully_shard_model(model: nn.Module, mesh: Any, mp_policy: Any = None) -> nn.Module:
    """``fully_shard`` each trainable unit, each decoder layer, then the whole model (embeddings, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for unit in trainable_units(model):
        fully_shard(unit, **kwargs)
        for name in FORWARD_METHODS:
            if callable(getattr(unit, name, None)):
                register_fsdp_forward_method(unit, name)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    register_fsdp_forward_method(model, "generate")
    return model


def trainable_state_dict(module: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """``{name: full tensor on the CPU}`` for the trainable parameters; sharded ones are gathered (a
    collective: every rank calls this); ``keep`` False returns nothing (the ranks that do not write)."""
    from torch.distributed.tensor import DTensor

    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    out: dict[str, torch.Tensor] = {}
    with _gathered(module, [p for _, p in trainable]):
        for name, param in trainable:
            tensor = param.detach()
            if isinstance(tensor, DTensor):
                tensor = tensor.full_tensor()
            if keep:
                out[name] = tensor.cpu().clone()
    return out


def _gathered(module: nn.Module, params: list[nn.Parameter]) -> Any:
    """A context in which ZeRO-3-partitioned or FSDP1-flattened parameters hold their full values."""
    from contextlib import nullcontext

    trainer = getattr(module, "_trainer", None)
    strategy = trainer.strategy if trainer is not None else None
    if is_zero3(strategy):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    if isinstance(strategy, _LightningFSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.summon_full_params(trainer.model, writeback=False)
    return nullcontext()


def save_fit_adapter(module: Any, directory: str) -> None:
    """The adapter folder at the end of ``fit``: under a sharded strategy every rank gathers the trainable
    weights and rank 0 writes them (the backbone is never gathered); otherwise rank 0 saves as usual."""
    trainer = module.trainer
    if not is_sharded(trainer.strategy):
        if trainer.is_global_zero:
            module.method.save(module.model, directory)
        return
    state = trainable_state_dict(module, keep=trainer.is_global_zero)
    if trainer.is_global_zero:
        write_adapter(module, state, directory)


# ------------------------------------------------------------------------------------------ validation
def quiet_deepspeed_detection() -> None:
    """Without CUDA, DeepSpeed's import prints "Setting accelerator to CPU" on *stdout* (breaking
    ``--print_config`` output); naming the accelerator it would pick anyway keeps it quiet."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def check_strategy(trainer_options: Mapping[str, Any] | None) -> None:
    """GPU-only strategies on a machine without CUDA: one clear message instead of Lightning's traceback."""
    if not trainer_options:
        return
    name = strategy_name(trainer_options.get("strategy"))
    if not name:
        return
    lowered = name.lower().rsplit(".", 1)[-1]
    kind = next(
        (
            label
            for key, label in GPU_ONLY.items()
            if lowered.startswith(key) and not lowered.startswith("fsdp2") and "modelparallel" not in lowered
        ),
        None,
    )
    if kind is None:
        return
    accelerator = str(trainer_options.get("accelerator", "auto")).lower()
    if accelerator == "cpu" or not torch.cuda.is_available():
        raise ValueError(
            f"trainer.strategy={name!r}: {kind} runs on CUDA GPUs only, and "
            + ("trainer.accelerator is 'cpu'" if accelerator == "cpu" else "this machine has no CUDA GPU")
            + "; on CPU use configs/trainer/ddp.yaml or configs/trainer/fsdp2.yaml"
        )
    if kind == "DeepSpeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ValueError(
                f"trainer.strategy={name!r} needs DeepSpeed: pip install 'hycam_pl[deepspeed]'"
            ) from None
