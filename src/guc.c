/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The settings of pgkafka_join, all in one place.
 *
 * Every setting is named pgkafka_join.*; the prefix is reserved so that a
 * misspelt name in postgresql.conf is reported instead of silently ignored.
 * Settings the join worker re-reads on SIGHUP are PGC_SIGHUP; the database
 * the worker connects to needs a restart.  Values that must be parsed
 * (the join window, the extra librdkafka properties) are checked when they
 * are set, so a bad value is refused by "pg_ctl reload" with a message
 * instead of breaking the worker later.
 *
 * Not here: what the settings do.  The other files read the values, and
 * never write them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <librdkafka/rdkafka.h>

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"

#include "pgkafka_join.h"

char	   *pkj_brokers = NULL;
char	   *pkj_database = NULL;
char	   *pkj_movies_topic = NULL;
char	   *pkj_ratings_topic = NULL;
char	   *pkj_output_topic = NULL;
char	   *pkj_join_window = NULL;
char	   *pkj_future_tolerance = NULL;
int64		pkj_future_tolerance_us = USECS_PER_DAY;
char	   *pkj_kafka_properties = NULL;
char	   *pkj_kafka_properties_file = NULL;
char	   *pkj_transactional_id = NULL;
char	   *pkj_consumer_group = NULL;
int			pkj_batch_size = 10000;
int			pkj_batch_delay = 0;
int			pkj_retry_interval = 5000;
int			pkj_max_message_bytes = 1048576;
int			pkj_premake_months = 2;
int			pkj_max_partitions = 1024;
int			pkj_workers = 1;
char	   *pkj_partitions = NULL;

/* The longest join window accepted */
#define MAX_JOIN_WINDOW_YEARS 10
/* The longest future_tolerance accepted */
#define MAX_FUTURE_TOLERANCE_DAYS 366

/* Partition numbers beyond this are refused in pgkafka_join.partitions */
#define MAX_PARTITION_NUMBER 65535

/*
 * pkj_parse_partitions
 *		Parse a list of partition numbers and ranges ("0-5,12"), spaces
 *		allowed, into a sorted list of distinct numbers.  Returns false, with
 *		*errmsg set, on a bad list; never throws.  An empty text gives NIL.
 */
bool
pkj_parse_partitions(const char *text, List **partitions, char **errmsg)
{
	const char *p = text;
	bool	   *seen;

	*partitions = NIL;
	while (isspace((unsigned char) *p))
		p++;
	if (*p == '\0')
		return true;			/* empty: every partition */
	seen = palloc0((MAX_PARTITION_NUMBER + 1) * sizeof(bool));
	for (;;)
	{
		long		first,
					last;
		char	   *end;

		while (isspace((unsigned char) *p))
			p++;
		if (!isdigit((unsigned char) *p))
		{
			*errmsg = psprintf("expected a partition number at \"%s\"", p);
			return false;
		}
		first = strtol(p, &end, 10);
		p = end;
		while (isspace((unsigned char) *p))
			p++;
		last = first;
		if (*p == '-')
		{
			p++;
			while (isspace((unsigned char) *p))
				p++;
			if (!isdigit((unsigned char) *p))
			{
				*errmsg = psprintf("expected the end of a range at \"%s\"", p);
				return false;
			}
			last = strtol(p, &end, 10);
			p = end;
		}
		if (first > MAX_PARTITION_NUMBER || last > MAX_PARTITION_NUMBER)
		{
			*errmsg = psprintf("partition numbers go up to %d", MAX_PARTITION_NUMBER);
			return false;
		}
		if (last < first)
		{
			*errmsg = psprintf("range %ld-%ld is empty", first, last);
			return false;
		}
		for (long i = first; i <= last; i++)
			seen[i] = true;
		while (isspace((unsigned char) *p))
			p++;
		if (*p == '\0')
			break;
		if (*p != ',')
		{
			*errmsg = psprintf("expected a comma at \"%s\"", p);
			return false;
		}
		p++;
	}
	for (int i = 0; i <= MAX_PARTITION_NUMBER; i++)
		if (seen[i])
			*partitions = lappend_int(*partitions, i);
	pfree(seen);
	return true;
}

