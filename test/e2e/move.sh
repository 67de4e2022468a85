#!/bin/bash
#
# move.sh
#		Partitions moved from one server to another in the middle of a
#		stream, with release_partitions(): one Kafka broker, topics movies,
#		ratings and rated_movies of 4 partitions, every message keyed by
#		its movie id in decimal and produced to partition id % 4.  Cluster
#		A owns partitions 0-3 with 2 workers (worker 0: 0,2; worker 1:
#		1,3); cluster B is configured for 2-3, started before the release.
#		Movies 2,3 (mod 4) of the test: X = 1002 (a first version, then a
#		second), W = 1003 (a version, then a tombstone), Z = 1006, E1 =
#		1007 and E2 = 1010 (their movies come only after the move).
#
# 1. Before the release: B is refused ('refused: partitions owned by
#    another server') and stores nothing (input_offsets, movies, ratings,
#    rated_movies, received_partitions empty), while A stores the catalog
#    (X's second version, W deleted) and joins X's ratings with X's second
#    version; ratings of W (after its tombstone) and of Z wait, a rating of
#    E1 dated 1 day inside the join window's start (1 month) waits, one of
#    E2 dated 1 hour outside it never joins; a stream of ratings (some
#    older than the window, some of movies that never come) runs through
#    the release.  On B, release_partitions('0-1') (not B's) fails with
#    SQLSTATE 22023, "does not own".
# 2. Mid-stream, release_partitions('2-3') on A returns 2 and 3; A sets
#    released_at of both and logs "released partitions" for exactly 2 and
#    3; its ratings_offset is the lowest offset of a rating it had stored
#    still waiting inside the window (computed by the test from what was
#    produced), or next_offset.  B receives them: received_partitions holds
#    what A released (from_server A's identity, ratings_offset,
#    next_offset, last_id), received_at set, claimed within 6 s of the
#    release (no 10 s lapse), its log says "received partitions" for
#    exactly 2 and 3 from A, and "took back" A's results of shares 2 and 3
#    (their count); B's state becomes 'consuming'.
# 3. After B received: the movies Z, E1 and E2, more ratings of X, the rest
#    of the stream.
# 4. Once everything is consumed and published: the output topic
#    (read_committed) holds every expected result (computed by the test
#    from what was produced) exactly once: X's ratings all with its second
#    version (none with the first title), none of W, Z's and E1's joined
#    (by B), none of E2; (share, id) headers unique.  For shares 2 and 3:
#    A's highest id is its released last_id, A's results are exactly the
#    topic's records of the share up to it, B published records above it
#    and its rated_movies holds every record of the share (A's taken back,
#    its own), same (share, id, rating); A's results stand for ratings
#    below next_offset, B's for ratings from ratings_offset, and the only
#    ratings below next_offset B joined are those of Z (share 2) and E1
#    (share 3); B stored the partition's ratings from ratings_offset to
#    the end.  A never consumed the partitions again: its stored offset is
#    still next_offset (below the end), it stored no rating of them after
#    released_at and has none of the movies produced after.  Every record
#    is a row of A or one of B's own; B's movies are those of partitions
#    2-3 as the topic has them; nothing rejected; A published results of
#    shares 0 and 1 after the release was requested and after B received.
#    No process of A or B crashed ("terminated by signal").
# 5. Snapshot-then-tail handovers, 6 times (2 before the release, 1 right
#    after the request, 1 right after B received, 2 after more results):
#    on each server, in one REPEATABLE READ transaction, rated_movies,
#    output_position() and snapshot_shares(); a share listed by both
#    servers is taken from the one whose last_id for it is highest (ties
#    checked both ways); the output topic from, per partition, the lowest
#    start_offset of the servers (0 if one has none), skipping records
#    whose id is at most the chosen server's last_id of their share: each
#    time snapshot plus tail hold every result exactly once, both non-empty.
# 6. Moved back: release_partitions('2-3') on B; A, which released them
#    and holds their old state, takes them back from B's handover (at its
#    next refresh of the partitions it owns): its received_partitions are
#    B's released ones, its released_partitions gone; B is idle, A's
#    workers consume 0,2 and 1,3.  A rating of a new movie V, then V, then
#    more ratings: every expected result on the topic once, A's
#    rated_movies of shares 2 and 3 hold every record of them (its own, B's
#    taken back, its new ones above B's last id), B never consumed them
#    again, A's catalog of 2-3 is the topic's.

. "$(dirname "$0")/setup.sh"
test_init move

NPART=4
X=1002 W=1003 Z=1006 E1=1007 E2=1010
MOVIES=200
CHUNKS=32 PER_CHUNK=40 RELEASE_AFTER=8 GATE=16
GEN=$TEST_DIR/gen
mkdir -p "$GEN"
PY=$TEST_DIR/move.py
cat >"$PY" <<'PY'
"""Stream generator and checks of test/e2e/move.sh."""
import datetime, json, random, sys

X, W, Z, E1, E2, V = 1002, 1003, 1006, 1007, 1010, 1011
NEVER = range(5001, 5009)
SERVERS = ("A", "B")


