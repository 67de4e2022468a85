/*-------------------------------------------------------------------------
 *
 * passthrough.c
 *		The floor of test/bench/live.sh (with its flag peers): what the
 *		Kafka side of pgkafka_join costs without PostgreSQL and without the
 *		join.  It consumes the ratings and produces each one, unchanged, to
 *		the output topic, in Kafka transactions that also commit the input
 *		positions (consume-transform-produce, exactly once), in batches as
 *		the worker makes them.
 *
 * test/bench/live.sh builds it into its scratch directory (it is never
 * committed) with
 *
 *	gcc -O2 -Wall -pthread -o "$TEST_DIR/passthrough" test/bench/passthrough.c -lrdkafka
 *
 * and runs it until it sends SIGTERM:
 *
 *	passthrough BROKERS INPUT_TOPIC OUTPUT_TOPIC THREADS GROUP
 *
 * THREADS threads (as many as pgkafka_join's workers), thread i owning the
 * input partitions p with p % THREADS = i, as worker i does; each has its
 * own consumer (assign(), from GROUP's committed positions, or the
 * beginning) and its own transactional producer (transactional.id
 * GROUP-i).  A record keeps its key, value and timestamp and goes to the
 * output partition of the same number as its input partition.  A batch is
 * the first record waited for, then what has already arrived, at most
 * BATCH_MAX records (pgkafka_join.batch_size's default, with batch_delay
 * 0); each batch is one transaction.  The clients have the settings
 * pgkafka_join's worker gives its own (src/kafka.c): the same fetching and
 * lingering.
 *
 * Prints "ready" once every thread's producer has its producer id.  Any
 * error of a transaction ends the program with exit status 1: it never
 * retries, so a run that went through read nothing twice and lost nothing
 * (live.sh checks the output anyway).
 *
 *-------------------------------------------------------------------------
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

/* Most records per transaction: pgkafka_join.batch_size's default */
#define BATCH_MAX		10000

typedef struct Thread
{
	int			index;
	pthread_t	thread;
	rd_kafka_t *consumer;
	rd_kafka_t *producer;
	rd_kafka_topic_t *out;
	uint64_t	records;
	uint64_t	transactions;
} Thread;

static const char *brokers;
static const char *in_topic;
static const char *out_topic;
static const char *group;
static int	nthreads;
static int	npartitions;

static volatile sig_atomic_t stop;
static pthread_mutex_t ready_lock = PTHREAD_MUTEX_INITIALIZER;
static int	nready;

static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "passthrough: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static void
on_term(int signo)
{
	stop = 1;
}

/* A new configuration: the brokers, then NULL-terminated name, value pairs */
static rd_kafka_conf_t *
make_conf(const char *const *props)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];

	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		die("bootstrap.servers=%s: %s", brokers, errstr);
	for (; props[0] != NULL; props += 2)
		if (rd_kafka_conf_set(conf, props[0], props[1], errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
			die("%s=%s: %s", props[0], props[1], errstr);
	return conf;
}

static void
dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	if (m->err)
		die("%s: record not delivered: %s", rd_kafka_name(rk), rd_kafka_err2str(m->err));
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	fprintf(stderr, "passthrough: %s: %s\n", rd_kafka_name(rk), reason);
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		die("fatal error");
}

/* The error of a transactional call, if any, ends the program */
static void
check_txn(rd_kafka_error_t *error, const char *what)
{
	if (error != NULL)
		die("%s: %s", what, rd_kafka_error_string(error));
}

