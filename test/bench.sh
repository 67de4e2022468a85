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
#	3. COPY baseline: the same rows into the same, empty
#	   pgkafka_join.movies, by as many server-side COPY sessions at once
#	   as there are workers, each a share of the movies (id % sessions),
#	   in binary format, of the columns the worker's own COPY gives (id,
#	   title, release_year; updated_at left to its default, now()); the
#	   files are written by the server first (not timed), and WAL files
#	   are made ready for reuse (prepare_wal in bench/common.sh) so that
#	   the COPY, like the worker after it, writes its WAL into recycled
#	   files; neither is timed through a checkpoint; then TRUNCATE,
#	   VACUUM, CHECKPOINT (which recycles the COPY's WAL files for the
#	   worker);
#	4. catalog ingest: sets pgkafka_join.brokers and times the worker until
#	   input_offsets says all MOVIES messages are stored; then VACUUM
#	   (ANALYZE) and CHECKPOINT, not timed: the ratings meet a settled
#	   catalog, as on a server that loaded it earlier;
#	5. ratings: RATINGS ratings of loaded movies (no rated_at: the message
#	   time, inside the window) are produced to "ratings_bench" while the
#	   worker reads "ratings"; then pgkafka_join.ratings_topic is switched
#	   to "ratings_bench" and the clock runs until every rating is stored,
#	   joined and its result committed to Kafka: for every share, the
#	   highest result id recorded as published (published_ids()) reaches
#	   the share's highest result id (snapshot_shares()); the ends of
#	   steps 4 and 5, and their first batches, are seen by one server
#	   session checking every 10 ms (wait_server);
#	   then, on the catalog and results in place: the sizes of the tables
#	   and indexes (bytes per movie, per rating, per result), how the
#	   ratings' join reads the catalog (test/bench/explain.sh 1000: one
#	   index lookup per movie), and a pg_ctl restart after which one new rating is produced
#	   at once: how long after the worker reached the brokers (its "owns
#	   partitions" log line) it was stored and joined, and read by a
#	   read_committed consumer of the output topic.  The workers' private
#	   memory (RssAnon in /proc/PID/status) is sampled every second during
#	   the catalog and ratings phases: first, last and highest;
#	6. prints a summary, with the targets: catalog >= 0.9x COPY (whole, and
#	   after the first batch), ratings >= 100,000/s, restart <= 1 s.
#
# Scale mode: the same command with a large catalog, e.g.
#	test/bench.sh 50000000 1000000
# (50M movies: about 15 minutes on the 2-core machine, 10 GB of disk).
# Latency at a steady rate, and of lone ratings: test/bench/latency.sh.
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
# after the first batch stored (the workers connect first, and the batches
# stored while their new claims are confirmed, half a second, commit
# together), how the ratings fell to the workers (worker i
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
#	PGKJ_BENCH_SETTINGS=defaults	run on PostgreSQL's defaults plus only
#							what README tells a DBA to set (see use_settings
#							in test/bench/common.sh; no huge pages
#							reserved), instead of the tuned settings
#	PGKJ_BENCH_HUGE_PAGES=off	do not reserve huge pages for the cluster
#							(by default, as root, enough 2 MB pages for its
#							shared memory are reserved for the run: see
#							test/bench/common.sh)
#	KEEP_RUNNING=1			leave the servers running at exit (lib.sh), e.g.
#							to run test/bench/explain.sh against them

. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/bench/common.sh"

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

# WAL position, and the WAL written since a position, in MB
wal_lsn()
{
	psql_q "SELECT pg_current_wal_insert_lsn()"
}

wal_mb()
{
	psql_q "SELECT round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '$1') / 1048576.0)"
}

