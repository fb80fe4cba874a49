"""Operations: is the daemon itself healthy, fast enough, and able to reach Airflow and SMTP?"""

from __future__ import annotations

from grafana_foundation_sdk.models.common import BigValueTextMode

from dashboards.grafana.panels import (
    JOB,
    Board,
    Q,
    bar_gauge,
    events_in_range,
    stat_panel,
    state_timeline,
    timeseries,
)

UID = "watcher-operations"
UP_DOWN = {"0": ("down", "red"), "1": ("up", "green")}
BUCKETS = "watcher_batch_duration_seconds_bucket"


def _quantile(q: float) -> Q:
    return Q(
        f"histogram_quantile({q}, sum by (le, stage) (rate({BUCKETS}[$__rate_interval])))",
        f"p{round(q * 100)} {{{{stage}}}}",
    )


def build() -> Board:
    board = Board(
        title="watcher / Operations",
        uid=UID,
        description="The daemon itself: scrape health, batch latency per stage, the outbox, "
        "Airflow and SMTP reachability, rejected batches, memory and CPU.",
    )

    board.row("Health")
    board.add(
        stat_panel("Daemon", [Q(f"up{{{JOB}}}")], mappings=UP_DOWN, no_value="not scraped"),
        "Is Prometheus able to scrape the daemon right now?",
    )
    board.add(
        stat_panel("Airflow", [Q("watcher_airflow_up")], mappings=UP_DOWN),
        "Do all Airflow components report healthy to the daemon?",
    )
    board.add(
        stat_panel("SMTP", [Q("watcher_smtp_up")], mappings=UP_DOWN),
        "Did the last alert mail delivery attempt succeed?",
    )
    board.add(
        stat_panel(
            "Outbox pending",
            # Every replica exports the count of the one shared outbox: max per kind.
            [Q("sum(max by (kind) (watcher_outbox_pending))")],
            steps=[(None, "green"), (1, "orange"), (20, "red")],
        ),
        "How many retrain triggers and alert mails are waiting to be delivered?",
    )
    board.add(
        stat_panel(
            "Uptime",
            [Q(f"time() - process_start_time_seconds{{{JOB}}}")],
            unit="s",
            steps=[(None, "orange"), (600, "green")],
        ),
        "How long has the daemon been running (a small value means it restarted)?",
    )
    board.add(
        stat_panel(
            "Version",
            [Q("watcher_build_info", "{{version}}", instant=True)],
            text_mode=BigValueTextMode.NAME,
        ),
        "Which watcher version is running?",
    )

    board.row("Replicas")
    board.add(
        stat_panel(
            "Models without an owner",
            [Q("max(watcher_models_without_owner)")],
            steps=[(None, "green"), (1, "red")],
            no_value="single daemon",
        ),
        "How many models does no live replica hold the lease of (nobody scores them), for "
        "longer than [state] lease_seconds, which a fail-over takes at most?",
    )
    board.add(
        stat_panel(
            "Replicas up",
            [Q(f"count(up{{{JOB}}} == 1)")],
            steps=[(None, "red"), (1, "green")],
        ),
        "How many watcher processes does Prometheus scrape successfully?",
    )
    board.add(
        timeseries(
            "Models owned per replica",
            [Q("watcher_models_owned", "{{instance}}")],
            stack=True,
            minimum=0,
            w=12,
        ),
        "How are the models shared between the replicas, and when did they move "
        "(a replica died, joined or left)?",
    )

    board.row("Batch latency")
    board.add(
        timeseries(
            "Batch latency per stage (p50, p95, p99)",
            [_quantile(0.5), _quantile(0.95), _quantile(0.99)],
            unit="s",
            w=16,
            h=9,
        ),
        "How long does each stage (load, quality, drift...) take per batch, typically and worst?",
    )
    board.add(
        timeseries(
            "Mean time per stage",
            [
                Q(
                    "sum by (stage) (rate(watcher_batch_duration_seconds_sum[$__rate_interval]))"
                    " / sum by (stage) (rate(watcher_batch_duration_seconds_count"
                    "[$__rate_interval]))",
                    "{{stage}}",
                )
            ],
            unit="s",
            stack=True,
            w=8,
            h=9,
        ),
        "Where does the time of an average batch go?",
    )

    board.row("Delivery")
    board.add(
        timeseries(
            "Outbox pending by kind",
            [Q("max by (kind) (watcher_outbox_pending)", "{{kind}}")],
            minimum=0,
            w=8,
        ),
        "Is the outbox draining, or are triggers and mails piling up?",
    )
    board.add(
        state_timeline(
            "Airflow and SMTP",
            [Q("watcher_airflow_up", "Airflow"), Q("watcher_smtp_up", "SMTP")],
            mappings=UP_DOWN,
            w=8,
        ),
        "When were Airflow and the SMTP server unreachable?",
    )
    board.add(
        timeseries(
            "Dead letters",
            [
                Q(
                    "sum by (kind) (increase(watcher_dead_letters_total[$__rate_interval]))",
                    "{{kind}}",
                )
            ],
            bars=True,
            minimum=0,
            w=8,
        ),
        "Which actions did the daemon give up on after permanent failures?",
    )
    board.add(
        bar_gauge(
            "Alert mails by outcome in the time range",
            [
                Q(
                    events_in_range("watcher_alerts_total", "outcome"),
                    "{{outcome}}",
                    instant=True,
                )
            ],
            minimum=0,
            w=8,
        ),
        "Are alert mails being delivered?",
    )
    board.add(
        timeseries(
            "Paused retrain DAGs found",
            [
                Q(
                    "sum by (model) "
                    "(increase(watcher_dag_paused_detections_total[$__rate_interval]))",
                    "{{model}}",
                )
            ],
            bars=True,
            minimum=0,
            w=8,
        ),
        "Did the daemon find a model's retrain DAG paused in Airflow (runs would queue forever)?",
    )
    board.add(
        state_timeline(
            "Sources",
            [Q("watcher_source_up", "{{model}}")],
            mappings=UP_DOWN,
            w=8,
        ),
        "Did each model's data source answer its polls?",
    )

    board.row("Input")
    board.add(
        bar_gauge(
            "Rejected batches by reason in the time range",
            [
                Q(
                    events_in_range("watcher_batches_rejected_total", "model, reason"),
                    "{{model}} {{reason}}",
                    instant=True,
                )
            ],
            minimum=0,
            steps=[(None, "orange")],
        ),
        "Which checks quarantined batches (too few rows, missing columns, empty files...)?",
    )
    board.add(
        timeseries(
            "Rejected and failed batches",
            [
                Q(
                    "sum by (model, outcome) (increase("
                    'watcher_batches_total{outcome=~"rejected|failed"}[$__rate_interval]))',
                    "{{model}} {{outcome}}",
                )
            ],
            bars=True,
            minimum=0,
        ),
        "When were batches rejected (bad data) or did scoring fail (a bug or an I/O problem)?",
    )

    board.row("Process")
    board.add(
        timeseries(
            "Memory",
            [
                Q(f"process_resident_memory_bytes{{{JOB}}}", "resident"),
                Q(f"process_virtual_memory_bytes{{{JOB}}}", "virtual"),
            ],
            unit="bytes",
            minimum=0,
            w=8,
        ),
        "How much memory does the daemon use, and is it growing?",
    )
    board.add(
        timeseries(
            "CPU",
            [Q(f"rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval])", "cores")],
            unit="percentunit",
            minimum=0,
            w=8,
        ),
        "How much CPU does scoring take (1.0 = one full core)?",
    )
    board.add(
        timeseries(
            "Open file descriptors",
            [
                Q(f"process_open_fds{{{JOB}}}", "open"),
                Q(f"process_max_fds{{{JOB}}}", "limit"),
            ],
            minimum=0,
            w=8,
            dashed="limit",
        ),
        "Is the daemon leaking file handles towards its limit?",
    )
    return board
