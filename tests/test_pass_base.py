"""The pass contract: typed options (coercion, validation, messages), frozen PassResult, Pass equality,
Diagnostic severities."""

from __future__ import annotations

import dataclasses

import pytest

from graphopt.errors import UsageError
from graphopt.pass_base import Diagnostic, Option, Pass, PassResult


class Tunable(Pass):
    """A pass with one option of every kind, for option tests."""

    name = "tune-things"
    summary = "test pass with options of every kind"
    options = (
        Option("flag", bool, False, "a switch"),
        Option("count", int, 3, "a bounded integer", minimum=1, maximum=8),
        Option("ratio", float, 0.5, "a fraction", minimum=0.0, maximum=1.0),
        Option("label", str, "plain", "any text"),
        Option("mode", str, "fast", "a choice", choices=("fast", "slow")),
        Option("names", list, (), "a list of names"),
        Option("floor", int, 0, "bounded below only", minimum=0),
        Option("ceiling", float, 1.0, "bounded above only", maximum=10.0),
    )

    def run(self, graph, ctx):  # pragma: no cover - never run in these tests
        return PassResult(False)


class Plain(Pass):
    name = "plain-pass"
    summary = "a pass without options"

    def run(self, graph, ctx):  # pragma: no cover
        return PassResult(False)


class PlainTwin(Pass):
    """Another class, same name: equality is by class, name and options."""

    name = "plain-pass"
    summary = "a different class with the same name"

    def run(self, graph, ctx):  # pragma: no cover
        return PassResult(False)


# ---------------------------------------------------------------------------------------------------------
# Option coercion


def test_defaults_apply_when_no_option_is_given():
    assert Tunable().values == {"flag": False, "count": 3, "ratio": 0.5, "label": "plain", "mode": "fast",
                                "names": (), "floor": 0, "ceiling": 1.0}
    assert Tunable().non_default_options() == {}


@pytest.mark.parametrize(("option", "given", "expected"), [
    ("flag", True, True),
    ("flag", "true", True),
    ("flag", "FALSE", False),
    ("flag", "True", True),
    ("count", 5, 5),
    ("count", "5", 5),
    ("count", 4.0, 4),
    ("count", 1, 1),  # bounds are inclusive
    ("count", 8, 8),
    ("ratio", "0.25", 0.25),
    ("ratio", 1, 1.0),
    ("ratio", "1e-3", 0.001),
    ("ratio", 0.0, 0.0),
    ("label", "a b,c", "a b,c"),
    ("label", "", ""),
    ("mode", "slow", "slow"),
    ("names", ["a", "b"], ("a", "b")),
    ("names", ("x",), ("x",)),
    ("names", [], ()),
    ("floor", "100000", 100000),
    ("ceiling", "-1e9", -1e9),
])
def test_option_values_are_coerced_to_the_declared_type(option, given, expected):
    value = Tunable(**{option: given}).values[option]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("option", "given", "allowed"), [
    ("flag", "yes", "true or false"),
    ("flag", 1, "true or false"),
    ("flag", None, "true or false"),
    ("count", "2.5", "an integer in [1, 8]"),
    ("count", 2.5, "an integer in [1, 8]"),
    ("count", True, "an integer in [1, 8]"),
    ("count", 0, "an integer in [1, 8]"),
    ("count", 9, "an integer in [1, 8]"),
    ("count", "many", "an integer in [1, 8]"),
    ("ratio", "nan", "a number in [0, 1]"),
    ("ratio", float("nan"), "a number in [0, 1]"),
    ("ratio", 1.5, "a number in [0, 1]"),
    ("ratio", -0.1, "a number in [0, 1]"),
    ("ratio", "inf", "a number in [0, 1]"),
    ("ratio", False, "a number in [0, 1]"),
    ("ratio", "half", "a number in [0, 1]"),
    ("label", 3, "a string"),
    ("label", None, "a string"),
    ("mode", "medium", "one of fast, slow"),
    ("mode", "FAST", "one of fast, slow"),
    ("names", "a,b", "a list of names, e.g. [a,b]"),
    ("names", ["a", 1], "a list of names, e.g. [a,b]"),
    ("names", 3, "a list of names, e.g. [a,b]"),
    ("floor", -1, "an integer >= 0"),
    ("ceiling", 10.5, "a number <= 10"),
])
def test_bad_option_value_names_pass_option_and_what_is_allowed(option, given, allowed):
    with pytest.raises(UsageError) as raised:
        Tunable(**{option: given})
    message = str(raised.value)
    assert message.startswith("tune-things: ")
    assert f"option '{option}'" in message
    assert allowed in message
    assert repr(given) in message
    assert raised.value.exit_code == 2


