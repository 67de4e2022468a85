--
-- catalog_updates: a movie sent again unchanged leaves its row untouched
-- (no new row version, no WAL), a changed one is updated, a tombstone
-- deletes it.  A nightly re-send of the whole catalog then costs reads.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;
TRUNCATE pgkafka_join.movies, pgkafka_join.ratings, pgkafka_join.rated_movies;

SELECT pgkafka_join.store_movies('{1, 2, 3}', '{"One", "Two", "Three"}', '{2001, NULL, 2003}');
CREATE TEMP TABLE before AS SELECT id, xmin::text AS row_xmin, ctid AS row_ctid FROM pgkafka_join.movies;

-- the same three again, one of them twice in the batch
SELECT pgkafka_join.store_movies('{1, 2, 3, 3}', '{"One", "Two", "Three", "Three"}',
                                 '{2001, NULL, 2003, 2003}');
SELECT b.id, m.xmin::text = b.row_xmin AND m.ctid = b.row_ctid AS untouched
  FROM before b JOIN pgkafka_join.movies m USING (id) ORDER BY b.id;

-- a new title, a release year now known, a release year now unknown
SELECT pgkafka_join.store_movies('{1, 2, 3}', '{"One (director''s cut)", "Two", "Three"}',
                                 '{2001, 2002, NULL}');
SELECT b.id, m.title, m.release_year, m.xmin::text = b.row_xmin AS untouched
  FROM before b JOIN pgkafka_join.movies m USING (id) ORDER BY b.id;

-- a tombstone, then the same movie again: stored anew
SELECT pgkafka_join.store_movies('{2, 2}', '{NULL, "Two"}', '{NULL, 2002}');
SELECT id, title, release_year FROM pgkafka_join.movies ORDER BY id;

TRUNCATE pgkafka_join.movies;
