"""Strategy specs: a strategy name with parameters, in one string.

``NAME`` or ``NAME:key=value[:key=value...]``, e.g. ``margin`` or
``cluster-margin:margin_factor=2:order=margin``. The same text is accepted by
``batchal select --strategy``, ``batchal simulate --strategies`` and
:func:`batchal.select`, and it labels a strategy in every output, so variants
of one strategy can run side by side.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from .._validation import BatchalInputError
from .base import REGISTRY, Selector, available_strategies

__all__ = ["StrategySpec", "get_selector", "parse_spec", "split_specs"]

_RESERVED = ("random_state", "progress")
#: Keys every strategy takes, handled by the Selector base class, not its constructor
UNIVERSAL = ("candidates",)


def _value(text: str):
    """``2`` -> int, ``0.5``/``1e3`` -> float, ``true``/``false`` -> bool, ``none`` -> None, else the string."""
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class StrategySpec:
    """A parsed strategy spec.

    Attributes
    ----------
    name : str
        The registered strategy name.
    params : dict
        Parameters given in the spec (they override any default passed to :meth:`make`).
    text : str
        The spec as written, whitespace removed: the label used in outputs.
    """

    name: str
    params: dict = field(default_factory=dict)
    text: str = ""

    @property
    def cls(self) -> type[Selector]:
        return REGISTRY[self.name]

    @property
    def requires(self) -> tuple[str, ...]:
        """What the strategy reads (with its parameters); ``candidates=neighbours:K`` adds the embeddings."""
        req = self.cls.requires_for(self.params)
        if self.params.get("candidates") is not None and "embeddings" not in req:
            req = (*req, "embeddings")
        return req

    def accepts(self, param: str) -> bool:
        """Whether the strategy takes ``param`` (its constructor's, or a key every strategy takes)."""
        return param in UNIVERSAL or param in inspect.signature(self.cls.__init__).parameters

    def make(self, random_state=None, defaults: dict | None = None, **params) -> Selector:
        """Instantiate the selector.

        Parameters
        ----------
        random_state : int, Generator or None
        defaults : dict, optional
            Values for parameters the spec does not set; keys the strategy does
            not take are ignored, so one dict of defaults serves every spec.
        **params
            Parameters the strategy must take (an unknown one is an error); the
            spec's own values override them.
        """
        bad = [k for k in params if not self.accepts(k)]
        if bad:
            raise BatchalInputError(f"strategy {self.name!r} has no parameter {bad[0]!r}")
        kw = {k: v for k, v in (defaults or {}).items() if self.accepts(k)}
        kw.update(params)
        kw.update(self.params)
        universal = {k: kw.pop(k) for k in UNIVERSAL if k in kw}
        try:
            sel = self.cls(random_state=random_state, **kw)
        except TypeError as exc:  # pragma: no cover - guarded by accepts()
            raise BatchalInputError(f"strategy {self.text!r}: {exc}") from exc
        if universal.get("candidates") is not None:
            from .candidates import parse_candidates

            sel.candidates = parse_candidates(universal["candidates"])
        return sel

    def __str__(self) -> str:
        return self.text


def parse_spec(spec) -> StrategySpec:
    """Parse ``NAME[:key=value...]``; unknown names or parameters raise :class:`BatchalInputError`.

    A :class:`StrategySpec` is returned unchanged.
    """
    if isinstance(spec, StrategySpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise BatchalInputError(f"a strategy spec must be a non-empty string like 'margin' or "
                                f"'cluster-margin:margin_factor=2'; got {spec!r}")
    text = "".join(spec.split())
    name, *items = text.split(":")
    if name not in REGISTRY:
        raise BatchalInputError(f"unknown strategy {name!r} in spec {text!r}; choose one of: "
                                f"{', '.join(available_strategies())}")
    sig = inspect.signature(REGISTRY[name].__init__)
    allowed = [p for p in sig.parameters if p not in ("self", *_RESERVED)] + list(UNIVERSAL)
    params: dict = {}
    for item in _join_candidates(items):
        key, sep, val = item.partition("=")
        key = key.replace("-", "_")
        if not sep or not key or not val:
            raise BatchalInputError(f"strategy spec {text!r}: expected key=value after ':', got {item!r}")
        if key not in allowed and key in ("balance", "balance_by"):
            raise BatchalInputError(f"strategy spec {text!r}: {name} takes no balance (it has no uncertainty order "
                                    f"to fill per-class quotas in); balance applies to margin, entropy, "
                                    f"least-confidence and cluster-margin")
        if key not in allowed:
            hint = f"it takes: {', '.join(allowed)}" if allowed else "it takes no parameters"
            raise BatchalInputError(f"strategy spec {text!r}: {name} has no parameter {key!r}; {hint}")
        if key in params:
            raise BatchalInputError(f"strategy spec {text!r}: parameter {key!r} given twice")
        if key == "candidates":
            from .candidates import parse_candidates

            try:
                parse_candidates(val)
            except BatchalInputError as exc:
                raise BatchalInputError(f"strategy spec {text!r}: {exc}") from None
            params[key] = val
            continue
        # a column name stays text even when it reads as a number
        params[key] = val if key == "balance_by" else _checked(text, name, key, _value(val), sig.parameters[key])
    if params.get("balance") is not None or params.get("balance_by") is not None:
        # a bad value or share table is refused with the spec, before any input is read
        from .balance import check_balance

        try:
            check_balance(params.get("balance"), params.get("balance_by"))
        except BatchalInputError as exc:
            raise BatchalInputError(f"strategy spec {text!r}: {exc}") from None
    return StrategySpec(name, params, text)


def _join_candidates(items: list) -> list:
    """``candidates=neighbours`` then ``50`` -> ``candidates=neighbours:50``: the value's own colon split it."""
    out: list = []
    for item in items:
        if out and out[-1].startswith("candidates=") and out[-1].count(":") == 0 and "=" not in item:
            out[-1] = f"{out[-1]}:{item}"
        else:
            out.append(item)
    return out


def _checked(text: str, name: str, key: str, value, param: inspect.Parameter):
    """Refuse a value whose kind does not match the parameter's default (a number for a number...)."""
    default = param.default
    if value is None and "None" in str(param.annotation):
        return value
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if default is None and "float" in str(param.annotation):
        numeric = value is not None
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise BatchalInputError(f"strategy spec {text!r}: {name} parameter {key!r} must be a number; got {value!r}")
    if isinstance(default, str) and not isinstance(value, str):
        raise BatchalInputError(f"strategy spec {text!r}: {name} parameter {key!r} must be a word; got {value!r}")
    return value


def split_specs(text: str) -> list[StrategySpec]:
    """Parse a comma-separated list of specs (``simulate --strategies``); labels must be distinct."""
    specs = [parse_spec(s) for s in text.split(",") if s.strip()]
    if not specs:
        raise BatchalInputError("give at least one strategy")
    labels = [s.text for s in specs]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise BatchalInputError(f"strategy {dup!r} is listed twice")
    return specs


def get_selector(name: str, **params) -> Selector:
    """Instantiate a registered selector by name or by spec (``NAME:key=value...``)."""
    if isinstance(name, str) and ":" in name:
        spec = parse_spec(name)
        return spec.make(random_state=params.pop("random_state", None), **params)
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise BatchalInputError(
            f"unknown strategy {name!r}; choose one of: {', '.join(available_strategies())}"
        ) from None
    return cls(**params)
