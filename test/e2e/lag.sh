#!/bin/bash
#
# lag.sh
#		The worker's input positions, seen by Kafka's own tools: between
#		batches the worker commits the positions it has stored to a consumer
#		group (pgkafka_join.consumer_group), which kafka-consumer-groups
#		--describe shows with each partition's log end and lag.  During a
#		stream the group never leads PostgreSQL's stored offsets; once
#		everything is stored its lag is 0 on every partition; while ingest
#		is paused, the lag it shows is pgkafka_join.status's input_lag; with
#		the setting emptied by a reload, the positions go to the extension's
#		own group, control.kafka_group.  kafka-consumer-groups --list shows
#		those and the groups of the publish positions
#		("<kafka_group>.publish-positions.<output topic>", one offset per
#		share on the ratings topic) and of the claims, nothing else.

. "$(dirname "$0")/setup.sh"
MOVIES=300
RATINGS=6000
GROUP=ratings-join

pkj_setup lag 3 \
	"pgkafka_join.batch_size = 200" \
	"pgkafka_join.consumer_group = '$GROUP'"

# describe GROUP: "TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG" per
# partition of the input topics, sorted ("-" where the tool has none)
describe()
{
	kafka_consumer_groups --describe --group "$1" 2>/dev/null |
		awk '$2 == "movies" || $2 == "ratings" { print $2, $3, $4, $5, $6 }' | sort
}
# PostgreSQL's stored offsets: "TOPIC PARTITION NEXT-OFFSET", sorted
stored()
{
	psql_q "SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets" |
		tr '|' ' ' | sort
}
# every committed offset of the group at or below PostgreSQL's, read after it
group_behind()
{
	join -j1 <(awk '{ print $1 ":" $2, $3 }' <<<"$1") <(awk '{ print $1 ":" $2, $3 }' <<<"$2") |
		awk '$2 != "-" && $2 > $3 { bad++ } END { exit bad > 0 }'
}
total_lag() { awk '{ s += $5 } END { print s + 0 }' <<<"$1"; }

produce_movies_upto "$MOVIES"
python3 - "$MOVIES" "$RATINGS" >"$TEST_DIR/ratings" <<'PY'
import sys
movies, ratings = map(int, sys.argv[1:])
for n in range(1, ratings + 1):
    m = n % movies + 1
    print(f'{m}\t{{"id": {m}, "rating": {n / 1000}}}')
PY
# the ratings in 20 chunks, while the group is read
split -n l/20 "$TEST_DIR/ratings" "$TEST_DIR/chunk."
(
	for f in "$TEST_DIR"/chunk.*; do
		kafka_produce ratings <"$f"
		sleep 0.5
	done
) &
producer=$!

samples=0
midstream=0
while kill -0 $producer 2>/dev/null; do
	group=$(describe "$GROUP")
	pg=$(stored)
	[ -n "$group" ] || continue
	samples=$((samples + 1))
	group_behind "$group" "$pg" ||
		fail "the group's offsets lead PostgreSQL's: group: $(paste -sd, <<<"$group"); PostgreSQL: $(paste -sd, <<<"$pg")"
	# a sample where the group had some of the ratings, not all
	got=$(awk '$1 == "ratings" && $3 != "-" { s += $3 } END { print s + 0 }' <<<"$group")
	[ "$got" -gt 0 ] && [ "$got" -lt "$RATINGS" ] && midstream=$((midstream + 1))
done
wait $producer || fail "producing the ratings failed"
[ "$midstream" -gt 0 ] ||
	fail "no reading of the group fell in the middle of the stream ($samples readings)"
pass "during the stream ($midstream of $samples readings of the group mid-stream), the group's offsets never led PostgreSQL's"

wait_for 120 '[ "$(psql_q "SELECT sum(next_offset) FROM pgkafka_join.input_offsets")" = '$((MOVIES + RATINGS))' ]' ||
	fail "the worker did not store every message"
wait_for 60 '[ "$(describe "$GROUP" | awk '"'"'$5 == "0"'"'"' | wc -l)" = 6 ]' ||
	fail "kafka-consumer-groups does not show lag 0 on the 6 input partitions: $(describe "$GROUP" | paste -sd,)"
check_eq "once everything is stored, the group's offsets are PostgreSQL's" \
	"$(stored | paste -sd,)" "$(describe "$GROUP" | awk '{ print $1, $2, $3 }' | paste -sd,)"

# paused: the lag grows in the tool as in status
psql_q "SELECT pgkafka_join.pause()" >/dev/null
for ((n = 1; n <= 50; n++)); do
	printf '%d\t{"id": %d, "rating": 9.%d}\n' $n $n $n
done | kafka_produce ratings
wait_for 60 '[ "$(psql_q "SELECT input_lag FROM pgkafka_join.status")" = 50 ]' ||
	fail "status.input_lag did not reach 50 while paused"
wait_for 60 '[ "$(total_lag "$(describe "$GROUP")")" = 50 ]' ||
	fail "kafka-consumer-groups does not show the lag of 50 while paused: $(describe "$GROUP" | paste -sd,)"
check_eq "while paused, the lag kafka-consumer-groups shows is status.input_lag" \
	"$(psql_q "SELECT input_lag FROM pgkafka_join.status")" "$(total_lag "$(describe "$GROUP")")"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(total_lag "$(describe "$GROUP")")" = 0 ]' ||
	fail "the lag did not return to 0 after resume()"
pass "after resume(), the lag returns to 0"

# the setting emptied: the extension's own group
psql_q "ALTER SYSTEM SET pgkafka_join.consumer_group = ''"
psql_q "SELECT pg_reload_conf()" >/dev/null
own=$(psql_q "SELECT kafka_group FROM pgkafka_join.control")
wait_for 60 '[ "$(describe "$own" | awk '"'"'$5 == "0"'"'"' | wc -l)" = 6 ]' ||
	fail "the extension's own group $own does not show the 6 input partitions at lag 0: $(describe "$own" | paste -sd,)"
check_eq "with the setting empty, the positions go to control.kafka_group" \
	"$(stored | paste -sd,)" "$(describe "$own" | awk '{ print $1, $2, $3 }' | paste -sd,)"

# The groups Kafka's tools list: the input positions' (the setting's, then
# the extension's own), and those of the publish positions and of the
# partitions' claims, each named for what it holds
check_eq "kafka-consumer-groups --list shows the input groups, and the publish positions' and the claims' groups, named for them" \
	"$(printf '%s\n' "$GROUP" "$own" "$own.publish-positions.rated_movies" pgkafka_join.owners.rated_movies | LC_ALL=C sort | paste -sd,)" \
	"$(kafka_consumer_groups --list 2>/dev/null | LC_ALL=C sort | paste -sd,)"
check_eq "the publish positions' group holds one position per share, on the ratings topic" \
	"ratings 0,ratings 1,ratings 2" \
	"$(kafka_consumer_groups --describe --group "$own.publish-positions.rated_movies" 2>/dev/null |
		awk '$2 == "movies" || $2 == "ratings" || $2 == "rated_movies" { print $2, $3 }' | sort | paste -sd,)"
