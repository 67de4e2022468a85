#!/bin/bash
#
# settings.sh
#		Settings that cannot work are waited out, not crash-looped: Kafka
#		properties librdkafka refuses as a whole, an output topic that is an
#		input topic, more input partitions than pgkafka_join.max_partitions
#		lists, no background worker slot free for the worker, a join
#		window no timestamp can hold.  Each is said
#		once in the log and shown in the status view; the worker keeps its
#		pid; nothing is lost, published twice, or published to an input
#		topic, and the stream goes on once the setting is fixed.

. "$(dirname "$0")/setup.sh"
pkj_setup settings 3

LOG=$PG_DIR/server.log
produced=0	# ratings produced so far: rating values 1..$produced

# produce_ratings COUNT: the next COUNT ratings, rating i of movie i % 10 + 1
produce_ratings()
{
	local i
	for ((i = produced + 1; i <= produced + $1; i++)); do
		printf '%d\t{"id": %d, "rating": %d}\n' $((i % 10 + 1)) $((i % 10 + 1)) $i
	done | kafka_produce ratings
	produced=$((produced + $1))
}

# The results every rating produced so far must give, "movie<TAB>rating"
expected_results()
{
	local i
	for ((i = 1; i <= produced; i++)); do
		printf '%d\t%d\n' $((i % 10 + 1)) $i
	done | LC_ALL=C sort
}

actual_results()
{
	kafka_consume rated_movies | cut -f4 |
		sed -E 's/^\{"id":([0-9]+),.*"rating":([0-9.]+),.*/\1\t\2/' | LC_ALL=C sort
}

stored() { psql_q "SELECT count(*) FROM pgkafka_join.ratings"; }
# stored_after TIME FIRST LAST: "stored after TIME|stored" for ratings FIRST
# to LAST (received_at is the start of the transaction that stored a rating)
stored_after()
{
	psql_q "SELECT count(*) FILTER (WHERE received_at > '$1'), count(*) FROM pgkafka_join.ratings WHERE rating BETWEEN $2 AND $3"
}
log_count() { grep -cF -- "$2" "$1" || true; }
# What the ratings topic holds, and the ratings produced to it, as sorted
# "KEY<TAB>VALUE" lines
ratings_on_topic() { kafka_consume ratings --uncommitted | cut -f3,4 | LC_ALL=C sort; }
produced_ratings()
{
	local i
	for ((i = 1; i <= produced; i++)); do
		printf '%d\t{"id": %d, "rating": %d}\n' $((i % 10 + 1)) $((i % 10 + 1)) $i
	done | LC_ALL=C sort
}

# A worker with nothing to do but wait, and the launcher, end each turn of
# their loop in a sleep (of retry_interval at most), which the kernel counts
# in the voluntary_ctxt_switches of the process: where a waiting worker
# shows nothing else of its turns, that count does.
sleeps() { awk '/^voluntary_ctxt_switches:/ { print $2 }' "/proc/$1/status"; }
# wait_turns PID N: wait until process PID has slept N more times
wait_turns()
{
	local from

	from=$(sleeps "$1")
	wait_for 60 "[ \"\$(sleeps $1)\" -ge $((from + $2)) ]"
}

produce_movies_upto 10
produce_ratings 20
wait_for_output 20
check_eq "the stream works: 20 ratings, 20 results" "$(expected_results)" "$(actual_results)"
pid=$(psql_q "SELECT pid FROM pgkafka_join.status")

# --- 1. Kafka properties librdkafka refuses as a whole
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'acks=1'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "waiting for valid Kafka properties" ]' ||
	fail "the worker does not wait for valid properties: $(psql_q "SELECT * FROM pgkafka_join.status")"
produce_ratings 15
# Every turn of the waiting worker tries to make its Kafka handles again and
# is refused, which moves last_error_at.  Refused three times after the 15
# ratings were on the brokers, it has had three occasions to consume them,
# and as many to log the refusal again: then it is looked at.
refused_since() { [ "$(psql_q "SELECT last_error_at > '$1' FROM pgkafka_join.status")" = t ]; }
refused_at=$(psql_q "SELECT clock_timestamp()")
for i in 1 2 3; do
	wait_for 60 'refused_since "$refused_at"' ||
		fail "the worker was not refused its Kafka properties again (refusal $i after the ratings were produced)"
	refused_at=$(psql_q "SELECT last_error_at FROM pgkafka_join.status")
