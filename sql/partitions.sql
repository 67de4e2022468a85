--
-- partitions: ratings and rated_movies have one partition per UTC month,
-- named <table>_yYYYYmMM, made by create_partitions or, on demand, by
-- store_ratings.
--
-- CREATE EXTENSION made the partitions around the current month; only the
-- years chosen here (2020, 2021, 1970, 9999) are looked at.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;

-- A session time zone far from UTC, so that local months would show
SET TimeZone = 'America/New_York';
SET DateStyle = 'ISO, YMD';

CREATE TEMP VIEW test_partitions AS
SELECT c.relname AS partition, p.relname AS parent,
       pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
 WHERE p.oid IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass)
   AND substring(c.relname from '_y(\d{4})m\d\d$') IN ('1970', '2020', '2021', '9999');

-- Every UTC month from the first time stamp's to the last one's, inclusive,
-- for both tables; the function returns the partitions it created
SELECT * FROM pgkafka_join.create_partitions('2020-01-15 12:00:00+00', '2020-03-31 23:59:59+00');

-- Calling again creates none
SELECT * FROM pgkafka_join.create_partitions('2020-01-15 12:00:00+00', '2020-03-31 23:59:59+00');

-- An overlapping range creates only the missing months
SELECT * FROM pgkafka_join.create_partitions('2020-02-10 00:00:00+00', '2020-04-10 00:00:00+00');

-- A range inside one month creates that month only; 2020-05-31 22:00 in New
-- York is June in UTC, so it is June's partition
SELECT * FROM pgkafka_join.create_partitions('2020-05-31 22:00:00-04', '2020-05-31 23:00:00-04');

-- Bounds are midnights UTC, the first of each month, shown in New York time
-- (EST, -05, or EDT, -04, from March 8, 2020); each partition ends where the
-- next begins
SELECT partition, bound FROM test_partitions ORDER BY parent, partition;

-- store_ratings makes the partitions of any month it is given, down to
-- 1970-01 and up to 9999-12, the range the message parser accepts; a month
-- boundary in UTC (2021-06-01 00:00:00Z) is not one in New York
SELECT pgkafka_join.store_movies('{2}', '{"Far Future"}', '{NULL}') AS produced;
SELECT pgkafka_join.store_ratings(
    '{1, 2, 3, 3}',
    '{3.5, 4, 1, 2}',
    '{"1970-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00",
      "2021-05-31 23:59:59.999999+00", "2021-06-01 00:00:00+00"}',
    '{0, 0, 0, 0}',
    '{10, 11, 12, 13}') AS produced;

SELECT partition, bound FROM test_partitions
 WHERE partition !~ '_y2020m' ORDER BY parent, partition;

-- Each rating is in its UTC month's partition; the one whose movie is
-- stored (and which, being in the future, is inside the join window) was
-- published into rated_movies' partition of the same month
SELECT tableoid::regclass AS partition, movie_id, kafka_offset, joined
  FROM pgkafka_join.ratings ORDER BY kafka_offset;
SELECT tableoid::regclass AS partition, movie_id, title, kafka_offset
  FROM pgkafka_join.rated_movies ORDER BY kafka_offset;

-- Leave the tables empty for the next test
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;
