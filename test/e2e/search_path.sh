#!/bin/bash
#
# search_path.sh
#		No way in through search_path: functions and operators a
#		non-superuser plants in the schemas of the default search_path
#		("$user", which is "postgres" for the worker, and public) are never
#		run by the worker, which runs as a superuser.  The pipeline's output
#		is exact, and the planted code recorded no call.
#
# The planted objects are those unqualified calls would resolve to (each
# matches its arguments better than its pg_catalog original, which an
# implicit pg_catalog first in the path does not prevent): to_json(text) and
# to_json(timestamp) for the title and rated_at of version 1.0's output_value(),
# #>>(json, text) for its '{}', nextval(text) and setval(text, ...) for the
# result ids, unnest(bigint[]) for the offsets.  Also planted, as decoys
# that win only where pg_catalog is searched after them: now(),
# hashtext(text), current_setting(text), pg_advisory_xact_lock(bigint).
# Each one, when run by a superuser, records the call in a table mallory
# owns, writes a file (which needs superuser rights and survives a
# rollback) and makes mallory a superuser.  At the end, the same output
# expression evaluated the way version 1.0 of the worker did (unqualified,
# default search_path, as superuser) shows that the traps are armed.

. "$(dirname "$0")/setup.sh"
pkj_setup search_path 2

trap_file=$PG_DIR/trap-fired
hour_ago=$(date -u -d '1 hour ago' +%Y-%m-%dT%H:%M:%SZ)

mallory() { psql_q "$1" -U mallory; }

# --- a lax database: mallory may create schemas, and in schema public
psql_q <<'SQL'
CREATE ROLE mallory LOGIN;
GRANT CREATE ON DATABASE postgres TO mallory;
GRANT CREATE ON SCHEMA public TO mallory;
SQL

mallory "$(cat <<SQL
CREATE SCHEMA postgres;
GRANT USAGE ON SCHEMA postgres TO PUBLIC;
CREATE TABLE postgres.called (who text, what text);
GRANT INSERT ON postgres.called TO PUBLIC;

CREATE FUNCTION postgres.trap(what text) RETURNS void
LANGUAGE plpgsql AS \$\$
BEGIN
    INSERT INTO postgres.called VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE pg_catalog.format('COPY (SELECT %L) TO %L', what, '$trap_file');
        ALTER ROLE mallory SUPERUSER;
    END IF;
END
\$\$;

