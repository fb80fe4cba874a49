"""Drift overview: every model at a glance, the dashboard on-call people open first."""

from __future__ import annotations

from dashboards.grafana.panels import (
    JOB,
    Board,
    Q,
    bar_gauge,
    events_in_range,
    newest,
    on_duty,
    owned,
    stat_panel,
    state_timeline,
    table_panel,
    timeseries,
)

UID = "watcher-drift-overview"
UP_DOWN = {"0": ("down", "red"), "1": ("up", "green")}
IN_FLIGHT = 'watcher_retrain_runs{state=~"queued|running"}'


def build() -> Board:
    board = Board(
        title="watcher / Drift overview",
        uid=UID,
        description="Every monitored model at a glance: drift, throughput, retraining, alerts.",
    )

    board.row("At a glance")
    board.add(
        stat_panel(
            "Daemon",
            # One value per replica (instance): each one's scrape is up or down.
            [Q(f"up{{{JOB}}}", "{{instance}}")],
            mappings=UP_DOWN,
            no_value="not scraped",
        ),
        "Is Prometheus able to scrape the watcher daemon (each replica) right now?",
    )
    board.add(
        stat_panel("Models monitored", [Q(f"count({owned('watcher_model_info')})")]),
        "How many models does the daemon have a reference for?",
    )
    board.add(
        stat_panel(
            "Models in drift",
            [Q(f"sum({owned('watcher_dataset_drifted')})")],
            steps=[(None, "green"), (1, "red")],
        ),
        "How many models showed dataset drift in their last batch?",
    )
    board.add(
        stat_panel(
            "Batches scored (24h)",
            [Q('sum(increase(watcher_batches_total{outcome="scored"}[24h]))')],
            unit="short",
        ),
        "How many batches did the daemon score over the last day?",
    )
    board.add(
        stat_panel(
            "Retrain runs in flight",
            [Q(f"sum({on_duty(IN_FLIGHT)})")],
            steps=[(None, "green"), (1, "blue")],
        ),
        "Is a retraining run queued or running in Airflow right now?",
    )
    board.add(
        stat_panel(
            "Dead letters (24h)",
            [Q("sum(increase(watcher_dead_letters_total[24h]))")],
            steps=[(None, "green"), (1, "red")],
            no_value="0",
        ),
        "Did the daemon give up on any retrain trigger or alert mail in the last day?",
    )

    board.row("Models")
    board.add(
        table_panel(
            "Models in production",
            [
                Q(owned("watcher_model_info", "model, version"), instant=True, table=True),
                Q(owned("watcher_dataset_drift_ratio"), instant=True, table=True),
                Q(owned("watcher_drift_streak"), instant=True, table=True),
                # time() minus the newest timestamp: `max` of the differences would pick
                # a stale replica's older batch.
                Q(
                    f"time() - {newest('watcher_last_batch_timestamp_seconds')}",
                    instant=True,
                    table=True,
                ),
            ],
            w=24,
            h=7,
            hide=["Value #A"],
            rename={
                "version": "version in use",
                "Value #B": "drift share",
                "Value #C": "drift streak",
                "Value #D": "seconds since last batch",
            },
            sort_by="drift share",
        ),
        "Which model version is in production for each model, and how is each model doing now?",
    )

    board.row("Drift")
    board.add(
        timeseries(
            "Dataset drift share",
            [Q(owned("watcher_dataset_drift_ratio"), "{{model}}")],
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        "What share of each model's features drifted, batch after batch?",
    )
    board.add(
        timeseries(
            "Drifted features", [Q(owned("watcher_drifted_features"), "{{model}}")], minimum=0
        ),
        "How many features drifted in each model's last batch?",
    )
    board.add(
        state_timeline(
            "Dataset drift",
            [Q(owned("watcher_dataset_drifted"), "{{model}}")],
            mappings={"0": ("no drift", "green"), "1": ("drift", "red")},
        ),
        "When was each model in dataset drift?",
    )
    board.add(
        timeseries(
            "Drift streak",
            [Q(owned("watcher_drift_streak"), "{{model}}")],
            minimum=0,
        ),
        "For how many consecutive batches has each model drifted (what the retrain policy counts)?",
    )

    board.row("Throughput")
    board.add(
        timeseries(
            "Batches per minute",
            [
                Q(
                    "sum by (model, outcome) (rate(watcher_batches_total[$__rate_interval])) * 60",
                    "{{model}} {{outcome}}",
                )
            ],
            unit="short",
            minimum=0,
        ),
        "How fast are batches arriving and being scored, rejected or failing, per model?",
    )
    board.add(
        timeseries("Rows per batch", [Q(owned("watcher_batch_rows"), "{{model}}")], minimum=0),
        "How big was each model's last scored batch?",
    )
    board.add(
        bar_gauge(
            "Time since last scored batch",
            [
                Q(
                    f"time() - {newest('watcher_last_batch_timestamp_seconds')}",
                    "{{model}}",
                    instant=True,
                )
            ],
            unit="s",
            minimum=0,
            steps=[(None, "green"), (3600, "orange"), (7200, "red")],
            w=24,
            h=6,
        ),
        "Is any model's data feed stale?",
    )

    board.row("Retraining and alerts")
    board.add(
        bar_gauge(
            "Retrain decisions in the time range",
            [
                Q(
                    events_in_range("watcher_retrain_decisions_total", "model, outcome"),
                    "{{model}} {{outcome}}",
                    instant=True,
                ),
                Q(
                    events_in_range("watcher_retrain_deliveries_total", "model, outcome"),
                    "{{model}} trigger {{outcome}}",
                    instant=True,
                ),
            ],
            minimum=0,
            w=8,
        ),
        "When did the policy trigger a retrain and when did it hold back (cooldown, cap, dry run)?",
    )
    board.add(
        timeseries(
            "Retrain runs by state",
            [Q(on_duty("watcher_retrain_runs", "model, state"), "{{model}} {{state}}")],
            minimum=0,
            w=8,
        ),
        "How many retraining runs are queued, running, succeeded or failed?",
    )
    board.add(
        bar_gauge(
            "Alert mails in the time range",
            [
                Q(
                    events_in_range("watcher_alerts_total", "kind, outcome"),
                    "{{kind}} {{outcome}}",
                    instant=True,
                )
            ],
            minimum=0,
            w=8,
        ),
        "Which alert mails went out (or failed), and of what kind?",
    )
    return board
