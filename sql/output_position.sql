-- output_position() and snapshot_shares(): where a client tails the output
-- topic after reading rated_movies in the same snapshot, and which records
-- it already has.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position;

-- nothing published yet: no row
SELECT * FROM pgkafka_join.output_position();
SELECT * FROM pgkafka_join.snapshot_shares();

SELECT pgkafka_join.store_movies(ARRAY[7], ARRAY['Seven'], ARRAY[1995]);
-- ratings of partitions 0 and 2: their results are shares 0 and 2
SELECT pgkafka_join.store_ratings(ARRAY[7, 7, 7], ARRAY[1, 2, 3]::float8[],
                                  ARRAY[now(), now(), now()], ARRAY[0, 2, 0], ARRAY[0, 1, 2]);
SELECT share, count(*) FROM pgkafka_join.rated_movies GROUP BY share ORDER BY share;

-- the publisher recorded, for output partition 1, share 0 up to offset 4
-- and share 2 up to offset 6; for output partition 0, share 0 up to 11; a
-- row of another output topic is not shown
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
SELECT 'rated_movies', 1, 0, 4, min(id), now() FROM pgkafka_join.rated_movies;
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
SELECT 'rated_movies', 1, 2, 6, min(id), now() FROM pgkafka_join.rated_movies;
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
SELECT 'rated_movies', 0, 0, 11, min(id) + 1, now() FROM pgkafka_join.rated_movies;
INSERT INTO pgkafka_join.output_position (topic, kafka_partition, share, next_offset, last_id, updated_at)
VALUES ('old_topic', 0, 0, 99, 1, now());

-- one row per output partition, in order, from the furthest offset recorded
SELECT * FROM pgkafka_join.output_position();
-- per share, the snapshot's highest id
SELECT s.share, s.last_id = (SELECT max(id) FROM pgkafka_join.rated_movies r
                              WHERE r.share = s.share) AS is_max_id
  FROM pgkafka_join.snapshot_shares() s;
-- what the publisher recorded per share
SELECT share, last_id = (SELECT min(id) + 1 FROM pgkafka_join.rated_movies) AS second_id
  FROM pgkafka_join.published_ids() ORDER BY share;

TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position;