done
check_eq "the worker waits for valid Kafka properties, same pid, nothing stored meanwhile" \
	"$pid|waiting for valid Kafka properties|20" \
	"$(psql_q "SELECT pid, state, (SELECT count(*) FROM pgkafka_join.ratings) FROM pgkafka_join.status")"
check_eq "the status view says why" "t" \
	"$(psql_q "SELECT last_error LIKE 'librdkafka refuses the producer''s properties: %' FROM pgkafka_join.status")"
check_eq "the refusal is logged once" "1" \
	"$(log_count "$LOG" "librdkafka refuses the producer's properties")"
check_eq "with its hint" "1" \
	"$(log_count "$LOG" "HINT:  Fix pgkafka_join.kafka_properties or pgkafka_join.kafka_properties_file and reload.")"
check_eq "no worker exited" "0" "$(log_count "$LOG" "exited with exit code")"

psql_q "ALTER SYSTEM RESET pgkafka_join.kafka_properties" >/dev/null
fixed_at=$(psql_q "SELECT clock_timestamp()")
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(stored)" = 35 ]' || fail "the ratings produced meanwhile were not stored ($(stored))"
# The look above covers one moment; this covers the whole wait: each of the
# 15 ratings was stored by a transaction that began after the fix.
check_eq "none of the ratings produced meanwhile was stored before the fix" "15|15" \
	"$(stored_after "$fixed_at" 21 35)"
wait_for_output 35
check_eq "after the fix the ratings produced meanwhile are stored and published once" \
	"$(expected_results)" "$(actual_results)"

# --- 2. the output topic is an input topic
psql_q "ALTER SYSTEM SET pgkafka_join.output_topic = 'ratings'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "waiting for distinct topics" ]' ||
	fail "the worker does not wait for distinct topics: $(psql_q "SELECT * FROM pgkafka_join.status")"
produce_ratings 12
# This wait drops the Kafka handles, and moves nothing in the status views:
# the worker's turns are counted by its sleeps.  Three more turns after the
# 12 ratings were on the brokers are three occasions to store them, to
# publish to the input topic, or to log the wait again: then it is looked
# at.
wait_turns "$pid" 3 || fail "the waiting worker did not go round its loop"
check_eq "the worker waits for distinct topics, same pid, nothing stored meanwhile" \
	"$pid|waiting for distinct topics|35" \
	"$(psql_q "SELECT pid, state, (SELECT count(*) FROM pgkafka_join.ratings) FROM pgkafka_join.status")"
check_eq "the wait is logged once" "1" \
	"$(log_count "$LOG" 'pgkafka_join is waiting: the movies, ratings and output topics must be three different topics ("movies", "ratings", "ratings")')"
check_eq "nothing was produced to the input topic but the ratings produced" \
	"$(produced_ratings)" "$(ratings_on_topic)"

psql_q "ALTER SYSTEM RESET pgkafka_join.output_topic" >/dev/null
fixed_at=$(psql_q "SELECT clock_timestamp()")
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(stored)" = 47 ]' || fail "the ratings produced meanwhile were not stored ($(stored))"
# The look above covers the turns before it; this covers the whole wait.
check_eq "none of the ratings produced meanwhile was stored before the fix" "12|12" \
	"$(stored_after "$fixed_at" 36 47)"
wait_for_output 47
check_eq "after the fix the stream goes on: every result published once" \
	"$(expected_results)" "$(actual_results)"
# The 12 results just published show that the worker publishes again: one
# sent to the input topic at any time before would be there.
check_eq "nothing was ever produced to the input topic by the worker" \
	"$(produced_ratings)" "$(ratings_on_topic)"
check_eq "the worker kept its pid throughout, and no worker exited" "$pid|0" \
	"$(psql_q "SELECT pid FROM pgkafka_join.status")|$(log_count "$LOG" "exited with exit code")"

