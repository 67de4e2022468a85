#!/bin/bash
#
# catalog_first.sh
#		A worker that takes partitions whose movies are behind consumes
#		their movies up to the end of the topic before any of their
#		ratings: no rating is joined with a movie version the topic had
#		already replaced or deleted.
#
# 1. A backlog, produced while the worker is idle (no brokers set), in
#    topics of 3 partitions: movies 1-3 in a first version, 3,000 other
#    movies, then movie 1 in a second version and a tombstone for movie 2
#    (same partitions as their first versions: keyed by id); ratings of
#    movies 1, 2, 3 and 10.  Consumed together, the ratings (at the start
#    of their partitions) would be joined long before the movies' ends,
#    with batches of 100: movie 1's rating with its first version, movie
#    2's with a deleted movie.  With the brokers set, the worker logs that
#    it consumes the movies first, then that it consumed them: rating 1 is
#    joined with the second version, rating 2 waits (no movie), ratings 3
#    and 10 are joined, and rating 1 was stored after movie 1's second
#    version, the last movie of its partition.
# 2. Live, once caught up: a movie changed, then rated: joined with the
#    change at once (the catalog's end is the one of the first
#    assignment, so a catalog that keeps changing does not hold ratings
#    back).

. "$(dirname "$0")/setup.sh"

pkj_setup catalog_first 3 "pgkafka_join.batch_size = 100" "pgkafka_join.brokers = ''"
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "idle: no brokers set" ]' ||
	fail "the worker is not idle: $(psql_q "SELECT state FROM pgkafka_join.status")"

# --- 1. the backlog
{
	for m in 1 2 3; do
		printf '%d\t{"id": %d, "title": "Movie %d, first version"}\n' $m $m $m
	done
	for ((m = 10; m < 3010; m++)); do
		printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
	done
	printf '1\t{"id": 1, "title": "Movie 1, second version"}\n'
	printf '2\t\n'
} | kafka_produce movies
printf '%d\t{"id": %d, "rating": %d}\n' 1 1 1 2 2 2 3 3 3 10 10 10 | kafka_produce ratings
mark=$(log_mark)
psql_q "ALTER SYSTEM SET pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 120 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = 4 ]' ||
	fail "the ratings were not stored: $(psql_q "SELECT count(*) FROM pgkafka_join.ratings")"
wait_for_output 3
{ log_since "$mark" | grep -E 'pgkafka_join consume(s|d) the movies' || true; } | sed 's/^/# | /'
check_eq "the worker said it consumes the movies first" 1 \
	"$(log_since "$mark" | grep -c 'pgkafka_join consumes the movies of partitions .* up to their end before their ratings' || true)"
check_eq "and when it had consumed them, every partition once" \
	"$(psql_q "SELECT count(DISTINCT kafka_partition) FROM pgkafka_join.ratings")" \
	"$(log_since "$mark" | grep -oE 'consumed the movies of partitions [0-9,-]+' |
		sed -E 's/.* //' | tr ',' '\n' | awk -F- '{ n += ($2 == "" ? 1 : $2 - $1 + 1) } END { print n + 0 }')"
check_eq "the movies were all stored, movie 2 deleted" "3002|Movie 1, second version|0" \
	"$(psql_q "SELECT count(*), (SELECT title FROM pgkafka_join.movies WHERE id = 1),
	                  (SELECT count(*) FROM pgkafka_join.movies WHERE id = 2)
	             FROM pgkafka_join.movies")"
check_eq "rating 1 was stored after movie 1's second version, the last movie of its partition" "t" \
	"$(psql_q "SELECT r.received_at > m.updated_at FROM pgkafka_join.ratings r, pgkafka_join.movies m
	            WHERE r.movie_id = 1 AND m.id = 1")"
check_eq "rating 1 joined with the second version, rating 2 waits for a movie, 3 and 10 joined" \
	"$(printf '1\t{"id":1,"title":"Movie 1, second version","release_year":null,"rating":1}\n10\t{"id":10,"title":"Movie 10","release_year":null,"rating":10}\n3\t{"id":3,"title":"Movie 3, first version","release_year":null,"rating":3}')" \
	"$(output_without_time)"
check_eq "rating 2 is stored, waiting" "2|f" \
	"$(psql_q "SELECT movie_id, joined FROM pgkafka_join.ratings WHERE movie_id = 2")"

# --- 2. live: a change, then a rating of it
printf '10\t{"id": 10, "title": "Movie 10, changed"}\n' | kafka_produce movies
wait_for 60 '[ "$(psql_q "SELECT title FROM pgkafka_join.movies WHERE id = 10")" = "Movie 10, changed" ]' ||
	fail "movie 10 was not changed"
printf '10\t{"id": 10, "rating": 11}\n' | kafka_produce ratings
wait_for_output 4
check_eq "a rating after a live change is joined with it" '{"id":10,"title":"Movie 10, changed","release_year":null,"rating":11}' \
	"$(kafka_consume rated_movies -f '%s\n' | grep '"rating":11' | sed -E 's/,"rated_at":"[^"]*"//')"
check_eq "the worker never exited" "0" \
	"$(grep -c 'exited with exit code\|terminated by signal' "$PG_DIR/server.log" || true)"