static bool
check_partitions(char **newval, void **extra, GucSource source)
{
	List	   *partitions;
	char	   *errmsg;

	if (!pkj_parse_partitions(*newval, &partitions, &errmsg))
	{
		GUC_check_errdetail("pgkafka_join.partitions: %s.", errmsg);
		GUC_check_errhint("List partition numbers and ranges, such as '0-5,12'; empty means every partition.");
		return false;
	}
	return true;
}

/*
 * Parse an interval without throwing: the check hook must report a bad value
 * through GUC_check_errdetail, not by raising an error.
 */
static bool
parse_interval_quietly(const char *text, Interval *result)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm_in;
	int			dterr;

	dterr = ParseDateTime(text, workbuf, sizeof(workbuf), field, ftype,
						  MAXDATEFIELDS, &nf);
	if (dterr == 0)
		dterr = DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE,
							   &dtype, &itm_in);
	if (dterr == DTERR_BAD_FORMAT)
		dterr = DecodeISO8601Interval(unconstify(char *, text), &dtype, &itm_in);
	if (dterr != 0 || dtype != DTK_DELTA)
		return false;
	return itmin2interval(&itm_in, result) == 0;
}

static bool
check_join_window(char **newval, void **extra, GucSource source)
{
	Interval	span;

	if (!parse_interval_quietly(*newval, &span))
	{
		GUC_check_errdetail("\"%s\" is not an interval.", *newval);
		return false;
	}
	if (span.month < 0 || span.day < 0 || span.time < 0 ||
		(span.month == 0 && span.day == 0 && span.time == 0))
	{
		GUC_check_errdetail("The join window must be positive.");
		return false;
	}

	/*
	 * Bounded, so that the window's start (now() minus the window) is a
	 * timestamp, and the partitions it spans are a few hundred tables: a
	 * value the server accepts must never make a batch fail.
	 */
	if (span.month / 12.0 * 365.25 + span.day + (double) span.time / USECS_PER_DAY >
		MAX_JOIN_WINDOW_YEARS * 365.25)
	{
		GUC_check_errdetail("The join window must be at most %d years.", MAX_JOIN_WINDOW_YEARS);
		return false;
	}
	return true;
}

/*
 * pgkafka_join.future_tolerance: a non-negative interval of at most a year,
 * kept as microseconds (a month counts 30 days) for the worker, which
 * compares every rating's rated_at with its message's timestamp.
 */
static bool
check_future_tolerance(char **newval, void **extra, GucSource source)
{
	Interval	span;
	int64	   *us;

	if (!parse_interval_quietly(*newval, &span))
	{
		GUC_check_errdetail("\"%s\" is not an interval.", *newval);
		return false;
	}
	if (span.month < 0 || span.day < 0 || span.time < 0)
	{
		GUC_check_errdetail("The tolerance must not be negative.");
		return false;
	}
	if ((double) span.month * DAYS_PER_MONTH + span.day + (double) span.time / USECS_PER_DAY >
		MAX_FUTURE_TOLERANCE_DAYS)
	{
		GUC_check_errdetail("The tolerance must be at most %d days.", MAX_FUTURE_TOLERANCE_DAYS);
		return false;
	}
	us = malloc(sizeof(int64));	/* freed by the GUC machinery, with free() */
	if (us == NULL)
		return false;
	*us = ((int64) span.month * DAYS_PER_MONTH + span.day) * USECS_PER_DAY + span.time;
	*extra = us;
	return true;
}

static void
assign_future_tolerance(const char *newval, void *extra)
{
	pkj_future_tolerance_us = *(int64 *) extra;
}

/*
 * pkj_parse_properties
 *		Parse "key=value key2='a value'" into a List of PkjProperty.
 *
 * The syntax is libpq's connection string syntax: pairs separated by white
 * space, values optionally in single quotes, backslash escapes a quote or a
 * backslash inside quotes.  Returns false with *errmsg set on bad input; it
 * never throws, so that the GUC check hook can use it.
 */
