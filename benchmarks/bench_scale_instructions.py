"""Instructions, not time: a 10k-row batch against an N-row reference, under callgrind.

    for n in 10000 1000000; do for k in 0 10; do
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n.$k.out \
        .venv/bin/python benchmarks/bench_scale_instructions.py $n $k 2>&1 | grep "refs:"
    done; done

Prepares the reference as bench_scale.py Part 1 does, scores the batch once (first use:
running integrals), then K more times (load from Parquet bytes, quality, drift). The
instructions of K batches are the run with K=10 minus the run with K=0 (same seeds, same
set-up); divided by K, per batch. Instruction counts repeat to a fraction of a percent
on this shared machine where times do not; they do not count the cycles a cache miss
costs, which is what a large reference adds: read them beside bench_scale.py's CPU times.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_scale import COLUMNS, QUALITY, SPECS, frame

from watcher import chunked
from watcher.drift import engine
from watcher.drift.quality import check_batch, profile_reference


def main() -> None:
    n_ref, k = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    frame(10_000, rng, drift=0.3).to_parquet(buf)
    raw = buf.getvalue()
    ref = frame(n_ref, rng)
    prepared = engine.prepare_reference(ref, SPECS, version="r", lean=True)
    profile = profile_reference(ref, COLUMNS, prepared.samples)
    del ref

    def one() -> None:
        batch = chunked.read_parquet(io.BytesIO(raw))
        clean, quality = check_batch(batch, profile, COLUMNS, QUALITY)
        engine.score(prepared, clean, samples=quality.samples)

    one()
    for _ in range(k):
        one()


if __name__ == "__main__":
    main()
