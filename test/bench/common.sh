# common.sh
#		Shell functions shared by the benchmarks test/bench.sh and
#		test/bench/latency.sh: the durable server settings, the movies file
#		and producing it with kcat, the versions and settings measured, and
#		the CPU sampling of the worker(s), the rest of the cluster, the
#		broker and the machine.
#
# Sourced after test/lib.sh (psql_q, fail, TEST_TOP, PG_BIN).  The callers
# set PG_DIR (the cluster), KAFKA_DIR and KAFKA_BOOTSTRAP (kafka_start),
# PARTITIONS (topic_end), NWORKERS (wait_workers, which sets WORKER_PIDS for
# cpu_sample).  Also sourced by test/bench/live.sh, which chooses the
# server's settings with use_settings.

CLK_TCK=$(getconf CLK_TCK)

# Durability stays on (fsync, synchronous_commit, full_page_writes): the
# figures are those of a real server.  The worker stays idle until
# pgkafka_join.brokers is set (reload_with).  shared_buffers is the usual
# quarter of the machine's memory (24 GB): a 50-million-movie catalog
# (4.7 GB with its indexes) then fits, as it should on a real server.
PG_SETTINGS=(
	"shared_buffers = '6GB'"
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

# What README tells a DBA to set, and nothing else: with these, a cluster
# runs on PostgreSQL's defaults (128 MB of shared_buffers, 1 GB of
# max_wal_size, 5-minute checkpoints, autovacuum on), as a new user's
# does.  (shared_preload_libraries is lib.sh's pg_start's, the brokers are
# set by reload_with, the workers by start_cluster.)
PG_SETTINGS_DEFAULTS=(
	"pgkafka_join.database = 'postgres'"
	"pgkafka_join.brokers = ''"
)

# use_settings NAME: the settings start_cluster gives the next cluster:
# "tuned" (PG_SETTINGS above, the benchmarks' own) or "defaults"
# (PG_SETTINGS_DEFAULTS).  Sets SETTINGS_NAME.  PGKJ_BENCH_SETTINGS chooses
# for test/bench.sh and test/bench/latency.sh (default tuned); live.sh has
# its --settings.
PG_SETTINGS_TUNED=("${PG_SETTINGS[@]}")
use_settings()
{
	case $1 in
		tuned) PG_SETTINGS=("${PG_SETTINGS_TUNED[@]}") ;;
		defaults) PG_SETTINGS=("${PG_SETTINGS_DEFAULTS[@]}") ;;
		*) echo "unknown settings \"$1\" (defaults or tuned)" >&2; exit 2 ;;
	esac
	SETTINGS_NAME=$1
}
use_settings "${PGKJ_BENCH_SETTINGS:-tuned}"

# Huge pages for the shared memory, as PostgreSQL's documentation advises
# for a server with large shared_buffers ("Linux Huge Pages"): with 4 kB
# pages, the catalog lookups of 10 million movies missed the TLB so often
# that two workers joined 72,000 ratings/s instead of 88,000.  As root, the
# benchmark reserves enough 2 MB pages for 6 GB of shared_buffers
# (vm.nr_hugepages) at its start, before its files fill the page cache, and
# gives them back at exit; huge_pages = try (the default) makes the cluster
# use them, and HUGE_PAGES says whether it did.  PGKJ_BENCH_HUGE_PAGES=off
# reserves none.
HUGE_PAGES_WANTED=3300		# 6.4 GB: shared_buffers, wal_buffers and the rest
HUGE_PAGES="not used"

# reserve_huge_pages: once, right after test_init (nothing with the
# settings "defaults": a new server has no huge pages reserved)
reserve_huge_pages()
{
	local before

	[ "${PGKJ_BENCH_HUGE_PAGES:-on}" != off ] || return 0
	[ "$SETTINGS_NAME" != defaults ] || return 0
	before=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null) || return 0
	[ "$before" -lt "$HUGE_PAGES_WANTED" ] || return 0
	if echo "$HUGE_PAGES_WANTED" 2>/dev/null >/proc/sys/vm/nr_hugepages; then
		on_exit "echo $before >/proc/sys/vm/nr_hugepages"
		# the kernel gives what it finds free in one piece: compact, try again
		if [ "$(cat /proc/sys/vm/nr_hugepages)" -lt "$HUGE_PAGES_WANTED" ]; then
			echo 1 2>/dev/null >/proc/sys/vm/compact_memory
			echo "$HUGE_PAGES_WANTED" 2>/dev/null >/proc/sys/vm/nr_hugepages
		fi
	fi
	return 0
}

