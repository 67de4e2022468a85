/*-------------------------------------------------------------------------
 *
 * ownership.c
 *	  Which input partitions a join worker owns, and the claims that keep
 *	  two servers from owning the same one.
 *
 * Ownership
 * ---------
 * Both input topics are co-partitioned: partition p of "movies" and
 * partition p of "ratings" hold the same movie ids.  A server owns the
 * partitions listed in pgkafka_join.partitions (all by default); its worker
 * i owns those at positions i, i + workers, i + 2 * workers, ... of the
 * sorted list.  A worker consumes partition p of both topics and publishes
 * the results of share p (see rated_movies.share): one writer per share.
 * Worker 0 also publishes share -1, the results made before version 1.1.
 *
 * Claims
 * ------
 * Two servers that own the same partition would both publish its results.
 * Each server claims its partitions in Kafka: the offset of partition p of
 * the ratings topic (of the movies topic while there is no ratings topic),
 * in the group "pgkafka_join.owners.<output topic>", is the owner's clock
 * in milliseconds, and its metadata the owner's identity (the publisher's
 * transactional id before any worker suffix), a tab, the transactional id
 * of the worker's own producer, and NO_STATE_MARK while the server holds
 * nothing of those partitions (no input position stored).  The owner
 * writes it again every CLAIM_RENEW_MS.  A worker that finds a partition
 * claimed by another identity watches the claim for
 * CLAIM_LAPSE_MS: if it changes, the other owner is alive and the newcomer
 * refuses (it came second); if not, the claim has lapsed.  A lapsed claim
 * is taken over only if its holder held nothing of the partitions, or this
 * server holds their state (input positions stored here); a server holding
 * nothing never takes over partitions whose state is elsewhere, since it
 * would consume them from the beginning and publish their results again.
 * A handover, left by a server that released partitions, is nobody's
 * claim: it is taken at once, with the state it names (see "Moves").  A
 * worker taking over partitions it did not claim last reads its claims
 * back CLAIM_CONFIRM_MS later, and refuses if another server wrote in
 * between; every renewal checks the same.  Of two servers started at the same moment, the last to
 * write keeps the partitions.  No clock is compared between servers, and
 * every interval is timed on the monotonic clock, which no clock step
 * moves.  Meanwhile the worker stores what it consumes in a transaction it
 * commits only once the claims hold (see worker.c).
 *
 * Fencing
 * -------
 * A claim also names the transactional id of the producer that publishes
 * the partition's results.  A server that takes over lapsed claims fences
 * those producers once its own claims are confirmed, before it stores or
 * publishes anything: it initializes transactions with each of their ids
 * (pkj_kafka_fence()), and the brokers abort the transaction that id left
 * open and refuse the old producer every later request.  An owner that was
 * only stalled (frozen, swapped out, cut off) and wakes up in the middle of
 * a transaction can then commit none: exactness does not rest on the
 * owner noticing in time that its claims lapsed.
 *
 * Claims fail closed: an owner whose last good renewal is older than half
 * the lapse stores and publishes nothing until it renews, whether the
 * brokers did not answer or the worker itself was stalled (a long batch, a
 * lock wait, a frozen process).  Every commit of a transaction that wrote
 * something checks it (claims_guard_commit(), a pre-commit callback), and
 * so does the publisher before a Kafka commit (pkj_claims_fresh()); a
 * renewal that is due is made there, so a long step does not fail for
 * being long.  What this cannot exclude is a stall between that check and
 * the commit itself: see "Several servers" in docs/guarantees.md.
 *
 * Assignment
 * ----------
 * The partitions owned are assigned to the consumer at the offsets stored
 * in PostgreSQL, between batches, so that consumption starts exactly where
 * the last committed batch ended.  Whether to consume, and what to do with
 * a batch, is the loop's (worker.c).
 *
 * The catalog comes first: a partition whose movies are behind the end of
 * the movies partition when it is assigned (a first start, a catch-up
 * after downtime, partitions taken over) has only its movies assigned
 * until they are consumed up to that end, and stored: then its ratings are
 * assigned too (the next assignment, before the next batch).  A rating is
 * thus never joined with a version of its movie that the topic had already
 * replaced or deleted when the partition was taken, which consuming both
 * at once would do, the order between two topics being arbitrary.  The end
 * is the one of the first assignment only: a catalog updated without pause
 * would otherwise never let the ratings in.  The consumer reports the end
 * of a partition (enable.partition.eof), past transaction markers and
 * compacted offsets, which a message's offset does not show.
 *
 * Not here: consuming and storing (consume.c, ingest.c), and what the worker
 * does while it waits for its claims (worker.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>
#include <time.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "pgkafka_join.h"
#include "kafka.h"

/* How often an owner writes its claims again */
#define CLAIM_RENEW_MS 2000
/* How long after writing new claims they are read back */
#define CLAIM_CONFIRM_MS 500
/* How long a claim not written again is watched before it lapses */
#define CLAIM_LAPSE_MS 10000
/* Kafka calls of the claims give up after this long */
#define CLAIM_TIMEOUT_MS 5000
/* An owner stores and publishes nothing once its last renewal is this old */
#define CLAIM_FRESH_MS (CLAIM_LAPSE_MS / 2)
/* Ends a claim's metadata while its server holds nothing of the partitions */
#define NO_STATE_MARK "\tholds nothing"
/* Ends a handover's metadata, before its three numbers (see "Moves") */
#define HANDOVER_MARK "\treleased "

/* The topic whose partitions the claims are written on (the ratings topic) */
static char claim_topic[256];

/* A partition handed over by the server that released it (see "Moves") */
typedef struct Handover
{
	int32		partition;
	char	   *server;			/* the identity of the server that released it */
	int64		ratings_offset; /* where its ratings are consumed from */
	int64		next_offset;	/* how far that server had stored them */
	int64		last_id;		/* the last result id of the share, published */
} Handover;

/*
 * The catalog before the ratings, for the current consumer: the movies
 * partitions whose ratings wait (offset: the end to reach; -1 while the
 * brokers did not say), how far the consumer got in each, and the
 * partitions whose ratings are let in
 */
static struct
{
	uint64		connection;		/* pkj_kafka.connection they are of */
	rd_kafka_topic_partition_list_t *ends;
	rd_kafka_topic_partition_list_t *reached;
	List	   *done;			/* TopMemoryContext */
} catalog;

/* The state of the claims of the current Kafka handles; times: mono_ms() */
static struct
{
	bool		held;			/* claims written and confirmed */
	int64		confirm_at;		/* read back then; 0: nothing to confirm */
	int64		renew_at;		/* write again then */
	int64		renewed_at;		/* the last good renewal was sent then */
	int64		watch_until;	/* foreign claims watched until then */
	rd_kafka_topic_partition_list_t *watched;	/* foreign claims as first seen */
	List	   *owned;			/* the partitions claimed (TopMemoryContext) */
	List	   *fence;			/* producers of lapsed claims, to fence */
	bool		holds_state;	/* input positions of them stored here */
	bool		receive_due;	/* handovers noted may wait to be set up */
	bool		handovers;		/* handovers noted by these claims */
	bool		refused_logged;
	bool		takeover_refused_logged;	/* said that a lapsed claim is not taken */
	bool		stale_logged;	/* said that the claims were not renewed */
} claims;

static bool guard_registered = false;

/* Released partitions whose handover is still to be written */
static List *to_announce = NIL;

/* This worker's partitions (by pgkafka_join.partitions) it released */
static List *released_here = NIL;

static void claims_guard_commit(XactEvent event, void *arg);
static bool note_handovers(rd_kafka_topic_partition_list_t *found);
static List *released_among(List *partitions, bool done);
static bool announce_releases(List *released);
static List *handed_back(List *released);

/*
 * Milliseconds on the monotonic clock: claims are timed on it, so that a
 * step of the wall clock (NTP, a DBA) neither skips renewals nor shortens a
 * watch.
 */
static int64
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * pkj_owned_partitions
 *		The partitions worker number "worker" owns, given the partition
 *		count of the input topics; those pgkafka_join.partitions lists beyond
 *		the count go to *beyond.
 */
