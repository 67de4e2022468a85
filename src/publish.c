/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  New rated movies -> one Kafka transaction on the output topic.
 *
 * Each result belongs to a share, the input partition whose worker made it
 * (see rated_movies.share), and each worker publishes the shares of the
 * partitions it owns.  A partition has one owner at a time, which stores
 * its batches one transaction after the other, so within a share a higher
 * id never becomes visible before a lower one: once id N of a share is
 * visible, every lower id of the share that will ever commit is visible
 * too.  The publisher's position is thus one number per share, the last id
 * of the share published, and a batch is "every id above it, in order".
 *
 * Those positions are kept in Kafka, in the same Kafka transaction as the
 * records: committed with rd_kafka_send_offsets_to_transaction() as the
 * offset of the ratings topic's partition of the share, for the group
 * "<control.kafka_group>.publish-positions.<output topic>" (a new output
 * topic starts from nothing and receives every result; versions up to 1.1
 * named the group "<control.kafka_group>.<output topic>", which is read for
 * shares that have no position in the new one yet).  Share -1, the results made before
 * version 1.1, keeps the position of 1.0: the offset of the output topic's
 * partition 0 for the group control.kafka_group.  Either the records and
 * the positions commit, or neither does; a read_committed consumer never
 * sees the records of an aborted or fenced transaction.  On start the
 * producer calls init_transactions(), which aborts whatever transaction a
 * previous incarnation with the same transactional id left open, then reads
 * the committed positions back; a position still inside another producer's
 * open transaction (a worker that owned the share before a change of
 * pgkafka_join.workers) is not given until that transaction ends, and is
 * waited for.  So no result is skipped (a position only moves past records
 * that committed) and none is repeated (records only commit with the
 * position past them).
 *
 * A transaction is started once a batch is stored (pkj_publish_start) and
 * committed (pkj_publish_finish) at once when nothing else waits to be
 * stored, or, while a backlog is caught up, after the next batch was
 * consumed and stored: the producer sends its records in the background
 * meanwhile, and only the commit waits for the brokers (see
 * publish_results() in worker.c).  Nothing about exactness changes: a
 * transaction left open when the worker stops or reconnects is aborted by
 * the next producer, and its results are sent again from the committed
 * positions.
 *
 * After each commit, output_position in PostgreSQL records, per output
 * partition and share, the offsets the records landed at, from the delivery
 * reports.  It is written after the Kafka commit, so it can only lag the
 * truth; it serves clients that hand over from a snapshot to the topic, and
 * as a lower bound should the group's offsets ever expire on the brokers.
 * When it is ahead of the position in Kafka anyway (the group's offsets
 * were reset), the higher one is used: those results are on the topic.
 *
 * All of this assumes that what was published is still in PostgreSQL.  It
 * is not after a failover to an asynchronous standby, a restore from a
 * backup, or commits lost with fsync off: then the output topic holds
 * results PostgreSQL lacks, whose input would be consumed and published
 * again.  Every record names the rating it stands for (the
 * pgkafka_join.input header), and before storing anything the worker takes
 * those results back from the topic (see "Taking back what PostgreSQL
 * lost" below).  Where they cannot be (deleted from the topic, or
 * published by a version that did not name the rating) and a position in
 * Kafka is above the highest result id the sequence ever handed out, new
 * results would be numbered below it and never sent: the worker stores
 * and publishes nothing, says so, and waits for advance_result_ids().
 * (The worker's own commits are always durable: see
 * force_durable_commit().)
 *
 * Not here: making results (ingest.c, join.c), and which shares a worker
 * publishes (ownership.c sets them).
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
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* Kafka calls that wait for the brokers give up after this long */
#define KAFKA_TIMEOUT_MS 10000

/* One result to publish */
typedef struct PendingResult
{
	int64		id;
	int32		share;
	int32		rating_partition;	/* the rating it stands for */
	int64		rating_offset;
	char	   *key;
	char	   *value;
} PendingResult;

/* A share this worker publishes, and where it stands */
typedef struct Share
{
	int32		share;
	int64		published;		/* last id committed to Kafka */
	int64		sent;			/* last id in the transaction in progress */
} Share;

/* Where the records of one transaction landed, per output partition and share */
typedef struct Landed
{
	int32		partition;
	int32		share;
	int64		next_offset;
	int64		last_id;
} Landed;

static Share *shares = NULL;	/* sorted by share */
static int	nshares = 0;
static int32 *server_shares = NULL;	/* every share of the server (>= 0) */
static int	nserver_shares = 0;
static int	first_share = 0;	/* where the next fetch starts, in turn */
static bool position_known = false; /* Share.published exact */
static bool behind_logged = false;	/* said that Kafka is ahead */
static bool output_topic_checked = false;
static bool output_wait_logged = false;	/* said we wait for the output topic */

/* filled by the delivery reports of the transaction in progress */
static Landed *landed = NULL;
static int	nlanded = 0;
static int	landed_size = 0;
static bool delivery_failed = false;

static void abort_transaction(void);

/* the Kafka transaction started by pkj_publish_start(), if any */
static bool txn_open = false;
static int	txn_count = 0;
static int64 txn_last_id = -1;

static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr position_plan = NULL;
static SPIPlanPtr handed_out_plan = NULL;
static SPIPlanPtr record_plan = NULL;
static SPIPlanPtr ahead_plan = NULL;

/*
 * pkj_delivery_report
 *		librdkafka's delivery report callback, served from the worker's
 *		thread by rd_kafka_poll() and rd_kafka_flush().
 */
