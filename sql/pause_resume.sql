-- pause, resume and reset_offsets, as the worker sees them through
-- begin_batch()
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.input_offsets;
SELECT pgkafka_join.store_offsets(ARRAY['movies', 'movies', 'ratings'], ARRAY[0, 1, 0],
                                  ARRAY[100, 200, 300]::bigint[]);

-- running: a batch may be stored; begin_batch() gives the offsets generation
SELECT pgkafka_join.begin_batch();

-- offsets can only be reset while paused
SELECT pgkafka_join.reset_offsets('movies', 0, 5);

SELECT pgkafka_join.pause();
SELECT paused FROM pgkafka_join.control;
-- paused: NULL, the worker drops its batch unstored
SELECT pgkafka_join.begin_batch();
-- pausing twice is harmless
SELECT pgkafka_join.pause();

-- one partition to an offset, a partition never consumed yet, a whole topic
-- to its beginning (the rows go: the worker starts those from the beginning)
SELECT pgkafka_join.reset_offsets('movies', 0, 5);
SELECT pgkafka_join.reset_offsets('movies', 7, 42);
SELECT pgkafka_join.reset_offsets('ratings');
SELECT pgkafka_join.reset_offsets('movies', 1, -1);
SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets ORDER BY 1, 2;
-- every partition of a topic to one offset
SELECT pgkafka_join.reset_offsets('movies', NULL, 10);
SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets ORDER BY 1, 2;

SELECT pgkafka_join.resume();
-- four resets since: a worker that assigned its partitions at generation 0
-- drops its next batch and assigns them again from the stored offsets
SELECT pgkafka_join.begin_batch();
SELECT paused FROM pgkafka_join.control;
TRUNCATE pgkafka_join.input_offsets;
