/*-------------------------------------------------------------------------
 *
 * xact.c
 *	  The worker's transactions: one around each step, with SPI and a
 *	  snapshot, durable whatever synchronous_commit says; one held open
 *	  across several steps; the lock on the extension a step works for.
 *
 * A floor below every role: ingest.c, publish.c, kafka.c and worker.c
 * call these; they call none of them.  The transactions' isolation level
 * and the settings they run under are pinned once, when the worker starts
 * (see pkj_worker_main()).
 *
 * Not here: what runs inside the transactions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pgkafka_join.h"

/* The memory context current before pkj_begin_spi(), restored after */
MemoryContext pkj_spi_caller_cxt = NULL;

/*
 * While set, pkj_end_spi() leaves its transaction open (spi_held) and the
 * next pkj_begin_spi() goes on in it: the batches stored while new claims
 * are confirmed are one transaction (see store_while_confirming()).
 */
static bool spi_hold = false;
static bool spi_held = false;

/*
 * pkj_lock_extension
 *		In the caller's transaction, lock the extension the Kafka handles were
 *		made for (its oid, "extension") against DROP EXTENSION, and say
 *		whether it is still the one installed.  A batch or a publish step
 *		that finds it gone (dropped, or dropped and created again, since the
 *		top of the loop) must store nothing: its offsets and positions
 *		belong to the old incarnation.
 */
bool
pkj_lock_extension(Oid extension)
{
	if (!OidIsValid(extension))
		return false;
	LockDatabaseObject(ExtensionRelationId, extension, 0, AccessShareLock);
	return get_extension_oid("pgkafka_join", true) == extension;
}

/*
 * The worker's commits must be durable: a result is published to Kafka once
 * its transaction committed, and an asynchronous commit lost in a crash
 * would leave the output topic ahead of PostgreSQL (see publish.c).  So a
 * server-wide synchronous_commit = off (or a per-database one) is raised to
 * on for the worker's transactions; local, remote_write and stronger are
 * kept.
 */
static void
force_durable_commit(void)
{
	if (synchronous_commit < SYNCHRONOUS_COMMIT_LOCAL_FLUSH)
		(void) set_config_option("synchronous_commit", "on",
								 PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * pkj_begin_spi / pkj_end_spi
 *		A transaction of its own, with SPI and a snapshot, around one step of
 *		the worker; activity is what pg_stat_activity shows meanwhile.
 */
void
pkj_begin_spi(const char *activity)
{
	MemoryContext caller = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	if (spi_held)
		spi_held = false;		/* go on in the transaction left open */
	else
	{
		StartTransactionCommand();
		force_durable_commit();
	}
	pkj_spi_caller_cxt = caller;
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
	if (spi_hold)
		spi_held = true;
	else
		CommitTransactionCommand();
	/* back to the caller's memory, not TopMemoryContext */
	MemoryContextSwitchTo(pkj_spi_caller_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * pkj_hold_transaction
 *		From now on pkj_end_spi() leaves its transaction open, and the next
 *		pkj_begin_spi() goes on in it, until pkj_end_held_transaction().
 */
void
pkj_hold_transaction(void)
{
	spi_hold = true;
}

/* End the transaction pkj_end_spi() left open, if any, and open no more */
void
pkj_end_held_transaction(bool commit)
{
	spi_hold = false;
	if (!spi_held)
		return;
	spi_held = false;
	if (commit)
		CommitTransactionCommand();
	else
		AbortCurrentTransaction();
}

/* Leave the transaction of pkj_begin_spi() without committing it */
void
pkj_abort_spi(void)
{
	SPI_finish();
	PopActiveSnapshot();
	AbortCurrentTransaction();
	spi_held = false;
	MemoryContextSwitchTo(pkj_spi_caller_cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * After an error escaped a step (its transaction aborted by the caller):
 * nothing is held any more.
 */
void
pkj_forget_transaction(void)
{
	spi_hold = false;
	spi_held = false;
}

/*
 * pkj_keep_plan
 *		Prepare a statement with SPI and keep its plan for the life of the
 *		process; in a transaction begun by pkj_begin_spi().
 */
SPIPlanPtr
pkj_keep_plan(const char *sql, int nargs, const Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, unconstify(Oid *, argtypes));

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}
