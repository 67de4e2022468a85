#!/bin/bash
#
# restore.sh
#		Backup and restore: a dump restores cleanly, and a database behind
#		Kafka takes back what it lacks from the output topic.
#
# 1. pg_dump -Fc and a plain pg_dump of a database whose worker has stored
#    and published a stream (paused, so that the data is still) restore
#    into new databases with pg_restore --exit-on-error and
#    psql -v ON_ERROR_STOP=1 without an error, each copy holding exactly
#    the rows of every table of the extension, its result sequence and its
#    monthly partitions.
# 2. The stream goes on after the dump: Kafka's publish position P moves
#    beyond it.  The -Fc dump restored on a second cluster, with a rating
#    of movie 1 queued for worker 0's rejoin pass, finds the output topic
#    ahead of PostgreSQL and takes back the results published after the
#    dump (while paused: the dump was taken while paused), with no
#    warning: rated_movies then holds exactly what the topic holds, the
#    ratings after the dump are remembered as published, and the sequence
#    goes on after P.  After resume(), those ratings are consumed again
#    and not published again; the queued rating is published, after P;
#    no id is on the topic twice.
# 3. The results after the dump deleted from the topic (its retention):
#    the dump restored again cannot take them back.  State "stopped: the
#    output topic is ahead of PostgreSQL", the WARNINGs logged once with P
#    in the DETAIL and the HINT naming advance_result_ids(P), the shares
#    ahead recorded in control.ahead_shares, nothing stored or published
#    meanwhile.  After advance_result_ids(P) and resume(), the ratings
#    after the dump are consumed again and published with new ids after
#    P, each once.
# 4. PostgreSQL ahead of Kafka: the committed position of the share of the
#    last result set 5 ids back while the cluster is down; at start the
#    worker logs that output_position is ahead and publishes after it: no
#    result is published again, new ones are published once.
# 5. Upgraded from 1.1: the positions only in 1.1's group,
#    "<kafka_group>.rated_movies", 5 ids ahead of output_position: taken
#    from there, nothing published again, the next transaction commits to
#    the group of 1.2.
#
# Kafka's position is per share (input partition): the offset of partition
# p of the ratings topic in the group
# "<kafka_group>.publish-positions.rated_movies"; "the position" below is
# the highest of them.

. "$(dirname "$0")/setup.sh"
pkj_setup restore 3
PG_B=$TEST_DIR/pg_b
DUMPS=$TEST_DIR/dumps
mkdir -p "$DUMPS"
chown postgres:postgres "$DUMPS"

# (from a directory the postgres user can enter: the checkout may not be one)
as_postgres() { (cd "$DUMPS" && runuser -u postgres -- "$@"); }

movies() # FIRST LAST
{
	local m
	for ((m = $1; m <= $2; m++)); do
		printf '%d\t{"id": %d, "title": "Movie %d", "release_year": %d}\n' $m $m $m $((1950 + m))
	done
}

# Ratings FIRST..LAST of movies 1..50, rating i of movie i % 50 + 1 with
# value i (so every result can be told apart), as "key<TAB>value"; with
# "expected", the results they give, as "movie<TAB>rating".
ratings() # FIRST LAST [expected]
{
	local i
	for ((i = $1; i <= $2; i++)); do
		if [ "${3:-}" = expected ]; then
			printf '%d\t%d\n' $((i % 50 + 1)) "$i"
		else
			printf '%d\t{"id": %d, "rating": %d}\n' $((i % 50 + 1)) $((i % 50 + 1)) "$i"
		fi
	done
}

