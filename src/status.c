/*-------------------------------------------------------------------------
 *
 * status.c
 *	  What the join worker is doing, in shared memory, for the status views.
 *
 * The worker is the only writer; any backend may read.  A spinlock guards
 * the whole struct: writers hold it for a few stores, readers copy the
 * struct out under it and format outside.  Rates are kept as per-second
 * counts in a ring of 60 slots, so "per second over the last minute" is a
 * sum divided by 60.  Nothing here is needed for correctness: it is lost on
 * restart and rebuilt as the worker runs.
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
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "pgkafka_join.h"

#define RING_SECONDS 60

typedef struct PkjPartitionStatus
{
	char		topic[256];
	int32		partition;
	int64		high_watermark; /* -1: not known yet */
	int64		consumed;		/* next offset the consumer will deliver */
	char		problem[256];	/* why it is not consumed; "" if it is */
} PkjPartitionStatus;

typedef struct PkjShared
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
	int64		published_total;
	int64		published_id;
	int64		ring_second[RING_SECONDS];
	int64		ring_messages[RING_SECONDS];
	int64		ring_results[RING_SECONDS];
	int64		ring_published[RING_SECONDS];
	int			assigned;		/* partitions assigned, listed or not */
	int64		unlisted_lag;	/* lag of those beyond max_partitions */
	int			unlisted_stopped;	/* of those, how many are stopped */
	int			npartitions;	/* listed, at most pkj_max_partitions */
	PkjPartitionStatus partitions[FLEXIBLE_ARRAY_MEMBER];
} PkjShared;

#define SHARED_SIZE (offsetof(PkjShared, partitions) + \
					 sizeof(PkjPartitionStatus) * pkj_max_partitions)

static PkjShared *shared = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
status_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(SHARED_SIZE));
}

static void
status_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("pgkafka_join", SHARED_SIZE, &found);
	if (!found)
	{
		memset(shared, 0, SHARED_SIZE);
		SpinLockInit(&shared->mutex);
		strlcpy(shared->state, "not started", sizeof(shared->state));
		shared->published_id = -1;
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

/* The worker announces itself; its latch is what pause/resume set */
void
pkj_status_worker_started(void)
{
	SpinLockAcquire(&shared->mutex);
	shared->worker_pid = MyProcPid;
	shared->worker_latch = MyLatch;
	shared->npartitions = 0;
	shared->assigned = 0;
	shared->unlisted_lag = 0;
	shared->unlisted_stopped = 0;
	shared->published_id = -1;
	SpinLockRelease(&shared->mutex);
	on_shmem_exit(pkj_status_worker_exit, (Datum) 0);
}

void
pkj_status_worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&shared->mutex);
	shared->worker_pid = 0;
	shared->worker_latch = NULL;
	strlcpy(shared->state, "stopped", sizeof(shared->state));
	shared->state_since = GetCurrentTimestamp();
	SpinLockRelease(&shared->mutex);
}

/* Wake the worker up, e.g. after pause() or resume() */
void
pkj_status_wake_worker(void)
{
	if (shared == NULL)
		return;
	SpinLockAcquire(&shared->mutex);
	if (shared->worker_latch)
		SetLatch(shared->worker_latch);
	SpinLockRelease(&shared->mutex);
}

void
pkj_status_set_state(const char *state)
{
	SpinLockAcquire(&shared->mutex);
	if (strcmp(shared->state, state) != 0)
	{
		strlcpy(shared->state, state, sizeof(shared->state));
		shared->state_since = GetCurrentTimestamp();
	}
	SpinLockRelease(&shared->mutex);
}

void
pkj_status_set_error(const char *error)
{
	SpinLockAcquire(&shared->mutex);
	strlcpy(shared->last_error, error, sizeof(shared->last_error));
	shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&shared->mutex);
}

