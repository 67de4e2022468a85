#!/bin/bash
#
# bench.sh
#		Benchmark of pgkafka_join against a real Kafka broker and a real
#		PostgreSQL cluster.
#
#	test/bench.sh [MOVIES] [RATINGS]		# defaults: 1000000 and 200000
#
# In one run, as root:
#	1. starts a broker (topics movies, ratings, rated_movies, ratings_bench,
#	   3 partitions each) and a cluster with the extension preloaded but
#	   pgkafka_join.brokers empty, so the worker stays idle;
#	2. produces MOVIES movies to "movies" (not timed);
#	3. COPY baseline: a server-side COPY of the same rows into the same,
#	   empty pgkafka_join.movies; then TRUNCATE, VACUUM, CHECKPOINT;
#	4. catalog ingest: sets pgkafka_join.brokers and times the worker until
#	   input_offsets says all MOVIES messages are stored;
#	5. ratings: RATINGS ratings of loaded movies (no rated_at: the message
#	   time, inside the window) are produced to "ratings_bench" while the
#	   worker reads "ratings"; then pgkafka_join.ratings_topic is switched
#	   to "ratings_bench" and the clock runs until every rating is stored,
#	   joined and its result committed to Kafka (output_position);
#	6. prints a summary.
#
# Durability stays on (fsync, synchronous_commit, full_page_writes): the
# figures are those of a real server.  During each timed phase the CPU time
# of the worker, of the other PostgreSQL processes and of the broker is
# sampled from /proc and printed as a share of one core.
#
# Environment:
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

MOVIES=${1:-1000000}
RATINGS=${2:-200000}
BATCH_SIZE=${PGKJ_BENCH_BATCH_SIZE:-}
TIMEOUT=${PGKJ_BENCH_TIMEOUT:-3600}

