#!/bin/bash
#
# broker_faults.sh
#		Kafka fails under the running join worker, three ways, one after
#		the other on the same broker and the same PostgreSQL cluster:
#
#	missing topics: the cluster starts with the worker configured while
#	   only the movies topic exists (no ratings topic, no output topic).
#	   The worker says once that it waits for each, does not crash, goes
#	   on storing movies, and once the topics are created consumes the
#	   ratings and publishes their results;
#	outage: the broker is stopped (controlled shutdown) in the middle of
#	   a stream, stays down 60 s, and is started again on the same
#	   directory (same port, same data).  The worker neither exits nor
#	   floods the log, says it cannot reach the brokers, and resumes; the
#	   stream goes on after the restart;
#	kill: a backlog of 20000 results is being published (batch_size
#	   250, so eighty Kafka transactions) when the broker is SIGKILLed,
#	   after the first of them committed and before the last, then
#	   started again.  While it is dead, a reload changes a Kafka setting,
#	   applied as soon as the worker has control (see below).
#	   The transaction in flight is completed or aborted, never half
#	   visible.
#
# After each case: every expected result is on the output topic exactly
# once (read_committed), the output topic holds exactly the result ids of
# rated_movies, output_position matches the topic, the tables hold exactly
# what was produced, and the worker never exited (an exit, or a process
# terminated by a signal, fails the test: docs/guarantees.md says neither
# happens).  The worker's log lines written during each fault are shown,
# prefixed "# |".
#
# Takes about 3 minutes (the outage alone is 60 s; OUTAGE=N to change it).

. "$(dirname "$0")/setup.sh"
OUTAGE=${OUTAGE:-60}
BATCH=250
T0=$SECONDS

test_init broker_faults
kafka_start "$TEST_DIR/kafka"
kafka_create_topic movies 3
PG_DIR=$TEST_DIR/pg
LOG=$PG_DIR/server.log

#
# The data.  Ratings are integers, distinct over the whole test, so each
# result can be told apart; every rating's movie comes, inside the window,
# so every rating gives exactly one result.  Files are KEY<TAB>VALUE lines
# (m.* movies, r.* ratings), produced as they are.
#
python3 - "$TEST_DIR" <<'PY'
import random, sys
out = sys.argv[1]
rnd = random.Random(11)
n = 0

def movies(name, ids):
    with open(f"{out}/{name}", "w") as f:
        for m in ids:
            f.write(f'{m}\t{{"id": {m}, "title": "Movie {m}", "release_year": {1900 + m % 120}}}\n')

def ratings(name, count, lo, hi):
    global n
    with open(f"{out}/{name}", "w") as f:
        for _ in range(count):
            n += 1
            m = rnd.randint(lo, hi)
            f.write(f'{m}\t{{"id": {m}, "rating": {n}}}\n')

# missing topics: movies 1..100 while the ratings topic does not exist,
# then 1000 ratings of them once it does
movies("m.missing", range(1, 101))
ratings("r.missing", 1000, 1, 100)
# outage: 4 chunks before the stop, of movies 1..150 (101..150 come only
# after the restart, so their ratings wait through the outage), then the
# late movies and 4 more chunks after the restart
for c in range(4):
    ratings(f"r.before.{c}", 500, 1, 150)
movies("m.after", range(101, 151))
for c in range(4):
    ratings(f"r.after.{c}", 500, 1, 150)
# kill: 20000 ratings waiting for movies 1001..1200, which then arrive
# together and make 20000 results at once
ratings("r.backlog", 20000, 1001, 1200)
movies("m.backlog", range(1001, 1201))
PY

#
# Helpers
#

# The worker's own lines (log_line_prefix '%m [%p] %b: ').
worker_lines() { grep -E '\] pgkafka_join worker: ' || true; }
# Exits of the worker, as the postmaster logs them.
worker_exits() { grep -cE 'background worker "pgkafka_join worker" \(PID [0-9]+\) (exited|was terminated)' || true; }
# Any server process terminated by a signal (a crash restarts the server).
worker_signals() { grep -c 'terminated by signal' || true; }
# Show log lines, indented, at most $1 of them.
show()
{
	awk -v n="$1" 'NR <= n { print "# | " $0 }
		END { if (NR == 0) print "# | (none)"; if (NR > n) print "# | ... (" NR - n " more lines)" }'
}

