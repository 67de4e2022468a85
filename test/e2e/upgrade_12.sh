#!/bin/bash
#
# upgrade_12.sh
#		ALTER EXTENSION pgkafka_join UPDATE from a running 1.2 installation,
#		under a stream, loses and repeats nothing.
#
# The 1.2 release (the last commit before the objects of 1.3 were written,
# from git history) is built and installed in a private copy of the
# PostgreSQL installation, and runs with two workers while ratings stream
# in: 3,000 ratings of 200 movies in 30 chunks, and 50 ratings of movie 500,
# which is not sent until after the upgrade (they wait).  Once 1.2 has
# published a sixth of the stream, the server is stopped, the new build
# installed and the server started, as a DBA upgrades; the stream goes on
# meanwhile.  The new workers wait, saying so, until ALTER EXTENSION UPDATE;
# the ratings produced meanwhile are stored after it.  At the end every
# result is on the output topic exactly once, the rows of 1.2 are as they
# were, and the upgraded objects are those of a fresh CREATE EXTENSION.
#
# 1.2 as built from the source tree between its release and 1.3 already had
# the objects 1.3 adds: its script too is brought to 1.3 by the update (in a
# second database, without a worker).

. "$(dirname "$0")/setup.sh"
MOVIES=200
RATINGS=3000
CHUNKS=30
WAITING=50		# ratings of movie 500, sent after the update

test_init upgrade_12
current=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$TEST_TOP/pgkafka_join.control")
kafka_start "$TEST_DIR/kafka"
for t in movies ratings rated_movies; do
	kafka_create_topic $t 3
done
PG_DIR=$TEST_DIR/pg
LOG=$PG_DIR/server.log
pg_private_install "$TEST_DIR/inst"

# --- 1.2 from history: the commit before recovered_ratings was first
# written into 1.2's script (sed reads git's output to its end, see
# upgrade.sh)
with_13=$(git -C "$TEST_TOP" log --format=%H --reverse -S recovered_ratings -- sql/pgkafka_join--1.2.sql | sed -n 1p)
install_release 1.2 "${with_13:+$with_13^}"

# --- 1.2 at work, two workers
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.batch_size = 100" \
	"pgkafka_join.workers = 2"
psql_q "CREATE EXTENSION pgkafka_join VERSION '1.2'"
produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '"$MOVIES"' ]' ||
	fail "1.2 did not store the movies"

# The stream, and movie 500's ratings (values 1000 and up, above the
# stream's, which are 0.001 to 3); chunks from the tenth on (values above
# 1) wait until the new build waits for the update
stream_files "$MOVIES" "$RATINGS" "$CHUNKS" 12
for ((i = 1000; i < 1000 + WAITING; i++)); do
	printf '500\t{"id": 500, "rating": %d}\n' $i >>"$TEST_DIR/ratings.0"
	printf '500\t%d\n' $i >>"$TEST_DIR/expected"
done
sort -o "$TEST_DIR/expected" "$TEST_DIR/expected"
stream_produce 10 "$TEST_DIR/new_build_waits"

results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo 0; }
wait_for 120 '[ "$(results)" -ge '$((RATINGS / 6))' ]' ||
	fail "1.2 did not join a sixth of the stream"
pass "1.2 joins the stream with two workers ($(results) results when the server is stopped)"

# --- the upgrade: stop, install the new build, start; the stream goes on
pg_stop "$PG_DIR"
make -s -C "$TEST_TOP" install DESTDIR="$INST" >/dev/null || fail "could not install the new build"
pg_start "$PG_DIR"
wait_for 30 '[ "$(psql_q "SELECT string_agg(DISTINCT state, '"','"') || '"'|'"' || count(*) FROM pgkafka_join.status")" = "waiting for ALTER EXTENSION UPDATE|2" ]' ||
	fail "the new workers do not wait for the update: $(psql_q "SELECT worker, state FROM pgkafka_join.status")"
