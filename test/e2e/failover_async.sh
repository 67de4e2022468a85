#!/bin/bash
#
# failover_async.sh
#		High availability with an asynchronous standby: exact, without a
#		DBA's step.  The primary's WAL sender is frozen (SIGSTOP) in the
#		middle of a stream, so that the primary goes on committing and
#		publishing results the standby never receives; the primary is then
#		killed (SIGKILL, all its processes at once) and the standby
#		promoted.  The promoted server's worker finds the output topic ahead
#		of its database, takes the results it lacks back from the topic
#		(each record names the rating it stands for), records their ratings
#		as published when it consumes them again, and goes on: every
#		rating's result is on the output topic exactly once, rated_movies
#		holds exactly what the topic holds, and the workers never stop.
#
# Two workers, and among the results lost some whose rating another worker
# consumes: 100 ratings keyed otherwise than by their movie (so that most
# land on another partition than the movie's), of movies that do not exist
# yet, then their movies, both after the WAL sender was frozen.  Each
# result belongs to the movie's partition (share), its rating is consumed
# again by the worker of the rating's partition: that worker must not store
# it before the result is taken back, whichever worker takes it back.

. "$(dirname "$0")/setup.sh"
MOVIES=200
RATINGS=3000
CHUNKS=30

CROSS=100		# ratings keyed otherwise, of movies 1001..1100

pkj_setup failover_async 3 "pgkafka_join.batch_size = 100" "pgkafka_join.workers = 2"
PRIMARY=$PG_DIR
STANDBY=$TEST_DIR/standby

produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '"$MOVIES"' ]' ||
	fail "the movies were not stored"

pg_standby "$PRIMARY" "$STANDBY"
pg_use "$PRIMARY"
wait_for 30 '[ "$(psql_q "SELECT state || '"'|'"' || sync_state FROM pg_stat_replication")" = "streaming|async" ]' ||
	fail "the standby does not stream asynchronously: $(psql_q "SELECT state, sync_state FROM pg_stat_replication")"
pass "the standby streams from the primary, asynchronously"

# The stream: RATINGS ratings of the stored movies, each with a distinct
# value, in CHUNKS chunks; the expected results as "movie_id<TAB>rating".
stream_files "$MOVIES" "$RATINGS" "$CHUNKS" 11
# the cross ratings and their movies, and their results
for ((m = 1001; m <= 1000 + CROSS; m++)); do
	printf 'other-%d\t{"id": %d, "rating": %d}\n' $m $m $m >>"$TEST_DIR/cross_ratings"
	printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m >>"$TEST_DIR/cross_movies"
	printf '%d\t%d\n' $m $m >>"$TEST_DIR/expected"
done
sort -o "$TEST_DIR/expected" "$TEST_DIR/expected"
# The last third of the stream waits for the primary's death: it is
# consumed by the promoted server.
stream_produce $((CHUNKS * 2 / 3)) "$TEST_DIR/primary_killed"

results() { psql_q "SELECT count(*) FROM pgkafka_join.rated_movies" 2>/dev/null || echo 0; }
wait_for 120 '[ "$(results)" -ge '$((RATINGS / 4))' ]' ||
	fail "the primary did not join a quarter of the ratings"

# Freeze the WAL sender: from now on the standby receives nothing, and the
# primary commits and publishes on its own
walsender=$(psql_q "SELECT pid FROM pg_stat_replication")
[ -n "$walsender" ] || fail "no WAL sender on the primary"
kill -STOP "$walsender"
frozen_at=$(output_count)
# the cross ratings, stored and waiting; then their movies, which publish them
kafka_produce ratings <"$TEST_DIR/cross_ratings"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE movie_id > 1000 AND NOT joined")" = '$CROSS' ]' ||
	fail "the primary did not store the $CROSS cross ratings"
kafka_produce movies <"$TEST_DIR/cross_movies"
wait_for 60 '[ "$(kafka_consume rated_movies -f "%k\n" | awk '"'"'$1 > 1000'"'"' | wc -l)" = '$CROSS' ]' ||
	fail "the primary did not publish the results of the $CROSS cross ratings"
check_eq "on the primary, most cross results belong to another partition than their rating's" "t" \
	"$(psql_q "SELECT count(*) FILTER (WHERE kafka_partition <> share) > $((CROSS / 3)) FROM pgkafka_join.rated_movies WHERE movie_id > 1000")"
wait_for 60 '[ "$(output_count)" -ge '$((frozen_at + 300))' ]' ||
	fail "the primary did not publish 300 more results after the WAL sender was frozen"
pg_kill "$PRIMARY"
at_kill=$(output_count)
touch "$TEST_DIR/primary_killed"
echo "# WAL sender frozen with $frozen_at records on the output topic; primary killed with $at_kill"
[ "$at_kill" -lt "$RATINGS" ] ||
	fail "every result was published before the primary was killed"
