-- output_position(): where a client tails the output topic after reading
-- rated_movies in the same snapshot.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position;

-- nothing published yet: no row
SELECT * FROM pgkafka_join.output_position();

SELECT pgkafka_join.store_movies(ARRAY[7], ARRAY['Seven'], ARRAY[1995]);
SELECT pgkafka_join.store_ratings(ARRAY[7, 7, 7], ARRAY[1, 2, 3]::float8[],
                                  ARRAY[now(), now(), now()], ARRAY[0, 0, 0], ARRAY[0, 1, 2]);

-- the publisher recorded partition 1 (first result) and partition 0 (second);
-- a row of another output topic is not shown
INSERT INTO pgkafka_join.output_position
SELECT 'rated_movies', 1, 4, min(id), now() FROM pgkafka_join.rated_movies;
INSERT INTO pgkafka_join.output_position
SELECT 'rated_movies', 0, 11, min(id) + 1, now() FROM pgkafka_join.rated_movies;
INSERT INTO pgkafka_join.output_position VALUES ('old_topic', 0, 99, 1, now());

-- one row per partition, in order; snapshot_last_id is the snapshot's max(id)
SELECT o.topic, o.kafka_partition, o.start_offset,
       o.snapshot_last_id = (SELECT max(id) FROM pgkafka_join.rated_movies) AS is_max_id
  FROM pgkafka_join.output_position() o;

TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position;
