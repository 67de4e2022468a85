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
