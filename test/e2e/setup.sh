# setup.sh
#		Set-up shared by the end-to-end tests: one Kafka broker with the
#		input and output topics, one PostgreSQL cluster running the join
#		worker against it, the extension created.
#
#	. "$(dirname "$0")/setup.sh"
#	pkj_setup NAME [PARTITIONS] [CONF ...]
#
# Sets TEST_DIR, PG_DIR, KAFKA_DIR, KAFKA_BOOTSTRAP; psql_q talks to the
# cluster.  Also defines helpers to read the output topic.

. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

pkj_setup()
{
	local name=$1 partitions=${2:-3}
	shift 2 || shift $#

	test_init "$name"
	kafka_start "$TEST_DIR/kafka"
	kafka_create_topic movies "$partitions"
	kafka_create_topic ratings "$partitions"
	kafka_create_topic rated_movies "$partitions"
	PG_DIR=$TEST_DIR/pg
	pg_start "$PG_DIR" \
		"pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" \
		"pgkafka_join.database = 'postgres'" \
		"pgkafka_join.retry_interval = '1s'" \
		"$@"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
}

# The Kafka group the servers' claims of their partitions are written in,
# for the output topic rated_movies; the state of a server refused them
CLAIMS_GROUP=pgkafka_join.owners.rated_movies
REFUSED='refused: partitions owned by another server'

# The pid of the (one) join worker, empty when none runs
worker_pid()
{
	psql_q "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'" 2>/dev/null || true
}

# on DIR SQL: psql_q against the cluster of DIR (the current one stays)
on() { local d=$1; shift; (pg_use "$d" && psql_q "$@"); }
# state_of DIR: the state of the worker of the cluster of DIR (one worker)
state_of() { on "$1" "SELECT state FROM pgkafka_join.status"; }
# stored_counts DIR: "input_offsets|movies|ratings|rated_movies" row counts
# of the cluster of DIR
stored_counts()
{
	on "$1" "SELECT (SELECT count(*) FROM pgkafka_join.input_offsets),
	                (SELECT count(*) FROM pgkafka_join.movies),
	                (SELECT count(*) FROM pgkafka_join.ratings),
	                (SELECT count(*) FROM pgkafka_join.rated_movies)"
}

# snapshot_of DIR FILE: what a client of the snapshot-then-tail recipe
# reads from the cluster of DIR, in one REPEATABLE READ transaction, into
# FILE: "row|share|id|rating", "start|partition|start_offset" and
# "share|share|last_id" lines
snapshot_of()
{
	on "$1" >"$2" <<'SQL'
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 'row', share, id, rating FROM pgkafka_join.rated_movies;
SELECT 'start', kafka_partition, start_offset FROM pgkafka_join.output_position();
SELECT 'share', share, last_id FROM pgkafka_join.snapshot_shares();
COMMIT;
SQL
}

# handover RUN: the snapshots of clusters PG_A and PG_B (snapshot_of),
# each in its own transaction, to $TEST_DIR/handover.RUN.{A,B}; RUN's path
# is added to the array "runs", for the check of all of them at the end
runs=()
handover()
{
	local run=$TEST_DIR/handover.$1

	snapshot_of "$PG_A" "$run.A"
	snapshot_of "$PG_B" "$run.B"
	runs+=("$run")
}

