"""The pass manager: order of execution, nesting, fixed points (convergence, bound, cycles), the text form
and its parser (round trip, errors), the honesty check of ``changed``, PassError, skipping, invariants,
analysis invalidation and structural verification. Uses tiny test passes defined here, in their own
Registry, so nothing depends on the built-in pass library except the default-registry test."""

from __future__ import annotations

import re

import onnx_graphsurgeon as gs
import pytest
from conftest import TINY_TEXT, parse_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphopt
import graphopt.pipeline
from graphopt.analysis import AnalysisCache
from graphopt.errors import PassError, UsageError
from graphopt.instruments import SkipPasses, verify_structure
from graphopt.model import to_graph
from graphopt.pass_base import Invariant, Option, Pass, PassContext, PassResult
from graphopt.pipeline import FixedPoint, Pipeline, check_requirements, format_pipeline, parse_pipeline, run_pass
from graphopt.registry import Registry, default_registry

# What the test passes did, in order. Passes may not keep state, so they report here; cleared per test.
RUN_LOG: list = []


@pytest.fixture(autouse=True)
def _clear_run_log():
    RUN_LOG.clear()
    yield
    RUN_LOG.clear()


class Mark(Pass):
    """Records its tag; never changes the graph."""

    name = "mark"
    summary = "record the tag"
    options = (Option("tag", str, "", "what to record"),)

    def run(self, graph, ctx):
        RUN_LOG.append(self.values["tag"])
        return PassResult(False)


class GrowName(Pass):
    """Appends '+' to the first node's name until it has ``up_to`` of them, then converges."""

    name = "grow-name"
    summary = "rename the first node a bounded number of times"
    options = (Option("up_to", int, 2, "how many renames", minimum=0, maximum=100),)

    def run(self, graph, ctx):
        node = graph.nodes[0]
        if node.name.count("+") >= self.values["up_to"]:
            return PassResult(False)
        node.name += "+"
        return PassResult(True, {"rewrites.grow": 1})


class RenameAlways(Pass):
    """Renames the first node to a name it never had before: never converges."""

    name = "rename-always"
    summary = "always change the graph"

    def run(self, graph, ctx):
        graph.nodes[0].name += "*"
        RUN_LOG.append("rename")
        return PassResult(True, {"rewrites.rename": 1})


class ToggleName(Pass):
    """Flips the first node's name between 'ping' and 'pong': a two-step cycle."""

    name = "toggle-name"
    summary = "undo itself every other run"

    def run(self, graph, ctx):
        node = graph.nodes[0]
        node.name = "pong" if node.name == "ping" else "ping"
        RUN_LOG.append(node.name)
        return PassResult(True)


class Liar(Pass):
    """Reports ``changed`` wrongly: claims a change it did not make, or hides one it made."""

    name = "lie-about-change"
    summary = "a dishonest pass"
    options = (Option("mode", str, "claims-change", "which lie", choices=("claims-change", "hides-change")),)

    def run(self, graph, ctx):
        if self.values["mode"] == "claims-change":
            return PassResult(True)
        graph.nodes[0].name += "!"
        return PassResult(False)


class NeedsShapes(Pass):
    """Requires shapes; records the shape of the intermediate tensor ``t`` it sees."""

    name = "needs-shapes"
    summary = "read inferred shapes"
    requires = frozenset({Invariant.SHAPES_INFERRED})

    def run(self, graph, ctx):
        RUN_LOG.append(graph.tensors()["t"].shape)
        return PassResult(False)


class ReadsShapes(Pass):
    """Like needs-shapes, but does not declare the requirement (the control)."""

    name = "reads-shapes"
    summary = "read shapes without requiring them"

    def run(self, graph, ctx):
        RUN_LOG.append(graph.tensors()["t"].shape)
        return PassResult(False)


