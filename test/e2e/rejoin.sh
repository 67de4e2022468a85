#!/bin/bash
#
# rejoin.sh
#		A rating and its movie stored at the same moment by two workers,
#		each transaction missing the other's row, are joined once, by the
#		rejoin pass of the rating's worker, and rejoined_total counts it.
#
# The race is made to happen, not hoped for: a trigger a DBA could have
# written makes the transaction storing the rating sleep once the rating
# has looked its movie up (and not found it); while it sleeps, the movie is
# produced on a partition of another worker, which stores it and commits
# without seeing the uncommitted rating.  The test checks that the movie's
# transaction committed while the rating's was still open, then that the
# rating's worker joined it after its commit: one result, on the output
# topic once, made by a rejoin pass.  Then the race the other way round,
# with REPEATABLE READ as the database's default isolation level, which
# the worker must not take for its own transactions.

. "$(dirname "$0")/setup.sh"
pkj_setup rejoin 3 "pgkafka_join.workers = 3"

# slow_row(COLUMN, VALUE): a trigger function that holds the transaction
# storing a row whose COLUMN is VALUE for 5 s
psql_q >/dev/null <<'SQL'
CREATE FUNCTION public.slow_row() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->>) TG_ARGV[0] = TG_ARGV[1] THEN
        PERFORM pg_catalog.pg_sleep(5);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER slow_rating BEFORE INSERT ON pgkafka_join.ratings
    FOR EACH ROW EXECUTE FUNCTION public.slow_row('rating', '4242');
SQL
all_consuming()
{
	wait_for 60 '[ "$(psql_q "SELECT string_agg(state, '\'','\'' ORDER BY worker) FROM pgkafka_join.status")" = "consuming,consuming,consuming" ]' ||
		fail "the three workers are not consuming: $(psql_q "SELECT worker, state FROM pgkafka_join.status")"
}
all_consuming

sleeping() { psql_q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker' AND wait_event = 'PgSleep'"; }

# the rating, on partition 0 (worker 0), keyed away from its movie
printf '42\t{"id": 42, "rating": 4242}\n' | kafka_produce ratings -p 0
wait_for 60 '[ "$(sleeping)" = 1 ]' || fail "the rating's transaction did not reach the trigger"
pass "worker 0 is storing the rating, its movie not found"
# its movie, on partition 1 (worker 1)
printf '42\t{"id": 42, "title": "The Answer", "release_year": 1979}\n' | kafka_produce movies -p 1
wait_for 30 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id = 42")" = 1 ]' ||
	fail "worker 1 did not store the movie"
check_eq "the movie's transaction committed while the rating's was still open, missing it" \
	"1|0|0" "$(sleeping)|$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")|$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"

wait_for_output 1 30
check_eq "the rating is joined once, as a result of the rating's share, by worker 0's rejoin pass" \
	"42|The Answer|1979|4242|0|t" \
	"$(psql_q "SELECT r.movie_id, r.title, r.release_year, r.rating, r.share, x.joined
	             FROM pgkafka_join.rated_movies r JOIN pgkafka_join.ratings x USING (kafka_partition, kafka_offset)")"
check_eq "rejoined_total counts it, for worker 0 only" "0:1,1:0,2:0" \
	"$(psql_q "SELECT string_agg(worker || ':' || rejoined_total, ',' ORDER BY worker) FROM pgkafka_join.status")"
check_eq "the output topic holds it once" \
	'42	{"id":42,"title":"The Answer","release_year":1979,"rating":4242}' "$(output_without_time)"
check_eq "the queue is empty" "0" "$(psql_q "SELECT count(*) FROM pgkafka_join.rejoins")"

# --- 2. The other way round, with REPEATABLE READ the database's default
# isolation level: the movie's transaction has begun (and taken its
# transaction id) when the rating's commits.  Each statement of the
# movie's transaction must take its snapshot when it starts: its join then
# sees the rating, committed meanwhile.  (Were the worker's transactions
# REPEATABLE READ, the movie's join would use the snapshot taken before the
# rating committed, and the rating's rejoin pass the one taken before it
# waited for the movie's transaction: the rating would never be joined.)
psql_q "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'" >/dev/null
psql_q "CREATE TRIGGER slow_movie BEFORE INSERT ON pgkafka_join.movies
            FOR EACH ROW EXECUTE FUNCTION public.slow_row('id', '43')" >/dev/null
pg_restart "$PG_DIR"
check_eq "new sessions of the database are REPEATABLE READ" "repeatable read" \
	"$(psql_q "SHOW transaction_isolation")"
all_consuming

# the movie, on partition 1 (worker 1): its transaction sleeps in the trigger
printf '43\t{"id": 43, "title": "The Question", "release_year": 1980}\n' | kafka_produce movies -p 1
wait_for 60 '[ "$(sleeping)" = 1 ]' || fail "the movie's transaction did not reach the trigger"
pass "worker 1 is storing the movie"
# its rating, on partition 0 (worker 0), stored and committed meanwhile
printf '43\t{"id": 43, "rating": 4343}\n' | kafka_produce ratings -p 0
wait_for 30 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE movie_id = 43")" = 1 ]' ||
	fail "worker 0 did not store the rating"
check_eq "the rating's transaction committed while the movie's was still open" \
	"1|0" "$(sleeping)|$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id = 43")"

wait_for_output 2 30
check_eq "the rating is joined once, when its movie's transaction went on" \
	"43|The Question|1980|4343|t" \
	"$(psql_q "SELECT r.movie_id, r.title, r.release_year, r.rating, x.joined
	             FROM pgkafka_join.rated_movies r JOIN pgkafka_join.ratings x USING (kafka_partition, kafka_offset)
	            WHERE r.movie_id = 43")"
check_eq "the output topic holds both results once" \
	'42	{"id":42,"title":"The Answer","release_year":1979,"rating":4242}
43	{"id":43,"title":"The Question","release_year":1980,"rating":4343}' "$(output_without_time)"
