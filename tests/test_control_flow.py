"""Control flow: models with If, Loop and Scan through every registered pass, the ``lossless`` preset and
``quantize-qdq``.

The models (``CASES``) are written as ONNX text; their subgraphs read outer-scope tensors of every kind (graph
inputs, initializers of the main graph, tensors produced by nodes of the main graph or of an enclosing
body, two scopes up) and hold what the lossless passes rewrite (Conv+BatchNormalization, Pad+Conv,
Conv+Mul+Add, MatMul+Add, a written-out layer norm and GELU, x*1, Transpose pairs, Reshape chains,
Identity/Dropout, duplicated nodes and constants, dead nodes, constant subexpressions). ``cross_scope`` splits
each pattern across the boundary (first node outside, the rest inside a branch); ``prune_reader`` has a branch
that reads a main-graph activation channel pruning could shrink. One more model is exported from PyTorch
(TorchScript: a data-dependent ``if`` and a ``for`` loop become If and Loop).

For every case, and for every registered lossless pass run alone (``test_each_pass``), the ``lossless``
preset (``test_lossless``) and ``lossless,quantize-qdq`` in dynamic mode, static mode with calibration data
and static mode with synthetic data (``test_quantize``):
- the result passes ``onnx.checker.check_model(full_check=True)`` and loads and runs in onnxruntime;
- every name a subgraph reads from outside itself is defined in an enclosing scope (``assert_scopes``),
  and the case's outer-scope references that no pass may drop are still read (``Case.outer``);
- graph inputs and outputs (names, types, shapes) are unchanged; the input ModelProto is not modified;
- outputs on feeds that take every branch are unchanged: within float32 tolerance for lossless passes
  (bit for bit for passes that do not reassociate arithmetic, see test_properties.REASSOCIATING_PASSES),
  close (cosine) for quantization (see ``test_quantize`` for which feeds).
``test_lossless`` also asserts that the rewrites happened inside the subgraphs (``Case.lossless``: e.g. no
BatchNormalization is left in the If branch) and that a second run changes nothing, and
``test_every_pass_rewrites_inside_a_subgraph`` that each lossless pass changes some subgraph of some case, so
that the per-pass checks are not vacuous.

Lossy passes other than quantize-qdq (``prune-channels``) run with their default options and are held to
validity, interface and finite outputs (plus ``LOSSY_EXPECTATIONS``: pruning leaves the channels a subgraph
reads); one is skipped, with the reason, when it needs data it was not given.

Bugs these tests found (fixed): shapes were inferred for the main graph only, so every rewrite that needs a
shape (layer norm, x*1, identity Reshape, ...) declined inside subgraphs (graphopt/analysis.py); a fusion whose
first node is outside a subgraph and the rest inside crashed fuse-transposes, fuse-reshapes and
fuse-pad-into-conv (graphopt/fusion.py, ``crosses_scope``); calibration batches holding a scalar input (a
Loop's trip count) crashed graphopt.data.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest

import graphopt
from graphopt.registry import default_registry
from graphopt.validate.numerics import run_model

RTOL, ATOL = 1e-4, 1e-5
REASSOCIATING_PASSES = frozenset({"fuse-conv-bn", "fuse-conv-mul-add", "fuse-matmul-add-into-gemm", "fuse-gelu",
                                  "fuse-layer-norm"})
SUBGRAPH_OPS = ("If", "Loop", "Scan")


# ---------------------------------------------------------------------------------------------------------
# Walking graphs and scopes


def subgraphs(graph: onnx.GraphProto, path: str = "main") -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for ``graph``'s nested subgraphs, outermost first; a path reads
    ``main/Loop:body/If:then_branch`` (op type, then attribute name)."""
    for node in graph.node:
        for attribute in node.attribute:
            inner = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for g in inner:
                here = f"{path}/{node.op_type}:{attribute.name}"
                yield here, g
                yield from subgraphs(g, here)


def body(model: onnx.ModelProto, path: str) -> onnx.GraphProto:
    """The subgraph at ``path`` (as ``subgraphs`` names it); the first when several nodes match."""
    for here, g in subgraphs(model.graph):
        if here == path:
            return g
    raise AssertionError(f"no subgraph {path}; there are {[p for p, _ in subgraphs(model.graph)]}")


