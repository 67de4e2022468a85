--
-- encoding: pgkafka_join stores UTF-8 text as it comes; CREATE EXTENSION in
-- a database of another encoding is refused with a clear error.
--
CREATE DATABASE regress_pkj_latin1 ENCODING 'LATIN1' TEMPLATE template0
    LC_COLLATE 'C' LC_CTYPE 'C';
\c regress_pkj_latin1
CREATE EXTENSION pgkafka_join;
SELECT count(*) FROM pg_extension WHERE extname = 'pgkafka_join';
\c contrib_regression
DROP DATABASE regress_pkj_latin1;
--
-- store_ratings writes results by COPY in binary form, whose text fields
-- PostgreSQL reads in the client encoding: a session in another encoding
-- than the database's gets titles stored byte for byte all the same, and
-- keeps its client encoding.
--
INSERT INTO pgkafka_join.movies VALUES
    (9001, 'Am' || chr(233) || 'lie, ' || chr(26481) || chr(20140) || chr(29289) || chr(35486), 2001, now());
SET client_encoding = 'LATIN1';
SELECT pgkafka_join.store_ratings('{9001}', '{4.5}', ARRAY[now()], '{0}', '{1}') AS produced;
SHOW client_encoding;
RESET client_encoding;
SELECT r.title = m.title AS same_title, octet_length(r.title) AS bytes
  FROM pgkafka_join.rated_movies r JOIN pgkafka_join.movies m ON m.id = r.movie_id
 WHERE r.movie_id = 9001;
