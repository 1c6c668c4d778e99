"""The library API from several threads and processes at once, on different models: each result is the one
a lone call gives, byte for byte."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

import graphopt

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
NAMES = ("digits_cnn", "resnet_small", "mobilenetv2_small")


def optimized_bytes(name: str, check_changed: bool = False) -> bytes:
    model, _ = graphopt.optimize(os.path.join(MODELS, f"{name}.onnx"), passes="lossless",
                                 check_changed=check_changed)
    return model.SerializeToString()


def test_threads_give_what_lone_calls_give():
    alone = {name: optimized_bytes(name) for name in NAMES}
    # every model twice, one of each pair with the honesty check on (it switches constant-digest caching
    # off for its own thread only)
    jobs = [(name, check) for name in NAMES for check in (False, True)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: (job[0], optimized_bytes(*job)), jobs))
    assert all(result == alone[name] for name, result in results)


def test_processes_give_what_lone_calls_give():
    alone = {name: optimized_bytes(name) for name in NAMES}
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) \
            as pool:
        results = dict(zip(NAMES, pool.map(optimized_bytes, NAMES), strict=True))
    assert results == alone
