"""Grafana dashboards as code: `python -m dashboards.grafana.generate` writes the JSON."""
