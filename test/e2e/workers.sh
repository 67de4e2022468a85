#!/bin/bash
#
# workers.sh
#		Several join workers in one server (pgkafka_join.workers): who owns
#		which input partition, joins across workers, results pending while
#		the number of workers changes, input topics that are not
#		co-partitioned.
#
# One Kafka broker, one PostgreSQL cluster, input topics of 6 partitions.
# Every message pair is a movie keyed by its id ("<m>") and one rating of
# it keyed "r<m>", with rating value m: the pairs are chosen so that the
# movie and the rating land on partitions owned by different workers both
# with 3 workers (partition % 3) and with 2 (partition % 2).  Each phase has
# its own range of movie ids (1000.., 2000.., ...); the pairs are also kept
# in a table public.pairs (phase, movie_id, movie_part, rating_part) for the
# checks.  A result is identified by its id, its share, its movie and its
# rating: on the output topic, "pgkafka_join.id" and "pgkafka_join.share"
# headers and the value's "id" and "rating"; in rated_movies, the columns.
# "Every result exactly once" means: the committed (read_committed) records
# of the output topic are exactly the rows of rated_movies, none twice, and
# every pair has exactly one result.
#
#	1. Results pending at a change 1 -> 3 workers: with workers = 1 the
#	   output topic does not exist; 150 pairs (movies first, so each share is
#	   the rating's partition) are joined and stored, not published.  The
#	   single worker owns partitions '0-5' and shows the 150 as publish_lag.
#	   Restart with workers = 3: each worker's publish_lag is the count of
#	   pending results of its shares.  The output topic is created: every
#	   result exactly once.
#	2. Status per worker: 3 rows, workers 0, 1, 2 owning '0,3', '1,4',
#	   '2,5', each 'consuming', each with a live pid of its own;
#	   input_status gives partition p of both topics to worker p % 3.
#	3. Joins across workers, 300 pairs: 100 ratings stored first, then their
#	   movies (share = the movie's partition); 100 movies stored first, then
#	   their ratings (share = the rating's partition); 100 pairs produced
#	   concurrently in chunks of 5, the movies and the ratings of a chunk at
#	   the same moment, with small batches (share = the rating's or the movie's partition, or, for
#	   a rating joined by the rejoin pass after two concurrent batches, the
#	   first partition of the worker that ran it).  Every result exactly
#	   once, no rating left unjoined.
#	4. Results pending at a change 3 -> 2 workers: output_topic is switched
#	   (reload) to rated_movies_b, which does not exist; 150 more pairs are
#	   joined, not published.  Restart with workers = 2 ('0,2,4', '1,3,5'),
#	   create rated_movies_b.  Publish positions are kept per output topic
#	   (docs/scaling.md: a new output topic receives every result): rated_movies_b
#	   gets every result, the 150 pending ones included, exactly once, and
#	   rated_movies keeps the 450 it had.  publish_lag, read before
#	   rated_movies_b exists, must count each worker's results not yet on
#	   it (all 600, by share), checked last so that the rest runs anyway.
#	5. Input topics not co-partitioned: movies2 (4 partitions) and ratings2
#	   (6), holding messages, are set (reload): every worker's state becomes
#	   'waiting: topics not co-partitioned', a WARNING "are not
#	   co-partitioned" is logged, the pids stay, nothing of those topics is
#	   stored (no input_offsets row, no movie, rating or rejected message).
#	   The topics are set back: 30 new pairs, published to rated_movies_b,
#	   which then holds every result exactly once.

. "$(dirname "$0")/setup.sh"

test_init workers
kafka_start "$TEST_DIR/kafka"
kafka_create_topic movies 6
kafka_create_topic ratings 6
PG_DIR=$TEST_DIR/pg
LOG=$PG_DIR/server.log
CONF=$PG_DIR/data/postgresql.conf
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'" \
	"pgkafka_join.batch_size = 20" \
	"pgkafka_join.batch_delay = '10ms'" \
	"pgkafka_join.workers = 1"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null

# The pairs of every phase: DIR/PHASE.movies and DIR/PHASE.ratings (lines
# for kafka_produce), DIR/pairs.sql (rows of public.pairs).
python3 - "$TEST_DIR" "$TEST_TOP/test/kafka" <<'PY'
import sys
out, kafka_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, kafka_dir)
from murmur2_partition import murmur2

def part(key):
    return (murmur2(key.encode()) & 0x7FFFFFFF) % 6

phases = [("p1", 1000, 150), ("a", 2000, 100), ("b", 3000, 100),
          ("c", 4000, 100), ("p3", 5000, 150), ("back", 6000, 30),
          ("x", 9000, 20)]
