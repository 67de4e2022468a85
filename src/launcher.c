/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one process for the server, keeping the join workers
 *	  running.
 *
 * The launcher is a static background worker, started with the server
 * (shared_preload_libraries).  It connects to no database: it only looks in
 * pg_database for pgkafka_join.database, and while that exists keeps
 * pgkafka_join.workers join workers running there (dynamic background
 * workers, see worker.c), restarting each pgkafka_join.retry_interval after
 * it exits.  A missing database is logged once and waited for; nothing
 * crash-loops.
 *
 * It owns no data and calls no other file of pgkafka_join but the settings.
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
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pgkafka_join.h"

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

/* Sleep on the latch, which a reload and a worker starting or stopping set */
static void
launcher_wait(long timeout_ms)
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

/* Register join worker number "index" in database dboid */
static BackgroundWorkerHandle *
start_worker(Oid dboid, int index)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	memcpy(worker.bgw_extra, &index, sizeof(index));
	worker.bgw_notify_pid = MyProcPid;
	strlcpy(worker.bgw_library_name, "pgkafka_join", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "pkj_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "pgkafka_join worker %d for database %s",
			 index, pkj_database);
	strlcpy(worker.bgw_type, "pgkafka_join worker", BGW_MAXLEN);

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		return NULL;
	return handle;
}

/*
 * pkj_launcher_main
 *		Keep pgkafka_join.workers join workers running in
 *		pgkafka_join.database, each restarted on its own retry_interval after
 *		it exited.
 */
void
pkj_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handles[PKJ_MAX_WORKERS] = {0};
	TimestampTz start_after[PKJ_MAX_WORKERS] = {0};
	bool		logged_missing = false;
	bool		logged_no_slot = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	for (;;)
	{
		Oid			dboid;
		TimestampTz now;
		long		wait_ms = pkj_retry_interval;
		bool		started = false;
		bool		no_slot = false;

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
			launcher_wait(pkj_retry_interval);
			continue;
		}
		logged_missing = false;

		now = GetCurrentTimestamp();
		for (int i = 0; i < pkj_workers; i++)
		{
			pid_t		pid;

			if (handles[i] != NULL)
			{
				if (GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
					continue;
				/* whatever ended it, wait before starting the next one */
				pfree(handles[i]);
				handles[i] = NULL;
				start_after[i] = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
			}
			if (now < start_after[i])
			{
				wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, start_after[i]) + 1);
				continue;
			}
			handles[i] = start_worker(dboid, i);
			if (handles[i] == NULL)
			{
				no_slot = true;
				start_after[i] = TimestampTzPlusMilliseconds(now, pkj_retry_interval);
			}
			else
				started = true;
		}

		/* said once, and again when a slot was found */
		if (no_slot && !logged_no_slot)
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a pgkafka_join worker: no background worker slot is free"),
					 errdetail("The launcher tries again every pgkafka_join.retry_interval."),
					 errhint("Raise max_worker_processes (pgkafka_join needs pgkafka_join.workers + 1).")));
		else if (started && !no_slot && logged_no_slot)
			ereport(LOG,
					(errmsg("pgkafka_join found background worker slots; every worker starts")));
		if (no_slot || started)
			logged_no_slot = no_slot;

		/* a worker starting or stopping sets the latch */
		launcher_wait(wait_ms);
	}
}
