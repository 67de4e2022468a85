#!/bin/bash
#
# explain.sh
#		Plans and timings of the SQL the worker runs per batch, called by
#		hand on the cluster of a benchmark left running:
#
#	KEEP_RUNNING=1 test/bench.sh		# then
#	test/bench/explain.sh [N]			# N: rows per call, default 10000
#
# In one session, with auto_explain (log_analyze, buffers, WAL, nested
# statements), each call in a transaction that is rolled back:
#	store_movies   N new movie ids (plain inserts through the upsert);
#	store_ratings  N ratings of random stored movies (in C, src/join.c: no
#				   plan to log, its time only);
#	the publisher's fetch of N results of one share (output_value).
# Then how store_ratings read the catalog, from the statistics of its
# transaction (pg_stat_xact_user_tables): one index scan of a catalog
# partition's primary key per distinct movie, never a scan of a whole
# partition.
# Also times each call without auto_explain (its instrumentation costs).
# Prints the durations and the JIT lines; the full plans go to
# $TEST_DIR/explain.log.  The worker must be idle (it is, once the benchmark
# is over): the calls take the ingest lock.

. "$(dirname "$0")/../lib.sh"

N=${1:-10000}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N]" >&2; exit 2; }
TEST_DIR=$TEST_RUN_DIR/bench
PG_DIR=$TEST_DIR/pg
[ -f "$PG_DIR/data/postmaster.pid" ] ||
	{ echo "no benchmark cluster running in $PG_DIR; run KEEP_RUNNING=1 test/bench.sh first" >&2; exit 1; }
pg_use "$PG_DIR"
LOG=$PG_DIR/server.log
OUT=$TEST_DIR/explain.log

MAXID=$(psql_q "SELECT coalesce(max(id), 0) FROM pgkafka_join.movies")
[ "$MAXID" -gt 0 ] || { echo "pgkafka_join.movies is empty" >&2; exit 1; }
start=$(($(wc -l <"$LOG") + 1))

psql_q <<EOF | grep -E '^(#|Time:)' | sed 's/^Time: /    /' >"$TEST_DIR/explain.timing"
CREATE TEMP TABLE m AS
SELECT array_agg(i::bigint ORDER BY i) AS ids, array_agg('Movie ' || i ORDER BY i) AS titles,
       array_agg(1900 + i % 120 ORDER BY i) AS years
  FROM generate_series($MAXID + 1, $MAXID + $N) AS i;
CREATE TEMP TABLE r AS
SELECT array_agg((1 + floor(random() * $MAXID))::bigint) AS ids, array_agg(1 + random() * 9) AS ratings,
       array_agg(now()) AS rated_ats, array_agg(0) AS parts, array_agg(i::bigint) AS offs
  FROM generate_series(1, $N) AS i;
SET application_name = 'explain: timing';
BEGIN;
\\timing on
\\echo '#   store_movies'
SELECT pgkafka_join.store_movies(ids, titles, years) FROM m \\g /dev/null
\\timing off
ROLLBACK;
BEGIN;
\\timing on
\\echo '#   store_ratings'
SELECT pgkafka_join.store_ratings(ids, ratings, rated_ats, parts, offs) FROM r \\g /dev/null
\\timing off
ROLLBACK;
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_wal = on;
SET application_name = 'explain: store_movies';
BEGIN; SELECT pgkafka_join.store_movies(ids, titles, years) FROM m; ROLLBACK;
SET application_name = 'explain: publisher fetch';
SELECT count(*), sum(length(v))
  FROM (SELECT r.id, r.movie_id::text, pgkafka_join.output_value(r) AS v
          FROM pgkafka_join.rated_movies r
         WHERE r.share = (SELECT share FROM pgkafka_join.snapshot_shares() ORDER BY last_id DESC LIMIT 1)
           AND r.id > 0
         ORDER BY r.id LIMIT $N) AS s;
EOF

tail -n +"$start" "$LOG" >"$OUT"
echo "# $N rows per call; full plans in $OUT"
echo "# without instrumentation (ms):"
cat "$TEST_DIR/explain.timing"
echo "# top-level statements (ms), with auto_explain's instrumentation:"
grep -E 'LOG:  duration: ' -A1 "$OUT" | grep -v '^--' | paste - - |
	sed -E 's/.*duration: ([0-9.]+) ms.*Query Text: *(.{0,70}).*/  \1\t\2/' |
	grep -E 'store_movies\(ids|store_ratings\(ids|WITH latest|SELECT count'
echo "# JIT:"
grep -E '^\s+(Functions|Options|Timing):' "$OUT" | sed 's/^\s*/  /' || echo '  (none)'
# How store_ratings read the catalog: the scans counted by its transaction,
# in a session of its own (a session's counts reach the shared statistics,
# and leave pg_stat_xact_user_tables, about once a second)
read -r movies lookups scans parts <<<"$(psql_q - -F ' ' <<EOF
CREATE TEMP TABLE r AS
SELECT array_agg((1 + floor(random() * $MAXID))::bigint) AS ids FROM generate_series(1, $N);
BEGIN;
SELECT pgkafka_join.store_ratings(ids, array_fill(5.0::float8, ARRAY[$N]), array_fill(now(), ARRAY[$N]),
                                  array_fill(0, ARRAY[$N]), array_fill(0::bigint, ARRAY[$N]))
  FROM r \\g /dev/null
SELECT (SELECT count(DISTINCT id) FROM r, unnest(r.ids) AS id),
       coalesce(sum(idx_scan), 0), coalesce(sum(seq_scan), 0), count(*) FILTER (WHERE idx_scan > 0)
  FROM pg_stat_xact_user_tables
 WHERE schemaname = 'pgkafka_join' AND relname LIKE 'movies%';
ROLLBACK;
EOF
)"
echo "# join reads: $N ratings of $movies movies: $lookups index scans of the primary keys of $parts catalog partitions, $scans sequential scans"
