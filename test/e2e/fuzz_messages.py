#!/usr/bin/env python3
#
# fuzz_messages.py
#		Generator and checker of test/e2e/fuzz.sh (Python 3 standard library
#		only).
#
#	fuzz_messages.py generate DIR PARTITIONS NOW [--dev]
#		Write, with a fixed seed, the messages of both input topics and what
#		must become of each of them.  NOW (Unix seconds) anchors the
#		rated_at values that must fall inside or outside the join window.
#		  DIR/produce.plan	one kcat run per line: TOPIC PARTITION MODE FILE
#							(MODE z: empty values are sent as NULL, i.e.
#							tombstones; n: sent as empty values; t: sent
#							without Kafka time stamps); runs of a partition
#							must go in the order listed
#		  DIR/*.bin			their input: [KEY KEY_DELIM] VALUE MSG_DELIM ...
#		  DIR/expected.jsonl	one line per message, in (topic, partition,
#							offset) order: category, outcome, reason, hashes
#							of the key and of the stored payload, and for an
#							accepted rating what it must be stored as and
#							whether it must be published
#		  DIR/movies.json	the catalog expected after the movies topic
#		  DIR/summary.json	counts
#		With --dev, also DIR/messages.jsonl: every key and value in hex (to
#		compare the reference classifier with pgkafka_join.parse_message).
#
#	fuzz_messages.py check DIR T0 T1
#		Compare the dumps fuzz.sh wrote in DIR (rejected.tsv, movies.tsv,
#		ratings.tsv, rated_movies.tsv, offsets.tsv, kafka_offsets.tsv,
#		output.tsv) with the expectations.  T0..T1 (Unix seconds) brackets the production of the
#		ratings: the Kafka timestamp of a rating without rated_at.  Prints
#		"ok - ..." / "not ok - ..." lines; exits 1 if any check failed.
#
# Every message's outcome is computed by a reference classifier written from
# docs/formats.md (message formats and rejection reasons; the order in which the
# checks apply and the nesting pre-scan follow src/message.c), not by
# calling the extension: a strict JSON parser with PostgreSQL's extra rules
# (no \u0000, no unpaired surrogate escapes), the nesting pre-scan, the
# field rules, the RFC 3339 and epoch-millisecond rules.  Messages built to show a given
# defect also carry the reason they were built for, and generation stops if
# the classifier disagrees (a bug in this file).  Randomly mutated messages
# take the classifier's verdict; those it cannot decide for sure (hour 24,
# leap seconds, year 0, ...) or that it would accept are dropped, so that
# every accepted message is one whose effect is known exactly.
#
# Categories of bad messages (BAD below; about 6,000 per topic): truncated
# JSON, wrong types and out-of-range values for each field, missing
# fields, duplicated fields (releaseYear counts as release_year), nesting
# over 64 levels, invalid UTF-8, NUL bytes, values that are not objects,
# invalid JSON (NaN, Infinity, comments, bad escapes, \u0000, lone
# surrogates, ...), empty values, values over max_message_bytes (two over
# 1 MB), tombstones with a key that is no id (movies) or any tombstone
# (ratings), ratings without rated_at nor Kafka time stamp, and random byte
# edits of valid messages.  Good ones: movies (updated, deleted, deleted
# and back, edge cases: a 10,000-byte title, exactly max_message_bytes,
# nesting of exactly 64, escapes, 3,000 fields, ...), tombstones, and
# ratings of present, deleted and never seen movies, with rated_at absent,
# inside the join window, too old or in year 9999 (without a Kafka time
# stamp: with one, further ahead of it than future_tolerance, they are
# rejected, as ratings built for that are), and extreme values.

import collections
import datetime
import decimal
import hashlib
import json
import os
import random
import re
import sys

SEED = 20261125
MAX_MESSAGE_BYTES = 65536
MAX_TITLE_BYTES = 10000
MAX_NESTING = 64
# kcat delimiters; no message may contain them
MSG_DELIM = b'\x1e\x1f<pkj-fuzz-end>\x1f\x1e'
KEY_DELIM = b'\x1e\x1f<pkj-fuzz-key>\x1f\x1e'

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# accepted rated_at: 1970-01-01 <= t < 10000-01-01 (UTC), in Unix microseconds
TS_END_US = 253402300800 * 1000000


class Uncertain(Exception):
	"""The reference cannot tell for sure what the extension does."""


#
# Reference classifier
#

class JsonInvalid(Exception):
	pass


class JsonParser:
	"""Strict JSON (RFC 8259) over bytes, with PostgreSQL's extra rules;
	collects the top-level object's fields as (name, kind, text)."""

	WS = b' \t\n\r'

	def __init__(self, b):
		self.b = b
		self.i = 0
		self.n = len(b)
		self.fields = []
		self.top_kind = None

	def parse(self):
		self.ws()
		self.top_kind = self.value(0)[0]
		self.ws()
		if self.i != self.n:
			raise JsonInvalid('trailing data')
		return self.top_kind, self.fields

	def ws(self):
		while self.i < self.n and self.b[self.i] in self.WS:
			self.i += 1

	def peek(self):
		if self.i >= self.n:
			raise JsonInvalid('unexpected end')
		return self.b[self.i]

	def value(self, depth):
		c = self.peek()
		if c == 0x7b:
			self.obj(depth)
			return ('object', None)
		if c == 0x5b:
			self.arr(depth)
			return ('array', None)
		if c == 0x22:
			return ('string', self.string())
		if c == 0x2d or 0x30 <= c <= 0x39:
			return ('number', self.number())
		for word, kind in ((b'true', 'bool'), (b'false', 'bool'), (b'null', 'null')):
			if self.b.startswith(word, self.i):
				self.i += len(word)
				return (kind, None)
		raise JsonInvalid('bad token')

	def obj(self, depth):
		self.i += 1
		self.ws()
		if self.peek() == 0x7d:
			self.i += 1
			return
		while True:
			self.ws()
			if self.peek() != 0x22:
				raise JsonInvalid('field name expected')
			name = self.string()
			self.ws()
			if self.peek() != 0x3a:
				raise JsonInvalid('colon expected')
			self.i += 1
			self.ws()
			kind, text = self.value(depth + 1)
			if depth == 0:
				self.fields.append((name, kind, text))
			self.ws()
			c = self.peek()
			self.i += 1
			if c == 0x7d:
				return
			if c != 0x2c:
				raise JsonInvalid('comma expected')

	def arr(self, depth):
		self.i += 1
		self.ws()
		if self.peek() == 0x5d:
			self.i += 1
			return
		while True:
			self.ws()
			self.value(depth + 1)
			self.ws()
			c = self.peek()
			self.i += 1
			if c == 0x5d:
				return
			if c != 0x2c:
				raise JsonInvalid('comma expected')

	def number(self):
		m = re.compile(rb'-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?').match(self.b, self.i)
		if not m:
			raise JsonInvalid('bad number')
		self.i = m.end()
		return m.group(0).decode()

	def string(self):
		"""Decode a string; the bytes are known to be valid UTF-8."""
		b = self.b
		self.i += 1
		out = bytearray()
		hi = None				# pending high surrogate
		while True:
			if self.i >= self.n:
				raise JsonInvalid('unterminated string')
			c = b[self.i]
			if c == 0x22:
				if hi is not None:
					raise JsonInvalid('unpaired surrogate')
				self.i += 1
				return out.decode('utf-8')
			if c == 0x5c:
				if self.i + 1 >= self.n:
					raise JsonInvalid('unterminated escape')
				e = b[self.i + 1]
				if e == 0x75:		# \uXXXX
					h = b[self.i + 2:self.i + 6]
					if len(h) != 4 or not re.fullmatch(rb'[0-9a-fA-F]{4}', h):
						raise JsonInvalid('bad \\u escape')
					cp = int(h, 16)
					self.i += 6
					if 0xd800 <= cp <= 0xdbff:
						if hi is not None:
							raise JsonInvalid('two high surrogates')
						hi = cp
						continue
					if 0xdc00 <= cp <= 0xdfff:
						if hi is None:
							raise JsonInvalid('lone low surrogate')
						cp = 0x10000 + ((hi - 0xd800) << 10) + (cp - 0xdc00)
						hi = None
					if hi is not None:
						raise JsonInvalid('unpaired surrogate')
					if cp == 0:
						raise JsonInvalid('\\u0000')
					out += chr(cp).encode('utf-8')
					continue
				if hi is not None:
					raise JsonInvalid('unpaired surrogate')
				simple = {0x22: b'"', 0x5c: b'\\', 0x2f: b'/', 0x62: b'\b',
						  0x66: b'\f', 0x6e: b'\n', 0x72: b'\r', 0x74: b'\t'}
				if e not in simple:
					raise JsonInvalid('bad escape')
				out += simple[e]
				self.i += 2
				continue
			if c < 0x20:
				raise JsonInvalid('control character in string')
			if hi is not None:
				raise JsonInvalid('unpaired surrogate')
			# copy a run of plain bytes
			j = self.i
			while j < self.n and b[j] not in (0x22, 0x5c) and b[j] >= 0x20:
				j += 1
			out += b[self.i:j]
			self.i = j


def nested_too_deeply(v):
	"""The extension's pre-scan: '[' and '{' outside strings."""
	in_string = False
	depth = 0
	i = 0
	n = len(v)
	while i < n:
		c = v[i]
		if in_string:
			if c == 0x22:
				in_string = False
			elif c == 0x5c and i + 1 < n:
				i += 1
		elif c == 0x22:
			in_string = True
		elif c == 0x5b or c == 0x7b:
			depth += 1
			if depth > MAX_NESTING:
				return True
		elif (c == 0x5d or c == 0x7d) and depth > 0:
			depth -= 1
		i += 1
	return False