void
pkj_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	int64		id = (int64) (intptr_t) msg->_private;
	rd_kafka_headers_t *headers;
	const void *value;
	size_t		size;
	char		text[16];
	int32		share;
	int			i;

	if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		delivery_failed = true;
		pkj_kafka_note_error(rd_kafka_err2str(msg->err));
		return;
	}
	if (rd_kafka_message_headers(msg, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		rd_kafka_header_get_last(headers, "pgkafka_join.share", &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		size >= sizeof(text))
	{
		delivery_failed = true;
		return;
	}
	memcpy(text, value, size);
	text[size] = '\0';
	share = atoi(text);

	for (i = 0; i < nlanded; i++)
		if (landed[i].partition == msg->partition && landed[i].share == share)
			break;
	if (i == nlanded)
	{
		if (nlanded == landed_size)
		{
			landed_size = Max(64, landed_size * 2);
			landed = landed ? repalloc(landed, landed_size * sizeof(Landed))
				: MemoryContextAlloc(TopMemoryContext, landed_size * sizeof(Landed));
		}
		landed[i].partition = msg->partition;
		landed[i].share = share;
		landed[i].next_offset = -1;
		landed[i].last_id = -1;
		nlanded++;
	}
	landed[i].next_offset = Max(landed[i].next_offset, msg->offset + 1);
	landed[i].last_id = Max(landed[i].last_id, id);
}

/* Forget the positions: they are read again from Kafka before the next batch */
void
pkj_publisher_reset(void)
{
	position_known = false;
	output_topic_checked = false;
	/* a transaction left open is ended by the next producer */
	txn_open = false;
}

static int
share_cmp(const void *a, const void *b)
{
	int32		sa = ((const Share *) a)->share;
	int32		sb = ((const Share *) b)->share;

	return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/*
 * pkj_publisher_set_shares
 *		The shares this worker publishes from now on; their positions are
 *		read again before the next batch.  "server": every share of the
 *		server, whose results lost by PostgreSQL any worker takes back.
 */
void
pkj_publisher_set_shares(List *list, List *server)
{
	ListCell   *lc;

	/* a transaction under way belongs to the shares it was started for */
	if (txn_open)
	{
		txn_open = false;
		abort_transaction();
	}

	if (shares)
		pfree(shares);
	nshares = list_length(list);
	shares = MemoryContextAllocZero(TopMemoryContext, Max(nshares, 1) * sizeof(Share));
	nshares = 0;
	foreach(lc, list)
		shares[nshares++].share = lfirst_int(lc);
	qsort(shares, nshares, sizeof(Share), share_cmp);
	first_share = 0;
	if (server_shares)
		pfree(server_shares);
	server_shares = MemoryContextAlloc(TopMemoryContext, Max(list_length(server), 1) * sizeof(int32));
	nserver_shares = 0;
	foreach(lc, server)
		server_shares[nserver_shares++] = lfirst_int(lc);
	position_known = false;
}

static Share *
find_share(int32 share)
{
	Share		key = {.share = share};

	return bsearch(&key, shares, nshares, sizeof(Share), share_cmp);
}

/* Where a share's position is committed in Kafka: topic and partition */
static void
position_key(int32 share, const char **topic, int32 *partition)
{
	if (share < 0)
	{
		/* the position of version 1.0, before there were shares */
		*topic = pkj_kafka.output_topic;
		*partition = 0;
	}
	else
	{
		*topic = pkj_kafka.ratings_topic;
		*partition = share;
	}
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
		rd_kafka_resp_err_t code = rd_kafka_error_code(error);

		kafka_error_report(LOG, error, what);
		rd_kafka_error_destroy(error);
		if (code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
			code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("the producer of pgkafka_join was fenced: another producer with transactional id \"%s\" started",
							pkj_kafka.transactional_id),
					 errdetail("The brokers aborted the Kafka transaction in progress; none of its results is visible.  A server that took over this worker's partitions fences their producer, and so does a second worker with the same pgkafka_join.transactional_id."),
					 errhint("The worker starts over with new Kafka handles, and consumes and publishes only the partitions its claims hold.")));
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

/*
 * What PostgreSQL knows of the positions: the highest id output_position
 * says was published, per share (into Share.published), and the highest id
 * the sequence ever handed out.
 */
static void
stored_positions(int64 *handed_out)
{
	bool		isnull;

	pkj_begin_spi("reading the output positions");
	if (position_plan == NULL)
	{
		position_plan = pkj_keep_plan("SELECT share, last_id FROM pgkafka_join.published_ids()",
									  0, NULL);
		handed_out_plan = pkj_keep_plan("SELECT CASE WHEN is_called THEN last_value "
										"ELSE last_value - 1 END "
										"FROM pgkafka_join.rated_movies_id_seq",
										0, NULL);
	}
	if (SPI_execute_plan(position_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.output_position");
	for (int i = 0; i < nshares; i++)
		shares[i].published = 0;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Share	   *sh = find_share(DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
																SPI_tuptable->tupdesc, 1, &isnull)));

		if (sh)
			sh->published = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));
	}
	if (SPI_execute_plan(handed_out_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.rated_movies_id_seq");
	*handed_out = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	pkj_end_spi();
}

/*
 * Record in control.ahead_shares which of this worker's shares are ahead
 * of PostgreSQL ("ahead", flags per share): added while they are, removed
 * once they are not.  advance_result_ids() renumbers the results of those
 * shares only, so that it never renumbers a result another worker, whose
 * shares are not ahead, is publishing.  Written only when it changes.
 */
static void
record_ahead_shares(const bool *ahead)
{
	Datum	   *mine = palloc(Max(nshares, 1) * sizeof(Datum));
	Datum	   *behind = palloc(Max(nshares, 1) * sizeof(Datum));
	int			nbehind = 0;
	Datum		args[2];
	static Oid	argtypes[] = {INT4ARRAYOID, INT4ARRAYOID};

	for (int i = 0; i < nshares; i++)
	{
		mine[i] = Int32GetDatum(shares[i].share);
		if (ahead[i])
			behind[nbehind++] = Int32GetDatum(shares[i].share);
	}
	args[0] = PointerGetDatum(construct_array(mine, nshares, INT4OID, sizeof(int32),
											  true, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(behind, nbehind, INT4OID, sizeof(int32),
											  true, TYPALIGN_INT));
	pkj_begin_spi("recording the shares ahead of PostgreSQL");
	if (ahead_plan == NULL)
		ahead_plan = pkj_keep_plan("UPDATE pgkafka_join.control c "
								   "SET ahead_shares = n.shares "
								   "FROM (SELECT NULLIF(ARRAY(SELECT DISTINCT s FROM unnest("
								   "  ARRAY(SELECT s FROM unnest(c0.ahead_shares) s WHERE s <> ALL ($1)) "
								   "  OPERATOR(pg_catalog.||) $2) s ORDER BY s), '{}') AS shares "
								   "FROM pgkafka_join.control c0) n "
								   "WHERE c.ahead_shares IS DISTINCT FROM n.shares",
								   2, argtypes);
	if (SPI_execute_plan(ahead_plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update pgkafka_join.control");
	pkj_end_spi();
}

/* The shares' positions as text, for the log: "0: 12, 3: 40" */
static char *
positions_text(void)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < nshares; i++)
		appendStringInfo(&buf, "%s%d: " INT64_FORMAT, i > 0 ? ", " : "",
						 shares[i].share, shares[i].published);
	return buf.data;
}

/*
 * The committed offsets of group "group" for the partitions of "parts"
 * (into them), through a handle of that group.
 */
static rd_kafka_resp_err_t
group_committed(const char *group, rd_kafka_topic_partition_list_t *parts)
{
	char	   *problem;
	rd_kafka_t *rk = pkj_kafka_group_handle(group, &problem);

	if (rk == NULL)
	{
		pkj_kafka_note_error(problem);
		return RD_KAFKA_RESP_ERR__INVALID_ARG;
	}
	return rd_kafka_committed(rk, parts, KAFKA_TIMEOUT_MS);
}

/*
 * Shares that have no position in the shares' group yet take the one that
 * versions up to 1.1 committed to the group named without
 * "publish-positions" (an upgraded installation's, until its first
 * transaction after the upgrade).  No transaction commits there any more,
 * so what it holds is final.
 */
static rd_kafka_resp_err_t
previous_positions(rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *missing = rd_kafka_topic_partition_list_new(parts->cnt);
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

	for (int i = 0; i < parts->cnt; i++)
		if (parts->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && parts->elems[i].offset < 0)
			rd_kafka_topic_partition_list_add(missing, parts->elems[i].topic,
											  parts->elems[i].partition);
	if (missing->cnt > 0)
		err = group_committed(pkj_kafka.previous_shares_group, missing);
	for (int i = 0; i < missing->cnt && err == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
	{
		rd_kafka_topic_partition_t *tp =
			rd_kafka_topic_partition_list_find(parts, missing->elems[i].topic,
											   missing->elems[i].partition);

		tp->offset = missing->elems[i].offset;
		tp->err = missing->elems[i].err;
	}
	rd_kafka_topic_partition_list_destroy(missing);
	return err;
}

/*
 * The positions committed in Kafka for shares ids[n], into *parts (the
 * caller destroys it): those of shares >= 0 in the shares' group (or, where
 * it has none, the group of versions up to 1.1), that of share -1 in
 * control.kafka_group, read by the consumer of that group.
 */
static rd_kafka_resp_err_t
committed_positions(const int32 *ids, int n, rd_kafka_topic_partition_list_t **parts)
{
	rd_kafka_topic_partition_list_t *legacy = rd_kafka_topic_partition_list_new(1);
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

	*parts = rd_kafka_topic_partition_list_new(Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		const char *topic;
		int32		partition;

		position_key(ids[i], &topic, &partition);
		rd_kafka_topic_partition_list_add(ids[i] < 0 ? legacy : *parts, topic, partition);
	}
	if ((*parts)->cnt > 0)
	{
		err = group_committed(pkj_kafka.shares_group, *parts);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			err = previous_positions(*parts);
	}
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR && legacy->cnt > 0)
	{
		err = rd_kafka_committed(pkj_kafka.consumer, legacy, KAFKA_TIMEOUT_MS);
		{
			rd_kafka_topic_partition_t *tp =
				rd_kafka_topic_partition_list_add(*parts, legacy->elems[0].topic,
												  legacy->elems[0].partition);

			tp->offset = legacy->elems[0].offset;
			tp->err = legacy->elems[0].err;
		}
	}
	rd_kafka_topic_partition_list_destroy(legacy);
	return err;
}

/*
 * Are the shares' positions known since the handles were made (or the
 * shares changed)?  Until they are, the worker stores nothing.
 */
bool
pkj_publisher_position_known(void)
{
	return position_known;
}

/*
 * Complete or abort, once per producer, what a previous producer of the
 * same transactional id left open.  Returns false if the brokers could not
 * tell yet.
 */
static bool
transactions_ready(void)
{
	rd_kafka_error_t *error;

	if (pkj_kafka.transactions_ready)
		return true;
	pgstat_report_activity(STATE_RUNNING, "initializing Kafka transactions");
	error = rd_kafka_init_transactions(pkj_kafka.producer, KAFKA_TIMEOUT_MS);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (error)
	{
		check_fatal(error, "initialize transactions");
		kafka_error_report(LOG, error, "initialize transactions");
		rd_kafka_error_destroy(error);
		return false;
	}
	pkj_kafka.transactions_ready = true;
	return true;
}

/*
 * The publish position committed in Kafka of each share of ids[n], -1 where
 * none is: into kafka_position[], one per share.  Returns false, having
 * logged why, if the brokers could not tell.
 */
static bool
read_kafka_positions(const int32 *ids, int n, int64 *kafka_position)
{
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err = committed_positions(ids, n, &parts);

	for (int i = 0; i < n && err == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
	{
		const char *topic;
		int32		partition;
		rd_kafka_topic_partition_t *tp;

		position_key(ids[i], &topic, &partition);
		tp = rd_kafka_topic_partition_list_find(parts, topic, partition);
		kafka_position[i] = -1;
		/* a topic that does not exist (yet) holds no position */
		if (tp == NULL || tp->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
			continue;
		if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR)
			err = tp->err;
		else if (tp->offset >= 0)
			kafka_position[i] = tp->offset;
	}
	rd_kafka_topic_partition_list_destroy(parts);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return true;
	pkj_kafka_note_error(rd_kafka_err2str(err));
	ereport(LOG,
			(errmsg("could not read the publish positions from Kafka: %s",
					rd_kafka_err2str(err)),
			 err == RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT ?
			 errdetail("A transaction of another producer is still open on them; it ends when its producer starts again or when the brokers time it out (transaction.timeout.ms).") : 0));
	return false;
}

/*
 * The output topic is ahead of PostgreSQL: results up to id "ahead" were
 * published, PostgreSQL numbered only up to handed_out.  Say so, once, in
 * the log and in status.
 */
static void
report_ahead(int64 ahead, int64 handed_out)
{
	int64		recorded = 0;

	for (int i = 0; i < nshares; i++)
		recorded = Max(recorded, shares[i].published);
	pkj_status_set_state("stopped: the output topic is ahead of PostgreSQL");
	pkj_status_set_error(psprintf("results up to id " INT64_FORMAT " were published, but PostgreSQL numbered results only up to " INT64_FORMAT,
								  ahead, handed_out));
	if (!behind_logged)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgkafka_join stopped: the output topic \"%s\" is ahead of PostgreSQL",
						pkj_kafka.output_topic),
				 errdetail("Results up to id " INT64_FORMAT " were published to Kafka; PostgreSQL numbered results only up to id " INT64_FORMAT " and recorded publishing up to id " INT64_FORMAT ".  The database lost commits or was restored to an earlier state; new results would be numbered below the published position and never sent.",
						   ahead, handed_out, recorded),
				 errhint("To go on, run SELECT pgkafka_join.advance_result_ids(" INT64_FORMAT "): results not known to be published, and those of input consumed again, are then published with new ids.",
						 ahead)));
	behind_logged = true;
}

