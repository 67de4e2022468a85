--
-- rejected: store_rejected keeps each message that could not be accepted,
-- byte for byte, with its position and reason; store_offsets records the
-- next offset to consume per topic and partition, replacing the last one.
-- Both take the batch transaction's now() as their time stamp.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.rejected_messages, pgkafka_join.input_offsets;

--
-- store_rejected
--
BEGIN;
SELECT pgkafka_join.store_rejected(
    '{movies, ratings, ratings, movies}',
    '{0, 3, 3, 1}',
    '{5, 6, 7, 8}',
    ARRAY['\x3432'::bytea, NULL, '\x00ff'::bytea, 'x'::bytea],
    ARRAY[convert_to('{"id": }', 'UTF8'), NULL, '\xff'::bytea, ''::bytea],
    '{"value is not valid JSON", "a rating cannot be a tombstone", "value is not valid UTF-8", "value is empty"}');
SELECT topic, kafka_partition, kafka_offset, key, payload, reason, received_at = now() AS received_now
  FROM pgkafka_join.rejected_messages
 ORDER BY topic, kafka_partition, kafka_offset;
COMMIT;

-- A message rejected again (consumed again after reset_offsets() or a
-- crash) replaces its row: one row per position, the last reason wins, also
-- within one batch
SELECT pgkafka_join.store_rejected('{movies, movies}', '{0, 0}', '{5, 5}', '{NULL, NULL}',
                                   ARRAY[NULL, '\x01'::bytea], '{"first", "again"}');
SELECT topic, kafka_partition, kafka_offset, key, payload, reason
  FROM pgkafka_join.rejected_messages
 WHERE topic = 'movies' AND kafka_partition = 0;
SELECT count(*) FROM pgkafka_join.rejected_messages;

--
-- delete_rejected: retention of rejected messages by age
--
UPDATE pgkafka_join.rejected_messages SET received_at = now() - interval '10 days'
 WHERE kafka_offset IN (6, 7);
SELECT pgkafka_join.delete_rejected('7 days');
SELECT topic, kafka_partition, kafka_offset FROM pgkafka_join.rejected_messages ORDER BY 1, 2, 3;
SELECT pgkafka_join.delete_rejected('-1 day');
SELECT pgkafka_join.delete_rejected(NULL);

--
-- store_offsets: inserts the positions not seen yet, updates the others
--
BEGIN;
SELECT pgkafka_join.store_offsets('{movies, ratings, ratings}', '{0, 0, 1}', '{10, 20, 5}');
SELECT topic, kafka_partition, next_offset, updated_at = now() AS updated_now
  FROM pgkafka_join.input_offsets ORDER BY topic, kafka_partition;
COMMIT;

BEGIN;
SELECT pgkafka_join.store_offsets('{ratings, movies}', '{0, 1}', '{25, 3}');
SELECT topic, kafka_partition, next_offset, updated_at = now() AS updated_now
  FROM pgkafka_join.input_offsets ORDER BY topic, kafka_partition;
COMMIT;

-- Leave the tables empty
TRUNCATE pgkafka_join.rejected_messages, pgkafka_join.input_offsets;
