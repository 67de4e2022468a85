/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  New rated movies -> one Kafka transaction on the output topic.
 *
 * Results are numbered by rated_movies_id_seq, and every transaction that
 * adds results holds the ingest lock from its first number to its commit
 * (see lock_ingest in the install script).  Numbers therefore become
 * visible in order: once id N is visible, every lower id that will ever
 * commit is visible too.  The publisher's position is thus one number, the
 * last id published, and a batch is "every id above it, in order".
 *
 * That position is kept in Kafka, in the same Kafka transaction as the
 * records: it is committed with rd_kafka_send_offsets_to_transaction() as
 * the offset of the output topic's partition 0 for a group named after the
 * transactional id.  Either the records and the position both commit, or
 * neither does; a read_committed consumer never sees the records of an
 * aborted or fenced transaction.  On start the producer calls
 * init_transactions(), which aborts whatever transaction a previous
 * incarnation left open, then reads the committed position back.  So no
 * result is skipped (the position only moves past records that committed)
 * and none is repeated (records only commit with the position past them).
 *
 * After each commit, output_position in PostgreSQL records the partition
 * offsets the records landed at, from the delivery reports.  It is written
 * after the Kafka commit, so it can only lag the truth; it serves clients
 * that hand over from a snapshot to the topic, and as a lower bound should
 * the group's offsets ever expire on the brokers.  When it is ahead of the
 * position in Kafka anyway (the group's offsets were reset), the higher one
 * is used: those results are on the topic.
 *
 * All of this assumes that what was published is still in PostgreSQL.  It
 * is not after a restore from a backup, a failover to an asynchronous
 * standby, or commits lost with fsync off: then the position in Kafka is
 * above the highest result id the sequence ever handed out, new results
 * would be numbered below it and never sent.  The position is compared with
 * the sequence every time it is read; when Kafka is ahead, the worker stores
 * and publishes nothing, says so, and waits for advance_result_ids().  (The
 * worker's own commits are always durable: see force_durable_commit().)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/wait_event.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* Kafka calls that wait for the brokers give up after this long */
#define KAFKA_TIMEOUT_MS 10000

/* One result to publish */
typedef struct PendingResult
{
	int64		id;
	char	   *key;
	char	   *value;
} PendingResult;

/* Where the records of one transaction landed, per output partition */
typedef struct Landed
{
	int64		next_offset;
	int64		last_id;
} Landed;

static int64 published_id = -1;	/* last id committed to Kafka; -1: unknown */
static bool behind_logged = false;	/* said that Kafka is ahead */
static bool output_topic_checked = false;
static bool output_wait_logged = false;	/* said we wait for the output topic */

/* filled by the delivery reports of the transaction in progress */
static Landed *landed = NULL;
static int	nlanded = 0;
static bool delivery_failed = false;

static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr position_plan = NULL;
static SPIPlanPtr handed_out_plan = NULL;
static SPIPlanPtr record_plan = NULL;

/*
 * pkj_delivery_report
 *		librdkafka's delivery report callback, served from the worker's
 *		thread by rd_kafka_poll() and rd_kafka_flush().
 */
void
pkj_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	int64		id = (int64) (intptr_t) msg->_private;

	if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		delivery_failed = true;
		pkj_kafka_note_error(rd_kafka_err2str(msg->err));
		return;
	}
	if (msg->partition >= nlanded)
	{
		int			n = msg->partition + 1;

		landed = landed ? repalloc(landed, n * sizeof(Landed))
			: MemoryContextAlloc(TopMemoryContext, n * sizeof(Landed));
		for (int i = nlanded; i < n; i++)
		{
			landed[i].next_offset = -1;
			landed[i].last_id = -1;
		}
		nlanded = n;
	}
	landed[msg->partition].next_offset = Max(landed[msg->partition].next_offset,
											 msg->offset + 1);
	landed[msg->partition].last_id = Max(landed[msg->partition].last_id, id);
}

/* Forget the position: it is read again from Kafka before the next batch */
void
pkj_publisher_reset(void)
{
	published_id = -1;
	output_topic_checked = false;
}