# huge_pages_used: after a cluster started, how many 2 MB pages it maps
# (touched, or reserved for it: nothing else here maps huge pages)
huge_pages_used()
{
	awk '/^HugePages_Total:/ { t = $2 } /^HugePages_Free:/ { f = $2 } /^HugePages_Rsvd:/ { r = $2 }
		 END { n = t - f + r; print (n > 0 ? "used (" n " pages of 2 MB)" : "not used") }' /proc/meminfo
}

# start_cluster WORKERS [SETTING...]: start the cluster of $PG_DIR with
# PG_SETTINGS, pgkafka_join.workers = WORKERS (empty: as configured), the
# given settings and those of PGKJ_BENCH_CONF (one per line, last); create
# the extension; set NWORKERS.
start_cluster()
{
	local workers=$1
	local -a settings=("${PG_SETTINGS[@]}") extra_conf
	shift

	if [ -n "$workers" ]; then
		settings+=("pgkafka_join.workers = $workers")
		# the launcher and the workers, and room for parallel workers
		[ "$workers" -lt 7 ] || settings+=("max_worker_processes = $((workers + 2))")
	fi
	settings+=("$@")
	if [ -n "${PGKJ_BENCH_CONF:-}" ]; then
		mapfile -t extra_conf <<<"$PGKJ_BENCH_CONF"
		settings+=("${extra_conf[@]}")
	fi
	pg_start "$PG_DIR" "${settings[@]}"
	HUGE_PAGES=$(huge_pages_used)
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
	NWORKERS=$(psql_q "SHOW pgkafka_join.workers")
	WORKER_PIDS=()
}

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

# The sampling below reads /proc with shell builtins only and starts no
# process: it runs while the workers are being measured (at the start of a
# phase, at its first batch, at the start of latency.sh's steady window),
# and every process it started (a cat per file, a pgrep) would take CPU
# from them, on a machine whose cores they keep busy.

# proc_ticks PID [-c]: set TICKS to the CPU time (user + system, in clock
# ticks) of PID, 0 once it has exited.  With -c, the CPU time of its
# children that have exited and been waited for is added (the postmaster
# reaps its backends: so a finished COPY backend or psql session still
# counts).
proc_ticks()
{
	local stat
	local -a f

	TICKS=0
	read -r stat 2>/dev/null <"/proc/$1/stat" || [ -n "${stat:-}" ] || return 0
	# the fields after the command name, which is in parentheses: f[11]
	# and f[12] are utime and stime, f[13] and f[14] cutime and cstime
	read -r -a f <<<"${stat##*) }"
	TICKS=$((f[11] + f[12]))
	[ "${2:-}" != -c ] || TICKS=$((TICKS + f[13] + f[14]))
}

# runq_ms NAME PID ...: set RUNQ_MS to the time the threads of the
# processes given have spent runnable but waiting for a core (the run queue
# delay of /proc/PID/task/TID/schedstat), in ms, accumulated under NAME
# since the first call: each thread adds what it waited since it was last
# read (all it waited, when it is new).  A thread that exits takes its total
# with it (a worker rebuilds its Kafka handles when its topics change): a
# plain sum over the threads running would then go down.
declare -A RUNQ_LAST=() RUNQ_ACC=()
runq_ms()
{
	local name=$1 pid f tid ns prev acc=${RUNQ_ACC[$1]:-0}

	shift
	for pid in "$@"; do
		for f in /proc/"$pid"/task/*/schedstat; do
			read -r _ ns _ 2>/dev/null <"$f" || continue
			tid=${f%/schedstat}
			tid=${tid##*/}
			prev=${RUNQ_LAST[$tid]:-0}
			# a smaller total: the thread id was used again
			[ "$ns" -ge "$prev" ] || prev=0
			acc=$((acc + ns - prev))
			RUNQ_LAST[$tid]=$ns
		done
	done
	RUNQ_ACC[$name]=$acc
	RUNQ_MS=$((acc / 1000000))
}

