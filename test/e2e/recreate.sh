#!/bin/bash
#
# recreate.sh
#		DROP EXTENSION and CREATE EXTENSION, in one transaction, three times
#		while a stream of ratings is being stored: the extension left in
#		place holds every message of every topic from its beginning exactly
#		once, its input offsets are the topics' end offsets, and it joined
#		and published every rating.  No batch of an earlier incarnation is
#		stored into the tables of a later one (which would make the new
#		extension skip every message before that batch's offsets), and the
#		worker never exits.

. "$(dirname "$0")/setup.sh"
MOVIES=100
RATINGS=3000
CHUNKS=15
pkj_setup recreate 3 \
	"pgkafka_join.batch_size = 50" \
	"pgkafka_join.batch_delay = '200ms'"

LOG=$PG_DIR/server.log

produce_movies_upto "$MOVIES"
wait_for 60 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.movies')\" = $MOVIES ]" ||
	fail "the movies were not stored"
pid=$(psql_q "SELECT pid FROM pgkafka_join.status")
ext0=$(psql_q "SELECT oid FROM pg_extension WHERE extname = 'pgkafka_join'")

# The ratings, in CHUNKS chunks over about 15 s, in the background;
# rating i is of movie i % MOVIES + 1
(
	per=$((RATINGS / CHUNKS))
	for ((c = 0; c < CHUNKS; c++)); do
		for ((i = c * per; i < (c + 1) * per; i++)); do
			printf '%d\t{"id": %d, "rating": %d}\n' $((i % MOVIES + 1)) $((i % MOVIES + 1)) "$i"
		done | kafka_produce ratings
		sleep 1
	done
) &
producer=$!

stored() { psql_q "SELECT count(*) FROM pgkafka_join.ratings" 2>/dev/null || echo 0; }

# The transaction stays open after CREATE EXTENSION until the worker waits
# for a lock of the dropped objects, in a step of the old extension (seen
# in pg_stat_activity, whose snapshot is cleared at each look; most often
# storing a batch), so that the worker goes on with that step after the
# commit: the race this test is for happens every time.
for ((k = 1; k <= 3; k++)); do
	sleep 1
	out=$(psql_q "BEGIN; DROP EXTENSION pgkafka_join; CREATE EXTENSION pgkafka_join;
	              DO \$\$
	              BEGIN
	                  FOR i IN 1..400 LOOP
	                      PERFORM pg_stat_clear_snapshot();
	                      PERFORM set_config('pkj_test.waiting_in', a.query, true)
	                         FROM pg_stat_activity a
	                        WHERE a.backend_type = 'pgkafka_join worker' AND a.wait_event_type = 'Lock';
	                      IF FOUND THEN
	                          RETURN;
	                      END IF;
	                      PERFORM pg_sleep(0.05);
	                  END LOOP;
	                  RAISE EXCEPTION 'no batch of the worker waited for the dropped tables within 20 s';
	              END
	              \$\$;
	              SELECT current_setting('pkj_test.waiting_in');
	              COMMIT;" 2>&1) ||
		fail "recreation $k failed: $out"
	pass "recreation $k: the worker waited for the dropped objects, $out"
	echo "# extension dropped and created again ($k) with $(kafka_consume ratings | wc -l) ratings on the topic; the new one stored $(stored) so far"
done
wait $producer || fail "producing the ratings failed"
pass "the extension was dropped and created again 3 times while the ratings streamed"

wait_for 120 "[ \"\$(stored)\" -ge $RATINGS ]" ||
	fail "the current extension did not store every rating ($(stored))"
wait_for 120 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.rated_movies')\" -ge $RATINGS ] &&
	[ \"\$(psql_q 'SELECT publish_lag FROM pgkafka_join.status')\" = 0 ]" ||
	fail "the current extension did not join and publish every rating: $(psql_q "SELECT * FROM pgkafka_join.status")"
sleep 3

check_eq "the extension in place is not the first one" "t" \
	"$(psql_q "SELECT oid <> $ext0 FROM pg_extension WHERE extname = 'pgkafka_join'")"
check_eq "every rating from the beginning of the topic is stored once" \
	"$RATINGS|$RATINGS|0|$((RATINGS - 1))|$RATINGS" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), min(rating), max(rating), count(DISTINCT rating) FROM pgkafka_join.ratings")"
check_eq "every movie from the beginning of the topic is stored" "$MOVIES|1|$MOVIES" \
	"$(psql_q "SELECT count(*), min(id), max(id) FROM pgkafka_join.movies")"
check_eq "no message was rejected" "0" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")"

ends=$(for t in movies ratings; do
	kafka_consume "$t" | awk -F'\t' -v t="$t" '{ end[$1] = $2 + 1 } END { for (p in end) print t "|" p "|" end[p] }'
done | LC_ALL=C sort)
check_eq "the input offsets are the topics' end offsets" "$ends" \
	"$(psql_q "SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets ORDER BY 1, 2")"

check_eq "every rating was joined and published once by the extension in place" \
	"$RATINGS|$RATINGS|0|0" \
	"$(psql_q "SELECT count(*), count(DISTINCT rating), (SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined), (SELECT publish_lag FROM pgkafka_join.status) FROM pgkafka_join.rated_movies")"

echo "# steps of an old extension given up: $(grep -c 'dropped a batch unstored: the extension was dropped or created again' "$LOG" || true) batches dropped unstored, $(grep -c 'pgkafka_join worker: ERROR' "$LOG" || true) failed (and retried on the new one)"
check_eq "the worker kept its pid and never exited" "$pid|0" \
	"$(psql_q "SELECT pid FROM pgkafka_join.status")|$(grep -cE 'exited with exit code|terminated by signal' "$LOG" || true)"