/*
 * Publishing goes on after the positions: for each share, the higher of
 * Kafka's and PostgreSQL's record.  The position committed in Kafka is
 * exact.  PostgreSQL's record can only lag it, unless the group's offsets
 * expired or were reset on the brokers: those results are on the topic all
 * the same, so the higher one counts.
 */
static void
adopt_positions(const int64 *kafka_position)
{
	int64		last = -1;

	if (behind_logged)
		ereport(LOG,
				(errmsg("pgkafka_join publishes again: results are numbered after the position in Kafka")));
	behind_logged = false;

	for (int i = 0; i < nshares; i++)
	{
		if (shares[i].published > kafka_position[i] && kafka_position[i] >= 0)
			ereport(LOG,
					(errmsg("pgkafka_join.output_position is ahead of the position committed in Kafka; publishing after the former"),
					 errdetail("Share %d: recorded in PostgreSQL: " INT64_FORMAT "; committed in Kafka: " INT64_FORMAT ".",
							   shares[i].share, shares[i].published, kafka_position[i])));
		shares[i].published = Max(shares[i].published, kafka_position[i]);
		last = Max(last, shares[i].published);
	}
	position_known = true;
	pkj_status_count_published(0, last);
	ereport(LOG,
			(errmsg("pgkafka_join publishes to \"%s\" after results %s",
					pkj_kafka.output_topic, positions_text()),
			 errdetail("Per share (input partition), the last result id published.")));
}