def fmt_rating(x):
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def gen(out, movies, chunks, per_chunk, seed, e1_at, e2_at):
    """Messages as "key<TAB>value" files; "expected" ("id|title|year|rating",
    sorted), "kinds" ("rating|movie|kind": join, old: outside the window,
    wait: no movie at the release)."""
    movies, chunks, per_chunk = int(movies), int(chunks), int(per_chunk)
    rnd = random.Random(int(seed))
    now = datetime.datetime.now(datetime.timezone.utc)
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
    catalog = {m: (f"Movie {m}", 1900 + m % 100) for m in [*range(1, movies + 1), Z, E1, E2]}
    catalog[X] = (f"Movie {X}, second version", 1991)
    kinds, n = [], 0

    def movie(m, title=None, year=None):
        title, year = (title, year) if title else catalog[m]
        return f"{m}\t" + json.dumps({"id": m, "title": title, "release_year": year})

    def rating(m, kind, rated_at=None):
        nonlocal n
        n += 1
        v = {"id": m, "rating": n}
        if rated_at:
            v["rated_at"] = rated_at
        kinds.append((n, m, kind))
        return f"{m}\t" + json.dumps(v)

    def write(name, lines):
        with open(f"{out}/{name}", "w") as f:
            f.writelines(l + "\n" for l in lines)

    write("movies.pre", [movie(m) for m in range(1, movies + 1)] +
          [movie(X, f"Movie {X}, first version", 1990), movie(X), movie(W, f"Movie {W}", 1903),
           f"{W}\t"])
    write("ratings.pre", [rating(X, "join") for _ in range(3)] + [rating(E2, "old", e2_at)] +
          [rating(Z, "wait") for _ in range(2)] + [rating(W, "wait") for _ in range(2)] +
          [rating(E1, "wait", e1_at)] + [rating(X, "join") for _ in range(2)])
    for c in range(chunks):
        lines = []
        for _ in range(per_chunk):
            r = rnd.random()
            if r < 0.04:
                lines.append(rating(rnd.choice(NEVER), "wait"))
            elif r < 0.10:
                t = now - datetime.timedelta(days=rnd.uniform(40, 60))
                lines.append(rating(rnd.randint(1, movies), "old", iso(t)))
            else:
                t = now - datetime.timedelta(days=rnd.uniform(0, 10))
                lines.append(rating(rnd.randint(1, movies), "join", iso(t) if r > 0.8 else None))
        write(f"ratings.{c}", lines)
    write("movies.post", [movie(Z), movie(E1), movie(E2)])
    write("ratings.post", [rating(X, "join") for _ in range(3)])
    expected = lambda: sorted(f"{m}|{catalog[m][0]}|{catalog[m][1]}|{r}"
                              for r, m, kind in kinds if kind != "old" and m in catalog)
    write("expected", expected())
    write("kinds", [f"{r}|{m}|{kind}" for r, m, kind in kinds])
    # after the move back: a rating of V waits for its movie, which comes
    # after it
    catalog[V] = (f"Movie {V}", 1900 + V % 100)
    write("ratings.back", [rating(V, "join")] + [rating(X, "join")] +
          [rating(rnd.randint(1, movies), "join") for _ in range(80)])
    write("movies.back", [movie(V)])
    write("expected.back", expected())


def records(path):
    """The output dump, kcat -f '%p\\t%o\\t%h\\t%k\\t%s\\n'."""
    recs = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            p, o, h, k, s = line.rstrip("\n").split("\t", 4)
            hd = dict(kv.split("=", 1) for kv in h.split(",") if "=" in kv)
            v = json.loads(s)
            ip, io = hd.get("pgkafka_join.input", "-1:-1").split(":")
            recs.append({"p": int(p), "o": int(o), "v": v, "in_p": int(ip), "in_o": int(io),
                         "share": int(hd.get("pgkafka_join.share", "-99")),
                         "id": int(hd.get("pgkafka_join.id", "-99")),
                         "rating": fmt_rating(v.get("rating"))})
    return recs


def cmd_results(dump):
    for x in records(dump):
        v = x["v"]
        print(f"{v.get('id')}|{v.get('title')}|{v.get('release_year')}|{x['rating']}")


def cmd_pairs(dump):
    for x in records(dump):
        print(f"{x['share']}|{x['id']}|{x['rating']}")


def cmd_ratings_offset(dump, kinds, partition, next_offset):
    """Where the next owner must consume the partition's ratings from: the
    lowest offset below next_offset of a rating waiting at the release."""
    waiting = {int(l.split("|")[0]) for l in open(kinds) if l.strip().endswith("|wait")}
    offs = [int(o) for p, o, k, s in (l.rstrip("\n").split("\t", 3) for l in open(dump))
            if p == partition and int(o) < int(next_offset) and json.loads(s)["rating"] in waiting]
    print(min(offs + [int(next_offset)]))


def cmd_inputs(dump, share, last_id, ratings_offset, next_offset):
    """Problems of the records of SHARE with their pgkafka_join.input, then
    "early" and the movies (movie:count) of B's results (ids above last_id)
    for ratings below next_offset."""
    share, last_id, ro, no = map(int, (share, last_id, ratings_offset, next_offset))
    early = {}
    for x in records(dump):
        if x["share"] != share:
            continue
        if x["in_p"] != share:
            print(f"problem: id {x['id']} stands for a rating of partition {x['in_p']}")
        elif x["id"] <= last_id and x["in_o"] >= no:
            print(f"problem: A's id {x['id']} stands for offset {x['in_o']}, not stored by A")
        elif x["id"] > last_id and x["in_o"] < ro:
            print(f"problem: B's id {x['id']} stands for offset {x['in_o']}, below {ro}")
        elif x["id"] > last_id and x["in_o"] < no:
            early[x["v"]["id"]] = early.get(x["v"]["id"], 0) + 1
    print("early " + " ".join(f"{m}:{c}" for m, c in sorted(early.items())))


