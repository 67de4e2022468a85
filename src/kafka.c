/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  The librdkafka handles of the join worker: one consumer for the input
 *	  topics, one transactional producer for the output topic.
 *
 * librdkafka runs threads of its own; PostgreSQL may only be called from the
 * worker's thread.  So every callback that can reach ereport (logs, errors,
 * delivery reports) is queued by librdkafka and served from the worker's
 * loop: logs and errors through the main queue (log.queue=true), which for
 * the consumer is forwarded to its consumer queue, and delivery reports
 * through rd_kafka_poll() and rd_kafka_flush() on the producer.  The
 * consumer queue also writes a byte to a pipe when it becomes non-empty, so
 * the worker can sleep on its latch and on that pipe together.
 *
 * The consumer does not join a consumer group: partitions are assigned
 * explicitly at the offsets stored in PostgreSQL, which are the truth; a
 * stored offset outside the partition is an error, never a silent jump
 * (auto.offset.reset = error).  Its group id only names where the
 * publisher's position is committed, inside each Kafka transaction (see
 * publish.c).  The group id is control.kafka_group, made by CREATE
 * EXTENSION (a new one, whose result ids start again from 1, starts from a
 * position of its own) and kept by pg_dump (a restored database finds the
 * position it has to continue from).
 *
 * Not here: what is consumed (consume.c), published (publish.c) or claimed
 * (ownership.c) with these handles.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include <ctype.h>

#include "access/xlog.h"
#include "executor/spi.h"
#include "storage/fd.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "pgkafka_join.h"
#include "kafka.h"

PkjKafka	pkj_kafka = {0};
/* Connections made by this process, to tell each from the last */
static uint64 connections = 0;

/* The last error librdkafka reported, for the log and the status */
char		pkj_kafka_last_error[512];

/*
 * The last refusal by a broker (authentication, TLS) reported to error_cb,
 * until a metadata request succeeds: the reason a request then fails,
 * which would otherwise read "Broker transport failure" only.
 */
static char refusal[512];

/* Remember an error for the log and the status view */
void
pkj_kafka_note_error(const char *error)
{
	strlcpy(pkj_kafka_last_error, error, sizeof(pkj_kafka_last_error));
	pkj_status_set_error(error);
}

static void
log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	int			elevel;

	/* syslog levels: 0..3 are errors, 4 warnings, the rest informational */
	if (level <= 4)
		elevel = WARNING;
	else if (level <= 6)
		elevel = LOG;
	else
		elevel = DEBUG1;
	/* a broker connection failure: error_cb reports it too, once is enough */
	if (strcmp(fac, "FAIL") == 0)
		elevel = DEBUG1;

	ereport(elevel,
			(errmsg("librdkafka %s: %s: %s", rd_kafka_name(rk), fac, buf)));
}

static void
error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	pkj_kafka_note_error(reason);
	if (err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL)
		strlcpy(refusal, reason, sizeof(refusal));

	/*
	 * A fatal error of the idempotent/transactional producer cannot be
	 * recovered in this instance; the publisher sees it on its next call and
	 * rebuilds the producer.  Anything else librdkafka retries by itself:
	 * log it, at most as a warning.
	 */
	ereport(err == RD_KAFKA_RESP_ERR__FATAL ? WARNING : LOG,
			(errmsg("kafka client %s: %s", rd_kafka_name(rk), reason),
			 errdetail("librdkafka error %s.", rd_kafka_err2name(err))));
}

/* Set a property; on failure say why in *problem (once) and return false */
static bool
conf_set(rd_kafka_conf_t *conf, const char *key, const char *value, char **problem)
{
	char		errstr[512];

	if (*problem != NULL)
		return false;
	if (rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		*problem = psprintf("invalid Kafka property \"%s\": %s", key, errstr);
		return false;
	}
	return true;
}

/*
 * pkj_read_properties_file
 *		The properties of pgkafka_join.kafka_properties_file: "key=value"
 *		lines, '#' comments and blank lines ignored, the value being the rest
 *		of the line (spaces around it trimmed).  Returns false with *errmsg
 *		set if the file cannot be read or holds a bad line; the message never
 *		quotes the file's contents, which are secrets.  No file set: true,
 *		no properties.
 */
