"""Hydra override-grammar sweep expressions -> Optuna distributions.

- ``choice(a, b)`` or ``a,b``: CategoricalDistribution; values keep their parsed
  types (bool, int, float, str).
- ``range(start, stop[, step])``: IntDistribution when all ints, else a stepped
  FloatDistribution. ``stop`` is excluded and the float grid is computed in
  decimal, so ``range(0, 0.9, 0.3)`` is 0, 0.3, 0.6 (Hydra's own enumeration
  leaks 0.8999999999999999). Sampled floats are ``low + k*step``.
- ``interval(a, b)``: FloatDistribution(a, b), both ends included (Hydra's parser
  hands over float bounds, even for ``interval(1, 5)``). ``int(interval(a, b))``:
  IntDistribution(a, b) (the parser casts the bounds to int, truncating), as in
  Hydra's official Optuna sweeper.
- ``tag(log, interval(a, b))`` (a > 0), ``tag(log, int(interval(a, b)))`` or
  ``tag(log, range(a, b))`` (ints, step 1, a >= 1): log scale. Other tags are
  rejected.
- Anything else (``0.5``, ``relu``): a one-value CategoricalDistribution.

:func:`check_values` then puts each distribution's values (every choice, the lowest
and highest value of a range or interval) into the job's config, where the schema's
types and enums and :func:`lenet_sweep.config.validate` judge them as they would the
key's own value, before any study or run exists.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from copy import deepcopy
from decimal import Decimal
from typing import Any, NoReturn

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, OverrideType, RangeSweep
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lenet_sweep.config import ConfigError, validate

PARAMS = "hydra.sweeper.params."
_PARSER = OverridesParser.create()
_QUOTED = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")
_UNSUPPORTED = re.compile(r"\b(shuffle|sort|glob)\s*\(")
_PLAIN = re.compile(r"[\w./+-]+")  # strings format_override may leave unquoted
_NOISE = re.compile(r"^\s*(\^?|Error parsing override.*|See https://.*)\s*$")
_SCALARS = (bool, int, float, str)
_ABSENT = object()
_FIX = "write choice(...), range(...), interval(...) or tag(log, ...)"
_Fail = Callable[[str], NoReturn]


class SearchSpaceError(ValueError):
    """A search-space entry that cannot become an Optuna distribution."""


def _one_line(text: str) -> str:
    return "; ".join(x.strip() for x in text.splitlines() if not _NOISE.match(x))


def entry_name(key: str, value: Any, prefix: str = PARAMS) -> str:
    """How errors name a search-space entry: ``hydra.sweeper.params.KEY: 'EXPRESSION'``."""
    return f"{prefix}{key}: {(value.strip() if isinstance(value, str) else value)!r}"


def parse_space(params: Mapping[str, Any], prefix: str = PARAMS) -> dict[str, BaseDistribution]:
    """Map each ``key: expression`` to an Optuna distribution; errors name ``prefix+key``."""
    return {str(key): _distribution(entry_name(key, value, prefix), value) for key, value in params.items()}


def _distribution(name: str, value: Any) -> BaseDistribution:
    text = value.strip() if isinstance(value, str) else value

    def fail(reason: str) -> NoReturn:
        raise SearchSpaceError(_one_line(f"{name}: {reason}"))

    if not isinstance(value, str):
        if value is None or isinstance(value, (bool, int, float)):
            return CategoricalDistribution([value])
        fail(f"expected an expression string or a scalar, got {type(value).__name__}")
    if _UNSUPPORTED.search(_QUOTED.sub("", text)):
        fail(f"shuffle(), sort() and glob() are not supported in a search space; {_FIX}")
    try:
        sweep = _PARSER.parse_override(f"k={text}").value()
    except HydraException as exc:
        fail(f"{exc}\nfix it per Hydra's override grammar")
    tags = set(getattr(sweep, "tags", None) or ())
    if tags - {"log"}:
        fail(f"unknown tag {sorted(tags - {'log'})[0]!r}; only 'log' is supported")
    log = "log" in tags
    if isinstance(sweep, ChoiceSweep):
        return _choice(sweep.list, log, fail)
    if isinstance(sweep, RangeSweep):
        return _range(sweep, log, fail)
    if isinstance(sweep, IntervalSweep):
        return _interval(sweep, log, fail)
    if sweep is None or isinstance(sweep, _SCALARS):
        return CategoricalDistribution([sweep])
    fail(f"a fixed value must be a scalar (bool, int, float, str, null); {_FIX}")


def _choice(values: list[Any], log: bool, fail: _Fail) -> BaseDistribution:
    if log:
        fail("log scale does not apply to choice(); use tag(log, interval(a, b))")
    for i, v in enumerate(values):
        if not isinstance(v, _SCALARS):
            fail(f"choice value {v!r} is not a scalar; use bool, int, float or str values")
        if v in values[:i]:
            fail(f"duplicate choice value {v!r} (1, 1.0 and true count as equal); list each once")
    return CategoricalDistribution(values)


def _range(sweep: RangeSweep, log: bool, fail: _Fail) -> BaseDistribution:
    nums = (sweep.start, sweep.stop, sweep.step)
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in nums):
        fail("range start, stop and step must be finite numbers")
    start, stop, step = (Decimal(str(x)) for x in nums)
    if step == 0:
        fail("range step must not be 0")
    count = math.ceil((stop - start) / step)
    if count <= 0:
        fail("range is empty (stop is excluded); put stop beyond start in the step's direction")
    last = start + (count - 1) * step
    low, high = min(start, last), max(start, last)
    if all(isinstance(x, int) for x in nums):
        if log and (abs(step) != 1 or low < 1):
            fail("tag(log, range(...)) needs step 1 and start >= 1")
        return IntDistribution(int(low), int(high), log=log, step=int(abs(step)))
    if log:
        fail("log scale needs an int range with step 1; use tag(log, interval(a, b)) for floats")
    return FloatDistribution(float(low), float(high), step=float(abs(step)))


def _interval(sweep: IntervalSweep, log: bool, fail: _Fail) -> BaseDistribution:
    low, high = sweep.start, sweep.end
    assert low is not None and high is not None  # the parser always sets both
    if not (math.isfinite(low) and math.isfinite(high)):
        fail("interval bounds must be finite numbers")
    if low >= high:
        fail("lower bound must be below upper bound")
    if log and low <= 0:
        fail("log scale needs a lower bound above 0")
    if isinstance(low, int) and isinstance(high, int):  # int(interval(a, b)): the parser cast them
        return IntDistribution(low, high, log=log)
    return FloatDistribution(low, high, log=log)


def _values(dist: BaseDistribution) -> list[tuple[str, Any]]:
    """The values of ``dist`` that stand for all of it: every choice; the lowest and highest value
    of a range or interval. An interval's highest value is its upper bound, which Optuna's
    FloatDistribution includes (CMA-ES and TPE clip to it, random sampling can round to it): it must
    be valid itself, so momentum in [0, 1) takes interval(0.5, 0.99), not interval(0.5, 1.0)."""
    if isinstance(dist, CategoricalDistribution):
        return [(f"choice value {v!r}", v) for v in dist.choices]
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    return [(f"lowest value {low!r}", low)] + ([(f"highest value {high!r}", high)] if high != low else [])


def check_values(space: Mapping[str, BaseDistribution], config: DictConfig,
                 names: Mapping[str, str]) -> None:
    """Raise SearchSpaceError, naming the entry (``names[key]``) and its value, for the first value
    of ``space`` that a trial's config would reject: the schema's type or enum (OmegaConf), or
    :func:`validate`'s ranges. ``config``: the composed config every trial starts from (the
    sweeper's). A ConfigError that no entry causes (a fixed value out of range) is raised as it is.

    Not checked: config groups (``optimizer=choice(sgd, adam)``: options name configs, not values),
    new keys (``+key``: no schema to check them against) and keys that the composed config lacks
    but another option of a swept group may have (``optimizer.beta_1`` with ``optimizer=choice(sgd,
    adam)``); keys under a swept group are checked in its default option. Any other key the config
    lacks is an error, as Hydra's in every trial would be."""
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default=None) or ())
    swept = tuple(k.lstrip("+") + "." for k in space if k.lstrip("+") in groups)
    base = deepcopy(config)  # the space's values go in here, never into ``config``
    checks: dict[str, list[tuple[str, str, Any]]] = {}  # path -> (key, what, value), in order
    for key, dist in space.items():
        path = key.lstrip("+")
        if path in groups or "@" in path or "/" in path:
            continue
        if OmegaConf.select(config, path, default=_ABSENT) is _ABSENT:
            if key.startswith("+") or path.startswith(swept):
                continue
            group, _, leaf = path.partition(".")
            choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
            if group in groups and leaf:  # e.g. optimizer.momentum with optimizer=adam
                raise SearchSpaceError(
                    f"{names[key]}: {group}={choices[group]} has no key {leaf}: fix the key (python -m "
                    f"lenet_sweep --cfg job lists them), take it out of the space "
                    f"({'~' + PARAMS + key if names[key].startswith(PARAMS) else 'leave it off the command line'}"
                    f"), or choose another {group}")
            raise SearchSpaceError(f"{names[key]}: {path} is not a key of the config: fix the key "
                                   f"(python -m lenet_sweep --cfg job lists them), or write +{path} "
                                   "to add a new one")
        for what, value in _values(dist):
            try:  # the schema's types and enums, as Hydra applies a trial's override
                OmegaConf.update(base, path, value)
            except ValidationError as exc:
                whole = isinstance(dist, FloatDistribution) and dist.step is None \
                    and type(OmegaConf.select(config, path)) is int
                raise SearchSpaceError(_one_line(
                    f"{names[key]}: {what}: {format_override(path, value)} is invalid: "
                    f"{str(exc).splitlines()[0]}" + ("; for whole numbers write int(interval(a, b))"
                                                     if whole else ""))) from None
            checks.setdefault(path, []).append((key, what, value))
    # ``base`` holds each entry's last value: a valid point, else the error names whose value it is
    try:
        validate(base)
    except ConfigError as exc:
        if exc.key not in checks:
            raise  # a fixed value out of range: every trial would fail on it
        key, what, _ = checks[exc.key][-1]
        raise SearchSpaceError(f"{names[key]}: {what}: {exc}") from None
    for path, values in checks.items():  # one value at a time, the other entries as in ``base``
        last = OmegaConf.select(base, path)
        for key, what, value in values:
            OmegaConf.update(base, path, value)
            try:
                validate(base)
            except ConfigError as exc:
                raise SearchSpaceError(f"{names[key]}: {what}: {exc}") from None
        OmegaConf.update(base, path, last)


