/*-------------------------------------------------------------------------
 *
 * join.c
 *	  A batch of ratings joined with the catalog and stored: the function
 *	  pgkafka_join.store_ratings(), which the worker calls directly.
 *
 * Every rating costs one lookup in the catalog's primary key, one row in
 * ratings and, when its movie is stored and it is inside the join window,
 * one row in rated_movies.  Nothing else is done per rating:
 *
 *	- the batch is sorted by movie id (the ratings of one movie keep their
 *	  Kafka order), so that the lookups walk each index in order, and each
 *	  movie is looked up once;
 *	- a lookup goes straight to the primary key of the catalog partition
 *	  that holds the id, found by PostgreSQL's own hash of the partition
 *	  key, through one index scan per partition, rescanned per id;
 *	- both tables are written by COPY in binary form, which fills a page at
 *	  a time, routes rows to their monthly partition, maintains the
 *	  indexes and fires the triggers a DBA may add, as an INSERT would.
 *
 * Results are numbered by nextval() of rated_movies_id_seq, in the order
 * they are written (its privileges checked once per batch).  Privileges are
 * those of the caller, as for SQL: SELECT on movies, INSERT on ratings and
 * rated_movies, and the sequence's.
 *
 * Not here: the batch's transaction, its movies and offsets (ingest.c), and
 * publishing the results (publish.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "port/pg_bswap.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "pgkafka_join.h"

PG_FUNCTION_INFO_V1(pgkafka_join_store_ratings);

/*
 * A table of the catalog: the movies table itself or one of its
 * partitions, at any level.  A partitioned one routes an id to the
 * partition that holds it; a leaf has the primary key to look it up in.
 * Partitions are opened on first use, for one batch.
 */
typedef struct CatalogPart
{
	Relation	rel;
	/* partitioned */
	PartitionKey key;
	PartitionDesc desc;
	int			modulus;		/* greatest modulus of its hash partitions */
	struct CatalogPart **children;	/* by partition index, NULL until used */
	/* leaf */
	Relation	pkey;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	AttrNumber	title_att;
	AttrNumber	year_att;
} CatalogPart;

/* A rating of the batch: its movie and its place in the batch */
typedef struct RatingOrder
{
	int64		movie_id;
	int			row;
} RatingOrder;

/* What copy_source_read() hands to COPY, and how far it got */
static StringInfo copy_source;
static int	copy_source_pos;

static SPIPlanPtr create_partitions_plan = NULL;

/*
 * pkj_join_cutoff
 *		The oldest rated_at inside the join window now: now() minus
 *		pgkafka_join.join_window, as join_window() says in SQL.
 */
TimestampTz
pkj_join_cutoff(void)
{
	Interval   *window = DatumGetIntervalP(DirectFunctionCall3(interval_in,
															   CStringGetDatum(pkj_join_window),
															   ObjectIdGetDatum(InvalidOid),
															   Int32GetDatum(-1)));

	return DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
												   TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
												   IntervalPGetDatum(window)));
}

static Oid
extension_relid(const char *name)
{
	return get_relname_relid(name, get_namespace_oid("pgkafka_join", false));
}

/* COPY's data source: the rows built by the caller of copy_rows() */
static int
copy_source_read(void *outbuf, int minread, int maxread)
{
	int			n = Min(maxread, copy_source->len - copy_source_pos);

	memcpy(outbuf, copy_source->data + copy_source_pos, n);
	copy_source_pos += n;
	return n;
}

/*
 * copy_rows
 *		COPY data, rows in COPY's binary format, into the columns of
 *		pgkafka_join.relname, as COPY FROM STDIN would: with the caller's
 *		INSERT privileges checked (and refused under row-level security, as
 *		COPY FROM is), the rows routed to partitions, indexes and triggers.
 *
 * The text fields are in the database's encoding; PostgreSQL reads those of
 * binary rows in the client encoding, so that is the database's for the
 * time of the COPY.
 */
