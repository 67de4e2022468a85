# pgkafka_join: PGXS build.  "make installcheck" runs the SQL regression and
# isolation tests on a temporary instance of their own; test/run runs every
# test, the end-to-end ones against a real Kafka broker included.

MODULE_big = pgkafka_join
OBJS = \
	src/pgkafka_join.o \
	src/guc.o \
	src/message.o \
	src/kafka.o \
	src/consume.o \
	src/ingest.o \
	src/join.o \
	src/publish.o \
	src/launcher.o \
	src/worker.o \
	src/status.o \
	src/ownership.o \
	src/sql_api.o \
	src/xact.o

EXTENSION = pgkafka_join
DATA = sql/pgkafka_join--1.0.sql sql/pgkafka_join--1.1.sql sql/pgkafka_join--1.2.sql \
	sql/pgkafka_join--1.3.sql \
	sql/pgkafka_join--1.0--1.1.sql sql/pgkafka_join--1.1--1.2.sql sql/pgkafka_join--1.2--1.3.sql \
	sql/pgkafka_join--1.3--1.4.sql
PGFILEDESC = "pgkafka_join - Kafka stream-table join inside PostgreSQL"

PG_CPPFLAGS += -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -I$(srcdir)/src $(shell pkg-config --cflags rdkafka)
SHLIB_LINK += $(shell pkg-config --libs rdkafka)

REGRESS = schema partitions messages join_rule catalog_updates rejected output_position advance_result_ids recover_results pause_resume retention status privileges encoding settings moves
REGRESS_OPTS = --temp-instance=./tmp_check --temp-config=$(srcdir)/test/pgkafka_join.conf

ISOLATION = rating_movie_race ingest_lock
ISOLATION_OPTS = --temp-instance=./tmp_check_iso --temp-config=$(srcdir)/test/pgkafka_join.conf

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# every object depends on the shared headers
$(OBJS): src/pgkafka_join.h src/kafka.h