def split_overrides(arguments: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split sweeper arguments into ``{key: sweep text}`` and unchanged fixed overrides."""
    space: dict[str, str] = {}
    fixed: list[str] = []
    for arg in arguments:
        try:
            override = _PARSER.parse_override(arg)
        except HydraException as exc:
            raise SearchSpaceError(_one_line(f"{arg!r}: {exc}")) from None
        if override.is_sweep_override() and override.type != OverrideType.DEL:
            space[override.get_key_element()] = override.get_value_string()
        else:
            fixed.append(arg)
    return space, fixed


def override_key(text: str) -> str:
    """The config key an override sets (``+a.b=1`` -> ``a.b``)."""
    return _PARSER.parse_override(text).key_or_group


def format_override(key: str, value: Any) -> str:
    """``key=value`` for a sampled value, written so Hydra parses back the same value."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = float.__repr__(float(value))
    elif isinstance(value, str):
        text = value if _PLAIN.fullmatch(value) and _reads_back(value) else _quote(value)
    else:
        raise TypeError(f"{key}: cannot format {type(value).__name__} value {value!r}")
    return f"{key}={text}"


def _reads_back(text: str) -> bool:
    try:
        return bool(_PARSER.parse_override(f"k={text}").value() == text)
    except HydraException:
        return False


def _quote(text: str) -> str:
    # Hydra unescapes only backslashes that precede a quote (or the closing quote).
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body) + "'"
