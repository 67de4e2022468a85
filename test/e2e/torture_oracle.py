#!/usr/bin/env python3
#
# torture_oracle.py
#		Stream driver and oracle of test/e2e/torture.sh (Python 3, stdlib
#		only).  See the top of torture.sh for the design and the oracle's
#		rules; this file implements them.
#
#	torture_oracle.py drive --ledger FILE --broker-sh B --kafka-dir D
#		--psql PSQL --stop-file F --status-file S --min-ratings N
#		[--per-round N] [--seed N]
#		Produce the stream, round after round, until at least N ratings
#		were produced and F exists.  Every message produced and every
#		confirmation read from PostgreSQL is appended to the ledger (JSON
#		lines), in production order, once Kafka acknowledged it.
#
#	torture_oracle.py counts --ledger FILE
#		Print "movies N" and "ratings N": messages produced per topic.
#
#	torture_oracle.py check --ledger FILE --psql PSQL --output FILE
#		Compute the expected state from the ledger alone and compare it with
#		the tables and with the output topic (FILE: kcat lines
#		"PARTITION<TAB>OFFSET<TAB>HEADERS<TAB>KEY<TAB>VALUE").  Prints "ok -"/"not ok -" lines and the
#		figures; exits 1 if anything differs.

import argparse
import collections
import datetime
import json
import os
import random
import subprocess
import sys
import time

US = 1000000
DAY_US = 86400 * US

# Identifier ranges of the movie categories
A_BASE = 1              # single-content movies
B_BASE = 1000000        # movies that never come
C_BASE = 2000000        # changing movies (updates, tombstones, re-creation)
BAD_BASE = 9000000      # keys of malformed movie messages
AWAY_SHARE = 1 / 3      # ratings keyed otherwise than their movie id
B_COUNT = 300

# The join window is one month (28..31 days).  In-window ratings are at most
# 10 days old (or up to 20 hours ahead), old ones 40 to 60 days old.
INWINDOW_MAX_AGE_DAYS = 10
OLD_MIN_AGE_DAYS = 40
OLD_MAX_AGE_DAYS = 60


def now_us():
    return int(time.time() * US)