# wait_server COND REPORT: wait until COND, a query of one boolean, is
# true, checking it every 10 ms in one server session (a loop in a
# temporary procedure, each check in a transaction of its own, so that no
# snapshot is held to keep old row versions from being pruned); print the
# time it was seen (the server's clock, the one now() reads) and the value
# of REPORT, an SQL expression, then.  Fail after TIMEOUT seconds.  One
# session instead of a psql per check: the end of a phase is seen within
# 10 ms, and the waiting takes no CPU worth counting.
wait_server()
{
	psql_q "SET statement_timeout = '${TIMEOUT}s';
CREATE PROCEDURE pg_temp.wait_server(INOUT result text DEFAULT NULL)
LANGUAGE plpgsql AS \$pkj\$
BEGIN
    WHILE NOT coalesce(($1), false) LOOP
        COMMIT;
        PERFORM pg_sleep(0.01);
    END LOOP;
    result := extract(epoch FROM clock_timestamp()) || ' ' || ($2);
END
\$pkj\$;
CALL pg_temp.wait_server();" || fail "timed out after ${TIMEOUT}s waiting for: $1"
}

# poll_until SQL [FIRST_SQL]: wait until SQL returns true (wait_server);
# its time in POLL_AT.  With FIRST_SQL, a count (of messages stored, say),
# first wait until it is above 0, and set FIRST_AT to that time (the first
# batch stored), FIRST_N to that count and FIRST_CPU to a CPU sample taken
# then; if SQL is true by then, FIRST_AT is the end and FIRST_N empty.
poll_until()
{
	local sql=$1 first=${2:-} at n done

	FIRST_AT=
	FIRST_N=
	FIRST_CPU=
	if [ -n "$first" ]; then
		read -r at n done < <(wait_server "SELECT ($first) > 0 OR ($sql)" \
			"($first) || ' ' || ($sql)")
		[ -n "$done" ] || fail "could not wait for: $sql"
		if [ "$done" = t ]; then
			FIRST_AT=$at
			POLL_AT=$at
			return
		fi
		cpu_sample FIRST_CPU
		FIRST_AT=$at
		FIRST_N=$n
	fi
	read -r POLL_AT _ < <(wait_server "$sql" "''")
	[ -n "$POLL_AT" ] || fail "could not wait for: $sql"
	[ -n "$FIRST_AT" ] || FIRST_AT=$POLL_AT
}

# poll_stored TOPIC COUNT: poll_until the stored offsets of TOPIC add up to
# COUNT, noting the first batch stored (FIRST_AT, FIRST_N, FIRST_CPU).
poll_stored()
{
	local stored="SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = '$1'"

	poll_until "SELECT ($stored) = $2" "$stored"
}

# after_first TOTAL END SAMPLE: the rate of the rest of the messages (TOTAL
# - FIRST_N) from FIRST_AT to END, and the CPU shares over that time, in
# AFTER_RATE and AFTER_CPU (CPU_SHARES of cpu_report); "n/a" if the first
# batch seen was the last, or held every message (the phase then waited
# for the results to be published).
after_first()
{
	local total=$1 end=$2 sample=$3 secs

	AFTER_RATE=n/a
	AFTER_CPU=n/a
	[ -n "$FIRST_N" ] && [ "$FIRST_N" -lt "$total" ] || return 0
	secs=$(calc "$end - $FIRST_AT" %.2f)
	awk "BEGIN { exit !($secs >= 0.1) }" || return 0
	AFTER_RATE=$(calc "($total - $FIRST_N) / $secs" %.0f)
	say "after the first batch stored ($FIRST_N messages in $(calc "$FIRST_AT - $PHASE_START" %.1f) s): $((total - FIRST_N)) in $secs s = $AFTER_RATE/s"
	cpu_report "$FIRST_CPU" "$sample" "$secs"
	AFTER_CPU=$CPU_SHARES
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
reserve_huge_pages
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
warm_up_broker

MOVIES_KAFKA=$TEST_DIR/movies.kafka
RATINGS_KAFKA=$TEST_DIR/ratings.kafka

movies_file "$MOVIES" "$MOVIES_KAFKA"
awk -v n="$RATINGS" -v m="$MOVIES" 'BEGIN {
	srand(42)
	for (i = 1; i <= n; i++) {
		id = 1 + int(rand() * m)
		printf "%d\t{\"id\": %d, \"rating\": %.1f}\n", id, id, 1 + rand() * 9
	}
}' >"$RATINGS_KAFKA"
chmod 644 "$MOVIES_KAFKA" "$RATINGS_KAFKA"
chmod 755 "$TEST_DIR"