def test_unknown_option_names_the_known_ones():
    with pytest.raises(UsageError) as raised:
        Tunable(colour="red")
    message = str(raised.value)
    assert "tune-things" in message and "unknown option 'colour'" in message
    assert "flag, count, ratio, label, mode, names, floor, ceiling" in message


def test_unknown_option_of_a_pass_without_options_says_none():
    with pytest.raises(UsageError, match=r"plain-pass: unknown option 'x' \(its options: none\)"):
        Plain(x=1)


def test_describe_allowed_for_unbounded_kinds():
    assert Option("n", int, 0, "").describe_allowed() == "an integer"
    assert Option("f", float, 0.0, "").describe_allowed() == "a number"
    assert Option("s", str, "", "").describe_allowed() == "a string"


# ---------------------------------------------------------------------------------------------------------
# PassResult


def test_pass_result_is_frozen():
    result = PassResult(True, {"removed.identity": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.changed = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.stats = {}


def test_pass_result_stats_are_read_only_and_a_copy():
    given = {"removed.identity": 1}
    result = PassResult(True, given)
    with pytest.raises(TypeError):
        result.stats["removed.identity"] = 2
    with pytest.raises(TypeError):
        del result.stats["removed.identity"]
    given["removed.identity"] = 5  # the caller's dict is not shared
    assert dict(result.stats) == {"removed.identity": 1}


def test_pass_result_diagnostics_become_a_tuple():
    warning = Diagnostic("warning", "look")
    result = PassResult(False, {}, [warning])
    assert result.diagnostics == (warning,)


def test_merge_sums_stats_keeps_diagnostic_order_and_ors_changed():
    first = Diagnostic("info", "first")
    second = Diagnostic("warning", "second", node="n1")
    merged = PassResult.merge([
        PassResult(False, {"removed.identity": 2, "skipped.x": 1}, (first,)),
        PassResult(True, {"removed.identity": 3, "removed.dropout": 1}, (second,)),
        PassResult(False, {}),
    ])
    assert merged.changed is True
    assert dict(merged.stats) == {"removed.identity": 5, "skipped.x": 1, "removed.dropout": 1}
    assert merged.diagnostics == (first, second)


def test_merge_of_unchanged_results_is_unchanged_and_extra_stats_override():
    merged = PassResult.merge([PassResult(False, {"iterations": 4})], iterations=1)
    assert merged.changed is False
    assert dict(merged.stats) == {"iterations": 1}
    assert PassResult.merge([]) == PassResult(False)


# ---------------------------------------------------------------------------------------------------------
# Pass equality


def test_passes_are_equal_by_name_and_option_values():
    assert Tunable(count=4) == Tunable(count="4")
    assert hash(Tunable(count=4)) == hash(Tunable(count="4"))
    assert Tunable() == Tunable(count=3)  # an explicit default is the default
    assert Tunable(count=4) != Tunable(count=5)
    assert Tunable(names=["a"]) != Tunable(names=["a", "b"])
    assert Tunable() != Plain()
    assert Plain() == Plain()


def test_passes_of_different_classes_are_not_equal_even_with_the_same_name():
    assert Plain() != PlainTwin()


def test_non_default_options_lists_only_what_differs_in_declaration_order():
    assert Tunable(mode="slow", flag=True, count=3).non_default_options() == {"flag": True, "mode": "slow"}


# ---------------------------------------------------------------------------------------------------------
# Diagnostic


@pytest.mark.parametrize("severity", ["info", "warning", "error"])
def test_diagnostic_accepts_known_severities(severity):
    assert str(Diagnostic(severity, "msg", node="n")) == f"{severity} [n]: msg"


@pytest.mark.parametrize("severity", ["fatal", "Warning", "", "warn"])
def test_diagnostic_rejects_unknown_severity(severity):
    with pytest.raises(ValueError, match="unknown diagnostic severity"):
        Diagnostic(severity, "msg")


def test_diagnostic_without_node_prints_without_brackets():
    assert str(Diagnostic("info", "all good")) == "info: all good"
