# 001_restarts.pl
#		Restarts, reloads and extension changes while the join worker runs.
#
# Needs a Kafka broker with the topics movies, ratings, rated_movies and
# rated_movies_v2, given by PGKJ_KAFKA_BOOTSTRAP (test/run starts one).
# Each case checks what a DBA would expect, and that nothing was lost or
# published twice across it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $bootstrap = $ENV{PGKJ_KAFKA_BOOTSTRAP}
  or BAIL_OUT('PGKJ_KAFKA_BOOTSTRAP is not set; run this through test/run');

# Produce "key<TAB>value" lines to a topic with kcat, murmur2-partitioned
sub produce
{
	my ($topic, @lines) = @_;
	my $input = join("\n", @lines) . "\n";
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'kcat', '-b', $bootstrap, '-P', '-t', $topic, '-K', "\t", '-Z',
			'-X', 'topic.partitioner=murmur2_random'
		],
		'<', \$input, '>', \$stdout, '2>', \$stderr)
	  or die "kcat could not produce to $topic: $stderr";
}

# The committed records of a topic, read_committed, as kcat prints them
# with format $format
sub read_committed
{
	my ($topic, $format) = @_;
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-e', '-q',
			'-X', 'isolation.level=read_committed', '-f', $format
		],
		'>', \$stdout, '2>', \$stderr)
	  or die "kcat could not consume $topic: $stderr";
	return $stdout;
}

# The committed records of a topic, as "key<TAB>value" lines, sorted
sub consume
{
	my ($topic) = @_;
	return join("\n", sort split(/\n/, read_committed($topic, "%k\t%s\n")));
}

# The records of an output topic, committed ones only, in partition and
# offset order: [partition, offset, "id rating"], the id being the record's
# pgkafka_join.id header
sub records
{
	my ($topic) = @_;
	my $stdout = read_committed($topic, "%p\t%o\t%h\t%s\n");
	my @records;
	foreach my $line (split(/\n/, $stdout))
	{
		my ($partition, $offset, $headers, $value) = split(/\t/, $line, 4);
		my ($id) = $headers =~ /pgkafka_join\.id=(\d+)/
		  or die "no pgkafka_join.id header in a record of $topic: $line";
		my ($rating) = $value =~ /"rating":([0-9.]+)/
		  or die "no rating in a record of $topic: $line";
		push @records, [ $partition, $offset, "$id $rating" ];
	}
	return sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] } @records;
}

# "id rating" lines sorted by id, then rating
sub by_id
{
	return join("\n",
		map { join(' ', @$_) }
		sort { $a->[0] <=> $b->[0] || $a->[1] <=> $b->[1] }
		map { [ split(/ /, $_) ] } @_);
}

# The results an output topic holds, "id rating" lines sorted by id: a
# result published twice shows twice
sub published
{
	my ($topic) = @_;
	return by_id(map { $_->[2] } records($topic));
}

sub wait_for_records
{
	my ($topic, $n) = @_;
	for (my $i = 0; $i < 600; $i++)
	{
		my @records = split(/\n/, consume($topic));
		return scalar(@records) if scalar(@records) >= $n;
		usleep(100_000);
	}
	return -1;
}

my $rating_no = 0;

# Ratings with distinct values, for movie 1
sub ratings
{
	my ($n) = @_;
	my @lines;
	for (1 .. $n)
	{
		$rating_no++;
		push @lines, "1\t{\"id\": 1, \"rating\": $rating_no}";
	}
	return @lines;
}

my $node = PostgreSQL::Test::Cluster->new('restarts');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'pgkafka_join'
pgkafka_join.database = 'postgres'
pgkafka_join.brokers = '$bootstrap'
pgkafka_join.retry_interval = '1s'
pgkafka_join.batch_delay = '10ms'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pgkafka_join');

sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker'"
	);
}

# How many times process $pid went to sleep, as the kernel counts it
# (voluntary context switches): a worker with nothing to do but wait ends
# each turn of its loop in one sleep, and shows nothing else of its turns
sub sleeps
{
	my ($pid) = @_;
	my $status = slurp_file("/proc/$pid/status");
	$status =~ /^voluntary_ctxt_switches:\s+(\d+)$/m
	  or die "no voluntary_ctxt_switches in /proc/$pid/status";
	return $1;
}

# Wait until process $pid has slept $n more times; false on timeout
sub wait_turns
{
	my ($pid, $n) = @_;
	my $until = sleeps($pid) + $n;
	for (my $i = 0; $i < 600; $i++)
	{
		return 1 if sleeps($pid) >= $until;
		usleep(100_000);
	}
	return 0;
}

# The results PostgreSQL holds, in the same form
sub stored
{
	return by_id(split(/\n/,
		$node->safe_psql('postgres', q{SELECT id || ' ' || rating FROM pgkafka_join.rated_movies})));
}

