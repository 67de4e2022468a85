--
-- join_rule: a rating of movie m at time t is published (one row in
-- rated_movies) exactly once if at some moment T, the now() of a storing
-- transaction, both the rating and movie m are stored and
-- T - t <= pgkafka_join.join_window.  It carries the movie's fields as
-- stored at the first such T.  store_movies and store_ratings return the
-- number of rated movies they produced.
--
-- Time stamps are relative to now(); a time stamp computed in the same
-- statement as the store call shares its now(), which makes the window's
-- edge exact.  Only columns that do not depend on the date are shown.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;

-- The default window, set in no configuration file here
SHOW pgkafka_join.join_window;
SELECT pgkafka_join.join_window();

-- The rated movies, and the ratings with their joined flag
CREATE TEMP VIEW published AS
SELECT movie_id, title, release_year, rating, kafka_partition, kafka_offset
  FROM pgkafka_join.rated_movies;
CREATE TEMP VIEW stored AS
SELECT movie_id, rating, kafka_partition, kafka_offset, joined
  FROM pgkafka_join.ratings;

--
-- 1. The movie is stored: a rating inside the window is published by
--    store_ratings, at once, with the movie's fields
--
SELECT pgkafka_join.store_movies('{1}', '{"Heat"}', '{1995}') AS produced;
SELECT pgkafka_join.store_ratings('{1}', '{4.5}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{100}') AS produced;
SELECT * FROM published WHERE movie_id = 1;
SELECT * FROM stored WHERE movie_id = 1;
-- joined_at is the now() of the storing transaction
SELECT joined_at = rated_at + interval '1 day' AS joined_at_is_store_time
  FROM pgkafka_join.rated_movies WHERE movie_id = 1;

--
-- 2. The rating comes first: it waits (joined = false) and is published by
--    store_movies when its movie comes, with the movie's fields
--
SELECT pgkafka_join.store_ratings('{2}', '{3}', ARRAY[now() - interval '2 days'],
                                  '{1}', '{101}') AS produced;
SELECT * FROM published WHERE movie_id = 2;
SELECT * FROM stored WHERE movie_id = 2;
SELECT pgkafka_join.store_movies('{2}', '{"Alien"}', '{1979}') AS produced;
SELECT * FROM published WHERE movie_id = 2;
SELECT * FROM stored WHERE movie_id = 2;
SELECT joined_at > rated_at + interval '2 days' AS joined_when_movie_came
  FROM pgkafka_join.rated_movies WHERE movie_id = 2;

--
-- 3. The movie never comes: the rating is stored and waits, never
--    published (checked again at the end, after other movies came)
--
SELECT pgkafka_join.store_ratings('{3}', '{5}', ARRAY[now() - interval '1 hour'],
                                  '{0}', '{102}') AS produced;
SELECT * FROM published WHERE movie_id = 3;
SELECT * FROM stored WHERE movie_id = 3;

--
-- 4. A rating already older than the window when it comes is stored and
--    never published, though its movie is there, nor when the movie changes
--
SELECT pgkafka_join.store_movies('{4}', '{"Brazil"}', '{NULL}') AS produced;
SELECT pgkafka_join.store_ratings('{4}', '{2}', ARRAY[now() - interval '40 days'],
                                  '{0}', '{103}') AS produced;
SELECT pgkafka_join.store_movies('{4}', '{"Brazil (director''s cut)"}', '{1985}') AS produced;
SELECT * FROM published WHERE movie_id = 4;
SELECT * FROM stored WHERE movie_id = 4;

--
-- 5. The window's edge, the movie being stored: T - t equal to the window
--    is inside, one microsecond more is outside; a rating from the future
--    is inside
--
SELECT pgkafka_join.store_movies('{5}', '{"Ran"}', '{1985}') AS produced;
SELECT pgkafka_join.store_ratings(
    '{5, 5, 5, 5}', '{1, 2, 3, 4}',
    ARRAY[now() - interval '1 month',
          now() - interval '1 month' - interval '1 microsecond',
          now(),
          now() + interval '1 day'],
    '{0, 0, 0, 0}', '{104, 105, 106, 107}') AS produced;
SELECT * FROM published WHERE movie_id = 5 ORDER BY kafka_offset;
SELECT * FROM stored WHERE movie_id = 5 ORDER BY kafka_offset;

