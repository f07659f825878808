"""The benchmark harness's paired targets: two rows timed in turn in one process decide a target
whose ratio sits near its bound (benchmarks/_harness.py). No timing is asserted: the runners here
report made-up seconds."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def harness(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("_harness")
    yield module
    sys.modules.pop("_harness", None)


def test_paired_timings_alternate_the_rows_and_keep_each_ones_fastest(harness, monkeypatch):
    monkeypatch.setattr(harness, "PAIRED_ROUNDS", 5)
    calls = []

    def runner(name, seconds):
        def run(arrays, cfg):
            calls.append(name)
            return harness.Timing(seconds.pop(0), iters=10)
        return run

    runners = {"a": runner("a", [9.0, 4.0, 2.0, 3.0, 5.0, 6.0]),
               "b": runner("b", [9.0, 1.0, 3.0, 2.0, 4.0, 5.0])}
    best = harness._paired_timings(runners, ("a", "b"), {}, {})
    # One warm-up fit each, then PAIRED_ROUNDS rounds taken in turn.
    assert calls == ["a", "b"] * 6
    assert best == {"a": 0.2, "b": 0.1}


def test_a_paired_target_is_judged_on_its_paired_timings(harness, capsys):
    rows = {"w": {"jaxem": {"status": "ok", "s_per_iter": 0.030},
                  "limit": {"status": "ok", "s_per_iter": 0.018}}}
    target = harness.Target("within 1.5x", "jaxem", "limit", "<=", 1.5, paired=True)
    unpaired = harness.Target("within 1.5x", "jaxem", "limit", "<=", 1.5)
    paired = {("jaxem", "limit"): {"jaxem": 0.026, "limit": 0.020}}

    [check] = harness.check_targets(rows, "w", [target], paired)
    assert check["value"] == pytest.approx(1.3) and check["ok"]
    assert check["rows_value"] == pytest.approx(0.030 / 0.018)
    assert "(the rows above: 1.67)" in capsys.readouterr().out

    [plain] = harness.check_targets(rows, "w", [unpaired], paired)
    assert plain["value"] == pytest.approx(0.030 / 0.018) and not plain["ok"]
    # A paired worker that failed leaves the target undecided rather than falling back.
    [missing] = harness.check_targets(rows, "w", [target], {})
    assert missing["value"] is None and missing["ok"] is None
