/* evinit.c - see evinit.h. */
#include "server/evinit.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <pthread.h>
#include <string.h>

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

/* Called on every change to a connection's output. A response starts in
   an empty buffer; libevent's own error pages are the only ones with HTML
   (ours are JSON), and their first header is the content type. We look when
   the buffer first holds a whole prefix (the status line and the first
   header may be added separately). A response queued behind another
   (pipelining) is not seen: a count too low, never a wrong one. */
static void on_output(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
	static const struct {
		int status;
		const char *head;
	} pages[] = {
		{ 413, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/html\r\n" },
		{ 400, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n" },
	};
	if (!info->n_added)
		return;
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
		size_t n = strlen(pages[i].head);
		char got[96];
		if (info->orig_size >= n || info->orig_size + info->n_added < n)
			continue;
		if (evbuffer_copyout(b, got, n) == (ev_ssize_t)n && !memcmp(got, pages[i].head, n)) {
			evinit_cutoff *w = arg;
			w->fn(w->arg, pages[i].status);
			return;
		}
	}
}
/* libevent's default for an accepted connection, plus our watch */
static struct bufferevent *new_bev(struct event_base *base, void *arg)
{
	struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (bev)
		evbuffer_add_cb(bufferevent_get_output(bev), on_output, arg);
	return bev;
}

void evinit_watch_cutoffs(struct evhttp *http, evinit_cutoff *w)
{
	evhttp_set_bevcb(http, new_bev, w);
}
