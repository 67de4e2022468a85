/* pgkafka_join--1.0--1.1.sql */

\echo Use "ALTER EXTENSION pgkafka_join UPDATE TO '1.1'" to load this file. \quit

/*
 * 1.1: nothing lost, no crash loop, no way in.
 *
 *  - The Kafka group under which the publish position is committed is kept
 *    in control.kafka_group (it was derived from settings and oids), so a
 *    database restored from a dump finds its position, and the worker can
 *    tell when Kafka is ahead of PostgreSQL.  The 1.0 group is kept.
 *  - control survives pg_dump/pg_restore (a restored row replaces the one
 *    CREATE EXTENSION made); the monthly partitions carry their own indexes
 *    instead of inheriting those of their parents, which pg_restore could
 *    not recreate.
 *  - Storing a rejected message again (after a rewind) replaces it.
 *  - A movie sent again unchanged leaves its row untouched.
 *  - Every function the worker calls is schema-qualified or has a pinned
 *    search_path.
 *  - advance_result_ids(), delete_rejected(); the status views report
 *    stopped partitions and count pending ratings up to a bound.
 *  - Shares: several join workers per server and several servers, each
 *    owning a share of the input partitions.  Each result records its share
 *    (the input partition whose worker made it), and publishing goes on per
 *    share; results made before are share -1, published after the position
 *    1.0 kept.  Batches no longer serialize on one lock, and results are
 *    numbered one nextval() each.  output_position() and snapshot_shares()
 *    give the snapshot-then-tail recipe per share; the status views show
 *    one row per worker.
 *  - movies.updated_at defaults to now(), the time a new movie is copied in.
 */

/* ---- movies copied in take updated_at from its default ---- */

ALTER TABLE movies ALTER COLUMN updated_at SET DEFAULT pg_catalog.now();

/* ---- the publish position's Kafka group, kept in control ---- */

ALTER TABLE control ADD COLUMN kafka_group text;
UPDATE control SET kafka_group =
    coalesce(nullif(pg_catalog.current_setting('pgkafka_join.transactional_id', true), ''),
             pg_catalog.format('pgkafka_join-%s-%s',
                               (SELECT system_identifier FROM pg_catalog.pg_control_system()),
                               (SELECT oid FROM pg_catalog.pg_database
                                 WHERE datname = pg_catalog.current_database())))
    || '-' || (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pgkafka_join');
ALTER TABLE control ALTER COLUMN kafka_group SET NOT NULL;

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

/* ---- shares ---- */

ALTER TABLE rated_movies ADD COLUMN share integer NOT NULL DEFAULT -1;
ALTER TABLE rated_movies ALTER COLUMN share DROP DEFAULT;
COMMENT ON COLUMN rated_movies.share IS
    'input partition whose worker made the result; ids grow in commit order within a share';
ALTER TABLE output_position ADD COLUMN share integer NOT NULL DEFAULT -1;
ALTER TABLE output_position ALTER COLUMN share DROP DEFAULT;
ALTER TABLE output_position DROP CONSTRAINT output_position_pkey;
ALTER TABLE output_position ADD PRIMARY KEY (topic, kafka_partition, share);

/* ---- per-partition indexes ---- */

DROP INDEX ratings_pending_idx;
DROP INDEX rated_movies_id_idx;
DROP INDEX rated_movies_movie_id_idx;

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

SELECT create_partition_indexes(p.relname, c.relname)
  FROM pg_catalog.pg_inherits i
  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
 WHERE p.oid IN ('ratings'::regclass, 'rated_movies'::regclass);

CREATE OR REPLACE FUNCTION create_partitions(first_month timestamptz, last_month timestamptz)
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

/* ---- no function the worker calls depends on the caller's search_path ---- */

CREATE OR REPLACE FUNCTION lock_ingest() RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtext('pgkafka_join.ingest')::bigint OPERATOR(pg_catalog.<<) 32)
$$;

/* The same lock in shared mode, taken by every batch (begin_batch) and rejoin */
CREATE FUNCTION lock_ingest_shared() RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.pg_advisory_xact_lock_shared(
        pg_catalog.hashtext('pgkafka_join.ingest')::bigint OPERATOR(pg_catalog.<<) 32)
$$;

CREATE OR REPLACE FUNCTION join_window() RETURNS interval
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('pgkafka_join.join_window')::interval $$;

CREATE OR REPLACE FUNCTION create_partitions_for(rated_ats timestamptz[])
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

CREATE OR REPLACE FUNCTION store_offsets(topics text[], kafka_partitions integer[], next_offsets bigint[])
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

CREATE OR REPLACE FUNCTION output_value(r rated_movies) RETURNS text
LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'pgkafka_join_output_value';

/* ---- storing and publishing per share, without a global lock ---- */

DROP FUNCTION reserve_result_ids();
DROP FUNCTION finish_result_ids(bigint, bigint);
DROP FUNCTION join_waiting(bigint[], text[], integer[]);
DROP FUNCTION store_movies(bigint[], text[], integer[]);
DROP FUNCTION output_position();