List *
pkj_owned_partitions(int worker, int npartitions, List **beyond)
{
	List	   *server = NIL;
	List	   *owned = NIL;
	char	   *errmsg;
	ListCell   *lc;
	int			position = 0;

	*beyond = NIL;
	if (!pkj_parse_partitions(pkj_partitions, &server, &errmsg))
		elog(ERROR, "pgkafka_join.partitions: %s", errmsg);	/* checked by the GUC */
	if (server == NIL)
	{
		for (int p = 0; p < npartitions; p++)
			server = lappend_int(server, p);
	}
	foreach(lc, server)
	{
		int			p = lfirst_int(lc);

		if (position++ % pkj_workers != worker)
			continue;
		if (p < npartitions)
			owned = lappend_int(owned, p);
		else
			*beyond = lappend_int(*beyond, p);
	}
	return owned;
}

/* Every partition the server owns, of all its workers */
static List *
server_partitions(int npartitions)
{
	List	   *server = NIL;
	List	   *beyond;

	for (int w = 0; w < pkj_workers; w++)
		server = list_concat(server, pkj_owned_partitions(w, npartitions, &beyond));
	return server;
}

/* Are the partitions split across servers (pgkafka_join.partitions set)? */
bool
pkj_partitions_split(void)
{
	return strspn(pkj_partitions, " \t\n") != strlen(pkj_partitions);
}

/* A sorted list of partitions as text: "0-2,5" */
char *
pkj_partitions_text(List *partitions)
{
	StringInfoData buf;
	int			n = list_length(partitions);

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		int			first = list_nth_int(partitions, i);
		int			last = first;

		while (i + 1 < n && list_nth_int(partitions, i + 1) == last + 1)
			last = list_nth_int(partitions, ++i);
		if (buf.len > 0)
			appendStringInfoChar(&buf, ',');
		if (last > first)
			appendStringInfo(&buf, "%d-%d", first, last);
		else
			appendStringInfo(&buf, "%d", first);
	}
	return buf.data;
}

/* The Kafka group the claims are written in */
static char *
claims_group(void)
{
	return psprintf("pgkafka_join.owners.%s", pkj_kafka.output_topic);
}

/* This server's identity in the claims */
static char *
identity(void)
{
	return pkj_transactional_id_value();
}

/* The claims handle, NULL (the problem noted) if it cannot be made */
static rd_kafka_t *
claims_handle(void)
{
	char	   *problem;
	rd_kafka_t *rk = pkj_kafka_group_handle(claims_group(), &problem);

	if (rk == NULL)
		pkj_kafka_note_error(problem);
	else
		rd_kafka_poll(rk, 0);	/* its logs */
	return rk;
}

/*
 * The claims of the given partitions, as the brokers have them (offset -1:
 * never claimed); NULL if the brokers could not tell.
 */
static rd_kafka_topic_partition_list_t *
read_claims(List *owned)
{
	rd_kafka_t *rk = claims_handle();
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	ListCell   *lc;

	if (rk == NULL)
		return NULL;
	parts = rd_kafka_topic_partition_list_new(list_length(owned));
	foreach(lc, owned)
		rd_kafka_topic_partition_list_add(parts, claim_topic, lfirst_int(lc));
	err = rd_kafka_committed(rk, parts, CLAIM_TIMEOUT_MS);
	for (int i = 0; i < parts->cnt && err == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
		err = parts->elems[i].err;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		pkj_kafka_note_error(psprintf("could not read the partition claims: %s",
									  rd_kafka_err2str(err)));
		rd_kafka_topic_partition_list_destroy(parts);
		return NULL;
	}
	return parts;
}

/*
 * Commit the claims in "parts" (offsets and metadata set) to the claims'
 * group; false, the problem noted, if the brokers did not take them all.
 */
static bool
commit_claims(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts, const char *what)
{
	rd_kafka_queue_t *queue;
	rd_kafka_event_t *ev;
	bool		ok = false;

	/* asynchronously, so that a broker outage cannot stall the worker */
	queue = rd_kafka_queue_new(rk);
	(void) rd_kafka_commit_queue(rk, parts, queue, NULL, NULL);
	ev = rd_kafka_queue_poll(queue, CLAIM_TIMEOUT_MS);
	if (ev == NULL)
		pkj_kafka_note_error(psprintf("could not write the %s: no answer from the brokers", what));
	else
	{
		const rd_kafka_topic_partition_list_t *res = rd_kafka_event_topic_partition_list(ev);

		ok = rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_NO_ERROR;
		for (int i = 0; ok && res && i < res->cnt; i++)
			ok = res->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR;
		if (!ok)
			pkj_kafka_note_error(psprintf("could not write the %s: %s", what,
										  rd_kafka_event_error(ev) ?
										  rd_kafka_event_error_string(ev) : "a partition was refused"));
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_queue_destroy(queue);
	return ok;
}

/*
 * A claim's offset: the clock, a value that changes at every write
 * (watchers compare it, never read it)
 */
static int64
claim_stamp(void)
{
	static int64 last_written = 0;

	last_written = Max(GetCurrentTimestamp() / 1000, last_written + 1);
	return last_written;
}

/* Add a claim of "partition" to "parts", with the given metadata */
static void
add_claim(rd_kafka_topic_partition_list_t *parts, int32 partition, const char *metadata)
{
	rd_kafka_topic_partition_t *tp =
		rd_kafka_topic_partition_list_add(parts, claim_topic, partition);

	tp->offset = claim_stamp();
	/* librdkafka frees it with the list */
	tp->metadata = strdup(metadata);
	tp->metadata_size = tp->metadata ? strlen(metadata) : 0;
}

/* Write this server's claims of the given partitions; false if it failed */
static bool
write_claims(List *owned)
{
	rd_kafka_t *rk = claims_handle();
	rd_kafka_topic_partition_list_t *parts;
	char	   *metadata = psprintf("%s\t%s%s", identity(), pkj_kafka.transactional_id,
									claims.holds_state ? "" : NO_STATE_MARK);
	bool		ok;
	ListCell   *lc;

	if (rk == NULL)
		return false;
	parts = rd_kafka_topic_partition_list_new(list_length(owned));
	foreach(lc, owned)
		add_claim(parts, lfirst_int(lc), metadata);
	ok = commit_claims(rk, parts, "partition claims");
	rd_kafka_topic_partition_list_destroy(parts);
	return ok;
}

/* The length of the identity a claim's metadata names */
static size_t
claimant_length(const rd_kafka_topic_partition_t *tp)
{
	const char *tab = memchr(tp->metadata, '\t', tp->metadata_size);

	return tab ? tab - (const char *) tp->metadata : tp->metadata_size;
}

/*
 * The transactional id of the producer that publishes the claimed
 * partition's results: the claim's second field (claims written before
 * version 1.2 name none: then the claimant's worker 0, whose id is the
 * identity)
 */
static char *
claimant_producer(const rd_kafka_topic_partition_t *tp)
{
	const char *metadata = tp->metadata;
	size_t		start = claimant_length(tp) + 1;
	size_t		end = start;

	if (start > tp->metadata_size)
		return pnstrdup(metadata, claimant_length(tp));
	while (end < tp->metadata_size && metadata[end] != '\t')
		end++;
	/* a claim of the form "identity<NO_STATE_MARK>" names no producer */
	if (end - start == strlen(NO_STATE_MARK) - 1 &&
		memcmp(metadata + start, &NO_STATE_MARK[1], end - start) == 0)
		return pnstrdup(metadata, claimant_length(tp));
	return pnstrdup(metadata + start, end - start);
}

/*
 * Is this claim a handover (see "Moves")?  If so, and h is not NULL, what
 * it hands over.
 */
static bool
handover_of(const rd_kafka_topic_partition_t *tp, Handover *h)
{
	char	   *metadata;
	char	   *mark;
	Handover	found;

	if (tp->offset < 0 || tp->metadata_size == 0)
		return false;
	metadata = pnstrdup(tp->metadata, tp->metadata_size);
	mark = strstr(metadata, HANDOVER_MARK);
	if (mark == NULL ||
		sscanf(mark + strlen(HANDOVER_MARK),
			   "%" INT64_MODIFIER "d %" INT64_MODIFIER "d %" INT64_MODIFIER "d",
			   &found.ratings_offset, &found.next_offset, &found.last_id) != 3)
	{
		pfree(metadata);
		return false;
	}
	found.partition = tp->partition;
	found.server = pnstrdup(metadata, claimant_length(tp));
	pfree(metadata);
	if (h)
		*h = found;
	return true;
}

/* Is this claim another server's, and not a handover? */
static bool
foreign_claim(const rd_kafka_topic_partition_t *tp, const char *me)
{
	return tp->offset >= 0 && tp->metadata_size > 0 &&
		(claimant_length(tp) != strlen(me) || memcmp(tp->metadata, me, strlen(me)) != 0) &&
		!handover_of(tp, NULL);
}

/* Is this claim ours, and not a handover? */
static bool
own_claim(const rd_kafka_topic_partition_t *tp, const char *me)
{
	return tp->offset >= 0 && tp->metadata_size > 0 &&
		claimant_length(tp) == strlen(me) && memcmp(tp->metadata, me, strlen(me)) == 0 &&
		!handover_of(tp, NULL);
}

/* Did the claimant say it holds nothing of the partition? */
static bool
claimant_holds_nothing(const rd_kafka_topic_partition_t *tp)
{
	size_t		mark = strlen(NO_STATE_MARK);

	return tp->metadata_size >= mark &&
		memcmp((const char *) tp->metadata + tp->metadata_size - mark, NO_STATE_MARK, mark) == 0;
}

/* A list of partitions as an integer[] Datum, for SPI */
static Datum
partitions_array(List *partitions)
{
	Datum	   *elems = palloc(Max(list_length(partitions), 1) * sizeof(Datum));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, partitions)
		elems[n++] = Int32GetDatum(lfirst_int(lc));
	return PointerGetDatum(construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}

/*
 * Of the given partitions, those whose input positions this server stores
 * (a position past the beginning of either input topic)
 */
static List *
partitions_with_state(List *partitions)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, INT4ARRAYOID};
	Datum		args[3];
	List	   *held = NIL;

	args[0] = CStringGetTextDatum(pkj_kafka.movies_topic);
	args[1] = CStringGetTextDatum(pkj_kafka.ratings_topic);
	args[2] = partitions_array(partitions);
	pkj_begin_spi("reading which partitions' state this server holds");
	if (plan == NULL)
		plan = pkj_keep_plan("SELECT DISTINCT kafka_partition FROM pgkafka_join.input_offsets "
							 "WHERE topic IN ($1, $2) AND kafka_partition OPERATOR(pg_catalog.=) ANY ($3) "
							 "AND next_offset > 0 ORDER BY 1",
							 3, argtypes);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.input_offsets");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(pkj_spi_caller_cxt);

		/* in the caller's memory: SPI's goes with pkj_end_spi() */
		held = lappend_int(held, DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1, &isnull)));
		MemoryContextSwitchTo(old);
	}
	pkj_end_spi();
	return held;
}