# the rows of 1.2, as they are while nothing can change them
rows_12()
{
	psql_q "SELECT count(*) || ':' || md5(string_agg(t, ',' ORDER BY t)) FROM (
	          SELECT format('%s', r) AS t FROM pgkafka_join.rated_movies r WHERE r.id <= $1
	          UNION ALL SELECT format('%s', r) FROM pgkafka_join.movies r
	          UNION ALL SELECT format('%s', r) FROM pgkafka_join.ratings r WHERE r.received_at < '$2') s"
}
last_12=$(psql_q "SELECT max(id) FROM pgkafka_join.rated_movies")
waiting_at=$(psql_q "SELECT clock_timestamp()")
before=$(rows_12 "$last_12" "$waiting_at")
touch "$TEST_DIR/new_build_waits"
# Input arrives while the workers wait: the update runs once the producer
# has sent five more chunks.  The time is taken before the update, so that
# a row stored while it runs is caught too.
wait_for 60 '[ -e "$TEST_DIR/produced.15" ]' || fail "the stream stopped"
# Three more turns of each worker (each ends in a sleep of retry_interval,
# counted by the kernel, see upgrade.sh) are three occasions to store them
sleeps() { awk '/^voluntary_ctxt_switches:/ { print $2 }' "/proc/$1/status"; }
for pid in $(psql_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'"); do
	slept=$(sleeps "$pid")
	wait_for 60 '[ "$(sleeps '"$pid"')" -ge '$((slept + 3))' ]' ||
		fail "the waiting worker $pid did not go round its loop"
done
update_at=$(psql_q "SELECT clock_timestamp()")
check_eq "nothing is stored before the update" "0" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE received_at >= '$waiting_at'")"
check_eq "the log says what to run, once per worker" "2" \
	"$(grep -c "this library needs version $current" "$LOG" || true)"

psql_q "ALTER EXTENSION pgkafka_join UPDATE"
check_eq "the extension is $current" "$current" "$(psql_q "SELECT extversion FROM pg_extension WHERE extname = 'pgkafka_join'")"
check_eq "the rows of 1.2 are as they were" "$before" "$(rows_12 "$last_12" "$waiting_at")"

wait "$PRODUCER" || fail "the stream's producer failed"
printf '500\t{"id": 500, "title": "Movie 500"}\n' | kafka_produce movies
wait_for_output $((RATINGS + WAITING)) 180
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = '$((RATINGS + WAITING))' ]' ||
	fail "the ratings were not all stored: $(psql_q "SELECT count(*) FROM pgkafka_join.ratings")"
check_output_exactly_once "after an upgrade from 1.2 under a stream"
check_eq "what was produced while the workers waited was stored after the update" "0" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE received_at > '$waiting_at' AND received_at < '$update_at'")"
check_eq "the ratings that waited for movie 500 were joined after the update" "$WAITING|$WAITING" \
	"$(psql_q "SELECT count(*), count(*) FILTER (WHERE joined_at > '$update_at') FROM pgkafka_join.rated_movies WHERE movie_id = 500")"
check_eq "the workers never exited" "0" \
	"$(awk '/starting PostgreSQL/ {n = 0} /exited with exit code|terminated by signal/ {n++} END {print n + 0}' "$LOG")"

# --- the upgraded objects are those of a fresh install
check_objects_as_fresh

# --- 1.2 as built before 1.3, with the objects of 1.3 already there
first_13=$(git -C "$TEST_TOP" log --format=%H --reverse -S"default_version = '1.3'" -- pgkafka_join.control | sed -n 1p)
[ -n "$first_13" ] || fail "no commit makes 1.3 in this clone's history"
git -C "$TEST_TOP" show "$first_13^:sql/pgkafka_join--1.2.sql" \
	>"$INST$(pg_config --sharedir)/extension/pgkafka_join--1.2.sql" ||
	fail "no 1.2 script before 1.3"
psql_q "CREATE DATABASE interim"
export PGDATABASE=interim
psql_q "CREATE EXTENSION pgkafka_join VERSION '1.2'"
check_eq "1.2 as built before 1.3 has recovered_ratings and recover_results()" "1|1" \
	"$(psql_q "SELECT (to_regclass('pgkafka_join.recovered_ratings') IS NOT NULL)::int,
	                  count(*) FROM pg_proc WHERE proname = 'recover_results'")"
psql_q "ALTER EXTENSION pgkafka_join UPDATE"
check_objects_as_fresh
