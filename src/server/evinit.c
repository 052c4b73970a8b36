/* evinit.c - see evinit.h. */
#include "server/evinit.h"

#include <event2/event.h>
#include <event2/thread.h>
#include <pthread.h>

#include "base/log.h"

static void evlog(int severity, const char *msg)
{
	log_msg(severity >= EVENT_LOG_ERR ? LOG_ERROR : severity == EVENT_LOG_WARN ? LOG_WARN : LOG_DEBUG, "libevent",
		"%s", msg);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int rc;

static void init(void)
{
	event_set_log_callback(evlog);
	rc = evthread_use_pthreads();
}

int evinit(char err[ERR_LEN])
{
	pthread_once(&once, init);
	if (rc < 0)
		return err_set(err, ERR_IO, "libevent: no pthreads support");
	return 0;
}