bool
pkj_parse_properties(const char *text, List **props, char **errmsg)
{
	const char *p = text;
	List	   *result = NIL;

	*errmsg = NULL;
	while (*p)
	{
		StringInfoData key;
		StringInfoData value;
		PkjProperty *prop;

		while (isspace((unsigned char) *p))
			p++;
		if (*p == '\0')
			break;

		initStringInfo(&key);
		while (*p && *p != '=' && !isspace((unsigned char) *p))
			appendStringInfoChar(&key, *p++);
		while (isspace((unsigned char) *p))
			p++;
		if (*p != '=')
		{
			*errmsg = psprintf("missing \"=\" after \"%s\"", key.data);
			return false;
		}
		p++;
		while (isspace((unsigned char) *p))
			p++;

		initStringInfo(&value);
		if (*p == '\'')
		{
			p++;
			for (;;)
			{
				if (*p == '\0')
				{
					*errmsg = psprintf("unterminated quoted value for \"%s\"",
									   key.data);
					return false;
				}
				if (*p == '\'')
				{
					p++;
					break;
				}
				if (*p == '\\' && p[1] != '\0')
					p++;
				appendStringInfoChar(&value, *p++);
			}
		}
		else
		{
			while (*p && !isspace((unsigned char) *p))
				appendStringInfoChar(&value, *p++);
		}

		prop = palloc(sizeof(PkjProperty));
		prop->key = key.data;
		prop->value = value.data;
		result = lappend(result, prop);
	}

	*props = result;
	return true;
}

/* The properties owned by pgkafka_join: changing them breaks exactly-once */
static const char *const reserved_properties[] = {
	"transactional.id", "isolation.level", "enable.auto.commit",
	"enable.idempotence", "partitioner", "auto.offset.reset", NULL
};

static bool
property_is_reserved(const char *key)
{
	for (int i = 0; reserved_properties[i] != NULL; i++)
	{
		if (strcmp(key, reserved_properties[i]) == 0)
			return true;
	}
	return false;
}

/*
 * pkj_check_properties
 *		Each property must be one librdkafka knows, with a value it accepts
 *		(tried on a scratch configuration, so that a typo is refused by the
 *		reload instead of stopping the worker), and none of those
 *		exactly-once depends on.  Returns false with *errmsg set otherwise.
 */