# One line per table of the extension (row count and an md5 of all columns
# of all rows, in order; of control, all but ahead_shares, which the worker
# writes when it finds the output topic ahead), the result sequence and the
# monthly partitions.
fingerprint() # DATABASE
{
	local t
	for t in movies ratings rated_movies input_offsets output_position rejected_messages rejoins \
		"(SELECT paused, changed_at, offsets_generation, singleton, kafka_group FROM pgkafka_join.control)"; do
		[ "${t:0:1}" = "(" ] || t=pgkafka_join.$t
		echo "$t $(PGDATABASE=$1 psql_q "SELECT count(*) || ' ' || md5(coalesce(string_agg(r::text, E'\n' ORDER BY r::text), '')) FROM $t r")"
	done
	echo "rated_movies_id_seq $(PGDATABASE=$1 psql_q "SELECT last_value || ' ' || is_called FROM pgkafka_join.rated_movies_id_seq")"
	echo "partitions $(PGDATABASE=$1 psql_q "SELECT string_agg(c.relname, ' ' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent IN ('pgkafka_join.ratings'::regclass, 'pgkafka_join.rated_movies'::regclass)")"
}

# The output topic's committed records as "ID<TAB>KEY<TAB>VALUE", ID being
# the pgkafka_join.id header, by id.
topic_records()
{
	kafka_consume rated_movies -f '%h\t%k\t%s\n' |
		sed -E 's/^pgkafka_join\.id=([0-9]+),pgkafka_join\.share=-?[0-9]+,pgkafka_join\.input=[0-9]+:[0-9]+\t/\1\t/' | LC_ALL=C sort -n -k1,1
}

# The (movie, rating) pairs of topic records "ID<TAB>KEY<TAB>VALUE" on stdin
ratings_of() { sed -E 's/^[0-9]+\t([0-9]+)\t.*"rating":([^,}]*).*/\1\t\2/' | LC_ALL=C sort; }

# Every header is one pgkafka_join.id, and no id is there twice: prints the
# number of records and the number of distinct ids
ids_on_topic()
{
	topic_records >"$TEST_DIR/topic"
	! grep -qvP '^[0-9]+\t' "$TEST_DIR/topic" || fail "a record without a pgkafka_join.id header: $(grep -vP '^[0-9]+\t' "$TEST_DIR/topic" | head -1)"
	echo "$(wc -l <"$TEST_DIR/topic") $(cut -f1 "$TEST_DIR/topic" | sort -u | wc -l)"
}

#
# 1. Cluster A: a stream, paused, dumped
#
movies 1 50 | kafka_produce movies
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = 50 ]' ||
	fail "the movies were not stored"
{
	ratings 1 300
	for m in 7 8 9; do printf '%d\t{"id": %d, "rating": "bad"}\n' $m $m; done
} | kafka_produce ratings
wait_for_output 300
group=$(psql_q "SELECT kafka_group FROM pgkafka_join.control")
# the highest publish position committed in Kafka, over the shares
kafka_position()
{
	local p o max=0

	for p in 0 1 2; do
		o=$(kafka_group_offset "$group.publish-positions.rated_movies" ratings $p)
		[ "$o" = none ] || [ "$o" -le "$max" ] || max=$o
	done
	echo "$max"
}

psql_q "SELECT pgkafka_join.pause()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT state, paused, publish_lag FROM pgkafka_join.status")" = "paused|t|0" ]' ||
	fail "the worker did not pause: $(psql_q "SELECT * FROM pgkafka_join.status")"
D=$(psql_q "SELECT max(id) FROM pgkafka_join.rated_movies")
# output_position is written after the Kafka commit: wait for the last one
wait_for 30 "[ \"\$(psql_q 'SELECT max(last_id) FROM pgkafka_join.output_position')\" = $D ]" ||
	fail "output_position did not reach result $D"
check_eq "the source holds 300 results, all published, 3 rejected ratings" \
	"300|$D|$D|3" \
	"$(psql_q "SELECT count(*), max(id), $(kafka_position), (SELECT count(*) FROM pgkafka_join.rejected_messages) FROM pgkafka_join.rated_movies")"

fingerprint postgres >"$TEST_DIR/source.fingerprint"
as_postgres "$PG_BIN/pg_dump" -Fc -f "$DUMPS/source.dump" postgres 2>"$DUMPS/pg_dump.log" ||
	fail "pg_dump -Fc failed: $(cat "$DUMPS/pg_dump.log")"
