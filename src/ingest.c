/*-------------------------------------------------------------------------
 *
 * ingest.c
 *	  One batch of consumed messages -> one PostgreSQL transaction.
 *
 * Messages are parsed as they arrive (message.c) and sorted into columns:
 * movies (a NULL title is a tombstone), ratings, rejected messages, and the
 * next offset of every input partition seen.  pkj_ingest_batch() then hands
 * each set to its function, in one transaction:
 *
 *	  store_movies    upsert/delete the catalog, publish waiting ratings
 *	                  (new movies in bulk: COPY, then join_waiting)
 *	  store_ratings   insert the ratings, publish those whose movie is here
 *	                  (C, called directly: join.c)
 *	  store_rejected  keep what could not be accepted, with the reason
 *	  store_offsets   the next offset to consume, per topic and partition
 *
 * The SQL ones get their sets as arrays.
 *
 * The offsets commit with the rows they produced, so after a crash the
 * worker resumes exactly after the last stored message.  Each result
 * belongs to the share of the partition its message came on (see
 * rated_movies.share); the worker owns every partition it consumes.
 *
 * Several workers store batches concurrently, without a common lock.  A
 * rating and its movie on partitions of two workers (keyed otherwise than
 * the movie) may then be stored by two transactions that each miss the
 * other's row.  So a batch whose ratings wait inside the window queues them
 * in rejoins, and after its commit pkj_ingest_rejoin() waits for the
 * transactions the other workers were running, then joins them: a movie
 * stored by one of those is seen; one stored by a later transaction saw the
 * ratings when it was stored.  Movies go before
 * ratings: every message of a batch is stored at the same commit, and a
 * rating whose movie is stored by that commit is joined by it.
 *
 * Not here: taking messages off the consumer (consume.c), the join of a
 * batch's ratings with the catalog (join.c), publishing (publish.c).  This
 * file decides what goes into a batch's transaction, and in which order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "parser/parse_relation.h"
#include "executor/spi.h"
#include "lib/qunique.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/resowner.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* One growable column of a batch: values and null flags */
typedef struct Column
{
	Oid			type;
	Datum	   *values;
	bool	   *nulls;
} Column;

#define MAX_COLUMNS 6

/* A set of rows for one SQL function, stored column by column */
typedef struct Rows
{
	int			count;
	int			capacity;
	int			ncolumns;
	Column		columns[MAX_COLUMNS];
} Rows;

typedef struct InputOffset
{
	const char *topic;
	int32		partition;
	int64		next_offset;
} InputOffset;

/* A message as it came, kept for a batch of one that cannot be stored */
typedef struct RawMessage
{
	const char *topic;
	int32		partition;
	int64		offset;
	Datum		key;			/* bytea, or 0 if none */
	Datum		payload;		/* bytea, or 0 if none (a tombstone) */
} RawMessage;

struct PkjBatch
{
	MemoryContext cxt;
	int			count;			/* messages in the batch */
	Size		bytes;			/* bytes of keys and values kept */
	Rows		movies;			/* id, title (NULL: tombstone), release_year,
								 * partition */
	Rows		ratings;		/* movie_id, rating, rated_at, partition, offset */
	Rows		rejected;		/* topic, partition, offset, key, payload, reason */
	List	   *offsets;		/* of InputOffset */
	RawMessage	first;			/* the first message, as it came */
	bool		rejoin;			/* queued ratings to join again */
	bool		storing_contents;	/* its messages' rows are being stored */
};

/*
 * After COPY of a batch of movies failed on an id already stored (the
 * catalog is being updated, not loaded), this many batches use the upsert
 * directly instead of trying COPY first.
 */
#define COPY_BACKOFF_BATCHES 100
static int	copy_backoff = 0;

/* Plans of the SQL calls, kept across batches */
static SPIPlanPtr begin_batch_plan = NULL;
static SPIPlanPtr store_movies_plan = NULL;
static SPIPlanPtr join_waiting_plan = NULL;
static SPIPlanPtr store_rejected_plan = NULL;
static SPIPlanPtr store_offsets_plan = NULL;
static SPIPlanPtr queue_rejoin_plan = NULL;
static SPIPlanPtr run_rejoins_plan = NULL;

static void
rows_init(Rows *rows, int ncolumns, const Oid *types)
{
	memset(rows, 0, sizeof(Rows));
	rows->ncolumns = ncolumns;
	for (int i = 0; i < ncolumns; i++)
		rows->columns[i].type = types[i];
}

