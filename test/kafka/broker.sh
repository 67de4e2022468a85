#!/bin/bash
#
# broker.sh
#		Run a single-node Apache Kafka broker for the end-to-end tests.
#
# The broker is Apache Kafka 3.9 in KRaft mode (one process acting as broker
# and controller), run straight from the jars that test/install-deps puts in
# .cache/kafka-libs.  It listens on 127.0.0.1 only, on ports picked free at
# the first start.  Everything it owns lives in a run directory:
#
#	DIR/ports				broker and controller ports, kept across restarts
#	DIR/bootstrap			bootstrap address, "127.0.0.1:PORT"
#	DIR/server.properties	broker configuration (rewritten at every start)
#	DIR/log4j.properties	logging configuration
#	DIR/kraft-logs/			topic data and cluster metadata
#	DIR/broker.log			broker log; DIR/broker.out: JVM stdout/stderr
#	DIR/broker.pid			process id of the running broker
#	DIR/secure_port			port of the SASL_SSL listener, if any (see secure)
#	DIR/tls/				its CAs, certificate and keystore
#
# Usage:
#	broker.sh start DIR
#		Start the broker (formatting DIR on first use), wait until it answers
#		metadata requests, print the bootstrap address.  Starting a stopped
#		broker again on the same DIR keeps its ports and its data.
#	broker.sh stop DIR
#		Controlled shutdown; SIGKILL if still running after 30 s.
#	broker.sh kill DIR
#		SIGKILL, as in a crash.
#	broker.sh bootstrap DIR
#		Print the bootstrap address.
#	broker.sh secure DIR
#		Give the broker of DIR (stopped, or not made yet) a second listener,
#		SASL_SSL, from its next start on: TLS with a certificate for
#		127.0.0.1 signed by a CA made here (DIR/tls/ca.pem, the file clients
#		trust; DIR/tls/other-ca.pem is a CA the broker does not use), and
#		SASL with the mechanisms SCRAM-SHA-512 (users made with scram-user)
#		and PLAIN (one user, "plain_joiner", password in DIR/tls/plain.pw).
#		The PLAINTEXT listener stays, for the tests' own tools.  Access is
#		checked by Kafka's StandardAuthorizer: a SASL user may do only what
#		an ACL allows it (see acl); the PLAINTEXT listeners' principal
#		(User:ANONYMOUS: the tools, the controller) is a super user.
#	broker.sh secure-bootstrap DIR
#		Print the address of the SASL_SSL listener.
#	broker.sh scram-user DIR NAME PASSWORD
#		Create SCRAM-SHA-512 credentials for user NAME, or change its
#		password, with Kafka's own kafka-configs tool (ConfigCommand).
#	broker.sh acl DIR ARG ...
#		Add, remove or list ACLs with Kafka's own kafka-acls tool
#		(AclCommand), ARG being its options (--add --deny-principal
#		User:NAME --operation All --group GROUP, ...); --remove is forced.
#	broker.sh create-topic DIR NAME PARTITIONS [KEY=VALUE ...]
#		Create a topic, replication factor 1, KEY=VALUE being topic
#		configurations (cleanup.policy=compact, ...).  Waits until every
#		partition has a leader.
#	broker.sh delete-records DIR TOPIC PARTITION OFFSET
#		Delete the records of TOPIC's PARTITION below OFFSET, so that its
#		log start offset (low watermark) becomes OFFSET (-1: the high
#		watermark); print the new low watermark.
#	broker.sh group-offset DIR GROUP TOPIC PARTITION
#		Print the offset consumer group GROUP has committed for TOPIC's
#		PARTITION, or "none".
#	broker.sh set-group-offset DIR GROUP TOPIC PARTITION OFFSET
#		Commit OFFSET for TOPIC's PARTITION on behalf of GROUP, which must
#		have no active members.
#	broker.sh delete-group-offsets DIR GROUP TOPIC
#		Delete the offsets GROUP has committed for the partitions of TOPIC
#		(its offsets for other topics stay).
#	broker.sh claim-after DIR GROUP TOPIC PARTITIONS OWNER
#		Wait until GROUP holds a server's claims of partitions 0 ..
#		PARTITIONS - 1 of TOPIC (committed offsets with metadata), then
#		claim them at once for OWNER; print "watching" once waiting, then
#		the claimant found.  These last five commands run KafkaAdmin.java.
#	broker.sh consumer-groups DIR ARG ...
#		Run Kafka's own kafka-consumer-groups tool (ConsumerGroupCommand,
#		from the kafka-tools jar) against the broker, with ARG ..., e.g.
#		--describe --group NAME.
#	broker.sh transactions DIR ARG ...
#		Run Kafka's own kafka-transactions tool (TransactionsCommand) the
#		same way, e.g. describe --transactional-id ID.
#	broker.sh produce DIR TOPIC [-p PARTITION] [-x TRANSACTIONAL_ID [--abort]]
#		Produce the lines of stdin, each "KEY<TAB>VALUE", in order, with an
#		idempotent producer; returns once all are acknowledged.  An empty
#		VALUE is sent as a tombstone (NULL value), an empty KEY as a NULL
#		key.  A line without TAB is a value with a NULL key.  Keys are
#		partitioned as the Java client does (murmur2) unless -p is given.
#		With -x, all lines go in one transaction, committed at the end of
#		input, or aborted with --abort (after the messages reached the
#		broker, so that the log holds the aborted batch).
#	broker.sh consume DIR TOPIC [--uncommitted] [-f FORMAT]
#		Print every message currently in TOPIC and exit.  By default only
#		committed messages are read (isolation.level=read_committed) and each
#		message prints as one line
#			PARTITION<TAB>OFFSET<TAB>KEY<TAB>VALUE
#		with a NULL key or value printed as "NULL", sorted by partition then
#		offset.  (Values containing newlines would break that layout; pass a
#		kcat -f FORMAT to choose another, the output is then not sorted.)
#
# Environment: KAFKA_LIBS (jar directory, default .cache/kafka-libs of the
# source tree), BROKER_START_TIMEOUT (seconds, default 60).

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
KAFKA_LIBS=${KAFKA_LIBS:-$top/.cache/kafka-libs}
BROKER_START_TIMEOUT=${BROKER_START_TIMEOUT:-60}
BROKER_STOP_TIMEOUT=30

