#!/bin/bash
#
# upgrade.sh
#		ALTER EXTENSION pgkafka_join UPDATE on a running 1.0 installation
#		loses nothing.
#
# The released 1.0 (the last commit before 1.1, from git history) is built
# and installed, a cluster runs it against the broker and publishes results,
# some ratings waiting for a movie not yet sent, and 10 results stored but
# not published yet (made while the worker was idle, no brokers set).  Then,
# as a DBA upgrades:
# the server is stopped, the new build installed, the server started.  The
# new worker waits, saying so, until ALTER EXTENSION pgkafka_join UPDATE;
# input produced meanwhile is stored after the update.  At the end every
# result is on the output topic exactly once (the 1.0 publish position is
# kept: the 10 pending results of 1.0, share -1, are published after it), the
# 1.0 data is all there, and the upgraded objects are the same as those of a
# fresh CREATE EXTENSION of the current version (through every upgrade
# script from 1.0 on).
#
# Nothing outside the test's directory is touched: the test runs a private
# copy of the PostgreSQL installation (PostgreSQL finds its files relative
# to its programs), into which 1.0, then the new build, are installed with
# DESTDIR.

. "$(dirname "$0")/setup.sh"

test_init upgrade
current=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$TEST_TOP/pgkafka_join.control")
kafka_start "$TEST_DIR/kafka"
for t in movies ratings rated_movies; do
	kafka_create_topic $t 3
done
PG_DIR=$TEST_DIR/pg
LOG=$PG_DIR/server.log

pg_private_install "$TEST_DIR/inst"

# --- build 1.0 from history and install it in the copy
# (sed reads git's output to its end: "head -1" would exit after the first
# line, and git, still writing, would die of SIGPIPE, failing the pipe)
first_11=$(git -C "$TEST_TOP" log --format=%H --reverse -S"default_version = '1.1'" -- pgkafka_join.control | sed -n 1p)
install_release 1.0 "${first_11:+$first_11^}"

ratings() # FIRST COUNT MOVIES: ratings FIRST.. of movies 1..MOVIES
{
	local i
	for ((i = $1; i < $1 + $2; i++)); do
		printf '%d\t{"id": %d, "rating": %d}\n' $((i % $3 + 1)) $((i % $3 + 1)) "$i"
	done
}

# --- 1.0 at work: 100 movies, 1000 ratings; 50 ratings wait for movie 500
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.batch_size = 200"
psql_q "CREATE EXTENSION pgkafka_join VERSION '1.0'"
produce_movies_upto 100
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = 100 ]' ||
	fail "1.0 did not store the movies"
ratings 0 1000 100 | kafka_produce ratings
for ((i = 1000; i < 1050; i++)); do
	printf '500\t{"id": 500, "rating": %d}\n' $i
done | kafka_produce ratings
wait_for_output 1000
check_eq "1.0 published 1000 results, 50 ratings wait for their movie" "1050|1000|1000" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings), (SELECT count(*) FROM pgkafka_join.rated_movies), (SELECT max(id) FROM pgkafka_join.rated_movies)")"
group_10=$(psql_q "SELECT format('pgkafka_join-%s-%s-%s', (SELECT system_identifier FROM pg_control_system()), (SELECT oid FROM pg_database WHERE datname = current_database()), (SELECT oid FROM pg_extension WHERE extname = 'pgkafka_join'))")
check_eq "1.0 committed its position in Kafka" "1000" "$(kafka_group_offset "$group_10" rated_movies 0)"
# 10 results 1.0 stores but does not publish before the upgrade: the worker
# is idle (no brokers) while they are made
psql_q "ALTER SYSTEM SET pgkafka_join.brokers = ''" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "idle: no brokers set" ]' ||
	fail "the 1.0 worker did not go idle: $(psql_q "SELECT state FROM pgkafka_join.status")"
check_eq "1.0 stores 10 results it does not publish" "10" \
	"$(psql_q "SELECT pgkafka_join.store_ratings(array_agg(i % 100 + 1), array_agg(3000 + i)::float8[],
	              array_agg(now()), array_agg(0), array_agg(100000 + i)) FROM generate_series(1, 10) i")"
psql_q "ALTER SYSTEM RESET pgkafka_join.brokers" >/dev/null	# for the restart
# the 1.0 rows, in 1.0's columns
data_10()
{
	psql_q "SELECT md5(string_agg(t, ',' ORDER BY t)) FROM (
	          SELECT format('%s', (r.id, r.movie_id, r.title, r.release_year, r.rating, r.rated_at,
	                               r.joined_at, r.kafka_partition, r.kafka_offset)) AS t
	            FROM pgkafka_join.rated_movies r
	          UNION ALL SELECT format('%s', r) FROM pgkafka_join.movies r
	          UNION ALL SELECT format('%s', r) FROM pgkafka_join.ratings r) s"
}
before=$(data_10)

# --- the upgrade: stop, install the new build, start
pg_stop "$PG_DIR"
make -s -C "$TEST_TOP" install DESTDIR="$INST" >/dev/null || fail "could not install the new build"
pg_start "$PG_DIR"
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "waiting for ALTER EXTENSION UPDATE" ]' ||
	fail "the new worker does not wait for the update: $(psql_q "SELECT state FROM pgkafka_join.status")"
