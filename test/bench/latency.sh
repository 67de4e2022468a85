#!/bin/bash
#
# latency.sh
#		Latency benchmark of pgkafka_join against a real Kafka broker and a
#		real PostgreSQL cluster: how long a rating takes, from its Kafka
#		timestamp, until its result is visible to a read_committed consumer
#		of the output topic.
#
#	test/bench/latency.sh [--workers N] [--rate R] [--seconds S] [MOVIES]
#		defaults: 1 worker, 10000 ratings/s, 70 s (the first 10 of them a
#		warm-up), 100000 movies
#
# In one run, as root:
#	1. builds test/bench/latency.c into the scratch directory
#	   ($TEST_RUN_DIR/bench_latency), starts a broker (topics movies,
#	   ratings, rated_movies and kafka_alone, PGKJ_BENCH_PARTITIONS
#	   partitions each: default 3, or 6 with several workers) and a cluster
#	   with bench.sh's durable settings (fsync, synchronous_commit,
#	   full_page_writes on) and pgkafka_join.workers = N;
#	2. produces MOVIES movies (as bench.sh does), sets pgkafka_join.brokers
#	   and waits until every movie is stored and every worker is
#	   'consuming'; makes WAL files ready for reuse, as a server in
#	   service has them (see prepare_wal in common.sh);
#	3. Kafka alone: the same producer at the same rate, 10 s, to the plain
#	   topic kafka_alone, read back read_committed by the same consumer: the
#	   floor of the tools, without PostgreSQL or transactions;
#	4. steady: R ratings/s for S s to "ratings"; the latency of each result
#	   on rated_movies; p50/p90/p99/max of the first 10 s (warm-up) and of
#	   the rest (steady state), and per 10-s window; the CPU shares over the
#	   steady window (workers, other PostgreSQL processes, broker, rest of
#	   the machine, idle, time waiting for a core), as bench.sh samples them;
#	5. lone: after 5 s of quiet, 20 ratings one at a time, each 1.6 s after
#	   the previous result arrived (over 30 s in all, so that a stall every
#	   30 s would show), each latency printed;
#	6. a summary.
#
# The ratings carry no rated_at: the worker takes the message timestamp,
# which latency.c sets to the wall clock when it produces the rating.  See
# test/bench/latency.c.
#
# Every run checks exactness and fails (exit status 1) otherwise: each
# phase's consumer reads exactly one result per rating produced, no result
# id (header pgkafka_join.id) twice and nothing else; at the end,
# pgkafka_join.ratings and rated_movies hold one row per rating produced,
# nothing was rejected, publish_lag is 0 on every status row.
#
# Environment:
#	PGKJ_BENCH_PARTITIONS	partitions of every topic (default 3, or 6 when
#							--workers is above 1)
#	PGKJ_BENCH_CONF			extra postgresql.conf lines, one per line, added
#							last (e.g. "pgkafka_join.batch_delay = '10ms'")
#	PGKJ_BENCH_PRODUCER_LINGER_MS	linger.ms of the producer of the ratings
#							(default 0: each rating sent at once, in as many
#							requests as the broker takes; see latency.c)
#	PGKJ_BENCH_SETTINGS=defaults	run on PostgreSQL's defaults plus only
#							what README tells a DBA to set (see use_settings
#							in test/bench/common.sh; no huge pages
#							reserved), instead of the tuned settings
#	PGKJ_BENCH_HUGE_PAGES=off	do not reserve huge pages for the cluster
#							(by default, as root, enough 2 MB pages for its
#							shared memory are reserved for the run: see
#							test/bench/common.sh)
#	PGKJ_BENCH_FRESH_WAL=1	leave the new cluster's WAL as it is: each
#							16 MB WAL file is then created when first
#							reached, inside a commit of the worker
#	KEEP_RUNNING=1			leave the broker and the cluster running at exit

. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"

usage()
{
	echo "usage: $0 [--workers N] [--rate R] [--seconds S] [MOVIES]" >&2
	exit 2
}

WORKERS=1
RATE=10000
DURATION=70
MOVIES=100000
while [ $# -gt 0 ]; do
	case $1 in
		--workers|--rate|--seconds)
			[ $# -ge 2 ] || usage
			[[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "$1 must be a positive integer" >&2; exit 2; }
			case $1 in
				--workers) WORKERS=$2 ;;
				--rate) RATE=$2 ;;
				--seconds) DURATION=$2 ;;
			esac
			shift 2
			;;
		-*) usage ;;
		*) break ;;
	esac
