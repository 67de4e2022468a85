/*-------------------------------------------------------------------------
 *
 * message.c
 *	  Parse one Kafka message value into a movie or a rating; write the
 *	  value published for a rated movie.
 *
 * A message value is a JSON object.  Only its top-level fields are looked
 * at; unknown fields, and whatever is nested inside them, are ignored.
 * This file owns the message format: which fields there are, their types
 * and ranges, and the reason given when a value is rejected.
 *
 * Everything here runs inside the batch transaction, so nothing may throw
 * on bad input.  Each parse function either fills its output and returns
 * true, or returns false with a constant, lower-case reason.  (Running out
 * of memory still raises an ERROR, as anywhere.)  We use the JSON parser of
 * common/jsonapi.h, which returns an error code instead of throwing, and
 * keep out the inputs for which it could still throw:
 *
 *	- bytes that are not valid UTF-8, or contain NUL, are rejected first;
 *	- the parser is recursive and calls check_stack_depth(), so a cheap
 *	  pre-scan rejects values nested more than PKJ_MAX_NESTING deep;
 *	- the lexer converts \u escapes with pg_unicode_to_server(), which
 *	  throws for a character the database encoding lacks; in a database
 *	  that is not UTF-8 the pre-scan rejects \u escapes above U+007F.
 *
 * Strings handed out are therefore always valid UTF-8, whatever the
 * database encoding: raw bytes were checked, and escapes decode to UTF-8
 * (UTF-8 database) or to ASCII (any other).
 *
 * Time stamps in text form must be RFC 3339.  They are checked for that
 * shape first, which also keeps out time zone names (PostgreSQL 15's
 * DecodeDateTime ereports on an unknown one), then decoded by
 * ParseDateTime/DecodeDateTime, which return error codes.
 *
 * Everything is allocated in CurrentMemoryContext; the caller resets it.
 *
 * IDENTIFICATION
 *	  src/message.c
 *
 * Not here: storing anything (ingest.c); this file touches no table and no
 * Kafka handle.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <math.h>

#include "catalog/pg_type.h"
#include "common/int.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "nodes/pg_list.h"		/* pgkafka_join.h uses List */
#include "utils/datetime.h"
#include "utils/float.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "pgkafka_join.h"

/* Deepest nesting of arrays and objects we hand to the parser */
#define PKJ_MAX_NESTING			64

/* Longest accepted movie title, in bytes */
#define PKJ_MAX_TITLE_BYTES		10000

/* Longest accepted RFC 3339 time stamp, in bytes */
#define PKJ_MAX_TIMESTAMP_LEN	64