with open(f"{out}/pairs.sql", "w") as sql:
    sql.write("CREATE TABLE public.pairs (phase text, movie_id bigint PRIMARY KEY,"
              " movie_part integer, rating_part integer);\n")
    for name, base, n in phases:
        with open(f"{out}/{name}.movies", "w") as mv, \
             open(f"{out}/{name}.ratings", "w") as rt:
            m = base
            while n > 0:
                mp, rp = part(str(m)), part(f"r{m}")
                # other worker with 3 workers and with 2
                if mp % 3 != rp % 3 and mp % 2 != rp % 2:
                    mv.write(f'{m}\t{{"id": {m}, "title": "Movie {m}"}}\n')
                    rt.write(f'r{m}\t{{"id": {m}, "rating": {m}}}\n')
                    sql.write(f"INSERT INTO public.pairs VALUES ('{name}', {m}, {mp}, {rp});\n")
                    n -= 1
                m += 1
            assert m < base + 1000
PY
psql_q <"$TEST_DIR/pairs.sql"

q() { psql_q "$@"; }
results() { q "SELECT count(*) FROM pgkafka_join.rated_movies"; }
stored_movies() { q "SELECT count(*) FROM pgkafka_join.movies"; }
stored_ratings() { q "SELECT count(*) FROM pgkafka_join.ratings"; }
log_count() { grep -cF -- "$1" "$LOG" || true; }

# topic_rows TOPIC: "id|share|movie|rating" of every committed record, by id
topic_rows()
{
	kafka_consume "$1" -f '%h\t%s\n' | python3 -c '
import json, sys
rows = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line:
        continue
    h, v = line.split("\t", 1)
    hd = dict(kv.split("=", 1) for kv in h.split(",") if "=" in kv)
    j = json.loads(v)
    rows.append((int(hd.get("pgkafka_join.id", -1)),
                 int(hd.get("pgkafka_join.share", -99)), j["id"], j["rating"]))
for r in sorted(rows):
    print("%d|%d|%d|%g" % r)'
}

# table_rows: the same of rated_movies
table_rows()
{
	q "SELECT id, share, movie_id, rating FROM pgkafka_join.rated_movies ORDER BY id"
}

topic_count() { kafka_consume "$1" | wc -l; }

# wait_topic TOPIC N: until TOPIC holds N committed records, and 2 s more
# (for a duplicate to show)
wait_topic()
{
	wait_for 90 "[ \"\$(topic_count $1)\" -ge $2 ]" ||
		fail "$1 did not reach $2 records (has $(topic_count "$1"))"
	sleep 2
}

# wait_results N: until rated_movies holds N rows
wait_results()
{
	wait_for 90 "[ \"\$(results)\" = $1 ]" ||
		fail "rated_movies did not reach $1 rows (has $(results))"
}

# check_pairs PHASES: every pair of those phases has exactly one result,
# every rating of them is joined
check_pairs()
{
	check_eq "phases $1: every pair has exactly one result, no rating left unjoined" "0|0" \
		"$(q "SELECT (SELECT count(*) FROM public.pairs p
		                WHERE p.phase = ANY ('{$1}')
		                  AND (SELECT count(*) FROM pgkafka_join.rated_movies r
		                        WHERE r.movie_id = p.movie_id AND r.rating = p.movie_id) <> 1),
		             (SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined)")"
}

# status_rows: "worker|owned_partitions|state" per worker
status_rows() { q "SELECT worker, owned_partitions, state FROM pgkafka_join.status ORDER BY worker"; }

# lags: publish_lag per worker, "L0,L1,..."
lags() { q "SELECT string_agg(publish_lag::text, ',' ORDER BY worker) FROM pgkafka_join.status"; }

# restart_with_workers N
restart_with_workers()
{
	sed -i "s/^pgkafka_join.workers = .*/pgkafka_join.workers = $1/" "$CONF"
	pg_restart "$PG_DIR"
	wait_for 60 "[ \"\$(q 'SELECT count(*) FROM pgkafka_join.status WHERE pid IS NOT NULL')\" = $1 ]" ||
		fail "$1 workers did not start: $(q "SELECT * FROM pgkafka_join.status")"
}

# produce_movies PHASE [TOPIC], produce_ratings PHASE [TOPIC]
produce_movies() { kafka_produce "${2:-movies}" <"$TEST_DIR/$1.movies"; }
produce_ratings() { kafka_produce "${2:-ratings}" <"$TEST_DIR/$1.ratings"; }

t0=$SECONDS

