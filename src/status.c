/*-------------------------------------------------------------------------
 *
 * status.c
 *	  What the join worker is doing, in shared memory, for the status views,
 *	  and what it waits for, in the log, once a wait.
 *
 * One slot per join worker, which is its only writer; any backend may read.
 * A spinlock guards each slot: writers hold it for a few stores, readers
 * copy the slot out under it and format outside.  Rates are kept as
 * per-second counts in a ring of 60 slots, so "per second over the last
 * minute" is a sum divided by 60.  Nothing here is needed for correctness:
 * it is lost on restart and rebuilt as the worker runs.
 *
 * Not here: anything a restart needs.  What is shown is measured by the
 * files that report it (consume.c the input partitions, publish.c the
 * published results).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pgkafka_join.h"

#define RING_SECONDS 60

/* Shares listed per worker in worker_status(); a worker rarely owns more */
#define SHARES_LISTED 1024

typedef struct PkjPartitionStatus
{
	char		topic[256];
	int32		partition;
	int64		high_watermark; /* -1: not known yet */
	int64		consumed;		/* next offset the consumer will deliver */
	char		problem[256];	/* why it is not consumed; "" if it is */
} PkjPartitionStatus;

/* One join worker's slot; its partitions follow it in shared memory */
typedef struct PkjWorkerSlot
{
	slock_t		mutex;
	pid_t		worker_pid;
	Latch	   *worker_latch;
	char		state[64];
	TimestampTz state_since;
	char		last_error[512];
	TimestampTz last_error_at;
	int64		messages_total;
	int64		results_total;
	int64		rejoined_total; /* of those, made by rejoin passes */
	int64		published_total;
	int64		published_id;
	int64		ring_second[RING_SECONDS];
	int64		ring_messages[RING_SECONDS];
	int64		ring_results[RING_SECONDS];
	int64		ring_published[RING_SECONDS];
	int			assigned;		/* partitions assigned, listed or not */
	int64		unlisted_lag;	/* lag of those beyond max_partitions */
	int			unlisted_stopped;	/* of those, how many are stopped */
	char		owned[256];		/* the partitions it owns, as text */
	int			nshares;		/* the shares it publishes */
	int32		shares[SHARES_LISTED];
	int			npartitions;	/* listed, at most pkj_max_partitions */
	PkjPartitionStatus partitions[FLEXIBLE_ARRAY_MEMBER];
} PkjWorkerSlot;

#define SLOT_SIZE MAXALIGN(offsetof(PkjWorkerSlot, partitions) + \
						   sizeof(PkjPartitionStatus) * pkj_max_partitions)
#define SHARED_SIZE (SLOT_SIZE * pkj_workers)

static char *slots = NULL;		/* pkj_workers slots in shared memory */
static PkjWorkerSlot *me = NULL;	/* this worker's slot */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static inline PkjWorkerSlot *
slot(int worker)
{
	return (PkjWorkerSlot *) (slots + SLOT_SIZE * worker);
}

static void
status_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(SHARED_SIZE);
}

static void
status_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	slots = ShmemInitStruct("pgkafka_join", SHARED_SIZE, &found);
	if (!found)
	{
		memset(slots, 0, SHARED_SIZE);
		for (int i = 0; i < pkj_workers; i++)
		{
			SpinLockInit(&slot(i)->mutex);
			strlcpy(slot(i)->state, "not started", sizeof(slot(i)->state));
			slot(i)->published_id = -1;
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

void
pkj_status_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = status_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = status_shmem_startup;
}

/* Worker number "worker" announces itself; its latch is what pause/resume set */
void
pkj_status_worker_started(int worker)
{
	me = slot(worker);
	SpinLockAcquire(&me->mutex);
	me->worker_pid = MyProcPid;
	me->worker_latch = MyLatch;
	me->npartitions = 0;
	me->assigned = 0;
	me->unlisted_lag = 0;
	me->unlisted_stopped = 0;
	me->published_id = -1;
	me->owned[0] = '\0';
	me->nshares = 0;
	SpinLockRelease(&me->mutex);
	on_shmem_exit(pkj_status_worker_exit, (Datum) 0);
}

void
pkj_status_worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&me->mutex);
	me->worker_pid = 0;
	me->worker_latch = NULL;
	strlcpy(me->state, "stopped", sizeof(me->state));
	me->state_since = GetCurrentTimestamp();
	SpinLockRelease(&me->mutex);
}

