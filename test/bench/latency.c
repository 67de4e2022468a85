/*-------------------------------------------------------------------------
 *
 * latency.c
 *		Latency of pgkafka_join, seen from outside: from a rating's Kafka
 *		timestamp to its result being visible to a read_committed consumer
 *		of the output topic.
 *
 * test/bench/latency.sh builds it into its scratch directory (it is never
 * committed) with
 *
 *	gcc -O2 -Wall -pthread -o "$TEST_DIR/latency" test/bench/latency.c -lrdkafka -lm
 *
 * and calls it once per phase, against the broker and the cluster it
 * started:
 *
 *	latency steady BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES RATE SECONDS WARMUP
 *		RATE ratings/s for SECONDS seconds; the latencies of the ratings sent
 *		in the first WARMUP seconds are reported apart ("warmup") from the
 *		rest ("steady"), and per 10-second window.
 *	latency lone BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES COUNT PAUSE_MS
 *		COUNT ratings one at a time, each PAUSE_MS after the previous one's
 *		result arrived (the first PAUSE_MS after start-up).
 *	latency kafka BROKERS TOPIC RATE SECONDS
 *		Kafka alone: the same producer at the same rate to a plain topic,
 *		read back by the same read_committed consumer: the floor of the tools.
 *	latency ladder BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES RATES SECONDS
 *			WARMUP MATCH [MOVIES_TOPIC UPDATES]
 *		Live capacity (test/bench/live.sh): the rates of RATES (ratings/s,
 *		separated by commas, e.g. 10000,20000,40000) one after the other,
 *		each for WARMUP + SECONDS seconds, the first WARMUP of them reported
 *		apart; see run_ladder.  MATCH says how a result names its rating:
 *		"rated_at" (pgkafka_join's results: rated_at, and a pgkafka_join.id
 *		header on each) or "timestamp" (the peers of live.sh: the record's
 *		timestamp, which they keep from the rating).  With MOVIES_TOPIC and
 *		UPDATES, UPDATES movie changes per second go to MOVIES_TOPIC during
 *		the whole ladder (a movie of 1..MOVIES drawn uniformly, its
 *		release_year changed: the catalog updated live).  The latencies
 *		are reported per window of PGKJ_BENCH_WINDOW_S seconds (default
 *		10) after the warm-up.
 *
 * The ratings are {"id": N, "rating": R} keyed by N, N drawn uniformly from
 * 1..MOVIES, without rated_at: the worker then takes the Kafka message
 * timestamp as rated_at, and this program sets that timestamp itself.  In
 * the modes at a rate (steady, kafka, ladder) it is the time the rating is
 * due by the schedule, not the time it was handed to the producer: a
 * producer held up (a full queue, a busy machine) does not hide the wait
 * from the latencies (no coordinated omission).  In lone mode it is the
 * wall clock when the rating is produced.  A result's latency is the wall
 * clock at its receipt minus its rated_at (MATCH timestamp and Kafka mode:
 * minus the message timestamp).  The timestamp has a resolution of 1 ms
 * (it is the scheduled time rounded down), so a latency may read up to
 * 1 ms high.
 *
 * Every run checks exactness: each rating produced has exactly one result
 * (matched on movie id, rating and rated_at, a multiset comparison) and no
 * result id (header pgkafka_join.id) comes twice.  It waits for every
 * result at most TIMEOUT_MS after the last rating produced.
 *
 * Output (stdout), one fact per line, for latency.sh to pick up:
 *	mark steady_start | mark steady_end		(steady: the steady window;
 *											 latency.sh samples CPU there)
 *	produced n=... seconds=... rate=... behind_max_ms=...
 *	lone I latency_ms=... partition=...
 *	check ok: ...		or		FAIL: ...	(exit status 1)
 *	warmup|steady|kafka|lone n=... p50=... p90=... p99=... max=...
 *	window FROM-TO s n=... p50=... p99=... max=...
 * and in ladder mode, instead of the last three:
 *	mark step I start | mark step I end		(the measured part of step I)
 *	step I rate=... produced=... behind_max_ms=... lag=...	(as it ends)
 *	ladder I rate=... achieved=... ... held=yes|no	(see report_ladder)
 *	window I FROM-TO s n=... p50=... p99=... max=... lag=...
 *	capacity rate=...		(or capacity none)
 * Latencies are in ms.  Exit status: 0 all checks passed, 1 a check
 * failed, 2 bad arguments or the clients could not start.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

/* How long to wait for the results after the last rating produced */
#ifndef TIMEOUT_MS
#define TIMEOUT_MS		60000
#endif

/*
 * After the last result expected, keep reading this long: a result
 * published twice may come a little after the first copy.
 */
#define DRAIN_MS		1000

/*
 * Between creating the clients and the first rating: the producer connects
 * and obtains its producer id (idempotence), the consumer's fetchers start,
 * so that neither counts in the first latencies.
 */
#define SETTLE_MS		1000

/* Result ids the header did not carry */
#define NO_ID			INT64_MIN

/*
 * What identifies a rating, and its result: movie id, rating, rated_at.
 * And the rating's number in the order produced, which is not part of it:
 * a result gets the number of the rating it matched (check_exact), which
 * says whether it belongs to the warm-up, exactly (the timestamps, in whole
 * ms, would leave the boundary blurred).
 */
typedef struct Key
{
	int64_t		movie;
	int32_t		rating10;		/* the rating x 10: ratings have one decimal */
	int64_t		ts_ms;			/* Kafka timestamp = rated_at, ms since epoch */
	int64_t		seq;			/* 0, 1, ... in the order produced; -1: none */
} Key;

/* A record read from the output topic */
typedef struct Result
{
	Key			key;
	int64_t		id;				/* header pgkafka_join.id, or NO_ID */
	int32_t		partition;
	double		recv_ms;		/* wall clock at receipt */
} Result;

typedef enum Mode
{
	MODE_STEADY,
	MODE_LONE,
	MODE_KAFKA,
	MODE_LADDER
} Mode;

static Mode mode;
static const char *brokers;
static const char *in_topic;
static const char *out_topic;

/*
 * Whether a record names its rating by its timestamp (Kafka mode, and the
 * peers of the ladder) rather than by rated_at and a pgkafka_join.id header
 */
static bool match_timestamp;

/* Ratings produced: written and read by the main thread only */
static Key *sent;
static size_t nsent;
static size_t sent_cap;

/*
 * Records read: appended by the consumer thread, under lock; the main
 * thread waits on "arrived" for them.
 */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t arrived = PTHREAD_COND_INITIALIZER;