/* Make room for one more row and return its index */
static int
rows_add(Rows *rows)
{
	if (rows->count == rows->capacity)
	{
		int			newcap = rows->capacity == 0 ? 256 : rows->capacity * 2;

		for (int i = 0; i < rows->ncolumns; i++)
		{
			Column	   *col = &rows->columns[i];

			if (col->values == NULL)
			{
				col->values = palloc(newcap * sizeof(Datum));
				col->nulls = palloc(newcap * sizeof(bool));
			}
			else
			{
				col->values = repalloc(col->values, newcap * sizeof(Datum));
				col->nulls = repalloc(col->nulls, newcap * sizeof(bool));
			}
		}
		rows->capacity = newcap;
	}
	for (int i = 0; i < rows->ncolumns; i++)
		rows->columns[i].nulls[rows->count] = false;
	return rows->count++;
}

static inline void
rows_set(Rows *rows, int row, int column, Datum value)
{
	rows->columns[column].values[row] = value;
}

static inline void
rows_set_null(Rows *rows, int row, int column)
{
	rows->columns[column].values[row] = (Datum) 0;
	rows->columns[column].nulls[row] = true;
}

/* One column as an array Datum, the parameter of an SQL function */
static Datum
column_array(Rows *rows, int column)
{
	Column	   *col = &rows->columns[column];
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1];
	int			lbs[1] = {1};

	get_typlenbyvalalign(col->type, &typlen, &typbyval, &typalign);
	dims[0] = rows->count;
	return PointerGetDatum(construct_md_array(col->values, col->nulls, 1,
											  dims, lbs, col->type,
											  typlen, typbyval, typalign));
}

/* Columns of rejected messages: topic, partition, offset, key, payload, reason */
static const Oid rejected_types[] = {TEXTOID, INT4OID, INT8OID, BYTEAOID, BYTEAOID, TEXTOID};

/*
 * A batch whose contents live in cxt, which the caller resets between
 * batches; the batch itself outlives those resets.
 */
PkjBatch *
pkj_batch_create(MemoryContext cxt)
{
	PkjBatch   *batch = MemoryContextAllocZero(TopMemoryContext, sizeof(PkjBatch));

	batch->cxt = cxt;
	pkj_batch_reset(batch);
	return batch;
}

/* Forget the batch; its memory goes with the caller's reset of batch->cxt */
void
pkj_batch_reset(PkjBatch *batch)
{
	static const Oid movie_types[] = {INT8OID, TEXTOID, INT4OID, INT4OID};
	static const Oid rating_types[] = {INT8OID, FLOAT8OID, TIMESTAMPTZOID, INT4OID, INT8OID};

	batch->count = 0;
	batch->bytes = 0;
	rows_init(&batch->movies, 4, movie_types);
	rows_init(&batch->ratings, 5, rating_types);
	rows_init(&batch->rejected, 6, rejected_types);
	batch->offsets = NIL;
	batch->rejoin = false;
	batch->storing_contents = false;
}

int
pkj_batch_count(PkjBatch *batch)
{
	return batch->count;
}

/*
 * Is the batch full?  Besides batch_size messages, a batch ends once it
 * holds PKJ_BATCH_MAX_BYTES of keys and values, so that no array handed to
 * SQL nears PostgreSQL's 1 GB limit on a value, whatever the messages.
 */
bool
pkj_batch_full(PkjBatch *batch)
{
	return batch->count >= pkj_batch_size || batch->bytes >= PKJ_BATCH_MAX_BYTES;
}