as_postgres "$PG_BIN/pg_dump" -f "$DUMPS/source.sql" postgres 2>>"$DUMPS/pg_dump.log" ||
	fail "pg_dump failed: $(cat "$DUMPS/pg_dump.log")"
check_eq "pg_dump -Fc and plain pg_dump say nothing" "" "$(cat "$DUMPS/pg_dump.log")"
check_eq "the source did not change while dumped" \
	"$(cat "$TEST_DIR/source.fingerprint")" "$(fingerprint postgres)"

#
# 2. Both dumps restore cleanly into new databases of cluster A (the worker
# runs on database postgres only: the copies are inert)
#
psql_q "CREATE DATABASE copy_custom" >/dev/null
psql_q "CREATE DATABASE copy_plain" >/dev/null
as_postgres "$PG_BIN/pg_restore" --exit-on-error -d copy_custom "$DUMPS/source.dump" \
	>"$DUMPS/restore_custom.log" 2>&1 ||
	fail "pg_restore --exit-on-error failed: $(cat "$DUMPS/restore_custom.log")"
! grep -q ERROR "$DUMPS/restore_custom.log" ||
	fail "pg_restore reported an error: $(grep ERROR "$DUMPS/restore_custom.log")"
pass "pg_restore --exit-on-error of the -Fc dump into a new database: exit status 0, no error"
as_postgres "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -d copy_plain -f "$DUMPS/source.sql" \
	>"$DUMPS/restore_plain.log" 2>&1 ||
	fail "psql -v ON_ERROR_STOP=1 -f of the plain dump failed: $(grep -m5 ERROR "$DUMPS/restore_plain.log")"
! grep -q ERROR "$DUMPS/restore_plain.log" ||
	fail "psql reported an error: $(grep ERROR "$DUMPS/restore_plain.log")"
pass "psql -v ON_ERROR_STOP=1 -f of the plain dump into a new database: exit status 0, no error"
check_eq "the -Fc dump's copy holds the source's rows, sequence and partitions" \
	"$(cat "$TEST_DIR/source.fingerprint")" "$(fingerprint copy_custom)"
check_eq "the plain dump's copy holds the source's rows, sequence and partitions" \
	"$(cat "$TEST_DIR/source.fingerprint")" "$(fingerprint copy_plain)"
psql_q "DROP DATABASE copy_custom" >/dev/null
psql_q "DROP DATABASE copy_plain" >/dev/null

#
# 3. The stream goes on after the dump; Kafka's position moves past it
#
psql_q "SELECT pgkafka_join.resume()" >/dev/null
ratings 301 500 | kafka_produce ratings
wait_for_output 500
wait_for 30 '[ "$(psql_q "SELECT publish_lag FROM pgkafka_join.status")" = 0 ]' ||
	fail "A did not publish every result"
P=$(kafka_position)
check_eq "cluster A published 500 results; Kafka's position is its last id, 200 past the dump" \
	"500|$P|$((D + 200))" \
	"$(psql_q "SELECT count(*), max(id), $P FROM pgkafka_join.rated_movies")"
pg_stop "$PG_DIR"

#
# 4. Cluster B: the dump restored; the worker takes back from the output
# topic the results published after the dump
#
pg_start "$PG_B" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'restored'" \
	"pgkafka_join.retry_interval = '1s'"
# restored under another name, and renamed once ready: the worker starts
# on it then
restore_dump() # DATABASE
{
	psql_q "CREATE DATABASE $1" >/dev/null
	as_postgres "$PG_BIN/pg_restore" --single-transaction --exit-on-error -d "$1" \
		"$DUMPS/source.dump" >"$DUMPS/restore_$1.log" 2>&1 ||
		fail "pg_restore --single-transaction failed: $(cat "$DUMPS/restore_$1.log")"
	! grep -q ERROR "$DUMPS/restore_$1.log" ||
		fail "pg_restore reported an error: $(grep ERROR "$DUMPS/restore_$1.log")"
}
restore_dump restoring
pass "pg_restore --single-transaction of the -Fc dump on cluster B: exit status 0, no error"
check_eq "the restored database keeps the source's Kafka group" "$group" \
	"$(PGDATABASE=restoring psql_q "SELECT kafka_group FROM pgkafka_join.control")"