class RenameKeepShapes(Pass):
    """Changes the graph and declares that inferred shapes stay valid."""

    name = "rename-keep-shapes"
    summary = "change the graph, preserve shapes"
    preserves = frozenset({Invariant.SHAPES_INFERRED})

    def run(self, graph, ctx):
        graph.nodes[0].name += "~"
        return PassResult(True)


class Dangle(Pass):
    """Rewires the first node to read a tensor that nothing produces (a broken graph)."""

    name = "leave-dangling-input"
    summary = "break the graph"

    def run(self, graph, ctx):
        graph.nodes[0].inputs[0] = gs.Variable("dangling")
        return PassResult(True)


class FailAlways(Pass):
    name = "fail-always"
    summary = "raise"

    def run(self, graph, ctx):
        raise RuntimeError("boom")


class Knobs(Pass):
    """Options of every kind, for the text round trip."""

    name = "turn-knobs"
    summary = "options of every kind"
    options = (
        Option("flag", bool, False, "bool"),
        Option("count", int, 3, "int", minimum=-5, maximum=1000),
        Option("ratio", float, 0.5, "float", minimum=-1.0, maximum=1e6),
        Option("label", str, "plain", "str"),
        Option("mode", str, "fast", "choice", choices=("fast", "slow", "very slow", "a,b")),
        Option("names", list, (), "list"),
    )

    def run(self, graph, ctx):
        return PassResult(False)


class SelfReference(Pass):
    name = "self"
    summary = "placeholder"

    def run(self, graph, ctx):  # pragma: no cover
        return PassResult(False)


TEST_PASSES = [Mark, GrowName, RenameAlways, ToggleName, Liar, NeedsShapes, ReadsShapes, RenameKeepShapes, Dangle,
               FailAlways, Knobs]
REGISTRY = Registry(
    passes=TEST_PASSES,
    aliases={"m": "mark", "grow": "grow-name", "knobs": "turn-knobs"},
    presets={
        "twice": "mark(tag=one),m(tag=two)",
        "converge": "fixed-point(grow(up_to=3),twice)",
        "everything": "twice,converge",
    },
)


def parse(text: str) -> Pipeline:
    return parse_pipeline(text, REGISTRY)


def run(passes: str | Pass, text: str = TINY_TEXT, **ctx_options):
    """Run ``passes`` on a fresh gs graph of ``text`` with the honesty check on; (result, ctx, graph)."""
    pipeline = parse(passes) if isinstance(passes, str) else passes
    graph = to_graph(parse_model(text))
    ctx = PassContext(AnalysisCache(), check_changed=True, **ctx_options)
    return run_pass(pipeline, graph, ctx), ctx, graph


# ---------------------------------------------------------------------------------------------------------
# Order of execution and nesting


def test_passes_run_in_the_order_written():
    run("mark(tag=a),mark(tag=b),m(tag=c),mark(tag=d)")
    assert RUN_LOG == ["a", "b", "c", "d"]


def test_presets_expand_in_place():
    run("mark(tag=first),twice,mark(tag=last)")
    assert RUN_LOG == ["first", "one", "two", "last"]


def test_pipeline_in_fixed_point_in_pipeline_runs_until_converged():
    result, ctx, graph = run("mark(tag=start),pipeline(fixed-point(pipeline(mark(tag=a),grow-name(up_to=2)),"
                             "mark(tag=b)),mark(tag=c)),mark(tag=end)")
    # two iterations change the graph, the third confirms the fixed point
    assert RUN_LOG == ["start", "a", "b", "a", "b", "a", "b", "c", "end"]
    assert result.changed is True
    assert result.stats["rewrites.grow"] == 2
    assert result.stats["iterations"] == 3
    assert graph.nodes[0].name.endswith("++")
    paths = [record.path for record in ctx.records]
    assert paths[:3] == ["mark", "fixed-point[1]/mark", "fixed-point[1]/grow-name"]
    assert paths[-3:] == ["fixed-point[3]/mark", "mark", "mark"]


