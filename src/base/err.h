/* err.h - error codes and the one-sentence error buffer every fallible call fills.
 *
 * Fallible functions return 0 or a negative ERR_* code; where a caller needs to
 * tell a user what went wrong they also take `char err[ERR_LEN]` and write one
 * sentence that names the thing ("tensor blk.3.attn_q: data ends past end of
 * file"). err_set() formats it and returns the code so a failure path reads
 * `return err_set(err, ERR_FORMAT, "...", ...);`.
 */
#ifndef PDSERVE_BASE_ERR_H
#define PDSERVE_BASE_ERR_H

enum {
	ERR_OK = 0,
	ERR_NOMEM = -1,       /* allocation failed */
	ERR_IO = -2,          /* open/read/mmap/socket failed */
	ERR_PROTO = -3,       /* peer broke the protocol */
	ERR_FULL = -4,        /* no room: pool, queue or buffer */
	ERR_TIMEOUT = -5,     /* deadline passed */
	ERR_INVAL = -6,       /* bad argument or request */
	ERR_FORMAT = -7,      /* malformed file or message */
	ERR_UNSUPPORTED = -8, /* well-formed, but not something we implement */
	ERR_NOTFOUND = -9,    /* key, tensor or id absent */
};

#define ERR_LEN 256

/* Short stable name of a code ("ERR_FORMAT"); "ERR_?" for unknown codes. */
const char *err_name(int code);

/* Format a message into err (may be NULL) and return code. */
int err_set(char *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* CHECK(x): an invariant of our own code that stays on in release builds at
   module boundaries. On failure it logs the expression and aborts. Never use
   it on input (files, requests, frames): those get an error instead. */
#define CHECK(x) \
	do { \
		if (__builtin_expect(!(x), 0)) \
			err_check_fail(#x, __FILE__, __LINE__); \
	} while (0)
_Noreturn void err_check_fail(const char *expr, const char *file, int line);

#endif
