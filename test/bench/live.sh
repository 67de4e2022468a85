#!/bin/bash
#
# live.sh
#		Live capacity of pgkafka_join against a real Kafka broker and a real
#		PostgreSQL cluster: the highest rate of ratings produced live, on a
#		fixed schedule, that the workers keep up with, with bounded lag and
#		a p99 latency under 250 ms; with its flag --peers, the same ladder,
#		on the same broker and data, through a Kafka Streams join and
#		through a transactional passthrough (the floor), side by side.
#
#	test/bench/live.sh [--workers N] [--rates R1,R2,...] [--seconds S]
#		[--warmup W] [--catalog-updates U] [--settings defaults|tuned|defaults,tuned]
#		[--peers] [--soak RATE] [--backlog N] [MOVIES]
#		defaults: 2 workers, rates 10000,20000,40000,60000,80000,120000
#		ratings/s, each for a warm-up of 10 s then 60 s measured, no catalog
#		updates, PostgreSQL's default settings, no peers, 100000 movies
#	test/bench/live.sh --soak RATE [--seconds S] ...
#		soak: the one rate RATE for 600 s (--seconds) after the warm-up,
#		latencies per minute, the workers' RssAnon at the start and the
#		end; meant for half the capacity, on the default settings (so
#		with PostgreSQL's checkpoints and autovacuum)
#	--backlog N: after each system's ladder, while it runs and has caught
#		up, N ratings all due within 1 s, and the rate at which the system
#		drains them (N over the time from the first one due to the last
#		result read); with --peers, pgkafka_join's as a ratio of each peer's
#
# In one run, as root:
#	1. builds test/bench/latency.c (and, with --peers,
#	   test/bench/passthrough.c and the Maven project test/bench/streams,
#	   its Maven repository in the git-ignored .cache/m2) into the scratch
#	   directory ($TEST_RUN_DIR/bench_live); starts a broker; creates the
#	   topics, PGKJ_BENCH_PARTITIONS partitions each (default 3, or 6 with
#	   several workers): movies, and a ratings topic and an output topic of
#	   each system measured; produces MOVIES movies;
#	2. per settings of --settings, on a fresh cluster: "defaults" is
#	   PostgreSQL's defaults plus only what README tells a DBA to set
#	   (shared_preload_libraries, pgkafka_join.database, .brokers,
#	   .workers), "tuned" the settings of test/bench.sh (common.sh's
#	   PG_SETTINGS, huge pages reserved); prints the settings as
#	   pg_settings has them; waits until the catalog is stored and every
#	   worker is consuming; then the ladder (below); then checks what
#	   PostgreSQL holds and stops the cluster;
#	3. with --peers, on the same broker, catalog and schedule (the same
#	   ratings, in the same order), one after the other, while nothing
#	   else runs: (a) test/bench/streams, a Kafka Streams KStream-KTable
#	   join with exactly_once_v2 and as many stream threads as workers,
#	   Streams' defaults otherwise; it starts on the movies topic and the
#	   ladder waits until its committed position has reached the end of
#	   the catalog; (b) test/bench/passthrough.c: the ratings copied to
#	   the output topic in Kafka transactions that also commit the input
#	   positions, batched as the worker batches, no join, as many threads
#	   as workers, the same partitions;
#	4. prints each system's steps, then the three side by side, and the
#	   capacity of each and the ratios.
#
# The ladder (latency.c, mode ladder): each rate of --rates for W + S
# seconds, one after the other on one schedule, each rating stamped with
# the time it is due (so a producer held up counts in the latency: no
# coordinated omission).  Per step: the rate produced, the rate of results
# read while the measured part was due ("achieved"), the lag (ratings due
# minus results read, every second) at the start and the end of the
# measured part and whether it grows (least-squares slope above 1% of the
# rate), p50/p99/max of the warm-up and of the measured part, and per 10 s
# window.  A step is held when its lag does not grow and its p99 is under
# 250 ms; the capacity is the highest rate held.  A step that ends more
# than 2 s of input behind ends the ladder.  With --catalog-updates U,
# U movie changes per second (a movie's release_year changed) go to the
# movies topic during the whole ladder.  The CPU shares of each step's
# measured part are sampled as test/bench.sh samples them.
#
# Every run checks exactness and fails (exit status 1) otherwise: for each
# system, the output consumer (read_committed) reads exactly one result
# per rating produced and nothing else (pgkafka_join: every result id,
# header pgkafka_join.id, once); for pgkafka_join, pgkafka_join.ratings
# and rated_movies hold one row per rating, nothing was rejected and
# publish_lag is 0 on every status row.  Timing never fails a run: the
# figures are printed, with "held" or not.
#
# Environment:
#	PGKJ_BENCH_PARTITIONS	partitions of every topic (default 3, or 6 when
#							--workers is above 1)
#	PGKJ_BENCH_CONF			extra postgresql.conf lines, one per line, added
#							last, to every cluster of the run
#	PGKJ_BENCH_PRODUCER_LINGER_MS	linger.ms of the producer of the ratings
#							(default 0; see latency.c)
#	PGKJ_BENCH_HUGE_PAGES=off	with "tuned", do not reserve huge pages
#	PGKJ_BENCH_WINDOW_S		length of the windows reported after each
#							warm-up (default 10 s; 60 with --soak)
#	KEEP_RUNNING=1			leave the broker (and the last cluster) running
#							at exit

. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/common.sh"

usage()
{
	echo "usage: $0 [--workers N] [--rates R1,R2,...] [--seconds S] [--warmup W] [--catalog-updates U] [--settings defaults|tuned|defaults,tuned] [--peers] [--soak RATE] [--backlog N] [MOVIES]" >&2
	exit 2
}

positive()
{
	[[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "$1 must be a positive integer" >&2; exit 2; }
}

WORKERS=2
RATES=10000,20000,40000,60000,80000,120000
SECONDS_EACH=60
WARMUP=10
UPDATES=0
SETTINGS_LIST=defaults
PEERS=false
SOAK=
BACKLOG=
SECONDS_GIVEN=false
MOVIES=100000
while [ $# -gt 0 ]; do
	case $1 in
		--workers|--rates|--seconds|--warmup|--catalog-updates|--settings|--soak|--backlog)
			[ $# -ge 2 ] || usage
			case $1 in
				--workers) positive "$1" "$2"; WORKERS=$2 ;;
				--soak) positive "$1" "$2"; SOAK=$2 ;;
				--backlog)
					positive "$1" "$2"
					[ "$2" -le 1000000 ] || { echo "--backlog must be at most 1000000 (all due within 1 s)" >&2; exit 2; }
					BACKLOG=$2
					;;
				--rates)
					[[ "$2" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
						{ echo "--rates must be positive integers separated by commas" >&2; exit 2; }
					RATES=$2
					;;
				--seconds) positive "$1" "$2"; SECONDS_EACH=$2; SECONDS_GIVEN=true ;;
				--warmup)
					[[ "$2" =~ ^[0-9]+$ ]] || { echo "--warmup must be an integer" >&2; exit 2; }
					WARMUP=$2
					;;
				--catalog-updates)
					[[ "$2" =~ ^[0-9]+$ ]] || { echo "--catalog-updates must be an integer" >&2; exit 2; }
					UPDATES=$2
					;;
				--settings)
					[[ "$2" =~ ^(defaults|tuned)(,(defaults|tuned))*$ ]] ||
						{ echo "--settings must be defaults, tuned, or both separated by a comma" >&2; exit 2; }
					SETTINGS_LIST=$2
					;;
			esac
			shift 2
			;;
		--peers) PEERS=true; shift ;;
		-*) usage ;;
		*) break ;;
	esac
done
[ $# -le 1 ] || usage
MOVIES=${1:-$MOVIES}
positive MOVIES "$MOVIES"
[ "$WORKERS" -le 64 ] || { echo "--workers must be from 1 to 64" >&2; exit 2; }
read -r -a SETTINGS_RUNS <<<"${SETTINGS_LIST//,/ }"
# Soak: one rate, 10 minutes, windows of a minute
if [ -n "$SOAK" ]; then
	RATES=$SOAK
	$SECONDS_GIVEN || SECONDS_EACH=600
	export PGKJ_BENCH_WINDOW_S=${PGKJ_BENCH_WINDOW_S:-60}
fi

if [ "$WORKERS" -gt 1 ]; then
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-6}
else
	PARTITIONS=${PGKJ_BENCH_PARTITIONS:-3}
