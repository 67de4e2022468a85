/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The join worker: its process, its loop and its signals.
 *
 * Process model
 * -------------
 * The launcher (launcher.c) keeps pgkafka_join.workers join workers running
 * in pgkafka_join.database, each a dynamic background worker.
 *
 * The join worker is the single writer of the extension's tables.  It owns
 * the librdkafka handles (kafka.c) and runs one loop, worker_step(), whose
 * steps call the file of their role:
 *
 *	  1. ready_to_run: a reload applied; the extension, pgkafka_join.brokers
 *	     and the topics waited for; the Kafka handles made (kafka.c);
 *	  2. may_consume: the partitions it owns known and its claims holding
 *	     (ownership.c), where publishing stands known (publish.c), what it
 *	     left to join before it stopped joined (ingest.c);
 *	  3. store_batch: consume what has arrived, up to batch_size messages
 *	     (consume.c), and store them with their offsets in one transaction
 *	     (ingest.c, join.c);
 *	  4. publish_results: commit the Kafka transaction started at the
 *	     previous turn, and start one with the new results (publish.c):
 *	     librdkafka sends its records while the next batch is consumed and
 *	     stored; if nothing has arrived meanwhile, it is committed at once;
 *	  5. report: the input partitions in the status views (consume.c,
 *	     status.c).
 *
 * This file holds the loop's own state (struct w) and the worker's
 * (PkjWorker, passed down to the roles); it decides what to do next and
 * when to wait.  What is done is in the files of the roles, which never
 * call back up into it.
 *
 * All state a restart needs is in PostgreSQL (input offsets, results) or in
 * Kafka (the publish position), written atomically with what it describes;
 * nothing in this process's memory must survive it.  The worker's
 * transactions are durable whatever synchronous_commit says for the server:
 * a result is only published once its commit is on disk, and the offsets
 * that produced it with it.
 *
 * No input, setting or rewind makes the worker exit.  An error in a step is
 * caught at the top of the loop: the transaction is aborted, the Kafka
 * handles are rebuilt (so consumption starts over from the stored offsets
 * and the publisher from the position in Kafka), the error is logged and
 * shown in pgkafka_join.status, and the worker tries again after
 * retry_interval.  A single message that cannot be stored because of what
 * it holds is rejected into rejected_messages (see isolate_remaining).
 * What it waits for (brokers, extension, settings, the output topic being
 * ahead of PostgreSQL) is logged once and shown in status.state.
 *
 * The worker runs with search_path = pg_catalog, pg_temp, and every object
 * it uses is schema-qualified: nothing a non-superuser creates is run by it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <malloc.h>

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* How often the worker re-reads topic metadata for new partitions */
#define METADATA_REFRESH_MS 30000
/* How often it makes sure monthly partitions exist ahead of time */
#define PARTITION_CHECK_MS 3600000
/* How often it logs progress while catching up a backlog */
#define PROGRESS_LOG_MS 10000
/* How often the worker looks for partitions release_partitions() asked for */
#define RELEASE_CHECK_MS 1000

/* The version of the SQL objects this library works with */
#define PKJ_SQL_VERSION "1.4"

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

/* What the roles need to know of this worker (the loop's state is below) */
static PkjWorker worker = {.offsets_generation = -1};

/* The oid of the extension in this database, InvalidOid if not installed */
static Oid
extension_oid(void)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			oid;

	StartTransactionCommand();
	oid = get_extension_oid("pgkafka_join", true);
	CommitTransactionCommand();
	/* back to the caller's memory, not TopMemoryContext */
	MemoryContextSwitchTo(caller);
	return oid;
}

/*
 * The version of the extension's objects (palloc'd), NULL if it is not
 * installed.  Read before the Kafka handles are made, so that a library
 * never runs against objects of another version.
 */