die()
{
	echo "broker.sh: $*" >&2
	exit 1
}

usage()
{
	sed -n '/^# Usage:/,/^# Environment:/{/^# Environment:/!p}' "${BASH_SOURCE[0]}" | sed 's/^#//' >&2
	exit 1
}

. "$(dirname "${BASH_SOURCE[0]}")/../procs.sh"

# Print the pid of the broker running on run directory $1, or fail.  (The
# pid file may be a stale one whose pid now belongs to another process:
# check that the process runs on this directory's configuration.)
running_pid()
{
	local pid

	[ -f "$1/broker.pid" ] || return 1
	pid=$(cat "$1/broker.pid")
	[[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
		grep -qF "kafka.Kafka $1/server.properties" || return 1
	echo "$pid"
}

# Wait until process $1 has exited, at most $2 seconds.
wait_exit()
{
	local pid=$1 deadline=$((SECONDS + $2))

	while alive "$pid"; do
		[ $SECONDS -lt $deadline ] || return 1
		sleep 0.1
	done
}

# Print the bootstrap address of run directory $1.
bootstrap_of()
{
	local port ctl

	[ -f "$1/ports" ] || die "$1 is not a broker run directory (no ports file)"
	read -r port ctl <"$1/ports"
	echo "127.0.0.1:$port"
}

# Print a random KRaft cluster id: a UUID in unpadded URL-safe base64 not
# starting with "-", as kafka.tools.StorageTool random-uuid does.
random_cluster_id()
{
	python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

write_config()
{
	local dir=$1 port=$2 ctl=$3 listeners advertised protocols

	listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctl"
	advertised="PLAINTEXT://127.0.0.1:$port"
	protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
	if [ -f "$dir/secure_port" ]; then
		listeners+=",SASL_SSL://127.0.0.1:$(cat "$dir/secure_port")"
		advertised+=",SASL_SSL://127.0.0.1:$(cat "$dir/secure_port")"
		protocols+=",SASL_SSL:SASL_SSL"
	fi

	cat >"$dir/server.properties" <<EOF
# Single-node KRaft cluster for the pgkafka_join end-to-end tests.
# Generated by test/kafka/broker.sh at every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctl
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
log.dirs=$dir/kraft-logs

# Tests create every topic they use, with the partition count they need.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1

# Internal topics: one replica, few partitions (they are created on first use
# and each partition costs start-up time).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3

# Consumer groups start at once; transactions left open by a killed producer
# are aborted soon after transaction.timeout.ms expires.
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000

# After a SIGKILL the restarted broker cannot register until the session of
# its previous incarnation has expired: keep that short.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
	if [ -f "$dir/secure_port" ]; then
		secure_config "$dir" >>"$dir/server.properties"
	fi


	cat >"$dir/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=\${kafka.logs.dir}/broker.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
}

# Logging configuration of the short-lived Java tools: warnings to stderr.
tool_log4j()
{
	local f=$1/tool-log4j.properties

	if [ ! -f "$f" ]; then
		cat >"$f" <<EOF
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %m (%c)%n
EOF
	fi
	echo "$f"
}

cmd_start()
{
	local dir=$1 pid port ctl bs deadline start=$SECONDS

	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)

	if pid=$(running_pid "$dir"); then
		echo "broker.sh: broker already running in $dir (pid $pid)" >&2
		bootstrap_of "$dir"
		return 0
	fi

	compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null ||
		die "no Kafka jars in $KAFKA_LIBS; run test/install-deps"
	command -v java >/dev/null || die "java not found; run test/install-deps"
	command -v kcat >/dev/null || die "kcat not found; run test/install-deps"

	# Ports are chosen once and kept, so that clients (and the data, which
	# records the controller's address) survive a restart.
	if [ ! -f "$dir/ports" ]; then
		port=$(free_port)
		ctl=$(free_port)
		while [ "$ctl" = "$port" ]; do
			ctl=$(free_port)
		done
		echo "$port $ctl" >"$dir/ports"
	fi
	read -r port ctl <"$dir/ports"
	bs="127.0.0.1:$port"

	write_config "$dir" "$port" "$ctl"

	# KRaft storage must be formatted once, before the first start.
	if [ ! -f "$dir/kraft-logs/meta.properties" ]; then
		tool_java "$dir" kafka.tools.StorageTool format -t "$(random_cluster_id)" \
			-c "$dir/server.properties" >"$dir/format.out" 2>&1 ||
			{ cat "$dir/format.out" >&2; die "could not format $dir/kraft-logs"; }
	fi

	# Run the JVM in the background with no tie to our stdout, so that
	# "$(broker.sh start DIR)" returns.
	java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-Djava.awt.headless=true \
		-Dkafka.logs.dir="$dir" \
		-Dlog4j.configuration="file:$dir/log4j.properties" \
		-cp "$KAFKA_LIBS/*" \
		kafka.Kafka "$dir/server.properties" \
		</dev/null >>"$dir/broker.out" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/broker.pid"

	# Ready when a metadata request lists this broker.
	deadline=$((SECONDS + BROKER_START_TIMEOUT))
	until kcat -b "$bs" -L -m 1 -q 2>/dev/null | grep -q "broker 1 at $bs"; do
		if ! alive "$pid"; then
			tail -n 30 "$dir/broker.log" "$dir/broker.out" >&2 || true
			rm -f "$dir/broker.pid"
			die "broker exited during start-up, see $dir/broker.log"
		fi
		if [ $SECONDS -ge $deadline ]; then
			tail -n 30 "$dir/broker.log" >&2 || true
			kill -KILL "$pid" 2>/dev/null || true
			rm -f "$dir/broker.pid"
			die "broker did not answer within ${BROKER_START_TIMEOUT}s, see $dir/broker.log"
		fi
		sleep 0.2
	done

	echo "$bs" >"$dir/bootstrap"
	echo "broker.sh: broker started in $((SECONDS - start))s at $bs (pid $pid)" >>"$dir/broker.out"
	echo "$bs"
}

cmd_stop()
{
	local dir=$1 pid

	pid=$(running_pid "$dir") || { rm -f "$dir/broker.pid"; return 0; }
	kill -TERM "$pid"
	if ! wait_exit "$pid" "$BROKER_STOP_TIMEOUT"; then
		echo "broker.sh: broker did not stop within ${BROKER_STOP_TIMEOUT}s, killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_exit "$pid" 10 || die "could not kill broker (pid $pid)"
	fi
	rm -f "$dir/broker.pid"
}

cmd_kill()
{
	local dir=$1 pid

	pid=$(running_pid "$dir") || { rm -f "$dir/broker.pid"; return 0; }
	kill -KILL "$pid" 2>/dev/null || true
	wait_exit "$pid" 10 || die "could not kill broker (pid $pid)"
	rm -f "$dir/broker.pid"
}

cmd_create_topic()
{
	local dir=$1 name=$2 partitions=$3 bs rc=0 deadline
	shift 3

	bs=$(running_bootstrap "$dir") || exit 1
	[[ "$partitions" =~ ^[1-9][0-9]*$ ]] || die "invalid partition count \"$partitions\""

	tool_java "$dir" "$here/CreateTopic.java" "$bs" "$name" "$partitions" "$@" || rc=$?
	[ $rc -eq 0 ] || die "could not create topic \"$name\""

	# The controller has accepted the topic; wait until the broker serves
	# it with a leader for every partition.
	deadline=$((SECONDS + 30))
	until [ "$(kcat -b "$bs" -L -t "$name" -m 2 -q 2>/dev/null |
			   grep -c '^ *partition [0-9]*, leader 1,')" = "$partitions" ]; do
		[ $SECONDS -lt $deadline ] ||
			die "topic \"$name\" has no leader for all $partitions partitions after 30s"
		sleep 0.2
	done
}

# The SASL_SSL listener's configuration (see cmd_secure)
secure_config()
{
	local dir=$1

	cat <<EOF

# SASL_SSL listener (broker.sh secure): TLS with the certificate of
# tls/broker.p12, SASL with SCRAM-SHA-512 and PLAIN.
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_plain_joiner="$(cat "$dir/tls/plain.pw")";
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$(cat "$dir/tls/keystore.pw")
ssl.client.auth=none
# ACLs (broker.sh acl): a SASL user may do only what an ACL allows it; the
# PLAINTEXT listeners (the tests' tools, the controller) are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS
EOF
}

# new_ca DIR NAME: a self-signed CA, DIR/NAME.pem and its key DIR/NAME.key
new_ca()
{
	openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$2 of a test broker" \
		-keyout "$1/$2.key" -out "$1/$2.pem" 2>/dev/null
}

cmd_secure()
{
	local dir=$1 tls

	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	! running_pid "$dir" >/dev/null || die "stop the broker of $dir first"
	command -v openssl >/dev/null || die "openssl not found; run test/install-deps"
	tls=$dir/tls
	mkdir -p "$tls"
	if [ ! -f "$tls/broker.p12" ]; then
		new_ca "$tls" ca || die "could not make a CA"
		new_ca "$tls" other-ca || die "could not make a CA"
		openssl rand -hex 16 >"$tls/keystore.pw"
		openssl rand -hex 16 >"$tls/plain.pw"
		# the broker's certificate, for the address clients connect to
		openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
			-keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null &&
			openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
				-CAcreateserial -days 30 -out "$tls/broker.pem" \
				-extfile <(echo "subjectAltName=IP:127.0.0.1") 2>/dev/null &&
			openssl pkcs12 -export -in "$tls/broker.pem" -inkey "$tls/broker.key" \
				-certfile "$tls/ca.pem" -name broker -out "$tls/broker.p12" \
				-passout "pass:$(cat "$tls/keystore.pw")" ||
			die "could not make the broker's certificate"
	fi
	[ -f "$dir/secure_port" ] || free_port >"$dir/secure_port"
}

cmd_secure_bootstrap()
{
	[ -f "$1/secure_port" ] || die "$1 has no SASL_SSL listener (see broker.sh secure)"
	echo "127.0.0.1:$(cat "$1/secure_port")"
}

cmd_scram_user()
{
	local dir=$1 name=$2 password=$3 bs

	bs=$(running_bootstrap "$dir") || exit 1
	tool_java "$dir" kafka.admin.ConfigCommand --bootstrap-server "$bs" --alter \
		--entity-type users --entity-name "$name" \
		--add-config "SCRAM-SHA-512=[iterations=4096,password=$password]" >/dev/null ||
		die "could not set the SCRAM credentials of user \"$name\""
}

cmd_acl()
{
	local dir=$1 bs
	shift

	bs=$(running_bootstrap "$dir") || exit 1
	[[ " $* " != *" --remove "* ]] || set -- "$@" --force
	tool_java "$dir" kafka.admin.AclCommand --bootstrap-server "$bs" "$@" >"$dir/acl.out" ||
		{ cat "$dir/acl.out" >&2; die "kafka-acls $* failed"; }
}

# running_bootstrap DIR: the bootstrap address of the running broker of DIR
running_bootstrap()
{
	running_pid "$1" >/dev/null || die "no broker running in $1"
	bootstrap_of "$1"
}

# tool_java DIR ARG ...: java with the broker's class path, logging as the
# tools of run directory DIR do
tool_java()
{
	local dir=$1
	shift

	java -cp "$KAFKA_LIBS/*" -Dlog4j.configuration="file:$(tool_log4j "$dir")" "$@"
}

# kafka_admin DIR COMMAND ARG ...: run KafkaAdmin.java against the broker
# of run directory DIR.
kafka_admin()
{
	local dir=$1 bs
	shift

	bs=$(running_bootstrap "$dir") || exit 1
	tool_java "$dir" "$here/KafkaAdmin.java" "$bs" "$@"
}

cmd_consumer_groups()
{
	local dir=$1 bs
	shift

	bs=$(running_bootstrap "$dir") || exit 1
	tool_java "$dir" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
		--bootstrap-server "$bs" "$@"
}

cmd_transactions()
{
	local dir=$1 bs
	shift

	bs=$(running_bootstrap "$dir") || exit 1
	tool_java "$dir" org.apache.kafka.tools.TransactionsCommand \
		--bootstrap-server "$bs" "$@"
}

cmd_delete_records()
{
	local dir=$1 topic=$2 partition=$3 offset=$4

	[[ "$partition" =~ ^[0-9]+$ ]] || die "invalid partition \"$partition\""
	[[ "$offset" =~ ^(-1|[0-9]+)$ ]] || die "invalid offset \"$offset\""
	kafka_admin "$dir" delete-records "$topic" "$partition" "$offset" ||
		die "could not delete records of \"$topic\" partition $partition below offset $offset"
}

cmd_group_offset()
{
	local dir=$1 group=$2 topic=$3 partition=$4

	[[ "$partition" =~ ^[0-9]+$ ]] || die "invalid partition \"$partition\""
	kafka_admin "$dir" group-offset "$group" "$topic" "$partition" ||
		die "could not read the offset of group \"$group\" for \"$topic\" partition $partition"
}

cmd_set_group_offset()
{
	local dir=$1 group=$2 topic=$3 partition=$4 offset=$5

	[[ "$partition" =~ ^[0-9]+$ ]] || die "invalid partition \"$partition\""
	[[ "$offset" =~ ^[0-9]+$ ]] || die "invalid offset \"$offset\""
	kafka_admin "$dir" set-group-offset "$group" "$topic" "$partition" "$offset" ||
		die "could not set the offset of group \"$group\" for \"$topic\" partition $partition"
}

cmd_delete_group_offsets()
{
	local dir=$1 group=$2 topic=$3

	kafka_admin "$dir" delete-group-offsets "$group" "$topic" ||
		die "could not delete the offsets of group \"$group\" for \"$topic\""
}

cmd_claim_after()
{
	local dir=$1 group=$2 topic=$3 partitions=$4 owner=$5

	[[ "$partitions" =~ ^[1-9][0-9]*$ ]] || die "invalid partition count \"$partitions\""
	kafka_admin "$dir" claim-after "$group" "$topic" "$partitions" "$owner" ||
		die "could not claim the partitions of \"$topic\" in group \"$group\" after their claimant"
}

cmd_produce()
{
	local dir=$1 topic=$2 bs partition="" txn="" abort=false kpid rc=0
	local input nlines fifo fd
	local -a opts
	shift 2

	while [ $# -gt 0 ]; do
		case $1 in
			-p) partition=$2; shift 2 ;;
			-x) txn=$2; shift 2 ;;
			--abort) abort=true; shift ;;
			*) usage ;;
		esac
	done
	if $abort && [ -z "$txn" ]; then
		die "--abort needs a transactional id (-x)"
	fi

	bs=$(bootstrap_of "$dir")
	opts=(-P -b "$bs" -t "$topic" -K '\t' -Z -m 30 -X log_level=3
		  -X enable.idempotence=true -X partitioner=murmur2_random)
	[ -z "$partition" ] || opts+=(-p "$partition")
	[ -z "$txn" ] || opts+=(-X transactional.id="$txn")

	if ! $abort; then
		# kcat flushes at end of input and fails on any delivery error (or,
		# with -x, if the commit fails).
		kcat "${opts[@]}"
		return
	fi

	# Abort.  kcat aborts its transaction when a signal interrupts it, but
	# it reads its input with fread()s of 1 kB (in 1.7.1), which wait for
	# more input while the pipe stays open.  So give it the messages and
	# enough empty lines (which it skips) that all messages are produced
	# before it blocks; then let them reach the broker, interrupt kcat and
	# only then close its input, so that it leaves its read loop and aborts.
	input=$(cat; echo x)
	input=${input%x}
	nlines=$(printf '%s' "$input" | wc -l)
	fifo=$(mktemp -u "$dir/produce-fifo.XXXXXX")
	mkfifo "$fifo"
	kcat "${opts[@]}" <"$fifo" &
	kpid=$!
	exec {fd}>"$fifo"
	rm -f "$fifo"
	printf '%s' "$input" >&"$fd"
	head -c $(( $(printf '%s' "$input" | wc -c) + 4096 * (nlines + 2) )) /dev/zero | tr '\0' '\n' >&"$fd"
	sleep 3
	kill -INT "$kpid" 2>/dev/null || rc=1
	exec {fd}>&-
	wait "$kpid" || rc=$?
	[ $rc -eq 0 ] || die "kcat failed to abort its transaction"
}

