#!/bin/bash
#
# poison.sh
#		A message that cannot be stored is rejected, the stream goes on.  A
#		movie that parses but breaks a DBA's own CHECK constraint fails the
#		batch it came in; the worker, without exiting, stores that batch's
#		messages one at a time, keeps the one that fails in
#		rejected_messages (exact key, payload and offset, the error as the
#		reason) and stores and publishes everything else exactly once.  An
#		error that does not come from a message's contents (a lock not
#		available, a result sequence at its end) is retried, never turned
#		into a rejection.  A rating dated further ahead than
#		pgkafka_join.future_tolerance is rejected.

. "$(dirname "$0")/setup.sh"
pkj_setup poison 3

log=$PG_DIR/server.log
POISON=137

count() { psql_q "SELECT count(*) FROM pgkafka_join.$1"; }
worker_pid() { psql_q "SELECT pid FROM pgkafka_join.status"; }
topic_ids() { kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join\.id=([0-9]+).*/\1/' | sort -n; }
db_ids() { psql_q "SELECT id FROM pgkafka_join.rated_movies ORDER BY id"; }
no_worker_exit()
{
	! grep -E 'pgkafka_join.*(terminated by signal|exited with exit code)' "$log"
}

psql_q "ALTER TABLE pgkafka_join.movies ADD CONSTRAINT no_poison CHECK (title <> 'Poison')"
wait_for 60 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = consuming ]' ||
	fail "the worker is not consuming: $(psql_q "SELECT * FROM pgkafka_join.status")"
pid=$(worker_pid)
[[ "$pid" =~ ^[0-9]+$ ]] || fail "no worker pid in the status view: $pid"

# 200 movies, one of them poison, and ratings of 40 good movies and of the
# poison one, all produced while paused so that they come in one batch or
# a few
for ((m = 1; m <= 200; m++)); do
	if [ $m = $POISON ]; then
		printf '%d\t{"id": %d, "title": "Poison", "release_year": 1999}\n' $m $m
	else
		printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
	fi
done >"$TEST_DIR/movies"
for ((m = 1; m <= 200; m += 5)); do
	printf '%d\t{"id": %d, "rating": %d.5}\n' $m $m $m
	printf '%d\t%d.5\n' $m $m >>"$TEST_DIR/expected"
done >"$TEST_DIR/ratings"
printf '%d\t{"id": %d, "rating": 1}\n%d\t{"id": %d, "rating": 2}\n' \
	$POISON $POISON $POISON $POISON >>"$TEST_DIR/ratings"
sort -o "$TEST_DIR/expected" "$TEST_DIR/expected"

psql_q "SELECT pgkafka_join.pause()" >/dev/null
kafka_produce movies <"$TEST_DIR/movies"
kafka_produce ratings <"$TEST_DIR/ratings"
psql_q "SELECT pgkafka_join.resume()" >/dev/null

wait_for 180 '[ "$(count movies)" = 199 ] && [ "$(count ratings)" = 42 ] && [ "$(count rejected_messages)" = 1 ]' ||
	fail "the stream did not go on past the poison movie: $(count movies) movies, $(count ratings) ratings, $(count rejected_messages) rejected"
wait_for_output 40 120
pass "the stream went on past the poison movie"

check_eq "every movie but the poison one is stored" "199|199|0" \
	"$(psql_q "SELECT count(*), count(DISTINCT id) FILTER (WHERE id BETWEEN 1 AND 200 AND title = 'Movie ' || id), count(*) FILTER (WHERE id = $POISON) FROM pgkafka_join.movies")"

# the poison movie as the broker holds it
poison_line=$(kafka_consume movies | awk -F'\t' -v k=$POISON '$3 == k')
poison_partition=$(cut -f1 <<<"$poison_line")
poison_offset=$(cut -f2 <<<"$poison_line")
poison_value=$(grep -P "^$POISON\t" "$TEST_DIR/movies" | cut -f2)
check_eq "the poison movie is rejected once, with its partition and offset, key and payload bytes" \
	"movies|$poison_partition|$poison_offset|$(printf '%s' "$POISON" | od -An -tx1 | tr -d ' \n')|$(printf '%s' "$poison_value" | od -An -tx1 | tr -d ' \n')" \
	"$(psql_q "SELECT topic, kafka_partition, kafka_offset, encode(key, 'hex'), encode(payload, 'hex') FROM pgkafka_join.rejected_messages")"
reason=$(psql_q "SELECT reason FROM pgkafka_join.rejected_messages")
[[ "$reason" == "could not be stored: "*'"no_poison"'* ]] ||
	fail "the reason does not give the error: $reason"
pass "the reason gives the error: $reason"

check_eq "the ratings of the good movies are published, once each" \
	"$(cat "$TEST_DIR/expected")" \
	"$(kafka_consume rated_movies | cut -f3,4 | sed -E 's/.*"id":([0-9]+).*"rating":([0-9.]+).*/\1\t\2/' | LC_ALL=C sort)"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the ratings of the poison movie wait" "2|0|2" \
	"$(psql_q "SELECT count(*), count(*) FILTER (WHERE joined), (SELECT pending_ratings FROM pgkafka_join.status) FROM pgkafka_join.ratings WHERE movie_id = $POISON")"
check_eq "every input offset is past every message" "movies|200|0
ratings|42|0" \
	"$(psql_q "SELECT topic, sum(stored_offset), sum(lag) FROM pgkafka_join.input_status GROUP BY 1 ORDER BY 1")"
check_eq "the log says the message was rejected, once" "1" \
	"$(grep -c 'LOG:  pgkafka_join rejected a message that could not be stored' "$log")"
