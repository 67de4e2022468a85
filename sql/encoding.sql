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