# Size of the server log of PG_DIR now, to show or count what is logged after.
log_mark() { stat -c %s "$PG_DIR/server.log"; }
# The server log from byte $1 (to byte $2).
log_since()
{
	if [ $# -gt 1 ]; then
		tail -c +$(($1 + 1)) "$PG_DIR/server.log" | head -c $(($2 - $1))
	else
		tail -c +$(($1 + 1)) "$PG_DIR/server.log"
	fi
}

# The output topic's committed records as "KEY<TAB>VALUE", sorted, with the
# rated_at field removed from values (it is the Kafka message time when a
# rating has none of its own).
output_without_time()
{
	kafka_consume rated_movies | cut -f3,4 |
		sed -E 's/,"rated_at":"[^"]*"//' | LC_ALL=C sort
}

# The tutorial's movies and ratings (Confluent's movie-ratings join),
# produced to "movies" and "ratings".
produce_tutorial()
{
	kafka_produce movies <<'EOF'
294	{"id": 294, "title": "Die Hard", "release_year": 1988}
354	{"id": 354, "title": "Tree of Life", "release_year": 2011}
782	{"id": 782, "title": "A Walk in the Clouds", "release_year": 1995}
128	{"id": 128, "title": "The Big Lebowski", "release_year": 1998}
780	{"id": 780, "title": "Super Mario Bros.", "release_year": 1993}
EOF
	kafka_produce ratings <<'EOF'
294	{"id": 294, "rating": 8.2}
294	{"id": 294, "rating": 8.5}
354	{"id": 354, "rating": 9.9}
354	{"id": 354, "rating": 9.7}
782	{"id": 782, "rating": 7.8}
782	{"id": 782, "rating": 7.7}
128	{"id": 128, "rating": 8.7}
128	{"id": 128, "rating": 8.4}
780	{"id": 780, "rating": 2.1}
EOF
}

# The tutorial's nine results, as output_without_time prints them.
tutorial_results()
{
	cat <<'EOF'
128	{"id":128,"title":"The Big Lebowski","release_year":1998,"rating":8.4}
128	{"id":128,"title":"The Big Lebowski","release_year":1998,"rating":8.7}
294	{"id":294,"title":"Die Hard","release_year":1988,"rating":8.2}
294	{"id":294,"title":"Die Hard","release_year":1988,"rating":8.5}
354	{"id":354,"title":"Tree of Life","release_year":2011,"rating":9.7}
354	{"id":354,"title":"Tree of Life","release_year":2011,"rating":9.9}
780	{"id":780,"title":"Super Mario Bros.","release_year":1993,"rating":2.1}
782	{"id":782,"title":"A Walk in the Clouds","release_year":1995,"rating":7.7}
782	{"id":782,"title":"A Walk in the Clouds","release_year":1995,"rating":7.8}
EOF
}

output_count()
{
	kafka_consume rated_movies | wc -l
}

# Wait until the output topic holds N committed records, then a little
# longer, so that a duplicate would have time to show.
wait_for_output()
{
	local n=$1 timeout=${2:-60}

	wait_for "$timeout" "[ \"\$(output_count)\" -ge $n ]" ||
		fail "the output topic did not reach $n records (has $(output_count))"
	sleep 2
}

# check_output_exactly_once WHAT: the output topic's committed records are
# rated_movies' rows, each (share, id) once, and their (movie id, rating)
# pairs are $TEST_DIR/expected's lines ("movie_id<TAB>rating", sorted, each
# movie titled "Movie <id>"), each exactly once.  WHAT names the situation
# in the last check.  The output topic is $OUTPUT_TOPIC (default
# rated_movies).
check_output_exactly_once()
{
	local what=$1 lost extra

	kafka_consume "${OUTPUT_TOPIC:-rated_movies}" -f '%h\t%k\t%s\n' >"$TEST_DIR/output"
	check_eq "the output topic carries each (share, id) of rated_movies once, and no other" \
		"$(psql_q "SELECT string_agg(share || ':' || id, ',' ORDER BY share, id) FROM pgkafka_join.rated_movies")" \
		"$(python3 -c '
import sys
for line in open(sys.argv[1]):
    h = dict(kv.split("=", 1) for kv in line.split("\t", 1)[0].split(","))
    print(h["pgkafka_join.share"] + ":" + h["pgkafka_join.id"])' "$TEST_DIR/output" |
			sort -t: -k1,1n -k2,2n | paste -sd,)"
	python3 - "$TEST_DIR/output" >"$TEST_DIR/actual" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    headers, key, value = line.rstrip("\n").split("\t", 2)
    v = json.loads(value)
    assert str(v["id"]) == key and v["title"] == f"Movie {key}", line
    print(f'{v["id"]}\t{v["rating"]}')
PY
	sort -o "$TEST_DIR/actual" "$TEST_DIR/actual"
	lost=$(comm -23 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	extra=$(comm -13 "$TEST_DIR/expected" "$TEST_DIR/actual" | wc -l)
	echo "# results on the topic: $(wc -l <"$TEST_DIR/actual"), lost: $lost, duplicated or unexpected: $extra"
	check_eq "$what, the output topic holds every expected result exactly once" "0 0" "$lost $extra"
}

# stream_files MOVIES RATINGS CHUNKS SEED: a stream of RATINGS ratings of
# movies 1..MOVIES (chosen at random from SEED), each with a distinct value,
# as CHUNKS files $TEST_DIR/ratings.<chunk> of "key<TAB>value" lines, and
# the results they give, sorted, in $TEST_DIR/expected as
# "movie_id<TAB>rating".
stream_files()
{
	python3 - "$TEST_DIR" "$@" <<'PY'
import random, sys
out, movies, ratings, chunks, seed = sys.argv[1], *map(int, sys.argv[2:])
rnd = random.Random(seed)
expected = []
n = 0
for c in range(chunks):
    with open(f"{out}/ratings.{c}", "w") as f:
        for i in range(ratings // chunks):
            n += 1
            m = rnd.randrange(1, movies + 1)
            rating = repr(n / 1000).removesuffix(".0")  # as JSON prints it
            f.write(f'{m}\t{{"id": {m}, "rating": {rating}}}\n')
            expected.append(f"{m}\t{rating}")
with open(f"{out}/expected", "w") as f:
    f.write("\n".join(sorted(expected)) + "\n")
PY
}

# stream_produce [GATE_CHUNK GATE_FILE ...]: produce the chunks
# stream_files made ($TEST_DIR/ratings.0, 1, ...) to the ratings topic, in
# the background, 0.3 s apart, touching $TEST_DIR/produced.<chunk> after
# each; from each chunk GATE_CHUNK on, once its GATE_FILE exists.  Sets
# PRODUCER to the background job's pid, to wait for.
stream_produce()
{
	local gates=("$@")

	(
		for ((c = 0; ; c++)); do
			[ -e "$TEST_DIR/ratings.$c" ] || break
			for ((g = 0; g + 1 < ${#gates[@]}; g += 2)); do
				if [ "$c" -eq "${gates[g]}" ]; then
					while [ ! -e "${gates[g + 1]}" ]; do sleep 0.1; done
				fi
			done
			kafka_produce ratings <"$TEST_DIR/ratings.$c"
			touch "$TEST_DIR/produced.$c"
			sleep 0.3
		done
	) &
	PRODUCER=$!
}

# produce_by_id TOPIC PARTITIONS: produce the "KEY<TAB>VALUE" lines of stdin,
# KEY a movie id in decimal, each to partition KEY % PARTITIONS of TOPIC
# (rather than where murmur2 would put it), in order within a partition; an
# empty VALUE is a tombstone, as for kafka_produce.
produce_by_id()
{
	local topic=$1 n=$2 dir p

	dir=$(mktemp -d "$TEST_DIR/produce_by_id.XXXXXX")
	awk -F'\t' -v n="$n" -v dir="$dir" '
		$1 !~ /^[0-9]+$/ { print "produce_by_id: key \"" $1 "\" is not a movie id" > "/dev/stderr"; exit 1 }
		{ print > (dir "/" ($1 % n)) }' || { rm -rf "$dir"; return 1; }
	for ((p = 0; p < n; p++)); do
		[ ! -s "$dir/$p" ] || kafka_produce "$topic" -p "$p" <"$dir/$p" || { rm -rf "$dir"; return 1; }
	done
	rm -rf "$dir"
}

# pg_private_install DIR: a private copy of the PostgreSQL installation in
# DIR (PostgreSQL finds its files relative to its programs), into which
# other builds of the extension are installed with DESTDIR=DIR; sets INST
# and PG_BIN (the copy's programs, which pg_start and psql_q then use).
# Nothing outside DIR is touched.
pg_private_install()
{
	local pg_lib pg_share

	INST=$1
	pg_lib=$(pg_config --pkglibdir)
	pg_share=$(pg_config --sharedir)
	[ "$(dirname "$pg_lib")/bin" = "$(pg_config --bindir)" ] ||
		fail "unexpected PostgreSQL layout: $(pg_config --bindir), $pg_lib"
	mkdir -p "$INST$(dirname "$(dirname "$pg_lib")")" "$INST$(dirname "$pg_share")"
	cp -a "$(dirname "$pg_lib")" "$INST$(dirname "$(dirname "$pg_lib")")/"
	cp -a "$pg_share" "$INST$(dirname "$pg_share")/"
	PG_BIN=$INST$(pg_config --bindir)
	[ "$("$PG_BIN/pg_config" --sharedir)" = "$INST$pg_share" ] ||
		fail "the copy of PostgreSQL does not find its own files"
}

# install_release VERSION COMMIT: build COMMIT of this repository (from its
# git history), which must be release VERSION, and install it in INST.
install_release()
{
	local version=$1 commit=$2 dir=$TEST_DIR/v$1

	[ -n "$commit" ] && git -C "$TEST_TOP" cat-file -e "$commit" 2>/dev/null ||
		fail "the $version release is not in this clone's history (a shallow clone?)"
	mkdir -p "$dir"
	git -C "$TEST_TOP" archive "$commit" | tar -x -C "$dir"
	grep -q "default_version = '$version'" "$dir/pgkafka_join.control" ||
		fail "commit $commit is not $version"
	make -s -C "$dir" >"$TEST_DIR/build-$version.log" 2>&1 &&
		make -s -C "$dir" install DESTDIR="$INST" >>"$TEST_DIR/build-$version.log" 2>&1 ||
		{ cat "$TEST_DIR/build-$version.log" >&2; fail "could not build $version"; }
	pass "$version built from commit $(git -C "$TEST_TOP" rev-parse --short "$commit") and installed"
}

# describe_extension [PSQL ARGS]: the extension's objects, one per line:
# relations with their columns and privileges, indexes, functions with
# their settings, privileges and source, triggers, configuration tables.
describe_extension()
{
	psql_q "
	SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '') || ' ' ||
	       coalesce((SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull, ',' ORDER BY a.attnum)
	                   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '') || ' ' ||
	       coalesce(pg_get_viewdef(c.oid), '')
	  FROM pg_class c
	 WHERE c.relnamespace = 'pgkafka_join'::regnamespace AND NOT c.relispartition AND c.relkind <> 'i'
	   AND c.relname !~ '^movies_p[0-9]+(_pkey)?\$'
	UNION ALL
	SELECT 'index ' || pg_get_indexdef(x.indexrelid)
	  FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
	 WHERE c.relnamespace = 'pgkafka_join'::regnamespace AND NOT c.relispartition AND c.relkind <> 'i'
	UNION ALL
	SELECT 'function ' || p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' ||
	       pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.prosecdef::text || ' ' ||
	       coalesce(p.proconfig::text, '') || ' ' || coalesce(p.proacl::text, '') || ' ' || md5(p.prosrc)
	  FROM pg_proc p WHERE p.pronamespace = 'pgkafka_join'::regnamespace
	UNION ALL
	SELECT 'trigger ' || pg_get_triggerdef(t.oid)
	  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
	 WHERE c.relnamespace = 'pgkafka_join'::regnamespace
	UNION ALL
	SELECT 'config ' || c::regclass::text
	  FROM pg_extension e, unnest(e.extconfig) c WHERE e.extname = 'pgkafka_join'
	ORDER BY 1" "$@"
}

# check_objects_as_fresh: the extension's objects in this database (an
# upgraded install) are those a CREATE EXTENSION of the current version
# makes in a new database.
check_objects_as_fresh()
{
	local current fresh upgraded db=fresh_$RANDOM

	current=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$TEST_TOP/pgkafka_join.control")
	psql_q "CREATE DATABASE $db"
	PGDATABASE=$db psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
	fresh=$(PGDATABASE=$db describe_extension) || fail "could not describe the fresh install"
	upgraded=$(describe_extension) || fail "could not describe the upgraded install"
	psql_q "DROP DATABASE $db"
	[ "$(wc -l <<<"$fresh")" -gt 50 ] || fail "the description is too short: $fresh"
	check_eq "the upgraded objects are those of a fresh $current install ($(wc -l <<<"$fresh") objects)" \
		"$fresh" "$upgraded"
}
