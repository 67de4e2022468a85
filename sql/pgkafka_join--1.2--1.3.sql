/* pgkafka_join--1.2--1.3.sql */

\echo Use "ALTER EXTENSION pgkafka_join UPDATE TO '1.3'" to load this file. \quit

/*
 * 1.3: what the worker needs to take back results that are on the output
 * topic but that PostgreSQL lost (a failover to an asynchronous standby, a
 * restore, a point-in-time recovery): the table recovered_ratings and the
 * function recover_results().  No table is rewritten.
 *
 * Builds of 1.2 made after its release and before 1.3 (from the source
 * tree, not a release) created both objects already: IF NOT EXISTS and OR
 * REPLACE let this script bring either to 1.3.  (An object of the same name
 * that is not the extension's own still stops it: PostgreSQL refuses to
 * adopt it.)
 */

/*
 * recovered_ratings
 *		Ratings whose result was found on the output topic by
 *		recover_results() before PostgreSQL stored the rating itself (the
 *		database lost the commit that stored it: a failover to an
 *		asynchronous standby, a restore).  When the rating is consumed again,
 *		store_ratings() records it as joined and makes no second result for
 *		it, and removes it from here.
 */
CREATE TABLE IF NOT EXISTS recovered_ratings (
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    result_id       bigint NOT NULL,
    recovered_at    timestamptz NOT NULL,
    PRIMARY KEY (kafka_partition, kafka_offset)
);
SELECT pg_catalog.pg_extension_config_dump('recovered_ratings', '');

/*
 * recover_results
 *		Take back results that are on the output topic but not in
 *		PostgreSQL, one per position of the arrays: result id, share, the
 *		rating's Kafka partition and offset (the record's
 *		pgkafka_join.input header), the record's value, its timestamp, and
 *		the output partition and offset it is at.
 *
 * Each becomes the row of rated_movies it was, under its id and with the
 * fields it was published with (what was published is what happened); its
 * rating, if stored and waiting, is marked joined, and otherwise remembered
 * in recovered_ratings; output_position and the result sequence move past
 * them.  Holds the ingest lock, so no batch runs meanwhile.  Returns the
 * number of results taken back; one already in rated_movies (by id and
 * share) is skipped.
 */
CREATE OR REPLACE FUNCTION recover_results(output_topic text, ids bigint[], shares integer[],
                                rating_partitions integer[], rating_offsets bigint[],
                                record_values text[], published_at timestamptz[],
                                output_partitions integer[], output_offsets bigint[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    recovered bigint;
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    CREATE TEMP TABLE IF NOT EXISTS pgkafka_join_recovered (
        id bigint, share integer, kafka_partition integer, kafka_offset bigint,
        movie_id bigint, title text, release_year integer, rating double precision,
        rated_at timestamptz, joined_at timestamptz,
        output_partition integer, output_offset bigint
    ) ON COMMIT DROP;
    TRUNCATE pgkafka_join_recovered;
    INSERT INTO pgkafka_join_recovered
    SELECT f.id, f.share, f.kp, f.ko, (j->>'id')::bigint, j->>'title',
           (j->>'release_year')::integer, (j->>'rating')::double precision,
           (j->>'rated_at')::timestamptz, f.at, f.op, f.oo
      FROM unnest(ids, shares, rating_partitions, rating_offsets, record_values,
                  published_at, output_partitions, output_offsets)
           AS f(id, share, kp, ko, v, at, op, oo),
           LATERAL (SELECT f.v::jsonb AS j) j
     WHERE NOT EXISTS (SELECT 1 FROM pgkafka_join.rated_movies r
                        WHERE r.share = f.share AND r.id = f.id);
    GET DIAGNOSTICS recovered = ROW_COUNT;

    PERFORM pgkafka_join.create_partitions_for(ARRAY(SELECT f.rated_at FROM pgkafka_join_recovered f));
    INSERT INTO pgkafka_join.rated_movies
          (id, movie_id, title, release_year, rating, rated_at, joined_at,
           kafka_partition, kafka_offset, share)
    SELECT f.id, f.movie_id, f.title, f.release_year, f.rating, f.rated_at, f.joined_at,
           f.kafka_partition, f.kafka_offset, f.share
      FROM pgkafka_join_recovered f;

    -- their ratings: stored and waiting (by the index of the waiting ones),
    -- or to come
    UPDATE pgkafka_join.ratings r
       SET joined = true
      FROM pgkafka_join_recovered f
     WHERE r.movie_id = f.movie_id
       AND r.kafka_partition = f.kafka_partition
       AND r.kafka_offset = f.kafka_offset
       AND NOT r.joined;
    -- a rating still to be consumed here (at or after the stored offset,
    -- which commits with the ratings stored) is not stored yet
    INSERT INTO pgkafka_join.recovered_ratings AS rr
    SELECT f.kafka_partition, f.kafka_offset, f.id, now()
      FROM pgkafka_join_recovered f
     WHERE f.kafka_offset >= coalesce((SELECT io.next_offset FROM pgkafka_join.input_offsets io
                                        WHERE io.topic = current_setting('pgkafka_join.ratings_topic')
                                          AND io.kafka_partition = f.kafka_partition), 0)
    ON CONFLICT ON CONSTRAINT recovered_ratings_pkey DO UPDATE
       SET result_id = excluded.result_id, recovered_at = excluded.recovered_at;

    INSERT INTO pgkafka_join.output_position AS op
          (topic, kafka_partition, share, next_offset, last_id, updated_at)
    SELECT output_topic, f.output_partition, f.share,
           max(f.output_offset) + 1, max(f.id), now()
      FROM pgkafka_join_recovered f
     GROUP BY f.output_partition, f.share
    ON CONFLICT ON CONSTRAINT output_position_pkey DO UPDATE
       SET next_offset = greatest(op.next_offset, excluded.next_offset),
           last_id = greatest(op.last_id, excluded.last_id),
           updated_at = excluded.updated_at;

    -- new results are numbered after the published ones
    PERFORM pg_catalog.setval('pgkafka_join.rated_movies_id_seq', m)
       FROM (SELECT max(id) AS m FROM unnest(ids) AS i(id)) i,
            pgkafka_join.rated_movies_id_seq s
      WHERE i.m > CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END;
    RETURN recovered;
END
$$;

REVOKE ALL ON TABLE recovered_ratings FROM PUBLIC;
REVOKE ALL ON FUNCTION recover_results(text, bigint[], integer[], integer[], bigint[],
                                       text[], timestamptz[], integer[], bigint[]) FROM PUBLIC;
GRANT SELECT ON recovered_ratings TO pgkafka_join_reader;