fi
positive PGKJ_BENCH_PARTITIONS "$PARTITIONS"

RUN_START=$(now)

# The systems measured, in the order they run: pgkafka_join once per
# settings, then the peers.  Each has its own ratings and output topics
# (a system never sees another's ratings).
SYSTEMS=()
declare -A LABEL=() IN_TOPIC=() OUT_TOPIC=()
for s in "${SETTINGS_RUNS[@]}"; do
	SYSTEMS+=("pgkafka_join-$s")
	LABEL[pgkafka_join-$s]="pgkafka_join ($s)"
	IN_TOPIC[pgkafka_join-$s]=ratings_$s
	OUT_TOPIC[pgkafka_join-$s]=rated_movies_$s
done
if $PEERS; then
	SYSTEMS+=(streams passthrough)
	LABEL[streams]="Kafka Streams (EOS v2)"
	IN_TOPIC[streams]=ratings_streams
	OUT_TOPIC[streams]=streams_out
	LABEL[passthrough]="passthrough (floor)"
	IN_TOPIC[passthrough]=ratings_passthrough
	OUT_TOPIC[passthrough]=passthrough_out
	SYSTEMS+=(kafka)
	LABEL[kafka]="Kafka alone (the probe)"
	IN_TOPIC[kafka]=kafka_alone_ladder
	OUT_TOPIC[kafka]=kafka_alone_ladder
fi

# run_ladder SYSTEM MATCH: the ladder through SYSTEM, its results matched
# by MATCH (rated_at or timestamp, see latency.c); its lines shown
# (indented) and kept in $TEST_DIR/SYSTEM.out, except the marks of each
# step's measured part, at which the CPU is sampled (CPU_FROM[I],
# CPU_TO[I], T_FROM[I], T_TO[I]).  Fails if the program does (its FAIL
# lines say why).
declare -A CPU_FROM=() CPU_TO=() T_FROM=() T_TO=()
run_ladder()
{
	local system=$1 match=$2 line rc= step
	local -a extra=()

	[ "$UPDATES" = 0 ] || extra=(movies "$UPDATES")
	: >"$TEST_DIR/$system.out"
	CPU_FROM=() CPU_TO=() T_FROM=() T_TO=()
	while IFS= read -r line; do
		case $line in
			"mark step "*" start")
				step=${line#mark step }
				step=${step% start}
				T_FROM[$step]=$(now)
				cpu_sample "CPU_FROM[$step]" 2>/dev/null
				;;
			"mark step "*" end")
				step=${line#mark step }
				step=${step% end}
				T_TO[$step]=$(now)
				cpu_sample "CPU_TO[$step]" 2>/dev/null
				;;
			"exit status "*)
				rc=${line#exit status }
				;;
			*)
				echo "#   $line"
				echo "$line" >>"$TEST_DIR/$system.out"
				;;
		esac
	done < <(set +e; "$LATENCY" ladder "$KAFKA_BOOTSTRAP" "${IN_TOPIC[$system]}" "${OUT_TOPIC[$system]}" \
				"$MOVIES" "$RATES" "$SECONDS_EACH" "$WARMUP" "$match" "${extra[@]}" 2>&1
			 echo "exit status $?")
	[ "$rc" = 0 ] || fail "the ladder through ${LABEL[$system]} failed (exit status ${rc:-unknown}), see above"
	cpu_steps "$system"
}

# run_backlog SYSTEM MATCH: with --backlog N, N ratings through SYSTEM, all
# due within 1 s (a ladder of one step of 1 s at N/s, no warm-up), its
# lines kept in $TEST_DIR/SYSTEM-backlog.out; DRAIN[SYSTEM] is the drain
# rate (N over the time from the first rating due to the last result read)
declare -A DRAIN=()
run_backlog()
{
	local system=$1 match=$2

	[ -n "$BACKLOG" ] || return 0
	say "backlog: $BACKLOG ratings through ${LABEL[$system]}, all due within 1 s"
	"$LATENCY" ladder "$KAFKA_BOOTSTRAP" "${IN_TOPIC[$system]}" "${OUT_TOPIC[$system]}" \
		"$MOVIES" "$BACKLOG" 1 0 "$match" >"$TEST_DIR/$system-backlog.out" 2>&1 ||
		{ sed 's/^/#   /' "$TEST_DIR/$system-backlog.out"; fail "the backlog through ${LABEL[$system]} failed"; }
	grep -E '^(check|ladder) ' "$TEST_DIR/$system-backlog.out" | sed 's/^/#   /'
	DRAIN[$system]=$(field "$system-backlog" 1 drain_rate)
	say "backlog of $BACKLOG drained by ${LABEL[$system]} at ${DRAIN[$system]} ratings/s"
}

