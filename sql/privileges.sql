-- privileges: who may read, who may operate, and secrets stay hidden
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;

CREATE ROLE regress_pkj_reader LOGIN IN ROLE pgkafka_join_reader;
CREATE ROLE regress_pkj_admin LOGIN IN ROLE pgkafka_join_admin;
CREATE ROLE regress_pkj_nobody LOGIN;

-- a secret in pgkafka_join.kafka_properties
ALTER SYSTEM SET pgkafka_join.kafka_properties = 'sasl.username=joiner sasl.password=''s3cret''';
SELECT pg_reload_conf();
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN current_setting('pgkafka_join.kafka_properties') <> '';
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;
SHOW pgkafka_join.kafka_properties;

-- a reader reads the tables and the status views, nothing more
SET ROLE regress_pkj_reader;
SHOW pgkafka_join.kafka_properties;
SHOW pgkafka_join.kafka_properties_file;
SELECT current_setting('pgkafka_join.kafka_properties');
SELECT count(*) FROM pg_settings WHERE name = 'pgkafka_join.kafka_properties';
SELECT count(*) FROM pg_settings WHERE name = 'pgkafka_join.brokers';
SELECT count(*) FROM pgkafka_join.movies;
SELECT count(*) FROM pgkafka_join.rated_movies;
SELECT count(*) FROM pgkafka_join.rejected_messages;
SELECT paused, last_error IS NULL AS no_error FROM pgkafka_join.status;
SELECT count(*) FROM pgkafka_join.input_status;
SELECT count(*) FROM pgkafka_join.output_position();
SELECT pgkafka_join.pause();
SELECT pgkafka_join.reset_offsets('movies');
SELECT * FROM pgkafka_join.drop_partitions('2 months');
SELECT pgkafka_join.store_movies(ARRAY[1], ARRAY['x'], ARRAY[1]);
INSERT INTO pgkafka_join.movies VALUES (1, 'x', 1, now());
UPDATE pgkafka_join.input_offsets SET next_offset = 0;
RESET ROLE;

-- an admin operates: pause, offsets, resume
SET ROLE regress_pkj_admin;
SELECT pgkafka_join.pause();
SELECT paused FROM pgkafka_join.status;
SELECT pgkafka_join.reset_offsets('movies');
SELECT pgkafka_join.resume();
SELECT paused FROM pgkafka_join.status;
UPDATE pgkafka_join.input_offsets SET next_offset = 0;
RESET ROLE;

-- anybody else: not even the catalog; parsing a message is open to all
SET ROLE regress_pkj_nobody;
SELECT count(*) FROM pgkafka_join.movies;
SELECT * FROM pgkafka_join.status;
SELECT accepted, reason FROM pgkafka_join.parse_message('movie', convert_to('{"id": 1}', 'UTF8'));
RESET ROLE;

-- store_ratings (C) works with the caller's privileges, as SQL would: a
-- role given EXECUTE on it may not read the catalog or write ratings by it
GRANT EXECUTE ON FUNCTION pgkafka_join.store_ratings(bigint[], double precision[],
    timestamptz[], integer[], bigint[]) TO regress_pkj_nobody;
SET ROLE regress_pkj_nobody;
SELECT pgkafka_join.store_ratings('{1}', '{1}', ARRAY[now()], '{0}', '{1}');
RESET ROLE;
GRANT SELECT ON pgkafka_join.movies TO regress_pkj_nobody;
-- (it looks for ratings whose result was taken back from the output topic)
GRANT SELECT, DELETE ON pgkafka_join.recovered_ratings TO regress_pkj_nobody;
GRANT EXECUTE ON FUNCTION pgkafka_join.create_partitions_for(timestamptz[]),
    pgkafka_join.create_partitions(timestamptz, timestamptz) TO regress_pkj_nobody;
SET ROLE regress_pkj_nobody;
SELECT pgkafka_join.store_ratings('{1}', '{1}', ARRAY[now()], '{0}', '{1}');
RESET ROLE;
-- with INSERT too, a joined rating still needs the result sequence
INSERT INTO pgkafka_join.movies VALUES (1, 'One', 2001, now());
GRANT INSERT ON pgkafka_join.ratings, pgkafka_join.rated_movies TO regress_pkj_nobody;
SET ROLE regress_pkj_nobody;
SELECT pgkafka_join.store_ratings('{1}', '{1}', ARRAY[now()], '{0}', '{1}');
RESET ROLE;
DELETE FROM pgkafka_join.movies WHERE id = 1;
REVOKE ALL ON pgkafka_join.ratings, pgkafka_join.rated_movies FROM regress_pkj_nobody;
SELECT count(*) AS ratings_stored FROM pgkafka_join.ratings;
REVOKE ALL ON FUNCTION pgkafka_join.store_ratings(bigint[], double precision[],
    timestamptz[], integer[], bigint[]) FROM regress_pkj_nobody;
REVOKE ALL ON FUNCTION pgkafka_join.create_partitions_for(timestamptz[]),
    pgkafka_join.create_partitions(timestamptz, timestamptz) FROM regress_pkj_nobody;
REVOKE ALL ON pgkafka_join.movies, pgkafka_join.recovered_ratings FROM regress_pkj_nobody;

-- every SECURITY DEFINER function fixes its search_path
SELECT p.proname, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'pgkafka_join'::regnamespace AND p.prosecdef
 ORDER BY p.proname;

ALTER SYSTEM RESET pgkafka_join.kafka_properties;
SELECT pg_reload_conf();
DROP ROLE regress_pkj_reader, regress_pkj_admin, regress_pkj_nobody;
