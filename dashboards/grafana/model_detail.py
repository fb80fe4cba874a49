"""Model detail: one model (the `model` variable), feature by feature."""

from __future__ import annotations

from grafana_foundation_sdk.models.common import BigValueTextMode

from dashboards.grafana.panels import (
    ON_DUTY_ONLY,
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

UID = "watcher-model-detail"
M = 'model="$model"'
SCORE = f"watcher_feature_drift_score{{{M}}}"
THRESHOLD = f"watcher_feature_drift_threshold{{{M}}}"
DRIFTED = f"watcher_feature_drifted{{{M}}}"
FEATURE_TEST = "model, feature, stattest"
FAILED_RUNS = f'watcher_retrain_runs{{{M},state="failed"}}'
LAST_BATCH = f"watcher_last_batch_timestamp_seconds{{{M}}}"
LAST_SUCCESS = f"watcher_retrain_last_success_timestamp_seconds{{{M}}}"


def build() -> Board:
    board = Board(
        title="watcher / Model detail",
        uid=UID,
        description="One model: per-feature drift against thresholds, data quality, "
        "prediction drift, performance and retraining events.",
    )
    board.variable("model", "Model", "watcher_batches_total")
    board.annotation(
        "Retrain triggered",
        f'sum by (model) (increase(watcher_retrain_decisions_total{{{M},outcome="triggered"}}[2m]))'
        " > 0",
        "blue",
        "Retrain triggered",
    )
    board.annotation(
        "Retrain succeeded",
        # One event per model however many replicas exported the timestamp.
        f"max by (model) (changes({LAST_SUCCESS}[2m])) > 0",
        "green",
        "Retrain succeeded: new model in production",
    )
    board.annotation(
        "Retrain failed",
        f"max by (model) (delta({FAILED_RUNS}[2m]) {ON_DUTY_ONLY}) > 0",
        "red",
        "Retrain run failed",
    )

    board.row("Now")
    board.add(
        stat_panel(
            "Dataset drift share",
            [Q(owned(f"watcher_dataset_drift_ratio{{{M}}}"))],
            unit="percentunit",
            steps=[(None, "green"), (0.5, "red")],
        ),
        "What share of this model's features drifted in its last batch?",
    )
    board.add(
        stat_panel(
            "Drifted features",
            [Q(owned(f"watcher_drifted_features{{{M}}}"))],
            steps=[(None, "green"), (1, "orange")],
        ),
        "How many features drifted in the last batch?",
    )
    board.add(
        stat_panel(
            "Drift streak",
            [Q(owned(f"watcher_drift_streak{{{M}}}"))],
            steps=[(None, "green"), (1, "orange"), (3, "red")],
        ),
        "For how many consecutive batches has the model drifted?",
    )
    board.add(
        stat_panel(
            "Version in production",
            [Q(owned(f"watcher_model_info{{{M}}}", "model, version"), "{{version}}", instant=True)],
            text_mode=BigValueTextMode.NAME,
        ),
        "Which model version's reference data is the daemon comparing against?",
    )
    board.add(
        stat_panel("Rows in last batch", [Q(owned(f"watcher_batch_rows{{{M}}}"))], unit="short"),
        "How many rows did the last scored batch have?",
    )
    board.add(
        stat_panel(
            "Last batch scored",
            [Q(f"time() - {newest(LAST_BATCH)}")],
            unit="s",
            steps=[(None, "green"), (3600, "orange"), (7200, "red")],
        ),
        "How long ago was the last batch of this model scored?",
    )

    board.row("Features")
    board.add(
        timeseries(
            "Feature drift score against threshold",
            [
                Q(owned(SCORE, FEATURE_TEST), "{{feature}} ({{stattest}})"),
                Q(owned(THRESHOLD, FEATURE_TEST), "{{feature}} threshold"),
            ],
            w=24,
            h=10,
            dashed=".* threshold$",
        ),
        "How does each feature's drift score move against the threshold it is held to "
        "(p-value tests drift below it, distance tests above it)?",
    )
    board.add(
        table_panel(
            "Most drifted features",
            [
                # A subquery over the owner's series: a model that moved in the range is
                # one line, and a stale replica's frozen copy is not averaged in.
                Q(
                    f"avg_over_time(({owned(DRIFTED, 'model, feature')})[$__range:])",
                    instant=True,
                    table=True,
                ),
                Q(owned(SCORE, FEATURE_TEST), instant=True, table=True),
                Q(owned(THRESHOLD, FEATURE_TEST), instant=True, table=True),
                Q(owned(DRIFTED, "model, feature"), instant=True, table=True),
            ],
            hide=["model"],
            rename={
                "Value #A": "share of time drifted",
                "Value #B": "score",
                "Value #C": "threshold",
                "Value #D": "drifted now",
            },
            sort_by="share of time drifted",
        ),
        "Which features drifted most often in the time range, and where do they stand now?",
    )
    board.add(
        state_timeline(
            "Drifted features over time",
            [Q(owned(DRIFTED, "model, feature"), "{{feature}}")],
            mappings={"0": ("stable", "green"), "1": ("drifted", "red")},
        ),
        "When did each feature drift?",
    )
    board.add(
        timeseries(
            "Missing values",
            [Q(owned(f"watcher_missing_values_ratio{{{M}}}", "model, feature"), "{{feature}}")],
            unit="percentunit",
            minimum=0,
        ),
        "What share of each feature's values were missing in each batch?",
    )
    board.add(
        bar_gauge(
            "Data quality violations in the time range",
            [
                Q(
                    events_in_range(f"watcher_data_quality_violations_total{{{M}}}", "check"),
                    "{{check}}",
                    instant=True,
                )
            ],
            minimum=0,
        ),
        "Which data quality checks failed (missing values, out of range, unseen categories)?",
    )

    board.row("Predictions and performance")
    board.add(
        timeseries(
            "Prediction drift",
            [Q(owned(f"watcher_prediction_drift_score{{{M}}}"), "prediction")],
        ),
        "Did the distribution of the model's predictions move away from the reference?",
    )
    board.add(
        timeseries(
            "Performance on labelled data",
            [Q(owned(f"watcher_model_performance{{{M}}}", "model, metric"), "{{metric}}")],
        ),
        "How good is the production model once labels arrive (MAE, RMSE, accuracy...)?",
    )

    board.row("Batches and retraining")
    board.add(
        timeseries(
            "Batches by outcome",
            [
                Q(
                    f"sum by (outcome) (increase(watcher_batches_total{{{M}}}[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            bars=True,
            minimum=0,
            w=8,
        ),
        "How many of this model's batches were scored, rejected or failed?",
    )
    board.add(
        bar_gauge(
            "Rejected batches by reason in the time range",
            [
                Q(
                    events_in_range(f"watcher_batches_rejected_total{{{M}}}", "reason"),
                    "{{reason}}",
                    instant=True,
                )
            ],
            minimum=0,
            w=8,
        ),
        "Why were batches quarantined instead of scored?",
    )
    board.add(
        timeseries(
            "Late and sampled-out rows",
            [
                Q(f"sum(rate(watcher_late_rows_total{{{M}}}[$__rate_interval]))", "late rows/s"),
                Q(
                    f"sum(rate(watcher_sampled_out_rows_total{{{M}}}[$__rate_interval]))",
                    "sampled-out rows/s",
                ),
            ],
            minimum=0,
            w=8,
        ),
        "Are rows arriving after their window was scored, or being capped out of a window?",
    )
    board.add(
        bar_gauge(
            "Retrain decisions in the time range",
            [
                Q(
                    events_in_range(f"watcher_retrain_decisions_total{{{M}}}", "outcome"),
                    "{{outcome}}",
                    instant=True,
                ),
                Q(
                    events_in_range(f"watcher_retrain_deliveries_total{{{M}}}", "outcome"),
                    "trigger {{outcome}}",
                    instant=True,
                ),
            ],
            minimum=0,
            w=8,
        ),
        "When did the policy decide to retrain this model or hold back, and why?",
    )
    board.add(
        timeseries(
            "Trigger signals against their thresholds",
            [
                Q(owned(f"watcher_trigger_signal_value{{{M}}}", "model, signal"), "{{signal}}"),
                Q(
                    owned(f"watcher_trigger_signal_threshold{{{M}}}", "model, signal"),
                    "{{signal}} threshold",
                ),
            ],
            minimum=0,
            w=8,
            dashed=".* threshold",
        ),
        "How close is each retrain signal (drift streak, performance CUSUM, age) to firing?",
    )
    board.add(
        timeseries(
            "Retrain runs by state",
            [Q(on_duty(f"watcher_retrain_runs{{{M}}}", "model, state"), "{{state}}")],
            minimum=0,
            w=8,
        ),
        "How many of this model's retraining runs are queued, running, succeeded or failed?",
    )
    board.add(
        stat_panel(
            "Last successful retrain",
            [Q(f"{newest(LAST_SUCCESS)} * 1000")],
            unit="dateTimeFromNow",
            w=8,
            h=8,
            no_value="never",
        ),
        "When did a retraining run of this model last succeed?",
    )
    return board
