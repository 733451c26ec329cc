"""Tests for lenet_sweep.sweep.space, against Hydra's real override parser."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from conftest import compose_cfg, run_cli, sweep_args
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lenet_sweep import CONF_DIR
from lenet_sweep.config import ConfigError
from lenet_sweep.sweep.space import (PARAMS, SearchSpaceError, check_values, entry_name, format_override,
                                     parse_space, split_overrides)


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
        ("int(interval(16, 128))", IntDistribution(16, 128)),
        ("tag(log, int(interval(16, 128)))", IntDistribution(16, 128, log=True)),
        ("int(tag(log, interval(16, 128)))", IntDistribution(16, 128, log=True)),
        ("int(interval(1.5, 5.5))", IntDistribution(1, 5)),  # Hydra's int() cast truncates the bounds
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


@pytest.mark.parametrize("expr", ["int(interval(16, 128))", "tag(log, int(interval(16, 128)))"])
def test_int_interval_draws_whole_numbers(expr: str) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [study.ask({"data.batch_size": one(expr)}).params["data.batch_size"] for _ in range(50)]
    assert all(type(v) is int and 16 <= v <= 128 for v in drawn), drawn
    assert len(set(drawn)) > 10  # drawn across the interval, not stuck at a bound


# Hydra's official Optuna sweeper, plugins/hydra_optuna_sweeper/tests/test_optuna_sweeper_plugin.py
# (test_create_optuna_distribution_from_override): its cases in its order, its expected distributions
# in today's Optuna names (IntUniformDistribution(a, b) is IntDistribution(a, b), ...). Where the
# expectation differs from the plugin's, the comment says how and why.
HYDRA_PLUGIN_CASES = [
    ("key=choice(1,2)", CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    # plugin: CategoricalDistribution((1, 2)) in a shuffled order. Refused here, in one line: Optuna
    # draws a choice by its own rule, so shuffle() would only reorder a grid (sort() and glob() alike)
    ("key=shuffle(range(1,3))", SearchSpaceError),
    # plugin: IntDistribution(1, 3). Here stop is excluded, as in Hydra's own range() sweep (1, 2)
    # and Python's range()
    ("key=range(1,3)", IntDistribution(1, 2)),
    ("key=interval(1, 5)", FloatDistribution(1, 5)),
    ("key=int(interval(1, 5))", IntDistribution(1, 5)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    # plugin: FloatDistribution(0.5, 5.5, step=1). Here stop is excluded: 0.5, 1.5, ..., 4.5
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1)),
]


@pytest.mark.parametrize(("override", "expected"), HYDRA_PLUGIN_CASES)
def test_hydra_optuna_sweeper_grammar_cases(override: str, expected: object) -> None:
    space, fixed = split_overrides([override])  # as the command line hands it over
    assert fixed == []
    if expected is SearchSpaceError:
        with pytest.raises(SearchSpaceError, match=r"^key: 'shuffle\(range\(1,3\)\)': shuffle\(\)"):
            parse_space(space, prefix="")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = parse_space(space, prefix="")["key"]
    assert dist == expected and type(dist) is type(expected)


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
        "tag(log, int(interval(0, 5)))",  # int log with low == 0
        "int(interval(0.2, 0.8))",  # Hydra's int() makes both bounds 0
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


# -- values checked against the config's schema (check_values) ---------------------------------------


@pytest.fixture(scope="module")
def job():
    """The composed config a sweep's trials start from, with Hydra's node (its group choices)."""
    return compose_cfg(hydra_config=True)


def check(job, params: dict, prefix: str = PARAMS) -> None:
    space = parse_space(params, prefix)
    check_values(space, job, {key: entry_name(key, value, prefix) for key, value in params.items()})


def shipped_params() -> dict:
    params = OmegaConf.load(CONF_DIR / "hydra" / "sweeper" / "optuna.yaml").params
    return {f"{group}.{key}": value for group, entries in params.items() for key, value in entries.items()}


@pytest.mark.parametrize(
    ("key", "expr", "message"),
    [
        ("data.batch_size", "choice(0, 32)",
         "choice value 0: data.batch_size=0 is invalid: must be >= 1 (for example data.batch_size=32)"),
        ("model.activation", "choice(relu, tanhh)",
         "choice value 'tanhh': model.activation=tanhh is invalid: Invalid value 'tanhh', "
         "expected one of [sigmoid, relu]"),
        ("optimizer.momentum", "interval(0.5, 1.5)",
         "highest value 1.5: optimizer.momentum=1.5 is invalid: must be in [0, 1) "
         "(for example optimizer.momentum=0.9)"),
        # Optuna's interval includes its upper bound (CMA-ES and TPE clip to it): it must be valid
        ("optimizer.momentum", "interval(0.5, 1.0)",
         "highest value 1.0: optimizer.momentum=1.0 is invalid: must be in [0, 1) "
         "(for example optimizer.momentum=0.9)"),
        ("data.validation_split", "interval(0, 0.5)",
         "lowest value 0.0: data.validation_split=0.0 is invalid: must be in (0, 1) "
         "(for example data.validation_split=0.1)"),
        ("data.batch_size", "range(0, 64, 16)",
         "lowest value 0: data.batch_size=0 is invalid: must be >= 1 (for example data.batch_size=32)"),
        ("data.batch_size", "interval(16, 128)",
         "lowest value 16.0: data.batch_size=16.0 is invalid: Value '16.0' of type 'float' could not be "
         "converted to Integer; for whole numbers write int(interval(a, b))"),
        ("data.train_limit", "choice(5000, 5)",
         "choice value 5: data.train_limit=5 is invalid: must be null (all) or >= 10 "
         "(for example data.train_limit=2000)"),
        ("optimizer.nesterov", "choice(true, 0.5)",
         "choice value 0.5: optimizer.nesterov=0.5 is invalid: Value '0.5' is not a valid bool (type float)"),
        ("optimizer.momentun", "interval(0, 0.5)",
         "optimizer=sgd has no key momentun: fix the key (python -m lenet_sweep --cfg job lists them), take "
         "it out of the space (~hydra.sweeper.params.optimizer.momentun), or choose another optimizer"),
        ("trainer.epoch", "choice(1, 2)",
         "trainer.epoch is not a key of the config: fix the key (python -m lenet_sweep --cfg job "
         "lists them), or write +trainer.epoch to add a new one"),
    ],
)
def test_a_value_the_config_rejects_names_its_entry(job, key: str, expr: str, message: str) -> None:
    with pytest.raises(SearchSpaceError) as info:  # beside a valid entry, which is not blamed
        check(job, {"optimizer.lr": "tag(log, interval(0.01, 0.5))", key: expr})
    assert str(info.value) == f"hydra.sweeper.params.{key}: {expr!r}: {message}"


def test_the_default_space_with_adam_names_the_keys_adam_lacks() -> None:
    # the shipped space searches SGD's momentum and Nesterov: with optimizer=adam, one line, not a
    # failed trial per point
    with pytest.raises(SearchSpaceError) as info:
        check(compose_cfg(["optimizer=adam"], hydra_config=True), shipped_params())
    assert str(info.value) == (
        "hydra.sweeper.params.optimizer.momentum: 'interval(0.0, 0.99)': optimizer=adam has no key momentum: "
        "fix the key (python -m lenet_sweep --cfg job lists them), take it out of the space "
        "(~hydra.sweeper.params.optimizer.momentum), or choose another optimizer")


def test_a_command_line_entry_is_named_as_written(job) -> None:
    with pytest.raises(SearchSpaceError) as info:
        check(job, {"data.batch_size": "choice(0,32)"}, prefix="")
    assert str(info.value).startswith("data.batch_size: 'choice(0,32)': choice value 0: data.batch_size=0 ")


@pytest.mark.parametrize(
    "params",
    [
        shipped_params(),
        {"data.batch_size": "tag(log, int(interval(16, 256)))", "optimizer.momentum": "interval(0.5, 0.99)",
         "data.validation_split": "interval(0.05, 0.3)", "data.train_limit": "choice(1000, 2000)"},
        # a group's options are config names, and optimizer.beta_1 is a key of its adam option only
        {"optimizer": "choice(sgd, adam)", "optimizer.beta_1": "interval(0.8, 0.99)", "optimizer.lr": 0.01},
        {"+extra": "choice(1, 2)"},  # a new key: no schema to check it against
    ],
)
def test_values_the_config_takes_pass_and_leave_it_unchanged(job, params: dict) -> None:
    before = OmegaConf.to_container(job)
    check(job, params)
    assert OmegaConf.to_container(job) == before


def test_a_fixed_value_out_of_range_is_named_as_itself() -> None:
    fixed = compose_cfg(["trainer.epochs=0"], hydra_config=True)
    with pytest.raises(ConfigError) as info:
        check(fixed, {"optimizer.lr": "interval(0.01, 0.5)"})
    assert not isinstance(info.value, SearchSpaceError)
    assert str(info.value) == "trainer.epochs=0 is invalid: must be >= 1 (for example trainer.epochs=10)"
    # a swept key's own value is replaced by the sweep's in every trial: only the sweep's values count
    check(compose_cfg(["data.batch_size=0"], hydra_config=True), {"data.batch_size": "choice(16, 32)"})


@pytest.mark.sweep
def test_sweep_with_a_bad_value_stops_before_any_study_or_run(tmp_path) -> None:
    proc = run_cli(sweep_args(tmp_path, "data.batch_size=choice(0,32)"), tmp_path, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: data.batch_size: 'choice(0,32)': choice value 0: data.batch_size=0 is invalid: must be >= 1 "
        "(for example data.batch_size=32)"]
    assert list(tmp_path.iterdir()) == []  # no journal, no MLflow store, no sweep folder
