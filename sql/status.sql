--
-- status: the views show the worker as it is, here idle without brokers,
-- and counting the ratings waiting for their movie stops at 100000 (100001
-- means "more"), so a scrape stays cheap when millions wait.  (The e2e
-- tests check the views of workers that consume and publish.)
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.ratings;

-- the launcher starts the worker within retry_interval of the database's
-- creation: wait for it to say it is idle
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN (SELECT state FROM pgkafka_join.status) = 'idle: no brokers set';
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT worker, pid IS NOT NULL AS has_pid, pid <> pg_backend_pid() AS other_process, state,
       paused, messages_total, results_total, published_total, rejoined_total, owned_partitions
  FROM pgkafka_join.status;
SELECT pending_ratings, partitions, stopped_partitions, input_lag FROM pgkafka_join.status;

INSERT INTO pgkafka_join.ratings
SELECT i, 4, now() - interval '1 hour', 0, i, now(), false
  FROM generate_series(1, 99999) i;
SELECT pending_ratings FROM pgkafka_join.status;
INSERT INTO pgkafka_join.ratings
SELECT i, 4, now() - interval '1 hour', 0, i, now(), false
  FROM generate_series(100000, 100010) i;
SELECT pending_ratings FROM pgkafka_join.status;
-- joined ones and those outside the window are not pending
UPDATE pgkafka_join.ratings SET joined = true WHERE movie_id <= 100000;
SELECT pending_ratings FROM pgkafka_join.status;

-- without brokers no partition is assigned: input_status lists none
SELECT count(*) FROM pgkafka_join.input_status;

TRUNCATE pgkafka_join.ratings;