bool
pkj_check_properties(List *props, char **errmsg)
{
	ListCell   *lc;
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	foreach(lc, props)
	{
		PkjProperty *prop = lfirst(lc);
		char		errstr[512];

		if (property_is_reserved(prop->key))
		{
			rd_kafka_conf_destroy(conf);
			*errmsg = psprintf("property \"%s\" is set by pgkafka_join itself", prop->key);
			return false;
		}
		if (rd_kafka_conf_set(conf, prop->key, prop->value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			rd_kafka_conf_destroy(conf);
			*errmsg = psprintf("librdkafka: %s", errstr);
			return false;
		}
	}
	rd_kafka_conf_destroy(conf);
	return true;
}

static bool
check_kafka_properties(char **newval, void **extra, GucSource source)
{
	List	   *props = NIL;
	char	   *errmsg;
	ListCell   *lc;

	if (!pkj_parse_properties(*newval, &props, &errmsg) ||
		!pkj_check_properties(props, &errmsg))
	{
		GUC_check_errdetail("%s.", errmsg);
		foreach(lc, props)
		{
			if (property_is_reserved(((PkjProperty *) lfirst(lc))->key))
				GUC_check_errhint("Exactly-once depends on transactional.id, isolation.level, enable.auto.commit, enable.idempotence, partitioner and auto.offset.reset; set the transactional id with pgkafka_join.transactional_id.");
		}
		return false;
	}
	return true;
}

static bool
check_kafka_properties_file(char **newval, void **extra, GucSource source)
{
	if (**newval != '\0' && !is_absolute_path(*newval))
	{
		GUC_check_errdetail("The path of the properties file must be absolute.");
		return false;
	}
	return true;
}

static bool
check_topic(char **newval, void **extra, GucSource source)
{
	const char *c;

	if (**newval == '\0' || strlen(*newval) > 249)
	{
		GUC_check_errdetail("A topic name has 1 to 249 characters.");
		return false;
	}
	for (c = *newval; *c; c++)
	{
		if (!(isalnum((unsigned char) *c) || *c == '.' || *c == '_' || *c == '-'))
		{
			GUC_check_errdetail("A topic name may only contain ASCII letters, digits, \".\", \"_\" and \"-\".");
			return false;
		}
	}
	return true;
}

void
pkj_define_gucs(void)
{
	DefineCustomStringVariable("pgkafka_join.brokers",
							   "Kafka bootstrap servers (host:port, comma-separated).",
							   "Empty: the join worker waits idle.",
							   &pkj_brokers,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.database",
							   "Database in which CREATE EXTENSION pgkafka_join was run.",
							   NULL,
							   &pkj_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.movies_topic",
							   "Kafka topic of the movies catalog.",
							   NULL,
							   &pkj_movies_topic,
							   "movies",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.ratings_topic",
							   "Kafka topic of the ratings stream.",
							   NULL,
							   &pkj_ratings_topic,
							   "ratings",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.output_topic",
							   "Kafka topic the rated movies are published to.",
							   NULL,
							   &pkj_output_topic,
							   "rated_movies",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.join_window",
							   "How old a rating may be, when it meets its movie, to be published.",
							   "A rating is joined if its movie is stored no later than rated_at plus this interval.",
							   &pkj_join_window,
							   "1 month",
							   PGC_SIGHUP, 0,
							   check_join_window, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.future_tolerance",
							   "How far ahead of its message's timestamp a rating's rated_at may be.",
							   "A rating dated further ahead is rejected: it would stay inside the join window for that much longer.",
							   &pkj_future_tolerance,
							   "1 day",
							   PGC_SIGHUP, 0,
							   check_future_tolerance, assign_future_tolerance, NULL);

	DefineCustomStringVariable("pgkafka_join.kafka_properties",
							   "Extra librdkafka properties, as key=value pairs separated by spaces.",
							   "For SSL and SASL settings; values may be single-quoted.",
							   &pkj_kafka_properties,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_kafka_properties, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.kafka_properties_file",
							   "File of extra librdkafka properties, one key=value per line.",
							   "For secrets: its contents are never shown nor logged.",
							   &pkj_kafka_properties_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   check_kafka_properties_file, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.transactional_id",
							   "Kafka transactional id of the publisher, and group id of its position.",
							   "Empty: derived from the system identifier and the database.",
							   &pkj_transactional_id,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.consumer_group",
							   "Kafka consumer group the worker commits its stored input positions to, for Kafka's lag tools.",
							   "Empty: the extension's own group, control.kafka_group.",
							   &pkj_consumer_group,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.batch_size",
							"Most messages stored, or results published, in one transaction.",
							NULL,
							&pkj_batch_size,
							10000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.batch_delay",
							"Longest wait for more messages once a batch has its first one.",
							"0: a batch is what arrived while the previous one was stored.",
							&pkj_batch_delay,
							0, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.retry_interval",
							"Wait before the worker retries after an error, or re-checks what it waits for.",
							NULL,
							&pkj_retry_interval,
							5000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.max_message_bytes",
							"Largest message value accepted; larger ones are rejected.",
							NULL,
							&pkj_max_message_bytes,
							1048576, 1024, 64 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.premake_months",
							"Monthly partitions created ahead of the current month.",
							NULL,
							&pkj_premake_months,
							2, 0, 120,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.max_partitions",
							"Input partitions listed in pgkafka_join.input_status.",
							"The lag of partitions beyond it still counts in pgkafka_join.status.",
							&pkj_max_partitions,
							1024, 1, 1048576,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pgkafka_join.workers",
							"Join workers per server, each owning a share of the input partitions.",
							"Worker i owns the server's partitions at positions i, i + workers, ... of their sorted list.",
							&pkj_workers,
							1, 1, PKJ_MAX_WORKERS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("pgkafka_join.partitions",
							   "Partition numbers of both input topics this server owns, such as '0-5,12'.",
							   "Empty: every partition.  Set on each of several servers sharing the topics.",
							   &pkj_partitions,
							   "",
							   PGC_POSTMASTER, 0,
							   check_partitions, NULL, NULL);

	MarkGUCPrefixReserved("pgkafka_join");
}
