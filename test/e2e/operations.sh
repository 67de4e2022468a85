#!/bin/bash
#
# operations.sh
#		What a DBA does while the stream runs: watch the status views and
#		the catch-up progress, pause, rewind and resume ingest, drop old
#		partitions (by hand and from pg_cron) without blocking ingest, and
#		see a wrong Kafka security setting reported instead of a silent
#		stall.

. "$(dirname "$0")/setup.sh"
pkj_setup operations 3 \
	"shared_preload_libraries = 'pgkafka_join,pg_cron'" \
	"cron.database_name = 'postgres'" \
	"cron.use_background_workers = on" \
	"max_worker_processes = 16" \
	"pgkafka_join.batch_size = 500" \
	"log_lock_waits = on" \
	"deadlock_timeout = '1s'"

ratings() # FIRST COUNT: ratings of movies 1..100 with values FIRST.. as "key<TAB>value"
{
	local i
	for ((i = $1; i < $1 + $2; i++)); do
		printf '%d\t{"id": %d, "rating": %d}\n' $((i % 100 + 1)) $((i % 100 + 1)) "$i"
	done
}

produce_movies_upto 100
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = 100 ]' ||
	fail "the movies were not stored"

# --- status while idle
wait_for 30 '[ "$(psql_q "SELECT state, paused, input_lag, pending_ratings, publish_lag FROM pgkafka_join.status")" = "consuming|f|0|0|0" ]' ||
	fail "the status view is not as expected: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the status view shows the worker consuming, no lag, no pending rating"
check_eq "the worker shows in pg_stat_activity" "1" \
	"$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'")"

# --- a backlog: the status shows lag and rates, the log shows progress
# The worker logs its progress every 10 s while the lag is above a batch;
# a backlog it clears in less time may fall between two of those.  So an
# operation holds the ingest lock (as pause() or drop_partitions() take it)
# for 15 s from before the resume, lets the worker store for 1 s, and holds
# it again for 12 s: when the worker goes on, 10 s have passed since it last
# looked, it stored messages meanwhile and most of the backlog is left.
psql_q "SELECT pgkafka_join.pause()" >/dev/null
ratings 0 200000 | kafka_produce ratings
psql_q "BEGIN; SELECT pgkafka_join.lock_ingest(); SELECT pg_sleep(15); COMMIT;
        SELECT pg_sleep(1);
        BEGIN; SELECT pgkafka_join.lock_ingest(); SELECT pg_sleep(12); COMMIT" >/dev/null &
holder=$!
wait_for 10 '[ "$(psql_q "SELECT count(*) FROM pg_stat_activity WHERE wait_event = '"'PgSleep'"'")" = 1 ]' ||
	fail "the ingest lock was not taken"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT input_lag > 0 AND messages_per_second > 0 AND catch_up_estimate IS NOT NULL FROM pgkafka_join.status")" = t ]' ||
	fail "the status view did not show the backlog: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the status view shows the backlog: $(psql_q "SELECT 'lag ' || input_lag || ', ' || messages_per_second || ' messages/s, estimate ' || catch_up_estimate FROM pgkafka_join.status")"
wait_for 120 "grep -q 'pgkafka_join is catching up' '$PG_DIR/server.log'" ||
	fail "no progress line in the log while catching up"
pass "the log shows progress: $(grep -m1 -o 'pgkafka_join is catching up.*' "$PG_DIR/server.log")"
# the worker had stored for about a second of the 200000: most are left,
# counted on every partition, consumed since the resume or not
left=$(grep -m1 -o 'pgkafka_join is catching up: [0-9]* messages stored in the last [0-9]* s, [0-9]* left' \
	"$PG_DIR/server.log" | grep -o '[0-9]* left$' | cut -d' ' -f1)
[ "${left:-0}" -ge 100000 ] ||
	fail "the progress line counts ${left:-no} messages left of a backlog of 200000 barely begun"
pass "the progress line counts the messages left on every partition ($left)"
wait "$holder" || fail "the session holding the ingest lock failed"
retention_from=$(stat -c %s "$PG_DIR/server.log")

# --- retention while the backlog streams: old months dropped, ingest not blocked
psql_q "SELECT count(*) FROM pgkafka_join.create_partitions('2020-01-15', '2020-06-15')" >/dev/null
for ((i = 0; i < 5; i++)); do
	psql_q "SELECT count(*) FROM pgkafka_join.create_partitions('2019-01-15', '2019-03-15')" >/dev/null
	psql_q "SELECT count(*) FROM pgkafka_join.drop_partitions('13 months')" >/dev/null
	sleep 0.5
done
check_eq "old partitions are gone" "0" \
	"$(psql_q "SELECT count(*) FROM pg_class WHERE relname ~ '^(ratings|rated_movies)_y20(19|20)'")"

wait_for 180 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")" = 200000 ]' ||
	fail "the backlog was not joined: $(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
wait_for_output 200000 120
check_eq "the backlog gave every result once" "200000|200000" \
	"$(psql_q "SELECT count(*), count(DISTINCT rating) FROM pgkafka_join.rated_movies")"