/*
 * The topic the claims are written on: the ratings topic, or the movies
 * topic while the ratings topic does not exist yet (offsets can only be
 * committed for partitions that exist).
 */
void
pkj_claims_set_topic(const char *topic)
{
	strlcpy(claim_topic, topic, sizeof(claim_topic));
}

/* Forget the claims' state, with the Kafka handles they were made on */
void
pkj_claims_reset(void)
{
	bool		refused_logged = claims.refused_logged;
	bool		takeover_refused_logged = claims.takeover_refused_logged;

	if (claims.watched)
		rd_kafka_topic_partition_list_destroy(claims.watched);
	list_free(claims.owned);
	list_free_deep(claims.fence);
	memset(&claims, 0, sizeof(claims));
	/* a refusal is said once, not at every retry */
	claims.refused_logged = refused_logged;
	claims.takeover_refused_logged = takeover_refused_logged;
}

/*
 * The other servers' claims in "found": the partitions they claim (into
 * *taken, if not NULL), and the first claimant's identity ("?" if none).
 */
static const char *
other_claimant(rd_kafka_topic_partition_list_t *found, const char *me, List **taken)
{
	char	   *other = NULL;

	for (int i = 0; i < found->cnt; i++)
	{
		if (!foreign_claim(&found->elems[i], me))
			continue;
		if (taken != NULL)
			*taken = lappend_int(*taken, found->elems[i].partition);
		if (other == NULL)
			other = pnstrdup(found->elems[i].metadata, claimant_length(&found->elems[i]));
	}
	return other ? other : "?";
}

/* A refusal is said: the claims are not held, and "found" is destroyed */
static PkjClaim
refused(rd_kafka_topic_partition_list_t *found)
{
	claims.refused_logged = true;
	claims.held = false;
	list_free_deep(claims.fence);
	claims.fence = NIL;
	rd_kafka_topic_partition_list_destroy(found);
	return PKJ_CLAIM_REFUSED;
}

/*
 * Say, once until the claims are held again, that another server owns
 * some of our partitions.
 */
static PkjClaim
refuse(rd_kafka_topic_partition_list_t *found)
{
	char	   *me = identity();
	List	   *taken = NIL;
	const char *other = other_claimant(found, me, &taken);

	pkj_status_set_error(psprintf("partitions %s are owned by \"%s\"",
								  pkj_partitions_text(taken), other));
	if (!claims.refused_logged)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("pgkafka_join will not consume partitions %s of \"%s\" and \"%s\": another server owns them",
						pkj_partitions_text(taken), pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
				 errdetail("Server \"%s\" claims them for output topic \"%s\" and is alive.  This server (\"%s\") came second; it consumes and publishes nothing.",
						   other, pkj_kafka.output_topic, me),
				 errhint("Give each server partitions of its own in pgkafka_join.partitions.  A claim lapses %d s after its owner stopped.",
						 CLAIM_LAPSE_MS / 1000)));
	return refused(found);
}

/*
 * A lapsed claim is not taken over: its holder held the partitions' state,
 * and this server does not.  Said once, like a refusal.
 */
static PkjClaim
refuse_takeover(rd_kafka_topic_partition_list_t *found, List *missing)
{
	const char *other = other_claimant(found, identity(), NULL);

	pkj_status_set_error(psprintf("partitions %s were owned by \"%s\", which holds their state; this server holds none of it",
								  pkj_partitions_text(missing), other));
	if (!claims.takeover_refused_logged)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("pgkafka_join will not take over partitions %s of \"%s\" and \"%s\": their owner stopped, and this server holds none of their state",
						pkj_partitions_text(missing), pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
				 errdetail("The claims of server \"%s\" lapsed.  Their input positions, waiting ratings and published results are in that server's database; consuming them from the beginning here would publish their results again.",
						   other),
				 errhint("Start that server again and call pgkafka_join.release_partitions() there.  To have this server consume them from the beginning and publish their results again, delete their claims from the Kafka group \"%s\".",
						 claims_group())));
	claims.takeover_refused_logged = true;
	return refused(found);
}

/*
 * The claims of other servers in "found" lapsed: may this server take them
 * over?  Yes if their holders held nothing of those partitions, or this
 * server holds their state.  Otherwise refused (and "found" destroyed).
 */
static bool
may_take_over(rd_kafka_topic_partition_list_t *found, PkjClaim *refused)
{
	List	   *needed = NIL;
	List	   *held;
	List	   *missing;
	char	   *me = identity();

	for (int i = 0; i < found->cnt; i++)
		if (foreign_claim(&found->elems[i], me) && !claimant_holds_nothing(&found->elems[i]))
			needed = lappend_int(needed, found->elems[i].partition);
	if (needed == NIL)
		return true;
	held = partitions_with_state(needed);
	missing = list_difference_int(needed, held);
	if (missing == NIL)
		return true;
	*refused = refuse_takeover(found, missing);
	return false;
}

/*
 * Remember the producers of the lapsed claims in "found": they are fenced
 * once this server's claims are confirmed, before it stores or publishes
 * anything of their partitions.
 */
