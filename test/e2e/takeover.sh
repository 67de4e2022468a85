#!/bin/bash
#
# takeover.sh
#		Two servers configured for the same partitions, and an owner that
#		stops renewing its claims in the middle of a batch: no partition is
#		taken over by a server that would publish its results again, and an
#		owner whose claims went stale commits nothing.
#
# 1. Server A owns partitions 0-2 and streams 3,000 ratings in 30 chunks;
#    server B, configured for the same partitions with the same output
#    topic, is refused while A renews its claims.  After the 9th chunk A's
#    worker is frozen (SIGSTOP) until B has seen A's claims lapse: B holds
#    none of the partitions' state (A's claims say A does), so it refuses
#    to take them over (WARNING "will not take over partitions 0-2"),
#    stores and publishes nothing.  A, let go on, renews its claims before
#    it commits anything, and every rating's result is on the output topic
#    exactly once.
# 2. Server C, fresh, for partitions 0-2 and another output topic, owns
#    them (its claims confirmed) before anything arrives; its first batch
#    is held open by a trigger (waiting on a table of the test), while its
#    claims say that it holds nothing of the partitions yet.  Server D, fresh too, sees those claims lapse and takes
#    the partitions over, then publishes every result.  C's batch is let
#    go only then: its commit fails ("did not commit: its claims ... were
#    last renewed N ms ago"), C then is refused the partitions, holds
#    nothing (input_offsets, movies, ratings, rated_movies empty) and
#    published nothing; the output topic holds D's results, each once.
#    D fenced C's producer when it took over (its log says so, and the
#    broker's kafka-transactions tool shows the epoch of C's transactional
#    id moved): C could commit no Kafka transaction any more.
# 3. Server E owns partition 0 of single-partition topics and has published
#    the results of 300 ratings; 201 more arrive at once, and E's last
#    batch (the one with the last rating) is held open by a trigger while
#    the results of the batch before are in E's open Kafka transaction
#    (the broker's kafka-transactions tool says "Ongoing").  Server F is
#    given the partition's state as published (its ratings position: after
#    the last rating whose result is on the output topic, read_committed)
#    and takes it over while E is stalled; it fences E's producer, which
#    aborts E's transaction: F's results are visible to a read_committed
#    consumer while E is still stalled (an open transaction of E would hide
#    them until the brokers time it out, after a minute).  Let go, E
#    commits nothing.  Every rating's result is on the output topic once;
#    the records of E's aborted transaction are not.
# 4. Another producer with F's transactional id (kcat, writing to a topic
#    of its own) fences F's producer between two of its transactions: F's
#    next transaction fails ("the producer of pgkafka_join was fenced"),
#    and the same worker process starts over with new handles and
#    publishes the next ratings' results, each once.

. "$(dirname "$0")/setup.sh"

MOVIES=300
RATINGS=3000
test_init takeover
kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies movies2 ratings2 rated_movies2; do
	kafka_create_topic $topic 3
done
for topic in movies3 ratings3 rated_movies3 scratch; do
	kafka_create_topic $topic 1
done
common=("pgkafka_join.database = 'postgres'"
	"pgkafka_join.retry_interval = '1s'"
	"pgkafka_join.batch_size = 200"
	"pgkafka_join.partitions = '0-2'")

# producer_of DIR: the transactional id of worker 0's producer (the default)
producer_of()
{
	on "$1" "SELECT 'pgkafka_join-' || system_identifier || '-' ||
		(SELECT oid FROM pg_database WHERE datname = current_database()) FROM pg_control_system()"
}
worker_pid_of() { on "$1" "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'"; }

#
# 1. The owner frozen past the lapse; the other server holds none of the state
#
PG_A=$TEST_DIR/pg_a
PG_B=$TEST_DIR/pg_b
pg_start "$PG_A" "${common[@]}" "pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '$MOVIES' ]' ||
	fail "A did not store the movies"
pg_start "$PG_B" "${common[@]}" "pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
pg_use "$PG_A"
wait_for 60 '[ "$(state_of "$PG_B")" = "$REFUSED" ]' ||
	fail "B is not refused while A owns the partitions: $(state_of "$PG_B")"