# a rating of movie 1 (value 9999) waiting, queued for worker 0's rejoin
PGDATABASE=restoring psql_q "
INSERT INTO pgkafka_join.ratings (movie_id, rating, rated_at, kafka_partition, kafka_offset, received_at, joined)
VALUES (1, 9999, now(), 0, 1000000, now(), false);
INSERT INTO pgkafka_join.rejoins VALUES (0, '{1}', '{0}', now(), now() - interval '1 month')" >/dev/null
psql_q "ALTER DATABASE restoring RENAME TO restored" >/dev/null

# Taken back while paused (the dump was taken while paused): the positions
# are read, and the results lost taken back, before the pause is heeded.
wait_for 60 "grep -q 'pgkafka_join took back' '$PG_B/server.log'" ||
	fail "the worker did not take results back: $(PGDATABASE=restored psql_q "SELECT * FROM pgkafka_join.status")"
check_eq "the worker on the restored (paused) database takes back the $((P - D)) results published after the dump" "1" \
	"$(grep -cF "LOG:  pgkafka_join took back $((P - D)) results from the output topic \"rated_movies\"" "$PG_B/server.log" || true)"
wait_for 30 '[ "$(PGDATABASE=restored psql_q "SELECT state FROM pgkafka_join.status")" = paused ]' ||
	fail "the worker did not go on to the pause: $(PGDATABASE=restored psql_q "SELECT * FROM pgkafka_join.status")"
pass "then the worker goes on, to the pause of the dump"
check_eq "no WARNING: nothing stopped the worker" "0" \
	"$(grep -c 'WARNING:  pgkafka_join' "$PG_B/server.log" || true)"
# the rejoin pass is not ingest: it runs, and its result is published,
# while paused
wait_for_output 501
check_eq "no result id is on the output topic twice" "501 501" "$(ids_on_topic)"
check_eq "the one record after id $P is the queued rating's, numbered $((P + 1))" \
	"$((P + 1)) $(printf '1\t9999')" \
	"$(awk -F'\t' -v p="$P" '$1 > p { print $1 }' "$TEST_DIR/topic") $(awk -F'\t' -v p="$P" '$1 > p' "$TEST_DIR/topic" | ratings_of)"
check_eq "the records up to id $P are the 500 results of A, once each" \
	"$(ratings 1 500 expected | LC_ALL=C sort)" \
	"$(awk -F'\t' -v p="$P" '$1 <= p' "$TEST_DIR/topic" | ratings_of)"
PGDATABASE=restored psql_q "SELECT id, movie_id, pgkafka_join.output_value(r) FROM pgkafka_join.rated_movies r ORDER BY id" \
	-F $'\t' >"$TEST_DIR/b_results"
check_eq "rated_movies holds what the output topic holds: the dump's $D results, the $((P - D)) taken back, the queued rating's (ids, keys, values)" \
	"$(cat "$TEST_DIR/topic")" "$(cat "$TEST_DIR/b_results")"
check_eq "the ratings after the dump, not consumed again yet, are remembered as published" \
	"$((P - D))" \
	"$(PGDATABASE=restored psql_q "SELECT count(*) FROM pgkafka_join.recovered_ratings")"

PGDATABASE=restored psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(PGDATABASE=restored psql_q "SELECT input_lag = 0 AND publish_lag = 0 AND (SELECT count(*) FROM pgkafka_join.ratings) = 501 FROM pgkafka_join.status")" = t ]' ||
	fail "B did not consume the ratings after the dump again"
