-- retention: drop_partitions drops whole months older than an age, and
-- refuses what may still be needed
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.ratings, pgkafka_join.rated_movies, pgkafka_join.output_position;
-- start from no old partitions (what earlier tests made), and check that
-- none is left
SELECT 1 AS cleared FROM (SELECT count(*) FROM pgkafka_join.drop_partitions('2 months')) d;
SELECT count(*) AS older_partitions_left
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass)
   AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
       <= now() - interval '2 months';

SELECT count(*) FROM pgkafka_join.create_partitions('2020-01-15', '2020-03-15');

-- too young: ratings of that age may still be published
SELECT * FROM pgkafka_join.drop_partitions('1 day');
SELECT * FROM pgkafka_join.drop_partitions('-1 day');

-- a result in 2020-02 that the publisher has not sent yet blocks its month
INSERT INTO pgkafka_join.rated_movies
VALUES (nextval('pgkafka_join.rated_movies_id_seq'), 1, 'One', 2001, 5, '2020-02-10Z', now(), 0, 0, 0);
SELECT * FROM pgkafka_join.drop_partitions('2 months');
-- once published, it goes
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
SELECT current_setting('pgkafka_join.output_topic'), 0, 0, 1, max(id), now()
  FROM pgkafka_join.rated_movies;
SELECT * FROM pgkafka_join.drop_partitions('2 months') ORDER BY 1;
SELECT count(*) FROM pgkafka_join.rated_movies;

-- nothing older is left; this month's partitions stay
SELECT * FROM pgkafka_join.drop_partitions('2 months');
SELECT count(*) > 0 AS current_month_kept
  FROM pg_class WHERE relname = 'ratings' || to_char(now() AT TIME ZONE 'UTC', '_"y"YYYY"m"MM');

TRUNCATE pgkafka_join.rated_movies, pgkafka_join.output_position;
