#!/bin/bash
#
# tutorial.sh
#		The tutorial's five movies and nine ratings give exactly those nine
#		rated movies on the output topic, read in read_committed mode.

. "$(dirname "$0")/setup.sh"
pkj_setup tutorial 3

produce_tutorial

wait_for_output 9
check_eq "the output topic holds the nine rated movies" "$(tutorial_results)" "$(output_without_time)"

check_eq "rated_movies holds the same nine rows" "$(cat <<'EOF2'
128|The Big Lebowski|1998|8.4
128|The Big Lebowski|1998|8.7
294|Die Hard|1988|8.2
294|Die Hard|1988|8.5
354|Tree of Life|2011|9.7
354|Tree of Life|2011|9.9
780|Super Mario Bros.|1993|2.1
782|A Walk in the Clouds|1995|7.7
782|A Walk in the Clouds|1995|7.8
EOF2
)" "$(psql_q "SELECT movie_id, title, release_year, rating FROM pgkafka_join.rated_movies ORDER BY 1, 4")"

# every record carries its result id in a header, and each id appears once
check_eq "each result id is on the topic once" \
	"$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"

# keys land where a Java client (murmur2) would put them
check_eq "records are partitioned by murmur2 of the key, as the Java client does" \
	"$(python3 "$TEST_TOP/test/kafka/murmur2_partition.py" 3 128 294 354 780 782)" \
	"$(kafka_consume rated_movies | cut -f1,3 | LC_ALL=C sort -u -k2)"

check_eq "input offsets are stored" "movies|5
ratings|9" \
	"$(psql_q "SELECT topic, sum(next_offset) FROM pgkafka_join.input_offsets GROUP BY 1 ORDER BY 1")"

check_eq "output_position records where the records landed" "9" \
	"$(psql_q "SELECT sum(next_offset) FROM pgkafka_join.output_position")"

