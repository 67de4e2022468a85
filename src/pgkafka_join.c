/*-------------------------------------------------------------------------
 *
 * pgkafka_join.c
 *	  Module entry point: settings and the launcher worker.
 *
 * pgkafka_join must be in shared_preload_libraries: it registers its
 * launcher at server start (see launcher.c and worker.c for the process
 * model).  Loaded any other way it only defines its settings, so that the
 * SQL functions still work, and says that the worker will not run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "pgkafka_join.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	pkj_define_gucs();

	if (!process_shared_preload_libraries_in_progress)
	{
		ereport(WARNING,
				(errmsg("pgkafka_join is not in shared_preload_libraries; its worker does not run"),
				 errhint("Add pgkafka_join to shared_preload_libraries and restart the server.")));
		return;
	}
	pkj_status_init();
	pkj_register_launcher();
}
