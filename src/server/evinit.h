/* evinit.h - libevent set-up shared by the HTTP server and the router:
 * libevent's own messages go through our log (tag "libevent"), and its
 * locking uses pthreads (both processes touch their event base from more
 * than one thread). */
#ifndef PDSERVE_SERVER_EVINIT_H
#define PDSERVE_SERVER_EVINIT_H

#include "base/err.h"

/* Once per process (later calls return the first answer); thread-safe.
   0, or ERR_IO with err set when libevent has no pthreads support. */
int evinit(char err[ERR_LEN]);

#endif
