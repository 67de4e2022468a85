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

# The committed records of a topic, as "key<TAB>value" lines, sorted
sub consume
{
	my ($topic) = @_;
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-e', '-q',
			'-X', 'isolation.level=read_committed', '-f', "%k\t%s\n"
		],
		'>', \$stdout, '2>', \$stderr)
	  or die "kcat could not consume $topic: $stderr";
	return join("\n", sort split(/\n/, $stdout));
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

sub results
{
	return $node->safe_psql('postgres',
		'SELECT count(*) FROM pgkafka_join.rated_movies');
}

produce('movies', "1\t{\"id\": 1, \"title\": \"One\", \"release_year\": 2001}");
produce('ratings', ratings(10));
$node->poll_query_until('postgres',
	'SELECT count(*) = 10 FROM pgkafka_join.rated_movies')
  or die 'the first ratings were not joined';
is(wait_for_records('rated_movies', 10), 10, 'the first ten results are published');

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

# --- pg_ctl restart: the same
$node->restart;
produce('ratings', ratings(10));
$node->poll_query_until('postgres',
	'SELECT count(*) = 30 FROM pgkafka_join.rated_movies')
  or die 'ratings after restart were not joined';
is(wait_for_records('rated_movies', 30), 30, 'after pg_ctl restart, every result once');

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
sleep(1);
my $two_days_ago = $node->safe_psql('postgres',
	"SELECT to_char((now() - interval '2 days') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
produce('ratings',
	"1\t{\"id\": 1, \"rating\": 0.5, \"rated_at\": \"$two_days_ago\"}",
	ratings(1));
$node->poll_query_until('postgres',
	'SELECT count(*) = 32 FROM pgkafka_join.ratings')
  or die 'the ratings were not stored';
is(results(), '31', 'after reload, a rating older than the new window is not published');

# --- a new output topic on reload: the worker reconnects and publishes to
# it, from the first result (a new topic has a position of its own)
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pgkafka_join.output_topic = 'rated_movies_v2'");
$node->reload;
$node->wait_for_log(qr/Kafka settings changed; reconnecting/, $log_offset);
is(wait_for_records('rated_movies_v2', 31), 31, 'a new output topic receives every result');
is(wait_for_records('rated_movies', 31), 31, 'the old output topic keeps what it had');

# --- pgkafka_join.brokers = '': the worker waits idle and says so
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "pgkafka_join.brokers = ''");
$node->reload;
$node->wait_for_log(qr/pgkafka_join is idle: pgkafka_join.brokers is empty/, $log_offset);
produce('ratings', ratings(5));
sleep(3);
is(results(), '31', 'with no brokers, nothing is consumed');
$node->append_conf('postgresql.conf', "pgkafka_join.brokers = '$bootstrap'");
$node->reload;
$node->poll_query_until('postgres',
	'SELECT count(*) = 36 FROM pgkafka_join.rated_movies')
  or die 'ratings were not joined after brokers came back';
is(wait_for_records('rated_movies_v2', 36), 36, 'with brokers set again, the worker resumes');

# --- DROP EXTENSION while the worker runs: it waits, without crash-looping
$log_offset = -s $node->logfile;
$node->safe_psql('postgres', 'DROP EXTENSION pgkafka_join');
$node->wait_for_log(qr/pgkafka_join is waiting for the extension in database "postgres"/, $log_offset);
my $waiting_pid = worker_pid();
sleep(3);
is(worker_pid(), $waiting_pid, 'after DROP EXTENSION the worker waits, and is not restarted');

# --- CREATE EXTENSION again: a new start, from the beginning of the topics
$node->safe_psql('postgres', 'CREATE EXTENSION pgkafka_join');
$node->poll_query_until('postgres',
	"SELECT count(*) = 37 FROM pgkafka_join.ratings")
  or die 'the topics were not consumed again';
is($node->safe_psql('postgres', 'SELECT count(*) FROM pgkafka_join.movies'),
	'1', 'after CREATE EXTENSION the catalog is read again from the topic');
# results: the 36 inside the one-day window (35 + the one stored while
# brokers were empty) are published again with new ids; 0.5 is two days old
$node->poll_query_until('postgres',
	'SELECT count(*) = 36 FROM pgkafka_join.rated_movies')
  or die 'ratings were not joined after CREATE EXTENSION';
is(wait_for_records('rated_movies_v2', 72), 72,
	'the new extension publishes its results once, after those of the old one');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');

$node->stop;
done_testing();
