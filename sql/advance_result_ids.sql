--
-- advance_result_ids: the way out when the output topic is ahead of
-- PostgreSQL.  Results of the shares found ahead (control.ahead_shares,
-- written by their worker) that PostgreSQL does not know to be published
-- (above output_position) and up to the published position are numbered
-- anew after it, in their order; the sequence goes on after them.  The
-- results of other shares keep their ids: their workers go on publishing.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.rated_movies, pgkafka_join.output_position;
SELECT setval('pgkafka_join.rated_movies_id_seq', 5);

-- results 1..5, of shares 0 (odd ids) and 1 (even ids)
INSERT INTO pgkafka_join.rated_movies
SELECT i, 100 + i, 'Movie ' || i, 2000, 4, now(), now(), 0, i, 1 - i % 2
  FROM generate_series(1, 5) i;
-- PostgreSQL recorded results up to 3 as published for share 0, up to 2
-- for share 1 (so 4 of share 1 is not known to be published)
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
VALUES (current_setting('pgkafka_join.output_topic'), 0, 0, 2, 3, now()),
       (current_setting('pgkafka_join.output_topic'), 0, 1, 3, 2, now());

-- Share 0's worker found Kafka's position at 10: 5 becomes 11; 4, of
-- share 1, whose worker may be publishing it now, stays 4
UPDATE pgkafka_join.control SET ahead_shares = '{0}';
SELECT pgkafka_join.advance_result_ids(10);
SELECT id, movie_id, share FROM pgkafka_join.rated_movies ORDER BY id;
SELECT ahead_shares FROM pgkafka_join.control;
SELECT nextval('pgkafka_join.rated_movies_id_seq');

-- a position below what is numbered already changes nothing
SELECT pgkafka_join.advance_result_ids(4);
SELECT id FROM pgkafka_join.rated_movies ORDER BY id;

SELECT pgkafka_join.advance_result_ids(-1);
SELECT pgkafka_join.advance_result_ids(NULL);

-- too close to the end of the sequence (the workers' nextval() would fail
-- soon after): refused, nothing renumbered
SELECT pgkafka_join.advance_result_ids(9223372036854775000);
SELECT pgkafka_join.advance_result_ids(9223370937343148032);
-- a sequence given a cache would hand out values below past: refused
ALTER SEQUENCE pgkafka_join.rated_movies_id_seq CACHE 20;
SELECT pgkafka_join.advance_result_ids(20);
ALTER SEQUENCE pgkafka_join.rated_movies_id_seq CACHE 1;
SELECT id FROM pgkafka_join.rated_movies ORDER BY id;

TRUNCATE pgkafka_join.rated_movies, pgkafka_join.output_position;