static void
remember_fence(rd_kafka_topic_partition_list_t *found, const char *me)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	for (int i = 0; i < found->cnt; i++)
	{
		char	   *producer;
		ListCell   *lc;
		bool		listed = false;

		if (!foreign_claim(&found->elems[i], me))
			continue;
		producer = claimant_producer(&found->elems[i]);
		foreach(lc, claims.fence)
			listed |= strcmp(lfirst(lc), producer) == 0;
		if (listed)
			pfree(producer);
		else
			claims.fence = lappend(claims.fence, producer);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Fence the producers of the claims taken over: the brokers abort their
 * open transactions and refuse them every later one, so that an owner that
 * was only stalled, and wakes up believing it still owns the partitions,
 * can publish nothing more of them, whatever the timing.  Each is fenced
 * once; false while the brokers have not completed one (said in status).
 */
static bool
fence_lapsed(void)
{
	while (claims.fence != NIL)
	{
		char	   *producer = linitial(claims.fence);
		char	   *problem;

		if (!pkj_kafka_fence(producer, CLAIM_TIMEOUT_MS, &problem))
		{
			pkj_kafka_note_error(problem);
			return false;
		}
		ereport(LOG,
				(errmsg("pgkafka_join fenced the producer \"%s\" of the partitions it takes over", producer),
				 errdetail("Its open Kafka transaction, if any, is aborted, and the brokers refuse it every later one.")));
		claims.fence = list_delete_first(claims.fence);
		pfree(producer);
	}
	return true;
}

/*
 * The claims could not be renewed: while the last good renewal is recent,
 * the owner goes on; once it is older than CLAIM_FRESH_MS, it stores and
 * publishes nothing until it renews (said once).
 */
static PkjClaim
renewal_failed(int64 now)
{
	if (!claims.held)
		return PKJ_CLAIM_PENDING;
	if (now - claims.renewed_at < CLAIM_FRESH_MS)
		return PKJ_CLAIM_HELD;
	if (!claims.stale_logged)
		ereport(LOG,
				(errmsg("pgkafka_join stores and publishes nothing until it renews its claims: the last renewal was " INT64_FORMAT " ms ago",
						now - claims.renewed_at),
				 errdetail("%s.  After %d s without a renewal another server may take the partitions over.",
						   pkj_kafka_last_error, CLAIM_LAPSE_MS / 1000)));
	claims.stale_logged = true;
	return PKJ_CLAIM_PENDING;
}

/*
 * pkj_claims_hold
 *		Make sure this worker holds the claims of its partitions: take them,
 *		confirm them, renew them, each when due.  Never waits longer than
 *		the Kafka calls it makes.
 *
 *		PKJ_CLAIM_HELD: go on consuming and publishing.
 *		PKJ_CLAIM_PENDING: not yet (a foreign claim is being watched, or
 *		ours wait to be confirmed, or the brokers did not answer and the
 *		last renewal is too old); call again soon, store and publish nothing
 *		meanwhile.
 *		PKJ_CLAIM_REFUSED: another server owns some of the partitions
 *		(logged once, shown in status); consume and publish nothing.
 */
PkjClaim
pkj_claims_hold(List *owned)
{
	int64		now = mono_ms();
	rd_kafka_topic_partition_list_t *found;
	char	   *me;
	bool		all_ours = true;
	bool		any_foreign = false;
	PkjClaim	refused;

	if (owned == NIL)
		return PKJ_CLAIM_HELD;
	if (!guard_registered)
	{
		RegisterXactCallback(claims_guard_commit, NULL);
		guard_registered = true;
	}
	if (claims.held && now < claims.renew_at)
		return PKJ_CLAIM_HELD;
	if (!claims.held && claims.confirm_at != 0 && now < claims.confirm_at)
		return PKJ_CLAIM_PENDING;
	me = identity();
	if (!equal(claims.owned, owned))
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		list_free(claims.owned);
		claims.owned = list_copy(owned);
		MemoryContextSwitchTo(old);
	}

	found = read_claims(owned);
	if (found == NULL)
		return renewal_failed(now);

	for (int i = 0; i < found->cnt; i++)
	{
		any_foreign |= foreign_claim(&found->elems[i], me);
		all_ours &= own_claim(&found->elems[i], me);
	}

	if (any_foreign)
	{
		/* taken over while we held it, or written in between: we lost */
		if (claims.held || claims.confirm_at != 0)
			return refuse(found);

		/* alive if it changes while watched; lapsed if not */
		if (claims.watched == NULL)
		{
			claims.watched = found;
			claims.watch_until = now + CLAIM_LAPSE_MS;
			return PKJ_CLAIM_PENDING;
		}
		for (int i = 0; i < found->cnt; i++)
		{
			rd_kafka_topic_partition_t *was =
				rd_kafka_topic_partition_list_find(claims.watched, found->elems[i].topic,
												   found->elems[i].partition);

			if (foreign_claim(&found->elems[i], me) &&
				(was == NULL || was->offset != found->elems[i].offset))
				return refuse(found);
		}
		if (now < claims.watch_until)
		{
			rd_kafka_topic_partition_list_destroy(found);
			return PKJ_CLAIM_PENDING;
		}
		if (!may_take_over(found, &refused))
		{
			rd_kafka_topic_partition_list_destroy(claims.watched);
			claims.watched = NULL;
			return refused;
		}
		ereport(LOG,
				(errmsg("pgkafka_join takes over partitions whose claim lapsed"),
				 errdetail("The claims of another server were not renewed for %d s.",
						   CLAIM_LAPSE_MS / 1000)));
		remember_fence(found, me);
	}
	if (!claims.held && claims.confirm_at == 0)
		(void) note_handovers(found);
	rd_kafka_topic_partition_list_destroy(found);
	if (claims.watched)
		rd_kafka_topic_partition_list_destroy(claims.watched);
	claims.watched = NULL;

	if (!claims.held && claims.confirm_at != 0)
	{
		/* read back after CLAIM_CONFIRM_MS: nobody wrote in between */
		if (!fence_lapsed())
		{
			/* ours all the same: keep them so while the brokers are asked again */
			(void) write_claims(owned);
			return PKJ_CLAIM_PENDING;
		}
		claims.held = true;
		claims.confirm_at = 0;
		claims.renewed_at = now;
	}

	claims.holds_state = partitions_with_state(owned) != NIL;
	if (!write_claims(owned))
		return renewal_failed(now);
	claims.renew_at = now + CLAIM_RENEW_MS;
	if (!claims.held)
	{
		if (all_ours)
			claims.held = true; /* ours already: taken back at once */
		else
		{
			claims.confirm_at = now + CLAIM_CONFIRM_MS;
			return PKJ_CLAIM_PENDING;
		}
	}
	if (claims.stale_logged)
		ereport(LOG, (errmsg("pgkafka_join renewed its claims and goes on")));
	else if (claims.renewed_at != 0 && now - claims.renewed_at >= CLAIM_FRESH_MS)
		ereport(LOG,
				(errmsg("pgkafka_join renewed its claims late: the last renewal was " INT64_FORMAT " ms ago",
						now - claims.renewed_at),
				 errdetail("The worker was stalled, or the brokers slow to answer; nothing was committed on the stale claims.")));
	claims.renewed_at = now;
	claims.stale_logged = false;
	if (claims.refused_logged)
		ereport(LOG, (errmsg("pgkafka_join owns its partitions again")));
	claims.refused_logged = false;
	claims.takeover_refused_logged = false;
	return PKJ_CLAIM_HELD;
}

/*
 * Renew the claims now, from inside a commit: read them (all still ours?),
 * write them.  No SPI here.
 */
static bool
renew_now(int64 now)
{
	rd_kafka_topic_partition_list_t *found = read_claims(claims.owned);
	bool		ours = found != NULL;

	for (int i = 0; ours && i < found->cnt; i++)
		ours = own_claim(&found->elems[i], identity());
	if (found)
		rd_kafka_topic_partition_list_destroy(found);
	if (!ours || !write_claims(claims.owned))
		return false;
	claims.renewed_at = now;
	claims.renew_at = now + CLAIM_RENEW_MS;
	return true;
}

/*
 * pkj_claims_fresh
 *		May the worker commit what it stored or publish now?  True if it
 *		holds no claims (it stores nothing then: the loop waits for them),
 *		or its last renewal is younger than CLAIM_FRESH_MS, or a renewal
 *		made now succeeds.  False: the claims were lost or could not be
 *		renewed; they stay due, and the worker's next pkj_claims_hold()
 *		says what became of them.
 */
bool
pkj_claims_fresh(void)
{
	int64		now = mono_ms();
	int64		age = now - claims.renewed_at;

	if (!claims.held || claims.owned == NIL || age < CLAIM_FRESH_MS)
		return true;
	if (renew_now(now))
	{
		ereport(LOG,
				(errmsg("pgkafka_join renewed its claims before a commit: the last renewal was " INT64_FORMAT " ms ago", age)));
		return true;
	}
	claims.renew_at = 0;
	return false;
}

