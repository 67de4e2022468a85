#!/bin/bash
#
# torture.sh
#		Crash torture test: a driver streams movies (with updates,
#		tombstones and re-creations) and ratings (before and after their
#		movies, inside and outside the join window, for movies that never
#		come, malformed ones) while the PostgreSQL server is killed with
#		SIGKILL (postmaster and all its children at once, as in a machine
#		crash) at random moments and started again, over and over.  At the
#		end the tables and the output topic are compared with an oracle
#		computed from what was produced alone.  Four join workers share
#		the six partitions of each topic; a third of the ratings are keyed
#		away from their movie (so a rating and its movie are often stored
#		by two workers at once), and the database's default isolation
#		level is SERIALIZABLE (the worker must pin its own).
#
#	test/e2e/torture.sh			CI mode: >= 20 kills, >= 20000 ratings
#	test/e2e/torture.sh --long	>= 120 kills, >= 150000 ratings
#
# Environment: TORTURE_KILLS, TORTURE_RATINGS (minimums), TORTURE_SEED (the
# stream and the kill schedule; the timings still vary), plus lib.sh's.
#
# The stream (test/e2e/torture_oracle.py drive) goes in rounds of a few
# hundred messages, one Kafka produce per topic and round (the topics in a
# random order), whether PostgreSQL is up or not.  Between rounds the driver
# asks PostgreSQL what is stored (when it answers) and writes it, with every
# acknowledged message, to a ledger in production order.  The kills come
# from this script, at random times (0.05..0.6 s after the restart, during
# crash recovery and worker start-up, or 0.6..3.5 s, during the stream's
# batches, commits and publications).  Each restart picks a new batch_size
# (100..500) and batch_delay (10..50 ms).
#
# Every rating carries a distinct value (n / 1000, n = 1, 2, ...), which
# identifies it in the tables and on the output topic.  Movie titles are
# distinct per version ("Movie <id> v<version>...").
#
# Movies, in three families:
#	A	one content only: a single movie message, 0..6 rounds after the id
#		first got ratings, sometimes sent again later in another spelling
#		(string id, releaseYear, null vs. absent release_year) with the same
#		content.  Ratings come before and after the movie message.
#	B	never come (ids 1000000..): their ratings wait forever.
#	C	changing (ids 2000000..), three phases:
#		1. version 1, with ratings before and after it (or none);
#		2. only once PostgreSQL shows every in-window rating of phase 1
#		   joined ("joined" event in the ledger): a history of updates (new
#		   titles), tombstones and re-creations, ending with a version or
#		   with a tombstone (followed by a malformed "marker" message with
#		   the same key, hence after it in the same partition);
#		3. only once PostgreSQL shows the final state stored (the final
#		   title in movies, or the marker in rejected_messages, which comes
#		   after the tombstone in the same partition: "final" event): more
#		   ratings, and then no more movie messages.
#	Old ratings (rated_at 40..60 days ago) go to ids of every family at
#	any moment.  In-window ratings have no rated_at (the Kafka timestamp:
#	now), or one 0..10 days old or 0..20 hours ahead, far from the edge of
#	the one-month window.
#	Malformed ratings and movies of ten kinds, each payload unique.
#
# The oracle (torture_oracle.py check), from the ledger alone:
#	catalog: per movie id, the last valid message (in production order,
#		which is the partition's order: a key always goes to the same
#		partition) wins; a tombstone deletes.  pgkafka_join.movies must
#		equal it exactly (id, title, release_year).
#	ratings: every accepted rating exactly once in pgkafka_join.ratings,
#		with its movie id and rated_at (for Kafka-timestamped ones: between
#		the start and the end of its produce call), and joined = whether it
#		is published.
#	rejected_messages: every malformed message exactly once, with its key,
#		payload and reason.
#	results: a rating is published exactly once, or never, by the first
#		rule that applies:
#		1. rated_at 40+ days old: never (older than the window on arrival);
#		2. its movie id never had a valid version: never;
#		3. every message of its movie has the same content, no tombstone:
#		   published with that content (whichever was stored first, the
#		   rating or the movie, and whatever the batch boundaries);
#		4. a "joined" event of its movie follows the rating, and every movie
#		   message produced before that event has one same content, no
#		   tombstone: published with that content (the join happened before
#		   the event, when only that content could be stored; later changes
#		   retract nothing);
#		5. the rating follows the "final" event of its movie, and no movie
#		   message of it follows that event: published with the final
#		   version, or never if the final message is a tombstone;
#		otherwise the rating is undecidable and the test fails (the driver
#		never produces one).
#	Each result on the output topic (read_committed) and in
#	pgkafka_join.rated_movies must match one expected rating with the
#	right key, movie id, title, release_year and rated_at; counted: lost
#	(expected, absent), duplicated (a rating published twice, or a result
#	nobody expects), wrong (right rating, wrong content).  The result id
#	header (pgkafka_join.id) appears once per id, the ids on the topic are
#	those of rated_movies, and within each share (pgkafka_join.share) they
#	increase along every partition.
#	pgkafka_join.output_position may lag the topic, never run ahead of it:
#	checked at the end against the topic, and after every restart (its
#	last_id may not exceed the highest result id).
#
# The script also prints where the kills landed: the worker's activity
# sampled just before each kill (pg_stat_activity), and what the restarted
# workers found in the server log (how often they read the publish
# positions, none of which may find PostgreSQL's record ahead of Kafka's;
# Kafka transactions left open, which the next init_transactions() aborts).