t0=$(now)
produce_file movies "$MOVIES_KAFKA"
t1=$(now)
[ "$(topic_end movies)" = "$MOVIES" ] || fail "topic movies holds $(topic_end movies) messages, not $MOVIES"
say "produced $MOVIES movies to Kafka in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"
RATINGS_PRODUCED=false

PG_DIR=$TEST_DIR/pg
[ -z "$BATCH_SIZE" ] || PG_SETTINGS+=("pgkafka_join.batch_size = $BATCH_SIZE")

# The private memory of the workers (RssAnon: resident anonymous memory,
# librdkafka's included; RSS would also count the shared buffers they
# touched), sampled every second during a phase into $TEST_DIR/rss-PHASE:
# lines "PID KB".
rss_start()
{
	local file=$TEST_DIR/rss-$1

	: >"$file"
	(
		trap - EXIT INT TERM	# not the test's cleanup: this is killed
		while :; do
			for pid in "${WORKER_PIDS[@]}"; do
				# builtins only, as cpu_sample: no process started
				while read -r key kb _; do
					[ "$key" != RssAnon: ] || echo "$pid $kb"
				done 2>/dev/null <"/proc/$pid/status"
			done >>"$file"
			sleep 1
		done
	) &
	RSS_SAMPLER=$!
}

# rss_stop PHASE: stop the sampler, set RSS_FIGURES to "first -> last kB
# (max M)" per worker.
rss_stop()
{
	local file=$TEST_DIR/rss-$1 pid line
	local -a figures=()

	kill "$RSS_SAMPLER" 2>/dev/null
	wait "$RSS_SAMPLER" 2>/dev/null || true
	for pid in "${WORKER_PIDS[@]}"; do
		line=$(awk -v pid="$pid" '$1 == pid { if (n++ == 0) first = $2; last = $2; if ($2 > max) max = $2 }
								  END { if (n) printf "%d -> %d kB (max %d, %d samples)", first, last, max, n }' "$file")
		figures+=("${line:-no sample}")
	done
	RSS_FIGURES=$(IFS=';'; echo "${figures[*]}" | sed 's/;/; /g')
}

# copy_files N: the COPY baseline's files for N sessions, in COPY's binary
# format, written by the server (once per N; not timed) into $PG_DIR (which
# the postgres user owns): share k holds the movies of id % N = k, in order
# of id, with the columns and types the worker's COPY gives.  Sets
# COPY_FILES.
copy_files()
{
	local n=$1 k f

	COPY_FILES=()
	for ((k = 0; k < n; k++)); do
		f=$PG_DIR/movies-$n-$k.bin
		[ -f "$f" ] ||
			psql_q "COPY (SELECT i, 'Movie ' || i, (1900 + i % 120)::integer
							FROM generate_series(1::bigint, $MOVIES) i
						   WHERE i % $n = $k ORDER BY i)
					TO '$f' (FORMAT binary)"
		COPY_FILES+=("$f")
	done
}

# Sizes of the partitions of a partitioned table: "heap+TOAST index" bytes
table_bytes()
{
	psql_q "SELECT coalesce(sum(pg_table_size(inhrelid)), 0), coalesce(sum(pg_indexes_size(inhrelid)), 0)
			  FROM pg_inherits WHERE inhparent = 'pgkafka_join.$1'::regclass" -F ' '
}

