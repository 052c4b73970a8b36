/* err.c - error names and message formatting. */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *err_name(int code)
{
	switch (code) {
	case ERR_OK: return "ERR_OK";
	case ERR_NOMEM: return "ERR_NOMEM";
	case ERR_IO: return "ERR_IO";
	case ERR_PROTO: return "ERR_PROTO";
	case ERR_FULL: return "ERR_FULL";
	case ERR_TIMEOUT: return "ERR_TIMEOUT";
	case ERR_INVAL: return "ERR_INVAL";
	case ERR_FORMAT: return "ERR_FORMAT";
	case ERR_UNSUPPORTED: return "ERR_UNSUPPORTED";
	case ERR_NOTFOUND: return "ERR_NOTFOUND";
	}
	return "ERR_?";
}

int err_set(char *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, ERR_LEN, fmt, ap);
		va_end(ap);
	}
	return code;
}

void err_check_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "pdserve: CHECK failed: %s at %s:%d\n", expr, file, line);
	abort();
}
