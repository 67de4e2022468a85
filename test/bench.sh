#!/bin/bash
#
# bench.sh
#		Benchmark of pgkafka_join against a real Kafka broker and a real
#		PostgreSQL cluster.
#
#	test/bench.sh [MOVIES] [RATINGS]		# defaults: 1000000 and 200000
#	test/bench.sh --workers 1,2,4 [MOVIES] [RATINGS]
#	PGKJ_BENCH_WORKERS="1 2 4" test/bench.sh [MOVIES] [RATINGS]
#
# In one run, as root:
#	1. starts a broker (topics movies, ratings, rated_movies, ratings_bench,
#	   3 partitions each, 6 when comparing worker counts) and a cluster
#	   with the extension preloaded but pgkafka_join.brokers empty, so the
#	   worker stays idle;
#	2. produces MOVIES movies to "movies" (not timed);
#	3. COPY baseline: a server-side COPY of the same rows into the same,
#	   empty pgkafka_join.movies; then TRUNCATE, VACUUM, CHECKPOINT;
#	4. catalog ingest: sets pgkafka_join.brokers and times the worker until
#	   input_offsets says all MOVIES messages are stored;
#	5. ratings: RATINGS ratings of loaded movies (no rated_at: the message
#	   time, inside the window) are produced to "ratings_bench" while the
#	   worker reads "ratings"; then pgkafka_join.ratings_topic is switched
#	   to "ratings_bench" and the clock runs until every rating is stored,
#	   joined and its result committed to Kafka: for every share, the
#	   highest result id recorded as published (published_ids()) reaches
#	   the share's highest result id (snapshot_shares());
#	6. prints a summary.
#
# Comparison of worker counts (--workers LIST or PGKJ_BENCH_WORKERS, counts
# separated by commas or spaces, e.g. "1 2 4"): the topics have 6 partitions
# (PGKJ_BENCH_PARTITIONS), the movies and ratings are produced once, and
# steps 3 to 5 run once per count, in the order given, each on a fresh
# cluster (initdb; the broker is kept) started with pgkafka_join.workers set
# to the count and its own output topic (rated_movies_run1, _run2, ...: the
# claims of the partitions are per output topic, so a run never waits for
# the previous cluster's claims to lapse).  So the runs differ only in
# pgkafka_join.workers.  After the details of each run it prints one summary
# line per count: catalog movies/s and its ratio to that run's COPY, ratings/s
# joined and published (and its ratio to the first 1-worker run), each also
# after the first batch stored (the workers connect and confirm their claims
# first, a fixed time), how the ratings fell to the workers (worker i
# consumes partitions p, p % workers = i), and the CPU shares of each timed
# phase, whole and after the first batch: the worker processes (backend_type
# "pgkafka_join worker") summed and each one, the other PostgreSQL
# processes, the broker, the rest of the machine, idle, and how long the
# threads of the workers and of the broker were ready to run but waited
# for a core (CPU contention).  Then whether several workers reach 2x the
# 1-worker ratings/s of the same run.
# The previous clusters' data directories are removed (their logs are kept as
# $TEST_DIR/server-runN.log); KEEP_RUNNING=1 leaves the last one running.
#
# Every run checks its outcome exactly: every offset stored, every result
# published, the output topic holding exactly RATINGS committed records with
# RATINGS distinct (share, id) headers, publish_lag 0 on every status row.
#
# Durability stays on (fsync, synchronous_commit, full_page_writes): the
# figures are those of a real server.  During each timed phase the CPU time
# of the worker(s), of the other PostgreSQL processes and of the broker is
# sampled from /proc and printed as a share of one core, with the run queue
# delay of the workers' and the broker's threads.
#
# Environment:
#	PGKJ_BENCH_WORKERS		worker counts to compare (see above); empty: one
#							run with the configured pgkafka_join.workers
#	PGKJ_BENCH_PARTITIONS	partitions of every topic (default 3, or 6 when
#							comparing worker counts)
#	PGKJ_BENCH_BATCH_SIZE	pgkafka_join.batch_size for the run (default:
#							the extension's default)
#	PGKJ_BENCH_TIMEOUT		seconds a timed phase may take (default 3600)
#	PGKJ_BENCH_CONF			extra postgresql.conf lines, one per line, added
#							last (e.g. "jit = off", or
#							"pgkafka_join.kafka_properties = 'queued.min.messages=1000000'"),
#							to measure a configuration against the defaults
#	KEEP_RUNNING=1			leave the servers running at exit (lib.sh), e.g.
#							to run test/bench/explain.sh against them

. "$(dirname "$0")/lib.sh"

usage()
{
	echo "usage: $0 [--workers N[,N...]] [MOVIES] [RATINGS]" >&2
	exit 2
}

