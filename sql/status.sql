--
-- status: the views answer without a running worker, and counting the
-- ratings waiting for their movie stops at 100000 (100001 means "more"),
-- so a scrape stays cheap when millions wait.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.ratings;

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

-- input_status shows why a partition is not consumed (none here)
SELECT count(*) FROM pgkafka_join.input_status WHERE problem IS NOT NULL;

TRUNCATE pgkafka_join.ratings;