# restart_first_rating RUN: pg_ctl restart, one new rating produced at
# once; how long after the worker's first contact with the brokers (its
# "owns partitions" log line) its result is read by a read_committed
# consumer of the output topic.
restart_first_rating()
{
	local run=$1 output_topic=$2 id t_up t_out t_conn t_joined log_from seen consumer

	id=$(( (RATINGS * 7919) % MOVIES + 1 ))
	seen=$TEST_DIR/restart-seen
	rm -f "$seen"
	# a consumer from the end of every partition, started first
	( kcat -C -b "$KAFKA_BOOTSTRAP" -t "$output_topic" -o end -c 1 -q -X log_level=3 \
		-X isolation.level=read_committed -X fetch.wait.max.ms=10 -f '%k\n' >"$seen.key" && now >"$seen" ) &
	consumer=$!
	sleep 2
	log_from=$(($(wc -l <"$PG_DIR/server.log") + 1))
	pg_restart "$PG_DIR"
	t_up=$(now)
	printf '%d\t{"id": %d, "rating": 9.5}\n' "$id" "$id" |
		kcat -P -b "$KAFKA_BOOTSTRAP" -t ratings_bench -K '\t' -q -X log_level=3 \
			-X partitioner=murmur2_random ||
		fail "could not produce the rating after the restart"
	wait_for 60 "[ -s '$seen' ]" || fail "the rating produced after the restart was not published within 60 s"
	wait "$consumer" 2>/dev/null || true
	t_out=$(cat "$seen")
	[ "$(cat "$seen.key")" = "$id" ] || fail "the first record after the restart is not the new rating's result"
	# the log line's time, in the server's time zone (UTC)
	t_conn=$(tail -n +"$log_from" "$PG_DIR/server.log" | grep -m1 'pgkafka_join worker 0 owns partitions' |
		awk '{ print $1 "T" $2 "Z" }')
	[ -n "$t_conn" ] || fail "no worker logged its partitions after the restart"
	t_conn=$(date -d "$t_conn" +%s.%N)
	# when the worker stored and joined it (the time its transaction began)
	t_joined=$(psql_q "SELECT extract(epoch FROM joined_at) FROM pgkafka_join.rated_movies ORDER BY id DESC LIMIT 1")
	R_RESTART_UP[run]=$(calc "$t_conn - $t_up" %.2f)
	R_RESTART_JOINED[run]=$(calc "$t_joined - $t_conn" %.2f)
	R_RESTART_S[run]=$(calc "$t_out - $t_conn" %.2f)
	say "after pg_ctl restart: the worker reached the brokers ${R_RESTART_UP[run]} s after the server was up; the first new rating was stored and joined ${R_RESTART_JOINED[run]} s after that, and read from the output topic (read_committed) ${R_RESTART_S[run]} s after that"
	check_eq "after the restart, rated_movies holds the new result too" "$((RATINGS + 1))" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
}