static Datum
bytes_datum(const void *data, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

static void
note_offset(PkjBatch *batch, const char *topic, int32 partition, int64 offset)
{
	ListCell   *lc;
	InputOffset *io;

	foreach(lc, batch->offsets)
	{
		io = lfirst(lc);
		if (io->partition == partition && strcmp(io->topic, topic) == 0)
		{
			io->next_offset = Max(io->next_offset, offset + 1);
			return;
		}
	}
	io = palloc(sizeof(InputOffset));
	io->topic = topic;
	io->partition = partition;
	io->next_offset = offset + 1;
	batch->offsets = lappend(batch->offsets, io);
}

/*
 * A message as it came: its position, and its key and value up to the size
 * limit of values (an oversized value is kept that far).
 */
static RawMessage
raw_message(const char *topic, const rd_kafka_message_t *msg)
{
	RawMessage	m;

	m.topic = topic;
	m.partition = msg->partition;
	m.offset = msg->offset;
	m.key = msg->key ?
		bytes_datum(msg->key, Min(msg->key_len, (size_t) pkj_max_message_bytes)) : (Datum) 0;
	m.payload = msg->payload ?
		bytes_datum(msg->payload, Min(msg->len, (size_t) pkj_max_message_bytes)) : (Datum) 0;
	return m;
}

/* Keep a message as rejected, with the reason */
static void
add_rejected(PkjBatch *batch, const RawMessage *m, const char *reason)
{
	int			row = rows_add(&batch->rejected);

	rows_set(&batch->rejected, row, 0, CStringGetTextDatum(m->topic));
	rows_set(&batch->rejected, row, 1, Int32GetDatum(m->partition));
	rows_set(&batch->rejected, row, 2, Int64GetDatum(m->offset));
	if (m->key)
		rows_set(&batch->rejected, row, 3, m->key);
	else
		rows_set_null(&batch->rejected, row, 3);
	if (m->payload)
		rows_set(&batch->rejected, row, 4, m->payload);
	else
		rows_set_null(&batch->rejected, row, 4);
	rows_set(&batch->rejected, row, 5, CStringGetTextDatum(reason));
}

static void
reject(PkjBatch *batch, const char *topic, const rd_kafka_message_t *msg,
	   const char *reason)
{
	RawMessage	m = raw_message(topic, msg);

	add_rejected(batch, &m, reason);
}

/*
 * With the partitions split across servers (pgkafka_join.partitions set),
 * every message must be keyed by its movie id in decimal: one keyed
 * otherwise may have landed on a partition of another server, away from
 * its movie or its ratings.  Returns false, having rejected the message, if
 * the key is another.
 */
static bool
check_key(PkjBatch *batch, const char *topic, const rd_kafka_message_t *msg,
		  int64 movie_id)
{
	int64		key;

	if (!pkj_partitions_split())
		return true;
	if (msg->key != NULL && pkj_parse_id_text(msg->key, msg->key_len, &key) &&
		key == movie_id)
		return true;
	reject(batch, topic, msg,
		   psprintf("key is not the movie id " INT64_FORMAT " in decimal: with pgkafka_join.partitions set, a message keyed otherwise may belong to another server's partitions",
					movie_id));
	return false;
}

static void
add_movie(PkjBatch *batch, const char *topic, const rd_kafka_message_t *msg)
{
	PkjMovie	movie;
	const char *reason;
	int			row;

	if (msg->payload == NULL)
	{
		int64		id;

		/* a tombstone: the key is the movie id */
		if (msg->key == NULL || !pkj_parse_id_text(msg->key, msg->key_len, &id))
		{
			reject(batch, topic, msg, "tombstone key is not a movie id");
			return;
		}
		row = rows_add(&batch->movies);
		rows_set(&batch->movies, row, 0, Int64GetDatum(id));
		rows_set_null(&batch->movies, row, 1);
		rows_set_null(&batch->movies, row, 2);
		rows_set(&batch->movies, row, 3, Int32GetDatum(msg->partition));
		return;
	}

	if (!pkj_parse_movie(msg->payload, msg->len, &movie, &reason))
	{
		reject(batch, topic, msg, reason);
		return;
	}
	if (!check_key(batch, topic, msg, movie.id))
		return;
	row = rows_add(&batch->movies);
	rows_set(&batch->movies, row, 0, Int64GetDatum(movie.id));
	rows_set(&batch->movies, row, 1, CStringGetTextDatum(movie.title));
	if (movie.has_release_year)
		rows_set(&batch->movies, row, 2, Int32GetDatum(movie.release_year));
	else
		rows_set_null(&batch->movies, row, 2);
	rows_set(&batch->movies, row, 3, Int32GetDatum(msg->partition));
}

/*
 * The message's timestamp (when it was produced, or appended to the log),
 * false if it has none.  Past year 5000 (1e14 ms) it is DT_NOEND, out of
 * range anyway.
 */
static bool
message_time(const rd_kafka_message_t *msg, TimestampTz *t)
{
	rd_kafka_timestamp_type_t tstype;
	int64		ms = rd_kafka_message_timestamp(msg, &tstype);

	if (ms < 0)
		return false;
	if (ms <= INT64CONST(100000000000000))
		*t = (TimestampTz) ms * 1000 -
			(TimestampTz) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	else
		*t = DT_NOEND;
	return true;
}

static void
add_rating(PkjBatch *batch, const char *topic, const rd_kafka_message_t *msg)
{
	PkjRating	rating;
	const char *reason;
	int			row;
	TimestampTz sent;
	bool		has_sent;

	if (msg->payload == NULL)
	{
		reject(batch, topic, msg, "a rating cannot be a tombstone");
		return;
	}
	if (!pkj_parse_rating(msg->payload, msg->len, &rating, &reason))
	{
		reject(batch, topic, msg, reason);
		return;
	}
	if (!check_key(batch, topic, msg, rating.movie_id))
		return;
	has_sent = message_time(msg, &sent);
	if (!rating.has_rated_at)
	{
		if (!has_sent)
		{
			reject(batch, topic, msg, "rated_at is missing and the message has no timestamp");
			return;
		}
		if (!pkj_timestamp_in_range(sent))
		{
			reject(batch, topic, msg, "message timestamp is out of range");
			return;
		}
		rating.rated_at = sent;
	}

	/*
	 * A rating dated in the future would stay inside the join window for as
	 * much longer: one dated further ahead of the moment its message was
	 * sent (its timestamp, so that a message consumed again is judged the
	 * same) than future_tolerance allows is rejected.  Without a timestamp
	 * there is nothing to compare with.  Both times are in range here, so
	 * their difference is too.
	 */
	else if (has_sent && pkj_timestamp_in_range(sent) &&
			 rating.rated_at - sent > pkj_future_tolerance_us)
	{
		reject(batch, topic, msg,
			   psprintf("rated_at is more than pgkafka_join.future_tolerance (%s) ahead of the message's timestamp",
						pkj_future_tolerance));
		return;
	}

	row = rows_add(&batch->ratings);
	rows_set(&batch->ratings, row, 0, Int64GetDatum(rating.movie_id));
	rows_set(&batch->ratings, row, 1, Float8GetDatum(rating.rating));
	rows_set(&batch->ratings, row, 2, TimestampTzGetDatum(rating.rated_at));
	rows_set(&batch->ratings, row, 3, Int32GetDatum(msg->partition));
	rows_set(&batch->ratings, row, 4, Int64GetDatum(msg->offset));
}

/*
 * pkj_batch_add
 *		Parse one consumed message into the batch.  Never throws for what a
 *		message contains: whatever cannot be accepted is kept as rejected.
 */
void
pkj_batch_add(PkjBatch *batch, const rd_kafka_message_t *msg)
{
	MemoryContext old = MemoryContextSwitchTo(batch->cxt);
	const char *topic;

	if (strcmp(rd_kafka_topic_name(msg->rkt), pkj_kafka.movies_topic) == 0)
		topic = pkj_kafka.movies_topic;
	else
		topic = pkj_kafka.ratings_topic;

	if (batch->count == 0)
		batch->first = raw_message(topic, msg);

	if (msg->payload != NULL && msg->len > (size_t) pkj_max_message_bytes)
		reject(batch, topic, msg,
			   psprintf("value of %zu bytes is larger than pgkafka_join.max_message_bytes (%d)",
						msg->len, pkj_max_message_bytes));
	else if (topic == pkj_kafka.movies_topic)
		add_movie(batch, topic, msg);
	else
		add_rating(batch, topic, msg);

	note_offset(batch, topic, msg->partition, msg->offset);
	batch->count++;
	batch->bytes += Min(msg->len, (size_t) pkj_max_message_bytes) +
		Min(msg->key_len, (size_t) pkj_max_message_bytes);
	MemoryContextSwitchTo(old);
}

static void
prepare_plans(void)
{
	static const Oid movies_args[] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INT4ARRAYOID};
	static const Oid join_args[] = {INT8ARRAYOID, INT4ARRAYOID};
	static const Oid queue_args[] = {INT4OID, INT8ARRAYOID, INT4ARRAYOID, TIMESTAMPTZOID};
	static const Oid run_args[] = {INT4OID, INT4ARRAYOID, BOOLOID};
	static const Oid rejected_args[] = {TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID,
	BYTEAARRAYOID, BYTEAARRAYOID, TEXTARRAYOID};
	static const Oid offsets_args[] = {TEXTARRAYOID, INT4ARRAYOID, INT8ARRAYOID};

	if (store_movies_plan != NULL)
		return;
	begin_batch_plan = pkj_keep_plan("SELECT pgkafka_join.begin_batch()", 0, NULL);
	store_movies_plan = pkj_keep_plan("SELECT pgkafka_join.store_movies($1, $2, $3, $4)",
									  4, movies_args);
	join_waiting_plan = pkj_keep_plan("SELECT pgkafka_join.join_waiting($1, $2)",
									  2, join_args);
	store_rejected_plan = pkj_keep_plan("SELECT pgkafka_join.store_rejected($1, $2, $3, $4, $5, $6)",
										6, rejected_args);
	store_offsets_plan = pkj_keep_plan("SELECT pgkafka_join.store_offsets($1, $2, $3)",
									   3, offsets_args);
	queue_rejoin_plan = pkj_keep_plan("SELECT pgkafka_join.queue_rejoin($1, $2, $3, $4)",
									  4, queue_args);
	run_rejoins_plan = pkj_keep_plan("SELECT pgkafka_join.run_rejoins($1, $2, $3)",
									 3, run_args);
}