/* Accepted time stamps: 1970-01-01 <= ts < 10000-01-01, both UTC */
#define PKJ_MIN_TIMESTAMP \
	(-(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)
#define PKJ_END_JDATE			5373485 /* == date2j(10000, 1, 1) */
#define PKJ_END_TIMESTAMP \
	((PKJ_END_JDATE - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY)

/* Set the reason a value is rejected, and reject it */
#define REJECT(why) \
	do { \
		*reason = (why); \
		return false; \
	} while (0)

#define IS_DIGIT(c)	((c) >= '0' && (c) <= '9')

/* What a top-level field held */
typedef enum ValueKind
{
	VALUE_ABSENT = 0,
	VALUE_STRING,
	VALUE_NUMBER,
	VALUE_BOOL,
	VALUE_NULL,
	VALUE_OBJECT,
	VALUE_ARRAY
} ValueKind;

/* A top-level field we want, under its name and an optional alias */
typedef struct FieldSpec
{
	const char *name;
	const char *alias;
	const char *duplicate_reason;
} FieldSpec;

/* What we found for one FieldSpec */
typedef struct FieldValue
{
	ValueKind	kind;
	char	   *text;			/* token text, for strings and numbers */
} FieldValue;

#define MAX_FIELDS 3

/* Semantic state of one parse */
typedef struct TopLevelState
{
	const FieldSpec *specs;
	int			nspecs;
	FieldValue	values[MAX_FIELDS];
	int			depth;			/* arrays and objects we are inside of */
	bool		is_object;		/* top-level value is an object */
	int			current;		/* spec whose value comes next, or -1 */
	const char *duplicate;		/* first duplicate field's reason */
} TopLevelState;

enum
{
	MOVIE_ID, MOVIE_TITLE, MOVIE_RELEASE_YEAR
};

static const FieldSpec movie_fields[] = {
	{"id", NULL, "duplicate field \"id\""},
	{"title", NULL, "duplicate field \"title\""},
	{"release_year", "releaseYear", "duplicate field \"release_year\""}
};

enum
{
	RATING_ID, RATING_RATING, RATING_RATED_AT
};

static const FieldSpec rating_fields[] = {
	{"id", NULL, "duplicate field \"id\""},
	{"rating", NULL, "duplicate field \"rating\""},
	{"rated_at", NULL, "duplicate field \"rated_at\""}
};

/* Outcome of parsing a decimal integer */
typedef enum IntParse
{
	INT_OK,
	INT_INVALID,
	INT_OUT_OF_RANGE
} IntParse;


/*
 * Strictly parse a decimal int64: optional '-', then one or more digits,
 * nothing else.  Never throws.
 */
static IntParse
parse_int64(const char *text, size_t len, int64 *result)
{
	size_t		i = 0;
	bool		neg = false;
	uint64		limit;
	uint64		acc = 0;

	if (len > 0 && text[0] == '-')
	{
		neg = true;
		i++;
	}
	if (i == len)
		return INT_INVALID;
	for (size_t j = i; j < len; j++)
		if (!IS_DIGIT(text[j]))
			return INT_INVALID;

	limit = neg ? (uint64) PG_INT64_MAX + 1 : (uint64) PG_INT64_MAX;
	for (; i < len; i++)
	{
		uint64		digit = text[i] - '0';

		if (acc > (limit - digit) / 10)
			return INT_OUT_OF_RANGE;
		acc = acc * 10 + digit;
	}

	if (!neg)
		*result = (int64) acc;
	else if (acc == (uint64) PG_INT64_MAX + 1)
		*result = PG_INT64_MIN;
	else
		*result = -(int64) acc;
	return INT_OK;
}

/*
 * Parse a decimal int64 (see parse_int64); false on junk or overflow
 */
bool
pkj_parse_id_text(const char *text, size_t len, int64 *id)
{
	return parse_int64(text, len, id) == INT_OK;
}

/*
 * Is ts within the time stamps we accept, 1970-01-01 00:00:00+00 inclusive
 * to 10000-01-01 00:00:00+00 exclusive?
 */
bool
pkj_timestamp_in_range(TimestampTz ts)
{
	return ts >= PKJ_MIN_TIMESTAMP && ts < PKJ_END_TIMESTAMP;
}

/*
 * Cheap scan before parsing: is the value nested too deeply, or (in a
 * database that is not UTF-8) does it hold a \u escape above U+007F?
 * Counts '[' and '{' outside strings, as the parser's recursion would.
 */
static bool
prescan_json(const char *s, size_t len, const char **reason)
{
	bool		utf8_db = (GetDatabaseEncoding() == PG_UTF8);
	bool		in_string = false;
	int			depth = 0;

	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (in_string)
		{
			if (c == '"')
				in_string = false;
			else if (c == '\\' && i + 1 < len)
			{
				i++;
				if (s[i] == 'u' && !utf8_db && i + 4 < len)
				{
					char		hex[5];

					/* \u and four hex digits; anything else the lexer rejects */
					memcpy(hex, &s[i + 1], 4);
					hex[4] = '\0';
					if (strspn(hex, "0123456789abcdefABCDEF") == 4 &&
						strtol(hex, NULL, 16) > 0x7F)
						REJECT("value has a \\u escape above U+007F and the database encoding is not UTF-8");
				}
			}
		}
		else if (c == '"')
			in_string = true;
		else if (c == '[' || c == '{')
		{
			if (++depth > PKJ_MAX_NESTING)
				REJECT("value is nested too deeply");
		}
		else if ((c == ']' || c == '}') && depth > 0)
			depth--;
	}
	return true;
}

/* The spec whose name or alias is the len bytes at name, or -1 */
static int
find_field(const TopLevelState *state, const char *name, size_t len)
{
	for (int i = 0; i < state->nspecs; i++)
	{
		const char *alias = state->specs[i].alias;

		if ((strncmp(state->specs[i].name, name, len) == 0 &&
			 state->specs[i].name[len] == '\0') ||
			(alias != NULL && strncmp(alias, name, len) == 0 && alias[len] == '\0'))
			return i;
	}
	return -1;
}

/* Semantic actions: record the kind and text of wanted top-level fields */

static void
note_container(TopLevelState *state, ValueKind kind)
{
	if (state->depth == 0)
		state->is_object = (kind == VALUE_OBJECT);
	else if (state->depth == 1 && state->current >= 0)
	{
		state->values[state->current].kind = kind;
		state->current = -1;
	}
	state->depth++;
}

static void
sem_object_start(void *arg)
{
	note_container((TopLevelState *) arg, VALUE_OBJECT);
}

static void
sem_array_start(void *arg)
{
	note_container((TopLevelState *) arg, VALUE_ARRAY);
}

static void
sem_container_end(void *arg)
{
	((TopLevelState *) arg)->depth--;
}

static void
sem_object_field_start(void *arg, char *fname, bool isnull)
{
	TopLevelState *state = (TopLevelState *) arg;

	if (state->depth != 1 || fname == NULL)
		return;
	state->current = find_field(state, fname, strlen(fname));
	if (state->current >= 0 && state->values[state->current].kind != VALUE_ABSENT &&
		state->duplicate == NULL)
		state->duplicate = state->specs[state->current].duplicate_reason;
	pfree(fname);
}

static void
sem_scalar(void *arg, char *token, JsonTokenType tokentype)
{
	TopLevelState *state = (TopLevelState *) arg;
	FieldValue *value;

	if (state->depth != 1 || state->current < 0)
	{
		if (token != NULL)
			pfree(token);
		return;
	}

	value = &state->values[state->current];
	state->current = -1;
	if (value->text != NULL)
		pfree(value->text);		/* a duplicate; rejected later anyway */
	value->text = token;
	value->kind = tokentype == JSON_TOKEN_STRING ? VALUE_STRING :
		tokentype == JSON_TOKEN_NUMBER ? VALUE_NUMBER :
		tokentype == JSON_TOKEN_NULL ? VALUE_NULL : VALUE_BOOL;
}

/* The blank space of JSON, as the lexer skips it */
#define IS_JSON_SPACE(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' || (c) == '\r')

static const char *
skip_json_space(const char *p, const char *end)
{
	while (p < end && IS_JSON_SPACE(*p))
		p++;
	return p;
}

/*
 * The rest of a string without escapes, from just after its opening quote:
 * its closing quote, or NULL if it holds a backslash or a control character
 * (which the lexer decodes or rejects), or is not closed.
 */
static const char *
scan_plain_string(const char *p, const char *end)
{
	for (; p < end; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '"')
			return p;
		if (c == '\\' || c < 0x20)
			return NULL;
	}
	return NULL;
}