. "$(dirname "$0")/setup.sh"

LONG=false
case ${1:-} in
	--long) LONG=true ;;
	"") ;;
	*) echo "usage: $0 [--long]" >&2; exit 2 ;;
esac
if $LONG; then
	MIN_KILLS=${TORTURE_KILLS:-120}
	MIN_RATINGS=${TORTURE_RATINGS:-150000}
	PER_ROUND=150
else
	MIN_KILLS=${TORTURE_KILLS:-20}
	MIN_RATINGS=${TORTURE_RATINGS:-20000}
	PER_ROUND=250
fi
SEED=${TORTURE_SEED:-$((RANDOM * 32768 + RANDOM))}
RANDOM=$SEED
HERE=$(cd "$(dirname "$0")" && pwd)
ORACLE=$HERE/torture_oracle.py
started=$SECONDS

# random settings for the next start of the server; the server commits
# asynchronously, as DBAs set it for speed: the worker's own commits must be
# durable all the same, or a kill loses commits whose results were published
batch_conf()
{
	printf '%s\n' "pgkafka_join.workers = 4" \
		"pgkafka_join.batch_size = $((100 + RANDOM % 401))" \
		"pgkafka_join.batch_delay = '$((10 + RANDOM % 41))ms'" \
		"synchronous_commit = off"
}

mapfile -t conf < <(batch_conf)
pkj_setup torture 6 "${conf[@]}"
# every session's default, the workers' included from their next start
psql_q "ALTER DATABASE postgres SET default_transaction_isolation = 'serializable'" >/dev/null
echo "# seed $SEED; at least $MIN_KILLS kills and $MIN_RATINGS ratings; ${conf[*]}"

LEDGER=$TEST_DIR/ledger.jsonl
STOP=$TEST_DIR/stop
STATUS=$TEST_DIR/status
: >"$LEDGER"

python3 "$ORACLE" drive --ledger "$LEDGER" --broker-sh "$BROKER_SH" \
	--kafka-dir "$KAFKA_DIR" --psql "$PG_BIN/psql" --stop-file "$STOP" \
	--status-file "$STATUS" --min-ratings "$MIN_RATINGS" --per-round "$PER_ROUND" \
	--seed "$SEED" &
driver=$!
on_exit "kill $driver 2>/dev/null"

