"""The HyCAM configuration: one dataclass, validated on construction so bad values fail before any model work."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

from hycam_pl.modulation.balance import BALANCE_SCOPES, DEFAULT_BALANCE_SCOPE

APPLY_TO = ("attention_output", "residual_sum")
EVAL_ROUTING = ("argmax", "softmax")
DTYPES = ("float32", "bfloat16", "float16", "auto")

# Options that only mean something when there is a router (num_experts > 0). They default to None so that a
# config which sets one of them together with num_experts=0 can be told apart from one that left it alone.
ROUTING_DEFAULTS: dict[str, Any] = {
    "rank": 8,
    "alpha": 32.0,
    "tau": 0.5,
    "hard": True,
    "eval_routing": "argmax",
    "balance_coef": 0.01,
    "balance_scale_by_experts": False,
    "balance_scope": DEFAULT_BALANCE_SCOPE,
}


@dataclass
class HyCAMConfig:
    """Contextual Attention Modulation settings (METHOD.md §2-3).

    ``num_experts=0`` is plain CAM (the shared full-rank gate only). The expert and routing options (``rank``,
    ``alpha``, ``tau``, ``hard``, ``eval_routing``, ``balance_coef``, ``balance_scale_by_experts``,
    ``balance_scope``) take their defaults when ``num_experts > 0``. With ``num_experts == 0`` they have no
    meaning: valid values are ignored with a warning (so a sweep over ``num_experts`` can include 0 without
    editing the config), invalid ones are still errors.
    """

    num_experts: int = 2
    rank: int | None = None
    alpha: float | None = None
    bias: bool = True
    shared: bool = True
    tau: float | None = None
    hard: bool | None = None
    eval_routing: str | None = None
    balance_coef: float | None = None
    balance_scale_by_experts: bool | None = None
    balance_scope: str | None = None
    apply_to: str = "attention_output"
    layers: list[int] | None = None
    train_norms: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.num_experts, int)
            and not isinstance(self.num_experts, bool)
            and self.num_experts >= 0,
            "num_experts",
            self.num_experts,
            "an integer >= 0 (0 = the single shared CAM)",
        )
        if self.num_experts == 0:
            given = [name for name in ROUTING_DEFAULTS if getattr(self, name) is not None]
            if given:
                # A bad value is still an error; a valid one is ignored with a warning, so that a sweep can
                # override num_experts to 0 without also removing the config's rank, tau, ...
                self._check_routing(given)
                warn_once(
                    f"HyCAMConfig: num_experts=0 (plain CAM) has no experts or router, so "
                    f"{', '.join(f'{name}={getattr(self, name)!r}' for name in given)} "
                    f"{'is' if len(given) == 1 else 'are'} ignored",
                    stacklevel=5,
                )
                for name in given:
                    setattr(self, name, None)
            if not self.shared:
                raise ValueError(
                    "HyCAMConfig: shared=False with num_experts=0 leaves nothing to train; "
                    "set shared=True (CAM) or num_experts >= 1 (specialized-only HyCAM)."
                )
        else:
            for name, default in ROUTING_DEFAULTS.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
            self._check_routing(list(ROUTING_DEFAULTS))
        _require(isinstance(self.bias, bool), "bias", self.bias, "true or false")
        _require(isinstance(self.shared, bool), "shared", self.shared, "true or false")
        _require(self.apply_to in APPLY_TO, "apply_to", self.apply_to, one_of(APPLY_TO))
        _require(isinstance(self.train_norms, bool), "train_norms", self.train_norms, "true or false")
        _require(self.dtype in DTYPES, "dtype", self.dtype, one_of(DTYPES))
        if self.layers is not None:
            layers = list(self.layers)
            _require(
                len(layers) > 0
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
                and len(set(layers)) == len(layers),
                "layers",
                self.layers,
                "null (all layers) or a non-empty list of distinct layer indices >= 0",
            )
            self.layers = sorted(layers)

    def _check_routing(self, names: list[str]) -> None:
        """Validate the routing options in ``names`` (all are set)."""
        checks = {
            "rank": (
                isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
                "an integer >= 1",
            ),
            "alpha": (is_number(self.alpha) and self.alpha > 0, "a number > 0"),
            "tau": (is_number(self.tau) and self.tau > 0, "a number > 0"),
            "hard": (isinstance(self.hard, bool), "true or false"),
            "eval_routing": (self.eval_routing in EVAL_ROUTING, one_of(EVAL_ROUTING)),
            "balance_coef": (is_number(self.balance_coef) and self.balance_coef >= 0, "a number >= 0"),
            "balance_scale_by_experts": (isinstance(self.balance_scale_by_experts, bool), "true or false"),
            "balance_scope": (
                self.balance_scope in BALANCE_SCOPES,
                one_of(BALANCE_SCOPES) + " (layer: each layer balanced on its own; pooled: the reference's "
                "one loss over all layers' tokens)",
            ),
        }
        for name in names:
            ok, allowed = checks[name]
            _require(ok, name, getattr(self, name), allowed)

    @property
    def scaling(self) -> float:
        """The expert output scale s = alpha / rank."""
        return float(self.alpha) / float(self.rank) if self.num_experts else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HyCAMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"HyCAMConfig: unknown option(s) {unknown}; known options: {sorted(known)}")
        if values.get("num_experts", 2) == 0:
            # A resolved CAM config stores routing options as None; drop them so the round trip validates.
            values = {k: v for k, v in values.items() if not (k in ROUTING_DEFAULTS and v is None)}
        return cls(**values)


_WARNED: set[str] = set()


def warn_once(message: str, stacklevel: int = 3) -> None:
    """A ``UserWarning`` shown once per process (configs are rebuilt several times per run: CLI check, model,
    checkpoint reload)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): NaN and infinities are no valid scale, temperature or coefficient."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(repr(c) for c in choices)


def require_option(owner: str, ok: bool, name: str, value: Any, allowed: str) -> None:
    """The one error format of every config class: ``<Owner>.<name>=<value> is invalid; allowed: ...``."""
    if not ok:
        raise ValueError(f"{owner}.{name}={value!r} is invalid; allowed: {allowed}")


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    require_option("HyCAMConfig", ok, name, value, allowed)
