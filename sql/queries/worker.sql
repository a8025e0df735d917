-- Named queries of the worker (trr_assets/worker.py).

-- name: worker_try_lock
-- Session-level, so the lock outlives the job's own transactions and is
-- released by worker_unlock or, at the latest, when the session ends (a
-- crashed worker, a restarted server).
select pg_try_advisory_lock(%(key)s)

-- name: worker_unlock
select pg_advisory_unlock(%(key)s)