check_eq "no lock wait of a second or more during retention" "0" \
	"$(tail -c +$((retention_from + 1)) "$PG_DIR/server.log" | grep -c 'still waiting for' || true)"

# --- pause: nothing is stored; resume: everything is
psql_q "SELECT pgkafka_join.pause()" >/dev/null
ratings 200000 100 | kafka_produce ratings
# the worker has seen the 100 messages on the brokers (the lag it shows),
# and stored none of them
wait_for 30 '[ "$(psql_q "SELECT input_lag FROM pgkafka_join.status")" = 100 ]' ||
	fail "the status view does not show the lag of the pause: $(psql_q "SELECT input_lag FROM pgkafka_join.status")"
pass "while paused the status view shows the lag growing: 100 messages"
check_eq "while paused nothing is stored, and the status says so" "200000|paused|t" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings), state, paused FROM pgkafka_join.status")"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = 200100 ]' ||
	fail "ratings were not stored after resume"
pass "after resume the ratings produced meanwhile are stored"

# --- rewind partition 0 of ratings to its beginning: reprocessed as new
p0=$(psql_q "SELECT next_offset FROM pgkafka_join.input_offsets WHERE topic = 'ratings' AND kafka_partition = 0")
psql_q "SELECT pgkafka_join.pause()" >/dev/null
check_eq "reset_offsets while paused" "1" "$(psql_q "SELECT pgkafka_join.reset_offsets('ratings', 0)")"
psql_q "SELECT pgkafka_join.resume()" >/dev/null
wait_for 120 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.ratings')\" = $((200100 + p0)) ]" ||
	fail "the rewound partition was not consumed again"
wait_for_output $((200100 + p0)) 120
check_eq "a rewound partition's ratings are stored and published again, once more each" \
	"$((200100 + p0))|$((200100 + p0))|$p0" \
	"$(psql_q "SELECT count(*), (SELECT count(*) FROM pgkafka_join.ratings), count(*) - count(DISTINCT rating) FROM pgkafka_join.rated_movies")"
check_eq "the output topic holds each result of rated_movies once ($((200100 + p0)) ids)" \
	"$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"

# --- retention from pg_cron
psql_q "CREATE EXTENSION pg_cron" >/dev/null
psql_q "SELECT count(*) FROM pgkafka_join.create_partitions('2021-01-15', '2021-02-15')" >/dev/null
psql_q "SELECT cron.schedule('pgkafka_join retention', '* * * * *', \$\$SELECT pgkafka_join.drop_partitions('13 months')\$\$)" >/dev/null
wait_for 90 '[ "$(psql_q "SELECT count(*) FROM pg_class WHERE relname ~ '"'"'^(ratings|rated_movies)_y2021'"'"'")" = 0 ]' ||
	fail "pg_cron did not drop the old partitions"
check_eq "pg_cron ran the retention job successfully" "succeeded" \
	"$(psql_q "SELECT status FROM cron.job_run_details ORDER BY start_time LIMIT 1")"

# --- a wrong security setting: a clear error, not a silent stall.  The
# secret is in pgkafka_join.kafka_properties_file, whose contents are never
# logged (PostgreSQL logs only the path when the setting changes).
secrets=$TEST_DIR/kafka-secrets.properties
cat >"$secrets" <<'PROPS'
# SASL for a broker that only speaks PLAINTEXT: the handshake must fail
security.protocol = SASL_PLAINTEXT
sasl.mechanisms=PLAIN
sasl.username=joiner
sasl.password=s3cret-in-a-file
PROPS
chown postgres "$secrets"
chmod 600 "$secrets"
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties_file = '$secrets'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT last_error IS NOT NULL AND last_error_at > now() - interval '"'"'30 s'"'"' FROM pgkafka_join.status")" = t ]' ||
	fail "no error in the status view: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the status view reports: $(psql_q "SELECT last_error FROM pgkafka_join.status")"
wait_for 30 "grep -qE 'cannot reach the Kafka brokers|kafka client pgkafka_join-' '$PG_DIR/server.log'" ||
	fail "the error is not in the server log"
! grep -q "s3cret-in-a-file" "$PG_DIR/server.log" ||
	fail "the password was written to the server log"
pass "the error is in the server log, and the password is nowhere in it"

# a file that cannot be read: said once, in the log and the status
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties_file = '$TEST_DIR/missing.properties'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 "grep -q 'could not open pgkafka_join.kafka_properties_file' '$PG_DIR/server.log'" ||
	fail "an unreadable properties file was not reported"
check_eq "the status view says what the worker waits for" "waiting for the properties file" \
	"$(psql_q "SELECT state FROM pgkafka_join.status")"
psql_q "ALTER SYSTEM RESET pgkafka_join.kafka_properties_file" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null

# a property librdkafka does not know is refused by the reload
refusal=$(psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'ssl.bogus=1'" 2>&1 || true)
grep -q 'invalid value for parameter "pgkafka_join.kafka_properties"' <<<"$refusal" ||
	fail "an unknown property was not refused: $refusal"
pass "an unknown librdkafka property is refused"
psql_q "ALTER SYSTEM RESET pgkafka_join.kafka_properties" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