check_eq "the ratings consumed again are stored once, joined, and none is remembered any more" \
	"501|501|0|0" \
	"$(PGDATABASE=restored psql_q "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)), count(*) FILTER (WHERE NOT joined), (SELECT count(*) FROM pgkafka_join.recovered_ratings) FROM pgkafka_join.ratings")"
check_eq "they made no result: rated_movies holds the same 501" "501|$((P + 1))" \
	"$(PGDATABASE=restored psql_q "SELECT count(*), max(id) FROM pgkafka_join.rated_movies")"
check_eq "nothing more is on the output topic" "501 501" "$(ids_on_topic)"

#
# 5. The results after the dump deleted from the output topic (its
# retention): they cannot be taken back.  The dump restored again, as
# database restored2, finds the output topic ahead of PostgreSQL: state
# "stopped: the output topic is ahead of PostgreSQL", the WARNINGs logged
# once with the position in the DETAIL and the HINT naming
# advance_result_ids(), the shares ahead recorded in control.ahead_shares,
# nothing stored or published meanwhile.  After advance_result_ids() and
# resume(), the ratings after the dump are consumed again and published
# with new ids after the position, each once.
#
P=$(kafka_position)
for p in 0 1 2; do
	kafka_delete_records rated_movies $p -1 >/dev/null
done
check_eq "the output topic holds no record any more" "0" "$(output_count)"
restore_dump restored2
fingerprint restored2 >"$TEST_DIR/restored.fingerprint"
psql_q "ALTER SYSTEM SET pgkafka_join.database = 'restored2'" >/dev/null
mark=$(PG_DIR=$PG_B log_mark)
pg_restart "$PG_B"
export PGDATABASE=restored2
wait_for 60 '[ "$(psql_q "SELECT state, paused FROM pgkafka_join.status")" = "stopped: the output topic is ahead of PostgreSQL|t" ]' ||
	fail "the worker did not stop: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the worker on restored2 (paused) stops: the output topic is ahead of PostgreSQL"
sleep 5		# five retry intervals: nothing may happen, nor be logged again
check_eq "a WARNING says why the results cannot be taken back, once" "1" \
	"$(PG_DIR=$PG_B log_since "$mark" | grep -c 'WARNING:  pgkafka_join cannot take back the results PostgreSQL lost: partition [0-2] of the output topic "rated_movies" starts at offset' || true)"
check_eq "the WARNING that the worker stopped is logged once" "1" \
	"$(PG_DIR=$PG_B log_since "$mark" | grep -c 'WARNING:  pgkafka_join stopped: the output topic "rated_movies" is ahead of PostgreSQL' || true)"
check_eq "its DETAIL gives Kafka's position $P and the dump's last result $D" "1" \
	"$(PG_DIR=$PG_B log_since "$mark" | grep -cF "DETAIL:  Results up to id $P were published to Kafka; PostgreSQL numbered results only up to id $D and recorded publishing up to id $D." || true)"
check_eq "its HINT names advance_result_ids($P)" "1" \
	"$(PG_DIR=$PG_B log_since "$mark" | grep -cF "HINT:  To go on, run SELECT pgkafka_join.advance_result_ids($P):" || true)"
check_eq "the shares ahead are recorded: those whose position in Kafka is above $D" \
	"$(for p in 0 1 2; do o=$(kafka_group_offset "$group.publish-positions.rated_movies" ratings $p)
	   [ "$o" = none ] || [ "$o" -le "$D" ] || echo $p; done | paste -sd, | sed 's/.*/{&}/')" \
	"$(psql_q "SELECT ahead_shares FROM pgkafka_join.control")"
check_eq "nothing was stored while stopped: restored2 is unchanged" \
	"$(cat "$TEST_DIR/restored.fingerprint")" "$(fingerprint restored2)"
check_eq "nothing was published while stopped" "0" "$(output_count)"