# The ratings of the results PostgreSQL holds, one a line, sorted
sub result_ratings
{
	return $node->safe_psql('postgres',
		'SELECT rating FROM pgkafka_join.rated_movies ORDER BY rating');
}

produce('movies', "1\t{\"id\": 1, \"title\": \"One\", \"release_year\": 2001}");
produce('ratings', ratings(10));
$node->poll_query_until('postgres',
	'SELECT count(*) = 10 FROM pgkafka_join.rated_movies')
  or die 'the first ratings were not joined';
is(wait_for_records('rated_movies', 10), 10, 'the first ten results are published');
is(result_ratings(), join("\n", 1 .. 10), 'each of the first ten ratings gave one result');
is(published('rated_movies'), stored(), 'the output topic holds each of them once');

# The worker shows in pg_stat_activity, with its own backend type
like(worker_pid(), qr/^\d+$/, 'one pgkafka_join worker runs');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgkafka_join launcher'"
	),
	'1',
	'one pgkafka_join launcher runs');

# --- SIGTERM to the worker: it ends, the launcher starts another
my $old_pid = worker_pid();
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_pid)");
$node->wait_for_log(qr/terminating background worker "pgkafka_join worker/, $log_offset);
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pgkafka_join worker' AND pid <> $old_pid"
) or die 'no new worker after SIGTERM';
pass('after SIGTERM the launcher starts a new worker');
produce('ratings', ratings(10));
$node->poll_query_until('postgres',
	'SELECT count(*) = 20 FROM pgkafka_join.rated_movies')
  or die 'ratings after SIGTERM were not joined';
is(wait_for_records('rated_movies', 20), 20, 'the new worker goes on where the old one stopped');
is(result_ratings(), join("\n", 1 .. 20),
	'after SIGTERM, each rating gave one result: none lost, none made twice');
is(published('rated_movies'), stored(),
	'after SIGTERM, the output topic holds each result once');

# --- pg_ctl restart: the same
$node->restart;
produce('ratings', ratings(10));
$node->poll_query_until('postgres',
	'SELECT count(*) = 30 FROM pgkafka_join.rated_movies')
  or die 'ratings after restart were not joined';
is(wait_for_records('rated_movies', 30), 30, 'after pg_ctl restart, every result once');
is(result_ratings(), join("\n", 1 .. 30),
	'after pg_ctl restart, each rating gave one result: none lost, none made twice');
is(published('rated_movies'), stored(),
	'after pg_ctl restart, the output topic holds each result once');

# --- a bad value on reload is refused, the old value stays
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pgkafka_join.join_window = 'soon'");
$node->reload;
$node->wait_for_log(qr/invalid value for parameter "pgkafka_join.join_window": "soon"/, $log_offset);
is($node->safe_psql('postgres', 'SHOW pgkafka_join.join_window'),
	'1 month', 'a bad join_window is refused on reload; the old one stays');

# --- a good value on reload takes effect in the worker: with a one-day
# window, a rating of two days ago is stored but not published
$node->append_conf('postgresql.conf', "pgkafka_join.join_window = '1 day'");
$node->reload;
$node->poll_query_until('postgres', "SELECT current_setting('pgkafka_join.join_window') = '1 day'")
  or die 'join_window was not reloaded';
