# setup.sh
#		Set-up shared by the end-to-end tests: one Kafka broker with the
#		input and output topics, one PostgreSQL cluster running the join
#		worker against it, the extension created.
#
#	. "$(dirname "$0")/setup.sh"
#	pkj_setup NAME [PARTITIONS] [CONF ...]
#
# Sets TEST_DIR, PG_DIR, KAFKA_DIR, KAFKA_BOOTSTRAP; psql_q talks to the
# cluster.  Also defines helpers to read the output topic.

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

pkj_setup()
{
	local name=$1 partitions=${2:-3}
	shift 2 || shift $#

	test_init "$name"
	kafka_start "$TEST_DIR/kafka"
	kafka_create_topic movies "$partitions"
	kafka_create_topic ratings "$partitions"
	kafka_create_topic rated_movies "$partitions"
	PG_DIR=$TEST_DIR/pg
	pg_start "$PG_DIR" \
		"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
		"pgkafka_join.database = 'postgres'" \
		"pgkafka_join.retry_interval = '1s'" \
		"$@"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
}

# The output topic's committed records as "KEY<TAB>VALUE", sorted, with the
# rated_at field removed from values (it is the Kafka message time when a
# rating has none of its own).
output_without_time()
{
	kafka_consume rated_movies | cut -f3,4 |
		sed -E 's/,"rated_at":"[^"]*"//' | LC_ALL=C sort
}

output_count()
{
	kafka_consume rated_movies | wc -l
}

# Wait until the output topic holds N committed records, then a little
# longer, so that a duplicate would have time to show.
wait_for_output()
{
	local n=$1 timeout=${2:-60}

	wait_for "$timeout" "[ \"\$(output_count)\" -ge $n ]" ||
		fail "the output topic did not reach $n records (has $(output_count))"
	sleep 2
}

# check_output_exactly_once WHAT: the output topic's committed records are
# rated_movies' rows, each (share, id) once, and their (movie id, rating)
# pairs are $TEST_DIR/expected's lines ("movie_id<TAB>rating", sorted, each
# movie titled "Movie <id>"), each exactly once.  WHAT names the situation
# in the last check.
check_output_exactly_once()
{
	local what=$1 lost extra

	kafka_consume rated_movies -f '%h\t%k\t%s\n' >"$TEST_DIR/output"
	check_eq "the output topic carries each (share, id) of rated_movies once, and no other" \
		"$(psql_q "SELECT string_agg(share || ':' || id, ',' ORDER BY share, id) FROM pgkafka_join.rated_movies")" \
		"$(python3 -c '
import sys
for line in open(sys.argv[1]):
    h = dict(kv.split("=", 1) for kv in line.split("\t", 1)[0].split(","))
    print(h["pgkafka_join.share"] + ":" + h["pgkafka_join.id"])' "$TEST_DIR/output" |
			sort -t: -k1,1n -k2,2n | paste -sd,)"
	python3 - "$TEST_DIR/output" >"$TEST_DIR/actual" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    headers, key, value = line.rstrip("\n").split("\t", 2)
    v = json.loads(value)
    assert str(v["id"]) == key and v["title"] == f"Movie {key}", line
    print(f'{v["id"]}\t{v["rating"]}')
PY
	sort -o "$TEST_DIR/actual" "$TEST_DIR/actual"
	lost=$(comm -23 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	extra=$(comm -13 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	echo "# results on the topic: $(wc -l <"$TEST_DIR/actual"), lost: $lost, duplicated or unexpected: $extra"
	check_eq "$what, the output topic holds every expected result exactly once" "0 0" "$lost $extra"
}