check_eq "advance_result_ids($P) returns the next result id" "$((P + 1))" \
	"$(psql_q "SELECT pgkafka_join.advance_result_ids($P)")"
wait_for 30 "PG_DIR=$PG_B log_since $mark | grep -q 'pgkafka_join publishes again: results are numbered after the position in Kafka'" ||
	fail "the worker did not go on after advance_result_ids"
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = paused ]' ||
	fail "the worker did not go on to the pause: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "after advance_result_ids the worker goes on (to the pause of the dump)"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for_output 200
wait_for 30 '[ "$(psql_q "SELECT input_lag = 0 AND publish_lag = 0 FROM pgkafka_join.status")" = t ]' ||
	fail "restored2 did not publish every result"
check_eq "no result id is on the output topic twice" "200 200" "$(ids_on_topic)"
psql_q "SELECT id, movie_id, pgkafka_join.output_value(r) FROM pgkafka_join.rated_movies r WHERE id > $P ORDER BY id" \
	-F $'\t' >"$TEST_DIR/b_after_p"
check_eq "the records are exactly restored2's results after $P (ids, keys, values)" \
	"$(cat "$TEST_DIR/b_after_p")" "$(cat "$TEST_DIR/topic")"
check_eq "restored2's results: the dump's ids 1..$D and 200 new ones after $P, none in between" \
	"500|$D|0|200|$((P + 200))" \
	"$(psql_q "SELECT count(*), count(*) FILTER (WHERE id <= $D), count(*) FILTER (WHERE id > $D AND id <= $P), count(*) FILTER (WHERE id > $P), max(id) FROM pgkafka_join.rated_movies")"
check_eq "they are the results of the ratings produced after the dump, once each" \
	"$(ratings 301 500 expected | LC_ALL=C sort)" \
	"$(ratings_of <"$TEST_DIR/topic")"

#
# 6. PostgreSQL ahead of Kafka: the position of the last result's share set
# 5 ids back
#
P2=$(PGDATABASE=restored2 psql_q "SELECT max(id) FROM pgkafka_join.rated_movies")
S2=$(PGDATABASE=restored2 psql_q "SELECT share FROM pgkafka_join.rated_movies WHERE id = $P2")
wait_for 30 "[ \"\$(PGDATABASE=restored2 psql_q 'SELECT max(last_id) FROM pgkafka_join.output_position')\" = $P2 ] && [ \"\$(kafka_group_offset '$group.publish-positions.rated_movies' ratings $S2)\" = $P2 ]" ||
	fail "the position did not reach result $P2"
pg_stop "$PG_B"
kafka_set_group_offset "$group.publish-positions.rated_movies" ratings "$S2" $((P2 - 5))
check_eq "the position of share $S2 is set 5 ids back" "$((P2 - 5))" \
	"$(kafka_group_offset "$group.publish-positions.rated_movies" ratings "$S2")"
pg_start "$PG_B"
ratings 501 505 | kafka_produce ratings
wait_for_output 205
wait_for 30 '[ "$(PGDATABASE=restored2 psql_q "SELECT publish_lag FROM pgkafka_join.status")" = 0 ]' ||
	fail "B did not publish the new results"
check_eq "the worker logs that output_position is ahead of Kafka, once" "1" \
	"$(grep -cF 'LOG:  pgkafka_join.output_position is ahead of the position committed in Kafka; publishing after the former' "$PG_B/server.log" || true)"
check_eq "with both positions in its DETAIL" "1" \
	"$(grep -cF "DETAIL:  Share $S2: recorded in PostgreSQL: $P2; committed in Kafka: $((P2 - 5))." "$PG_B/server.log" || true)"
check_eq "no result id is on the output topic twice: the 5 results are not published again" \
	"205 205" "$(ids_on_topic)"
check_eq "the new ratings are published once, after id $P2" \
	"$(ratings 501 505 expected | LC_ALL=C sort)" \
	"$(awk -F'\t' -v p="$P2" '$1 > p' "$TEST_DIR/topic" | ratings_of)"
