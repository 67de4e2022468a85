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
log_count() { grep -cF -- "$2" "$1" || true; }
ratings_on_topic() { kafka_consume ratings --uncommitted | wc -l; }

for ((m = 1; m <= 10; m++)); do
	printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
done | kafka_produce movies
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
sleep 5		# at least three retry intervals
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
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(stored)" = 35 ]' || fail "the ratings produced meanwhile were not stored ($(stored))"
wait_for_output 35
check_eq "after the fix the ratings produced meanwhile are stored and published once" \
	"$(expected_results)" "$(actual_results)"

# --- 2. the output topic is an input topic
before=$(ratings_on_topic)
psql_q "ALTER SYSTEM SET pgkafka_join.output_topic = 'ratings'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "waiting for distinct topics" ]' ||
	fail "the worker does not wait for distinct topics: $(psql_q "SELECT * FROM pgkafka_join.status")"
produce_ratings 12
sleep 5
check_eq "the worker waits for distinct topics, same pid, nothing stored meanwhile" \
	"$pid|waiting for distinct topics|35" \
	"$(psql_q "SELECT pid, state, (SELECT count(*) FROM pgkafka_join.ratings) FROM pgkafka_join.status")"
check_eq "the wait is logged once" "1" \
	"$(log_count "$LOG" 'pgkafka_join is waiting: the movies, ratings and output topics must be three different topics ("movies", "ratings", "ratings")')"
check_eq "nothing was produced to the input topic but the 12 new ratings" "$((before + 12))" \
	"$(ratings_on_topic)"

psql_q "ALTER SYSTEM RESET pgkafka_join.output_topic" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(stored)" = 47 ]' || fail "the ratings produced meanwhile were not stored ($(stored))"
wait_for_output 47
check_eq "after the fix the stream goes on: every result published once" \
	"$(expected_results)" "$(actual_results)"
check_eq "nothing was ever produced to the input topic by the worker" "$((before + 12))" \
	"$(ratings_on_topic)"
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
sleep 2
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
sleep 3
check_eq "after a restart with nothing new, input_lag is 0 (unlisted partitions included)" "6|0" \
	"$(psql_q "SELECT partitions, input_lag FROM pgkafka_join.status")"

# Ratings produced while the second cluster is paused are consumed at resume
psql_q "SELECT pgkafka_join.pause()" >/dev/null
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = paused ]' ||
	fail "the second cluster did not pause"
produce_ratings 30
sleep 2
check_eq "while paused nothing is stored" "47" "$(stored)"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 90 '[ "$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings), input_lag, partitions FROM pgkafka_join.status")" = "77|0|6" ]' ||
	fail "the second cluster did not catch up after resume: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "after resume every rating is stored, input_lag is 0 over 6 partitions"
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
sleep 5		# four retry intervals and more
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
