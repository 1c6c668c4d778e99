"""Adapter for /work/shared/conformance/run_corpus.py: ``--optimizer py:tests/conformance_adapter.py:optimize``."""

import graphopt


def optimize(model, **kwargs):
    return graphopt.optimize(model, passes=kwargs.get("passes", "lossless"))[0]