/* The movie ids and shares of a batch's movies, for join_waiting() */
static int64
join_copied_movies(Rows *movies)
{
	Datum		args[2];
	Rows		ids = *movies;
	bool		isnull;

	ids.ncolumns = 2;
	ids.columns[1] = movies->columns[3];
	args[0] = column_array(&ids, 0);
	args[1] = column_array(&ids, 1);
	if (SPI_execute_plan(join_waiting_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.join_waiting()");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									   &isnull));
}

/*
 * The ratings of the batch inside the join window, as far as the worker can
 * tell (the window is the same one SQL uses in the batch's transaction).
 */
static int
ratings_in_window(Rows *ratings, TimestampTz cutoff)
{
	int			n = 0;

	for (int i = 0; i < ratings->count; i++)
		if (DatumGetTimestampTz(ratings->columns[2].values[i]) >= cutoff)
			n++;
	return n;
}

/*
 * Queue the batch's ratings inside the window for run_rejoins(), with the
 * batch's cut-off: some of them wait for their movie, which another worker
 * may be storing now, and the pass that joins them later must judge the
 * window as this batch did.
 */
static void
queue_rejoin(int worker, Rows *ratings, TimestampTz cutoff)
{
	Rows		queued;
	static const Oid types[] = {INT8OID, INT4OID};
	Datum		args[4];

	rows_init(&queued, 2, types);
	for (int i = 0; i < ratings->count; i++)
	{
		int			row;

		if (DatumGetTimestampTz(ratings->columns[2].values[i]) < cutoff)
			continue;
		row = rows_add(&queued);
		rows_set(&queued, row, 0, ratings->columns[0].values[i]);
		rows_set(&queued, row, 1, ratings->columns[3].values[i]);
	}
	args[0] = Int32GetDatum(worker);
	args[1] = column_array(&queued, 0);
	args[2] = column_array(&queued, 1);
	args[3] = TimestampTzGetDatum(cutoff);
	if (SPI_execute_plan(queue_rejoin_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.queue_rejoin()");
}

/* Call one store function with a set of rows; returns what it returned */
static int64
store_rows(SPIPlanPtr plan, Rows *rows)
{
	Datum		args[MAX_COLUMNS];
	int			ret;
	bool		isnull;
	Datum		result;

	if (rows->count == 0)
		return 0;
	for (int i = 0; i < rows->ncolumns; i++)
		args[i] = column_array(rows, i);
	ret = SPI_execute_plan(plan, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(ret));
	if (SPI_tuptable->tupdesc->attrs[0].atttypid != INT8OID)
		return 0;
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(result);
}

static int
month_cmp(const void *a, const void *b)
{
	TimestampTz ta = *(const TimestampTz *) a;
	TimestampTz tb = *(const TimestampTz *) b;

	return ta < tb ? -1 : ta > tb ? 1 : 0;
}

/*
 * Ratings spread over many months need many partitions; creating them all
 * in the batch's transaction could exhaust the lock table
 * (max_locks_per_transaction) and fail the batch again at every retry.
 * So when a batch spans more than a few months, its partitions are created
 * first, a few months per transaction.  Creating a partition early is
 * harmless: it is only an empty table.
 */
#define MONTHS_IN_BATCH_TXN 8
#define MONTHS_PER_TXN 32

static void
create_partitions_ahead(Rows *ratings)
{
	Datum	   *values = ratings->columns[2].values;
	TimestampTz min = DT_NOEND,
				max = DT_NOBEGIN;
	TimestampTz *months;
	int			nmonths = 0;

	for (int i = 0; i < ratings->count; i++)
	{
		min = Min(min, DatumGetTimestampTz(values[i]));
		max = Max(max, DatumGetTimestampTz(values[i]));
	}
	if (ratings->count == 0 ||
		max - min < (TimestampTz) MONTHS_IN_BATCH_TXN * 28 * USECS_PER_DAY)
		return;

	/* the distinct months, as their first instant (UTC) */
	months = palloc(ratings->count * sizeof(TimestampTz));
	for (int i = 0; i < ratings->count; i++)
	{
		TimestampTz next;

		if (pkj_month_bounds(DatumGetTimestampTz(values[i]), &months[nmonths], &next))
			nmonths++;
	}
	qsort(months, nmonths, sizeof(TimestampTz), month_cmp);
	nmonths = qunique(months, nmonths, sizeof(TimestampTz), month_cmp);
	if (nmonths <= MONTHS_IN_BATCH_TXN)
		return;

	for (int first = 0; first < nmonths; first += MONTHS_PER_TXN)
	{
		int			n = Min(MONTHS_PER_TXN, nmonths - first);
		Datum	   *elems = palloc(n * sizeof(Datum));

		for (int i = 0; i < n; i++)
			elems[i] = TimestampTzGetDatum(months[first + i]);
		pkj_begin_spi("creating partitions for a batch");
		pkj_create_partitions_for(n, elems);
		pkj_end_spi();
	}
}

/* A movie of the batch: its id and its row */
typedef struct MovieRow
{
	int64		id;
	int			row;
} MovieRow;

/* sort_movie_rows(): by id, the comparison inlined into PostgreSQL's sort */
#define ST_SORT sort_movie_rows
#define ST_ELEMENT_TYPE MovieRow
#define ST_COMPARE(a, b) ((a)->id < (b)->id ? -1 : (a)->id > (b)->id ? 1 : 0)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * Does movies.updated_at have a default (now(), unless a DBA changed it)?
 * COPY leaves the column to it; without one, new movies are upserted.
 */
static bool
movies_updated_at_default(void)
{
	Relation	rel;
	AttrNumber	attnum;
	bool		has_default;

	rel = table_openrv(makeRangeVar("pgkafka_join", "movies", -1), RowExclusiveLock);
	attnum = attnameAttNum(rel, "updated_at", false);
	has_default = attnum > 0 &&
		TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atthasdef;
	table_close(rel, NoLock);
	return has_default;
}

/*
 * copy_new_movies
 *		Store a batch of movies that are all new with COPY, the fastest way
 *		into a table, as while a catalog is first loaded.
 *
 * The rows go in id order, so that each partition's primary key fills from
 * left to right, its pages at hand from one row to the next (and, for ids
 * that grow, by its fast path for the rightmost page), in COPY's binary
 * format (see pkj_copy_movies); updated_at is left to its default, now().
 *
 * Only for a batch without tombstones or repeated ids.  COPY runs in a
 * subtransaction: if an id is already stored, it is rolled back and false
 * returned, and the caller upserts the batch instead.  The caller holds the
 * ingest lock.
 */
static bool
copy_new_movies(Rows *movies)
{
	MovieRow   *order;
	int		   *rows;
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile bool copied = false;

	if (copy_backoff > 0)
	{
		copy_backoff--;
		return false;
	}

	order = palloc(movies->count * sizeof(MovieRow));
	for (int i = 0; i < movies->count; i++)
	{
		if (movies->columns[1].nulls[i])
			return false;		/* a tombstone */
		order[i].id = DatumGetInt64(movies->columns[0].values[i]);
		order[i].row = i;
	}
	sort_movie_rows(order, movies->count);
	for (int i = 1; i < movies->count; i++)
	{
		if (order[i].id == order[i - 1].id)
			return false;		/* an id twice: the last one must win */
	}
	if (!movies_updated_at_default())
		return false;

	rows = palloc(movies->count * sizeof(int));
	for (int i = 0; i < movies->count; i++)
		rows[i] = order[i].row;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		pkj_copy_movies(movies->count, rows, movies->columns[0].values,
						movies->columns[1].values, movies->columns[2].values,
						movies->columns[2].nulls);

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		copied = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			ReThrowError(edata);
		FreeErrorData(edata);
		copy_backoff = COPY_BACKOFF_BATCHES;
	}
	PG_END_TRY();

	return copied;
}

/* The offsets after the batch's messages, as rows for store_offsets() */
static void
offset_rows(PkjBatch *batch, Rows *offsets)
{
	static const Oid offset_types[] = {TEXTOID, INT4OID, INT8OID};
	ListCell   *lc;

	rows_init(offsets, 3, offset_types);
	foreach(lc, batch->offsets)
	{
		InputOffset *io = lfirst(lc);
		int			row = rows_add(offsets);

		rows_set(offsets, row, 0, CStringGetTextDatum(io->topic));
		rows_set(offsets, row, 1, Int32GetDatum(io->partition));
		rows_set(offsets, row, 2, Int64GetDatum(io->next_offset));
	}
}

/*
 * First statement of a transaction that stores input: take the ingest
 * lock; then check that ingest is not paused, that the offsets were not
 * reset since the partitions were assigned with offsets_generation, and
 * that the extension, locked against DROP EXTENSION until the commit, is
 * the one the partitions were assigned for.  False: store nothing.
 */
static bool
begin_batch(int64 offsets_generation)
{
	bool		isnull;
	int64		generation;

	/*
	 * Take a transaction id before any statement of the batch takes its
	 * snapshot.  A worker's rejoin, after its commit, waits for the other
	 * workers' transactions by their ids (wait_for_other_workers): a batch
	 * whose statement took its snapshot before that commit but had not
	 * written yet, and so had no id, would not be waited for, and a rating
	 * and its movie stored by the two would never be joined.
	 */
	(void) GetCurrentTransactionId();

	prepare_plans();
	if (SPI_execute_plan(begin_batch_plan, NULL, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.begin_batch()");
	generation = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull && generation == offsets_generation && pkj_lock_extension(pkj_kafka.extension_oid);
}

static void
ingest_error_callback(void *arg)
{
	PkjBatch   *batch = arg;

	errcontext("pgkafka_join storing a batch of %d messages: %d movies, %d ratings, %d rejected",
			   batch->count, batch->movies.count, batch->ratings.count,
			   batch->rejected.count);
}

/*
 * pkj_ingest_batch
 *		Store a batch and the offsets after it, in one transaction.  Returns
 *		with the transaction committed, unless the worker holds it open (see
 *		store_while_confirming()); the caller counts the batch in status
 *		once it is.  An error aborts the transaction whole and the batch is
 *		consumed again from the stored offsets.  Returns false, storing
 *		nothing (and aborting a transaction held open), if ingest is paused
 *		or the offsets were reset since the worker's partitions were
 *		assigned (see pause() and reset_offsets() in SQL); the
 *		caller then looks at control again.
 */
bool
pkj_ingest_batch(PkjWorker *worker, PkjBatch *batch, int64 *results)
{
	ErrorContextCallback errcallback;
	Rows		offsets;
	MemoryContext caller;
	MemoryContext old;
	TimestampTz cutoff;

	*results = 0;
	if (batch->count == 0)
		return true;

	/* everything of the batch lives in its context, reset by the caller */
	caller = MemoryContextSwitchTo(batch->cxt);

	errcallback.callback = ingest_error_callback;
	errcallback.arg = batch;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	batch->storing_contents = true;
	create_partitions_ahead(&batch->ratings);
	batch->storing_contents = false;

	pkj_begin_spi("storing a batch");

	old = MemoryContextSwitchTo(batch->cxt);
	if (!begin_batch(worker->offsets_generation))
	{
		MemoryContextSwitchTo(old);
		pkj_abort_spi();
		error_context_stack = errcallback.previous;
		MemoryContextSwitchTo(caller);
		return false;
	}

	/*
	 * What the settings make of the batch is computed before its messages
	 * are stored: an error it raises is the settings' fault, never a
	 * message's (see pkj_batch_storing_contents()).  Within the transaction
	 * it is the cut-off SQL computes too (now() is the transaction's start).
	 */
	cutoff = pkj_join_cutoff();

	batch->storing_contents = true;
	if (batch->movies.count > 0 && copy_new_movies(&batch->movies))
		*results += join_copied_movies(&batch->movies);
	else
		*results += store_rows(store_movies_plan, &batch->movies);
	if (batch->ratings.count > 0)
	{
		int			in_window = ratings_in_window(&batch->ratings, cutoff);
		Column	   *c = batch->ratings.columns;
		int64		joined = pkj_store_ratings(batch->ratings.count, c[0].values,
											   c[1].values, c[2].values,
											   c[3].values, c[4].values);

		*results += joined;
		/* some wait inside the window: another worker may store their movie now */
		if (pkj_workers > 1 && joined < in_window)
		{
			queue_rejoin(worker->index, &batch->ratings, cutoff);
			batch->rejoin = true;
		}
	}
	store_rows(store_rejected_plan, &batch->rejected);
	batch->storing_contents = false;

	offset_rows(batch, &offsets);
	store_rows(store_offsets_plan, &offsets);
	MemoryContextSwitchTo(old);

	pkj_end_spi();

	error_context_stack = errcallback.previous;
	MemoryContextSwitchTo(caller);
	return true;
}

/*
 * pkj_ingest_reject_single
 *		A batch of one message failed to store because of what the message
 *		holds (an error no parse check foresaw): keep the message as it came
 *		in rejected_messages, with the error as the reason, and store the
 *		offset after it, so that the worker goes on.  Returns false, storing
 *		nothing, under the same conditions as pkj_ingest_batch().
 */
bool
pkj_ingest_reject_single(PkjWorker *worker, PkjBatch *batch, const char *reason)
{
	MemoryContext caller = MemoryContextSwitchTo(batch->cxt);
	Rows		offsets;

	Assert(batch->count == 1);
	rows_init(&batch->rejected, 6, rejected_types);
	add_rejected(batch, &batch->first, reason);
	offset_rows(batch, &offsets);

	pkj_begin_spi("rejecting a message that could not be stored");
	MemoryContextSwitchTo(batch->cxt);
	if (!begin_batch(worker->offsets_generation))
	{
		pkj_abort_spi();
		MemoryContextSwitchTo(caller);
		return false;
	}
	store_rows(store_rejected_plan, &batch->rejected);
	store_rows(store_offsets_plan, &offsets);
	pkj_end_spi();
	MemoryContextSwitchTo(caller);
	pkj_status_count_batch(1, 0);
	return true;
}

/*
 * Wait until the transactions the other join workers are running now have
 * ended (committed or aborted), so that what they stored is visible to the
 * next statement.  Called at the start of a transaction that holds no lock.
 * A batch transaction has its id before its first snapshot (begin_batch),
 * so none that could have missed our last batch is passed over for lack of
 * an id.
 */
static void
wait_for_other_workers(void)
{
	List	   *pids = pkj_status_other_worker_pids();
	ListCell   *lc;

	foreach(lc, pids)
	{
		PGPROC	   *proc = BackendPidGetProc(lfirst_int(lc));
		TransactionId xid = proc ? proc->xid : InvalidTransactionId;

		if (TransactionIdIsValid(xid))
			XactLockTableWait(xid, NULL, NULL, XLTW_None);
	}
}

/*
 * pkj_ingest_rejoin
 *		Join the ratings this worker queued in rejoins (by its last batch,
 *		or before it stopped), once the other workers' transactions running
 *		now have ended.  Only its own: the transactions another worker's
 *		batch raced with may still be running, and only that worker's pass,
 *		after that batch's commit, waits for them.  With orphans, also the
 *		entries of workers that no longer exist (fewer pgkafka_join.workers
 *		since the server started, so none of their batches' rivals still
 *		runs).  Called after a batch that queued some, and whenever the
 *		worker (re)connects.  Returns the number of results produced.
 */
int64
pkj_ingest_rejoin(PkjWorker *worker, bool orphans)
{
	Datum		args[3];
	Datum	   *elems;
	int			n = list_length(worker->owned);
	int			lbs[1] = {1};
	int64		produced;
	bool		isnull;

	if (worker->owned == NIL)
		return 0;
	elems = palloc(n * sizeof(Datum));
	for (int i = 0; i < n; i++)
		elems[i] = Int32GetDatum(list_nth_int(worker->owned, i));
	args[0] = Int32GetDatum(worker->index);
	args[1] = PointerGetDatum(construct_md_array(elems, NULL, 1, &n, lbs, INT4OID,
												 sizeof(int32), true, TYPALIGN_INT));
	args[2] = BoolGetDatum(orphans);

	pkj_begin_spi("joining ratings another worker's movies may have come for");
	wait_for_other_workers();
	prepare_plans();
	if (!pkj_lock_extension(pkj_kafka.extension_oid))
	{
		pkj_abort_spi();
		return 0;
	}
	if (SPI_execute_plan(run_rejoins_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.run_rejoins()");
	produced = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	pkj_end_spi();
	if (produced > 0)
	{
		pkj_status_count_batch(0, produced);
		pkj_status_count_rejoined(produced);
	}
	return produced;
}

/* Did the batch just stored queue ratings for pkj_ingest_rejoin()? */
bool
pkj_batch_queued_rejoin(PkjBatch *batch)
{
	return batch->rejoin;
}

/*
 * Was the batch storing its messages' rows when an error escaped
 * pkj_ingest_batch()?  Only then can the error be a message's fault; one
 * raised while locking, reading the settings or storing the offsets never
 * is.
 */
bool
pkj_batch_storing_contents(PkjBatch *batch)
{
	return batch->storing_contents;
}
