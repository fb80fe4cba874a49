"""What a scrape of /metrics costs, per format and encoding, for a realistic daemon.

    .venv/bin/python benchmarks/bench_metrics_http.py [--models 5] [--features 20]

Fills a `Metrics` registry as a daemon watching MODELS models of FEATURES features each
would (per-feature drift scores, thresholds, flags, missing ratios, stage histograms),
serves it with watcher's `MetricsServer` (prometheus_client's negotiation, the model families from
their rendered-text cache) and scrapes it
over HTTP four ways: text / OpenMetrics, plain / gzip. Prints bytes on the wire, the
compression ratio and the best-of-20 scrape time.
"""

from __future__ import annotations

import argparse
import time
import urllib.request

from watcher.metrics import Metrics
from watcher.metrics_http import Health, MetricsServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()
    m = Metrics()
    for i in range(args.models):
        name = f"model{i}"
        m.init_model(name)
        for f in range(args.features):
            m.set_feature_drift(name, f"feature_{f}", "wasserstein", 0.05, 0.1)
            m.feature_drifted.labels(name, f"feature_{f}").set(0)
            m.missing_values_ratio.labels(name, f"feature_{f}").set(0.01)
        for stage in ("load", "quality", "drift", "commit"):
            m.batch_duration.labels(name, stage).observe(0.2)
    server = MetricsServer(m, Health(60), "127.0.0.1", 0)
    server.start()
    try:
        ways = {
            "text": {},
            "text + gzip": {"Accept-Encoding": "gzip"},
            "openmetrics": {"Accept": "application/openmetrics-text"},
            "openmetrics + gzip": {
                "Accept": "application/openmetrics-text",
                "Accept-Encoding": "gzip",
            },
        }
        plain = 0
        print(f"{args.models} models x {args.features} features")
        print(f"{'format':<20} {'bytes':>8} {'ratio':>6} {'best ms':>8}  content-type")
        for label, headers in ways.items():
            best, size, ctype = float("inf"), 0, ""
            for _ in range(20):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{server.port}/metrics", headers=headers
                )
                start = time.perf_counter()
                with urllib.request.urlopen(req, timeout=10) as resp:
                    body = resp.read()
                    ctype = resp.headers["Content-Type"]
                best = min(best, time.perf_counter() - start)
                size = len(body)
            plain = plain or size
            print(f"{label:<20} {size:>8} {plain / size:>5.1f}x {best * 1000:>8.1f}  {ctype}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
