"""Tooling for trying watcher on one machine, not part of the running daemon.

- `demo`: `watcher demo`, the whole loop on the bundled data.
- `replay`: serves a dataset period by period to a directory source (the demo, `watcher replay`).
- `localservices`: Airflow standalone, an SMTP sink, Prometheus and free ports, for the demo
  and the test suite.
"""