# A new backend has the new window: give the worker, signalled at the same
# time, a moment to take it in too.  This sleep cannot make the checks below
# pass wrongly: a worker still on the old window would publish the old
# rating, and fail them.
sleep(1);
my $two_days_ago = $node->safe_psql('postgres',
	"SELECT to_char((now() - interval '2 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
produce('ratings',
	"1\t{\"id\": 1, \"rating\": 0.5, \"rated_at\": \"$two_days_ago\"}",
	ratings(1));
$node->poll_query_until('postgres',
	'SELECT count(*) = 32 FROM pgkafka_join.ratings')
  or die 'the ratings were not stored';
# The rating produced after the old one, on the same partition (same key),
# stored and joined, shows the old one's fate settled: it was stored first,
# and joined or not in the transaction that stored it.
is( $node->safe_psql('postgres',
		'SELECT rating, joined FROM pgkafka_join.ratings WHERE rating IN (0.5, 31) ORDER BY rating'),
	"0.5|f\n31|t",
	'after reload, a rating older than the new window is stored, not joined; the next one is joined');
is(result_ratings(), join("\n", 1 .. 31),
	'after reload, a rating older than the new window gives no result');
is(wait_for_records('rated_movies', 31), 31, 'the 31 results are published');
is(published('rated_movies'), stored(), 'the output topic holds each result once, none of the old rating');
my $old_topic = published('rated_movies');

# --- a new output topic on reload: the worker reconnects and publishes to
# it, from the first result (a new topic has a position of its own)
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pgkafka_join.output_topic = 'rated_movies_v2'");
$node->reload;
$node->wait_for_log(qr/Kafka settings changed; reconnecting/, $log_offset);
is(wait_for_records('rated_movies_v2', 31), 31, 'a new output topic receives every result');
is(published('rated_movies_v2'), stored(), 'the new output topic holds each result once');
# Every result published again, to the new topic, shows the worker
# publishing since the change: one sent to the old topic would be there.
is(published('rated_movies'), $old_topic, 'the old output topic keeps what it had, and only that');

# --- pgkafka_join.brokers = '': the worker waits idle and says so
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pgkafka_join.brokers = ''");
$node->reload;
$node->wait_for_log(qr/pgkafka_join is idle: pgkafka_join.brokers is empty/, $log_offset);
produce('ratings', ratings(5));
# An idle worker has no Kafka handles: nothing shows when it would have
# consumed the 5 ratings, had it not been idle.  Once they are stored, the
# proof that none was stored while the worker was idle is that each was
# stored by a transaction that began after brokers were set again
# (received_at is that transaction's start).
my $brokers_set_at = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
$node->append_conf('postgresql.conf', "pgkafka_join.brokers = '$bootstrap'");
$node->reload;
$node->poll_query_until('postgres',
	'SELECT count(*) = 36 FROM pgkafka_join.rated_movies')
  or die 'ratings were not joined after brokers came back';
is( $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE received_at > '$brokers_set_at'), count(*) FROM pgkafka_join.ratings WHERE rating > 31"
	),
	'5|5',
	'with no brokers, nothing is consumed: the 5 ratings produced meanwhile are stored after brokers are set again');
is(wait_for_records('rated_movies_v2', 36), 36, 'with brokers set again, the worker resumes');
is(result_ratings(), join("\n", 1 .. 36), 'each rating gave one result');
is(published('rated_movies_v2'), stored(), 'the output topic holds each result once');

# --- DROP EXTENSION while the worker runs: it waits, without crash-looping
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP EXTENSION pgkafka_join');
$node->wait_for_log(qr/pgkafka_join is waiting for the extension in database "postgres"/, $log_offset);
my $waiting_pid = worker_pid();
# Three turns of the waiting worker's loop are three occasions to fail on
# the missing extension and exit; it is looked at once it consumes again.
wait_turns($waiting_pid, 3) or die 'the waiting worker did not go round its loop';
# What the old extension published, and where it ends in each partition
my @old_records = records('rated_movies_v2');
my %old_end;
$old_end{ $_->[0] } = $_->[1] foreach @old_records;

# --- CREATE EXTENSION again: a new start, from the beginning of the topics
$node->safe_psql('postgres', 'CREATE EXTENSION pgkafka_join');
$node->poll_query_until('postgres',
	"SELECT count(*) = 37 FROM pgkafka_join.ratings")
  or die 'the topics were not consumed again';
# The worker consuming again shows that it waited through the whole time
# the extension was missing: had it exited meanwhile, another pid would be
# consuming now.
is(worker_pid(), $waiting_pid,
	'after DROP EXTENSION the worker waits, and is not restarted: the same worker consumes after CREATE EXTENSION');
unlike(substr(slurp_file($node->logfile), $log_offset),
	qr/pgkafka_join worker.*(exited with exit code|terminated by signal)/,
	'no worker exited while the extension was missing');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pgkafka_join.movies'),
	'1', 'after CREATE EXTENSION the catalog is read again from the topic');
# results: the 36 inside the one-day window (35 + the one stored while
# brokers were empty) are published again with new ids; 0.5 is two days old
$node->poll_query_until('postgres',
	'SELECT count(*) = 36 FROM pgkafka_join.rated_movies')
  or die 'ratings were not joined after CREATE EXTENSION';
is(wait_for_records('rated_movies_v2', 72), 72,
	'the new extension publishes its results once, after those of the old one');
is(result_ratings(), join("\n", 1 .. 36), 'the new extension made one result of each rating in the window');
my @new_records = records('rated_movies_v2');
is( by_id(
		map { $_->[2] }
		grep { !exists $old_end{ $_->[0] } || $_->[1] > $old_end{ $_->[0] } } @new_records),
	stored(),
	'after those of the old extension, the output topic holds each result of the new one once');
is( by_id(
		map { $_->[2] }
		grep { exists $old_end{ $_->[0] } && $_->[1] <= $old_end{ $_->[0] } } @new_records),
	by_id(map { $_->[2] } @old_records),
	'before them, what the old extension published, unchanged');
is(published('rated_movies'), $old_topic, 'the first output topic still holds what it had, and only that');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');

$node->stop;
done_testing();
