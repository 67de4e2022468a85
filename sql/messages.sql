--
-- messages: parse_message(kind, value) accepts or rejects a message value
-- exactly as the join worker does, with the reason stored for a rejected
-- one.  A value is a JSON object; only its top-level fields count.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgkafka_join;
RESET client_min_messages;

SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';

--
-- Accepted movies
--
SELECT v.value, p.accepted, p.id, p.title, p.release_year, p.reason
  FROM (VALUES
    (1, '{"id": 1, "title": "Heat", "release_year": 1995}'),
    (2, '{"id": 2, "title": "Alien", "releaseYear": 1979}'),   -- the alias
    (3, '{"id": "3", "title": "Ran"}'),                        -- id as a string, no year
    (4, '{"id": 4, "title": "Brazil", "release_year": null}'),
    (5, '{"title": "M", "release_year": 0, "id": 5}'),         -- any field order
    (6, '{"id": 6, "title": "Max", "release_year": 9999}'),
    (7, '{"id": 9223372036854775807, "title": "Largest id"}'),
    (8, '{"id": "-9223372036854775808", "title": "Smallest id"}'),
    (9, '{"id": 9, "title": "Say \"hi\" \\ \/ \u0041!"}'),     -- escapes decoded
    (10, '{"id": 10, "title": ""}'),
    (11, '  {"id": 11, "title": "x"}  '),                      -- blank space around
    (12, '{"id": 12, "title": "x", "rating": "n/a", "other": {"id": [], "title": 1}}'),
    (13, '{"id": 13, "title": "x", "other": 1, "other": 2}')   -- other fields may repeat
  ) AS v(n, value),
  pgkafka_join.parse_message('movie', convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

-- A title of 10000 bytes is accepted, 10001 bytes is too long
SELECT octet_length(p.title) AS title_bytes, p.accepted, p.reason
  FROM generate_series(9999, 10001) AS n,
       pgkafka_join.parse_message('movie',
           convert_to('{"id": 1, "title": "' || repeat('x', n) || '"}', 'UTF8')) AS p
 ORDER BY n;

--
-- Accepted ratings: rated_at is RFC 3339 with an offset, or integer Unix
-- epoch milliseconds; without rated_at the worker takes the Kafka time stamp
--
SELECT v.value, p.accepted, p.id, p.rating, p.rated_at, p.reason
  FROM (VALUES
    (1, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00Z"}'),
    (2, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T12:30:00+02:30"}'),
    (3, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T05:00:00-05:00"}'),
    (4, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20t10:00:00z"}'),
    (5, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20 10:00:00Z"}'),
    (6, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00.123456Z"}'),
    (7, '{"id": 42, "rating": 4.5, "rated_at": 1795168800000}'),
    (8, '{"id": 42, "rating": 4.5, "rated_at": 1795168800123}'),
    (9, '{"id": 42, "rating": 4.5, "rated_at": 0}'),
    (10, '{"id": 42, "rating": 4.5, "rated_at": "1970-01-01T00:00:00Z"}'),
    (11, '{"id": 42, "rating": 4.5, "rated_at": 253402300799999}'),
    (12, '{"id": 42, "rating": 4.5, "rated_at": "9999-12-31T23:59:59.999999Z"}'),
    (13, '{"id": 42, "rating": 4.5}'),
    (14, '{"id": 42, "rating": 4.5, "rated_at": null}'),
    (15, '{"id": "42", "rating": 3, "rated_at": "2026-11-20T10:00:00Z"}'),
    (16, '{"rated_at": "2026-11-20T10:00:00Z", "rating": -1.25e1, "id": 42}'),
    (17, '{"id": 42, "rating": 1e308}'),
    (18, '{"id": 42, "rating": 5e-324}'),
    (19, '{"id": 42, "rating": 4.5, "title": "a", "title": "b"}')  -- not a rating field
  ) AS v(n, value),
  pgkafka_join.parse_message('rating', convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

--
-- Rejected, whatever the kind: the value is not a well-formed JSON object
--
SELECT v.what, p.accepted, p.reason
  FROM (VALUES
    (1, 'NULL', NULL),
    (2, 'no bytes', ''::bytea),
    (3, 'a NUL byte', '\x7b7d00'::bytea),
    (4, 'byte 0xff', '\xff'::bytea),
    (5, 'truncated UTF-8 sequence', '\x7b226964223a20312c20227469746c65223a2022c3227d'::bytea),
    (6, 'overlong UTF-8 "/"', '\x7b226964223a20312c20227469746c65223a2022c0af227d'::bytea),
    (7, 'UTF-16 surrogate as UTF-8', '\x7b226964223a20312c20227469746c65223a2022eda080227d'::bytea),
    (8, '1000 [', convert_to(repeat('[', 1000), 'UTF8')),
    (9, '1000 { inside a field', convert_to('{"id": 1, "title": "x", "n": ' || repeat('{"a": ', 1000), 'UTF8')),
    (10, 'not JSON', convert_to('movie 1', 'UTF8')),
    (11, 'unterminated object', convert_to('{"id": 1, "title": "x"', 'UTF8')),
    (12, 'trailing comma', convert_to('{"id": 1, "title": "x",}', 'UTF8')),
    (13, 'two objects', convert_to('{"id": 1, "title": "x"} {}', 'UTF8')),
    (14, 'single quotes', convert_to('{''id'': 1, ''title'': ''x''}', 'UTF8')),
    (15, '\u0000 in a string', convert_to('{"id": 1, "title": "a\u0000b"}', 'UTF8')),
    (16, 'an array', convert_to('[{"id": 1, "title": "x"}]', 'UTF8')),
    (17, 'a string', convert_to('"{}"', 'UTF8')),
    (18, 'a number', convert_to('1', 'UTF8')),
    (19, 'null', convert_to('null', 'UTF8'))
  ) AS v(n, what, value),
  pgkafka_join.parse_message('movie', v.value) AS p
 ORDER BY v.n;

-- The same checks apply to ratings
SELECT v.what, p.accepted, p.reason
  FROM (VALUES
    (1, 'NULL', NULL),
    (2, 'a NUL byte', '\x00'::bytea),
    (3, 'byte 0xff', '\xff'::bytea),
    (4, '1000 [', convert_to(repeat('[', 1000), 'UTF8')),
    (5, 'not JSON', convert_to('{"id": 1, "rating": }', 'UTF8')),
    (6, 'an array', convert_to('[]', 'UTF8'))
  ) AS v(n, what, value),
  pgkafka_join.parse_message('rating', v.value) AS p
 ORDER BY v.n;

-- Nesting: 64 levels of arrays and objects are accepted, 65 are too deep;
-- brackets inside strings do not count
SELECT v.what, p.accepted, p.reason
  FROM (VALUES
    (1, 'depth 64', '{"id": 1, "title": "x", "n": ' || repeat('[', 63) || repeat(']', 63) || '}'),
    (2, 'depth 65', '{"id": 1, "title": "x", "n": ' || repeat('[', 64) || repeat(']', 64) || '}'),
    (3, '100 [ in a string', '{"id": 1, "title": "' || repeat('[', 100) || '"}')
  ) AS v(n, what, value),
  pgkafka_join.parse_message('movie', convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

-- A field given twice is rejected, whatever its values; releaseYear counts
-- as release_year.  This comes before the checks of each field.
SELECT v.kind, v.value, p.accepted, p.reason
  FROM (VALUES
    (1, 'movie', '{"id": 1, "id": 1, "title": "x"}'),
    (2, 'movie', '{"id": 1, "title": "x", "title": null}'),
    (3, 'movie', '{"id": 1, "title": "x", "release_year": 1, "release_year": 1}'),
    (4, 'movie', '{"id": 1, "title": "x", "release_year": 1, "releaseYear": 1}'),
    (5, 'movie', '{"id": 1, "title": "x", "releaseYear": 1, "releaseYear": 2}'),
    (6, 'movie', '{"id": 1, "id": 2}'),
    (7, 'rating', '{"id": 1, "rating": 1, "id": "1"}'),
    (8, 'rating', '{"id": 1, "rating": 1, "rating": 2}'),
    (9, 'rating', '{"id": 1, "rating": 1, "rated_at": 0, "rated_at": 0}')
  ) AS v(n, kind, value),
  pgkafka_join.parse_message(v.kind, convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

--
-- Rejected movies: their fields are checked in order id, title,
-- release_year
--
SELECT v.value, p.accepted, p.reason
  FROM (VALUES
    (1, '{"title": "x"}'),
    (2, '{"id": null, "title": "x"}'),
    (3, '{"title": 42}'),
    (4, '{"id": 1.5, "title": "x"}'),
    (5, '{"id": 1e3, "title": "x"}'),
    (6, '{"id": "abc", "title": "x"}'),
    (7, '{"id": " 42", "title": "x"}'),
    (8, '{"id": "", "title": "x"}'),
    (9, '{"id": "-", "title": "x"}'),
    (10, '{"id": true, "title": "x"}'),
    (11, '{"id": [1], "title": "x"}'),
    (12, '{"id": {"id": 1}, "title": "x"}'),
    (13, '{"id": 9223372036854775808, "title": "x"}'),
    (14, '{"id": "-9223372036854775809", "title": "x"}'),
    (15, '{"id": 1}'),
    (16, '{"id": 1, "title": null}'),
    (17, '{"id": 1, "title": 42}'),
    (18, '{"id": 1, "title": ["x"]}'),
    (19, '{"id": 1, "title": {}}'),
    (20, '{"id": 1, "title": false, "release_year": "x"}'),
    (21, '{"id": 1, "title": "x", "release_year": "1999"}'),
    (22, '{"id": 1, "title": "x", "release_year": 1999.0}'),
    (23, '{"id": 1, "title": "x", "release_year": true}'),
    (24, '{"id": 1, "title": "x", "releaseYear": [1999]}'),
    (25, '{"id": 1, "title": "x", "release_year": -1}'),
    (26, '{"id": 1, "title": "x", "release_year": 10000}'),
    (27, '{"id": 1, "title": "x", "releaseYear": 99999999999999999999}')
  ) AS v(n, value),
  pgkafka_join.parse_message('movie', convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

--
-- Rejected ratings: id, then rating, then rated_at
--
SELECT v.value, p.accepted, p.reason
  FROM (VALUES
    (1, '{"rating": 4.5}'),
    (2, '{"id": "4 2", "rating": 4.5}'),
    (3, '{"id": 92233720368547758070, "rating": 4.5}'),
    (4, '{"id": 42}'),
    (5, '{"id": 42, "rating": null}'),
    (6, '{"id": 42, "rating": "4.5"}'),
    (7, '{"id": 42, "rating": true}'),
    (8, '{"id": 42, "rating": [4.5]}'),
    (9, '{"id": 42, "rating": 1e400}'),
    (10, '{"id": 42, "rating": -1e400}'),
    (11, '{"id": 42, "rating": 1e-400}'),
    (12, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00"}'),
    (13, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20"}'),
    (14, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00Z"}'),
    (15, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00.Z"}'),
    (16, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00+0200"}'),
    (17, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00+02"}'),
    (18, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00 UTC"}'),
    (19, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00Z "}'),
    (20, '{"id": 42, "rating": 4.5, "rated_at": "20261120T100000Z"}'),
    (21, '{"id": 42, "rating": 4.5, "rated_at": "2026-13-01T00:00:00Z"}'),
    (22, '{"id": 42, "rating": 4.5, "rated_at": "2026-02-30T00:00:00Z"}'),
    (23, '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T25:00:00Z"}'),
    (24, '{"id": 42, "rating": 4.5, "rated_at": "10000-01-01T00:00:00Z"}'),
    (25, '{"id": 42, "rating": 4.5, "rated_at": "now"}'),
    (26, '{"id": 42, "rating": 4.5, "rated_at": ""}'),
    (27, '{"id": 42, "rating": 4.5, "rated_at": 1795168800000.5}'),
    (28, '{"id": 42, "rating": 4.5, "rated_at": 1.7951688e12}'),
    (29, '{"id": 42, "rating": 4.5, "rated_at": "1795168800000"}'),
    (30, '{"id": 42, "rating": 4.5, "rated_at": true}'),
    (31, '{"id": 42, "rating": 4.5, "rated_at": {}}'),
    (32, '{"id": 42, "rating": 4.5, "rated_at": "1969-12-31T23:59:59.999999Z"}'),
    (33, '{"id": 42, "rating": 4.5, "rated_at": "1970-01-01T00:00:00+00:01"}'),
    (34, '{"id": 42, "rating": 4.5, "rated_at": "9999-12-31T23:59:59-00:01"}'),
    (35, '{"id": 42, "rating": 4.5, "rated_at": -1}'),
    (36, '{"id": 42, "rating": 4.5, "rated_at": 253402300800000}'),
    (37, '{"id": 42, "rating": 4.5, "rated_at": 9223372036854775807}'),
    (38, '{"id": 42, "rating": 4.5, "rated_at": 99999999999999999999}')
  ) AS v(n, value),
  pgkafka_join.parse_message('rating', convert_to(v.value, 'UTF8')) AS p
 ORDER BY v.n;

-- The kind is 'movie' or 'rating'
SELECT * FROM pgkafka_join.parse_message('movies', convert_to('{}', 'UTF8'));

--
-- The common shape, an object of strings without escapes, numbers, true,
-- false and null, is read without the general JSON parser; anything else
-- goes to the parser.  Each value below gives the same outcome as the same
-- value with a nested field put first, which only the parser reads (same).
--
SELECT v.kind,
       replace(replace(replace(v.value, E'\t', '\t'), E'\n', '\n'), E'\r', '\r') AS value,
       p.accepted, p.reason, p IS NOT DISTINCT FROM q AS same
  FROM (VALUES
    (1, 'movie', '{"id": 1, "title": "Heat", "release_year": 1995}'),
    (2, 'movie', '{"id":2,"title":"Heat","release_year":1995}'),
    (3, 'movie', E' \t\n\r{ "id" : 3 ,\n"title" : "x" } \n'),
    (4, 'movie', '{"id": "4", "title": "Amélie, 東京物語", "releaseYear": 2001}'),
    (5, 'movie', '{"id": -0, "title": "x", "other": true, "more": false, "x": null}'),
    (6, 'movie', '{"id": 1.0, "title": "x"}'),
    (7, 'movie', '{"id": 1e2, "title": "x"}'),
    (8, 'movie', '{"id": 1, "title": "x", "release_year": 2E+3}'),
    (9, 'movie', '{"id": 9223372036854775808, "title": "x"}'),
    (10, 'movie', '{"id": 01, "title": "x"}'),
    (11, 'movie', '{"id": -, "title": "x"}'),
    (12, 'movie', '{"id": 1., "title": "x"}'),
    (13, 'movie', '{"id": .5, "title": "x"}'),
    (14, 'movie', '{"id": 1e, "title": "x"}'),
    (15, 'movie', '{"id": 1, "title": true}'),
    (16, 'movie', '{"id": 1, "title": null}'),
    (17, 'movie', '{"id": 1, "title": nul}'),
    (18, 'movie', '{"id": 1, "title": truex}'),
    (19, 'movie', '{"id": 1, "title": "x" "release_year": 1}'),
    (20, 'movie', '{"id": 1, "title": "x",}'),
    (21, 'movie', '{"id": 1, "title": "x"} x'),
    (22, 'movie', '{"id": 1, "title": "x"}}'),
    (23, 'movie', '{"id": 1, "title": "x"'),
    (24, 'movie', '{"id": 1, "title": "x'),
    (25, 'movie', E'{"id": 1, "title": "a\tb"}'),     -- a control character
    (26, 'movie', '{"id": 1, "title": "a\"b\u00e9"}'),  -- escapes
    (27, 'movie', '{"id" 1, "title": "x"}'),
    (28, 'movie', '{id: 1, "title": "x"}'),
    (29, 'movie', '{"id": 1, "Title": "x", "titles": "y", "titl": "z"}'),
    (30, 'movie', '{"id": 1, "title": "x", "release_year": 1, "releaseYear": 2}'),
    (31, 'movie', '{"": 1, "id": 1, "title": "x", "i\u0064": 2}'),
    (32, 'movie', '{"id": 1, "title": "x", "release_year": 1900, "release_year": 1900}'),
    (33, 'rating', '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00Z"}'),
    (34, 'rating', '{"id":42,"rating":-1.25e1,"rated_at":1795168800000}'),
    (35, 'rating', '{"id": 42, "rating": "4.5"}'),
    (36, 'rating', '{"id": 42, "rating": 4.5, "rated_at": true}'),
    (37, 'rating', '{"id": 42, "rating": 1e400}'),
    (38, 'rating', '{"id": 42, "rating": 0, "rated_at": null}'),
    (39, 'rating', '{"id": 42, "rating": 4.5, "rated_at": "2026-11-20T10:00:00"}')
  ) AS v(n, kind, value),
  pgkafka_join.parse_message(v.kind, convert_to(v.value, 'UTF8')) AS p,
  pgkafka_join.parse_message(v.kind,
      convert_to(regexp_replace(v.value, '^(\s*)\{', '\1{"nested": [{}], '), 'UTF8')) AS q
 ORDER BY v.n;
