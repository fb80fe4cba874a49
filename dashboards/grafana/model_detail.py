"""Model detail: one model (the `model` variable), feature by feature."""

from __future__ import annotations

from grafana_foundation_sdk.models.common import BigValueTextMode

from dashboards.grafana.panels import (
    Board,
    Q,
    bar_gauge,
    events_in_range,
    stat_panel,
    state_timeline,
    table_panel,
    timeseries,
)

UID = "watcher-model-detail"
M = 'model="$model"'


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
        f"changes(watcher_retrain_last_success_timestamp_seconds{{{M}}}[2m]) > 0",
        "green",
        "Retrain succeeded: new model in production",
    )
    board.annotation(
        "Retrain failed",
        f'delta(watcher_retrain_runs{{{M},state="failed"}}[2m]) > 0',
        "red",
        "Retrain run failed",
    )

    board.row("Now")
    board.add(
        stat_panel(
            "Dataset drift share",
            [Q(f"watcher_dataset_drift_ratio{{{M}}}")],
            unit="percentunit",
            steps=[(None, "green"), (0.5, "red")],
        ),
        "What share of this model's features drifted in its last batch?",
    )
    board.add(
        stat_panel(
            "Drifted features",
            [Q(f"watcher_drifted_features{{{M}}}")],
            steps=[(None, "green"), (1, "orange")],
        ),
        "How many features drifted in the last batch?",
    )
    board.add(
        stat_panel(
            "Drift streak",
            [Q(f"watcher_drift_streak{{{M}}}")],
            steps=[(None, "green"), (1, "orange"), (3, "red")],
        ),
        "For how many consecutive batches has the model drifted?",
    )
    board.add(
        stat_panel(
            "Version in production",
            [Q(f"watcher_model_info{{{M}}}", "{{version}}", instant=True)],
            text_mode=BigValueTextMode.NAME,
        ),
        "Which model version's reference data is the daemon comparing against?",
    )
    board.add(
        stat_panel("Rows in last batch", [Q(f"watcher_batch_rows{{{M}}}")], unit="short"),
        "How many rows did the last scored batch have?",
    )
    board.add(
        stat_panel(
            "Last batch scored",
            [Q(f"time() - watcher_last_batch_timestamp_seconds{{{M}}}")],
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
                Q(f"watcher_feature_drift_score{{{M}}}", "{{feature}} ({{stattest}})"),
                Q(f"watcher_feature_drift_threshold{{{M}}}", "{{feature}} threshold"),
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
                Q(
                    f"max by (model, feature) "
                    f"(avg_over_time(watcher_feature_drifted{{{M}}}[$__range]))",
                    instant=True,
                    table=True,
                ),
                Q(
                    f"max by (model, feature, stattest) (watcher_feature_drift_score{{{M}}})",
                    instant=True,
                    table=True,
                ),
                Q(
                    f"max by (model, feature, stattest) (watcher_feature_drift_threshold{{{M}}})",
                    instant=True,
                    table=True,
                ),
                Q(
                    f"max by (model, feature) (watcher_feature_drifted{{{M}}})",
                    instant=True,
                    table=True,
                ),
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
            [Q(f"watcher_feature_drifted{{{M}}}", "{{feature}}")],
            mappings={"0": ("stable", "green"), "1": ("drifted", "red")},
        ),
        "When did each feature drift?",
    )
    board.add(
        timeseries(
            "Missing values",
            [Q(f"watcher_missing_values_ratio{{{M}}}", "{{feature}}")],
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
            [Q(f"watcher_prediction_drift_score{{{M}}}", "prediction")],
        ),
        "Did the distribution of the model's predictions move away from the reference?",
    )
    board.add(
        timeseries(
            "Performance on labelled data",
            [Q(f"watcher_model_performance{{{M}}}", "{{metric}}")],
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
                Q(f"watcher_trigger_signal_value{{{M}}}", "{{signal}}"),
                Q(f"watcher_trigger_signal_threshold{{{M}}}", "{{signal}} threshold"),
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
            [Q(f"watcher_retrain_runs{{{M}}}", "{{state}}")],
            minimum=0,
            w=8,
        ),
        "How many of this model's retraining runs are queued, running, succeeded or failed?",
    )
    board.add(
        stat_panel(
            "Last successful retrain",
            [Q(f"watcher_retrain_last_success_timestamp_seconds{{{M}}} * 1000")],
            unit="dateTimeFromNow",
            w=8,
            h=8,
            no_value="never",
        ),
        "When did a retraining run of this model last succeed?",
    )
    return board
