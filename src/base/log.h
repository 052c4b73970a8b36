/* log.h - leveled log lines on stderr.
 *
 * One line per call: "2026-11-27T10:45:45.123Z W gguf: message". The level is
 * process-wide (log_set_level, or $PDSERVE_LOG_LEVEL read on first use).
 * Thread-safe: each line is written with one write(2).
 */
#ifndef PDSERVE_BASE_LOG_H
#define PDSERVE_BASE_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

void log_set_level(int level);
int  log_get_level(void);
/* "debug", "info", "warning"/"warn", "error", "off" (SGLang's names); -1 if unknown. */
int  log_level_parse(const char *name);
void log_msg(int level, const char *tag, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define LOGD(tag, ...) log_msg(LOG_DEBUG, tag, __VA_ARGS__)
#define LOGI(tag, ...) log_msg(LOG_INFO, tag, __VA_ARGS__)
#define LOGW(tag, ...) log_msg(LOG_WARN, tag, __VA_ARGS__)
#define LOGE(tag, ...) log_msg(LOG_ERROR, tag, __VA_ARGS__)

#endif
