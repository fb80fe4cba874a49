"""Each schedule at each of its phases, over the cached matrices (milliseconds).

    .venv/bin/python benchmarks/schedule_phases.py [FILE ...]

FILE is a matrix pickled by `benchmarks/policy_matrix.py` (default: both examples with
their configs, as `policy_matrix.cache_path` names them; build them with
`policy_matrix.py` first). "Every k periods" can fall on the calendar in k ways: phase j
retrains after served periods j, j + k, ... (phase 0, after k, 2k, ..., is the one a
backtest used to report). For every k in 1, 2, 3, 4, 6, 8 this prints each phase's runs
and error, their mean and range: how much of a schedule's point is the luck of its phase.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import policy_matrix as pm

# The caches were pickled by policy_matrix.py run as a script: its Matrix is __main__'s.
sys.modules["__main__"].Matrix = pm.Matrix  # type: ignore[attr-defined]


def phases(m: pm.Matrix, k: int) -> list[tuple[int, float]]:
    """(runs, error) of every k periods at each phase 0..k-1."""
    return [pm.simulate(m, pm.phased(m, k, j))[::2] for j in range(k)]


def main() -> None:
    cache = pm.ROOT / ".cache/policy_matrix"
    files = [Path(a) for a in sys.argv[1:]] or [
        pm.cache_path(cache, name, "matrix", {}) for name in pm.DATASETS
    ]
    for path in files:
        with path.open("rb") as fh:
            m: pm.Matrix = pickle.load(fh)  # noqa: S301 - policy_matrix.py's own cache
        print(f"== {m.name} ({m.metric}), {path.name}")
        for k in (1, 2, 3, 4, 6, 8):
            ph = phases(m, k)
            runs, errs = [r for r, _ in ph], [e for _, e in ph]
            cells = " ".join(f"{r}:{e:.4f}" for r, e in ph)
            print(
                f"every {k}: phase mean {np.mean(runs):5.2f} runs, {m.metric} {np.mean(errs):.4f}, "
                f"range {min(errs):.4f}-{max(errs):.4f} (phase 0 {errs[0]:.4f}) | {cells}"
            )


if __name__ == "__main__":
    main()