done
[ $# -le 1 ] || usage
MOVIES=${1:-$MOVIES}
[[ "$MOVIES" =~ ^[1-9][0-9]*$ ]] || usage
[ "$WORKERS" -le 64 ] || { echo "--workers must be from 1 to 64" >&2; exit 2; }

# The first WARMUP seconds of the steady phase are reported apart.
WARMUP=10
[ "$DURATION" -gt "$WARMUP" ] || { echo "--seconds must be above the $WARMUP s of warm-up" >&2; exit 2; }
KAFKA_SECONDS=10
LONE_COUNT=20
LONE_PAUSE_MS=1600
# About 5 s of quiet before the lone ratings: QUIET_S here, then the
# program's start (1 s for its clients to connect) and the first pause.
QUIET_S=3

if [ "$WORKERS" -gt 1 ]; then
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-6}
else
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-3}
fi
[[ "$PARTITIONS" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "PGKJ_BENCH_PARTITIONS must be a positive integer" >&2; exit 2; }

RUN_START=$(now)

# run_latency NAME ARG ...: run the latency program with ARGs; its lines are
# shown (indented) and kept in $TEST_DIR/NAME.out, except the marks of the
# steady window, at which the CPU is sampled (CPU0 and T0, CPU1 and T1).
# Fails if the program does (its FAIL lines say why).
run_latency()
{
	local name=$1 line rc=

	shift
	: >"$TEST_DIR/$name.out"
	CPU0= CPU1= T0= T1=
	while IFS= read -r line; do
		case $line in
			"mark steady_start")
				T0=$(now)
				cpu_sample CPU0
				;;
			"mark steady_end")
				T1=$(now)
				cpu_sample CPU1
				;;
			"exit status "*)
				rc=${line#exit status }
				;;
			*)
				echo "#   $line"
				echo "$line" >>"$TEST_DIR/$name.out"
				;;
		esac
	done < <(set +e; "$LATENCY" "$@" 2>&1; echo "exit status $?")
	[ "$rc" = 0 ] || fail "latency $name failed (exit status ${rc:-unknown}), see above"
}

# stat_of NAME LABEL KEY: from the line "LABEL k=v k=v ..." of NAME.out, the
# value of KEY.
stat_of()
{
	awk -v l="$2" -v k="$3" '
		$1 == l {
			for (i = 2; i <= NF; i++)
				if (index($i, k "=") == 1) {
					print substr($i, length(k) + 2)
					exit
				}
		}' "$TEST_DIR/$1.out"
}


#
# 1. The program, the broker, the topics
#
test_init bench_latency
reserve_huge_pages
say "latency: $RATE ratings/s for $DURATION s (the first $WARMUP s a warm-up), $MOVIES movies, $PARTITIONS partitions, pgkafka_join.workers $WORKERS; scratch directory $TEST_DIR"

LATENCY=$TEST_DIR/latency
gcc -O2 -Wall -pthread -o "$LATENCY" "$TEST_TOP/test/bench/latency.c" -lrdkafka -lm ||
	fail "could not build test/bench/latency.c"

kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies kafka_alone; do
	kafka_create_topic "$topic" "$PARTITIONS"
done


#
# 2. Movies; the cluster
#
MOVIES_KAFKA=$TEST_DIR/movies.kafka
movies_file "$MOVIES" "$MOVIES_KAFKA"
produce_file movies "$MOVIES_KAFKA"
[ "$(topic_end movies)" = "$MOVIES" ] || fail "topic movies holds $(topic_end movies) messages, not $MOVIES"

PG_DIR=$TEST_DIR/pg
start_cluster "$WORKERS"
server_facts
SO_ID=$(so_id)
say "extension: $SO ($SO_ID)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average before the run: $LOAD_BEFORE"

t0=$(now)
reload_with pgkafka_join.brokers "$KAFKA_BOOTSTRAP"
wait_workers
wait_for 600 movies_stored || fail "the movies were not all stored within 600 s"
wait_for 60 workers_consuming ||
	fail "the workers are not all consuming: $(psql_q "SELECT string_agg(worker || ': ' || state, ', ') FROM pgkafka_join.status")"
[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] ||
	fail "pgkafka_join.movies does not hold $MOVIES rows"
say "$MOVIES movies stored in $(calc "$(now) - $t0" %.1f) s; workers consuming (pids ${WORKER_PIDS[*]})"
# about 300 bytes of WAL per rating (its row, its result, their indexes):
# 400 counted, and 64 MB more, for the lone ratings and to spare
prepare_wal $((RATE * DURATION * 400 / 1000000 + 64))
say "WAL: $WAL_READY"


