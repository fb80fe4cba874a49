-- A state file written by watcher 0.1 (watcher/state.py before the state package and
-- schema versions), dumped with sqlite3's iterdump. Made by running that release's
-- StateStore: 7 batches (6 scored, 1 rejected), decisions, a trigger and a mailed alert,
-- a finished run, an open incident, a watermark and a labelled period.
BEGIN TRANSACTION;
CREATE TABLE batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    uri TEXT NOT NULL,
    status TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    finished_at REAL,
    rows INTEGER,
    reference_version TEXT,
    dataset_drift INTEGER,
    drift_share REAL,
    result TEXT,
    reason TEXT,
    UNIQUE (model, batch_id)
);
INSERT INTO "batches" VALUES(1,'bikeshare','batch-000','/data/incoming/batch-000.parquet','scored',1.79617794624548673628e+09,1.79617794624754667284e+09,1000,'0001',0,0.1,'{"drift": {"columns": {"temp": {"drifted": false, "score": 0.0}}}}',NULL);
INSERT INTO "batches" VALUES(2,'bikeshare','batch-001','/data/incoming/batch-001.parquet','scored',1.79617794625154423714e+09,1.79617794625436925882e+09,1001,'0001',0,0.1,'{"drift": {"columns": {"temp": {"drifted": false, "score": 0.01}}}}',NULL);
INSERT INTO "batches" VALUES(3,'bikeshare','batch-002','/data/incoming/batch-002.parquet','scored',1.79617794625551891333e+09,1.79617794625953841212e+09,1002,'0001',0,0.1,'{"drift": {"columns": {"temp": {"drifted": false, "score": 0.02}}}}',NULL);
INSERT INTO "batches" VALUES(4,'bikeshare','batch-003','/data/incoming/batch-003.parquet','scored',1.7961779462604193688e+09,1.7961779462671203613e+09,1003,'0001',1,0.5,'{"drift": {"columns": {"temp": {"drifted": true, "score": 0.03}}}}',NULL);
INSERT INTO "batches" VALUES(5,'bikeshare','batch-004','/data/incoming/batch-004.parquet','scored',1.79617794627154946322e+09,1.7961779462755155563e+09,1004,'0001',1,0.5,'{"drift": {"columns": {"temp": {"drifted": true, "score": 0.04}}}}',NULL);
INSERT INTO "batches" VALUES(6,'bikeshare','batch-005','/data/incoming/batch-005.parquet','scored',1.79617794627953886992e+09,1.79617794628354072571e+09,1005,'0001',1,0.5,'{"drift": {"columns": {"temp": {"drifted": true, "score": 0.05}}}}',NULL);
INSERT INTO "batches" VALUES(7,'bikeshare','bad-000','/data/incoming/bad-000.csv','rejected',1.79617794628754925728e+09,1.79617794629151177401e+09,NULL,'0001',NULL,NULL,NULL,'column temp is missing');
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    batch_id TEXT,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    run_id TEXT,
    -- The signal that fired and every signal's reading (JSON), for `status` and audits.
    signal TEXT,
    readings TEXT
);
INSERT INTO "decisions" VALUES(1,'bikeshare','batch-000',1780000000.0,'no_action','decision 0',NULL,NULL,'[{"signal": "drift", "value": 0}]');
INSERT INTO "decisions" VALUES(2,'bikeshare','batch-001',1780000001.0,'no_action','decision 1',NULL,NULL,'[{"signal": "drift", "value": 1}]');
INSERT INTO "decisions" VALUES(3,'bikeshare','batch-002',1780000002.0,'no_action','decision 2',NULL,NULL,'[{"signal": "drift", "value": 2}]');
INSERT INTO "decisions" VALUES(4,'bikeshare','batch-003',1780000003.0,'no_action','decision 3',NULL,NULL,'[{"signal": "drift", "value": 3}]');
INSERT INTO "decisions" VALUES(5,'bikeshare','batch-004',1780000004.0,'no_action','decision 4',NULL,NULL,'[{"signal": "drift", "value": 4}]');
INSERT INTO "decisions" VALUES(6,'bikeshare','batch-005',1780000005.0,'triggered','decision 5','watcher__bikeshare__batch-005','drift','[{"signal": "drift", "value": 5}]');
CREATE TABLE incidents (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT,
    opened_at REAL NOT NULL,
    last_notified_at REAL,
    resolved_at REAL,
    details TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO "incidents" VALUES('drift:bikeshare','drift','bikeshare',1.79617794628382492069e+09,NULL,NULL,'{"streak": 3}');
CREATE TABLE label_periods (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    period TEXT NOT NULL,
    version TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    loss REAL NOT NULL,
    rows INTEGER NOT NULL,
    at REAL NOT NULL,
    UNIQUE (model, period, version)
);
INSERT INTO "label_periods" VALUES(1,'bikeshare','2026-01-01','0001','rmse',40.0,40.0,500,1780000000.0);
CREATE TABLE model_state (
    model TEXT PRIMARY KEY,
    reference_version TEXT,
    -- The drift streak counts only batches after this seq: reset on trigger and new reference.
    streak_reset_seq INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
INSERT INTO "model_state" VALUES('bikeshare','0001',0,1.79617794624390316013e+09);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    model TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    done_at REAL,
    last_error TEXT,
    -- Set in its own commit right before a mail's SMTP transaction, cleared when it is done:
    -- after a crash it names the one mail that may have been delivered already.
    sending_at REAL
);
INSERT INTO "outbox" VALUES(1,'trigger','watcher__bikeshare__batch-005','bikeshare','{"dag_id": "retrain_bikeshare", "run_id": "watcher__bikeshare__batch-005", "conf": {"model": "bikeshare"}}','pending',0,1.79617794628369736669e+09,1.79617794628369736669e+09,NULL,NULL,NULL);
INSERT INTO "outbox" VALUES(2,'alert','drift:bikeshare:1','bikeshare','{"subject": "drift"}','done',1,1.79617794628387618068e+09,1.79617794628387618068e+09,1.79617794629576086997e+09,NULL,NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    dag_id TEXT NOT NULL,
    state TEXT NOT NULL,
    conf TEXT NOT NULL,
    triggered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL,
    -- 1 once the end of the run was acted on (reload, alert), so restarts do not repeat it.
    handled INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "runs" VALUES('watcher__bikeshare__batch-005','bikeshare','retrain_bikeshare','success','{"model": "bikeshare"}',1.79617794629947280884e+09,1.7961779463034741878e+09,1.7961779463034741878e+09,0);
CREATE TABLE watermarks (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
INSERT INTO "watermarks" VALUES('deployed_at:bikeshare','1796177946.2439263',1.79617794624394035334e+09);
INSERT INTO "watermarks" VALUES('sql:bikeshare','{"next": "2026-01-01T00:00:00+00:00"}',1.79617794628389215467e+09);
CREATE INDEX decisions_model_at ON decisions (model, at);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX label_periods_model ON label_periods (model, version, id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('batches',7);
INSERT INTO "sqlite_sequence" VALUES('decisions',6);
INSERT INTO "sqlite_sequence" VALUES('outbox',2);
INSERT INTO "sqlite_sequence" VALUES('label_periods',1);
COMMIT;