/*
 * Pre-commit callback: a transaction of the worker that wrote something
 * (stored a batch, rejoined, recorded positions) commits only while the
 * claims are fresh; otherwise it fails, and nothing of it is stored.
 */
static void
claims_guard_commit(XactEvent event, void *arg)
{
	int64		age;

	if (event != XACT_EVENT_PRE_COMMIT || !TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	age = mono_ms() - claims.renewed_at;
	if (pkj_claims_fresh())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("pgkafka_join did not commit: its claims of partitions %s were last renewed " INT64_FORMAT " ms ago, and could not be renewed now",
					pkj_partitions_text(claims.owned), age),
			 errdetail("%s.  Another server may have taken the partitions over; nothing of this transaction is stored or published.",
					   pkj_kafka_last_error)));
}

/* Are this server's new claims written, waiting to be read back? */
bool
pkj_claims_confirming(void)
{
	return !claims.held && claims.confirm_at != 0;
}

/* Does the owner wait to renew claims it could not renew in time? */
bool
pkj_claims_renewing(void)
{
	return claims.held && claims.stale_logged;
}

/* Was this server refused its partitions, and not yet given them since? */
bool
pkj_claims_refused(void)
{
	return claims.refused_logged;
}

/* How long until pkj_claims_hold() has something to do, in ms */
long
pkj_claims_next_ms(void)
{
	int64		due = claims.held ? claims.renew_at : claims.confirm_at;

	if (due == 0)
		return CLAIM_RENEW_MS;
	return (long) Max(due - mono_ms(), 0);
}

/*
 * pkj_refresh_ownership
 *		Learn the input topics' partition count and which partitions the
 *		worker owns; done at start and whenever the metadata is refreshed.
 *		Returns false, with the state set and the reason logged once, if
 *		there is nothing to consume: brokers unreachable, a topic missing,
 *		topics not co-partitioned, no partition left for this worker.
 */
bool
pkj_refresh_ownership(PkjWorker *worker)
{
	int			nmovies = pkj_kafka_partition_count(pkj_kafka.consumer, pkj_kafka.movies_topic, 5000);
	int			nratings = nmovies < 0 ? -1 :
		pkj_kafka_partition_count(pkj_kafka.consumer, pkj_kafka.ratings_topic, 5000);
	List	   *beyond;
	List	   *mine;
	List	   *released;
	List	   *shares;
	MemoryContext old;
	static bool logged_beyond = false;

	if (nmovies < 0 || nratings < 0)
	{
		pkj_status_set_state("waiting for the brokers");
		pkj_log_wait(PKJ_WAIT_UNREACHABLE,
					 psprintf("pgkafka_join cannot reach the Kafka brokers: %s",
							  pkj_kafka_last_error),
					 "Check pgkafka_join.brokers, pgkafka_join.kafka_properties and the credentials in pgkafka_join.kafka_properties_file.");
		return false;
	}
	/* say so, and log the next outage again */
	if (pkj_wait_ended(PKJ_WAIT_UNREACHABLE))
		ereport(LOG, (errmsg("pgkafka_join reaches the Kafka brokers again")));
	if (nmovies == pkj_kafka.assigned_movies && nratings == pkj_kafka.assigned_ratings &&
		worker->owned != NIL)
	{
		if (to_announce != NIL && announce_releases(to_announce))
		{
			list_free(to_announce);
			to_announce = NIL;
		}
		/* unchanged, unless partitions it released are handed back */
		if (released_here == NIL || handed_back(released_here) == NIL)
			return true;
	}

	/* one topic may come later: the other is consumed meanwhile */
	if (nmovies == 0 || nratings == 0)
	{
		pkj_status_set_state("waiting for topics");
		pkj_log_wait(PKJ_WAIT_TOPICS,
					 psprintf("pgkafka_join is waiting for topic \"%s\" to exist",
							  nmovies == 0 ? pkj_kafka.movies_topic : pkj_kafka.ratings_topic),
					 "Create the topic, or set pgkafka_join.movies_topic and pgkafka_join.ratings_topic.");
		if (nmovies == 0 && nratings == 0)
			return false;
	}
	else if (nmovies != nratings)
	{
		/* consume nothing: a rating and its movie could be anywhere */
		rd_kafka_assign(pkj_kafka.consumer, NULL);
		worker->assigned = false;
		pkj_status_reset_partitions();
		pkj_status_set_state("waiting: topics not co-partitioned");
		if (pkj_wait_begins(PKJ_WAIT_PARTITIONING))
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pgkafka_join cannot join topics \"%s\" (%d partitions) and \"%s\" (%d partitions): they are not co-partitioned",
							pkj_kafka.movies_topic, nmovies, pkj_kafka.ratings_topic, nratings),
					 errdetail("Nothing is consumed until both input topics have the same number of partitions."),
					 errhint("As for a Kafka Streams join, both topics need the same number of partitions, both keyed by the movie id with the same partitioner.")));
		return false;
	}
	pkj_wait_ended(PKJ_WAIT_PARTITIONING);
	if (nmovies > 0 && nratings > 0)
		pkj_wait_ended(PKJ_WAIT_TOPICS);

	mine = pkj_owned_partitions(worker->index, Max(nmovies, nratings), &beyond);
	/* released partitions are not this server's any more, until handed back */
	pkj_claims_set_topic(nratings > 0 ? pkj_kafka.ratings_topic : pkj_kafka.movies_topic);
	released = released_among(mine, true);
	mine = list_union_int(list_difference_int(mine, released), handed_back(released));
	list_sort(mine, list_int_cmp);
	old = MemoryContextSwitchTo(TopMemoryContext);
	list_free(released_here);
	released_here = list_copy(released);
	MemoryContextSwitchTo(old);
	if (beyond != NIL && !logged_beyond)
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pgkafka_join.partitions lists partitions %s, which topics \"%s\" and \"%s\" do not have",
						pkj_partitions_text(beyond), pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
				 errdetail("The topics have %d partitions; those listed beyond are consumed once the topics have them.",
						   Max(nmovies, nratings))));
	logged_beyond = beyond != NIL;

	/* what changes with the partitions owned */
	old = MemoryContextSwitchTo(TopMemoryContext);
	list_free(worker->owned);
	worker->owned = list_copy(mine);
	shares = list_copy(worker->owned);
	if (worker->index == 0)
		shares = lcons_int(-1, shares); /* results made before 1.1 */
	MemoryContextSwitchTo(old);
	pkj_publisher_set_shares(shares, server_partitions(Max(nmovies, nratings)));
	pkj_status_set_owned(pkj_partitions_text(worker->owned), shares);
	pkj_claims_reset();
	pkj_claims_set_topic(nratings > 0 ? pkj_kafka.ratings_topic : pkj_kafka.movies_topic);
	/* handovers noted before a restart may wait to be set up */
	claims.receive_due = true;
	list_free(to_announce);
	to_announce = NIL;
	if (!announce_releases(released))
	{
		old = MemoryContextSwitchTo(TopMemoryContext);
		to_announce = list_copy(released);
		MemoryContextSwitchTo(old);
	}
	worker->assigned = false;
	pkj_kafka.assigned_movies = nmovies;
	pkj_kafka.assigned_ratings = nratings;

	if (worker->owned == NIL)
	{
		pkj_status_set_state("idle: no partition to own");
		if (released != NIL)
			pkj_log_wait(PKJ_WAIT_NO_PARTITIONS,
						 psprintf("pgkafka_join worker %d has no partition to own: it released partitions %s",
								  worker->index, pkj_partitions_text(released)),
						 "It takes them back if another server hands them back with pgkafka_join.release_partitions().");
		else
			pkj_log_wait(PKJ_WAIT_NO_PARTITIONS,
						 psprintf("pgkafka_join worker %d has no partition to own", worker->index),
						 "The server owns fewer partitions than pgkafka_join.workers.");
		return false;
	}
	ereport(LOG,
			(errmsg("pgkafka_join worker %d owns partitions %s of \"%s\" and \"%s\"",
					worker->index, pkj_partitions_text(worker->owned),
					pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
			 errdetail("The topics have %d partitions; this server owns %s, shared among %d workers.",
					   Max(nmovies, nratings), pkj_partitions_split() ? pkj_partitions : "all",
					   pkj_workers)));
	return true;
}