static void
copy_rows(const char *relname, List *attnames, StringInfo data)
{
	Relation	rel;
	ParseState *pstate;
	RangeTblEntry *rte;
	ParseNamespaceItem *nsitem;
	CopyFromState cstate;
	ListCell   *lc;
	List	   *options;
	int			client_encoding = pg_get_client_encoding();
	bool		switch_encoding = client_encoding != GetDatabaseEncoding();

	rel = table_openrv(makeRangeVar("pgkafka_join", pstrdup(relname), -1), RowExclusiveLock);
	pstate = make_parsestate(NULL);
	nsitem = addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	rte = nsitem->p_rte;
	rte->requiredPerms = ACL_INSERT;
	foreach(lc, attnames)
	{
		AttrNumber	attnum = attnameAttNum(rel, strVal(lfirst(lc)), false);

		rte->insertedCols = bms_add_member(rte->insertedCols,
										   attnum - FirstLowInvalidHeapAttributeNumber);
	}
	ExecCheckRTPerms(pstate->p_rtable, true);
	if (check_enable_rls(RelationGetRelid(rel), InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot store into \"%s\" under row-level security",
						RelationGetRelationName(rel)),
				 errhint("Call the function as a role that bypasses row-level security.")));

	options = list_make1(makeDefElem("format", (Node *) makeString("binary"), -1));
	copy_source = data;
	copy_source_pos = 0;
	cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, copy_source_read,
						   attnames, options);
	if (switch_encoding)
		SetClientEncoding(GetDatabaseEncoding());
	PG_TRY();
	{
		(void) CopyFrom(cstate);
	}
	PG_FINALLY();
	{
		if (switch_encoding)
			SetClientEncoding(client_encoding);
	}
	PG_END_TRY();
	EndCopyFrom(cstate);
	free_parsestate(pstate);
	table_close(rel, NoLock);
}

/* Open a table of the catalog, for the lookups of one batch */
static CatalogPart *
catalog_open(Oid relid, Snapshot snapshot)
{
	CatalogPart *part = palloc0(sizeof(CatalogPart));
	Relation	rel = table_open(relid, AccessShareLock);
	AttrNumber	id_att = attnameAttNum(rel, "id", false);

	part->rel = rel;
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
	{
		part->key = RelationGetPartitionKey(rel);
		if (part->key->strategy != PARTITION_STRATEGY_HASH ||
			part->key->partnatts != 1 || part->key->partattrs[0] != id_att)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot look movies up in \"%s\": it is not partitioned by hash of id",
							RelationGetRelationName(rel)),
					 errhint("Partition the catalog by HASH (id) at every level, as the extension creates it.")));
		part->desc = RelationGetPartitionDesc(rel, true);
		if (part->desc->nparts > 0)
			part->modulus = get_hash_partition_greatest_modulus(part->desc->boundinfo);
		part->children = palloc0(part->desc->nparts * sizeof(CatalogPart *));
	}
	else
	{
		Oid			pkey = RelationGetPrimaryKeyIndex(rel);

		if (OidIsValid(pkey))
			part->pkey = index_open(pkey, AccessShareLock);
		if (part->pkey == NULL ||
			part->pkey->rd_index->indnkeyatts != 1 ||
			part->pkey->rd_index->indkey.values[0] != id_att ||
			part->pkey->rd_rel->relam != BTREE_AM_OID)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot look movies up in \"%s\": it has no btree primary key on id",
							RelationGetRelationName(rel))));
		part->title_att = attnameAttNum(rel, "title", false);
		part->year_att = attnameAttNum(rel, "release_year", false);
		part->scan = index_beginscan(rel, part->pkey, snapshot, 1, 0);
		part->slot = table_slot_create(rel, NULL);
	}
	return part;
}

/* Close what catalog_open() and catalog_leaf() opened; locks are kept */
static void
catalog_close(CatalogPart *part)
{
	if (part->scan)
	{
		index_endscan(part->scan);
		ExecDropSingleTupleTableSlot(part->slot);
		index_close(part->pkey, NoLock);
	}
	for (int i = 0; part->desc && i < part->desc->nparts; i++)
		if (part->children[i])
			catalog_close(part->children[i]);
	table_close(part->rel, NoLock);
}

/*
 * The leaf partition of the catalog that holds the id, if it is stored:
 * hash routing, as PostgreSQL's tuple routing does it.  NULL if no
 * partition accepts the id.
 */
static CatalogPart *
catalog_leaf(CatalogPart *part, int64 id, Snapshot snapshot)
{
	while (part->scan == NULL)
	{
		Datum		value = Int64GetDatum(id);
		bool		isnull = false;
		uint64		hash;
		int			index;

		if (part->desc->nparts == 0)
			return NULL;
		hash = compute_partition_hash_value(1, part->key->partsupfunc,
											part->key->partcollation,
											&value, &isnull);
		index = part->desc->boundinfo->indexes[hash % part->modulus];
		if (index < 0)
			return NULL;
		if (part->children[index] == NULL)
			part->children[index] = catalog_open(part->desc->oids[index], snapshot);
		part = part->children[index];
	}
	return part;
}