/* Thread T's clients; its consumer assigned its partitions */
static void
make_clients(Thread *t)
{
	char		txnid[256];
	char		errstr[512];
	const char *const cprops[] = {
		"group.id", group,
		"enable.auto.commit", "false",
		"enable.auto.offset.store", "false",
		"isolation.level", "read_committed",
		"enable.partition.eof", "false",
		"auto.offset.reset", "earliest",
		"queued.min.messages", "250000",
		"queued.max.messages.kbytes", "32768",
		"fetch.wait.max.ms", "10",
		"fetch.min.bytes", "100000",
		NULL
	};
	const char *const pprops[] = {
		"transactional.id", txnid,
		"enable.idempotence", "true",
		"linger.ms", "5",
		"retry.backoff.ms", "10",
		NULL
	};
	rd_kafka_conf_t *conf;
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	int			p;

	snprintf(txnid, sizeof(txnid), "%s-%d", group, t->index);
	conf = make_conf(cprops);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	t->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (t->consumer == NULL)
		die("could not create a consumer: %s", errstr);
	parts = rd_kafka_topic_partition_list_new(npartitions);
	for (p = t->index; p < npartitions; p += nthreads)
		rd_kafka_topic_partition_list_add(parts, in_topic, p)->offset = RD_KAFKA_OFFSET_STORED;
	err = rd_kafka_assign(t->consumer, parts);
	if (err)
		die("could not assign the partitions of %s: %s", in_topic, rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(parts);

	conf = make_conf(pprops);
	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	t->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (t->producer == NULL)
		die("could not create a producer: %s", errstr);
	check_txn(rd_kafka_init_transactions(t->producer, 60000), "init_transactions");
	t->out = rd_kafka_topic_new(t->producer, out_topic, NULL);
	if (t->out == NULL)
		die("could not open topic %s", out_topic);
}

/*
 * Read a batch into MSGS: the first record waited for (100 ms at a time,
 * until stopped), then those already arrived.  Returns how many.
 */
static int
read_batch(Thread *t, rd_kafka_message_t **msgs)
{
	int			n = 0;

	while (n < BATCH_MAX && !stop)
	{
		rd_kafka_message_t *m = rd_kafka_consumer_poll(t->consumer, n == 0 ? 100 : 0);

		if (m == NULL)
		{
			if (n > 0)
				break;
			continue;
		}
		if (m->err)
		{
			fprintf(stderr, "passthrough: consumer: %s\n", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		msgs[n++] = m;
	}
	return n;
}

/* One batch, one transaction: the records, then the input positions */
static void
pass_batch(Thread *t, rd_kafka_message_t **msgs, int n)
{
	rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(8);
	rd_kafka_consumer_group_metadata_t *cgmd = rd_kafka_consumer_group_metadata_new(group);
	int			i;

	check_txn(rd_kafka_begin_transaction(t->producer), "begin_transaction");
	for (i = 0; i < n; i++)
	{
		rd_kafka_message_t *m = msgs[i];
		rd_kafka_timestamp_type_t tstype;
		int64_t		ts = rd_kafka_message_timestamp(m, &tstype);
		rd_kafka_topic_partition_t *pos;
		rd_kafka_resp_err_t err;

		for (;;)
		{
			err = rd_kafka_producev(t->producer,
									RD_KAFKA_V_RKT(t->out),
									RD_KAFKA_V_PARTITION(m->partition),
									RD_KAFKA_V_KEY(m->key, m->key_len),
									RD_KAFKA_V_VALUE(m->payload, m->len),
									RD_KAFKA_V_TIMESTAMP(ts),
									RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									RD_KAFKA_V_END);
			if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
				break;
			rd_kafka_poll(t->producer, 10);
		}
		if (err)
			die("could not produce: %s", rd_kafka_err2str(err));
		pos = rd_kafka_topic_partition_list_find(offsets, in_topic, m->partition);
		if (pos == NULL)
			pos = rd_kafka_topic_partition_list_add(offsets, in_topic, m->partition);
		pos->offset = m->offset + 1;
		rd_kafka_message_destroy(m);
	}
	check_txn(rd_kafka_send_offsets_to_transaction(t->producer, offsets, cgmd, -1),
			  "send_offsets_to_transaction");
	check_txn(rd_kafka_commit_transaction(t->producer, -1), "commit_transaction");
	rd_kafka_consumer_group_metadata_destroy(cgmd);
	rd_kafka_topic_partition_list_destroy(offsets);
	t->records += n;
	t->transactions++;
}

static void *
thread_main(void *arg)
{
	Thread	   *t = arg;
	rd_kafka_message_t **msgs = malloc(BATCH_MAX * sizeof(rd_kafka_message_t *));

	if (msgs == NULL)
		die("out of memory");
	make_clients(t);
	pthread_mutex_lock(&ready_lock);
	if (++nready == nthreads)
	{
		printf("ready\n");
		fflush(stdout);
	}
	pthread_mutex_unlock(&ready_lock);

	while (!stop)
	{
		int			n = read_batch(t, msgs);

		if (n > 0)
			pass_batch(t, msgs, n);
	}
	free(msgs);
	return NULL;
}

/* The partition count of TOPIC */
static int
partitions_of(const char *topic)
{
	const char *const props[] = {NULL};
	rd_kafka_conf_t *conf = make_conf(props);
	char		errstr[512];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	rd_kafka_topic_t *rkt;
	const rd_kafka_metadata_t *md;
	rd_kafka_resp_err_t err;
	int			n;

	if (rk == NULL)
		die("could not create a client: %s", errstr);
	rkt = rd_kafka_topic_new(rk, topic, NULL);
	err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
	if (err)
		die("no metadata for topic %s: %s", topic, rd_kafka_err2str(err));
	if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0)
		die("topic %s not found", topic);
	n = md->topics[0].partition_cnt;
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(rk);
	return n;
}

int
main(int argc, char **argv)
{
	Thread	   *threads;
	uint64_t	records = 0,
				transactions = 0;
	int			i;

	if (argc != 6)
	{
		fprintf(stderr, "usage: passthrough BROKERS INPUT_TOPIC OUTPUT_TOPIC THREADS GROUP\n");
		return 2;
	}
	brokers = argv[1];
	in_topic = argv[2];
	out_topic = argv[3];
	nthreads = atoi(argv[4]);
	group = argv[5];
	if (nthreads < 1 || nthreads > 64)
		die("THREADS must be from 1 to 64");
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	npartitions = partitions_of(in_topic);
	if (partitions_of(out_topic) != npartitions)
		die("%s and %s must have as many partitions", in_topic, out_topic);

	threads = calloc(nthreads, sizeof(Thread));
	if (threads == NULL)
		die("out of memory");
	for (i = 0; i < nthreads; i++)
	{
		threads[i].index = i;
		if (pthread_create(&threads[i].thread, NULL, thread_main, &threads[i]) != 0)
			die("could not start a thread");
	}
	for (i = 0; i < nthreads; i++)
	{
		pthread_join(threads[i].thread, NULL);
		records += threads[i].records;
		transactions += threads[i].transactions;
		rd_kafka_topic_destroy(threads[i].out);
		rd_kafka_destroy(threads[i].producer);
		rd_kafka_consumer_close(threads[i].consumer);
		rd_kafka_destroy(threads[i].consumer);
	}
	printf("passed records=%" PRIu64 " transactions=%" PRIu64 "\n", records, transactions);
	return 0;
}
