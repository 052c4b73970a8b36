/* evinit.h - libevent set-up shared by the HTTP server and the router:
 * libevent's own messages go through our log (tag "libevent"), and its
 * locking uses pthreads (both processes touch their event base from more
 * than one thread). */
#ifndef PDSERVE_SERVER_EVINIT_H
#define PDSERVE_SERVER_EVINIT_H

#include "base/err.h"

struct evhttp;

/* Once per process (later calls return the first answer); thread-safe.
   0, or ERR_IO with err set when libevent has no pthreads support. */
int evinit(char err[ERR_LEN]);

/* The answers libevent writes on its own. A request cut off while it is
   read never reaches our callbacks: a body over the limit given to libevent
   (we give it twice ours) gets "413 Request Entity Too Large", headers over
   theirs or a malformed request "400 Bad Request" (HTML pages), and the
   connection closes. evinit_watch_cutoffs makes the connections of http
   call fn(arg, status) once per such answer, so that it is logged and
   counted like our own refusals. w must outlive http. */
typedef struct {
	void (*fn)(void *arg, int status);
	void *arg;
} evinit_cutoff;
void evinit_watch_cutoffs(struct evhttp *http, evinit_cutoff *w);

#endif