def test_nested_fixed_points_each_converge():
    result, _, graph = run("fixed-point(fixed-point(grow-name(up_to=2)),mark(tag=outer))")
    # inner: grow, grow, stop (3 runs); outer iteration 1 changed, so iteration 2 re-runs the inner once
    assert RUN_LOG == ["outer", "outer"]
    assert graph.nodes[0].name.count("+") == 2
    assert result.stats["rewrites.grow"] == 2


# ---------------------------------------------------------------------------------------------------------
# Fixed points


def test_fixed_point_stops_when_an_iteration_changes_nothing():
    result, ctx, _ = run("fixed-point(grow-name(up_to=3),mark(tag=x),max_iterations=10)")
    assert result.stats["iterations"] == 4  # three changing iterations and the one that confirms
    assert result.stats["rewrites.grow"] == 3
    assert RUN_LOG == ["x"] * 4
    assert result.diagnostics == ()
    assert result.changed is True


def test_fixed_point_that_changes_nothing_runs_once_and_reports_unchanged():
    result, _, _ = run("fixed-point(mark(tag=x))")
    assert RUN_LOG == ["x"]
    assert result.stats["iterations"] == 1
    assert result.changed is False
    assert result.diagnostics == ()


def test_fixed_point_respects_max_iterations_with_a_warning():
    result, _, graph = run("fixed-point(rename-always,max_iterations=3)")
    assert RUN_LOG == ["rename"] * 3
    assert result.stats["iterations"] == 3
    assert graph.nodes[0].name.endswith("***") and not graph.nodes[0].name.endswith("****")
    [warning] = result.diagnostics
    assert warning.severity == "warning"
    assert "did not converge in 3 iterations" in warning.message


def test_fixed_point_limit_warning_reaches_the_optimize_report(tiny_text_model):
    pipeline = parse("fixed-point(rename-always,max_iterations=2)")
    _, report = graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=True)
    assert any("did not converge in 2 iterations" in d and d.startswith("warning") for d in report.diagnostics)


def test_fixed_point_detects_a_cycle_and_stops_early():
    result, _, _ = run("fixed-point(toggle-name,max_iterations=50)")
    # ping (new), pong (new), ping again: the graph of iteration 1 is back
    assert RUN_LOG == ["ping", "pong", "ping"]
    assert result.stats["iterations"] == 3
    [warning] = result.diagnostics
    assert warning.severity == "warning"
    assert "cycle" in warning.message
    assert "iteration 3 reproduced the graph of iteration 1" in warning.message


def test_fixed_point_cycle_back_to_the_input_graph_is_detected():
    pipeline = Pipeline([FixedPoint([ToggleName()], max_iterations=50)])
    graph = to_graph(parse_model(TINY_TEXT))
    graph.nodes[0].name = "ping"
    result = run_pass(pipeline, graph, PassContext(AnalysisCache(), check_changed=True))
    assert RUN_LOG == ["pong", "ping"]
    assert "iteration 2 reproduced the graph of iteration 0" in result.diagnostics[0].message


@pytest.mark.parametrize("bad", ["0", "-1", "1001", "2.5", "many"])
def test_fixed_point_max_iterations_is_validated(bad):
    with pytest.raises(UsageError, match=r"fixed-point: option 'max_iterations' must be an integer in \[1, 1000\]"):
        parse(f"fixed-point(mark,max_iterations={bad})")


# ---------------------------------------------------------------------------------------------------------
# Text form: round trip