/*
 * Taking back what PostgreSQL lost
 * --------------------------------
 * A database that lost commits the worker had published (a failover to an
 * asynchronous standby, a restore from a backup, a point-in-time recovery)
 * lacks results that are on the output topic: a share's position in Kafka
 * is above every id of the share PostgreSQL holds.  Their ratings would be
 * consumed again and published a second time under new ids.  Instead, the
 * worker reads the records of those shares between what PostgreSQL knows
 * and the position in Kafka (read_committed: those the position moved past)
 * and gives them to recover_results(): each becomes the row of rated_movies
 * it was, and its rating, found by the record's pgkafka_join.input header,
 * is recorded as joined, now or when it is consumed again (see
 * recovered_rows() in join.c).  What was published is what happened: the
 * rating keeps the result it was published with, whatever movie version
 * it would now be joined with.
 */
typedef enum Recovery
{
	RECOVERY_NOT_NEEDED,
	RECOVERY_DONE,
	RECOVERY_LATER,				/* the brokers could not tell yet: retry */
	RECOVERY_IMPOSSIBLE			/* the records are gone, or carry no input */
} Recovery;

/* A share of the server, as the take-back sees it */
typedef struct LostShare
{
	int32		share;
	int64		position;		/* committed in Kafka, -1 if none */
	int64		after;			/* the highest id PostgreSQL holds */
	bool		lost;			/* position > after: results to take back */
	bool		found;			/* the record of the position was read */
} LostShare;

/* The records taken back, as recover_results() takes them */
typedef struct RecoveredRecords
{
	int			parts;			/* given to recover_results() so far */
	int			n;
	int			size;
	Datum	   *ids;
	Datum	   *shares;
	Datum	   *rating_partitions;
	Datum	   *rating_offsets;
	Datum	   *values;
	Datum	   *published_at;
	Datum	   *output_partitions;
	Datum	   *output_offsets;
} RecoveredRecords;

/*
 * Results up to this id could not be taken back (deleted from the topic,
 * or published by a version that did not name their rating): not tried
 * again by this process; the check of the positions stops the worker
 * instead, as before there was a way to take them back.
 */
static int64 abandoned_up_to = -1;

/* said that the records to take back cannot be read yet */
static bool recovery_wait_logged = false;

/* Records read from the output topic per call of recover_results() */
#define RECOVERY_PART 256

/* How long a scan of the output topic may go without a record */
#define RECOVERY_IDLE_MS 30000

