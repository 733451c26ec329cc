"""Tests for lenet_sweep.sweep.space, against Hydra's real override parser."""

from __future__ import annotations

import math
import warnings

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lenet_sweep.sweep.space import SearchSpaceError, format_override, parse_space, split_overrides


def one(expr: object, key: str = "x"):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when it has to adjust a bound
        return parse_space({key: expr}, prefix="")[key]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("choice(1,2,3)", CategoricalDistribution([1, 2, 3])),
        ("1,2,3", CategoricalDistribution([1, 2, 3])),
        ("range(1,5)", IntDistribution(1, 4)),
        ("range(5)", IntDistribution(0, 4)),
        ("range(0,10,3)", IntDistribution(0, 9, step=3)),
        ("range(0,9,3)", IntDistribution(0, 6, step=3)),
        ("range(5,1,-1)", IntDistribution(2, 5)),
        ("range(3,4)", IntDistribution(3, 3)),
        ("range(0,1,0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("range(0,1,0.1)", FloatDistribution(0.0, 0.9, step=0.1)),
        ("range(0,0.9,0.3)", FloatDistribution(0.0, 0.6, step=0.3)),
        ("range(0.1,0.35,0.1)", FloatDistribution(0.1, 0.3, step=0.1)),
        ("range(1.0,3)", FloatDistribution(1.0, 2.0, step=1.0)),
        ("tag(log,range(1,100))", IntDistribution(1, 99, log=True)),
        ("tag(log, range(16, 257))", IntDistribution(16, 256, log=True)),
        ("interval(0,1)", FloatDistribution(0.0, 1.0)),
        ("interval(1,2)", FloatDistribution(1.0, 2.0)),
        ("interval(-0.5, 0.5)", FloatDistribution(-0.5, 0.5)),
        ("tag(log,interval(0.0001,0.1))", FloatDistribution(1e-4, 0.1, log=True)),
        ("tag(log, interval(1e-5, 1e-1))", FloatDistribution(1e-5, 0.1, log=True)),
        ("  choice(a,b)  ", CategoricalDistribution(["a", "b"])),
        ("0.5", CategoricalDistribution([0.5])),
        ("relu", CategoricalDistribution(["relu"])),
        ("null", CategoricalDistribution([None])),
        (3, CategoricalDistribution([3])),
        (0.25, CategoricalDistribution([0.25])),
        (False, CategoricalDistribution([False])),
    ],
)
def test_expression_to_distribution(expr: object, expected: object) -> None:
    assert one(expr) == expected


def test_choice_keeps_parsed_types() -> None:
    dist = one("choice(true, false)")
    assert dist.choices == (True, False) and all(type(c) is bool for c in dist.choices)
    dist = one("choice(adam, 'sgd', \"rms prop\", '1')")
    assert dist.choices == ("adam", "sgd", "rms prop", "1")
    dist = one("choice(0.1, 1e-3, 2, -1.5)")
    assert [type(c) for c in dist.choices] == [float, float, int, float]
    assert dist.choices == (0.1, 0.001, 2, -1.5)


def test_interval_bounds_are_float_even_for_ints() -> None:
    dist = one("interval(16, 128)")
    assert isinstance(dist, FloatDistribution) and not dist.log and dist.step is None


def test_parse_space_keys_and_many_entries() -> None:
    space = parse_space(
        {"optimizer.lr": "tag(log, interval(1e-4, 1e-1))", "model.act": "relu,tanh", "seed": 0}
    )
    assert list(space) == ["optimizer.lr", "model.act", "seed"]
    assert space["model.act"] == CategoricalDistribution(["relu", "tanh"])
    assert space["seed"] == CategoricalDistribution([0])


