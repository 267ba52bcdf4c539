"""What the eval fingerprint costs at the size of Qwen2.5-VL-7B: every weight byte hashed, and data files hashed.

1. Model: builds the Qwen2.5-VL-7B architecture on the ``meta`` device (no memory), then fills
   its tensors with random bfloat16 values a group of about ``--group-gb`` GB at a time and hashes
   each group with :func:`mapo.core.fingerprint.module_digest` (the code the eval fingerprint runs, on
   its threads), timing the hashing only. Peak memory is one group, so it runs on a small CPU
   machine; on a GPU the per-tensor copy to the CPU adds to the time.
2. Files: writes ``--file-mb`` MB to a temporary file and times :func:`mapo.core.fingerprint.file_digests`
   once cold (read and hash) and once from the cache (a stat per file).

Usage:
    python scripts/fingerprint_cost.py [--shape qwen2_5_vl_7b] [--file-mb 1024] [--out runs/fingerprint_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


class _Group(torch.nn.Module):
    """A stand-in module whose ``state_dict`` is a given group of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return self.tensors


def model_cost(shape: str, group_gb: float) -> dict:
    from mapo.core.fingerprint import module_digest
    from mapo.policy.families import family_of
    from mapo.policy.real_shapes import SHAPES, model_config

    config = model_config(shape)
    with torch.device("meta"):
        model = family_of(SHAPES[shape].model_type).model_cls()(config)
    seconds, nbytes, params = 0.0, 0, 0
    g = torch.Generator().manual_seed(0)
    group: dict[str, torch.Tensor] = {}

    def flush() -> float:
        started = time.perf_counter()
        module_digest(_Group(group))
        return time.perf_counter() - started

    for name, meta in model.state_dict().items():
        t = torch.empty(meta.shape, dtype=torch.bfloat16).uniform_(-1, 1, generator=g)
        group[name] = t
        nbytes += t.numel() * t.element_size()
        params += t.numel()
        if sum(x.numel() * 2 for x in group.values()) > group_gb * 1e9:
            seconds += flush()
            group = {}
    if group:
        seconds += flush()
    return {"shape": shape, "params": params, "bytes": nbytes, "seconds": round(seconds, 2),
            "gb_per_s": round(nbytes / seconds / 1e9, 3), "threads": min(8, os.cpu_count() or 1)}


def file_cost(megabytes: int) -> dict:
    from mapo.core.fingerprint import file_digests

    with tempfile.TemporaryDirectory(dir="runs") as d:
        os.environ["MAPO_CACHE_DIR"] = d
        path = Path(d) / "data.bin"
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(megabytes):
                f.write(block)
        started = time.perf_counter()
        file_digests([path])
        cold = time.perf_counter() - started
        started = time.perf_counter()
        file_digests([path])
        cached = time.perf_counter() - started
    return {"megabytes": megabytes, "cold_seconds": round(cold, 2), "cold_gb_per_s": round(megabytes / 1024 / cold, 3),
            "cached_seconds": round(cached, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2_5_vl_7b")
    parser.add_argument("--file-mb", type=int, default=1024)
    parser.add_argument("--group-gb", type=float, default=2.0, help="tensors hashed together (memory bound)")
    parser.add_argument("--out", default="runs/fingerprint_cost.json")
    args = parser.parse_args()
    Path("runs").mkdir(exist_ok=True)
    result = {"model": model_cost(args.shape, args.group_gb), "file": file_cost(args.file_mb),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
