/*-------------------------------------------------------------------------
 *
 * consume.c
 *	  The consumer's side of the loop: fill a batch from what has arrived,
 *	  and report where each input partition stands.
 *
 * What it owns: taking messages off the consumer's queue (kafka.c made the
 * handles; the partitions are assigned by the ownership steps of
 * worker.c), the wait for more, and the input partitions' high watermarks
 * and positions in the status views and in a Kafka consumer group, for
 * Kafka's own lag tools.  What it does not: storing the batch (ingest.c),
 * and where consumption starts (the offsets stored in PostgreSQL, which
 * the group only mirrors).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pgkafka_join.h"
#include "kafka.h"

/*
 * A stored offset is outside what the partition holds: its messages were
 * deleted by retention (below the log start), or the offset was mistyped or
 * the topic recreated (above the log end).  librdkafka, whose
 * auto.offset.reset is pinned to "error", stops fetching that partition;
 * the others go on.  Skipping to the log start or replaying from the
 * beginning would lose or repeat results silently, so the worker says so
 * and waits for reset_offsets().
 */
static void
report_out_of_range(const char *topic, int32 partition, int64 offset)
{
	int64_t		low = -1,
				high = -1;
	char	   *range;
	char	   *problem;

	if (rd_kafka_query_watermark_offsets(pkj_kafka.consumer, topic, partition,
										 &low, &high, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR)
		range = psprintf("offsets " INT64_FORMAT " to " INT64_FORMAT,
						 (int64) low, (int64) high - 1);
	else
		range = pstrdup("offsets not known (the brokers did not answer)");
	problem = psprintf("offset " INT64_FORMAT " is out of range; the partition holds %s",
					   offset, range);
	pkj_status_set_partition_problem(topic, partition, problem);
	pkj_status_set_error(psprintf("topic \"%s\" partition %d: %s", topic, partition, problem));
	ereport(WARNING,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("pgkafka_join stopped consuming topic \"%s\" partition %d: stored offset " INT64_FORMAT " is out of range",
					topic, partition, offset),
			 errdetail("The partition holds %s.  No message is skipped or consumed again without being told to.",
					   range),
			 errhint("Choose where to resume: SELECT pgkafka_join.pause(); SELECT pgkafka_join.reset_offsets('%s', %d, <offset>); SELECT pgkafka_join.resume();",
					 topic, partition)));
}

/*
 * pkj_consume_batch
 *		Fill the batch: take what the consumer queue holds, up to "limit"
 *		messages.  Once it has a message, it waits for more only while
 *		batch_delay (0 by default) has not passed since the first one: a
 *		batch is what arrived while the previous one was being stored, so a
 *		lone message is stored at once and a backlog goes in full batches,
 *		without a fixed delay.  An empty batch waits on the latch and the
 *		queue's wake-up pipe, and returns after at most timeout_ms, so the
 *		loop can do its periodic work; so does a reload.
 */
void
pkj_consume_batch(PkjBatch *batch, long timeout_ms, int limit)
{
	TimestampTz deadline = 0;

	while (!pkj_batch_full(batch) && pkj_batch_count(batch) < limit)
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
				pkj_catalog_reached(msg->rkt, msg->partition, msg->offset + 1);
				pkj_batch_add(batch, msg);
			}
			else if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
				pkj_catalog_reached(msg->rkt, msg->partition, msg->offset);
			else if (msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET && msg->rkt)
				report_out_of_range(rd_kafka_topic_name(msg->rkt), msg->partition,
									msg->offset);
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

/*
 * pkj_consume_report
 *		Record each assigned partition's high watermark (as last seen in
 *		fetch responses, no broker round trip) and the consumer's position.
 *		Partitions beyond pgkafka_join.max_partitions are not listed, but
 *		counted, their lag with them.
 */