# run_bench RUN WORKERS: steps 2 to 5 on a fresh cluster with
# pgkafka_join.workers = WORKERS ("": as configured), publishing to
# OUTPUT_TOPICS[RUN - 1]; the figures go to the R_* arrays, index RUN.
run_bench()
{
	local run=$1 workers=$2 output_topic=${OUTPUT_TOPICS[$1 - 1]}
	local lsn0 t0 t1 t_stored cpu0 cpu1 copy_pid output_next output_headers kafka_txns k job
	local -a copy_jobs
	local first_at first_n first_cpu heap index

	#
	# 2. The cluster
	#
	if $COMPARE; then
		echo
		say "--- run $run of ${#WORKER_COUNTS[@]}: pgkafka_join.workers = $workers, output topic $output_topic"
		start_cluster "$workers" "pgkafka_join.output_topic = '$output_topic'"
	else
		start_cluster ""
	fi

	if [ "$run" = 1 ]; then
		server_facts
	fi
	# Others may rebuild the extension meanwhile: say which build was measured.
	R_SO_ID[run]=$(so_id)
	say "extension: $SO (${R_SO_ID[run]})"
	R_LOAD_BEFORE[run]=$(cut -d' ' -f1-3 /proc/loadavg)
	say "load average before the run: ${R_LOAD_BEFORE[run]}"

	#
	# 3. COPY baseline
	#
	copy_files "$NWORKERS"
	# about 300 bytes of WAL per movie (its row, its index entry): 400
	# counted, and 64 MB to spare; prepare_wal ends with a CHECKPOINT
	prepare_wal $((MOVIES * 400 / 1000000 + 64))
	say "WAL: $WAL_READY"
	lsn0=$(wal_lsn)
	cpu_sample cpu0
	t0=$(now)
	copy_jobs=()
	for ((k = 0; k < NWORKERS; k++)); do
		psql_q "SELECT pg_backend_pid();
COPY pgkafka_join.movies (id, title, release_year) FROM '${COPY_FILES[k]}' (FORMAT binary)" \
			>"$TEST_DIR/copy-$k.pid" &
		copy_jobs+=($!)
	done
	for job in "${copy_jobs[@]}"; do
		wait "$job" || fail "a COPY of the baseline failed"
	done
	t1=$(now)
	# the backends' CPU time counts once the postmaster has reaped them
	for ((k = 0; k < NWORKERS; k++)); do
		copy_pid=$(cat "$TEST_DIR/copy-$k.pid")
		for _ in $(seq 50); do
			[ -e "/proc/$copy_pid" ] || break
			sleep 0.1
		done
	done
	cpu_sample cpu1
	R_COPY_S[run]=$(calc "$t1 - $t0" %.2f)
	R_COPY_RATE[run]=$(calc "$MOVIES / ${R_COPY_S[run]}" %.0f)
	R_COPY_SESSIONS[run]=$NWORKERS
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] || fail "COPY did not load $MOVIES rows"
	say "COPY: $MOVIES rows in ${R_COPY_S[run]} s = ${R_COPY_RATE[run]} rows/s ($NWORKERS sessions, binary); WAL $(wal_mb "$lsn0") MB"
	cpu_report "$cpu0" "$cpu1" "${R_COPY_S[run]}"

	psql_q "TRUNCATE pgkafka_join.movies"
	psql_q "VACUUM pgkafka_join.movies"
	psql_q "CHECKPOINT"

	#
	# 4. Catalog ingest through the worker(s)
	#
	# the workers run, idle, before they are given the brokers
	wait_workers
	lsn0=$(wal_lsn)
	reload_with pgkafka_join.brokers "$KAFKA_BOOTSTRAP"
	t0=$(now)
	cpu_sample cpu0
	rss_start catalog-run$run
	PHASE_START=$t0
	poll_stored movies "$MOVIES"
	t1=$POLL_AT
	rss_stop catalog-run$run
	R_RSS_CATALOG[run]=$RSS_FIGURES
	R_FIRST_MOVIES_S[run]=$(calc "$FIRST_AT - $t0" %.1f)
	cpu_sample cpu1
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

	# The catalog settles, as on a server that loaded it some time ago:
	# vacuumed (hint bits, visibility map, statistics) and checkpointed.
	# Otherwise autovacuum of the new rows and the checkpoint after the
	# load run during the ratings phase (at 50 million movies, the other
	# PostgreSQL processes took 20% of a core of the 2 there).
	t0=$(now)
	psql_q "VACUUM (ANALYZE) pgkafka_join.movies"
	psql_q "CHECKPOINT"
	t1=$(now)
	say "catalog vacuumed and checkpointed in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"

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
	cpu_sample cpu0
	rss_start ratings-run$run
	# All stored (each one joined, its movie being there) ...
	PHASE_START=$t0
	poll_stored ratings_bench "$RATINGS"
	t_stored=$POLL_AT
	R_FIRST_RATINGS_S[run]=$(calc "$FIRST_AT - $t0" %.1f)
	first_at=$FIRST_AT first_n=$FIRST_N first_cpu=$FIRST_CPU
	# ... and every result committed to Kafka: for every share (each worker
	# publishes its own shares, ids growing in commit order within a share),
	# the highest id recorded as published reaches the share's highest
	# result id.  Every result is stored by now, so these ids are the last.
	poll_until "SELECT NOT EXISTS (SELECT 1 FROM pgkafka_join.snapshot_shares() s
									LEFT JOIN pgkafka_join.published_ids() p USING (share)
								   WHERE s.last_id > coalesce(p.last_id, 0))"
	t1=$POLL_AT
	cpu_sample cpu1
	rss_stop ratings-run$run
	R_RSS_RATINGS[run]=$RSS_FIGURES
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
	say "worker RssAnon, per worker, sampled every second: catalog phase ${R_RSS_CATALOG[run]}; ratings phase ${R_RSS_RATINGS[run]}"

	#
	# Scale: sizes, the join's plan, a restart
	#
	read -r heap index <<<"$(table_bytes movies)"
	R_SIZES[run]="movies: heap $((heap / 1048576)) MB + indexes $((index / 1048576)) MB = $(((heap + index) / MOVIES)) bytes per movie (heap $((heap / MOVIES)), index $((index / MOVIES)))"
	read -r heap index <<<"$(table_bytes ratings)"
	R_SIZES[run]+="; ratings: $(((heap + index) / RATINGS)) bytes per rating"
	read -r heap index <<<"$(table_bytes rated_movies)"
	R_SIZES[run]+="; rated_movies: $(((heap + index) / RATINGS)) bytes per result (heap $((heap / RATINGS)), indexes $((index / RATINGS)))"
	say "sizes: ${R_SIZES[run]}"
	R_PLAN[run]=$("$TEST_TOP/test/bench/explain.sh" 1000 | sed -n 's/^# join reads: //p')
	[ -n "${R_PLAN[run]}" ] || fail "test/bench/explain.sh printed no join reads"
	say "join reads (test/bench/explain.sh 1000): ${R_PLAN[run]}"
	# last: the new rating would change the next run's input
	[ "$run" != "$NRUNS" ] || restart_first_rating "$run" "$output_topic"
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

