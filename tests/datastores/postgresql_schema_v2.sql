-- The tables of PostgreSQLDataStore schema version 2 (asched before schedule revisions),
-- kept to test the migration; {schema} is the quoted schema name.
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE {schema}.metadata (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE {schema}.tasks (
    id text PRIMARY KEY,
    func_ref text,
    job_executor text NOT NULL,
    max_running_jobs integer,
    misfire_grace_time double precision,
    metadata jsonb NOT NULL
);
CREATE TABLE {schema}.schedules (
    id text PRIMARY KEY,
    task_id text NOT NULL,
    trigger jsonb NOT NULL,
    args bytea NOT NULL,
    kwargs bytea NOT NULL,
    name text,
    paused boolean NOT NULL,
    coalesce text NOT NULL,
    misfire_grace_time double precision,
    max_jitter double precision,
    max_running_jobs integer,
    job_executor text,
    job_result_expiration_time double precision NOT NULL,
    metadata jsonb NOT NULL,
    next_fire_time timestamptz,
    next_run_time timestamptz,
    last_fire_time timestamptz,
    acquired_by text,
    acquired_until timestamptz
);
CREATE TABLE {schema}.jobs (
    id uuid PRIMARY KEY,
    task_id text NOT NULL,
    args bytea NOT NULL,
    kwargs bytea NOT NULL,
    schedule_id text,
    scheduled_fire_time timestamptz,
    jitter double precision NOT NULL,
    start_deadline timestamptz,
    job_executor text,
    result_expiration_time double precision NOT NULL,
    created_at timestamptz NOT NULL,
    acquired_by text,
    acquired_until timestamptz,
    task_slot boolean NOT NULL DEFAULT false,
    schedule_slot boolean NOT NULL DEFAULT false
);
CREATE INDEX jobs_running
    ON {schema}.jobs (task_id, schedule_id) WHERE acquired_by IS NOT NULL;
CREATE INDEX jobs_deadline
    ON {schema}.jobs (start_deadline) WHERE acquired_by IS NULL AND start_deadline IS NOT NULL;
CREATE TABLE {schema}.job_results (
    job_id uuid PRIMARY KEY,
    outcome text NOT NULL,
    return_value bytea,
    exception bytea,
    started_at timestamptz,
    finished_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX job_results_expiry ON {schema}.job_results (expires_at);

CREATE TABLE {schema}.job_slots (
    kind text NOT NULL CHECK (kind IN ('task', 'schedule')),
    id text NOT NULL,
    taken integer NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX job_slots_taken ON {schema}.job_slots (kind, id) WHERE taken > 0;

CREATE INDEX schedules_due ON {schema}.schedules (next_run_time, id)
    WHERE NOT paused AND acquired_by IS NULL AND next_run_time IS NOT NULL;
CREATE INDEX schedules_leased ON {schema}.schedules (acquired_until)
    WHERE acquired_by IS NOT NULL AND NOT paused;
CREATE INDEX jobs_queued ON {schema}.jobs (created_at, id) WHERE acquired_by IS NULL;