/* The ring slot of the current second, cleared if it holds an older one */
static int
ring_slot(void)
{
	int64		second = GetCurrentTimestamp() / USECS_PER_SEC;
	int			slot = second % RING_SECONDS;

	if (shared->ring_second[slot] != second)
	{
		shared->ring_second[slot] = second;
		shared->ring_messages[slot] = 0;
		shared->ring_results[slot] = 0;
		shared->ring_published[slot] = 0;
	}
	return slot;
}

/* A batch was stored: messages consumed, results produced */
void
pkj_status_count_batch(int64 messages, int64 results)
{
	int			slot;

	SpinLockAcquire(&shared->mutex);
	slot = ring_slot();
	shared->ring_messages[slot] += messages;
	shared->ring_results[slot] += results;
	shared->messages_total += messages;
	shared->results_total += results;
	SpinLockRelease(&shared->mutex);
}

/* Results were published, up to result id last_id */
void
pkj_status_count_published(int64 published, int64 last_id)
{
	int			slot;

	SpinLockAcquire(&shared->mutex);
	slot = ring_slot();
	shared->ring_published[slot] += published;
	shared->published_total += published;
	shared->published_id = last_id;
	SpinLockRelease(&shared->mutex);
}

/* Forget the partitions, e.g. before a new assignment */
void
pkj_status_reset_partitions(void)
{
	SpinLockAcquire(&shared->mutex);
	shared->npartitions = 0;
	shared->assigned = 0;
	shared->unlisted_lag = 0;
	shared->unlisted_stopped = 0;
	SpinLockRelease(&shared->mutex);
}

/*
 * The slot of a partition, added if there is room; -1 if the list is full.
 * Caller holds the spinlock.
 */
static int
partition_slot(const char *topic, int32 partition)
{
	int			i;

	for (i = 0; i < shared->npartitions; i++)
	{
		if (shared->partitions[i].partition == partition &&
			strcmp(shared->partitions[i].topic, topic) == 0)
			return i;
	}
	if (i == pkj_max_partitions)
		return -1;
	strlcpy(shared->partitions[i].topic, topic, sizeof(shared->partitions[i].topic));
	shared->partitions[i].partition = partition;
	shared->partitions[i].high_watermark = -1;
	shared->partitions[i].consumed = -1;
	shared->partitions[i].problem[0] = '\0';
	shared->npartitions++;
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

	SpinLockAcquire(&shared->mutex);
	i = partition_slot(topic, partition);
	if (i >= 0)
	{
		shared->partitions[i].high_watermark = high_watermark;
		shared->partitions[i].consumed = consumed;
	}
	SpinLockRelease(&shared->mutex);
	return i >= 0;
}

/* Say why a partition is not consumed (until the partitions are reset) */
void
pkj_status_set_partition_problem(const char *topic, int32 partition,
								 const char *problem)
{
	int			i;

	SpinLockAcquire(&shared->mutex);
	i = partition_slot(topic, partition);
	if (i >= 0)
		strlcpy(shared->partitions[i].problem, problem, sizeof(shared->partitions[i].problem));
	else
		shared->unlisted_stopped++;
	SpinLockRelease(&shared->mutex);
}

/* How many partitions are assigned, and the lag of those not listed */
void
pkj_status_set_unlisted(int partitions, int64 lag)
{
	SpinLockAcquire(&shared->mutex);
	shared->assigned = partitions;
	shared->unlisted_lag = lag;
	SpinLockRelease(&shared->mutex);
}

/* Messages left to consume, over all partitions whose watermark is known */
int64
pkj_status_total_lag(void)
{
	int64		lag = 0;

	SpinLockAcquire(&shared->mutex);
	for (int i = 0; i < shared->npartitions; i++)
	{
		PkjPartitionStatus *p = &shared->partitions[i];

		if (p->high_watermark >= 0 && p->consumed >= 0 && p->high_watermark > p->consumed)
			lag += p->high_watermark - p->consumed;
	}
	lag += shared->unlisted_lag;
	SpinLockRelease(&shared->mutex);
	return lag;
}