CREATE FUNCTION join_waiting(ids bigint[], shares integer[])
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
    cutoff timestamptz := now() - pgkafka_join.join_window();
BEGIN
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

CREATE FUNCTION store_movies(ids bigint[], titles text[], release_years integer[],
                             kafka_partitions integer[] DEFAULT NULL)
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

    RETURN pgkafka_join.join_waiting(l_ids, l_shares);
END
$$;

CREATE OR REPLACE FUNCTION store_ratings(movie_ids bigint[], ratings double precision[],
                              rated_ats timestamptz[], kafka_partitions integer[],
                              kafka_offsets bigint[])
RETURNS bigint
LANGUAGE C
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'pgkafka_join_store_ratings';

CREATE OR REPLACE FUNCTION store_rejected(topics text[], kafka_partitions integer[],
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

CREATE OR REPLACE FUNCTION begin_batch() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgkafka_join.lock_ingest_shared();
    RETURN (SELECT CASE WHEN NOT paused THEN offsets_generation END FROM pgkafka_join.control);
END
$$;

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

CREATE OR REPLACE FUNCTION drop_partitions(older_than interval)
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
 * rejoins
 *		Ratings to look at again once other workers' transactions have ended.
 *
 * With several workers, a rating and its movie can come on partitions of
 * two workers (a rating keyed otherwise than its movie) and be stored by two
 * concurrent transactions, each missing the other's row.  The transaction
 * storing ratings that wait, inside the window, queues their movie ids here;
 * after its commit the worker waits for the transactions other workers were
 * running then, and joins the ratings whose movie came meanwhile
 * (run_rejoins).  Queued in the same transaction as the ratings, so a crash
 * in between loses nothing: the next worker to start runs what is left.
 */
CREATE TABLE rejoins (
    worker          integer PRIMARY KEY,
    movie_ids       bigint[] NOT NULL,
    shares          integer[] NOT NULL,
    queued_at       timestamptz NOT NULL
);

CREATE FUNCTION queue_rejoin(worker integer, movie_ids bigint[], shares integer[])
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO pgkafka_join.rejoins AS rj VALUES (worker, movie_ids, shares, pg_catalog.now())
    ON CONFLICT (worker) DO UPDATE
       SET movie_ids = rj.movie_ids OPERATOR(pg_catalog.||) excluded.movie_ids,
           shares = rj.shares OPERATOR(pg_catalog.||) excluded.shares,
           queued_at = excluded.queued_at
$$;

/*
 * run_rejoins
 *		Join what every queued entry waits for, as results of the caller's
 *		shares ("owned", the partitions it owns: an entry's share if it is
 *		one of them, else the first), and remove the entries.  Takes the
 *		ingest lock in shared mode, as a batch does.  Returns the number of
 *		rated movies produced.
 */
CREATE FUNCTION run_rejoins(owned integer[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    entry record;
    produced bigint := 0;
BEGIN
    PERFORM pgkafka_join.lock_ingest_shared();
    FOR entry IN DELETE FROM pgkafka_join.rejoins RETURNING * LOOP
        produced := produced + pgkafka_join.join_waiting(
            entry.movie_ids,
            ARRAY(SELECT CASE WHEN s = ANY (owned) THEN s ELSE owned[1] END
                    FROM unnest(entry.shares) AS s));
    END LOOP;
    RETURN produced;
END
$$;

SELECT pg_catalog.pg_extension_config_dump('rejoins', '');

/* ---- ways out, and retention of rejected messages ---- */

CREATE FUNCTION advance_result_ids(past bigint) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    renumbered bigint;
BEGIN
    IF past IS NULL OR past < 0 THEN
        RAISE EXCEPTION 'past must be a result id, not %', coalesce(past::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
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
                 ORDER BY r.id) ids
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

/* ---- status: one row per worker, stopped partitions ---- */

DROP VIEW status;
DROP VIEW input_status;
DROP VIEW output_status;
DROP FUNCTION worker_status();
DROP FUNCTION partition_status();

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
                              OUT owned_partitions text, OUT shares integer[])
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
 * 100000: 100001 means "more".
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
       w.owned_partitions
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

/* ---- privileges of the new and recreated objects ---- */

REVOKE ALL ON status, input_status, output_status FROM PUBLIC;
REVOKE ALL ON FUNCTION worker_status(), partition_status(), control_merge(),
    create_partition_indexes(text, text), advance_result_ids(bigint),
    delete_rejected(interval), join_waiting(bigint[], integer[]),
    store_movies(bigint[], text[], integer[], integer[]), output_position(),
    snapshot_shares(), published_ids(), queue_rejoin(integer, bigint[], integer[]),
    run_rejoins(integer[]), lock_ingest_shared() FROM PUBLIC;
REVOKE ALL ON rejoins FROM PUBLIC;
GRANT SELECT ON status, input_status, output_status, rejoins TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION worker_status(), partition_status(), output_position(),
    snapshot_shares(), published_ids() TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION advance_result_ids(bigint), delete_rejected(interval)
    TO pgkafka_join_admin;
