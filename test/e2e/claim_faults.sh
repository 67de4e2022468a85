#!/bin/bash
#
# claim_faults.sh
#		Claims under faults other than a frozen owner (takeover.sh): an
#		owner cut off from the claims' group coordinator only, in the middle
#		of a stream, stores and publishes nothing until it renews its
#		claims, says why, and goes on once it can; nothing is lost or
#		repeated.
#
# Two servers, each with a principal of its own on the broker's SASL_SSL
# listener (SCRAM-SHA-512), configured for the same partitions 0-2 and the
# same output topic.  Server A owns them and joins 3,000 ratings streamed in
# 30 chunks; server B is refused.  After the 9th chunk an ACL denies A's
# principal the claims' group ("pgkafka_join.owners.rated_movies"): A still
# reaches the brokers (it consumes, and its producer and the group of its
# publish positions are untouched), but can neither read nor write its
# claims.  Within half the lapse A stops storing and publishing, while the
# stream goes on: between batches it waits to renew its claims, in a batch
# the commit fails; its log says why once (the broker's refusal), its state
# shows it.  B sees A's claims lapse and, holding none of the partitions'
# state, does not take them over.  Through B's refusal, five more chunks and
# three turns of A's loop, A stores and publishes nothing.  Once the ACL is
# removed, A holds its claims again and goes on: every rating's result is
# on the output topic exactly once, and nothing A stored or joined is dated
# between the moment it stopped and the ACL's removal.

. "$(dirname "$0")/setup.sh"

MOVIES=300
RATINGS=3000
CHUNKS=30
test_init claim_faults
kafka_secure "$TEST_DIR/kafka"
kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies; do
	kafka_create_topic $topic 3
done
# A's claims go stale between batches (it waits to renew them), or in a
# batch, whose commit then fails (it claims them anew)
STOPPED='waiting: renewing claims|waiting: claiming partitions'
STOP_LOG='pgkafka_join (stores and publishes nothing until it renews its claims|did not commit: its claims of partitions 0-2 were last renewed)'

# server NAME DIR: a cluster whose worker connects as principal NAME,
# its password in a file only the server's user reads
server()
{
	local name=$1 dir=$2 password secrets

	password=$name-$(openssl rand -hex 8)
	kafka_scram_user "$name" "$password"
	kafka_grant_worker "$name"
	mkdir -p "$dir"
	secrets=$TEST_DIR/$name.properties
	printf '%s\n' "sasl.username=$name" "sasl.password=$password" >"$secrets"
	chown postgres: "$secrets"
	chmod 600 "$secrets"
	pg_start "$dir" \
		"pgkafka_join.brokers = '$KAFKA_SECURE_BOOTSTRAP'" \
		"pgkafka_join.kafka_properties = 'security.protocol=SASL_SSL sasl.mechanisms=SCRAM-SHA-512 ssl.ca.location=$KAFKA_TLS/ca.pem'" \
		"pgkafka_join.kafka_properties_file = '$secrets'" \
		"pgkafka_join.database = 'postgres'" \
		"pgkafka_join.retry_interval = '1s'" \
		"pgkafka_join.batch_size = 200" \
		"pgkafka_join.partitions = '0-2'"
	psql_q "CREATE EXTENSION pgkafka_join" >/dev/null
}
chmod 644 "$KAFKA_TLS"/ca.pem

# sleeps PID: how often process PID slept (each turn of a worker's loop
# ends in a sleep, which the kernel counts)
sleeps() { awk '/^voluntary_ctxt_switches:/ { print $2 }' "/proc/$1/status"; }
# deny_a add|remove: A's principal denied the claims' group (a DENY wins
# over the ALLOW of the groups pgkafka_join*)
deny_a()
{
	kafka_acl "--$1" --deny-principal User:server_a --operation All --group "$CLAIMS_GROUP"
}

PG_A=$TEST_DIR/pg_a
PG_B=$TEST_DIR/pg_b
server server_a "$PG_A"
produce_movies_upto "$MOVIES"
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies")" = '$MOVIES' ]' ||
	fail "A did not store the movies"
server server_b "$PG_B"
wait_for 60 '[ "$(state_of "$PG_B")" = "$REFUSED" ]' ||
	fail "B is not refused while A owns the partitions: $(state_of "$PG_B")"