static void
kafka_error_report(int elevel, rd_kafka_error_t *error, const char *what)
{
	pkj_kafka_note_error(rd_kafka_error_string(error));
	ereport(elevel,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not %s on the output topic \"%s\": %s",
					what, pkj_kafka.output_topic, rd_kafka_error_string(error)),
			 errdetail("librdkafka error %s%s%s.", rd_kafka_error_name(error),
					   rd_kafka_error_is_retriable(error) ? ", retriable" : "",
					   rd_kafka_error_is_fatal(error) ? ", fatal" : "")));
}

/*
 * A fatal producer error (fenced by another producer with our
 * transactional id, or a broken idempotence sequence) cannot be recovered in
 * this producer.  Ending the worker is the safe answer: its successor builds
 * a new producer, whose init_transactions() fences and aborts the rest.
 */
static void
check_fatal(rd_kafka_error_t *error, const char *what)
{
	if (rd_kafka_error_is_fatal(error))
	{
		kafka_error_report(LOG, error, what);
		rd_kafka_error_destroy(error);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("fatal error of the transactional producer; the join worker restarts"),
				 errhint("Another producer may use the same pgkafka_join.transactional_id.")));
	}
}

/*
 * Wait a little before a retry, staying responsive to signals.  Returns
 * false when a reload is pending: the caller gives up the transaction and
 * the worker's loop applies the new settings (new brokers, say) instead of
 * retrying on the old ones.
 */
static bool
retry_wait(long ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	pkj_kafka_serve_producer();	/* its logs, while the brokers are away */
	return !ConfigReloadPending;
}

/*
 * Give up the Kafka transaction in progress to apply a reload: the handles
 * are rebuilt, and the new producer's init_transactions() completes or
 * aborts what this one left, so the position read back afterwards is exact.
 */
static int64
give_up_for_reload(void)
{
	ereport(LOG,
			(errmsg("pgkafka_join leaves a Kafka transaction unfinished to apply a configuration reload"),
			 errdetail("The next producer completes or aborts it; nothing is published twice.")));
	/* the worker's loop makes new handles before anything else */
	pkj_kafka.must_reconnect = true;
	pkj_publisher_reset();
	return -1;
}

static SPIPlanPtr
keep_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * What PostgreSQL knows of the position: the highest id output_position
 * says was published to the output topic, and the highest id the sequence
 * ever handed out.
 */
