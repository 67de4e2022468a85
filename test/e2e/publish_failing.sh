#!/bin/bash
#
# publish_failing.sh
#		While publishing fails, ingest goes on at full speed: a failing
#		publisher is retried every retry_interval, not once per batch with a
#		wait in between.
#
# The output topic does not exist and retry_interval is an hour.  A catalog
# of 5000 movies in batches of 100 and 500 ratings are all stored and
# joined in PostgreSQL (a worker that waited retry_interval per batch would
# have stored one batch in that time).  Then the output topic is created
# and a reload (which retries the publisher at once) publishes every result
# exactly once.

. "$(dirname "$0")/setup.sh"

test_init publish_failing
kafka_start "$TEST_DIR/kafka"
kafka_create_topic movies 3
kafka_create_topic ratings 3
PG_DIR=$TEST_DIR/pg
LOG=$PG_DIR/server.log
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.retry_interval = '1h'" \
	"pgkafka_join.batch_size = 100"
psql_q "CREATE EXTENSION pgkafka_join"

produce_movies_upto 5000
for ((i = 0; i < 500; i++)); do
	printf '%d\t{"id": %d, "rating": %d}\n' $((i * 10 + 1)) $((i * 10 + 1)) "$i"
done | kafka_produce ratings

wait_for 90 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = 5000 ]' ||
	fail "the catalog was not stored while publishing failed: $(psql_q "SELECT count(*) FROM pgkafka_join.movies") movies"
pass "the whole catalog is stored while the output topic is missing"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")" = 500 ]' ||
	fail "the ratings were not joined: $(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
pass "every rating is joined in PostgreSQL"
check_eq "the wait for the output topic is logged once" "1" \
	"$(grep -c 'pgkafka_join is waiting for the output topic "rated_movies"' "$LOG" || true)"
check_eq "nothing is published yet" "0|" \
	"$(psql_q "SELECT count(*), max(last_id) FROM pgkafka_join.output_position")"

kafka_create_topic rated_movies 3
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for_output 500
check_eq "after the topic is created and a reload, every result is published once" \
	"$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"
check_eq "the worker never exited" "0" \
	"$(grep -c 'exited with exit code\|terminated by signal' "$LOG" || true)"