# cpu_steps SYSTEM: for each step measured, the CPU shares of its measured
# part (cpu_sample's WORKERS, the system's own processes, and BROKER, in %
# of one core; for pgkafka_join, the other PostgreSQL processes added to
# its workers), into CPU[SYSTEM,I]
declare -A CPU=()
cpu_steps()
{
	local system=$1 step secs
	local -a a b

	for step in "${!T_TO[@]}"; do
		[ -n "${CPU_FROM[$step]:-}" ] || continue
		a=(${CPU_FROM[$step]})
		b=(${CPU_TO[$step]})
		secs=$(calc "${T_TO[$step]} - ${T_FROM[$step]}" %.2f)
		CPU[$system,$step]="$(calc "100 * ((${b[0]} - ${a[0]}) + (${b[1]} - ${a[1]})) / $CLK_TCK / $secs" %.0f)+$(calc "100 * (${b[2]} - ${a[2]}) / $CLK_TCK / $secs" %.0f)"
	done
}

# field SYSTEM STEP KEY: from the line "ladder STEP k=v ..." of SYSTEM.out,
# the value of KEY (empty if the step did not run)
field()
{
	awk -v s="$2" -v k="$3" '
		$1 == "ladder" && $2 == s {
			for (i = 3; i <= NF; i++)
				if (index($i, k "=") == 1) {
					print substr($i, length(k) + 2)
					exit
				}
		}' "$TEST_DIR/$1.out"
}

# capacity_of SYSTEM: the capacity line of SYSTEM.out, "none" or a rate
capacity_of()
{
	awk '$1 == "capacity" { sub(/^rate=/, "", $2); print $2 }' "$TEST_DIR/$1.out"
}

produced_of()
{
	awk '$1 == "check" && $2 == "ok:" { print $3 }' "$TEST_DIR/$1.out"
}

# ready_line FILE PID SECONDS: wait until FILE holds a line "ready", while
# PID runs, at most SECONDS
ready_line()
{
	local file=$1 pid=$2 deadline=$((SECONDS + $3))

	until grep -qx ready "$file" 2>/dev/null; do
		kill -0 "$pid" 2>/dev/null || return 1
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.2
	done
}

# rss_anon PID ...: "pid PID N kB" of each (RssAnon: the private memory,
# librdkafka's included), separated by commas
rss_anon()
{
	local pid key kb out=

	for pid in "$@"; do
		while read -r key kb _; do
			[ "$key" != RssAnon: ] || out+="${out:+, }pid $pid $kb kB"
		done 2>/dev/null <"/proc/$pid/status"
	done
	echo "$out"
}

# stop_process PID: SIGTERM, then SIGKILL after 30 s
stop_process()
{
	local pid=$1 deadline=$((SECONDS + 30))

	kill -TERM "$pid" 2>/dev/null || return 0
	while kill -0 "$pid" 2>/dev/null; do
		if [ $SECONDS -ge $deadline ]; then
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
	wait "$pid" 2>/dev/null || true
}


#
# 1. The programs, the broker, the topics, the movies
#
test_init bench_live
say "live capacity: rates $RATES ratings/s, each $WARMUP s of warm-up then $SECONDS_EACH s; $MOVIES movies, $UPDATES movie changes/s; $PARTITIONS partitions; $WORKERS workers; settings ${SETTINGS_RUNS[*]}; systems ${SYSTEMS[*]}; scratch directory $TEST_DIR"

LATENCY=$TEST_DIR/latency
gcc -O2 -Wall -pthread -o "$LATENCY" "$TEST_TOP/test/bench/latency.c" -lrdkafka -lm ||
	fail "could not build test/bench/latency.c"
