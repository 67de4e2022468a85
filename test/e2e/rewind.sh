#!/bin/bash
#
# rewind.sh
#		Rewinds and offsets out of range: never a crash loop, never a silent
#		skip or replay.  A rewind over a malformed rating stores everything
#		again (the rejected message keeps one row) and publishes every
#		result again, once, with new ids, the worker never exiting.  A
#		stored offset above the log end (a mistyped reset_offsets) or below
#		the log start (records deleted) stops that partition only, said in
#		the log and the status views, until reset_offsets() says where to go
#		on; nothing is skipped or consumed again meanwhile.  A user's
#		auto.offset.reset is refused.

. "$(dirname "$0")/setup.sh"
pkj_setup rewind 3

log=$PG_DIR/server.log
value=0		# rating values are 1, 2, 3, ...: each result can be told apart

# ratings N: append N ratings of movies 1..20, as "key<TAB>value" lines,
# to $TEST_DIR/ratings (not in a pipe: $value must count in this shell)
ratings()
{
	local i m
	for ((i = 0; i < $1; i++)); do
		value=$((value + 1))
		m=$((value % 20 + 1))
		printf '%d\t{"id": %d, "rating": %d}\n' $m $m $value
	done >>"$TEST_DIR/ratings"
}

# produce_ratings PARTITION N: produce N ratings to a partition of ratings
produce_ratings()
{
	: >"$TEST_DIR/ratings"
	ratings "$2"
	kafka_produce ratings -p "$1" <"$TEST_DIR/ratings"
}

