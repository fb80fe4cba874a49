"""Retraining as pure, typed step functions; `retrain_dags/` wires them into Airflow.

    ingest → validate → engineer features → select features → tune + train → evaluate
    → gate → deploy → notify

`data` gathers training data, `validation` checks it can train, `features` builds the
scikit-learn preprocessing, `selection` chooses features, `tuning` searches
hyperparameters, `evaluation` compares the challenger with the champion, `steps` runs each
step on a run folder (paths in, paths out), and `bootstrap` trains a first version.
Everything runs without Airflow.
"""
