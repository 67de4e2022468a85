#!/bin/bash
#
# crash_restart.sh
#		PostgreSQL is stopped in immediate mode (a crash) in the middle of a
#		stream of thousands of messages, twice, and started again.  At the
#		end every input is stored once and every expected result is on the
#		output topic once.
#
# The stream: RATINGS ratings of MOVIES movies, each rating with a distinct
# value so that results can be told apart, the movies arriving spread over
# the stream (so many ratings wait for their movie), and some malformed
# ratings.  Every rating is inside the window and its movie comes, so each
# must give exactly one result.  The server runs with synchronous_commit =
# off, as many do for speed: the worker's commits are durable all the same.

. "$(dirname "$0")/setup.sh"
MOVIES=${MOVIES:-500}
RATINGS=${RATINGS:-6000}
BAD=${BAD:-60}
CHUNKS=12

pkj_setup crash_restart 3 \
	"pgkafka_join.batch_size = 200" \
	"pgkafka_join.batch_delay = '20ms'" \
	"synchronous_commit = off"

# Write the stream as CHUNKS pairs of files (movies, ratings), and the
# expected results as "movie_id<TAB>rating" lines.
python3 - "$TEST_DIR" "$MOVIES" "$RATINGS" "$BAD" "$CHUNKS" <<'PY'
import random, sys
out, movies, ratings, bad, chunks = sys.argv[1], *map(int, sys.argv[2:])
rnd = random.Random(42)
movie_chunk = {m: rnd.randrange(chunks) for m in range(1, movies + 1)}
per_chunk = ratings // chunks
expected = []
n = 0
for c in range(chunks):
    with open(f"{out}/movies.{c}", "w") as f:
        for m, mc in movie_chunk.items():
            if mc == c:
                f.write(f'{m}\t{{"id": {m}, "title": "Movie {m}", "release_year": {1900 + m % 120}}}\n')
    with open(f"{out}/ratings.{c}", "w") as f:
        for i in range(per_chunk):
            n += 1
            m = rnd.randrange(1, movies + 1)
            rating = repr(n / 1000).removesuffix(".0")  # as JSON prints it
            f.write(f'{m}\t{{"id": {m}, "rating": {rating}}}\n')
            expected.append(f"{m}\t{rating}")
            if n % (ratings // bad) == 0:
                f.write(f'{m}\t{{"id": {m}, "rating": "bad {n}"}}\n')
with open(f"{out}/expected", "w") as f:
    f.write("\n".join(sorted(expected)) + "\n")
PY

results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo 0; }

# Produce the chunks in the background while PostgreSQL crashes twice.
(
	for c in $(seq 0 $((CHUNKS - 1))); do
		kafka_produce movies <"$TEST_DIR/movies.$c"
		kafka_produce ratings <"$TEST_DIR/ratings.$c"
		sleep 0.5
	done
) &
producer=$!

crashes=0
for at in 1500 3500; do
	wait_for 120 "[ \"\$(results)\" -ge $at ]" || fail "results stopped before $at"
	pg_stop "$PG_DIR" immediate
	crashes=$((crashes + 1))
	echo "# crashed PostgreSQL with $(kafka_consume rated_movies | wc -l) records on the output topic"
	sleep 1
	pg_start "$PG_DIR"
done
wait $producer || fail "producing the stream failed"
pass "PostgreSQL crashed $crashes times in the middle of the stream"

wait_for_output "$RATINGS" 180
sleep 3

check_eq "every rating is stored once" \
	"$RATINGS|$RATINGS" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.ratings")"
check_eq "every malformed rating is rejected once" \
	"$BAD|$BAD" \
	"$(psql_q "SELECT count(*), count(DISTINCT (topic, kafka_partition, kafka_offset)) FROM pgkafka_join.rejected_messages")"
check_eq "every movie is stored" "$MOVIES" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.movies")"
check_eq "every rating was joined once in PostgreSQL" \
	"$RATINGS|$RATINGS|0" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), (SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined) FROM pgkafka_join.rated_movies")"

echo "# crashes: $crashes, ratings: $RATINGS"
check_output_exactly_once "after the crashes"