count() { psql_q "SELECT count(*) FROM pgkafka_join.$1"; }
worker_pid() { psql_q "SELECT pid FROM pgkafka_join.status"; }
# result ids on the output topic, and in PostgreSQL, one a line, in order
topic_ids() { kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join\.id=([0-9]+).*/\1/' | sort -n; }
db_ids() { psql_q "SELECT id FROM pgkafka_join.rated_movies ORDER BY id"; }
problem() # PARTITION: stored offset and problem of ratings partition PARTITION
{
	psql_q "SELECT stored_offset, coalesce(problem, 'NULL') FROM pgkafka_join.input_status WHERE topic = 'ratings' AND kafka_partition = $1"
}
no_worker_exit()
{
	! grep -E 'pgkafka_join.*(terminated by signal|exited with exit code)' "$log"
}
# what was stored and made from a partition of ratings: "offset:times
# stored" of its ratings, then the ids of their results
partition_rows() # PARTITION
{
	psql_q "SELECT string_agg(kafka_offset || ':' || n, ',' ORDER BY kafka_offset) FROM (SELECT kafka_offset, count(*) AS n FROM pgkafka_join.ratings WHERE kafka_partition = $1 GROUP BY 1) r"
	psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies WHERE kafka_partition = $1"
}
out_of_range_warnings() # PARTITION OFFSET
{
	grep -c "WARNING:  pgkafka_join stopped consuming topic \"ratings\" partition $1: stored offset $2 is out of range" "$log" || true
}

# wait until ratings, results and output records number N each
wait_for_all()
{
	local n=$1
	wait_for 120 "[ \"\$(count ratings)\" = $n ] && [ \"\$(count rated_movies)\" = $n ]" ||
		fail "expected $n ratings and results, found $(count ratings) and $(count rated_movies)"
	wait_for_output "$n" 120
}

produce_movies_upto 20
wait_for 60 '[ "$(count movies)" = 20 ]' || fail "the movies were not stored"

# --- 1. rewind over a malformed rating
: >"$TEST_DIR/ratings"
ratings 50
printf '7\t{"id": 7, "rating": "seven"}\n' >>"$TEST_DIR/ratings"
ratings 50
kafka_produce ratings -p 0 <"$TEST_DIR/ratings"
wait_for_all 100
check_eq "the malformed rating is rejected once, at its offset" \
	"ratings|0|50|rating is not a number" \
	"$(psql_q "SELECT topic, kafka_partition, kafka_offset, reason FROM pgkafka_join.rejected_messages")"
pid=$(worker_pid)
[[ "$pid" =~ ^[0-9]+$ ]] || fail "no worker pid in the status view: $pid"
rejected_at=$(psql_q "SELECT received_at FROM pgkafka_join.rejected_messages")

psql_q "SELECT pgkafka_join.pause()" >/dev/null
check_eq "reset_offsets rewinds the ratings topic" "1" \
	"$(psql_q "SELECT pgkafka_join.reset_offsets('ratings')")"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for_all 200
check_eq "every rating is stored again: each of the 100 offsets twice" "100|2|2|0|100" \
	"$(psql_q "SELECT count(*), min(n), max(n), min(kafka_offset), max(kafka_offset) FROM (SELECT kafka_offset, count(*) AS n FROM pgkafka_join.ratings GROUP BY 1) r")"
check_eq "the rejected message still has exactly one row, replaced by the rewind" \
	"1|ratings|0|50|rating is not a number|t" \
	"$(psql_q "SELECT count(*) OVER (), topic, kafka_partition, kafka_offset, reason, received_at > '$rejected_at' FROM pgkafka_join.rejected_messages")"
check_eq "every rating gave a second result, with a new id" "100|2|2|200" \
	"$(psql_q "SELECT count(*), min(n), max(n), sum(n) FROM (SELECT kafka_offset, count(DISTINCT id) AS n FROM pgkafka_join.rated_movies GROUP BY 1) r")"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the output topic holds twice the results" "200" "$(output_count)"

produce_ratings 0 1
wait_for_all 201
check_eq "a rating produced after the rewind is stored and published" \
	"1|1" \
	"$(psql_q "SELECT count(*), (SELECT count(*) FROM pgkafka_join.rated_movies WHERE rating = $value) FROM pgkafka_join.ratings WHERE rating = $value")"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the worker kept its pid through the rewind" "$pid" "$(worker_pid)"
no_worker_exit || fail "the worker exited"
pass "no worker exit in the server log"

# --- 2. a stored offset above the log end
log_end=102		# partition 0 holds offsets 0 to 101
check_eq "partition 0 is consumed to its end" "$log_end|NULL" "$(problem 0)"
p0_rows=$(partition_rows 0)
psql_q "SELECT pgkafka_join.pause()" >/dev/null
psql_q "SELECT pgkafka_join.reset_offsets('ratings', 0, 1000000)" >/dev/null
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(out_of_range_warnings 0 1000000)" -ge 1 ]' ||
	fail "no warning about the offset out of range"
pass "the log says: $(grep -m1 -o 'pgkafka_join stopped consuming topic "ratings" partition 0.*' "$log")"
grep -A2 'pgkafka_join stopped consuming topic "ratings" partition 0' "$log" | grep -q "DETAIL:  The partition holds offsets 0 to $((log_end - 1))\." ||
	fail "the warning does not say which offsets the partition holds"
wait_for 30 "[ \"\$(problem 0)\" = '1000000|offset 1000000 is out of range; the partition holds offsets 0 to $((log_end - 1))' ]" ||
	fail "input_status does not show the problem: $(problem 0)"
pass "input_status shows the problem: $(problem 0 | cut -d'|' -f2)"
check_eq "the status view counts one stopped partition" "1" \
	"$(psql_q "SELECT stopped_partitions FROM pgkafka_join.status")"

# A rating produced now on another partition, stored and published, shows
# the worker consuming since partition 0 stopped: a reset of partition 0 to
# its start or its end would have been made, and what it brings back
# stored, by then (the fetches that brought the rating would have brought
# partition 0's messages too).  Then partition 0 is looked at.
produce_ratings 1 1
wait_for_all 202
check_eq "a rating on another partition is still stored and published" "1|1" \
	"$(psql_q "SELECT count(*), (SELECT count(*) FROM pgkafka_join.rated_movies WHERE rating = $value) FROM pgkafka_join.ratings WHERE rating = $value AND kafka_partition = 1")"
check_eq "nothing of partition 0 is skipped to nor replayed: its ratings, results and stored offset are as they were" \
	"$p0_rows
1000000|offset 1000000 is out of range; the partition holds offsets 0 to $((log_end - 1))" \
	"$(partition_rows 0)
$(problem 0)"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the out-of-range offset is warned about once" "1" "$(out_of_range_warnings 0 1000000)"

psql_q "SELECT pgkafka_join.pause()" >/dev/null
psql_q "SELECT pgkafka_join.reset_offsets('ratings', 0, $log_end)" >/dev/null
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(problem 0)" = "'$log_end'|NULL" ] && [ "$(psql_q "SELECT stopped_partitions FROM pgkafka_join.status")" = 0 ]' ||
	fail "the problem did not go away: $(problem 0), $(psql_q "SELECT stopped_partitions FROM pgkafka_join.status") stopped"
pass "after reset_offsets to the log end the problem is gone"
produce_ratings 0 1
wait_for_all 203
check_eq "a new rating on partition 0 is stored and published once" "1|1|$log_end" \
	"$(psql_q "SELECT count(*), (SELECT count(*) FROM pgkafka_join.rated_movies WHERE rating = $value), max(kafka_offset) FROM pgkafka_join.ratings WHERE rating = $value AND kafka_partition = 0")"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"

# --- 3. a stored offset below the log start
produce_ratings 2 2
wait_for_all 205
check_eq "partition 2 is consumed to its end" "2|NULL" "$(problem 2)"
p2_results=$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies WHERE kafka_partition = 2")
psql_q "SELECT pgkafka_join.pause()" >/dev/null
produce_ratings 2 10		# offsets 2 to 11
check_eq "records below offset 7 are deleted" "7" "$(kafka_delete_records ratings 2 7)"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(out_of_range_warnings 2 2)" -ge 1 ]' ||
	fail "no warning about the offset below the log start"
wait_for 30 "[ \"\$(problem 2)\" = '2|offset 2 is out of range; the partition holds offsets 7 to 11' ]" ||
	fail "input_status does not show the problem: $(problem 2)"
pass "input_status shows the problem: $(problem 2 | cut -d'|' -f2)"
check_eq "the status view counts one stopped partition" "1" \
	"$(psql_q "SELECT stopped_partitions FROM pgkafka_join.status")"
# As in 2: a rating produced now on another partition, stored and
# published, shows the worker consuming since partition 2 stopped; then
# partition 2 is looked at.
produce_ratings 0 1
wait_for_all 206
check_eq "none of the remaining messages is consumed silently: partition 2 holds offsets 0 and 1, once each, and stays stopped" \
	"0:1,1:1
$p2_results
2|offset 2 is out of range; the partition holds offsets 7 to 11" \
	"$(partition_rows 2)
$(problem 2)"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"

psql_q "SELECT pgkafka_join.pause()" >/dev/null
psql_q "SELECT pgkafka_join.reset_offsets('ratings', 2, 7)" >/dev/null
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for_all 211
check_eq "exactly the remaining messages are stored" "0,1,7,8,9,10,11" \
	"$(psql_q "SELECT string_agg(kafka_offset::text, ',' ORDER BY kafka_offset) FROM pgkafka_join.ratings WHERE kafka_partition = 2")"
check_eq "and published, once each" "0,1,7,8,9,10,11" \
	"$(psql_q "SELECT string_agg(kafka_offset::text, ',' ORDER BY kafka_offset) FROM pgkafka_join.rated_movies WHERE kafka_partition = 2")"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "no partition is stopped any more" "0|12|NULL" \
	"$(psql_q "SELECT stopped_partitions FROM pgkafka_join.status")|$(problem 2)"

# --- 4. auto.offset.reset is pinned: a user setting is refused
refusal=$(psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'auto.offset.reset=earliest'" 2>&1 || true)
grep -q 'property "auto.offset.reset" is set by pgkafka_join itself' <<<"$refusal" ||
	fail "ALTER SYSTEM did not refuse auto.offset.reset: $refusal"
pass "ALTER SYSTEM refuses auto.offset.reset"
psql_q "SELECT pg_reload_conf()" >/dev/null
# the same set in postgresql.conf: refused by the reload, the old value stays
echo "pgkafka_join.kafka_properties = 'auto.offset.reset=earliest'" >>"$PG_DIR/data/postgresql.conf"
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 "grep -q 'configuration file \"$PG_DIR/data/postgresql.conf\" contains errors' '$log'" ||
	fail "the reload did not refuse auto.offset.reset"
grep -B1 'property "auto.offset.reset" is set by pgkafka_join itself' "$log" |
	grep -q 'invalid value for parameter "pgkafka_join.kafka_properties": "auto.offset.reset=earliest"' ||
	fail "the server log does not say why auto.offset.reset is refused"
pass "the server log says: $(grep -m1 -o 'property "auto.offset.reset" is set by pgkafka_join itself' "$log")"
check_eq "kafka_properties keeps its value" "" "$(psql_q "SHOW pgkafka_join.kafka_properties")"
produce_ratings 0 1
wait_for_all 212
sed -i '/auto.offset.reset=earliest/d' "$PG_DIR/data/postgresql.conf"
psql_q "ALTER SYSTEM RESET pgkafka_join.kafka_properties" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null

check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the worker kept its pid throughout" "$pid" "$(worker_pid)"
no_worker_exit || fail "the worker exited"
pass "no worker exit in the server log"