ratings 2000 500 100 | kafka_produce ratings
printf '500\t{"id": 500, "title": "Movie 500"}\n' | kafka_produce movies
# Nothing may be stored before the update.  A waiting worker has no Kafka
# handles and moves nothing in the status view, but its process shows its
# turns: each ends in a sleep of retry_interval, which the kernel counts in
# voluntary_ctxt_switches.  Three more turns after the messages were on the
# brokers are three occasions to store them or to log the wait again: then
# it is looked at.
worker=$(psql_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'")
[[ "$worker" =~ ^[0-9]+$ ]] || fail "no pgkafka_join worker in pg_stat_activity: $worker"
sleeps() { awk '/^voluntary_ctxt_switches:/ { print $2 }' "/proc/$worker/status"; }
slept=$(sleeps)
wait_for 60 '[ "$(sleeps)" -ge $((slept + 3)) ]' || fail "the waiting worker did not go round its loop"
check_eq "nothing is stored before the update" "waiting for ALTER EXTENSION UPDATE|1060" \
	"$(psql_q "SELECT state, (SELECT count(*) FROM pgkafka_join.ratings) FROM pgkafka_join.status")"
check_eq "the log says what to run, once" "1" \
	"$(grep -c "this library needs version $current" "$LOG" || true)"
# That look covers the turns before it.  The whole wait is covered once
# everything is stored: every row made from what was produced meanwhile is
# dated after the update (received_at, updated_at and joined_at are the
# start of the transaction that stored the row).  The time is taken before
# the update, so that a row stored while the update runs is caught too.
update_at=$(psql_q "SELECT clock_timestamp()")

psql_q "ALTER EXTENSION pgkafka_join UPDATE"
check_eq "the extension is $current" "$current" "$(psql_q "SELECT extversion FROM pg_extension WHERE extname = 'pgkafka_join'")"
check_eq "the 1.0 data is intact" "$before" "$(data_10)"
check_eq "the 1.0 results are share -1" "1010|1010" \
	"$(psql_q "SELECT count(*), count(*) FILTER (WHERE share = -1) FROM pgkafka_join.rated_movies")"
check_eq "the position's Kafka group is the one 1.0 used" "$group_10" \
	"$(psql_q "SELECT kafka_group FROM pgkafka_join.control")"

wait_for_output 1560 120
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = 1560 ]' ||
	fail "the ratings produced while the worker waited were not all stored: $(psql_q "SELECT count(*) FROM pgkafka_join.ratings")"
# The 500 ratings and movie 500 produced while the worker waited, and the
# results of those ratings and of the 50 that waited for movie 500
check_eq "nothing produced while the worker waited was stored or joined before the update" "500|500|1|1|550|550" \
	"$(psql_q "SELECT (SELECT count(*) FILTER (WHERE received_at > '$update_at') || '|' || count(*)
	                     FROM pgkafka_join.ratings WHERE rating >= 2000 AND rating < 2500),
	                  (SELECT count(*) FILTER (WHERE updated_at > '$update_at') || '|' || count(*)
	                     FROM pgkafka_join.movies WHERE id = 500),
	                  (SELECT count(*) FILTER (WHERE joined_at > '$update_at') || '|' || count(*)
	                     FROM pgkafka_join.rated_movies WHERE rating >= 1000 AND rating < 2500)")"
check_eq "the 10 results 1.0 had not published are published, as share -1, after its position" \
	"$(seq 1001 1010 | paste -sd,)" \
	"$(kafka_consume rated_movies -f '%h\n' | grep -E 'pgkafka_join.share=-1(,|$)' |
		sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"
check_eq "after the update: 1560 results, each id once, in one sequence" "1560|1560|1560|1" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' |
		awk '{n++; if (!s[$1]++) d++; if ($1 > m) m = $1; if (min == "" || $1 < min) min = $1} END {print n "|" d "|" m "|" min}')"
check_eq "the waiting ratings were joined with their movie, the new ones too" "1560|1560|0" \
	"$(psql_q "SELECT count(*), count(DISTINCT rating), count(*) FILTER (WHERE movie_id = 500 AND rating < 1000) FROM pgkafka_join.rated_movies")"
check_eq "the output topic holds exactly the results of rated_movies" \
	"$(psql_q "SELECT string_agg(id || ':' || movie_id || ':' || rating, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\t%k\t%s\n' |
		sed -E 's/^.*pgkafka_join.id=([0-9]+)[^\t]*\t([0-9]+)\t.*"rating":([0-9.]+).*$/\1:\2:\3/' |
		sort -t: -k1,1n | paste -sd,)"
check_eq "every monthly partition has its own indexes, the parents none" "0|0" \
	"$(psql_q "SELECT (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
	                   WHERE i.inhparent IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass)
	                     AND c.relkind = 'r'
	                     AND (SELECT count(*) FROM pg_index x WHERE x.indrelid = c.oid)
	                         <> CASE WHEN c.relname LIKE 'ratings%' THEN 1 ELSE 2 END),
	                  (SELECT count(*) FROM pg_index x
	                   WHERE x.indrelid IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass))")"
check_eq "the new worker never exited" "0" \
	"$(awk '/starting PostgreSQL/ {n = 0} /exited with exit code|terminated by signal/ {n++} END {print n + 0}' "$LOG")"

# --- the upgraded objects are those of a fresh install
check_objects_as_fresh