pass "B, configured for A's partitions, is refused while A renews its claims"

python3 - "$MOVIES" "$RATINGS" "$TEST_DIR" <<'PY'
import sys
movies, ratings = map(int, sys.argv[1:3])
with open(sys.argv[3] + "/ratings", "w") as r, open(sys.argv[3] + "/expected", "w") as e:
    for n in range(1, ratings + 1):
        m = n % movies + 1
        rating = repr(n / 1000).removesuffix(".0")  # as JSON prints it
        print(f'{m}\t{{"id": {m}, "rating": {rating}}}', file=r)
        print(f'{m}\t{rating}', file=e)
PY
sort -o "$TEST_DIR/expected" "$TEST_DIR/expected"
split -n l/30 -d "$TEST_DIR/ratings" "$TEST_DIR/chunk."
(
	for f in "$TEST_DIR"/chunk.*; do
		kafka_produce ratings <"$f"
		echo "$f" >>"$TEST_DIR/chunks_done"
		sleep 0.3
	done
) &
producer=$!
wait_for 60 '[ "$(wc -l <"$TEST_DIR/chunks_done" 2>/dev/null || echo 0)" -ge 9 ]' ||
	fail "the first 9 chunks were not produced"
a_worker=$(worker_pid_of "$PG_A")
kill -STOP "$a_worker"
frozen_at=$SECONDS
pass "A's worker (pid $a_worker) frozen after the 9th chunk, having stored $(on "$PG_A" "SELECT count(*) FROM pgkafka_join.ratings") ratings"
wait_for 60 'grep -q "will not take over partitions 0-2" "$PG_B/server.log"' ||
	{ kill -CONT "$a_worker"; fail "B did not see A's claims lapse"; }
echo "# B saw A's claims lapse $((SECONDS - frozen_at)) s after A was frozen:"
grep -A2 'WARNING: .*will not take over partitions 0-2' "$PG_B/server.log" | head -3 | sed 's/^/# | /'
check_eq "B, holding none of the partitions' state, stored nothing: input_offsets, movies, ratings, rated_movies" \
	"0|0|0|0" "$(stored_counts "$PG_B")"
kill -CONT "$a_worker"
wait $producer || fail "producing the ratings failed"
wait_for 120 '[ "$(output_count)" -ge '$RATINGS' ]' ||
	fail "the output topic did not reach $RATINGS records (has $(output_count))"
sleep 2
check_output_exactly_once "A frozen past the lapse, B refused"
check_eq "A's worker is the one frozen, gone on" "$a_worker" "$(worker_pid_of "$PG_A")"
check_eq "B still refused, stored nothing: state, input_offsets, movies, ratings, rated_movies" \
	"$REFUSED|0|0|0|0" "$(state_of "$PG_B")|$(stored_counts "$PG_B")"
grep -qE 'pgkafka_join renewed its claims (late|before a commit): the last renewal was' "$PG_A/server.log" ||
	fail "A's log does not say that it renewed its stale claims before going on"
pass "A renewed its stale claims before it committed anything: $(grep -m1 -oE 'renewed its claims (late|before a commit): .*' "$PG_A/server.log")"
pg_stop "$PG_A"
pg_stop "$PG_B"

#
# 2. An owner's first batch held open while another server takes over
#
PG_C=$TEST_DIR/pg_c
PG_D=$TEST_DIR/pg_d
second=("pgkafka_join.movies_topic = 'movies2'" "pgkafka_join.ratings_topic = 'ratings2'"
	"pgkafka_join.output_topic = 'rated_movies2'")
pg_start "$PG_C" "${common[@]}" "${second[@]}" "pgkafka_join.brokers = ''"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
# hold_first(): holds the transaction that stores the first movie until the
# test inserts a row into public.go
psql_q >/dev/null <<'SQL'
CREATE TABLE public.go (x int);
CREATE FUNCTION public.hold_first() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    WHILE NOT EXISTS (SELECT FROM public.go) LOOP
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER hold_first AFTER INSERT ON pgkafka_join.movies
    FOR EACH STATEMENT EXECUTE FUNCTION public.hold_first();