cmd_consume()
{
	local dir=$1 topic=$2 bs isolation=read_committed format="" rc=0
	shift 2

	while [ $# -gt 0 ]; do
		case $1 in
			--uncommitted) isolation=read_uncommitted; shift ;;
			-f) format=$2; shift 2 ;;
			*) usage ;;
		esac
	done

	bs=$(bootstrap_of "$dir")
	if [ -n "$format" ]; then
		kcat -C -b "$bs" -t "$topic" -o beginning -e -q -Z -m 30 \
			-X isolation.level="$isolation" -f "$format"
		return
	fi
	kcat -C -b "$bs" -t "$topic" -o beginning -e -q -Z -m 30 \
		-X isolation.level="$isolation" -f '%p\t%o\t%k\t%s\n' |
		sort -t "$(printf '\t')" -k1,1n -k2,2n -s
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
# Absolute paths (the broker's files are located through them).
if [ -d "$dir" ]; then
	dir=$(cd "$dir" && pwd)
elif [ "$cmd" != start ] && [ "$cmd" != secure ]; then
	die "no run directory $dir"
fi

case $cmd in
	start) [ $# -eq 0 ] || usage; cmd_start "$dir" ;;
	stop) [ $# -eq 0 ] || usage; cmd_stop "$dir" ;;
	kill) [ $# -eq 0 ] || usage; cmd_kill "$dir" ;;
	bootstrap) [ $# -eq 0 ] || usage; bootstrap_of "$dir" ;;
	create-topic) [ $# -ge 2 ] || usage; cmd_create_topic "$dir" "$@" ;;
	delete-records) [ $# -eq 3 ] || usage; cmd_delete_records "$dir" "$@" ;;
	group-offset) [ $# -eq 3 ] || usage; cmd_group_offset "$dir" "$@" ;;
	set-group-offset) [ $# -eq 4 ] || usage; cmd_set_group_offset "$dir" "$@" ;;
	claim-after) [ $# -eq 4 ] || usage; cmd_claim_after "$dir" "$@" ;;
	delete-group-offsets) [ $# -eq 2 ] || usage; cmd_delete_group_offsets "$dir" "$@" ;;
	consumer-groups) [ $# -ge 1 ] || usage; cmd_consumer_groups "$dir" "$@" ;;
	transactions) [ $# -ge 1 ] || usage; cmd_transactions "$dir" "$@" ;;
	secure) [ $# -eq 0 ] || usage; cmd_secure "$dir" ;;
	secure-bootstrap) [ $# -eq 0 ] || usage; cmd_secure_bootstrap "$dir" ;;
	scram-user) [ $# -eq 2 ] || usage; cmd_scram_user "$dir" "$@" ;;
	acl) [ $# -ge 1 ] || usage; cmd_acl "$dir" "$@" ;;
	produce) [ $# -ge 1 ] || usage; cmd_produce "$dir" "$@" ;;
	consume) [ $# -ge 1 ] || usage; cmd_consume "$dir" "$@" ;;
	*) usage ;;
esac