void
pkj_consume_report(void)
{
	rd_kafka_topic_partition_list_t *parts;
	int64		unlisted_lag = 0;
	int			unlisted = 0;
	static bool logged_unlisted = false;

	if (pkj_kafka.consumer == NULL ||
		rd_kafka_assignment(pkj_kafka.consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	rd_kafka_position(pkj_kafka.consumer, parts);
	for (int i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *tp = &parts->elems[i];
		int64_t		low,
					high;
		int64		from = tp->offset;

		if (rd_kafka_get_watermark_offsets(pkj_kafka.consumer, tp->topic, tp->partition,
										   &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR)
			high = low = -1;

		/*
		 * Until a message of the partition is consumed the consumer has no
		 * position for it: the offset it was assigned at is where it stands
		 * (else its whole backlog would be left out of the lag).
		 */
		if (from < 0 && pkj_kafka.assignment)
		{
			rd_kafka_topic_partition_t *a =
				rd_kafka_topic_partition_list_find(pkj_kafka.assignment, tp->topic, tp->partition);

			from = a == NULL ? -1 : a->offset >= 0 ? a->offset : Max(low, 0);
		}
		if (!pkj_status_set_partition(tp->topic, tp->partition, high, from))
		{
			/* unlisted, so the view cannot take its stored offset */
			unlisted++;
			if (high >= 0 && from >= 0 && high > from)
				unlisted_lag += high - from;
		}
	}
	pkj_status_set_unlisted(parts->cnt, unlisted_lag);
	if (unlisted > 0 && !logged_unlisted)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("pgkafka_join consumes %d partitions; pgkafka_join.input_status lists the first %d",
						parts->cnt, pkj_max_partitions),
				 errdetail("The lag of the other %d is counted in pgkafka_join.status.input_lag.", unlisted),
				 errhint("Raise pgkafka_join.max_partitions and restart the server.")));
	logged_unlisted = unlisted > 0;
	rd_kafka_topic_partition_list_destroy(parts);
}

/*
 * pkj_consume_report_paused
 *		While paused nothing is assigned, so fetch responses bring no
 *		watermarks: ask the brokers for the end of each partition owned, so
 *		that the status views show the lag growing (against the stored
 *		offsets) during a pause.
 */
void
pkj_consume_report_paused(List *owned)
{
	const char *topics[2] = {pkj_kafka.movies_topic, pkj_kafka.ratings_topic};

	for (int t = 0; t < 2; t++)
	{
		ListCell   *lc;

		foreach(lc, owned)
		{
			int			p = lfirst_int(lc);
			int64_t		low,
						high;

			if (rd_kafka_query_watermark_offsets(pkj_kafka.consumer, topics[t], p,
												 &low, &high, 1000) != RD_KAFKA_RESP_ERR_NO_ERROR)
				high = -1;
			(void) pkj_status_set_partition(topics[t], p, high, -1);
		}
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * pkj_consume_commit_positions
 *		Commit, to the consumer group pgkafka_join.consumer_group (the
 *		extension's own, control.kafka_group, by default), the position of
 *		each assigned partition, so that Kafka's tools (kafka-consumer-groups
 *		--describe, lag exporters) show how far the worker is.  Called only
 *		between batches, when every message consumed is stored and
 *		committed in PostgreSQL: the group never leads PostgreSQL's offsets.
 *		PostgreSQL's offsets stay the truth: the commit is asynchronous, its
 *		outcome is not waited for, and nothing is ever read back from the
 *		group.  A partition not consumed yet has its stored offset, as it
 *		was assigned at.
 */
void
pkj_consume_commit_positions(void)
{
	rd_kafka_topic_partition_list_t *parts;
	rd_kafka_topic_partition_list_t *commit;
	rd_kafka_t *rk;
	char	   *problem;

	if (pkj_kafka.consumer == NULL ||
		rd_kafka_assignment(pkj_kafka.consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	rd_kafka_position(pkj_kafka.consumer, parts);
	commit = rd_kafka_topic_partition_list_new(parts->cnt);
	for (int i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *tp = &parts->elems[i];
		int64		offset = tp->offset;

		if (offset < 0 && pkj_kafka.assignment)
		{
			rd_kafka_topic_partition_t *a =
				rd_kafka_topic_partition_list_find(pkj_kafka.assignment, tp->topic, tp->partition);

			offset = a == NULL ? -1 : a->offset;
		}
		if (offset >= 0)
			rd_kafka_topic_partition_list_add(commit, tp->topic, tp->partition)->offset = offset;
	}
	rd_kafka_topic_partition_list_destroy(parts);
	if (commit->cnt > 0)
	{
		rk = pkj_kafka_group_handle(pkj_kafka.input_group, &problem);
		if (rk == NULL)
			pkj_kafka_note_error(problem);
		else
		{
			(void) rd_kafka_commit(rk, commit, 1);
			rd_kafka_poll(rk, 0);	/* its logs */
		}
	}
	rd_kafka_topic_partition_list_destroy(commit);
}
