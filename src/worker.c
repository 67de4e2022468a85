/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The launcher and the join worker: processes, loop and signals.
 *
 * Process model
 * -------------
 * The launcher is a static background worker, started with the server
 * (shared_preload_libraries).  It connects to no database: it only looks in
 * pg_database for pgkafka_join.database, and while that exists keeps one
 * join worker running there (a dynamic background worker), restarting it
 * pgkafka_join.retry_interval after it exits.  A missing database is logged
 * once and waited for; nothing crash-loops.
 *
 * The join worker is the single writer of the extension's tables.  It owns
 * the librdkafka handles (kafka.c) and runs one loop:
 *
 *	  1. wait for the extension, for pgkafka_join.brokers, for the topics;
 *	  2. consume up to batch_size messages, or what came within batch_delay;
 *	  3. store them, with their offsets, in one transaction (ingest.c);
 *	  4. publish new results in one Kafka transaction (publish.c).
 *
 * All state a restart needs is in PostgreSQL (input offsets, results) or in
 * Kafka (the publish position), written atomically with what it describes;
 * nothing in this process's memory must survive it.  Any error ends the
 * worker, and the next one starts over from the stored positions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
#include "executor/spi.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* How often the worker re-reads topic metadata for new partitions */
#define METADATA_REFRESH_MS 30000
/* How often it makes sure monthly partitions exist ahead of time */
#define PARTITION_CHECK_MS 3600000
/* How often it logs progress while catching up a backlog */
#define PROGRESS_LOG_MS 10000

/* What the worker waits for, so that each wait is logged once */
typedef enum WaitReason
{
	WAIT_NONE,
	WAIT_BROKERS,
	WAIT_EXTENSION,
	WAIT_PROPERTIES_FILE,
	WAIT_UNREACHABLE,
	WAIT_TOPICS
} WaitReason;

static WaitReason logged_wait = WAIT_NONE;

/* control.offsets_generation when the partitions were last assigned */
static int64 offsets_generation = -1;

void
pkj_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 10;
	strlcpy(worker.bgw_library_name, "pgkafka_join", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "pkj_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "pgkafka_join launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "pgkafka_join launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Sleep on the latch.  A reload (SIGHUP) sets it too; the caller's loop
 * processes it, the worker's comparing the Kafka settings before and after.
 */
static void
wait_latch(long timeout_ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 timeout_ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The oid of pgkafka_join.database, InvalidOid if there is none.  The
 * launcher is connected to no database, so it can only scan the shared
 * catalog pg_database sequentially, as the autovacuum launcher does.
 */
static Oid
lookup_database(void)
{
	Oid			dboid = InvalidOid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), pkj_database) == 0)
		{
			dboid = db->oid;
			break;
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return dboid;
}

/*
 * pkj_launcher_main
 *		Keep one join worker running in pgkafka_join.database.
 */
void
pkj_launcher_main(Datum arg)
{
	bool		logged_missing = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	for (;;)
	{
		BackgroundWorker worker;
		BackgroundWorkerHandle *handle;
		pid_t		pid;
		Oid			dboid;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		dboid = lookup_database();

		if (!OidIsValid(dboid))
		{
			if (!logged_missing)
				ereport(LOG,
						(errmsg("pgkafka_join is waiting for database \"%s\" to exist",
								pkj_database),
						 errhint("Create it, or set pgkafka_join.database and restart the server.")));
			logged_missing = true;
			wait_latch(pkj_retry_interval);
			continue;
		}
		logged_missing = false;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = BGW_NEVER_RESTART;
		worker.bgw_main_arg = ObjectIdGetDatum(dboid);
		worker.bgw_notify_pid = MyProcPid;
		strlcpy(worker.bgw_library_name, "pgkafka_join", BGW_MAXLEN);
		strlcpy(worker.bgw_function_name, "pkj_worker_main", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "pgkafka_join worker for database %s",
				 pkj_database);
		strlcpy(worker.bgw_type, "pgkafka_join worker", BGW_MAXLEN);

		if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start the pgkafka_join worker"),
					 errhint("Raise max_worker_processes.")));
			wait_latch(pkj_retry_interval);
			continue;
		}
		if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
			(void) WaitForBackgroundWorkerShutdown(handle);
		CHECK_FOR_INTERRUPTS();
		pfree(handle);

		/* whatever ended it, wait before starting the next one */
		wait_latch(pkj_retry_interval);
	}
}

