#!/bin/bash
#
# secure.sh
#		The worker against a secured cluster: a broker listener with TLS and
#		SASL (test/kafka/broker.sh secure: a CA and a broker certificate made
#		with openssl, SCRAM-SHA-512 credentials made with Kafka's own
#		kafka-configs tool), configured as docs/configuration.md's recipe
#		says, the password in pgkafka_join.kafka_properties_file (readable by
#		the server's user only).  The broker checks ACLs and allows a SASL
#		user nothing no ACL allows: the worker's principals have exactly
#		the ACLs docs/configuration.md lists.
#
#	1. the tutorial's nine results through SASL_SSL with SCRAM-SHA-512;
#	2. a wrong password, by a reload: the worker waits (the same process),
#	   says why once in the log and in pgkafka_join.status, without the
#	   password, rejects nothing, publishes nothing; the right one, by a
#	   reload: it goes on, and the rating produced meanwhile is published;
#	3. the password rotated on the broker, then in the file by a reload:
#	   the new password is used without a restart (the old one is refused
#	   by the broker by then);
#	4. an untrusted CA (ssl.ca.location naming a CA that did not sign the
#	   broker's certificate): the worker waits and says why; the right CA:
#	   it goes on;
#	5. SASL/PLAIN instead of SCRAM, by a reload;
# then every result is on the output topic exactly once, and no password
# ever reached the server log or a view.

. "$(dirname "$0")/setup.sh"

test_init secure
kafka_secure "$TEST_DIR/kafka"
kafka_start "$TEST_DIR/kafka"
for topic in movies ratings rated_movies; do
	kafka_create_topic $topic 3
done
PASSWORD1=first-$(openssl rand -hex 8)
PASSWORD2=second-$(openssl rand -hex 8)
WRONG=wrong-$(openssl rand -hex 8)
kafka_scram_user joiner "$PASSWORD1"
# the broker allows a SASL user only what an ACL says: the worker's
# principals get what docs/configuration.md lists, nothing more
kafka_grant_worker joiner
kafka_grant_worker plain_joiner

# The secrets, in a file only the server's user reads
SECRETS=$TEST_DIR/kafka-secrets.properties
secrets()
{
	printf '%s\n' "$@" >"$SECRETS"
	chown postgres: "$SECRETS"
	chmod 600 "$SECRETS"
}
secrets "sasl.username=joiner" "sasl.password=$PASSWORD1"
chmod 644 "$KAFKA_TLS"/ca.pem "$KAFKA_TLS"/other-ca.pem

PG_DIR=$TEST_DIR/pg
pg_start "$PG_DIR" \
	"pgkafka_join.brokers = '$KAFKA_SECURE_BOOTSTRAP'" \
	"pgkafka_join.kafka_properties = 'security.protocol=SASL_SSL sasl.mechanisms=SCRAM-SHA-512 ssl.ca.location=$KAFKA_TLS/ca.pem'" \
	"pgkafka_join.kafka_properties_file = '$SECRETS'" \
	"pgkafka_join.database = 'postgres'" \
	"pgkafka_join.retry_interval = '1s'"
psql_q "CREATE EXTENSION pgkafka_join" >/dev/null

