--
-- recover_results: results found on the output topic that PostgreSQL lost
-- (a failover to an asynchronous standby, a restore) are taken back under
-- their ids, with the fields they were published with; their ratings are
-- recorded as joined, now if stored, or when consumed again (store_ratings
-- then makes no second result), and new results are numbered after them.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position, pgkafka_join.recovered_ratings,
         pgkafka_join.input_offsets;
SELECT setval('pgkafka_join.rated_movies_id_seq', 10);

-- a rating of movie 7 at partition 0, offset 10, waiting for its movie,
-- and the offset after it, stored with it as the worker does
SELECT pgkafka_join.store_ratings('{7}', '{2.5}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{10}') AS produced;
INSERT INTO pgkafka_join.input_offsets VALUES ('ratings', 0, 11, now());

-- The output topic holds two results PostgreSQL does not: id 20 for that
-- rating (its movie came, and was lost), id 21 for a rating of movie 8 at
-- partition 0, offset 11, which PostgreSQL never stored; at output
-- partitions 0 and 1
SELECT pgkafka_join.recover_results('rated_movies', '{20, 21}', '{0, 0}', '{0, 0}', '{10, 11}',
    ARRAY[json_build_object('id', 7, 'title', 'Seven', 'release_year', 1995, 'rating', 2.5,
                            'rated_at', '2026-12-01T10:00:00.123456Z')::text,
          json_build_object('id', 8, 'title', 'Eight "8"', 'release_year', null, 'rating', 4.25,
                            'rated_at', '2026-12-02T11:30:00Z')::text],
    ARRAY['2026-12-03 00:00:00+00', '2026-12-03 00:00:01+00']::timestamptz[],
    '{0, 1}', '{100, 50}') AS taken_back;

-- the rows they were, as published
SELECT id, movie_id, title, release_year, rating, rated_at AT TIME ZONE 'UTC' AS rated_at,
       joined_at AT TIME ZONE 'UTC' AS joined_at, kafka_partition, kafka_offset, share
  FROM pgkafka_join.rated_movies ORDER BY id;
-- the stored rating is joined; the other is remembered until it comes
SELECT movie_id, kafka_partition, kafka_offset, joined FROM pgkafka_join.ratings;
SELECT kafka_partition, kafka_offset, result_id FROM pgkafka_join.recovered_ratings;
-- output_position and the sequence are past them
SELECT kafka_partition, share, next_offset, last_id FROM pgkafka_join.output_position
 ORDER BY kafka_partition;
SELECT last_value FROM pgkafka_join.rated_movies_id_seq;

-- Movies 7 and 8 come (again): nothing is published, the rating of movie 7
-- is joined already and that of movie 8 not stored yet
SELECT pgkafka_join.store_movies('{7, 8}', '{"Seven", "Eight"}', '{1995, 2001}') AS produced;

-- The rating of movie 8 is consumed again, with one that came after it:
-- the first is stored as joined with no second result, the other is
-- published under the next id
SELECT pgkafka_join.store_ratings('{8, 8}', '{4.25, 1}',
                                  ARRAY[now() - interval '1 day', now()],
                                  '{0, 0}', '{11, 12}') AS produced;
SELECT movie_id, kafka_partition, kafka_offset, joined FROM pgkafka_join.ratings
 ORDER BY kafka_offset;
SELECT id, movie_id, title, rating, kafka_offset FROM pgkafka_join.rated_movies ORDER BY id;
SELECT count(*) AS still_remembered FROM pgkafka_join.recovered_ratings;

-- Found again (a second failover before the next commit): nothing twice
SELECT pgkafka_join.recover_results('rated_movies', '{21}', '{0}', '{0}', '{11}',
    ARRAY[json_build_object('id', 8, 'title', 'Eight "8"', 'release_year', null, 'rating', 4.25,
                            'rated_at', '2026-12-02T11:30:00Z')::text],
    ARRAY['2026-12-03 00:00:01+00']::timestamptz[], '{1}', '{50}') AS taken_back;
SELECT count(*) AS results, count(DISTINCT id) AS ids FROM pgkafka_join.rated_movies;

-- A rating this server consumed already, but did not store (its partition
-- came here with its offsets, from a server that stored it): taken back,
-- not remembered, since it will not be consumed here again
INSERT INTO pgkafka_join.input_offsets VALUES ('ratings', 1, 50, now());
SELECT pgkafka_join.recover_results('rated_movies', '{30}', '{1}', '{1}', '{40}',
    ARRAY[json_build_object('id', 8, 'title', 'Eight', 'release_year', 2001, 'rating', 3,
                            'rated_at', '2026-12-02T11:30:00Z')::text],
    ARRAY['2026-12-03 00:00:02+00']::timestamptz[], '{2}', '{7}') AS taken_back;
SELECT id, share, kafka_partition, kafka_offset FROM pgkafka_join.rated_movies WHERE id = 30;
SELECT count(*) AS remembered FROM pgkafka_join.recovered_ratings;

TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies,
         pgkafka_join.output_position, pgkafka_join.recovered_ratings,
         pgkafka_join.input_offsets;
