/* log.c - leveled logging to stderr, one write(2) per line. */
#include "base/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int cur_level = -1;

int log_level_parse(const char *name)
{
	static const struct { const char *name; int level; } names[] = {
		{ "debug", LOG_DEBUG }, { "info", LOG_INFO }, { "warning", LOG_WARN },
		{ "warn", LOG_WARN }, { "error", LOG_ERROR }, { "critical", LOG_ERROR },
		{ "off", LOG_OFF },
	};
	for (size_t i = 0; name && i < sizeof(names) / sizeof(names[0]); i++)
		if (strcasecmp(name, names[i].name) == 0)
			return names[i].level;
	return -1;
}

int log_get_level(void)
{
	int l = atomic_load(&cur_level);
	if (l < 0) {
		l = log_level_parse(getenv("PDSERVE_LOG_LEVEL"));
		if (l < 0)
			l = LOG_INFO;
		atomic_store(&cur_level, l);
	}
	return l;
}

void log_set_level(int level)
{
	atomic_store(&cur_level, level);
}

void log_msg(int level, const char *tag, const char *fmt, ...)
{
	if (level < log_get_level())
		return;
	char line[2048];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %c %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, "DIWE"[level & 3], tag);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	ssize_t r = write(STDERR_FILENO, line, (size_t)n);
	(void)r;
}