WORKERS_LIST=${PGKJ_BENCH_WORKERS:-}
if [ "${1:-}" = --workers ]; then
	[ $# -ge 2 ] || usage
	WORKERS_LIST=$2
	shift 2
fi
MOVIES=${1:-1000000}
RATINGS=${2:-200000}
BATCH_SIZE=${PGKJ_BENCH_BATCH_SIZE:-}
TIMEOUT=${PGKJ_BENCH_TIMEOUT:-3600}

[[ "$MOVIES" =~ ^[1-9][0-9]*$ ]] || usage
[[ "$RATINGS" =~ ^[1-9][0-9]*$ ]] || usage
[ -z "$BATCH_SIZE" ] || [[ "$BATCH_SIZE" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "PGKJ_BENCH_BATCH_SIZE must be a positive integer" >&2; exit 2; }

# The runs: one per worker count when comparing, else one run with the
# configured pgkafka_join.workers ("" below).
read -r -a WORKER_COUNTS <<<"${WORKERS_LIST//,/ }"
if [ ${#WORKER_COUNTS[@]} -gt 0 ]; then
	COMPARE=true
	for n in "${WORKER_COUNTS[@]}"; do
		[[ "$n" =~ ^[1-9][0-9]*$ ]] && [ "$n" -le 64 ] ||
			{ echo "worker counts must be integers from 1 to 64, not \"$n\"" >&2; exit 2; }
	done
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-6}
else
	COMPARE=false
	WORKER_COUNTS=("")
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-3}
fi
[[ "$PARTITIONS" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "PGKJ_BENCH_PARTITIONS must be a positive integer" >&2; exit 2; }

RUN_START=$(date +%s.%N)
CLK_TCK=$(getconf CLK_TCK)

say()
{
	echo "# $*"
}

now()
{
	date +%s.%N
}

# calc EXPR: floating-point arithmetic, printed with the given awk format
calc()
{
	awk "BEGIN { printf \"${2:-%.1f}\", $1 }"
}

# Broker: the JVM's pid.  PostgreSQL: the postmaster's, its children's,
# the workers'.
broker_pid()
{
	cat "$KAFKA_DIR/broker.pid"
}

postmaster_pid()
{
	head -1 "$PG_DIR/data/postmaster.pid"
}

# The pids of the join workers, in the order of their numbers
# (application_name "pgkafka_join worker N"), separated by spaces.
worker_pids()
{
	psql_q "SELECT string_agg(pid::text, ' ' ORDER BY substring(application_name FROM '[0-9]+\$')::integer)
			  FROM pg_stat_activity
			 WHERE backend_type = 'pgkafka_join worker'
			   AND application_name ~ '^pgkafka_join worker [0-9]+\$'"
}

# wait_workers: set WORKER_PIDS once all $NWORKERS workers run.
wait_workers()
{
	local deadline=$((SECONDS + 60)) pids

	while :; do
		pids=$(worker_pids)
		read -r -a WORKER_PIDS <<<"$pids"
		[ ${#WORKER_PIDS[@]} -ne "$NWORKERS" ] || break
		[ $SECONDS -lt $deadline ] ||
			fail "${#WORKER_PIDS[@]} pgkafka_join workers running, not $NWORKERS"
		sleep 0.1
	done
}

# check_workers PHASE: the workers sampled are still the ones running (a
# worker that exited and was restarted would make the CPU shares wrong).
check_workers()
{
	[ "$(worker_pids)" = "${WORKER_PIDS[*]}" ] ||
		say "WARNING: the workers changed during $1 (pids ${WORKER_PIDS[*]}, now $(worker_pids)): its CPU shares are wrong"
}

# CPU time (user + system, in clock ticks) of the processes given, the ones
# that have exited counting 0.  With -c, the CPU time of their children that
# have exited and been waited for is added (the postmaster reaps its
# backends: so a finished COPY backend or psql session still counts).
cpu_ticks()
{
	local pid sum=0 stat children=false

	if [ "${1:-}" = -c ]; then
		children=true
		shift
	fi
	for pid in "$@"; do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		# fields after the command name, which is in parentheses
		stat=${stat##*) }
		set -- $stat
		sum=$((sum + ${12} + ${13}))
		if $children; then
			sum=$((sum + ${14} + ${15}))
		fi
	done
	echo "$sum"
}

# Time the threads of the processes given have spent runnable but waiting
# for a core (the run queue delay of /proc/PID/task/TID/schedstat), in ms.
runq_ms()
{
	local pid f sum=0 line

	for pid in "$@"; do
		for f in /proc/"$pid"/task/*/schedstat; do
			line=$(cat "$f" 2>/dev/null) || continue
			set -- $line
			sum=$((sum + $2))
		done
	done
	echo $((sum / 1000000))
}

# Busy and idle (with iowait) ticks of the whole machine, all cores.
machine_ticks()
{
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}

# cpu_sample: print "WORKERS PG_OTHER BROKER BUSY IDLE WQ BQ W0 W1 ..." in
# ticks, WORKERS being the sum of the join workers W0, W1, ... (WORKER_PIDS,
# in the order of their numbers; none yet: 0), PG_OTHER every other process
# of the cluster, exited backends included; WQ and BQ the run queue delay
# of the workers' and the broker's threads, in ms.  Each process is read
# once, so that what a worker used between two reads is not counted as
# another process's.
cpu_sample()
{
	local pm others pid sum=0 t
	local -a children each=()
	local -A ticks=()

	pm=$(postmaster_pid)
	mapfile -t children < <(pgrep -P "$pm" || true)
	others=$(cpu_ticks -c "$pm")
	for pid in "${children[@]}"; do
		ticks[$pid]=$(cpu_ticks "$pid")
	done
	for pid in "${WORKER_PIDS[@]}"; do
		t=${ticks[$pid]:-$(cpu_ticks "$pid")}
		each+=("$t")
		sum=$((sum + t))
		unset "ticks[$pid]"
	done
	for pid in "${!ticks[@]}"; do
		others=$((others + ticks[$pid]))
	done
	echo "$sum $others $(cpu_ticks "$(broker_pid)") $(machine_ticks)" \
		"$(runq_ms "${WORKER_PIDS[@]}") $(runq_ms "$(broker_pid)") ${each[*]}"
}

# cpu_report START_SAMPLE END_SAMPLE SECONDS: CPU used, in shares of one
# core; "rest of the machine" is everything else that kept the cores busy
# (kernel threads, this script and its psql and kcat, other users).  Then
# the time the workers' and the broker's threads were ready to run but
# waited for a core, in % of the phase (summed over threads): the CPU
# contention.  Also sets CPU_SHARES to the same figures, shorter, for the
# summary line.
cpu_report()
{
	local -a a=($1) b=($2)
	local secs=$3 rest workers i n each= wq bq

	share()
	{
		calc "100 * ($1) / $CLK_TCK / $secs" %.0f
	}
	rest="(${b[3]} - ${a[3]}) - (${b[0]} - ${a[0]}) - (${b[1]} - ${a[1]}) - (${b[2]} - ${a[2]})"
	n=$(( ${#b[@]} - 7 ))
	if [ $n -le 1 ]; then
		workers="worker $(share "${b[0]} - ${a[0]}")"
	else
		for ((i = 7; i < ${#b[@]}; i++)); do
			each+="${each:+ + }$(share "${b[i]} - ${a[i]:-0}")"
		done
		workers="$n workers $(share "${b[0]} - ${a[0]}") ($each)"
	fi
	# a worker sampled only at the end (none at the start) counts from 0
	wq=$(calc "100 * (${b[5]} - ${a[5]}) / 1000 / $secs" %.0f)
	[ ${#a[@]} -gt 7 ] || wq=-
	bq=$(calc "100 * (${b[6]} - ${a[6]}) / 1000 / $secs" %.0f)
	say "CPU, % of one core ($(nproc) cores = $(($(nproc) * 100))%): $workers," \
		"other PostgreSQL processes $(share "${b[1]} - ${a[1]}"), Kafka broker $(share "${b[2]} - ${a[2]}")," \
		"rest of the machine $(share "$rest"), idle $(share "${b[4]} - ${a[4]}");" \
		"waiting for a core: workers $wq, broker $bq"
	CPU_SHARES="$workers, other PG $(share "${b[1]} - ${a[1]}"), broker $(share "${b[2]} - ${a[2]}"), rest $(share "$rest"), idle $(share "${b[4]} - ${a[4]}"), waiting for a core: workers $wq, broker $bq"
}

# WAL position, and the WAL written since a position, in MB
wal_lsn()
{
	psql_q "SELECT pg_current_wal_insert_lsn()"
}

wal_mb()
{
	psql_q "SELECT round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$1') / 1048576.0)"
}

# reload_with NAME VALUE: ALTER SYSTEM SET + reload.
reload_with()
{
	psql_q "ALTER SYSTEM SET $1 = '$2'" >/dev/null
	psql_q "SELECT pg_reload_conf()" >/dev/null
}

# poll_until SQL [FIRST_SQL]: run SQL every 0.2 s until it returns "t";
# fail after TIMEOUT seconds.  With FIRST_SQL, a count (of messages stored,
# say), also set FIRST_AT to the time it was first seen above 0 (the first
# batch stored), FIRST_N to that count and FIRST_CPU to a CPU sample taken
# then; if the end comes first, FIRST_AT is the end and FIRST_N empty.
poll_until()
{
	local sql=$1 first=${2:-} deadline=$((SECONDS + TIMEOUT)) n

	FIRST_AT=
	FIRST_N=
	FIRST_CPU=
	until [ "$(psql_q "$sql")" = t ]; do
		[ $SECONDS -lt $deadline ] || fail "timed out after ${TIMEOUT}s waiting for: $sql"
		if [ -n "$first" ] && [ -z "$FIRST_AT" ]; then
			n=$(psql_q "$first")
			if [ "$n" -gt 0 ]; then
				FIRST_AT=$(now)
				FIRST_CPU=$(cpu_sample)
				FIRST_N=$n
			fi
		fi
		sleep 0.2
	done
	[ -n "$FIRST_AT" ] || FIRST_AT=$(now)
}

# after_first TOTAL END SAMPLE: the rate of the rest of the messages (TOTAL
# - FIRST_N) from FIRST_AT to END, and the CPU shares over that time, in
# AFTER_RATE and AFTER_CPU (CPU_SHARES of cpu_report); "n/a" if the first
# batch seen was the last.
after_first()
{
	local total=$1 end=$2 sample=$3 secs

	AFTER_RATE=n/a
	AFTER_CPU=n/a
	[ -n "$FIRST_N" ] || return 0
	secs=$(calc "$end - $FIRST_AT" %.2f)
	awk "BEGIN { exit !($secs >= 0.1) }" || return 0
	AFTER_RATE=$(calc "($total - $FIRST_N) / $secs" %.0f)
	say "after the first batch stored ($FIRST_N messages in $(calc "$FIRST_AT - $PHASE_START" %.1f) s): $((total - FIRST_N)) in $secs s = $AFTER_RATE/s"
	cpu_report "$FIRST_CPU" "$sample" "$secs"
	AFTER_CPU=$CPU_SHARES
}

# Produce a KEY<TAB>VALUE file to a topic quickly (not part of any figure).
# The key is the movie id, so a movie and its ratings share a partition
# number.
produce_file()
{
	local topic=$1 file=$2

	kcat -P -b "$KAFKA_BOOTSTRAP" -t "$topic" -K '\t' -l "$file" -q \
		-X log_level=3 \
		-X enable.idempotence=true -X partitioner=murmur2_random \
		-X linger.ms=50 -X batch.num.messages=10000 -X batch.size=4000000 \
		-X queue.buffering.max.messages=1000000 -X queue.buffering.max.kbytes=1048576 ||
		fail "kcat could not produce $file to $topic"
}

# Sum of the high watermarks of a topic's partitions.
topic_end()
{
	local topic=$1 p sum=0 end

	for ((p = 0; p < PARTITIONS; p++)); do
		end=$(kcat -Q -b "$KAFKA_BOOTSTRAP" -t "$topic:$p:-1" 2>/dev/null | awk '{ print $NF }')
		sum=$((sum + end))
	done
	echo "$sum"
}

# header NAME: from lines of output record headers (kcat's %h,
# "name=value,name=value"), the value of header NAME, or "none".
header()
{
	sed -E "s/(^|.*,)$1=([^,]*).*/\\2/; t; s/.*/none/"
}


#
# 1. Broker; data files; movies to Kafka
#
test_init bench
if $COMPARE; then
	say "bench: $MOVIES movies, $RATINGS ratings, $PARTITIONS partitions; pgkafka_join.workers ${WORKER_COUNTS[*]}; scratch directory $TEST_DIR"
else
	say "bench: $MOVIES movies, $RATINGS ratings; scratch directory $TEST_DIR"
fi
kafka_start "$TEST_DIR/kafka"
OUTPUT_TOPICS=()
if $COMPARE; then
	for ((run = 1; run <= ${#WORKER_COUNTS[@]}; run++)); do
		OUTPUT_TOPICS+=("rated_movies_run$run")
	done
else
	OUTPUT_TOPICS=(rated_movies)
fi
for topic in movies ratings ratings_bench "${OUTPUT_TOPICS[@]}"; do
	kafka_create_topic "$topic" "$PARTITIONS"
done

MOVIES_KAFKA=$TEST_DIR/movies.kafka
MOVIES_COPY=$TEST_DIR/movies.copy
RATINGS_KAFKA=$TEST_DIR/ratings.kafka

awk -v n="$MOVIES" 'BEGIN {
	for (i = 1; i <= n; i++)
		printf "%d\t{\"id\": %d, \"title\": \"Movie %d\", \"release_year\": %d}\n", i, i, i, 1900 + i % 120
}' >"$MOVIES_KAFKA"
# updated_at is now(), as the worker stores it
awk -v n="$MOVIES" -v ts="$(date -u '+%Y-%m-%d %H:%M:%S+00')" 'BEGIN {
	for (i = 1; i <= n; i++)
		printf "%d\tMovie %d\t%d\t%s\n", i, i, 1900 + i % 120, ts
}' >"$MOVIES_COPY"
awk -v n="$RATINGS" -v m="$MOVIES" 'BEGIN {
	srand(42)
	for (i = 1; i <= n; i++) {
		id = 1 + int(rand() * m)
		printf "%d\t{\"id\": %d, \"rating\": %.1f}\n", id, id, 1 + rand() * 9
	}
}' >"$RATINGS_KAFKA"
chmod 644 "$MOVIES_KAFKA" "$MOVIES_COPY" "$RATINGS_KAFKA"
chmod 755 "$TEST_DIR"

t0=$(now)
produce_file movies "$MOVIES_KAFKA"
t1=$(now)
[ "$(topic_end movies)" = "$MOVIES" ] || fail "topic movies holds $(topic_end movies) messages, not $MOVIES"
say "produced $MOVIES movies to Kafka in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"
RATINGS_PRODUCED=false

PG_DIR=$TEST_DIR/pg
PG_SETTINGS=(
	"shared_buffers = '2GB'"
	"wal_buffers = '64MB'"
	"max_wal_size = '8GB'"
	"min_wal_size = '1GB'"
	"checkpoint_timeout = '30min'"
	"checkpoint_completion_target = 0.9"
	"wal_compression = off"
	"work_mem = '64MB'"
	"maintenance_work_mem = '1GB'"
	"effective_cache_size = '16GB'"
	"fsync = on"
	"synchronous_commit = on"
	"full_page_writes = on"
	"pgkafka_join.database = 'postgres'"
	"pgkafka_join.brokers = ''"
	"pgkafka_join.retry_interval = '1s'"
)
[ -z "$BATCH_SIZE" ] || PG_SETTINGS+=("pgkafka_join.batch_size = $BATCH_SIZE")

# run_bench RUN WORKERS: steps 2 to 5 on a fresh cluster with
# pgkafka_join.workers = WORKERS ("": as configured), publishing to
# OUTPUT_TOPICS[RUN - 1]; the figures go to the R_* arrays, index RUN.
run_bench()
{
	local run=$1 workers=$2 output_topic=${OUTPUT_TOPICS[$1 - 1]}
	local -a settings=("${PG_SETTINGS[@]}") extra_conf
	local lsn0 t0 t1 t_stored cpu0 cpu1 copy_pid output_next output_headers kafka_txns
	local first_at first_n first_cpu

	#
	# 2. The cluster
	#
	if $COMPARE; then
		echo
		say "--- run $run of ${#WORKER_COUNTS[@]}: pgkafka_join.workers = $workers, output topic $output_topic"
		settings+=("pgkafka_join.workers = $workers" "pgkafka_join.output_topic = '$output_topic'")
		# the launcher and the workers, and room for parallel workers
		[ "$workers" -lt 7 ] || settings+=("max_worker_processes = $((workers + 2))")
	fi
	if [ -n "${PGKJ_BENCH_CONF:-}" ]; then
		mapfile -t extra_conf <<<"$PGKJ_BENCH_CONF"
		settings+=("${extra_conf[@]}")
	fi
	pg_start "$PG_DIR" "${settings[@]}"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
	NWORKERS=$(psql_q "SHOW pgkafka_join.workers")
	WORKER_PIDS=()

	if [ "$run" = 1 ]; then
		PG_VERSION=$(psql_q "SHOW server_version")
		BATCH_SIZE=$(psql_q "SHOW pgkafka_join.batch_size")
		BATCH_DELAY=$(psql_q "SHOW pgkafka_join.batch_delay")
		JIT=$(psql_q "SHOW jit")
		LIBRDKAFKA_VERSION=$(dpkg-query -W -f '${Version}' librdkafka1 2>/dev/null || echo "?")
		KAFKA_VERSION=$(basename "$(compgen -G "$TEST_TOP/.cache/kafka-libs/kafka_2.13-*.jar" | head -1)" .jar)
		KAFKA_VERSION=${KAFKA_VERSION#kafka_2.13-}
		SO=$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo "$PG_BIN/../lib")/pgkafka_join.so
		[ -f "$SO" ] || SO=/usr/lib/postgresql/15/lib/pgkafka_join.so
		LIBRDKAFKA=$(ldd "$SO" 2>/dev/null | awk '/librdkafka/ { print $3 }')

		say "PostgreSQL $PG_VERSION; settings:"
		psql_q "SELECT name || ' = ' || setting || coalesce(' ' || unit, '')
				  FROM pg_settings
				 WHERE name IN ('shared_buffers', 'wal_buffers', 'max_wal_size', 'min_wal_size',
								'checkpoint_timeout', 'checkpoint_completion_target', 'wal_compression',
								'work_mem', 'maintenance_work_mem', 'fsync', 'synchronous_commit',
								'full_page_writes', 'wal_level', 'jit', 'autovacuum',
								'pgkafka_join.batch_size', 'pgkafka_join.batch_delay',
								'pgkafka_join.workers')
					OR (name LIKE 'pgkafka_join.%' AND source NOT IN ('default', 'override'))
				 ORDER BY name" | sed 's/^/#   /'
		say "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB"
	fi
	# Others may rebuild the extension meanwhile: say which build was measured.
	R_SO_ID[run]="$(md5sum "$SO" | cut -c1-12), installed $(date -r "$SO" '+%F %T')"
	say "extension: $SO (${R_SO_ID[run]})"
	R_LOAD_BEFORE[run]=$(cut -d' ' -f1-3 /proc/loadavg)
	say "load average before the run: ${R_LOAD_BEFORE[run]}"

	#
	# 3. COPY baseline
	#
	psql_q "CHECKPOINT"
	lsn0=$(wal_lsn)
	cpu0=$(cpu_sample)
	t0=$(now)
	copy_pid=$(psql_q "SELECT pg_backend_pid();
COPY pgkafka_join.movies (id, title, release_year, updated_at) FROM '$MOVIES_COPY'")
	t1=$(now)
	# the backend's CPU time counts once the postmaster has reaped it
	for _ in $(seq 50); do
		[ -e "/proc/$copy_pid" ] || break
		sleep 0.1
	done
	cpu1=$(cpu_sample)
	R_COPY_S[run]=$(calc "$t1 - $t0" %.2f)
	R_COPY_RATE[run]=$(calc "$MOVIES / ${R_COPY_S[run]}" %.0f)
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] || fail "COPY did not load $MOVIES rows"
	say "COPY: $MOVIES rows in ${R_COPY_S[run]} s = ${R_COPY_RATE[run]} rows/s; WAL $(wal_mb "$lsn0") MB"
	cpu_report "$cpu0" "$cpu1" "${R_COPY_S[run]}"

	psql_q "TRUNCATE pgkafka_join.movies"
	psql_q "VACUUM pgkafka_join.movies"
	psql_q "CHECKPOINT"

	#
	# 4. Catalog ingest through the worker(s)
	#
	lsn0=$(wal_lsn)
	reload_with pgkafka_join.brokers "$KAFKA_BOOTSTRAP"
	t0=$(now)
	wait_workers
	cpu0=$(cpu_sample)
	PHASE_START=$t0
	poll_until "SELECT coalesce(sum(next_offset), 0) = $MOVIES FROM pgkafka_join.input_offsets WHERE topic = 'movies'" \
		"SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = 'movies'"
	t1=$(now)
	R_FIRST_MOVIES_S[run]=$(calc "$FIRST_AT - $t0" %.1f)
	cpu1=$(cpu_sample)
	check_workers "the catalog ingest"
	R_INGEST_S[run]=$(calc "$t1 - $t0" %.2f)
	R_INGEST_RATE[run]=$(calc "$MOVIES / ${R_INGEST_S[run]}" %.0f)
	R_INGEST_RATIO[run]=$(calc "${R_INGEST_RATE[run]} / ${R_COPY_RATE[run]}" %.2f)
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] ||
		fail "pgkafka_join.movies does not hold $MOVIES rows"
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")" = 0 ] ||
		fail "some movies were rejected"
	say "catalog ingest: $MOVIES movies in ${R_INGEST_S[run]} s = ${R_INGEST_RATE[run]} movies/s; COPY: ${R_COPY_S[run]} s = ${R_COPY_RATE[run]} rows/s; ratio ${R_INGEST_RATIO[run]}x COPY"
	say "first batch stored after ${R_FIRST_MOVIES_S[run]} s (connecting); WAL $(wal_mb "$lsn0") MB"
	cpu_report "$cpu0" "$cpu1" "${R_INGEST_S[run]}"
	R_INGEST_CPU[run]=$CPU_SHARES
	after_first "$MOVIES" "$t1" "$cpu1"
	R_INGEST_AFTER[run]=$AFTER_RATE
	R_INGEST_AFTER_CPU[run]=$AFTER_CPU

	#
	# 5. Ratings: stored, joined and published
	#
	if ! $RATINGS_PRODUCED; then
		t0=$(now)
		produce_file ratings_bench "$RATINGS_KAFKA"
		t1=$(now)
		RATINGS_PRODUCED=true
		say "produced $RATINGS ratings to Kafka in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"
	fi
	[ "$(topic_end ratings_bench)" = "$RATINGS" ] ||
		fail "topic ratings_bench holds $(topic_end ratings_bench) messages, not $RATINGS"
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = 0 ] ||
		fail "the worker read ratings too early"

	lsn0=$(wal_lsn)
	reload_with pgkafka_join.ratings_topic ratings_bench
	t0=$(now)
	cpu0=$(cpu_sample)
	# All stored (each one joined, its movie being there) ...
	PHASE_START=$t0
	poll_until "SELECT coalesce(sum(next_offset), 0) = $RATINGS FROM pgkafka_join.input_offsets WHERE topic = 'ratings_bench'" \
		"SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = 'ratings_bench'"
	t_stored=$(now)
	R_FIRST_RATINGS_S[run]=$(calc "$FIRST_AT - $t0" %.1f)
	first_at=$FIRST_AT first_n=$FIRST_N first_cpu=$FIRST_CPU
	# ... and every result committed to Kafka: for every share (each worker
	# publishes its own shares, ids growing in commit order within a share),
	# the highest id recorded as published reaches the share's highest
	# result id.  Every result is stored by now, so these ids are the last.
	poll_until "SELECT NOT EXISTS (SELECT 1 FROM pgkafka_join.snapshot_shares() s
									LEFT JOIN pgkafka_join.published_ids() p USING (share)
								   WHERE s.last_id > coalesce(p.last_id, 0))"
	t1=$(now)
	cpu1=$(cpu_sample)
	check_workers "the ratings phase"
	R_RATINGS_S[run]=$(calc "$t1 - $t0" %.2f)
	R_STORED_S[run]=$(calc "$t_stored - $t0" %.2f)
	R_RATINGS_RATE[run]=$(calc "$RATINGS / ${R_RATINGS_S[run]}" %.0f)

	check_eq "rated_movies holds $RATINGS results" "$RATINGS" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
	check_eq "every rating is joined" "$RATINGS" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE joined")"
	check_eq "publish_lag is 0 on each of the $NWORKERS status rows" "$NWORKERS 0" \
		"$(psql_q "SELECT count(*), coalesce(max(publish_lag), -1) FROM pgkafka_join.status" -F ' ')"
	# Every result was published at least once (above); the output topic
	# holding exactly RATINGS committed records, with RATINGS distinct
	# (share, id) headers, makes it exactly once.
	output_headers=$(kcat -C -b "$KAFKA_BOOTSTRAP" -t "$output_topic" -o beginning -e -q \
		-X isolation.level=read_committed -X log_level=3 -f '%h\n')
	check_eq "the output topic holds $RATINGS committed records (read_committed)" "$RATINGS" \
		"$(wc -l <<<"$output_headers")"
	output_headers=$(paste -d' ' <(header pgkafka_join.share <<<"$output_headers") \
		<(header pgkafka_join.id <<<"$output_headers"))
	check_eq "every output record has the headers pgkafka_join.share and pgkafka_join.id" 0 \
		"$(grep -c none <<<"$output_headers" || true)"
	check_eq "the output records carry $RATINGS distinct (share, id)" "$RATINGS" \
		"$(sort -u <<<"$output_headers" | wc -l)"
	output_next=$(psql_q "SELECT coalesce(sum(start_offset), 0) FROM pgkafka_join.output_position()")
	kafka_txns=$((output_next - RATINGS))
	# how the ratings fell to the workers (worker i: partitions p % workers = i)
	R_SPLIT[run]=$(psql_q "SELECT string_agg(round(100.0 * n / t)::text || '%', ' + ' ORDER BY w)
							 FROM (SELECT kafka_partition % $NWORKERS AS w, sum(next_offset) AS n
									 FROM pgkafka_join.input_offsets
									WHERE topic = 'ratings_bench'
									GROUP BY 1) x,
								  (SELECT sum(next_offset) AS t
									 FROM pgkafka_join.input_offsets
									WHERE topic = 'ratings_bench') y")
	say "ratings: $RATINGS ratings stored and joined in ${R_STORED_S[run]} s, published (Kafka commit) by ${R_RATINGS_S[run]} s = ${R_RATINGS_RATE[run]} ratings/s joined and published"
	say "ratings per worker (worker 0 first): ${R_SPLIT[run]} ($PARTITIONS partitions)"
	say "output_position(): sum(start_offset) = $output_next = $RATINGS records + $kafka_txns markers of committed Kafka transactions (the last ones excluded)"
	say "first batch stored after ${R_FIRST_RATINGS_S[run]} s (reconnecting); WAL $(wal_mb "$lsn0") MB"
	cpu_report "$cpu0" "$cpu1" "${R_RATINGS_S[run]}"
	R_RATINGS_CPU[run]=$CPU_SHARES
	FIRST_AT=$first_at FIRST_N=$first_n FIRST_CPU=$first_cpu
	after_first "$RATINGS" "$t1" "$cpu1"
	R_RATINGS_AFTER[run]=$AFTER_RATE
	R_RATINGS_AFTER_CPU[run]=$AFTER_CPU
	R_NWORKERS[run]=$NWORKERS
	R_LOAD_AFTER[run]=$(cut -d' ' -f1-3 /proc/loadavg)
	say "load average after the run: ${R_LOAD_AFTER[run]}"
}

NRUNS=${#WORKER_COUNTS[@]}
for ((run = 1; run <= NRUNS; run++)); do
	if [ "$run" -gt 1 ]; then
		# a fresh cluster for the next run, the log of this one kept apart
		pg_stop "$PG_DIR"
		mv "$PG_DIR/server.log" "$TEST_DIR/server-run$((run - 1)).log"
		rm -rf "$PG_DIR/data"
	fi
	run_bench "$run" "${WORKER_COUNTS[run - 1]}"
done


#
# 6. Summary
#
RUN_S=$(calc "$(now) - $RUN_START" %.0f)
per_s()
{
	if [ "$1" = n/a ]; then echo n/a; else echo "$1/s"; fi
}
verdict()
{
	if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "NOT met"; fi
}

if ! $COMPARE; then
	cat <<EOF

=== pgkafka_join benchmark ===
movies                 $MOVIES ($PARTITIONS partitions)
ratings                $RATINGS ($PARTITIONS partitions)
COPY baseline          ${R_COPY_S[1]} s = ${R_COPY_RATE[1]} rows/s
catalog ingest         ${R_INGEST_S[1]} s = ${R_INGEST_RATE[1]} movies/s = ${R_INGEST_RATIO[1]}x COPY   (target >= 0.5x: $(verdict "${R_INGEST_RATIO[1]} >= 0.5"))
ratings                ${R_RATINGS_S[1]} s = ${R_RATINGS_RATE[1]} ratings/s joined and published   (target >= 20000/s: $(verdict "${R_RATINGS_RATE[1]} >= 20000"))
                       (all stored and joined after ${R_STORED_S[1]} s; first batch after ${R_FIRST_RATINGS_S[1]} s, then $(per_s "${R_RATINGS_AFTER[1]}"))
workers                ${R_NWORKERS[1]} (pgkafka_join.workers)
batch_size             $BATCH_SIZE (batch_delay $BATCH_DELAY)
extension              ${R_SO_ID[1]}
PostgreSQL             $PG_VERSION (fsync on, synchronous_commit on, jit $JIT)
librdkafka             $LIBRDKAFKA_VERSION (${LIBRDKAFKA:-?})
Kafka                  $KAFKA_VERSION (Scala 2.13, single broker, KRaft, on the same machine)
machine                $(nproc) cores, load average before ${R_LOAD_BEFORE[1]}, now $(cut -d' ' -f1-3 /proc/loadavg)
whole run              $RUN_S s
EOF
	exit 0
fi

# The first 1-worker run is the reference of the ratios.
REF=
for ((run = 1; run <= NRUNS; run++)); do
	if [ "${R_NWORKERS[run]}" = 1 ]; then
		REF=$run
		break
	fi
done

echo
echo "=== pgkafka_join benchmark: pgkafka_join.workers ${WORKER_COUNTS[*]}; $MOVIES movies, $RATINGS ratings, $PARTITIONS partitions ==="
echo "(CPU in % of one core, $(nproc) cores = $(($(nproc) * 100))%, in the timed phase; per worker in parentheses, worker 0 first; load = 1-minute load average before -> after the run)"
# x_ref RATE REF_RATE: " = 1.23x 1 worker", or nothing
x_ref()
{
	[ -n "$REF" ] && [ "$1" != n/a ] && [ "$2" != n/a ] || return 0
	echo " = $(calc "$1 / $2" %.2f)x 1 worker"
}
for ((run = 1; run <= NRUNS; run++)); do
	echo "workers ${R_NWORKERS[run]}:" \
		"catalog ${R_INGEST_RATE[run]} movies/s = ${R_INGEST_RATIO[run]}x COPY (${R_COPY_RATE[run]} rows/s)," \
		"first batch after ${R_FIRST_MOVIES_S[run]} s, then $(per_s "${R_INGEST_AFTER[run]}");" \
		"ratings ${R_RATINGS_RATE[run]}/s joined and published$(x_ref "${R_RATINGS_RATE[run]}" "${R_RATINGS_RATE[REF]:-}")," \
		"first batch after ${R_FIRST_RATINGS_S[run]} s, then $(per_s "${R_RATINGS_AFTER[run]}")$(x_ref "${R_RATINGS_AFTER[run]}" "${R_RATINGS_AFTER[REF]:-}")," \
		"per worker ${R_SPLIT[run]};" \
		"CPU ratings: ${R_RATINGS_CPU[run]}, after the first batch: ${R_RATINGS_AFTER_CPU[run]};" \
		"CPU catalog: ${R_INGEST_CPU[run]}, after the first batch: ${R_INGEST_AFTER_CPU[run]};" \
		"load ${R_LOAD_BEFORE[run]%% *} -> ${R_LOAD_AFTER[run]%% *}"
done
if [ -n "$REF" ]; then
	best=
	for ((run = 1; run <= NRUNS; run++)); do
		[ "${R_NWORKERS[run]}" -gt 1 ] || continue
		if [ -z "$best" ] || [ "${R_RATINGS_RATE[run]}" -gt "${R_RATINGS_RATE[best]}" ]; then
			best=$run
		fi
	done
	if [ -n "$best" ]; then
		speedup=$(calc "${R_RATINGS_RATE[best]} / ${R_RATINGS_RATE[REF]}" %.2f)
		echo "target: ratings joined and published with several workers >= 2x the 1-worker figure of this run:" \
			"best ${R_NWORKERS[best]} workers ${R_RATINGS_RATE[best]}/s = ${speedup}x ${R_RATINGS_RATE[REF]}/s ($(verdict "$speedup >= 2"))"
		if [ "${R_RATINGS_AFTER[best]}" != n/a ] && [ "${R_RATINGS_AFTER[REF]}" != n/a ]; then
			speedup=$(calc "${R_RATINGS_AFTER[best]} / ${R_RATINGS_AFTER[REF]}" %.2f)
			echo "        the same after the first batch stored (the time to connect left out):" \
				"${R_RATINGS_AFTER[best]}/s = ${speedup}x ${R_RATINGS_AFTER[REF]}/s ($(verdict "$speedup >= 2"))"
		fi
	fi
fi
for ((run = 2; run <= NRUNS; run++)); do
	[ "${R_SO_ID[run]}" = "${R_SO_ID[1]}" ] ||
		echo "WARNING: the extension was reinstalled during the runs: run $run measured ${R_SO_ID[run]}"
done
cat <<EOF
batch_size $BATCH_SIZE (batch_delay $BATCH_DELAY); extension ${R_SO_ID[1]}
PostgreSQL $PG_VERSION (fsync on, synchronous_commit on, jit $JIT); librdkafka $LIBRDKAFKA_VERSION; Kafka $KAFKA_VERSION (single broker, same machine)
machine $(nproc) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg); whole run $RUN_S s
EOF
