"""graphopt: an ONNX graph-rewriting compiler that makes models smaller and faster without breaking them.

Public API::

    model = graphopt.load("in.onnx")                      # path, bytes or ModelProto; checked
    model, report = graphopt.optimize("in.onnx", "out.onnx", passes="lossless")
    graphopt.save(model, "out.onnx")                      # atomic; checker + onnxruntime verified
"""

__version__ = "0.1.0"

from graphopt.errors import GraphoptError, ModelError, PassError, UsageError, ValidationFailure
from graphopt.model import load, save
from graphopt.optimizer import OptimizeResult, optimize
from graphopt.pass_base import Diagnostic, Invariant, Option, Pass, PassContext, PassResult
from graphopt.pipeline import FixedPoint, Pipeline, format_pipeline, parse_pipeline

__all__ = [
    "Diagnostic", "FixedPoint", "GraphoptError", "Invariant", "ModelError", "OptimizeResult", "Option", "Pass",
    "PassContext", "PassError", "PassResult", "Pipeline", "UsageError", "ValidationFailure", "format_pipeline",
    "load", "optimize", "parse_pipeline", "save",
]
