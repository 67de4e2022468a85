# lib.sh
#		Shell functions for the end-to-end tests of pgkafka_join.
#
# An end-to-end test is a bash script that sources this file, starts a Kafka
# broker and one or more PostgreSQL clusters of its own, drives them, and
# checks the outcome:
#
#	. "$(dirname "$0")/lib.sh"
#	test_init join_basic			# fresh $TEST_DIR, cleanup at exit
#	kafka_start "$TEST_DIR/kafka"	# sets KAFKA_DIR, KAFKA_BOOTSTRAP
#	kafka_create_topic ratings 3
#	pg_start "$TEST_DIR/pg" "pgkafka_join.brokers = '$KAFKA_BOOTSTRAP'"
#	psql_q "CREATE EXTENSION pgkafka_join"
#	printf 'k1\tv1\n' | kafka_produce ratings
#	wait_for 60 'test "$(psql_q "SELECT count(*) FROM t")" = 1' ||
#		fail "row did not arrive"
#	pass "row arrived"
#
# Everything runs as root; the PostgreSQL server programs run as the
# "postgres" operating-system user (they refuse root), so scratch
# directories are made accessible to it.  Servers listen on 127.0.0.1 only,
# on free ports.
#
# Sourcing this file turns on "set -euo pipefail" in the test script.
#
# Functions:
#	test_init NAME				fresh scratch directory $TEST_DIR; cleanup trap
#	free_port					print a free TCP port of 127.0.0.1
#	pg_start DIR [CONF ...]		create (first time) and start a cluster
#	pg_use DIR					point psql_q (PGHOST, PGPORT) at a cluster
#	pg_stop DIR [MODE]			stop a cluster (fast; smart/immediate)
#	pg_restart DIR				stop (fast) and start again
#	pg_kill DIR					SIGKILL the postmaster and its children
#	psql_q [SQL] [PSQL-ARG ...]	run SQL (or stdin), print unaligned tuples
#	kafka_start DIR				start a broker (test/kafka/broker.sh)
#	kafka_stop / kafka_kill		stop or SIGKILL it
#	kafka_create_topic NAME PARTITIONS [KEY=VALUE ...]
#	kafka_delete_records TOPIC PARTITION OFFSET	log start offset to OFFSET
#	kafka_group_offset GROUP TOPIC PARTITION	print committed offset/"none"
#	kafka_set_group_offset GROUP TOPIC PARTITION OFFSET	commit, no members
#	kafka_delete_group_offsets GROUP TOPIC	drop GROUP's offsets for TOPIC
#	kafka_claim_after GROUP TOPIC PARTITIONS OWNER	claim partitions for OWNER
#								as soon as a server has claimed them
#	kafka_produce TOPIC [-p N] [-x TXNID [--abort]]	stdin: KEY<TAB>VALUE lines
#	kafka_consume TOPIC [--uncommitted] [-f FORMAT]
#	wait_for SECONDS CMD ...	retry CMD until it succeeds or time runs out
#	pass MSG / fail MSG			report a check ("ok - ..." / "not ok - ...")
#	check_eq MSG EXPECTED ACTUAL	pass if equal, else fail showing a diff
#	on_exit CMD					run CMD (eval'd) at exit, before the cleanup
#
# Environment: PGKJ_TEST_RUN_DIR (base of scratch directories, default
# test/run.d of the source tree, or /tmp/pgkafka_join-run.d when the
# postgres user cannot reach the source tree), PG_BIN (server programs, default
# /usr/lib/postgresql/15/bin), KEEP_RUNNING=1 (leave servers running at exit,
# for debugging).

set -euo pipefail

TEST_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BROKER_SH=$TEST_TOP/test/kafka/broker.sh
TEST_RUN_DIR=${PGKJ_TEST_RUN_DIR:-$TEST_TOP/test/run.d}

# What the exit trap has to clean up.
_pg_dirs=()
_kafka_dirs=()
_exit_cmds=()

_die()
{
	echo "lib.sh: $*" >&2
	exit 1
}

. "$TEST_TOP/test/procs.sh"

# Create directory $1 (and parents), owned by postgres, and make sure the
# postgres user can reach it.
_pg_mkdir()
{
	mkdir -p "$1"
	chown postgres:postgres "$1"
	runuser -u postgres -- test -w "$1" -a -x "$1" ||
		_die "user postgres cannot write to $1; set PGKJ_TEST_RUN_DIR to a directory it can reach"
}


