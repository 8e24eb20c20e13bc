"""benchmarks/full_size.py: chunked, resumable planning (state in files), checked with stand-in stages.

The stages here only advance a fake clock, so the test needs no TensorFlow and takes milliseconds;
`python benchmarks/full_size.py --size tiny -w DIR --budget-s 40` runs the real chain the same way
(benchmarks/results_gpu.md records such a run).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("full_size", ROOT / "benchmarks" / "full_size.py")
full_size = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("full_size", full_size)  # dataclasses look their module up there
_spec.loader.exec_module(full_size)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _plan(clock, runs, seconds, fail=None, pretrain_total=5, step_s=10.0):
    """Stages a (10 s) b (30 s) pretrain (step_s per step + 5 s start) c (10 s); `runs` records calls."""
    def stage(name):
        def run():
            if name == fail:
                raise KeyboardInterrupt  # the call is killed inside this stage
            runs.append(name)
            clock.now += seconds[name]
        return full_size.Stage(name, name, run)

    def pretrain_chunk(state, left):
        p = state["pretrain"]
        done = p["steps_done"]
        steps = 1 if p["s_per_step"] is None else max(1, int((left - 5) // step_s))
        target = min(pretrain_total, done + steps)
        clock.now += 5 + step_s * (target - done)
        runs.append(f"pretrain->{target}")
        p.update(steps_done=target, s_per_step=step_s, overhead_s=5.0)
        return target >= pretrain_total

    stages = [stage("a"), stage("b"), full_size.Stage("pretrain", "pretrain", None), stage("c")]
    return stages, pretrain_chunk


def test_chunks_continue_where_the_last_stopped(tmp_path, monkeypatch):
    seconds = {"a": 10, "b": 30, "c": 10}
    for kind, value in {"a": 10, "b": 30, "c": 10, "pretrain_probe": 20}.items():
        monkeypatch.setitem(full_size.DEFAULT_ESTIMATE_S, kind, value)
    outcomes, all_runs = [], []
    for _ in range(6):
        clock, runs = FakeClock(), []
        stages, chunk = _plan(clock, runs, seconds)
        outcomes.append(full_size.run_chunk(tmp_path, stages, chunk, budget_s=45, clock=clock))
        assert clock.now <= 45 or len(runs) == 1  # within budget, or the single stage it had to start
        all_runs.append(runs)
        if outcomes[-1] == "done":
            break
    # a and b fit the first call (40 s); the pre-training probe (20 s estimate) does not
    assert all_runs[0] == ["a", "b"]
    assert all_runs[1] == ["pretrain->1", "pretrain->3"]  # the probe (15 s), then a range that fits (25 s)
    assert all_runs[2] == ["pretrain->5", "c"]
    assert outcomes == ["continue", "continue", "done"]
    state = json.loads((tmp_path / full_size.STATE).read_text())
    assert state["done"] == ["a", "b", "pretrain", "c"] and len(state["calls"]) == 3
    # a finished run does nothing more
    clock, runs = FakeClock(), []
    assert full_size.run_chunk(tmp_path, *_plan(clock, runs, seconds), budget_s=45, clock=clock) == "done"
    assert runs == []


def test_a_killed_call_reruns_only_the_interrupted_stage(tmp_path, monkeypatch):
    seconds = {"a": 10, "b": 30, "c": 10}
    for kind, value in {"a": 10, "b": 30, "c": 10, "pretrain_probe": 20}.items():
        monkeypatch.setitem(full_size.DEFAULT_ESTIMATE_S, kind, value)
    clock, runs = FakeClock(), []
    with pytest.raises(KeyboardInterrupt):
        full_size.run_chunk(tmp_path, *_plan(clock, runs, seconds, fail="b"), budget_s=500, clock=clock)
    assert runs == ["a"]
    clock, runs = FakeClock(), []
    assert full_size.run_chunk(tmp_path, *_plan(clock, runs, seconds), budget_s=500, clock=clock) == "done"
    assert runs[0] == "b" and "a" not in runs  # a was recorded as done before the kill


def test_a_stage_longer_than_the_budget_still_makes_progress(tmp_path, monkeypatch):
    seconds = {"a": 100, "b": 30, "c": 10}
    for kind, value in {"a": 100, "b": 30, "c": 10, "pretrain_probe": 20}.items():
        monkeypatch.setitem(full_size.DEFAULT_ESTIMATE_S, kind, value)
    clock, runs = FakeClock(), []
    assert full_size.run_chunk(tmp_path, *_plan(clock, runs, seconds), budget_s=45, clock=clock) == "continue"
    assert runs == ["a"]  # started first, so it runs; nothing after it
