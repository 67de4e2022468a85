--
-- schema: what CREATE EXTENSION pgkafka_join installs.
--
-- The other test files create the extension if it is missing, so each of
-- them also runs alone; this one must find it absent (first file).
--
CREATE EXTENSION pgkafka_join;

SELECT e.extname, e.extversion, n.nspname AS schema, e.extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pgkafka_join';

-- Tables, columns, types and defaults (partitions left out: they follow
-- their parent)
SELECT c.relname AS table_name, a.attnum, a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
       pg_get_expr(d.adbin, d.adrelid) AS "default"
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'pgkafka_join'::regnamespace
   AND c.relkind IN ('r', 'p')
   AND NOT c.relispartition
 ORDER BY c.relname, a.attnum;

-- Which tables are partitioned, and how
SELECT c.relname AS table_name, pg_get_partkeydef(c.oid) AS partition_key
  FROM pg_class c
 WHERE c.relnamespace = 'pgkafka_join'::regnamespace
   AND c.relkind = 'p'
 ORDER BY c.relname;

-- movies: 32 hash partitions, movies_p00 .. movies_p31, remainder = suffix
SELECT c.relname AS partition, pg_get_expr(c.relpartbound, c.oid) AS bound
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'pgkafka_join.movies'::regclass
 ORDER BY c.relname;

-- ratings and rated_movies: no monthly partition belongs to the
-- installation; the worker and store_ratings make them (see partitions)
SELECT p.parent,
       (SELECT count(*) FROM pg_inherits i
         WHERE i.inhparent = format('pgkafka_join.%I', p.parent)::regclass) AS partitions
  FROM (VALUES ('ratings'), ('rated_movies')) AS p(parent)
 ORDER BY p.parent;

-- Tables whose data pg_dump keeps although they belong to the extension
SELECT c::regclass AS dumped
  FROM pg_extension, unnest(extconfig) AS c
 WHERE extname = 'pgkafka_join'
 ORDER BY c::regclass::text;

-- Indexes and primary keys of the parent tables
SELECT t.relname AS table_name, i.relname AS index_name, x.indisprimary AS primary_key,
       pg_get_indexdef(i.oid) AS definition
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
 WHERE t.relnamespace = 'pgkafka_join'::regnamespace
   AND NOT t.relispartition
 ORDER BY t.relname, i.relname;

-- The sequence numbering results, owned by rated_movies.id
SELECT s.sequencename, s.data_type, s.start_value, s.increment_by, s.cycle,
       pg_get_serial_sequence('pgkafka_join.rated_movies', 'id') AS owned_by_rated_movies_id
  FROM pg_sequences s
 WHERE s.schemaname = 'pgkafka_join'
 ORDER BY s.sequencename;

-- Functions: signature, language, volatility, and whether PUBLIC may call
-- them (the storing functions are for the worker, i.e. superusers, only)
SELECT p.proname AS function,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result,
       l.lanname AS language,
       p.provolatile AS volatility,
       p.proisstrict AS strict,
       EXISTS (SELECT 1
                 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE') AS public_execute
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'pgkafka_join'::regnamespace
 ORDER BY p.proname;

-- No table or sequence of the extension is accessible to PUBLIC
SELECT count(*) AS public_grants
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'pgkafka_join'::regnamespace
   AND a.grantee = 0;

-- Every object of the schema belongs to the extension
SELECT count(*) AS objects_not_in_extension
  FROM pg_class c
 WHERE c.relnamespace = 'pgkafka_join'::regnamespace
   AND c.relkind IN ('r', 'p', 'S')
   AND NOT c.relispartition
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e');

-- Settings, with their defaults (pgkafka_join.database comes from
-- test/pgkafka_join.conf)
SELECT name, setting, unit, vartype, context, min_val, max_val
  FROM pg_settings
 WHERE name LIKE 'pgkafka_join.%'
 ORDER BY name;
