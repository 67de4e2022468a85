#!/bin/bash
#
# failover.sh
#		High availability with PostgreSQL's own streaming replication: a
#		synchronous standby, made by pg_basebackup -R on the same machine.
#		No pgkafka_join process runs on the standby while it is one.  The
#		primary is killed (SIGKILL, the postmaster and all its children at
#		once, as in a machine crash) in the middle of a stream; the standby
#		is promoted, and its worker starts there without a restart, goes on
#		from the replicated state, and every rating's result is on the
#		output topic exactly once.
#
# Why it holds: with synchronous_commit = on and the standby synchronous,
# a commit of the worker returns only once the standby has its WAL on
# disk, and the worker publishes a result only after its commit returned.
# So whatever was published, the standby holds, with the input offsets that
# produced it; the promoted server has the same system identifier and
# database, hence the same transactional id, and its producer aborts the
# transaction the dead primary left open.

. "$(dirname "$0")/setup.sh"
MOVIES=200
RATINGS=3000
CHUNKS=30

pkj_setup failover 3 "pgkafka_join.batch_size = 100"
PRIMARY=$PG_DIR
STANDBY=$TEST_DIR/standby

produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '"$MOVIES"' ]' ||
	fail "the movies were not stored"

pg_standby "$PRIMARY" "$STANDBY"
pg_use "$PRIMARY"
psql_q "ALTER SYSTEM SET synchronous_standby_names = '*'"
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 '[ "$(psql_q "SELECT sync_state FROM pg_stat_replication")" = sync ]' ||
	fail "the standby did not become synchronous"
pass "the standby streams from the primary, synchronously"

# The standby has replayed the primary's state, movies included, and runs
# no pgkafka_join process: the launcher starts once recovery has finished.
lsn=$(psql_q "SELECT pg_current_wal_lsn()")
pg_use "$STANDBY"
wait_for 30 '[ "$(psql_q "SELECT pg_last_wal_replay_lsn() >= '"'$lsn'"'")" = t ]' ||
	fail "the standby did not replay up to $lsn"
check_eq "the standby holds the catalog, replayed" "$MOVIES" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.movies")"
check_eq "no pgkafka_join process runs on the standby" "0" \
	"$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pgkafka_join%'")"

# The stream: RATINGS ratings of the stored movies, each with a distinct
# value, in CHUNKS chunks; the expected results as "movie_id<TAB>rating".
stream_files "$MOVIES" "$RATINGS" "$CHUNKS" 7
stream_produce

pg_use "$PRIMARY"
results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo 0; }
wait_for 120 '[ "$(results)" -ge '$((RATINGS / 3))' ]' ||
	fail "the primary did not join a third of the ratings"
kill -0 "$PRODUCER" 2>/dev/null || fail "the stream had ended before the primary was killed"
pg_kill "$PRIMARY"
at_kill=$(output_count)
echo "# killed the primary with $at_kill records on the output topic"
[ "$at_kill" -lt "$RATINGS" ] ||
	fail "every result was published before the primary was killed"
pass "the primary was killed in the middle of the stream, $at_kill of $RATINGS results published"

pg_promote "$STANDBY"
pg_use "$STANDBY"
check_eq "the promoted standby accepts writes" "f" "$(psql_q "SELECT pg_is_in_recovery()")"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = '"'pgkafka_join worker'"'")" = 1 ]' ||
	fail "no worker started on the promoted standby"
pass "the worker starts on the promoted standby, without a restart"
# what the standby's log says happened, in this order (its lines name the
# process type: "[pid] pgkafka_join worker: LOG: ...")
promoted=$(grep -n "database system is ready to accept connections" "$STANDBY/server.log" | tail -1 | cut -d: -f1)
first=$(grep -nE '\] pgkafka_join (launcher|worker): ' "$STANDBY/server.log" | head -1 | cut -d: -f1)
[ -n "$promoted" ] && [ -n "$first" ] && [ "$first" -gt "$promoted" ] ||
	fail "a pgkafka_join process logged (line ${first:-none}) before the standby's promotion (line ${promoted:-none})"
pass "the standby's log has lines of pgkafka_join processes only after its promotion"

wait "$PRODUCER" || fail "producing the stream failed"
# all consumed, stored, joined and published: nothing more can come
wait_for 120 '[ "$(psql_q "SELECT input_lag = 0 AND publish_lag = 0 AND (SELECT count(*) FROM pgkafka_join.rated_movies) = '"$RATINGS"' FROM pgkafka_join.status")" = t ]' ||
	fail "the promoted server did not join and publish every rating (status: $(psql_q "SELECT state, input_lag, publish_lag FROM pgkafka_join.status"))"

check_eq "every rating is stored once" \
	"$RATINGS|$RATINGS" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.ratings")"
check_eq "every rating was joined once in PostgreSQL" \
	"$RATINGS|$RATINGS" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.rated_movies")"

check_output_exactly_once "after the failover"
