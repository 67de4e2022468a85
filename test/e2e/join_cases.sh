#!/bin/bash
#
# join_cases.sh
#		The join rule through Kafka: ratings before their movies, a movie
#		that never comes, ratings older than the window, new movies copied
#		in, movie updates and tombstones, malformed messages.  Checks the
#		output topic and the tables exactly.  Three join workers share the
#		six partitions of each topic.

. "$(dirname "$0")/setup.sh"
pkj_setup join_cases 6 "pgkafka_join.workers = 3"

# rated_at values, whole seconds in UTC, relative to now
day_ago=$(date -u -d '1 day ago' +%Y-%m-%dT%H:%M:%SZ)
hour_ago=$(date -u -d '1 hour ago' +%Y-%m-%dT%H:%M:%SZ)
old=$(date -u -d '40 days ago' +%Y-%m-%dT%H:%M:%SZ)
now_ms=$(($(date +%s) * 1000))

stored() { psql_q "SELECT count(*) FROM pgkafka_join.ratings" ; }
rejected() { psql_q "SELECT count(*) FROM pgkafka_join.rejected_messages" ; }
# Results not yet recorded as published, over the three workers: 0 once
# every result stored so far is on the output topic (a position is recorded
# only after the Kafka transaction that sent its results committed)
unpublished() { psql_q "SELECT sum(publish_lag) FROM pgkafka_join.status" ; }

# 1. ratings before any movie, and malformed ratings
kafka_produce ratings <<EOF2
1	{"id": 1, "rating": 5.0, "rated_at": "$day_ago"}
1	{"id": 1, "rating": 6.0, "rated_at": "$old"}
2	{"id": 2, "rating": 7.0, "rated_at": "$hour_ago"}
3	not json
3	{"id": "x", "rating": 1}
3	{"id": 3}
3	
3	{"id": 3, "rating": "high"}
3	{"id": 3, "rating": 1, "rated_at": "yesterday"}
EOF2
wait_for 60 '[ "$(stored)" = 3 ] && [ "$(rejected)" = 6 ]' ||
	fail "ratings were not stored (stored $(stored), rejected $(rejected))"
check_eq "ratings without their movie wait, nothing is published" "0" \
	"$(psql_q "SELECT count(*) FROM pgkafka_join.rated_movies")"

# 2. the movies arrive; movie 2 never does; malformed movies
kafka_produce movies <<EOF2
1	{"id": 1, "title": "One", "release_year": 2001}
3	{"id": "3", "title": "Three", "releaseYear": 2003}
9	{"title": "no id"}
9	[1, 2]
9	{"id": 9, "title": 9}
x	
EOF2
wait_for_output 1
# The rating of movie 1 published shows the join of movie 1's waiting
# ratings made; once nothing waits to be published, a result of the
# rating older than the window (or of any other) would be on the topic.
wait_for 60 '[ "$(unpublished)" = 0 ]' || fail "results remain unpublished: $(unpublished)"
check_eq "the waiting rating inside the window is published with its movie" \
	"1	{\"id\":1,\"title\":\"One\",\"release_year\":2001,\"rating\":5,\"rated_at\":\"$day_ago\"}" \
	"$(kafka_consume rated_movies | cut -f3,4)"

# 3. New movies go in by COPY (text format) while no batch has met a stored
# id: titles holding COPY's special characters are stored as sent, and
# updated_at is the column's default, now().  Without a default, the worker
# upserts them instead.
kafka_produce movies <<'EOF2'
101	{"id": 101, "title": "Tab\there", "release_year": 1999}
102	{"id": 102, "title": "Back\\slash \\N and \\t", "release_year": null}
103	{"id": 103, "title": "New\nline\r\nCRLF\r"}
104	{"id": 104, "title": "\\"}
EOF2
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id > 100")" = 4 ]' ||
	fail "the new movies were not stored"
check_eq "titles with COPY's special characters are stored as sent" "$(cat <<'EOF2'
101|"Tab\there"|1999
102|"Back\\slash \\N and \\t"|
103|"New\nline\r\nCRLF\r"|
104|"\\"|
EOF2
)" "$(psql_q "SELECT id, to_json(title), release_year FROM pgkafka_join.movies WHERE id > 100 ORDER BY id")"
check_eq "new movies take updated_at from the column's default, now()" "t" \
	"$(psql_q "SELECT bool_and(updated_at BETWEEN now() - interval '1 minute' AND now()) FROM pgkafka_join.movies WHERE id > 100")"