static void
stored_position(int64 *recorded, int64 *handed_out)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		isnull;

	pkj_begin_spi("reading the output position");
	if (position_plan == NULL)
	{
		position_plan = keep_plan("SELECT coalesce(max(last_id), 0) "
								  "FROM pgkafka_join.output_position WHERE topic = $1",
								  1, argtypes);
		handed_out_plan = keep_plan("SELECT CASE WHEN is_called THEN last_value "
									"ELSE last_value - 1 END "
									"FROM pgkafka_join.rated_movies_id_seq",
									0, NULL);
	}
	args[0] = CStringGetTextDatum(pkj_kafka.output_topic);
	if (SPI_execute_plan(position_plan, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.output_position");
	*recorded = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	if (SPI_execute_plan(handed_out_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.rated_movies_id_seq");
	*handed_out = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	pkj_end_spi();
}

/*
 * pkj_publisher_position
 *		Make the producer ready for transactions and learn where publishing
 *		stands.  PKJ_POSITION_KNOWN: published_id is exact.
 *		PKJ_POSITION_UNKNOWN: the brokers could not tell yet (logged); try
 *		again later.  PKJ_POSITION_BEHIND: the output topic is ahead of
 *		PostgreSQL; nothing may be stored or published until
 *		advance_result_ids() (logged once, shown in status).
 */
PkjPosition
pkj_publisher_position(void)
{
	rd_kafka_error_t *error;
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	int64		kafka_position = -1;
	int64		recorded;
	int64		handed_out;

	if (published_id >= 0)
		return PKJ_POSITION_KNOWN;

	/* a previous producer's transaction is completed or aborted first */
	if (!pkj_kafka.transactions_ready)
	{
		pgstat_report_activity(STATE_RUNNING, "initializing Kafka transactions");
		error = rd_kafka_init_transactions(pkj_kafka.producer, KAFKA_TIMEOUT_MS);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (error)
		{
			check_fatal(error, "initialize transactions");
			kafka_error_report(LOG, error, "initialize transactions");
			rd_kafka_error_destroy(error);
			return PKJ_POSITION_UNKNOWN;
		}
		pkj_kafka.transactions_ready = true;
	}

	parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(parts, pkj_kafka.output_topic, 0);
	err = rd_kafka_committed(pkj_kafka.consumer, parts, KAFKA_TIMEOUT_MS);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		err = parts->elems[0].err;
	/* an output topic that does not exist (yet) has no position */
	if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
		err = RD_KAFKA_RESP_ERR_NO_ERROR;
	else if (err == RD_KAFKA_RESP_ERR_NO_ERROR && parts->elems[0].offset >= 0)
		kafka_position = parts->elems[0].offset;
	rd_kafka_topic_partition_list_destroy(parts);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		pkj_kafka_note_error(rd_kafka_err2str(err));
		ereport(LOG,
				(errmsg("could not read the publish position from Kafka: %s",
						rd_kafka_err2str(err))));
		return PKJ_POSITION_UNKNOWN;
	}
	stored_position(&recorded, &handed_out);

	if (kafka_position > handed_out)
	{
		pkj_status_set_state("stopped: the output topic is ahead of PostgreSQL");
		pkj_status_set_error(psprintf("results up to id " INT64_FORMAT " were published, but PostgreSQL numbered results only up to " INT64_FORMAT,
									  kafka_position, handed_out));
		if (!behind_logged)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pgkafka_join stopped: the output topic \"%s\" is ahead of PostgreSQL",
							pkj_kafka.output_topic),
					 errdetail("Results up to id " INT64_FORMAT " were published to Kafka; PostgreSQL numbered results only up to id " INT64_FORMAT " and recorded publishing up to id " INT64_FORMAT ".  The database lost commits or was restored to an earlier state; new results would be numbered below the published position and never sent.",
							   kafka_position, handed_out, recorded),
					 errhint("To go on, run SELECT pgkafka_join.advance_result_ids(" INT64_FORMAT "): results not known to be published, and those of input consumed again, are then published with new ids.",
							 kafka_position)));
		behind_logged = true;
		return PKJ_POSITION_BEHIND;
	}
	if (behind_logged)
		ereport(LOG,
				(errmsg("pgkafka_join publishes again: results are numbered after the position in Kafka")));
	behind_logged = false;

	/*
	 * The position committed in Kafka is exact.  PostgreSQL's record can
	 * only lag it, unless the group's offsets expired or were reset on the
	 * brokers: those results are on the topic all the same, so the higher
	 * one counts.
	 */
	if (recorded > kafka_position)
	{
		published_id = recorded;
		if (kafka_position >= 0)
			ereport(LOG,
					(errmsg("pgkafka_join.output_position is ahead of the position committed in Kafka; publishing after the former"),
					 errdetail("Recorded in PostgreSQL: " INT64_FORMAT "; committed in Kafka: " INT64_FORMAT ".",
							   recorded, kafka_position)));
	}
	else
		published_id = kafka_position;
	pkj_status_count_published(0, published_id);
	ereport(LOG,
			(errmsg("pgkafka_join publishes to \"%s\" after result " INT64_FORMAT,
					pkj_kafka.output_topic, published_id),
			 errdetail("Position committed in Kafka: %s; recorded in PostgreSQL: " INT64_FORMAT ".",
					   kafka_position >= 0 ? psprintf(INT64_FORMAT, kafka_position) : "none",
					   recorded)));
	return PKJ_POSITION_KNOWN;
}

/*
 * Is the output topic there?  Checked before the first transaction, so that
 * a missing topic is waited for, logged once, instead of failing every
 * transaction.
 */