/* Messages stored since the worker started */
int64
pkj_status_messages_total(void)
{
	int64		total;

	SpinLockAcquire(&shared->mutex);
	total = shared->messages_total;
	SpinLockRelease(&shared->mutex);
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

PG_FUNCTION_INFO_V1(pgkafka_join_worker_status);

/*
 * worker_status() -> one row: what the join worker is doing, its counters
 * and rates over the last minute.
 */
Datum
pgkafka_join_worker_status(PG_FUNCTION_ARGS)
{
	PkjShared	copy;
	TupleDesc	tupdesc;
	Datum		values[15];
	bool		nulls[15] = {0};
	int64		now = GetCurrentTimestamp() / USECS_PER_SEC;
	int64		messages = 0,
				results = 0,
				published = 0;

	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgkafka_join is not in shared_preload_libraries")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	SpinLockAcquire(&shared->mutex);
	memcpy(&copy, shared, offsetof(PkjShared, partitions));
	SpinLockRelease(&shared->mutex);

	for (int i = 0; i < RING_SECONDS; i++)
	{
		if (copy.ring_second[i] > now - RING_SECONDS)
		{
			messages += copy.ring_messages[i];
			results += copy.ring_results[i];
			published += copy.ring_published[i];
		}
	}

	values[0] = Int32GetDatum(copy.worker_pid);
	nulls[0] = copy.worker_pid == 0;
	values[1] = CStringGetTextDatum(copy.state);
	values[2] = TimestampTzGetDatum(copy.state_since);
	nulls[2] = copy.state_since == 0;
	values[3] = CStringGetTextDatum(copy.last_error);
	nulls[3] = copy.last_error_at == 0;
	values[4] = TimestampTzGetDatum(copy.last_error_at);
	nulls[4] = copy.last_error_at == 0;
	values[5] = Int64GetDatum(copy.messages_total);
	values[6] = Int64GetDatum(copy.results_total);
	values[7] = Int64GetDatum(copy.published_total);
	values[8] = Float8GetDatum((double) messages / RING_SECONDS);
	values[9] = Float8GetDatum((double) results / RING_SECONDS);
	values[10] = Float8GetDatum((double) published / RING_SECONDS);
	values[11] = Int64GetDatum(copy.published_id);
	nulls[11] = copy.published_id < 0;
	values[12] = Int32GetDatum(copy.assigned);
	values[13] = Int64GetDatum(copy.unlisted_lag);
	values[14] = Int32GetDatum(copy.unlisted_stopped);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(pgkafka_join_partition_status);

/*
 * partition_status() -> per input partition the worker consumes: the
 * broker's high watermark as last seen, and the consumer's position.
 */
Datum
pgkafka_join_partition_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PkjPartitionStatus *parts;
	int			n;

	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgkafka_join is not in shared_preload_libraries")));
	InitMaterializedSRF(fcinfo, 0);

	parts = palloc(sizeof(PkjPartitionStatus) * pkj_max_partitions);
	SpinLockAcquire(&shared->mutex);
	n = shared->npartitions;
	memcpy(parts, shared->partitions, sizeof(PkjPartitionStatus) * n);
	SpinLockRelease(&shared->mutex);

	for (int i = 0; i < n; i++)
	{
		Datum		values[5];
		bool		nulls[5] = {0};

		values[0] = CStringGetTextDatum(parts[i].topic);
		values[1] = Int32GetDatum(parts[i].partition);
		values[2] = Int64GetDatum(parts[i].high_watermark);
		nulls[2] = parts[i].high_watermark < 0;
		values[3] = Int64GetDatum(parts[i].consumed);
		nulls[3] = parts[i].consumed < 0;
		values[4] = CStringGetTextDatum(parts[i].problem);
		nulls[4] = parts[i].problem[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