ROUND_TRIP_TEXTS = [
    "mark",
    "m",
    "mark(tag=hello)",
    "mark(tag='a,b')",
    "mark(tag='f(x)')",
    "mark(tag='(unbalanced')",
    "mark(tag=\"it's\")",
    "mark(tag='say \"hi\"')",
    "mark(tag='back\\\\slash')",
    "mark(tag='with space')",
    "mark(tag='')",
    "mark(tag='true')",
    "mark(tag='FALSE')",
    "mark(tag='k=v')",
    "mark(tag='[x]')",
    "mark(tag=ünïcødé)",
    "mark ( tag = spaced )",
    "grow-name(up_to=7)",
    "grow(up_to=0)",
    "knobs(flag=true)",
    "knobs(flag=false)",
    "turn-knobs(flag=TRUE,count=-5,ratio=1e-05,label=x,mode=slow,names=[a,b])",
    "turn-knobs(ratio=1000000.0,count=1000)",
    "turn-knobs(ratio=-0.25)",
    "turn-knobs(ratio=3)",
    "turn-knobs(mode='very slow')",
    "turn-knobs(mode='a,b')",
    "turn-knobs(names=[])",
    "turn-knobs(names=['x,y','(z)',\"q'\"])",
    "turn-knobs(names=[only])",
    "turn-knobs(count=3)",  # the default: prints as the bare name
    "fixed-point(mark)",
    "fixed-point(mark,max_iterations=3)",
    "fixed-point(max_iterations=3,mark,grow)",
    "fixed-point(max_iterations=4)",
    "fixed-point",
    "pipeline",
    "pipeline()",
    "pipeline(mark(tag=a),fixed-point(pipeline(grow,mark(tag='b,c')),max_iterations=5))",
    "fixed-point(fixed-point(fixed-point(mark,max_iterations=2)),max_iterations=999)",
    "twice",
    "converge",
    "everything",
    "fixed-point(twice,converge)",
    "mark(tag=a), twice ,converge,turn-knobs(names=[a , b])",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_text_round_trips(text):
    pipeline = parse(text)
    printed = format_pipeline(pipeline)
    reparsed = parse(printed)
    assert reparsed == pipeline
    assert format_pipeline(reparsed) == printed


@pytest.mark.parametrize(("text", "canonical"), [
    ("m(tag=a)", "mark(tag=a)"),
    ("grow", "grow-name"),
    ("turn-knobs(count=3)", "turn-knobs"),
    ("turn-knobs(flag=TRUE,names=[b,a])", "turn-knobs(flag=true,names=[b,a])"),
    ("turn-knobs(ratio=3)", "turn-knobs(ratio=3.0)"),
    ("turn-knobs(mode=\"very slow\")", "turn-knobs(mode='very slow')"),
    ("mark(tag=\"it's\")", "mark(tag='it\\'s')"),
    ("fixed-point(max_iterations=3,mark)", "fixed-point(mark,max_iterations=3)"),
    ("fixed-point(max_iterations=10,mark)", "fixed-point(mark)"),
    ("twice", "mark(tag=one),mark(tag=two)"),
    ("converge", "fixed-point(grow-name(up_to=3),mark(tag=one),mark(tag=two))"),
    ("everything", "mark(tag=one),mark(tag=two),fixed-point(grow-name(up_to=3),mark(tag=one),mark(tag=two))"),
    ("pipeline()", "pipeline"),
    (" mark , mark ", "mark,mark"),
])
def test_text_prints_canonically(text, canonical):
    assert format_pipeline(parse(text)) == canonical


def test_default_registry_presets_expand_to_what_runs():
    registry = default_registry()
    cleanup = format_pipeline(parse_pipeline("cleanup"))
    assert cleanup == registry.presets["cleanup"]  # written in canonical form
    assert cleanup.startswith("eliminate-identity,") and cleanup.endswith(",eliminate-dead-nodes")
    assert format_pipeline(parse_pipeline("dce")) == "eliminate-dead-nodes"
    assert parse_pipeline("all") == parse_pipeline("lossless")
    [lossless] = parse_pipeline("lossless").children()
    assert type(lossless) is FixedPoint
    assert format_pipeline(lossless).startswith("fixed-point(fold-constants,eliminate-identity,")
    leaves = [p for p in lossless.children()]
    assert all(p.name in registry.passes for p in leaves)  # presets expanded, aliases resolved


def test_parsed_options_are_typed():
    [knobs] = parse("turn-knobs(flag=true,count=7,ratio=0.125,label=x,names=[a,'b c'])").children()
    assert knobs.values == {"flag": True, "count": 7, "ratio": 0.125, "label": "x", "mode": "fast",
                            "names": ("a", "b c")}


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


def _leaf_passes():
    return st.one_of(
        st.builds(Mark, tag=_TEXT),
        st.builds(GrowName, up_to=st.integers(0, 100)),
        st.just(RenameAlways()),
        st.builds(Liar, mode=st.sampled_from(["claims-change", "hides-change"])),
        st.builds(Knobs, flag=st.booleans(), count=st.integers(-5, 1000),
                  ratio=st.floats(-1.0, 1e6, allow_nan=False), label=_TEXT,
                  mode=st.sampled_from(["fast", "slow", "very slow", "a,b"]),
                  names=st.lists(_TEXT, max_size=3)),
    )


def _composites(children):
    return st.one_of(
        st.builds(Pipeline, st.lists(children, max_size=3)),
        st.builds(lambda passes, limit: FixedPoint(passes, max_iterations=limit),
                  st.lists(children, max_size=3), st.integers(1, 1000)),
    )


PIPELINES = st.builds(Pipeline, st.lists(st.recursive(_leaf_passes(), _composites, max_leaves=8), min_size=1,
                                         max_size=4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PIPELINES)
def test_property_parse_of_print_is_the_same_pipeline(pipeline):
    printed = format_pipeline(pipeline)
    reparsed = parse(printed)
    assert reparsed == pipeline
    assert format_pipeline(reparsed) == printed


@pytest.mark.parametrize("value", ["a\tb", "line\nbreak", "\u00a0", "x\x1fy"])
def test_strings_with_any_whitespace_round_trip(value):
    pipeline = Pipeline([Mark(tag=value)])
    assert parse(format_pipeline(pipeline)) == pipeline


# ---------------------------------------------------------------------------------------------------------
# Text form: errors


def test_unknown_pass_lists_known_names_and_suggests_one():
    with pytest.raises(UsageError) as raised:
        parse("mark,mrak")
    message = str(raised.value)
    assert "unknown pass 'mrak'" in message
    assert "did you mean 'mark'?" in message
    for name in ["converge", "everything", "fixed-point", "grow", "grow-name", "knobs", "m", "mark", "pipeline",
                 "rename-always", "toggle-name", "turn-knobs", "twice"]:
        assert name in message
    assert raised.value.exit_code == 2


def test_unknown_pass_without_a_close_name_has_no_suggestion():
    with pytest.raises(UsageError) as raised:
        parse("zzzzzzzz")
    assert "did you mean" not in str(raised.value)
    assert "known: " in str(raised.value)


def test_unknown_pass_inside_a_fixed_point():
    with pytest.raises(UsageError, match="unknown pass 'grwo-name'.*did you mean 'grow-name'"):
        parse("fixed-point(mark,grwo-name)")


@pytest.mark.parametrize(("text", "option", "allowed"), [
    ("grow-name(up_to=lots)", "up_to", "an integer in [0, 100]"),
    ("grow(up_to=101)", "up_to", "an integer in [0, 100]"),
    ("turn-knobs(flag=yes)", "flag", "true or false"),
    ("turn-knobs(mode=medium)", "mode", "one of fast, slow, very slow, a,b"),
    ("turn-knobs(ratio=nan)", "ratio", "a number in [-1, 1e+06]"),
    ("turn-knobs(names=a)", "names", "a list of names, e.g. [a,b]"),
    ("turn-knobs(label=[a])", "label", "a string"),
    ("turn-knobs(count=[1])", "count", "an integer in [-5, 1000]"),
])
def test_bad_option_value_names_option_and_allowed_values(text, option, allowed):
    with pytest.raises(UsageError) as raised:
        parse(text)
    assert f"option '{option}' must be {allowed}" in str(raised.value)


def test_unknown_option_names_the_known_ones():
    with pytest.raises(UsageError, match=r"grow-name: unknown option 'upto' \(its options: up_to\)"):
        parse("grow-name(upto=3)")


@pytest.mark.parametrize(("text", "position", "problem"), [
    ("mark(tag=a", 11, "expected ')'"),
    ("mark(tag=a))", 12, "expected ',' or end of text"),
    ("fixed-point(mark", 17, "expected ')'"),
    ("fixed-point(mark))", 18, "expected ',' or end of text"),
    ("mark,", 6, "expected a pass name"),
    ("mark,,mark", 6, "expected a pass name"),
    (",mark", 1, "expected a pass name"),
    ("fixed-point(mark,)", 18, "expected a pass name"),
    ("mark(tag='abc", 14, "unterminated quoted value"),
    ("mark(tag=\"abc')", 16, "unterminated quoted value"),
    ("mark(tag=)", 10, "expected a value"),
    ("mark(=a)", 6, "expected a pass name"),
    ("turn-knobs(names=[a,b)", 22, "expected ']'"),
    ("mark(tag=a,tag=b)", 17, "option 'tag' given twice"),
    ("mark(fixed-point(mark))", 24, "'mark' takes options (key=value), not nested passes"),
    ("twice(tag=a)", 13, "preset 'twice' takes no options"),
    ("mark mark", 6, "expected ',' or end of text"),
])
def test_syntax_errors_name_the_position(text, position, problem):
    with pytest.raises(UsageError) as raised:
        parse(text)
    message = str(raised.value)
    assert f"at character {position}: {problem}" in message
    assert repr(text) in message


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_pipeline_text_is_a_usage_error(text):
    with pytest.raises(UsageError, match="empty pipeline"):
        parse(text)


def test_self_referencing_preset_is_a_usage_error():
    registry = Registry([SelfReference], presets={"again": "self,again"})
    with pytest.raises(UsageError, match="again"):
        parse_pipeline("again", registry)


# ---------------------------------------------------------------------------------------------------------
# The honesty check and PassError


@pytest.mark.parametrize(("mode", "claim"), [("claims-change", "reported changed=True but the graph did not change"),
                                             ("hides-change", "reported changed=False but the graph changed")])
def test_dishonest_changed_bit_raises_pass_error_naming_the_pass(tiny_text_model, mode, claim):
    pipeline = parse(f"mark(tag=a),lie-about-change(mode={mode})")
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=True)
    assert raised.value.pass_path == "lie-about-change"
    assert claim in str(raised.value)
    assert str(raised.value).startswith("pass lie-about-change (after mark) failed")
    assert raised.value.exit_code == 3


@pytest.mark.parametrize("mode", ["claims-change", "hides-change"])
def test_dishonest_changed_bit_passes_silently_when_the_check_is_off(tiny_text_model, mode):
    pipeline = parse(f"lie-about-change(mode={mode})")
    _, report = graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=False)
    assert [record.name for record in report.passes] == ["lie-about-change"]
    assert report.passes[0].changed is (mode == "claims-change")


