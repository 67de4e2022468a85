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
 */

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

/* ---- per-partition indexes ---- */

DROP INDEX ratings_pending_idx;
DROP INDEX rated_movies_id_idx;
DROP INDEX rated_movies_movie_id_idx;

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

CREATE OR REPLACE FUNCTION join_window() RETURNS interval
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('pgkafka_join.join_window')::interval $$;

CREATE OR REPLACE FUNCTION reserve_result_ids() RETURNS bigint
LANGUAGE sql
AS $$ SELECT pg_catalog.nextval('pgkafka_join.rated_movies_id_seq') $$;

CREATE OR REPLACE FUNCTION finish_result_ids(first_id bigint, used bigint) RETURNS void
LANGUAGE sql
AS $$
    SELECT pg_catalog.setval('pgkafka_join.rated_movies_id_seq',
                             CASE WHEN used OPERATOR(pg_catalog.>) 0
                                  THEN first_id OPERATOR(pg_catalog.+) used OPERATOR(pg_catalog.-) 1
                                  ELSE first_id END,
                             used OPERATOR(pg_catalog.>) 0)
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
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.format('{"id":%s,"title":%s,"release_year":%s,"rating":%s,"rated_at":"%sZ"}',
                             r.movie_id,
                             pg_catalog.to_json(r.title),
                             coalesce(r.release_year::text, 'null'),
                             r.rating,
                             pg_catalog.to_json(r.rated_at AT TIME ZONE 'UTC') OPERATOR(pg_catalog.#>>) '{}')
$$;

CREATE OR REPLACE FUNCTION output_position(OUT topic text, OUT kafka_partition integer,
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

/* ---- storing the same input again ---- */

/*
 * store_rejected
 *		A message rejected again (consumed again after reset_offsets(), or
 *		after a crash) replaces its earlier row: the reason may differ if the
 *		settings changed meanwhile.
 */
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
CREATE OR REPLACE FUNCTION store_movies(ids bigint[], titles text[], release_years integer[])
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

/* ---- ways out, and retention of rejected messages ---- */

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

/* ---- status: stopped partitions, partitions beyond the listed ones ---- */

DROP VIEW status;
DROP VIEW input_status;
DROP FUNCTION worker_status();
DROP FUNCTION partition_status();

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

/* ---- privileges of the new and recreated objects ---- */

REVOKE ALL ON status, input_status FROM PUBLIC;
REVOKE ALL ON FUNCTION worker_status(), partition_status(), control_merge(),
    create_partition_indexes(text, text), advance_result_ids(bigint),
    delete_rejected(interval) FROM PUBLIC;
GRANT SELECT ON status, input_status TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION worker_status(), partition_status() TO pgkafka_join_reader;
GRANT EXECUTE ON FUNCTION advance_result_ids(bigint), delete_rejected(interval)
    TO pgkafka_join_admin;