# A rating whose rated_at is further ahead of its message's Kafka time stamp
# than pgkafka_join.future_tolerance (1 day) is rejected.  The time stamps
# are those of the production, which starts at NOW (generate's argument)
# and ends within PRODUCTION_US of it: rated_at up to NOW + 1 day is
# accepted, above NOW + 1 day + PRODUCTION_US rejected; in between the
# outcome is not known, and such a message is dropped.
FUTURE_TOLERANCE_US = 86400 * 1000000
PRODUCTION_US = 3600 * 1000000
FUTURE_REASON = "rated_at is more than pgkafka_join.future_tolerance (1 day) ahead of the message's timestamp"
NOW_US = None					# set by generate()


class Rejected(Exception):
	def __init__(self, reason):
		super().__init__(reason)
		self.reason = reason


def parse_int64(text):
	"""'ok', value | 'invalid' | 'range' (optional '-', digits only)."""
	if not re.fullmatch(r'-?[0-9]+', text):
		return 'invalid', None
	if len(text.lstrip('-').lstrip('0')) > 20:
		return 'range', None
	v = int(text)
	if v < INT64_MIN or v > INT64_MAX:
		return 'range', None
	return 'ok', v


SPECS = {
	'movie': (('id', 'id'), ('title', 'title'), ('release_year', 'release_year'),
			  ('releaseYear', 'release_year')),
	'rating': (('id', 'id'), ('rating', 'rating'), ('rated_at', 'rated_at')),
}


def top_level(kind, v):
	"""Common checks; the wanted fields as {canonical name: (kind, text)}."""
	if len(v) == 0:
		raise Rejected('value is empty')
	if b'\x00' in v:
		raise Rejected('value contains a NUL byte')
	try:
		v.decode('utf-8')
	except UnicodeDecodeError:
		raise Rejected('value is not valid UTF-8')
	if nested_too_deeply(v):
		raise Rejected('value is nested too deeply')
	try:
		top, fields = JsonParser(v).parse()
	except JsonInvalid:
		raise Rejected('value is not valid JSON')
	except RecursionError:
		raise Uncertain('recursion')
	if top != 'object':
		raise Rejected('value is not a JSON object')
	wanted = dict(SPECS[kind])
	got = {}
	duplicate = None
	for name, fkind, text in fields:
		if name in wanted:
			canon = wanted[name]
			if canon in got and duplicate is None:
				duplicate = canon
			got[canon] = (fkind, text)
	if duplicate is not None:
		raise Rejected('duplicate field "%s"' % duplicate)
	return got


def take_id(got):
	kind, text = got.get('id', ('absent', None))
	if kind in ('absent', 'null'):
		raise Rejected('id is missing')
	if kind not in ('number', 'string'):
		raise Rejected('id is not an integer')
	r, v = parse_int64(text)
	if r == 'invalid':
		raise Rejected('id is not an integer')
	if r == 'range':
		raise Rejected('id is out of range')
	return v


def classify_movie(v):
	"""(id, title, release_year or None) or raises Rejected."""
	got = top_level('movie', v)
	mid = take_id(got)
	kind, title = got.get('title', ('absent', None))
	if kind in ('absent', 'null'):
		raise Rejected('title is missing')
	if kind != 'string':
		raise Rejected('title is not a string')
	if len(title.encode('utf-8')) > MAX_TITLE_BYTES:
		raise Rejected('title is too long')
	kind, text = got.get('release_year', ('absent', None))
	year = None
	if kind not in ('absent', 'null'):
		r = 'invalid'
		if kind == 'number':
			r, year = parse_int64(text)
		if r == 'invalid':
			raise Rejected('release_year is not an integer')
		if r == 'range' or year < 0 or year > 9999:
			raise Rejected('release_year is out of range')
	return mid, title, year


def days_in_month(y, m):
	if m == 2:
		leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
		return 29 if leap else 28
	return 31 if m in (1, 3, 5, 7, 8, 10, 12) else 30


RFC3339 = re.compile(r'([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})'
					 r'(?:\.([0-9]+))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))')


def days_from_civil(y, m, d):
	"""Days since 1970-01-01, proleptic Gregorian (any year)."""
	y -= m <= 2
	era = (y if y >= 0 else y - 399) // 400
	yoe = y - era * 400
	doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
	doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
	return era * 146097 + doe - 719468


def rfc3339_us(s):
	"""Unix microseconds of an RFC 3339 string; raises Rejected/Uncertain."""
	bad = Rejected('rated_at is not a valid timestamp')
	if len(s.encode('utf-8')) > 64:
		raise bad
	m = RFC3339.fullmatch(s)
	if not m or not s.isascii():
		raise bad
	y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
	frac, z, sign, tzh, tzm = m.groups()[6:]
	if y == 0 or h == 24 or sec == 60:
		raise Uncertain('year 0, hour 24 or leap second')
	if frac is not None and len(frac) > 6:
		raise Uncertain('rounding of more than 6 fractional digits')
	if not 1 <= mo <= 12 or not 1 <= d <= days_in_month(y, mo):
		raise bad
	if h > 24 or mi > 59 or sec > 60:
		raise bad
	off = 0
	if z is None:
		tzh, tzm = int(tzh), int(tzm)
		if tzh > 15 or tzm > 59:
			raise bad
		if tzh == 15:
			raise Uncertain('offset of 15 hours')
		off = (tzh * 3600 + tzm * 60) * (1 if sign == '+' else -1)
	us = int((frac or '0').ljust(6, '0'))
	t = ((days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - off) * 1000000 + us)
	if not 0 <= t < TS_END_US:
		raise Rejected('rated_at is out of range')
	return t


def rating_value(text):
	"""A JSON number as the extension takes it (strtod, no under/overflow)."""
	v = float(text)
	if v in (float('inf'), float('-inf')):
		raise Rejected('rating is out of range')
	mantissa = re.split(r'[eE]', text)[0]
	if v == 0.0 and re.search(r'[1-9]', mantissa):
		raise Rejected('rating is out of range')		# underflow
	return v


def classify_rating(v):
	"""(movie_id, rating, rated_at Unix us or None) or raises Rejected."""
	got = top_level('rating', v)
	mid = take_id(got)
	kind, text = got.get('rating', ('absent', None))
	if kind in ('absent', 'null'):
		raise Rejected('rating is missing')
	if kind != 'number':
		raise Rejected('rating is not a number')
	rating = rating_value(text)
	kind, text = got.get('rated_at', ('absent', None))
	if kind in ('absent', 'null'):
		return mid, rating, None
	if kind == 'number':
		r, ms = parse_int64(text)
		if r == 'invalid':
			raise Rejected('rated_at is not a valid timestamp')
		if r == 'range' or not 0 <= ms * 1000 < TS_END_US:
			raise Rejected('rated_at is out of range')
		return mid, rating, ms * 1000
	if kind == 'string':
		return mid, rating, rfc3339_us(text)
	raise Rejected('rated_at is not a valid timestamp')


def classify(topic, key, value, no_timestamp=False):
	"""('accepted', what) or ('rejected', reason) for one Kafka message;
	no_timestamp: the message carries no Kafka time stamp."""
	try:
		if value is not None and len(value) > MAX_MESSAGE_BYTES:
			raise Rejected('value of %d bytes is larger than pgkafka_join.max_message_bytes (%d)'
						   % (len(value), MAX_MESSAGE_BYTES))
		if topic == 'movies':
			if value is None:
				if key is None:
					raise Rejected('tombstone key is not a movie id')
				try:
					r, mid = parse_int64(key.decode('ascii'))
				except UnicodeDecodeError:
					r = 'invalid'
				if r != 'ok':
					raise Rejected('tombstone key is not a movie id')
				return 'accepted', ('delete', mid)
			return 'accepted', ('movie',) + classify_movie(value)
		if value is None:
			raise Rejected('a rating cannot be a tombstone')
		rating = classify_rating(value)
		if rating[2] is None and no_timestamp:
			raise Rejected('rated_at is missing and the message has no timestamp')
		if rating[2] is not None and not no_timestamp:
			if rating[2] - NOW_US > FUTURE_TOLERANCE_US + PRODUCTION_US:
				raise Rejected(FUTURE_REASON)
			if rating[2] - NOW_US > FUTURE_TOLERANCE_US:
				raise Uncertain('rated_at near the future tolerance')
		return 'accepted', ('rating',) + rating
	except Rejected as e:
		return 'rejected', e.reason


#
# Message construction
#

