"""Latency measurement that stops once the answer is known, for `kerakit bench`.

    rule = StopRule(precision=0.03, budget_s=1.0, max_calls=200)
    timed = measure({"a": call_a, "b": call_b}, rule, warmup=5)
    timed["a"].samples_ns, timed["a"].precision, timed["a"].stopped

Calls run in blocks of `block` (ten by default; fewer for a call so slow
that ten would take over 50 ms, judged by its warm-up calls), the callables'
blocks in a fresh random order each round, so machine noise hits them alike. After each
round every configuration still running is checked: its p50 is known within
`precision` (the half-width of a 95 % bootstrap interval over its blocks,
relative to the p50) -> "precise"; its time budget is spent -> "budget"; it
has made `max_calls` calls -> "calls"; with `prune`, its interval lies wholly
above the interval of the fastest so far, so it cannot win -> "pruned";
past `deadline` (a `time.perf_counter()` instant: a re-bench bounded in
seconds) -> "deadline". Each figure carries the precision it reached and its
interval, so a choice between two figures can say whether they differ.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

import numpy as np

BLOCK = 10          # consecutive calls of one configuration within a round, at most
WARMUP_S = 0.25    # untimed calls stop at `warmup` or once this much time went into them
BLOCK_S = 0.05      # ... and fewer where ten would take longer than this (a slow model needs few calls)
BOOTSTRAP = 200     # resamples of the blocks per interval
CONFIDENCE = 0.95


@dataclass(frozen=True)
class StopRule:
    precision: float = 0.03   # stop when the p50 is known within +-3 % (95 % bootstrap over blocks)
    budget_s: float = 1.0     # ... or this much time has been spent timing the configuration
    max_calls: int = 200      # ... or it has made this many timed calls
    min_blocks: int = 3       # blocks before the precision is trusted
    prune: bool = False       # stop a configuration whose interval lies above the fastest one's


@dataclass
class Timed:
    samples_ns: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # calls per block, in order
    spent_s: float = 0.0
    precision: float | None = None   # relative half-width of the p50's 95 % interval; None: under 2 blocks
    stopped: str = ""
    _cached: tuple = (0, (0.0, float("inf")))  # (blocks, interval): an interval is computed once per block count

    @property
    def p50_ns(self) -> float:
        return float(np.median(self.samples_ns))

    def interval(self, rng: np.random.Generator) -> tuple[float, float]:
        """The p50's 95 % bootstrap interval, resampling whole blocks (calls within a block are correlated)."""
        if len(self.blocks) < 2:
            return 0.0, float("inf")
        if self._cached[0] == len(self.blocks):
            return self._cached[1]
        edges = np.cumsum([0, *self.blocks])
        samples = np.asarray(self.samples_ns, dtype=np.float64)
        parts = [samples[a:b] for a, b in zip(edges[:-1], edges[1:])]
        picks = rng.integers(0, len(parts), (BOOTSTRAP, len(parts)))
        medians = np.array([np.median(np.concatenate([parts[i] for i in row])) for row in picks])
        tail = (1 - CONFIDENCE) / 2 * 100
        low, high = np.percentile(medians, [tail, 100 - tail])
        self.precision = round(float(max(self.p50_ns - low, high - self.p50_ns) / self.p50_ns), 4)
        self._cached = (len(self.blocks), (float(low), float(high)))
        return self._cached[1]

    def stats(self, batch: int) -> dict:
        """The figures a bench row carries: percentiles, throughput, the p50's 95 % interval and precision."""
        ms = np.asarray(self.samples_ns, dtype=np.float64) / 1e6
        p50 = round(float(np.percentile(ms, 50)), 4)  # throughput below agrees with the p50 as reported
        interval = self.interval(np.random.default_rng(0)) if len(self.blocks) >= 2 else None
        return {"p50_ms": p50, "p90_ms": round(float(np.percentile(ms, 90)), 4),
                "p99_ms": round(float(np.percentile(ms, 99)), 4), "mean_ms": round(float(ms.mean()), 4),
                "throughput_per_s": round(batch / (p50 / 1e3), 1), "calls": len(ms),
                "interval_ms": None if interval is None else [round(v / 1e6, 4) for v in interval],
                "precision": self.precision, "stopped": self.stopped}


def measure(calls: dict[Hashable, Callable[[], object]], rule: StopRule, warmup: int = 5,
            block: int = BLOCK, seed: int = 0, deadline: float | None = None) -> dict[Hashable, Timed]:
    """Time every callable until `rule` stops it, or `deadline` (time.perf_counter()) passes; returns their
    samples and the precision reached."""
    clock = time.perf_counter_ns
    late = (lambda: False) if deadline is None else (lambda: time.perf_counter() > deadline)
    warm: dict[Hashable, list[int]] = {k: [] for k in calls}
    for _ in range(warmup):
        for key, call in calls.items():
            if sum(warm[key]) < WARMUP_S * 1e9 and not late():  # a slow model is warm after a call or two
                start = clock()
                call()
                warm[key].append(clock() - start)
    sizes = {k: max(1, min(block, int(BLOCK_S * 1e9 / np.median(w)))) if w else block for k, w in warm.items()}
    timed = {k: Timed() for k in calls}
    running, order = list(calls), list(calls)
    shuffle, rng = random.Random(seed).shuffle, np.random.default_rng(seed)
    while running:
        shuffle(order)
        for key in order:
            if key not in running or (late() and timed[key].blocks):  # past the deadline: one block each at most
                continue
            call, t = calls[key], timed[key]
            n = min(sizes[key], rule.max_calls - len(t.samples_ns))
            began = clock()
            for _ in range(n):
                start = clock()
                call()
                t.samples_ns.append(clock() - start)
            t.spent_s += (clock() - began) / 1e9
            t.blocks.append(n)
        running = _still_running(running, timed, rule, rng)
        if running and late():
            for key in running:
                timed[key].stopped = "deadline"
            running = []
    return timed


def _still_running(running: list, timed: dict[Hashable, Timed], rule: StopRule, rng) -> list:
    bounds = {k: t.interval(rng) for k, t in timed.items()}
    fastest_high = min(high for _, high in bounds.values())
    keep = []
    for key in running:
        t = timed[key]
        low, _ = bounds[key]
        if len(t.samples_ns) >= rule.max_calls:
            t.stopped = "calls"
        elif len(t.blocks) >= rule.min_blocks and t.precision is not None and t.precision <= rule.precision:
            t.stopped = "precise"
        elif t.spent_s >= rule.budget_s:
            t.stopped = "budget"
        elif rule.prune and len(t.blocks) >= rule.min_blocks and low > fastest_high:
            t.stopped = "pruned"
        else:
            keep.append(key)
    return keep