#
# Test set-up and reporting
#

# test_init NAME: make $TEST_DIR a fresh scratch directory
# $TEST_RUN_DIR/NAME (stopping servers a previous, interrupted run may have
# left in it) and install the cleanup trap.
test_init()
{
	local d pid

	TEST_NAME=${1:-}
	[[ "$TEST_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || _die "invalid test name \"$TEST_NAME\""

	mkdir -p "$TEST_RUN_DIR"
	chmod 755 "$TEST_RUN_DIR"
	# The source tree may sit where the postgres user cannot go (under
	# /root, say): fall back to /tmp unless told where to go.
	if [ -z "${PGKJ_TEST_RUN_DIR:-}" ] &&
		! runuser -u postgres -- test -x "$TEST_RUN_DIR"; then
		TEST_RUN_DIR=/tmp/pgkafka_join-run.d
		echo "# user postgres cannot reach the source tree; scratch directories go to $TEST_RUN_DIR" >&2
		mkdir -p "$TEST_RUN_DIR"
		chmod 755 "$TEST_RUN_DIR"
	fi
	TEST_DIR=$TEST_RUN_DIR/$TEST_NAME

	if [ -d "$TEST_DIR" ]; then
		for d in "$TEST_DIR"/*/; do
			d=${d%/}
			[ ! -f "$d/broker.pid" ] || "$BROKER_SH" kill "$d" || true
			! pid=$(_postmaster_pid "$d") || _pg_kill_pid "$pid" || true
		done
		rm -rf "$TEST_DIR"
	fi
	mkdir -p "$TEST_DIR"
	chmod 755 "$TEST_DIR"
	runuser -u postgres -- test -x "$TEST_DIR" ||
		_die "user postgres cannot reach $TEST_DIR; set PGKJ_TEST_RUN_DIR to a directory it can reach"

	trap _test_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# on_exit CMD: have the exit trap eval CMD (before stopping the servers).
on_exit()
{
	_exit_cmds+=("$1")
}

_test_cleanup()
{
	local rc=$? cmd d

	set +e
	for cmd in "${_exit_cmds[@]}"; do
		eval "$cmd"
	done
	if [ "${KEEP_RUNNING:-0}" = 1 ]; then
		echo "# KEEP_RUNNING=1: servers left running in ${TEST_DIR:-?}" >&2
	else
		for d in "${_pg_dirs[@]}"; do
			pg_stop "$d" immediate >/dev/null 2>&1
		done
		for d in "${_kafka_dirs[@]}"; do
			"$BROKER_SH" kill "$d" >/dev/null 2>&1
		done
	fi
	if [ $rc -ne 0 ]; then
		echo "# $TEST_NAME failed (exit status $rc); logs under $TEST_DIR" >&2
	fi
	exit $rc
}

pass()
{
	echo "ok - $*"
}

# fail MSG: report a failed check, show the end of the server logs, exit 1.
fail()
{
	local d

	echo "not ok - $*"
	for d in "${_pg_dirs[@]}"; do
		echo "# --- last lines of $d/server.log" >&2
		tail -n 20 "$d/server.log" 2>/dev/null | sed 's/^/# /' >&2
	done
	for d in "${_kafka_dirs[@]}"; do
		echo "# --- last lines of $d/broker.log" >&2
		tail -n 10 "$d/broker.log" 2>/dev/null | sed 's/^/# /' >&2
	done
	exit 1
}

# check_eq MSG EXPECTED ACTUAL
check_eq()
{
	if [ "$2" = "$3" ]; then
		pass "$1"
	else
		echo "# $1: expected vs. actual:" >&2
		diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") | sed 's/^/# /' >&2 || true
		fail "$1"
	fi
}

# wait_for SECONDS CMD [ARG ...]: run CMD until it succeeds, every 0.2 s,
# for at most SECONDS.  A single CMD argument is eval'd, so it can be a
# shell expression:
#	wait_for 60 'test "$(psql_q "SELECT count(*) FROM t")" = 9'
# The attempts' stderr is hidden except for a last attempt after the
# timeout.  Returns 1 on timeout.
wait_for()
{
	local timeout=$1 deadline
	shift
	deadline=$((SECONDS + timeout))

	while [ $SECONDS -lt $deadline ]; do
		if [ $# -eq 1 ]; then
			if eval "$1" 2>/dev/null; then return 0; fi
		else
			if "$@" 2>/dev/null; then return 0; fi
		fi
		sleep 0.2
	done
	if [ $# -eq 1 ]; then
		if eval "$1"; then return 0; fi
	else
		if "$@"; then return 0; fi
	fi
	echo "# wait_for: timed out after ${timeout}s: $*" >&2
	return 1
}


#
# PostgreSQL clusters
#
# A cluster lives in a directory DIR owned by postgres:
#	DIR/data		data directory
#	DIR/server.log	server log
#	DIR/port		port, chosen at creation and kept across restarts
#	DIR/socketdir	Unix-socket directory (DIR itself unless its path is
#					too long for a socket address)
#

# _pg_address DIR: choose a free port and a socket directory for the
# cluster of DIR, written to DIR/port and DIR/socketdir.  (A Unix socket
# path is limited to 107 bytes: a long DIR gets one in /tmp.)
_pg_address()
{
	local sockdir=$1

	if [ ${#sockdir} -gt 80 ]; then
		sockdir=$(mktemp -d /tmp/pgkj-sock.XXXXXX)
		chown postgres:postgres "$sockdir"
	fi
	free_port >"$1/port"
	echo "$sockdir" >"$1/socketdir"
}

# _pg_ctl_start DIR: start the cluster of DIR, logging to DIR/server.log,
# and wait until it accepts connections
_pg_ctl_start()
{
	if ! (cd "$1" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$1/data" \
			-l "$1/server.log" -w -t 60 -s start); then
		tail -n 30 "$1/server.log" >&2 || true
		_die "could not start the cluster in $1"
	fi
}

# pg_start DIR [CONF ...]: create the cluster on first use, add the CONF
# lines (e.g. "pgkafka_join.brokers = '127.0.0.1:9092'") to its
# postgresql.conf, start it and point psql_q at it.
pg_start()
{
	local dir=$1 port sockdir line
	shift

	_pg_mkdir "$dir"
	dir=$(cd "$dir" && pwd)

	if [ ! -f "$dir/data/PG_VERSION" ]; then
		_pg_address "$dir"
		port=$(cat "$dir/port")
		sockdir=$(cat "$dir/socketdir")

		(cd "$dir" && runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" \
			-U postgres -A trust -E UTF8 --no-locale --no-sync) \
			>"$dir/initdb.log" 2>&1 ||
			{ cat "$dir/initdb.log" >&2; _die "initdb failed in $dir"; }

		cat >>"$dir/data/postgresql.conf" <<EOF

# pgkafka_join end-to-end test settings
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sockdir'
shared_preload_libraries = 'pgkafka_join'
logging_collector = off
log_line_prefix = '%m [%p] %b: '
EOF
	fi
	for line in "$@"; do
		echo "$line" >>"$dir/data/postgresql.conf"
	done

	# Not registered for cleanup twice.
	[[ " ${_pg_dirs[*]} " == *" $dir "* ]] || _pg_dirs+=("$dir")

	_pg_ctl_start "$dir"
	pg_use "$dir"
}

# pg_standby PRIMARY_DIR DIR [CONF ...]: make DIR a streaming standby of
# the running cluster of PRIMARY_DIR (pg_basebackup -R, its settings
# included), on a port of its own, with the CONF lines added; start it and
# point psql_q at it.
pg_standby()
{
	local primary dir port sockdir line

	primary=$(cd "$1" && pwd)
	dir=$2
	shift 2
	_pg_mkdir "$dir"
	dir=$(cd "$dir" && pwd)
	_pg_address "$dir"
	port=$(cat "$dir/port")
	sockdir=$(cat "$dir/socketdir")
	(cd "$dir" && runuser -u postgres -- "$PG_BIN/pg_basebackup" -D "$dir/data" -R \
		-X stream -c fast -h "$(cat "$primary/socketdir")" -p "$(cat "$primary/port")" \
		-U postgres) >"$dir/basebackup.log" 2>&1 ||
		{ cat "$dir/basebackup.log" >&2; _die "pg_basebackup of $primary failed"; }
	{
		echo
		echo "# the standby's own"
		echo "port = $port"
		echo "unix_socket_directories = '$sockdir'"
		for line in "$@"; do
			echo "$line"
		done
	} >>"$dir/data/postgresql.conf"
	_pg_dirs+=("$dir")
	_pg_ctl_start "$dir"
	pg_use "$dir"
}

# pg_promote DIR: promote the standby of DIR and wait until it is done.
pg_promote()
{
	local dir

	dir=$(cd "$1" && pwd)
	(cd "$dir" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" -w -t 60 -s promote)
}

# pg_use DIR: point psql_q (and psql) at the cluster of DIR.
pg_use()
{
	export PGHOST PGPORT PGUSER=postgres PGDATABASE=${PGDATABASE:-postgres}
	PGHOST=$(cat "$1/socketdir")
	PGPORT=$(cat "$1/port")
}

# pg_stop DIR [MODE]: stop the cluster, MODE being a pg_ctl shutdown mode
# (fast by default; smart, immediate).  Nothing to do if it is not running.
pg_stop()
{
	local dir mode=${2:-fast}

	dir=$(cd "$1" && pwd)
	_postmaster_pid "$dir" >/dev/null || return 0
	(cd "$dir" && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$dir/data" \
		-m "$mode" -w -t 60 -s stop)
}

pg_restart()
{
	pg_stop "$1" fast
	pg_start "$1"
}

# Print the pid of the postmaster running on cluster directory $1, or fail.
# (The pid file may be a stale one whose pid now belongs to another
# process: check that the process runs on this data directory.)
_postmaster_pid()
{
	local pid

	[ -f "$1/data/postmaster.pid" ] || return 1
	pid=$(head -1 "$1/data/postmaster.pid")
	[[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-D $1/data" || return 1
	echo "$pid"
}

# SIGKILL postmaster $1 with all its children, and wait until all are gone.
# The postmaster is stopped first so that it cannot fork while its children
# are being listed.  (Each child runs in a session of its own, so there is
# no process group to signal.)
_pg_kill_pid()
{
	local pid=$1 p deadline=$((SECONDS + 30))
	local -a procs

	kill -STOP "$pid" 2>/dev/null || true
	mapfile -t procs < <(echo "$pid"; pgrep -P "$pid")
	kill -KILL "${procs[@]}" 2>/dev/null || true
	for p in "${procs[@]}"; do
		while alive "$p"; do
			[ $SECONDS -lt $deadline ] || _die "process $p survived SIGKILL"
			sleep 0.1
		done
	done

	# The dead postmaster is a zombie until init reaps it, and while it is,
	# a new postmaster takes the pid in postmaster.pid for a running
	# server's.  Give init a moment.
	deadline=$((SECONDS + 10))
	while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
		sleep 0.1
	done
}

# pg_kill DIR: crash the cluster: SIGKILL the postmaster and, at the same
# moment, all its children (backends, background workers), as a machine
# crash would; the next pg_start runs crash recovery.  (Killing only the
# postmaster would leave its children running until they notice, and a
# start attempted before they have exited fails.)
pg_kill()
{
	local dir pid

	dir=$(cd "$1" && pwd)
	pid=$(_postmaster_pid "$dir") || _die "no cluster running in $dir"
	_pg_kill_pid "$pid"
	# An init that does not reap would leave the postmaster a zombie for
	# good: all the server's processes are dead, so the lock file can go.
	if kill -0 "$pid" 2>/dev/null; then
		rm -f "$dir/data/postmaster.pid"
	fi
}

# psql_q [SQL] [PSQL-ARG ...]: run SQL, or the script on stdin when SQL is
# omitted or "-", against the current cluster (see pg_use) as postgres.
# Prints tuples only, unaligned (columns separated by "|"); stops at the
# first error, with a non-zero exit status.  Statements run one by one, as
# in a psql script (not as one multi-statement query).
psql_q()
{
	local sql=${1:--}

	[ $# -eq 0 ] || shift
	if [ "$sql" = - ]; then
		"$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 "$@" -f -
	else
		"$PG_BIN/psql" -X -A -t -q -v ON_ERROR_STOP=1 "$@" -f - <<<"$sql"
	fi
}


#
# Kafka broker (see test/kafka/broker.sh for details)
#

# kafka_start DIR: start a broker in DIR (or restart the one stopped there),
# set KAFKA_DIR and KAFKA_BOOTSTRAP ("127.0.0.1:PORT").
kafka_start()
{
	mkdir -p "$1"
	KAFKA_DIR=$(cd "$1" && pwd)
	[[ " ${_kafka_dirs[*]} " == *" $KAFKA_DIR "* ]] || _kafka_dirs+=("$KAFKA_DIR")
	KAFKA_BOOTSTRAP=$("$BROKER_SH" start "$KAFKA_DIR")
	export KAFKA_DIR KAFKA_BOOTSTRAP
}

# kafka_secure DIR: give the broker of DIR, before kafka_start, a SASL_SSL
# listener as well (see "secure" in test/kafka/broker.sh); set
# KAFKA_SECURE_BOOTSTRAP and KAFKA_TLS (its CAs and passwords).
kafka_secure()
{
	"$BROKER_SH" secure "$1"
	KAFKA_SECURE_BOOTSTRAP=$("$BROKER_SH" secure-bootstrap "$1")
	KAFKA_TLS=$(cd "$1/tls" && pwd)
	export KAFKA_SECURE_BOOTSTRAP KAFKA_TLS
}

# kafka_scram_user NAME PASSWORD: SCRAM-SHA-512 credentials on the broker
kafka_scram_user()
{
	"$BROKER_SH" scram-user "$KAFKA_DIR" "$@"
}

# kafka_acl ARG ...: add, remove or list ACLs (broker.sh acl)
kafka_acl()
{
	"$BROKER_SH" acl "$KAFKA_DIR" "$@"
}

# kafka_grant_worker USER: the ACLs docs/configuration.md lists for the
# principal of a server's workers, for the default topics and names, and
# nothing more: read the input topics, read and write the output topic, the
# groups named pgkafka_join*, the transactional ids pgkafka_join-*
kafka_grant_worker()
{
	local p=User:$1

	kafka_acl --add --allow-principal "$p" --operation Read --operation Describe \
		--topic movies --topic ratings --topic rated_movies
	kafka_acl --add --allow-principal "$p" --operation Write --topic rated_movies
	kafka_acl --add --allow-principal "$p" --operation Read \
		--resource-pattern-type prefixed --group pgkafka_join
	kafka_acl --add --allow-principal "$p" --operation Write --operation Describe \
		--resource-pattern-type prefixed --transactional-id pgkafka_join-
}

kafka_stop()
{
	"$BROKER_SH" stop "${1:-$KAFKA_DIR}"
}

kafka_kill()
{
	"$BROKER_SH" kill "${1:-$KAFKA_DIR}"
}

kafka_create_topic()
{
	"$BROKER_SH" create-topic "$KAFKA_DIR" "$@"
}

kafka_delete_records()
{
	"$BROKER_SH" delete-records "$KAFKA_DIR" "$@"
}

kafka_group_offset()
{
	"$BROKER_SH" group-offset "$KAFKA_DIR" "$@"
}

kafka_set_group_offset()
{
	"$BROKER_SH" set-group-offset "$KAFKA_DIR" "$@"
}

kafka_claim_after()
{
	"$BROKER_SH" claim-after "$KAFKA_DIR" "$@"
}

kafka_delete_group_offsets()
{
	"$BROKER_SH" delete-group-offsets "$KAFKA_DIR" "$@"
}

# kafka_transaction ID FIELD: a field of transactional id ID (ProducerEpoch,
# TransactionState, ...) as Kafka's kafka-transactions tool describes it
kafka_transaction()
{
	"$BROKER_SH" transactions "$KAFKA_DIR" describe --transactional-id "$1" |
		awk -v field="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == field) col = i; next }
			col { print $col; exit }'
}

# kafka_consumer_groups ARG ...: Kafka's kafka-consumer-groups tool
kafka_consumer_groups()
{
	"$BROKER_SH" consumer-groups "$KAFKA_DIR" "$@"
}

kafka_produce()
{
	"$BROKER_SH" produce "$KAFKA_DIR" "$@"
}

# produce_movies_upto N: movies 1 to N, titled "Movie <id>", keyed by their id
produce_movies_upto()
{
	local m

	for ((m = 1; m <= $1; m++)); do
		printf '%d\t{"id": %d, "title": "Movie %d"}\n' $m $m $m
	done | kafka_produce movies
}

kafka_consume()
{
	"$BROKER_SH" consume "$KAFKA_DIR" "$@"
}