check_eq "Kafka's position is the last result again" "$((P2 + 5))" \
	"$(kafka_position)"

#
# 7. Upgraded from 1.1: the publish positions are only in the group that
# versions up to 1.1 used, "<kafka_group>.<output topic>", and PostgreSQL's
# record of the last share is 5 ids behind them.  The worker takes them
# from there (publishing nothing again), and its next transaction commits
# them to "<kafka_group>.publish-positions.<output topic>".
#
P3=$(PGDATABASE=restored2 psql_q "SELECT max(id) FROM pgkafka_join.rated_movies")
S3=$(PGDATABASE=restored2 psql_q "SELECT share FROM pgkafka_join.rated_movies WHERE id = $P3")
wait_for 30 "[ \"\$(kafka_position)\" = $P3 ]" || fail "the position did not reach result $P3"
PGDATABASE=restored2 psql_q "ALTER SYSTEM SET pgkafka_join.brokers = ''" >/dev/null
PGDATABASE=restored2 psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 '[ "$(PGDATABASE=restored2 psql_q "SELECT state FROM pgkafka_join.status")" = "idle: no brokers set" ]' ||
	fail "the worker did not leave Kafka: $(PGDATABASE=restored2 psql_q "SELECT state FROM pgkafka_join.status")"
previous=()
for p in 0 1 2; do
	o=$(kafka_group_offset "$group.publish-positions.rated_movies" ratings $p)
	previous+=("$o")
	[ "$o" = none ] || kafka_set_group_offset "$group.rated_movies" ratings $p "$o" >/dev/null
done
kafka_delete_group_offsets "$group.publish-positions.rated_movies" ratings >/dev/null
check_eq "the positions are in 1.1's group only" \
	"${previous[*]} | none none none" \
	"$(for p in 0 1 2; do kafka_group_offset "$group.rated_movies" ratings $p; done | paste -sd' ') | $(for p in 0 1 2; do kafka_group_offset "$group.publish-positions.rated_movies" ratings $p; done | paste -sd' ')"
PGDATABASE=restored2 psql_q "UPDATE pgkafka_join.output_position SET last_id = last_id - 5 WHERE share = $S3 AND last_id = $P3"
check_eq "PostgreSQL's record of share $S3 is 5 ids behind" "$((P3 - 5))" \
	"$(PGDATABASE=restored2 psql_q "SELECT max(last_id) FROM pgkafka_join.output_position WHERE share = $S3")"
mark=$(PG_DIR=$PG_B log_mark)
PGDATABASE=restored2 psql_q "ALTER SYSTEM RESET pgkafka_join.brokers" >/dev/null
PGDATABASE=restored2 psql_q "SELECT pg_reload_conf()" >/dev/null
ratings 506 510 | kafka_produce ratings
wait_for_output 210
wait_for 30 '[ "$(PGDATABASE=restored2 psql_q "SELECT publish_lag FROM pgkafka_join.status")" = 0 ]' ||
	fail "B did not publish the new results"
check_eq "the worker went on after 1.1's positions" "1" \
	"$(PG_DIR=$PG_B log_since "$mark" | grep -c "publishes to \"rated_movies\" after results .*$S3: $P3\b" || true)"
check_eq "no result id is on the output topic twice: the 5 results are not published again" \
	"210 210" "$(ids_on_topic)"
check_eq "the new ratings are published once, after id $P3" \
	"$(ratings 506 510 expected | LC_ALL=C sort)" \
	"$(awk -F'\t' -v p="$P3" '$1 > p' "$TEST_DIR/topic" | ratings_of)"
check_eq "the position is committed to the publish-positions group, 1.1's group left as it was" \
	"$((P3 + 5)) | ${previous[*]}" \
	"$(kafka_position) | $(for p in 0 1 2; do kafka_group_offset "$group.rated_movies" ratings $p; done | paste -sd' ')"