WORDS = ('Die Hard', 'Amélie', 'Tree of Life', 'A Walk in the Clouds', 'The Big Lebowski',
		 'Super Mario Bros.', 'Children of Men', '東京物語', 'Ночной дозор', 'שלום',
		 'Crouching Tiger, Hidden Dragon', 'Fight Club', 'Blade Runner 2049', 'Ça',
		 'Ｆｕｌｌｗｉｄｔｈ', '😀 Smile', 'Quote " and backslash \\', 'Tab\tNew\nLine',
		 'Ctrl \x01\x1f\x7f', 'Line sep \u2028 para sep \u2029', 'Zalgo z\u0336\u0353a',
		 '<script>alert(1)</script>', "Robert'); DROP TABLE movies;--", '%s %n %x',
		 'NULL', 'null', '', ' ', '{"id": 1}', '\\u0000', 'Ünïcödé', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢')


class Gen:
	def __init__(self, rnd, now):
		self.r = rnd
		self.now = now

	def choice(self, seq):
		return self.r.choice(seq)

	def dumps(self, obj, ascii_only=None):
		"""A JSON text of obj in a random but valid layout."""
		r = self.r
		if ascii_only is None:
			ascii_only = r.random() < 0.5
		style = r.randrange(4)
		if style == 0:
			s = json.dumps(obj, ensure_ascii=ascii_only)
		elif style == 1:
			s = json.dumps(obj, ensure_ascii=ascii_only, separators=(',', ':'))
		elif style == 2:
			s = json.dumps(obj, ensure_ascii=ascii_only, indent=r.choice((1, 2, '\t')))
		else:
			s = ' \n\t' + json.dumps(obj, ensure_ascii=ascii_only, separators=(' ,\r\n ', ' :\t')) + '\r\n '
		return s.encode('utf-8')

	def obj_text(self, pairs, ascii_only=None):
		"""An object from (name, raw JSON text) pairs, keeping duplicates."""
		r = self.r
		sep = r.choice((', ', ',', ',\n  ', ' , '))
		colon = r.choice((': ', ':', ' : '))
		body = sep.join(json.dumps(k, ensure_ascii=bool(ascii_only)) + colon + v for k, v in pairs)
		return ('{' + body + '}').encode('utf-8')

	def title(self):
		r = self.r
		t = r.choice(WORDS)
		if r.random() < 0.3:
			t = t + ' ' + str(r.randrange(1000))
		if r.random() < 0.05:
			t = t * r.randrange(2, 40)
			t = t[:3000]
		return t

	def extras(self):
		"""Fields the extension must ignore."""
		r = self.r
		out = []
		for _ in range(r.randrange(3)):
			out.append(r.choice((
				('genre', ['action', 'drama']),
				('meta', {'id': 'x', 'title': 5, 'rating': None, 'rated_at': []}),
				('', 'empty field name'),
				('ID', 'not id'),
				('Title', 7),
				('nested', [[{'id': {'id': 1}}]]),
				('id ', 5),
				('ratings', [1, 2, 3]),
				('big', 12345678901234567890123456789),
				('float', -1.5e300),
				('flag', True),
				('nothing', None),
			)))
		return out


def movie_obj(g, mid, title, year, id_style=None, year_key='release_year'):
	r = g.r
	pairs = [('id', mid if (id_style or r.choice(('int', 'int', 'str'))) == 'int' else str(mid)),
			 ('title', title)]
	if year is not None or r.random() < 0.3:
		pairs.append((year_key, year))
	pairs += g.extras()
	r.shuffle(pairs)
	return dict(pairs) if len(set(k for k, _ in pairs)) == len(pairs) else None


def good_movie_value(g, mid, title, year):
	r = g.r
	while True:
		obj = movie_obj(g, mid, title, year,
						year_key=r.choice(('release_year', 'release_year', 'releaseYear')))
		if obj is not None:
			return g.dumps(obj)


def rating_obj(g, mid, rating_text, rated_at_text=None):
	"""Pairs (name, raw JSON text)."""
	r = g.r
	pairs = [('id', json.dumps(mid) if r.random() < 0.8 else json.dumps(str(mid))),
			 ('rating', rating_text)]
	if rated_at_text is not None:
		pairs.append(('rated_at', rated_at_text))
	elif r.random() < 0.1:
		pairs.append(('rated_at', 'null'))
	for k, v in g.extras():
		pairs.append((k, json.dumps(v)))
	r.shuffle(pairs)
	names = [k for k, _ in pairs]
	if len(set(names)) != len(names):
		return rating_obj(g, mid, rating_text, rated_at_text)
	return pairs


def exact_decimal_forms(q):
	"""Spellings of the number q/4 (exact in binary), all equal."""
	d = decimal.Decimal(q) / 4
	_, digits, exp = d.as_tuple()
	digits = ''.join(map(str, digits))
	s = format(d, 'f')
	return [s, s + '0' if '.' in s else s + '.0', '%se%d' % (digits, exp),
			'0.%sE%d' % (digits, len(digits) + exp), '0.%se+%d' % (digits, len(digits) + exp)]


def iso_utc(us):
	"""rated_at as the output shows it (to_json of a timestamp, plus Z)."""
	sec, frac = divmod(us, 1000000)
	d = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=sec)
	s = '%04d-%02d-%02dT%02d:%02d:%02d' % (d.year, d.month, d.day, d.hour, d.minute, d.second)
	if frac:
		s += ('.%06d' % frac).rstrip('0')
	return s + 'Z'


def rfc3339_text(g, us):
	"""An RFC 3339 spelling of Unix microseconds us, in some offset."""
	r = g.r
	off = r.choice((0, 0, 3600, -3600, 5 * 3600 + 1800, -(9 * 3600 + 30 * 60), 14 * 3600, -12 * 3600))
	if us + off * 1000000 < 0 or us + off * 1000000 >= TS_END_US:
		off = 0
	sec, frac = divmod(us + off * 1000000, 1000000)
	d = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=sec)
	s = '%04d-%02d-%02d%s%02d:%02d:%02d' % (d.year, d.month, d.day, r.choice('TTt '),
											d.hour, d.minute, d.second)
	if frac:
		s += '.%06d' % frac
		if r.random() < 0.5:
			s = s.rstrip('0')
	if off == 0 and r.random() < 0.7:
		s += r.choice('Zz')
	else:
		s += '%s%02d:%02d' % ('+' if off >= 0 else '-', abs(off) // 3600, abs(off) % 3600 // 60)
	return s


#
# Bad messages, by category: each returns (key, value, reason or None);
# None: the classifier decides.
#

def k_id(g, mid=None):
	"""A key for a message: usually the id, sometimes anything."""
	r = g.r
	x = r.random()
	if x < 0.7:
		return str(mid if mid is not None else r.randrange(1, 2000)).encode()
	if x < 0.72:
		return b''
	if x < 0.8:
		return None
	return r.choice((b'abc', b'\xff\xfe', b'k\x00ey', b'\xe2\x82', b'-', b' 5', 'ключ'.encode(),
					 bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))))


def valid_movie_like(g):
	mid = g.r.randrange(1, 2000)
	return good_movie_value(g, mid, g.title(), g.r.choice((None, 1988, 2001, 0, 9999)))


def valid_rating_like(g):
	r = g.r
	pairs = rating_obj(g, r.randrange(1, 2000), g.choice(exact_decimal_forms(r.randrange(1, 41))),
					   r.choice((None, '"2026-11-25T10:00:00Z"', '1795600000000',
								 '"2026-11-25T12:00:00.5+02:00"')))
	return g.obj_text(pairs)


def with_field(g, topic, name, raw, drop=()):
	"""A valid-looking message whose field name holds raw JSON text."""
	r = g.r
	if topic == 'movies':
		pairs = [('id', str(r.randrange(1, 2000))), ('title', json.dumps(g.title())),
				 ('release_year', str(r.choice((1988, 2001))))]
		if r.random() < 0.4:
			pairs.pop()
	else:
		pairs = [('id', str(r.randrange(1, 2000))), ('rating', g.choice(exact_decimal_forms(r.randrange(40)))),
				 ('rated_at', '"2026-11-25T10:00:00Z"')]
		if r.random() < 0.5:
			pairs.pop()
	pairs = [(k, v) for k, v in pairs if k != name and k not in drop]
	if raw is not None:
		pairs.append((name, raw))
	for k, v in g.extras():
		if k not in ('id', 'title', 'release_year', 'releaseYear', 'rating', 'rated_at'):
			pairs.append((k, json.dumps(v)))
	r.shuffle(pairs)
	names = [k for k, _ in pairs]
	if len(set(names)) != len(names):
		return with_field(g, topic, name, raw, drop)
	return g.obj_text(pairs)


def cat_truncated(g, topic):
	v = valid_movie_like(g) if topic == 'movies' else valid_rating_like(g)
	v = v.rstrip(b' \t\r\n')
	return k_id(g), v[:g.r.randrange(1, len(v))], None


ID_NOT_INTEGER = ('true', 'false', '[]', '{}', '[1]', '{"id": 1}', '"abc"', '""', '1.5', '1e3', '1E3',
				  '1.0', '-0.0', '"1.5"', '" 1"', '"1 "', '"+1"', '"0x1F"', '"1e3"', '"١٢"', '"１２"',
				  '"12abc"', '"-"', '"--1"', '"1-"', '"\\u0031\\u0020"', '-1.5e-7', '"NaN"', '"\\t7"')
ID_OUT_OF_RANGE = ('9223372036854775808', '-9223372036854775809', '"9223372036854775808"',
				   '"-9223372036854775809"', '99999999999999999999999999999999999999',
				   '"' + '9' * 5000 + '"', '1' + '0' * 3000, '-' + '9' * 100)


def cat_id_type(g, topic):
	return k_id(g), with_field(g, topic, 'id', g.choice(ID_NOT_INTEGER)), 'id is not an integer'


def cat_id_missing(g, topic):
	raw = None if g.r.random() < 0.6 else 'null'
	return k_id(g), with_field(g, topic, 'id', raw), 'id is missing'


def cat_id_range(g, topic):
	return k_id(g), with_field(g, topic, 'id', g.choice(ID_OUT_OF_RANGE)), 'id is out of range'


def cat_title_missing(g, topic):
	return k_id(g), with_field(g, 'movies', 'title', g.choice((None, 'null'))), 'title is missing'


def cat_title_type(g, topic):
	raw = g.choice(('0', '1.5', 'true', 'false', '[]', '["Die Hard"]', '{}', '{"title": "x"}', '-1e400'))
	return k_id(g), with_field(g, 'movies', 'title', raw), 'title is not a string'