--
-- 6. Waiting ratings whose window has passed when the movie comes are not
--    published: one 40 days old, and one that was half a second inside the
--    window when stored, the movie coming more than a second later
--
SELECT pgkafka_join.store_ratings(
    '{6, 6, 6}', '{1, 2, 3}',
    ARRAY[now() - interval '40 days',
          now() - interval '1 month' + interval '0.5 seconds',
          now() - interval '1 day'],
    '{0, 0, 0}', '{108, 109, 110}') AS produced;
SELECT pg_sleep(1.0);
SELECT pgkafka_join.store_movies('{6}', '{"Solaris"}', '{1972}') AS produced;
SELECT * FROM published WHERE movie_id = 6;
SELECT * FROM stored WHERE movie_id = 6 ORDER BY kafka_offset;

--
-- 7. A movie changed after a rating was published: nothing is retracted
--    nor published again; the published row keeps the old fields, later
--    ratings get the new ones
--
SELECT pgkafka_join.store_movies('{7}', '{"Old Title"}', '{2000}') AS produced;
SELECT pgkafka_join.store_ratings('{7}', '{1}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{111}') AS produced;
SELECT pgkafka_join.store_movies('{7}', '{"New Title"}', '{2001}') AS produced;
SELECT * FROM published WHERE movie_id = 7;
SELECT id, title, release_year FROM pgkafka_join.movies WHERE id = 7;
SELECT pgkafka_join.store_ratings('{7}', '{2}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{112}') AS produced;
SELECT * FROM published WHERE movie_id = 7 ORDER BY kafka_offset;

--
-- 8. A tombstone (NULL title) deletes the movie; what was published stays;
--    later ratings wait for the movie to come again
--
SELECT pgkafka_join.store_movies('{8}', '{"Doomed"}', '{1999}') AS produced;
SELECT pgkafka_join.store_ratings('{8}', '{1}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{113}') AS produced;
SELECT pgkafka_join.store_movies('{8}', '{NULL}', '{NULL}') AS produced;
SELECT count(*) AS movie_8_stored FROM pgkafka_join.movies WHERE id = 8;
SELECT * FROM published WHERE movie_id = 8;
SELECT pgkafka_join.store_ratings('{8}', '{2}', ARRAY[now() - interval '1 day'],
                                  '{0}', '{114}') AS produced;
SELECT * FROM stored WHERE movie_id = 8 ORDER BY kafka_offset;
SELECT pgkafka_join.store_movies('{8}', '{"Reborn"}', '{2020}') AS produced;
SELECT * FROM published WHERE movie_id = 8 ORDER BY kafka_offset;
SELECT * FROM stored WHERE movie_id = 8 ORDER BY kafka_offset;
-- A tombstone for a movie never stored changes nothing
SELECT pgkafka_join.store_movies('{80}', '{NULL}', '{NULL}') AS produced;
SELECT count(*) AS movie_80_stored FROM pgkafka_join.movies WHERE id = 80;

--
-- 9. Within one store_movies batch the last message of each id wins: a
--    tombstone then a movie stores the movie, a movie then a tombstone
--    deletes it, two versions store the second.  The movie of a waiting
--    rating is the one stored at commit.
--
SELECT pgkafka_join.store_movies('{9, 12}', '{"Nine", "Twelve"}', '{NULL, NULL}') AS produced;
SELECT pgkafka_join.store_ratings('{9, 10, 11}', '{1, 2, 3}',
                                  ARRAY[now() - interval '1 day', now() - interval '1 day',
                                        now() - interval '1 day'],
                                  '{0, 0, 0}', '{115, 116, 117}') AS produced;
SELECT pgkafka_join.store_movies(
    '{9, 10, 11, 12, 9, 10, 11, 12}',
    '{NULL, "Ten", "Eleven draft", "Twelve v2", "Nine again", NULL, "Eleven", NULL}',
    '{NULL, 2010, 2011, 2012, 2009, NULL, 2011, NULL}') AS produced;
SELECT id, title, release_year FROM pgkafka_join.movies WHERE id BETWEEN 9 AND 12 ORDER BY id;
SELECT * FROM published WHERE movie_id BETWEEN 9 AND 12 ORDER BY movie_id;
SELECT * FROM stored WHERE movie_id BETWEEN 9 AND 12 ORDER BY movie_id;

--
-- 10. A batch as the worker stores it: movies, then ratings, in one
--     transaction; a rating whose movie is in the same batch is published
--
BEGIN;
SELECT pgkafka_join.store_movies('{13}', '{"Stalker"}', '{1979}') AS produced;
SELECT pgkafka_join.store_ratings('{13}', '{5}', ARRAY[now() - interval '1 day'],
                                  '{1}', '{118}') AS produced;