static bool
output_topic_ready(void)
{
	int			n;

	if (output_topic_checked)
		return true;
	n = pkj_kafka_partition_count(pkj_kafka.output_topic, KAFKA_TIMEOUT_MS);
	if (n <= 0)
	{
		/* once per wait, not at every retry */
		if (!output_wait_logged)
			ereport(LOG,
					(errmsg("pgkafka_join is waiting for the output topic \"%s\"",
							pkj_kafka.output_topic),
					 n == 0 ? errhint("Create the topic, or set pgkafka_join.output_topic.")
					 : errdetail("%s", pkj_kafka_last_error)));
		output_wait_logged = true;
		return false;
	}
	output_wait_logged = false;
	output_topic_checked = true;
	return true;
}

/*
 * Read the next results after the position, at most batch_size of them,
 * into memory of the given context.
 */
static int
fetch_results(MemoryContext cxt, PendingResult **results)
{
	Oid			argtypes[2] = {INT8OID, INT4OID};
	Datum		args[2];
	PendingResult	   *res;
	int			n;

	pkj_begin_spi("reading results to publish");
	if (!pkj_lock_extension())
	{
		/* replaced since the top of the loop: the loop starts over */
		pkj_end_spi();
		*results = NULL;
		return 0;
	}
	if (fetch_plan == NULL)
		fetch_plan = keep_plan("SELECT r.id, r.movie_id::text, pgkafka_join.output_value(r) "
							   "FROM pgkafka_join.rated_movies r "
							   "WHERE r.id > $1 ORDER BY r.id LIMIT $2",
							   2, argtypes);
	args[0] = Int64GetDatum(published_id);
	args[1] = Int32GetDatum(pkj_batch_size);
	if (SPI_execute_plan(fetch_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.rated_movies");

	n = SPI_processed;
	res = MemoryContextAlloc(cxt, Max(n, 1) * sizeof(PendingResult));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		res[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		res[i].key = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 2));
		res[i].value = MemoryContextStrdup(cxt, SPI_getvalue(tup, desc, 3));
	}
	pkj_end_spi();
	*results = res;
	return n;
}