grep -A1 'pgkafka_join rejected a message that could not be stored' "$log" | grep -qF "DETAIL:  $reason" ||
	fail "the log does not say why the message was rejected"
check_eq "the worker kept its pid" "$pid" "$(worker_pid)"

# --- a transient error (a lock not available, from a trigger) is retried,
# not turned into a rejection
psql_q <<'SQL'
CREATE TABLE public.flaky (failing boolean NOT NULL);
INSERT INTO public.flaky VALUES (true);
CREATE FUNCTION public.flaky_movie() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.title = 'Flaky' AND (SELECT failing FROM public.flaky) THEN
        RAISE EXCEPTION 'flaky movie: try again later' USING ERRCODE = 'lock_not_available';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER flaky BEFORE INSERT OR UPDATE ON pgkafka_join.movies
    FOR EACH ROW EXECUTE FUNCTION public.flaky_movie();
SQL
psql_q "SELECT pgkafka_join.pause()" >/dev/null
kafka_produce movies <<'EOF2'
201	{"id": 201, "title": "Flaky"}
202	{"id": 202, "title": "Steady"}
EOF2
kafka_produce ratings <<'EOF2'
201	{"id": 201, "rating": 201.5}
EOF2
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(grep -c "ERROR:  flaky movie: try again later" "$log")" -ge 3 ]' ||
	fail "the transient error was not retried"
check_eq "while the error lasts the movie is not stored, nor rejected" "0|1|flaky movie: try again later" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id = 201")|$(count rejected_messages)|$(psql_q "SELECT last_error FROM pgkafka_join.status")"
psql_q "UPDATE public.flaky SET failing = false" >/dev/null
wait_for 60 '[ "$(count movies)" = 201 ]' || fail "the movies were not stored after the error went away"
wait_for_output 41 120
check_eq "after the error the movies are stored, none rejected" "Flaky,Steady|1" \
	"$(psql_q "SELECT string_agg(title, ',' ORDER BY id) FROM pgkafka_join.movies WHERE id > 200")|$(count rejected_messages)"
check_eq "the waiting rating of the flaky movie is published once" "1	201.5" \
	"$(kafka_consume rated_movies | cut -f3,4 | grep -P '^201\t' | sed -E 's/.*"rating":([0-9.]+).*/\1/' | sort | uniq -c | sed -E 's/^ *//; s/ /\t/')"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"

# A rating dated further ahead of its message's timestamp than
# pgkafka_join.future_tolerance (1 day) would stay inside the join window
# for as much longer: rejected, with the reason.  One dated 20 hours ahead,
# produced after it on the same partition, is joined.
ahead=$(date -u -d '+2 days' +%Y-%m-%dT%H:%M:%SZ)
kafka_produce ratings <<EOF2
202	{"id": 202, "rating": 301.5, "rated_at": "$ahead"}
202	{"id": 202, "rating": 302.5, "rated_at": "$(date -u -d '+20 hours' +%Y-%m-%dT%H:%M:%SZ)"}
EOF2
wait_for_output 42 120
check_eq "a rating 20 hours ahead is joined; one 2 days ahead is not stored" "302.5" \
	"$(psql_q "SELECT string_agg(rating::text, ',' ORDER BY rating) FROM pgkafka_join.ratings WHERE rating > 300")"
check_eq "it is rejected, saying why" \
	"{\"id\": 202, \"rating\": 301.5, \"rated_at\": \"$ahead\"}|rated_at is more than pgkafka_join.future_tolerance (1 day) ahead of the message's timestamp" \
	"$(psql_q "SELECT convert_from(payload, 'UTF8') || '|' || reason FROM pgkafka_join.rejected_messages WHERE topic = 'ratings'")"

# A result sequence at its end fails every batch that joins a rating
# (nextval(), SQLSTATE 2200H, of the "data exception" class): the server's
# state, not the messages' fault.  Two ratings stored in one batch are
# retried, never taken one at a time and rejected, until the sequence is
# set back.
last_id=$(psql_q "SELECT last_value FROM pgkafka_join.rated_movies_id_seq")
rejected=$(count rejected_messages)
errors=$(grep -c 'reached maximum value of sequence' "$log" || true)
psql_q "SELECT pgkafka_join.pause()" >/dev/null
psql_q "SELECT setval('pgkafka_join.rated_movies_id_seq', 9223372036854775807)" >/dev/null
kafka_produce ratings <<'EOF2'
202	{"id": 202, "rating": 303.5}
202	{"id": 202, "rating": 304.5}
EOF2
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(grep -c "reached maximum value of sequence" "$log")" -ge $((errors + 3)) ]' ||
	fail "the worker did not try the batch three times"
check_eq "while the sequence is at its end, the ratings are neither stored nor rejected" \
	"0|$rejected" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE rating IN (303.5, 304.5)")|$(count rejected_messages)"
psql_q "SELECT setval('pgkafka_join.rated_movies_id_seq', $last_id)" >/dev/null
wait_for_output 44 120
check_eq "once it is set back, both are stored and published once, none rejected" \
	"303.5,304.5|$rejected" \
	"$(psql_q "SELECT string_agg(rating::text, ',' ORDER BY rating) FROM pgkafka_join.rated_movies WHERE rating IN (303.5, 304.5)")|$(count rejected_messages)"
check_eq "the output topic holds every result once, no id twice" "$(db_ids)" "$(topic_ids)"
check_eq "the worker kept its pid throughout" "$pid" "$(worker_pid)"
no_worker_exit || fail "the worker exited"
pass "no worker exit in the server log"