COMMIT;
SELECT * FROM published WHERE movie_id = 13;

--
-- 11. The count returned is that of the rated movies produced by the batch
--
SELECT pgkafka_join.store_ratings(
    '{1, 1, 3, 7, 99}', '{1, 2, 3, 4, 5}',
    ARRAY[now() - interval '2 days', now() - interval '40 days', now(), now(), now()],
    '{1, 1, 1, 1, 1}', '{119, 120, 121, 122, 123}') AS produced;
SELECT pgkafka_join.store_movies('{99, 1}', '{"Late", "Heat"}', '{NULL, 1995}') AS produced;
SELECT pgkafka_join.store_movies('{}', '{}', '{}') AS produced;
SELECT pgkafka_join.store_ratings('{}', '{}', '{}', '{}', '{}') AS produced;

--
-- 12. store_ratings takes arrays of one length without nulls.  It looks a
--     movie up in the catalog partition that holds it, also when a DBA
--     partitioned that partition again by hash; another layout is refused
--     with a hint.  (Each case rolled back.)
--
SELECT pgkafka_join.store_ratings('{1, 2}', '{1}', ARRAY[now(), now()], '{0, 0}', '{124, 125}');
SELECT pgkafka_join.store_ratings('{1}', '{NULL}', ARRAY[now()], '{0}', '{124}');
CREATE FUNCTION split_partition_of(id bigint, layout text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    part regclass := (SELECT tableoid::regclass FROM pgkafka_join.movies m WHERE m.id = split_partition_of.id);
    bound text := (SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = part);
BEGIN
    EXECUTE format('ALTER TABLE pgkafka_join.movies DETACH PARTITION %s', part);
    EXECUTE format('CREATE TABLE pgkafka_join.movies_split PARTITION OF pgkafka_join.movies %s '
                   'PARTITION BY %s (id)', bound, layout);
    IF layout = 'HASH' THEN
        CREATE TABLE pgkafka_join.movies_split_0 PARTITION OF pgkafka_join.movies_split
            FOR VALUES WITH (MODULUS 2, REMAINDER 0);
        CREATE TABLE pgkafka_join.movies_split_1 PARTITION OF pgkafka_join.movies_split
            FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    ELSE
        CREATE TABLE pgkafka_join.movies_split_all PARTITION OF pgkafka_join.movies_split
            FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
    END IF;
    EXECUTE format('INSERT INTO pgkafka_join.movies_split SELECT * FROM %s', part);
END
$$;
BEGIN;
SELECT split_partition_of(13, 'HASH');
SELECT pgkafka_join.store_ratings('{13}', '{4}', ARRAY[now()], '{1}', '{124}') AS produced;
SELECT title FROM published WHERE kafka_offset = 124;
ROLLBACK;
BEGIN;
SELECT split_partition_of(13, 'RANGE');
SELECT pgkafka_join.store_ratings('{13}', '{4}', ARRAY[now()], '{1}', '{124}') AS produced;
ROLLBACK;
DROP FUNCTION split_partition_of(bigint, text);

--
-- Over all of the above: every rated movie is one rating, published once;
-- a rating is joined exactly when it was published; movie 3 never came
--
SELECT count(*) AS published_twice
  FROM (SELECT kafka_partition, kafka_offset FROM pgkafka_join.rated_movies
         GROUP BY 1, 2 HAVING count(*) > 1) AS d;
SELECT count(*) AS published_without_rating
  FROM pgkafka_join.rated_movies m
 WHERE NOT EXISTS (SELECT 1 FROM pgkafka_join.ratings r
                    WHERE (r.kafka_partition, r.kafka_offset) = (m.kafka_partition, m.kafka_offset)
                      AND r.movie_id = m.movie_id AND r.rating = m.rating
                      AND r.rated_at = m.rated_at);
SELECT count(*) AS joined_flag_wrong
  FROM pgkafka_join.ratings r
 WHERE r.joined <> EXISTS (SELECT 1 FROM pgkafka_join.rated_movies m
                            WHERE (m.kafka_partition, m.kafka_offset) =
                                  (r.kafka_partition, r.kafka_offset));
SELECT * FROM stored WHERE movie_id = 3 ORDER BY kafka_offset;

-- Result ids strictly increase in the order of publication (commit order):
-- no result of a later transaction has a lower id
SELECT count(*) = count(DISTINCT id) AS ids_unique
  FROM pgkafka_join.rated_movies;
SELECT count(*) AS ids_out_of_order
  FROM pgkafka_join.rated_movies a
  JOIN pgkafka_join.rated_movies b ON a.joined_at < b.joined_at
 WHERE a.id >= b.id;

-- Every rated movie, by publishing transaction
SELECT dense_rank() OVER (ORDER BY joined_at) AS transaction, movie_id, title,
       release_year, rating, kafka_partition, kafka_offset
  FROM pgkafka_join.rated_movies
 ORDER BY joined_at, kafka_partition, kafka_offset;

--
-- The value published for a rated movie: JSON with the movie's fields, the
-- rating and rated_at in RFC 3339, UTC, whatever the session's time zone
--
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;
SELECT pgkafka_join.create_partitions_for(ARRAY['2026-11-20 10:00:00+00'::timestamptz]);
INSERT INTO pgkafka_join.rated_movies
       (id, movie_id, title, release_year, rating, rated_at, joined_at, kafka_partition, kafka_offset, share)
VALUES (1, 42, 'The "Quoted" \ Title', NULL, 4.5, '2026-11-20 10:00:00+00', '2026-11-20 10:00:01+00', 0, 1, 0),
       (2, 43, 'Plain', 1972, 3, '2026-11-20 10:00:00.25+00', '2026-11-20 10:00:01+00', 0, 2, 0),
       (3, 44, E'Tab\tnew line\n', 2000, 0.1, '2026-11-20 05:00:00-05', '2026-11-20 10:00:01+00', 0, 3, 0);
SET TimeZone = 'America/New_York';
SELECT id, pgkafka_join.output_value(r) FROM pgkafka_join.rated_movies r ORDER BY id;
-- It is JSON, and its title reads back as stored
SELECT id, pgkafka_join.output_value(r)::jsonb ->> 'title' = r.title AS title_round_trips
  FROM pgkafka_join.rated_movies r ORDER BY id;
-- The same text as the SQL expression that wrote it in version 1.0, over
-- awkward values: extreme ids, non-ASCII and control characters, a negative
-- year, tiny, huge and inexact ratings, microseconds, the first second of
-- 1970 and the last of 9999
SELECT pgkafka_join.create_partitions_for(ARRAY['1970-01-01 00:00:00.000001+00'::timestamptz,
                                                 '9999-12-31 23:59:59.999999+00']);
INSERT INTO pgkafka_join.rated_movies
       (id, movie_id, title, release_year, rating, rated_at, joined_at, kafka_partition, kafka_offset, share)
VALUES (4, 9223372036854775807, E'\u00c9t\u00e9 \u6620\u753b \x01\x1f / \\u0041', -5, 1e-300,
        '1970-01-01 00:00:00.000001+00', '2026-11-20 10:00:01+00', 0, 4, 0),
       (5, 0, '', 0, 123456789.123456789, '2026-11-20 23:59:59.999999+14', '2026-11-20 10:00:01+00', 0, 5, 0),
       (6, 1, ' ', NULL, -1.7976931348623157e308, '9999-12-31 23:59:59.999999+00', '2026-11-20 10:00:01+00', 0, 6, 0);
SET TimeZone = 'Asia/Kolkata';
SELECT id, pgkafka_join.output_value(r) FROM pgkafka_join.rated_movies r WHERE id > 3 ORDER BY id;
SELECT id, pgkafka_join.output_value(r) =
       pg_catalog.format('{"id":%s,"title":%s,"release_year":%s,"rating":%s,"rated_at":"%sZ"}',
                         r.movie_id, pg_catalog.to_json(r.title),
                         coalesce(r.release_year::text, 'null'), r.rating,
                         pg_catalog.to_json(r.rated_at AT TIME ZONE 'UTC') OPERATOR(pg_catalog.#>>) '{}')
       AS same_as_sql
  FROM pgkafka_join.rated_movies r ORDER BY id;
-- extra_float_digits applies to the rating, as in float8out
SET extra_float_digits = 0;
SELECT pgkafka_join.output_value(r)::json ->> 'rating' AS rating FROM pgkafka_join.rated_movies r WHERE id = 5;
RESET extra_float_digits;
RESET TimeZone;
-- a row without a required field has no value
SELECT pgkafka_join.output_value(ROW(7, 7, NULL, NULL, 1, now(), now(), 0, 7, 0)::pgkafka_join.rated_movies);
SELECT pgkafka_join.output_value(NULL::pgkafka_join.rated_movies) IS NULL AS null_row_gives_null;

-- Leave the tables empty for the next test
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;