# after_ratio RUN: the catalog rate after the first batch over COPY's,
# "0.48x", or "n/a" (a phase too short to tell)
after_ratio()
{
	if [ "${R_INGEST_AFTER[$1]}" = n/a ]; then echo n/a; else calc "${R_INGEST_AFTER[$1]} / ${R_COPY_RATE[$1]}" %.2fx; fi
}

# after_verdict RUN: after_ratio against the 0.9x target
after_verdict()
{
	local r

	r=$(after_ratio "$1")
	if [ "$r" = n/a ]; then echo n/a; else verdict "${r%x} >= 0.9"; fi
}

# best_run ARRAY [MIN_WORKERS]: the run with the highest figure in ARRAY
# (indexed by run; decimals allowed) among the runs of at least MIN_WORKERS
# workers (default 1); nothing if there is none.
best_run()
{
	local -n figures=$1
	local min=${2:-1} best= run

	for ((run = 1; run <= NRUNS; run++)); do
		[ "${R_NWORKERS[run]}" -ge "$min" ] || continue
		if [ -z "$best" ] || [ "$(calc "(${figures[run]} > ${figures[best]})" %d)" = 1 ]; then
			best=$run
		fi
	done
	echo "$best"
}

if ! $COMPARE; then
	cat <<EOF

=== pgkafka_join benchmark ===
movies                 $MOVIES ($PARTITIONS partitions)
ratings                $RATINGS ($PARTITIONS partitions)
COPY baseline          ${R_COPY_S[1]} s = ${R_COPY_RATE[1]} rows/s (${R_COPY_SESSIONS[1]} COPY sessions at once, binary, id, title, release_year)
catalog ingest         ${R_INGEST_S[1]} s = ${R_INGEST_RATE[1]} movies/s = ${R_INGEST_RATIO[1]}x COPY   (target >= 0.9x: $(verdict "${R_INGEST_RATIO[1]} >= 0.9"))
                       (first batch after ${R_FIRST_MOVIES_S[1]} s, then $(per_s "${R_INGEST_AFTER[1]}") = $(after_ratio 1) COPY   (target >= 0.9x: $(after_verdict 1)))
ratings                ${R_RATINGS_S[1]} s = ${R_RATINGS_RATE[1]} ratings/s joined and published   (target >= 100000/s: $(verdict "${R_RATINGS_RATE[1]} >= 100000"))
                       (all stored and joined after ${R_STORED_S[1]} s; first batch after ${R_FIRST_RATINGS_S[1]} s, then $(per_s "${R_RATINGS_AFTER[1]}"))
