#!/bin/bash
#
# clock_step.sh
#		The wall clock stepped back, then forward, under two servers
#		configured for the same partitions: the owner goes on renewing its
#		claims, the second server neither takes them over nor sees them
#		lapse early, and every result is published once.
#
# Server A owns partitions 0-2 and joins 3,000 ratings streamed in 30
# chunks; server B, configured for the same partitions and output topic, is
# refused.  After the 9th chunk the machine's wall clock (CLOCK_REALTIME,
# which every process here reads: both servers, the broker, librdkafka) is
# stepped back STEP seconds, and after the 18th forward again, back to the
# time the monotonic clock says it is.  Claims are timed on the monotonic
# clock, and a claim's offset (the owner's wall clock in ms) only ever
# grows: while the clock is behind, A's renewals write the previous offset
# plus one, which the test reads in the claims' group as the proof that A
# renewed with its clock stepped back.  Whatever librdkafka's own waits do
# meanwhile (it times them on the wall clock: a wait under way when the
# clock steps back lasts that much longer), the owner fails closed and B,
# holding none of the partitions' state, never takes them over: B stores
# nothing, A's worker never exits, and every rating's result is on the
# output topic exactly once.  The clock is put back on exit, whatever
# happens.

. "$(dirname "$0")/setup.sh"

MOVIES=300
RATINGS=3000
CHUNKS=30
STEP=30
test_init clock_step
kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies; do
	kafka_create_topic $topic 3
done

# clock save|step SECONDS|restore|show: the wall clock's offset from the
# monotonic clock kept in $TEST_DIR/clock; the wall clock stepped by
# SECONDS; the wall clock put back at the saved offset; each prints how far
# the wall clock is from the saved offset then, in seconds
clock()
{
	python3 - "$TEST_DIR/clock" "$@" <<'PY'
import sys, time
path, op = sys.argv[1], sys.argv[2]
real = lambda: time.clock_gettime(time.CLOCK_REALTIME)
mono = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
if op == "save":
    open(path, "w").write(repr(real() - mono()))
elif op == "step":
    time.clock_settime(time.CLOCK_REALTIME, real() + float(sys.argv[3]))
elif op == "restore":
    time.clock_settime(time.CLOCK_REALTIME, mono() + float(open(path).read()))
print(round(real() - mono() - float(open(path).read()), 1) + 0.0)
PY
}
clock save >/dev/null
on_exit 'clock restore >/dev/null'

server()
{
	pg_start "$1" \
		"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
		"pgkafka_join.database = 'postgres'" \
		"pgkafka_join.retry_interval = '1s'" \
		"pgkafka_join.batch_size = 200" \
		"pgkafka_join.partitions = '0-2'"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
}

# A's claim of partition 0 of the ratings topic: its offset
claim_offset() { kafka_group_offset "$CLAIMS_GROUP" ratings 0; }

PG_A=$TEST_DIR/pg_a
PG_B=$TEST_DIR/pg_b
server "$PG_A"
produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '$MOVIES' ]' ||
	fail "A did not store the movies"
server "$PG_B"
wait_for 60 '[ "$(state_of "$PG_B")" = "$REFUSED" ]' ||
	fail "B is not refused while A owns the partitions: $(state_of "$PG_B")"
pass "B, configured for A's partitions, is refused while A renews its claims"
pg_use "$PG_A"
a_worker=$(worker_pid)

stream_files "$MOVIES" "$RATINGS" "$CHUNKS" 17
stream_produce 9 "$TEST_DIR/stepped_back" 18 "$TEST_DIR/stepped_forward"
wait_for 60 '[ -e "$TEST_DIR/produced.8" ]' || fail "the first 9 chunks were not produced"

# --- the clock stepped back
stored=$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")
offset=$(clock step -$STEP)
touch "$TEST_DIR/stepped_back"
check_eq "the wall clock stepped back: $STEP s behind the monotonic clock's time" "-$STEP.0" "$offset"
before=$(claim_offset)
[[ "$before" =~ ^[0-9]+$ ]] || fail "A has no claim of partition 0: $before"
# A's next renewal: written with the clock behind, it is the last offset
# plus one (a few renewals may pass between two reads); after a wait of
# librdkafka's lengthened by the step, it is the wall clock's time again
wait_for 120 'o=$(claim_offset); [[ "$o" =~ ^[0-9]+$ ]] && [ "$o" != "$before" ]' ||
	fail "A did not renew its claims after the clock stepped back: offset $before, then $(claim_offset)"
renewed=$(claim_offset)
[ "$renewed" -gt "$before" ] || fail "A's claim offset went back with the clock: $before, then $renewed"
if [ "$renewed" -lt $((before + 100)) ]; then
	echo "# A renewed its claims with its clock behind: offset $before, then $renewed"
else
	echo "# A renewed its claims once its clock had caught up: offset $before, then $renewed"
fi
pass "A renewed its claims after the step back, its claim offsets still growing; it had stored $stored ratings at the step"
wait_for 180 '[ -e "$TEST_DIR/produced.17" ]' || fail "the stream stopped"

# --- the clock stepped forward, to the time it is: B, watching A's claims
# over and over, does not see them lapse
b_mark=$(stat -c %s "$PG_B/server.log")
b_said=$(grep -c 'will not take over' "$PG_B/server.log" || true)
stored=$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")
offset=$(clock restore)
touch "$TEST_DIR/stepped_forward"
check_eq "the wall clock stepped forward $STEP s, to the monotonic clock's time" "0.0" "$offset"
# each time B is refused it drops its Kafka handles, and its next ones
# watch A's claims anew, which it logs
b_watches() { tail -c +$((b_mark + 1)) "$PG_B/server.log" | grep -c 'owns partitions 0-2' || true; }
wait_for 120 '[ "$(b_watches)" -ge 3 ]' || fail "B did not watch A's claims again: $(b_watches)"
check_eq "through $(b_watches) watches of B after the step forward, A's claims never lapsed: no 'will not take over' since" \
	"$b_said" "$(grep -c 'will not take over' "$PG_B/server.log" || true)"
pass "A had stored $stored ratings when the clock stepped forward"

wait "$PRODUCER" || fail "producing the ratings failed"
wait_for_output "$RATINGS" 180
check_output_exactly_once "the clock stepped back and forward under two servers"
# a claim's offset: milliseconds since 2000-01-01 (PostgreSQL's epoch)
wall_ms() { echo $(($(date +%s%3N) - 946684800000)); }
wait_for 30 'o=$(claim_offset); w=$(wall_ms); [ "$o" -ge $((w - 5000)) ] && [ "$o" -le "$w" ]' ||
	fail "A's claims are not written at the wall clock's time again: offset $(claim_offset), the wall clock at $(wall_ms)"
pass "A's claims are written at the wall clock's time again"
check_eq "B, refused throughout, stored nothing and took nothing over: state, input_offsets, movies, ratings, rated_movies; 'takes over' logged" \
	"$REFUSED|0|0|0|0|0" \
	"$(state_of "$PG_B")|$(stored_counts "$PG_B")|$(grep -c 'takes over partitions' "$PG_B/server.log" || true)"
check_eq "A's worker went on (the same process); no worker exited" "$a_worker|0|0" \
	"$(worker_pid)|$(grep -c 'exited with exit code\|terminated by signal' "$PG_A/server.log" || true)|$(grep -c 'exited with exit code\|terminated by signal' "$PG_B/server.log" || true)"
grep -hE 'renewed its claims|stores and publishes nothing until|did not commit' "$PG_A/server.log" | sed 's/^/# A | /' || true