def test_pass_error_names_the_passes_run_before(tiny_text_model):
    pipeline = parse("mark(tag=a),grow-name(up_to=1),fixed-point(mark,fail-always)")
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=True)
    error = raised.value
    assert error.pass_path == "fixed-point[1]/fail-always"
    assert error.history == ("mark", "grow-name", "mark")
    assert str(error) == "pass fixed-point[1]/fail-always (after mark, grow-name, mark) failed: RuntimeError: boom"


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        seen.add(id(error.__cause__))
        error = error.__cause__
        chain.append(error)
    return chain


def test_pass_error_from_run_pass_keeps_the_original_exception_as_cause():
    with pytest.raises(PassError) as raised:
        run("mark,fail-always")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_pass_error_with_reproducer_keeps_the_original_exception_in_its_causes(tiny_text_model, tmp_path):
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=parse("fail-always"), reproducer_dir=str(tmp_path / "r"))
    assert any(isinstance(cause, RuntimeError) for cause in _causes(raised.value))


def test_pass_error_from_optimize_keeps_the_original_exception_in_its_causes(tiny_text_model):
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=parse("fail-always"))
    assert any(isinstance(cause, RuntimeError) for cause in _causes(raised.value))


def test_pass_error_abbreviates_a_long_history(tiny_text_model):
    pipeline = parse(",".join(f"mark(tag=t{i})" for i in range(7)) + ",fail-always")
    with pytest.raises(PassError, match=re.escape("(after ..., mark, mark, mark, mark, mark) failed")) as raised:
        graphopt.optimize(tiny_text_model, passes=pipeline)
    assert len(raised.value.history) == 7