[[ "$MOVIES" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [MOVIES] [RATINGS]" >&2; exit 2; }
[[ "$RATINGS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [MOVIES] [RATINGS]" >&2; exit 2; }
[ -z "$BATCH_SIZE" ] || [[ "$BATCH_SIZE" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "PGKJ_BENCH_BATCH_SIZE must be a positive integer" >&2; exit 2; }

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
# the worker's.
broker_pid()
{
	cat "$KAFKA_DIR/broker.pid"
}

postmaster_pid()
{
	head -1 "$PG_DIR/data/postmaster.pid"
}

worker_pid()
{
	psql_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'"
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

# Busy and idle (with iowait) ticks of the whole machine, all cores.
machine_ticks()
{
	awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat
}

# cpu_sample: print "WORKER PG_OTHER BROKER BUSY IDLE" in ticks, PG_OTHER being
# every other process of the cluster, exited backends included.
cpu_sample()
{
	local pm wp all worker

	pm=$(postmaster_pid)
	wp=${WORKER_PID:-0}
	worker=$(cpu_ticks "$wp")
	all=$(( $(cpu_ticks -c "$pm") + $(cpu_ticks $(pgrep -P "$pm" || true)) ))
	echo "$worker $((all - worker)) $(cpu_ticks "$(broker_pid)") $(machine_ticks)"
}

# cpu_report START_SAMPLE END_SAMPLE SECONDS: CPU used, in shares of one
# core; "rest of the machine" is everything else that kept the cores busy
# (kernel threads, this script and its psql and kcat, other users).
cpu_report()
{
	local -a a=($1) b=($2)
	local secs=$3 rest

	share()
	{
		calc "100 * ($1) / $CLK_TCK / $secs" %.0f
	}
	rest="(${b[3]} - ${a[3]}) - (${b[0]} - ${a[0]}) - (${b[1]} - ${a[1]}) - (${b[2]} - ${a[2]})"
	say "CPU, % of one core ($(nproc) cores = $(($(nproc) * 100))%): worker $(share "${b[0]} - ${a[0]}")," \
		"other PostgreSQL processes $(share "${b[1]} - ${a[1]}"), Kafka broker $(share "${b[2]} - ${a[2]}")," \
		"rest of the machine $(share "$rest"), idle $(share "${b[4]} - ${a[4]}")"
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
# fail after TIMEOUT seconds.  With FIRST_SQL, also set FIRST_AT to the
# time FIRST_SQL first returned "t" (the first batch stored, say).
poll_until()
{
	local sql=$1 first=${2:-} deadline=$((SECONDS + TIMEOUT))

	FIRST_AT=
	until [ "$(psql_q "$sql")" = t ]; do
		[ $SECONDS -lt $deadline ] || fail "timed out after ${TIMEOUT}s waiting for: $sql"
		if [ -n "$first" ] && [ -z "$FIRST_AT" ] && [ "$(psql_q "$first")" = t ]; then
			FIRST_AT=$(now)
		fi
		sleep 0.2
	done
	[ -n "$FIRST_AT" ] || FIRST_AT=$(now)
}

# Produce a KEY<TAB>VALUE file to a topic quickly (not part of any figure).
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

	for p in 0 1 2; do
		end=$(kcat -Q -b "$KAFKA_BOOTSTRAP" -t "$topic:$p:-1" 2>/dev/null | awk '{ print $NF }')
		sum=$((sum + end))
	done
	echo "$sum"
}


#
# 1. Broker and cluster
#
test_init bench
say "bench: $MOVIES movies, $RATINGS ratings; scratch directory $TEST_DIR"
kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies ratings_bench; do
	kafka_create_topic "$topic" 3
done

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
if [ -n "${PGKJ_BENCH_CONF:-}" ]; then
	mapfile -t extra_conf <<<"$PGKJ_BENCH_CONF"
	PG_SETTINGS+=("${extra_conf[@]}")
fi
pg_start "$PG_DIR" "${PG_SETTINGS[@]}"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
chmod 755 "$TEST_DIR"

PG_VERSION=$(psql_q "SHOW server_version")
BATCH_SIZE=$(psql_q "SHOW pgkafka_join.batch_size")
BATCH_DELAY=$(psql_q "SHOW pgkafka_join.batch_delay")
LIBRDKAFKA_VERSION=$(dpkg-query -W -f '${Version}' librdkafka1 2>/dev/null || echo "?")
KAFKA_VERSION=$(basename "$(compgen -G "$TEST_TOP/.cache/kafka-libs/kafka_2.13-*.jar" | head -1)" .jar)
KAFKA_VERSION=${KAFKA_VERSION#kafka_2.13-}
SO=$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo "$PG_BIN/../lib")/pgkafka_join.so
[ -f "$SO" ] || SO=/usr/lib/postgresql/15/lib/pgkafka_join.so
# Others may rebuild the extension meanwhile: say which build was measured.
SO_ID="$(md5sum "$SO" | cut -c1-12), installed $(date -r "$SO" '+%F %T')"
say "extension: $SO ($SO_ID)"
LIBRDKAFKA=$(ldd "$SO" 2>/dev/null | awk '/librdkafka/ { print $3 }')

say "PostgreSQL $PG_VERSION; settings:"
psql_q "SELECT name || ' = ' || setting || coalesce(' ' || unit, '')
		  FROM pg_settings
		 WHERE name IN ('shared_buffers', 'wal_buffers', 'max_wal_size', 'min_wal_size',
						'checkpoint_timeout', 'checkpoint_completion_target', 'wal_compression',
						'work_mem', 'maintenance_work_mem', 'fsync', 'synchronous_commit',
						'full_page_writes', 'wal_level', 'jit', 'autovacuum',
						'pgkafka_join.batch_size', 'pgkafka_join.batch_delay')
			OR (name LIKE 'pgkafka_join.%' AND source NOT IN ('default', 'override'))
		 ORDER BY name" | sed 's/^/#   /'
say "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GB; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"


#
# 2. Data files; movies to Kafka
#
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

t0=$(now)
produce_file movies "$MOVIES_KAFKA"
t1=$(now)
[ "$(topic_end movies)" = "$MOVIES" ] || fail "topic movies holds $(topic_end movies) messages, not $MOVIES"
say "produced $MOVIES movies to Kafka in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"


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
COPY_S=$(calc "$t1 - $t0" %.2f)
COPY_RATE=$(calc "$MOVIES / $COPY_S" %.0f)
[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] || fail "COPY did not load $MOVIES rows"
say "COPY: $MOVIES rows in $COPY_S s = $COPY_RATE rows/s; WAL $(wal_mb "$lsn0") MB"
cpu_report "$cpu0" "$cpu1" "$COPY_S"

psql_q "TRUNCATE pgkafka_join.movies"
psql_q "VACUUM pgkafka_join.movies"
psql_q "CHECKPOINT"


#
# 4. Catalog ingest through the worker
#
lsn0=$(wal_lsn)
reload_with pgkafka_join.brokers "$KAFKA_BOOTSTRAP"
t0=$(now)
cpu0=
deadline=$((SECONDS + 60))
until WORKER_PID=$(worker_pid) && [ -n "$WORKER_PID" ]; do
	[ $SECONDS -lt $deadline ] || fail "no pgkafka_join worker"
	sleep 0.1
done
cpu0=$(cpu_sample)
poll_until "SELECT coalesce(sum(next_offset), 0) = $MOVIES FROM pgkafka_join.input_offsets WHERE topic = 'movies'" \
	"SELECT coalesce(sum(next_offset), 0) > 0 FROM pgkafka_join.input_offsets WHERE topic = 'movies'"
t1=$(now)
FIRST_MOVIES_S=$(calc "$FIRST_AT - $t0" %.1f)
cpu1=$(cpu_sample)
INGEST_S=$(calc "$t1 - $t0" %.2f)
INGEST_RATE=$(calc "$MOVIES / $INGEST_S" %.0f)
INGEST_RATIO=$(calc "$INGEST_RATE / $COPY_RATE" %.2f)
[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = "$MOVIES" ] ||
	fail "pgkafka_join.movies does not hold $MOVIES rows"
[ "$(psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages")" = 0 ] ||
	fail "some movies were rejected"
say "catalog ingest: $MOVIES movies in $INGEST_S s = $INGEST_RATE movies/s; COPY: $COPY_S s = $COPY_RATE rows/s; ratio ${INGEST_RATIO}x COPY"
say "first batch stored after $FIRST_MOVIES_S s (connecting); WAL $(wal_mb "$lsn0") MB"
cpu_report "$cpu0" "$cpu1" "$INGEST_S"


#
# 5. Ratings: stored, joined and published
#
t0=$(now)
produce_file ratings_bench "$RATINGS_KAFKA"
t1=$(now)
[ "$(topic_end ratings_bench)" = "$RATINGS" ] ||
	fail "topic ratings_bench holds $(topic_end ratings_bench) messages, not $RATINGS"
say "produced $RATINGS ratings to Kafka in $(calc "$t1 - $t0" %.1f) s (not part of any figure)"
[ "$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")" = 0 ] ||
	fail "the worker read ratings too early"

lsn0=$(wal_lsn)
reload_with pgkafka_join.ratings_topic ratings_bench
t0=$(now)
cpu0=$(cpu_sample)
# All stored (each one joined, its movie being there) ...
poll_until "SELECT coalesce(sum(next_offset), 0) = $RATINGS FROM pgkafka_join.input_offsets WHERE topic = 'ratings_bench'" \
	"SELECT coalesce(sum(next_offset), 0) > 0 FROM pgkafka_join.input_offsets WHERE topic = 'ratings_bench'"
t_stored=$(now)
FIRST_RATINGS_S=$(calc "$FIRST_AT - $t0" %.1f)
# ... and the last result committed to Kafka.  (The sum of output_position's
# next_offset also counts the transaction markers, one per partition and
# Kafka transaction: the result ids are the exact criterion.)
poll_until "SELECT coalesce((SELECT max(last_id) FROM pgkafka_join.output_position), 0)
				   >= (SELECT last_value FROM pgkafka_join.rated_movies_id_seq)"
t1=$(now)
cpu1=$(cpu_sample)
RATINGS_S=$(calc "$t1 - $t0" %.2f)
STORED_S=$(calc "$t_stored - $t0" %.2f)
RATINGS_RATE=$(calc "$RATINGS / $RATINGS_S" %.0f)

check_eq "rated_movies holds $RATINGS results" "$RATINGS" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"
check_eq "every rating is joined" "$RATINGS" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings WHERE joined")"
OUTPUT_NEXT=$(psql_q "SELECT sum(next_offset) FROM pgkafka_join.output_position")
OUTPUT_KAFKA=$(kcat -C -b "$KAFKA_BOOTSTRAP" -t rated_movies -o beginning -e -q \
	-X isolation.level=read_committed -X log_level=3 -f '\n' | wc -l)
check_eq "the output topic holds $RATINGS committed records (read_committed)" "$RATINGS" "$OUTPUT_KAFKA"
KAFKA_TXNS=$(( (OUTPUT_NEXT - RATINGS) ))
say "ratings: $RATINGS ratings stored and joined in $STORED_S s, published (Kafka commit) by $RATINGS_S s = $RATINGS_RATE ratings/s joined and published"
say "output_position: sum(next_offset) = $OUTPUT_NEXT = $RATINGS records + $KAFKA_TXNS markers of committed Kafka transactions (the last ones excluded)"
say "first batch stored after $FIRST_RATINGS_S s (reconnecting); WAL $(wal_mb "$lsn0") MB"
cpu_report "$cpu0" "$cpu1" "$RATINGS_S"


#
# 6. Summary
#
RUN_S=$(calc "$(now) - $RUN_START" %.0f)
verdict()
{
	if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "NOT met"; fi
}
cat <<EOF

=== pgkafka_join benchmark ===
movies                 $MOVIES (3 partitions)
ratings                $RATINGS (3 partitions)
COPY baseline          $COPY_S s = $COPY_RATE rows/s
catalog ingest         $INGEST_S s = $INGEST_RATE movies/s = ${INGEST_RATIO}x COPY   (target >= 0.5x: $(verdict "$INGEST_RATIO >= 0.5"))
ratings                $RATINGS_S s = $RATINGS_RATE ratings/s joined and published   (target >= 20000/s: $(verdict "$RATINGS_RATE >= 20000"))
                       (all stored and joined after $STORED_S s)
batch_size             $BATCH_SIZE (batch_delay $BATCH_DELAY)
extension              $SO_ID
PostgreSQL             $PG_VERSION (fsync on, synchronous_commit on, jit $(psql_q "SHOW jit"))
librdkafka             $LIBRDKAFKA_VERSION (${LIBRDKAFKA:-?})
Kafka                  $KAFKA_VERSION (Scala 2.13, single broker, KRaft, on the same machine)
machine                $(nproc) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg)
whole run              $RUN_S s
EOF