#
# 3. Kafka alone
#
echo
say "--- Kafka alone: $RATE messages/s for $KAFKA_SECONDS s to kafka_alone, read back read_committed"
run_latency kafka kafka "$KAFKA_BOOTSTRAP" kafka_alone "$RATE" "$KAFKA_SECONDS"


#
# 4. Steady rate through the worker(s)
#
echo
say "--- steady: $RATE ratings/s for $DURATION s to ratings, results read from rated_movies (read_committed)"
run_latency steady steady "$KAFKA_BOOTSTRAP" ratings rated_movies "$MOVIES" "$RATE" "$DURATION" "$WARMUP"
[ -n "$CPU0" ] && [ -n "$CPU1" ] || fail "latency steady did not mark its steady window"
STEADY_S=$(calc "$T1 - $T0" %.2f)
check_workers "the steady phase"
say "steady window: $STEADY_S s"
cpu_report "$CPU0" "$CPU1" "$STEADY_S"
STEADY_CPU=$CPU_SHARES
NSTEADY=$(stat_of steady produced n)


#
# 5. Lone ratings on a quiet stream
#
echo
say "--- lone: $(calc "$QUIET_S + 1 + $LONE_PAUSE_MS / 1000") s quiet, then $LONE_COUNT ratings one at a time, each ${LONE_PAUSE_MS} ms after the previous result"
sleep "$QUIET_S"
run_latency lone lone "$KAFKA_BOOTSTRAP" ratings rated_movies "$MOVIES" "$LONE_COUNT" "$LONE_PAUSE_MS"
NRATINGS=$((NSTEADY + LONE_COUNT))


#
# Exactness as PostgreSQL sees it
#
echo
check_eq "pgkafka_join.ratings holds the $NRATINGS ratings produced" "$NRATINGS" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")"
check_eq "rated_movies holds $NRATINGS results" "$NRATINGS" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
check_eq "nothing was rejected" 0 \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")"
# each result was read from Kafka already; recording it as published may
# come a moment later
wait_for 30 all_published || fail "publish_lag is not 0 on every status row"
pass "publish_lag is 0 on each of the $NWORKERS status rows"
[ "$(so_id)" = "$SO_ID" ] ||
	say "WARNING: the extension was reinstalled during the run (now $(so_id)): the figures may mix two builds"


#
# 6. Summary
#
RUN_S=$(calc "$(now) - $RUN_START" %.0f)
STEADY_SECONDS=$((DURATION - WARMUP))
P99=$(stat_of steady steady p99)

cat <<EOF

=== pgkafka_join latency ===
latency at $RATE ratings/s for $STEADY_SECONDS s (after $WARMUP s): p50 $(stat_of steady steady p50) ms, p90 $(stat_of steady steady p90) ms, p99 $P99 ms, max $(stat_of steady steady max) ms (target p99 < 100 ms: $(verdict "$P99 < 100")); Kafka alone p50 $(stat_of kafka kafka p50) ms, p99 $(stat_of kafka kafka p99) ms
warm-up, first $WARMUP s: p50 $(stat_of steady warmup p50) ms, p90 $(stat_of steady warmup p90) ms, p99 $(stat_of steady warmup p99) ms, max $(stat_of steady warmup max) ms
lone rating: p50 $(stat_of lone lone p50) ms, max $(stat_of lone lone max) ms over $(stat_of lone lone n) (target: a few tens of ms)
ratings producer       linger.ms ${PGKJ_BENCH_PRODUCER_LINGER_MS:-0}
ratings produced       steady $NSTEADY at $(stat_of steady produced rate)/s (behind schedule at most $(stat_of steady produced behind_max_ms) ms), Kafka alone $(stat_of kafka produced n) at $(stat_of kafka produced rate)/s; all $NRATINGS results read exactly once
CPU, steady window     $STEADY_CPU
workers                $NWORKERS (pgkafka_join.workers), $PARTITIONS partitions per topic
batch_size             $BATCH_SIZE (batch_delay $BATCH_DELAY)
WAL                    $WAL_READY
extension              $SO_ID
PostgreSQL             $PG_VERSION ($DURABILITY, jit $JIT; $SETTINGS_SUMMARY)
librdkafka             $LIBRDKAFKA_VERSION (${LIBRDKAFKA:-?})
Kafka                  $KAFKA_VERSION (Scala 2.13, single broker, KRaft, on the same machine)
machine                $(nproc) cores, load average before $LOAD_BEFORE, now $(cut -d' ' -f1-3 /proc/loadavg); huge pages $HUGE_PAGES
whole run              $RUN_S s
EOF
