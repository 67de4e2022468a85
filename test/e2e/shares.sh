#!/bin/bash
#
# shares.sh
#		Two servers share the input partitions: one Kafka broker, topics
#		movies, ratings and rated_movies of 6 partitions each, and two
#		PostgreSQL clusters running the join against them, cluster A with
#		pgkafka_join.partitions = '0-2' and 2 workers, cluster B with
#		'3-5' and 1 worker.  Every message is keyed by its movie id in
#		decimal, so the key (murmur2, as kafka_produce partitions) puts a
#		movie and its ratings in the same partition number of both topics,
#		hence on the same server: together the two servers must give
#		exactly what one server would.
#
# 1. A stream (ratings before and after their movie, ratings older than the
#    one-month window, ratings of movies that never come) produced while
#    both servers run: the union of both servers' rated_movies, and the
#    output topic read with read_committed, equal the results computed by
#    the test from what was produced (each rating once, with its movie's
#    fields); every output record's (pgkafka_join.share, pgkafka_join.id)
#    headers name exactly one result row of one server, the share being
#    the partition of the movie id, owned by that server; each server's
#    movies table holds exactly the movies of its partitions (as the
#    movies topic shows them); status has one row per worker with the
#    partitions it owns (A: worker 0 '0,2', worker 1 '1'; B: '3-5'), and
#    input_status lists the server's partitions only, with their worker.
#    At the end: no process of A, B or C crashed ("terminated by signal").
# 2. Cluster B is killed (SIGKILL, postmaster and children) in the middle
#    of a second stream: A goes on publishing results of its partitions
#    while B is down, nothing of B's shares is published meanwhile; B
#    started again takes its partitions back at once (no refusal) and
#    catches up: the same exact checks hold, nothing lost, no duplicate.
# 3. A third cluster C with partitions '2-3' (overlapping both) is started
#    while A and B run a third stream: within 30 s its state is 'refused:
#    partitions owned by another server', its log has a WARNING saying
#    "another server owns"; C stores, consumes and publishes nothing
#    (input_offsets, ratings, movies, rated_movies stay empty) while A and
#    B publish more results; A and B never refuse.
# 4. Keys: a rating keyed "x7", a rating of movie 9 keyed "8", a rating
#    without a key, a movie 13 keyed "12", a movie 999 keyed "998" and a
#    movie 14 keyed "x14" are each rejected exactly once, by the server
#    owning the partition they landed on, with a reason starting with
#    'key is not the movie id'; they give no result (ratings of movie 999,
#    properly keyed, wait forever) and change no movie.
# 6. Two more clusters D and E, for all 6 partitions and their own output
#    topic, are given the brokers at the same moment (both reloaded at
#    once): within 30 s one is 'refused: partitions owned by another
#    server', the other 'consuming' and soon has offsets for all 12 input
#    partitions; the refused one stored nothing (input_offsets, ratings,
#    movies, rated_movies, rejected_messages stay empty), although it may
#    have stored messages, uncommitted, while its claims waited to be read
#    back.
#    Which of the two ways it is refused depends on timing: it read the
#    other's claims before writing its own (and watched them change), or
#    it wrote first and found the other's when reading its own back.
# 7. A cluster F for all 6 partitions and its own output topic is given
#    the brokers while a claimant, polling the claims group, waits for F's
#    new claims and at once claims the same partitions as "intruder":
#    when F reads its claims back it is refused (WARNING naming
#    "intruder"), says that it rolled back the messages (more than 0) it
#    stored meanwhile, and holds nothing (input_offsets, ratings, movies,
#    rated_movies, rejected_messages empty).  The intruder, whose claims
#    say that it holds nothing of the partitions, never renews: its claim
#    lapses, F takes the partitions over ('consuming', "takes
#    over partitions whose claim lapsed") and stores exactly what the
#    server that kept the partitions in 6. holds, with the same settings
#    (the same row counts), once both hold the input offsets of A and B.
# 5. The snapshot-then-tail handover across the two servers, 7 times while
#    streams run: on each server, in one REPEATABLE READ transaction,
#    rated_movies, output_position() and snapshot_shares(); then the
#    output topic from, per partition, the lowest start_offset of the
#    two servers (0 if one of them has none), skipping records whose
#    pgkafka_join.id is at most the snapshot's last_id of their
#    pgkafka_join.share, as docs/backup.md says.  At the end, snapshot plus tail
#    must hold every result exactly once.

. "$(dirname "$0")/setup.sh"
test_init shares

GEN=$TEST_DIR/gen
mkdir -p "$GEN"
PY=$TEST_DIR/shares.py
cat >"$PY" <<'PY'
"""Stream generator and checks of test/e2e/shares.sh."""
import datetime, json, os, random, sys