bool
pkj_read_properties_file(List **props, char **content, char **errmsg)
{
	FILE	   *file;
	StringInfoData buf;
	char		line[8192];
	int			lineno = 0;

	*props = NIL;
	*content = pstrdup("");
	if (pkj_kafka_properties_file[0] == '\0')
		return true;

	file = AllocateFile(pkj_kafka_properties_file, "r");
	if (file == NULL)
	{
		*errmsg = psprintf("could not open pgkafka_join.kafka_properties_file \"%s\": %m",
						   pkj_kafka_properties_file);
		return false;
	}
	initStringInfo(&buf);
	while (fgets(line, sizeof(line), file) != NULL)
	{
		char	   *key = line;
		char	   *eq;
		char	   *end;
		PkjProperty *prop;

		lineno++;
		appendStringInfoString(&buf, line);
		while (isspace((unsigned char) *key))
			key++;
		if (*key == '\0' || *key == '#')
			continue;
		eq = strchr(key, '=');
		if (eq == NULL)
		{
			FreeFile(file);
			*errmsg = psprintf("line %d of pgkafka_join.kafka_properties_file \"%s\" is not key=value",
							   lineno, pkj_kafka_properties_file);
			return false;
		}
		for (end = eq; end > key && isspace((unsigned char) end[-1]); end--)
			;
		prop = palloc(sizeof(PkjProperty));
		prop->key = pnstrdup(key, end - key);
		for (key = eq + 1; isspace((unsigned char) *key); key++)
			;
		for (end = key + strlen(key); end > key && isspace((unsigned char) end[-1]); end--)
			;
		prop->value = pnstrdup(key, end - key);
		*props = lappend(*props, prop);
	}
	FreeFile(file);
	if (!pkj_check_properties(*props, errmsg))
	{
		*errmsg = psprintf("pgkafka_join.kafka_properties_file \"%s\": %s",
						   pkj_kafka_properties_file, *errmsg);
		return false;
	}
	*content = buf.data;
	return true;
}

/*
 * A handle's configuration, in three layers: our defaults for the role
 * (tuning the user may change), then the user's extra properties, then
 * what exactly-once depends on, which guc.c forbids the user to set.
 * NULL, with *problem set, if a property is refused.
 */
static rd_kafka_conf_t *
make_conf(const char *role, const char *const *defaults, const char *const *reserved,
		  List *file_props, char **problem)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	List	   *props;
	char	   *errmsg;
	ListCell   *lc;

	*problem = NULL;
	conf_set(conf, "bootstrap.servers", pkj_brokers, problem);
	conf_set(conf, "client.id", psprintf("pgkafka_join-%s", role), problem);
	conf_set(conf, "log.queue", "true", problem);
	conf_set(conf, "log.connection.close", "false", problem);
	rd_kafka_conf_set_log_cb(conf, log_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	for (int i = 0; defaults[i] != NULL; i += 2)
		conf_set(conf, defaults[i], defaults[i + 1], problem);

	if (!pkj_parse_properties(pkj_kafka_properties, &props, &errmsg))
		elog(ERROR, "pgkafka_join.kafka_properties: %s", errmsg);	/* checked by the GUC */
	foreach(lc, list_concat(props, file_props))
	{
		PkjProperty *prop = lfirst(lc);

		conf_set(conf, prop->key, prop->value, problem);
	}

	for (int i = 0; reserved[i] != NULL; i += 2)
		conf_set(conf, reserved[i], reserved[i + 1], problem);
	if (*problem != NULL)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	return conf;
}

/*
 * A new handle, NULL with *problem set if librdkafka refuses the
 * configuration as a whole (acks=1 with an idempotent producer, say); conf
 * is consumed either way.
 */
static rd_kafka_t *
new_handle(rd_kafka_type_t type, rd_kafka_conf_t *conf, char **problem)
{
	char		errstr[512];
	rd_kafka_t *rk;

	rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		*problem = psprintf("librdkafka refuses the %s's properties: %s",
							type == RD_KAFKA_CONSUMER ? "consumer" : "producer", errstr);
		return NULL;
	}
	/* logs go to the main queue, served from the worker's thread */
	rd_kafka_set_log_queue(rk, NULL);
	return rk;
}