/* The pids of the other join workers running now */
List *
pkj_status_other_worker_pids(void)
{
	List	   *pids = NIL;

	for (int i = 0; i < pkj_workers; i++)
	{
		pid_t		pid;

		if (slot(i) == me)
			continue;
		SpinLockAcquire(&slot(i)->mutex);
		pid = slot(i)->worker_pid;
		SpinLockRelease(&slot(i)->mutex);
		if (pid != 0)
			pids = lappend_int(pids, pid);
	}
	return pids;
}

/* Wake every worker up, e.g. after pause() or resume() */
void
pkj_status_wake_worker(void)
{
	if (slots == NULL)
		return;
	for (int i = 0; i < pkj_workers; i++)
	{
		SpinLockAcquire(&slot(i)->mutex);
		if (slot(i)->worker_latch)
			SetLatch(slot(i)->worker_latch);
		SpinLockRelease(&slot(i)->mutex);
	}
}

/* The partitions this worker owns, and the shares it publishes */
void
pkj_status_set_owned(const char *owned, List *shares)
{
	ListCell   *lc;

	SpinLockAcquire(&me->mutex);
	strlcpy(me->owned, owned, sizeof(me->owned));
	me->nshares = 0;
	foreach(lc, shares)
	{
		if (me->nshares == SHARES_LISTED)
			break;
		me->shares[me->nshares++] = lfirst_int(lc);
	}
	SpinLockRelease(&me->mutex);
}

void
pkj_status_set_state(const char *state)
{
	SpinLockAcquire(&me->mutex);
	if (strcmp(me->state, state) != 0)
	{
		strlcpy(me->state, state, sizeof(me->state));
		me->state_since = GetCurrentTimestamp();
	}
	SpinLockRelease(&me->mutex);
}

void
pkj_status_set_error(const char *error)
{
	SpinLockAcquire(&me->mutex);
	strlcpy(me->last_error, error, sizeof(me->last_error));
	me->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&me->mutex);
}

/* The ring slot of the current second, cleared if it holds an older one */
static int
ring_slot(void)
{
	int64		second = GetCurrentTimestamp() / USECS_PER_SEC;
	int			slot = second % RING_SECONDS;

	if (me->ring_second[slot] != second)
	{
		me->ring_second[slot] = second;
		me->ring_messages[slot] = 0;
		me->ring_results[slot] = 0;
		me->ring_published[slot] = 0;
	}
	return slot;
}

/* A batch was stored: messages consumed, results produced */
void
pkj_status_count_batch(int64 messages, int64 results)
{
	int			slot;

	SpinLockAcquire(&me->mutex);
	slot = ring_slot();
	me->ring_messages[slot] += messages;
	me->ring_results[slot] += results;
	me->messages_total += messages;
	me->results_total += results;
	SpinLockRelease(&me->mutex);
}

/*
 * A rejoin pass joined ratings whose movie another worker stored at the
 * same moment (counted in results_total too, by the caller)
 */
void
pkj_status_count_rejoined(int64 results)
{
	SpinLockAcquire(&me->mutex);
	me->rejoined_total += results;
	SpinLockRelease(&me->mutex);
}

/* Results were published, up to result id last_id */
void
pkj_status_count_published(int64 published, int64 last_id)
{
	int			slot;

	SpinLockAcquire(&me->mutex);
	slot = ring_slot();
	me->ring_published[slot] += published;
	me->published_total += published;
	me->published_id = last_id;
	SpinLockRelease(&me->mutex);
}

