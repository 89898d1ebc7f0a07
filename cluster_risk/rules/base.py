"""The rule extension API.

A rule never touches storage.  It says which events concern it and by how much; a **state
primitive** (:mod:`cluster_risk.state`) keeps the numbers and decides the crossings, with one
in-memory and one Lua implementation of the same semantics.  So a rule written here runs
unchanged in the in-process engine and in the Redis cluster.

Three kinds, one base class each:

* :class:`StatelessRule` - looks at one event alone (``evaluate_order`` / ``evaluate_trade``)
  and returns a :class:`Verdict` or ``None``.  Example: :class:`~cluster_risk.rules.examples.MaxOrderVolumeRule`.
* :class:`WindowRule` - a sliding-window counter with a threshold and a resume threshold
  (``counts_order`` picks the orders).  Built in: ``OrderRateLimitRule``.
* :class:`DailyCapRule` - a per-trading-day sum with a cap (``order_amount`` /
  ``trade_amount`` give the amounts).  Built in: ``AccountVolumeLimitRule``.

Register a rule by name with :func:`register_rule` so configs can say ``{"type": "MyRule"}``.
Options are a pydantic model (``Params``); unknown options are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cluster_risk.events import ActionType, Order, Trade

__all__ = [
    "Dimension",
    "RuleParams",
    "BaseRule",
    "StatelessRule",
    "WindowRule",
    "WindowParams",
    "DailyCapRule",
    "DailyCapParams",
    "Verdict",
    "Scope",
    "register_rule",
    "rule_types",
]

Dimension = Literal["account", "contract", "product"]
DIMENSIONS: tuple[Dimension, ...] = ("account", "contract", "product")


@dataclass(frozen=True, slots=True)
class Scope:
    """What an event is about: the values a rule's dimensions draw from."""

    account: str
    contract: str
    product: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A stateless rule's decision about one event; the engine turns it into an Action."""

    type: ActionType
    value: float
    limit: float
    reason: str = ""


class RuleParams(BaseModel):
    """Options every rule has.  Subclass to add a rule's own (frozen, unknown keys refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(default=None, min_length=1)
    dimensions: tuple[Dimension, ...] = ("account",)

    @field_validator("dimensions")
    @classmethod
    def _dimensions_distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one of account, contract, product")
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a dimension")
        return value


class BaseRule:
    """Base of every rule.  ``type_name`` is the registry key (defaults to the class name)."""

    type_name: ClassVar[str]
    Params: ClassVar[type[RuleParams]] = RuleParams

    def __init__(self, params: RuleParams | None = None, /, **options: object) -> None:
        if params is None:
            params = self.Params.model_validate(options)
        elif options:
            raise TypeError("pass either a Params object or keyword options, not both")
        self.params = params
        self.name: str = params.name or self.type_name
        self.dimensions: tuple[Dimension, ...] = params.dimensions

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__

    def scope_key(self, scope: Scope) -> tuple[str, ...]:
        """The group-by key: the scope's values for this rule's dimensions, in order."""
        return tuple(getattr(scope, dim) for dim in self.dimensions)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class StatelessRule(BaseRule):
    """A rule that judges each event alone.  Override one or both hooks."""

    def evaluate_order(self, order: Order, scope: Scope) -> Verdict | None:
        return None

    def evaluate_trade(self, trade: Trade, scope: Scope) -> Verdict | None:
        return None


class WindowParams(RuleParams):
    threshold: int = Field(ge=1)
    window_ns: int = Field(default=1_000_000_000, gt=0)
    bucket_ns: int = Field(default=1_000_000, gt=0)
    resume_threshold: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bucket_divides_window(self) -> WindowParams:
        if self.window_ns % self.bucket_ns:
            raise ValueError(f"bucket_ns ({self.bucket_ns}) must divide window_ns ({self.window_ns})")
        if self.resume_threshold is not None and self.resume_threshold > self.threshold:
            raise ValueError("resume_threshold must not exceed threshold")
        return self


class WindowRule(BaseRule):
    """Sliding window per group: PAUSE when the count exceeds ``threshold``, RESUME when it
    is back at or below ``resume_threshold`` (default ``threshold``)."""

    Params: ClassVar[type[RuleParams]] = WindowParams
    params: WindowParams

    def __init__(self, params: RuleParams | None = None, /, **options: object) -> None:
        super().__init__(params, **options)
        p = self.params
        self.threshold = p.threshold
        self.resume_threshold = p.threshold if p.resume_threshold is None else p.resume_threshold
        self.window_ns = p.window_ns
        self.bucket_ns = p.bucket_ns

    def counts_order(self, order: Order) -> bool:
        """Whether this order enters the window (default: every order)."""
        return True


MAX_DAILY_CAP = 1 << 53  # SEMANTICS.md: a daily cap is a number in (0, 2**53]


class DailyCapParams(RuleParams):
    daily_cap: float = Field(gt=0)

    @field_validator("daily_cap")
    @classmethod
    def _exact_everywhere(cls, value: float) -> float:
        if not value <= MAX_DAILY_CAP:
            raise ValueError(
                f"must be at most 2**53 = {MAX_DAILY_CAP} (got {value!r}): a larger cap is not exact "
                "in every backend (Lua numbers are doubles)"
            )
        return value


class DailyCapRule(BaseRule):
    """Sum per group and trading day: PAUSE when the day's sum exceeds ``daily_cap``; lifted
    at the account's next trading day or by ``reset_daily``."""

    Params: ClassVar[type[RuleParams]] = DailyCapParams
    params: DailyCapParams

    def __init__(self, params: RuleParams | None = None, /, **options: object) -> None:
        super().__init__(params, **options)
        cap = self.params.daily_cap
        self.daily_cap: float = int(cap) if float(cap).is_integer() else cap

    def order_amount(self, order: Order) -> float | None:
        """What an order adds to the day's sum (default: nothing)."""
        return None

    def trade_amount(self, trade: Trade, contract_id: str) -> float | None:
        """What a trade adds to the day's sum (default: nothing)."""
        return None


_REGISTRY: dict[str, type[BaseRule]] = {}
R = TypeVar("R", bound=type[BaseRule])


def register_rule(cls: R) -> R:
    """Class decorator: make ``cls`` available to configs as ``{"type": cls.type_name}``."""
    existing = _REGISTRY.get(cls.type_name)
    if existing is not None and existing is not cls:
        raise ValueError(f"rule type {cls.type_name!r} is already registered by {existing!r}")
    _REGISTRY[cls.type_name] = cls
    return cls


def rule_types() -> dict[str, type[BaseRule]]:
    """Registered rule types by name."""
    return dict(_REGISTRY)