reload() { psql_q "SELECT pg_reload_conf()" >/dev/null; }
# reload_reconnects WHAT: reload, and wait until the worker made new clients
reload_reconnects()
{
	local mark

	mark=$(log_mark)
	reload
	wait_for 30 'log_since "$mark" | grep -q "pgkafka_join worker: .*Kafka settings changed; reconnecting"' ||
		fail "the worker did not apply $1"
}
state() { psql_q "SELECT state FROM pgkafka_join.status WHERE worker = 0"; }
status_error() { psql_q "SELECT coalesce(last_error, '') FROM pgkafka_join.status WHERE worker = 0"; }
rejected() { psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages"; }
# rate MOVIE RATING: one rating, produced through the tests' own listener
rate() { printf '%d\t{"id": %d, "rating": %s}\n' "$1" "$1" "$2" | kafka_produce ratings; }

#
# 1. The tutorial through SASL_SSL, SCRAM-SHA-512
#
produce_tutorial
wait_for_output 9
check_eq "the tutorial's nine rated movies, through SASL_SSL with SCRAM-SHA-512" "$(tutorial_results)" "$(output_without_time)"
check_eq "the worker's connections to the broker are all on the SASL_SSL listener" "" \
	"$(grep -E '\] pgkafka_join worker: .*plaintext://' "$PG_DIR/server.log" | head -3)"
pid=$(worker_pid)

# wait_refused WHAT PATTERN RATING: after a change by a reload, the worker
# waits: its state and last_error say why (PATTERN), the log says it once,
# with the reason; a rating produced meanwhile is neither stored nor
# rejected while the worker keeps trying (the broker logs three more of its
# refused connections).  MARK is where the log was before the reload.
wait_refused()
{
	local what=$1 pattern=$2 stored refused

	wait_for 60 '[ "$(state)" = "waiting for the brokers" ] && [[ "$(status_error)" =~ $pattern ]]' ||
		fail "$what: the worker does not say it waits ($(state): $(status_error))"
	pass "$what: the worker waits, and pgkafka_join.status says why: $(status_error)"
	stored=$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")
	refused=$(grep -c 'Failed authentication with /127.0.0.1' "$KAFKA_DIR/broker.log")
	rate 128 "$3"
	wait_for 60 '[ "$(grep -c "Failed authentication with /127.0.0.1" "$KAFKA_DIR/broker.log")" -ge $((refused + 3)) ]' ||
		fail "$what: the worker does not try again"
	check_eq "$what: while refused, nothing is stored or rejected" "$stored|0" \
		"$(psql_q "SELECT count(*) FROM pgkafka_join.ratings")|$(rejected)"
	check_eq "$what: the log says once, with the reason, that the worker cannot reach the brokers" 1 \
		"$(log_since "$MARK" | grep -cE "pgkafka_join cannot reach the Kafka brokers: .*($pattern)" || true)"
	check_eq "$what: and nothing else of the worker's own" 1 \
		"$(log_since "$MARK" | grep -c 'pgkafka_join cannot reach the Kafka brokers' || true)"
}

# goes_on WHAT N: after the fix by a reload, the worker publishes the N-th
# result, as the same process
goes_on()
{
	wait_for_output "$2"
	check_eq "$1: the worker goes on after the reload, the same process, and publishes the rating held meanwhile" \
		"$pid|consuming|$2" "$(worker_pid)|$(state)|$(output_count)"
}

#
# 2. A wrong password, then the right one
#
MARK=$(log_mark)
secrets "sasl.username=joiner" "sasl.password=$WRONG"
reload
wait_refused "wrong password" "SASL authentication error|Authentication failed" 1.5
secrets "sasl.username=joiner" "sasl.password=$PASSWORD1"
reload
goes_on "wrong password fixed" 10

#
# 3. The password rotated: on the broker first, then in the file
#
kafka_scram_user joiner "$PASSWORD2"
secrets "sasl.username=joiner" "sasl.password=$PASSWORD2"
reload_reconnects "the new password"
rate 354 2.5
goes_on "password rotated by a reload" 11
check_eq "the old password is refused by the broker by then" 1 \
	"$(kcat -b "$KAFKA_SECURE_BOOTSTRAP" -X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512 \
		-X sasl.username=joiner -X sasl.password="$PASSWORD1" -X ssl.ca.location="$KAFKA_TLS/ca.pem" \
		-L -m 3 2>&1 | grep -c 'Failed to acquire metadata' || true)"

#
# 4. An untrusted CA, then the right one
#
MARK=$(log_mark)
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'security.protocol=SASL_SSL sasl.mechanisms=SCRAM-SHA-512 ssl.ca.location=$KAFKA_TLS/other-ca.pem'" >/dev/null
reload
wait_refused "untrusted CA" "certificate verify failed" 3.5
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'security.protocol=SASL_SSL sasl.mechanisms=SCRAM-SHA-512 ssl.ca.location=$KAFKA_TLS/ca.pem'" >/dev/null
reload
goes_on "untrusted CA replaced" 12

#
# 5. SASL/PLAIN
#
psql_q "ALTER SYSTEM SET pgkafka_join.kafka_properties = 'security.protocol=SASL_SSL sasl.mechanisms=PLAIN ssl.ca.location=$KAFKA_TLS/ca.pem'" >/dev/null
secrets "sasl.username=plain_joiner" "sasl.password=$(cat "$KAFKA_TLS/plain.pw")"
reload_reconnects "SASL/PLAIN"
rate 780 4.5
goes_on "SASL/PLAIN" 13

#
# Exactly once, and no secret anywhere
#
check_eq "each result id of rated_movies is on the output topic once" \
	"$(psql_q "SELECT string_agg(id::text, ',' ORDER BY id) FROM pgkafka_join.rated_movies")" \
	"$(kafka_consume rated_movies -f '%h\n' | sed -E 's/.*pgkafka_join.id=([0-9]+).*/\1/' | sort -n | paste -sd,)"
check_eq "nothing was rejected" 0 "$(rejected)"
views=$(psql_q "SELECT concat_ws(' ', s.*) FROM pgkafka_join.status s;
				SELECT setting FROM pg_settings WHERE name LIKE 'pgkafka_join.%'")
for secret in "first:$PASSWORD1" "second:$PASSWORD2" "wrong:$WRONG" "PLAIN:$(cat "$KAFKA_TLS/plain.pw")"; do
	check_eq "the ${secret%%:*} password is nowhere in the server log" 0 \
		"$(grep -cF -- "${secret#*:}" "$PG_DIR/server.log" || true)"
	check_eq "the ${secret%%:*} password is nowhere in pgkafka_join.status or the settings" 0 \
		"$(grep -cF -- "${secret#*:}" <<<"$views" || true)"
done

pass "secure"