/* Forget the partitions, e.g. before a new assignment */
void
pkj_status_reset_partitions(void)
{
	SpinLockAcquire(&me->mutex);
	me->npartitions = 0;
	me->assigned = 0;
	me->unlisted_lag = 0;
	me->unlisted_stopped = 0;
	SpinLockRelease(&me->mutex);
}

/*
 * The slot of a partition, added if there is room; -1 if the list is full.
 * Caller holds the spinlock.
 */
static int
partition_slot(const char *topic, int32 partition)
{
	int			i;

	for (i = 0; i < me->npartitions; i++)
	{
		if (me->partitions[i].partition == partition &&
			strcmp(me->partitions[i].topic, topic) == 0)
			return i;
	}
	if (i == pkj_max_partitions)
		return -1;
	strlcpy(me->partitions[i].topic, topic, sizeof(me->partitions[i].topic));
	me->partitions[i].partition = partition;
	me->partitions[i].high_watermark = -1;
	me->partitions[i].consumed = -1;
	me->partitions[i].problem[0] = '\0';
	me->npartitions++;
	return i;
}

/*
 * Record a partition's high watermark and the consumer's position.  Returns
 * false if the partition is beyond the pgkafka_join.max_partitions listed.
 */
bool
pkj_status_set_partition(const char *topic, int32 partition,
						 int64 high_watermark, int64 consumed)
{
	int			i;

	SpinLockAcquire(&me->mutex);
	i = partition_slot(topic, partition);
	if (i >= 0)
	{
		me->partitions[i].high_watermark = high_watermark;
		me->partitions[i].consumed = consumed;
	}
	SpinLockRelease(&me->mutex);
	return i >= 0;
}

/* Say why a partition is not consumed (until the partitions are reset) */
void
pkj_status_set_partition_problem(const char *topic, int32 partition,
								 const char *problem)
{
	int			i;

	SpinLockAcquire(&me->mutex);
	i = partition_slot(topic, partition);
	if (i >= 0)
		strlcpy(me->partitions[i].problem, problem, sizeof(me->partitions[i].problem));
	else
		me->unlisted_stopped++;
	SpinLockRelease(&me->mutex);
}

/* How many partitions are assigned, and the lag of those not listed */
void
pkj_status_set_unlisted(int partitions, int64 lag)
{
	SpinLockAcquire(&me->mutex);
	me->assigned = partitions;
	me->unlisted_lag = lag;
	SpinLockRelease(&me->mutex);
}

/* Messages left to consume, over all partitions whose watermark is known */
int64
pkj_status_total_lag(void)
{
	int64		lag = 0;

	SpinLockAcquire(&me->mutex);
	for (int i = 0; i < me->npartitions; i++)
	{
		PkjPartitionStatus *p = &me->partitions[i];

		if (p->high_watermark >= 0 && p->consumed >= 0 && p->high_watermark > p->consumed)
			lag += p->high_watermark - p->consumed;
	}
	lag += me->unlisted_lag;
	SpinLockRelease(&me->mutex);
	return lag;
}

/* Messages stored since the worker started */
int64
pkj_status_messages_total(void)
{
	int64		total;

	SpinLockAcquire(&me->mutex);
	total = me->messages_total;
	SpinLockRelease(&me->mutex);
	return total;
}

PG_FUNCTION_INFO_V1(pgkafka_join_wake_worker);

/* wake_worker(): set the worker's latch, so that it looks at control now */
Datum
pgkafka_join_wake_worker(PG_FUNCTION_ARGS)
{
	pkj_status_wake_worker();
	PG_RETURN_VOID();
}

