#!/bin/bash
#
# plans.sh
#		The batch functions join a batch with the catalog by one index
#		lookup per row, whatever the size of the catalog.
#
# The batch is an array whose size the planner cannot see, and each batch
# function runs one generic plan.  Left free, the planner joins a batch with
# a catalog of some tens of thousands of movies by a hash join over a
# sequential scan of every catalog partition, which each batch then reads
# whole (it did, in the latency benchmark).  The functions forbid hash and
# merge joins for their own statements.
#
# No broker: the functions are called by hand, in transactions rolled back,
# with auto_explain logging the plans of their statements.  The check is
# made twice: on the functions as installed, where every join with the
# catalog must be index lookups, and on copies of them left free to choose
# (their settings reset), where the same check must see the sequential
# scans, so that it is known to catch them.

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
SELECT pgkafka_join.store_ratings(array_agg(1 + (i * 7919) % $MOVIES), array_agg(5.0::float8),
                                  array_agg(now()), array_agg(0), array_agg(1000 + i::bigint))
  FROM generate_series(1, 100) AS i;
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

plans=$(plans_of)
check_eq "the functions' plans were logged (store_ratings' join, store_movies' upsert, join_waiting's update)" \
	"1 1 1" \
	"$(grep -c 'Query Text: WITH batch AS' <<<"$plans") $(grep -c 'Query Text: INSERT INTO pgkafka_join.movies' <<<"$plans") $(grep -c 'Query Text: WITH waiting AS' <<<"$plans")"
check_eq "no hash or merge join in the batch functions' statements" 0 \
	"$(grep -cE '(Hash|Merge) (Right |Left |Anti |Semi )?Join' <<<"$plans" || true)"
scans=$(catalog_scans "$plans")
[[ "$scans" =~ ^[1-9][0-9]*\ index,\ 0\ sequential$ ]] ||
	fail "the catalog is read by index lookups only: $scans"
pass "the catalog is read by index lookups only ($scans scans of its partitions)"

# The same functions, free to choose: the check sees the sequential scans.
psql_q "ALTER FUNCTION pgkafka_join.store_ratings(bigint[], double precision[], timestamptz[], integer[], bigint[])
			RESET enable_hashjoin;
		ALTER FUNCTION pgkafka_join.store_ratings(bigint[], double precision[], timestamptz[], integer[], bigint[])
			RESET enable_mergejoin" >/dev/null
scans=$(catalog_scans "$(plans_of)")
[[ "$scans" =~ \ [1-9][0-9]*\ sequential$ ]] ||
	fail "with hash joins allowed, the check sees sequential scans of the catalog: $scans"
pass "with hash joins allowed, the check sees sequential scans of the catalog ($scans)"