SQL
# C claims the partitions, and confirms its claims, before anything arrives
psql_q "ALTER SYSTEM SET pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(state_of "$PG_C")" = consuming ]' || fail "C does not consume: $(state_of "$PG_C")"
{
	for ((m = 1; m <= 100; m++)); do
		printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
	done | kafka_produce movies2
	for ((n = 1; n <= 500; n++)); do
		m=$((n % 100 + 1))
		printf '%d\t{"id": %d, "rating": %d.5}\n' $m $m $((n % 10))
	done | kafka_produce ratings2
}
held() { on "${1:-$PG_C}" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker' AND wait_event = 'PgSleep'"; }
wait_for 60 '[ "$(held)" = 1 ]' || fail "C's first batch did not reach the trigger"
pass "C's first batch is held open, its claims saying that it holds nothing"
# C's producer (worker 0's transactional id) has initialized transactions
c_producer=$(producer_of "$PG_C")
c_epoch=$(kafka_transaction "$c_producer" ProducerEpoch)
[[ "$c_epoch" =~ ^[0-9]+$ ]] || fail "the broker does not describe C's transactional id \"$c_producer\": \"$c_epoch\""
pg_start "$PG_D" "${common[@]}" "${second[@]}" "pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
d_results() { on "$PG_D" "SELECT count(*) FROM pgkafka_join.rated_movies"; }
wait_for 60 '[ "$(d_results)" = 500 ]' ||
	fail "D did not take the partitions over and join the 500 ratings: $(state_of "$PG_D"), $(d_results) results"
grep -q 'takes over partitions whose claim lapsed' "$PG_D/server.log" ||
	fail "D's log does not say that it took over a lapsed claim"
pass "D took over C's lapsed claims, C's first batch still open"
grep -qF "LOG:  pgkafka_join fenced the producer \"$c_producer\" of the partitions it takes over" "$PG_D/server.log" ||
	fail "D's log does not say that it fenced C's producer \"$c_producer\""
d_epoch=$(kafka_transaction "$c_producer" ProducerEpoch)
[ "$d_epoch" -gt "$c_epoch" ] ||
	fail "the epoch of C's transactional id did not move at D's takeover: $c_epoch, then $d_epoch"
pass "D fenced C's producer when it took over: the epoch of \"$c_producer\" on the broker went from $c_epoch to $d_epoch"
check_eq "C's batch was still open when D stored everything" 1 "$(held)"
on "$PG_C" "INSERT INTO public.go VALUES (1)" >/dev/null
wait_for 30 'grep -q "did not commit: its claims of partitions 0-2 were last renewed" "$PG_C/server.log"' ||
	fail "C's batch was not refused at its commit"
echo "# $(grep -m1 'did not commit: its claims' "$PG_C/server.log" | sed 's/.*ERROR: *//')"
wait_for 30 '[ "$(state_of "$PG_C")" = "$REFUSED" ]' ||
	fail "C is not refused after its commit failed: $(state_of "$PG_C")"
check_eq "C, whose claims went stale in its batch, stored nothing: input_offsets, movies, ratings, rated_movies" \
	"0|0|0|0" "$(stored_counts "$PG_C")"
wait_for 30 '[ "$(kafka_consume rated_movies2 | wc -l)" -ge 500 ]' ||
	fail "the output topic did not reach 500 records"
sleep 2
check_eq "the output topic holds D's 500 results, each once, and nothing of C" \
	"$(on "$PG_D" "SELECT string_agg(share || ':' || id, ',' ORDER BY share, id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies2 -f '%h\n' |
		python3 -c '
import sys
for line in sys.stdin:
    h = dict(kv.split("=", 1) for kv in line.strip().split(","))
    print(h["pgkafka_join.share"] + ":" + h["pgkafka_join.id"])' | sort -t: -k1,1n -k2,2n | paste -sd,)"
pg_stop "$PG_C"
pg_stop "$PG_D"

#
# 3. An owner stalled with a Kafka transaction open; another server given
#    the partition's state as published takes it over
#
PG_E=$TEST_DIR/pg_e
PG_F=$TEST_DIR/pg_f
third=("pgkafka_join.movies_topic = 'movies3'" "pgkafka_join.ratings_topic = 'ratings3'"
	"pgkafka_join.output_topic = 'rated_movies3'" "pgkafka_join.partitions = '0'")
# ratings3 N FIRST: N ratings of movies 1..50, rating FIRST/1000, ... (each
# rating a value of its own), as "movie<TAB>json"; the expected results go
# to $TEST_DIR/expected3 as "movie<TAB>rating"
ratings3()
{
	python3 - "$@" <<'PY'
import sys
n, first = map(int, sys.argv[1:3])
with open(sys.argv[3], "a") as e:
    for k in range(first, first + n):
        m = k % 50 + 1
        rating = repr(k / 1000).removesuffix(".0")
        print(f'{m}\t{{"id": {m}, "rating": {rating}}}')
        print(f"{m}\t{rating}", file=e)
PY
}
committed3() { kafka_consume rated_movies3 | wc -l; }
# results3: the committed results of rated_movies3 as "movie<TAB>rating", sorted
results3()
{
	kafka_consume rated_movies3 -f '%s\n' | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("%s\t%s" % (r["id"], r["rating"]))' | sort
}
pg_start "$PG_E" "${common[@]}" "${third[@]}" "pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
# hold_last(): holds the transaction that stores rating 9.998 until the
# test inserts a row into public.go_slow, and the one that stores rating
# 9.999 until it inserts one into public.go3
psql_q >/dev/null <<'SQL'
CREATE TABLE public.go_slow (x int);
CREATE TABLE public.go3 (x int);
CREATE FUNCTION public.hold_last() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT FROM pgkafka_join.ratings WHERE rating = 9.998) THEN
        WHILE NOT EXISTS (SELECT FROM public.go_slow) LOOP
            PERFORM pg_catalog.pg_sleep(0.1);
        END LOOP;
    END IF;
    IF EXISTS (SELECT FROM pgkafka_join.ratings WHERE rating = 9.999) THEN
        PERFORM pg_catalog.set_config('application_name', 'held at 9.999', true);
        WHILE NOT EXISTS (SELECT FROM public.go3) LOOP
            PERFORM pg_catalog.pg_sleep(0.1);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER hold_last AFTER INSERT ON pgkafka_join.ratings
    FOR EACH STATEMENT EXECUTE FUNCTION public.hold_last();
SQL
: >"$TEST_DIR/expected3"
for ((m = 1; m <= 50; m++)); do
	printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
done | kafka_produce movies3
ratings3 300 1 "$TEST_DIR/expected3" | kafka_produce ratings3
wait_for 60 '[ "$(committed3)" = 300 ]' ||
	fail "E did not publish the results of the first 300 ratings: $(committed3)"
# One rating whose batch E stores slowly (held until go_slow), so that the
# next ones are all in E's consumer queue when it publishes that batch: E
# then stores the next batch before it commits the Kafka transaction
# (publishing overlaps storing while more waits), and so on, up to the
# batch with rating 9.999, held until go3
printf '1\t{"id": 1, "rating": 9.998}\n' | kafka_produce ratings3
printf '1\t9.998\n' >>"$TEST_DIR/expected3"
wait_for 60 '[ "$(held "$PG_E")" = 1 ]' || fail "E's slow batch did not reach the trigger"
{ ratings3 200 301 "$TEST_DIR/expected3"; printf '1\t{"id": 1, "rating": 9.999}\n'; } |
	kafka_produce ratings3
printf '1\t9.999\n' >>"$TEST_DIR/expected3"
sleep 2		# E's consumer fetches them meanwhile (the check below says if it did not)
on "$PG_E" "INSERT INTO public.go_slow VALUES (1)" >/dev/null
held3() { on "$PG_E" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker' AND wait_event = 'PgSleep' AND application_name = 'held at 9.999'"; }
wait_for 60 '[ "$(held3)" = 1 ]' || fail "E's batch with rating 9.999 did not reach the trigger"
e_producer=$(producer_of "$PG_E")
check_eq "E's last batch is held open, with the results of the batch before in an open Kafka transaction" \
	"Ongoing" "$(kafka_transaction "$e_producer" TransactionState)"
published=$(committed3)
echo "# E stalled: $published results committed on the output topic, $(on "$PG_E" "SELECT count(*) FROM pgkafka_join.rated_movies") stored in E"

pg_start "$PG_F" "${common[@]}" "${third[@]}" "pgkafka_join.brokers = ''"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
# the partition's state as published: ratings from the first without a result
# on the topic; the catalog from the beginning of the movies topic
psql_q "INSERT INTO pgkafka_join.input_offsets VALUES ('ratings3', 0, $published, now())" >/dev/null
psql_q "ALTER SYSTEM SET pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 'grep -qF "LOG:  pgkafka_join fenced the producer \"$e_producer\" of the partitions it takes over" "$PG_F/server.log"' ||
	fail "F did not take over E's partition and fence its producer: $(state_of "$PG_F")"
pass "F took over E's lapsed claim and fenced E's producer \"$e_producer\""
wait_for 30 '[ "$(committed3)" = 502 ]' ||
	fail "F's results are not all visible to a read_committed consumer while E is stalled: $(committed3) of 502"
check_eq "F's results are visible to a read_committed consumer while E is still stalled: E's open transaction was aborted" \
	1 "$(held3)"
on "$PG_E" "INSERT INTO public.go3 VALUES (1)" >/dev/null
wait_for 30 'grep -q "did not commit: its claims of partitions 0 were last renewed" "$PG_E/server.log"' ||
	fail "E's batch was not refused at its commit"
wait_for 30 '[ "$(state_of "$PG_E")" = "$REFUSED" ]' ||
	fail "E is not refused after its commit failed: $(state_of "$PG_E")"
check_eq "the output topic holds every rating's result once (read_committed)" \
	"$(sort "$TEST_DIR/expected3")" \
	"$(results3)"
aborted=$(( $(kafka_consume rated_movies3 --uncommitted | wc -l) - 502 ))
[ "$aborted" -gt 0 ] || fail "no record of E's aborted transaction is on the topic"
pass "the $aborted records of E's transaction, aborted by the fence, are on the topic and invisible to read_committed consumers"


#
# 4. F's producer fenced by another producer with its transactional id
#
f_producer=$(producer_of "$PG_F")
f_worker=$(worker_pid_of "$PG_F")
f_mark=$(stat -c %s "$PG_F/server.log")
printf 'k\tv\n' | kafka_produce scratch -x "$f_producer"
ratings3 100 701 "$TEST_DIR/expected3" | kafka_produce ratings3
wait_for 60 '[ "$(committed3)" = 602 ]' ||
	fail "F did not publish the next 100 results after its producer was fenced: $(committed3) of 602"
tail -c +$((f_mark + 1)) "$PG_F/server.log" | grep -q "ERROR:  the producer of pgkafka_join was fenced: another producer with transactional id \"$f_producer\" started" ||
	fail "F's log does not say that its producer was fenced"
pass "F's producer, fenced by another producer with its transactional id, said so: $(tail -c +$((f_mark + 1)) "$PG_F/server.log" | grep -m1 -o 'the producer of pgkafka_join was fenced.*')"
check_eq "F's worker is the same process, gone on with new handles" "$f_worker" "$(worker_pid_of "$PG_F")"
check_eq "after the fence, the output topic holds every rating's result once (read_committed)" \
	"$(sort "$TEST_DIR/expected3")" \
	"$(results3)"

check_eq "no server process crashed (terminated by signal)" "0 0 0 0 0 0" \
	"$(for d in "$PG_A" "$PG_B" "$PG_C" "$PG_D" "$PG_E" "$PG_F"; do grep -c 'terminated by signal' "$d/server.log" || true; done | paste -sd' ')"

pass "takeover"
