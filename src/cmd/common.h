/* common.h - helpers shared by the subcommands (flag values, model lookup). */
#ifndef PDSERVE_CMD_COMMON_H
#define PDSERVE_CMD_COMMON_H

#include <stddef.h>

#include "base/err.h"

/* Resolve which model file to use, in order: flag (--model-path), then
   $PDSERVE_MODEL, then ../shared/models/stories260K.gguf (next to the
   checkout the binary was built in, or relative to the current directory),
   else the synthesized model at synth_default_path(), written first if
   absent. Logs which one it picked. 0 or an error with err. */
int cmd_model_path(const char *flag, char *out, size_t n, char err[ERR_LEN]);

/* "f32" | "f16" | "bf16" (also "auto" = f16, SGLang's default spelling)
   -> QTYPE_*; -1 if unknown. */
int cmd_kv_dtype(const char *s);

/* Strict number parsing for flag values: 0, or -1 when s is not a whole
   number / finite float in [lo, hi]. */
int cmd_parse_int(const char *s, long lo, long hi, long *out);
int cmd_parse_float(const char *s, double lo, double hi, double *out);

/* Whether a --host value only listens on this machine: "localhost", 127.x,
   ::1. "0.0.0.0", "::" and other addresses are not. */
int cmd_host_is_loopback(const char *host);

#endif
