#!/bin/bash
#
# fuzz.sh
#		Bad input through the real broker: about 12,000 malformed messages
#		mixed with about 3,400 good ones, on both input topics.  The worker
#		must neither crash nor restart, keep every bad message in
#		rejected_messages exactly once with the reason expected for it (and
#		its raw key and payload, cut at max_message_bytes), store every good
#		one, publish exactly the expected results, and move every input
#		offset to the end of its partition.
#
# test/e2e/fuzz_messages.py generates the messages with a fixed seed and
# the expected outcome of each (see there for the categories), and checks
# the dumps this script makes.  Values are binary (NUL bytes, invalid
# UTF-8, newlines, over 1 MB), so they are produced with kcat reading
# files in which messages and keys are split by delimiters no message
# contains; the movies first, then, once every movie is stored, the
# ratings, so that the result of every good rating is known exactly.

. "$(dirname "$0")/setup.sh"
here=$(cd "$(dirname "$0")" && pwd)
PARTITIONS=3
MAX_MESSAGE_BYTES=65536
# the delimiters of fuzz_messages.py
MSG_DELIM=$'\x1e\x1f<pkj-fuzz-end>\x1f\x1e'
KEY_DELIM=$'\x1e\x1f<pkj-fuzz-key>\x1f\x1e'
started=$SECONDS

test_init fuzz
kafka_start "$TEST_DIR/kafka"
# values up to 1.5 MB must reach the worker (the broker's default limit
# is 1 MB)
kafka_create_topic movies $PARTITIONS max.message.bytes=4194304
kafka_create_topic ratings $PARTITIONS max.message.bytes=4194304 &
kafka_create_topic rated_movies $PARTITIONS &
wait %1 && wait %2 || fail "could not create the topics"
PG_DIR=$TEST_DIR/pg
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.max_message_bytes = $MAX_MESSAGE_BYTES" \
	"pgkafka_join.batch_size = 2000" \
	"pgkafka_join.batch_delay = '20ms'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null

consumed() {
	psql_q "SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = '$1'"
}
wait_for 30 '[ -n "$(worker_pid)" ] && grep -q "pgkafka_join worker 0 owns partitions" "$PG_DIR/server.log"' ||
	fail "the worker did not start consuming"
pid_before=$(worker_pid)
echo "# worker pid $pid_before"

gen=$TEST_DIR/gen
python3 "$here/fuzz_messages.py" generate "$gen" $PARTITIONS "$(date +%s)" ||
	fail "could not generate the messages"
summary() {
	python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    s = s[k]
print(s)' "$gen/summary.json" "$@"
}

# Produce TOPIC's runs of the plan, the partitions in parallel, each
# partition's runs in order, one kcat each: mode n (idempotent; an empty
# value is an empty value), z (idempotent, -Z: an empty value is a
# tombstone), t (the message format of Kafka 0.9, without time stamps).
produce() {
	local topic=$1 p pids=() rc=0

	for p in $(seq 0 $((PARTITIONS - 1))); do
		(
			while read -r t part mode file; do
				[ "$t" = "$topic" ] && [ "$part" = "$p" ] || continue
				case $mode in
					n) opts=(-X enable.idempotence=true) ;;
					z) opts=(-X enable.idempotence=true -Z) ;;
					# the message format of Kafka 0.9: no time stamps
					t) opts=(-X api.version.request=false -X broker.version.fallback=0.9.0
							 -X max.in.flight=1) ;;
				esac
				kcat -P -b "$KAFKA_BOOTSTRAP" -t "$topic" -p "$p" "${opts[@]}" \
					-D "$MSG_DELIM" -K "$KEY_DELIM" -X log_level=3 \
					-X message.max.bytes=4000000 <"$gen/$file" || exit 1
			done <"$gen/produce.plan"
		) &
		pids+=($!)
	done
	for p in "${pids[@]}"; do
		wait "$p" || rc=1
	done
	return $rc
}

# 1. the movies
produce movies || fail "could not produce the movies"
n_movies=$(summary produced movies)
wait_for 60 '[ "$(consumed movies)" = "$n_movies" ]' ||
	fail "the worker consumed $(consumed movies) of $n_movies movie messages"
pass "$n_movies movie messages consumed ($(summary good movies) good, $(summary bad movies) bad)"

# 2. the ratings; those without rated_at take their Kafka time stamp
t0=$(date +%s)
produce ratings || fail "could not produce the ratings"
t1=$(($(date +%s) + 1))
n_ratings=$(summary produced ratings)
wait_for 60 '[ "$(consumed ratings)" = "$n_ratings" ]' ||
	fail "the worker consumed $(consumed ratings) of $n_ratings rating messages"
pass "$n_ratings rating messages consumed ($(summary good ratings) good, $(summary bad ratings) bad)"
wait_for_output "$(summary published)" 60

# 3. the worker is the same process, nothing crashed
check_eq "the worker is still the same process" "$pid_before" "$(worker_pid)"
bad_lines=$(grep -E 'terminated by signal|exited with exit code|PANIC|ERROR:|server process' \
	"$PG_DIR/server.log" || true)
if [ -n "$bad_lines" ]; then
	echo "$bad_lines" | head -20 | sed 's/^/# /' >&2
	fail "the server log shows an error, a crash or a worker exit"
fi
pass "no crash, no error, no worker exit in the server log"

# 4. the tables and the topics against the expectations
tab=$'\t'
check_eq "rejected_messages: every position once" \
	"$(summary bad movies)|$(summary bad ratings)|$(($(summary bad movies) + $(summary bad ratings)))" \
	"$(psql_q "SELECT count(*) FILTER (WHERE topic = 'movies'), count(*) FILTER (WHERE topic = 'ratings'),
					  count(DISTINCT (topic, kafka_partition, kafka_offset))
				 FROM pgkafka_join.rejected_messages")"
for topic in movies ratings; do
	for p in $(seq 0 $((PARTITIONS - 1))); do
		last=$(kcat -C -b "$KAFKA_BOOTSTRAP" -t "$topic" -p "$p" -o -1 -e -q -f '%o\n' | tail -n 1)
		echo "$topic$tab$p$tab$((${last:--1} + 1))"
	done
done >"$gen/kafka_offsets.tsv"
psql_q "SELECT topic, kafka_partition, kafka_offset, reason, key IS NULL,
			   coalesce(encode(sha256(key), 'hex'), ''), payload IS NULL,
			   coalesce(length(payload), -1), coalesce(encode(sha256(payload), 'hex'), '')
		  FROM pgkafka_join.rejected_messages" -F "$tab" >"$gen/rejected.tsv"
psql_q "SELECT id, to_json(title), release_year FROM pgkafka_join.movies" -F "$tab" >"$gen/movies.tsv"
psql_q "SELECT kafka_partition, kafka_offset, movie_id, rating,
			   (extract(epoch FROM rated_at) * 1000000)::bigint, joined
		  FROM pgkafka_join.ratings" -F "$tab" >"$gen/ratings.tsv"
psql_q "SELECT kafka_partition, kafka_offset, movie_id, to_json(title), release_year, rating,
			   (extract(epoch FROM rated_at) * 1000000)::bigint
		  FROM pgkafka_join.rated_movies" -F "$tab" >"$gen/rated_movies.tsv"
psql_q "SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets" -F "$tab" \
	>"$gen/offsets.tsv"
kafka_consume rated_movies -f '%p\t%o\t%h\t%k\t%s\n' >"$gen/output.tsv"
python3 "$here/fuzz_messages.py" check "$gen" "$t0" "$t1" || fail "the outcome differs from the expectations"

echo "# duration: $((SECONDS - started))s"
