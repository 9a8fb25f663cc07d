-- A job's run between its `start` and its success or failure (issue 16, point 7): when it
-- started, and when it is down unless it finishes first (`max_runtime`). While a run is timed,
-- `deadline` is the earlier of the two, so the monitor's one question (which deadlines have
-- passed) catches a hung job too.
ALTER TABLE heartbeats ADD COLUMN started_at BIGINT;
ALTER TABLE heartbeats ADD COLUMN run_deadline BIGINT;