/*
 * Moves
 * -----
 * release_partitions() records the partitions a server gives up in
 * released_partitions.  The worker owning them, between batches, publishes
 * everything it stored, then records what the next owner needs
 * (pkj_release_partitions()): where to consume the partitions' ratings
 * from (the lowest offset of a rating still waiting inside the join
 * window, or the stored offset if none waits), the stored offset, and the
 * last result id of each share, all published.  From that commit on, the
 * server neither consumes nor publishes them, and its claim of each
 * becomes a handover (announce_releases()): "identity<TAB>producer" and
 * HANDOVER_MARK followed by those three numbers.
 *
 * A handover is nobody's live claim: a server configured for the
 * partition takes it at once, without waiting for a lapse and without
 * fencing the server that released it, which publishes nothing of it any
 * more and goes on with its other partitions.  Before writing its own
 * claims over it, the newcomer notes the handover in received_partitions
 * (note_handovers(): so that what it says survives a crash once the
 * claims no longer say it); once its claims are confirmed, it sets the
 * partitions' state up from it (pkj_receive_partitions()): their ratings'
 * offset, the sequence past the last id, and, should it have owned them
 * before, the results and ratings of that time at or after the new
 * offset recorded as published and forgotten.  Then, as after any change
 * of ownership, it takes back from the output topic the results the old
 * owner published of those shares (publish.c: the handover's last id is
 * their position), consumes their movies from where it stands up to the
 * end of the topic before their ratings (the catalog comes first), and
 * consumes their ratings from the handover's offset: a rating whose result
 * was taken back is stored as joined without a second result, one that
 * waited is joined with its movie as the topic has it.
 */

/* The released partitions (released_at set) among "partitions" */
static List *
released_among(List *partitions, bool done)
{
	static SPIPlanPtr plan[2] = {NULL, NULL};
	Oid			argtypes[1] = {INT4ARRAYOID};
	Datum		args[1];
	List	   *found = NIL;

	if (partitions == NIL)
		return NIL;
	args[0] = partitions_array(partitions);
	pkj_begin_spi("reading the released partitions");
	if (plan[done] == NULL)
		plan[done] = pkj_keep_plan(done ?
								   "SELECT kafka_partition FROM pgkafka_join.released_partitions "
								   "WHERE kafka_partition OPERATOR(pg_catalog.=) ANY ($1) "
								   "AND released_at IS NOT NULL ORDER BY 1" :
								   "SELECT kafka_partition FROM pgkafka_join.released_partitions "
								   "WHERE kafka_partition OPERATOR(pg_catalog.=) ANY ($1) "
								   "AND released_at IS NULL ORDER BY 1",
								   1, argtypes);
	if (SPI_execute_plan(plan[done], args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.released_partitions");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(pkj_spi_caller_cxt);

		found = lappend_int(found, DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc, 1, &isnull)));
		MemoryContextSwitchTo(old);
	}
	pkj_end_spi();
	return found;
}

/*
 * pkj_release_requested
 *		The partitions of this worker that release_partitions() asked it to
 *		give up, and that it has not released yet.
 */
List *
pkj_release_requested(PkjWorker *worker)
{
	return released_among(worker->owned, false);
}

/*
 * pkj_release_partitions
 *		Release the given partitions of the worker, every result it stored
 *		published: record what the next owner needs (see "Moves").  From
 *		this commit on the server consumes and publishes nothing of them;
 *		the caller makes new Kafka handles, whose first refresh of the
 *		ownership leaves them out and announces the handovers.
 */
void
pkj_release_partitions(PkjWorker *worker, List *partitions)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {INT4ARRAYOID, TEXTOID};
	Datum		args[2];
	StringInfoData detail;

	args[0] = partitions_array(partitions);
	args[1] = CStringGetTextDatum(pkj_kafka.ratings_topic);
	initStringInfo(&detail);
	pkj_begin_spi("releasing partitions");
	if (plan == NULL)
		plan = pkj_keep_plan("UPDATE pgkafka_join.released_partitions rp "
							 "SET released_at = pg_catalog.now(), next_offset = s.next_offset, "
							 "ratings_offset = least(s.next_offset, s.waiting), last_id = s.last_id "
							 "FROM (SELECT p.p, "
							 "coalesce((SELECT io.next_offset FROM pgkafka_join.input_offsets io "
							 "WHERE io.topic OPERATOR(pg_catalog.=) $2 "
							 "AND io.kafka_partition OPERATOR(pg_catalog.=) p.p), 0) AS next_offset, "
							 "(SELECT pg_catalog.min(r.kafka_offset) FROM pgkafka_join.ratings r "
							 "WHERE r.kafka_partition OPERATOR(pg_catalog.=) p.p AND NOT r.joined "
							 "AND r.rated_at OPERATOR(pg_catalog.>=) (pg_catalog.now() "
							 "OPERATOR(pg_catalog.-) pgkafka_join.join_window())) AS waiting, "
							 "coalesce((SELECT pg_catalog.max(rm.id) FROM pgkafka_join.rated_movies rm "
							 "WHERE rm.share OPERATOR(pg_catalog.=) p.p), 0) AS last_id "
							 "FROM pg_catalog.unnest($1) AS p(p)) s "
							 "WHERE rp.kafka_partition OPERATOR(pg_catalog.=) s.p AND rp.released_at IS NULL "
							 "RETURNING rp.kafka_partition, rp.ratings_offset, rp.next_offset, rp.last_id",
							 2, argtypes);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not update pgkafka_join.released_partitions");
	for (uint64 i = 0; i < SPI_processed; i++)
		appendStringInfo(&detail, "%spartition %s: ratings from offset %s (stored up to %s), results up to id %s",
						 i > 0 ? "; " : "",
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2),
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3),
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 4));
	pkj_end_spi();
	ereport(LOG,
			(errmsg("pgkafka_join released partitions %s of \"%s\" and \"%s\"",
					pkj_partitions_text(partitions), pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
			 errdetail("Every result of their shares is published; %s.  The server configured for them takes them over from there.",
					   detail.data)));
}

/*
 * Write the handovers of the given released partitions (this worker's by
 * pgkafka_join.partitions) whose claim is still this server's own, or was
 * never written: once after each release, and again after a crash or an
 * outage kept it from being written.  False if the brokers could not be
 * asked or did not take them (tried again at the next refresh).
 */
static bool
announce_releases(List *released)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT4ARRAYOID};
	Datum		args[1];
	List	   *unsaid = NIL;
	rd_kafka_topic_partition_list_t *found;
	rd_kafka_topic_partition_list_t *parts;
	char	   *me = identity();
	bool		ok = true;

	if (released == NIL)
		return true;
	found = read_claims(released);
	if (found == NULL)
		return false;
	for (int i = 0; i < found->cnt; i++)
		if (found->elems[i].offset < 0 || own_claim(&found->elems[i], me))
			unsaid = lappend_int(unsaid, found->elems[i].partition);
	rd_kafka_topic_partition_list_destroy(found);
	if (unsaid == NIL)
		return true;

	args[0] = partitions_array(unsaid);
	pkj_begin_spi("reading the released partitions");
	if (plan == NULL)
		plan = pkj_keep_plan("SELECT kafka_partition, ratings_offset, next_offset, last_id "
							 "FROM pgkafka_join.released_partitions "
							 "WHERE kafka_partition OPERATOR(pg_catalog.=) ANY ($1) "
							 "AND released_at IS NOT NULL ORDER BY 1",
							 1, argtypes);
	if (SPI_execute_plan(plan, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pgkafka_join.released_partitions");
	parts = rd_kafka_topic_partition_list_new(Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		add_claim(parts, DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)),
				  psprintf("%s\t%s" HANDOVER_MARK "%s %s %s", me, pkj_kafka.transactional_id,
						   SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 3),
						   SPI_getvalue(tup, desc, 4)));
	}
	pkj_end_spi();
	if (parts->cnt > 0)
	{
		ok = commit_claims(claims_handle(), parts, "handovers of the released partitions");
		if (ok)
			ereport(LOG,
					(errmsg("pgkafka_join handed partitions %s over in the claims of \"%s\"",
							pkj_partitions_text(unsaid), claims_group())));
	}
	rd_kafka_topic_partition_list_destroy(parts);
	return ok;
}

