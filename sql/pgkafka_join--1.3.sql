/* pgkafka_join--1.3.sql */

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
    updated_at      timestamptz NOT NULL DEFAULT now(),
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
 * Results are numbered by one sequence, one nextval() per result: ids are
 * unique in the database.  They become visible in order only within a
 * share (see rated_movies.share), which is all the publisher needs.  NO
 * CACHE on purpose: advance_result_ids() moves the sequence, and values
 * cached by a worker before would still be handed out below it.
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
    kafka_offset    bigint NOT NULL,
    share           integer NOT NULL
) PARTITION BY RANGE (rated_at);

/*
 * share: the input partition whose worker made the result, that is the
 * rating's partition, or the movie's when a waiting rating is joined by its
 * movie's arrival.  A partition has one owner at a time, a single worker,
 * which makes its results one transaction after the other: so within a
 * share, a higher id never becomes visible before a lower one, and the
 * publisher's position is one id per share ("every id of the share above
 * the last one sent").  -1: results made before version 1.1, published
 * after the single position 1.0 kept.
 */
COMMENT ON COLUMN rated_movies.share IS
    'input partition whose worker made the result; ids grow in commit order within a share';

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
 * Where publishing stands, per output topic and partition and per share:
 * the offset after the share's last record published there and the highest
 * result id it carried.  Written after each Kafka transaction commits, so
 * it may lag behind the output topic by one batch, never run ahead of it.
 * The exact position is kept in Kafka itself, committed atomically with the
 * records.  One row per share: workers never write the same row.
 */
CREATE TABLE output_position (
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset     bigint NOT NULL,
    last_id         bigint NOT NULL,
    updated_at      timestamptz NOT NULL,
    share           integer NOT NULL,
    PRIMARY KEY (topic, kafka_partition, share)
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
 * ingest_lock, maintenance_lock
 *		Tables that hold no rows: their table locks coordinate the workers
 *		and the operations that must see no batch in progress.
 *
 * Only their owner (the superuser who created the extension) and roles
 * granted UPDATE on them can take a lock that conflicts with a batch: an
 * advisory key, which any role may take, would let anyone stall the
 * stream.  A role that can merely see a table (pg_relation_size(), a
 * failed SELECT) takes ACCESS SHARE, which conflicts with neither mode
 * used here.
 */
CREATE TABLE ingest_lock ();
CREATE TABLE maintenance_lock ();
COMMENT ON TABLE ingest_lock IS
    'locked ROW SHARE by every batch, EXCLUSIVE by pause(), reset_offsets(), drop_partitions(), advance_result_ids()';
COMMENT ON TABLE maintenance_lock IS
    'locked EXCLUSIVE by drop_partitions(): one call at a time';

/*
 * lock_ingest
 *		Wait for every batch being stored, and keep new ones out until the
 *		end of the transaction.
 *
 * Batches take the same lock in shared mode (begin_batch), so workers never
 * wait for each other; operations that must see no batch in progress
 * (pause, reset_offsets, drop_partitions, advance_result_ids) take it
 * exclusively.
 */
CREATE FUNCTION lock_ingest() RETURNS void
LANGUAGE sql
AS $$
    LOCK TABLE pgkafka_join.ingest_lock IN EXCLUSIVE MODE;
$$;

/* The same lock in shared mode, taken by every batch (begin_batch) and rejoin */
CREATE FUNCTION lock_ingest_shared() RETURNS void
LANGUAGE sql
AS $$
    LOCK TABLE pgkafka_join.ingest_lock IN ROW SHARE MODE;
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
        EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON pgkafka_join.%I (share, id)',
                       part || '_share_id_idx', part);
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
                -- one creator at a time; taking the lock also makes the
                -- second look see what another worker created meanwhile
                EXECUTE format('LOCK TABLE pgkafka_join.%I IN SHARE UPDATE EXCLUSIVE MODE', parent);
                CONTINUE WHEN to_regclass(format('pgkafka_join.%I', part)) IS NOT NULL;
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
 * The batch functions below (join_waiting, store_movies) join a batch, an
 * array of unknown size to the planner, with the catalog or the ratings.
 * Each runs one generic plan, planned once, and joins by nested loops
 * only: one index lookup per row of the batch.  Left free, the planner
 * prefers a hash join over a sequential scan of a catalog of a few hundred
 * thousand movies, which every batch would then read whole.
 */