/* Column names as COPY's column list */
static List *
name_list(const char *const *names, int n)
{
	List	   *list = NIL;

	for (int i = 0; i < n; i++)
		list = lappend(list, makeString(unconstify(char *, names[i])));
	return list;
}

/*
 * sort_rating_order(): by movie id, then row, the comparison inlined into
 * PostgreSQL's sort
 */
#define ST_SORT sort_rating_order
#define ST_ELEMENT_TYPE RatingOrder
#define ST_COMPARE(a, b) \
	((a)->movie_id != (b)->movie_id ? ((a)->movie_id < (b)->movie_id ? -1 : 1) : \
	 (a)->row - (b)->row)
#define ST_SCOPE static
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * pkj_month_bounds
 *		The first instant (UTC) of the month of t in *start, and of the month
 *		after it in *next; false for a time stamp without a month (infinite).
 */
bool
pkj_month_bounds(TimestampTz t, TimestampTz *start, TimestampTz *next)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (timestamp2tm(t, NULL, &tm, &fsec, NULL, NULL) != 0)
		return false;
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	if (tm2timestamp(&tm, 0, NULL, start) != 0)
		return false;
	if (++tm.tm_mon > MONTHS_PER_YEAR)
	{
		tm.tm_mon = 1;
		tm.tm_year++;
	}
	return tm2timestamp(&tm, 0, NULL, next) == 0;
}

/*
 * pkj_create_partitions_for
 *		Partitions of ratings and rated_movies for the months of the count
 *		time stamps given (create_partitions_for() in SQL), in the caller's
 *		transaction.
 */
