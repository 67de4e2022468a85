/* pgkafka_join--1.0.sql */

\echo Use "CREATE EXTENSION pgkafka_join" to load this file. \quit

/*
 * The catalog: one row per movie id, hash-partitioned by id so that each
 * partition of a 500-million-row catalog stays small enough to vacuum and
 * index comfortably.
 */
CREATE TABLE movies (
    id              bigint NOT NULL,
    title           text NOT NULL,
    release_year    integer,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (id)
) PARTITION BY HASH (id);

DO $$
BEGIN
    FOR i IN 0..31 LOOP
        EXECUTE format('CREATE TABLE pgkafka_join.%I PARTITION OF pgkafka_join.movies '
                       'FOR VALUES WITH (MODULUS 32, REMAINDER %s)',
                       'movies_p' || lpad(i::text, 2, '0'), i);
    END LOOP;
END
$$;

/*
 * Every accepted rating, with the Kafka position it came from.  Monthly range
 * partitions (UTC months) by rated_at; retention is a partition drop.
 * "joined" is true once the rating has produced its rated movie; the partial
 * index holds only the ratings still waiting for their movie.
 */
CREATE TABLE ratings (
    movie_id        bigint NOT NULL,
    rating          double precision NOT NULL,
    rated_at        timestamptz NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    received_at     timestamptz NOT NULL,
    joined          boolean NOT NULL
) PARTITION BY RANGE (rated_at);

CREATE INDEX ratings_pending_idx ON ratings (movie_id) WHERE NOT joined;

/*
 * Results are numbered in commit order: every transaction that adds results
 * holds the ingest lock (see lock_ingest) from its first nextval() to its
 * commit, so a higher id never becomes visible before a lower one.  The
 * publisher relies on that to send "every id above the last one sent".
 */
CREATE SEQUENCE rated_movies_id_seq AS bigint;

CREATE TABLE rated_movies (
    id              bigint NOT NULL,
    movie_id        bigint NOT NULL,
    title           text NOT NULL,
    release_year    integer,
    rating          double precision NOT NULL,
    rated_at        timestamptz NOT NULL,
    joined_at       timestamptz NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL
) PARTITION BY RANGE (rated_at);

ALTER SEQUENCE rated_movies_id_seq OWNED BY rated_movies.id;
CREATE INDEX rated_movies_id_idx ON rated_movies (id);
CREATE INDEX rated_movies_movie_id_idx ON rated_movies (movie_id);