# --- 3. more input partitions than pgkafka_join.max_partitions
kafka_create_topic rated_movies_2 1
PG2=$TEST_DIR/pg2
pg_start "$PG2" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.max_partitions = 2" \
	"pgkafka_join.transactional_id = 'settings-2'" \
	"pgkafka_join.output_topic = 'rated_movies_2'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null

# The end offset of every input partition, "topic|partition|end", from Kafka
end_offsets()
{
	local t
	for t in movies ratings; do
		kafka_consume "$t" | awk -F'\t' -v t="$t" '{ end[$1] = $2 + 1 } END { for (p in end) print t "|" p "|" end[p] }'
	done | LC_ALL=C sort
}
ends=$(end_offsets)
[ "$(wc -l <<<"$ends")" = 6 ] || fail "the test needs messages in all 6 input partitions: $ends"

wait_for 90 '[ "$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings), (SELECT count(*) FROM pgkafka_join.movies), input_lag, partitions FROM pgkafka_join.status")" = "47|10|0|6" ]' ||
	fail "the second cluster did not catch up: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the second cluster consumed every input: 6 partitions, no lag"
# An input_lag of 0 says nothing before the worker knows the watermarks,
# which its fetches bring: wait until it has recorded those of the 2
# partitions it lists (the watermarks of the others come in the same fetch
# responses, one broker leading every partition), then look.
wait_for 60 '[ "$(psql_q "SELECT count(high_watermark) FROM pgkafka_join.input_status")" -ge 2 ]' ||
	fail "the worker did not record the watermarks of its listed partitions: $(psql_q "SELECT * FROM pgkafka_join.input_status")"
check_eq "input_status lists every stored offset, and the first 2 partitions' watermarks" \
	"$(awk -F'|' '{ print $0 "|" (NR == 1 || NR == 2 ? $3 : "") "|0" }' <<<"$ends")" \
	"$(psql_q "SELECT topic, kafka_partition, stored_offset, high_watermark, lag FROM pgkafka_join.input_status ORDER BY 1, 2")"
check_eq "partition_status lists exactly 2 partitions" "2" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.partition_status()")"
check_eq "the limit is logged once, with the totals" "1|1" \
	"$(log_count "$PG2/server.log" "WARNING:  pgkafka_join consumes 6 partitions; pgkafka_join.input_status lists the first 2")|$(log_count "$PG2/server.log" 'pgkafka_join worker 0 owns partitions 0-2 of "movies" and "ratings"')"

# A new worker, nothing new to consume: the unlisted partitions show no lag
pid2=$(psql_q "SELECT pid FROM pgkafka_join.status")
psql_q "SELECT pg_terminate_backend(pid) FROM pgkafka_join.status" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT pid IS NOT NULL AND pid <> '"$pid2"' AND partitions = 6 FROM pgkafka_join.status")" = t ]' ||
	fail "no new worker consuming 6 partitions: $(psql_q "SELECT * FROM pgkafka_join.status")"
# As above: the lag is looked at once the new worker knows the watermarks
# (a worker counting a backlog where there is none would show it then).
wait_for 60 '[ "$(psql_q "SELECT count(high_watermark) FROM pgkafka_join.input_status")" -ge 2 ]' ||
	fail "the new worker did not record the watermarks of its listed partitions: $(psql_q "SELECT * FROM pgkafka_join.input_status")"
check_eq "after a restart with nothing new, input_lag is 0 (unlisted partitions included)" "6|0" \
	"$(psql_q "SELECT partitions, input_lag FROM pgkafka_join.status")"

# Ratings produced while the second cluster is paused are consumed at resume
psql_q "SELECT pgkafka_join.pause()" >/dev/null
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = paused ]' ||
	fail "the second cluster did not pause"
produce_ratings 30
# The paused worker lists none of the ratings partitions (max_partitions is
# 2), so its views cannot show it has seen the 30 ratings.  The first
# cluster, not paused, consumes the same topic: once it has stored them, the
# second would have too, were it consuming; then it is looked at.
wait_for 60 '[ "$(pg_use "$PG_DIR"; stored)" = 77 ]' ||
	fail "the first cluster did not store the 30 ratings: $(pg_use "$PG_DIR"; stored)"