sys.path.insert(0, os.path.join(os.environ["TEST_TOP"], "test", "kafka"))
from murmur2_partition import murmur2

NPART = 6


def partition_of(key):
    return (murmur2(key.encode()) & 0x7FFFFFFF) % NPART


def parts(arg):
    return {int(p) for p in arg.split(",")}


def movie_value(m):
    return f'{{"id": {m}, "title": "Movie {m}", "release_year": {1900 + m % 100}}}'


def movie_row(m):
    return f"{m}|Movie {m}|{1900 + m % 100}"


def fmt_rating(x):
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def gen(out, seed):
    """Write the three phases' chunks, the bad messages and the expected
    results after each phase ("movie|title|year|rating", sorted)."""
    rnd = random.Random(seed)
    now = datetime.datetime.now(datetime.timezone.utc)
    never = [999] + list(range(1001, 1021))
    movie_phase = {}
    ratings = []        # (phase, movie, value n, old)
    n = 0
    # phase: (chunks, ratings per chunk, highest movie id rated)
    plan = {1: (20, 80, 300), 2: (36, 45, 320), 3: (25, 30, 320)}

    def movies_of(phase, c):
        if phase == 1:
            if c < 10:
                return range(20 * c + 1, 20 * c + 21)
            if c >= 15:
                return range(201 + 12 * (c - 15), 213 + 12 * (c - 15))
        if phase == 2:
            ids = []
            if 8 <= c < 28:
                ids += [261 + 2 * (c - 8), 262 + 2 * (c - 8)]
            if 20 <= c < 30:
                ids += [301 + 2 * (c - 20), 302 + 2 * (c - 20)]
            return ids
        return []

    for phase, (chunks, per_chunk, top) in plan.items():
        for c in range(chunks):
            with open(f"{out}/p{phase}.movies.{c}", "w") as f:
                for m in movies_of(phase, c):
                    assert m not in movie_phase
                    movie_phase[m] = phase
                    f.write(f"{m}\t{movie_value(m)}\n")
            with open(f"{out}/p{phase}.ratings.{c}", "w") as f:
                for _ in range(per_chunk):
                    n += 1
                    m = rnd.choice(never) if rnd.random() < 0.1 else rnd.randint(1, top)
                    v = {"id": m, "rating": n}
                    old = rnd.random() < 0.07
                    if old:
                        t = now - datetime.timedelta(days=rnd.uniform(40, 60))
                        v["rated_at"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
                    elif rnd.random() < 0.2:
                        t = now - datetime.timedelta(days=rnd.uniform(0, 10))
                        v["rated_at"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
                    ratings.append((phase, m, n, old))
                    f.write(f"{m}\t{json.dumps(v)}\n")
    for k in plan:
        rows = [f"{movie_row(m)}|{r}" for (ph, m, r, old) in ratings
                if ph <= k and not old and movie_phase.get(m, 99) <= k]
        with open(f"{out}/expected.{k}", "w") as f:
            f.writelines(r + "\n" for r in sorted(rows))
    with open(f"{out}/counts", "w") as f:
        for k in plan:
            f.write(f"{k} {sum(1 for r in ratings if r[0] == k)} "
                    f"{sum(1 for r in ratings if r[0] == k and r[3])} "
                    f"{sum(1 for r in ratings if r[0] == k and r[1] in never)}\n")
    # Messages whose key is not their movie id (phase 1, after chunk 12:
    # movies 1..200 are all there).
    bad_ratings = ['x7\t{"id": 7, "rating": 900001}',
                   '8\t{"id": 9, "rating": 900002}',
                   '{"id": 10, "rating": 900003}']          # no key
    bad_movies = ['12\t{"id": 13, "title": "Wrong 13", "release_year": 1}',
                  '998\t{"id": 999, "title": "Wrong 999"}',
                  'x14\t{"id": 14, "title": "Wrong 14"}']
    with open(f"{out}/bad.ratings", "w") as f:
        f.writelines(l + "\n" for l in bad_ratings)
    with open(f"{out}/bad.movies", "w") as f:
        f.writelines(l + "\n" for l in bad_movies)
    with open(f"{out}/bad.values", "w") as f:
        for t, lines in (("ratings", bad_ratings), ("movies", bad_movies)):
            for l in lines:
                f.write(f"{t}\t{l.split(chr(9))[-1]}\n")


def records(path):
    """The output dump, kcat -f '%p\\t%o\\t%h\\t%k\\t%s\\n'."""
    recs = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            p, o, h, k, s = line.split("\t", 4)
            hd = dict(kv.split("=", 1) for kv in h.split(",") if "=" in kv)
            v = json.loads(s)
            recs.append({"p": int(p), "o": int(o), "key": k, "v": v,
                         "share": int(hd.get("pgkafka_join.share", "-99")),
                         "id": int(hd.get("pgkafka_join.id", "-99")),
                         "headers": h,
                         "rating": fmt_rating(v.get("rating"))})
    return recs


def cmd_results(dump):
    for r in sorted(f"{x['v'].get('id')}|{x['v'].get('title')}|"
                    f"{x['v'].get('release_year')}|{x['rating']}" for x in records(dump)):
        print(r)


def cmd_pairs(dump):
    for r in sorted(f"{x['share']}|{x['id']}|{x['rating']}" for x in records(dump)):
        print(r)


def cmd_record_problems(dump):
    """Every output record: both headers, key = movie id, share = the
    partition of its movie id = the output partition it is on."""
    for x in records(dump):
        mid = x["v"].get("id")
        want = partition_of(str(mid))
        if x["share"] < 0 or x["id"] < 0:
            print(f"partition {x['p']} offset {x['o']}: headers {x['headers']!r}")
        elif x["key"] != str(mid):
            print(f"partition {x['p']} offset {x['o']}: key {x['key']} for movie {mid}")
        elif x["share"] != want or x["p"] != want:
            print(f"partition {x['p']} offset {x['o']}: share {x['share']}, movie {mid} "
                  f"is in partition {want}")


def cmd_share_problems(owned):
    """stdin: "share|movie_id" rows of one server's rated_movies."""
    owned = parts(owned)
    for line in sys.stdin:
        s, m = map(int, line.strip().split("|"))
        if s not in owned or s != partition_of(str(m)):
            print(f"share {s} for movie {m} (partition {partition_of(str(m))})")


def cmd_movies(dump, owned):
    """The valid movies (key = id) of the movies topic in partitions OWNED."""
    owned = parts(owned)
    rows = []
    with open(dump) as f:
        for line in f:
            p, o, k, s = line.rstrip("\n").split("\t", 3)
            v = json.loads(s)
            if k == str(v["id"]) and int(p) in owned:
                rows.append(f"{v['id']}|{v['title']}|{v.get('release_year', '')}")
    for r in sorted(rows):
        print(r)


def cmd_rejected(badvalues, owned, *dumps):
    """The bad messages as found in the topic dumps (TOPIC=FILE), in
    partitions OWNED: "topic|partition|offset|payload|t"."""
    owned = parts(owned)
    bad = set()
    with open(badvalues) as f:
        for line in f:
            bad.add(tuple(line.rstrip("\n").split("\t", 1)))
    rows, found = [], set()
    for arg in dumps:
        topic, path = arg.split("=", 1)
        with open(path) as f:
            for line in f:
                p, o, k, s = line.rstrip("\n").split("\t", 3)
                if (topic, s) in bad:
                    found.add((topic, s))
                    if int(p) in owned:
                        rows.append(f"{topic}|{p}|{o}|{s}|t")
    if found != bad:
        print(f"not on the topics: {sorted(bad - found)}")
    for r in sorted(rows):
        print(r)


def cmd_handover(dump, full, *runs):
    """Each run: files RUN.A and RUN.B, "row|share|id|rating",
    "start|partition|offset", "share|share|last_id" lines."""
    recs = records(dump)
    with open(full) as f:
        fullset = sorted(l.strip() for l in f if l.strip())
    bad = mid = 0
    sizes = []
    for run in runs:
        start, last, snap, errs = {}, {}, [], []
        starts = {"A": {}, "B": {}}
        for srv in ("A", "B"):
            with open(f"{run}.{srv}") as f:
                for line in f:
                    fl = line.rstrip("\n").split("|")
                    if fl[0] == "row":
                        snap.append(f"{fl[1]}|{fl[2]}|{fmt_rating(fl[3])}")
                    elif fl[0] == "start":
                        starts[srv][int(fl[1])] = int(fl[2])
                    elif fl[0] == "share":
                        s = int(fl[1])
                        if s in last:
                            errs.append(f"share {s} in the snapshot_shares() of both servers")
                        last[s] = int(fl[2])
        # per partition, the lowest of the servers' offsets (0: no row)
        for p in set(starts["A"]) | set(starts["B"]):
            start[p] = min(starts["A"].get(p, 0), starts["B"].get(p, 0))
        tail = [f"{x['share']}|{x['id']}|{x['rating']}" for x in recs
                if x["o"] >= start.get(x["p"], 0) and x["id"] > last.get(x["share"], 0)]
        union = sorted(snap + tail)
        name = os.path.basename(run)
        sizes.append(f"{len(snap)}+{len(tail)}")
        if snap and tail:
            mid += 1
        if union != fullset or errs:
            bad += 1
            a, b = set(union), set(fullset)
            dups = len(union) - len(a)
            print(f"# {name}: snapshot {len(snap)} + tail {len(tail)} = {len(union)} results, "
                  f"expected {len(fullset)}: {len(b - a)} missing (e.g. {sorted(b - a)[:5]}), "
                  f"{len(a - b)} unknown (e.g. {sorted(a - b)[:5]}), {dups} duplicates; "
                  f"start offsets {sorted(start.items())}, last ids {sorted(last.items())}; "
                  + "; ".join(errs), file=sys.stderr)
    print(f"# snapshot + tail sizes of the {len(runs)} handovers: {' '.join(sizes)}")
    print(f"summary {bad} {mid}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args[0], int(args[1]))
    else:
        globals()["cmd_" + cmd.replace("-", "_")](*args)
PY
export TEST_TOP
py() { python3 "$PY" "$@"; }

py gen "$GEN" "${SHARES_SEED:-8}"

kafka_start "$TEST_DIR/kafka"
kafka_create_topic movies 6
kafka_create_topic ratings 6
kafka_create_topic rated_movies 6

PG_A=$TEST_DIR/pg_a
PG_B=$TEST_DIR/pg_b
PG_C=$TEST_DIR/pg_c
common=("pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
	"pgkafka_join.database = 'postgres'"
	"pgkafka_join.retry_interval = '1s'"
	"pgkafka_join.batch_size = 200"
	"pgkafka_join.batch_delay = '20ms'")
pg_start "$PG_A" "${common[@]}" "pgkafka_join.partitions = '0-2'" "pgkafka_join.workers = 2"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
pg_start "$PG_B" "${common[@]}" "pgkafka_join.partitions = '3-5'" "pgkafka_join.workers = 1"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null

# all_counts DIR: "input_offsets|ratings|movies|rated_movies|rejected"
# row counts of the cluster of DIR
all_counts()
{
	on "$1" "SELECT (SELECT count(*) FROM pgkafka_join.input_offsets),
	                (SELECT count(*) FROM pgkafka_join.ratings),
	                (SELECT count(*) FROM pgkafka_join.movies),
	                (SELECT count(*) FROM pgkafka_join.rated_movies),
	                (SELECT count(*) FROM pgkafka_join.rejected_messages)"
}

# The input offsets stored, one "topic|partition|next_offset" line each
OFFSET_ROWS="SELECT topic || '|' || kafka_partition || '|' || next_offset FROM pgkafka_join.input_offsets"

# crashes DIR...: per cluster, the server processes terminated by a signal
crashes()
{
	local d counts=()

	for d in "$@"; do
		counts+=("$(grep -c 'terminated by signal' "$d/server.log" || true)")
	done
	echo "${counts[*]}"
}

# workers_of DIR: "worker:owned_partitions:state" of each worker
workers_of()
{
	on "$1" "SELECT worker || ':' || owned_partitions || ':' || state
	           FROM pgkafka_join.status ORDER BY worker" | paste -sd' '
}

wait_for 60 '[ "$(workers_of "$PG_A")" = "0:0,2:consuming 1:1:consuming" ]' ||
	fail "cluster A's workers do not consume partitions 0,2 and 1: $(workers_of "$PG_A")"
wait_for 60 '[ "$(workers_of "$PG_B")" = "0:3-5:consuming" ]' ||
	fail "cluster B's worker does not consume partitions 3-5: $(workers_of "$PG_B")"
pass "status: A's worker 0 owns 0,2 and worker 1 owns 1; B's worker 0 owns 3-5"
input_status_of() { on "$1" "SELECT topic, kafka_partition, worker FROM pgkafka_join.input_status ORDER BY 1, 2" | paste -sd' '; }
wait_for 30 '[ "$(input_status_of "$PG_A")" = "movies|0|0 movies|1|1 movies|2|0 ratings|0|0 ratings|1|1 ratings|2|0" ]' ||
	fail "A's input_status does not list partitions 0..2 of both topics with their workers: $(input_status_of "$PG_A")"
wait_for 30 '[ "$(input_status_of "$PG_B")" = "movies|3|0 movies|4|0 movies|5|0 ratings|3|0 ratings|4|0 ratings|5|0" ]' ||
	fail "B's input_status does not list partitions 3..5 of both topics: $(input_status_of "$PG_B")"
pass "input_status: each server lists its partitions only, with the worker consuming each"

# produce_phase PHASE CHUNKS PAUSE: produce the phase's chunks (movies and
# ratings, in an order that alternates), PAUSE seconds apart; write the
# number of chunks done to $GEN/pPHASE.done
produce_phase()
{
	local k=$1 chunks=$2 pause=$3 c

	for ((c = 0; c < chunks; c++)); do
		if ((c % 2)); then
			kafka_produce ratings <"$GEN/p$k.ratings.$c"
			[ ! -s "$GEN/p$k.movies.$c" ] || kafka_produce movies <"$GEN/p$k.movies.$c"
		else
			[ ! -s "$GEN/p$k.movies.$c" ] || kafka_produce movies <"$GEN/p$k.movies.$c"
			kafka_produce ratings <"$GEN/p$k.ratings.$c"
		fi
		if [ "$k" = 1 ] && [ "$c" = 12 ]; then
			kafka_produce ratings <"$GEN/bad.ratings"
			kafka_produce movies <"$GEN/bad.movies"
		fi
		echo $((c + 1)) >"$GEN/p$k.done.tmp"
		mv "$GEN/p$k.done.tmp" "$GEN/p$k.done"
		sleep "$pause"
	done
}

chunks_done() { cat "$GEN/p$1.done" 2>/dev/null || echo 0; }

# The output topic, committed records: "partition offset headers key value"
dump_output() { kafka_consume rated_movies -f '%p\t%o\t%h\t%k\t%s\n'; }

# out_count SHARE-REGEX: committed output records of those shares
out_count()
{
	kafka_consume rated_movies -f '%h\n' | grep -cE "pgkafka_join\.share=($1)(,|\$)" || true
}

union_count()
{
	echo $(($(on "$PG_A" "SELECT count(*) FROM pgkafka_join.rated_movies") +
		$(on "$PG_B" "SELECT count(*) FROM pgkafka_join.rated_movies")))
}

RESULT_ROWS="SELECT movie_id, title, release_year, rating FROM pgkafka_join.rated_movies"
PAIR_ROWS="SELECT share, id, rating FROM pgkafka_join.rated_movies"


# check_phase K: once both servers have everything of phase K, the exact
# checks of results, output records, shares, movies and rejected messages
check_phase()
{
	local k=$1 n srv dir owned
	local expected=$GEN/expected.$k out=$TEST_DIR/output.$k

	n=$(wc -l <"$expected")
	# (at least n: more would be a duplicate, shown by the checks below)
	wait_for 120 "[ \"\$(union_count)\" -ge $n ] && [ \"\$(kafka_consume rated_movies | wc -l)\" -ge $n ]" ||
		echo "# phase $k: the results did not all arrive" >&2
	sleep 2		# time for a duplicate to show
	dump_output >"$out"
	kafka_consume movies >"$TEST_DIR/movies.$k"
	kafka_consume ratings >"$TEST_DIR/ratings.$k"

	check_eq "phase $k: the union of both servers' rated_movies is the $n expected results" \
		"$(cat "$expected")" \
		"$({ on "$PG_A" "$RESULT_ROWS"; on "$PG_B" "$RESULT_ROWS"; } | LC_ALL=C sort)"
	check_eq "phase $k: the output topic (read_committed) holds each expected result once" \
		"$(cat "$expected")" "$(py results "$out" | LC_ALL=C sort)"
	check_eq "phase $k: each output record is one result row of one server, by (share, id)" \
		"$({ on "$PG_A" "$PAIR_ROWS"; on "$PG_B" "$PAIR_ROWS"; } | LC_ALL=C sort)" \
		"$(py pairs "$out" | LC_ALL=C sort)"
	check_eq "phase $k: no (share, id) header pair twice on the output topic" "" \
		"$(py pairs "$out" | cut -d'|' -f1,2 | LC_ALL=C sort | uniq -d)"
	check_eq "phase $k: output records keyed by movie id, on the partition of their share, the movie's" "" \
		"$(py record_problems "$out")"
	for srv in A B; do
		if [ $srv = A ]; then dir=$PG_A owned=0,1,2; else dir=$PG_B owned=3,4,5; fi
		check_eq "phase $k: $srv's results have the share of their movie's partition, one of $owned" "" \
			"$(on "$dir" "SELECT share, movie_id FROM pgkafka_join.rated_movies" | py share_problems "$owned")"
		check_eq "phase $k: $srv's movies are exactly the movies of partitions $owned" \
			"$(py movies "$TEST_DIR/movies.$k" "$owned" | LC_ALL=C sort)" \
			"$(on "$dir" "SELECT id, title, release_year FROM pgkafka_join.movies" | LC_ALL=C sort)"
		check_eq "phase $k: $srv rejected exactly the wrongly keyed messages of its partitions, 'key is not the movie id'" \
			"$(py rejected "$GEN/bad.values" "$owned" "ratings=$TEST_DIR/ratings.$k" "movies=$TEST_DIR/movies.$k" | LC_ALL=C sort)" \
			"$(on "$dir" "SELECT topic, kafka_partition, kafka_offset, convert_from(payload, 'UTF8'),
			                     reason LIKE 'key is not the movie id%'
			                FROM pgkafka_join.rejected_messages" | LC_ALL=C sort)"
	done
	echo "# phase $k: $n results: $(on "$PG_A" "SELECT count(*) FROM pgkafka_join.rated_movies") by A," \
		"$(on "$PG_B" "SELECT count(*) FROM pgkafka_join.rated_movies") by B;" \
		"movies $(on "$PG_A" "SELECT count(*) FROM pgkafka_join.movies") on A," \
		"$(on "$PG_B" "SELECT count(*) FROM pgkafka_join.movies") on B"
}

read -r _ p1_ratings p1_old p1_never < <(sed -n 1p "$GEN/counts")
echo "# phase 1: $p1_ratings ratings ($p1_old older than the window, $p1_never of movies that never come), 260 movies, 6 wrongly keyed messages"

# --- 1. a stream while both servers run (with 4 handovers, 5.)
t0=$SECONDS
produce_phase 1 20 0.4 &
producer=$!
# each handover in the middle of the stream: once results are stored and a
# few more chunks are produced, with chunks still to come
for run in 1 2 3 4; do
	wait_for 60 "[ \"\$(chunks_done 1)\" -ge $((run * 4 - 1)) ] && [ \"\$(union_count)\" -gt 0 ]" ||
		fail "phase 1 does not progress"
	handover "$run"
done
wait $producer || fail "producing phase 1 failed"
echo "# phase 1 produced in $((SECONDS - t0)) s"
check_phase 1

# --- 2. kill -9 of B in the middle of a second stream
produce_phase 2 36 0.6 &
producer=$!
wait_for 60 '[ "$(chunks_done 2)" -ge 6 ]' || fail "phase 2 does not progress"
pg_kill "$PG_B"
killed_at=$SECONDS
echo "# B killed after $(chunks_done 2) chunks of 36"
sleep 2		# a commit in flight at the kill has landed by now
a0=$(out_count '0|1|2')
b0=$(out_count '3|4|5')
wait_for 30 '[ "$(out_count "0|1|2")" -gt '"$a0"' ]' ||
	fail "A published nothing for its partitions while B was down"
left=$((killed_at + 12 - SECONDS))
[ "$left" -le 0 ] || sleep "$left"
a1=$(out_count '0|1|2')
b1=$(out_count '3|4|5')
pass "A went on publishing while B was down: $((a1 - a0)) results of shares 0..2 in $((SECONDS - killed_at - 2)) s"
check_eq "nothing of B's shares (3..5) was published while B was down" "$b0" "$b1"
[ "$(chunks_done 2)" -lt 36 ] || fail "the stream ended before B was restarted; the test proves too little"
echo "# B restarted after $((SECONDS - killed_at)) s down, $(chunks_done 2) chunks of 36 produced"
pg_start "$PG_B" 2> >(grep -v 'another server might be running' >&2)
restarted_at=$SECONDS
wait_for 20 '[ "$(workers_of "$PG_B")" = "0:3-5:consuming" ]' ||
	fail "restarted B does not consume its partitions: $(workers_of "$PG_B")"
pass "restarted B took its partitions back in $((SECONDS - restarted_at)) s"
wait_for 60 '[ "$(out_count "3|4|5")" -gt '"$b1"' ]' ||
	fail "restarted B publishes nothing"
wait $producer || fail "producing phase 2 failed"
check_phase 2
check_eq "B never refused its own partitions" "0" \
	"$(grep -c 'another server owns' "$PG_B/server.log" || true)"

# --- 3. an overlapping third server is refused (with 3 handovers, 5.)
a0=$(out_count '0|1|2')
b0=$(out_count '3|4|5')
pg_start "$PG_C" "${common[@]}" "pgkafka_join.partitions = '2-3'" "pgkafka_join.workers = 1"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
pg_use "$PG_A"
c_started=$SECONDS
produce_phase 3 25 0.5 &
producer=$!
for run in 5 6 7; do
	wait_for 60 "[ \"\$(chunks_done 3)\" -ge $(((run - 4) * 6 - 2)) ]" || fail "phase 3 does not progress"
	handover "$run"
done
wait_for 30 '[ "$(on "$PG_C" "SELECT state FROM pgkafka_join.status")" = "$REFUSED" ]' ||
	fail "C is not refused: $(on "$PG_C" "SELECT * FROM pgkafka_join.status")"
pass "C (partitions 2-3) refused within $((SECONDS - c_started)) s: '$REFUSED'"
c_warnings=$(grep -c 'WARNING: .*another server owns' "$PG_C/server.log" || true)
[ "$c_warnings" -ge 1 ] || fail "C's log has no WARNING saying 'another server owns'"
pass "C's log says why: $(grep -m1 'WARNING: .*another server owns' "$PG_C/server.log" | sed 's/.*WARNING: *//')"
wait_for 30 '[ "$(out_count "0|1|2")" -gt '"$a0"' ] && [ "$(out_count "3|4|5")" -gt '"$b0"' ]' ||
	fail "A and B did not both publish after C started"
pass "A and B both published after C started"
wait $producer || fail "producing phase 3 failed"
check_phase 3
check_eq "C still refused, stored and published nothing: state, input_offsets, ratings, movies, rated_movies, rejected" \
	"$REFUSED|0|0|0|0|0" \
	"$(on "$PG_C" "SELECT string_agg(state, ',') FROM pgkafka_join.status")|$(all_counts "$PG_C")"
check_eq "A and B were never refused" "0 0" \
	"$(grep -c 'another server owns' "$PG_A/server.log" || true) $(grep -c 'another server owns' "$PG_B/server.log" || true)"
echo "# C logged the refusal $(grep -c 'another server owns' "$PG_C/server.log" || true) times"
pg_stop "$PG_C"
pass "C stopped"

# --- 6. two servers given the brokers at the same moment, for the same
# partitions: one keeps them, the other is refused having stored nothing
# (a server whose new claims wait to be read back stores its first
# messages meanwhile in a transaction it must roll back when refused)
kafka_create_topic rated_movies_de 6
PG_D=$TEST_DIR/pg_d
PG_E=$TEST_DIR/pg_e
for d in "$PG_D" "$PG_E"; do
	pg_start "$d" "${common[@]}" "pgkafka_join.brokers = ''" "pgkafka_join.workers = 1" \
		"pgkafka_join.output_topic = 'rated_movies_de'"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
	psql_q "ALTER SYSTEM SET pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" >/dev/null
done
pg_use "$PG_A"
on "$PG_D" "SELECT pg_reload_conf()" >/dev/null &
reload_d=$!
on "$PG_E" "SELECT pg_reload_conf()" >/dev/null &
wait "$reload_d" $!
de_states() { echo "$(on "$PG_D" "SELECT state FROM pgkafka_join.status")|$(on "$PG_E" "SELECT state FROM pgkafka_join.status")"; }
wait_for 30 'states=$(de_states); [ "$states" = "$REFUSED|consuming" ] || [ "$states" = "consuming|$REFUSED" ]' ||
	fail "not one of D and E refused and the other consuming: $(de_states)"
if [ "$states" = "$REFUSED|consuming" ]; then
	refused=D refused_dir=$PG_D holder_dir=$PG_E
else
	refused=E refused_dir=$PG_E holder_dir=$PG_D
fi
pass "of D and E, started at the same moment for partitions 0-5, $refused was refused"
wait_for 30 '[ "$(on "$holder_dir" "SELECT count(*) FROM pgkafka_join.input_offsets")" = 12 ]' ||
	fail "the server that kept partitions 0-5 did not store offsets of all 12 input partitions"
check_eq "$refused stored nothing: input_offsets, ratings, movies, rated_movies, rejected" \
	"0|0|0|0|0" "$(all_counts "$refused_dir")"
check_eq "no server process of D or E crashed (terminated by signal)" "0 0" \
	"$(crashes "$PG_D" "$PG_E")"
pg_stop "$refused_dir"
pg_use "$PG_A"

# --- 7. another server claims the partitions while a server's new claims
# wait to be read back: what the server stored meanwhile is rolled back;
# once the other claim lapses, it takes the partitions over and stores
# everything (the same as the server that kept the partitions in 6.)
kafka_create_topic rated_movies_f 6
PG_F=$TEST_DIR/pg_f
TAB_HOLDS_NOTHING=$'\tholds nothing'
pg_start "$PG_F" "${common[@]}" "pgkafka_join.brokers = ''" "pgkafka_join.workers = 1" \
	"pgkafka_join.output_topic = 'rated_movies_f'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
f_identity=$(psql_q "SELECT 'pgkafka_join-' || system_identifier || '-' || d.oid
                       FROM pg_control_system(), pg_database d WHERE d.datname = current_database()")
psql_q "ALTER SYSTEM SET pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'" >/dev/null
# the intruder's claims say, as a fresh server's do, that it holds nothing
# of the partitions: once they lapse, they may be taken over
kafka_claim_after pgkafka_join.owners.rated_movies_f ratings 6 "intruder$TAB_HOLDS_NOTHING" >"$TEST_DIR/intruder.out" &
intruder=$!
wait_for 60 'grep -qx watching "$TEST_DIR/intruder.out"' ||
	fail "the intruding claimant did not start watching the claims"
psql_q "SELECT pg_reload_conf()" >/dev/null
wait "$intruder" || fail "the intruding claimant did not claim the partitions"
# (a claim: the server's identity, its producer's transactional id, the mark)
check_eq "the intruder claimed partitions 0-5 as soon as F had claimed them, F holding nothing of them" \
	"$f_identity"$'\t'"$f_identity$TAB_HOLDS_NOTHING" "$(sed -n 2p "$TEST_DIR/intruder.out")"
wait_for 30 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = "$REFUSED" ]' ||
	fail "F was not refused after the intruder's claim: $(psql_q "SELECT state FROM pgkafka_join.status")"
grep -q 'WARNING: .*another server owns them' "$PG_F/server.log" &&
	grep -q 'DETAIL: *Server "intruder" claims them' "$PG_F/server.log" ||
	fail "F's log does not say that \"intruder\" owns its partitions"
rolled_back=$(sed -n 's/.*kept none of the \([0-9]*\) messages it stored while its claims were being confirmed.*/\1/p' \
	"$PG_F/server.log" | head -1)
[ "${rolled_back:-0}" -gt 0 ] ||
	fail "F's log does not say that it rolled back messages stored while its claims were confirmed"
pass "F was refused after storing $rolled_back messages while its claims were confirmed, and rolled them back"
check_eq "F, refused, stored nothing: input_offsets, ratings, movies, rated_movies, rejected" \
	"0|0|0|0|0" "$(all_counts "$PG_F")"
# the intruder never renews its claim: it lapses after 10 s
wait_for 60 '[ "$(psql_q "SELECT state FROM pgkafka_join.status")" = consuming ]' ||
	fail "F did not take over the lapsed claims: $(psql_q "SELECT state FROM pgkafka_join.status")"
grep -q 'takes over partitions whose claim lapsed' "$PG_F/server.log" ||
	fail "F's log does not say that it took over a lapsed claim"
# everything consumed: F's and the holder's offsets are those of A and B
ab_offsets=$({ on "$PG_A" "$OFFSET_ROWS"; on "$PG_B" "$OFFSET_ROWS"; } | LC_ALL=C sort)
wait_for 60 '[ "$(on "$PG_F" "$OFFSET_ROWS" | LC_ALL=C sort)" = "$ab_offsets" ] &&
	[ "$(on "$holder_dir" "$OFFSET_ROWS" | LC_ALL=C sort)" = "$ab_offsets" ]' ||
	fail "F and the holder of 6. did not both consume every message A and B consumed"
check_eq "F took the lapsed claims over and stored what the holder of 6. holds: input_offsets, ratings, movies, rated_movies, rejected" \
	"$(all_counts "$holder_dir")" "$(all_counts "$PG_F")"
check_eq "no server process of F crashed (terminated by signal)" "0" "$(crashes "$PG_F")"
pg_stop "$PG_F"
pg_stop "$holder_dir"
pg_use "$PG_A"

# --- 5. the handovers against the final output
{ on "$PG_A" "$PAIR_ROWS"; on "$PG_B" "$PAIR_ROWS"; } | LC_ALL=C sort >"$TEST_DIR/all_pairs"
py handover "$TEST_DIR/output.3" "$TEST_DIR/all_pairs" "${runs[@]}" >"$TEST_DIR/handover.out" ||
	fail "the handover check could not run"
grep '^#' "$TEST_DIR/handover.out"
read -r _ bad midstream < <(grep '^summary' "$TEST_DIR/handover.out")
check_eq "each of ${#runs[@]} handovers across both servers saw every result exactly once" "0" "$bad"
check_eq "every handover happened in the middle of the stream (a snapshot and a tail both holding results)" \
	"${#runs[@]}" "$midstream"
check_eq "no server process of A, B or C crashed (terminated by signal)" "0 0 0" \
	"$(crashes "$PG_A" "$PG_B" "$PG_C")"
echo "# total $SECONDS s"