static Result *recv_buf;
static size_t nrecv;
static size_t recv_cap;
static size_t nmalformed;		/* records whose value could not be parsed */
static size_t nconsume_errors;
static volatile bool stop_consumer;

/* Delivery reports and client errors (main thread, from rd_kafka_poll) */
static size_t ndelivery_failed;
static bool fatal_error;

static bool failed;


static void
fail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
	failed = true;
}

static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fprintf(stderr, "latency: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static void *
grow(void *buf, size_t *cap, size_t elsize)
{
	*cap = *cap ? *cap * 2 : 65536;
	buf = realloc(buf, *cap * elsize);
	if (buf == NULL)
		die("out of memory");
	return buf;
}

/* Wall clock, in ms since the epoch, with the fraction */
static double
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* Monotonic clock in ns: for the schedule, which the wall clock may jump */
static int64_t
mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
sleep_until_ns(int64_t t)
{
	struct timespec ts;

	ts.tv_sec = t / 1000000000;
	ts.tv_nsec = t % 1000000000;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void
sleep_ms(int64_t ms)
{
	sleep_until_ns(mono_ns() + ms * 1000000);
}

/* xorshift64*: a fixed sequence of movie ids and ratings from run to run */
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t
rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static int
key_cmp(const Key *a, const Key *b)
{
	if (a->movie != b->movie)
		return a->movie < b->movie ? -1 : 1;
	if (a->rating10 != b->rating10)
		return a->rating10 < b->rating10 ? -1 : 1;
	if (a->ts_ms != b->ts_ms)
		return a->ts_ms < b->ts_ms ? -1 : 1;
	return 0;
}

static int
key_qsort_cmp(const void *a, const void *b)
{
	return key_cmp(a, b);
}

static int
result_qsort_cmp(const void *a, const void *b)
{
	return key_cmp(&((const Result *) a)->key, &((const Result *) b)->key);
}

static int
int64_qsort_cmp(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a;
	int64_t		y = *(const int64_t *) b;

	return x < y ? -1 : x > y;
}

static int
double_qsort_cmp(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return x < y ? -1 : x > y;
}


/*
 * Parsing the records read
 *
 * The values are our own ratings ({"id": N, "rating": R}) or the worker's
 * results ({"id":N,"title":...,"rating":R,"rated_at":"...Z"}, see
 * docs/formats.md), whose titles ("Movie N") hold no quotes: finding
 * "name" then the colon is enough.
 */

/* Pointer to the value of field NAME of the NUL-terminated JSON in S */
static const char *
json_field(const char *s, const char *name)
{
	char		pattern[64];
	const char *p;

	snprintf(pattern, sizeof(pattern), "\"%s\"", name);
	p = strstr(s, pattern);
	if (p == NULL)
		return NULL;
	p += strlen(pattern);
	while (*p == ' ')
		p++;
	if (*p != ':')
		return NULL;
	p++;
	while (*p == ' ')
		p++;
	return p;
}

/*
 * rated_at as PostgreSQL writes it: "YYYY-MM-DDTHH:MM:SS[.F...]Z", the
 * fraction having 1 to 6 digits (trailing zeros dropped) or none.  Sets
 * *ms to ms since the epoch (with the fraction).
 */
static bool
parse_rated_at(const char *p, double *ms)
{
	struct tm	tm;
	int			n = 0;
	double		frac = 0,
				scale = 100;
	time_t		t;

	if (*p++ != '"')
		return false;
	memset(&tm, 0, sizeof(tm));
	if (sscanf(p, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
			   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
		n != 19)
		return false;
	p += n;
	if (*p == '.')
	{
		p++;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9')
		{
			frac += (*p - '0') * scale;
			scale /= 10;
			p++;
		}
	}
	if (p[0] != 'Z' || p[1] != '"')
		return false;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	t = timegm(&tm);
	*ms = (double) t * 1000 + frac;
	return true;
}

/* The result id of header pgkafka_join.id, or NO_ID */
static int64_t
header_id(const rd_kafka_message_t *m)
{
	rd_kafka_headers_t *hdrs;
	const void *val;
	size_t		size;
	char		buf[32];
	char	   *end;
	int64_t		id;

	if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		rd_kafka_header_get_last(hdrs, "pgkafka_join.id", &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		val == NULL || size == 0 || size >= sizeof(buf))
		return NO_ID;
	memcpy(buf, val, size);
	buf[size] = '\0';
	errno = 0;
	id = strtoll(buf, &end, 10);
	if (*end != '\0' || errno != 0)
		return NO_ID;
	return id;
}

/*
 * The key of a record and, in the worker's modes, its result id.  In Kafka
 * mode the record is a rating: its time is the message timestamp.
 */
static bool
parse_record(const rd_kafka_message_t *m, Result *r)
{
	char		buf[2048];
	const char *p;
	char	   *end;
	double		rating;
	double		ts;

	if (m->payload == NULL || m->len >= sizeof(buf))
		return false;
	memcpy(buf, m->payload, m->len);
	buf[m->len] = '\0';

	if ((p = json_field(buf, "id")) == NULL)
		return false;
	errno = 0;
	r->key.movie = strtoll(p, &end, 10);
	if (end == p || errno != 0)
		return false;
	if ((p = json_field(buf, "rating")) == NULL)
		return false;
	rating = strtod(p, &end);
	if (end == p || !isfinite(rating))
		return false;
	r->key.rating10 = (int32_t) lround(rating * 10);

	r->id = NO_ID;
	r->key.seq = -1;
	if (match_timestamp)
	{
		rd_kafka_timestamp_type_t tstype;

		r->key.ts_ms = rd_kafka_message_timestamp(m, &tstype);
		return tstype == RD_KAFKA_TIMESTAMP_CREATE_TIME;
	}

	if ((p = json_field(buf, "rated_at")) == NULL || !parse_rated_at(p, &ts))
		return false;
	/* whole ms: those set as the timestamp (a fraction will not match) */
	r->key.ts_ms = (int64_t) floor(ts);
	if (ts != (double) r->key.ts_ms)
		r->key.ts_ms = INT64_MIN;
	r->id = header_id(m);
	return true;
}


/*
 * The consumer thread
 *
 * It only reads, timestamps and stores: the matching waits for the end, so
 * that nothing slows down the receipt.
 */
static void *
consumer_main(void *arg)
{
	rd_kafka_t *rk = arg;

	while (!stop_consumer)
	{
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 50);
		Result		r;
		double		now;
		bool		parsed;

		if (m == NULL)
			continue;
		now = wall_ms();
		if (m->err)
		{
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
			{
				fprintf(stderr, "latency: consumer error: %s\n",
						rd_kafka_message_errstr(m));
				pthread_mutex_lock(&lock);
				nconsume_errors++;
				pthread_mutex_unlock(&lock);
			}
			rd_kafka_message_destroy(m);
			continue;
		}

		r.recv_ms = now;
		r.partition = m->partition;
		parsed = parse_record(m, &r);
		pthread_mutex_lock(&lock);
		if (parsed)
		{
			if (nrecv == recv_cap)
				recv_buf = grow(recv_buf, &recv_cap, sizeof(Result));
			recv_buf[nrecv++] = r;
		}
		else if (nmalformed++ < 5)
			fprintf(stderr, "latency: unexpected record on partition %d offset %" PRId64 ": %.*s\n",
					(int) m->partition, (int64_t) m->offset,
					m->payload ? (int) (m->len < 300 ? m->len : 300) : 4,
					m->payload ? (const char *) m->payload : "NULL");
		pthread_cond_broadcast(&arrived);
		pthread_mutex_unlock(&lock);
		rd_kafka_message_destroy(m);
	}
	return NULL;
}


/*
 * Clients
 */

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
	{
		if (ndelivery_failed++ < 5)
			fprintf(stderr, "latency: rating not delivered: %s\n", rd_kafka_err2str(m->err));
	}
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	fprintf(stderr, "latency: %s: %s\n", rd_kafka_name(rk), reason);
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		fatal_error = true;
}

/*
 * The producer of the ratings.  murmur2_random as the movies were produced
 * (kcat in bench/common.sh's produce_file): a rating lands on its movie's
 * partition number, as the worker needs (co-partitioned topics).  No
 * lingering by default: each rating goes out at once, as from many small
 * clients, in as many produce requests as the broker will take;
 * PGKJ_BENCH_PRODUCER_LINGER_MS sets linger.ms, for a source that batches
 * (the time a rating lingers counts in its latency: its timestamp is taken
 * when it is produced).  Nagle off on both clients: with small requests,
 * it would hold one back while an earlier one is not yet acknowledged.
 */
static rd_kafka_t *
make_producer(void)
{
	const char *linger = getenv("PGKJ_BENCH_PRODUCER_LINGER_MS");
	const char *const props[] = {
		"client.id", "pgkj-latency-producer",
		"partitioner", "murmur2_random",
		"linger.ms", linger != NULL && linger[0] != '\0' ? linger : "0",
		"enable.idempotence", "true",
		"acks", "all",
		"socket.nagle.disable", "true",
		NULL
	};
	rd_kafka_conf_t *conf = make_conf(props);
	char		errstr[512];
	rd_kafka_t *rk;

	rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		die("could not create the producer: %s", errstr);
	return rk;
}

/*
 * The consumer of TOPIC: read_committed, every partition from its end as
 * it is now, before anything is produced (the watermarks, queried, not
 * OFFSET_END, which would be resolved later, when the fetch starts, and
 * could skip the first results).  assign(), not subscribe(): no group,
 * nothing committed; librdkafka wants a group.id for assign() all the same.
 * The broker answers a fetch as soon as it has one byte, or after 5 ms.
 */
static rd_kafka_t *
make_consumer(const char *topic)
{
	char		group[64];
	const char *const props[] = {
		"client.id", "pgkj-latency-consumer",
		"group.id", group,
		"enable.auto.commit", "false",
		"enable.auto.offset.store", "false",
		"isolation.level", "read_committed",
		"fetch.wait.max.ms", "5",
		"fetch.min.bytes", "1",
		"fetch.error.backoff.ms", "10",
		"socket.nagle.disable", "true",
		NULL
	};
	rd_kafka_conf_t *conf;
	char		errstr[512];
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;
	const rd_kafka_metadata_t *md;
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	int			i;

	snprintf(group, sizeof(group), "pgkj-latency-%d", (int) getpid());
	conf = make_conf(props);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		die("could not create the consumer: %s", errstr);

	rkt = rd_kafka_topic_new(rk, topic, NULL);
	err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
	if (err)
		die("no metadata for topic %s: %s", topic, rd_kafka_err2str(err));
	if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0)
		die("topic %s not found: %s", topic,
			md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "no topic in the metadata");

	parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
	for (i = 0; i < md->topics[0].partition_cnt; i++)
	{
		int32_t		p = md->topics[0].partitions[i].id;
		int64_t		lo,
					hi;

		err = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
		if (err)
			die("no watermarks for %s partition %d: %s", topic, (int) p, rd_kafka_err2str(err));
		rd_kafka_topic_partition_list_add(parts, topic, p)->offset = hi;
	}
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);

	err = rd_kafka_assign(rk, parts);
	if (err)
		die("could not assign the partitions of %s: %s", topic, rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(parts);
	return rk;
}

