/* pgkafka_join--1.1.sql */

\echo Use "CREATE EXTENSION pgkafka_join" to load this file. \quit

/* Titles and messages are UTF-8 text, stored as they come. */
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'pgkafka_join needs a UTF8 database'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('Database "%s" is encoded in %s.',
                                             pg_catalog.current_database(),
                                             pg_catalog.getdatabaseencoding()),
                  HINT = 'Create the extension in a database created with ENCODING ''UTF8''.';
    END IF;
END
$$;

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
 * "joined" is true once the rating has produced its rated movie; each
 * partition's partial index holds only the ratings still waiting for their
 * movie (see create_partition_indexes).
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


/*
 * Results are numbered in commit order: every transaction that adds results
 * holds the ingest lock (see lock_ingest) from its first nextval() to its
 * commit, so a higher id never becomes visible before a lower one.  The
 * publisher relies on that to send "every id above the last one sent".
 * NO CACHE on purpose: values cached by one backend would be handed out
 * out of order with another's.
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
AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('pgkafka_join.ingest')::bigint OPERATOR(pg_catalog.<<) 32)
$$;

/* The join window, as configured by pgkafka_join.join_window */
CREATE FUNCTION join_window() RETURNS interval
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('pgkafka_join.join_window')::interval $$;

/*
 * create_partition_indexes
 *		The indexes of one monthly partition of ratings or rated_movies.
 */
CREATE FUNCTION create_partition_indexes(parent text, part text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF parent = 'ratings' THEN
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgkafka_join.%I (movie_id) WHERE NOT joined',
                       part || '_pending_idx', part);
    ELSE
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgkafka_join.%I (id)',
                       part || '_id_idx', part);
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgkafka_join.%I (movie_id)',
                       part || '_movie_id_idx', part);
    END IF;
END
$$;

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
                PERFORM pgkafka_join.create_partition_indexes(parent, part);
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
 * reserve_result_ids
 *		Numbers for the results of the calling batch, which holds the ingest
 *		lock: the next value of rated_movies_id_seq is the first, and
 *		finish_result_ids() moves the sequence past the last one used.  One
 *		nextval() per batch instead of one per result; the lock keeps the
 *		numbers in commit order all the same.
 */
CREATE FUNCTION reserve_result_ids() RETURNS bigint
LANGUAGE sql
AS $$ SELECT pg_catalog.nextval('pgkafka_join.rated_movies_id_seq') $$;

CREATE FUNCTION finish_result_ids(first_id bigint, used bigint) RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.setval('pgkafka_join.rated_movies_id_seq',
                             CASE WHEN used OPERATOR(pg_catalog.>) 0
                                  THEN first_id OPERATOR(pg_catalog.+) used OPERATOR(pg_catalog.-) 1
                                  ELSE first_id END,
                             used OPERATOR(pg_catalog.>) 0)
$$;

/*
 * join_waiting
 *		Publish the ratings inside the window that wait for the movies just
 *		stored (NULL titles, tombstones, are skipped).  Called by store_movies
 *		and by the worker after it copied new movies in; the caller holds the
 *		ingest lock.  Returns the number of rated movies produced.
 */