def test_pass_error_writes_a_reproducer_when_asked(tiny_text_model, tmp_path):
    pipeline = parse("mark(tag='a b'),fail-always")
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=pipeline, reproducer_dir=str(tmp_path / "repro"))
    assert raised.value.reproducer == str(tmp_path / "repro")
    assert (tmp_path / "repro" / "pipeline.txt").read_text() == "mark(tag='a b'),fail-always\n"
    assert (tmp_path / "repro" / "input.onnx").read_bytes() == tiny_text_model.SerializeToString()


# ---------------------------------------------------------------------------------------------------------
# Skipping


def test_skip_passes_by_name_and_record_them_skipped(tiny_text_model):
    pipeline = parse("mark(tag=a),grow-name(up_to=1),mark(tag=b)")
    model, report = graphopt.optimize(tiny_text_model, passes=pipeline, skip=["mark"], check_changed=True)
    assert RUN_LOG == []
    assert [(record.name, record.skipped) for record in report.passes] == \
        [("mark", True), ("grow-name", False), ("mark", True)]
    assert model.graph.node[0].name.endswith("+")


def test_skip_instrument_skips_inside_fixed_points():
    _, ctx, graph = run("fixed-point(grow-name(up_to=3),mark(tag=x))", instruments=[SkipPasses(["grow-name"])])
    assert RUN_LOG == ["x"]
    assert "+" not in graph.nodes[0].name
    assert [r.skipped for r in ctx.records] == [True, False]
    assert ctx.history == ["mark"]  # skipped passes are not history