/* Log, once until it changes, what the worker is waiting for */
static void
log_wait(WaitReason reason, const char *msg, const char *hint)
{
	if (logged_wait == reason)
		return;
	logged_wait = reason;
	ereport(LOG, (errmsg("%s", msg), hint ? errhint("%s", hint) : 0));
}

/* The oid of the extension in this database, InvalidOid if not installed */
static Oid
extension_oid(void)
{
	Oid			oid;

	StartTransactionCommand();
	oid = get_extension_oid("pgkafka_join", true);
	CommitTransactionCommand();
	return oid;
}

/*
 * pkj_begin_spi / pkj_end_spi
 *		A transaction of its own, with SPI and a snapshot, around one step of
 *		the worker; activity is what pg_stat_activity shows meanwhile.
 */
void
pkj_begin_spi(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (activity)
		pgstat_report_activity(STATE_RUNNING, activity);
}

void
pkj_end_spi(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Run one SQL statement without parameters in a transaction of its own */
static void
run_sql(const char *sql, const char *activity)
{
	pkj_begin_spi(activity);
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "could not run \"%s\"", sql);
	pkj_end_spi();
}

/*
 * Assign every partition of the input topics, at the offsets stored in
 * PostgreSQL (the beginning where none is stored).  Called at start and
 * whenever a topic gains partitions; always between batches, so the stored
 * offsets are exactly where consumption stands.
 */