# --- 1. results pending, 1 -> 3 workers
produce_movies p1
wait_for 60 '[ "$(stored_movies)" = 150 ]' || fail "the movies were not stored ($(stored_movies))"
produce_ratings p1
wait_results 150
check_eq "one worker owning every partition, every result pending" \
	"0|0-5|consuming|150" \
	"$(q "SELECT worker, owned_partitions, state, publish_lag FROM pgkafka_join.status")"
check_eq "the wait for the output topic is logged" "1" \
	"$(log_count 'pgkafka_join is waiting for the output topic "rated_movies"')"
check_eq "nothing is published" "0" "$(q "SELECT count(*) FROM pgkafka_join.output_status")"
check_eq "each result's share is its rating's partition (the movie was there first)" "150|150" \
	"$(q "SELECT count(*) FILTER (WHERE r.share = p.rating_part AND r.kafka_partition = p.rating_part), count(*)
	        FROM pgkafka_join.rated_movies r JOIN public.pairs p USING (movie_id) WHERE p.phase = 'p1'")"

restart_with_workers 3
expected_lags=$(q "SELECT string_agg(n::text, ',' ORDER BY w) FROM
                     (SELECT w, (SELECT count(*) FROM pgkafka_join.rated_movies WHERE share % 3 = w) AS n
                        FROM generate_series(0, 2) w) x")
echo "# pending results per worker after the restart with 3 workers: $expected_lags"
wait_for 30 '[ "$(lags)" = "$expected_lags" ]' || true
check_eq "after the restart each worker shows the pending results of its shares as publish_lag" \
	"$expected_lags" "$(lags)"
check_eq "still nothing published, nothing lost" "0|150" \
	"$(q "SELECT (SELECT count(*) FROM pgkafka_join.output_status), count(*) FROM pgkafka_join.rated_movies")"

kafka_create_topic rated_movies 6
wait_topic rated_movies 150
check_eq "1 -> 3 workers: every pending result published exactly once, with its id and share" \
	"$(table_rows)" "$(topic_rows rated_movies)"
wait_for 30 '[ "$(lags)" = "0,0,0" ]' || fail "publish_lag did not drop to 0: $(lags)"
pass "publish_lag is 0 on every worker"

# --- 2. status per worker
wait_for 30 '[ "$(q "SELECT count(*) FROM pgkafka_join.status WHERE state = '\''consuming'\''")" = 3 ]' || true
check_eq "status: one row per worker, its partitions, consuming, with a pid" "$(cat <<'EOF2'
0|0,3|consuming|t
1|1,4|consuming|t
2|2,5|consuming|t
EOF2
)" "$(q "SELECT worker, owned_partitions, state, pid IS NOT NULL FROM pgkafka_join.status ORDER BY worker")"
check_eq "three distinct pids, each a live server process" "3|3" \
	"$(q "SELECT count(DISTINCT pid), (SELECT count(*) FROM pg_stat_activity
	                                     WHERE pid IN (SELECT pid FROM pgkafka_join.status))
	        FROM pgkafka_join.status")"
expected_input=$(for t in movies ratings; do for p in 0 1 2 3 4 5; do echo "$t|$p|$((p % 3))"; done; done)
wait_for 30 '[ "$(q "SELECT topic, kafka_partition, worker FROM pgkafka_join.input_status ORDER BY 1, 2")" = "$expected_input" ]' || true
check_eq "input_status: partition p of both topics consumed by worker p % 3" "$expected_input" \
	"$(q "SELECT topic, kafka_partition, worker FROM pgkafka_join.input_status ORDER BY 1, 2")"

# --- 3. joins across workers
# a. ratings first
produce_ratings a
wait_for 60 '[ "$(stored_ratings)" = 250 ]' || fail "the ratings were not stored ($(stored_ratings))"
check_eq "100 ratings without their movie wait" "150|100" \
	"$(q "SELECT (SELECT count(*) FROM pgkafka_join.rated_movies), count(*) FROM pgkafka_join.ratings WHERE NOT joined")"
produce_movies a
wait_results 250
check_eq "ratings first: each result made by the movie's worker (share = the movie's partition)" "100|100" \
	"$(q "SELECT count(*) FILTER (WHERE r.share = p.movie_part), count(*)
	        FROM pgkafka_join.rated_movies r JOIN public.pairs p USING (movie_id) WHERE p.phase = 'a'")"