def cat_title_long(g, topic):
	r = g.r
	unit, nbytes = r.choice((('a', 1), ('é', 2), ('€', 3), ('😀', 4), ('\\u00e9', 2), ('\\n', 1),
							 ('\\ud83d\\ude00', 4)))
	n = MAX_TITLE_BYTES // nbytes + 1 + r.choice((0, 0, 1, 17, 3000))
	if len(unit) * n > 60000:
		n = 60000 // len(unit)
	return k_id(g), with_field(g, 'movies', 'title', '"' + unit * n + '"'), 'title is too long'


def cat_year_type(g, topic):
	raw = g.choice(('"1988"', '1988.0', '1.988e3', '1988e0', 'true', '[]', '{}', '[1988]', '""', '-0.5'))
	name = g.choice(('release_year', 'releaseYear'))
	return k_id(g), with_field(g, 'movies', name, raw, drop=('release_year',)), 'release_year is not an integer'


def cat_year_range(g, topic):
	raw = g.choice(('-1', '10000', '-9999', '99999999999999999999', '-9223372036854775809', '2147483648',
					'-2147483649', '9223372036854775807'))
	name = g.choice(('release_year', 'releaseYear'))
	return k_id(g), with_field(g, 'movies', name, raw, drop=('release_year',)), 'release_year is out of range'


def cat_duplicate(g, topic):
	r = g.r
	if topic == 'movies':
		a, b = r.choice((('id', 'id'), ('title', 'title'), ('release_year', 'release_year'),
						 ('release_year', 'releaseYear'), ('releaseYear', 'release_year'),
						 ('releaseYear', 'releaseYear')))
		canon = 'release_year' if a.startswith('release') else a
		vals = {'id': ('1', '"2"', 'null', '"x"'), 'title': ('"A"', '"B"', '5', 'null'),
				'release_year': ('1988', '"x"', 'null', '-5'), 'releaseYear': ('1999', '[]')}
		pairs = [('id', '7'), ('title', '"T"'), ('release_year', '2000')]
	else:
		a = b = canon = r.choice(('id', 'rating', 'rated_at'))
		vals = {'id': ('1', '"2"', 'null', '"x"'), 'rating': ('1', '2.5', '"x"', 'null'),
				'rated_at': ('null', '"2026-11-25T10:00:00Z"', '"soon"', '0')}
		pairs = [('id', '7'), ('rating', '5'), ('rated_at', '"2026-11-25T10:00:00Z"')]
	pairs = [(k, v) for k, v in pairs if k != canon and not (canon == 'release_year' and k.startswith('release'))]
	pairs.insert(r.randrange(len(pairs) + 1), (a, r.choice(vals[a])))
	pos = r.randrange(len(pairs) + 1)
	pairs.insert(pos, (b, r.choice(vals[b])))
	# the duplicate must come before any other defect matters: the other
	# fields are valid, and the duplicated ones are reported first
	for _ in range(r.randrange(3)):
		pairs.insert(r.randrange(len(pairs) + 1), ('extra%d' % r.randrange(9), '{"%s": 1, "%s": 2}' % (a, a)))
	names = [k for k, _ in pairs]
	if len(set(n for n in names if n.startswith('extra'))) != len([n for n in names if n.startswith('extra')]):
		return cat_duplicate(g, topic)
	return k_id(g), g.obj_text(pairs), 'duplicate field "%s"' % canon


def cat_deep(g, topic):
	r = g.r
	n = r.choice((MAX_NESTING + 1, MAX_NESTING + 2, 100, 1000, 10000, 30000))
	kind = r.randrange(6)
	if kind == 0:		# inside a field of an otherwise valid message
		v = with_field(g, topic, 'x', '[' * (n - 1) + ']' * (n - 1))
	elif kind == 1:		# arrays only
		v = b'[' * n + b']' * n
	elif kind == 2:		# unclosed
		v = b'[' * n
	elif kind == 3:		# objects, cut at the size limit
		v = (b'{"a":' * n + b'1' + b'}' * n)[:MAX_MESSAGE_BYTES]
	elif kind == 4:		# mixed, in a field
		s = ''.join(r.choice(('[', '{"k":')) for _ in range(n - 1))
		close = ''.join(']' if c == '[' else '}' for c in reversed(re.findall(r'\[|\{', s)))
		v = with_field(g, topic, 'deep', s + '0' + close)
	else:				# too deep after many shallow siblings, then garbage
		v = b'{"a":[' + b'[],' * 500 + b'[' * MAX_NESTING + b'x'
	if len(v) > MAX_MESSAGE_BYTES:
		return cat_deep(g, topic)
	return k_id(g), v, 'value is nested too deeply'


INVALID_UTF8 = (b'\xff', b'\xfe', b'\x80', b'\xbf', b'\xc0\x80', b'\xc1\xbf', b'\xe0\x80\x80', b'\xed\xa0\x80',
				b'\xed\xbf\xbf', b'\xf4\x90\x80\x80', b'\xf5\x80\x80\x80', b'\xf8\x88\x80\x80\x80',
				b'\xe2\x82', b'\xf0\x9f\x98', b'\xc3', b'\xc3(', b'\xe2(\xa1')


def cat_utf8(g, topic):
	r = g.r
	v = bytearray(valid_movie_like(g) if topic == 'movies' else valid_rating_like(g))
	bad = r.choice(INVALID_UTF8)
	where = r.randrange(3)
	if where == 0:		# inside a string
		quotes = [i for i, c in enumerate(v) if c == 0x22]
		pos = r.choice(quotes) + 1
	elif where == 1:
		pos = r.randrange(len(v) + 1)
	else:
		pos = len(v)
	v[pos:pos] = bad
	return k_id(g), bytes(v), 'value is not valid UTF-8'


def cat_nul(g, topic):
	r = g.r
	v = bytearray(valid_movie_like(g) if topic == 'movies' else valid_rating_like(g))
	for _ in range(r.choice((1, 1, 2, 5))):
		pos = r.choice((0, len(v), r.randrange(len(v) + 1)))
		v[pos:pos] = b'\x00'
	if r.random() < 0.2:		# NUL wins over invalid UTF-8
		pos = r.randrange(len(v) + 1)
		v[pos:pos] = r.choice(INVALID_UTF8)
	if r.random() < 0.1:
		v = bytearray(b'\x00' * r.randrange(1, 100))
	return k_id(g), bytes(v), 'value contains a NUL byte'


NOT_OBJECT = ('[]', '[{"id": 1, "title": "x", "rating": 1}]', '"str"', '"{\\"id\\": 1}"', '123', '-1.5e3',
			  '0', 'true', 'false', 'null', ' [ 1 , 2 ] ', '\n"x"\n', '[[[[]]]]', '""')


def cat_not_object(g, topic):
	return k_id(g), g.choice(NOT_OBJECT).encode(), 'value is not a JSON object'


def invalid_json_samples(g, topic):
	r = g.r
	if topic == 'movies':
		base = '{"id": 5, "title": %s, "release_year": %s}'
		title, year = '"T"', '1999'
		return [
			'{"id": NaN, "title": "T"}', '{"id": Infinity, "title": "T"}', '{"id": -Infinity, "title": "T"}',
			"{'id': 5, 'title': 'T'}", '{"id": 5, "title": "T",}', '{"id": 5, "title": "T"} // c',
			'/* c */ {"id": 5, "title": "T"}', '{id: 5, "title": "T"}', '{"id" 5, "title": "T"}',
			'{"id": 5 "title": "T"}', '{"id": 05, "title": "T"}', '{"id": +5, "title": "T"}',
			'{"id": .5, "title": "T"}', '{"id": 5., "title": "T"}', '{"id": 0x5, "title": "T"}',
			'{"id": 5, "title": "T"}{}', '{"id": 5, "title": "T"} x', '{"id": 5, "title": "T"}}',
			'{"id": 5, "title": "T"]', '{"id": 5, "title": "T"', '}', '{', '{]', ' ', '\n\t \r',
			base % ('"a\\u0000b"', year), base % ('"\\ud800"', year), base % ('"\\udc00x"', year),
			base % ('"\\ud800\\ud800"', year), base % ('"\\ud83d"', year), base % ('"\\ud83dx\\ude00"', year),
			base % ('"\\x41"', year), base % ('"\\a"', year), base % ('"\\u12"', year),
			base % ('"\\u12G4"', year), base % ('"\\U0041"', year), base % ('"a\tb"', year),
			base % ('"a\nb"', year), base % ('"a\x01b"', year), base % ('"a\x1fb"', year),
			base % ("'T'", year), base % ('"T" "U"', year), base % (title, '1_999'), base % (title, '19x'),
			base % (title, 'tru'), base % (title, 'True'), base % (title, 'NULL'), base % (title, 'nul'),
			base % (title, '1e'), base % (title, '1e+'), base % (title, '-'), base % (title, '--1'),
			base % (title, '1.2.3'), base % (title, '1999é'), '\ufeff' + base % (title, year),
			base % ('"unterminated', year), '{"\\u0000": 1, "id": 5, "title": "T"}',
			'{"id": 5, "title": "T", "x": [1, 2}', '{"id": 5, "title": "T", "x": {"a"}}',
			'{"id": 5, "title": "T", "x": [,]}', '{"id": 5, "title": "T", "": }', '[1, 2',
			'{"id": 5, "title": "T", "x": undefined}', '{"id": 5 , , "title": "T"}',
		]
	base = '{"id": 5, "rating": %s, "rated_at": %s}'
	rating, at = '8.25', '"2026-11-25T10:00:00Z"'
	return [
		base % ('NaN', at), base % ('Infinity', at), base % ('-Infinity', at), base % ('+Infinity', at),
		base % ('nan', at), base % ('inf', at), base % ('-inf', at), base % ('1e', at), base % ('.5', at),
		base % ('5.', at), base % ('08', at), base % ('-08.5', at), base % ('+8', at), base % ('0x10', at),
		base % ('8,5', at), base % ('1e400e', at), base % ('8.5f', at), base % ('1_000', at),
		base % (rating, '"2026-11-25T10:00:00Z'), base % (rating, '2026-11-25'), base % (rating, "'now'"),
		base % (rating, '"\\u0000"'), base % (rating, '"\\udfff"'), base % (rating, 'now()'),
		'{"id": 5, "rating": 8.25,}', '{"id": 5, "rating": 8.25', '{"id": 5; "rating": 8.25}',
		"{'id': 5, 'rating': 8.25}", '{"id": 5, "rating": 8.25}\x00'.replace('\x00', ' x'),
		'{"id": 5, "rating": 8.25} {"id": 6, "rating": 1}', '\ufeff{"id": 5, "rating": 8.25}', ' ', '{',
		'{"id": 5, "rating": 8.25, "c": /* x */ 1}', '{"id": 5, "rating": 8.25, "x": "a\rb"}',
	]