# ---------------------------------------------------------------------------------------------------------
# Invariants, analyses, structural verification


def test_required_shapes_are_inferred_before_the_pass_runs():
    _, ctx, _ = run("reads-shapes,needs-shapes,reads-shapes")
    assert RUN_LOG == [None, ["N", 4], ["N", 4]]
    assert Invariant.SHAPES_INFERRED in ctx.held


def test_shapes_are_inferred_again_only_after_a_change_that_does_not_preserve_them(monkeypatch):
    calls = []
    infer = graphopt.pipeline._ESTABLISHERS[Invariant.SHAPES_INFERRED]
    monkeypatch.setitem(graphopt.pipeline._ESTABLISHERS, Invariant.SHAPES_INFERRED,
                        lambda graph: calls.append(1) or infer(graph))
    _, ctx, _ = run("needs-shapes,mark,needs-shapes,rename-keep-shapes,needs-shapes")
    assert len(calls) == 1
    _, ctx, _ = run("needs-shapes,rename-always,needs-shapes")
    assert len(calls) == 1 + 2
    assert Invariant.SHAPES_INFERRED in ctx.held


def test_a_requirement_graphopt_cannot_establish_is_a_usage_error_before_anything_runs():
    class NeedsInference(Mark):
        name = "needs-inference"
        requires = frozenset({Invariant.INFERENCE_MODE})

    pipeline = Pipeline([Pipeline([NeedsInference()])])
    with pytest.raises(UsageError, match="pass needs-inference requires the model to be in inference-mode"):
        check_requirements(pipeline, set())
    check_requirements(pipeline, {Invariant.INFERENCE_MODE})  # holds for the run: accepted