def defined(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` itself defines: inputs, initializers, node outputs."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names |= {t.name for t in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (its nodes, outputs and nested subgraphs) reads without defining them."""
    local = defined(graph)
    reads = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
    for node in graph.node:
        for attribute in node.attribute:
            for g in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                reads |= outer_reads(g)
    return reads - local


def assert_scopes(model: onnx.ModelProto) -> None:
    """Every name any graph reads is defined in it or in a graph enclosing it (lexical scoping)."""
    def visit(graph: onnx.GraphProto, visible: set[str], path: str) -> None:
        here = visible | defined(graph)
        unresolved = outer_reads(graph) - visible
        assert not unresolved, f"{path} reads {sorted(unresolved)}, which no enclosing scope defines"
        for node in graph.node:
            for attribute in node.attribute:
                for g in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    visit(g, here, f"{path}/{node.op_type}:{attribute.name}")
    visit(model.graph, set(), "main")


def ops(graph: onnx.GraphProto) -> Counter:
    return Counter(n.op_type for n in graph.node)


def all_ops(model: onnx.ModelProto) -> Counter:
    counts = ops(model.graph)
    for _, g in subgraphs(model.graph):
        counts += ops(g)
    return counts


def producers(graph: onnx.GraphProto) -> dict[str, str]:
    """Output name -> op type of the node that writes it."""
    return {o: n.op_type for n in graph.node for o in n.output if o}


def subgraph_fingerprint(model: onnx.ModelProto) -> dict[str, bytes]:
    return {path: g.SerializeToString(deterministic=True) for path, g in subgraphs(model.graph)}


# ---------------------------------------------------------------------------------------------------------
# The cases


@dataclasses.dataclass(frozen=True)
class Case:
    """A control-flow model, feeds that reach every branch, the outer-scope references no pass may lose
    (``outer``: subgraph path -> (name, op type of its producer in the enclosing scopes, or "input")), and
    what ``lossless`` must have done inside the subgraphs (``lossless``: a function that asserts it)."""

    model: onnx.ModelProto
    feeds: tuple[dict[str, np.ndarray], ...]
    outer: dict[str, tuple[tuple[str, str], ...]]
    lossless: Callable[[onnx.ModelProto], None]

    def __repr__(self) -> str:
        return f"Case({self.model.graph.name})"


def build(text: str, seed: int = 0, **arrays: np.ndarray) -> onnx.ModelProto:
    """``text`` parsed, with ``arrays`` added as main-graph initializers (names the text reads but does not
    declare), checked in full."""
    model = onnx.parser.parse_model(text)
    for name, array in arrays.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def rand(rng: np.random.Generator, *shape, low=-1.0, high=1.0) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(np.float32)


def bn_params(rng: np.random.Generator, channels: int, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}s": rand(rng, channels, low=0.5, high=1.5), f"{prefix}b": rand(rng, channels),
            f"{prefix}m": rand(rng, channels), f"{prefix}v": rand(rng, channels, low=0.5, high=2.0)}


def _no(op: str, graph: onnx.GraphProto, where: str) -> None:
    assert ops(graph)[op] == 0, f"{op} left in {where}: {dict(ops(graph))}"


def if_case() -> Case:
    """If on a bool input, reading the output of a Conv+Relu of the main graph (which quantization rewrites).
    then: Conv+BatchNormalization with main-graph weights, x*1, a Conv whose weight is a branch initializer
    with the bytes of the main graph's Conv weight (deduplicated into it). else: a Transpose pair, a constant
    subexpression of two main-graph initializers, a Dropout, a dead node, two identical nodes, and the outer
    tensor itself as a branch output through Identity."""
    rng = np.random.default_rng(1)
    wq = rand(rng, 2, 2, 1, 1)
    wq_text = ", ".join(repr(float(v)) for v in wq.ravel())
    model = build(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    if_case (float[1,2,5,5] x, bool cond) => (float[1,3,5,5] y, float[1,2,5,5] z) {{
        h0 = Conv(x, wq)
        h = Relu(h0)
        y, z = If(cond) <
            then_branch = tb () => (float[1,3,5,5] ty, float[1,2,5,5] tz) <float[2,2,1,1] wql = {{{wq_text}}}> {{
                c = Conv<pads=[1,1,1,1]>(h, w, wb)
                n = BatchNormalization(c, bns, bnb, bnm, bnv)
                one = Constant<value=float {{1}}>()
                ty = Mul(n, one)
                tz = Conv(h, wql)
            }},
            else_branch = eb () => (float[1,3,5,5] ey, float[1,2,5,5] ez) {{
                t1 = Transpose<perm=[0,2,3,1]>(h)
                t2 = Transpose<perm=[0,3,1,2]>(t1)
                kk = Add(k1, k2)
                m = Mul(t2, kk)
                d = Dropout(m)
                a1 = Abs(d)
                a2 = Abs(d)
                s = Add(a1, a2)
                dead = Exp(s)
                ey = Conv<pads=[1,1,1,1]>(s, w2)
                ez = Identity(h)
            }}>
    }}""",
        wq=wq, w=rand(rng, 3, 2, 3, 3), wb=rand(rng, 3), **bn_params(rng, 3, "bn"), k1=rand(rng, 1, 2, 1, 1),
        k2=rand(rng, 1, 2, 1, 1), w2=rand(rng, 3, 2, 3, 3))
    feeds = tuple({"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32), "cond": np.array(c)}
                  for c in (True, False))

    def lossless(optimized):
        then, other = body(optimized, "main/If:then_branch"), body(optimized, "main/If:else_branch")
        for op in ("BatchNormalization", "Mul"):
            _no(op, then, "the then branch")
        assert ops(then) == {"Conv": 2}, ops(then)
        assert not then.initializer or "wq" in outer_reads(then), "wql is deduplicated into the main graph's wq"
        for op in ("Transpose", "Dropout", "Exp"):
            _no(op, other, "the else branch")
        assert ops(other)["Abs"] == 1, "CSE inside the else branch"
        assert "kk" not in producers(other), "Add(k1, k2) of two constants is folded"
        assert ops(other)["Identity"] == 1, "ez = Identity(h) stays: a branch output cannot be an outer name"
    return Case(model, feeds, {"main/If:then_branch": (("h", "Relu"),), "main/If:else_branch": (("h", "Relu"),)},
                lossless)


def loop_case() -> Case:
    """Loop with a trip-count input: the body reads main-graph weights (Conv+BatchNormalization, a layer norm's
    gamma and beta written out) and the output of a MatMul of the main graph (which quantization rewrites),
    has an Identity, x*1 and a dead node, and writes a scan output."""
    rng = np.random.default_rng(2)
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    loop_case (float[1,2,4,4] x, int64 n) => (float[1,2,4,4] y, float[N,1,2,4,4] ys) {
        h = MatMul(x, wm)
        keep = Constant<value=bool {1}>()
        y, ys = Loop(n, keep, x) <body = lb (int64 i, bool c, float[1,2,4,4] v) => (bool co, float[1,2,4,4] vo,
                                                                                    float[1,2,4,4] so) {
            co = Identity(c)
            cv = Conv<pads=[1,1,1,1]>(v, w)
            bn = BatchNormalization(cv, bns, bnb, bnm, bnv)
            mean = ReduceMean<axes=[-1]>(bn)
            d = Sub(bn, mean)
            two = Constant<value=float {2}>()
            sq = Pow(d, two)
            var = ReduceMean<axes=[-1]>(sq)
            eps = Constant<value=float {1e-5}>()
            ve = Add(var, eps)
            sd = Sqrt(ve)
            ln = Div(d, sd)
            g1 = Mul(ln, gamma)
            g2 = Add(g1, beta)
            t = Tanh(g2)
            one = Constant<value=float[1,1,1,1] {1}>()
            t1 = Mul(t, one)
            vo = Add(t1, h)
            dead = Exp(vo)
            so = Identity(vo)
        }>
    }""", w=rand(rng, 2, 2, 3, 3), **bn_params(rng, 2, "bn"), gamma=rand(rng, 4, low=0.5, high=1.5),
        beta=rand(rng, 4), wm=rand(rng, 4, 4))
    feeds = tuple({"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32), "n": np.array(k, np.int64)}
                  for k in (0, 3))

    def lossless(optimized):
        loop = body(optimized, "main/Loop:body")
        for op in ("BatchNormalization", "Pow", "Sqrt", "Mul", "Exp", "ReduceMean"):
            _no(op, loop, "the Loop body")
        assert ops(loop)["LayerNormalization"] == 1, ops(loop)
        assert ops(loop)["Identity"] <= 2, ops(loop)  # co = Identity(c) and so = Identity(vo) are body outputs
    return Case(model, feeds, {"main/Loop:body": (("h", "MatMul"),)}, lossless)


def scan_case() -> Case:
    """Scan (opset 20): MatMul+Add (2-D rows), a Transpose pair, GELU in its erf form, a Reshape chain, a
    constant subexpression of a body constant and a main-graph initializer, a main-graph node output, two
    identical nodes."""
    rng = np.random.default_rng(3)
    model = build("""
    <ir_version: 9, opset_import: ["" : 20]>
    scan_case (float[3,5] s0, float[4,3,6] xs, float[1,4] sc) => (float[3,5] last, float[4,3,5] ys) {
        msc = MatMul(sc, wsc)
        scale = Sigmoid(msc)
        last, ys = Scan<num_scan_inputs=1, body = sb (float[3,5] st, float[3,6] row) => (float[3,5] st2,
                                                                                       float[3,5] out) {
            mm = MatMul(row, wm)
            ad = Add(mm, bm)
            t1 = Transpose<perm=[1,0]>(ad)
            t2 = Transpose<perm=[1,0]>(t1)
            sqrt2 = Constant<value=float {1.4142135}>()
            dv = Div(t2, sqrt2)
            er = Erf(dv)
            onec = Constant<value=float {1}>()
            ap = Add(er, onec)
            mx = Mul(t2, ap)
            half = Constant<value=float {0.5}>()
            ge = Mul(mx, half)
            two = Constant<value=float {2}>()
            kk = Mul(two, kvec)
            g2 = Mul(ge, kk)
            flat = Constant<value=int64[1] {15}>()
            back = Constant<value=int64[2] {5,3}>()
            again = Constant<value=int64[2] {3,5}>()
            r1 = Reshape(g2, flat)
            r2 = Reshape(r1, back)
            r3 = Reshape(r2, again)
            out = Mul(r3, scale)
            a1 = Abs(st)
            a2 = Abs(st)
            aa = Add(a1, a2)
            st2 = Add(aa, out)
        }>(s0, xs)
    }""", wm=rand(rng, 6, 5), bm=rand(rng, 5), kvec=rand(rng, 5), wsc=rand(rng, 4, 5))
    feeds = tuple({"s0": rng.standard_normal((3, 5)).astype(np.float32) * 0.1,
                   "xs": rng.standard_normal((4, 3, 6)).astype(np.float32),
                   "sc": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(2))

    def lossless(optimized):
        scan = body(optimized, "main/Scan:body")
        for op in ("MatMul", "Transpose", "Erf", "Reshape"):
            _no(op, scan, "the Scan body")
        assert ops(scan)["Gemm"] == 1 and ops(scan)["Gelu"] == 1, ops(scan)
        assert ops(scan)["Abs"] == 1, "CSE inside the Scan body"
        assert "kk" not in producers(scan), "Mul(two, kvec) of constants is folded"
    return Case(model, feeds, {"main/Scan:body": (("scale", "Sigmoid"),)}, lossless)


def nested_case() -> Case:
    """An If inside a Loop body, its condition computed from the iteration number. Its branches read a tensor
    of the Loop body (one scope up) and a node output of the main graph (two scopes up); then: a zero Pad
    before a Conv, then a per-channel Mul and Add; else: Conv+BatchNormalization. Both branches and the main
    graph hold constants with identical bytes (branch-local initializers and Constant nodes)."""
    rng = np.random.default_rng(4)
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    nested_case (float[1,3,4,4] x, int64 n) => (float[1,3,4,4] y) {
        h2 = Relu(x)
        keep = Constant<value=bool {1}>()
        start = Conv<pads=[1,1,1,1]>(x, w0)
        y = Loop(n, keep, start) <body = lb (int64 i, bool c, float[1,3,4,4] v) => (bool co, float[1,3,4,4] vo) {
            co = Identity(c)
            twoi = Constant<value=int64 {2}>()
            r = Mod(i, twoi)
            zeroi = Constant<value=int64 {0}>()
            even = Equal(r, zeroi)
            u = Tanh(v)
            vo = If(even) <then_branch = tb () => (float[1,3,4,4] a) {
                    pads = Constant<value=int64[8] {0,0,1,1,0,0,1,1}>()
                    p = Pad(u, pads)
                    cv = Conv(p, wi)
                    ml = Mul(cv, mscale)
                    ab = Add(ml, mbias)
                    dup = Constant<value=float[3] {0.25, 0.5, 0.75}>()
                    a = Mul(ab, dupk)
                }, else_branch = eb () => (float[1,3,4,4] b2) {
                    cv2 = Conv<pads=[1,1,1,1]>(u, wj)
                    bn2 = BatchNormalization(cv2, bns, bnb, bnm, bnv)
                    dup2 = Constant<value=float[1,3,1,1] {0.25, 0.5, 0.75}>()
                    b3 = Add(bn2, dup2)
                    b2 = Add(b3, h2)
                }>
        }>
    }""", w0=rand(rng, 3, 3, 3, 3), wi=rand(rng, 3, 3, 3, 3) * 0.5, wj=rand(rng, 3, 3, 3, 3) * 0.5,
        mscale=rand(rng, 1, 3, 1, 1, low=0.5, high=1.5), mbias=rand(rng, 1, 3, 1, 1),
        dupk=np.array([0.25, 0.5, 0.75], np.float32).reshape(1, 3, 1, 1), **bn_params(rng, 3, "bn"))
    feeds = tuple({"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32), "n": np.array(k, np.int64)}
                  for k in (1, 4))

    def lossless(optimized):
        then = body(optimized, "main/Loop:body/If:then_branch")
        other = body(optimized, "main/Loop:body/If:else_branch")
        for op in ("Pad", "Add"):
            _no(op, then, "the then branch")
        _no("BatchNormalization", other, "the else branch")
        assert ops(then)["Conv"] == 1 and ops(other)["Conv"] == 1
        pads = next(a.ints for n in then.node if n.op_type == "Conv" for a in n.attribute if a.name == "pads")
        assert list(pads) == [1, 1, 1, 1], "the Pad went into the Conv's pads"
    return Case(model, feeds, {"main/Loop:body": (("h2", "Relu"),),
                               "main/Loop:body/If:then_branch": (("u", "Tanh"),),
                               "main/Loop:body/If:else_branch": (("u", "Tanh"), ("h2", "Relu"))}, lossless)


def shared_case() -> Case:
    """One weight read by a Conv+BatchNormalization in each branch of an If (folding either BatchNormalization
    into it would change the other branch), two identical If nodes (CSE compares their branches), and branch
    outputs that are a main-graph initializer and a graph input, each through Identity."""
    rng = np.random.default_rng(5)
    konst = rand(rng, 1, 2, 3, 3)
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    shared_case (float[1,2,3,3] x, bool cond) => (float[1,2,3,3] y, float[1,2,3,3] y2, float[1,2,3,3] z) {
        y = If(cond) <then_branch = tb () => (float[1,2,3,3] a) {
                c1 = Conv<pads=[1,1,1,1]>(x, w)
                a = BatchNormalization(c1, bns, bnb, bnm, bnv)
            }, else_branch = eb () => (float[1,2,3,3] b) {
                c2 = Conv<pads=[1,1,1,1]>(x, w)
                b = BatchNormalization(c2, cns, cnb, cnm, cnv)
            }>
        i1 = If(cond) <then_branch = tb1 () => (float[1,2,3,3] a1) { a1 = Mul(x, konst) },
                       else_branch = eb1 () => (float[1,2,3,3] b1) { n1 = Neg(x)  b1 = Tanh(n1) }>
        i2 = If(cond) <then_branch = tb2 () => (float[1,2,3,3] a2) { a2 = Mul(x, konst) },
                       else_branch = eb2 () => (float[1,2,3,3] b2) { n2 = Neg(x)  b2 = Tanh(n2) }>
        y2 = Add(i1, i2)
        z = If(cond) <then_branch = tb3 () => (float[1,2,3,3] p) { p = Identity(konst) },
                      else_branch = eb3 () => (float[1,2,3,3] q) { q = Identity(x) }>
    }""", w=rand(rng, 2, 2, 3, 3), konst=konst, **bn_params(rng, 2, "bn"), **bn_params(rng, 2, "cn"))
    feeds = tuple({"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32), "cond": np.array(c)}
                  for c in (True, False))

    def lossless(optimized):
        assert ops(optimized.graph)["If"] == 3, "the two identical Ifs are merged by CSE"
        y = next(n for n in optimized.graph.node if "y" in n.output)
        for attribute in y.attribute:  # both BatchNormalizations stay: their Conv weight is shared
            assert ops(attribute.g)["BatchNormalization"] == 1, attribute.name
        z = next(n for n in optimized.graph.node if "z" in n.output)
        branches = {a.name: a.g for a in z.attribute}
        # p = Identity(konst) may be folded into a branch initializer holding konst's value
        assert outer_reads(branches["then_branch"]) == {"konst"} or \
            [t.raw_data for t in branches["then_branch"].initializer] == [konst.tobytes()]
        assert outer_reads(branches["else_branch"]) == {"x"}
    return Case(model, feeds, {"main/If:else_branch": (("x", "input"),)}, lossless)


def cross_scope_case() -> Case:
    """Patterns split across a scope boundary (opset 20): the first node of each in the main graph, the rest in
    the If's then branch: Conv | BatchNormalization, Transpose | Transpose, MatMul | Add, Reshape | Reshape,
    Unsqueeze | Unsqueeze, Pad | Conv, the first half of a layer norm | the rest, the first half of a GELU |
    the rest. The else branch reads the same outer tensors (so that nothing can move into the branch), and
    computes Conv | Mul | Add per channel. A fusion must not reach into the enclosing graph: before
    graphopt.fusion refused such matches (``crosses_scope``), fuse-transposes, fuse-reshapes and
    fuse-pad-into-conv crashed on this model (StopIteration: they removed the outer node from the branch)."""
    rng = np.random.default_rng(8)
    model = build("""
    <ir_version: 9, opset_import: ["" : 20]>
    cross_scope (float[1,2,4,4] x, float[2,3] a, bool cond) => (float[1,2,4,4] y, float[2,4] z, float[8,4] r,
                                                               float[1,2,4,4] p, float[1,2,4,4] q, float[2,4] g) {
        m0 = Conv<pads=[1,1,1,1]>(x, w)
        tr = Transpose<perm=[0,2,3,1]>(x)
        mm = MatMul(a, wm)
        rs = Reshape(x, shp1)
        pd = Pad(x, pads)
        un = Unsqueeze(x, ax0)
        mean = ReduceMean(x, axm1)
        d = Sub(x, mean)
        sqrt2 = Constant<value=float {1.4142135}>()
        dv = Div(mm, sqrt2)
        er = Erf(dv)
        y, z, r, p, q, g = If(cond) <then_branch = tb () => (float[1,2,4,4] ty, float[2,4] tz, float[8,4] tr2,
                                                            float[1,2,4,4] tp, float[1,2,4,4] tq, float[2,4] tg) {
            bn = BatchNormalization(m0, bns, bnb, bnm, bnv)
            t2 = Transpose<perm=[0,3,1,2]>(tr)
            ty = Add(bn, t2)
            tz = Add(mm, bias)
            r2 = Reshape(rs, shp2)
            un2 = Unsqueeze(un, ax0)
            r3 = Reshape(un2, shp2)
            tr2 = Add(r2, r3)
            tp = Conv(pd, w3)
            two = Constant<value=float {2}>()
            sq = Pow(d, two)
            var = ReduceMean(sq, axm1)
            eps = Constant<value=float {1e-5}>()
            ve = Add(var, eps)
            sd = Sqrt(ve)
            tq = Div(d, sd)
            one = Constant<value=float {1}>()
            ap = Add(er, one)
            mx = Mul(mm, ap)
            half = Constant<value=float {0.5}>()
            tg = Mul(mx, half)
        }, else_branch = eb () => (float[1,2,4,4] ey, float[2,4] ez, float[8,4] er2, float[1,2,4,4] ep,
                                   float[1,2,4,4] eq, float[2,4] eg) {
            ml = Mul(m0, cm)
            ey = Add(ml, ca)
            ez = Relu(mm)
            er2 = Reshape(rs, shp2)
            ep = Conv<pads=[1,1,1,1]>(x, w3)
            eq = Neg(d)
            eg = Neg(er)
        }>
    }""", w=rand(rng, 2, 2, 3, 3), wm=rand(rng, 3, 4), shp1=np.array([2, 16]), shp2=np.array([8, 4]),
        pads=np.array([0, 0, 1, 1, 0, 0, 1, 1]), ax0=np.array([0]), axm1=np.array([-1]), bias=rand(rng, 4),
        w3=rand(rng, 2, 2, 3, 3), cm=rand(rng, 1, 2, 1, 1), ca=rand(rng, 1, 2, 1, 1), **bn_params(rng, 2, "bn"))
    feeds = tuple({"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32),
                   "a": rng.standard_normal((2, 3)).astype(np.float32), "cond": np.array(c)} for c in (True, False))
    outer = (("m0", "Conv"), ("tr", "Transpose"), ("mm", "MatMul"), ("rs", "Reshape"), ("un", "Unsqueeze"),
             ("pd", "Pad"), ("d", "Sub"), ("er", "Erf"))

    def lossless(optimized):
        then = body(optimized, "main/If:then_branch")
        for op in ("BatchNormalization", "Transpose", "Pow"):
            assert ops(then)[op] == 1, f"{op} was fused with a node outside the branch: {dict(ops(then))}"
    return Case(model, feeds, {"main/If:then_branch": outer}, lossless)


def prune_reader_case() -> Case:
    """Three Convs in a row in the main graph; the If's then branch reads the first one's Relu output and
    scales it per channel (so it needs all 32 channels), both branches read the last Conv's output. Channel
    pruning may shrink the second Conv (only the main graph reads it), never the first (32 channels, so that
    the default ratio and rounding would prune both)."""
    rng = np.random.default_rng(9)
    model = build("""
    <ir_version: 8, opset_import: ["" : 17]>
    prune_reader (float[1,3,6,6] x, bool cond) => (float[1,2,6,6] y) {
        c1 = Conv<pads=[1,1,1,1]>(x, w1)
        r1 = Relu(c1)
        c2 = Conv<pads=[1,1,1,1]>(r1, w2)
        r2 = Relu(c2)
        c3 = Conv<pads=[1,1,1,1]>(r2, w3)
        y = If(cond) <then_branch = tb () => (float[1,2,6,6] a) {
            scaled = Mul(r1, k8)
            s = ReduceSum<keepdims=1>(scaled, ax1)
            a = Add(c3, s)
        }, else_branch = eb () => (float[1,2,6,6] b) {
            b = Neg(c3)
        }>
    }""", w1=rand(rng, 32, 3, 3, 3), w2=rand(rng, 32, 32, 3, 3), w3=rand(rng, 2, 32, 3, 3),
        k8=rand(rng, 1, 32, 1, 1), ax1=np.array([1]))
    feeds = tuple({"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32), "cond": np.array(c)}
                  for c in (True, False))

    def lossless(optimized):
        assert outer_reads(body(optimized, "main/If:then_branch")) >= {"r1", "c3"}
    return Case(model, feeds, {"main/If:then_branch": (("r1", "Relu"), ("c3", "Conv"))}, lossless)


class _TorchBranchLoop:
    """Built lazily (torch is imported only when the case is used)."""

    @staticmethod
    def module():
        torch = pytest.importorskip("torch")

        class BranchLoop(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
                self.bn = torch.nn.BatchNorm2d(3)
                self.conv2 = torch.nn.Conv2d(2, 3, 1)
                with torch.no_grad():
                    self.bn.running_mean.uniform_(-1, 1)
                    self.bn.running_var.uniform_(0.5, 2)
                    self.bn.weight.uniform_(0.5, 1.5)

            def forward(self, x, n: int):
                h = torch.relu(x)
                if bool(x.sum() > 0):
                    y = self.bn(self.conv(h)) * 1.0
                else:
                    y = self.conv2(h).permute(0, 2, 3, 1).permute(0, 3, 1, 2)
                for _ in range(n):
                    y = torch.tanh(y + h.mean() * 1.0)
                return y

        torch.manual_seed(0)
        return BranchLoop().eval()


TORCH_MODEL = Path(__file__).resolve().parent / "data" / "torch_branch_loop.onnx"


def export_torch_model() -> onnx.ModelProto:
    """The model of ``torch_case``, exported anew (needs torch; ``python tests/test_control_flow.py`` writes it
    to ``TORCH_MODEL``, which the tests read so that they run where torch is not installed, as in CI)."""
    import io

    torch = pytest.importorskip("torch")
    module = torch.jit.script(_TorchBranchLoop.module())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 2, 4, 4), 3), buffer, dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x", "n"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())


def test_the_committed_torch_export_is_what_torch_exports():
    exported, committed = export_torch_model(), onnx.load(str(TORCH_MODEL))
    assert Counter(ops(exported.graph)) == Counter(ops(committed.graph))
    feeds = {"x": np.ones((1, 2, 4, 4), np.float32), "n": np.array(2, np.int64)}
    np.testing.assert_allclose(run_model(exported, feeds)["y"], run_model(committed, feeds)["y"], rtol=1e-6)


def torch_case() -> Case:
    """Exported from PyTorch 2.x with the TorchScript exporter (``dynamo=False``; the dynamo exporter needs
    onnxscript, which is not installed): a data-dependent ``if`` becomes an If whose then branch reads the
    main graph's Relu output and the Conv and BatchNormalization weights (constant folding off, so the
    BatchNormalization stays in the branch), and a ``for`` loop over an int input becomes a Loop whose body
    reads the Relu output and multiplies by 1. Read from ``TORCH_MODEL`` (see ``export_torch_model``)."""
    model = onnx.load(str(TORCH_MODEL))
    onnx.checker.check_model(model, full_check=True)
    assert {"If", "Loop"} <= set(ops(model.graph)), f"torch exported no If/Loop: {dict(ops(model.graph))}"
    assert ops(body(model, "main/If:then_branch"))["BatchNormalization"] == 1
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    feeds = tuple({"x": sign * np.abs(x), "n": np.array(k, np.int64)} for sign, k in ((1, 3), (-1, 2), (1, 0)))
    relu = next(o for n in model.graph.node if n.op_type == "Relu" for o in n.output)

    def lossless(optimized):
        then = body(optimized, "main/If:then_branch")
        _no("BatchNormalization", then, "the then branch")
        _no("Mul", then, "the then branch")
        _no("Mul", body(optimized, "main/Loop:body"), "the Loop body")
    return Case(model, feeds, {"main/If:then_branch": ((relu, "Relu"),), "main/Loop:body": ((relu, "Relu"),)},
                lossless)


CASE_BUILDERS = {"if": if_case, "loop": loop_case, "scan": scan_case, "nested": nested_case,
                 "shared": shared_case, "cross_scope": cross_scope_case, "prune_reader": prune_reader_case,
                 "torch": torch_case}


@functools.cache
def case(name: str) -> Case:
    return CASE_BUILDERS[name]()


# ---------------------------------------------------------------------------------------------------------
# Checks


def interface(model: onnx.ModelProto) -> tuple:
    def describe(values):
        return [(v.name, v.type.SerializeToString(deterministic=True)) for v in values]
    return describe(model.graph.input), describe(model.graph.output)


def assert_outer_references(c: Case, optimized: onnx.ModelProto, producer_kept: bool = True) -> None:
    """The case's subgraphs still read their outer tensors, still made by the same kind of node (or still a
    graph input) in an enclosing scope; with ``producer_kept`` false (quantization, which hands a quantized
    tensor's name to its DequantizeLinear), made by any node."""
    made = producers(optimized.graph)
    for _, g in subgraphs(optimized.graph):
        made |= producers(g)
    inputs = {v.name for v in optimized.graph.input}
    for path, references in c.outer.items():
        reads = outer_reads(body(optimized, path))
        for name, producer in references:
            assert name in reads, f"{path} no longer reads the outer tensor {name!r} (reads {sorted(reads)})"
            if producer == "input":
                assert name in inputs, f"outer tensor {name!r} is no longer a graph input"
            else:
                assert made.get(name) == producer or (not producer_kept and name in made), \
                    f"outer tensor {name!r} is no longer a {producer} output"


def assert_valid(c: Case, optimized: onnx.ModelProto, producer_kept: bool = True) -> list[dict]:
    """Checker (full), scopes, interface, outer references; returns the outputs on every feed (it runs)."""
    onnx.checker.check_model(optimized, full_check=True)
    assert_scopes(optimized)
    assert interface(optimized) == interface(c.model), "graph inputs or outputs changed"
    assert_outer_references(c, optimized, producer_kept)
    return [run_model(optimized, feed) for feed in c.feeds]


def assert_same_outputs(c: Case, actual: list[dict], bitwise: bool, what: str) -> None:
    for feed, got in zip(c.feeds, actual, strict=True):
        expected = run_model(c.model, feed)
        assert list(got) == list(expected)
        for name, value in expected.items():
            assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
            if bitwise:
                np.testing.assert_array_equal(got[name], value, err_msg=f"{what}: {name}")
            else:
                np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")


# Lossy by design, whatever their class says (test_properties' rule: a class attribute ``lossy = True``).
KNOWN_LOSSY = frozenset({"quantize-qdq", "prune-channels"})


def _is_lossless(name: str, cls) -> bool:
    return name not in KNOWN_LOSSY and not getattr(cls, "lossy", False) and getattr(cls, "lossless", True) is not False


REGISTRY = default_registry()
LOSSLESS_PASSES = sorted(name for name, cls in REGISTRY.passes.items() if _is_lossless(name, cls))
LOSSY_PASSES = sorted(name for name, cls in REGISTRY.passes.items() if not _is_lossless(name, cls)
                      and name != "quantize-qdq")
CASES = sorted(CASE_BUILDERS)


def optimize(model: onnx.ModelProto, passes, **kw):
    before = model.SerializeToString()
    result = graphopt.optimize(model, passes=passes, check_changed=True, **kw)
    assert model.SerializeToString() == before, "optimize modified its input ModelProto"
    return result


# ---------------------------------------------------------------------------------------------------------
# Tests


def test_cases_are_valid_and_reach_every_branch():
    """The models themselves: checker, onnxruntime, and the feeds take both branches of every If."""
    for name in CASES:
        c = case(name)
        onnx.checker.check_model(c.model, full_check=True)
        outputs = [run_model(c.model, feed) for feed in c.feeds]
        assert all(np.all(np.isfinite(v)) for o in outputs for v in o.values()), name
        conditions = [k for k, v in c.feeds[0].items() if v.dtype == bool]
        for key in conditions:  # a bool input is an If condition: the feeds hold both values
            assert {bool(feed[key]) for feed in c.feeds} == {False, True}, name


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("pass_name", LOSSLESS_PASSES)
def test_each_pass(pass_name, name):
    """Every lossless pass alone: valid, scoped, same interface, same outputs (bitwise unless it
    reassociates), and idempotent."""
    c = case(name)
    optimized, _ = optimize(c.model, pass_name)
    assert_same_outputs(c, assert_valid(c, optimized), pass_name not in REASSOCIATING_PASSES, pass_name)


@pytest.mark.parametrize("name", CASES)
def test_lossless(name):
    """The lossless preset: valid, scoped, same outputs, the rewrites done inside the subgraphs, a fixed
    point (a second run changes nothing)."""
    c = case(name)
    optimized, report = optimize(c.model, "lossless")
    assert_same_outputs(c, assert_valid(c, optimized), False, "lossless")
    c.lossless(optimized)
    _, again = optimize(optimized, "lossless")
    assert not any(r.changed for r in again.passes), [(r.path, dict(r.result.stats)) for r in again.passes
                                                      if r.changed]


def test_every_pass_rewrites_inside_a_subgraph():
    """Each lossless pass changes a subgraph of at least one case: the per-pass tests are not vacuous."""
    idle = []
    for pass_name in LOSSLESS_PASSES:
        if not any(subgraph_fingerprint(optimize(case(n).model, pass_name).model)
                   != subgraph_fingerprint(case(n).model) for n in CASES):
            idle.append(pass_name)
    assert not idle, f"these passes change no subgraph of any case: {idle}; add their pattern to a case"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norm == 0 else float(a @ b / norm)


QUANTIZE = {  # variant -> (pass text, calibration data of the case's feed i)
    "dynamic": ("quantize-qdq(mode=dynamic)", lambda feed: None),
    # an iterable of batches, as onnxruntime's CalibrationDataReader gives them; the Loop cases' trip count is a
    # scalar in each (graphopt.data used to crash on it: np.concatenate of 0-d arrays)
    "static": ("quantize-qdq(mode=static)", lambda feed: [dict(feed)]),
    "static-synthetic": ("quantize-qdq(mode=static,synthetic=true)", lambda feed: None),
}
QUANTIZATION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                    "DynamicQuantizeMatMul", "ConvInteger"}


@functools.cache
def quantized(name: str, variant: str, index: int = 0) -> onnx.ModelProto:
    """The case after ``lossless`` and the variant's quantization, calibrated on the case's feed ``index``."""
    c = case(name)
    passes, data = QUANTIZE[variant]
    return optimize(c.model, f"lossless,{passes}", data=data(c.feeds[index])).model


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("variant", sorted(QUANTIZE))
def test_quantize(name, variant):
    """quantize-qdq after lossless (the pipeline users run): a valid model that runs, its subgraphs still
    resolve every outer name (a quantized tensor's name now belongs to its DequantizeLinear; a weight read in
    a body keeps its float initializer), bodies stay float (the pass quantizes the main graph only), outputs
    finite and close to float: cosine >= 0.99 on every output, for dynamic quantization on every feed, for
    static on the sample it was calibrated on (one model per feed: graphopt.data takes the first axis as
    samples and the batch of these models is fixed at 1, so a calibration holds one sample, and another
    sample's values may lie far outside its ranges). Synthetic calibration (random inputs) promises no
    accuracy: validity and finite outputs only."""
    c = case(name)
    for index, feed in enumerate(c.feeds):
        optimized = quantized(name, variant, index if variant == "static" else 0)
        outputs = assert_valid(c, optimized, producer_kept=False)
        for path, g in subgraphs(optimized.graph):
            assert not set(ops(g)) & QUANTIZATION_OPS, f"{path} was quantized: {dict(ops(g))}"
        got = outputs[index]
        for key, value in run_model(c.model, feed).items():
            assert got[key].shape == value.shape and np.all(np.isfinite(got[key])), key
            if variant != "static-synthetic":
                assert _cosine(got[key], value) >= 0.99, (index, key, _cosine(got[key], value))


@pytest.mark.parametrize("variant", sorted(QUANTIZE))
def test_quantize_is_not_vacuous(variant):
    """Some case's main graph is quantized in each variant (each case has a Conv or MatMul outside its
    subgraphs whose output a subgraph reads)."""
    assert any(set(ops(quantized(name, variant).graph)) & QUANTIZATION_OPS for name in CASES)


def _prune_reader_kept_the_read_channels(optimized: onnx.ModelProto, report) -> None:
    weights = {t.name: list(t.dims) for t in optimized.graph.initializer}
    w1 = [dims for name, dims in weights.items() if name.startswith("w1")]
    assert w1 == [[32, 3, 3, 3]], f"the Conv whose output the branch reads was pruned: {weights}"
    assert any(r.changed for r in report.passes), "nothing else was pruned either (the test is vacuous)"


# What a lossy pass must do on a case, beyond validity: (pass, case) -> check(optimized, report)
LOSSY_EXPECTATIONS = {("prune-channels", "prune_reader"): _prune_reader_kept_the_read_channels}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("pass_name", LOSSY_PASSES or ["(none registered)"])
def test_other_lossy_passes(pass_name, name):
    """Lossy passes other than quantization (prune-channels once registered), default options: valid,
    scoped, same interface, finite outputs. Skipped when the pass declines for want of data."""
    if pass_name not in REGISTRY.passes:
        pytest.skip("no lossy pass besides quantize-qdq is registered")
    c = case(name)
    try:
        optimized, report = optimize(c.model, pass_name)
    except graphopt.UsageError as error:
        if "data" not in str(error):
            raise
        pytest.skip(f"{pass_name} needs data with its default options: {error}")
    stats = {k for r in report.passes if r.result for k in r.result.stats}
    if any("no_data" in k for k in stats):
        pytest.skip(f"{pass_name} needs data with its default options: {sorted(stats)}")
    for outputs in assert_valid(c, optimized):
        assert all(np.all(np.isfinite(v)) for v in outputs.values())
    expectation = LOSSY_EXPECTATIONS.get((pass_name, name))
    if expectation:
        expectation(optimized, report)


if __name__ == "__main__":
    TORCH_MODEL.parent.mkdir(exist_ok=True)
    onnx.save(export_torch_model(), str(TORCH_MODEL))
    print(f"wrote {TORCH_MODEL}")