static void
check_loaded(void)
{
	if (slots == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgkafka_join is not in shared_preload_libraries")));
}

/*
 * Put the values of a row, named, into the columns the calling SQL
 * declaration expects, by name: the declarations of an older version of the
 * extension's objects (before ALTER EXTENSION UPDATE) have fewer columns.
 */
static void
fill_by_name(TupleDesc desc, const char *const *names, int n,
			 const Datum *values, const bool *nulls, Datum *out, bool *outnulls)
{
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		out[a] = (Datum) 0;
		outnulls[a] = true;
		for (int i = 0; i < n; i++)
		{
			if (strcmp(NameStr(att->attname), names[i]) == 0)
			{
				out[a] = values[i];
				outnulls[a] = nulls[i];
				break;
			}
		}
	}
}

static const char *const worker_columns[] = {
	"worker", "pid", "state", "state_since", "last_error", "last_error_at",
	"messages_total", "results_total", "published_total", "messages_per_second",
	"results_per_second", "published_per_second", "published_id", "partitions",
	"unlisted_lag", "unlisted_stopped", "owned_partitions", "shares",
	"rejoined_total"
};

#define WORKER_COLUMNS lengthof(worker_columns)

PG_FUNCTION_INFO_V1(pgkafka_join_worker_status);

/*
 * worker_status() -> one row per join worker: what it is doing, its
 * counters and rates over the last minute, what it owns.
 */
Datum
pgkafka_join_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PkjWorkerSlot *copy = palloc(offsetof(PkjWorkerSlot, partitions));
	int64		now = GetCurrentTimestamp() / USECS_PER_SEC;
	TupleDesc	desc;
	Datum	   *out;
	bool	   *outnulls;
	/* version 1.0 declared one row, of worker 0, until the update */
	bool		single = !fcinfo->flinfo->fn_retset;

	check_loaded();
	if (single)
	{
		if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
	}
	else
	{
		InitMaterializedSRF(fcinfo, 0);
		desc = rsinfo->setDesc;
	}
	out = palloc(sizeof(Datum) * desc->natts);
	outnulls = palloc(sizeof(bool) * desc->natts);

	for (int w = 0; w < pkj_workers; w++)
	{
		Datum		values[WORKER_COLUMNS];
		bool		nulls[WORKER_COLUMNS] = {0};
		int64		messages = 0,
					results = 0,
					published = 0;
		Datum	   *shares;

		SpinLockAcquire(&slot(w)->mutex);
		memcpy(copy, slot(w), offsetof(PkjWorkerSlot, partitions));
		SpinLockRelease(&slot(w)->mutex);

		for (int i = 0; i < RING_SECONDS; i++)
		{
			if (copy->ring_second[i] > now - RING_SECONDS)
			{
				messages += copy->ring_messages[i];
				results += copy->ring_results[i];
				published += copy->ring_published[i];
			}
		}
		shares = palloc(sizeof(Datum) * Max(copy->nshares, 1));
		for (int i = 0; i < copy->nshares; i++)
			shares[i] = Int32GetDatum(copy->shares[i]);

		values[0] = Int32GetDatum(w);
		values[1] = Int32GetDatum(copy->worker_pid);
		nulls[1] = copy->worker_pid == 0;
		values[2] = CStringGetTextDatum(copy->state);
		values[3] = TimestampTzGetDatum(copy->state_since);
		nulls[3] = copy->state_since == 0;
		values[4] = CStringGetTextDatum(copy->last_error);
		nulls[4] = copy->last_error_at == 0;
		values[5] = TimestampTzGetDatum(copy->last_error_at);
		nulls[5] = copy->last_error_at == 0;
		values[6] = Int64GetDatum(copy->messages_total);
		values[7] = Int64GetDatum(copy->results_total);
		values[8] = Int64GetDatum(copy->published_total);
		values[9] = Float8GetDatum((double) messages / RING_SECONDS);
		values[10] = Float8GetDatum((double) results / RING_SECONDS);
		values[11] = Float8GetDatum((double) published / RING_SECONDS);
		values[12] = Int64GetDatum(copy->published_id);
		nulls[12] = copy->published_id < 0;
		values[13] = Int32GetDatum(copy->assigned);
		values[14] = Int64GetDatum(copy->unlisted_lag);
		values[15] = Int32GetDatum(copy->unlisted_stopped);
		values[16] = CStringGetTextDatum(copy->owned);
		nulls[16] = copy->worker_pid == 0 && copy->owned[0] == '\0';
		values[17] = PointerGetDatum(construct_array(shares, copy->nshares, INT4OID,
													 sizeof(int32), true, TYPALIGN_INT));
		values[18] = Int64GetDatum(copy->rejoined_total);
		fill_by_name(desc, worker_columns, WORKER_COLUMNS, values, nulls, out, outnulls);
		if (single)
			PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
															   out, outnulls)));
		tuplestore_putvalues(rsinfo->setResult, desc, out, outnulls);
	}
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(pgkafka_join_partition_status);