# b. movies first
produce_movies b
wait_for 60 '[ "$(stored_movies)" = 350 ]' || fail "the movies were not stored ($(stored_movies))"
check_eq "100 movies without ratings, no result yet" "250" "$(results)"
produce_ratings b
wait_results 350
check_eq "movies first: each result made by the rating's worker (share = the rating's partition)" "100|100" \
	"$(q "SELECT count(*) FILTER (WHERE r.share = p.rating_part AND r.kafka_partition = p.rating_part), count(*)
	        FROM pgkafka_join.rated_movies r JOIN public.pairs p USING (movie_id) WHERE p.phase = 'b'")"
# c. concurrently: 20 chunks of 5 pairs, the movies and the ratings of a
# chunk produced at the same moment
split -l 5 -d "$TEST_DIR/c.movies" "$TEST_DIR/c.movies."
split -l 5 -d "$TEST_DIR/c.ratings" "$TEST_DIR/c.ratings."
for f in "$TEST_DIR"/c.movies.*; do
	kafka_produce movies <"$f" &
	pm=$!
	kafka_produce ratings <"$TEST_DIR/c.ratings.${f##*.}" || fail "producing the ratings failed"
	wait $pm || fail "producing the movies failed"
done
wait_results 450
# A result's share is a partition of the worker that made it: the rating's
# (joined as it is stored, or by the rejoin pass that follows two
# concurrent batches: run_rejoins), or the movie's (a waiting rating joined
# by its movie).  (rejoin.sh makes the concurrent case happen on purpose.)
check_eq "concurrent: each result's share is the rating's or the movie's partition" "100|100" \
	"$(q "SELECT count(*) FILTER (WHERE r.share IN (p.movie_part, p.rating_part)), count(*)
	        FROM pgkafka_join.rated_movies r JOIN public.pairs p USING (movie_id) WHERE p.phase = 'c'")"
echo "# concurrent pairs: $(q "SELECT count(*) FILTER (WHERE r.share = p.rating_part) || ' results of the rating''s partition, '
                                    || count(*) FILTER (WHERE r.share = p.movie_part) || ' of the movie''s'
                               FROM pgkafka_join.rated_movies r JOIN public.pairs p USING (movie_id) WHERE p.phase = 'c'"); $(q "SELECT sum(rejoined_total) FROM pgkafka_join.status") made by rejoin passes"
check_pairs p1,a,b,c
wait_topic rated_movies 450
check_eq "joins across workers: every result published exactly once, with its id and share" \
	"$(table_rows)" "$(topic_rows rated_movies)"
topic_before=$(topic_rows rated_movies)

# --- 4. results pending, 3 -> 2 workers
# Publish positions are kept per output topic: the new output topic gets
# every result, those already on rated_movies and the 150 of the pairs
# produced after the switch, which are pending at the restart.
psql_q "ALTER SYSTEM SET pgkafka_join.output_topic = 'rated_movies_b'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
sleep 3
produce_movies p3
wait_for 60 '[ "$(stored_movies)" = 600 ]' || fail "the movies were not stored ($(stored_movies))"
produce_ratings p3
wait_results 600
wait_for 30 '[ "$(log_count "pgkafka_join is waiting for the output topic \"rated_movies_b\"")" -ge 1 ]' ||
	fail "the wait for rated_movies_b is not logged"
pass "the workers wait for rated_movies_b"
check_eq "the 150 new results are stored, not published: rated_movies did not change" \
	"$topic_before" "$(topic_rows rated_movies)"

restart_with_workers 2
check_eq "status with 2 workers" "$(cat <<'EOF2'
0|0,2,4
1|1,3,5
EOF2
)" "$(q "SELECT worker, owned_partitions FROM pgkafka_join.status ORDER BY worker")"
# What publish_lag must show: per worker, the results of its shares not
# published to rated_movies_b (all of them).  Checked at the end, so that
# a wrong count does not hide the rest.
expected_lags_b=$(q "SELECT string_agg(n::text, ',' ORDER BY w) FROM
                       (SELECT w, (SELECT count(*) FROM pgkafka_join.rated_movies r
                                    WHERE r.share % 2 = w) AS n
                          FROM generate_series(0, 1) w) x")
echo "# pending results per worker after the restart with 2 workers: $expected_lags_b"
wait_for 10 '[ "$(lags)" = "$expected_lags_b" ]' || true
lags_b=$(lags)
kafka_create_topic rated_movies_b 2
wait_topic rated_movies_b 600
check_eq "3 -> 2 workers: rated_movies_b holds every result once, the 150 pending ones included, with id and share" \
	"$(table_rows)" "$(topic_rows rated_movies_b | sort -t'|' -k1,1n)"
check_eq "rated_movies did not change" "$topic_before" "$(topic_rows rated_movies)"
check_eq "no duplicate on rated_movies_b by (share, id) nor by rating" "600|600|600" \
	"$(topic_rows rated_movies_b |
	   awk -F'|' '{ si[$2 "|" $1]; r[$4] } END { print NR "|" length(si) "|" length(r) }')"