/* A header of a record as a number; false if it has none */
static bool
header_number(rd_kafka_headers_t *headers, const char *name, int64 *number)
{
	const void *value;
	size_t		size;
	char		text[32];
	char	   *end;

	if (headers == NULL ||
		rd_kafka_header_get_last(headers, name, &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		size == 0 || size >= sizeof(text))
		return false;
	memcpy(text, value, size);
	text[size] = '\0';
	*number = strtoi64(text, &end, 10);
	return *end == '\0';
}

/* The rating a record stands for: its pgkafka_join.input header, "p:o" */
static bool
header_input(rd_kafka_headers_t *headers, int32 *partition, int64 *offset)
{
	const void *value;
	size_t		size;
	char		text[48];
	char	   *colon;
	char	   *end;

	if (headers == NULL ||
		rd_kafka_header_get_last(headers, "pgkafka_join.input", &value, &size) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		size == 0 || size >= sizeof(text))
		return false;
	memcpy(text, value, size);
	text[size] = '\0';
	colon = strchr(text, ':');
	if (colon == NULL)
		return false;
	*partition = (int32) strtol(text, &end, 10);
	if (end != colon)
		return false;
	*offset = strtoi64(colon + 1, &end, 10);
	return *end == '\0';
}

static void
add_recovered(RecoveredRecords *rec, const rd_kafka_message_t *msg, int64 id,
			  int32 share, int32 rating_partition, int64 rating_offset)
{
	rd_kafka_timestamp_type_t tstype;
	int64		ms = rd_kafka_message_timestamp(msg, &tstype);

	if (rec->n == rec->size)
	{
		rec->size = Max(1024, rec->size * 2);
#define GROW(a) (a = rec->n == 0 ? palloc(rec->size * sizeof(Datum)) : repalloc(a, rec->size * sizeof(Datum)))
		GROW(rec->ids);
		GROW(rec->shares);
		GROW(rec->rating_partitions);
		GROW(rec->rating_offsets);
		GROW(rec->values);
		GROW(rec->published_at);
		GROW(rec->output_partitions);
		GROW(rec->output_offsets);
#undef GROW
	}
	rec->ids[rec->n] = Int64GetDatum(id);
	rec->shares[rec->n] = Int32GetDatum(share);
	rec->rating_partitions[rec->n] = Int32GetDatum(rating_partition);
	rec->rating_offsets[rec->n] = Int64GetDatum(rating_offset);
	rec->values[rec->n] = PointerGetDatum(cstring_to_text_with_len(msg->payload ? msg->payload : "",
																	(int) msg->len));
	if (ms < 0)
		rec->published_at[rec->n] = TimestampTzGetDatum(GetCurrentTimestamp());
	else
		rec->published_at[rec->n] =
			TimestampTzGetDatum((ms - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000) * 1000);
	rec->output_partitions[rec->n] = Int32GetDatum(msg->partition);
	rec->output_offsets[rec->n] = Int64GetDatum(msg->offset);
	rec->n++;
}

/*
 * Give the records read so far to recover_results(), in the transaction
 * the take-back holds open (all its parts commit together, or none), and
 * forget them: what is read is held in memory RECOVERY_PART records at a
 * time, however much there is to take back.  Adds to *taken the results
 * taken back.  False if the extension was replaced meanwhile.
 */
static bool
flush_recovered(RecoveredRecords *rec, MemoryContext cxt, int64 *taken)
{
	Oid			types[9] = {TEXTOID, INT8ARRAYOID, INT4ARRAYOID, INT4ARRAYOID, INT8ARRAYOID,
	TEXTARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, INT8ARRAYOID};
	Datum		values[9];
	bool		isnull;

	if (rec->n == 0)
		return true;
	values[0] = CStringGetTextDatum(pkj_kafka.output_topic);
	values[1] = PointerGetDatum(construct_array(rec->ids, rec->n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[2] = PointerGetDatum(construct_array(rec->shares, rec->n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(rec->rating_partitions, rec->n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_array(rec->rating_offsets, rec->n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[5] = PointerGetDatum(construct_array(rec->values, rec->n, TEXTOID, -1, false, TYPALIGN_INT));
	values[6] = PointerGetDatum(construct_array(rec->published_at, rec->n, TIMESTAMPTZOID, sizeof(TimestampTz), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[7] = PointerGetDatum(construct_array(rec->output_partitions, rec->n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
	values[8] = PointerGetDatum(construct_array(rec->output_offsets, rec->n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	pkj_begin_spi("taking back results from the output topic");
	if (!pkj_lock_extension(pkj_kafka.extension_oid))
	{
		pkj_end_spi();
		return false;
	}
	if (SPI_execute_with_args("SELECT pgkafka_join.recover_results($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.recover_results()");
	*taken += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pkj_end_spi();
	rec->parts++;
	rec->n = 0;
	rec->size = 0;
	MemoryContextReset(cxt);
	return true;
}

/*
 * Where to read each output partition from: after the offset output_position
 * records for the share (the share's records there after it have higher
 * ids), the lowest of the shares to take back; from the beginning where one
 * of them has no record.  Into start[nparts].
 */
static void
recovery_start_offsets(const LostShare *ls, int n, int nparts, int64 *start)
{
	Datum	   *elems = palloc(Max(n, 1) * sizeof(Datum));
	int			nlost = 0;
	int		   *rows = palloc0(nparts * sizeof(int));
	Oid			argtypes[2] = {TEXTOID, INT4ARRAYOID};
	Datum		args[2];
	bool		isnull;

	for (int i = 0; i < n; i++)
		if (ls[i].lost)
			elems[nlost++] = Int32GetDatum(ls[i].share);
	for (int p = 0; p < nparts; p++)
		start[p] = INT64_MAX;
	pkj_begin_spi("reading the output positions");
	args[0] = CStringGetTextDatum(pkj_kafka.output_topic);
	args[1] = PointerGetDatum(construct_array(elems, nlost, INT4OID, sizeof(int32), true,
											  TYPALIGN_INT));
	if (SPI_execute_with_args("SELECT kafka_partition, next_offset FROM pgkafka_join.output_position "
							  "WHERE topic = $1 AND share = ANY ($2)",
							  2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.output_position");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int64		next = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (p < 0 || p >= nparts)
			continue;
		start[p] = Min(start[p], next);
		rows[p]++;
	}
	pkj_end_spi();
	for (int p = 0; p < nparts; p++)
		if (rows[p] < nlost)
			start[p] = RD_KAFKA_OFFSET_BEGINNING;
}

/*
 * Read the output topic from start[] to its end (read_committed: the last
 * stable offset), keeping the records of the shares marked lost whose id
 * lies after what PostgreSQL holds and up to the position.
 */
static Recovery
scan_output_topic(rd_kafka_t *reader, LostShare *ls, int n, int nparts, const int64 *start,
				  RecoveredRecords *rec, MemoryContext cxt, int64 *taken)
{
	rd_kafka_topic_partition_list_t *parts;
	/* not in cxt, which each part given to recover_results() empties */
	bool	   *at_end = MemoryContextAllocZero(MemoryContextGetParent(cxt),
												nparts * sizeof(bool));
	int			ends = 0;
	TimestampTz last_progress = GetCurrentTimestamp();
	Recovery	result = RECOVERY_DONE;

	parts = rd_kafka_topic_partition_list_new(nparts);
	for (int p = 0; p < nparts; p++)
	{
		int64		low,
					high;

		/* records deleted from the topic cannot be taken back */
		if (rd_kafka_query_watermark_offsets(reader, pkj_kafka.output_topic, p, &low, &high,
											 KAFKA_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			result = RECOVERY_LATER;
			break;
		}
		if (low > 0 && (start[p] == RD_KAFKA_OFFSET_BEGINNING || start[p] < low))
		{
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pgkafka_join cannot take back the results PostgreSQL lost: partition %d of the output topic \"%s\" starts at offset " INT64_FORMAT,
							p, pkj_kafka.output_topic, low),
					 errdetail("Records before it were deleted by the topic's retention; they may be results PostgreSQL lost.")));
			result = RECOVERY_IMPOSSIBLE;
			break;
		}
		rd_kafka_topic_partition_list_add(parts, pkj_kafka.output_topic, p)->offset = start[p];
	}
	if (result == RECOVERY_DONE && rd_kafka_assign(reader, parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
		result = RECOVERY_LATER;
	rd_kafka_topic_partition_list_destroy(parts);

	while (result == RECOVERY_DONE && ends < nparts)
	{
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(reader, 100);
		rd_kafka_headers_t *headers;
		int64		id,
					share,
					rating_offset;
		int32		rating_partition;
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (msg == NULL)
		{
			if (TimestampDifferenceExceeds(last_progress, GetCurrentTimestamp(), RECOVERY_IDLE_MS))
			{
				ereport(LOG,
						(errmsg("could not read the output topic \"%s\" to its end",
								pkj_kafka.output_topic)));
				result = RECOVERY_LATER;
			}
			continue;
		}
		last_progress = GetCurrentTimestamp();
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			if (msg->partition >= 0 && msg->partition < nparts && !at_end[msg->partition])
			{
				at_end[msg->partition] = true;
				ends++;
			}
			rd_kafka_message_destroy(msg);
			continue;
		}
		if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			pkj_kafka_note_error(rd_kafka_message_errstr(msg));
			ereport(LOG,
					(errmsg("could not read the output topic \"%s\": %s",
							pkj_kafka.output_topic, rd_kafka_message_errstr(msg))));
			rd_kafka_message_destroy(msg);
			result = RECOVERY_LATER;
			break;
		}
		if (rd_kafka_message_headers(msg, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR)
			headers = NULL;
		if (!header_number(headers, "pgkafka_join.id", &id) ||
			!header_number(headers, "pgkafka_join.share", &share))
		{
			rd_kafka_message_destroy(msg);
			continue;			/* not a result of pgkafka_join */
		}
		for (i = 0; i < n; i++)
			if (ls[i].lost && ls[i].share == share)
				break;
		if (i == n || id <= ls[i].after || id > ls[i].position)
		{
			rd_kafka_message_destroy(msg);
			continue;
		}
		if (!header_input(headers, &rating_partition, &rating_offset))
		{
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pgkafka_join cannot take back result " INT64_FORMAT " from the output topic \"%s\": its record names no rating",
							id, pkj_kafka.output_topic),
					 errdetail("Partition %d, offset " INT64_FORMAT " has no pgkafka_join.input header: it was published by a version before 1.3.",
							   msg->partition, msg->offset)));
			rd_kafka_message_destroy(msg);
			result = RECOVERY_IMPOSSIBLE;
			break;
		}
		add_recovered(rec, msg, id, (int32) share, rating_partition, rating_offset);
		if (id == ls[i].position)
			ls[i].found = true;
		rd_kafka_message_destroy(msg);
		if (rec->n >= RECOVERY_PART && !flush_recovered(rec, cxt, taken))
			result = RECOVERY_LATER;
	}
	return result;
}

/*
 * Take back the results on the output topic that PostgreSQL lost, of every
 * share of the server, not only this worker's: a rating consumed by this
 * worker may have its result in another worker's share (the movie's
 * partition, when it came later and the topics are keyed otherwise), and
 * must not be stored before that result is taken back.  Whichever worker
 * comes first takes a share back; recover_results() skips what another
 * took back already.
 */
static Recovery
recover_lost_results(void)
{
	static SPIPlanPtr held_plan = NULL;
	LostShare  *ls = palloc0(Max(nserver_shares, 1) * sizeof(LostShare));
	int64	   *position = palloc(Max(nserver_shares, 1) * sizeof(int64));
	Datum	   *elems = palloc(Max(nserver_shares, 1) * sizeof(Datum));
	int64	   *start;
	int			n = nserver_shares;
	int			nlost = 0;
	int			nparts;
	RecoveredRecords rec = {0};
	Recovery	result;
	rd_kafka_t *reader;
	char	   *problem;
	int64		taken = 0;
	MemoryContext cxt;
	MemoryContext old;
	Oid			argtypes[2] = {INT4ARRAYOID, TEXTOID};
	Datum		args[2];
	StringInfoData detail;

	if (n == 0)
		return RECOVERY_NOT_NEEDED;
	for (int i = 0; i < n; i++)
	{
		ls[i].share = server_shares[i];
		elems[i] = Int32GetDatum(server_shares[i]);
	}
	/* Kafka first: a share's results are stored before they are published */
	if (!read_kafka_positions(server_shares, n, position))
		return RECOVERY_LATER;

	/* what PostgreSQL holds of each share: its results, output_position */
	pkj_begin_spi("reading the results held");
	if (held_plan == NULL)
		held_plan = pkj_keep_plan("SELECT greatest((SELECT max(r.id) FROM pgkafka_join.rated_movies r "
								  "WHERE r.share = s.share), "
								  "(SELECT max(op.last_id) FROM pgkafka_join.output_position op "
								  "WHERE op.topic = $2 AND op.share = s.share)), "
								  "(SELECT rp.last_id FROM pgkafka_join.received_partitions rp "
								  "WHERE rp.kafka_partition = s.share AND rp.received_at IS NOT NULL) "
								  "FROM unnest($1) WITH ORDINALITY AS s(share, n) ORDER BY s.n",
								  2, argtypes);
	args[0] = PointerGetDatum(construct_array(elems, n, INT4OID, sizeof(int32), true,
											  TYPALIGN_INT));
	args[1] = CStringGetTextDatum(pkj_kafka.output_topic);
	if (SPI_execute_plan(held_plan, args, NULL, true, 0) != SPI_OK_SELECT ||
		SPI_processed != (uint64) n)
		elog(ERROR, "could not read pgkafka_join.rated_movies");
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		bool		none_received;
		Datum		held = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		Datum		received = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2,
											 &none_received);

		/* a share handed over: published up to the handover's last id */
		ls[i].position = none_received ? position[i] :
			Max(position[i], DatumGetInt64(received));
		ls[i].after = isnull ? 0 : DatumGetInt64(held);
		ls[i].lost = ls[i].position > ls[i].after && ls[i].position > abandoned_up_to;
		nlost += ls[i].lost;
	}
	pkj_end_spi();
	if (nlost == 0)
		return RECOVERY_NOT_NEEDED;

	nparts = pkj_kafka_partition_count(pkj_kafka.producer, pkj_kafka.output_topic, KAFKA_TIMEOUT_MS);
	if (nparts <= 0)
		return RECOVERY_LATER;
	pkj_status_set_state("taking back results from the output topic");
	start = palloc(nparts * sizeof(int64));
	recovery_start_offsets(ls, n, nparts, start);

	reader = pkj_kafka_reader(&problem);
	if (reader == NULL)
	{
		pkj_kafka_note_error(problem);
		ereport(LOG, (errmsg("could not read the output topic \"%s\": %s",
							 pkj_kafka.output_topic, problem)));
		return RECOVERY_LATER;
	}
	cxt = AllocSetContextCreate(CurrentMemoryContext, "pgkafka_join recovery",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	/* the parts given to recover_results() are one transaction */
	pkj_hold_transaction();
	PG_TRY();
	{
		result = scan_output_topic(reader, ls, n, nparts, start, &rec, cxt, &taken);
	}
	PG_FINALLY();
	{
		rd_kafka_destroy(reader);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);

	initStringInfo(&detail);
	for (int i = 0; i < n && result == RECOVERY_DONE; i++)
	{
		if (!ls[i].lost)
			continue;
		if (!ls[i].found)
		{
			/* a transaction of another producer holds the topic's end back */
			ereport(recovery_wait_logged ? DEBUG1 : LOG,
					(errmsg("pgkafka_join waits to take back results from the output topic \"%s\": result " INT64_FORMAT " of share %d is not readable yet",
							pkj_kafka.output_topic, ls[i].position, ls[i].share)));
			recovery_wait_logged = true;
			result = RECOVERY_LATER;
		}
		appendStringInfo(&detail, "%sshare %d: after " INT64_FORMAT " up to " INT64_FORMAT,
						 detail.len > 0 ? "; " : "", ls[i].share, ls[i].after, ls[i].position);
	}
	if (result == RECOVERY_DONE && !flush_recovered(&rec, cxt, &taken))
		result = RECOVERY_LATER;
	pkj_end_held_transaction(result == RECOVERY_DONE);
	if (result == RECOVERY_DONE)
	{
		recovery_wait_logged = false;
		/* another worker may have taken them back first */
		ereport(taken > 0 ? LOG : DEBUG1,
				(errmsg("pgkafka_join took back " INT64_FORMAT " results from the output topic \"%s\"",
						taken, pkj_kafka.output_topic),
				 errdetail("Results on the topic that PostgreSQL lacked (lost, or published by the server that handed their partitions over): result ids, %s; read in %d parts, committed together.  Their ratings are recorded as published: consumed again, they are not published twice.",
						   detail.data, rec.parts)));
	}
	if (result == RECOVERY_IMPOSSIBLE)
	{
		for (int i = 0; i < n; i++)
			if (ls[i].lost)
				abandoned_up_to = Max(abandoned_up_to, ls[i].position);
	}
	MemoryContextDelete(cxt);
	return result;
}

/*
 * pkj_publisher_position
 *		Make the producer ready for transactions and learn where publishing
 *		stands, having taken back the results PostgreSQL lost.
 *		PKJ_POSITION_KNOWN: the shares' positions are exact.
 *		PKJ_POSITION_UNKNOWN: the brokers could not tell yet (logged); try
 *		again later.  PKJ_POSITION_BEHIND: the output topic is ahead of
 *		PostgreSQL and what it lacks could not be taken back; nothing may be
 *		stored or published until advance_result_ids() (logged once, shown
 *		in status).
 */
PkjPosition
pkj_publisher_position(void)
{
	int64	   *kafka_position;
	int32	   *ids;
	int64		handed_out;
	int64		ahead = -1;
	bool	   *shares_ahead;

	if (position_known)
		return PKJ_POSITION_KNOWN;
	/* a previous producer's transaction is completed or aborted first */
	if (!transactions_ready())
		return PKJ_POSITION_UNKNOWN;
	kafka_position = palloc(Max(nshares, 1) * sizeof(int64));
	ids = palloc(Max(nshares, 1) * sizeof(int32));
	for (int i = 0; i < nshares; i++)
		ids[i] = shares[i].share;
	if (!read_kafka_positions(ids, nshares, kafka_position))
		return PKJ_POSITION_UNKNOWN;
	stored_positions(&handed_out);

	/* results on the output topic that PostgreSQL lost are taken back */
	switch (recover_lost_results())
	{
		case RECOVERY_NOT_NEEDED:
		case RECOVERY_IMPOSSIBLE:	/* the check below stops the worker */
			break;
		case RECOVERY_DONE:
			stored_positions(&handed_out);
			break;
		case RECOVERY_LATER:
			return PKJ_POSITION_UNKNOWN;
	}

	shares_ahead = palloc(Max(nshares, 1) * sizeof(bool));
	for (int i = 0; i < nshares; i++)
	{
		ahead = Max(ahead, kafka_position[i]);
		shares_ahead[i] = kafka_position[i] > handed_out;
	}
	record_ahead_shares(shares_ahead);
	if (ahead > handed_out)
	{
		report_ahead(ahead, handed_out);
		return PKJ_POSITION_BEHIND;
	}
	adopt_positions(kafka_position);
	return PKJ_POSITION_KNOWN;
}

/*
 * Is the output topic there?  Checked before the first transaction, so that
 * a missing topic is waited for, logged once, instead of failing every
 * transaction.  Asked through the producer: the answer also gives it the
 * topic's partitions and their leaders, without which the first records it
 * is given would wait for its next metadata refresh (the first transaction
 * after a restart took a second to commit).
 */
static bool
output_topic_ready(void)
{
	int			n;

	if (output_topic_checked)
		return true;
	n = pkj_kafka_partition_count(pkj_kafka.producer, pkj_kafka.output_topic, KAFKA_TIMEOUT_MS);
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
 * Read the next results after the shares' positions, in id order within
 * each share, at most batch_size of them, into memory of the given context.
 * The shares take turns in being read first, so that none waits for
 * another's backlog.
 */
static int
fetch_results(MemoryContext cxt, PendingResult **results)
{
	Oid			argtypes[3] = {INT4ARRAYOID, INT8ARRAYOID, INT4OID};
	Datum		args[3];
	Datum	   *share_elems = palloc(Max(nshares, 1) * sizeof(Datum));
	Datum	   *after_elems = palloc(Max(nshares, 1) * sizeof(Datum));
	PendingResult *res;
	StringInfoData buf;
	int			n;

	pkj_begin_spi("reading results to publish");
	if (!pkj_lock_extension(pkj_kafka.extension_oid))
	{
		/* replaced since the top of the loop: the loop starts over */
		pkj_end_spi();
		*results = NULL;
		return 0;
	}
	if (fetch_plan == NULL)
		fetch_plan = pkj_keep_plan("SELECT r.id, r.share, r.movie_id, r.title, r.release_year, "
								   "r.rating, r.rated_at, r.kafka_partition, r.kafka_offset "
								   "FROM unnest($1, $2) WITH ORDINALITY AS s(share, after, turn) "
								   "CROSS JOIN LATERAL "
								   "(SELECT r.id, r.share, r.movie_id, r.title, r.release_year, "
								   "r.rating, r.rated_at, r.kafka_partition, r.kafka_offset "
								   "FROM pgkafka_join.rated_movies r "
								   "WHERE r.share = s.share AND r.id > s.after "
								   "ORDER BY r.id LIMIT $3) r "
								   "LIMIT $3",
								   3, argtypes);
	for (int i = 0; i < nshares; i++)
	{
		Share	   *sh = &shares[(first_share + i) % nshares];

		share_elems[i] = Int32GetDatum(sh->share);
		after_elems[i] = Int64GetDatum(sh->published);
	}
	first_share = nshares > 0 ? (first_share + 1) % nshares : 0;
	args[0] = PointerGetDatum(construct_array(share_elems, nshares, INT4OID,
											  sizeof(int32), true, TYPALIGN_INT));
	args[1] = PointerGetDatum(construct_array(after_elems, nshares, INT8OID,
											  sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = Int32GetDatum(pkj_batch_size);
	if (SPI_execute_plan(fetch_plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.rated_movies");

	/* the records' keys and values are written here, not in SQL */
	n = SPI_processed;
	res = MemoryContextAlloc(cxt, Max(n, 1) * sizeof(PendingResult));
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		year_null;
		int64		movie_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		Datum		year = SPI_getbinval(tup, desc, 5, &year_null);
		char	   *title = TextDatumGetCString(SPI_getbinval(tup, desc, 4, &isnull));

		res[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		res[i].share = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		res[i].rating_partition = DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull));
		res[i].rating_offset = DatumGetInt64(SPI_getbinval(tup, desc, 9, &isnull));
		res[i].key = MemoryContextAlloc(cxt, MAXINT8LEN + 1);
		pg_lltoa(movie_id, res[i].key);
		resetStringInfo(&buf);
		pkj_format_result(&buf, movie_id, title,
						  !year_null, year_null ? 0 : DatumGetInt32(year),
						  DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull)),
						  DatumGetTimestampTz(SPI_getbinval(tup, desc, 7, &isnull)));
		res[i].value = MemoryContextAlloc(cxt, buf.len + 1);
		memcpy(res[i].value, buf.data, buf.len + 1);
		pfree(title);
	}
	pkj_end_spi();
	*results = res;
	return n;
}

/* Record where the records of the committed transaction landed */
static void
record_landed(void)
{
	Oid			argtypes[5] = {TEXTOID, INT4OID, INT4OID, INT8OID, INT8OID};
	Datum		args[5];

	pkj_begin_spi("recording the output position");
	if (!pkj_lock_extension(pkj_kafka.extension_oid))
	{
		pkj_end_spi();
		return;
	}
	if (record_plan == NULL)
		record_plan = pkj_keep_plan("INSERT INTO pgkafka_join.output_position AS op "
									"(topic, kafka_partition, share, next_offset, last_id, updated_at) "
									"VALUES ($1, $2, $3, $4, $5, now()) "
									"ON CONFLICT (topic, kafka_partition, share) DO UPDATE "
									"SET next_offset = greatest(op.next_offset, excluded.next_offset), "
									"last_id = greatest(op.last_id, excluded.last_id), "
									"updated_at = excluded.updated_at",
									5, argtypes);
	args[0] = CStringGetTextDatum(pkj_kafka.output_topic);
	for (int i = 0; i < nlanded; i++)
	{
		args[1] = Int32GetDatum(landed[i].partition);
		args[2] = Int32GetDatum(landed[i].share);
		args[3] = Int64GetDatum(landed[i].next_offset);
		args[4] = Int64GetDatum(landed[i].last_id);
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
	char		sharetext[16];
	int			sharelen = snprintf(sharetext, sizeof(sharetext), "%d", r->share);
	char		inputtext[48];
	int			inputlen = snprintf(inputtext, sizeof(inputtext), "%d:" INT64_FORMAT,
									r->rating_partition, r->rating_offset);

	for (;;)
	{
		rd_kafka_resp_err_t err;

		err = rd_kafka_producev(pkj_kafka.producer,
								RD_KAFKA_V_TOPIC(pkj_kafka.output_topic),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(r->key, strlen(r->key)),
								RD_KAFKA_V_VALUE(r->value, strlen(r->value)),
								RD_KAFKA_V_HEADER("pgkafka_join.id", idtext, idlen),
								RD_KAFKA_V_HEADER("pgkafka_join.share", sharetext, sharelen),
								RD_KAFKA_V_HEADER("pgkafka_join.input", inputtext, inputlen),
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
 * read_committed consumers, and the same results are sent again.  If a
 * reload comes while the abort is being retried, the transaction is left
 * open and the handles are rebuilt before the next step (the next
 * producer's init_transactions() aborts it): whoever called, the producer
 * must not be used again inside a transaction it believes ended.
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
		{
			/* the caller gives the transaction up */
			pkj_kafka.must_reconnect = true;
			return;
		}
	}
}

/*
 * Add positions to the open Kafka transaction, for one group.  Takes
 * "position".  False if the transaction was given up (aborted, or left for
 * the next producer to end, when a reload is pending).
 */
static bool
send_positions(rd_kafka_topic_partition_list_t *position,
			   rd_kafka_consumer_group_metadata_t *cgmd)
{
	rd_kafka_error_t *error;

	for (;;)
	{
		error = rd_kafka_send_offsets_to_transaction(pkj_kafka.producer, position,
													 cgmd, KAFKA_TIMEOUT_MS);
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
			return false;
		}
		rd_kafka_error_destroy(error);
		rd_kafka_topic_partition_list_destroy(position);
		abort_transaction();
		return false;
	}
	rd_kafka_topic_partition_list_destroy(position);
	return true;
}

/*
 * pkj_publish_start
 *		Start publishing the next batch of results: begin a Kafka transaction
 *		and produce them into it.  librdkafka sends them in the background;
 *		pkj_publish_finish() commits them, with the shares' positions, at
 *		once or after the worker stored its next batch.  Returns the number
 *		of results in the transaction (0: nothing new, no transaction), or
 *		-1 when the brokers could not take them now; the same results are
 *		tried again later.
 */
int64
pkj_publish_start(MemoryContext cxt)
{
	PendingResult *results;
	int			n;
	rd_kafka_error_t *error;

	Assert(!txn_open);
	if (pkj_publisher_position() != PKJ_POSITION_KNOWN || !output_topic_ready())
		return -1;

	n = fetch_results(cxt, &results);
	if (n == 0)
		return 0;

	pgstat_report_activity(STATE_RUNNING, "publishing results");
	error = rd_kafka_begin_transaction(pkj_kafka.producer);
	if (error)
	{
		check_fatal(error, "begin a transaction");
		kafka_error_report(LOG, error, "begin a transaction");
		rd_kafka_error_destroy(error);
		return -1;
	}

	nlanded = 0;
	delivery_failed = false;
	txn_last_id = -1;
	for (int i = 0; i < nshares; i++)
		shares[i].sent = shares[i].published;

	for (int i = 0; i < n; i++)
	{
		Share	   *sh = find_share(results[i].share);

		if (!produce(&results[i]))
		{
			abort_transaction();
			return ConfigReloadPending ? give_up_for_reload() : -1;
		}
		sh->sent = Max(sh->sent, results[i].id);
		txn_last_id = Max(txn_last_id, results[i].id);
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	txn_open = true;
	txn_count = n;
	return n;
}

/* Is a transaction of pkj_publish_start() waiting for pkj_publish_finish()? */
bool
pkj_publish_pending(void)
{
	return txn_open;
}

/*
 * pkj_publish_finish
 *		Commit the transaction pkj_publish_start() began, with the new
 *		positions of the shares.  Returns the number of results published
 *		(0: no transaction was open), or -1 if the transaction was given up:
 *		its results are sent again later.
 */
int64
pkj_publish_finish(void)
{
	rd_kafka_error_t *error;
	rd_kafka_topic_partition_list_t *position;

	if (!txn_open)
		return 0;
	txn_open = false;
	pgstat_report_activity(STATE_RUNNING, "publishing results");

	/* the positions move with the records, atomically */
	for (int group = 0; group < 2; group++)
	{
		/* shares >= 0 in their group, share -1 in control.kafka_group */
		rd_kafka_consumer_group_metadata_t *cgmd = group == 0 ? pkj_kafka.shares_cgmd : pkj_kafka.cgmd;

		position = rd_kafka_topic_partition_list_new(nshares);
		for (int i = 0; i < nshares; i++)
		{
			const char *topic;
			int32		partition;

			if (shares[i].sent == shares[i].published || (shares[i].share < 0) != (group == 1))
				continue;
			position_key(shares[i].share, &topic, &partition);
			rd_kafka_topic_partition_list_add(position, topic, partition)->offset = shares[i].sent;
		}
		if (position->cnt == 0)
		{
			rd_kafka_topic_partition_list_destroy(position);
			continue;
		}
		if (!send_positions(position, cgmd))
			return ConfigReloadPending ? give_up_for_reload() : -1;
	}

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
	for (int i = 0; i < nshares; i++)
		shares[i].published = shares[i].sent;
	pkj_status_count_published(txn_count, txn_last_id);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (!delivery_failed)
		record_landed();
	return txn_count;
}

/*
 * pkj_publish
 *		Publish the next batch of results in one Kafka transaction, start to
 *		commit.  Returns what pkj_publish_finish() does, or 0 when there was
 *		nothing new, -1 when it could not start.
 */
int64
pkj_publish(MemoryContext cxt)
{
	int64		n = pkj_publish_finish();

	if (n < 0)
		return n;
	n = pkj_publish_start(cxt);
	if (n <= 0)
		return n;
	return pkj_publish_finish();
}