/*
 * partition_status() -> per input partition a worker consumes: the
 * broker's high watermark as last seen, and the consumer's position.
 */
Datum
pgkafka_join_partition_status(PG_FUNCTION_ARGS)
{
	static const char *const columns[] = {
		"worker", "topic", "kafka_partition", "high_watermark", "consumed_offset", "problem"
	};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PkjPartitionStatus *parts;
	Datum	   *out;
	bool	   *outnulls;

	check_loaded();
	InitMaterializedSRF(fcinfo, 0);
	out = palloc(sizeof(Datum) * rsinfo->setDesc->natts);
	outnulls = palloc(sizeof(bool) * rsinfo->setDesc->natts);

	parts = palloc(sizeof(PkjPartitionStatus) * pkj_max_partitions);
	for (int w = 0; w < pkj_workers; w++)
	{
		int			n;

		SpinLockAcquire(&slot(w)->mutex);
		n = slot(w)->npartitions;
		memcpy(parts, slot(w)->partitions, sizeof(PkjPartitionStatus) * n);
		SpinLockRelease(&slot(w)->mutex);

		for (int i = 0; i < n; i++)
		{
			Datum		values[6];
			bool		nulls[6] = {0};

			values[0] = Int32GetDatum(w);
			values[1] = CStringGetTextDatum(parts[i].topic);
			values[2] = Int32GetDatum(parts[i].partition);
			values[3] = Int64GetDatum(parts[i].high_watermark);
			nulls[3] = parts[i].high_watermark < 0;
			values[4] = Int64GetDatum(parts[i].consumed);
			nulls[4] = parts[i].consumed < 0;
			values[5] = CStringGetTextDatum(parts[i].problem);
			nulls[5] = parts[i].problem[0] == '\0';
			fill_by_name(rsinfo->setDesc, columns, lengthof(columns), values, nulls,
						 out, outnulls);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
		}
	}
	return (Datum) 0;
}

/*
 * What this worker last said in the log it waits for: each wait is logged
 * once, when it begins, and again only after it ended.
 */
static PkjWait logged_wait = PKJ_WAIT_NONE;

/* Whether a wait begins, as opposed to goes on: the caller logs it if so */
bool
pkj_wait_begins(PkjWait reason)
{
	if (logged_wait == reason)
		return false;
	logged_wait = reason;
	return true;
}

/* Log, once until it ends or another begins, what the worker waits for */
void
pkj_log_wait(PkjWait reason, const char *msg, const char *hint)
{
	if (pkj_wait_begins(reason))
		ereport(LOG, (errmsg("%s", msg), hint ? errhint("%s", hint) : 0));
}

/* The wait is over, if it was the one logged: returns whether it was */
bool
pkj_wait_ended(PkjWait reason)
{
	if (logged_wait != reason)
		return false;
	logged_wait = PKJ_WAIT_NONE;
	return true;
}
