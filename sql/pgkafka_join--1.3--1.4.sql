/* pgkafka_join--1.3--1.4.sql */

\echo Use "ALTER EXTENSION pgkafka_join UPDATE TO '1.4'" to load this file. \quit

/*
 * 1.4: moving partitions from one server to another in one call.  The old
 * owner's release_partitions() records the partitions in
 * released_partitions; its worker publishes everything it stored of them
 * and hands them over through Kafka (the claims group: see ownership.c).
 * A server configured for them finds the handover, records it in
 * received_partitions, and takes them over from the state it names.  No
 * table is rewritten.  (CREATE EXTENSION of 1.4 runs 1.3's script and
 * this one.)
 */

/*
 * released_partitions
 *		Partitions this server gives up, one row each, written by
 *		release_partitions() (requested_at).  Its worker stops consuming
 *		them, publishes every result of their shares it stored, and hands
 *		them over (released_at, and what it handed over: where the next
 *		owner consumes their ratings from, how far this server had stored
 *		them, the last result id of the share).  From then on this server
 *		neither consumes nor publishes them, whatever pgkafka_join.partitions
 *		says, until it receives them back.
 */
CREATE TABLE released_partitions (
    kafka_partition integer PRIMARY KEY,
    requested_at    timestamptz NOT NULL,
    released_at     timestamptz,
    ratings_offset  bigint,     -- the next owner consumes the ratings from here
    next_offset     bigint,     -- this server had stored the ratings up to here
    last_id         bigint      -- the last result id of the share, published
);
SELECT pg_catalog.pg_extension_config_dump('released_partitions', '');

/*
 * received_partitions
 *		Partitions this server took over from a server that released them:
 *		what the handover said (from_server, ratings_offset, next_offset,
 *		last_id), when this server claimed them (claimed_at) and when it
 *		set up their state from the handover (received_at; NULL while its
 *		claims are being confirmed).
 */
CREATE TABLE received_partitions (
    kafka_partition integer PRIMARY KEY,
    from_server     text NOT NULL,
    ratings_offset  bigint NOT NULL,
    next_offset     bigint NOT NULL,
    last_id         bigint NOT NULL,
    claimed_at      timestamptz NOT NULL,
    received_at     timestamptz
);
SELECT pg_catalog.pg_extension_config_dump('received_partitions', '');

/* A list of partitions as pgkafka_join.partitions takes it ('0-5,12'), sorted */
CREATE FUNCTION partition_numbers(partitions text) RETURNS integer[]
LANGUAGE C IMMUTABLE STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_partition_numbers';

/*
 * release_partitions
 *		Give partitions of this server to another one ('3-5', as
 *		pgkafka_join.partitions lists them).  Returns them; the worker
 *		owning them releases them within a second or so (see
 *		released_partitions), and the server configured for them takes them
 *		over from there.  Only partitions listed in pgkafka_join.partitions,
 *		which must be set: a partition released twice stays as it was.
 */
CREATE FUNCTION release_partitions(partitions text) RETURNS SETOF integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    requested integer[] := pgkafka_join.partition_numbers(partitions);
    server integer[] := pgkafka_join.partition_numbers(current_setting('pgkafka_join.partitions'));
    others integer[];
BEGIN
    IF cardinality(requested) = 0 THEN
        RAISE EXCEPTION 'pgkafka_join.release_partitions() needs at least one partition'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(server) = 0 THEN
        RAISE EXCEPTION 'pgkafka_join cannot release partitions while it owns every partition'
              USING ERRCODE = 'object_not_in_prerequisite_state',
                    DETAIL = 'pgkafka_join.partitions is empty: the partitions are not split across servers, and messages are not checked for keys that name their partition.',
                    HINT = 'List the partitions this server owns in pgkafka_join.partitions (for example ''0-11'') and restart it first.';
    END IF;
    others := ARRAY(SELECT unnest(requested) EXCEPT SELECT unnest(server) ORDER BY 1);
    IF cardinality(others) > 0 THEN
        RAISE EXCEPTION 'pgkafka_join does not own partitions %', array_to_string(others, ',')
              USING ERRCODE = 'invalid_parameter_value',
                    DETAIL = format('pgkafka_join.partitions is ''%s''.', current_setting('pgkafka_join.partitions'));
    END IF;
    INSERT INTO pgkafka_join.released_partitions (kafka_partition, requested_at)
    SELECT p, now() FROM unnest(requested) AS p
    ON CONFLICT (kafka_partition) DO NOTHING;
    PERFORM pgkafka_join.wake_worker();
    RETURN QUERY SELECT unnest(requested);
END
$$;

REVOKE ALL ON TABLE released_partitions, received_partitions FROM PUBLIC;
REVOKE ALL ON FUNCTION partition_numbers(text), release_partitions(text) FROM PUBLIC;
GRANT SELECT ON released_partitions, received_partitions TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION release_partitions(text) TO pgkafka_join_admin;