pass "the primary was killed in the middle of the stream, $at_kill of $RATINGS results published, $((at_kill - frozen_at)) of them after its WAL sender was frozen"

pg_promote "$STANDBY"
pg_use "$STANDBY"
PG_DIR=$STANDBY
check_eq "the promoted standby accepts writes" "f" "$(psql_q "SELECT pg_is_in_recovery()")"
held=$(results)
echo "# the promoted standby holds $held results"
[ "$held" -lt "$at_kill" ] ||
	fail "the promoted standby holds $held results, not fewer than the $at_kill published: it lost nothing"
pass "the promoted standby lacks results that were published ($held held, $at_kill on the topic)"
check_eq "it lacks the cross ratings and their movies" "0|0" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings WHERE movie_id > 1000), (SELECT count(*) FROM pgkafka_join.movies WHERE id > 1000)")"
wait_for 60 '[ "$(worker_pid | wc -l)" = 2 ]' || fail "the two workers did not start on the promoted standby"
pids=$(worker_pid | sort)

wait "$PRODUCER" || fail "producing the stream failed"
# all consumed, stored, joined and published: nothing more can come
TOTAL=$((RATINGS + CROSS))
wait_for 120 '[ "$(psql_q "SELECT bool_and(input_lag = 0 AND publish_lag = 0) AND (SELECT count(*) FROM pgkafka_join.rated_movies) = '"$TOTAL"' FROM pgkafka_join.status")" = t ]' ||
	fail "the promoted server did not join and publish every rating (status: $(psql_q "SELECT state, input_lag, publish_lag, last_error FROM pgkafka_join.status"))"

taken=$(grep -oE 'pgkafka_join took back [0-9]+ results from the output topic "rated_movies"' "$STANDBY/server.log" |
	awk '{ n += $4 } END { if (NR) print n }')
echo "# taken back from the output topic: ${taken:-none}"
[ -n "$taken" ] && [ "$taken" -gt 0 ] ||
	fail "the workers took nothing back from the output topic"
pass "the workers took back the $taken results the promoted database lacked"
# read 256 records at a time, all committed in one transaction
parts=$(grep -oE 'read in [0-9]+ parts, committed together' "$STANDBY/server.log" | grep -oE '[0-9]+' | head -1)
[ -n "$parts" ] && [ "$parts" -ge $(((taken + 255) / 256)) ] ||
	fail "the results taken back were not read in parts of at most 256 (parts: ${parts:-none})"
pass "they were read in $parts parts of at most 256 records, committed together"
check_eq "the cross results were taken back as they were published: belonging to the movie's partition" \
	"$(kafka_consume rated_movies -f '%h\t%k\n' | awk -F'\t' '$2 > 1000 { print $1 }' |
		sed -E 's/.*pgkafka_join.id=([0-9]+).*pgkafka_join.share=([0-9]+).*/\1|\2/' | sort -n | paste -sd' ')" \
	"$(psql_q "SELECT string_agg(id || '|' || share, ' ' ORDER BY id) FROM pgkafka_join.rated_movies WHERE movie_id > 1000")"
check_eq "the workers never stopped: the same two processes from the promotion on" "$pids" "$(worker_pid | sort)"
check_eq "no error or warning of pgkafka_join in the promoted server's log" "" \
	"$(grep -E '\] pgkafka_join (launcher|worker): (ERROR|WARNING|FATAL)' "$STANDBY/server.log")"
check_eq "every rating is stored once" \
	"$TOTAL|$TOTAL" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM pgkafka_join.ratings")"
check_eq "every rating was joined once in PostgreSQL" \
	"$TOTAL|$TOTAL|$TOTAL" \
	"$(psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), count(DISTINCT id) FROM pgkafka_join.rated_movies")"
check_eq "no rating is left waiting for a result it has" "0|0" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined), (SELECT count(*) FROM pgkafka_join.recovered_ratings)")"

# rated_movies holds exactly what the topic holds: ids, keys, values, and
# the rating each record names
kafka_consume rated_movies -f '%h\t%k\t%s\n' | python3 -c '
import sys
for line in sys.stdin:
    headers, key, value = line.rstrip("\n").split("\t", 2)
    h = dict(kv.split("=", 1) for kv in headers.split(","))
    print(h["pgkafka_join.id"], h["pgkafka_join.input"], key, value, sep="\t")' |
	sort -n >"$TEST_DIR/topic"
psql_q "SELECT id, kafka_partition || ':' || kafka_offset, movie_id, pgkafka_join.output_value(r)
          FROM pgkafka_join.rated_movies r ORDER BY id" -F $'\t' >"$TEST_DIR/table"
check_eq "rated_movies is the output topic: ids, ratings, keys and values" \
	"$(cat "$TEST_DIR/topic")" "$(cat "$TEST_DIR/table")"
check_output_exactly_once "after the failover to an asynchronous standby"