results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo 0; }

# Check the worker's exits in the log from byte $1: none, and no process
# terminated by a signal.
check_exits()
{
	local from=$1 what=$2 exits signals

	exits=$(log_since "$from" | worker_exits)
	signals=$(log_since "$from" | worker_signals)
	echo "# $what: worker exits: $exits, terminated by a signal: $signals"
	if [ "$exits" -gt 0 ]; then
		log_since "$from" | grep -E 'pgkafka_join worker.*(ERROR|FATAL)|background worker "pgkafka_join worker"' | show 20
	fi
	check_eq "$what: no process terminated by a signal" 0 "$signals"
	check_eq "$what: the worker never exited" 0 "$exits"
}

# The exact check, once the ratings of RATINGS-FILES and the movies of
# MOVIE-FILES are all produced (every rating gives one result): the output
# topic holds each expected result once and nothing else, its result ids
# are exactly those of rated_movies, output_position matches the topic, and
# the tables hold exactly what was produced.
#	check_outcome WHAT RATINGS-FILES MOVIE-FILES
check_outcome()
{
	local what=$1 rfiles=$2 mfiles=$3 n nmovies lost extra dup

	(cd "$TEST_DIR" && cat $rfiles) | cut -f2 |
		sed -E 's/.*"id": ([0-9]+), "rating": ([0-9]+).*/\1\t\2/' |
		LC_ALL=C sort >"$TEST_DIR/expected"
	n=$(wc -l <"$TEST_DIR/expected")
	nmovies=$( (cd "$TEST_DIR" && cat $mfiles) | wc -l)

	wait_for 90 "[ \"\$(results)\" -ge $n ]" ||
		fail "$what: only $(results) of $n results in rated_movies"
	wait_for_output "$n" 90

	kafka_consume rated_movies -f '%p\t%o\t%h\t%k\t%s\n' >"$TEST_DIR/output"
	python3 - "$TEST_DIR" <<'PY'
import json, sys
d = sys.argv[1]
landed = {}
with open(f"{d}/actual", "w") as actual, open(f"{d}/topic_ids", "w") as ids:
    for line in open(f"{d}/output"):
        partition, offset, headers, key, value = line.rstrip("\n").split("\t", 4)
        v = json.loads(value)
        assert str(v["id"]) == key and v["title"] == f"Movie {key}", line
        h = dict(kv.split("=", 1) for kv in headers.split(","))
        assert set(h) == {"pgkafka_join.id", "pgkafka_join.share", "pgkafka_join.input"}, line
        rid = int(h["pgkafka_join.id"])
        ids.write(f"{rid}\n")
        actual.write(f'{v["id"]}\t{v["rating"]}\n')
        p = (int(partition), int(h["pgkafka_join.share"]))
        nxt, last = landed.get(p, (0, 0))
        landed[p] = (max(nxt, int(offset) + 1), max(last, rid))
with open(f"{d}/topic_position", "w") as f:
    for p in sorted(landed):
        f.write(f"rated_movies|{p[0]}|{p[1]}|{landed[p][0]}|{landed[p][1]}\n")
PY
	LC_ALL=C sort -o "$TEST_DIR/actual" "$TEST_DIR/actual"
	sort -n -o "$TEST_DIR/topic_ids" "$TEST_DIR/topic_ids"
	lost=$(LC_ALL=C comm -23 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	extra=$(LC_ALL=C comm -13 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	dup=$(uniq -d "$TEST_DIR/topic_ids" | wc -l)
	echo "# $what: results expected: $n, published: $(wc -l <"$TEST_DIR/actual"), lost: $lost, duplicated or unexpected: $extra, result ids twice on the topic: $dup"
	check_eq "$what: the output topic holds every expected result exactly once" "0 0 0" "$lost $extra $dup"
	check_eq "$what: the output topic holds exactly the result ids of rated_movies" \
		"$(psql_q "SELECT id FROM pgkafka_join.rated_movies ORDER BY id")" "$(cat "$TEST_DIR/topic_ids")"
	check_eq "$what: tables hold every input once, every rating joined once" \
		"ratings $n $n 0; offsets $n; movies $nmovies; results $n $n; rejected 0" \
		"$(psql_q "SELECT format('ratings %s %s %s; offsets %s; movies %s; results %s %s; rejected %s',
			(SELECT count(*) FROM pgkafka_join.ratings),
			(SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.ratings),
			(SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined),
			(SELECT sum(next_offset) FROM pgkafka_join.input_offsets WHERE topic = 'ratings'),
			(SELECT count(*) FROM pgkafka_join.movies),
			(SELECT count(*) FROM pgkafka_join.rated_movies),
			(SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.rated_movies),
			(SELECT count(*) FROM pgkafka_join.rejected_messages))")"
	check_eq "$what: output_position holds, per partition and share, the next offset after the share's last record and its last result id on the topic" \
		"$(cat "$TEST_DIR/topic_position")" \
		"$(psql_q "SELECT topic, kafka_partition, share, next_offset, last_id FROM pgkafka_join.output_position ORDER BY 1, 2, 3")"
}


#
# Missing topics at start-up
#
echo "# missing topics: the ratings and output topics do not exist when the worker starts"
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.batch_size = $BATCH" \
	"pgkafka_join.batch_delay = '50ms'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
mark1=0
kafka_produce movies <"$TEST_DIR/m.missing"

wait_for 30 "grep -q 'pgkafka_join is waiting for topic \"ratings\" to exist' \"$LOG\"" ||
	fail "the worker did not say it waits for the ratings topic"
wait_for 30 "grep -q 'pgkafka_join is waiting for the output topic \"rated_movies\"' \"$LOG\"" ||
	fail "the worker did not say it waits for the output topic"
wait_for 30 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.movies')\" = 100 ]" ||
	fail "the movies were not stored while the other topics were missing"
pass "the movies are stored while the ratings and output topics are missing"
# Let the worker retry a while (retry_interval = 1s) before looking at the log.
sleep 8
pid1=$(worker_pid)
echo "# worker log while the topics were missing ($(log_since $mark1 | worker_lines | wc -l) lines):"
log_since $mark1 | worker_lines | show 30
n_ratings=$(log_since $mark1 | grep -c 'waiting for topic "ratings"' || true)
n_output=$(log_since $mark1 | grep -c 'waiting for the output topic' || true)
check_eq "the wait for the ratings topic is logged once" 1 "$n_ratings"
check_eq "the wait for the output topic is logged once (not at every retry)" 1 "$n_output"

created_at=$SECONDS
kafka_create_topic ratings 3
kafka_create_topic rated_movies 3
kafka_produce ratings <"$TEST_DIR/r.missing"
wait_for 60 "[ \"\$(results)\" -gt 0 ]" ||
	fail "no rating was joined within 60 s of creating the topics"
echo "# first results $((SECONDS - created_at)) s after the topics were created"
wait_for_output 1 60
echo "# first results on the output topic $((SECONDS - created_at)) s after the topics were created"
check_outcome "missing topics" "r.missing" "m.missing"
log_since $mark1 | grep -E 'pgkafka_join (consumes|publishes)' | show 5
check_eq "the worker is the same process as while it waited" "$pid1" "$(worker_pid)"
check_exits "$mark1" "missing topics"


#
# Outage: the broker is stopped for OUTAGE seconds in the middle of a stream
#
echo "# outage: the broker is stopped for $OUTAGE s in the middle of a stream"
pid2=$(worker_pid)
mark2=$(log_mark)
for c in 0 1 2 3; do
	kafka_produce ratings <"$TEST_DIR/r.before.$c"
	sleep 0.3
done
stop_at=$SECONDS
kafka_stop
echo "# broker stopped; $(results) results in rated_movies"
mark2s=$(log_mark)
sleep "$OUTAGE"
mark2e=$(log_mark)
check_eq "the worker is the same process after $OUTAGE s without the broker" "$pid2" "$(worker_pid)"
psql_q "SELECT 'worker state during the outage: ' || state || ', ' || coalesce(wait_event, '-') || ', ' || query FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'" | sed 's/^/# /'
nlines=$(log_since "$mark2s" "$mark2e" | worker_lines | wc -l)
echo "# worker log during the outage ($nlines lines in $OUTAGE s, $(log_since "$mark2s" "$mark2e" | wc -l) in all):"
log_since "$mark2s" "$mark2e" | worker_lines | show 40
# Not a flood: a source (a Kafka client's broker, or one of the worker's own
# messages) repeats itself rarely.  The worker logs a wait once; librdkafka
# repeats a broker's connection error at most every 30 s once it is the same
# error (seen: 2 lines within a second, then one 36 s later).  A line per
# retry would be one a second.  The total grows with the number of Kafka
# clients and brokers, so it is not what is checked.
max_said=$((OUTAGE / 10 > 3 ? OUTAGE / 10 : 3))
log_since "$mark2s" "$mark2e" | worker_lines | grep -v -E ' (DETAIL|HINT|CONTEXT): ' |
	sed -E -e 's/^[^]]*\] pgkafka_join worker: LOG: +//' -e 's/^(kafka client [^ ]+ [^ ]+) .*/\1/' |
	sort | uniq -c | sort -rn >"$TEST_DIR/outage_sources"
read -r said source <"$TEST_DIR/outage_sources" || said=0
echo "# $(wc -l <"$TEST_DIR/outage_sources") sources logged during the outage; the most: ${said}x ${source:-}"
[ "$said" -le $max_said ] ||
	fail "the worker logged \"$source\" $said times in a $OUTAGE s outage (at most $max_said accepted)"
pass "the worker wrote $nlines log lines during the $OUTAGE s outage, none of them more than $max_said times"
# It checks the brokers at least every 30 s, with a 10 s timeout.
check_eq "the worker said once during the outage that it cannot reach the brokers" 1 \
	"$(log_since "$mark2" "$mark2e" | grep -c 'pgkafka_join cannot reach the Kafka brokers' || true)"

kafka_start "$KAFKA_DIR" >/dev/null
restarted_at=$SECONDS
echo "# broker started again after $((SECONDS - stop_at)) s"
before_restart=$(output_count)
kafka_produce movies <"$TEST_DIR/m.after"
for c in 0 1 2 3; do
	kafka_produce ratings <"$TEST_DIR/r.after.$c"
	sleep 0.3
done
wait_for 60 "[ \"\$(output_count)\" -gt $before_restart ]" ||
	fail "nothing was published within 60 s of the restart"
echo "# first new result on the output topic $((SECONDS - restarted_at)) s after the broker started again"
check_outcome "outage" "r.missing r.before.* r.after.*" "m.missing m.after"
echo "# every result was out $((SECONDS - restarted_at)) s after the broker started again"
echo "# worker log after the restart:"
log_since "$mark2e" | worker_lines | show 30
check_eq "the worker is the same process after the outage" "$pid2" "$(worker_pid)"
check_exits "$mark2" "outage"


#
# Kill: the broker is SIGKILLed while a backlog of results is published
#
echo "# kill: the broker is killed while 20000 results are being published"
mark3=$(log_mark)
base=$(psql_q "SELECT max(id) FROM pgkafka_join.rated_movies")
kafka_produce ratings <"$TEST_DIR/r.backlog"
wait_for 90 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined')\" = 20000 ]" ||
	fail "the backlog's ratings were not stored"
# Watch from inside the server (a psql per probe would be too slow) for
# the first of the backlog's transactions to be committed, with the
# worker publishing the next ones; then kill the broker at once.
psql_q >"$TEST_DIR/watch.out" 2>&1 <<SQL &
DO \$\$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '90 s';
BEGIN
	LOOP
		PERFORM pg_stat_clear_snapshot();
		EXIT WHEN (SELECT max(last_id) FROM pgkafka_join.output_position) > $base
			AND EXISTS (SELECT FROM pg_stat_activity
						WHERE backend_type = 'pgkafka_join worker'
						  AND state = 'active' AND query = 'publishing results');
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'the worker did not publish the backlog within 90 s';
		END IF;
		PERFORM pg_sleep(0.002);
	END LOOP;
END
\$\$;
SQL
watcher=$!
broker_pid=$(cat "$KAFKA_DIR/broker.pid")
kafka_produce movies <"$TEST_DIR/m.backlog"
wait $watcher || { cat "$TEST_DIR/watch.out" >&2; fail "watching for the publisher failed"; }
mark3k=$(log_mark)
kill -KILL "$broker_pid"
killed_at=$SECONDS
kafka_kill		# waits until it is gone
sleep 1
at_kill=$(psql_q "SELECT 'worker ' || state || ' in \"' || query || '\"' FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'")
# How far publishing had gone: output_position is written after each Kafka
# commit (a value above every result id would be a bug, which check_outcome
# reports).  The kill hit the publishing if not all was committed and the
# worker is still publishing.
published=$(psql_q "SELECT coalesce(max(last_id), 0) FROM pgkafka_join.output_position
	WHERE last_id <= (SELECT max(id) FROM pgkafka_join.rated_movies)")
echo "# broker killed; $at_kill; results committed to Kafka before the kill: $((published - base)) of 20000"
[ "$published" -lt $((base + 20000)) ] && [[ "$at_kill" == *'active in "publishing results"' ]] ||
	fail "the broker was not killed in the middle of publishing the backlog"
pass "the broker was killed in the middle of publishing the backlog"
# A reload while the publisher retries its transaction against the dead
# broker is applied as soon as the worker has control: the worker gives the
# transaction up (the next producer completes or aborts it) and reconnects
# with the new settings.  (When the kill finds the publisher inside
# librdkafka 2.0.2's rd_kafka_send_offsets_to_transaction(), that call
# waits for the transaction coordinator without a time limit, so the
# reload is applied when the broker is back; the outcome must be exact
# either way.)
mark3h=$(log_mark)
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'client.rack=reloaded'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
if wait_for 20 "log_since '$mark3h' | grep -q 'leaves a Kafka transaction unfinished to apply a configuration reload'"; then
	echo "# the reload was applied while the broker was dead"
	reload_while_dead=true
else
	echo "# the publisher is inside a librdkafka call that waits for the broker: $(psql_q "SELECT query FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'")"
	reload_while_dead=false
fi
sleep 3
kafka_start "$KAFKA_DIR" >/dev/null
mark3r=$(log_mark)
echo "# broker started again after $((SECONDS - killed_at)) s"
echo "# worker log while the broker was dead:"
log_since "$mark3k" "$mark3r" | worker_lines | show 30
check_outcome "kill" "r.missing r.before.* r.after.* r.backlog" "m.missing m.after m.backlog"
wait_for 30 "log_since '$mark3h' | grep -q 'leaves a Kafka transaction unfinished to apply a configuration reload\|Kafka settings changed; reconnecting'" ||
	fail "the reload during the publisher's retries was never applied"
pass "the reload during the publisher's retries was applied ($($reload_while_dead && echo "while the broker was dead" || echo "once the broker was back"))"
echo "# every result was out $((SECONDS - killed_at)) s after the kill"
echo "# worker log after the restart:"
log_since "$mark3r" | worker_lines | show 30
committed=$(kafka_consume rated_movies | wc -l)
uncommitted=$(kafka_consume rated_movies --uncommitted | wc -l)
if [ "$uncommitted" -gt "$committed" ]; then
	outcome="aborted, and its results published again in a later one"
else
	outcome="completed after the restart"
fi
echo "# output topic: $committed committed records, $((uncommitted - committed)) records of aborted transactions: the transaction in flight was $outcome"
check_exits "$mark3" "kill"

echo "# worker exits in the whole run: $(worker_exits <"$LOG"); duration: $((SECONDS - T0)) s"