def fmt_rfc3339(us, style, rnd):
    """rated_at in one of the accepted spellings; returns (json value, exact us)."""
    if style == "ms":
        us -= us % 1000
        return us // 1000, us
    if style == "z":
        us -= us % US
        dt = datetime.datetime.fromtimestamp(us / US, datetime.timezone.utc)
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ"), us
    # with an offset and milliseconds
    us -= us % 1000
    minutes = rnd.choice([120, -330, 60, 0, 765])
    tz = datetime.timezone(datetime.timedelta(minutes=minutes))
    dt = datetime.datetime.fromtimestamp(us // US, tz)
    sign = "+" if minutes >= 0 else "-"
    off = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{dt.strftime('%Y-%m-%dT%H:%M:%S')}.{(us % US) // 1000:03d}{off}", us


def title_of(mid, version, rnd):
    decor = rnd.choice(["", " (director's cut)", " – été", " \"quoted\"", " 東京", " \\ back"])
    return f"Movie {mid} v{version}{decor}"


def psql_rows(psql, sql, timeout=15):
    """Rows of a query as lists of strings, or None if PostgreSQL is down."""
    try:
        p = subprocess.run([psql, "-X", "-A", "-t", "-q", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            "-c", sql], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        return None
    return [line.split("\t") for line in p.stdout.decode().splitlines() if line != ""]


#
# The driver
#

class Driver:
    def __init__(self, args):
        self.a = args
        self.rnd = random.Random(args.seed)
        self.ledger = open(args.ledger, "a")
        self.round = 0
        self.n_rating = 0          # rating value = n / 1000, unique
        self.n_bad = 0
        self.counts = collections.Counter()
        # A: single-content movies
        self.next_a = A_BASE
        self.a_content = {}        # id -> (title, year)
        self.a_due = collections.defaultdict(list)   # round -> ids to produce
        self.a_introduced = []     # ids that may get ratings
        self.a_unproduced = set()
        # C: changing movies
        self.next_c = C_BASE
        self.c = {}                # id -> state dict
        self.b_ids = [B_BASE + i for i in range(B_COUNT)]

    # -- ledger and Kafka --

    def log(self, rec):
        self.ledger.write(json.dumps(rec, ensure_ascii=True) + "\n")

    def produce(self, topic, msgs):
        """msgs: [(key str, value bytes or None, annotation dict)]"""
        if not msgs:
            return
        data = b"".join(k.encode() + b"\t" + (v if v is not None else b"") + b"\n"
                        for k, v, _ in msgs)
        t0 = now_us()
        p = subprocess.run([self.a.broker_sh, "produce", self.a.kafka_dir, topic],
                           input=data, capture_output=True)
        t1 = now_us()
        if p.returncode != 0:
            sys.stderr.write(p.stderr.decode(errors="replace"))
            sys.exit(f"torture_oracle: producing to {topic} failed; the ledger is uncertain")
        for k, v, ann in msgs:
            rec = {"topic": topic, "key": k}
            if v is None:
                rec["value"] = None
            else:
                try:
                    rec["value"] = v.decode("utf-8")
                except UnicodeDecodeError:
                    rec["value_hex"] = v.hex()
            rec.update(ann)
            if rec.get("kind") == "rating" and rec.get("at") is None:
                rec["t0"], rec["t1"] = t0, t1
            self.log(rec)
            self.counts[topic] += 1
        self.ledger.flush()

    # -- messages --

    def movie_msg(self, mid, title, year):
        form = self.rnd.random()
        v = {"id": str(mid) if form < 0.15 else mid, "title": title}
        if year is not None:
            v["releaseYear" if form > 0.8 else "release_year"] = year
        elif form < 0.5:
            v["release_year"] = None
        return (str(mid), json.dumps(v, ensure_ascii=self.rnd.random() < 0.5).encode(),
                {"kind": "movie", "id": mid, "title": title, "year": year})

    def tomb_msg(self, mid):
        return (str(mid), None, {"kind": "tomb", "id": mid})

    def rating_msg(self, mid, old):
        self.n_rating += 1
        n = self.n_rating
        v = {"id": str(mid) if self.rnd.random() < 0.1 else mid, "rating": n / 1000}
        at = None
        if old:
            us = now_us() - self.rnd.randint(OLD_MIN_AGE_DAYS * DAY_US, OLD_MAX_AGE_DAYS * DAY_US)
            v["rated_at"], at = fmt_rfc3339(us, self.rnd.choice(["ms", "z", "off"]), self.rnd)
        else:
            x = self.rnd.random()
            if x < 0.5:
                pass                                        # the Kafka timestamp
            elif x < 0.97:
                us = now_us() - self.rnd.randint(0, INWINDOW_MAX_AGE_DAYS * DAY_US)
                v["rated_at"], at = fmt_rfc3339(us, self.rnd.choice(["ms", "z", "off"]), self.rnd)
            else:
                us = now_us() + self.rnd.randint(0, 20 * 3600 * US)
                v["rated_at"], at = fmt_rfc3339(us, self.rnd.choice(["ms", "z", "off"]), self.rnd)
        if self.rnd.random() < 0.1:
            v["comment"] = "extra fields are ignored"
        # a third keyed away from their movie: on a partition of any worker,
        # stored concurrently with their movie by another one
        key = f"r{n}" if self.rnd.random() < AWAY_SHARE else str(mid)
        return (key, json.dumps(v).encode(),
                {"kind": "rating", "id": mid, "n": n, "at": at, "old": old})

    def bad_rating_msg(self):
        self.n_bad += 1
        n = self.n_bad
        mid = self.rnd.choice(self.a_introduced or [1])
        kinds = [
            (f"not json {n}".encode(), "value is not valid JSON"),
            (json.dumps({"id": mid, "rating": f"bad {n}"}).encode(), "rating is not a number"),
            (json.dumps({"id": mid, "n": n}).encode(), "rating is missing"),
            (json.dumps({"id": f"x{n}", "rating": 1}).encode(), "id is not an integer"),
            (json.dumps({"id": mid, "rating": 1, "rated_at": f"yesterday {n}"}).encode(),
             "rated_at is not a valid timestamp"),
            (f"[{n}]".encode(), "value is not a JSON object"),
            (f'{{"id": {mid}, "rating": 1, "rating": {n}}}'.encode(), 'duplicate field "rating"'),
            (f'{{"id": {mid}, "rating": 1e999, "n": {n}}}'.encode(), "rating is out of range"),
            (f'{{"id": {mid}, "rating": 1, "x": "\xff{n}"}}'.encode("latin-1"),
             "value is not valid UTF-8"),
            (None, "a rating cannot be a tombstone"),
        ]
        value, reason = self.rnd.choice(kinds)
        key = f"bad{n}" if value is None else str(mid)
        return (key, value, {"kind": "bad", "reason": reason})

    def bad_movie_msg(self):
        self.n_bad += 1
        n = self.n_bad
        mid = BAD_BASE + n
        kinds = [
            (json.dumps({"title": f"no id {n}"}).encode(), "id is missing"),
            (json.dumps({"id": mid, "title": "t", "release_year": 12345}).encode(),
             "release_year is out of range"),
            (json.dumps({"id": mid, "title": "t", "release_year": "1999"}).encode(),
             "release_year is not an integer"),
            (json.dumps({"id": mid}).encode(), "title is missing"),
            (f"{{{n}".encode(), "value is not valid JSON"),
            (None, "tombstone key is not a movie id"),
        ]
        value, reason = self.rnd.choice(kinds)
        key = f"x{n}" if value is None else str(mid)
        return (key, value, {"kind": "bad", "reason": reason})

    def marker_msg(self, mid):
        """A malformed movie message after a final tombstone: once it is in
        rejected_messages, the tombstone before it (same key, same partition)
        is stored."""
        self.n_bad += 1
        v = json.dumps({"id": mid, "title": 0, "marker": self.n_bad}).encode()
        return (str(mid), v, {"kind": "bad", "reason": "title is not a string", "marker": mid})

    # -- one round --

    def new_changing(self):
        mid = self.next_c
        self.next_c += 1
        r = self.round
        v1_round = r + self.rnd.randint(0, 2)
        st = {"state": "p1", "v1_round": v1_round, "v1_done": False, "version": 1,
              "p1_ratings": self.rnd.random() < 0.75,
              "p1_end": v1_round + self.rnd.randint(1, 4), "n_in": 0}
        pattern = self.rnd.choice([["u"], ["u", "u"], ["t"], ["t", "u"], ["u", "t"],
                                   ["u", "t", "u"], ["t", "u", "u"], ["t", "t", "u"]])
        st["history"] = pattern
        self.c[mid] = st

    def round_movies(self):
        r, rnd = self.round, self.rnd
        msgs = []
        # A: introduce new ids (ratings may come from now on), their movie
        # message arrives 0..6 rounds later, sometimes sent again (same
        # content, another spelling) later still
        for _ in range(max(1, self.a.per_round // 8)):
            mid = self.next_a
            self.next_a += 1
            self.a_content[mid] = (title_of(mid, 1, rnd),
                                   None if rnd.random() < 0.1 else rnd.randint(1900, 2026))
            self.a_introduced.append(mid)
            self.a_unproduced.add(mid)
            d = r + rnd.randint(0, 6)
            self.a_due[d].append(mid)
            if rnd.random() < 0.3:
                self.a_due[d + rnd.randint(1, 10)].append(mid)
        for mid in self.a_due.pop(r, []):
            msgs.append(self.movie_msg(mid, *self.a_content[mid]))
            self.a_unproduced.discard(mid)
        # C: new changing movies, and the next steps of the others
        for _ in range(3):
            self.new_changing()
        for mid, st in self.c.items():
            if st["state"] == "p1":
                if not st["v1_done"] and r >= st["v1_round"]:
                    st["title"] = title_of(mid, 1, rnd)
                    st["year"] = rnd.randint(1900, 2026)
                    msgs.append(self.movie_msg(mid, st["title"], st["year"]))
                    st["v1_done"] = True
                if st["v1_done"] and r >= st["p1_end"]:
                    st["state"] = "await_join" if st["n_in"] > 0 else "p2"
            if st["state"] == "p2":
                for _ in range(rnd.randint(1, 2)):
                    if not st["history"]:
                        break
                    step = st["history"].pop(0)
                    if step == "u":
                        st["version"] += 1
                        st["title"] = title_of(mid, st["version"], rnd)
                        st["year"] = None if rnd.random() < 0.2 else rnd.randint(1900, 2026)
                        msgs.append(self.movie_msg(mid, st["title"], st["year"]))
                        st["final"] = "version"
                    else:
                        msgs.append(self.tomb_msg(mid))
                        st["final"] = "tomb"
                if not st["history"]:
                    if st["final"] == "tomb":
                        msgs.append(self.marker_msg(mid))
                    st["state"] = "await_final"
        if rnd.random() < 0.4:
            msgs.append(self.bad_movie_msg())
        return msgs

    def round_ratings(self):
        r, rnd = self.round, self.rnd
        msgs = []
        c_open = [mid for mid, st in self.c.items()
                  if (st["state"] == "p1" and st["p1_ratings"] and r < st["p1_end"])
                  or (st["state"] == "p3" and r < st["p3_end"])]
        unproduced = list(self.a_unproduced)
        n = rnd.randint(self.a.per_round // 2, self.a.per_round * 3 // 2)
        for _ in range(n):
            x = rnd.random()
            if x < 0.025:
                msgs.append(self.bad_rating_msg())
            elif x < 0.12:
                pool = rnd.choice([self.a_introduced, self.b_ids, list(self.c)])
                msgs.append(self.rating_msg(rnd.choice(pool), old=True))
            elif x < 0.2:
                msgs.append(self.rating_msg(rnd.choice(self.b_ids), old=False))
            elif x < 0.4 and c_open:
                mid = rnd.choice(c_open)
                st = self.c[mid]
                if st["state"] == "p1":
                    st["n_in"] += 1
                msgs.append(self.rating_msg(mid, old=False))
            elif unproduced and rnd.random() < 0.3:
                msgs.append(self.rating_msg(rnd.choice(unproduced), old=False))
            else:
                msgs.append(self.rating_msg(rnd.choice(self.a_introduced), old=False))
        return msgs

    def confirm(self):
        """Ask PostgreSQL what is stored and move changing movies on."""
        await_join = [mid for mid, st in self.c.items() if st["state"] == "await_join"]
        await_ver = [mid for mid, st in self.c.items()
                     if st["state"] == "await_final" and st["final"] == "version"]
        await_tomb = {mid for mid, st in self.c.items()
                      if st["state"] == "await_final" and st["final"] == "tomb"}
        if not (await_join or await_ver or await_tomb):
            return
        arr = lambda ids: "'{" + ",".join(map(str, ids)) + "}'::bigint[]"
        sql = f"""
SELECT 'j', movie_id, count(*) FILTER (WHERE joined),
       count(*) FILTER (WHERE NOT joined AND rated_at > now() - interval '20 days')
  FROM pgkafka_join.ratings WHERE movie_id = ANY({arr(await_join)}) GROUP BY movie_id
UNION ALL
SELECT 'm', id, 0, 0 FROM pgkafka_join.movies WHERE id = ANY({arr(await_ver)})
   AND title = CASE id {" ".join(f"WHEN {m} THEN {pg_literal(self.c[m]['title'])}"
                                 for m in await_ver) or "WHEN NULL THEN NULL"} END
UNION ALL
SELECT 'k', convert_from(key, 'UTF8')::bigint, 0, 0 FROM pgkafka_join.rejected_messages
 WHERE topic = 'movies' AND position('"marker"'::bytea IN payload) > 0
   AND key IN ({",".join(f"'{m}'::bytea" for m in await_tomb) or "NULL"})
"""
        rows = psql_rows(self.a.psql, sql)
        if rows is None:
            return
        for kind, mid, joined, waiting in rows:
            mid = int(mid)
            st = self.c[mid]
            if kind == "j":
                if int(joined) == st["n_in"] and int(waiting) == 0 and st["state"] == "await_join":
                    self.log({"ev": "joined", "id": mid})
                    st["state"] = "p2"
            elif st["state"] == "await_final":
                self.log({"ev": "final", "id": mid})
                st["state"] = "p3"
                st["p3_end"] = self.round + 1 + self.rnd.randint(1, 5)
        self.ledger.flush()

    def run(self):
        start = time.time()
        while True:
            self.round += 1
            movies = self.round_movies()
            ratings = self.round_ratings()
            if self.rnd.random() < 0.5:
                self.produce("movies", movies)
                self.produce("ratings", ratings)
            else:
                self.produce("ratings", ratings)
                self.produce("movies", movies)
            time.sleep(self.rnd.uniform(0.05, 0.3))
            self.confirm()
            with open(self.a.status_file + ".tmp", "w") as f:
                f.write(f"{self.round} {self.counts['movies']} {self.counts['ratings']}\n")
            os.replace(self.a.status_file + ".tmp", self.a.status_file)
            if self.n_rating >= self.a.min_ratings and os.path.exists(self.a.stop_file):
                break
        print(f"# driver: {self.round} rounds in {time.time() - start:.0f}s, "
              f"{self.counts['movies']} movie and {self.counts['ratings']} rating messages")


def pg_literal(s):
    return "'" + s.replace("'", "''") + "'"


#
# The oracle
#

def load_ledger(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def counts(args):
    c = collections.Counter(rec["topic"] for rec in load_ledger(args.ledger) if "topic" in rec)
    print(f"movies {c['movies']}")
    print(f"ratings {c['ratings']}")


def parse_ts(s):
    """RFC 3339 from the output (UTC, "Z") to epoch microseconds"""
    dt = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


class Oracle:
    """The expected state, computed from the ledger alone."""

    def __init__(self, ledger):
        self.errors = []            # design errors: the stream broke the rules
        self.history = collections.defaultdict(list)   # movie id -> [(pos, content|None)]
        self.ratings = {}           # n -> rating record
        self.bad = collections.Counter()   # (topic, key hex, payload hex|None, reason)
        self.joined_ev = collections.defaultdict(list)  # movie id -> [pos]
        self.final_ev = {}          # movie id -> pos
        self.counts = collections.Counter()
        t_min, t_max = None, None
        for pos, rec in enumerate(ledger):
            ev = rec.get("ev")
            if ev == "joined":
                self.joined_ev[rec["id"]].append(pos)
                continue
            if ev == "final":
                self.final_ev.setdefault(rec["id"], pos)
                continue
            topic, kind = rec["topic"], rec["kind"]
            self.counts[topic] += 1
            if kind == "movie":
                self.history[rec["id"]].append((pos, (rec["title"], rec["year"])))
            elif kind == "tomb":
                self.history[rec["id"]].append((pos, None))
            elif kind == "bad":
                self.counts[topic + " malformed"] += 1
                if "value_hex" in rec:
                    payload = rec["value_hex"]
                elif rec["value"] is None:
                    payload = None
                else:
                    payload = rec["value"].encode().hex()
                self.bad[(topic, rec["key"].encode().hex(), payload, rec["reason"])] += 1
            elif kind == "rating":
                rec["pos"] = pos
                self.ratings[rec["n"]] = rec
                if rec.get("t0") is not None:
                    t_min = rec["t0"] if t_min is None else min(t_min, rec["t0"])
                    t_max = rec["t1"] if t_max is None else max(t_max, rec["t1"])
        self.t_min, self.t_max = t_min or now_us(), t_max or now_us()

        self.catalog = {}
        for mid, hist in self.history.items():
            if hist[-1][1] is not None:
                self.catalog[mid] = hist[-1][1]

        # expected result of every accepted rating: (movie content) or None
        self.expected = {}
        self.rule_counts = collections.Counter()
        for n, rec in self.ratings.items():
            self.expected[n] = self.expect(rec)

    def expect(self, rec):
        mid, pos = rec["id"], rec["pos"]
        at = rec["at"]
        if rec["old"]:
            # at most now - 40 days while the window is at most 31 days
            if at > self.t_min - 35 * DAY_US:
                self.errors.append(f"old rating {rec['n']} is not old enough")
            self.rule_counts["old: never"] += 1
            return None
        if at is not None and at < now_us() - 20 * DAY_US:
            self.errors.append(f"rating {rec['n']} is too close to the window's edge")
        hist = self.history.get(mid, [])
        versions = [c for _, c in hist if c is not None]
        if not versions:
            self.rule_counts["movie never comes: never"] += 1
            return None
        if len(versions) == len(hist) and all(c == versions[0] for c in versions):
            self.rule_counts["single content: published"] += 1
            return versions[0]
        # rule 3: joined (seen in PostgreSQL) before the movie first changed
        for q in self.joined_ev.get(mid, []):
            if q > pos:
                before = [c for p, c in hist if p < q]
                if before and all(c is not None and c == before[0] for c in before):
                    self.rule_counts["joined before the change: published"] += 1
                    return before[0]
                break
        # rule 2: produced after the final state of the movie was seen stored
        q = self.final_ev.get(mid)
        if q is not None and q < pos and all(p < q for p, _ in hist):
            if hist[-1][1] is None:
                self.rule_counts["after final deletion: never"] += 1
            else:
                self.rule_counts["after final version: published"] += 1
            return hist[-1][1]
        self.errors.append(f"rating {rec['n']} of movie {mid} is undecidable")
        return None


def check(args):
    ledger = load_ledger(args.ledger)
    o = Oracle(ledger)
    failed = []

    def report(ok, msg, details=()):
        print(("ok - " if ok else "not ok - ") + msg)
        if not ok:
            failed.append(msg)
            for d in list(details)[:20]:
                print(f"#   {d}")

    report(not o.errors, "the stream follows the oracle's rules", o.errors)
    print("# oracle: " + ", ".join(f"{v} {k}" for k, v in sorted(o.rule_counts.items())))

    def q(sql):
        rows = psql_rows(args.psql, sql, timeout=120)
        if rows is None:
            sys.exit("torture_oracle: query failed: " + sql)
        return rows

    # -- movies --
    actual = {}
    for mid, title, year in q("SELECT id, title, coalesce(release_year::text, 'null') FROM pgkafka_join.movies"):
        actual[int(mid)] = (title, None if year == "null" else int(year))
    diffs = []
    for mid in sorted(set(actual) | set(o.catalog)):
        if actual.get(mid) != o.catalog.get(mid):
            diffs.append(f"movie {mid}: expected {o.catalog.get(mid)}, stored {actual.get(mid)}")
    report(not diffs, f"pgkafka_join.movies equals the final catalog ({len(o.catalog)} movies)", diffs)

    # -- ratings --
    def in_kafka_range(rec, at_us):
        return rec["t0"] - 2 * US <= at_us <= rec["t1"] + 2 * US

    def rating_n(text):
        x = float(text)
        n = round(x * 1000)
        return n if n / 1000 == x else None

    seen = collections.Counter()
    diffs = []
    offsets = set()
    for mid, rating, at, joined, part, off in q(
            "SELECT movie_id, rating, (extract(epoch FROM rated_at) * 1000000)::bigint, joined, "
            "kafka_partition, kafka_offset FROM pgkafka_join.ratings"):
        offsets.add((part, off))
        n = rating_n(rating)
        rec = o.ratings.get(n)
        if rec is None:
            diffs.append(f"unexpected rating {mid}|{rating}")
            continue
        seen[n] += 1
        at = int(at)
        if int(mid) != rec["id"] or \
                (at != rec["at"] if rec["at"] is not None else not in_kafka_range(rec, at)):
            diffs.append(f"rating {n}: stored as movie {mid} at {at}, produced {rec}")
        if (joined == "t") != (o.expected[n] is not None):
            diffs.append(f"rating {n} (movie {mid}) joined={joined}, expected "
                         f"{o.expected[n] is not None}")
    r_lost = [n for n in o.ratings if seen[n] == 0]
    r_dup = sum(c - 1 for c in seen.values() if c > 1)
    diffs += [f"rating {n} lost" for n in r_lost[:10]]
    diffs += [f"rating {n} stored {c} times" for n, c in seen.items() if c > 1][:10]
    report(not diffs and len(offsets) == sum(seen.values()),
           f"pgkafka_join.ratings holds every accepted rating exactly once "
           f"({len(o.ratings)}; lost {len(r_lost)}, duplicated {r_dup}), joined as expected",
           diffs)

    # -- rejected messages --
    got = collections.Counter()
    offsets = set()
    for topic, key, payload, reason, part, off in q(
            "SELECT topic, coalesce(encode(key, 'hex'), ''), coalesce(encode(payload, 'hex'), 'NULL'), "
            "reason, kafka_partition, kafka_offset FROM pgkafka_join.rejected_messages"):
        offsets.add((topic, part, off))
        got[(topic, key, None if payload == "NULL" else payload, reason)] += 1
    bad_lost = o.bad - got
    bad_extra = got - o.bad
    diffs = [f"missing: {k} x{v}" for k, v in bad_lost.items()] + \
            [f"unexpected or repeated: {k} x{v}" for k, v in bad_extra.items()]
    report(not diffs and len(offsets) == sum(got.values()),
           f"pgkafka_join.rejected_messages holds every malformed message exactly once "
           f"({sum(o.bad.values())}; lost {sum(bad_lost.values())}, "
           f"duplicated or unexpected {sum(bad_extra.values())})", diffs)

    # -- results, in PostgreSQL and on the topic --
    expected_n = {n for n, c in o.expected.items() if c is not None}

    def compare(records, where):
        """records: [(result id, key, value dict)]; returns figures and diffs"""
        by_n = collections.defaultdict(list)
        ids = collections.Counter()
        diffs = []
        unexpected = 0
        for rid, key, v in records:
            ids[rid] += 1
            n = rating_n(repr(v["rating"]))
            if n not in expected_n:
                unexpected += 1
                diffs.append(f"{where}: unexpected result {rid}: {key} {v}")
                continue
            by_n[n].append((rid, key, v))
        wrong = 0
        for n, recs in by_n.items():
            rec = o.ratings[n]
            title, year = o.expected[n]
            for rid, key, v in recs:
                at = parse_ts(v["rated_at"])
                ok_at = at == rec["at"] if rec["at"] is not None else in_kafka_range(rec, at)
                if not (key == str(rec["id"]) and v["id"] == rec["id"] and v["title"] == title
                        and v["release_year"] == year and ok_at):
                    wrong += 1
                    diffs.append(f"{where}: result {rid} {key} {v} should carry "
                                 f"{rec['id']} {title!r} {year}")
        lost = sorted(n for n in expected_n if n not in by_n)
        dup = sum(len(r) - 1 for r in by_n.values()) + unexpected
        diffs += [f"{where}: lost rating {n} {o.ratings[n]}" for n in lost[:10]]
        diffs += [f"{where}: rating {n} published {len(r)} times: ids {[x[0] for x in r]}"
                  for n, r in by_n.items() if len(r) > 1][:10]
        id_dups = sum(c - 1 for c in ids.values() if c > 1)
        diffs += [f"{where}: result id {i} appears {c} times" for i, c in ids.items() if c > 1][:10]
        return len(records), len(lost), dup, wrong, id_dups, set(ids), diffs

    pg_records = []
    for rid, mid, title, year, rating, at in q(
            "SELECT id, movie_id, title, coalesce(release_year::text, 'null'), rating, "
            "to_json(rated_at AT TIME ZONE 'UTC') #>> '{}' FROM pgkafka_join.rated_movies"):
        pg_records.append((int(rid), mid, {"id": int(mid), "title": title,
                                           "release_year": None if year == "null" else int(year),
                                           "rating": float(rating), "rated_at": at + "Z"}))
    n_pg, lost_pg, dup_pg, wrong_pg, iddup_pg, ids_pg, diffs = compare(pg_records, "rated_movies")
    report(not diffs, f"pgkafka_join.rated_movies holds every expected result exactly once "
           f"({len(expected_n)} expected, {n_pg} stored; lost {lost_pg}, duplicated {dup_pg}, "
           f"wrong {wrong_pg})", diffs)

    topic_records = []
    bad_lines = []
    per_partition = collections.defaultdict(list)   # partition -> [(offset, result id)]
    per_share = collections.defaultdict(list)       # (partition, share) -> [(offset, result id)]
    with open(args.output, encoding="utf-8") as f:
        for line in f:
            try:
                part, off, headers, key, value = line.rstrip("\n").split("\t", 4)
                h = dict(kv.split("=", 1) for kv in headers.split(",") if "=" in kv)
                rid = int(h["pgkafka_join.id"])
                share = int(h["pgkafka_join.share"])
                topic_records.append((rid, key, json.loads(value)))
                per_partition[int(part)].append((int(off), rid))
                per_share[(int(part), share)].append((int(off), rid))
            except (ValueError, KeyError) as e:
                bad_lines.append(f"unreadable output record ({e}): {line!r}")
    n_t, lost_t, dup_t, wrong_t, iddup_t, ids_t, diffs = compare(topic_records, "topic")
    diffs = bad_lines + diffs
    if ids_t != ids_pg:
        diffs.append(f"result ids on the topic but not in rated_movies: "
                     f"{sorted(ids_t - ids_pg)[:10]}, the reverse: {sorted(ids_pg - ids_t)[:10]}")
    report(not diffs, f"the output topic holds every expected result exactly once "
           f"({len(expected_n)} expected, {n_t} on the topic; lost {lost_t}, duplicated {dup_t}, "
           f"wrong {wrong_t}, repeated result ids {iddup_t})", diffs)

    waited, total = q("SELECT count(*) FILTER (WHERE rm.joined_at > r.received_at), count(*) "
                      "FROM pgkafka_join.rated_movies rm "
                      "JOIN pgkafka_join.ratings r USING (kafka_partition, kafka_offset)")[0]
    print(f"# of the {total} results, {waited} were published when their movie arrived "
          f"(the rating had waited), the others with their rating")
    # within a share, result ids increase with the offset in every partition
    # (a share's ids become visible, and are published, in order)
    diffs = []
    for (part, share), recs in sorted(per_share.items()):
        recs.sort()
        for (o1, i1), (o2, i2) in zip(recs, recs[1:]):
            if i2 <= i1:
                diffs.append(f"partition {part}, share {share}: id {i1} at offset {o1}, "
                             f"then id {i2} at offset {o2}")
    report(not diffs, f"result ids increase along every partition of the output topic, "
           f"within each share ({len(per_share)} partition-share pairs)", diffs)

    # output_position may lag the topic, never run ahead of it
    diffs = []
    for part, share, next_offset, last_id in q(
            "SELECT kafka_partition, share, next_offset, last_id FROM pgkafka_join.output_position "
            "WHERE topic = 'rated_movies'"):
        recs = per_partition.get(int(part), [])
        top_off = max((x[0] for x in recs), default=-1)
        top_id = max((x[1] for x in per_share.get((int(part), int(share)), [])), default=0)
        if int(next_offset) > top_off + 1 or int(last_id) > top_id:
            diffs.append(f"partition {part}, share {share}: output_position says next_offset "
                         f"{next_offset}, last_id {last_id}; the topic's last record there: "
                         f"offset {top_off}, the share's highest id {top_id}")
    report(not diffs, "pgkafka_join.output_position is not ahead of the output topic", diffs)

    print(f"# messages: {o.counts['movies']} movies ({o.counts['movies malformed']} malformed), "
          f"{o.counts['ratings']} ratings ({o.counts['ratings malformed']} malformed, "
          f"{len(o.ratings)} accepted); catalog {len(o.catalog)} movies")
    print(f"# results: expected {len(expected_n)}, on the topic {n_t}, "
          f"lost {lost_t}, duplicated {dup_t}, wrong {wrong_t}")
    with open(args.figures, "w") as f:
        f.write(f"{o.counts['movies'] + o.counts['ratings']} {len(o.ratings)} {len(expected_n)} "
                f"{n_t} {lost_t} {dup_t} {wrong_t}\n")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--ledger", required=True)
    d.add_argument("--broker-sh", required=True)
    d.add_argument("--kafka-dir", required=True)
    d.add_argument("--psql", required=True)
    d.add_argument("--stop-file", required=True)
    d.add_argument("--status-file", required=True)
    d.add_argument("--min-ratings", type=int, required=True)
    d.add_argument("--per-round", type=int, default=200)
    d.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("counts")
    c.add_argument("--ledger", required=True)
    k = sub.add_parser("check")
    k.add_argument("--ledger", required=True)
    k.add_argument("--psql", required=True)
    k.add_argument("--output", required=True)
    k.add_argument("--figures", required=True)
    args = ap.parse_args()
    if args.cmd == "drive":
        Driver(args).run()
    elif args.cmd == "counts":
        counts(args)
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