void
pkj_create_partitions_for(int count, const Datum *times)
{
	int			lbs[1] = {1};
	Datum		args[1];

	args[0] = PointerGetDatum(construct_md_array(unconstify(Datum *, times), NULL, 1,
												 &count, lbs, TIMESTAMPTZOID, sizeof(TimestampTz),
												 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (create_partitions_plan == NULL)
	{
		Oid			argtypes[1] = {TIMESTAMPTZARRAYOID};
		SPIPlanPtr	plan = SPI_prepare("SELECT pgkafka_join.create_partitions_for($1)",
									   1, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare a call of pgkafka_join.create_partitions_for()");
		create_partitions_plan = plan;
	}
	if (SPI_execute_plan(create_partitions_plan, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not call pgkafka_join.create_partitions_for()");
	SPI_finish();
}

/*
 * The partitions for the months of a batch of ratings.  Usually all ratings
 * fall in one month: then create_partitions_for() is given one of them only.
 */
static void
create_batch_partitions(int count, const Datum *rated_ats)
{
	TimestampTz min = DT_NOEND,
				max = DT_NOBEGIN;
	TimestampTz month,
				next_month;

	for (int i = 0; i < count; i++)
	{
		min = Min(min, DatumGetTimestampTz(rated_ats[i]));
		max = Max(max, DatumGetTimestampTz(rated_ats[i]));
	}
	if (pkj_month_bounds(min, &month, &next_month) && max < next_month)
		count = 1;
	pkj_create_partitions_for(count, rated_ats);
}

/*
 * Fields of binary COPY rows, in network byte order, written into room made
 * beforehand; each returns where the next one goes.
 */
static inline char *
put_bytes(char *p, const void *value, size_t len)
{
	memcpy(p, value, len);
	return p + len;
}

static inline char *
put_int16(char *p, int16 v)
{
	uint16		n = pg_hton16((uint16) v);

	return put_bytes(p, &n, sizeof(n));
}

static inline char *
put_int32(char *p, int32 v)
{
	uint32		n = pg_hton32((uint32) v);

	return put_bytes(p, &n, sizeof(n));
}

static inline char *
put_int64(char *p, int64 v)
{
	uint64		n = pg_hton64((uint64) v);

	return put_bytes(p, &n, sizeof(n));
}

/* A field of 8 bytes: bigint, double precision, timestamptz */
static inline char *
put_field8(char *p, int64 v)
{
	return put_int64(put_int32(p, 8), v);
}

static inline char *
put_field4(char *p, int32 v)
{
	return put_int32(put_int32(p, 4), v);
}

static inline int64
float8_bits(Datum d)
{
	float8		f = DatumGetFloat8(d);
	int64		bits;

	memcpy(&bits, &f, sizeof(bits));
	return bits;
}

/* The most bytes of a row below, title aside: 10 fields and their lengths */
#define ROW_BYTES (2 + 10 * 4 + 10 * 8)

static void
copy_begin(StringInfo buf)
{
	static const char header[] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";

	initStringInfo(buf);
	appendBinaryStringInfo(buf, header, 19);
}

static void
copy_end(StringInfo buf)
{
	enlargeStringInfo(buf, 2);
	buf->len = put_int16(buf->data + buf->len, -1) - buf->data;
}

/*
 * pkj_copy_movies
 *		COPY count movies into pgkafka_join.movies (id, title, release_year),
 *		the movie of row rows[i] i-th, with the caller's rights.  Binary
 *		COPY: nothing to escape, no number to parse; updated_at is left to
 *		its default.
 */
void
pkj_copy_movies(int count, const int *rows, const Datum *ids, const Datum *titles,
				const Datum *release_years, const bool *release_year_nulls)
{
	static const char *const columns[] = {"id", "title", "release_year"};
	StringInfoData data;

	copy_begin(&data);
	for (int i = 0; i < count; i++)
	{
		int			row = rows[i];
		text	   *title = DatumGetTextPP(titles[row]);
		int			title_len = VARSIZE_ANY_EXHDR(title);
		char	   *p;

		enlargeStringInfo(&data, ROW_BYTES + title_len);
		p = data.data + data.len;
		p = put_int16(p, 3);
		p = put_field8(p, DatumGetInt64(ids[row]));
		p = put_int32(p, title_len);
		p = put_bytes(p, VARDATA_ANY(title), title_len);
		p = release_year_nulls[row] ? put_int32(p, -1) :
			put_field4(p, DatumGetInt32(release_years[row]));
		data.len = p - data.data;
	}
	copy_end(&data);
	copy_rows("movies", name_list(columns, lengthof(columns)), &data);
}

/*
 * The rights pkj_store_ratings() needs on the catalog, checked as the
 * executor would: it reads the catalog's index directly.
 */
static void
check_catalog_access(Oid movies, Oid sequence)
{
	if (!OidIsValid(movies) || !OidIsValid(sequence))
		elog(ERROR, "pgkafka_join.movies or pgkafka_join.rated_movies_id_seq is missing");
	if (pg_class_aclcheck(movies, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLE, "movies");
	if (check_enable_rls(movies, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot join ratings with \"movies\" under row-level security"),
				 errhint("Call the function as a role that bypasses row-level security.")));
}

/* A movie of the catalog, as a result takes it */
typedef struct FoundMovie
{
	text	   *title;			/* NULL: none */
	int			title_len;
	Datum		year;
	bool		null_year;
} FoundMovie;

/*
 * Look movie_id up in the catalog, through the primary key of the
 * partition that holds it.  Returns whether it is stored, and fills *movie
 * if so.
 */
static inline bool
lookup_movie(CatalogPart *catalog, int64 movie_id, Snapshot snapshot, FoundMovie *movie)
{
	CatalogPart *leaf = catalog_leaf(catalog, movie_id, snapshot);
	ScanKeyData key;
	bool		null_title;
	Datum		d;

	movie->title = NULL;
	movie->title_len = 0;
	movie->year = (Datum) 0;
	movie->null_year = true;
	if (leaf == NULL)
		return false;
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(movie_id));
	index_rescan(leaf->scan, &key, 1, NULL, 0);
	if (!index_getnext_slot(leaf->scan, ForwardScanDirection, leaf->slot))
		return false;
	d = slot_getattr(leaf->slot, leaf->title_att, &null_title);
	movie->title = null_title ? NULL : DatumGetTextPP(d);
	movie->title_len = movie->title ? VARSIZE_ANY_EXHDR(movie->title) : 0;
	movie->year = slot_getattr(leaf->slot, leaf->year_att, &movie->null_year);
	return true;
}

/* A row of pgkafka_join.ratings, as pkj_store_ratings() copies it */
static inline void
append_rating(StringInfo buf, int64 movie_id, Datum rating, TimestampTz rated_at,
			  Datum partition, Datum offset, TimestampTz now, bool joined)
{
	char	   *p;

	enlargeStringInfo(buf, ROW_BYTES);
	p = buf->data + buf->len;
	p = put_int16(p, 7);
	p = put_field8(p, movie_id);
	p = put_field8(p, float8_bits(rating));
	p = put_field8(p, rated_at);
	p = put_field4(p, DatumGetInt32(partition));
	p = put_field8(p, DatumGetInt64(offset));
	p = put_field8(p, now);
	p = put_int32(p, 1);
	*p++ = joined ? 1 : 0;
	buf->len = p - buf->data;
}

/*
 * A row of pgkafka_join.rated_movies, as pkj_store_ratings() copies it: a
 * result of the share of the partition its rating came on
 */
static inline void
append_result(StringInfo buf, int64 id, int64 movie_id, const FoundMovie *movie,
			  Datum rating, TimestampTz rated_at, TimestampTz now, Datum partition,
			  Datum offset)
{
	char	   *p;

	enlargeStringInfo(buf, ROW_BYTES + movie->title_len);
	p = buf->data + buf->len;
	p = put_int16(p, 10);
	p = put_field8(p, id);
	p = put_field8(p, movie_id);
	if (movie->title == NULL)
		p = put_int32(p, -1);
	else
	{
		p = put_int32(p, movie->title_len);
		p = put_bytes(p, VARDATA_ANY(movie->title), movie->title_len);
	}
	p = movie->null_year ? put_int32(p, -1) : put_field4(p, DatumGetInt32(movie->year));
	p = put_field8(p, float8_bits(rating));
	p = put_field8(p, rated_at);
	p = put_field8(p, now);
	p = put_field4(p, DatumGetInt32(partition));
	p = put_field8(p, DatumGetInt64(offset));
	p = put_field4(p, DatumGetInt32(partition));
	buf->len = p - buf->data;
}

/*
 * Which ratings of the batch have their result on the output topic already:
 * found there by recover_results() (see publish.c) after the database lost
 * the commit that stored them.  They are stored as joined, with no second
 * result, and leave recovered_ratings.  NULL when none does, the usual case,
 * which costs one probe of the empty table.
 */
static bool *
recovered_rows(int count, const Datum *partitions, const Datum *offsets)
{
	static SPIPlanPtr any_plan = NULL;
	static SPIPlanPtr take_plan = NULL;
	Oid			argtypes[2] = {INT4ARRAYOID, INT8ARRAYOID};
	Datum		args[2];
	bool	   *recovered = NULL;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (any_plan == NULL)
	{
		any_plan = SPI_prepare("SELECT EXISTS (SELECT FROM pgkafka_join.recovered_ratings)",
							   0, NULL);
		take_plan = SPI_prepare("DELETE FROM pgkafka_join.recovered_ratings r "
								"USING unnest($1, $2) WITH ORDINALITY AS b(p, o, n) "
								"WHERE r.kafka_partition = b.p AND r.kafka_offset = b.o "
								"RETURNING b.n",
								2, argtypes);
		if (any_plan == NULL || take_plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(any_plan);
		SPI_keepplan(take_plan);
	}
	if (SPI_execute_plan(any_plan, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.recovered_ratings");
	if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
	{
		args[0] = PointerGetDatum(construct_array(unconstify(Datum *, partitions), count,
												  INT4OID, sizeof(int32), true, TYPALIGN_INT));
		args[1] = PointerGetDatum(construct_array(unconstify(Datum *, offsets), count,
												  INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
												  TYPALIGN_DOUBLE));
		if (SPI_execute_plan(take_plan, args, NULL, false, 0) != SPI_OK_DELETE_RETURNING)
			elog(ERROR, "could not update pgkafka_join.recovered_ratings");
		if (SPI_processed > 0)
		{
			recovered = SPI_palloc(count * sizeof(bool));
			memset(recovered, 0, count * sizeof(bool));
			for (uint64 i = 0; i < SPI_processed; i++)
				recovered[DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1,
													  &isnull)) - 1] = true;
		}
	}
	SPI_finish();
	return recovered;
}

/*
 * pkj_store_ratings
 *		Store a batch of ratings, count values in each column, and publish
 *		those whose movie is stored and which are inside the join window,
 *		as results of the partition each rating came on.  The others wait
 *		for their movie (join_waiting) or, if too old, are kept unpublished.
 *		Returns the number of rated movies produced.
 */
int64
pkj_store_ratings(int count, const Datum *movie_ids, const Datum *ratings,
				  const Datum *rated_ats, const Datum *partitions,
				  const Datum *offsets)
{
	static const char *const rating_columns[] = {
		"movie_id", "rating", "rated_at", "kafka_partition", "kafka_offset",
		"received_at", "joined"
	};
	static const char *const result_columns[] = {
		"id", "movie_id", "title", "release_year", "rating", "rated_at",
		"joined_at", "kafka_partition", "kafka_offset", "share"
	};
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz cutoff = pkj_join_cutoff();
	Oid			movies = extension_relid("movies");
	Oid			sequence = extension_relid("rated_movies_id_seq");
	RatingOrder *order;
	bool	   *recovered;
	bool		sequence_checked = false;
	Snapshot	snapshot;
	CatalogPart *catalog;
	StringInfoData stored;
	StringInfoData published;
	int64		produced = 0;

	if (count == 0)
		return 0;
	check_catalog_access(movies, sequence);
	create_batch_partitions(count, rated_ats);
	recovered = recovered_rows(count, partitions, offsets);

	order = palloc(count * sizeof(RatingOrder));
	for (int i = 0; i < count; i++)
	{
		order[i].movie_id = DatumGetInt64(movie_ids[i]);
		order[i].row = i;
	}
	sort_rating_order(order, count);

	/* see what the statements before, in this transaction, stored */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	snapshot = GetActiveSnapshot();
	catalog = catalog_open(movies, snapshot);

	copy_begin(&stored);
	copy_begin(&published);
	for (int i = 0; i < count;)
	{
		int64		movie_id = order[i].movie_id;
		FoundMovie	movie;
		bool		found = lookup_movie(catalog, movie_id, snapshot, &movie);

		/* the movie's ratings, in Kafka order */
		for (; i < count && order[i].movie_id == movie_id; i++)
		{
			int			row = order[i].row;
			TimestampTz rated_at = DatumGetTimestampTz(rated_ats[row]);
			bool		joined = found && rated_at >= cutoff;

			/* its result is on the output topic: what was published stands */
			if (recovered && recovered[row])
			{
				append_rating(&stored, movie_id, ratings[row], rated_at,
							  partitions[row], offsets[row], now, true);
				continue;
			}
			append_rating(&stored, movie_id, ratings[row], rated_at,
						  partitions[row], offsets[row], now, joined);
			if (!joined)
				continue;
			/* nextval()'s own check, made once for the batch */
			if (!sequence_checked &&
				pg_class_aclcheck(sequence, GetUserId(), ACL_USAGE | ACL_UPDATE) != ACLCHECK_OK)
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("permission denied for sequence %s",
								get_rel_name(sequence))));
			sequence_checked = true;
			append_result(&published, nextval_internal(sequence, false), movie_id,
						  &movie, ratings[row], rated_at, now, partitions[row],
						  offsets[row]);
			produced++;
		}
	}
	catalog_close(catalog);
	copy_end(&stored);
	copy_end(&published);

	copy_rows("ratings", name_list(rating_columns, lengthof(rating_columns)), &stored);
	if (produced > 0)
		copy_rows("rated_movies", name_list(result_columns, lengthof(result_columns)),
				  &published);
	PopActiveSnapshot();
	return produced;
}

/*
 * store_ratings(movie_ids bigint[], ratings double precision[],
 *				 rated_ats timestamptz[], kafka_partitions integer[],
 *				 kafka_offsets bigint[]) -> bigint
 *
 * pkj_store_ratings() for SQL: one rating per position of the arrays, which
 * must have the same length and no NULL.  Returns the number of rated
 * movies produced.
 */
Datum
pgkafka_join_store_ratings(PG_FUNCTION_ARGS)
{
	static const Oid types[5] = {INT8OID, FLOAT8OID, TIMESTAMPTZOID, INT4OID, INT8OID};
	Datum	   *columns[5];
	int			count = 0;

	for (int i = 0; i < 5; i++)
	{
		int			n = 0;
		bool	   *nulls = NULL;

		columns[i] = NULL;
		if (!PG_ARGISNULL(i))
		{
			int16		typlen;
			bool		typbyval;
			char		typalign;

			get_typlenbyvalalign(types[i], &typlen, &typbyval, &typalign);
			deconstruct_array(PG_GETARG_ARRAYTYPE_P(i), types[i], typlen, typbyval,
							  typalign, &columns[i], &nulls, &n);
		}
		for (int j = 0; j < n; j++)
			if (nulls[j])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("a batch of ratings cannot hold null values")));
		if (i > 0 && n != count)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("the arrays of a batch of ratings must have the same length")));
		count = n;
	}
	PG_RETURN_INT64(pkj_store_ratings(count, columns[0], columns[1], columns[2],
									  columns[3], columns[4]));
}
