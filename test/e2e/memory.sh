#!/bin/bash
#
# memory.sh
#		The worker's memory stays flat: 10,000 ratings stored in batches of
#		10, each batch spanning more than 8 months (so that its partitions
#		are made ahead of it, in transactions of their own) and half of
#		them joined and published (so that the producer, its transactions
#		and the delivery reports are measured too), grow the worker's
#		memory contexts by less than 256 kB (they do not grow at all).
#		Version 1.0 leaked about 500 bytes per such batch into
#		TopMemoryContext: 512 kB over these 1000 batches.
#
# The memory is measured with pg_log_backend_memory_contexts(), whose
# "Grand total" line in the server log covers every memory context of the
# worker; its resident anonymous memory (RssAnon, which includes
# librdkafka's) must grow by less than 8 MB.

. "$(dirname "$0")/setup.sh"
pkj_setup memory 1 \
	"pgkafka_join.batch_size = 10"

N=10000
LOG=$PG_DIR/server.log

# ratings FIRST COUNT: ratings FIRST.. of movies 1..10; rating i, if odd,
# in month (i / 2) % 12 + 1 of 2019 (long outside the join window: not
# published), if even, rated now (the message's timestamp: published)
ratings()
{
	local i
	for ((i = $1; i < $1 + $2; i++)); do
		if ((i % 2)); then
			printf '%d\t{"id": %d, "rating": %d, "rated_at": "2019-%02d-15T12:00:00Z"}\n' \
				$((i % 10 + 1)) $((i % 10 + 1)) "$i" $((i / 2 % 12 + 1))
		else
			printf '%d\t{"id": %d, "rating": %d}\n' $((i % 10 + 1)) $((i % 10 + 1)) "$i"
		fi
	done
}

stored() { psql_q "SELECT count(*) FROM pgkafka_join.ratings"; }
published() { psql_q "SELECT published_total FROM pgkafka_join.status"; }

# Print the worker's memory: "GRAND_TOTAL_BYTES RSS_ANON_KB"
worker_memory()
{
	local pid before total rss

	pid=$(psql_q "SELECT pid FROM pgkafka_join.status")
	before=$(grep -c "\[$pid\] pgkafka_join worker: LOG:  Grand total: " "$LOG" || true)
	[ "$(psql_q "SELECT pg_log_backend_memory_contexts($pid)")" = t ] ||
		fail "could not signal the worker to log its memory contexts"
	wait_for 30 "[ \"\$(grep -c '\[$pid\] pgkafka_join worker: LOG:  Grand total: ' '$LOG')\" -gt $before ]" ||
		fail "the worker did not log its memory contexts"
	total=$(grep "\[$pid\] pgkafka_join worker: LOG:  Grand total: " "$LOG" | tail -1 |
		sed -E 's/.*Grand total: ([0-9]+) bytes.*/\1/')
	rss=$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status")
	echo "$total $rss"
}

produce_movies_upto 10
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = 10 ]' ||
	fail "the movies were not stored"

# --- the first 10,000: partitions, caches and buffers reach their size
ratings 0 $N | kafka_produce ratings
wait_for 300 "[ \"\$(stored)\" = $N ] && [ \"\$(published)\" = $((N / 2)) ]" ||
	fail "the first $N ratings were not stored and half of them published ($(stored) stored, $(published) published)"
pid=$(psql_q "SELECT pid FROM pgkafka_join.status")
messages1=$(psql_q "SELECT messages_total FROM pgkafka_join.status")
read -r total1 rss1 <<<"$(worker_memory)"
echo "# after $N ratings: Grand total $total1 bytes, RssAnon $rss1 kB"

# --- the next 10,000
ratings $N $N | kafka_produce ratings
wait_for 300 "[ \"\$(stored)\" = $((2 * N)) ] && [ \"\$(published)\" = $N ]" ||
	fail "the next $N ratings were not stored and half of them published ($(stored) stored, $(published) published)"
read -r total2 rss2 <<<"$(worker_memory)"
echo "# after $((2 * N)) ratings: Grand total $total2 bytes, RssAnon $rss2 kB"
echo "# growth over $N ratings: Grand total $((total2 - total1)) bytes, RssAnon $((rss2 - rss1)) kB"

check_eq "the same worker stored the next $N messages and published half of all, each once" \
	"$pid|$N|$N|$N|$N" \
	"$(psql_q "SELECT pid, messages_total - $messages1, results_total, published_total, (SELECT count(*) FROM pgkafka_join.rated_movies) FROM pgkafka_join.status")"
check_eq "the output topic holds the $N results, each once" \
	"$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"
check_eq "in at least 1000 transactions of at most 10 ratings, each full one spanning more than 8 months" \
	"t|10|t" \
	"$(psql_q "SELECT count(*) >= 1000, max(n), bool_and(n < 10 OR span > interval '8 months')
	             FROM (SELECT xmin::text, count(*) AS n, max(rated_at) - min(rated_at) AS span
	                     FROM pgkafka_join.ratings WHERE rating >= $N GROUP BY 1) b")"
check_eq "the ratings are spread over 12 monthly partitions" "12" \
	"$(psql_q "SELECT count(*) FROM pg_inherits WHERE inhparent = 'pgkafka_join.ratings'::regclass AND inhrelid::regclass::text LIKE '%ratings_y2019m%'")"
[ $((total2 - total1)) -lt 262144 ] ||
	fail "the worker's memory contexts grew by $((total2 - total1)) bytes over $N ratings"
pass "the worker's memory contexts grew by less than 256 kB over $N ratings"
[ $((rss2 - rss1)) -lt 8192 ] ||
	fail "the worker's resident anonymous memory grew by $((rss2 - rss1)) kB over $N ratings"
pass "the worker's resident anonymous memory grew by less than 8 MB over $N ratings"