static char *
extension_version(void)
{
	char	   *version = NULL;

	pkj_begin_spi(NULL);
	if (SPI_execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgkafka_join'",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_extension");
	if (SPI_processed == 1)
		version = MemoryContextStrdup(pkj_spi_caller_cxt,
									  SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	pkj_end_spi();
	return version;
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

/*
 * Drop the Kafka handles, and what was learnt with them: the partitions
 * owned, their claims, the publisher's positions.
 */
static void
forget_handles(void)
{
	pkj_kafka_disconnect();
	pkj_publisher_reset();
	pkj_claims_reset();
	list_free(worker.owned);
	worker.owned = NIL;
	worker.assigned = false;
	worker.rejoined = false;
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
	forget_handles();
}

/* Stop fetching while paused; resume() makes the worker assign again */
static void
enter_pause(void)
{
	rd_kafka_assign(pkj_kafka.consumer, NULL);
	pkj_force_reassign(&worker);
	pkj_status_reset_partitions();
	ereport(LOG, (errmsg("pgkafka_join ingest is paused"),
				  errhint("SELECT pgkafka_join.resume() resumes it from the stored offsets.")));
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

/* Drop the Kafka handles; the next step makes new ones from the settings */
static void
disconnect(void)
{
	if (pkj_kafka.consumer)
		forget_handles();
	pkj_publisher_reset();
}

/*
 * The state of the worker's loop.  It lives outside worker_step() so that
 * an error caught in the loop leaves it as it was.
 */
static struct
{
	MemoryContext loop_cxt;
	MemoryContext batch_cxt;	/* the batch's contents */
	PkjBatch   *batch;
	TimestampTz next_metadata;
	TimestampTz next_partitions;
	TimestampTz next_status;
	TimestampTz next_progress;
	TimestampTz next_publish;	/* no publish attempt before, after a failure */
	TimestampTz next_release;	/* look for partitions to release then */
	int64		progress_total;
	bool		more_to_publish;
	bool		paused;

	/*
	 * After a batch failed to store, its messages are consumed again one per
	 * batch, so that one whose contents cannot be stored is found and
	 * rejected instead of failing every batch after it.
	 */
	int			isolate_remaining;
} w;

/*
 * Wait for what cannot be done now; log it once, show it in status.
 * Returns after retry_interval, or earlier when the latch is set.
 */
static void
wait_for(PkjWait reason, const char *state, const char *msg, const char *hint)
{
	pkj_status_set_state(state);
	pkj_log_wait(reason, msg, hint);
	wait_latch(pkj_retry_interval);
}

/*
 * A batch was dropped unstored: ingest was paused, the offsets were reset,
 * or the extension was dropped or created again.  Consume afresh from what
 * PostgreSQL holds now.
 */
static void
batch_dropped(void)
{
	if (extension_oid() != pkj_kafka.extension_oid)
	{
		ereport(LOG,
				(errmsg("pgkafka_join dropped a batch unstored: the extension was dropped or created again")));
		disconnect();
	}
	else if (ingest_paused())
	{
		w.paused = true;
		enter_pause();
	}
	else
		restart_kafka("pgkafka_join input offsets were reset; consuming from the stored offsets");
}

/*
 * While this server's new claims wait to be read back (see ownership.c),
 * store what is consumed in one transaction left open: committed once the
 * claims hold, so that a server keeping its partitions has not lost the
 * wait; aborted if they do not, so that a server refused them has stored
 * nothing (its next attempt starts from new Kafka handles, at the stored
 * offsets).  As before any batch, where publishing stands is learnt first.
 * Returns false, having done nothing, if the brokers cannot tell that yet.
 */
static bool
store_while_confirming(void)
{
	int64		messages = 0;
	int64		results = 0;
	PkjClaim	claim;
	TimestampTz now = GetCurrentTimestamp();

	if (now < w.next_publish)
		return false;
	switch (pkj_publisher_position())
	{
		case PKJ_POSITION_KNOWN:
			break;
		case PKJ_POSITION_UNKNOWN:
			w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
			return false;
		case PKJ_POSITION_BEHIND:
			return false;
	}
	pkj_status_set_state("consuming: claims being confirmed");

	pkj_hold_transaction();
	for (;;)
	{
		long		wait_ms = pkj_claims_next_ms();
		int64		batch_results;

		if (wait_ms == 0)
		{
			claim = pkj_claims_hold(worker.owned);
			break;
		}
		if (ConfigReloadPending)
		{
			/* applied by the next step, once the claims are settled */
			wait_latch(wait_ms);
			continue;
		}
		MemoryContextReset(w.batch_cxt);
		pkj_batch_reset(w.batch);
		pkj_consume_batch(w.batch, wait_ms, pkj_batch_size);
		if (pkj_batch_count(w.batch) == 0)
			continue;
		if (!pkj_ingest_batch(&worker, w.batch, &batch_results))
		{
			/* the open transaction was aborted with the batch */
			pkj_end_held_transaction(false);
			batch_dropped();
			return true;
		}
		messages += pkj_batch_count(w.batch);
		results += batch_results;
	}
	pkj_end_held_transaction(claim == PKJ_CLAIM_HELD);

	if (claim == PKJ_CLAIM_HELD)
	{
		pkj_status_count_batch(messages, results);
		if (results > 0)
			w.more_to_publish = true;
		return true;
	}

	/*
	 * Refused (said once by ownership.c), or the brokers did not answer the
	 * read-back: nothing consumed meanwhile was kept.
	 */
	if (messages > 0)
		ereport(LOG,
				(errmsg("pgkafka_join kept none of the " INT64_FORMAT " messages it stored while its claims were being confirmed",
						messages),
				 errdetail("Their transaction was rolled back: %s.",
						   claim == PKJ_CLAIM_REFUSED ? "another server claimed the partitions meanwhile" :
						   "the brokers did not answer when the claims were read back")));
	disconnect();
	pkj_status_set_state(claim == PKJ_CLAIM_REFUSED ?
						 "refused: partitions owned by another server" :
						 "waiting: claiming partitions");
	wait_latch(pkj_retry_interval);
	return true;
}

/*
 * A reload: the settings read again, the Kafka handles dropped if the
 * settings they were made with changed.  Handles left unusable by an
 * unfinished transaction are dropped too.
 */
static void
apply_reload(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		if (pkj_kafka.consumer && pkj_kafka_settings_changed())
		{
			ereport(LOG,
					(errmsg("pgkafka_join Kafka settings changed; reconnecting")));
			disconnect();
		}
		/* a failing publisher is tried again at once with the new settings */
		w.next_publish = 0;
	}
	if (pkj_kafka.must_reconnect)
		disconnect();
}

/*
 * Whether the settings give the worker something to do: brokers, and three
 * distinct topics.  Returns false, having waited, if not.
 */
static bool
settings_usable(void)
{
	if (pkj_brokers[0] == '\0')
	{
		disconnect();
		wait_for(PKJ_WAIT_BROKERS, "idle: no brokers set",
				 "pgkafka_join is idle: pgkafka_join.brokers is empty",
				 "Set pgkafka_join.brokers in postgresql.conf and reload.");
		return false;
	}
	if (strcmp(pkj_output_topic, pkj_movies_topic) == 0 ||
		strcmp(pkj_output_topic, pkj_ratings_topic) == 0 ||
		strcmp(pkj_movies_topic, pkj_ratings_topic) == 0)
	{
		disconnect();
		wait_for(PKJ_WAIT_TOPIC_NAMES, "waiting for distinct topics",
				 psprintf("pgkafka_join is waiting: the movies, ratings and output topics must be three different topics (\"%s\", \"%s\", \"%s\")",
						  pkj_movies_topic, pkj_ratings_topic, pkj_output_topic),
				 "Publishing to an input topic would feed results back as input; set pgkafka_join.output_topic to a topic of its own and reload.");
		return false;
	}
	return true;
}

/*
 * Make the Kafka handles for extension extoid, once its objects are of the
 * version this library needs and librdkafka takes the properties.  Returns
 * false, having waited, if not.
 */
static bool
connect_kafka(Oid extoid)
{
	List	   *file_props;
	char	   *file_content;
	char	   *problem;
	char	   *version = extension_version();

	if (version == NULL || strcmp(version, PKJ_SQL_VERSION) != 0)
	{
		wait_for(PKJ_WAIT_UPDATE, "waiting for ALTER EXTENSION UPDATE",
				 psprintf("pgkafka_join is waiting: the extension's objects are version %s, this library needs version %s",
						  version ? version : "(none)", PKJ_SQL_VERSION),
				 psprintf("Run ALTER EXTENSION pgkafka_join UPDATE TO '%s' in database \"%s\".",
						  PKJ_SQL_VERSION, pkj_database));
		return false;
	}
	pkj_wait_ended(PKJ_WAIT_UPDATE);

	if (!pkj_read_properties_file(&file_props, &file_content, &problem))
	{
		pkj_status_set_error(problem);
		wait_for(PKJ_WAIT_PROPERTIES_FILE, "waiting for the properties file", problem,
				 "Fix the file or pgkafka_join.kafka_properties_file and reload.");
		return false;
	}
	pkj_wait_ended(PKJ_WAIT_PROPERTIES_FILE);
	if (!pkj_kafka_connect(extoid, worker.index, pkj_delivery_report, &problem))
	{
		pkj_status_set_error(problem);
		wait_for(PKJ_WAIT_PROPERTIES, "waiting for valid Kafka properties", problem,
				 "Fix pgkafka_join.kafka_properties or pgkafka_join.kafka_properties_file and reload.");
		return false;
	}
	pkj_wait_ended(PKJ_WAIT_PROPERTIES);
	w.next_metadata = 0;
	w.next_publish = 0;
	w.more_to_publish = true;
	w.paused = ingest_paused();
	if (w.paused)
		enter_pause();
	return true;
}

/*
 * Step 1: what the worker needs before anything else: a reload applied,
 * usable settings, the extension, Kafka handles made for it.  Returns
 * false, having waited, if one of them is missing.
 */
static bool
ready_to_run(void)
{
	Oid			extoid;

	apply_reload();
	if (!settings_usable())
		return false;
	extoid = extension_oid();
	if (!OidIsValid(extoid))
	{
		disconnect();
		wait_for(PKJ_WAIT_EXTENSION, "waiting for the extension",
				 psprintf("pgkafka_join is waiting for the extension in database \"%s\"",
						  pkj_database),
				 "Run CREATE EXTENSION pgkafka_join in that database.");
		return false;
	}
	pkj_wait_ended(PKJ_WAIT_BROKERS);
	pkj_wait_ended(PKJ_WAIT_EXTENSION);
	pkj_wait_ended(PKJ_WAIT_TOPIC_NAMES);

	if (pkj_kafka.consumer != NULL && pkj_kafka.extension_oid != extoid)
	{
		/* dropped and created again since the handles were made */
		disconnect();
	}
	if (pkj_kafka.consumer == NULL && !connect_kafka(extoid))
		return false;
	return true;
}

/* Monthly partitions of ratings and results, made ahead of time */
static void
make_partitions_ahead(TimestampTz now)
{
	if (now < w.next_partitions)
		return;
	run_sql(psprintf("SELECT pgkafka_join.create_partitions(now() - pgkafka_join.join_window(), "
					 "now() + interval '%d months')", pkj_premake_months),
			"creating partitions ahead");
	w.next_partitions = TimestampTzPlusMilliseconds(now, PARTITION_CHECK_MS);
}

/*
 * Which partitions this worker owns, learnt again every
 * METADATA_REFRESH_MS.  Returns false, having waited, if it has none to
 * consume.
 */
static bool
owns_partitions(TimestampTz now)
{
	if (now < w.next_metadata && worker.owned != NIL)
		return true;
	if (!pkj_refresh_ownership(&worker))
	{
		pkj_kafka_serve_producer();
		wait_latch(pkj_retry_interval);
		return false;
	}
	w.next_metadata = TimestampTzPlusMilliseconds(now, METADATA_REFRESH_MS);
	return true;
}

/*
 * Whether this server's claims on the partitions hold (see ownership.c).
 * Returns false, having waited (or stored while new claims are confirmed),
 * if they do not yet.
 */
static bool
claims_hold(void)
{
	switch (pkj_claims_hold(worker.owned))
	{
		case PKJ_CLAIM_HELD:
			return true;
		case PKJ_CLAIM_PENDING:

			/*
			 * While this server's new claims wait to be read back, the
			 * consumer fetches already (from now on, while the producer
			 * gets ready), and batches are stored in a transaction committed
			 * once the claims hold, unless where publishing stands is not
			 * known yet or messages are being isolated.
			 */
			if (pkj_claims_confirming() && !w.paused && !pkj_claims_receiving())
			{
				if (!worker.assigned)
					pkj_assign_partitions(&worker);
				if (w.isolate_remaining == 0 && store_while_confirming())
					return false;
			}
			/* a server refused looks again, refused until it owns them */
			pkj_status_set_state(pkj_claims_refused() ?
								 "refused: partitions owned by another server" :
								 pkj_claims_renewing() ? "waiting: renewing claims" :
								 "waiting: claiming partitions");
			pkj_kafka_serve_producer();
			wait_latch(Min(pkj_retry_interval, pkj_claims_next_ms() + 10));
			return false;
		case PKJ_CLAIM_REFUSED:
			/* said once by ownership.c; tried again after retry_interval */
			disconnect();
			pkj_status_set_state("refused: partitions owned by another server");
			wait_latch(pkj_retry_interval);
			return false;
	}
	return false;
}

/*
 * Where publishing stands, before anything is stored, a rejoin pass
 * included, once per connection: if the output topic is ahead of
 * PostgreSQL, results made now would be numbered at or below the published
 * position of their share, and never sent.  So nothing is stored until the
 * brokers have told it.  Returns false, having waited, until they have.
 */
static bool
publish_position_known(TimestampTz now)
{
	PkjPosition position = PKJ_POSITION_UNKNOWN;

	if (pkj_publisher_position_known())
		return true;
	if (now >= w.next_publish)
	{
		position = pkj_publisher_position();
		if (position == PKJ_POSITION_UNKNOWN)
			w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
	}
	if (position == PKJ_POSITION_KNOWN)
		return true;
	if (position == PKJ_POSITION_UNKNOWN)
		pkj_status_set_state("waiting for the publish position");
	pkj_kafka_serve_producer();
	wait_latch(Min(pkj_retry_interval, pkj_claims_next_ms() + 10));
	return false;
}

/*
 * Step 2: whether this worker may consume: the partitions it owns known,
 * its claims holding, where publishing stands known, and what it left to
 * join before it stopped joined.  Returns false, having waited, if not.
 */
static bool
may_consume(TimestampTz now)
{
	if (!owns_partitions(now) || !claims_hold())
		return false;
	/* partitions handed over by another server: their state first */
	if (pkj_receive_partitions(&worker))
	{
		pkj_force_reassign(&worker);
		pkj_publisher_reset();
	}
	if (!publish_position_known(now))
		return false;
	if (!worker.rejoined)
	{
		/*
		 * what this worker left to join before it stopped, and, for worker
		 * 0, what workers that no longer exist left
		 */
		(void) pkj_ingest_rejoin(&worker, worker.index == 0);
		worker.rejoined = true;
		w.more_to_publish = true;
	}
	return true;
}

/*
 * While ingest is paused: publish what was stored before, show the lag
 * growing, and resume from the stored offsets once resume() was called.
 */
static void
while_paused(TimestampTz now)
{
	if (ingest_paused())
	{
		pkj_status_set_state("paused");
		/* results stored before the pause are still published */
		if (now >= w.next_publish && pkj_claims_fresh() && pkj_publish(w.loop_cxt) < 0)
			w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
		if (now >= w.next_status)
		{
			pkj_consume_report_paused(worker.owned);
			w.next_status = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
		}
		wait_latch(Min(pkj_retry_interval, pkj_claims_next_ms() + 10));
		pkj_kafka_serve_producer();
		return;
	}
	w.paused = false;
	restart_kafka("pgkafka_join ingest resumes from the stored offsets");
}

/*
 * Step 3: consume one batch and store it (ingest.c), with the rejoins it
 * queued.  An empty batch looks whether pause() or reset_offsets() woke the
 * worker.  Returns false if the turn ends here: the batch was dropped, or
 * ingest paused, or the offsets reset.
 */
static bool
store_batch(TimestampTz now)
{
	int64		results = 0;
	bool		paused;
	int64		generation;

	/* everything consumed is stored: a partition's catalog may be complete */
	if (worker.assigned && pkj_catalog_replayed())
		pkj_force_reassign(&worker);
	if (!worker.assigned)
		pkj_assign_partitions(&worker);

	pkj_status_set_state(w.isolate_remaining > 0 ? "consuming one message at a time" : "consuming");
	/* an open Kafka transaction is committed as soon as nothing waits */
	pkj_consume_batch(w.batch,
					  (w.more_to_publish && now >= w.next_publish) || pkj_publish_pending() ? 0 :
					  Min(pkj_retry_interval, pkj_claims_next_ms() + 10),
					  w.isolate_remaining > 0 ? 1 : pkj_batch_size);
	if (pkj_batch_count(w.batch) > 0)
	{
		if (!pkj_ingest_batch(&worker, w.batch, &results))
		{
			batch_dropped();
			return false;
		}
		pkj_status_count_batch(pkj_batch_count(w.batch), results);
		if (w.isolate_remaining > 0)
			w.isolate_remaining--;
		if (pkj_batch_queued_rejoin(w.batch))
			results += pkj_ingest_rejoin(&worker, false);
		if (results > 0)
			w.more_to_publish = true;
		return true;
	}

	/* idle: pause() or reset_offsets() may have woken us */
	read_control(&paused, &generation);
	if (paused)
	{
		w.paused = true;
		enter_pause();
		return false;
	}
	if (generation != worker.offsets_generation)
	{
		restart_kafka("pgkafka_join input offsets were reset; consuming from the stored offsets");
		return false;
	}
	/* look for results stored by other means (SQL calls) */
	w.more_to_publish = true;
	return true;
}

/*
 * Step 4: publish (publish.c).  Publishing overlaps storing while a backlog
 * is caught up: the Kafka transaction started after the previous batch has
 * been sending its records while this one was consumed and stored.  Commit
 * it, then start one with what is new.  A failing publisher is tried again
 * after retry_interval; meanwhile ingest goes on at full speed.
 */
static void
publish_results(void)
{
	TimestampTz now = GetCurrentTimestamp();

	/*
	 * A Kafka transaction commits only while the claims are fresh (see
	 * ownership.c).  Otherwise it stays open: the next step renews the
	 * claims, and it commits then, or the worker was refused and drops its
	 * handles, and the next producer aborts it.
	 */
	if (pkj_publish_pending() && !pkj_claims_fresh())
		return;
	if (pkj_publish_pending() && pkj_publish_finish() < 0)
		w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
	if (w.more_to_publish && now >= w.next_publish)
	{
		int64		started = -1;

		if (pkj_publisher_position() == PKJ_POSITION_KNOWN)
			started = pkj_publish_start(w.loop_cxt);
		if (started < 0)
			w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
		else
			w.more_to_publish = (started == pkj_batch_size);

		/*
		 * With nothing waiting to be stored, the overlap would only make
		 * these results wait for a batch that has not arrived yet, a whole
		 * turn of the loop longer (and the turns with the slowest commits
		 * are the longest): commit now.
		 */
		if (started > 0 && !w.more_to_publish &&
			rd_kafka_queue_length(pkj_kafka.queue) == 0 &&
			pkj_claims_fresh() && pkj_publish_finish() < 0)
			w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
	}
	pkj_kafka_serve_producer();
}

/*
 * Step 5: the input partitions in the status views and in a Kafka consumer
 * group, progress in the log
 */
static void
report(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (now >= w.next_status)
	{
		pkj_consume_report();
		pkj_consume_commit_positions();
		w.next_status = TimestampTzPlusMilliseconds(now, 1000);
	}
	if (now >= w.next_progress)
	{
		log_progress(&w.progress_total);
		w.next_progress = TimestampTzPlusMilliseconds(now, PROGRESS_LOG_MS);
	}
}

/*
 * Publish every result stored, before partitions are released.  False if
 * the publisher failed, or the claims are not fresh: tried again later.
 */
static bool
publish_everything(void)
{
	for (;;)
	{
		int64		n;

		if (!pkj_claims_fresh())
			return false;
		n = pkj_publish(w.loop_cxt);
		if (n < 0)
			return false;
		if (n == 0 && !pkj_publish_pending())
			return true;
	}
}

/*
 * Step 2b: partitions release_partitions() asked this worker to give up
 * (looked for every second): once everything stored is published, record
 * what the next owner needs, and start over with new Kafka handles, which
 * leave them out and hand them over (see "Moves" in ownership.c).  Returns
 * false if the turn ends here.
 */
static bool
release_requested(TimestampTz now)
{
	List	   *partitions;

	if (now < w.next_release)
		return true;
	w.next_release = TimestampTzPlusMilliseconds(now, RELEASE_CHECK_MS);
	partitions = pkj_release_requested(&worker);
	if (partitions == NIL)
		return true;
	pkj_status_set_state("releasing partitions");
	if (!publish_everything())
	{
		w.next_publish = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
		return true;
	}
	pkj_release_partitions(&worker, partitions);
	restart_kafka(psprintf("pgkafka_join worker %d goes on without partitions %s",
						   worker.index, pkj_partitions_text(partitions)));
	return false;
}

/*
 * One turn of the worker's loop, in named steps: make sure of what it
 * needs, make sure it may consume, store one batch, publish what is new,
 * report.  Returns early (to be called again) whenever it has to wait.
 */
static void
worker_step(void)
{
	TimestampTz now;

	if (!ready_to_run())
		return;
	now = GetCurrentTimestamp();
	make_partitions_ahead(now);
	if (!may_consume(now) || !release_requested(now))
		return;
	if (w.paused)
		while_paused(now);
	else if (store_batch(now))
	{
		publish_results();
		report();
	}
}

/*
 * SQLSTATE classes of errors that the contents of a message can cause when
 * its rows are stored (data exceptions, integrity violations, program
 * limits such as an index row too large), as opposed to the state of the
 * server (disk full, lock timeouts, shutdown), which are retried.  The
 * caller counts only errors raised while the rows were being stored (see
 * pkj_batch_storing_contents()), and a sequence that reached its end is
 * the server's state too, whatever its class says: no message is rejected
 * for it.
 */
static bool
error_from_contents(int sqlerrcode)
{
	char	   *state = unpack_sql_state(sqlerrcode);

	if (sqlerrcode == ERRCODE_SEQUENCE_GENERATOR_LIMIT_EXCEEDED)
		return false;
	return strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
		strncmp(state, "54", 2) == 0;
}

/*
 * An error escaped a step of the loop: log it, abort the transaction, drop
 * the Kafka handles (consumption and publishing start over from the stored
 * positions), show it in status, and wait before trying again.
 */
static void
recover_from_error(void)
{
	ErrorData  *edata;
	bool		storing = pkj_batch_storing_contents(w.batch);
	int			count = pkj_batch_count(w.batch);

	HOLD_INTERRUPTS();
	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	FlushErrorState();
	RESUME_INTERRUPTS();
	pgstat_report_activity(STATE_IDLE, NULL);
	pkj_forget_transaction();

	MemoryContextSwitchTo(w.loop_cxt);
	pkj_status_set_error(edata->message);

	if (storing && count == 1 && w.isolate_remaining > 0 &&
		error_from_contents(edata->sqlerrcode))
	{
		/* the message is at fault: keep it as rejected, go on after it */
		char	   *reason = psprintf("could not be stored: %s", edata->message);

		PG_TRY();
		{
			if (pkj_ingest_reject_single(&worker, w.batch, reason))
			{
				ereport(LOG,
						(errmsg("pgkafka_join rejected a message that could not be stored"),
						 errdetail("%s", reason)));
				w.isolate_remaining--;
				FreeErrorData(edata);
				return;
			}
		}
		PG_CATCH();
		{
			HOLD_INTERRUPTS();
			EmitErrorReport();
			AbortOutOfAnyTransaction();
			FlushErrorState();
			RESUME_INTERRUPTS();
			MemoryContextSwitchTo(w.loop_cxt);
		}
		PG_END_TRY();
	}
	else if (storing && count > 1 && error_from_contents(edata->sqlerrcode))
		w.isolate_remaining = count;

	FreeErrorData(edata);
	disconnect();
	pkj_status_set_state("waiting after an error");
	wait_latch(pkj_retry_interval);
}

/*
 * The settings every transaction of the worker runs under, whatever a DBA
 * set for the server, the database or the role.
 */
static void
pin_settings(void)
{
	/*
	 * Nothing a non-superuser can create is found by name: the worker runs
	 * as a superuser, and functions or operators planted in a schema of the
	 * default search_path ("$user", public) would run with its privileges.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every transaction of the worker is READ COMMITTED, whatever a DBA set
	 * for the server, the database or the role: the rejoin argument (see
	 * ingest.c) needs each statement to take its snapshot when it starts,
	 * after the waits that precede it, and a batch's transaction id to come
	 * before any of its snapshots.  Nor may a default meant for sessions
	 * make the worker's transactions read-only, or cancel its statements
	 * and its waits for locks, which would stall the stream at every retry.
	 */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The batch statements join arrays of unknown size with a catalog of any
	 * size: a generic plan (index lookups) is right for them whatever the
	 * statistics say, and JIT compiling them per batch costs more than it
	 * saves.
	 */
	SetConfigOption("plan_cache_mode", "force_generic_plan", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * pkj_worker_main
 *		The join worker, in the database the launcher found.
 */
void
pkj_worker_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)

	/*
	 * Each batch allocates and frees megabytes (parsed messages, COPY's and
	 * the executor's memory).  By default glibc gives large freed blocks
	 * back to the kernel, and the next batch faults them in again page by
	 * page: a fifth of the worker's time while a catalog loads.  Keep them,
	 * up to a bound.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
#endif
	memcpy(&worker.index, MyBgworkerEntry->bgw_extra, sizeof(worker.index));
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(arg), InvalidOid, 0);
	pgstat_report_appname(psprintf("pgkafka_join worker %d", worker.index));
	pkj_status_worker_started(worker.index);

	pin_settings();

	w.loop_cxt = AllocSetContextCreate(TopMemoryContext, "pgkafka_join loop",
									   ALLOCSET_DEFAULT_SIZES);
	w.batch_cxt = AllocSetContextCreate(TopMemoryContext, "pgkafka_join batch",
										ALLOCSET_DEFAULT_SIZES);
	w.batch = pkj_batch_create(w.batch_cxt);
	w.more_to_publish = true;

	for (;;)
	{
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(w.loop_cxt);
		MemoryContextReset(w.batch_cxt);
		MemoryContextSwitchTo(w.loop_cxt);
		CHECK_FOR_INTERRUPTS();

		PG_TRY();
		{
			pkj_batch_reset(w.batch);
			worker_step();
		}
		PG_CATCH();
		{
			recover_from_error();
		}
		PG_END_TRY();
	}
}
