-- settings: every value a setting accepts works; the others are refused
-- when set (ALTER SYSTEM, or a reload of postgresql.conf), never later by a
-- batch that fails or rejects messages because of them
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;

SHOW pgkafka_join.join_window;
SHOW pgkafka_join.future_tolerance;

-- join_window: a positive interval of at most 10 years (now() minus it
-- must be a timestamp, and the partitions it spans a few hundred tables)
ALTER SYSTEM SET pgkafka_join.join_window = '10000 years';
ALTER SYSTEM SET pgkafka_join.join_window = '10 years 1 day';
ALTER SYSTEM SET pgkafka_join.join_window = '0';
ALTER SYSTEM SET pgkafka_join.join_window = '-1 month';
ALTER SYSTEM SET pgkafka_join.join_window = 'soon';
ALTER SYSTEM SET pgkafka_join.join_window = '10 years';
ALTER SYSTEM SET pgkafka_join.join_window = '3652 days';
ALTER SYSTEM RESET pgkafka_join.join_window;

-- future_tolerance: how far ahead of its message's timestamp a rating's
-- rated_at may be; 0 to a year
ALTER SYSTEM SET pgkafka_join.future_tolerance = '-1 hour';
ALTER SYSTEM SET pgkafka_join.future_tolerance = '367 days';
ALTER SYSTEM SET pgkafka_join.future_tolerance = 'later';
ALTER SYSTEM SET pgkafka_join.future_tolerance = '0';
ALTER SYSTEM SET pgkafka_join.future_tolerance = '1 year';
ALTER SYSTEM RESET pgkafka_join.future_tolerance;

-- a session cannot change them: they are the worker's, set for the server
SET pgkafka_join.future_tolerance = '2 days';