/* Next offset to consume, per input topic and partition. */
CREATE TABLE input_offsets (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset     bigint NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

/*
 * Where publishing stands, per output topic and partition: the offset after
 * the last record published there and the highest result id it carried.
 * Written after each Kafka transaction commits, so it may lag behind the
 * output topic by one batch, never run ahead of it.  The exact position is
 * kept in Kafka itself, committed atomically with the records.
 */
CREATE TABLE output_position (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset     bigint NOT NULL,
    last_id         bigint NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);

/* Input that could not be accepted, with the reason; its offset advanced. */
CREATE TABLE rejected_messages (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    key             bytea,
    payload         bytea,
    reason          text NOT NULL,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);

/*
 * lock_ingest
 *		Serialize every transaction that stores movies or ratings.
 *
 * A rating and its movie stored by two concurrent transactions would each
 * miss the other under READ COMMITTED: neither sees the other's uncommitted
 * row, so the join would be lost.  Holding one exclusive transaction-level
 * lock while storing makes the second transaction wait for the first to
 * commit; its next statement then sees the first one's rows.  The same lock
 * makes result ids commit in order (see rated_movies_id_seq).
 */
CREATE FUNCTION lock_ingest() RETURNS void
LANGUAGE sql
AS $$ SELECT pg_advisory_xact_lock(hashtext('pgkafka_join.ingest')::bigint << 32) $$;

/* The join window, as configured by pgkafka_join.join_window */
CREATE FUNCTION join_window() RETURNS interval
LANGUAGE sql STABLE
AS $$ SELECT current_setting('pgkafka_join.join_window')::interval $$;

/*
 * create_partitions
 *		Make sure monthly partitions of ratings and rated_movies exist for
 *		every UTC month from first_month to last_month; returns those created.
 */
CREATE FUNCTION create_partitions(first_month timestamptz, last_month timestamptz)
RETURNS SETOF regclass
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month timestamptz := date_trunc('month', first_month, 'UTC');
    next_month timestamptz;
    parent text;
    part text;
BEGIN
    WHILE month <= last_month LOOP
        next_month := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        FOREACH parent IN ARRAY ARRAY['ratings', 'rated_movies'] LOOP
            part := parent || to_char(month AT TIME ZONE 'UTC', '_"y"YYYY"m"MM');
            IF to_regclass(format('pgkafka_join.%I', part)) IS NULL THEN
                EXECUTE format('CREATE TABLE pgkafka_join.%I PARTITION OF pgkafka_join.%I '
                               'FOR VALUES FROM (%L) TO (%L)',
                               part, parent,
                               month, next_month);
                RETURN NEXT format('pgkafka_join.%I', part)::regclass;
            END IF;
        END LOOP;
        month := next_month;
    END LOOP;
END
$$;

/* Partitions for the months a batch of ratings falls in */
CREATE FUNCTION create_partitions_for(rated_ats timestamptz[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month timestamptz;
BEGIN
    FOR month IN SELECT DISTINCT date_trunc('month', t, 'UTC') FROM unnest(rated_ats) AS t LOOP
        PERFORM pgkafka_join.create_partitions(month, month);
    END LOOP;
END
$$;

/*
 * store_movies
 *		Store one batch of movie messages, in Kafka order, and publish the
 *		ratings that were waiting for these movies.
 *
 * A NULL title is a tombstone: the movie is deleted.  The last message of an
 * id in the batch wins.  Returns the number of rated movies produced.
 */
CREATE FUNCTION store_movies(ids bigint[], titles text[], release_years integer[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    produced bigint;
BEGIN
    PERFORM pgkafka_join.lock_ingest();

    WITH latest AS (
        SELECT DISTINCT ON (id) id, title, release_year
          FROM unnest(ids, titles, release_years) WITH ORDINALITY AS m(id, title, release_year, ord)
         ORDER BY id, ord DESC
    ),
    deleted AS (
        DELETE FROM pgkafka_join.movies mv
         USING latest l
         WHERE mv.id = l.id AND l.title IS NULL
    ),
    upserted AS (
        INSERT INTO pgkafka_join.movies AS mv (id, title, release_year, updated_at)
        SELECT id, title, release_year, now() FROM latest WHERE title IS NOT NULL
        ON CONFLICT (id) DO UPDATE
           SET title = excluded.title,
               release_year = excluded.release_year,
               updated_at = excluded.updated_at
        RETURNING mv.id, mv.title, mv.release_year
    ),
    waiting AS (
        UPDATE pgkafka_join.ratings r
           SET joined = true
          FROM upserted u
         WHERE r.movie_id = u.id
           AND NOT r.joined
           AND r.rated_at >= now() - pgkafka_join.join_window()
        RETURNING r.movie_id, u.title, u.release_year, r.rating, r.rated_at,
                  r.kafka_partition, r.kafka_offset
    ),
    published AS (
        INSERT INTO pgkafka_join.rated_movies
        SELECT nextval('pgkafka_join.rated_movies_id_seq'), movie_id, title, release_year,
               rating, rated_at, now(), kafka_partition, kafka_offset
          FROM waiting
        RETURNING 1
    )
    SELECT count(*) INTO produced FROM published;

    RETURN produced;
END
$$;

/*
 * store_ratings
 *		Store one batch of ratings and publish those whose movie is stored
 *		and which are inside the join window.  The others wait for their
 *		movie (store_movies) or, if too old, are kept unpublished.
 *
 * Returns the number of rated movies produced.
 */
CREATE FUNCTION store_ratings(movie_ids bigint[], ratings double precision[],
                              rated_ats timestamptz[], kafka_partitions integer[],
                              kafka_offsets bigint[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    produced bigint;
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    PERFORM pgkafka_join.create_partitions_for(rated_ats);

    WITH batch AS (
        SELECT b.*, m.title, m.release_year,
               (m.id IS NOT NULL AND b.rated_at >= now() - pgkafka_join.join_window()) AS joined
          FROM unnest(movie_ids, ratings, rated_ats, kafka_partitions, kafka_offsets)
               AS b(movie_id, rating, rated_at, kafka_partition, kafka_offset)
          LEFT JOIN pgkafka_join.movies m ON m.id = b.movie_id
    ),
    stored AS (
        INSERT INTO pgkafka_join.ratings
        SELECT movie_id, rating, rated_at, kafka_partition, kafka_offset, now(), joined
          FROM batch
    ),
    published AS (
        INSERT INTO pgkafka_join.rated_movies
        SELECT nextval('pgkafka_join.rated_movies_id_seq'), movie_id, title, release_year,
               rating, rated_at, now(), kafka_partition, kafka_offset
          FROM batch
         WHERE joined
        RETURNING 1
    )
    SELECT count(*) INTO produced FROM published;

    RETURN produced;
END
$$;

/* Store a batch of rejected input messages */
CREATE FUNCTION store_rejected(topics text[], kafka_partitions integer[],
                               kafka_offsets bigint[], keys bytea[],
                               payloads bytea[], reasons text[])
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO pgkafka_join.rejected_messages
    SELECT t, p, o, k, v, r, now()
      FROM unnest(topics, kafka_partitions, kafka_offsets, keys, payloads, reasons)
           AS u(t, p, o, k, v, r)
$$;

/* Record the next offset to consume, per topic and partition */
CREATE FUNCTION store_offsets(topics text[], kafka_partitions integer[], next_offsets bigint[])
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO pgkafka_join.input_offsets AS io
    SELECT t, p, o, now()
      FROM unnest(topics, kafka_partitions, next_offsets) AS u(t, p, o)
    ON CONFLICT (topic, kafka_partition) DO UPDATE
       SET next_offset = excluded.next_offset,
           updated_at = excluded.updated_at
$$;

/*
 * The value published for a rated movie: the movie's fields, the rating and
 * rated_at in RFC 3339 (UTC).
 */
CREATE FUNCTION output_value(r rated_movies) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('{"id":%s,"title":%s,"release_year":%s,"rating":%s,"rated_at":"%sZ"}',
                  r.movie_id,
                  to_json(r.title),
                  coalesce(r.release_year::text, 'null'),
                  r.rating,
                  to_json(r.rated_at AT TIME ZONE 'UTC') #>> '{}')
$$;

/*
 * output_position
 *		Where a client that has just read rated_movies, in the same
 *		REPEATABLE READ transaction, starts tailing the output topic.
 *
 * For each output partition published to: start_offset, the offset to
 * consume from, and snapshot_last_id, the highest result id in the
 * transaction's snapshot.  Records whose pgkafka_join.id header is at most
 * snapshot_last_id are in the snapshot already and must be skipped; every
 * later one is new.  Partitions without a row start at their beginning.
 *
 * Why it is exact: result ids become visible in commit order (see
 * rated_movies_id_seq), so the snapshot holds exactly the ids up to
 * snapshot_last_id.  A partition's row is written after the Kafka
 * transaction it describes committed, hence after its results committed in
 * PostgreSQL: if the row is in the snapshot, so are those results, and
 * everything before next_offset has an id at most snapshot_last_id.  Within
 * a partition ids grow with offsets, so every record with a higher id lies
 * at or after start_offset.
 */
CREATE FUNCTION output_position(OUT topic text, OUT kafka_partition integer,
                                OUT start_offset bigint, OUT snapshot_last_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
AS $$
    SELECT op.topic, op.kafka_partition, op.next_offset,
           (SELECT coalesce(max(id), 0) FROM pgkafka_join.rated_movies)
      FROM pgkafka_join.output_position op
     WHERE op.topic = current_setting('pgkafka_join.output_topic')
     ORDER BY op.kafka_partition
$$;

/* Parse one message value as the worker would; for tests and for DBAs */
CREATE FUNCTION parse_message(kind text, value bytea,
                              OUT accepted boolean, OUT id bigint, OUT title text,
                              OUT release_year integer, OUT rating double precision,
                              OUT rated_at timestamptz, OUT reason text)
RETURNS record
LANGUAGE C
AS 'MODULE_PATHNAME', 'pgkafka_join_parse_message';

/*
 * pg_dump leaves out the data of tables that belong to an extension unless
 * told otherwise.  The monthly partitions of ratings and rated_movies are
 * not members (they are made after installation, by the worker or on
 * demand) and are dumped like any table; the rest is marked here.
 */
DO $$
BEGIN
    FOR i IN 0..31 LOOP
        PERFORM pg_catalog.pg_extension_config_dump(
            format('pgkafka_join.%I', 'movies_p' || lpad(i::text, 2, '0')), '');
    END LOOP;
END
$$;
SELECT pg_catalog.pg_extension_config_dump('input_offsets', '');
SELECT pg_catalog.pg_extension_config_dump('output_position', '');
SELECT pg_catalog.pg_extension_config_dump('rejected_messages', '');
SELECT pg_catalog.pg_extension_config_dump('rated_movies_id_seq', '');

REVOKE ALL ON ALL TABLES IN SCHEMA pgkafka_join FROM PUBLIC;
REVOKE ALL ON FUNCTION lock_ingest(), create_partitions(timestamptz, timestamptz),
    create_partitions_for(timestamptz[]), store_movies(bigint[], text[], integer[]),
    store_ratings(bigint[], double precision[], timestamptz[], integer[], bigint[]),
    store_rejected(text[], integer[], bigint[], bytea[], bytea[], text[]),
    store_offsets(text[], integer[], bigint[])
    FROM PUBLIC;