if $PEERS; then
	PASSTHROUGH=$TEST_DIR/passthrough
	gcc -O2 -Wall -pthread -o "$PASSTHROUGH" "$TEST_TOP/test/bench/passthrough.c" -lrdkafka ||
		fail "could not build test/bench/passthrough.c"
	STREAMS_BUILD=$TEST_TOP/.cache/streams-build
	# (Maven's output is shown only on failure: even with -q it prints
	# terminal escape sequences)
	if ! out=$(mvn -B -q -f "$TEST_TOP/test/bench/streams/pom.xml" \
			   -Dmaven.repo.local="$TEST_TOP/.cache/m2" -Dstreams.build.dir="$STREAMS_BUILD" \
			   package </dev/null 2>&1); then
		echo "$out" >&2
		fail "could not build test/bench/streams"
	fi
	STREAMS_CP="$STREAMS_BUILD/streams-join-1.jar:$STREAMS_BUILD/lib/*"
	KAFKA_STREAMS_VERSION=$(basename "$(compgen -G "$STREAMS_BUILD/lib/kafka-streams-*.jar" | head -1)" .jar)
	KAFKA_STREAMS_VERSION=${KAFKA_STREAMS_VERSION#kafka-streams-}
fi

kafka_start "$TEST_DIR/kafka"
kafka_create_topic movies "$PARTITIONS"
kafka_create_topic kafka_alone "$PARTITIONS"
for system in "${SYSTEMS[@]}"; do
	kafka_create_topic "${IN_TOPIC[$system]}" "$PARTITIONS"
	[ "${OUT_TOPIC[$system]}" = "${IN_TOPIC[$system]}" ] ||
		kafka_create_topic "${OUT_TOPIC[$system]}" "$PARTITIONS"
done
warm_up_broker

MOVIES_KAFKA=$TEST_DIR/movies.kafka
movies_file "$MOVIES" "$MOVIES_KAFKA"
produce_file movies "$MOVIES_KAFKA"
[ "$(topic_end movies)" = "$MOVIES" ] || fail "topic movies holds $(topic_end movies) messages, not $MOVIES"
say "$MOVIES movies produced to Kafka (not part of any figure)"

# Kafka alone, KAFKA_SECONDS at the first rate: the probe's producer and
# consumer on a plain topic, without transactions; it also warms up the
# broker (its JIT) before the first system measured.
KAFKA_SECONDS=10
FIRST_RATE=${RATES%%,*}
say "Kafka alone: $FIRST_RATE messages/s for $KAFKA_SECONDS s to kafka_alone, read back read_committed"
"$LATENCY" kafka "$KAFKA_BOOTSTRAP" kafka_alone "$FIRST_RATE" "$KAFKA_SECONDS" >"$TEST_DIR/kafka-alone.out" 2>&1 ||
	{ cat "$TEST_DIR/kafka-alone.out"; fail "Kafka alone failed"; }
sed 's/^/#   /' "$TEST_DIR/kafka-alone.out"
KAFKA_ALONE=$(awk '$1 == "kafka" { print $3 ", " $5 ", " $6 }' "$TEST_DIR/kafka-alone.out" | tr = ' ')


#
# 2. pgkafka_join, per settings
#
PG_DIR=$TEST_DIR/pg
declare -A SETTINGS_LINE=() SO_IDS=() RSS_START=() RSS_END=()
for settings in "${SETTINGS_RUNS[@]}"; do
	system=pgkafka_join-$settings
	echo
	say "--- ${LABEL[$system]}: a fresh cluster, ratings from ${IN_TOPIC[$system]}, results to ${OUT_TOPIC[$system]}"
	if [ -d "$PG_DIR/data" ]; then
		pg_stop "$PG_DIR"
		mv "$PG_DIR/server.log" "$TEST_DIR/server-$PREVIOUS.log"
		rm -rf "$PG_DIR/data"
	fi
	use_settings "$settings"
	HUGE_PAGES="not used"
	[ "$settings" != tuned ] || reserve_huge_pages
	start_cluster "$WORKERS" \
		"pgkafka_join.ratings_topic = '${IN_TOPIC[$system]}'" \
		"pgkafka_join.output_topic = '${OUT_TOPIC[$system]}'"
	PREVIOUS=$settings
	server_facts
	SETTINGS_LINE[$system]="$DURABILITY; $SETTINGS_SUMMARY; huge pages $HUGE_PAGES"
	SO_IDS[$system]=$(so_id)
	say "extension: $SO (${SO_IDS[$system]})"

	MOVIES_END=$(topic_end movies)
	t0=$(now)
	reload_with pgkafka_join.brokers "$KAFKA_BOOTSTRAP"
	wait_workers
	wait_for 600 movies_stored || fail "the movie messages were not all stored within 600 s"
	wait_for 60 workers_consuming ||
		fail "the workers are not all consuming: $(psql_q "SELECT string_agg(worker || ': ' || state, ', ') FROM pgkafka_join.status")"
	[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] ||
		fail "pgkafka_join.movies does not hold $MOVIES rows"
	say "$MOVIES_END movie messages stored in $(calc "$(now) - $t0" %.1f) s; workers consuming (pids ${WORKER_PIDS[*]})"
	say "load average before the ladder: $(cut -d' ' -f1-3 /proc/loadavg)"
	RSS_START[$system]=$(rss_anon "${WORKER_PIDS[@]}")

	run_ladder "$system" rated_at
	run_backlog "$system" rated_at
	check_workers "the ladder"
	RSS_END[$system]=$(rss_anon "${WORKER_PIDS[@]}")
	say "workers' RssAnon: before the ladder ${RSS_START[$system]}; after ${RSS_END[$system]}"

	NRATINGS=$(produced_of "$system")
	[ -z "$BACKLOG" ] || NRATINGS=$((NRATINGS + $(produced_of "$system-backlog")))
	check_eq "pgkafka_join.ratings holds the $NRATINGS ratings produced" "$NRATINGS" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")"
	check_eq "rated_movies holds $NRATINGS results" "$NRATINGS" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
	check_eq "nothing was rejected" 0 \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")"
	wait_for 30 all_published || fail "publish_lag is not 0 on every status row"
	pass "publish_lag is 0 on each of the $NWORKERS status rows"
	[ "$(so_id)" = "${SO_IDS[$system]}" ] ||
		say "WARNING: the extension was reinstalled during the run (now $(so_id)): the figures may mix two builds"
done
# nothing of PostgreSQL runs while the peers are measured
if $PEERS || [ "${KEEP_RUNNING:-0}" != 1 ]; then
	pg_stop "$PG_DIR"
fi


#
# 3. The peers
#
if $PEERS; then
	WORKER_PIDS=()

	echo
	say "--- ${LABEL[streams]}: kafka-streams $KAFKA_STREAMS_VERSION, $WORKERS stream threads, ratings from ${IN_TOPIC[streams]}, results to ${OUT_TOPIC[streams]}"
	cat >"$TEST_DIR/streams-log4j.properties" <<EOF
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$TEST_DIR/streams.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
	t0=$(now)
	java -Xms256m -Xmx1g -Dlog4j.configuration="file:$TEST_DIR/streams-log4j.properties" \
		-cp "$STREAMS_CP" pgkafka_join.bench.StreamsJoin "$KAFKA_BOOTSTRAP" pgkj-bench-streams \
		movies "${IN_TOPIC[streams]}" "${OUT_TOPIC[streams]}" "$WORKERS" "$TEST_DIR/streams-state" \
		</dev/null >"$TEST_DIR/streams.stdout" 2>"$TEST_DIR/streams.stderr" &
	STREAMS_PID=$!
	on_exit "kill -KILL $STREAMS_PID 2>/dev/null"
	ready_line "$TEST_DIR/streams.stdout" "$STREAMS_PID" 600 ||
		{ tail -n 20 "$TEST_DIR/streams.stderr" "$TEST_DIR/streams.log" >&2; fail "Kafka Streams did not load the catalog"; }
	say "Kafka Streams running, catalog loaded in $(calc "$(now) - $t0" %.1f) s (pid $STREAMS_PID)"
	WORKER_PIDS=("$STREAMS_PID")
	run_ladder streams timestamp
	run_backlog streams timestamp
	stop_process "$STREAMS_PID"

	echo
	say "--- ${LABEL[passthrough]}: $WORKERS threads, ratings from ${IN_TOPIC[passthrough]} to ${OUT_TOPIC[passthrough]}, unchanged, in Kafka transactions"
	"$PASSTHROUGH" "$KAFKA_BOOTSTRAP" "${IN_TOPIC[passthrough]}" "${OUT_TOPIC[passthrough]}" "$WORKERS" \
		pgkj-bench-passthrough </dev/null >"$TEST_DIR/passthrough.stdout" 2>"$TEST_DIR/passthrough.stderr" &
	PASS_PID=$!
	on_exit "kill -KILL $PASS_PID 2>/dev/null"
	ready_line "$TEST_DIR/passthrough.stdout" "$PASS_PID" 60 ||
		{ cat "$TEST_DIR/passthrough.stderr" >&2; fail "the passthrough did not start"; }
	WORKER_PIDS=("$PASS_PID")
	run_ladder passthrough timestamp
	run_backlog passthrough timestamp
	stop_process "$PASS_PID"
	say "passthrough: $(grep '^passed' "$TEST_DIR/passthrough.stdout" || echo "no count printed")"

	echo
	say "--- ${LABEL[kafka]}: the same ladder to ${IN_TOPIC[kafka]}, read back from it (read_committed), nothing in between"
	WORKER_PIDS=()
	run_ladder kafka timestamp
	run_backlog kafka timestamp
fi


#
# 4. Summary
#
read -r -a RATE_LIST <<<"${RATES//,/ }"
RUN_S=$(calc "$(now) - $RUN_START" %.0f)

# ms VALUE: a latency rounded to the ms
ms()
{
	calc "$1" %.0f
}

# cell SYSTEM STEP: "achieved p50/p99/max lag held", short
cell()
{
	local s=$1 i=$2 held

	if [ -z "$(field "$s" "$i" rate)" ] || [ -z "$(field "$s" "$i" p99)" ]; then
		printf '%-32s' "not run"
		return
	fi
	held=$(field "$s" "$i" held)
	[ "$held" = yes ] && held=held || held=NOT
	printf '%-32s' "$(field "$s" "$i" achieved) $(ms "$(field "$s" "$i" p50)")/$(ms "$(field "$s" "$i" p99)")/$(ms "$(field "$s" "$i" max)") $(field "$s" "$i" lag_end_s)s$([ "$(field "$s" "$i" growing)" = yes ] && echo '+') $held"
}

echo
echo "=== pgkafka_join live capacity ==="
echo "each rate: $WARMUP s of warm-up, then $SECONDS_EACH s measured; per system and rate: results/s read while the measured part was due, latency p50/p99/max in ms (from the time each rating was due), lag at the end in seconds of input ('+': growing), held (p99 < 250 ms, lag not growing) or NOT"
printf '%-10s' "rate/s"
for s in "${SYSTEMS[@]}"; do
	printf ' | %-32s' "${LABEL[$s]}"
done
echo
for ((i = 1; i <= ${#RATE_LIST[@]}; i++)); do
	printf '%-10s' "${RATE_LIST[i - 1]}"
	for s in "${SYSTEMS[@]}"; do
		printf ' | '
		cell "$s" "$i"
	done
	echo
done
echo "warm-up (first $WARMUP s of each rate), p50/p99/max ms:"
for ((i = 1; i <= ${#RATE_LIST[@]}; i++)); do
	printf '%-10s' "${RATE_LIST[i - 1]}"
	for s in "${SYSTEMS[@]}"; do
		if [ -n "$(field "$s" "$i" warmup_p99)" ] && [ "$(field "$s" "$i" warmup_p99)" != nan ]; then
			printf ' | %-32s' "$(ms "$(field "$s" "$i" warmup_p50)")/$(ms "$(field "$s" "$i" warmup_p99)")/$(ms "$(field "$s" "$i" warmup_max)")"
		else
			printf ' | %-32s' "-"
		fi
	done
	echo
done
echo "CPU of the measured part, % of one core ($(nproc) cores): the system's processes + the broker:"
for ((i = 1; i <= ${#RATE_LIST[@]}; i++)); do
	printf '%-10s' "${RATE_LIST[i - 1]}"
	for s in "${SYSTEMS[@]}"; do
		printf ' | %-32s' "${CPU[$s,$i]:-not run}"
	done
	echo
done
printf '%-10s' "capacity"
for s in "${SYSTEMS[@]}"; do
	printf ' | %-32s' "$(capacity_of "$s")"
done
echo
for s in "${SYSTEMS[@]}"; do
	[[ "$s" == pgkafka_join-* ]] || continue
	c=$(capacity_of "$s")
	line="capacity of ${LABEL[$s]}: $c"
	for p in streams passthrough kafka; do
		[ -n "${LABEL[$p]:-}" ] || continue
		pc=$(capacity_of "$p")
		if [ "$c" != none ] && [ "$pc" != none ]; then
			line+="; $(calc "$c / $pc" %.2f)x ${LABEL[$p]} ($pc)"
		else
			line+="; ${LABEL[$p]} $pc"
		fi
	done
	echo "$line (the steps of the ladder bound each ratio: a capacity lies between the rate held and the next)"
done
if [ -n "$BACKLOG" ]; then
	line="backlog of $BACKLOG ratings, drained at (ratings/s):"
	for s in "${SYSTEMS[@]}"; do
		line+=" ${LABEL[$s]} ${DRAIN[$s]};"
	done
	echo "${line%;}"
	for s in "${SYSTEMS[@]}"; do
		[[ "$s" == pgkafka_join-* ]] || continue
		line="backlog drain of ${LABEL[$s]}:"
		for p in streams passthrough kafka; do
			[ -n "${DRAIN[$p]:-}" ] || continue
			line+=" $(calc "${DRAIN[$s]} / ${DRAIN[$p]}" %.2f)x ${LABEL[$p]};"
		done
		[ "$line" = "backlog drain of ${LABEL[$s]}:" ] || echo "${line%;}"
	done
fi
for s in "${SYSTEMS[@]}"; do
	echo "ratings through ${LABEL[$s]}: $(produced_of "$s")$([ -z "$BACKLOG" ] || echo " + $(produced_of "$s-backlog") of the backlog"), each result read exactly once"
done
echo "Kafka alone, $FIRST_RATE/s for $KAFKA_SECONDS s before the first system: $KAFKA_ALONE ms"
[ "$UPDATES" = 0 ] || echo "catalog updates: $UPDATES movie changes/s during each ladder ($(awk '$1 == "movie" { sub(/^n=/, "", $3); print $3 }' "$TEST_DIR/${SYSTEMS[0]}.out") in the first)"
for s in "${SYSTEMS[@]}"; do
	[[ "$s" == pgkafka_join-* ]] || continue
	echo "settings of ${LABEL[$s]} (pg_settings): ${SETTINGS_LINE[$s]}"
	echo "workers' RssAnon of ${LABEL[$s]}: before the ladder ${RSS_START[$s]}; after ${RSS_END[$s]}"
done
if [ -n "$SOAK" ]; then
	echo "soak at $SOAK ratings/s, per window of $PGKJ_BENCH_WINDOW_S s after the warm-up, p99/max ms:"
	for s in "${SYSTEMS[@]}"; do
		echo "  ${LABEL[$s]}: $(awk '$1 == "window" && $2 == 1 && $5 != "(warm-up)" {
				p99 = $7; max = $8; sub(/^p99=/, "", p99); sub(/^max=/, "", max)
				printf "%s%s s %.0f/%.0f", sep, $3, p99, max; sep = ", "
			}' "$TEST_DIR/$s.out")"
	done
fi
cat <<EOF
workers                $WORKERS (pgkafka_join.workers; stream threads and passthrough threads with --peers), $PARTITIONS partitions per topic
ratings producer       linger.ms ${PGKJ_BENCH_PRODUCER_LINGER_MS:-0}, each rating stamped with the time it was due
extension              ${SO_IDS[${SYSTEMS[0]}]}
PostgreSQL             $PG_VERSION
librdkafka             $LIBRDKAFKA_VERSION (${LIBRDKAFKA:-?})
Kafka                  $KAFKA_VERSION (Scala 2.13, single broker, KRaft, on the same machine)$($PEERS && echo "; kafka-streams $KAFKA_STREAMS_VERSION")
machine                $(nproc) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg)
whole run              $RUN_S s
EOF