CPU                    catalog: ${R_INGEST_CPU[1]}
                       ratings: ${R_RATINGS_CPU[1]}
worker RssAnon         catalog: ${R_RSS_CATALOG[1]}
                       ratings: ${R_RSS_RATINGS[1]}
sizes                  ${R_SIZES[1]}
join reads             ${R_PLAN[1]}
restart                first new rating stored and joined ${R_RESTART_JOINED[1]} s, read from the output topic ${R_RESTART_S[1]} s after the worker reached the brokers (${R_RESTART_UP[1]} s after the server was up)   (target <= 1 s: $(verdict "${R_RESTART_S[1]} <= 1"))
workers                ${R_NWORKERS[1]} (pgkafka_join.workers)
batch_size             $BATCH_SIZE (batch_delay $BATCH_DELAY)
extension              ${R_SO_ID[1]}
PostgreSQL             $PG_VERSION ($DURABILITY, jit $JIT; $SETTINGS_SUMMARY)
librdkafka             $LIBRDKAFKA_VERSION (${LIBRDKAFKA:-?})
Kafka                  $KAFKA_VERSION (Scala 2.13, single broker, KRaft, on the same machine)
machine                $(nproc) cores, load average before ${R_LOAD_BEFORE[1]}, now $(cut -d' ' -f1-3 /proc/loadavg); huge pages $HUGE_PAGES
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
		"catalog ${R_INGEST_RATE[run]} movies/s = ${R_INGEST_RATIO[run]}x COPY (${R_COPY_RATE[run]} rows/s, ${R_COPY_SESSIONS[run]} sessions)," \
		"first batch after ${R_FIRST_MOVIES_S[run]} s, then $(per_s "${R_INGEST_AFTER[run]}");" \
		"ratings ${R_RATINGS_RATE[run]}/s joined and published$(x_ref "${R_RATINGS_RATE[run]}" "${R_RATINGS_RATE[REF]:-}")," \
		"first batch after ${R_FIRST_RATINGS_S[run]} s, then $(per_s "${R_RATINGS_AFTER[run]}")$(x_ref "${R_RATINGS_AFTER[run]}" "${R_RATINGS_AFTER[REF]:-}")," \
		"per worker ${R_SPLIT[run]};" \
		"CPU ratings: ${R_RATINGS_CPU[run]}, after the first batch: ${R_RATINGS_AFTER_CPU[run]};" \
		"CPU catalog: ${R_INGEST_CPU[run]}, after the first batch: ${R_INGEST_AFTER_CPU[run]};" \
		"catalog after the first batch $(after_ratio "$run") COPY;" \
		"restart: $(if [ -n "${R_RESTART_S[run]:-}" ]; then echo "first new rating read ${R_RESTART_S[run]} s after the worker reached the brokers"; else echo "measured after the last run only"; fi);" \
		"load ${R_LOAD_BEFORE[run]%% *} -> ${R_LOAD_AFTER[run]%% *}"
done
best=$(best_run R_RATINGS_RATE)
echo "target: ratings joined and published >= 100000/s: best ${R_NWORKERS[best]} workers ${R_RATINGS_RATE[best]}/s ($(verdict "${R_RATINGS_RATE[best]} >= 100000"))"
best=$(best_run R_INGEST_RATIO)
echo "target: catalog >= 0.9x COPY: best ${R_NWORKERS[best]} workers ${R_INGEST_RATIO[best]}x ($(verdict "${R_INGEST_RATIO[best]} >= 0.9")), after the first batch $(after_ratio "$best") ($(after_verdict "$best"))"
if [ -n "$REF" ]; then
	best=$(best_run R_RATINGS_RATE 2)
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
PostgreSQL $PG_VERSION ($DURABILITY, jit $JIT; $SETTINGS_SUMMARY); librdkafka $LIBRDKAFKA_VERSION; Kafka $KAFKA_VERSION (single broker, same machine)
machine $(nproc) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg); huge pages $HUGE_PAGES; whole run $RUN_S s
EOF
