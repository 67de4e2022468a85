/*-------------------------------------------------------------------------
 *
 * sql_api.c
 *	  SQL-callable C functions of pgkafka_join.
 *
 * Not here: the worker; these run in the caller's session.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pgkafka_join.h"

PG_FUNCTION_INFO_V1(pgkafka_join_parse_message);
PG_FUNCTION_INFO_V1(pgkafka_join_output_value);
PG_FUNCTION_INFO_V1(pgkafka_join_partition_numbers);

/*
 * parse_message(kind text, value bytea) -> (accepted, id, title,
 *		release_year, rating, rated_at, reason)
 *
 * Parses one message value the way the join worker does, kind being
 * 'movie' or 'rating'; shows what would be stored or why it would be
 * rejected.
 */
Datum
pgkafka_join_parse_message(PG_FUNCTION_ARGS)
{
	char	   *kind;
	bytea	   *value = PG_ARGISNULL(1) ? NULL : PG_GETARG_BYTEA_PP(1);
	const char *data = value ? VARDATA_ANY(value) : NULL;
	size_t		len = value ? VARSIZE_ANY_EXHDR(value) : 0;
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {false, true, true, true, true, true, true};
	const char *reason = NULL;
	bool		accepted;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message kind must not be null"),
				 errhint("Use 'movie' or 'rating'.")));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	if (strcmp(kind, "movie") == 0)
	{
		PkjMovie	movie;

		accepted = pkj_parse_movie(data, len, &movie, &reason);
		if (accepted)
		{
			values[1] = Int64GetDatum(movie.id);
			nulls[1] = false;
			values[2] = CStringGetTextDatum(movie.title);
			nulls[2] = false;
			values[3] = Int32GetDatum(movie.release_year);
			nulls[3] = !movie.has_release_year;
		}
	}
	else if (strcmp(kind, "rating") == 0)
	{
		PkjRating	rating;

		accepted = pkj_parse_rating(data, len, &rating, &reason);
		if (accepted)
		{
			values[1] = Int64GetDatum(rating.movie_id);
			nulls[1] = false;
			values[4] = Float8GetDatum(rating.rating);
			nulls[4] = false;
			values[5] = TimestampTzGetDatum(rating.rated_at);
			nulls[5] = !rating.has_rated_at;
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown message kind \"%s\"", kind),
				 errhint("Use 'movie' or 'rating'.")));

	values[0] = BoolGetDatum(accepted);
	nulls[0] = false;
	if (!accepted)
	{
		values[6] = CStringGetTextDatum(reason);
		nulls[6] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* A column of a rated_movies row that must not be null */
static Datum
required_attribute(HeapTupleHeader row, const char *name)
{
	bool		isnull;
	Datum		value = GetAttributeByName(row, name, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s of a rated movie must not be null", name)));
	return value;
}

/*
 * output_value(r rated_movies) -> text
 *
 * The value the worker publishes for the result r (see pkj_format_result).
 */
Datum
pgkafka_join_output_value(PG_FUNCTION_ARGS)
{
	HeapTupleHeader row = PG_GETARG_HEAPTUPLEHEADER(0);
	bool		year_null;
	Datum		year = GetAttributeByName(row, "release_year", &year_null);
	StringInfoData buf;

	initStringInfo(&buf);
	pkj_format_result(&buf,
					  DatumGetInt64(required_attribute(row, "movie_id")),
					  TextDatumGetCString(required_attribute(row, "title")),
					  !year_null, year_null ? 0 : DatumGetInt32(year),
					  DatumGetFloat8(required_attribute(row, "rating")),
					  DatumGetTimestampTz(required_attribute(row, "rated_at")));
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}

/*
 * partition_numbers(partitions text) -> integer[]
 *
 * A list of partitions as pgkafka_join.partitions takes it ("0-5,12"), as
 * a sorted array of distinct numbers; empty for an empty text.
 */
Datum
pgkafka_join_partition_numbers(PG_FUNCTION_ARGS)
{
	char	   *list = text_to_cstring(PG_GETARG_TEXT_PP(0));
	List	   *partitions;
	char	   *problem;
	Datum	   *elems;
	int			n = 0;
	ListCell   *lc;

	if (!pkj_parse_partitions(list, &partitions, &problem))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid list of partitions \"%s\": %s", list, problem),
				 errhint("List partition numbers and ranges, such as '0-5,12'.")));
	elems = palloc(Max(list_length(partitions), 1) * sizeof(Datum));
	foreach(lc, partitions)
		elems[n++] = Int32GetDatum(lfirst_int(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}