# sleep a random time: 0.05..0.6 s (a quarter of the time) or 0.6..3.5 s
random_sleep()
{
	local ms

	if [ $((RANDOM % 4)) = 0 ]; then
		ms=$((50 + RANDOM % 550))
	else
		ms=$((600 + RANDOM % 2900))
	fi
	sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}

results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo "?"; }

# What the worker is doing, sampled just before a kill (a few milliseconds
# before it: evidence of where kills land, not an exact account).
worker_phase()
{
	local phase

	phase=$(PGCONNECT_TIMEOUT=2 psql_q "SELECT CASE WHEN state = 'active' THEN query
	                                                  ELSE 'idle: consuming or waiting' END
	                                      FROM pg_stat_activity
	                                     WHERE backend_type = 'pgkafka_join worker'" 2>/dev/null) ||
		phase="server not accepting connections yet"
	echo "${phase:-no worker yet}"
}
declare -A phases=()

# The input positions the workers mirror to Kafka (control.kafka_group, for
# lag tools), read while the server is down, against PostgreSQL's offsets
# once it is up again: never ahead of them.  "TOPIC:PARTITION OFFSET" lines.
KGROUP=$(psql_q "SELECT kafka_group FROM pgkafka_join.control")
group_offsets()
{
	kafka_consumer_groups --describe --group "$KGROUP" 2>/dev/null |
		awk '($2 == "movies" || $2 == "ratings") && $4 != "-" { print $2 ":" $3, $4 }' | sort
}
stored_offsets()
{
	psql_q "SELECT topic || ':' || kafka_partition, next_offset FROM pgkafka_join.input_offsets" |
		tr '|' ' ' | sort
}
group_read=0
group_ahead=

kills=0
restart_time=0
position_ahead=
while kill -0 "$driver" 2>/dev/null; do
	random_sleep
	phase=$(worker_phase)
	pg_kill "$PG_DIR"
	kills=$((kills + 1))
	phases[$phase]=$((${phases[$phase]:-0} + 1))
	group=$(group_offsets)
	t0=$(date +%s%N)
	mapfile -t conf < <(batch_conf)
	pg_start "$PG_DIR" "${conf[@]}" 2> >(grep -v 'another server might be running' >&2)
	restart_time=$((restart_time + ($(date +%s%N) - t0) / 1000000))
	# output_position records ids that were published: never one above
	# every result (reported at once; the final checks count the damage)
	ahead=$(psql_q "SELECT string_agg(format('partition %s: last_id %s', kafka_partition, last_id), ', ')
	                  FROM pgkafka_join.output_position
	                 WHERE last_id > (SELECT coalesce(max(id), 0) FROM pgkafka_join.rated_movies)" 2>/dev/null) || ahead=
	if [ -n "$ahead" ] && [ -z "$position_ahead" ]; then
		position_ahead="after kill $kills: $ahead"
		echo "# after kill $kills, pgkafka_join.output_position is ahead of every result ($ahead)"
	fi
	if [ -n "$group" ]; then
		group_read=$((group_read + 1))
		# PostgreSQL's offsets only grow after the restart: any partition
		# where the group is still ahead was ahead at the kill
		ahead=$(join -a1 -e -1 -o 0,1.2,2.2 <(echo "$group") <(stored_offsets) |
			awk '$2 > $3 { printf "%s%s: group %s, PostgreSQL %s", sep, $1, $2, $3; sep = "; " }')
		if [ -n "$ahead" ] && [ -z "$group_ahead" ]; then
			group_ahead="at kill $kills: $ahead"
			echo "# at kill $kills, the group's input positions were ahead of PostgreSQL's ($ahead)"
		fi
	fi
	[ $kills -lt "$MIN_KILLS" ] || touch "$STOP"
	if [ $((kills % 10)) = 0 ]; then
		read -r rounds nmovies nratings <"$STATUS" || true
		echo "# $kills kills after $((SECONDS - started))s: $nmovies movie and $nratings rating messages produced, $(results) results in PostgreSQL"
	fi
done
wait "$driver" || fail "the stream driver failed"
pass "$kills kills of the server in the middle of the stream (restart: $((restart_time / kills)) ms on average)"
[ -z "$position_ahead" ] ||
	fail "pgkafka_join.output_position was ahead of every result $position_ahead"
pass "after every restart, pgkafka_join.output_position recorded no id above every result"
[ "$group_read" -gt 0 ] || fail "the consumer group's input positions were never found at a kill"
[ -z "$group_ahead" ] ||
	fail "the consumer group's input positions were ahead of PostgreSQL's $group_ahead"
pass "at $group_read kills, the consumer group's input positions were at or behind PostgreSQL's"
for phase in "${!phases[@]}"; do
	echo "#   ${phases[$phase]} kills while the worker was: $phase"
done
# What the restarted workers found, from the server log: each read of the
# publish positions is logged; PostgreSQL's record of them ahead of Kafka's
# (logged too) must never happen here, as nothing resets the group's offsets
reads=$(grep -c 'pgkafka_join publishes to "rated_movies" after results' "$PG_DIR/server.log" || true)
ahead=$(grep -c 'output_position is ahead of the position committed in Kafka' "$PG_DIR/server.log" || true)
echo "#   $reads reads of the publish positions by restarted workers"
[ "$reads" -gt 0 ] || fail "no restarted worker logged its read of the publish positions"
check_eq "no read found PostgreSQL's record of the publish positions ahead of Kafka's" "0" "$ahead"
echo "#   Kafka transactions left open by a killed worker (init_transactions had to wait for their abort): $(grep -c 'another concurrent operation on the same transaction' "$PG_DIR/server.log" || true)"

# Let the worker drain: every message consumed, every result published.
read -r _ movies_n <<<"$(python3 "$ORACLE" counts --ledger "$LEDGER" | grep '^movies')"
read -r _ ratings_n <<<"$(python3 "$ORACLE" counts --ledger "$LEDGER" | grep '^ratings')"
consumed()
{
	psql_q "SELECT string_agg(topic || '=' || n, ' ' ORDER BY topic)
	          FROM (SELECT topic, sum(next_offset) AS n FROM pgkafka_join.input_offsets GROUP BY 1) s"
}
wait_for 300 "[ \"\$(consumed)\" = 'movies=$movies_n ratings=$ratings_n' ]" ||
	fail "the worker did not consume every message (consumed $(consumed), produced movies=$movies_n ratings=$ratings_n)"
# Then until the output topic holds as many records as rated_movies, or
# stops growing for 60 s.
stored=$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")
last=-1
still=$SECONDS
while :; do
	n=$(output_count)
	[ "$n" -lt "$stored" ] || break
	[ "$n" = "$last" ] || { last=$n; still=$SECONDS; }
	if [ $((SECONDS - still)) -ge 60 ]; then
		echo "# the output topic stays at $n records, rated_movies holds $stored" >&2
		break
	fi
	sleep 1
done
sleep 3
kafka_consume rated_movies -f '%p\t%o\t%h\t%k\t%s\n' >"$TEST_DIR/output"

echo "# checking, $((SECONDS - started))s after the start"
rc=0
python3 "$ORACLE" check --ledger "$LEDGER" --psql "$PG_BIN/psql" \
	--output "$TEST_DIR/output" --figures "$TEST_DIR/figures" || rc=$?
read -r messages accepted expected ontopic lost duplicated wrong <"$TEST_DIR/figures" ||
	fail "the oracle did not finish"
echo "# kills: $kills, messages: $messages ($accepted accepted ratings), results: $ontopic on the topic of $expected expected, lost: $lost, duplicated: $duplicated, wrong: $wrong; $((SECONDS - started))s"
[ $rc = 0 ] || fail "the tables or the output topic differ from the oracle (seed $SEED)"
pass "torture: everything exactly once after $kills crashes"
