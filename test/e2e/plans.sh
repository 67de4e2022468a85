#!/bin/bash
#
# plans.sh
#		The batch functions join a batch with the catalog by one index
#		lookup per row, whatever the size of the catalog.
#
# store_ratings (C, src/join.c) looks each movie of its batch up in the
# primary key of the catalog partition that holds it: the statistics of
# its transaction (pg_stat_xact_user_tables) must count one index scan per
# distinct movie and no sequential scan; the same count over a query that
# scans the catalog must see its sequential scans.
#
# The SQL batch functions (store_movies, and join_waiting which it calls)
# get a batch as an array whose size the planner cannot see, and each runs
# one generic plan.  Left free, the planner joins a batch with a catalog of
# some tens of thousands of movies by a hash join over a sequential scan of
# every catalog partition, which each batch then reads whole (it did, in
# the latency benchmark).  The functions forbid hash and merge joins for
# their own statements.  Checked with auto_explain logging the plans of
# their statements, twice: on the functions as installed, where every join
# with the catalog must be index lookups, and on copies of them left free
# to choose (their settings reset), where the same check must see the
# sequential scans, so that it is known to catch them.
#
# No broker: the functions are called by hand, in transactions rolled back.

. "$(dirname "$0")/../lib.sh"

test_init plans
PG_DIR=$TEST_DIR/pg
pg_start "$PG_DIR" "pgkafka_join.database = 'postgres'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
LOG=$PG_DIR/server.log

MOVIES=50000
psql_q "INSERT INTO pgkafka_join.movies
		SELECT i, 'Movie ' || i, 1900 + i % 120, now() FROM generate_series(1, $MOVIES) AS i;
		ANALYZE pgkafka_join.movies" >/dev/null
# ratings waiting for movies that are not there yet (join_waiting's update)
psql_q "SELECT pgkafka_join.store_ratings(array_agg($MOVIES + i), array_agg(5.0::float8),
											array_agg(now()), array_agg(0), array_agg(i::bigint))
		  FROM generate_series(1, 10) AS i" >/dev/null
psql_q "ANALYZE pgkafka_join.ratings" >/dev/null

# plans_of: call the batch functions with auto_explain on, in a transaction
# rolled back; print the plans they logged.
plans_of()
{
	local start

	start=$(($(wc -l <"$LOG") + 1))
	psql_q >/dev/null <<EOF
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
BEGIN;
SELECT pgkafka_join.store_movies(array_agg(i::bigint), array_agg('New ' || i), array_agg(2000))
  FROM generate_series($MOVIES - 50, $MOVIES + 50) AS i;
ROLLBACK;
EOF
	tail -n +"$start" "$LOG"
}

# catalog_scans PLANS: the scans of catalog partitions, by kind: "N index,
# N sequential"
catalog_scans()
{
	echo "$(grep -cE 'Index (Only )?Scan using movies_p[0-9]+_pkey on movies_p' <<<"$1" || true) index," \
		"$(grep -cE '(Seq|Bitmap Heap) Scan on movies_p' <<<"$1" || true) sequential"
}

# catalog_reads QUERY: in a transaction rolled back, what QUERY returned and
# the scans of the catalog's tables it counted: "RESULT: N index scans of N
# partitions, N sequential"
catalog_reads()
{
	psql_q <<EOF
BEGIN;
$1 \\gset
SELECT :'result' || ': ' || coalesce(sum(idx_scan), 0) || ' index scans of ' ||
       count(*) FILTER (WHERE idx_scan > 0) || ' partitions, ' ||
       coalesce(sum(seq_scan), 0) || ' sequential'
  FROM pg_stat_xact_user_tables
 WHERE schemaname = 'pgkafka_join' AND relname LIKE 'movies%';
ROLLBACK;
EOF
}

# 1000 ratings of 1000 distinct stored movies (7919 is prime to $MOVIES)
check_eq "store_ratings joins 1000 ratings of 1000 movies by 1000 index lookups, no sequential scan" \
	"1000: 1000 index scans of 32 partitions, 0 sequential" \
	"$(catalog_reads "SELECT pgkafka_join.store_ratings(array_agg(1 + (i * 7919) % $MOVIES),
								array_agg(5.0::float8), array_agg(now()), array_agg(0),
								array_agg(1000 + i::bigint)) AS result
		FROM generate_series(1, 1000) AS i")"
check_eq "the same count sees a scan of the whole catalog" \
	"0: 0 index scans of 0 partitions, 32 sequential" \
	"$(catalog_reads "SELECT count(*) AS result FROM pgkafka_join.movies WHERE title = 'none'")"

plans=$(plans_of)
check_eq "the functions' plans were logged (store_movies' delete and upsert, join_waiting's update)" \
	"1 1 1" \
	"$(grep -c 'Query Text: DELETE FROM pgkafka_join.movies' <<<"$plans") $(grep -c 'Query Text: INSERT INTO pgkafka_join.movies' <<<"$plans") $(grep -c 'Query Text: WITH waiting AS' <<<"$plans")"
check_eq "no hash or merge join in the batch functions' statements" 0 \
	"$(grep -cE '(Hash|Merge) (Right |Left |Anti |Semi )?Join' <<<"$plans" || true)"
scans=$(catalog_scans "$plans")
[[ "$scans" =~ ^[1-9][0-9]*\ index,\ 0\ sequential$ ]] ||
	fail "the catalog is read by index lookups only: $scans"
pass "the catalog is read by index lookups only ($scans scans of its partitions)"

# The same functions, free to choose: the check sees the sequential scans.
for f in "store_movies(bigint[], text[], integer[], integer[], timestamptz)" "join_waiting(bigint[], integer[], timestamptz)"; do
	psql_q "ALTER FUNCTION pgkafka_join.$f RESET enable_hashjoin;
			ALTER FUNCTION pgkafka_join.$f RESET enable_mergejoin" >/dev/null
done
scans=$(catalog_scans "$(plans_of)")
[[ "$scans" =~ \ [1-9][0-9]*\ sequential$ ]] ||
	fail "with hash joins allowed, the check sees sequential scans of the catalog: $scans"
pass "with hash joins allowed, the check sees sequential scans of the catalog ($scans)"