/*
 * Produce one rating of a random movie, its timestamp TS_MS (ms since the
 * epoch: the time it is due by the schedule), or now if TS_MS is negative
 */
static void
produce_rating(rd_kafka_t *rk, rd_kafka_topic_t *rkt, int64_t movies,
			   int64_t ts_ms)
{
	char		key[32];
	char		value[96];
	int			klen,
				vlen;
	Key			k;
	rd_kafka_resp_err_t err;

	k.seq = nsent;
	k.movie = 1 + (int64_t) (rng_next() % (uint64_t) movies);
	k.rating10 = 10 + (int32_t) (rng_next() % 91);	/* 1.0 .. 10.0 */
	klen = snprintf(key, sizeof(key), "%" PRId64, k.movie);
	vlen = snprintf(value, sizeof(value), "{\"id\": %" PRId64 ", \"rating\": %d.%d}",
					k.movie, k.rating10 / 10, k.rating10 % 10);

	for (;;)
	{
		k.ts_ms = ts_ms >= 0 ? ts_ms : (int64_t) floor(wall_ms());
		err = rd_kafka_producev(rk,
								RD_KAFKA_V_RKT(rkt),
								RD_KAFKA_V_KEY(key, klen),
								RD_KAFKA_V_VALUE(value, vlen),
								RD_KAFKA_V_TIMESTAMP(k.ts_ms),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		/* the local queue is full: the broker is far behind; let it drain */
		rd_kafka_poll(rk, 10);
	}
	if (err)
		die("could not produce a rating: %s", rd_kafka_err2str(err));

	if (nsent == sent_cap)
		sent = grow(sent, &sent_cap, sizeof(Key));
	sent[nsent++] = k;
}

/*
 * With the lock held: wait at most 10 ms for the consumer thread to add a
 * record.  (Short, so that the callers serve the producer's delivery
 * reports meanwhile.)
 */
static void
wait_arrival_locked(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 10000000;
	if (ts.tv_nsec >= 1000000000)
	{
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&arrived, &lock, &ts);
}

/*
 * Wait until ready(arg), called with the lock held, says so, or TIMEOUT_MS;
 * the producer's delivery reports are served meanwhile.  Returns whether it
 * did.
 */
static bool
wait_until(rd_kafka_t *producer, bool (*ready) (void *), void *arg, int64_t timeout_ms)
{
	int64_t		deadline = mono_ns() + timeout_ms * 1000000;
	bool		done;

	for (;;)
	{
		pthread_mutex_lock(&lock);
		done = ready(arg);
		if (!done)
			wait_arrival_locked();
		pthread_mutex_unlock(&lock);
		rd_kafka_poll(producer, 0);
		if (done)
			return true;
		if (mono_ns() >= deadline || fatal_error)
			return false;
	}
}

static bool
arrived_n(void *arg)
{
	return nrecv >= *(size_t *) arg;
}

/*
 * Wait until at least N records have arrived, or TIMEOUT_MS.  Returns
 * whether they arrived.
 */
static bool
wait_results(rd_kafka_t *producer, size_t n, int64_t timeout_ms)
{
	return wait_until(producer, arrived_n, &n, timeout_ms);
}

/* What wait_result_of() looks for, and where it stands */
typedef struct
{
	const Key  *key;
	size_t		from;
	Result	   *out;
} Lookup;

static bool
arrived_key(void *arg)
{
	Lookup	   *l = arg;

	for (; l->from < nrecv; l->from++)
	{
		if (key_cmp(&recv_buf[l->from].key, l->key) == 0)
		{
			*l->out = recv_buf[l->from];
			return true;
		}
	}
	return false;
}

/*
 * Wait until the result of rating K arrives, looking at the records from
 * number FROM on (those read since K was produced), at most TIMEOUT_MS.
 * Copies it to *OUT and returns true if it came.  (Waiting for one more
 * record would not do: a stray or repeated record would pass for it.)
 */
static bool
wait_result_of(rd_kafka_t *producer, const Key *k, size_t from,
			   int64_t timeout_ms, Result *out)
{
	Lookup		l = {k, from, out};

	return wait_until(producer, arrived_key, &l, timeout_ms);
}

/*
 * Reporting
 */

/* Nearest-rank percentile of the sorted samples V[0..n-1] */
static double
percentile(const double *v, size_t n, double p)
{
	size_t		rank = (size_t) ceil(p / 100 * n);

	if (n == 0)
		return NAN;
	if (rank < 1)
		rank = 1;
	return v[rank - 1];
}

/* Sort V and print "LABEL n=... p50=... p90=... p99=... max=..." */
static void
print_stats(const char *label, double *v, size_t n)
{
	qsort(v, n, sizeof(double), double_qsort_cmp);
	if (n == 0)
	{
		printf("%s n=0\n", label);
		return;
	}
	printf("%s n=%zu p50=%.1f p90=%.1f p99=%.1f max=%.1f\n", label, n,
		   percentile(v, n, 50), percentile(v, n, 90), percentile(v, n, 99), v[n - 1]);
}

/*
 * Exactness: the multiset of the keys of the ratings produced equals that
 * of the records read (each rating has one result, nothing else came), and
 * no result id comes twice.  Prints the first differences.  Each record
 * read gets the number of the rating it matched (key.seq).  Called once
 * the consumer thread has stopped: it sorts the records read.
 */
static void
check_exact(const char *what)
{
	Key		   *s = malloc((nsent + 1) * sizeof(Key));
	Result	   *r = recv_buf;
	int64_t    *ids = malloc((nrecv + 1) * sizeof(int64_t));
	size_t		i = 0,
				j = 0,
				missing = 0,
				unexpected = 0,
				nids = 0,
				dup_ids = 0,
				no_id = 0;

	if (s == NULL || ids == NULL)
		die("out of memory");
	memcpy(s, sent, nsent * sizeof(Key));
	qsort(s, nsent, sizeof(Key), key_qsort_cmp);
	qsort(r, nrecv, sizeof(Result), result_qsort_cmp);
	while (i < nsent || j < nrecv)
	{
		int			c;

		if (i == nsent)
			c = 1;
		else if (j == nrecv)
			c = -1;
		else
			c = key_cmp(&s[i], &r[j].key);
		if (c == 0)
		{
			r[j].key.seq = s[i].seq;
			i++;
			j++;
		}
		else if (c < 0)
		{
			if (missing++ < 5)
				printf("# missing: the result of rating {\"id\": %" PRId64 ", \"rating\": %.1f} at %" PRId64 " ms\n",
					   s[i].movie, s[i].rating10 / 10.0, s[i].ts_ms);
			i++;
		}
		else
		{
			if (unexpected++ < 5)
				printf("# unexpected (duplicate or unknown): result {\"id\": %" PRId64 ", \"rating\": %.1f} at %" PRId64 " ms, pgkafka_join.id %" PRId64 ", partition %d\n",
					   r[j].key.movie, r[j].key.rating10 / 10.0, r[j].key.ts_ms,
					   r[j].id, (int) r[j].partition);
			j++;
		}
	}

	if (!match_timestamp)
	{
		for (i = 0; i < nrecv; i++)
		{
			if (recv_buf[i].id == NO_ID)
				no_id++;
			else
				ids[nids++] = recv_buf[i].id;
		}
		qsort(ids, nids, sizeof(int64_t), int64_qsort_cmp);
		for (i = 1; i < nids; i++)
		{
			if (ids[i] == ids[i - 1] && dup_ids++ < 5)
				printf("# pgkafka_join.id %" PRId64 " read more than once\n", ids[i]);
		}
	}

	if (missing)
		fail("%s: %zu of %zu ratings have no result after %d s", what, missing, nsent, TIMEOUT_MS / 1000);
	if (unexpected)
		fail("%s: %zu records read match no rating produced, or repeat one (duplicates)", what, unexpected);
	if (dup_ids)
		fail("%s: %zu result ids (header pgkafka_join.id) read more than once", what, dup_ids);
	if (no_id)
		fail("%s: %zu results without a pgkafka_join.id header", what, no_id);
	if (nmalformed)
		fail("%s: %zu records could not be read (see stderr)", what, nmalformed);
	if (ndelivery_failed)
		fail("%s: %zu ratings could not be produced", what, ndelivery_failed);
	if (nconsume_errors)
		fail("%s: the consumer reported %zu errors (see stderr)", what, nconsume_errors);
	if (fatal_error)
		fail("%s: a client reported a fatal error (see stderr)", what);
	if (!failed)
		printf("check ok: %zu ratings produced, %zu %s read, one each%s\n",
			   nsent, nrecv, mode == MODE_KAFKA ? "records" : "results",
			   match_timestamp ? "" : ", every pgkafka_join.id once");
	free(s);
	free(ids);
}

/*
 * Latencies of the records read that matched a rating (check_exact): those
 * of the ratings produced in the first WARMUP s go to "warmup", the others
 * to LABEL; then per 10-s window of the schedule (steady only).
 */
static void
report_latencies(const char *label, int64_t rate, int seconds, int warmup)
{
	double	   *warm = malloc((nrecv + 1) * sizeof(double));
	double	   *rest = malloc((nrecv + 1) * sizeof(double));
	size_t		nwarm = 0,
				nrest = 0,
				i;
	int			w;

	if (warm == NULL || rest == NULL)
		die("out of memory");
	for (i = 0; i < nrecv; i++)
	{
		const Result *r = &recv_buf[i];

		if (r->key.seq < 0)
			continue;
		if (r->key.seq < (int64_t) warmup * rate)
			warm[nwarm++] = r->recv_ms - r->key.ts_ms;
		else
			rest[nrest++] = r->recv_ms - r->key.ts_ms;
	}
	if (mode == MODE_STEADY)
		print_stats("warmup", warm, nwarm);
	print_stats(label, rest, nrest);

	for (w = 0; mode == MODE_STEADY && w * 10 < seconds; w++)
	{
		size_t		n = 0;

		for (i = 0; i < nrecv; i++)
		{
			const Result *r = &recv_buf[i];

			if (r->key.seq >= (int64_t) w * 10 * rate &&
				r->key.seq < (int64_t) (w + 1) * 10 * rate)
				warm[n++] = r->recv_ms - r->key.ts_ms;
		}
		qsort(warm, n, sizeof(double), double_qsort_cmp);
		if (n)
			printf("window %d-%d s n=%zu p50=%.1f p99=%.1f max=%.1f\n",
				   w * 10, (w + 1) * 10 < seconds ? (w + 1) * 10 : seconds, n,
				   percentile(warm, n, 50), percentile(warm, n, 99), warm[n - 1]);
	}
	free(warm);
	free(rest);
}


/*
 * The phases
 */

/*
 * RATE ratings/s for SECONDS s: rating k is due at start + k / RATE; every
 * 1 ms, the ratings due by then are sent.  Never more than the schedule: if
 * the program was held up, what fell due meanwhile goes out at once, but
 * nothing ahead of time; behind_max_ms says how late the schedule ran.
 * Each rating is stamped with the time it was due (see the header).
 * Prints "mark steady_start" when WARMUP s have passed, "mark steady_end"
 * after the last rating.
 */
static void
run_rate(rd_kafka_t *producer, rd_kafka_topic_t *rkt, int64_t movies,
		 int64_t rate, int seconds, int warmup)
{
	int64_t		total = rate * seconds;
	int64_t		start = mono_ns();
	double		wall_start = wall_ms();
	int64_t		tick = 0;
	double		behind_max = 0;
	bool		marked = (mode != MODE_STEADY);
	int64_t		end;

	while ((int64_t) nsent < total)
	{
		int64_t		elapsed = mono_ns() - start;
		/* elapsed * rate is about 10^9 x the ratings sent: at most ~10^17 */
		int64_t		due = elapsed * rate / 1000000000 + 1;
		double		behind;

		if (due > total)
			due = total;
		/* how late the first rating due now is */
		behind = (elapsed - (double) nsent * 1e9 / rate) / 1e6;
		if ((int64_t) nsent < due && behind > behind_max)
			behind_max = behind;
		while ((int64_t) nsent < due)
			produce_rating(producer, rkt, movies,
						   (int64_t) floor(wall_start + (double) nsent * 1000 / rate));
		rd_kafka_poll(producer, 0);
		if (fatal_error)
			break;

		if (!marked && elapsed >= (int64_t) warmup * 1000000000)
		{
			printf("mark steady_start\n");
			fflush(stdout);
			marked = true;
		}
		tick++;
		sleep_until_ns(start + tick * 1000000);
	}
	end = mono_ns();
	if (mode == MODE_STEADY)
	{
		printf("mark steady_end\n");
		fflush(stdout);
	}
	printf("produced n=%zu seconds=%.2f rate=%.0f behind_max_ms=%.1f\n",
		   nsent, (end - start) / 1e9, nsent / ((end - start) / 1e9), behind_max);
	fflush(stdout);
}

/*
 * COUNT lone ratings: each PAUSE_MS after the previous result arrived, so
 * that the worker has nothing else to do; prints each latency.
 */
static void
run_lone(rd_kafka_t *producer, rd_kafka_topic_t *rkt, int64_t movies,
		 int count, int pause_ms)
{
	double	   *lat = malloc((count + 1) * sizeof(double));
	size_t		nlat = 0;
	int			i;

	if (lat == NULL)
		die("out of memory");
	for (i = 1; i <= count; i++)
	{
		size_t		from;
		Result		r;

		sleep_ms(pause_ms);
		pthread_mutex_lock(&lock);
		from = nrecv;
		pthread_mutex_unlock(&lock);
		produce_rating(producer, rkt, movies, -1);
		if (!wait_result_of(producer, &sent[nsent - 1], from, TIMEOUT_MS, &r))
		{
			printf("lone %d latency_ms=none (no result after %d s)\n", i, TIMEOUT_MS / 1000);
			break;
		}
		lat[nlat] = r.recv_ms - r.key.ts_ms;
		printf("lone %d latency_ms=%.1f partition=%d\n", i, lat[nlat], (int) r.partition);
		nlat++;
	}
	print_stats("lone", lat, nlat);
	free(lat);
}

/*
 * The ladder (test/bench/live.sh)
 *
 * The rates follow each other on one schedule: step i starts when step
 * i - 1 is due to end, whether or not its ratings have all been sent or
 * their results read; its ratings are stamped with the times they are due
 * (see the header).  Every second of a step, the lag is sampled: the
 * ratings due by then minus the records read.  A step whose lag at its end
 * is above LADDER_STOP_LAG_S seconds of its input ends the ladder: a
 * higher rate would only pile up more.
 */
#define MAX_STEPS			32
#define LADDER_STOP_LAG_S	2

/* A step is held with a p99 under this (ms) and a lag that does not grow */
#define HELD_P99_MS			250

/*
 * The lag grows if its least-squares slope over the measured part is above
 * this share of the rate per second (then fewer than 99% of the ratings
 * that come in each second go out)
 */
#define GROWING_SHARE		0.01

typedef struct Step
{
	int64_t		rate;
	int64_t		first;			/* number (seq) of its first rating */
	int64_t		count;			/* ratings produced */
	double		start_ms;		/* wall clock when its schedule starts */
	double		behind_max;		/* how late the schedule ran, ms */
	int64_t    *lag;			/* lag[j]: the lag j s into the step */
	int			nlag;
} Step;

static Step steps[MAX_STEPS];
static int	nsteps;				/* steps listed */
static int	nrun;				/* steps run */
static int	ladder_seconds;		/* measured seconds of each step */
static int	ladder_warmup;		/* warm-up seconds of each step */
static int64_t updates_sent;	/* movie changes produced */

/* Length of the windows reported, s: PGKJ_BENCH_WINDOW_S, default 10 */
static int	window_s = 10;

/* Records read so far */
static size_t
records_read(void)
{
	size_t		n;

	pthread_mutex_lock(&lock);
	n = nrecv;
	pthread_mutex_unlock(&lock);
	return n;
}

/*
 * One movie change, to MRKT: movie N keeps its title, its release_year
 * moves on by one (mod 120) with each change of the run.  Keyed by N, as
 * the movies are.
 */
static void
produce_movie_update(rd_kafka_t *rk, rd_kafka_topic_t *mrkt, int64_t movies)
{
	char		key[32];
	char		value[128];
	int			klen,
				vlen;
	int64_t		m = 1 + (int64_t) (rng_next() % (uint64_t) movies);
	rd_kafka_resp_err_t err;

	klen = snprintf(key, sizeof(key), "%" PRId64, m);
	vlen = snprintf(value, sizeof(value),
					"{\"id\": %" PRId64 ", \"title\": \"Movie %" PRId64 "\", \"release_year\": %d}",
					m, m, 1900 + (int) ((m + 1 + updates_sent) % 120));
	for (;;)
	{
		err = rd_kafka_producev(rk,
								RD_KAFKA_V_RKT(mrkt),
								RD_KAFKA_V_KEY(key, klen),
								RD_KAFKA_V_VALUE(value, vlen),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(rk, 10);
	}
	if (err)
		die("could not produce a movie change: %s", rd_kafka_err2str(err));
	updates_sent++;
}

/*
 * Every step of the ladder, as long as none ends above LADDER_STOP_LAG_S
 * seconds of lag.  MRKT (or NULL) receives UPDATES movie changes per
 * second from the first step's start to the last one's end.  Prints "mark
 * step I start" after each step's warm-up, "mark step I end" and a "step"
 * line at its end.
 */
static void
run_ladder(rd_kafka_t *producer, rd_kafka_topic_t *rkt, rd_kafka_topic_t *mrkt,
		   int64_t movies, int64_t updates)
{
	int			secs = ladder_warmup + ladder_seconds;
	int64_t		t0 = mono_ns();
	double		wall0 = wall_ms();
	int			i;

	for (i = 0; i < nsteps && !fatal_error; i++)
	{
		Step	   *st = &steps[i];
		int64_t		rate = st->rate;
		int64_t		total = rate * secs;
		int64_t		start = t0 + (int64_t) i * secs * 1000000000;
		int64_t		tick = 0;
		bool		marked = false;

		st->first = nsent;
		st->start_ms = wall0 + (start - t0) / 1e6;
		st->lag = calloc(secs + 1, sizeof(int64_t));
		if (st->lag == NULL)
			die("out of memory");
		st->lag[0] = (int64_t) nsent - (int64_t) records_read();
		st->nlag = 1;
		nrun = i + 1;

		for (;;)
		{
			int64_t		now = mono_ns();
			int64_t		elapsed = now - start;
			int64_t		due = elapsed * rate / 1000000000 + 1;
			int64_t		sent = (int64_t) nsent - st->first;
			double		behind;

			if (due > total)
				due = total;
			behind = (elapsed - (double) sent * 1e9 / rate) / 1e6;
			if (sent < due && behind > st->behind_max)
				st->behind_max = behind;
			while ((int64_t) nsent - st->first < due)
				produce_rating(producer, rkt, movies,
							   (int64_t) floor(st->start_ms +
											   (double) ((int64_t) nsent - st->first) * 1000 / rate));
			if (mrkt != NULL && updates > 0)
			{
				int64_t		udue = (now - t0) * updates / 1000000000 + 1;

				if (udue > updates * secs * nsteps)
					udue = updates * secs * nsteps;
				while (updates_sent < udue)
					produce_movie_update(producer, mrkt, movies);
			}
			rd_kafka_poll(producer, 0);
			if (fatal_error)
				break;

			if (!marked && elapsed >= (int64_t) ladder_warmup * 1000000000)
			{
				printf("mark step %d start\n", i + 1);
				marked = true;
			}
			/* the lag each second: due by the schedule, minus read */
			while (st->nlag <= secs && elapsed >= (int64_t) st->nlag * 1000000000)
			{
				int64_t		sched = (int64_t) st->nlag * rate;

				st->lag[st->nlag] = st->first + (sched < total ? sched : total) -
					(int64_t) records_read();
				st->nlag++;
			}
			if (st->nlag > secs)
				break;
			tick++;
			sleep_until_ns(start + tick * 1000000);
		}
		st->count = (int64_t) nsent - st->first;
		printf("mark step %d end\n", i + 1);
		printf("step %d rate=%" PRId64 " produced=%" PRId64 " behind_max_ms=%.1f lag=%" PRId64 "\n",
			   i + 1, rate, st->count, st->behind_max, st->lag[st->nlag - 1]);
		if (st->lag[st->nlag - 1] > rate * LADDER_STOP_LAG_S)
		{
			printf("step %d: lag above %d s of input at its end: the ladder stops here\n",
				   i + 1, LADDER_STOP_LAG_S);
			break;
		}
	}
	if (updates > 0)
		printf("movie changes n=%" PRId64 "\n", updates_sent);
	fflush(stdout);
}

/*
 * Wait for every result while they keep coming: at most TIMEOUT_MS
 * without a new record (a backlog left by the last step drains at the
 * capacity, which may take longer than TIMEOUT_MS in all).
 */
static bool
wait_drained(rd_kafka_t *producer)
{
	size_t		last = records_read();

	for (;;)
	{
		size_t		n;

		if (wait_results(producer, nsent, TIMEOUT_MS))
			return true;
		n = records_read();
		if (n == last)
			return false;
		last = n;
	}
}

/* Sorted latencies of the matched records of seq FROM .. TO - 1 */
static size_t
latencies_of(int64_t from, int64_t to, double *out)
{
	size_t		n = 0,
				i;

	for (i = 0; i < nrecv; i++)
	{
		const Result *r = &recv_buf[i];

		if (r->key.seq >= from && r->key.seq < to)
			out[n++] = r->recv_ms - r->key.ts_ms;
	}
	qsort(out, n, sizeof(double), double_qsort_cmp);
	return n;
}

/*
 * Per step, after check_exact (which numbered the records read): the
 * rate produced and the rate of the records read while its measured part
 * was due ("achieved"); the lag at the start and the end of the measured
 * part, in ratings and in seconds of input, its slope (least squares over
 * the samples of the measured part, ratings/s) and whether it grows; the
 * latencies of the warm-up and of the measured part; per window (10 s),
 * p50/p99/max and the lag at its end; when its last result was read,
 * from the step's start ("drained_s"), and its ratings over that time
 * ("drain_rate": with a step shorter than the system takes, a backlog's
 * drain rate).  A step is held if its lag does not grow and its p99 is
 * under HELD_P99_MS; the capacity is the highest rate held.
 */
static void
report_ladder(void)
{
	double	   *v = malloc((nrecv + 1) * sizeof(double));
	int			secs = ladder_warmup + ladder_seconds;
	int64_t		capacity = -1;
	int			i;

	if (v == NULL)
		die("out of memory");
	for (i = 0; i < nrun; i++)
	{
		Step	   *st = &steps[i];
		int64_t		wfirst = st->first + st->rate * ladder_warmup;
		int64_t		end = st->first + st->count;
		double		m_from = st->start_ms + ladder_warmup * 1000.0;
		double		m_to = st->start_ms + secs * 1000.0;
		double		sx = 0,
					sy = 0,
					sxx = 0,
					sxy = 0,
					slope = 0,
					worst = 0;
		double		last_ms = 0;
		double		wp50 = NAN,
					wp99 = NAN,
					wmax = NAN,
					p50 = NAN,
					p99 = NAN,
					pmax = NAN;
		size_t		n,
					achieved = 0,
					k;
		int64_t		produced = end > wfirst ? end - wfirst : 0;
		int64_t		lag_start = st->lag[st->nlag > ladder_warmup ? ladder_warmup : st->nlag - 1];
		int64_t		lag_end = st->lag[st->nlag - 1];
		int			j,
					w,
					np = 0;
		bool		growing,
					held;

		for (k = 0; k < nrecv; k++)
		{
			if (recv_buf[k].key.seq >= 0 &&
				recv_buf[k].recv_ms >= m_from && recv_buf[k].recv_ms < m_to)
				achieved++;
			if (recv_buf[k].key.seq >= st->first && recv_buf[k].key.seq < end &&
				recv_buf[k].recv_ms > last_ms)
				last_ms = recv_buf[k].recv_ms;
		}
		for (j = ladder_warmup; j < st->nlag; j++, np++)
		{
			sx += j;
			sy += st->lag[j];
			sxx += (double) j * j;
			sxy += (double) j * st->lag[j];
		}
		if (np > 1)
			slope = (np * sxy - sx * sy) / (np * sxx - sx * sx);
		growing = slope > GROWING_SHARE * st->rate;

		n = latencies_of(st->first, wfirst < end ? wfirst : end, v);
		if (n)
		{
			wp50 = percentile(v, n, 50);
			wp99 = percentile(v, n, 99);
			wmax = v[n - 1];
		}
		n = latencies_of(wfirst, end, v);
		if (n)
		{
			p50 = percentile(v, n, 50);
			p99 = percentile(v, n, 99);
			pmax = v[n - 1];
		}
		/* the warm-up as one window, then the measured part per window_s */
		for (w = ladder_warmup > 0 ? -1 : 0; ladder_warmup + w * window_s < secs; w++)
		{
			int			from = w < 0 ? 0 : ladder_warmup + w * window_s;
			int			to = w < 0 ? ladder_warmup :
				(ladder_warmup + (w + 1) * window_s < secs ? ladder_warmup + (w + 1) * window_s : secs);
			int64_t		last = st->first + st->rate * to;
			size_t		nw = latencies_of(st->first + st->rate * from, last < end ? last : end, v);

			if (nw == 0)
				continue;
			if (w >= 0 && percentile(v, nw, 99) > worst)
				worst = percentile(v, nw, 99);
			printf("window %d %d-%d s%s n=%zu p50=%.1f p99=%.1f max=%.1f lag=%" PRId64 "\n",
				   i + 1, from, to, w < 0 ? " (warm-up)" : "", nw,
				   percentile(v, nw, 50), percentile(v, nw, 99), v[nw - 1],
				   to < st->nlag ? st->lag[to] : lag_end);
		}
		held = n > 0 && !growing && p99 < HELD_P99_MS && st->nlag > secs;
		if (held && st->rate > capacity)
			capacity = st->rate;
		printf("ladder %d rate=%" PRId64 " produced_rate=%.0f achieved=%.0f behind_max_ms=%.1f"
			   " lag_start=%" PRId64 " lag_end=%" PRId64 " lag_end_s=%.2f lag_slope=%.0f growing=%s"
			   " warmup_p50=%.1f warmup_p99=%.1f warmup_max=%.1f p50=%.1f p99=%.1f max=%.1f"
			   " worst_window_p99=%.1f held=%s drained_s=%.2f drain_rate=%.0f\n",
			   i + 1, st->rate, (double) produced / ladder_seconds,
			   (double) achieved / ladder_seconds, st->behind_max,
			   lag_start, lag_end, (double) lag_end / st->rate, slope,
			   growing ? "yes" : "no", wp50, wp99, wmax, p50, p99, pmax, worst,
			   held ? "yes" : "no", (last_ms - st->start_ms) / 1000,
			   st->count / ((last_ms - st->start_ms) / 1000));
	}
	for (; i < nsteps; i++)
		printf("ladder %d rate=%" PRId64 " not_run\n", i + 1, steps[i].rate);
	if (capacity > 0)
		printf("capacity rate=%" PRId64 "\n", capacity);
	else
		printf("capacity none\n");
	free(v);
}

static int64_t
arg_int(const char *s, const char *what, int64_t min)
{
	char	   *end;
	long long	v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (end == s || *end != '\0' || errno != 0 || v < min)
		die("%s must be an integer >= %" PRId64 ", not \"%s\"", what, min, s);
	return v;
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: latency steady BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES RATE SECONDS WARMUP\n"
			"       latency lone BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES COUNT PAUSE_MS\n"
			"       latency kafka BROKERS TOPIC RATE SECONDS\n"
			"       latency ladder BROKERS RATINGS_TOPIC OUTPUT_TOPIC MOVIES RATES SECONDS WARMUP\n"
			"              rated_at|timestamp [MOVIES_TOPIC UPDATES]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	int64_t		movies = 0,
				rate = 0,
				updates = 0,
				total = 0;
	int			seconds = 0,
				warmup = 0,
				count = 0,
				pause_ms = 0;
	rd_kafka_t *producer;
	rd_kafka_t *consumer;
	rd_kafka_topic_t *rkt;
	rd_kafka_topic_t *mrkt = NULL;
	const char *movies_topic = NULL;
	pthread_t	thread;
	bool		all_arrived;
	const char *what;
	int			i;

	/* latency.sh reads the lines as they come */
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (argc < 2)
		usage();
	if (strcmp(argv[1], "steady") == 0 && argc == 9)
	{
		mode = MODE_STEADY;
		in_topic = argv[3];
		out_topic = argv[4];
		movies = arg_int(argv[5], "MOVIES", 1);
		rate = arg_int(argv[6], "RATE", 1);
		seconds = arg_int(argv[7], "SECONDS", 1);
		warmup = arg_int(argv[8], "WARMUP", 0);
		if (warmup >= seconds)
			die("WARMUP must be less than SECONDS");
	}
	else if (strcmp(argv[1], "lone") == 0 && argc == 8)
	{
		mode = MODE_LONE;
		in_topic = argv[3];
		out_topic = argv[4];
		movies = arg_int(argv[5], "MOVIES", 1);
		count = arg_int(argv[6], "COUNT", 1);
		pause_ms = arg_int(argv[7], "PAUSE_MS", 0);
	}
	else if (strcmp(argv[1], "kafka") == 0 && argc == 6)
	{
		mode = MODE_KAFKA;
		match_timestamp = true;
		in_topic = out_topic = argv[3];
		movies = 100000;
		rate = arg_int(argv[4], "RATE", 1);
		seconds = arg_int(argv[5], "SECONDS", 1);
	}
	else if (strcmp(argv[1], "ladder") == 0 && (argc == 10 || argc == 12))
	{
		char	   *list = strdup(argv[6]);
		char	   *tok;
		char	   *save = NULL;

		mode = MODE_LADDER;
		in_topic = argv[3];
		out_topic = argv[4];
		movies = arg_int(argv[5], "MOVIES", 1);
		for (tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save))
		{
			if (nsteps == MAX_STEPS)
				die("at most %d rates", MAX_STEPS);
			steps[nsteps++].rate = arg_int(tok, "a rate of RATES", 1);
		}
		if (nsteps == 0)
			die("RATES lists no rate");
		ladder_seconds = arg_int(argv[7], "SECONDS", 1);
		ladder_warmup = arg_int(argv[8], "WARMUP", 0);
		if (strcmp(argv[9], "timestamp") == 0)
			match_timestamp = true;
		else if (strcmp(argv[9], "rated_at") != 0)
			die("MATCH must be rated_at or timestamp, not \"%s\"", argv[9]);
		if (argc == 12)
		{
			movies_topic = argv[10];
			updates = arg_int(argv[11], "UPDATES", 0);
		}
		if (getenv("PGKJ_BENCH_WINDOW_S") != NULL && getenv("PGKJ_BENCH_WINDOW_S")[0] != '\0')
			window_s = arg_int(getenv("PGKJ_BENCH_WINDOW_S"), "PGKJ_BENCH_WINDOW_S", 1);
		seconds = ladder_warmup + ladder_seconds;
		for (i = 0; i < nsteps; i++)
		{
			rate = steps[i].rate > rate ? steps[i].rate : rate;
			total += steps[i].rate * seconds;
		}
		free(list);
	}
	else
		usage();
	brokers = argv[2];
	what = argv[1];
	if (mode != MODE_LADDER)
		total = (int64_t) seconds * rate;
	if (rate > 1000000 || total > 200000000)
		die("at most 1000000 ratings/s and 200000000 ratings in all");

	/* the consumer's start offsets first: before anything is produced */
	consumer = make_consumer(out_topic);
	producer = make_producer();
	rkt = rd_kafka_topic_new(producer, in_topic, NULL);
	if (rkt == NULL)
		die("could not open topic %s", in_topic);
	if (movies_topic != NULL &&
		(mrkt = rd_kafka_topic_new(producer, movies_topic, NULL)) == NULL)
		die("could not open topic %s", movies_topic);
	if (pthread_create(&thread, NULL, consumer_main, consumer) != 0)
		die("could not start the consumer thread");
	sleep_ms(SETTLE_MS);

	if (mode == MODE_LONE)
	{
		run_lone(producer, rkt, movies, count, pause_ms);
		all_arrived = wait_results(producer, nsent, 0);
	}
	else if (mode == MODE_LADDER)
	{
		run_ladder(producer, rkt, mrkt, movies, updates);
		all_arrived = wait_drained(producer);
	}
	else
	{
		run_rate(producer, rkt, movies, rate, seconds, warmup);
		all_arrived = wait_results(producer, nsent, TIMEOUT_MS);
	}
	/* late duplicates */
	if (all_arrived)
		sleep_ms(DRAIN_MS);
	if (rd_kafka_flush(producer, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		fail("%s: ratings still unsent after 10 s", what);
	rd_kafka_poll(producer, 0);

	stop_consumer = true;
	pthread_join(thread, NULL);

	check_exact(what);
	if (mode == MODE_STEADY)
		report_latencies("steady", rate, seconds, warmup);
	else if (mode == MODE_KAFKA)
		report_latencies("kafka", rate, seconds, 0);
	else if (mode == MODE_LADDER)
		report_ladder();

	if (mrkt != NULL)
		rd_kafka_topic_destroy(mrkt);
	rd_kafka_topic_destroy(rkt);
	rd_kafka_destroy(producer);
	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	return failed ? 1 : 0;
}
