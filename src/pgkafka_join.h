/*-------------------------------------------------------------------------
 *
 * pgkafka_join.h
 *	  Declarations shared by the files of pgkafka_join.
 *
 * One file a role, read top-down: each calls only files below it in this
 * list (test/call_graph checks it).
 *	  pgkafka_join.c  the module's entry point: settings, the launcher
 *	  sql_api.c   SQL-callable C functions
 *	  launcher.c  the launcher, which keeps the join workers running
 *	  worker.c    the join worker's process and its loop, in named steps
 *	  consume.c   fill a batch from the consumer; input partitions' status
 *	  ingest.c    one batch of consumed messages -> one transaction
 *	  ownership.c which partitions a worker owns; claims against other
 *	              servers; assigning them at the stored offsets
 *	  publish.c   new rated movies -> one Kafka transaction
 *	  kafka.c     librdkafka handles: consumer, transactional producer
 *	  message.c   parse one Kafka message value into a movie or a rating,
 *	              or say why it is rejected; never throws on bad input
 *	  status.c    what the worker does, in shared memory for the views, and
 *	              what it waits for, in the log
 *	  join.c      a batch of ratings joined with the catalog and stored
 *	  guc.c       settings (pgkafka_join.*) and their checks
 *	  xact.c      the worker's transactions, SPI plans and the lock on the
 *	              extension
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGKAFKA_JOIN_H
#define PGKAFKA_JOIN_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

/* ---- guc.c ---- */
extern char *pkj_brokers;
extern char *pkj_database;
extern char *pkj_movies_topic;
extern char *pkj_ratings_topic;
extern char *pkj_output_topic;
extern char *pkj_join_window;
extern char *pkj_future_tolerance;
extern int64 pkj_future_tolerance_us;
extern char *pkj_kafka_properties;
extern char *pkj_kafka_properties_file;
extern char *pkj_transactional_id;
extern char *pkj_consumer_group;
extern int	pkj_batch_size;
extern int	pkj_batch_delay;
extern int	pkj_retry_interval;
extern int	pkj_max_message_bytes;
extern int	pkj_premake_months;
extern int	pkj_max_partitions;
extern int	pkj_workers;
extern char *pkj_partitions;

#define PKJ_MAX_WORKERS 64

extern void pkj_define_gucs(void);
extern bool pkj_parse_partitions(const char *text, List **partitions,
								 char **errmsg);

/*
 * A parsed list of extra librdkafka properties, from
 * pgkafka_join.kafka_properties ("key=value key2='v a l'").
 */
typedef struct PkjProperty
{
	char	   *key;
	char	   *value;
} PkjProperty;

extern bool pkj_parse_properties(const char *text, List **props,
								 char **errmsg);
extern bool pkj_check_properties(List *props, char **errmsg);

/* ---- message.c ---- */

/* What one message value on the movies topic says */
typedef struct PkjMovie
{
	int64		id;
	char	   *title;			/* palloc'd, NUL-terminated, valid UTF-8 */
	bool		has_release_year;
	int32		release_year;
} PkjMovie;

/* What one message value on the ratings topic says */
typedef struct PkjRating
{
	int64		movie_id;
	float8		rating;
	bool		has_rated_at;	/* false: use the Kafka message timestamp */
	TimestampTz rated_at;
} PkjRating;

/*
 * Each returns true and fills *out when the value is accepted; otherwise
 * returns false and sets *reason to a constant, human-readable reason.  They
 * never ereport on bad input: a bad message must not abort a batch.
 */
extern bool pkj_parse_movie(const char *value, size_t len, PkjMovie *out,
							const char **reason);
extern bool pkj_parse_rating(const char *value, size_t len, PkjRating *out,
							 const char **reason);
extern bool pkj_parse_id_text(const char *text, size_t len, int64 *id);
extern bool pkj_timestamp_in_range(TimestampTz ts);
extern void pkj_format_result(StringInfo buf, int64 movie_id, const char *title,
							  bool has_release_year, int32 release_year,
							  float8 rating, TimestampTz rated_at);

/* ---- the join worker, as its roles see it ---- */

/*
 * What the roles need to know of the worker they run in.  The loop
 * (worker.c) keeps the one instance and passes it down; no file reaches
 * back for it.
 */
typedef struct PkjWorker
{
	int			index;			/* 0 .. pgkafka_join.workers - 1 */
	List	   *owned;			/* partitions owned, in TopMemoryContext */
	bool		assigned;		/* the consumer has them, at the stored offsets */
	bool		rejoined;		/* rejoins left over were run since connecting */
	int64		offsets_generation; /* control's, when they were assigned */
} PkjWorker;

/* ---- ingest.c ---- */
typedef struct PkjBatch PkjBatch;

extern PkjBatch *pkj_batch_create(MemoryContext cxt);
extern void pkj_batch_reset(PkjBatch *batch);
extern int	pkj_batch_count(PkjBatch *batch);
extern bool pkj_batch_full(PkjBatch *batch);

/* The most bytes of keys and values one batch holds */
#define PKJ_BATCH_MAX_BYTES ((Size) 256 * 1024 * 1024)
extern bool pkj_ingest_batch(PkjWorker *worker, PkjBatch *batch, int64 *results);
extern bool pkj_ingest_reject_single(PkjWorker *worker, PkjBatch *batch,
									 const char *reason);
extern int64 pkj_ingest_rejoin(PkjWorker *worker, bool orphans);
extern bool pkj_batch_queued_rejoin(PkjBatch *batch);
extern bool pkj_batch_storing_contents(PkjBatch *batch);