/* Record where the records of the committed transaction landed */
static void
record_landed(void)
{
	Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, INT8OID};
	Datum		args[4];

	pkj_begin_spi("recording the output position");
	if (!pkj_lock_extension())
	{
		pkj_end_spi();
		return;
	}
	if (record_plan == NULL)
		record_plan = keep_plan("INSERT INTO pgkafka_join.output_position AS op "
								"VALUES ($1, $2, $3, $4, now()) "
								"ON CONFLICT (topic, kafka_partition) DO UPDATE "
								"SET next_offset = greatest(op.next_offset, excluded.next_offset), "
								"last_id = greatest(op.last_id, excluded.last_id), "
								"updated_at = excluded.updated_at",
								4, argtypes);
	args[0] = CStringGetTextDatum(pkj_kafka.output_topic);
	for (int p = 0; p < nlanded; p++)
	{
		if (landed[p].next_offset < 0 || landed[p].last_id < 0)
			continue;
		args[1] = Int32GetDatum(p);
		args[2] = Int64GetDatum(landed[p].next_offset);
		args[3] = Int64GetDatum(landed[p].last_id);
		if (SPI_execute_plan(record_plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not update pgkafka_join.output_position");
	}
	pkj_end_spi();
}

/* Produce one record into the open transaction, waiting while the queue is full */
static bool
produce(const PendingResult *r)
{
	char		idtext[32];
	int			idlen = snprintf(idtext, sizeof(idtext), INT64_FORMAT, r->id);

	for (;;)
	{
		rd_kafka_resp_err_t err;

		err = rd_kafka_producev(pkj_kafka.producer,
								RD_KAFKA_V_TOPIC(pkj_kafka.output_topic),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(r->key, strlen(r->key)),
								RD_KAFKA_V_VALUE(r->value, strlen(r->value)),
								RD_KAFKA_V_HEADER("pgkafka_join.id", idtext, idlen),
								RD_KAFKA_V_OPAQUE((void *) (intptr_t) r->id),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			return true;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			pkj_kafka_note_error(rd_kafka_err2str(err));
			ereport(LOG,
					(errmsg("could not produce to \"%s\": %s",
							pkj_kafka.output_topic, rd_kafka_err2str(err))));
			return false;
		}
		rd_kafka_poll(pkj_kafka.producer, 100);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Abort the open Kafka transaction; its records are never seen by
 * read_committed consumers, and the same results are sent again.
 */
static void
abort_transaction(void)
{
	rd_kafka_error_t *error;

	while ((error = rd_kafka_abort_transaction(pkj_kafka.producer, KAFKA_TIMEOUT_MS)) != NULL)
	{
		check_fatal(error, "abort a transaction");
		kafka_error_report(LOG, error, "abort a transaction");
		if (!rd_kafka_error_is_retriable(error))
		{
			rd_kafka_error_destroy(error);
			/* the producer's state is unknown: rebuild it */
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not abort a Kafka transaction; the join worker restarts")));
		}
		rd_kafka_error_destroy(error);
		if (!retry_wait(1000))
			return;				/* the caller gives the transaction up */
	}
}

/*
 * pkj_publish
 *		Publish the next batch of results in one Kafka transaction.  Returns
 *		the number published (0: nothing new), or -1 when the brokers could
 *		not take them now; the same results are tried again later.
 */
int64
pkj_publish(MemoryContext cxt)
{
	PendingResult	   *results;
	int			n;
	int64		last_id;
	rd_kafka_error_t *error;
	rd_kafka_topic_partition_list_t *position;

	if (pkj_publisher_position() != PKJ_POSITION_KNOWN || !output_topic_ready())
		return -1;

	n = fetch_results(cxt, &results);
	if (n == 0)
		return 0;
	last_id = results[n - 1].id;

	pgstat_report_activity(STATE_RUNNING, "publishing results");
	error = rd_kafka_begin_transaction(pkj_kafka.producer);
	if (error)
	{
		check_fatal(error, "begin a transaction");
		kafka_error_report(LOG, error, "begin a transaction");
		rd_kafka_error_destroy(error);
		return -1;
	}

	for (int p = 0; p < nlanded; p++)
	{
		landed[p].next_offset = -1;
		landed[p].last_id = -1;
	}
	delivery_failed = false;

	for (int i = 0; i < n; i++)
	{
		if (!produce(&results[i]))
		{
			abort_transaction();
			return ConfigReloadPending ? give_up_for_reload() : -1;
		}
	}

	/* the position moves with the records, atomically */
	position = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(position, pkj_kafka.output_topic, 0)->offset = last_id;
	for (;;)
	{
		error = rd_kafka_send_offsets_to_transaction(pkj_kafka.producer, position,
													 pkj_kafka.cgmd, KAFKA_TIMEOUT_MS);
		if (error == NULL)
			break;
		check_fatal(error, "store the position");
		kafka_error_report(LOG, error, "store the position");
		if (rd_kafka_error_is_retriable(error))
		{
			rd_kafka_error_destroy(error);
			if (retry_wait(1000))
				continue;
			rd_kafka_topic_partition_list_destroy(position);
			return give_up_for_reload();
		}
		rd_kafka_error_destroy(error);
		rd_kafka_topic_partition_list_destroy(position);
		abort_transaction();
		return ConfigReloadPending ? give_up_for_reload() : -1;
	}
	rd_kafka_topic_partition_list_destroy(position);

	for (;;)
	{
		error = rd_kafka_commit_transaction(pkj_kafka.producer, KAFKA_TIMEOUT_MS);
		if (error == NULL)
			break;
		check_fatal(error, "commit a transaction");
		kafka_error_report(LOG, error, "commit a transaction");
		if (rd_kafka_error_is_retriable(error))
		{
			/* the outcome is not known yet: committing again is the way to learn it */
			rd_kafka_error_destroy(error);
			if (retry_wait(1000))
				continue;
			return give_up_for_reload();
		}
		rd_kafka_error_destroy(error);
		abort_transaction();
		return ConfigReloadPending ? give_up_for_reload() : -1;
	}

	/* committed: serve the remaining delivery reports, then record them */
	rd_kafka_poll(pkj_kafka.producer, 0);
	published_id = last_id;
	pkj_status_count_published(n, last_id);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (!delivery_failed)
		record_landed();
	return n;
}