psql_q "ALTER TABLE pgkafka_join.movies ALTER COLUMN updated_at DROP DEFAULT" >/dev/null
kafka_produce movies <<'EOF2'
105	{"id": 105, "title": "No default"}
EOF2
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id = 105 AND updated_at > now() - interval '"'"'1 minute'"'"'")" = 1 ]' ||
	fail "a new movie was not stored with updated_at set while the column has no default"
check_eq "no error was logged for the movie without a default" "0" \
	"$(grep -c 'null value in column "updated_at"' "$PG_DIR/server.log" || true)"
psql_q "ALTER TABLE pgkafka_join.movies ALTER COLUMN updated_at SET DEFAULT now()" >/dev/null

# 4. a rating of a present movie, with epoch milliseconds; then an update
# of movie 1 and a rating after it
kafka_produce ratings <<EOF2
3	{"id": 3, "rating": 9.5, "rated_at": $now_ms}
EOF2
wait_for_output 2
kafka_produce movies <<EOF2
1	{"id": 1, "title": "One (remastered)", "release_year": 2002}
EOF2
wait_for 60 '[ "$(psql_q "SELECT title FROM pgkafka_join.movies WHERE id = 1")" = "One (remastered)" ]' ||
	fail "movie 1 was not updated"
kafka_produce ratings <<EOF2
1	{"id": 1, "rating": 8.0}
EOF2
wait_for_output 3

# 5. movie 3 is deleted by a tombstone; its next rating waits
kafka_produce movies <<EOF2
3	
EOF2
wait_for 60 '[ "$(psql_q "SELECT count(*) FROM pgkafka_join.movies WHERE id = 3")" = 0 ]' ||
	fail "movie 3 was not deleted"
kafka_produce ratings <<EOF2
3	{"id": 3, "rating": 4.0}
EOF2
wait_for 60 '[ "$(stored)" = 6 ]' || fail "the last rating was not stored"
# The last rating is stored, and joined or not, in one transaction: once it
# is stored and nothing waits to be published, a result of it would be on
# the topic.
wait_for 60 '[ "$(unpublished)" = 0 ]' || fail "results remain unpublished: $(unpublished)"

check_eq "the output topic holds exactly the three expected rated movies" "$(cat <<'EOF2'
1	{"id":1,"title":"One (remastered)","release_year":2002,"rating":8}
1	{"id":1,"title":"One","release_year":2001,"rating":5}
3	{"id":3,"title":"Three","release_year":2003,"rating":9.5}
EOF2
)" "$(output_without_time)"

check_eq "movies: 1 updated, 3 deleted, 9 never valid" \
	"1|One (remastered)|2002" \
	"$(psql_q "SELECT id, title, release_year FROM pgkafka_join.movies WHERE id < 100 ORDER BY id")"

check_eq "ratings: every accepted rating once, joined or not" "$(cat <<'EOF2'
1|5|t
1|6|f
1|8|t
2|7|f
3|4|f
3|9.5|t
EOF2
)" "$(psql_q "SELECT movie_id, rating, joined FROM pgkafka_join.ratings ORDER BY movie_id, rating")"

check_eq "the rating older than the window is kept with its time" "$old" \
	"$(psql_q "SELECT to_char(rated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM pgkafka_join.ratings WHERE rating = 6")"

check_eq "rejected messages, each once, with their reason" "$(cat <<'EOF2'
movies|x||tombstone key is not a movie id
movies|9|[1, 2]|value is not a JSON object
movies|9|{"id": 9, "title": 9}|title is not a string
movies|9|{"title": "no id"}|id is missing
ratings|3||a rating cannot be a tombstone
ratings|3|not json|value is not valid JSON
ratings|3|{"id": "x", "rating": 1}|id is not an integer
ratings|3|{"id": 3, "rating": "high"}|rating is not a number
ratings|3|{"id": 3, "rating": 1, "rated_at": "yesterday"}|rated_at is not a valid timestamp
ratings|3|{"id": 3}|rating is missing
EOF2
)" "$(psql_q "SELECT topic, convert_from(key, 'UTF8'), coalesce(convert_from(payload, 'UTF8'), ''), reason FROM pgkafka_join.rejected_messages ORDER BY 1, 3")"

check_eq "every input offset advanced past every message" "movies|13
ratings|12" \
	"$(psql_q "SELECT topic, sum(next_offset) FROM pgkafka_join.input_offsets GROUP BY 1 ORDER BY 1")"