/* control.kafka_group: where the publish position is committed */
static char *
read_kafka_group(void)
{
	char	   *group = NULL;

	pkj_begin_spi("reading the Kafka group");
	if (SPI_execute("SELECT kafka_group FROM pgkafka_join.control", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read pgkafka_join.control");
	group = MemoryContextStrdup(pkj_spi_caller_cxt,
								SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	pkj_end_spi();
	return group;
}

/*
 * pkj_transactional_id_value
 *		The transactional id of the publisher of worker 0 (worker i > 0 adds
 *		"-i"), which also names the server in the claims of its partitions
 *		(see ownership.c).  Unique per cluster and database unless set
 *		explicitly.
 */
char *
pkj_transactional_id_value(void)
{
	if (pkj_transactional_id[0] != '\0')
		return pstrdup(pkj_transactional_id);
	return psprintf("pgkafka_join-" UINT64_FORMAT "-%u",
					GetSystemIdentifier(), MyDatabaseId);
}

/*
 * The consumer's configuration: the properties of the settings and of the
 * file (props), on top of our defaults, under the settings no property may
 * change.  NULL, with *problem set, if librdkafka refuses one.
 */
static rd_kafka_conf_t *
consumer_conf(const char *group, List *props, char **problem)
{
	/*
	 * librdkafka 2.0 stops fetching while its queue holds
	 * queued.min.messages and looks again only up to a second later;
	 * the default of 100000 starves a worker that stores faster.  With
	 * the default fetch.wait.max.ms (500 ms), a lone rating on a quiet
	 * stream was seen to wait up to a second before the worker got it
	 * (a fetch held by the broker for want of data, not answered when
	 * the data came).  10 ms bounds that wait, for an empty fetch per
	 * 10 ms on an idle stream.  A fetch waits for 100 kB (or those
	 * 10 ms): at a steady 10,000 ratings/s, answering a fetch for every
	 * few messages kept the broker busier than everything else, and
	 * its queue of requests was what the results waited for.
	 *
	 * What is fetched ahead lives in the worker's private memory, about
	 * 300 bytes a message besides its payload: catching up a backlog
	 * of small messages with a million queued took 400 MB, whatever
	 * the batch size.  250,000 messages (and 32 MB of payload) are
	 * a few seconds of work for a worker, and bound that memory to
	 * about 100 MB however long the backlog.
	 */
	const char *const defaults[] = {
		"queued.min.messages", "250000",
		"queued.max.messages.kbytes", "32768",
		"fetch.wait.max.ms", "10",
		"fetch.min.bytes", "100000",
		NULL
	};
	const char *const reserved[] = {
		"group.id", group,
		"enable.auto.commit", "false",
		"enable.auto.offset.store", "false",
		"isolation.level", "read_committed",
		/* the end of a movies partition opens its ratings (ownership.c) */
		"enable.partition.eof", "true",
		"auto.offset.reset", "error",
		NULL
	};

	return make_conf("consumer", defaults, reserved, props, problem);
}

/* The producer's configuration, as consumer_conf() makes the consumer's */
static rd_kafka_conf_t *
producer_conf(const char *transactional_id, List *props, char **problem)
{
	/*
	 * A transaction begun right after the previous one committed adds
	 * its partitions while the brokers still write the previous one's
	 * markers: they answer CONCURRENT_TRANSACTIONS, and librdkafka
	 * tries again after retry.backoff.ms.  The default, 100 ms, then
	 * made every commit take 100 ms at a steady rate; 10 ms keeps the
	 * latency of a result in tens of milliseconds.
	 */
	const char *const defaults[] = {
		"linger.ms", "5",
		"retry.backoff.ms", "10",
		NULL
	};
	const char *const reserved[] = {
		"transactional.id", transactional_id,
		"enable.idempotence", "true",
		"partitioner", "murmur2_random",
		NULL
	};

	return make_conf("producer", defaults, reserved, props, problem);
}

/*
 * The settings the handles are made with, kept to tell a reload that
 * changes them (pkj_kafka_settings_changed()); in TopMemoryContext.
 */
static void
remember_settings(const char *file_content)
{
	pkj_kafka.brokers = pstrdup(pkj_brokers);
	pkj_kafka.properties = pstrdup(pkj_kafka_properties);
	pkj_kafka.properties_file = pstrdup(pkj_kafka_properties_file);
	pkj_kafka.properties_file_content = pstrdup(file_content);
	pkj_kafka.movies_topic = pstrdup(pkj_movies_topic);
	pkj_kafka.ratings_topic = pstrdup(pkj_ratings_topic);
	pkj_kafka.output_topic = pstrdup(pkj_output_topic);
	pkj_kafka.consumer_group = pstrdup(pkj_consumer_group);
}

/*
 * pkj_kafka_connect
 *		Create the consumer and the producer of worker number "worker",
 *		whose delivery reports go to
 *		delivery_report (the publisher's: the loop wires it in, so that
 *		this file calls nothing of the files that call it).  Connections
 *		are made in the background by librdkafka; nothing here waits for
 *		the brokers.
 *		Returns false, with *problem set and no handle made, if librdkafka
 *		refuses the properties: the worker waits for a reload instead of
 *		failing at every retry.
 */
bool
pkj_kafka_connect(Oid extension_oid, int worker, PkjDeliveryReport delivery_report,
				  char **problem)
{
	rd_kafka_conf_t *conf;
	rd_kafka_conf_t *producer;
	/* worker 0 keeps the id of a single worker; the others add their number */
	char	   *txn_id = worker == 0 ? pkj_transactional_id_value() :
		psprintf("%s-%d", pkj_transactional_id_value(), worker);
	char	   *group_id = read_kafka_group();
	List	   *file_props;
	char	   *file_content;
	MemoryContext old;

	Assert(pkj_kafka.consumer == NULL && pkj_kafka.producer == NULL);

	/* the caller made sure the file reads well */
	if (!pkj_read_properties_file(&file_props, &file_content, problem))
		return false;

	conf = consumer_conf(group_id, file_props, problem);
	if (conf == NULL)
		return false;
	producer = producer_conf(txn_id, file_props, problem);
	if (producer == NULL)
	{
		rd_kafka_conf_destroy(conf);
		return false;
	}
	rd_kafka_conf_set_dr_msg_cb(producer, delivery_report);

	old = MemoryContextSwitchTo(TopMemoryContext);
	pkj_kafka.producer = new_handle(RD_KAFKA_PRODUCER, producer, problem);
	if (pkj_kafka.producer == NULL)
	{
		rd_kafka_conf_destroy(conf);
		MemoryContextSwitchTo(old);
		return false;
	}
	pkj_kafka.consumer = new_handle(RD_KAFKA_CONSUMER, conf, problem);
	pkj_kafka.connection = ++connections;
	if (pkj_kafka.consumer == NULL)
	{
		rd_kafka_destroy(pkj_kafka.producer);
		pkj_kafka.producer = NULL;
		MemoryContextSwitchTo(old);
		return false;
	}
	rd_kafka_poll_set_consumer(pkj_kafka.consumer);
	pkj_kafka.queue = rd_kafka_queue_get_consumer(pkj_kafka.consumer);

	if (pipe2(pkj_kafka.wakeup, O_NONBLOCK | O_CLOEXEC) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create pipe: %m")));
	rd_kafka_queue_io_event_enable(pkj_kafka.queue, pkj_kafka.wakeup[1], "1", 1);

	pkj_kafka.transactional_id = pstrdup(txn_id);
	pkj_kafka.cgmd = rd_kafka_consumer_group_metadata_new(group_id);
	pkj_kafka.shares_group = psprintf("%s.publish-positions.%s", group_id, pkj_output_topic);
	pkj_kafka.previous_shares_group = psprintf("%s.%s", group_id, pkj_output_topic);
	pkj_kafka.input_group = pstrdup(pkj_consumer_group[0] != '\0' ? pkj_consumer_group : group_id);
	pkj_kafka.shares_cgmd = rd_kafka_consumer_group_metadata_new(pkj_kafka.shares_group);
	pkj_kafka.transactions_ready = false;
	pkj_kafka.extension_oid = extension_oid;

	remember_settings(file_content);
	pkj_kafka.assigned_movies = 0;
	pkj_kafka.assigned_ratings = 0;

	MemoryContextSwitchTo(old);
	return true;
}

/*
 * pkj_kafka_disconnect
 *		Destroy both handles.  An open Kafka transaction is left to the
 *		broker: the next producer with the same transactional id aborts it.
 */
void
pkj_kafka_disconnect(void)
{
	if (pkj_kafka.queue)
		rd_kafka_queue_destroy(pkj_kafka.queue);
	if (pkj_kafka.consumer)
	{
		rd_kafka_consumer_close(pkj_kafka.consumer);
		rd_kafka_destroy(pkj_kafka.consumer);
	}
	if (pkj_kafka.producer)
		rd_kafka_destroy(pkj_kafka.producer);
	for (int i = 0; i < PKJ_GROUP_HANDLES && pkj_kafka.groups[i].rk != NULL; i++)
	{
		rd_kafka_consumer_close(pkj_kafka.groups[i].rk);
		rd_kafka_destroy(pkj_kafka.groups[i].rk);
		pfree(pkj_kafka.groups[i].group);
	}
	if (pkj_kafka.cgmd)
		rd_kafka_consumer_group_metadata_destroy(pkj_kafka.cgmd);
	if (pkj_kafka.shares_cgmd)
		rd_kafka_consumer_group_metadata_destroy(pkj_kafka.shares_cgmd);
	if (pkj_kafka.assignment)
		rd_kafka_topic_partition_list_destroy(pkj_kafka.assignment);
	if (pkj_kafka.wakeup[0] > 0)
	{
		close(pkj_kafka.wakeup[0]);
		close(pkj_kafka.wakeup[1]);
	}
	if (pkj_kafka.brokers)
	{
		pfree(pkj_kafka.brokers);
		pfree(pkj_kafka.properties);
		pfree(pkj_kafka.properties_file);
		pfree(pkj_kafka.properties_file_content);
		pfree(pkj_kafka.movies_topic);
		pfree(pkj_kafka.ratings_topic);
		pfree(pkj_kafka.output_topic);
		pfree(pkj_kafka.consumer_group);
		pfree(pkj_kafka.shares_group);
		pfree(pkj_kafka.previous_shares_group);
		pfree(pkj_kafka.input_group);
		pfree(pkj_kafka.transactional_id);
	}
	memset(&pkj_kafka, 0, sizeof(pkj_kafka));
}

/*
 * pkj_kafka_group_handle
 *		A handle to read and commit the offsets of Kafka group "group": a
 *		consumer of that group that joins no group and consumes nothing, made
 *		on first use, destroyed with the others.  The publish positions of
 *		the shares (see publish.c) and the claims of the partitions (see
 *		ownership.c) are kept in groups of their own.  NULL, with *problem
 *		set, if librdkafka refuses the properties.
 */
rd_kafka_t *
pkj_kafka_group_handle(const char *group, char **problem)
{
	const char *const defaults[] = {NULL};
	const char *const reserved[] = {
		"group.id", group,
		"enable.auto.commit", "false",
		"enable.auto.offset.store", "false",
		/* offsets inside an open transaction are not given out as committed */
		"isolation.level", "read_committed",
		NULL
	};
	List	   *file_props;
	char	   *file_content;
	rd_kafka_conf_t *conf;
	MemoryContext old;
	int			i;

	for (i = 0; i < PKJ_GROUP_HANDLES && pkj_kafka.groups[i].rk != NULL; i++)
	{
		if (strcmp(pkj_kafka.groups[i].group, group) == 0)
			return pkj_kafka.groups[i].rk;
	}
	if (i == PKJ_GROUP_HANDLES)
		elog(ERROR, "too many Kafka group handles");
	if (!pkj_read_properties_file(&file_props, &file_content, problem))
		return NULL;
	conf = make_conf("groups", defaults, reserved, file_props, problem);
	if (conf == NULL)
		return NULL;
	old = MemoryContextSwitchTo(TopMemoryContext);
	pkj_kafka.groups[i].rk = new_handle(RD_KAFKA_CONSUMER, conf, problem);
	if (pkj_kafka.groups[i].rk != NULL)
		pkj_kafka.groups[i].group = pstrdup(group);
	MemoryContextSwitchTo(old);
	return pkj_kafka.groups[i].rk;
}

/*
 * pkj_kafka_fence
 *		Fence every producer of transactional id "transactional_id": a
 *		producer made here with that id initializes transactions, and the
 *		brokers abort the transaction of that id left open, if any, and
 *		refuse every later request of the producers that had the id before
 *		(PRODUCER_FENCED); then it is destroyed.  False, with *problem set,
 *		if the brokers did not complete it in timeout_ms.
 */
bool
pkj_kafka_fence(const char *transactional_id, int timeout_ms, char **problem)
{
	List	   *file_props;
	char	   *file_content;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_error_t *error;

	if (!pkj_read_properties_file(&file_props, &file_content, problem))
		return false;
	conf = producer_conf(transactional_id, file_props, problem);
	if (conf == NULL)
		return false;
	rk = new_handle(RD_KAFKA_PRODUCER, conf, problem);
	if (rk == NULL)
		return false;
	error = rd_kafka_init_transactions(rk, timeout_ms);
	if (error != NULL)
	{
		*problem = psprintf("could not fence transactional id \"%s\": %s",
							transactional_id, rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_destroy(rk);
	return error == NULL;
}

/*
 * pkj_kafka_reader
 *		A consumer that reads what assign() gives it, committed records only,
 *		and says when it reached the end of each partition; it joins no group
 *		and commits nothing.  The caller destroys it.  NULL, with *problem
 *		set, if librdkafka refuses the properties.
 */
rd_kafka_t *
pkj_kafka_reader(char **problem)
{
	const char *const defaults[] = {NULL};
	const char *const reserved[] = {
		/* named for the logs; never joined, never committed to */
		"group.id", pkj_kafka.shares_group,
		"enable.auto.commit", "false",
		"enable.auto.offset.store", "false",
		"isolation.level", "read_committed",
		"enable.partition.eof", "true",
		/* records deleted under it are an error, not a jump */
		"auto.offset.reset", "error",
		NULL
	};
	List	   *file_props;
	char	   *file_content;
	rd_kafka_conf_t *conf;

	if (!pkj_read_properties_file(&file_props, &file_content, problem))
		return NULL;
	conf = make_conf("reader", defaults, reserved, file_props, problem);
	if (conf == NULL)
		return NULL;
	return new_handle(RD_KAFKA_CONSUMER, conf, problem);
}

/* Have the settings the handles were made with changed? */
bool
pkj_kafka_settings_changed(void)
{
	List	   *file_props;
	char	   *file_content;
	char	   *problem;

	/* the file's contents count too; one that no longer reads is a change */
	if (strcmp(pkj_kafka.properties_file, pkj_kafka_properties_file) != 0 ||
		!pkj_read_properties_file(&file_props, &file_content, &problem) ||
		strcmp(pkj_kafka.properties_file_content, file_content) != 0)
		return true;

	return strcmp(pkj_kafka.brokers, pkj_brokers) != 0 ||
		strcmp(pkj_kafka.properties, pkj_kafka_properties) != 0 ||
		strcmp(pkj_kafka.movies_topic, pkj_movies_topic) != 0 ||
		strcmp(pkj_kafka.ratings_topic, pkj_ratings_topic) != 0 ||
		strcmp(pkj_kafka.output_topic, pkj_output_topic) != 0 ||
		strcmp(pkj_kafka.consumer_group, pkj_consumer_group) != 0;
}

/* Empty the wake-up pipe; call before the last check of the queue */
void
pkj_kafka_drain_wakeup(void)
{
	char		buf[64];

	while (read(pkj_kafka.wakeup[0], buf, sizeof(buf)) > 0)
		;
}

/*
 * pkj_kafka_partition_count
 *		Number of partitions of a topic, as the brokers tell handle rk, 0 if
 *		it does not exist (yet), -1 if the brokers could not be asked.
 */
int
pkj_kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
	rd_kafka_topic_t *rkt;
	const struct rd_kafka_metadata *md;
	rd_kafka_resp_err_t err;
	int			count = 0;

	rkt = rd_kafka_topic_new(rk, topic, NULL);
	err = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
	rd_kafka_topic_destroy(rkt);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		/* the producer's and groups' reports of the same brokers, if any */
		pkj_kafka_serve_producer();
		pkj_kafka_note_error(psprintf("metadata request for topic \"%s\" failed: %s%s%s%s",
									  topic, rd_kafka_err2str(err),
									  refusal[0] ? " (" : "", refusal, refusal[0] ? ")" : ""));
		return -1;
	}
	refusal[0] = '\0';
	if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
		count = md->topics[0].partition_cnt;
	rd_kafka_metadata_destroy(md);
	return count;
}

/* Serve the producer's queued callbacks (logs, delivery reports) */
void
pkj_kafka_serve_producer(void)
{
	if (pkj_kafka.producer)
		rd_kafka_poll(pkj_kafka.producer, 0);
	for (int i = 0; i < PKJ_GROUP_HANDLES && pkj_kafka.groups[i].rk != NULL; i++)
		rd_kafka_poll(pkj_kafka.groups[i].rk, 0);
}