static bool
assign_partitions(void)
{
	int			nmovies = pkj_kafka_partition_count(pkj_kafka.movies_topic, 5000);
	int			nratings = nmovies < 0 ? -1 :
		pkj_kafka_partition_count(pkj_kafka.ratings_topic, 5000);
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	bool		isnull0;

	if (nmovies < 0 || nratings < 0)
	{
		log_wait(WAIT_UNREACHABLE, psprintf("pgkafka_join cannot reach the Kafka brokers: %s",
											pkj_kafka_last_error),
				 "Check pgkafka_join.brokers and pgkafka_join.kafka_properties.");
		return false;
	}
	if (logged_wait == WAIT_UNREACHABLE)
	{
		/* say so, and log the next outage again */
		ereport(LOG, (errmsg("pgkafka_join reaches the Kafka brokers again")));
		logged_wait = WAIT_NONE;
	}
	if (nmovies == pkj_kafka.assigned_movies && nratings == pkj_kafka.assigned_ratings)
		return true;
	if (nmovies == 0 || nratings == 0)
		log_wait(WAIT_TOPICS,
				 psprintf("pgkafka_join is waiting for topic \"%s\" to exist",
						  nmovies == 0 ? pkj_kafka.movies_topic : pkj_kafka.ratings_topic),
				 "Create the topic, or set pgkafka_join.movies_topic and pgkafka_join.ratings_topic.");

	parts = rd_kafka_topic_partition_list_new(nmovies + nratings);
	for (int i = 0; i < nmovies; i++)
		rd_kafka_topic_partition_list_add(parts, pkj_kafka.movies_topic, i)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	for (int i = 0; i < nratings; i++)
		rd_kafka_topic_partition_list_add(parts, pkj_kafka.ratings_topic, i)->offset =
			RD_KAFKA_OFFSET_BEGINNING;

	/* the stored offsets */
	pkj_begin_spi("reading the input offsets");
	if (SPI_execute("SELECT offsets_generation FROM pgkafka_join.control", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read pgkafka_join.control");
	offsets_generation = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull0));
	if (SPI_execute("SELECT topic, kafka_partition, next_offset FROM pgkafka_join.input_offsets",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.input_offsets");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *topic = SPI_getvalue(tup, desc, 1);
		int32		partition = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		int64		offset = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_find(parts, topic, partition);

		if (tp)
			tp->offset = offset;
	}
	pkj_end_spi();

	err = rd_kafka_assign(pkj_kafka.consumer, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not assign the input partitions: %s", rd_kafka_err2str(err))));

	if (nmovies > 0 && nratings > 0)
	{
		ereport(LOG,
				(errmsg("pgkafka_join consumes %d partitions of \"%s\" and %d of \"%s\"",
						nmovies, pkj_kafka.movies_topic, nratings, pkj_kafka.ratings_topic)));
		logged_wait = WAIT_NONE;
	}
	pkj_kafka.assigned_movies = nmovies;
	pkj_kafka.assigned_ratings = nratings;
	return true;
}

/*
 * Fill the batch: take what the consumer queue holds, and wait on the latch
 * and the queue's wake-up pipe until batch_size messages are in or
 * batch_delay has passed since the first one.  An empty batch returns after
 * at most timeout_ms, so the loop can do its periodic work.
 */
static void
consume_batch(PkjBatch *batch, long timeout_ms)
{
	TimestampTz deadline = 0;

	while (!pkj_batch_full(batch))
	{
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(pkj_kafka.consumer, 0);
		long		wait_ms;
		int			rc;

		if (msg == NULL)
		{
			/*
			 * A poll that served a callback (a log line, an error) returns
			 * no message although more may be queued: look again while the
			 * queue holds anything.  Only an empty queue writes to the pipe
			 * when it fills again, so clear the pipe, then check once more
			 * before sleeping on it.
			 */
			if (rd_kafka_queue_length(pkj_kafka.queue) > 0)
				continue;
			pkj_kafka_drain_wakeup();
			if (rd_kafka_queue_length(pkj_kafka.queue) > 0)
				continue;
		}
		if (msg != NULL)
		{
			if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				if (pkj_batch_count(batch) == 0)
					deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														   pkj_batch_delay);
				pkj_batch_add(batch, msg);
			}
			else
			{
				pkj_kafka_note_error(rd_kafka_message_errstr(msg));
				ereport(LOG,
						(errmsg("pgkafka_join consumer: %s", rd_kafka_message_errstr(msg)),
						 msg->rkt ? errdetail("Topic \"%s\", partition %d, offset " INT64_FORMAT ".",
											  rd_kafka_topic_name(msg->rkt), msg->partition, msg->offset) : 0));
			}
			rd_kafka_message_destroy(msg);
			CHECK_FOR_INTERRUPTS();
			continue;
		}

		if (pkj_batch_count(batch) > 0)
		{
			wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (wait_ms <= 0)
				break;
		}
		else
			wait_ms = timeout_ms;

		rc = WaitLatchOrSocket(MyLatch,
							   WL_LATCH_SET | WL_SOCKET_READABLE | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   pkj_kafka.wakeup[0], wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		pkj_kafka_serve_producer();
		if (ConfigReloadPending)
			break;
		/* an empty batch returns on a timeout or a wake-up (pause, resume) */
		if ((rc & (WL_TIMEOUT | WL_LATCH_SET)) && pkj_batch_count(batch) == 0)
			break;
	}
}

/* What pgkafka_join.control says: paused, and the offsets generation */
static void
read_control(bool *paused, int64 *generation)
{
	bool		isnull;

	pkj_begin_spi(NULL);
	if (SPI_execute("SELECT paused, offsets_generation FROM pgkafka_join.control", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read pgkafka_join.control");
	*paused = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*generation = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	pkj_end_spi();
}

static bool
ingest_paused(void)
{
	bool		paused;
	int64		generation;

	read_control(&paused, &generation);
	return paused;
}

/* Have the offsets been reset since the partitions were assigned? */
static bool
offsets_reset(void)
{
	bool		paused;
	int64		generation;

	read_control(&paused, &generation);
	return generation != offsets_generation;
}

/* Assign the partitions again, from the stored offsets, before the next batch */
static void
force_reassign(void)
{
	pkj_kafka.assigned_movies = -1;
	pkj_kafka.assigned_ratings = -1;
}

/*
 * Start consuming afresh from the stored offsets, after resume() or
 * reset_offsets(): new Kafka handles, made as at start-up.  (Assigning the
 * same partitions again on the old consumer can leave librdkafka 2.0
 * fetching nothing.)
 */
static void
restart_kafka(const char *why)
{
	ereport(LOG, (errmsg("%s", why)));
	pkj_kafka_disconnect();
	pkj_publisher_reset();
}

/* Stop fetching while paused; resume() makes the worker assign again */
static void
enter_pause(void)
{
	rd_kafka_assign(pkj_kafka.consumer, NULL);
	force_reassign();
	pkj_status_reset_partitions();
	ereport(LOG, (errmsg("pgkafka_join ingest is paused"),
				  errhint("SELECT pgkafka_join.resume() resumes it from the stored offsets.")));
}

/*
 * Record each assigned partition's high watermark (as last seen in fetch
 * responses, no broker round trip) and the consumer's position.
 */
static void
update_partition_status(void)
{
	rd_kafka_topic_partition_list_t *parts;

	if (rd_kafka_assignment(pkj_kafka.consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	rd_kafka_position(pkj_kafka.consumer, parts);
	for (int i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *tp = &parts->elems[i];
		int64_t		low,
					high;

		if (rd_kafka_get_watermark_offsets(pkj_kafka.consumer, tp->topic, tp->partition,
										   &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR)
			high = -1;
		pkj_status_set_partition(tp->topic, tp->partition, high,
								 tp->offset >= 0 ? tp->offset : -1);
	}
	rd_kafka_topic_partition_list_destroy(parts);
}

/* While a backlog is being caught up, say how it goes every few seconds */
static void
log_progress(int64 *last_total)
{
	int64		lag = pkj_status_total_lag();
	int64		total = pkj_status_messages_total();
	double		rate = (double) (total - *last_total) / (PROGRESS_LOG_MS / 1000);

	if (lag > pkj_batch_size && rate > 0)
		ereport(LOG,
				(errmsg("pgkafka_join is catching up: " INT64_FORMAT " messages stored in the last %d s, " INT64_FORMAT " left, %.0f messages/s, about %.0f s to go",
						total - *last_total, PROGRESS_LOG_MS / 1000, lag, rate, lag / rate)));
	*last_total = total;
}

/*
 * pkj_worker_main
 *		The join worker, in the database the launcher found.
 */
void
pkj_worker_main(Datum arg)
{
	MemoryContext loop_cxt;
	PkjBatch   *batch;
	TimestampTz next_metadata = 0;
	TimestampTz next_partitions = 0;
	TimestampTz next_status = 0;
	TimestampTz next_progress = 0;
	int64		progress_total = 0;
	bool		more_to_publish = true;
	bool		paused = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname("pgkafka_join worker");
	pkj_status_worker_started();

	/*
	 * The batch statements join arrays of unknown size with a catalog of any
	 * size: a generic plan (index lookups) is right for them whatever the
	 * statistics say, and JIT compiling them per batch costs more than it
	 * saves.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pgkafka_join loop",
									 ALLOCSET_DEFAULT_SIZES);
	batch = pkj_batch_create(loop_cxt);

	for (;;)
	{
		TimestampTz now;
		int64		results = 0;
		Oid			extoid;

		MemoryContextReset(loop_cxt);
		pkj_batch_reset(batch);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (pkj_kafka.consumer && pkj_kafka_settings_changed())
			{
				ereport(LOG,
						(errmsg("pgkafka_join Kafka settings changed; reconnecting")));
				pkj_kafka_disconnect();
				pkj_publisher_reset();
				next_metadata = 0;
			}
		}

		if (pkj_brokers[0] == '\0')
		{
			pkj_status_set_state("idle: no brokers set");
			log_wait(WAIT_BROKERS, "pgkafka_join is idle: pgkafka_join.brokers is empty",
					 "Set pgkafka_join.brokers in postgresql.conf and reload.");
			if (pkj_kafka.consumer)
			{
				pkj_kafka_disconnect();
				pkj_publisher_reset();
			}
			wait_latch(pkj_retry_interval);
			continue;
		}
		extoid = extension_oid();
		if (!OidIsValid(extoid))
		{
			pkj_status_set_state("waiting for the extension");
			log_wait(WAIT_EXTENSION,
					 psprintf("pgkafka_join is waiting for the extension in database \"%s\"",
							  pkj_database),
					 "Run CREATE EXTENSION pgkafka_join in that database.");
			if (pkj_kafka.consumer)
			{
				pkj_kafka_disconnect();
				pkj_publisher_reset();
			}
			wait_latch(pkj_retry_interval);
			continue;
		}
		if (logged_wait == WAIT_BROKERS || logged_wait == WAIT_EXTENSION)
			logged_wait = WAIT_NONE;

		if (pkj_kafka.consumer != NULL && pkj_kafka.extension_oid != extoid)
		{
			/* dropped and created again since the handles were made */
			pkj_kafka_disconnect();
			pkj_publisher_reset();
		}
		if (pkj_kafka.consumer == NULL)
		{
			List	   *file_props;
			char	   *file_content;
			char	   *problem;

			if (!pkj_read_properties_file(&file_props, &file_content, &problem))
			{
				pkj_status_set_state("waiting for the properties file");
				pkj_status_set_error(problem);
				log_wait(WAIT_PROPERTIES_FILE, problem,
						 "Fix the file or pgkafka_join.kafka_properties_file and reload.");
				wait_latch(pkj_retry_interval);
				continue;
			}
			if (logged_wait == WAIT_PROPERTIES_FILE)
				logged_wait = WAIT_NONE;
			pkj_kafka_connect(extoid);
			next_metadata = 0;
			more_to_publish = true;
			paused = ingest_paused();
			if (paused)
				enter_pause();
		}

		now = GetCurrentTimestamp();
		if (now >= next_partitions)
		{
			run_sql(psprintf("SELECT pgkafka_join.create_partitions(now() - pgkafka_join.join_window(), "
							 "now() + interval '%d months')", pkj_premake_months),
					"creating partitions ahead");
			next_partitions = TimestampTzPlusMilliseconds(now, PARTITION_CHECK_MS);
		}

		if (paused)
		{
			if (ingest_paused())
			{
				pkj_status_set_state("paused");
				/* results stored before the pause are still published */
				(void) pkj_publish(loop_cxt);
				wait_latch(pkj_retry_interval);
				pkj_kafka_serve_producer();
				continue;
			}
			paused = false;
			restart_kafka("pgkafka_join ingest resumes from the stored offsets");
			continue;
		}

		if (now >= next_metadata)
		{
			if (!assign_partitions())
			{
				pkj_status_set_state("waiting for topics");
				pkj_kafka_serve_producer();
				wait_latch(pkj_retry_interval);
				continue;
			}
			/* a missing input topic is looked for again soon */
			next_metadata = TimestampTzPlusMilliseconds(now,
														pkj_kafka.assigned_movies == 0 ||
														pkj_kafka.assigned_ratings == 0 ?
														pkj_retry_interval : METADATA_REFRESH_MS);
		}

		pkj_status_set_state("consuming");
		consume_batch(batch, more_to_publish ? 0 : pkj_retry_interval);
		if (pkj_batch_count(batch) > 0)
		{
			if (!pkj_ingest_batch(batch, offsets_generation, &results))
			{
				/* dropped unstored: paused, or offsets were reset */
				if (ingest_paused())
				{
					paused = true;
					enter_pause();
				}
				else
					restart_kafka("pgkafka_join input offsets were reset; consuming from the stored offsets");
				continue;
			}
			if (results > 0)
				more_to_publish = true;
		}
		else
		{
			/* idle: pause() or reset_offsets() may have woken us */
			if (ingest_paused())
			{
				paused = true;
				enter_pause();
				continue;
			}
			if (offsets_reset())
			{
				restart_kafka("pgkafka_join input offsets were reset; consuming from the stored offsets");
				continue;
			}
			/* look for results stored by other means (SQL calls) */
			more_to_publish = true;
		}

		if (more_to_publish)
		{
			int64		published = pkj_publish(loop_cxt);

			if (published < 0)
			{
				pkj_status_set_state("retrying to publish");
				wait_latch(pkj_retry_interval);
			}
			else
				more_to_publish = (published == pkj_batch_size);
		}
		pkj_kafka_serve_producer();

		now = GetCurrentTimestamp();
		if (now >= next_status)
		{
			update_partition_status();
			next_status = TimestampTzPlusMilliseconds(now, 1000);
		}
		if (now >= next_progress)
		{
			log_progress(&progress_total);
			next_progress = TimestampTzPlusMilliseconds(now, PROGRESS_LOG_MS);
		}
	}
}