def cat_invalid_json(g, topic):
	v = g.choice(invalid_json_samples(g, topic)).encode('utf-8')
	return k_id(g), v, 'value is not valid JSON'


def cat_nan_inf(g, topic):
	r = g.r
	name = 'rating' if topic == 'ratings' else r.choice(('id', 'release_year'))
	token = r.choice(('NaN', 'Infinity', '-Infinity', 'nan', 'inf', '-inf', '+Infinity', 'Inf', 'NAN'))
	return k_id(g), with_field(g, topic, name, token, drop=('release_year',) if name == 'release_year' else ()), \
		'value is not valid JSON'


def cat_empty(g, topic):
	# a non-NULL, zero-length value: needs a key (kcat skips a bare empty input)
	return g.choice((b'5', b'', b'x')), b'', 'value is empty'


def cat_oversize(g, topic):
	r = g.r
	n = r.choice((MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 2, 70000, 100000, 250000))
	kind = r.randrange(5)
	if kind == 0:		# otherwise a good message
		pad = n - len(with_field(g, topic, 'pad', '""'))
		v = with_field(g, topic, 'pad', '"' + 'p' * max(pad, 0) + '"')
	elif kind == 1:		# random bytes (with NULs and invalid UTF-8)
		v = bytes(r.randrange(256) for _ in range(min(n, 70000))) + b'\xff' * max(0, n - 70000)
	elif kind == 2:		# deep
		v = b'[' * n
	elif kind == 3:		# a long title
		v = with_field(g, 'movies', 'title', '"' + 'é' * (n // 2) + '"')
	else:				# whitespace around a small message
		v = b' ' * (n - 40) + b'{"id": 1, "title": "x", "rating": 1}'
	if len(v) <= MAX_MESSAGE_BYTES:
		v += b' ' * (MAX_MESSAGE_BYTES + 1 - len(v))
	return k_id(g), v, 'value of %d bytes is larger than pgkafka_join.max_message_bytes (%d)' % (
		len(v), MAX_MESSAGE_BYTES)


def cat_oversize_huge(g, topic):
	"""Larger than the broker's and librdkafka's 1 MB defaults."""
	n = g.r.choice((1200000, 1500000))
	v = with_field(g, topic, 'pad', '"' + 'P' * n + '"')
	return k_id(g), v, 'value of %d bytes is larger than pgkafka_join.max_message_bytes (%d)' % (
		len(v), MAX_MESSAGE_BYTES)


BAD_TOMBSTONE_KEYS = (None, b'', b'abc', b' 5', b'5 ', b'+5', b'5.0', b'1e3', b'-', b'--5', b'0x10',
					  b'99999999999999999999', b'9223372036854775808', b'-9223372036854775809',
					  b'5\x00', b'\x005', b'\xff', b'\xd9\xa1\xd9\xa2', b'5\n', b'\t5', b'{"id": 5}', b'null')


def cat_tombstone(g, topic):
	if topic == 'movies':
		return g.choice(BAD_TOMBSTONE_KEYS), None, 'tombstone key is not a movie id'
	key = g.choice((b'5', b'1', None, b'abc', b'\xff', b'', b'-9223372036854775808'))
	return key, None, 'a rating cannot be a tombstone'


def cat_rating_missing(g, topic):
	return k_id(g), with_field(g, 'ratings', 'rating', g.choice((None, 'null'))), 'rating is missing'


def cat_rating_type(g, topic):
	raw = g.choice(('"8.2"', '"NaN"', '"Infinity"', '"-Infinity"', '""', 'true', 'false', '[]', '[8.2]',
					'{}', '{"rating": 1}', '"8"', '"1e400"'))
	return k_id(g), with_field(g, 'ratings', 'rating', raw), 'rating is not a number'


RATING_OUT_OF_RANGE = ('1e400', '-1e400', '1e309', '-1.8e308', '1.7976931348623159e308', '2e-400', '-2e-400',
					   '2e-324', '1e-999999', '1' + '0' * 400, '-' + '9' * 400, '0.' + '0' * 400 + '1',
					   '123456789e999999999999')


def cat_rating_range(g, topic):
	return k_id(g), with_field(g, 'ratings', 'rating', g.choice(RATING_OUT_OF_RANGE)), 'rating is out of range'


RATED_AT_INVALID = ('true', 'false', '[]', '{}', '["2026-11-25T10:00:00Z"]', '"yesterday"', '"now"', '"epoch"',
					'"infinity"', '"2026-11-25"', '"2026-11-25T10:00:00"', '"2026-11-25T10:00Z"',
					'"1795600000000"', '1.7956e12', '1795600000000.0', '1e3', '-0.5',
					'"2026-11-25T10:00:00+0200"', '"2026-11-25T10:00:00 UTC"', '"2026-11-25T10:00:00Z "',
					'" 2026-11-25T10:00:00Z"', '"2026-11-25T10:00:00+02"', '"2026-11-25T10:00:00.Z"',
					'"2026-11-25T10:00:00.' + '1' * 50 + 'Z"', '"2026-02-30T00:00:00Z"', '"2026-02-29T00:00:00Z"',
					'"2026-13-01T00:00:00Z"', '"2026-00-10T00:00:00Z"', '"2026-11-00T00:00:00Z"',
					'"2026-11-31T00:00:00Z"', '"2026-11-25T25:00:00Z"', '"2026-11-25T10:60:00Z"',
					'"2026-11-25T10:00:61Z"', '"2026-11-25T10:00:00+16:00"', '"2026-11-25T10:00:00+01:60"',
					'"2026-11-25T10:00:00+99:99"', '"2026-11-25X10:00:00Z"', '"2026/11/25T10:00:00Z"',
					'"26-11-25T10:00:00Z"', '"+2026-11-25T10:00:00Z"', '"2026-11-25T10:00:00Europe/Paris"',
					'"2026-11-25T10:00:00 PST"', '"2026-11-25T10:00:00+02:00[Europe/Paris]"',
					'"Wed, 25 Nov 2026 10:00:00 GMT"', '"2026-W48-3T10:00:00Z"', '"2026-330T10:00:00Z"',
					'"２０２６-11-25T10:00:00Z"', '"2026-11-25T10:00:00\\u005a"'.replace('\\u005a', 'ZZ'),
					'"1900-02-29T00:00:00Z"', '""', '"\\u0032026-11-25T10:00:00Q"')
RATED_AT_OUT_OF_RANGE = ('"1969-12-31T23:59:59Z"', '"1969-12-31T23:59:59.999999Z"', '"1970-01-01T00:30:00+01:00"',
						 '"1000-01-01T00:00:00Z"', '"0001-01-01T00:00:00Z"', '"9999-12-31T23:59:59-00:01"',
						 '"9999-12-31T23:00:00-01:00"', '"9999-12-31T20:00:00-14:00"', '-1', '-1000',
						 '253402300800000', '253402300800001', '9223372036854775', '9223372036854775807',
						 '-9223372036854775808', '99999999999999999999', '-99999999999999999999')


def cat_rated_at_invalid(g, topic):
	return k_id(g), with_field(g, 'ratings', 'rated_at', g.choice(RATED_AT_INVALID)), \
		'rated_at is not a valid timestamp'


def cat_rated_at_range(g, topic):
	return k_id(g), with_field(g, 'ratings', 'rated_at', g.choice(RATED_AT_OUT_OF_RANGE)), \
		'rated_at is out of range'


def cat_mutation(g, topic):
	"""Random byte edits of a valid message; the classifier decides."""
	r = g.r
	v = bytearray(valid_movie_like(g) if topic == 'movies' else valid_rating_like(g))
	for _ in range(r.choice((1, 1, 1, 2, 3, 8))):
		op = r.randrange(6)
		pos = r.randrange(len(v) + 1)
		if op == 0 and pos < len(v):		# replace by a random byte
			v[pos] = r.randrange(256)
		elif op == 1:						# insert a JSON-significant byte
			v[pos:pos] = r.choice((b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'-', b'0', b'e', b' ', b'\n'))
		elif op == 2 and pos < len(v):		# delete a run
			del v[pos:pos + r.randrange(1, 6)]
		elif op == 3:						# duplicate a run
			end = min(len(v), pos + r.randrange(1, 20))
			v[pos:pos] = v[pos:end]
		elif op == 4 and pos < len(v):		# flip a bit
			v[pos] ^= 1 << r.randrange(8)
		elif op == 5 and pos < len(v) and 0x30 <= v[pos] <= 0x39:	# another digit
			v[pos] = 0x30 + r.randrange(10)
	return k_id(g), bytes(v), None


def cat_no_timestamp(g, topic):
	"""Sent without Kafka time stamp (an old message format)."""
	r = g.r
	mid = r.randrange(1, 600)
	if r.random() < 0.8:
		raw = None if r.random() < 0.7 else 'null'
		v = with_field(g, 'ratings', 'rated_at', raw)
		reason = 'rated_at is missing and the message has no timestamp'
	else:
		v = with_field(g, 'ratings', 'rating', '"x"')
		reason = 'rating is not a number'
	return str(mid).encode(), v, reason, True


COMMON = [
	(cat_truncated, 700), (cat_id_type, 300), (cat_id_missing, 200), (cat_id_range, 150),
	(cat_duplicate, 300), (cat_deep, 200), (cat_utf8, 400), (cat_nul, 300), (cat_not_object, 200),
	(cat_invalid_json, 500), (cat_nan_inf, 150), (cat_empty, 40), (cat_oversize, 50),
	(cat_oversize_huge, 2), (cat_tombstone, 150), (cat_mutation, 1400),
]
BAD = {
	'movies': COMMON + [(cat_title_missing, 150), (cat_title_type, 200), (cat_title_long, 100),
						(cat_year_type, 200), (cat_year_range, 150)],
	'ratings': COMMON + [(cat_rating_missing, 200), (cat_rating_type, 250), (cat_rating_range, 200),
						 (cat_rated_at_invalid, 300), (cat_rated_at_range, 200), (cat_no_timestamp, 120)],
}


#
# Generation
#

def sha(b):
	return '' if b is None else hashlib.sha256(b).hexdigest()


class Msg:
	__slots__ = ('topic', 'key', 'value', 'category', 'good', 'outcome', 'reason', 'what',
				 'partition', 'sort', 'published', 'no_timestamp')

	def __init__(self, topic, key, value, category, good, no_timestamp):
		self.topic = topic
		self.key = key
		self.value = value
		self.category = category
		self.good = good
		self.published = None
		self.no_timestamp = no_timestamp
		if no_timestamp and (not key or not value):
			raise Uncertain('a message without time stamp needs a key and a value')
		if value == b'' and key is None:
			self.key = key = b''		# kcat skips an empty input without a key
		self.outcome, x = classify(topic, key, value, no_timestamp)
		if self.outcome == 'accepted':
			self.what, self.reason = x, None
		else:
			self.what, self.reason = None, x
		for d in (MSG_DELIM, KEY_DELIM):
			if (value and d in value) or (key and d in key):
				raise Uncertain('contains a delimiter')


def generate(outdir, partitions, now, dev):
	global NOW_US
	r = random.Random(SEED)
	g = Gen(r, now)
	now_us = now * 1000000
	NOW_US = now_us
	msgs = {'movies': [], 'ratings': []}

	def add(topic, key, value, category, good, intended=None, sort=None, partition=None, no_timestamp=False):
		"""Classify one message; None if it must be dropped."""
		try:
			m = Msg(topic, key, value, category, good, no_timestamp)
		except Uncertain:
			return None
		if good and m.outcome != 'accepted':
			sys.exit('generator: good %s message rejected (%s): %r' % (category, m.reason, value[:200]))
		if not good:
			if m.outcome == 'accepted':
				if intended is not None:
					sys.exit('generator: bad %s message accepted: %r' % (category, value[:200]))
				return None
			if intended is not None and m.reason != intended:
				sys.exit('generator: %s: classifier says "%s", built for "%s": %r'
						 % (category, m.reason, intended, (value or b'')[:300]))
		if sort is None and (m.value == b'' or m.key == b'' or no_timestamp):
			# in a few clusters, so that few kcat runs are needed (empty
			# keys and values cannot go in a run that sends tombstones,
			# messages without time stamp need a run of their own)
			sort = (r.randrange(1, 8) + (0.5 if no_timestamp else 0)) / 8 + r.random() / 1e7
		m.sort = r.random() if sort is None else sort
		m.partition = r.randrange(partitions) if partition is None else partition
		if m.value is None and m.key == b'':
			m.key = None		# sent with -Z: an empty key is NULL
		msgs[topic].append(m)
		return m

	def part_of(mid):
		return mid % partitions

	# -- good movies: each id in the partition of its id, in order
	special_ids = [0, -7, INT64_MIN, INT64_MAX, 123456789012345, 42424242]
	ids = list(range(1, 501)) + special_ids
	catalog = {}
	for mid in ids:
		x = r.random()
		events = []
		title, year = g.title(), r.choice((None, 1988, 2001, 0, 9999, 1895, 2026))
		events.append(('put', title, year))
		if x < 0.2:		# updated
			for _ in range(r.randrange(1, 4)):
				events.append(('put', g.title(), r.choice((None, 1999, 2020))))
		elif x < 0.25:		# deleted
			events.append(('delete',))
		elif x < 0.28:		# deleted, then back
			events.append(('delete',))
			events.append(('put', g.title(), 2024))
		sorts = sorted(r.random() for _ in range(len(events)))
		for ev, s in zip(events, sorts):
			if ev[0] == 'put':
				v = good_movie_value(g, mid, ev[1], ev[2])
				key = r.choice((str(mid).encode(), str(mid).encode(), None, b'not the id'))
				if len(events) == 1 and r.random() < 0.04:		# a single event: goes anywhere
					m = add('movies', key or b'k', v, 'good movie (no Kafka time stamp)', True,
							partition=part_of(mid), no_timestamp=True)
				else:
					m = add('movies', key, v, 'good movie' if len(events) == 1 else 'good movie (updated)',
							True, sort=s, partition=part_of(mid))
				assert m is not None
				catalog[mid] = (ev[1], ev[2])
			else:
				key = r.choice((str(mid), '0' * r.randrange(1, 4) + str(mid) if mid > 0 else str(mid)))
				add('movies', key.encode(), None, 'good tombstone', True, sort=s, partition=part_of(mid))
				del catalog[mid]

	# edge cases that must be accepted
	def edge_movie(mid, value, title, year, category='good movie (edge)', key=None):
		m = add('movies', key if key is not None else str(mid).encode(), value, category, True,
				partition=part_of(mid))
		assert m is not None and m.what == ('movie', mid, title, year), (m.what, value[:100])
		catalog[mid] = (title, year)

	base = 1000
	edge_movie(base + 1, b'{"id": 1001, "title": "' + b'a' * MAX_TITLE_BYTES + b'"}', 'a' * MAX_TITLE_BYTES, None)
	edge_movie(base + 2, ('{"id": "1002", "title": "' + '\\u00e9' * (MAX_TITLE_BYTES // 2) + '"}').encode(),
			   'é' * (MAX_TITLE_BYTES // 2), None)
	edge_movie(base + 3, ('{"id": 1003, "title": "' + '€' * (MAX_TITLE_BYTES // 3) + '", "releaseYear": 0}').encode(),
			   '€' * (MAX_TITLE_BYTES // 3), 0)
	edge_movie(base + 4, b'{"id": "\\u0031\\u0030\\u0030\\u0034", "\\u0074itle": "esc\\"aped\\\\ \\/ \\b\\f\\n\\r\\t",'
			   b' "release_year": -0}', 'esc"aped\\ / \b\f\n\r\t', 0)
	edge_movie(base + 5, b'{"id": 1005, "title": "' + b'[' * 70 + b'{' * 70 + b'", "release_year": 9999}',
			   '[' * 70 + '{' * 70, 9999)
	v = b'{"id": 1006, "title": "deep but not too deep", "x": ' + b'[' * (MAX_NESTING - 1) + b']' * (MAX_NESTING - 1) + b'}'
	edge_movie(base + 6, v, 'deep but not too deep', None)
	v = b'{"id": 1007, "title": "exactly the limit", "pad": ""}'
	v = v.replace(b'"pad": ""', b'"pad": "' + b'x' * (MAX_MESSAGE_BYTES - len(v)) + b'"')
	assert len(v) == MAX_MESSAGE_BYTES
	edge_movie(base + 7, v, 'exactly the limit', None)
	edge_movie(base + 8, b'{"id": 1008, "title": "dup elsewhere", "x": {"id": 1, "id": 2}, "y": 1, "y": 2,'
			   b' "release_year": null}', 'dup elsewhere', None)
	edge_movie(base + 9, b'{"id": 1009, "title": "\\ud83d\\ude00 \\u2028 \xf0\x9f\x98\x80", "release_year": 2001,'
			   b' "big": 1e999, "small": -1e-999}', '😀 \u2028 😀', 2001)
	edge_movie(base + 10, b' \t\r\n{"release_year":1,"title":"","id":1010}\n\n', '', 1, key=b'')
	edge_movie(base + 11, b'{"id": 1011, "title": "many fields", ' +
			   b', '.join(b'"f%d": %d' % (i, i) for i in range(3000)) + b'}', 'many fields', None)
	# tombstones of ids that never existed: accepted, no effect
	for mid in (900001, 900002, -900003, 0o7777):
		add('movies', str(mid).encode(), None, 'good tombstone (no such movie)', True, partition=part_of(mid))
		catalog.pop(mid, None)

	# -- bad movies and bad ratings
	for topic in ('movies', 'ratings'):
		for fn, count in BAD[topic]:
			made = 0
			tries = 0
			while made < count:
				tries += 1
				if tries > count * 20:
					sys.exit('generator: cannot make enough %s messages for %s' % (fn.__name__, topic))
				res = fn(g, topic)
				key, value, reason = res[:3]
				cat = fn.__name__[4:]
				if add(topic, key, value, cat, False, intended=reason, no_timestamp=res[3:] == (True,)) is not None:
					made += 1

	# -- good ratings, produced after every movie is stored
	rated_movies = sorted(catalog)
	deleted = sorted(set(ids) - set(catalog))
	never = [5000 + i for i in range(50)] + [-5000 - i for i in range(10)]
	edge_ratings = ['0e-400', '5e-324', '1e-320', '-2.5e-310', '2.2250738585072014e-308', '1.7976931348623157e308',
					'-1.7976931348623157e308', '1e22', '123456789.125', '-3.5', '1' + '0' * 300]
	used_ratings = set()
	q = 0
	n_good = 2600
	for i in range(n_good + len(edge_ratings)):
		if i < len(edge_ratings):
			text = edge_ratings[i]
			value = float(text)
		else:
			q += 1
			while q / 4 in used_ratings:
				q += 1
			text = g.choice(exact_decimal_forms(q))
			value = q / 4
		assert value not in used_ratings, text
		used_ratings.add(value)
		x = r.random()
		if x < 0.8:
			mid = r.choice(rated_movies)
		elif x < 0.9:
			mid = r.choice(deleted)
		else:
			mid = r.choice(never)
		x = r.random()
		far = False
		if x < 0.65:			# the Kafka timestamp
			at = None
		elif x < 0.8:			# inside the window
			us = now_us - r.randrange(3600, 10 * 86400) * 1000000 - r.choice((0, 0, r.randrange(1000000)))
			at = rfc3339_text(g, us) if r.random() < 0.6 else None
			at = json.dumps(at) if at else str(us // 1000)
		elif x < 0.95:			# too old
			us = r.choice((0, 86400 * 1000000, 946684800 * 1000000, now_us - 40 * 86400 * 1000000,
						   now_us - 400 * 86400 * 1000000))
			at = json.dumps(rfc3339_text(g, us)) if r.random() < 0.7 else str(us // 1000)
		else:					# the far future: accepted without a Kafka time stamp
			at = r.choice(('"9999-12-31T23:59:59.999999Z"', '253402300799999', '"9999-12-31T23:59:59+00:00"',
						   '"9999-12-31 10:00:00-13:59"'))
			far = True
		v = g.obj_text(rating_obj(g, mid, text, at))
		if at is not None and (far or r.random() < 0.05):
			m = add('ratings', str(mid).encode(), v, 'good rating (no Kafka time stamp)', True, no_timestamp=True)
		else:
			m = add('ratings', str(mid).encode() if r.random() < 0.9 else None, v, 'good rating', True)
		assert m is not None
		_, got_mid, got_rating, got_at = m.what
		assert got_mid == mid and got_rating == value, (m.what, v)
		inside = got_at is None or got_at >= now_us - 28 * 86400 * 1000000
		if got_at is not None and abs(got_at - (now_us - 28 * 86400 * 1000000)) < 2 * 86400 * 1000000:
			sys.exit('generator: rated_at too close to the window edge')
		m.published = mid in catalog and inside
	# ratings dated too far ahead of their Kafka time stamp: rejected
	for i in range(40):
		mid = r.choice(rated_movies)
		us = now_us + r.choice((2 * 86400, 40 * 86400, 400 * 86400)) * 1000000
		at = r.choice((json.dumps(rfc3339_text(g, us)), str(us // 1000), '"9999-12-31T23:59:59Z"'))
		add('ratings', str(mid).encode(), g.obj_text(rating_obj(g, mid, '5', at)),
			'rating dated too far ahead', False, intended=FUTURE_REASON)
	# a good rating of exactly the size limit
	v = b'{"id": 1, "rating": 77777.25, "pad": ""}'
	v = v.replace(b'"pad": ""', b'"pad": "' + b'y' * (MAX_MESSAGE_BYTES - len(v)) + b'"')
	m = add('ratings', b'1', v, 'good rating', True)
	assert len(v) == MAX_MESSAGE_BYTES and m.what == ('rating', 1, 77777.25, None)
	m.published = 1 in catalog

	# -- order and kcat runs
	os.makedirs(outdir, exist_ok=True)
	plan = []
	expected = []
	summary = {'produced': {}, 'good': {}, 'bad': {}, 'categories': {}, 'reasons': {},
			   'accepted_ratings': 0, 'published': 0, 'partitions': {}}
	for topic in ('movies', 'ratings'):
		ms = sorted(msgs[topic], key=lambda m: m.sort)
		summary['produced'][topic] = len(ms)
		summary['good'][topic] = sum(m.good for m in ms)
		summary['bad'][topic] = sum(not m.good for m in ms)
		cats = collections.Counter(('good: ' if m.good else 'bad: ') + m.category for m in ms)
		summary['categories'][topic] = dict(sorted(cats.items()))
		summary['reasons'][topic] = dict(sorted(collections.Counter(
			reason_class(m.reason) for m in ms if m.reason).items()))
		for p in range(partitions):
			pms = [m for m in ms if m.partition == p]
			summary['partitions']['%s/%d' % (topic, p)] = len(pms)
			runs = []
			for m in pms:
				# z: tombstones (NULL value); n: empty keys or empty values;
				# t: no time stamp, and only those
				need = 'z' if m.value is None else ('n' if m.value == b'' or m.key == b'' else None)
				if m.no_timestamp:
					need = 't'
				if runs and (runs[-1][0] == need or
							 ('t' not in (need, runs[-1][0]) and (need is None or runs[-1][0] is None))):
					if runs[-1][0] is None:
						runs[-1][0] = need
					runs[-1][1].append(m)
				else:
					runs.append([need, [m]])
			for n, (mode, rms) in enumerate(runs):
				fname = '%s.%d.%03d.bin' % (topic, p, n)
				mode = mode or 'n'
				with open(os.path.join(outdir, fname), 'wb') as f:
					for m in rms:
						if m.key is not None or m.value in (None, b''):
							f.write((m.key or b'') + KEY_DELIM)
						f.write((m.value or b'') + MSG_DELIM)
				plan.append('%s %d %s %s' % (topic, p, mode, fname))
			for offset, m in enumerate(pms):
				e = {'topic': topic, 'partition': p, 'offset': offset, 'category': m.category,
					 'good': m.good, 'outcome': m.outcome, 'reason': m.reason, 'no_timestamp': m.no_timestamp,
					 'key_null': m.key is None, 'key_sha': sha(m.key),
					 'payload_null': m.value is None,
					 'payload_len': -1 if m.value is None else min(len(m.value), MAX_MESSAGE_BYTES),
					 'payload_sha': sha(None if m.value is None else m.value[:MAX_MESSAGE_BYTES])}
				if m.what and m.what[0] == 'rating':
					e['movie_id'], e['rating'], e['rated_at_us'] = m.what[1:]
					e['published'] = m.published
					summary['accepted_ratings'] += 1
					summary['published'] += bool(m.published)
					if m.published:
						e['title'], e['release_year'] = catalog[m.what[1]]
				expected.append(e)
				if dev:
					m_dev.append({'topic': topic, 'partition': p, 'offset': offset,
								  'key': None if m.key is None else m.key.hex(),
								  'value': None if m.value is None else m.value.hex(),
								  'reason': m.reason})
	with open(os.path.join(outdir, 'produce.plan'), 'w') as f:
		f.write('\n'.join(plan) + '\n')
	with open(os.path.join(outdir, 'expected.jsonl'), 'w') as f:
		for e in expected:
			f.write(json.dumps(e) + '\n')
	with open(os.path.join(outdir, 'movies.json'), 'w') as f:
		json.dump(sorted([mid, t, y] for mid, (t, y) in catalog.items()), f)
	summary['movies'] = len(catalog)
	with open(os.path.join(outdir, 'summary.json'), 'w') as f:
		json.dump(summary, f, indent=1)
	if dev:
		with open(os.path.join(outdir, 'messages.jsonl'), 'w') as f:
			for d in m_dev:
				f.write(json.dumps(d) + '\n')


m_dev = []


#
# Checks
#

class Checker:
	def __init__(self):
		self.failed = 0

	def check(self, ok, msg, details=()):
		if ok:
			print('ok - ' + msg)
		else:
			self.failed += 1
			print('not ok - ' + msg)
			for d in list(details)[:20]:
				print('#   ' + str(d))


def read_tsv(path, columns):
	with open(path, encoding='utf-8') as f:
		rows = [line.rstrip('\n').split('\t', columns - 1) for line in f if line.strip('\n')]
	for row in rows:
		if len(row) != columns:
			sys.exit('%s: bad line %r' % (path, row))
	return rows


def reason_class(reason):
	"""The reason, with the size of an oversized value left out."""
	return re.sub(r'^value of [0-9]+ bytes', 'value of N bytes', reason)


def check(outdir, t0, t1):
	c = Checker()
	d = lambda name: os.path.join(outdir, name)
	with open(d('summary.json')) as f:
		summary = json.load(f)
	expected = [json.loads(line) for line in open(d('expected.jsonl'))]
	pos = lambda e: (e['topic'], e['partition'], e['offset'])

	# rejected messages: each bad message exactly once, as expected
	rows = read_tsv(d('rejected.tsv'), 9)
	actual = {}
	dups = []
	for topic, p, o, reason, key_null, key_sha, payload_null, payload_len, payload_sha in rows:
		k = (topic, int(p), int(o))
		if k in actual:
			dups.append(k)
		actual[k] = {'reason': reason, 'key_null': key_null == 't', 'key_sha': key_sha,
					 'payload_null': payload_null == 't', 'payload_len': int(payload_len),
					 'payload_sha': payload_sha}
	exp_rej = {pos(e): e for e in expected if e['outcome'] == 'rejected'}
	c.check(not dups and len(rows) == len(exp_rej),
			'rejected_messages holds %d rows, %d expected, no position twice' % (len(rows), len(exp_rej)), dups)
	missing = [k for k in exp_rej if k not in actual]
	extra = [(k, actual[k]['reason']) for k in actual if k not in exp_rej]
	c.check(not missing and not extra, 'every bad message is rejected, and nothing else',
			['missing %s %s: %s' % (k, exp_rej[k]['category'], exp_rej[k]['reason']) for k in missing] +
			['unexpected %s: %s' % x for x in extra])
	wrong = []
	for k, e in exp_rej.items():
		a = actual.get(k)
		if a is not None and (a['reason'] != e['reason'] or not a['reason']):
			wrong.append('%s %s: expected "%s", got "%s"' % (k, e['category'], e['reason'], a['reason']))
	c.check(not wrong, 'every rejected message has the expected, non-empty reason', wrong)
	wrong = []
	for k, e in exp_rej.items():
		a = actual.get(k)
		if a is None:
			continue
		for f in ('key_null', 'key_sha', 'payload_null', 'payload_len', 'payload_sha'):
			if a[f] != e[f]:
				wrong.append('%s %s: %s expected %r, got %r' % (k, e['category'], f, e[f], a[f]))
	c.check(not wrong, 'every rejected message keeps its raw key and payload (the first %d bytes of an '
			'oversized one)' % MAX_MESSAGE_BYTES, wrong)
	exp_counts = collections.Counter((e['topic'], e['reason']) for e in exp_rej.values())
	act_counts = collections.Counter((k[0], a['reason']) for k, a in actual.items())
	c.check(exp_counts == act_counts, 'rejection reasons are counted as expected',
			['%s "%s": expected %d, got %d' % (t, r, exp_counts[(t, r)], act_counts[(t, r)])
			 for t, r in sorted(set(exp_counts) | set(act_counts)) if exp_counts[(t, r)] != act_counts[(t, r)]])
	oversize = [a for k, a in actual.items() if a['reason'].startswith('value of ')]
	c.check(oversize and all(a['payload_len'] == MAX_MESSAGE_BYTES for a in oversize),
			'%d oversized messages rejected, each with a stored payload of %d bytes'
			% (len(oversize), MAX_MESSAGE_BYTES))

	# the catalog
	with open(d('movies.json')) as f:
		exp_movies = sorted(tuple(x) for x in json.load(f))
	act_movies = sorted((int(i), json.loads(t), None if y == '' else int(y))
						for i, t, y in read_tsv(d('movies.tsv'), 3))
	c.check(exp_movies == act_movies, 'movies: %d stored, as expected (updates, tombstones, edge cases)'
			% len(act_movies),
			['expected %r' % (x,) for x in sorted(set(exp_movies) - set(act_movies))][:10] +
			['got %r' % (x,) for x in sorted(set(act_movies) - set(exp_movies))][:10])

	# ratings stored, joined or not
	exp_rat = {(e['partition'], e['offset']): e for e in expected
			   if e['topic'] == 'ratings' and e['outcome'] == 'accepted'}
	act_rat = {}
	for p, o, mid, rating, at, joined in read_tsv(d('ratings.tsv'), 6):
		act_rat[(int(p), int(o))] = (int(mid), float(rating), int(at), joined == 't')
	wrong = []
	for k, e in exp_rat.items():
		a = act_rat.get(k)
		if a is None:
			wrong.append('missing rating at %s' % (k,))
			continue
		at_ok = (a[2] == e['rated_at_us'] if e['rated_at_us'] is not None
				 else t0 * 1000000 <= a[2] <= t1 * 1000000)
		if a[0] != e['movie_id'] or a[1] != e['rating'] or not at_ok or a[3] != e['published']:
			wrong.append('rating at %s: expected %s, got %s' % (
				k, (e['movie_id'], e['rating'], e['rated_at_us'], e['published']), a))
	wrong += ['unexpected rating at %s: %s' % (k, a) for k, a in act_rat.items() if k not in exp_rat]
	c.check(not wrong, 'ratings: %d stored (%d expected), each with its movie, value, time and joined flag'
			% (len(act_rat), len(exp_rat)), wrong)

	# results in PostgreSQL
	exp_pub = {k: e for k, e in exp_rat.items() if e['published']}
	res = read_tsv(d('rated_movies.tsv'), 7)
	act_res = collections.Counter((int(p), int(o)) for p, o, *_ in res)
	wrong = ['result for %s %d times' % (k, n) for k, n in act_res.items() if n != 1 or k not in exp_pub]
	wrong += ['no result for %s' % (k,) for k in exp_pub if k not in act_res]
	for p, o, mid, title, year, rating, at in res:
		e = exp_pub.get((int(p), int(o)))
		if e and (int(mid), json.loads(title), None if year == '' else int(year), float(rating)) != \
				(e['movie_id'], e['title'], e['release_year'], e['rating']):
			wrong.append('result for %s,%s: %s' % (p, o, (mid, title, year, rating)))
	c.check(not wrong, 'rated_movies: %d results, one per rating to publish (%d)' % (len(res), len(exp_pub)),
			wrong)

	# the output topic, read_committed
	out = read_tsv(d('output.tsv'), 5)
	by_value = collections.defaultdict(list)
	for e in exp_pub.values():
		by_value[(e['movie_id'], e['rating'])].append(e)
	wrong = []
	ids = collections.Counter()
	for p, o, headers, key, value in out:
		m = re.search(r'pgkafka_join\.id=([0-9]+)', headers)
		ids[m.group(1) if m else None] += 1
		v = json.loads(value)
		es = by_value.get((v['id'], float(v['rating'])))
		if not es:
			wrong.append('unexpected record %s:%s %s %s' % (p, o, key, value[:200]))
			continue
		e = es.pop()
		want_at = None if e['rated_at_us'] is None else iso_utc(e['rated_at_us'])
		ok = (key == str(e['movie_id']) and v['title'] == e['title'] and v['release_year'] == e['release_year']
			  and set(v) == {'id', 'title', 'release_year', 'rating', 'rated_at'})
		if want_at is not None:
			ok = ok and v['rated_at'] == want_at
		else:
			ok = ok and re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z', v['rated_at']) is not None
		if not ok:
			wrong.append('record %s:%s %s %s, expected %s' % (p, o, key, value[:200], (e['title'][:50], want_at)))
	left = [e for es in by_value.values() for e in es]
	wrong += ['missing record for rating at %s,%s' % (e['partition'], e['offset']) for e in left]
	c.check(not wrong and len(out) == len(exp_pub),
			'output topic (read_committed): %d records, %d expected, each as expected' % (len(out), len(exp_pub)),
			wrong)
	c.check(None not in ids and all(n == 1 for n in ids.values()),
			'every record carries a distinct pgkafka_join.id header',
			[x for x, n in ids.items() if n != 1][:10])

	# offsets
	exp_off = {tuple(k.split('/')): n for k, n in summary['partitions'].items()}
	kafka_off = {(t, p): int(n) for t, p, n in read_tsv(d('kafka_offsets.tsv'), 3)}
	c.check(exp_off == kafka_off, 'the brokers hold every message produced, each partition as planned',
			['%s: planned %s, end offset %s' % (k, exp_off.get(k), kafka_off.get(k))
			 for k in set(exp_off) | set(kafka_off) if exp_off.get(k) != kafka_off.get(k)])
	act_off = {(t, p): int(n) for t, p, n in read_tsv(d('offsets.tsv'), 3)}
	c.check(exp_off == act_off, 'input offsets are at the end of every partition (%s)' %
			', '.join('%s: %d' % (t, summary['produced'][t]) for t in ('movies', 'ratings')),
			['%s: expected %s, got %s' % (k, exp_off.get(k), act_off.get(k)) for k in set(exp_off) | set(act_off)
			 if exp_off.get(k) != act_off.get(k)])

	print('# produced: movies %d (good %d, bad %d), ratings %d (good %d, bad %d)' % (
		summary['produced']['movies'], summary['good']['movies'], summary['bad']['movies'],
		summary['produced']['ratings'], summary['good']['ratings'], summary['bad']['ratings']))
	print('# rejected: %d (movies %d, ratings %d); movies stored: %d; ratings stored: %d; results: %d' % (
		len(rows), sum(1 for k in actual if k[0] == 'movies'), sum(1 for k in actual if k[0] == 'ratings'),
		len(act_movies), len(act_rat), len(out)))
	for topic in ('movies', 'ratings'):
		print('# %s reasons: %s' % (topic, '; '.join('%s: %d' % (r, n) for r, n in sorted(
			collections.Counter(reason_class(a['reason']) for k, a in actual.items() if k[0] == topic).items()))))
	return 1 if c.failed else 0


def main():
	sys.setrecursionlimit(10000)
	if len(sys.argv) >= 5 and sys.argv[1] == 'generate':
		generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), '--dev' in sys.argv[5:])
	elif len(sys.argv) == 5 and sys.argv[1] == 'check':
		sys.exit(check(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
	else:
		sys.exit(__doc__ if __doc__ else 'usage: fuzz_messages.py generate|check ...')


if __name__ == '__main__':
	main()
