/* pgkafka_join--1.1--1.2.sql */

\echo Use "ALTER EXTENSION pgkafka_join UPDATE TO '1.2'" to load this file. \quit

/*
 * 1.2: exact under every race, setting and role.
 *
 *  - Each worker's rejoin pass runs only the ratings its own batches
 *    queued (a pass of one worker could take another's entry before the
 *    transactions that entry raced with had ended); worker 0 runs the
 *    entries of workers that no longer exist.  An entry keeps the cut-off
 *    of the batches that queued it, and the pass joins with it.
 *  - join_waiting() and store_movies() take the batch's cut-off.
 *  - The ingest and maintenance locks are table locks on ingest_lock and
 *    maintenance_lock, which no unprivileged role can take, instead of
 *    advisory keys any role could hold.  drop_partitions() called while
 *    another runs says so with an error instead of returning nothing.
 *  - worker_status() and the status view count rejoined_total, the results
 *    made by rejoin passes.
 *  - advance_result_ids() renumbers the results of the shares a worker found
 *    ahead (control.ahead_shares) only, so that other workers go on; it
 *    refuses a sequence with a cache, and a position too close to the end
 *    of the sequence.
 */

CREATE TABLE ingest_lock ();
CREATE TABLE maintenance_lock ();
COMMENT ON TABLE ingest_lock IS
    'locked ROW SHARE by every batch, EXCLUSIVE by pause(), reset_offsets(), drop_partitions(), advance_result_ids()';
COMMENT ON TABLE maintenance_lock IS
    'locked EXCLUSIVE by drop_partitions(): one call at a time';
REVOKE ALL ON TABLE ingest_lock, maintenance_lock FROM PUBLIC;

CREATE OR REPLACE FUNCTION lock_ingest() RETURNS void
LANGUAGE sql
AS $$
    LOCK TABLE pgkafka_join.ingest_lock IN EXCLUSIVE MODE;
$$;

CREATE OR REPLACE FUNCTION lock_ingest_shared() RETURNS void
LANGUAGE sql
AS $$
    LOCK TABLE pgkafka_join.ingest_lock IN ROW SHARE MODE;
$$;

DROP FUNCTION join_waiting(bigint[], integer[]);
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

DROP FUNCTION store_movies(bigint[], text[], integer[], integer[]);
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

-- entries queued by 1.1 join with the window as it is now
ALTER TABLE rejoins ADD COLUMN cutoff timestamptz;
UPDATE rejoins
   SET cutoff = pg_catalog.now() OPERATOR(pg_catalog.-)
                COALESCE(pg_catalog.current_setting('pgkafka_join.join_window', true),
                         '1 month')::interval;
ALTER TABLE rejoins ALTER COLUMN cutoff SET NOT NULL;

DROP FUNCTION queue_rejoin(integer, bigint[], integer[]);
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

DROP FUNCTION run_rejoins(integer[]);
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

REVOKE ALL ON FUNCTION join_waiting(bigint[], integer[], timestamptz),
    store_movies(bigint[], text[], integer[], integer[], timestamptz),
    queue_rejoin(integer, bigint[], integer[], timestamptz),
    run_rejoins(integer, integer[], boolean)
    FROM PUBLIC;

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

-- the shares a worker found ahead: advance_result_ids() renumbers theirs only
ALTER TABLE control ADD COLUMN ahead_shares integer[];

CREATE OR REPLACE FUNCTION advance_result_ids(past bigint) RETURNS bigint
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

-- rejoined_total in worker_status() and the status view
DROP VIEW status;
DROP FUNCTION worker_status();
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

REVOKE ALL ON FUNCTION worker_status() FROM PUBLIC;
REVOKE ALL ON TABLE status FROM PUBLIC;
GRANT EXECUTE ON FUNCTION worker_status() TO pgkafka_join_reader;
GRANT SELECT ON status TO pgkafka_join_reader;
