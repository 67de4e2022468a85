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
 * the ratings topic (of the movies topic while there is no ratings topic), in the group "pgkafka_join.owners.<output topic>", is
 * the owner's clock in milliseconds, and its metadata the owner's identity
 * (the publisher's transactional id before any worker suffix).  The owner
 * writes it again every CLAIM_RENEW_MS.  A worker that finds a partition
 * claimed by another identity watches the claim for CLAIM_LAPSE_MS: if it
 * changes, the other owner is alive and the newcomer refuses (it came
 * second); if not, the claim has lapsed and is taken over.  A worker taking
 * over partitions it did not claim last reads its claims back
 * CLAIM_CONFIRM_MS later, and refuses if another server wrote in between;
 * every renewal checks the same.  Of two servers started at the same
 * moment, the last to write keeps the partitions.  No clock is compared
 * between servers.  Meanwhile the worker stores what it consumes in a
 * transaction it commits only once the claims hold (see worker.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdlib.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

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

/* The topic whose partitions the claims are written on (the ratings topic) */
static char claim_topic[256];

/* The state of the claims of the current Kafka handles */
static struct
{
	bool		held;			/* claims written and confirmed */
	TimestampTz confirm_at;		/* read back then; 0: nothing to confirm */
	TimestampTz renew_at;		/* write again then */
	TimestampTz watch_until;	/* foreign claims watched until then */
	rd_kafka_topic_partition_list_t *watched;	/* foreign claims as first seen */
	bool		refused_logged;
} claims;

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

/* Write this server's claims of the given partitions; false if it failed */
static bool
write_claims(List *owned)
{
	rd_kafka_t *rk = claims_handle();
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_queue_t *queue;
	rd_kafka_event_t *ev;
	char	   *me = identity();
	int64		now_ms = GetCurrentTimestamp() / 1000;
	bool		ok = false;
	ListCell   *lc;

	if (rk == NULL)
		return false;
	parts = rd_kafka_topic_partition_list_new(list_length(owned));
	foreach(lc, owned)
	{
		rd_kafka_topic_partition_t *tp =
			rd_kafka_topic_partition_list_add(parts, claim_topic, lfirst_int(lc));

		tp->offset = now_ms;
		/* librdkafka frees it with the list */
		tp->metadata = strdup(me);
		tp->metadata_size = tp->metadata ? strlen(me) : 0;
	}
	/* asynchronously, so that a broker outage cannot stall the worker */
	queue = rd_kafka_queue_new(rk);
	(void) rd_kafka_commit_queue(rk, parts, queue, NULL, NULL);
	rd_kafka_topic_partition_list_destroy(parts);
	ev = rd_kafka_queue_poll(queue, CLAIM_TIMEOUT_MS);
	if (ev == NULL)
		pkj_kafka_note_error("could not write the partition claims: no answer from the brokers");
	else
	{
		const rd_kafka_topic_partition_list_t *res = rd_kafka_event_topic_partition_list(ev);

		ok = rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR_NO_ERROR;
		for (int i = 0; ok && res && i < res->cnt; i++)
			ok = res->elems[i].err == RD_KAFKA_RESP_ERR_NO_ERROR;
		if (!ok)
			pkj_kafka_note_error(psprintf("could not write the partition claims: %s",
										  rd_kafka_event_error(ev) ?
										  rd_kafka_event_error_string(ev) : "a partition was refused"));
		rd_kafka_event_destroy(ev);
	}
	rd_kafka_queue_destroy(queue);
	return ok;
}

/* Is this claim another server's? */
static bool
foreign_claim(const rd_kafka_topic_partition_t *tp, const char *me)
{
	return tp->offset >= 0 && tp->metadata_size > 0 &&
		(tp->metadata_size != strlen(me) || memcmp(tp->metadata, me, tp->metadata_size) != 0);
}

/* Is this claim ours? */
static bool
own_claim(const rd_kafka_topic_partition_t *tp, const char *me)
{
	return tp->offset >= 0 && tp->metadata_size == strlen(me) &&
		memcmp(tp->metadata, me, tp->metadata_size) == 0;
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

	if (claims.watched)
		rd_kafka_topic_partition_list_destroy(claims.watched);
	memset(&claims, 0, sizeof(claims));
	/* a refusal is said once, not at every retry */
	claims.refused_logged = refused_logged;
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
	char	   *other = NULL;

	for (int i = 0; i < found->cnt; i++)
	{
		if (foreign_claim(&found->elems[i], me))
		{
			taken = lappend_int(taken, found->elems[i].partition);
			if (other == NULL)
				other = pnstrdup(found->elems[i].metadata, found->elems[i].metadata_size);
		}
	}
	pkj_status_set_error(psprintf("partitions %s are owned by \"%s\"",
								  pkj_partitions_text(taken), other ? other : "?"));
	if (!claims.refused_logged)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("pgkafka_join will not consume partitions %s of \"%s\" and \"%s\": another server owns them",
						pkj_partitions_text(taken), pkj_kafka.movies_topic, pkj_kafka.ratings_topic),
				 errdetail("Server \"%s\" claims them for output topic \"%s\" and is alive.  This server (\"%s\") came second; it consumes and publishes nothing.",
						   other ? other : "?", pkj_kafka.output_topic, me),
				 errhint("Give each server partitions of its own in pgkafka_join.partitions.  A claim lapses %d s after its owner stopped.",
						 CLAIM_LAPSE_MS / 1000)));
	claims.refused_logged = true;
	claims.held = false;
	rd_kafka_topic_partition_list_destroy(found);
	return PKJ_CLAIM_REFUSED;
}