# cpu_sample VAR: set VAR to "WORKERS PG_OTHER BROKER BUSY IDLE WQ BQ W0 W1
# ..." in ticks, WORKERS being the sum of the join workers W0, W1, ...
# (WORKER_PIDS, in the order of their numbers; none yet: 0), PG_OTHER every
# other process of the cluster, exited backends included; BUSY and IDLE
# (with iowait) those of the whole machine, all cores; WQ and BQ the run
# queue delay of the workers' and the broker's threads, in ms.  Each
# process is read once, so that what a worker used between two reads is not
# counted as another process's.
cpu_sample()
{
	local pm= broker= others pid sum=0 wq _cpu user nice system idle iowait irq softirq steal
	local -a children each=()
	local -A ticks=()

	read -r pm <"$PG_DIR/data/postmaster.pid" || true
	read -r broker <"$KAFKA_DIR/broker.pid" || true
	# the postmaster's children (it has one thread: its task is the process;
	# the file, without a final newline, needs a kernel with
	# CONFIG_PROC_CHILDREN, as Debian's have: pgrep otherwise)
	if [ -r "/proc/$pm/task/$pm/children" ]; then
		read -r -a children <"/proc/$pm/task/$pm/children" || true
	else
		mapfile -t children < <(pgrep -P "$pm" || true)
	fi
	proc_ticks "$pm" -c
	others=$TICKS
	for pid in "${children[@]}"; do
		proc_ticks "$pid"
		ticks[$pid]=$TICKS
	done
	for pid in "${WORKER_PIDS[@]}"; do
		if [ -z "${ticks[$pid]:-}" ]; then
			proc_ticks "$pid"
			ticks[$pid]=$TICKS
		fi
		each+=("${ticks[$pid]}")
		sum=$((sum + ticks[$pid]))
		unset "ticks[$pid]"
	done
	for pid in "${!ticks[@]}"; do
		others=$((others + ticks[$pid]))
	done
	proc_ticks "$broker"
	read -r _cpu user nice system idle iowait irq softirq steal _ </proc/stat
	runq_ms workers "${WORKER_PIDS[@]}"
	wq=$RUNQ_MS
	runq_ms broker "$broker"
	printf -v "$1" '%s %s %s %s %s %s %s %s' "$sum" "$others" "$TICKS" \
		"$((user + nice + system + irq + softirq + steal))" "$((idle + iowait))" \
		"$wq" "$RUNQ_MS" "${each[*]}"
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
	# the processes' times and the machine's are kept apart by the kernel
	# and round differently: a tick or two below nothing is nothing
	rest="(($rest) < 0 ? 0 : ($rest))"
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

# WAL files ready for reuse, as on a server in service (test/bench/latency.sh
# before it measures, test/bench.sh before its COPY baseline).  A new cluster
# creates each 16 MB WAL file the first time it reaches it, zero-filled
# (wal_init_zero) and synced inside the commit that crosses into it: at
# 10,000 ratings/s that was a commit of the worker's, every 5.5 s, taking
# some 56 ms instead of 2 or 3 (and every result meanwhile waited for it).
# A server that has been through checkpoints renames old files for reuse
# instead (about twice the WAL of a checkpoint interval, within
# min_wal_size and max_wal_size).
# prepare_wal MB: write and switch out of enough WAL files for MB megabytes
# (up to 8000, and 3/4 of max_wal_size), then CHECKPOINT, which recycles them;
# WAL_READY says how many are ready.  PGKJ_BENCH_FRESH_WAL=1 leaves the new
# cluster's WAL as it is.
WAL_READY="none (PGKJ_BENCH_FRESH_WAL=1)"
prepare_wal()
{
	local mb=$(($1 < 8000 ? $1 : 8000)) files ready max_wal
	local ready_sql="SELECT count(*) FROM pg_ls_waldir()
					 WHERE name ~ '^[0-9A-F]{24}\$' AND name > pg_walfile_name(pg_current_wal_lsn())"

	[ "${PGKJ_BENCH_FRESH_WAL:-0}" != 1 ] || return 0
	# a checkpoint keeps no more than max_wal_size allows (in MB here)
	max_wal=$(psql_q "SELECT setting FROM pg_settings WHERE name = 'max_wal_size'")
	[ "$mb" -le $((max_wal * 3 / 4)) ] || mb=$((max_wal * 3 / 4))
	files=$(((mb + 15) / 16))
	psql_q "DO \$\$ BEGIN
				FOR i IN 1..$files LOOP
					PERFORM pg_logical_emit_message(false, 'pgkafka_join.bench', '');
					PERFORM pg_switch_wal();
				END LOOP;
			END \$\$" >/dev/null
	psql_q "CHECKPOINT" >/dev/null
	ready=$(psql_q "$ready_sql")
	[ "$ready" -ge "$files" ] || fail "only $ready WAL files ready for reuse after CHECKPOINT, not $files"
	WAL_READY="$ready files of 16 MB ready for reuse (as on a server in service; PGKJ_BENCH_FRESH_WAL=1: none)"
}

# Waits of the benchmarks, for wait_for: every movie message stored
# (MOVIES_END, or MOVIES, messages in input_offsets), every worker
# consuming, every result recorded as published (status.publish_lag).
movies_stored()
{
	[ "$(psql_q "SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = 'movies'")" = "${MOVIES_END:-$MOVIES}" ]
}

workers_consuming()
{
	[ "$(psql_q "SELECT count(*) FILTER (WHERE state = 'consuming') FROM pgkafka_join.status")" = "$NWORKERS" ]
}

all_published()
{
	[ "$(psql_q "SELECT count(*), coalesce(max(publish_lag), -1) FROM pgkafka_join.status" -F ' ')" = "$NWORKERS 0" ]
}

# The broker creates its internal topics (__transaction_state,
# __consumer_offsets) at their first use, which then takes seconds: use
# them once, so that nothing timed pays for it.
warm_up_broker()
{
	kafka_create_topic bench_warmup 1
	printf 'warmup\twarmup\n' | kafka_produce bench_warmup -x pgkafka_join-bench-warmup >/dev/null 2>&1
	kafka_set_group_offset pgkafka_join-bench-warmup bench_warmup 0 1 >/dev/null
}

# reload_with NAME VALUE: ALTER SYSTEM SET + reload.
reload_with()
{
	psql_q "ALTER SYSTEM SET $1 = '$2'" >/dev/null
	psql_q "SELECT pg_reload_conf()" >/dev/null
}

# movies_file N FILE: movies 1..N as KEY<TAB>VALUE lines, for produce_file
movies_file()
{
	awk -v n="$1" 'BEGIN {
		for (i = 1; i <= n; i++)
			printf "%d\t{\"id\": %d, \"title\": \"Movie %d\", \"release_year\": %d}\n", i, i, i, 1900 + i % 120
	}' >"$2"
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

# verdict EXPR: "met" if the awk expression holds, else "NOT met"
verdict()
{
	if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "NOT met"; fi
}

# server_facts: what is measured, once the cluster runs with the extension
# created: set PG_VERSION, BATCH_SIZE, BATCH_DELAY, JIT, DURABILITY (fsync,
# synchronous_commit and full_page_writes as the server has them),
# SETTINGS_SUMMARY (the settings that weigh most, from pg_settings, on one
# line), LIBRDKAFKA_VERSION, KAFKA_VERSION, SO (the extension's library) and
# LIBRDKAFKA (the library it links), and print the server's settings and the
# machine.  Every figure comes from the server, never from what was asked
# for.
server_facts()
{
	PG_VERSION=$(psql_q "SHOW server_version")
	BATCH_SIZE=$(psql_q "SHOW pgkafka_join.batch_size")
	BATCH_DELAY=$(psql_q "SHOW pgkafka_join.batch_delay")
	JIT=$(psql_q "SHOW jit")
	DURABILITY=$(psql_q "SELECT string_agg(name || ' ' || setting, ', ' ORDER BY ord)
						   FROM pg_settings
						   JOIN (VALUES ('fsync', 1), ('synchronous_commit', 2), ('full_page_writes', 3)) v(n, ord)
							 ON name = n")
	SETTINGS_SUMMARY=$(psql_q "SELECT string_agg(name || ' ' || current_setting(name), ', ' ORDER BY ord)
								 FROM pg_settings
								 JOIN (VALUES ('shared_buffers', 1), ('max_wal_size', 2), ('checkpoint_timeout', 3),
											  ('autovacuum', 4), ('huge_pages', 5), ('pgkafka_join.workers', 6),
											  ('pgkafka_join.batch_size', 7), ('pgkafka_join.batch_delay', 8)) v(n, ord)
								   ON name = n")
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
	say "settings not at their defaults (pg_settings, source other than default):"
	psql_q "SELECT name || ' = ' || setting || coalesce(' ' || unit, '') || ' (' || source || ')'
			  FROM pg_settings
			 WHERE source NOT IN ('default', 'override', 'client', 'session')
			 ORDER BY name" | sed 's/^/#   /'
	say "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB; huge pages $HUGE_PAGES"
}

# so_id: the extension library measured, "MD5 prefix, installed DATE" (others
# may rebuild and reinstall it meanwhile).
so_id()
{
	echo "$(md5sum "$SO" | cut -c1-12), installed $(date -r "$SO" '+%F %T')"
}
