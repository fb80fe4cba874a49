"""Grafana dashboards (generated as code) and Prometheus configuration for watcher."""