/*
 * pkj_claims_hold
 *		Make sure this worker holds the claims of its partitions: take them,
 *		confirm them, renew them, each when due.  Never waits longer than
 *		the Kafka calls it makes.
 *
 *		PKJ_CLAIM_HELD: go on consuming and publishing.
 *		PKJ_CLAIM_PENDING: not yet (a foreign claim is being watched, or
 *		ours wait to be confirmed, or the brokers did not answer); call again
 *		soon, consume and publish nothing meanwhile.
 *		PKJ_CLAIM_REFUSED: another server owns some of the partitions
 *		(logged once, shown in status); consume and publish nothing.
 */
PkjClaim
pkj_claims_hold(List *owned)
{
	TimestampTz now = GetCurrentTimestamp();
	rd_kafka_topic_partition_list_t *found;
	char	   *me;
	bool		all_ours = true;
	bool		any_foreign = false;

	if (owned == NIL)
		return PKJ_CLAIM_HELD;
	if (claims.held && now < claims.renew_at)
		return PKJ_CLAIM_HELD;
	if (!claims.held && claims.confirm_at != 0 && now < claims.confirm_at)
		return PKJ_CLAIM_PENDING;
	me = identity();

	found = read_claims(owned);
	if (found == NULL)
		return claims.held ? PKJ_CLAIM_HELD : PKJ_CLAIM_PENDING;

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
			claims.watch_until = TimestampTzPlusMilliseconds(now, CLAIM_LAPSE_MS);
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
		ereport(LOG,
				(errmsg("pgkafka_join takes over partitions whose claim lapsed"),
				 errdetail("The claims of another server were not renewed for %d s.",
						   CLAIM_LAPSE_MS / 1000)));
	}
	rd_kafka_topic_partition_list_destroy(found);
	if (claims.watched)
		rd_kafka_topic_partition_list_destroy(claims.watched);
	claims.watched = NULL;

	if (!claims.held && claims.confirm_at != 0)
	{
		/* read back after CLAIM_CONFIRM_MS: nobody wrote in between */
		claims.held = true;
		claims.confirm_at = 0;
	}

	if (!write_claims(owned))
		return claims.held ? PKJ_CLAIM_HELD : PKJ_CLAIM_PENDING;
	claims.renew_at = TimestampTzPlusMilliseconds(now, CLAIM_RENEW_MS);
	if (!claims.held)
	{
		if (all_ours)
			claims.held = true; /* ours already: taken back at once */
		else
		{
			claims.confirm_at = TimestampTzPlusMilliseconds(now, CLAIM_CONFIRM_MS);
			return PKJ_CLAIM_PENDING;
		}
	}
	if (claims.refused_logged)
		ereport(LOG, (errmsg("pgkafka_join owns its partitions again")));
	claims.refused_logged = false;
	return PKJ_CLAIM_HELD;
}

/* Are this server's new claims written, waiting to be read back? */
bool
pkj_claims_confirming(void)
{
	return !claims.held && claims.confirm_at != 0;
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
	TimestampTz due = claims.held ? claims.renew_at : claims.confirm_at;

	if (due == 0)
		return CLAIM_RENEW_MS;
	return Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due), 0);
}
