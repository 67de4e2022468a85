-- moves: the lists of partitions release_partitions() takes, and what it
-- refuses on a server that owns every partition (pgkafka_join.partitions
-- empty, as in these tests); a release itself, the handover and its
-- reception are tested by test/e2e/move.sh
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;

-- lists as pgkafka_join.partitions takes them: sorted, each number once
SELECT pgkafka_join.partition_numbers('3-5');
SELECT pgkafka_join.partition_numbers(' 12, 0-2 ,1');
SELECT pgkafka_join.partition_numbers('');
SELECT pgkafka_join.partition_numbers('2-');
SELECT pgkafka_join.partition_numbers('x');

-- a server owning every partition releases none, and records nothing
SHOW pgkafka_join.partitions;
SELECT * FROM pgkafka_join.release_partitions('1');
SELECT * FROM pgkafka_join.release_partitions('');
SELECT * FROM pgkafka_join.release_partitions('1-');
SELECT count(*) FROM pgkafka_join.released_partitions;
SELECT count(*) FROM pgkafka_join.received_partitions;

-- who may: the admin role, not the reader
CREATE ROLE moves_reader IN ROLE pgkafka_join_reader;
SET ROLE moves_reader;
SELECT * FROM pgkafka_join.release_partitions('1');
SELECT count(*) FROM pgkafka_join.released_partitions;
RESET ROLE;
DROP ROLE moves_reader;