/*
 * Of the given released partitions, those another server hands back: their
 * claim is that server's handover.  NIL too if the brokers could not tell
 * (asked again at the next refresh).
 */
static List *
handed_back(List *released)
{
	rd_kafka_topic_partition_list_t *found;
	char	   *me = identity();
	List	   *back = NIL;

	if (released == NIL)
		return NIL;
	found = read_claims(released);
	if (found == NULL)
		return NIL;
	for (int i = 0; i < found->cnt; i++)
	{
		const rd_kafka_topic_partition_t *tp = &found->elems[i];

		if (handover_of(tp, NULL) &&
			(claimant_length(tp) != strlen(me) || memcmp(tp->metadata, me, strlen(me)) != 0))
			back = lappend_int(back, tp->partition);
	}
	rd_kafka_topic_partition_list_destroy(found);
	return back;
}

/*
 * Note the handovers among the claims in "found" in received_partitions,
 * before this server's claims are written over them (see "Moves").
 * Returns whether there were any.
 */
static bool
note_handovers(rd_kafka_topic_partition_list_t *found)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[5] = {INT4OID, TEXTOID, INT8OID, INT8OID, INT8OID};
	bool		any = false;

	for (int i = 0; i < found->cnt; i++)
	{
		Handover	h;
		Datum		args[5];

		if (!handover_of(&found->elems[i], &h))
			continue;
		if (!any)
			pkj_begin_spi("noting the handovers of partitions");
		any = true;
		if (plan == NULL)
			plan = pkj_keep_plan("INSERT INTO pgkafka_join.received_partitions AS rp "
								 "(kafka_partition, from_server, ratings_offset, next_offset, last_id, claimed_at) "
								 "VALUES ($1, $2, $3, $4, $5, pg_catalog.now()) "
								 "ON CONFLICT (kafka_partition) DO UPDATE "
								 "SET from_server = excluded.from_server, ratings_offset = excluded.ratings_offset, "
								 "next_offset = excluded.next_offset, last_id = excluded.last_id, "
								 "claimed_at = excluded.claimed_at, received_at = NULL",
								 5, argtypes);
		args[0] = Int32GetDatum(h.partition);
		args[1] = CStringGetTextDatum(h.server);
		args[2] = Int64GetDatum(h.ratings_offset);
		args[3] = Int64GetDatum(h.next_offset);
		args[4] = Int64GetDatum(h.last_id);
		if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not update pgkafka_join.received_partitions");
	}
	if (any)
	{
		pkj_end_spi();
		claims.receive_due = true;
		claims.handovers = true;
	}
	return any;
}

/* Did these claims take handovers, to set up before anything is stored? */
bool
pkj_claims_receiving(void)
{
	return claims.handovers;
}

/*
 * pkj_receive_partitions
 *		Once the claims hold: set up the state of the partitions of the
 *		worker handed over to this server and not set up yet (see "Moves").
 *		Returns true if it did: the caller assigns the partitions again,
 *		and learns where publishing stands again.
 */
bool
pkj_receive_partitions(PkjWorker *worker)
{
	static const char *const steps[] = {
		/* an earlier ownership's results from the new offset on: published */
		"INSERT INTO pgkafka_join.recovered_ratings (kafka_partition, kafka_offset, result_id, recovered_at) "
		"SELECT r.kafka_partition, r.kafka_offset, r.id, pg_catalog.now() "
		"FROM pgkafka_join.rated_movies r, pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL "
		"AND r.share OPERATOR(pg_catalog.=) rp.kafka_partition "
		"AND r.kafka_partition OPERATOR(pg_catalog.=) rp.kafka_partition "
		"AND r.kafka_offset OPERATOR(pg_catalog.>=) rp.ratings_offset "
		"ON CONFLICT DO NOTHING",
		/* its ratings from the new offset on, and those that waited then */
		"DELETE FROM pgkafka_join.ratings r USING pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL "
		"AND r.kafka_partition OPERATOR(pg_catalog.=) rp.kafka_partition "
		"AND (r.kafka_offset OPERATOR(pg_catalog.>=) rp.ratings_offset OR NOT r.joined)",
		"DELETE FROM pgkafka_join.rejected_messages m USING pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL "
		"AND m.topic OPERATOR(pg_catalog.=) $2 "
		"AND m.kafka_partition OPERATOR(pg_catalog.=) rp.kafka_partition "
		"AND m.kafka_offset OPERATOR(pg_catalog.>=) rp.ratings_offset",
		/* where the ratings are consumed from */
		"INSERT INTO pgkafka_join.input_offsets AS io (topic, kafka_partition, next_offset, updated_at) "
		"SELECT $2, rp.kafka_partition, rp.ratings_offset, pg_catalog.now() "
		"FROM pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL "
		"ON CONFLICT (topic, kafka_partition) DO UPDATE "
		"SET next_offset = excluded.next_offset, updated_at = excluded.updated_at",
		/* new results numbered after the published ones */
		"SELECT pg_catalog.setval('pgkafka_join.rated_movies_id_seq', m) "
		"FROM (SELECT pg_catalog.max(rp.last_id) AS m FROM pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL) i, "
		"pgkafka_join.rated_movies_id_seq s "
		"WHERE i.m OPERATOR(pg_catalog.>) CASE WHEN s.is_called THEN s.last_value "
		"ELSE s.last_value OPERATOR(pg_catalog.-) 1 END",
		/* this server's own again, if it had released them */
		"DELETE FROM pgkafka_join.released_partitions r USING pgkafka_join.received_partitions rp "
		"WHERE rp.kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND rp.received_at IS NULL "
		"AND r.kafka_partition OPERATOR(pg_catalog.=) rp.kafka_partition",
	};
	static SPIPlanPtr plans[lengthof(steps)];
	static SPIPlanPtr done_plan = NULL;
	Oid			argtypes[2] = {INT4ARRAYOID, TEXTOID};
	Datum		args[2];
	StringInfoData detail;
	List	   *received = NIL;
	char	   *from = NULL;
	int64		now;

	if (!claims.receive_due || !claims.held)
		return false;
	args[0] = partitions_array(worker->owned);
	args[1] = CStringGetTextDatum(pkj_kafka.ratings_topic);
	initStringInfo(&detail);
	pkj_begin_spi("receiving partitions");
	for (int i = 0; i < lengthof(steps); i++)
	{
		if (plans[i] == NULL)
			plans[i] = pkj_keep_plan(steps[i], 2, argtypes);
		if (SPI_execute_plan(plans[i], args, NULL, false, 0) < 0)
			elog(ERROR, "could not set up the partitions received: \"%s\"", steps[i]);
	}
	if (done_plan == NULL)
		done_plan = pkj_keep_plan("UPDATE pgkafka_join.received_partitions "
								  "SET received_at = pg_catalog.now() "
								  "WHERE kafka_partition OPERATOR(pg_catalog.=) ANY ($1) AND received_at IS NULL "
								  "RETURNING kafka_partition, from_server, ratings_offset, next_offset, last_id",
								  2, argtypes);
	if (SPI_execute_plan(done_plan, args, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not update pgkafka_join.received_partitions");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(pkj_spi_caller_cxt);

		received = lappend_int(received, DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull)));
		if (from == NULL)
			from = SPI_getvalue(tup, desc, 2);
		MemoryContextSwitchTo(old);
		appendStringInfo(&detail, "%spartition %s: ratings from offset %s (stored there up to %s), results after id %s",
						 i > 0 ? "; " : "", SPI_getvalue(tup, desc, 1), SPI_getvalue(tup, desc, 3),
						 SPI_getvalue(tup, desc, 4), SPI_getvalue(tup, desc, 5));
	}
	pkj_end_spi();
	claims.receive_due = false;
	claims.handovers = false;
	if (received == NIL)
		return false;
	/* the claims say so at once: no server holding nothing takes them over */
	claims.holds_state = true;
	now = mono_ms();
	if (write_claims(claims.owned))
	{
		claims.renewed_at = now;
		claims.renew_at = now + CLAIM_RENEW_MS;
	}
	ereport(LOG,
			(errmsg("pgkafka_join received partitions %s from server \"%s\"",
					pkj_partitions_text(received), from),
			 errdetail("%s.  Their movies are consumed up to the end of the topic before their ratings.",
					   detail.data)));
	return true;
}