/*
 * A JSON number from p, -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?:
 * where it ends, or NULL if p does not start one
 */
static const char *
scan_json_number(const char *p, const char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p < end && *p == '0')
		p++;
	else if (p < end && *p >= '1' && *p <= '9')
		while (p < end && IS_DIGIT(*p))
			p++;
	else
		return NULL;
	if (p < end && *p == '.')
	{
		if (++p >= end || !IS_DIGIT(*p))
			return NULL;
		while (p < end && IS_DIGIT(*p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E'))
	{
		if (++p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || !IS_DIGIT(*p))
			return NULL;
		while (p < end && IS_DIGIT(*p))
			p++;
	}
	return p;
}

/* true, false or null at p: where it ends, and its kind; or NULL */
static const char *
scan_json_literal(const char *p, const char *end, ValueKind *kind)
{
	if (end - p >= 4 && memcmp(p, "true", 4) == 0)
	{
		*kind = VALUE_BOOL;
		return p + 4;
	}
	if (end - p >= 5 && memcmp(p, "false", 5) == 0)
	{
		*kind = VALUE_BOOL;
		return p + 5;
	}
	if (end - p >= 4 && memcmp(p, "null", 4) == 0)
	{
		*kind = VALUE_NULL;
		return p + 4;
	}
	return NULL;
}

/*
 * scan_flat_object
 *		Read the common shape of a message without the general parser: one
 *		object whose values are strings without escapes, numbers, true,
 *		false or null, each wanted field once.  Fills state as the parser's
 *		semantic actions would, and returns true.  Returns false, having
 *		decided nothing, for any other value (escapes, nested arrays or
 *		objects, a wanted field twice, or a value that is not valid JSON):
 *		the caller hands it to pg_parse_json(), which decides.
 *
 * The worker parses every message it consumes; for a catalog load, the
 * general parser (which copies strings a byte at a time and calls back per
 * token) was a quarter of the worker's time.  The bytes were checked for
 * NUL and UTF-8 by the caller.
 */
static bool
scan_flat_object(const char *value, size_t len, TopLevelState *state)
{
	const char *end = value + len;
	const char *p = skip_json_space(value, end);

	if (p >= end || *p != '{')
		return false;
	p = skip_json_space(p + 1, end);
	while (p >= end || *p != '}')
	{
		const char *name;
		const char *name_end;
		const char *token;
		const char *token_end;
		ValueKind	kind;
		int			field;

		if (p >= end || *p != '"')
			return false;
		name = p + 1;
		if ((name_end = scan_plain_string(name, end)) == NULL)
			return false;
		p = skip_json_space(name_end + 1, end);
		if (p >= end || *p != ':')
			return false;
		p = skip_json_space(p + 1, end);
		if (p >= end)
			return false;

		token = p;
		if (*p == '"')
		{
			token = p + 1;
			if ((token_end = scan_plain_string(token, end)) == NULL)
				return false;
			p = token_end + 1;
			kind = VALUE_STRING;
		}
		else if (*p == '-' || IS_DIGIT(*p))
		{
			if ((token_end = scan_json_number(p, end)) == NULL)
				return false;
			p = token_end;
			kind = VALUE_NUMBER;
		}
		else if ((token_end = scan_json_literal(p, end, &kind)) != NULL)
			p = token_end;
		else
			return false;		/* an array, an object, or not JSON */

		field = find_field(state, name, name_end - name);
		if (field >= 0)
		{
			if (state->values[field].kind != VALUE_ABSENT)
				return false;	/* the parser's path says which duplicate */
			state->values[field].kind = kind;
			state->values[field].text = pnstrdup(token, token_end - token);
		}

		/* what follows a value: a comma and the next field, or the end */
		p = skip_json_space(p, end);
		if (p < end && *p == ',')
		{
			p = skip_json_space(p + 1, end);
			if (p >= end || *p != '"')
				return false;
		}
		else if (p >= end || *p != '}')
			return false;
	}
	/* at the closing brace: nothing but blank space may follow */
	if (skip_json_space(p + 1, end) != end)
		return false;
	state->is_object = true;
	return true;
}

/*
 * Check the raw bytes, parse them as JSON and collect the wanted top-level
 * fields into state.  False with *reason when the value is rejected.
 */
static bool
parse_top_level(const char *value, size_t len, const FieldSpec *specs,
				int nspecs, TopLevelState *state, const char **reason)
{
	JsonLexContext *lex;
	JsonSemAction sem;
	JsonParseErrorType result;

	Assert(nspecs <= MAX_FIELDS);
	memset(state, 0, sizeof(TopLevelState));
	state->specs = specs;
	state->nspecs = nspecs;
	state->current = -1;

	if (value == NULL || len == 0)
		REJECT("value is empty");
	/* keeps int lengths and StringInfo growth below their limits */
	if (len >= MaxAllocSize)
		REJECT("value is too large");
	if (memchr(value, '\0', len) != NULL)
		REJECT("value contains a NUL byte");
	if (!pg_verify_mbstr(PG_UTF8, value, (int) len, true))
		REJECT("value is not valid UTF-8");
	if (scan_flat_object(value, len, state))
		return true;
	/* anything else is left to the parser, from a clean state */
	for (int i = 0; i < nspecs; i++)
		if (state->values[i].text != NULL)
			pfree(state->values[i].text);
	memset(state->values, 0, sizeof(state->values));
	state->is_object = false;

	if (!prescan_json(value, len, reason))
		return false;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = state;
	sem.object_start = sem_object_start;
	sem.object_end = sem_container_end;
	sem.array_start = sem_array_start;
	sem.array_end = sem_container_end;
	sem.object_field_start = sem_object_field_start;
	sem.scalar = sem_scalar;

	/* the lexer does not write to its input, nor need it NUL-terminated */
	lex = makeJsonLexContextCstringLen(unconstify(char *, value), (int) len,
									   PG_UTF8, true);
	result = pg_parse_json(lex, &sem);
	if (result != JSON_SUCCESS)
		REJECT("value is not valid JSON");
	if (!state->is_object)
		REJECT("value is not a JSON object");
	if (state->duplicate != NULL)
		REJECT(state->duplicate);
	return true;
}

/*
 * The "id" field: a JSON integer, or a string holding a decimal integer
 */
static bool
take_id(const FieldValue *value, int64 *id, const char **reason)
{
	IntParse	r;

	if (value->kind == VALUE_ABSENT || value->kind == VALUE_NULL)
		REJECT("id is missing");
	if (value->kind != VALUE_NUMBER && value->kind != VALUE_STRING)
		REJECT("id is not an integer");
	r = parse_int64(value->text, strlen(value->text), id);
	if (r == INT_INVALID)
		REJECT("id is not an integer");
	if (r == INT_OUT_OF_RANGE)
		REJECT("id is out of range");
	return true;
}

bool
pkj_parse_movie(const char *value, size_t len, PkjMovie *out,
				const char **reason)
{
	TopLevelState state;
	const FieldValue *title;
	const FieldValue *year;

	if (!parse_top_level(value, len, movie_fields, lengthof(movie_fields),
						 &state, reason))
		return false;

	if (!take_id(&state.values[MOVIE_ID], &out->id, reason))
		return false;

	title = &state.values[MOVIE_TITLE];
	if (title->kind == VALUE_ABSENT || title->kind == VALUE_NULL)
		REJECT("title is missing");
	if (title->kind != VALUE_STRING)
		REJECT("title is not a string");
	if (strlen(title->text) > PKJ_MAX_TITLE_BYTES)
		REJECT("title is too long");
	out->title = title->text;

	year = &state.values[MOVIE_RELEASE_YEAR];
	out->has_release_year = false;
	out->release_year = 0;
	if (year->kind != VALUE_ABSENT && year->kind != VALUE_NULL)
	{
		int64		y;
		IntParse	r = INT_INVALID;

		if (year->kind == VALUE_NUMBER)
			r = parse_int64(year->text, strlen(year->text), &y);
		if (r == INT_INVALID)
			REJECT("release_year is not an integer");
		if (r == INT_OUT_OF_RANGE || y < 0 || y > 9999)
			REJECT("release_year is out of range");
		out->has_release_year = true;
		out->release_year = (int32) y;
	}
	return true;
}

/*
 * Is s, len bytes, an RFC 3339 date-time: YYYY-MM-DD, then 'T', 't' or a
 * space, then hh:mm:ss, optional fraction, then 'Z', 'z' or +hh:mm/-hh:mm?
 * Only the shape is checked; DecodeDateTime checks the field values.
 */
static bool
is_rfc3339_shape(const char *s, size_t len)
{
	static const char pattern[] = "dddd-dd-ddTdd:dd:dd";
	size_t		i;

	if (len < sizeof(pattern) || len > PKJ_MAX_TIMESTAMP_LEN)
		return false;
	for (i = 0; i < sizeof(pattern) - 1; i++)
	{
		if (pattern[i] == 'd' ? !IS_DIGIT(s[i]) :
			pattern[i] == 'T' ? (s[i] != 'T' && s[i] != 't' && s[i] != ' ') :
			s[i] != pattern[i])
			return false;
	}
	if (s[i] == '.')
	{
		size_t		start = ++i;

		while (i < len && IS_DIGIT(s[i]))
			i++;
		if (i == start)
			return false;
	}
	if (i + 1 == len && (s[i] == 'Z' || s[i] == 'z'))
		return true;
	return i + 6 == len && (s[i] == '+' || s[i] == '-') &&
		IS_DIGIT(s[i + 1]) && IS_DIGIT(s[i + 2]) && s[i + 3] == ':' &&
		IS_DIGIT(s[i + 4]) && IS_DIGIT(s[i + 5]);
}

/*
 * Decode an RFC 3339 time stamp without throwing
 */
static bool
decode_rfc3339(const char *s, TimestampTz *result, const char **reason)
{
	size_t		len = strlen(s);
	char		buf[PKJ_MAX_TIMESTAMP_LEN + 8];
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz = 0;

	if (!is_rfc3339_shape(s, len))
		REJECT("rated_at is not a valid timestamp");

	/* spell it the way DecodeDateTime takes it: no 'T', no 'Z' */
	memcpy(buf, s, len + 1);
	buf[10] = ' ';
	if (buf[len - 1] == 'Z' || buf[len - 1] == 'z')
		strcpy(&buf[len - 1], "+00:00");

	memset(&tm, 0, sizeof(tm));
	if (ParseDateTime(buf, workbuf, sizeof(workbuf), field, ftype,
					  MAXDATEFIELDS, &nf) != 0 ||
		DecodeDateTime(field, ftype, nf, &dtype, &tm, &fsec, &tz) != 0 ||
		dtype != DTK_DATE)
		REJECT("rated_at is not a valid timestamp");
	if (tm2timestamp(&tm, fsec, &tz, result) != 0 ||
		!pkj_timestamp_in_range(*result))
		REJECT("rated_at is out of range");
	return true;
}

/*
 * Convert integer Unix epoch milliseconds to a TimestampTz without throwing
 */
static bool
decode_epoch_ms(const char *s, TimestampTz *result, const char **reason)
{
	int64		ms;
	int64		us;
	IntParse	r = parse_int64(s, strlen(s), &ms);

	if (r == INT_INVALID)
		REJECT("rated_at is not a valid timestamp");
	if (r == INT_OUT_OF_RANGE ||
		pg_mul_s64_overflow(ms, 1000, &us) ||
		pg_sub_s64_overflow(us, (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
							USECS_PER_DAY, result) ||
		!pkj_timestamp_in_range(*result))
		REJECT("rated_at is out of range");
	return true;
}

bool
pkj_parse_rating(const char *value, size_t len, PkjRating *out,
				 const char **reason)
{
	TopLevelState state;
	const FieldValue *rating;
	const FieldValue *rated_at;
	char	   *end;
	float8		val;

	if (!parse_top_level(value, len, rating_fields, lengthof(rating_fields),
						 &state, reason))
		return false;

	if (!take_id(&state.values[RATING_ID], &out->movie_id, reason))
		return false;

	rating = &state.values[RATING_RATING];
	if (rating->kind == VALUE_ABSENT || rating->kind == VALUE_NULL)
		REJECT("rating is missing");
	if (rating->kind != VALUE_NUMBER)
		REJECT("rating is not a number");

	/*
	 * A JSON number is valid strtod input (the backend keeps LC_NUMERIC at
	 * "C").  Like float8in, reject overflow and underflow to zero, but keep
	 * denormals.
	 */
	errno = 0;
	val = strtod(rating->text, &end);
	if (end == rating->text || *end != '\0')
		REJECT("rating is not a number");
	if ((errno == ERANGE && (val == 0.0 || isinf(val))) || !isfinite(val))
		REJECT("rating is out of range");
	out->rating = val;

	rated_at = &state.values[RATING_RATED_AT];
	out->has_rated_at = false;
	out->rated_at = 0;
	switch (rated_at->kind)
	{
		case VALUE_ABSENT:
		case VALUE_NULL:
			return true;
		case VALUE_NUMBER:
			if (!decode_epoch_ms(rated_at->text, &out->rated_at, reason))
				return false;
			break;
		case VALUE_STRING:
			if (!decode_rfc3339(rated_at->text, &out->rated_at, reason))
				return false;
			break;
		default:
			REJECT("rated_at is not a valid timestamp");
	}
	out->has_rated_at = true;
	return true;
}

/*
 * Append the value published for a rated movie to buf, as output_value()
 * returns it:
 *	{"id":42,"title":"...","release_year":1972,"rating":4.5,
 *	 "rated_at":"2026-11-20T10:00:00.25Z"}
 * release_year null when unknown; the rating as float8out writes it (so
 * extra_float_digits applies); rated_at in RFC 3339, in UTC whatever the
 * session's TimeZone.  The worker calls this for every result it publishes,
 * without going through SQL.
 */
void
pkj_format_result(StringInfo buf, int64 movie_id, const char *title,
				  bool has_release_year, int32 release_year, float8 rating,
				  TimestampTz rated_at)
{
	char		ts[MAXDATELEN + 1];
	char	   *rating_text = float8out_internal(rating);

	/* a timestamptz counts microseconds in UTC: as a timestamp it is UTC */
	JsonEncodeDateTime(ts, TimestampGetDatum(rated_at), TIMESTAMPOID, NULL);

	appendStringInfo(buf, "{\"id\":" INT64_FORMAT ",\"title\":", movie_id);
	escape_json(buf, title);
	if (has_release_year)
		appendStringInfo(buf, ",\"release_year\":%d", release_year);
	else
		appendStringInfoString(buf, ",\"release_year\":null");
	appendStringInfo(buf, ",\"rating\":%s,\"rated_at\":\"%sZ\"}", rating_text, ts);
	pfree(rating_text);
}