CREATE FUNCTION join_waiting(ids bigint[], titles text[], release_years integer[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    first_id bigint;
    produced bigint;
BEGIN
    -- the ratings waiting for these movies; usually none while a catalog loads
    IF NOT EXISTS (SELECT 1 FROM pgkafka_join.ratings r
                    WHERE NOT r.joined AND r.rated_at >= now() - pgkafka_join.join_window()) THEN
        RETURN 0;
    END IF;
    first_id := pgkafka_join.reserve_result_ids();
    WITH waiting AS (
        UPDATE pgkafka_join.ratings r
           SET joined = true
          FROM unnest(ids, titles, release_years) AS l(id, title, release_year)
         WHERE r.movie_id = l.id
           AND l.title IS NOT NULL
           AND NOT r.joined
           AND r.rated_at >= now() - pgkafka_join.join_window()
        RETURNING r.movie_id, l.title, l.release_year, r.rating, r.rated_at,
                  r.kafka_partition, r.kafka_offset
    ),
    published AS (
        INSERT INTO pgkafka_join.rated_movies
        SELECT first_id + row_number() OVER () - 1, movie_id, title, release_year,
               rating, rated_at, now(), kafka_partition, kafka_offset
          FROM waiting
        RETURNING 1
    )
    SELECT count(*) INTO produced FROM published;
    PERFORM pgkafka_join.finish_result_ids(first_id, produced);

    RETURN produced;
END
$$;

/*
 * store_movies
 *		Store one batch of movie messages, in Kafka order, and publish the
 *		ratings that were waiting for these movies.
 *
 * A NULL title is a tombstone: the movie is deleted.  The last message of an
 * id in the batch wins.  A movie whose title and release year are those
 * stored already is left untouched (no new row version, no WAL), so sending
 * the whole catalog again costs reads only.  New movies in bulk go through
 * the worker's COPY path instead (see ingest.c).  Returns the number of
 * rated movies produced.
 */
CREATE FUNCTION store_movies(ids bigint[], titles text[], release_years integer[])
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    l_ids bigint[];
    l_titles text[];
    l_years integer[];
BEGIN
    PERFORM pgkafka_join.lock_ingest();

    SELECT array_agg(id), array_agg(title), array_agg(release_year)
      INTO l_ids, l_titles, l_years
      FROM (SELECT DISTINCT ON (id) id, title, release_year
              FROM unnest(ids, titles, release_years) WITH ORDINALITY
                   AS m(id, title, release_year, ord)
             ORDER BY id, ord DESC) latest;
    IF l_ids IS NULL THEN
        RETURN 0;
    END IF;

    DELETE FROM pgkafka_join.movies mv
     USING unnest(l_ids, l_titles) AS l(id, title)
     WHERE mv.id = l.id AND l.title IS NULL;

    INSERT INTO pgkafka_join.movies AS mv (id, title, release_year, updated_at)
    SELECT id, title, release_year, now()
      FROM unnest(l_ids, l_titles, l_years) AS l(id, title, release_year)
     WHERE title IS NOT NULL
    ON CONFLICT (id) DO UPDATE
       SET title = excluded.title,
           release_year = excluded.release_year,
           updated_at = excluded.updated_at
     WHERE (mv.title, mv.release_year) IS DISTINCT FROM (excluded.title, excluded.release_year);

    RETURN pgkafka_join.join_waiting(l_ids, l_titles, l_years);
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
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    first_id bigint;
    produced bigint;
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    PERFORM pgkafka_join.create_partitions_for(rated_ats);

    first_id := pgkafka_join.reserve_result_ids();
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
        SELECT first_id + row_number() OVER () - 1, movie_id, title, release_year,
               rating, rated_at, now(), kafka_partition, kafka_offset
          FROM batch
         WHERE joined
        RETURNING 1
    )
    SELECT count(*) INTO produced FROM published;
    PERFORM pgkafka_join.finish_result_ids(first_id, produced);

    RETURN produced;
END
$$;

/*
 * store_rejected
 *		A message rejected again (consumed again after reset_offsets(), or
 *		after a crash) replaces its earlier row: the reason may differ if the
 *		settings changed meanwhile.
 */
CREATE FUNCTION store_rejected(topics text[], kafka_partitions integer[],
                               kafka_offsets bigint[], keys bytea[],
                               payloads bytea[], reasons text[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO pgkafka_join.rejected_messages AS rm
    SELECT DISTINCT ON (t, p, o) t, p, o, k, v, r, pg_catalog.now()
      FROM unnest(topics, kafka_partitions, kafka_offsets, keys, payloads, reasons)
           WITH ORDINALITY AS u(t, p, o, k, v, r, n)
     ORDER BY t, p, o, n DESC
    ON CONFLICT (topic, kafka_partition, kafka_offset) DO UPDATE
       SET key = excluded.key, payload = excluded.payload, reason = excluded.reason,
           received_at = excluded.received_at
$$;

/* Record the next offset to consume, per topic and partition */
CREATE FUNCTION store_offsets(topics text[], kafka_partitions integer[], next_offsets bigint[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO pgkafka_join.input_offsets AS io
    SELECT t, p, o, pg_catalog.now()
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
    SELECT pg_catalog.format('{"id":%s,"title":%s,"release_year":%s,"rating":%s,"rated_at":"%sZ"}',
                             r.movie_id,
                             pg_catalog.to_json(r.title),
                             coalesce(r.release_year::text, 'null'),
                             r.rating,
                             pg_catalog.to_json(r.rated_at AT TIME ZONE 'UTC') OPERATOR(pg_catalog.#>>) '{}')
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
SET search_path = pg_catalog, pg_temp
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


/* ------------------------------------------------------------------------
 * Operating: pause and resume, offsets, retention, status, privileges
 * ------------------------------------------------------------------------
 */

/* Whether ingest is paused; one row, kept across restarts */
CREATE TABLE control (
    paused          boolean NOT NULL,
    changed_at      timestamptz NOT NULL,
    offsets_generation bigint NOT NULL,   -- counts reset_offsets() calls
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- the Kafka group the publish position is committed under: one per
    -- CREATE EXTENSION, kept by pg_dump so that a restored database finds
    -- the position of the one it was dumped from
    kafka_group     text NOT NULL
);
INSERT INTO control (paused, changed_at, offsets_generation, kafka_group)
SELECT false, now(), 0,
       coalesce(nullif(pg_catalog.current_setting('pgkafka_join.transactional_id', true), ''),
                pg_catalog.format('pgkafka_join-%s-%s',
                                  (SELECT system_identifier FROM pg_catalog.pg_control_system()),
                                  (SELECT oid FROM pg_catalog.pg_database
                                    WHERE datname = pg_catalog.current_database())))
       || '-' || (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pgkafka_join');
SELECT pg_catalog.pg_extension_config_dump('control', '');

/*
 * control_merge
 *		control holds one row.  CREATE EXTENSION inserts it; pg_restore then
 *		loads the dumped row, which must replace it instead of violating the
 *		primary key.
 */
CREATE FUNCTION control_merge() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE pgkafka_join.control
       SET paused = NEW.paused, changed_at = NEW.changed_at,
           offsets_generation = NEW.offsets_generation, kafka_group = NEW.kafka_group;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER control_merge BEFORE INSERT ON control
    FOR EACH ROW EXECUTE FUNCTION control_merge();

CREATE FUNCTION wake_worker() RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_wake_worker';

/*
 * begin_batch
 *		First call of every batch the worker stores: takes the ingest lock and
 *		returns the offsets generation, or NULL if ingest is paused, in which
 *		case the worker drops the batch unstored.  pause() takes the same
 *		lock, so once it returns no batch commits until resume().  If the
 *		generation is not the one the worker assigned its partitions with,
 *		offsets were reset meanwhile: the worker drops the batch and assigns
 *		again from the stored offsets.
 */
CREATE FUNCTION begin_batch() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    RETURN (SELECT CASE WHEN NOT paused THEN offsets_generation END FROM pgkafka_join.control);
END
$$;

/* Stop storing input until resume(); publishing goes on.  Returns true. */
CREATE FUNCTION pause() RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    UPDATE pgkafka_join.control SET paused = true, changed_at = now() WHERE NOT paused;
    PERFORM pgkafka_join.wake_worker();
    RETURN true;
END
$$;

/* Store input again, from the stored offsets.  Returns true. */
CREATE FUNCTION resume() RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE pgkafka_join.control SET paused = false, changed_at = now() WHERE paused;
    PERFORM pgkafka_join.wake_worker();
    RETURN true;
END
$$;

/*
 * reset_offsets
 *		Set where consumption of a topic resumes: next_offset for one
 *		partition, or for every partition when kafka_partition is NULL; a NULL
 *		next_offset means the beginning of the partition.  Only while paused:
 *		the worker reads the offsets again on resume().  Messages consumed
 *		again are stored again and produce new results (new result ids),
 *		published after those already on the output topic.
 *		Returns the number of partitions whose offset was set or removed.
 */
CREATE FUNCTION reset_offsets(topic text, kafka_partition integer DEFAULT NULL,
                              next_offset bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed bigint;
BEGIN
    PERFORM pgkafka_join.lock_ingest();
    IF NOT (SELECT paused FROM pgkafka_join.control) THEN
        RAISE EXCEPTION 'pgkafka_join ingest is not paused'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call pgkafka_join.pause() first, and pgkafka_join.resume() after.';
    END IF;
    IF next_offset IS NOT NULL AND next_offset < 0 THEN
        RAISE EXCEPTION 'offset % is negative', next_offset
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF next_offset IS NULL THEN
        DELETE FROM pgkafka_join.input_offsets io
         WHERE io.topic = reset_offsets.topic
           AND (reset_offsets.kafka_partition IS NULL
                OR io.kafka_partition = reset_offsets.kafka_partition);
        GET DIAGNOSTICS changed = ROW_COUNT;
    ELSIF kafka_partition IS NULL THEN
        UPDATE pgkafka_join.input_offsets io
           SET next_offset = reset_offsets.next_offset, updated_at = now()
         WHERE io.topic = reset_offsets.topic;
        GET DIAGNOSTICS changed = ROW_COUNT;
    ELSE
        INSERT INTO pgkafka_join.input_offsets AS io
        VALUES (topic, kafka_partition, next_offset, now())
        ON CONFLICT ON CONSTRAINT input_offsets_pkey DO UPDATE
           SET next_offset = excluded.next_offset, updated_at = excluded.updated_at;
        changed := 1;
    END IF;
    UPDATE pgkafka_join.control SET offsets_generation = offsets_generation + 1;
    RETURN changed;
END
$$;

/*
 * drop_partitions
 *		Drop the monthly partitions of ratings and rated_movies that hold
 *		only times older than older_than ago; returns their names.
 *
 * Refuses a ratings partition that can still hold ratings inside the join
 * window (a waiting rating there may still be published), and a
 * rated_movies partition holding a result not yet published.  Waits for
 * the batch being stored, then holds the ingest lock for the drops only;
 * gives up with an error after lock_timeout (5 s) rather than stall ingest.
 * Concurrent calls: the second returns nothing.
 */
CREATE FUNCTION drop_partitions(older_than interval)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    part record;
    cutoff timestamptz := now() - older_than;
    published bigint;
    unpublished boolean;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtext('pgkafka_join.maintenance')::bigint << 32) THEN
        RAISE NOTICE 'another pgkafka_join maintenance call is running; nothing done';
        RETURN;
    END IF;
    IF now() - older_than > now() - pgkafka_join.join_window() THEN
        RAISE EXCEPTION 'cannot drop ratings partitions newer than the join window'
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('older_than is %s, pgkafka_join.join_window is %s.',
                                  older_than, pgkafka_join.join_window()),
                  HINT = 'Ratings inside the window may still be published when their movie arrives; use an older_than of at least the join window.';
    END IF;

    PERFORM pgkafka_join.lock_ingest();
    SELECT coalesce(max(last_id), 0) INTO published
      FROM pgkafka_join.output_position
     WHERE topic = current_setting('pgkafka_join.output_topic');

    FOR part IN
        SELECT c.oid::regclass AS rel, c.relname, p.relname AS parent,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_class p ON p.oid = i.inhparent
         WHERE p.oid IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass)
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN part.upper_bound IS NULL OR part.upper_bound > cutoff;
        IF part.parent = 'rated_movies' THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE id > $1)', part.rel)
               INTO unpublished USING published;
            IF unpublished THEN
                RAISE EXCEPTION 'cannot drop %: it holds results not yet published', part.relname
                    USING ERRCODE = 'object_in_use',
                          HINT = 'Wait for the worker to publish them (see pgkafka_join.status).';
            END IF;
        END IF;
        EXECUTE format('DROP TABLE %s', part.rel);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

/*
 * advance_result_ids
 *		The way out when the output topic is ahead of PostgreSQL: results up
 *		to result id "past" were published by a database state that is gone
 *		(a restored backup, a failover to an asynchronous standby, commits
 *		lost with fsync off).  Numbers the results PostgreSQL does not know
 *		to be published, and every later one, after "past", so that the
 *		worker publishes them; results of input consumed again come out
 *		again, with new ids.  Returns the next result id.
 */
CREATE FUNCTION advance_result_ids(past bigint) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    recorded bigint;
    renumbered bigint;
BEGIN
    IF past IS NULL OR past < 0 THEN
        RAISE EXCEPTION 'past must be a result id, not %', coalesce(past::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pgkafka_join.lock_ingest();
    SELECT coalesce(max(last_id), 0) INTO recorded
      FROM pgkafka_join.output_position
     WHERE topic = current_setting('pgkafka_join.output_topic');
    PERFORM setval('pgkafka_join.rated_movies_id_seq',
                   greatest(past, (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                                     FROM pgkafka_join.rated_movies_id_seq)));
    WITH moved AS (
        SELECT id, nextval('pgkafka_join.rated_movies_id_seq') AS new_id
          FROM (SELECT id FROM pgkafka_join.rated_movies
                 WHERE id > recorded AND id <= past ORDER BY id) ids
    )
    UPDATE pgkafka_join.rated_movies r SET id = m.new_id
      FROM moved m
     WHERE r.id = m.id;
    GET DIAGNOSTICS renumbered = ROW_COUNT;
    IF renumbered > 0 THEN
        RAISE NOTICE '% results renumbered after %', renumbered, past;
    END IF;
    PERFORM pgkafka_join.wake_worker();
    RETURN (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END
              FROM pgkafka_join.rated_movies_id_seq);
END
$$;

/*
 * delete_rejected
 *		Delete the rejected messages received more than older_than ago;
 *		returns how many.
 */
CREATE FUNCTION delete_rejected(older_than interval) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deleted bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM pgkafka_join.rejected_messages WHERE received_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

CREATE FUNCTION worker_status(OUT pid integer, OUT state text, OUT state_since timestamptz,
                              OUT last_error text, OUT last_error_at timestamptz,
                              OUT messages_total bigint, OUT results_total bigint,
                              OUT published_total bigint,
                              OUT messages_per_second double precision,
                              OUT results_per_second double precision,
                              OUT published_per_second double precision,
                              OUT published_id bigint,
                              OUT partitions integer, OUT unlisted_lag bigint,
                              OUT unlisted_stopped integer)
RETURNS record
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_worker_status';

CREATE FUNCTION partition_status(OUT topic text, OUT kafka_partition integer,
                                 OUT high_watermark bigint, OUT consumed_offset bigint,
                                 OUT problem text)
RETURNS SETOF record
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_partition_status';

/*
 * status: one row, the worker and the pipeline as a whole.  Counters and
 * rates are since the worker started; lag is what the brokers hold beyond
 * the stored offsets, as last seen by the worker (partitions beyond
 * pgkafka_join.max_partitions included).  pending_ratings is counted up to
 * 100000: 100001 means "more".
 */
CREATE VIEW status AS
SELECT w.pid, w.state, w.state_since,
       (SELECT paused FROM control) AS paused,
       w.last_error, w.last_error_at,
       w.messages_total, w.results_total, w.published_total,
       round(w.messages_per_second::numeric, 1) AS messages_per_second,
       round(w.results_per_second::numeric, 1) AS results_per_second,
       round(w.published_per_second::numeric, 1) AS published_per_second,
       l.lag + w.unlisted_lag AS input_lag,
       CASE WHEN w.messages_per_second > 0 AND l.lag + w.unlisted_lag > 0
            THEN make_interval(secs => round((l.lag + w.unlisted_lag) / w.messages_per_second)) END AS catch_up_estimate,
       (SELECT count(*) FROM (SELECT 1 FROM ratings r
                               WHERE NOT r.joined AND r.rated_at >= now() - join_window()
                               LIMIT 100001) p) AS pending_ratings,
       w.published_id,
       (SELECT coalesce(max(id), 0) FROM rated_movies) - coalesce(w.published_id, 0) AS publish_lag,
       w.partitions,
       l.stopped + w.unlisted_stopped AS stopped_partitions
  FROM worker_status() w,
       LATERAL (SELECT coalesce(sum(greatest(p.high_watermark - coalesce(io.next_offset, 0), 0)), 0)::bigint AS lag,
                       count(p.problem)::integer AS stopped
                  FROM partition_status() p
                  LEFT JOIN input_offsets io USING (topic, kafka_partition)) l;

/* input_status: per input topic and partition, stored offset, lag, problem */
CREATE VIEW input_status AS
SELECT coalesce(io.topic, p.topic) AS topic,
       coalesce(io.kafka_partition, p.kafka_partition) AS kafka_partition,
       io.next_offset AS stored_offset,
       p.high_watermark,
       greatest(p.high_watermark - coalesce(io.next_offset, 0), 0) AS lag,
       io.updated_at AS stored_at,
       p.problem
  FROM input_offsets io
  FULL JOIN partition_status() p USING (topic, kafka_partition);

/* output_status: per output partition, what was published */
CREATE VIEW output_status AS
SELECT op.topic, op.kafka_partition, op.next_offset, op.last_id, op.updated_at
  FROM output_position op;

/* Roles: a reader of everything, an admin who may also operate */
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgkafka_join_reader') THEN
        CREATE ROLE pgkafka_join_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgkafka_join_admin') THEN
        CREATE ROLE pgkafka_join_admin NOLOGIN;
    END IF;
END
$$;
GRANT pgkafka_join_reader TO pgkafka_join_admin;

REVOKE ALL ON ALL TABLES IN SCHEMA pgkafka_join FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgkafka_join FROM PUBLIC;
GRANT USAGE ON SCHEMA pgkafka_join TO PUBLIC;
GRANT EXECUTE ON FUNCTION parse_message(text, bytea), output_value(rated_movies),
    join_window() TO PUBLIC;

GRANT SELECT ON movies, ratings, rated_movies, input_offsets, output_position,
    rejected_messages, control, status, input_status, output_status
    TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION worker_status(), partition_status(), output_position()
    TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION pause(), resume(), reset_offsets(text, integer, bigint),
    drop_partitions(interval), wake_worker(), advance_result_ids(bigint),
    delete_rejected(interval)
    TO pgkafka_join_admin;