@pytest.mark.parametrize(
    "expr",
    [
        "choice(1,2",  # parse error
        "choice()",  # empty choice
        "foo(1,2)",  # unknown function
        "interval(1, 0.5)",  # low > high
        "interval(1, 1)",  # low == high
        "interval(0, inf)",  # non-finite
        "interval(a, b)",  # wrong argument types
        "tag(log, interval(0, 1))",  # log with low == 0
        "tag(log, interval(-1, 1))",  # log with low < 0
        "tag(log, range(0, 10))",  # log int range from 0
        "tag(log, range(1, 10, 2))",  # log needs step 1
        "tag(log, range(0.1, 1, 0.1))",  # log float range
        "tag(log, choice(1, 2))",  # log on a choice
        "tag(lgo, interval(1, 2))",  # unknown tag
        "range(5, 1)",  # empty range
        "range(1, 5, 0)",  # zero step
        "shuffle(choice(1,2))",
        "shuffle(range(1,5))",
        "shuffle([1,2])",
        "sort(3,1,2)",
        "sort(choice(b,a))",
        "sort([3,1])",
        "glob(*)",
        "choice(1, true)",  # Optuna cannot tell 1 and true apart
        "choice(a, a)",
        "[1,2],[3]",  # non-scalar choice values
        "[1,2]",  # non-scalar fixed value
        "{a: 1}",
        "a b=c",
    ],
)
def test_malformed_entry_raises_one_line_error(expr: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_space({"optimizer.lr": expr})
    message = str(info.value)
    assert message.startswith("hydra.sweeper.params.optimizer.lr: ")
    assert repr(expr.strip()) in message
    assert "\n" not in message


def test_error_message_format() -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_space({"optimizer.lr": "interval(1, 0.5)"})
    assert str(info.value) == (
        "hydra.sweeper.params.optimizer.lr: 'interval(1, 0.5)': "
        "lower bound must be below upper bound"
    )
    with pytest.raises(ValueError, match=r"^lr: \[1\]: expected"):
        parse_space({"lr": [1]}, prefix="")


def test_split_overrides() -> None:
    args = [
        "trainer.epochs=1",
        "optimizer.lr=tag(log, interval(1e-4, 1e-1))",
        "model.act=relu,tanh",
        "+foo=bar",
        "~x",
        "batch=range(16, 65, 16)",
        "dropout=choice(0.0, 0.5)",
        "+extra=1,2",
        "db@pkg=mysql,pg",
        "name='a,b'",
        "data.dir=/tmp/some path",
    ]
    space, fixed = split_overrides(args)
    assert space == {
        "optimizer.lr": "tag(log, interval(1e-4, 1e-1))",
        "model.act": "relu,tanh",
        "batch": "range(16, 65, 16)",
        "dropout": "choice(0.0, 0.5)",
        "+extra": "1,2",
        "db@pkg": "mysql,pg",
    }
    assert fixed == ["trainer.epochs=1", "+foo=bar", "~x", "name='a,b'", "data.dir=/tmp/some path"]
    dists = parse_space(space, prefix="")
    assert dists["batch"] == IntDistribution(16, 64, step=16)
    assert dists["+extra"] == CategoricalDistribution([1, 2])


def test_split_overrides_rejects_unparsable_argument() -> None:
    with pytest.raises(SearchSpaceError, match="choice") as info:
        split_overrides(["ok=1", "bad=choice(1,"])
    assert "\n" not in str(info.value)


PARSER = OverridesParser.create()
TRICKY_STRINGS = [
    "relu", "", "a b", " lead", "trail ", "a,b", "x=y", "f(x)", "[1]", "{a:1}", "1", "1.5",
    "true", "False", "null", "nan", "inf", "it's", 'say "hi"', "back\\slash", "end\\",
    "end\\\\", "\\'", "'", "''", "a\\'b", "${oc.env:HOME}", "tab\there", "new\nline",
    "ünïcode", "/tmp/some path/file.txt", "choice(1,2)", "1,2", "a:b", "#hash", "~x", "+y",
]


@pytest.mark.parametrize(
    "value",
    [True, False, 0, 7, -3, 10**20, 0.5, 0.0012345678901234567, 1e-05, 1e20, -2.0, 1 / 3]
    + [math.inf, -math.inf, None]
    + TRICKY_STRINGS,
)
def test_format_override_round_trips(value: object) -> None:
    text = format_override("group.key", value)
    override = PARSER.parse_override(text)
    assert override.get_key_element() == "group.key"
    assert not override.is_sweep_override()
    parsed = override.value()
    assert type(parsed) is type(value) and parsed == value


def test_format_override_shapes() -> None:
    assert format_override("a", True) == "a=true"
    assert format_override("a", False) == "a=false"
    assert format_override("a", 3) == "a=3"
    assert format_override("a", 0.0012345678901234567) == "a=0.0012345678901234567"
    assert format_override("a", "relu") == "a=relu"
    assert format_override("a", "a b,c") == "a='a b,c'"
    assert format_override("a", "it's") == "a='it\\'s'"
    assert format_override("+a", 1) == "+a=1"
    nan = PARSER.parse_override(format_override("a", math.nan)).value()
    assert isinstance(nan, float) and math.isnan(nan)
    with pytest.raises(TypeError):
        format_override("a", [1, 2])