def test_inference_mode_survives_a_changing_pass(tiny_text_model):
    pipeline = parse_pipeline("grow-name(up_to=1),eliminate-identity", REGISTRY.merged(default_registry()))
    optimized, report = graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=True)
    assert [r.name for r in report.passes if r.changed] == ["grow-name", "eliminate-identity"]
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]


def test_analysis_cache_is_invalidated_after_a_changing_pass_only():
    computed = []

    def count_nodes(graph):
        computed.append(len(graph.nodes))
        return len(graph.nodes)

    class UsesAnalysis(Mark):
        name = "use-analysis"

        def run(self, graph, ctx):
            RUN_LOG.append(ctx.analyses.version)
            ctx.analyses.get(count_nodes, graph)
            return PassResult(False)

    _, ctx, _ = run(Pipeline([UsesAnalysis(), UsesAnalysis(), GrowName(up_to=1), UsesAnalysis(),
                              GrowName(up_to=1), UsesAnalysis()]))
    # versions seen: 0, 0, then 1 after the first grow; the second grow changed nothing
    assert RUN_LOG == [0, 0, 1, 1]
    assert computed == [2, 2]  # computed once per version
    assert ctx.analyses.version == 1


def test_verify_structure_catches_a_dangling_input(tiny_text_model):
    pipeline = parse("mark,leave-dangling-input")
    with pytest.raises(PassError) as raised:
        graphopt.optimize(tiny_text_model, passes=pipeline, check_changed=True)
    assert raised.value.pass_path == "leave-dangling-input"
    assert raised.value.history == ("mark",)
    assert "tensor 'dangling' is used but nothing produces it" in str(raised.value)


@pytest.mark.parametrize("text", ["t = Identity(x) y = Relu(t)", "y = Relu(x)"])
def test_verify_structure_accepts_well_formed_graphs(text):
    model_text = TINY_TEXT.replace("t = Identity(x)\n    y = Relu(t)", text)
    graph = to_graph(parse_model(model_text))
    assert len(graph.nodes) == text.count("=")
    verify_structure(graph)


def test_verify_structure_catches_two_producers():
    graph = to_graph(parse_model(TINY_TEXT))
    identity, relu = graph.nodes
    relu.outputs[0] = identity.outputs[0]
    with pytest.raises(AssertionError, match="tensor 't' has 2 producers"):
        verify_structure(graph)


def test_records_count_nodes_and_results():
    _, ctx, _ = run("mark,grow-name(up_to=1)")
    assert [(r.name, r.nodes_before, r.nodes_after, r.changed) for r in ctx.records] == \
        [("mark", 2, 2, False), ("grow-name", 2, 2, True)]
    assert ctx.records[1].result.stats == {"rewrites.grow": 1}


# ---------------------------------------------------------------------------------------------------------
# The built-in registry


def test_default_registry_has_the_builtin_passes_aliases_and_presets():
    registry = default_registry()
    assert {"eliminate-identity", "eliminate-dead-nodes"} <= set(registry.passes)
    assert registry.aliases["dce"] == "eliminate-dead-nodes"
    assert {"cleanup", "lossless", "all"} <= set(registry.presets)
    assert type(registry.create("dce")) is registry.passes["eliminate-dead-nodes"]
    assert parse_pipeline("cleanup") == Pipeline([registry.create(name)
                                                  for name in registry.presets["cleanup"].split(",")])


def test_registry_refuses_two_classes_with_one_name():
    with pytest.raises(ValueError, match="two passes are named 'plain'"):
        Registry([type("A", (Mark,), {"name": "plain"}), type("B", (Mark,), {"name": "plain"})])


def test_registry_is_read_only():
    with pytest.raises(TypeError):
        REGISTRY.aliases["x"] = "mark"
