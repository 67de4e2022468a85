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