check_pairs p1,a,b,c,p3
wait_for 30 '[ "$(lags)" = "0,0" ]' || fail "publish_lag did not drop to 0: $(lags)"
pass "publish_lag is 0 on both workers"

# --- 5. input topics not co-partitioned
kafka_create_topic movies2 4
kafka_create_topic ratings2 6
produce_movies x movies2
produce_ratings x ratings2
pids=$(q "SELECT string_agg(pid::text, ',' ORDER BY worker) FROM pgkafka_join.status")
mark=$(stat -c %s "$LOG")
psql_q "ALTER SYSTEM SET pgkafka_join.movies_topic = 'movies2'" >/dev/null
psql_q "ALTER SYSTEM SET pgkafka_join.ratings_topic = 'ratings2'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
refused="waiting: topics not co-partitioned"
wait_for 30 "[ \"\$(q \"SELECT string_agg(state, ',' ORDER BY worker) FROM pgkafka_join.status\")\" = '$refused,$refused' ]" ||
	fail "the workers do not refuse: $(status_rows)"
sleep 4		# a few retry intervals
check_eq "every worker waits: topics not co-partitioned" "$(cat <<EOF2
0|0,2,4|$refused
1|1,3,5|$refused
EOF2
)" "$(status_rows)"
check_eq "the workers kept their pids" "$pids" \
	"$(q "SELECT string_agg(pid::text, ',' ORDER BY worker) FROM pgkafka_join.status")"
warnings=$(tail -c +$((mark + 1)) "$LOG" | grep -c 'WARNING: .*are not co-partitioned' || true)
echo "# WARNING lines \"are not co-partitioned\": $warnings"
[ "$warnings" -ge 1 ] || fail "no WARNING \"are not co-partitioned\" was logged"
pass "a WARNING says the topics are not co-partitioned"
check_eq "nothing of movies2 and ratings2 stored: no offset, movie, rating, rejected message" "0|0|0|0|600|600" \
	"$(q "SELECT (SELECT count(*) FROM pgkafka_join.input_offsets WHERE topic IN ('movies2', 'ratings2')),
	             (SELECT count(*) FROM pgkafka_join.movies WHERE id >= 9000),
	             (SELECT count(*) FROM pgkafka_join.ratings WHERE movie_id >= 9000),
	             (SELECT count(*) FROM pgkafka_join.rejected_messages),
	             (SELECT count(*) FROM pgkafka_join.movies),
	             (SELECT count(*) FROM pgkafka_join.ratings)")"

psql_q "ALTER SYSTEM RESET pgkafka_join.movies_topic" >/dev/null
psql_q "ALTER SYSTEM RESET pgkafka_join.ratings_topic" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
wait_for 30 '[ "$(q "SELECT string_agg(state, '\'','\'' ORDER BY worker) FROM pgkafka_join.status")" = "consuming,consuming" ]' ||
	fail "the workers do not consume again: $(status_rows)"
pass "pointed back at movies and ratings, the workers consume again"
head -n 15 "$TEST_DIR/back.ratings" | kafka_produce ratings
produce_movies back
tail -n +16 "$TEST_DIR/back.ratings" | kafka_produce ratings
wait_results 630
wait_topic rated_movies_b 630
check_eq "after the topics are set back, rated_movies_b holds every result exactly once" \
	"$(table_rows)" "$(topic_rows rated_movies_b | sort -t'|' -k1,1n)"
check_eq "the 30 new results went to rated_movies_b only" "630|450" \
	"$(topic_rows rated_movies_b | wc -l)|$(topic_rows rated_movies | wc -l)"
check_pairs p1,a,b,c,p3,back
check_eq "nothing of movies2 and ratings2 was ever stored" "0|0" \
	"$(q "SELECT (SELECT count(*) FROM pgkafka_join.input_offsets WHERE topic IN ('movies2', 'ratings2')),
	             (SELECT count(*) FROM pgkafka_join.ratings WHERE movie_id >= 9000)")"
check_eq "no worker exited since the topics were switched" "0" \
	"$(tail -c +$((mark + 1)) "$LOG" | grep -c 'exited with exit code\|terminated by signal' || true)"
echo "# run time: $((SECONDS - t0)) s after the set-up"
check_eq "after the restart with 2 workers, before rated_movies_b existed, publish_lag counted the pending results of each worker's shares" \
	"$expected_lags_b" "$lags_b"
