/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  librdkafka handles of the join worker, and the functions around them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGKAFKA_JOIN_KAFKA_H
#define PGKAFKA_JOIN_KAFKA_H

#include <librdkafka/rdkafka.h>

/*
 * Groups whose offsets a worker reads or commits besides its own: positions,
 * claims, the input positions shown to Kafka's lag tools
 */
#define PKJ_GROUP_HANDLES 4

typedef struct PkjKafka
{
	rd_kafka_t *consumer;
	rd_kafka_queue_t *queue;	/* the consumer's queue */
	int			wakeup[2];		/* pipe written when the queue fills */
	rd_kafka_t *producer;
	char	   *transactional_id;	/* the producer's */
	rd_kafka_consumer_group_metadata_t *cgmd;	/* control.kafka_group */
	/* the group the input positions are committed to, for lag tools */
	char	   *input_group;
	/* the group of the shares' publish positions, per output topic */
	char	   *shares_group;
	/* where versions up to 1.1 kept them, read when shares_group has none */
	char	   *previous_shares_group;
	rd_kafka_consumer_group_metadata_t *shares_cgmd;
	/* handles that read and commit the offsets of other groups */
	struct
	{
		char	   *group;
		rd_kafka_t *rk;
	}			groups[PKJ_GROUP_HANDLES];
	uint64		connection;		/* which connection of this process: 1, 2, ... */
	bool		transactions_ready; /* init_transactions done */
	bool		must_reconnect; /* a transaction was left unfinished */
	Oid			extension_oid;	/* the extension the handles work for */

	/* settings the handles were made with */
	char	   *brokers;
	char	   *properties;
	char	   *properties_file;
	char	   *properties_file_content;
	char	   *movies_topic;
	char	   *ratings_topic;
	char	   *output_topic;
	char	   *consumer_group;

	/* partitions currently assigned, per input topic */
	int			assigned_movies;
	int			assigned_ratings;
	/* the offsets they were assigned at (RD_KAFKA_OFFSET_BEGINNING: none stored) */
	rd_kafka_topic_partition_list_t *assignment;
} PkjKafka;

extern PkjKafka pkj_kafka;
extern char pkj_kafka_last_error[512];

extern void pkj_kafka_note_error(const char *error);
extern char *pkj_transactional_id_value(void);
/* a delivery report callback, as rd_kafka_conf_set_dr_msg_cb() takes it */
typedef void (*PkjDeliveryReport) (rd_kafka_t *rk, const rd_kafka_message_t *msg,
								   void *opaque);
extern bool pkj_kafka_connect(Oid extension_oid, int worker,
							  PkjDeliveryReport delivery_report, char **problem);
extern bool pkj_read_properties_file(List **props, char **content, char **errmsg);
extern void pkj_kafka_disconnect(void);
extern bool pkj_kafka_settings_changed(void);
extern void pkj_kafka_drain_wakeup(void);
extern int	pkj_kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms);
extern void pkj_kafka_serve_producer(void);
extern rd_kafka_t *pkj_kafka_group_handle(const char *group, char **problem);
extern rd_kafka_t *pkj_kafka_reader(char **problem);
extern bool pkj_kafka_fence(const char *transactional_id, int timeout_ms, char **problem);

/* ingest.c */
struct PkjBatch;
extern void pkj_batch_add(struct PkjBatch *batch, const rd_kafka_message_t *msg);

/* publish.c: the producer's delivery reports, handed to pkj_kafka_connect() */
extern void pkj_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg,
								void *opaque);

#endif							/* PGKAFKA_JOIN_KAFKA_H */