pass "B, configured for A's partitions, is refused while A renews its claims"
pg_use "$PG_A"

stream_files "$MOVIES" "$RATINGS" "$CHUNKS" 13
stream_produce 9 "$TEST_DIR/cut_off"
wait_for 60 '[ -e "$TEST_DIR/produced.8" ]' || fail "the first 9 chunks were not produced"

deny_a add
touch "$TEST_DIR/cut_off"
pass "A's principal denied the group $CLAIMS_GROUP, having stored $(psql_q "SELECT count(*) FROM pgkafka_join.ratings") ratings"
wait_for 30 '[[ "$(state_of "$PG_A")" =~ ^($STOPPED)$ ]]' ||
	fail "A did not stop for its claims: $(state_of "$PG_A")"
grep -A1 -E "$STOP_LOG" "$PG_A/server.log" | head -2 | sed 's/^/# | /'
check_eq "A's log says why, once: the broker refuses it the claims' group" "1|1" \
	"$(grep -cE "$STOP_LOG" "$PG_A/server.log" || true)|$(grep -A1 -E "$STOP_LOG" "$PG_A/server.log" |
		grep -c 'DETAIL:  could not .* the partition claims: Broker: Group authorization failed' || true)"
a_state=$(state_of "$PG_A")
stopped=$(on "$PG_A" "SELECT state_since || '|' || published_total FROM pgkafka_join.status")
a_counts=$(stored_counts "$PG_A")
published=$(output_count)
# What happens meanwhile: B sees A's claims lapse (at least 5 s more), the
# stream goes on, and A goes round its loop (each turn ends in a sleep, which
# the kernel counts)
wait_for 60 'grep -q "will not take over partitions 0-2" "$PG_B/server.log"' ||
	fail "B did not see A's claims lapse"
grep -m1 -A1 'WARNING: .*will not take over partitions 0-2' "$PG_B/server.log" | sed 's/^/# | /'
wait_for 60 '[ -e "$TEST_DIR/produced.14" ]' || fail "the stream stopped"
a_worker=$(worker_pid)
slept=$(sleeps "$a_worker")
wait_for 60 '[ "$(sleeps "$a_worker")" -ge $((slept + 3)) ]' || fail "A's worker did not go round its loop"
check_eq "cut off, through B's refusal, five more chunks and three turns of its loop, A stored nothing and published nothing (state, since, published; stored; on the topic)" \
	"$a_state|$stopped|$a_counts|$published" \
	"$(state_of "$PG_A")|$(on "$PG_A" "SELECT state_since || '|' || published_total FROM pgkafka_join.status")|$(stored_counts "$PG_A")|$(output_count)"
check_eq "B, holding none of the partitions' state, stored nothing: input_offsets, movies, ratings, rated_movies" \
	"0|0|0|0" "$(stored_counts "$PG_B")"

# --- the ACL removed: A claims its partitions again and goes on
t_allowed=$(psql_q "SELECT clock_timestamp()")
deny_a remove
wait "$PRODUCER" || fail "producing the ratings failed"
wait_for_output "$RATINGS" 120
check_output_exactly_once "A cut off from the claims' group coordinator, B refused"
t_stopped=$(grep -m1 -E "$STOP_LOG" "$PG_A/server.log" | cut -d' ' -f1-3)
echo "# A stopped at $t_stopped, was allowed the group again at $t_allowed"
check_eq "nothing A stored or joined is dated between its stop and the ACL's removal" "0|0" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.ratings
	                    WHERE received_at >= '$t_stopped' AND received_at < '$t_allowed'),
	                  (SELECT count(*) FROM pgkafka_join.rated_movies
	                    WHERE joined_at >= '$t_stopped' AND joined_at < '$t_allowed')")"
check_eq "B still refused, stored nothing: state, input_offsets, movies, ratings, rated_movies" \
	"$REFUSED|0|0|0|0" "$(state_of "$PG_B")|$(stored_counts "$PG_B")"
check_eq "A's worker is the one cut off, gone on; no worker exited" "$a_worker|0|0" \
	"$(worker_pid)|$(grep -c 'exited with exit code\|terminated by signal' "$PG_A/server.log" || true)|$(grep -c 'exited with exit code\|terminated by signal' "$PG_B/server.log" || true)"