/*
 * join_waiting
 *		Publish the ratings rated at or after cutoff (the join window's start
 *		when the batch was stored; NULL: now() - join_window()) that wait
 *		for the given movies, as stored now (a deleted movie joins nothing),
 *		as results of the given shares (the partition each movie came on).
 *		Called in the
 *		transaction that stored the movies (by store_movies, or by the worker
 *		after it copied new movies in), and again by the worker after that
 *		transaction committed, to join ratings that other workers stored
 *		meanwhile (see worker.c).  A rating is joined once: the UPDATE of a
 *		rating another transaction is joining waits for it and then skips
 *		the rating.  Returns the number of rated movies produced.
 */
CREATE FUNCTION join_waiting(ids bigint[], shares integer[], cutoff timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $$
DECLARE
    produced bigint;
BEGIN
    cutoff := coalesce(cutoff, now() - pgkafka_join.join_window());
    -- the ratings waiting for these movies; usually none while a catalog loads
    IF NOT EXISTS (SELECT 1 FROM pgkafka_join.ratings r
                    WHERE NOT r.joined AND r.rated_at >= cutoff) THEN
        RETURN 0;
    END IF;
    WITH waiting AS (
        UPDATE pgkafka_join.ratings r
           SET joined = true
          FROM (SELECT DISTINCT ON (l.id) l.id, l.share, m.title, m.release_year
                  FROM unnest(ids, shares) AS l(id, share)
                  JOIN pgkafka_join.movies m ON m.id = l.id
                 ORDER BY l.id) AS l
         WHERE r.movie_id = l.id
           AND NOT r.joined
           AND r.rated_at >= cutoff
        RETURNING r.movie_id, l.title, l.release_year, r.rating, r.rated_at,
                  r.kafka_partition, r.kafka_offset, l.share
    ),
    published AS (
        INSERT INTO pgkafka_join.rated_movies
        SELECT nextval('pgkafka_join.rated_movies_id_seq'), movie_id, title, release_year,
               rating, rated_at, now(), kafka_partition, kafka_offset, share
          FROM waiting
        RETURNING 1
    )
    SELECT count(*) INTO produced FROM published;

    RETURN produced;
END
$$;

/*
 * store_movies
 *		Store one batch of movie messages, in Kafka order, and publish the
 *		ratings that were waiting for these movies, as results of the
 *		partitions the movies came on (0 when not given).
 *
 * A NULL title is a tombstone: the movie is deleted.  The last message of an
 * id in the batch wins.  A movie whose title and release year are those
 * stored already is left untouched (no new row version, no WAL), so sending
 * the whole catalog again costs reads only.  New movies in bulk go through
 * the worker's COPY path instead (see ingest.c).  cutoff is join_waiting()'s.
 * Returns the number of rated movies produced.
 */
CREATE FUNCTION store_movies(ids bigint[], titles text[], release_years integer[],
                             kafka_partitions integer[] DEFAULT NULL,
                             cutoff timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET enable_hashjoin = off
SET enable_mergejoin = off
SET jit = off
AS $$
DECLARE
    l_ids bigint[];
    l_titles text[];
    l_years integer[];
    l_shares integer[];
BEGIN
    SELECT array_agg(id), array_agg(title), array_agg(release_year), array_agg(share)
      INTO l_ids, l_titles, l_years, l_shares
      FROM (SELECT DISTINCT ON (id) id, title, release_year, coalesce(share, 0) AS share
              FROM unnest(ids, titles, release_years, kafka_partitions) WITH ORDINALITY
                   AS m(id, title, release_year, share, ord)
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

    RETURN pgkafka_join.join_waiting(l_ids, l_shares, cutoff);
END
$$;

/*
 * store_ratings
 *		Store one batch of ratings and publish those whose movie is stored
 *		and which are inside the join window, as results of the partition
 *		each rating came on.  The others wait for their movie (store_movies)
 *		or, if too old, are kept unpublished.
 *
 * The batch is joined in movie id order, so that the lookups walk the
 * catalog's index in order (twice as fast as in Kafka order on a large
 * catalog); the ratings of one movie keep their Kafka order.  Returns the
 * number of rated movies produced.  Written in C (src/join.c): one lookup
 * in the primary key of the catalog partition holding each movie, and the
 * rows written by COPY; the worker calls the same code.
 */
CREATE FUNCTION store_ratings(movie_ids bigint[], ratings double precision[],
                              rated_ats timestamptz[], kafka_partitions integer[],
                              kafka_offsets bigint[])
RETURNS bigint
LANGUAGE C
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'pgkafka_join_store_ratings';

/*
 * rejoins
 *		Ratings to look at again once other workers' transactions have ended.
 *
 * With several workers, a rating and its movie can come on partitions of
 * two workers (a rating keyed otherwise than its movie) and be stored by two
 * concurrent transactions, each missing the other's row.  The transaction
 * storing ratings that wait, inside the window, queues their movie ids here,
 * under its worker number, with the batch's cut-off (the join window's start
 * then); after its commit the worker waits for the transactions other
 * workers were running then, and joins the ratings whose movie came
 * meanwhile (run_rejoins).  Each worker runs its own entry only: another
 * worker's pass would not have waited for what that entry's batch raced
 * with.  Queued in the same transaction as the ratings, so a crash in
 * between loses nothing: the worker runs what is left when it starts again,
 * and worker 0 runs the entries of workers that no longer exist (fewer
 * pgkafka_join.workers after a restart, so none of their transactions is
 * still running).
 */
CREATE TABLE rejoins (
    worker          integer PRIMARY KEY,
    movie_ids       bigint[] NOT NULL,
    shares          integer[] NOT NULL,
    queued_at       timestamptz NOT NULL,
    cutoff          timestamptz NOT NULL
);

CREATE FUNCTION queue_rejoin(worker integer, movie_ids bigint[], shares integer[],
                             cutoff timestamptz)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO pgkafka_join.rejoins AS rj VALUES (worker, movie_ids, shares, pg_catalog.now(), cutoff)
    ON CONFLICT (worker) DO UPDATE
       SET movie_ids = rj.movie_ids OPERATOR(pg_catalog.||) excluded.movie_ids,
           shares = rj.shares OPERATOR(pg_catalog.||) excluded.shares,
           queued_at = excluded.queued_at,
           cutoff = LEAST(rj.cutoff, excluded.cutoff)
$$;

/*
 * run_rejoins
 *		Join what the entry of worker "worker" waits for, with the cut-off of
 *		the batches that queued it, as results of the caller's shares
 *		("owned", the partitions it owns: an entry's share if it is one of
 *		them, else the first), and remove the entry.  With orphans, also the
 *		entries of workers numbered pgkafka_join.workers or above.  Takes
 *		the ingest lock in shared mode, as a batch does.  Returns the number
 *		of rated movies produced.
 */
CREATE FUNCTION run_rejoins(worker integer, owned integer[], orphans boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry record;
    produced bigint := 0;
BEGIN
    PERFORM pgkafka_join.lock_ingest_shared();
    FOR entry IN
        DELETE FROM pgkafka_join.rejoins rj
         WHERE rj.worker = run_rejoins.worker
            OR (orphans AND rj.worker >= current_setting('pgkafka_join.workers')::integer)
        RETURNING *
    LOOP
        produced := produced + pgkafka_join.join_waiting(
            entry.movie_ids,
            ARRAY(SELECT CASE WHEN s = ANY (owned) THEN s ELSE owned[1] END
                    FROM unnest(entry.shares) AS s),
            entry.cutoff);
    END LOOP;
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
 * rated_at in RFC 3339 (UTC).  The worker writes it with the same C code for
 * every record it publishes (no SQL per record, no function looked up).
 */
CREATE FUNCTION output_value(r rated_movies) RETURNS text
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_output_value';

/*
 * output_position, snapshot_shares
 *		Where a client that has just read rated_movies, in the same
 *		REPEATABLE READ transaction, starts tailing the output topic.
 *
 * output_position(): for each output partition published to, start_offset,
 * the offset to consume from (partitions without a row: from their
 * beginning).  snapshot_shares(): for each share, last_id, the highest
 * result id of the share in the transaction's snapshot.  A record whose
 * pgkafka_join.id header is at most the last_id of its pgkafka_join.share
 * header is in the snapshot already and must be skipped; every other one is
 * new.
 *
 * Why it is exact: within a share, result ids become visible in commit order
 * (see rated_movies.share), so the snapshot holds exactly the share's ids up
 * to its last_id.  Every record below start_offset is in the snapshot: a row
 * of output_position is written after the Kafka transaction it describes
 * committed, and that transaction's last record at next_offset - 1 was
 * appended after every record below it; each of those was published after
 * its results committed in PostgreSQL, hence before the row, which the
 * snapshot sees.  Within a share and an output partition ids grow with
 * offsets, so no record above start_offset is taken for one in the snapshot
 * unless it is.
 */
CREATE FUNCTION output_position(OUT topic text, OUT kafka_partition integer,
                                OUT start_offset bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT op.topic, op.kafka_partition, max(op.next_offset)
      FROM pgkafka_join.output_position op
     WHERE op.topic = current_setting('pgkafka_join.output_topic')
     GROUP BY op.topic, op.kafka_partition
     ORDER BY op.kafka_partition
$$;

CREATE FUNCTION snapshot_shares(OUT share integer, OUT last_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- the distinct shares, one index probe each
    WITH RECURSIVE shares AS (
        SELECT min(r.share) AS share FROM pgkafka_join.rated_movies r
        UNION ALL
        SELECT (SELECT min(r.share) FROM pgkafka_join.rated_movies r WHERE r.share > s.share)
          FROM shares s
         WHERE s.share IS NOT NULL
    )
    SELECT s.share, (SELECT max(r.id) FROM pgkafka_join.rated_movies r WHERE r.share = s.share)
      FROM shares s
     WHERE s.share IS NOT NULL
     ORDER BY s.share
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
SELECT pg_catalog.pg_extension_config_dump('rejoins', '');
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
    kafka_group     text NOT NULL,
    -- the shares whose position in Kafka a worker found above every result
    -- id PostgreSQL handed out: their worker stores and publishes nothing
    -- until advance_result_ids(), which renumbers their results only
    ahead_shares    integer[]
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
 *		First call of every batch the worker stores: takes the ingest lock in
 *		shared mode (workers do not wait for each other) and returns the
 *		offsets generation, or NULL if ingest is paused, in which case the
 *		worker drops the batch unstored.  pause() takes the same lock
 *		exclusively, so once it returns no batch commits until resume().  If the
 *		generation is not the one the worker assigned its partitions with,
 *		offsets were reset meanwhile: the worker drops the batch and assigns
 *		again from the stored offsets.
 */
CREATE FUNCTION begin_batch() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgkafka_join.lock_ingest_shared();
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

/* The highest result id recorded as published, per share */
CREATE FUNCTION published_ids(OUT share integer, OUT last_id bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT op.share, max(op.last_id)
      FROM pgkafka_join.output_position op
     WHERE op.topic = current_setting('pgkafka_join.output_topic')
     GROUP BY op.share
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
 * Concurrent calls: the second fails at once, saying so.
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
    unpublished boolean;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        LOCK TABLE pgkafka_join.maintenance_lock IN EXCLUSIVE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'another drop_partitions() call is running'
            USING ERRCODE = 'lock_not_available',
                  HINT = 'Wait for it to end, then call drop_partitions() again if needed.';
    END;
    IF now() - older_than > now() - pgkafka_join.join_window() THEN
        RAISE EXCEPTION 'cannot drop ratings partitions newer than the join window'
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('older_than is %s, pgkafka_join.join_window is %s.',
                                  older_than, pgkafka_join.join_window()),
                  HINT = 'Ratings inside the window may still be published when their movie arrives; use an older_than of at least the join window.';
    END IF;

    PERFORM pgkafka_join.lock_ingest();

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
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s r '
                           'LEFT JOIN pgkafka_join.published_ids() p USING (share) '
                           'WHERE r.id > coalesce(p.last_id, 0))', part.rel)
               INTO unpublished;
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
 *		lost with fsync off).  Moves the sequence past "past", and numbers
 *		after it the results PostgreSQL does not know to be published of the
 *		shares found ahead (control.ahead_shares), so that their worker
 *		publishes them; results of input consumed again come out again, with
 *		new ids.  The other shares' workers go on meanwhile: their results,
 *		some in a Kafka transaction under way, keep their ids.  Returns the
 *		next result id.
 */
CREATE FUNCTION advance_result_ids(past bigint) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    renumbered bigint;
    cache bigint;
    maxvalue bigint;
BEGIN
    IF past IS NULL OR past < 0 THEN
        RAISE EXCEPTION 'past must be a result id, not %', coalesce(past::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.seqcache, s.seqmax INTO cache, maxvalue
      FROM pg_sequence s WHERE s.seqrelid = 'pgkafka_join.rated_movies_id_seq'::regclass;
    IF cache > 1 THEN
        RAISE EXCEPTION 'cannot advance result ids: sequence pgkafka_join.rated_movies_id_seq caches % values', cache
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Values a session cached before the advance would still be handed out below it.',
                  HINT = 'Run ALTER SEQUENCE pgkafka_join.rated_movies_id_seq CACHE 1, then call advance_result_ids() again.';
    END IF;
    IF past > maxvalue - 1099511627776 THEN
        RAISE EXCEPTION 'cannot advance result ids past %: too close to the end of the sequence', past
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Sequence pgkafka_join.rated_movies_id_seq ends at %s; at least 2^40 ids must remain after past.', maxvalue),
                  HINT = 'Check the value: it is the highest result id found on the output topic.';
    END IF;
    PERFORM pgkafka_join.lock_ingest();
    PERFORM setval('pgkafka_join.rated_movies_id_seq',
                   greatest(past, (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                                     FROM pgkafka_join.rated_movies_id_seq)));
    WITH moved AS (
        SELECT id, nextval('pgkafka_join.rated_movies_id_seq') AS new_id
          FROM (SELECT r.id FROM pgkafka_join.rated_movies r
                  LEFT JOIN pgkafka_join.published_ids() p USING (share)
                 WHERE r.id > coalesce(p.last_id, 0) AND r.id <= past
                   AND r.share = ANY ((SELECT c.ahead_shares FROM pgkafka_join.control c)::integer[])
                 ORDER BY r.id) ids
    )
    UPDATE pgkafka_join.rated_movies r SET id = m.new_id
      FROM moved m
     WHERE r.id = m.id;
    GET DIAGNOSTICS renumbered = ROW_COUNT;
    UPDATE pgkafka_join.control SET ahead_shares = NULL WHERE ahead_shares IS NOT NULL;
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

CREATE FUNCTION worker_status(OUT worker integer, OUT pid integer, OUT state text,
                              OUT state_since timestamptz,
                              OUT last_error text, OUT last_error_at timestamptz,
                              OUT messages_total bigint, OUT results_total bigint,
                              OUT published_total bigint,
                              OUT messages_per_second double precision,
                              OUT results_per_second double precision,
                              OUT published_per_second double precision,
                              OUT published_id bigint,
                              OUT partitions integer, OUT unlisted_lag bigint,
                              OUT unlisted_stopped integer,
                              OUT owned_partitions text, OUT shares integer[],
                              OUT rejoined_total bigint)
RETURNS SETOF record
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_worker_status';

CREATE FUNCTION partition_status(OUT worker integer, OUT topic text,
                                 OUT kafka_partition integer,
                                 OUT high_watermark bigint, OUT consumed_offset bigint,
                                 OUT problem text)
RETURNS SETOF record
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_partition_status';

/*
 * status: one row per join worker (pgkafka_join.workers of them).  Counters
 * and rates are since the worker started; lag is what the brokers hold
 * beyond the stored offsets of the worker's partitions, as last seen by the
 * worker (partitions beyond pgkafka_join.max_partitions included).
 * publish_lag counts the worker's results not yet recorded as published;
 * it and pending_ratings (for the whole database) are counted up to
 * 100000: 100001 means "more".  rejoined_total counts the results of
 * results_total made by rejoin passes: ratings whose movie another worker
 * stored at the same moment.
 */
CREATE VIEW status AS
SELECT w.worker, w.pid, w.state, w.state_since,
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
       (SELECT count(*) FROM (SELECT 1 FROM unnest(w.shares) AS s(share)
                               LEFT JOIN published_ids() pi USING (share)
                               CROSS JOIN LATERAL (SELECT 1 FROM rated_movies r
                                                    WHERE r.share = s.share
                                                      AND r.id > coalesce(pi.last_id, 0)
                                                    LIMIT 100001) u
                               LIMIT 100001) u) AS publish_lag,
       w.partitions,
       l.stopped + w.unlisted_stopped AS stopped_partitions,
       w.owned_partitions,
       w.rejoined_total
  FROM worker_status() w,
       LATERAL (SELECT coalesce(sum(greatest(p.high_watermark - coalesce(io.next_offset, 0), 0)), 0)::bigint AS lag,
                       count(p.problem)::integer AS stopped
                  FROM partition_status() p
                  LEFT JOIN input_offsets io USING (topic, kafka_partition)
                 WHERE p.worker = w.worker) l
 ORDER BY w.worker;

/*
 * input_status: per input topic and partition, the worker consuming it,
 * stored offset, lag, problem
 */
CREATE VIEW input_status AS
SELECT coalesce(io.topic, p.topic) AS topic,
       coalesce(io.kafka_partition, p.kafka_partition) AS kafka_partition,
       p.worker,
       io.next_offset AS stored_offset,
       p.high_watermark,
       greatest(p.high_watermark - coalesce(io.next_offset, 0), 0) AS lag,
       io.updated_at AS stored_at,
       p.problem
  FROM input_offsets io
  FULL JOIN partition_status() p USING (topic, kafka_partition);

/* output_status: per output partition and share, what was published */
CREATE VIEW output_status AS
SELECT op.topic, op.kafka_partition, op.share, op.next_offset, op.last_id, op.updated_at
  FROM output_position op;

/*
 * recovered_ratings
 *		Ratings whose result was found on the output topic by
 *		recover_results() before PostgreSQL stored the rating itself (the
 *		database lost the commit that stored it: a failover to an
 *		asynchronous standby, a restore).  When the rating is consumed again,
 *		store_ratings() records it as joined and makes no second result for
 *		it, and removes it from here.
 */
CREATE TABLE recovered_ratings (
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
CREATE FUNCTION recover_results(output_topic text, ids bigint[], shares integer[],
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
    rejected_messages, rejoins, recovered_ratings, control, status, input_status, output_status
    TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION worker_status(), partition_status(), output_position(),
    snapshot_shares(), published_ids()
    TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION pause(), resume(), reset_offsets(text, integer, bigint),
    drop_partitions(interval), wake_worker(), advance_result_ids(bigint),
    delete_rejected(interval)
    TO pgkafka_join_admin;
