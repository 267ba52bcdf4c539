"""Benchmarks: rollout throughput of the batched engine against one episode at a time.

:func:`bench_rollout` plays the same episodes (same samples, policy and config)
twice: with ``batch_size`` episodes per forward, and with ``batch_size = 1``
(the sequential baseline: identical code path, one episode at a time). It reports
generated tokens per second (policy tokens, i.e. ``loss_mask`` tokens, over wall
time), the same per CPU second of this process (a figure that other jobs on a
shared machine disturb far less), and peak memory of each.

Work is comparable but not identical: the random stream is shared across a
batch, so the two runs sample different texts; tokens/s normalises for that.
To exercise observations (crops, re-prefill), the first ``zoom_turns`` turns of
every episode can be scripted zooms (teacher-forced through the same decode loop
as sampled tokens, so they cost the same per token).

Memory: on CPU, the peak resident set size (RSS, read from ``/proc/self/status``
every 5 ms by a background thread) during each run, and its rise over the RSS
just before it; on CUDA, ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from mapo.agent import protocol
from mapo.engine.rollout import RolloutConfig, finish_counts, rollout


def _rss_mb() -> float:
    """Resident set size of this process in MiB (Linux), NaN elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class _PeakRSS:
    """Samples RSS in a background thread while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.baseline = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, _rss_mb())

    def __enter__(self) -> _PeakRSS:
        self.baseline = self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


@dataclasses.dataclass
class RunResult:
    """One timed rollout."""

    mode: str  # "batched" or "sequential"
    batch_size: int
    episodes: int
    generated_tokens: int
    seconds: float  # wall clock
    tokens_per_s: float  # generated_tokens / seconds
    cpu_seconds: float  # CPU time of this process (all threads); robust to other load on the machine
    tokens_per_cpu_s: float  # generated_tokens / cpu_seconds
    peak_memory_mb: float  # CPU: peak RSS; CUDA: max allocated
    memory_rise_mb: float  # CPU: peak RSS minus RSS before the run; CUDA: same as peak
    finish_reasons: dict[str, int]


def zoom_script(samples: Sequence[Any], turns: int, seed: int = 0):
    """``forced_turns`` hook: the first ``turns`` turns of each episode zoom on a pseudo-random box.

    Boxes are in a 112x112 frame (any view at least that large holds them), so
    crops vary in size and aspect across episodes.
    """
    if turns <= 0:
        return None

    def forced(group: int, member: int, turn: int) -> str | None:
        if turn >= turns:
            return None
        g = torch.Generator().manual_seed(hash((seed, group, member, turn)) % (2**31))
        x1, y1 = (int(v) for v in torch.randint(0, 56, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(28, 56, (2,), generator=g))
        return protocol.render_assistant_turn(bbox=(x1, y1, x1 + w, y1 + h), label="object")

    return forced


def _timed(samples, policy, config: RolloutConfig, mode: str, forced) -> RunResult:
    cuda = policy.model.device.type == "cuda" if hasattr(policy.model, "device") else False
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with _PeakRSS() as rss:
        start, cpu_start = time.perf_counter(), time.process_time()
        trajectories = rollout(samples, policy, config, forced_turns=forced)
        if cuda:
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(t.num_generated for t in trajectories)
    if cuda:
        peak = rise = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak, rise = rss.peak, rss.peak - rss.baseline
    return RunResult(
        mode=mode,
        batch_size=config.batch_size,
        episodes=len(trajectories),
        generated_tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else float("nan"),
        cpu_seconds=cpu_seconds,
        tokens_per_cpu_s=tokens / cpu_seconds if cpu_seconds > 0 else float("nan"),
        peak_memory_mb=peak,
        memory_rise_mb=rise,
        finish_reasons={k: v for k, v in finish_counts(trajectories).items() if v},
    )


def bench_rollout(
    policy: Any,
    samples: Sequence[Any],
    config: RolloutConfig,
    *,
    batch_size: int = 32,
    zoom_turns: int = 1,
    warmup: bool = True,
) -> dict[str, Any]:
    """Time the batched engine (``batch_size``) against one episode at a time on the same work.

    Returns ``{"batched": RunResult, "sequential": RunResult, "speedup": float,
    "cpu_speedup": float}``: the ratios (batched over sequential) of tokens per wall
    second and of tokens per CPU second.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 (the baseline uses 1), got {batch_size!r}")
    if not samples:
        raise ValueError("samples must be a non-empty sequence")
    forced = zoom_script(samples, zoom_turns, config.seed)
    if warmup:  # first calls pay for lazy initialisation; keep it out of both timings
        rollout(samples[:1], policy, dataclasses.replace(config, group_size=1, max_turns=1, max_new_tokens_per_turn=2))
    batched = _timed(samples, policy, dataclasses.replace(config, batch_size=batch_size), "batched", forced)
    sequential = _timed(samples, policy, dataclasses.replace(config, batch_size=1), "sequential", forced)
    return {
        "batched": batched,
        "sequential": sequential,
        "speedup": batched.tokens_per_s / sequential.tokens_per_s,
        "cpu_speedup": batched.tokens_per_cpu_s / sequential.tokens_per_cpu_s,
    }


__all__ = ["RunResult", "bench_rollout", "zoom_script"]
