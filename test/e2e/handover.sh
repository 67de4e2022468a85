#!/bin/bash
#
# handover.sh
#		The snapshot-to-stream handover: a client reads rated_movies,
#		output_position() and snapshot_shares() in one REPEATABLE READ
#		transaction, then tails the output topic from the start offsets,
#		skipping records whose pgkafka_join.id header is at most the
#		snapshot's last id of their pgkafka_join.share.  Done many times
#		against a live stream stored by three workers (6-partition topics,
#		ratings before and after their movies), the snapshot plus the tail
#		must equal the full output every time, with no duplicate.  Every
#		handover happens in the middle of the stream: the first once
#		results are stored, and the stream goes on until after the last, so
#		that each snapshot and each tail hold results.

. "$(dirname "$0")/setup.sh"
RUNS=${RUNS:-25}
pkj_setup handover 6 \
	"pgkafka_join.workers = 3" \
	"pgkafka_join.batch_size = 50" \
	"pgkafka_join.batch_delay = '10ms'"

python3 - "$TEST_DIR" <<'PY'
import random, sys
out = sys.argv[1]
rnd = random.Random(7)
with open(f"{out}/movies", "w") as f:
    for m in range(1, 201):
        f.write(f'{m}\t{{"id": {m}, "title": "Movie {m}"}}\n')
n = 0
for c in range(200):
    with open(f"{out}/ratings.{c}", "w") as f:
        for i in range(200):
            n += 1
            m = rnd.randrange(1, 301)      # ids above 200 have no movie yet
            f.write(f'{m}\t{{"id": {m}, "rating": {n}}}\n')
with open(f"{out}/late_movies", "w") as f:
    for m in range(201, 301):
        f.write(f'{m}\t{{"id": {m}, "title": "Movie {m}"}}\n')
PY

kafka_produce movies <"$TEST_DIR/movies"
# Chunks of 200 ratings every 0.3 s until the handovers are done, then one
# more (so that every handover's tail holds results); the movies that some
# ratings wait for come after the 16th chunk, or at the end.
(
	c=0
	late=false
	while [ ! -e "$TEST_DIR/handovers_done" ] || [ ! -e "$TEST_DIR/last_chunk" ]; do
		[ ! -e "$TEST_DIR/handovers_done" ] || touch "$TEST_DIR/last_chunk"
		[ "$c" -lt 200 ] || { echo "the handovers outlasted 200 chunks" >&2; exit 1; }
		kafka_produce ratings <"$TEST_DIR/ratings.$c"
		c=$((c + 1))
		if [ "$c" = 16 ]; then
			kafka_produce movies <"$TEST_DIR/late_movies"
			late=true
		fi
		sleep 0.3
	done
	$late || kafka_produce movies <"$TEST_DIR/late_movies"
	echo "$c" >"$TEST_DIR/chunks"
) &
producer=$!

# The recipe, RUNS times while the stream flows, from the first result on:
# the snapshot's ids and the start offsets, read in one transaction.
wait_for 60 '[ "$(psql_q "SELECT count(*) > 0 FROM pgkafka_join.rated_movies")" = t ]' ||
	fail "no result was stored"
for run in $(seq 1 "$RUNS"); do
	sleep "0.$((RANDOM % 10))"
	psql_q >"$TEST_DIR/snapshot.$run" <<'SQL'
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 'row', id FROM pgkafka_join.rated_movies;
SELECT 'start', kafka_partition, start_offset FROM pgkafka_join.output_position();
SELECT 'share', share, last_id FROM pgkafka_join.snapshot_shares();
SELECT 'check', share, max(id) FROM pgkafka_join.rated_movies GROUP BY share;
COMMIT;
SQL
done
touch "$TEST_DIR/handovers_done"
wait $producer || fail "producing the stream failed"

total=$(($(cat "$TEST_DIR/chunks") * 200))
wait_for 120 "[ \"\$(psql_q 'SELECT count(*) FROM pgkafka_join.rated_movies')\" = $total ]" ||
	fail "not every rating was joined"
wait_for_output "$total" 120
# partition, offset, id, share
kafka_consume rated_movies -f '%p\t%o\t%h\n' |
	sed -E 's/pgkafka_join.id=([0-9]+),pgkafka_join.share=(-?[0-9]+),pgkafka_join.input=[0-9:]+$/\1\t\2/' >"$TEST_DIR/topic"
psql_q "SELECT id FROM pgkafka_join.rated_movies ORDER BY id" >"$TEST_DIR/all"

bad=0
sizes=()
midstream=0
for run in $(seq 1 "$RUNS"); do
	snap=$TEST_DIR/snapshot.$run
	# the tail: from each partition's start offset (0 where none), the
	# records with an id above the snapshot's last one of their share
	awk -F'\t' -v snap="$snap" '
		BEGIN {
			while ((getline line < snap) > 0) {
				split(line, f, "|")
				if (f[1] == "start") start[f[2]] = f[3]
				if (f[1] == "share") last[f[2]] = f[3]
				if (f[1] == "check") check[f[2]] = f[3]
			}
			for (s in check) if (last[s] != check[s]) bad = 1
			for (s in last) if (last[s] != check[s]) bad = 1
			if (bad) { print "snapshot_shares() differs from max(id) per share" > "/dev/stderr"; exit 1 }
		}
		NF != 4 { print "record without id and share headers: " $0 > "/dev/stderr"; exit 1 }
		($2 >= (($1 in start) ? start[$1] : 0)) && $3 > (($4 in last) ? last[$4] : 0) { print $3 }
	' "$TEST_DIR/topic" >"$TEST_DIR/tail.$run" || fail "run $run: $(cat "$snap")"
	awk -F'|' '$1 == "row" { print $2 }' "$snap" >"$TEST_DIR/union.$run"
	sizes+=("$(wc -l <"$TEST_DIR/union.$run")+$(wc -l <"$TEST_DIR/tail.$run")")
	[ ! -s "$TEST_DIR/union.$run" ] || [ ! -s "$TEST_DIR/tail.$run" ] ||
		midstream=$((midstream + 1))
	cat "$TEST_DIR/tail.$run" >>"$TEST_DIR/union.$run"
	if [ "$(sort -n "$TEST_DIR/union.$run")" != "$(cat "$TEST_DIR/all")" ]; then
		echo "# run $run: snapshot + tail differs from the full output:" >&2
		diff <(sort -n "$TEST_DIR/union.$run") "$TEST_DIR/all" | head -5 | sed 's/^/# /' >&2
		bad=$((bad + 1))
	fi
done
echo "# snapshot + tail sizes of the $RUNS runs: ${sizes[*]}"
check_eq "every one of $RUNS handovers saw each result exactly once" "0" "$bad"
check_eq "every handover happened in the middle of the stream (a snapshot and a tail both holding results)" \
	"$RUNS" "$midstream"