/* Forget the catalog's progress, as new Kafka handles start over */
static void
catalog_forget(void)
{
	if (catalog.ends)
		rd_kafka_topic_partition_list_destroy(catalog.ends);
	if (catalog.reached)
		rd_kafka_topic_partition_list_destroy(catalog.reached);
	catalog.ends = rd_kafka_topic_partition_list_new(0);
	catalog.reached = rd_kafka_topic_partition_list_new(0);
	list_free(catalog.done);
	catalog.done = NIL;
	catalog.connection = pkj_kafka.connection;
}

/*
 * May the ratings of partition p be consumed?  Yes once its movies were
 * consumed, and stored, up to the end the movies partition had when first
 * assigned; the end asked of the brokers, movies_offset being where the
 * movies partition is assigned (RD_KAFKA_OFFSET_BEGINNING: none stored).
 */
static bool
catalog_ready(int32 p, int64 movies_offset)
{
	int64_t		low,
				high;
	rd_kafka_resp_err_t err;

	if (list_member_int(catalog.done, p))
		return true;
	err = rd_kafka_query_watermark_offsets(pkj_kafka.consumer, pkj_kafka.movies_topic, p,
										   &low, &high, CLAIM_TIMEOUT_MS);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR &&
		(movies_offset == RD_KAFKA_OFFSET_BEGINNING ? low : movies_offset) >= high)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		catalog.done = lappend_int(catalog.done, p);
		MemoryContextSwitchTo(old);
		return true;
	}
	if (rd_kafka_topic_partition_list_find(catalog.ends, pkj_kafka.movies_topic, p) == NULL)
		rd_kafka_topic_partition_list_add(catalog.ends, pkj_kafka.movies_topic, p)->offset =
			err == RD_KAFKA_RESP_ERR_NO_ERROR ? high : -1;
	return false;
}

/*
 * pkj_catalog_reached
 *		The consumer got to "offset" of partition p of "topic" (a
 *		rd_kafka_topic_t): the next offset after a message, or the end of the
 *		partition.  Noted for a movies partition whose ratings wait.
 */
void
pkj_catalog_reached(void *topic, int32 partition, int64 offset)
{
	rd_kafka_topic_partition_t *tp;

	if (catalog.ends == NULL || catalog.ends->cnt == 0 || topic == NULL ||
		strcmp(rd_kafka_topic_name((rd_kafka_topic_t *) topic), pkj_kafka.movies_topic) != 0 ||
		rd_kafka_topic_partition_list_find(catalog.ends, pkj_kafka.movies_topic, partition) == NULL)
		return;
	tp = rd_kafka_topic_partition_list_find(catalog.reached, pkj_kafka.movies_topic, partition);
	if (tp == NULL)
		tp = rd_kafka_topic_partition_list_add(catalog.reached, pkj_kafka.movies_topic, partition);
	tp->offset = Max(tp->offset, offset);
}

/*
 * pkj_catalog_replayed
 *		Between batches, when what was consumed is stored: did a partition's
 *		movies reach the end its ratings waited for?  Then they are let in
 *		(true: assign again).  An end the brokers did not give yet is asked
 *		again.
 */
bool
pkj_catalog_replayed(void)
{
	List	   *ready = NIL;
	ListCell   *lc;

	if (catalog.connection != pkj_kafka.connection || catalog.ends == NULL ||
		catalog.ends->cnt == 0)
		return false;
	for (int i = 0; i < catalog.ends->cnt; i++)
	{
		rd_kafka_topic_partition_t *end = &catalog.ends->elems[i];
		rd_kafka_topic_partition_t *got =
			rd_kafka_topic_partition_list_find(catalog.reached, end->topic, end->partition);
		int64_t		low,
					high;

		if (end->offset < 0 &&
			rd_kafka_query_watermark_offsets(pkj_kafka.consumer, end->topic, end->partition,
											 &low, &high, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR)
			end->offset = high;
		if (end->offset >= 0 && got != NULL && got->offset >= end->offset)
			ready = lappend_int(ready, end->partition);
	}
	foreach(lc, ready)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		catalog.done = lappend_int(catalog.done, lfirst_int(lc));
		MemoryContextSwitchTo(old);
		rd_kafka_topic_partition_list_del(catalog.ends, pkj_kafka.movies_topic, lfirst_int(lc));
		rd_kafka_topic_partition_list_del(catalog.reached, pkj_kafka.movies_topic, lfirst_int(lc));
	}
	if (ready != NIL)
		ereport(LOG,
				(errmsg("pgkafka_join consumed the movies of partitions %s up to their end: their ratings are consumed from now on",
						pkj_partitions_text(ready))));
	return ready != NIL;
}

/*
 * pkj_assign_partitions
 *		Assign the partitions the worker owns, of both input topics, at the
 *		offsets stored in PostgreSQL (the beginning where none is stored).
 *		Always between batches, so the stored offsets are exactly where
 *		consumption stands.  The ratings of a partition whose movies are
 *		behind wait (see "The catalog comes first" above).
 */
void
pkj_assign_partitions(PkjWorker *worker)
{
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_resp_err_t err;
	bool		isnull0;
	ListCell   *lc;

	parts = rd_kafka_topic_partition_list_new(2 * list_length(worker->owned));
	foreach(lc, worker->owned)
	{
		/* a topic that does not exist yet is assigned when it does */
		if (pkj_kafka.assigned_movies > 0)
			rd_kafka_topic_partition_list_add(parts, pkj_kafka.movies_topic, lfirst_int(lc))->offset =
				RD_KAFKA_OFFSET_BEGINNING;
		if (pkj_kafka.assigned_ratings > 0)
			rd_kafka_topic_partition_list_add(parts, pkj_kafka.ratings_topic, lfirst_int(lc))->offset =
				RD_KAFKA_OFFSET_BEGINNING;
	}

	/* the stored offsets */
	pkj_begin_spi("reading the input offsets");
	if (SPI_execute("SELECT offsets_generation FROM pgkafka_join.control", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read pgkafka_join.control");
	worker->offsets_generation = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc, 1,
															 &isnull0));
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

	/* the catalog first */
	if (catalog.connection != pkj_kafka.connection || catalog.ends == NULL)
		catalog_forget();
	else
	{
		/* consumed again from the stored offsets */
		rd_kafka_topic_partition_list_destroy(catalog.reached);
		catalog.reached = rd_kafka_topic_partition_list_new(0);
	}
	if (pkj_kafka.assigned_movies > 0 && pkj_kafka.assigned_ratings > 0)
	{
		List	   *waiting = NIL;

		foreach(lc, worker->owned)
		{
			int32		p = lfirst_int(lc);
			bool		said = rd_kafka_topic_partition_list_find(catalog.ends,
																  pkj_kafka.movies_topic, p) != NULL;

			if (!catalog_ready(p, rd_kafka_topic_partition_list_find(parts, pkj_kafka.movies_topic, p)->offset))
			{
				rd_kafka_topic_partition_list_del(parts, pkj_kafka.ratings_topic, p);
				if (!said)
					waiting = lappend_int(waiting, p);
			}
		}
		if (waiting != NIL)
			ereport(LOG,
					(errmsg("pgkafka_join consumes the movies of partitions %s up to their end before their ratings",
							pkj_partitions_text(waiting)),
					 errdetail("A rating is joined with its movie as the topic has it, not with a version it replaced or deleted.")));
	}

	pkj_status_reset_partitions();
	err = rd_kafka_assign(pkj_kafka.consumer, parts);
	if (pkj_kafka.assignment)
		rd_kafka_topic_partition_list_destroy(pkj_kafka.assignment);
	pkj_kafka.assignment = parts;
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not assign the input partitions: %s", rd_kafka_err2str(err))));
	worker->assigned = true;
}

/* Assign the partitions again, at the stored offsets, before the next batch */
void
pkj_force_reassign(PkjWorker *worker)
{
	worker->assigned = false;
	if (pkj_kafka.assignment)
		rd_kafka_topic_partition_list_destroy(pkj_kafka.assignment);
	pkj_kafka.assignment = NULL;
}