def cmd_movies(dump, parts):
    """The catalog of partitions PARTS as the movies topic has it."""
    parts, cat = parts.split(","), {}
    for p, o, k, s in (l.rstrip("\n").split("\t", 3) for l in open(dump)):
        if p in parts:
            if s == "NULL":
                cat.pop(k, None)
            else:
                v = json.loads(s)
                cat[k] = f"{v['id']}|{v['title']}|{v.get('release_year', '')}"
    print("\n".join(sorted(cat.values())))


def cmd_handover(dump, *runs):
    """Each run: files RUN.A and RUN.B of "row|share|id|rating",
    "start|partition|offset" and "share|share|last_id" lines."""
    recs = records(dump)
    full = sorted(f"{x['share']}|{x['id']}|{x['rating']}" for x in recs)
    bad = mid = 0
    for run in runs:
        rows = {s: {} for s in SERVERS}
        starts = {s: {} for s in SERVERS}
        last = {s: {} for s in SERVERS}
        for srv in SERVERS:
            for line in open(f"{run}.{srv}"):
                fl = line.rstrip("\n").split("|")
                if fl[0] == "row":
                    rows[srv].setdefault(int(fl[1]), []).append(f"{fl[1]}|{fl[2]}|{fmt_rating(fl[3])}")
                elif fl[0] == "start":
                    starts[srv][int(fl[1])] = int(fl[2])
                elif fl[0] == "share":
                    last[srv][int(fl[1])] = int(fl[2])
        start = {p: min(starts[s].get(p, 0) for s in SERVERS) for s0 in SERVERS for p in starts[s0]}
        shares = sorted(set(last["A"]) | set(last["B"]))
        for prefer in SERVERS:          # on a tie, either server
            order = [prefer] + [s for s in SERVERS if s != prefer]
            chosen = {sh: max(order, key=lambda s: last[s].get(sh, -1)) for sh in shares}
            snap = [r for sh, s in chosen.items() for r in rows[s].get(sh, [])]
            limit = {sh: last[s][sh] for sh, s in chosen.items()}
            tail = [f"{x['share']}|{x['id']}|{x['rating']}" for x in recs
                    if x["o"] >= start.get(x["p"], 0) and x["id"] > limit.get(x["share"], 0)]
            union = sorted(snap + tail)
            if union != full:
                bad += 1
                a, b = set(union), set(full)
                print(f"# {run} (ties to {prefer}): snapshot {len(snap)} + tail {len(tail)}, "
                      f"expected {len(full)}: {len(b - a)} missing (e.g. {sorted(b - a)[:5]}), "
                      f"{len(a - b)} unknown, {len(union) - len(a)} duplicates; starts "
                      f"{sorted(start.items())}, shares {chosen}, last ids {last}", file=sys.stderr)
        mid += bool(snap and tail)
        both = " ".join(f"{sh}:A{last['A'][sh]}/B{last['B'][sh]}" for sh in shares
                        if sh in last["A"] and sh in last["B"])
        print(f"# handover {run.rsplit('.', 1)[-1]}: snapshot {len(snap)} + tail {len(tail)}"
              + (f"; shares on both servers (last ids): {both}" if both else ""))
    print(f"summary {bad} {mid}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    globals()["gen" if cmd == "gen" else "cmd_" + cmd](*args)
PY
py() { python3 "$PY" "$@"; }

kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies; do
	kafka_create_topic $topic $NPART
done
PG_A=$TEST_DIR/pg_a
PG_B=$TEST_DIR/pg_b
common=("pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
	"pgkafka_join.database = 'postgres'"
	"pgkafka_join.retry_interval = '1s'"
	"pgkafka_join.batch_size = 200"
	"pgkafka_join.batch_delay = '20ms'")

# workers_of DIR: "worker:owned_partitions:state" of each worker
workers_of()
{
	on "$1" "SELECT worker || ':' || owned_partitions || ':' || state
	           FROM pgkafka_join.status ORDER BY worker" | paste -sd' '
}
# offsets_sum DIR TOPIC: the sum of the stored offsets of TOPIC
offsets_sum() { on "$1" "SELECT coalesce(sum(next_offset), 0) FROM pgkafka_join.input_offsets WHERE topic = '$2'"; }
# logged_parts DIR VERB: the partitions the lines "LOG:  pgkafka_join VERB
# partitions ..." of the cluster's log name, each as often as named, sorted
logged_parts()
{
	{ grep -oE "LOG:  pgkafka_join $2 partitions [0-9,-]+" "$1/server.log" || true; } |
		sed -E 's/.* //' | tr ',' '\n' |
		awk -F- 'NF { if ($2 == "") print $1; else for (i = $1; i <= $2; i++) print i }' |
		sort -n | paste -sd' '
}
# took_back DIR: the results the cluster's log says it took back, in all
took_back()
{
	{ grep -oE 'took back [0-9]+ results' "$1/server.log" || true; } |
		awk '{ n += $3 } END { print n + 0 }'
}
dump_output() { kafka_consume rated_movies -f '%p\t%o\t%h\t%k\t%s\n'; }
# out_count SHARE-REGEX: committed output records of those shares
out_count()
{
	kafka_consume rated_movies -f '%h\n' | grep -cE "pgkafka_join\.share=($1)(,|\$)" || true
}
crashes() { echo "$(grep -c 'terminated by signal' "$PG_A/server.log" || true) $(grep -c 'terminated by signal' "$PG_B/server.log" || true)"; }


#
# 1. Before the release
#
pg_start "$PG_A" "${common[@]}" "pgkafka_join.partitions = '0-3'" "pgkafka_join.workers = 2"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
wait_for 60 '[ "$(workers_of "$PG_A")" = "0:0,2:consuming 1:1,3:consuming" ]' ||
	fail "A's workers do not consume partitions 0,2 and 1,3: $(workers_of "$PG_A")"
pg_start "$PG_B" "${common[@]}" "pgkafka_join.partitions = '2-3'" "pgkafka_join.workers = 1"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
pg_use "$PG_A"
wait_for 60 '[ "$(state_of "$PG_B")" = "$REFUSED" ]' ||
	fail "B, configured for A's partitions 2-3, is not refused: $(state_of "$PG_B")"
check_eq "B (partitions 2-3) is refused while A owns them, and stores nothing: input_offsets, movies, ratings, rated_movies" \
	"0|0|0|0" "$(stored_counts "$PG_B")"
a_identity=$(on "$PG_A" "SELECT 'pgkafka_join-' || system_identifier || '-' || d.oid
                           FROM pg_control_system(), pg_database d WHERE d.datname = current_database()")
check_eq "the join window is 1 month" t \
	"$(on "$PG_A" "SELECT current_setting('pgkafka_join.join_window')::interval = interval '1 month'")"
iso() { on "$PG_A" "SELECT to_char(($1) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"; }
e1_at=$(iso "now() - interval '1 month' + interval '1 day'")
e2_at=$(iso "now() - interval '1 month' - interval '1 hour'")
py gen "$GEN" $MOVIES $CHUNKS $PER_CHUNK "${MOVE_SEED:-4}" "$e1_at" "$e2_at"
echo "# E1 rated at $e1_at (1 day inside the window), E2 at $e2_at (1 hour outside); $(wc -l <"$GEN/expected") results expected"

produce_by_id movies $NPART <"$GEN/movies.pre"
wait_for 60 '[ "$(offsets_sum "$PG_A" movies)" = '"$(wc -l <"$GEN/movies.pre")"' ]' ||
	fail "A did not consume the movies: $(offsets_sum "$PG_A" movies)"
check_eq "A's catalog: $MOVIES movies and X in its second version, W deleted" \
	"$((MOVIES + 1))|Movie $X, second version|0" \
	"$(on "$PG_A" "SELECT count(*), (SELECT title FROM pgkafka_join.movies WHERE id = $X),
	                      (SELECT count(*) FROM pgkafka_join.movies WHERE id = $W) FROM pgkafka_join.movies")"
produce_by_id ratings $NPART <"$GEN/ratings.pre"
wait_for 60 '[ "$(offsets_sum "$PG_A" ratings)" = '"$(wc -l <"$GEN/ratings.pre")"' ]' ||
	fail "A did not consume the first ratings: $(offsets_sum "$PG_A" ratings)"
check_eq "A joined X's 5 ratings with its second version; those of W (2), Z (2), E1 and E2 wait" \
	"5|Movie $X, second version|6" \
	"$(on "$PG_A" "SELECT (SELECT count(*) FROM pgkafka_join.rated_movies),
	                      (SELECT string_agg(DISTINCT title, ',') FROM pgkafka_join.rated_movies),
	                      (SELECT count(*) FROM pgkafka_join.ratings WHERE NOT joined)")"

# The stream: chunks 0.3 s apart; from chunk GATE on, once B received
stream()
{
	local c

	for ((c = 0; c < CHUNKS; c++)); do
		if [ $c -eq $GATE ]; then
			while [ ! -e "$GEN/gate" ]; do sleep 0.1; done
		fi
		produce_by_id ratings $NPART <"$GEN/ratings.$c"
		echo $((c + 1)) >"$GEN/done.tmp"
		mv "$GEN/done.tmp" "$GEN/done"
		sleep 0.3
	done
}
chunks_done() { cat "$GEN/done" 2>/dev/null || echo 0; }
stream &
producer=$!
on_exit '[ -z "$producer" ] || kill "$producer" 2>/dev/null'
for run in 1 2; do
	wait_for 60 "[ \"\$(chunks_done)\" -ge $((run * 3)) ] && [ \"\$(out_count '0|1|2|3')\" -gt 5 ]" ||
		fail "the stream does not progress"
	handover "$run"
done
wait_for 60 '[ "$(chunks_done)" -ge $RELEASE_AFTER ]' || fail "the stream does not progress"
check_eq "after $(chunks_done) chunks of the stream, B is still refused and stored nothing: state, input_offsets, movies, ratings, rated_movies, received_partitions" \
	"$REFUSED|0|0|0|0|0" \
	"$(state_of "$PG_B")|$(stored_counts "$PG_B")|$(on "$PG_B" "SELECT count(*) FROM pgkafka_join.received_partitions")"
if err=$(on "$PG_B" "\\set VERBOSITY verbose
SELECT * FROM pgkafka_join.release_partitions('0-1')" 2>&1 >/dev/null); then
	fail "release_partitions('0-1') on B, configured for 2-3, did not fail"
fi
grep -qE 'ERROR:  22023: .*does not own' <<<"$err" ||
	fail "release_partitions('0-1') on B did not fail with 22023 \"does not own\": $err"
check_eq "release_partitions('0-1') on B fails: $(grep -m1 -oE 'ERROR: .*' <<<"$err"); nothing recorded" \
	0 "$(on "$PG_B" "SELECT count(*) FROM pgkafka_join.released_partitions")"

#
# 2. The release, and B receiving the partitions
#
check_eq "release_partitions('2-3') on A returns partitions 2 and 3" "2,3" \
	"$(on "$PG_A" "SELECT string_agg(release_partitions::text, ',' ORDER BY release_partitions)
	                 FROM pgkafka_join.release_partitions('2-3')")"
released_from=$SECONDS
handover 3
wait_for 60 '[ "$(on "$PG_A" "SELECT count(released_at) FROM pgkafka_join.released_partitions WHERE kafka_partition IN (2, 3)")" = 2 ]' ||
	fail "A did not release partitions 2 and 3: $(on "$PG_A" "SELECT * FROM pgkafka_join.released_partitions")"
pass "A released partitions 2 and 3 within $((SECONDS - released_from)) s, $(chunks_done) chunks of the stream produced"
wait_for 60 '[ "$(on "$PG_B" "SELECT count(received_at) FROM pgkafka_join.received_partitions WHERE kafka_partition IN (2, 3)")" = 2 ]' ||
	fail "B did not receive partitions 2 and 3: $(state_of "$PG_B"), $(on "$PG_B" "SELECT * FROM pgkafka_join.received_partitions")"
handover 4
pass "B received partitions 2 and 3 $((SECONDS - released_from)) s after the request"
wait_for 10 '[ "$(logged_parts "$PG_A" released)" = "2 3" ]' ||
	fail "A's log does not say that it released partitions 2 and 3, once each: '$(logged_parts "$PG_A" released)'"
{ grep -E 'LOG:  pgkafka_join released partitions' "$PG_A/server.log" || true; } | sed 's/^/# A | /'
check_eq "A's released_partitions: 2 and 3, released after the request, ratings_offset <= next_offset" \
	"2|true 3|true" \
	"$(on "$PG_A" "SELECT kafka_partition || '|' || (released_at >= requested_at AND ratings_offset <= next_offset)
	                 FROM pgkafka_join.released_partitions ORDER BY 1" | paste -sd' ')"
kafka_consume ratings >"$TEST_DIR/ratings.at_release"
for s in 2 3; do
	read -r next_offset ratings_offset < <(on "$PG_A" "SELECT next_offset, ratings_offset FROM pgkafka_join.released_partitions WHERE kafka_partition = $s" | tr '|' ' ')
	check_eq "partition $s: ratings_offset is the lowest offset of a rating A stored still waiting inside the window, or next_offset ($next_offset)" \
		"$(py ratings_offset "$TEST_DIR/ratings.at_release" "$GEN/kinds" $s "$next_offset")" "$ratings_offset"
done
check_eq "B's received_partitions are A's released ones, from A: from_server, ratings_offset, next_offset, last_id" \
	"$(on "$PG_A" "SELECT kafka_partition, '$a_identity', ratings_offset, next_offset, last_id
	                 FROM pgkafka_join.released_partitions ORDER BY 1")" \
	"$(on "$PG_B" "SELECT kafka_partition, from_server, ratings_offset, next_offset, last_id
	                 FROM pgkafka_join.received_partitions ORDER BY 1")"
delays=$(join -t'|' <(on "$PG_A" "SELECT kafka_partition, extract(epoch FROM released_at) FROM pgkafka_join.released_partitions ORDER BY 1") \
	<(on "$PG_B" "SELECT kafka_partition, extract(epoch FROM claimed_at), extract(epoch FROM received_at) FROM pgkafka_join.received_partitions ORDER BY 1") |
	awk -F'|' '{ printf "%s%s:%.1f:%.1f", (NR > 1 ? " " : ""), $1, $3 - $2, $4 - $2 }')
echo "# partition:claimed:received, seconds after the release: $delays"
check_eq "B claimed each partition within 6 s of its release, not as a lapsed claim" "|0" \
	"$(tr ' ' '\n' <<<"$delays" | awk -F: '$2 >= 6 || $2 < 0')|$(grep -c 'takes over partitions whose claim lapsed' "$PG_B/server.log" || true)"
wait_for 30 '[ "$(logged_parts "$PG_B" received)" = "2 3" ]' ||
	fail "B's log does not say that it received partitions 2 and 3, once each: '$(logged_parts "$PG_B" received)'"
{ grep -E 'LOG:  pgkafka_join received partitions' "$PG_B/server.log" || true; } | sed 's/^/# B | /'
check_eq "B's log names A as the server it received them from" "$a_identity" \
	"$({ grep -oE 'received partitions [0-9,-]+ from server "[^"]*"' "$PG_B/server.log" || true; } |
		sed -E 's/.*from server "(.*)"/\1/' | sort -u)"
a_moved=$(on "$PG_A" "SELECT count(*) FROM pgkafka_join.rated_movies WHERE share IN (2, 3)")
wait_for 30 '[ "$(took_back "$PG_B")" = "$a_moved" ]' ||
	fail "B's log does not say that it took back A's $a_moved results of shares 2 and 3: $(took_back "$PG_B")"
pass "B took back A's $a_moved results of shares 2 and 3 from the output topic"
wait_for 30 '[ "$(state_of "$PG_B")" = consuming ]' || fail "B does not consume: $(state_of "$PG_B")"
pass "B consumes partitions 2-3 ($(workers_of "$PG_B")); A: $(workers_of "$PG_A")"

#
# 3. After B received
#
produce_by_id movies $NPART <"$GEN/movies.post"
produce_by_id ratings $NPART <"$GEN/ratings.post"
touch "$GEN/gate"
b_received=$(on "$PG_B" "SELECT max(received_at) FROM pgkafka_join.received_partitions")
for run in 5 6; do
	wait_for 60 "[ \"\$(chunks_done)\" -ge $((run * 5 - 3)) ]" || fail "the stream does not progress"
	handover "$run"
done
# a_results_after SHARE TIME: whether A has results of SHARE joined after TIME
a_results_after() { on "$PG_A" "SELECT count(*) > 0 FROM pgkafka_join.rated_movies WHERE share = $1 AND joined_at > '$2'"; }
requested=$(on "$PG_A" "SELECT max(requested_at) FROM pgkafka_join.released_partitions")
for s in 0 1; do
	wait_for 60 '[ "$(a_results_after '$s' "$requested")" = t ] && [ "$(a_results_after '$s' "$b_received")" = t ]' ||
		fail "A published no result of share $s after the release was requested, or after B received partitions 2-3"
done
pass "A went on with shares 0 and 1: results of each after the release was requested and after B received ($(on "$PG_A" "SELECT count(*) FROM pgkafka_join.rated_movies
	WHERE share IN (0, 1) AND joined_at > '$requested' AND joined_at < '$b_received'") between the two)"
wait "$producer" || fail "producing the stream failed"
producer=

#
# 4. Everything consumed and published: the exact checks
#
n=$(wc -l <"$GEN/expected")
kafka_consume ratings >"$TEST_DIR/ratings.dump"
kafka_consume movies >"$TEST_DIR/movies.dump"
# topic_ends PARTS-REGEX: "topic:partition:end" of both input topics
topic_ends()
{
	local t

	for t in movies ratings; do
		awk -F'\t' -v t=$t -v re="^($1)\$" '$1 ~ re { e[$1] = $2 + 1 } END { for (p in e) print t ":" p ":" e[p] }' \
			"$TEST_DIR/$t.dump" | LC_ALL=C sort
	done | paste -sd' '
}
offset_rows()
{
	on "$1" "SELECT string_agg(topic || ':' || kafka_partition || ':' || next_offset, ' ' ORDER BY topic, kafka_partition)
	           FROM pgkafka_join.input_offsets WHERE kafka_partition IN ($2)"
}
settled()
{
	[ "$(kafka_consume rated_movies | wc -l)" -ge "$n" ] &&
		[ "$(offset_rows "$PG_A" 0,1)" = "$(topic_ends '0|1')" ] &&
		[ "$(offset_rows "$PG_B" 2,3)" = "$(topic_ends '2|3')" ] &&
		[ "$(on "$PG_A" "SELECT sum(publish_lag) FROM pgkafka_join.status")" = 0 ] &&
		[ "$(on "$PG_B" "SELECT sum(publish_lag) FROM pgkafka_join.status")" = 0 ]
}
wait_for 120 settled ||
	echo "# not everything was consumed and published: $(kafka_consume rated_movies | wc -l) of $n results;" \
		"A $(offset_rows "$PG_A" 0,1), B $(offset_rows "$PG_B" 2,3), ends $(topic_ends '0|1|2|3')" >&2
dump_output >"$TEST_DIR/output"
py pairs "$TEST_DIR/output" | LC_ALL=C sort >"$TEST_DIR/pairs"
check_eq "the output topic (read_committed) holds each of the $n expected results once" \
	"$(cat "$GEN/expected")" "$(py results "$TEST_DIR/output" | LC_ALL=C sort)"
check_eq "results of X (all with its second version), W, Z, E1, E2" "$X:8:Movie $X, second version $Z:2:Movie $Z $E1:1:Movie $E1" \
	"$(py results "$TEST_DIR/output" | awk -F'|' '$1 ~ /^('$X'|'$W'|'$Z'|'$E1'|'$E2')$/ { n[$1]++; t[$1] = t[$1] == "" || t[$1] == $2 ? $2 : "several titles" }
		END { for (m in n) print m ":" n[m] ":" t[m] }' | LC_ALL=C sort | paste -sd' ')"
check_eq "no result carries X's first title" 0 "$(grep -c "Movie $X, first version" "$TEST_DIR/output" || true)"
check_eq "no (share, id) header pair twice on the output topic" "" "$(cut -d'|' -f1,2 "$TEST_DIR/pairs" | uniq -d)"
declare -A last_id
for s in 2 3; do
	IFS='|' read -r L ro no < <(on "$PG_A" "SELECT last_id, ratings_offset, next_offset FROM pgkafka_join.released_partitions WHERE kafka_partition = $s")
	last_id[$s]=$L
	end=$(awk -F'\t' -v p=$s '$1 == p { e = $2 + 1 } END { print e + 0 }' "$TEST_DIR/ratings.dump")
	check_eq "share $s: A's highest result id is the last_id it released, $L" "$L" \
		"$(on "$PG_A" "SELECT max(id) FROM pgkafka_join.rated_movies WHERE share = $s")"
	check_eq "share $s: A's results are the topic's records of the share up to id $L" \
		"$(awk -F'|' -v s=$s -v l="$L" '$1 == s && $2 <= l' "$TEST_DIR/pairs")" \
		"$(on "$PG_A" "SELECT share, id, rating FROM pgkafka_join.rated_movies WHERE share = $s" | LC_ALL=C sort)"
	b_own=$(awk -F'|' -v s=$s -v l="$L" '$1 == s && $2 > l' "$TEST_DIR/pairs" | wc -l)
	[ "$b_own" -gt 0 ] || fail "share $s: no record above A's last id $L on the topic: B published nothing"
	check_eq "share $s: B's rated_movies holds the share's every record on the topic, A's taken back and B's $b_own above $L" \
		"$(awk -F'|' -v s=$s '$1 == s' "$TEST_DIR/pairs")" \
		"$(on "$PG_B" "SELECT share, id, rating FROM pgkafka_join.rated_movies WHERE share = $s" | LC_ALL=C sort)"
	py inputs "$TEST_DIR/output" $s "$L" "$ro" "$no" >"$TEST_DIR/inputs.$s"
	check_eq "share $s: A's records stand for ratings below next_offset $no, B's for ratings from ratings_offset $ro" \
		"" "$(grep -v '^early' "$TEST_DIR/inputs.$s" || true)"
	check_eq "share $s: of the ratings A had stored, B joined only those of $([ $s = 2 ] && echo "Z ($Z)" || echo "E1 ($E1)"), once each" \
		"early $([ $s = 2 ] && echo "$Z:2" || echo "$E1:1")" "$(grep '^early' "$TEST_DIR/inputs.$s")"
	check_eq "partition $s: B stored its ratings from ratings_offset $ro to the end, $end" "$ro|$((end - ro))" \
		"$(on "$PG_B" "SELECT min(kafka_offset), count(*) FROM pgkafka_join.ratings WHERE kafka_partition = $s")"
	[ "$no" -lt "$end" ] || fail "partition $s: no rating came after the release; the test proves too little"
	check_eq "partition $s: A never consumed it again: its stored ratings offset is still $no (the end is $end), no rating of it stored after released_at" \
		"$no|0" \
		"$(on "$PG_A" "SELECT next_offset FROM pgkafka_join.input_offsets WHERE topic = 'ratings' AND kafka_partition = $s")|$(on "$PG_A" "SELECT count(*) FROM pgkafka_join.ratings r, pgkafka_join.released_partitions rp
		   WHERE rp.kafka_partition = $s AND r.kafka_partition = $s AND r.received_at > rp.released_at")"
done
check_eq "A has none of the movies produced after the release (Z, E1, E2)" 0 \
	"$(on "$PG_A" "SELECT count(*) FROM pgkafka_join.movies WHERE id IN ($Z, $E1, $E2)")"
check_eq "each output record is one result row of A, or one of B's own (above A's last id of its share)" \
	"$(cat "$TEST_DIR/pairs")" \
	"$({ on "$PG_A" "SELECT share, id, rating FROM pgkafka_join.rated_movies"
	     on "$PG_B" "SELECT share, id, rating FROM pgkafka_join.rated_movies
	                  WHERE id > CASE share WHEN 2 THEN ${last_id[2]} WHEN 3 THEN ${last_id[3]} END"; } | LC_ALL=C sort)"
check_eq "B's results are of shares 2 and 3 only" "2,3" \
	"$(on "$PG_B" "SELECT string_agg(DISTINCT share::text, ',') FROM pgkafka_join.rated_movies")"
check_eq "B's movies are those of partitions 2-3 as the movies topic has them" \
	"$(py movies "$TEST_DIR/movies.dump" 2,3 | LC_ALL=C sort)" \
	"$(on "$PG_B" "SELECT id, title, release_year FROM pgkafka_join.movies" | LC_ALL=C sort)"
check_eq "nothing rejected on A or B" "0 0" \
	"$(on "$PG_A" "SELECT count(*) FROM pgkafka_join.rejected_messages") $(on "$PG_B" "SELECT count(*) FROM pgkafka_join.rejected_messages")"

#
# 5. The handovers against the final output
#
py handover "$TEST_DIR/output" "${runs[@]}" >"$TEST_DIR/handover.out" ||
	fail "the handover check could not run"
grep '^#' "$TEST_DIR/handover.out"
read -r _ bad midstream < <(grep '^summary' "$TEST_DIR/handover.out")
check_eq "each of ${#runs[@]} handovers across both servers (ties taken either way) saw every result exactly once" "0" "$bad"
check_eq "every handover happened in the middle of the stream (a snapshot and a tail both holding results)" \
	"${#runs[@]}" "$midstream"

#
# 6. Moved back: B releases 2-3, A, which released them, takes them back
#
b_identity=$(on "$PG_B" "SELECT 'pgkafka_join-' || system_identifier || '-' || d.oid
                           FROM pg_control_system(), pg_database d WHERE d.datname = current_database()")
moved_back_from=$SECONDS
check_eq "release_partitions('2-3') on B returns partitions 2 and 3" "2,3" \
	"$(on "$PG_B" "SELECT string_agg(release_partitions::text, ',' ORDER BY release_partitions)
	                 FROM pgkafka_join.release_partitions('2-3')")"
wait_for 60 '[ "$(on "$PG_B" "SELECT count(released_at) FROM pgkafka_join.released_partitions")" = 2 ]' ||
	fail "B did not release partitions 2 and 3: $(on "$PG_B" "SELECT * FROM pgkafka_join.released_partitions")"
# A looks at the claims of what it released at its next refresh of the
# partitions it owns (every 30 s)
wait_for 90 '[ "$(on "$PG_A" "SELECT count(received_at) FROM pgkafka_join.received_partitions WHERE from_server = '"'$b_identity'"'")" = 2 ]' ||
	fail "A did not take partitions 2 and 3 back: $(on "$PG_A" "SELECT * FROM pgkafka_join.received_partitions")"
echo "# A took partitions 2-3 back $((SECONDS - moved_back_from)) s after B's release was requested"
grep -hoE 'took back [0-9]+ results' "$PG_A/server.log" | sed 's/^/# A | /' || true
check_eq "A took them back from B's handover: received_partitions are B's released ones; its own released_partitions gone" \
	"$(on "$PG_B" "SELECT kafka_partition, '$b_identity', ratings_offset, next_offset, last_id
	                 FROM pgkafka_join.released_partitions ORDER BY 1")|0" \
	"$(on "$PG_A" "SELECT kafka_partition, from_server, ratings_offset, next_offset, last_id
	                 FROM pgkafka_join.received_partitions ORDER BY 1")|$(on "$PG_A" "SELECT count(*) FROM pgkafka_join.released_partitions")"
wait_for 60 '[ "$(on "$PG_B" "SELECT worker || '"':'"' || state FROM pgkafka_join.status")|$(workers_of "$PG_A")" = "0:idle: no partition to own|0:0,2:consuming 1:1,3:consuming" ]' ||
	fail "B is not idle, or A's workers do not consume 0,2 and 1,3: $(on "$PG_B" "SELECT worker || ':' || state FROM pgkafka_join.status")|$(workers_of "$PG_A")"
pass "B, all its partitions released, is idle; A's workers consume 0,2 and 1,3 again"
produce_by_id ratings $NPART <"$GEN/ratings.back"
produce_by_id movies $NPART <"$GEN/movies.back"
n=$(wc -l <"$GEN/expected.back")
settled_back()
{
	[ "$(kafka_consume rated_movies | wc -l)" -ge "$n" ] &&
		[ "$(on "$PG_A" "SELECT sum(publish_lag) FROM pgkafka_join.status")" = 0 ]
}
wait_for 120 settled_back ||
	echo "# not everything was published: $(kafka_consume rated_movies | wc -l) of $n results" >&2
dump_output >"$TEST_DIR/output.back"
py pairs "$TEST_DIR/output.back" | LC_ALL=C sort >"$TEST_DIR/pairs.back"
check_eq "after the move back, the output topic holds each of the $n expected results once" \
	"$(cat "$GEN/expected.back")" "$(py results "$TEST_DIR/output.back" | LC_ALL=C sort)"
check_eq "no (share, id) header pair twice on the output topic" "" "$(cut -d'|' -f1,2 "$TEST_DIR/pairs.back" | uniq -d)"
for s in 2 3; do
	L=$(on "$PG_B" "SELECT last_id FROM pgkafka_join.released_partitions WHERE kafka_partition = $s")
	check_eq "share $s: A's rated_movies holds the share's every record on the topic (its own, B's taken back, its new ones above B's last id $L)" \
		"$(awk -F'|' -v s=$s '$1 == s' "$TEST_DIR/pairs.back")" \
		"$(on "$PG_A" "SELECT share, id, rating FROM pgkafka_join.rated_movies WHERE share = $s" | LC_ALL=C sort)"
	[ "$(awk -F'|' -v s=$s -v l="$L" '$1 == s && $2 > l' "$TEST_DIR/pairs.back" | wc -l)" -gt 0 ] ||
		fail "share $s: A published nothing above B's last id $L"
done
check_eq "B never consumed 2-3 again: its ratings offsets are the next_offsets it released" \
	"$(on "$PG_B" "SELECT string_agg(kafka_partition || ':' || next_offset, ' ' ORDER BY kafka_partition) FROM pgkafka_join.released_partitions")" \
	"$(on "$PG_B" "SELECT string_agg(kafka_partition || ':' || next_offset, ' ' ORDER BY kafka_partition)
	                 FROM pgkafka_join.input_offsets WHERE topic = 'ratings'")"
check_eq "A's catalog of 2-3 caught up: its movies of 2-3 are those the topic has" \
	"$(kafka_consume movies >"$TEST_DIR/movies.back.dump"; py movies "$TEST_DIR/movies.back.dump" 2,3 | LC_ALL=C sort)" \
	"$(on "$PG_A" "SELECT id, title, release_year FROM pgkafka_join.movies WHERE id % 4 IN (2, 3)" | LC_ALL=C sort)"
check_eq "no server process of A or B crashed (terminated by signal)" "0 0" "$(crashes)"
echo "# total $SECONDS s"