check_eq "while paused nothing is stored" "47" "$(stored)"
resumed_at=$(psql_q "SELECT clock_timestamp()")
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 90 '[ "$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings), input_lag, partitions FROM pgkafka_join.status")" = "77|0|6" ]' ||
	fail "the second cluster did not catch up after resume: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "after resume every rating is stored, input_lag is 0 over 6 partitions"
check_eq "none of the ratings produced while paused was stored before the resume" "30|30" \
	"$(stored_after "$resumed_at" 48 77)"
check_eq "the limit is still logged once per worker (two workers)" "2" \
	"$(log_count "$PG2/server.log" "WARNING:  pgkafka_join consumes 6 partitions; pgkafka_join.input_status lists the first 2")"
pg_stop "$PG2"
pg_use "$PG_DIR"

# --- 4. no background worker slot for the worker: the launcher takes the
# only one (the logical replication launcher, registered before any
# library, would take it otherwise)
PG3=$TEST_DIR/pg3
pg_start "$PG3" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'" \
	"max_worker_processes = 1" \
	"max_logical_replication_workers = 0"
wait_for 30 "grep -qF 'could not start a pgkafka_join worker: no background worker slot is free' '$PG3/server.log'" ||
	fail "the launcher did not say it found no slot"
# With no worker running, each turn of the launcher's loop tries to start
# one.  Four more turns are four more attempts, each an occasion to start
# the worker or to say again that no slot is free: then it is looked at.
launcher=$(psql_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join launcher'")
[[ "$launcher" =~ ^[0-9]+$ ]] || fail "no pgkafka_join launcher in pg_stat_activity: $launcher"
wait_turns "$launcher" 4 || fail "the launcher did not go round its loop"
check_eq "the launcher runs, the worker does not" "1|0" \
	"$(psql_q "SELECT count(*) FILTER (WHERE backend_type = 'pgkafka_join launcher'), count(*) FILTER (WHERE backend_type = 'pgkafka_join worker') FROM pg_stat_activity")"
check_eq "no free slot is said once, not at every retry" "1" \
	"$(log_count "$PG3/server.log" "could not start a pgkafka_join worker: no background worker slot is free")"
pg_stop "$PG3"
pg_use "$PG_DIR"

# --- 5. a join window so long that no timestamp holds its start: refused by
# the setting's check at the reload, the window before kept; a new movie
# and ratings are stored and joined, none is rejected for a setting
rejected=$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")
check_eq "ALTER SYSTEM refuses it" \
	"ERROR:  invalid value for parameter \"pgkafka_join.join_window\": \"10000 years\"
DETAIL:  The join window must be at most 10 years." \
	"$(psql_q "ALTER SYSTEM SET pgkafka_join.join_window = '10000 years'" 2>&1 | sed 's/^psql:[^ ]* //')"
# so does the reload of a postgresql.conf that says it
echo "pgkafka_join.join_window = '10000 years'" >>"$PG_DIR/data/postgresql.conf"
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 "grep -qF 'invalid value for parameter \"pgkafka_join.join_window\": \"10000 years\"' '$LOG'" ||
	fail "the reload did not refuse a join window of 10000 years"
pass "the reload refuses it: $(grep -A1 -F 'invalid value for parameter "pgkafka_join.join_window"' "$LOG" | grep -m1 -o 'DETAIL: .*')"
check_eq "the window in force is the one before" "1 month" "$(psql_q "SHOW pgkafka_join.join_window")"
printf '11\t{"id": 11, "title": "Movie 11"}\n' | kafka_produce movies
before=$(stored)
produce_ratings 5
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")|$(stored)" = "11|$((before + 5))" ]' ||
	fail "the new movie and the ratings were not stored: $(psql_q "SELECT count(*) FROM pgkafka_join.movies")|$(stored)"
check_eq "no message was rejected" "$rejected" "$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")"
sed -i '/^pgkafka_join.join_window = /d' "$PG_DIR/data/postgresql.conf"
psql_q "SELECT pg_reload_conf()" >/dev/null

check_eq "the first cluster's worker kept its pid to the end" "$pid" \
	"$(psql_q "SELECT pid FROM pgkafka_join.status")"
wait_for_output "$produced"
check_eq "the first cluster published every rating once, to the end" \
	"$(expected_results)" "$(actual_results)"