/* ---- consume.c ---- */
extern void pkj_consume_batch(PkjBatch *batch, long timeout_ms, int limit);
extern void pkj_consume_report(void);
extern void pkj_consume_report_paused(List *owned);
extern void pkj_consume_commit_positions(void);

/* ---- join.c ---- */
extern TimestampTz pkj_join_cutoff(void);
extern bool pkj_month_bounds(TimestampTz t, TimestampTz *start, TimestampTz *next);
extern void pkj_create_partitions_for(int count, const Datum *times);
extern void pkj_copy_movies(int count, const int *rows, const Datum *ids,
							const Datum *titles, const Datum *release_years,
							const bool *release_year_nulls);
extern int64 pkj_store_ratings(int count, const Datum *movie_ids,
							   const Datum *ratings, const Datum *rated_ats,
							   const Datum *partitions, const Datum *offsets);

/* ---- ownership.c ---- */
typedef enum PkjClaim
{
	PKJ_CLAIM_HELD,				/* the worker owns its partitions */
	PKJ_CLAIM_PENDING,			/* not known yet: consume nothing */
	PKJ_CLAIM_REFUSED			/* another server owns some of them */
} PkjClaim;

extern List *pkj_owned_partitions(int worker, int npartitions, List **beyond);
extern bool pkj_partitions_split(void);
extern char *pkj_partitions_text(List *partitions);
extern PkjClaim pkj_claims_hold(List *owned);
extern void pkj_claims_reset(void);
extern void pkj_claims_set_topic(const char *topic);
extern long pkj_claims_next_ms(void);
extern bool pkj_claims_confirming(void);
extern bool pkj_claims_refused(void);
extern bool pkj_claims_fresh(void);
extern bool pkj_claims_renewing(void);
extern bool pkj_claims_receiving(void);
extern bool pkj_receive_partitions(PkjWorker *worker);
extern List *pkj_release_requested(PkjWorker *worker);
extern void pkj_release_partitions(PkjWorker *worker, List *partitions);
extern bool pkj_refresh_ownership(PkjWorker *worker);
extern void pkj_assign_partitions(PkjWorker *worker);
extern void pkj_force_reassign(PkjWorker *worker);
extern void pkj_catalog_reached(void *topic, int32 partition, int64 offset);
extern bool pkj_catalog_replayed(void);

/* ---- publish.c ---- */
typedef enum PkjPosition
{
	PKJ_POSITION_UNKNOWN,		/* the brokers could not tell yet */
	PKJ_POSITION_KNOWN,			/* publishing goes on after it */
	PKJ_POSITION_BEHIND			/* the output topic is ahead of PostgreSQL */
} PkjPosition;

extern void pkj_publisher_set_shares(List *shares, List *server);
extern PkjPosition pkj_publisher_position(void);
extern bool pkj_publisher_position_known(void);
extern int64 pkj_publish(MemoryContext cxt);
extern int64 pkj_publish_start(MemoryContext cxt);
extern int64 pkj_publish_finish(void);
extern bool pkj_publish_pending(void);
extern void pkj_publisher_reset(void);

/* ---- status.c ---- */
extern void pkj_status_init(void);
extern void pkj_status_worker_started(int worker);
extern void pkj_status_set_owned(const char *owned, List *shares);
extern List *pkj_status_other_worker_pids(void);
extern void pkj_status_worker_exit(int code, Datum arg);
extern void pkj_status_wake_worker(void);
extern void pkj_status_set_state(const char *state);
extern void pkj_status_set_error(const char *error);
extern void pkj_status_count_batch(int64 messages, int64 results);
extern void pkj_status_count_rejoined(int64 results);
extern void pkj_status_count_published(int64 published, int64 last_id);
extern void pkj_status_reset_partitions(void);
extern bool pkj_status_set_partition(const char *topic, int32 partition,
									 int64 high_watermark, int64 consumed);
extern void pkj_status_set_partition_problem(const char *topic, int32 partition,
											 const char *problem);
extern void pkj_status_set_unlisted(int partitions, int64 lag);
extern int64 pkj_status_total_lag(void);
extern int64 pkj_status_messages_total(void);

/* What the worker waits for, so that each wait is logged once */
typedef enum PkjWait
{
	PKJ_WAIT_NONE,
	PKJ_WAIT_BROKERS,
	PKJ_WAIT_EXTENSION,
	PKJ_WAIT_PROPERTIES_FILE,
	PKJ_WAIT_PROPERTIES,
	PKJ_WAIT_TOPIC_NAMES,
	PKJ_WAIT_UPDATE,
	PKJ_WAIT_UNREACHABLE,
	PKJ_WAIT_TOPICS,
	PKJ_WAIT_PARTITIONING,
	PKJ_WAIT_NO_PARTITIONS
} PkjWait;

extern bool pkj_wait_begins(PkjWait reason);
extern void pkj_log_wait(PkjWait reason, const char *msg, const char *hint);
extern bool pkj_wait_ended(PkjWait reason);

/* ---- xact.c ---- */
extern MemoryContext pkj_spi_caller_cxt;
extern void pkj_begin_spi(const char *activity);
extern void pkj_end_spi(void);
extern void pkj_abort_spi(void);
extern void pkj_hold_transaction(void);
extern void pkj_end_held_transaction(bool commit);
extern void pkj_forget_transaction(void);
extern bool pkj_lock_extension(Oid extension);
extern SPIPlanPtr pkj_keep_plan(const char *sql, int nargs, const Oid *argtypes);

/* ---- launcher.c ---- */
extern void pkj_register_launcher(void);
extern PGDLLEXPORT void pkj_launcher_main(Datum arg);

/* ---- worker.c ---- */
extern PGDLLEXPORT void pkj_worker_main(Datum arg);

#endif							/* PGKAFKA_JOIN_H */