-- better matches than pg_catalog's, found first by unqualified calls
CREATE FUNCTION postgres.to_json(v text) RETURNS json
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('to_json(text)'); RETURN pg_catalog.to_json(v); END
\$\$;
CREATE FUNCTION public.to_json(v timestamp) RETURNS json
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('to_json(timestamp)'); RETURN pg_catalog.to_json(v); END
\$\$;
CREATE FUNCTION public.json_path_text(j json, p text) RETURNS text
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('#>>(json,text)'); RETURN j OPERATOR(pg_catalog.#>>) p::text[]; END
\$\$;
CREATE OPERATOR public.#>> (LEFTARG = json, RIGHTARG = text, FUNCTION = public.json_path_text);
CREATE FUNCTION public.nextval(s text) RETURNS bigint
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('nextval(text)'); RETURN pg_catalog.nextval(s::regclass); END
\$\$;
CREATE FUNCTION postgres.setval(s text, v bigint, c boolean) RETURNS bigint
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('setval(text,bigint,boolean)'); RETURN pg_catalog.setval(s::regclass, v, c); END
\$\$;
CREATE FUNCTION postgres.unnest(a bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('unnest(bigint[])'); RETURN QUERY SELECT * FROM pg_catalog.unnest(a); END
\$\$;

-- decoys with pg_catalog's own signatures
CREATE FUNCTION postgres.now() RETURNS timestamptz
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('now()'); RETURN pg_catalog.now(); END
\$\$;
CREATE FUNCTION postgres.hashtext(t text) RETURNS integer
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('hashtext(text)'); RETURN pg_catalog.hashtext(t); END
\$\$;
CREATE FUNCTION postgres.current_setting(n text) RETURNS text
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('current_setting(text)'); RETURN pg_catalog.current_setting(n); END
\$\$;
CREATE FUNCTION postgres.pg_advisory_xact_lock(k bigint) RETURNS void
LANGUAGE plpgsql AS \$\$
BEGIN PERFORM postgres.trap('pg_advisory_xact_lock(bigint)'); PERFORM pg_catalog.pg_advisory_xact_lock(k); END
\$\$;
SQL
)" >/dev/null
check_eq "mallory planted her objects and is not a superuser" "9|1|f" \
	"$(psql_q "SELECT (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
	                   WHERE n.nspname IN ('postgres', 'public') AND p.proname <> 'trap' AND p.proname <> 'json_path_text'),
	                  (SELECT count(*) FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
	                   WHERE n.nspname = 'public'),
	                  (SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory')")"

# --- a new worker, started after the objects were planted
old_pid=$(psql_q "SELECT pid FROM pgkafka_join.status")
[ -n "$old_pid" ] || fail "no worker is running"
psql_q "SELECT pg_terminate_backend(pid) FROM pgkafka_join.status" >/dev/null
wait_for 60 '[ "$(psql_q "SELECT pid IS NOT NULL AND pid <> '"$old_pid"' AND state = '"'consuming'"' FROM pgkafka_join.status")" = t ]' ||
	fail "no new worker after pg_terminate_backend: $(psql_q "SELECT * FROM pgkafka_join.status")"
pass "the worker was restarted after the objects were planted"

# --- the pipeline: titles that JSON must escape, ratings at a known time
kafka_produce movies <<'EOF2'
1	{"id": 1, "title": "Say \"Hi\"", "release_year": 2001}
2	{"id": 2, "title": "Back\\slash\ttab", "release_year": 2002}
3	{"id": 3, "title": "Ünïcødé ☃"}
EOF2
kafka_produce ratings <<EOF2
1	{"id": 1, "rating": 7.5, "rated_at": "$hour_ago"}
2	{"id": 2, "rating": 3, "rated_at": "$hour_ago"}
3	{"id": 3, "rating": 10, "rated_at": "$hour_ago"}
1	{"id": 1, "rating": 1.25, "rated_at": "$hour_ago"}
EOF2
wait_for_output 4

check_eq "the output topic holds the exact rated movies" "$(cat <<EOF2
1	{"id":1,"title":"Say \"Hi\"","release_year":2001,"rating":1.25,"rated_at":"$hour_ago"}
1	{"id":1,"title":"Say \"Hi\"","release_year":2001,"rating":7.5,"rated_at":"$hour_ago"}
2	{"id":2,"title":"Back\\\\slash\\ttab","release_year":2002,"rating":3,"rated_at":"$hour_ago"}
3	{"id":3,"title":"Ünïcødé ☃","release_year":null,"rating":10,"rated_at":"$hour_ago"}
EOF2
)" "$(kafka_consume rated_movies | cut -f3,4 | LC_ALL=C sort)"
check_eq "every result was stored and published" "4|4|0" \
	"$(psql_q "SELECT (SELECT count(*) FROM pgkafka_join.rated_movies), published_id, publish_lag FROM pgkafka_join.status")"

check_eq "no planted function or operator was called" "" \
	"$(psql_q "SELECT who, what FROM postgres.called ORDER BY 1, 2")"
[ ! -e "$trap_file" ] || fail "a planted function ran as superuser: $(cat "$trap_file")"
pass "no planted function ran as superuser (no trap file)"
check_eq "mallory is not a superuser" "f" \
	"$(psql_q "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'")"

# --- the traps are armed: the output expression of version 1.0, as its
# worker ran it (unqualified, default search_path, as superuser)
psql_q "$(cat <<'SQL'
SELECT format('{"id":%s,"title":%s,"release_year":%s,"rating":%s,"rated_at":"%sZ"}',
              r.movie_id,
              to_json(r.title),
              coalesce(r.release_year::text, 'null'),
              r.rating,
              to_json(r.rated_at AT TIME ZONE 'UTC') #>> '{}')
  FROM pgkafka_join.rated_movies r
SQL
)" >/dev/null
check_eq "the traps are armed: the unqualified output expression calls them as superuser" \
	"postgres|#>>(json,text)
postgres|to_json(text)
postgres|to_json(timestamp)|t|t" \
	"$(psql_q "SELECT DISTINCT who, what FROM postgres.called ORDER BY 1, 2")|$([ -e "$trap_file" ] && echo t || echo f)|$(psql_q "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'")"
