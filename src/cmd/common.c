/* common.c - model lookup and flag parsing shared by subcommands. */
#include "cmd/common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/log.h"
#include "kernels/qtypes.h"
#include "model/synth.h"

static int readable(const char *p)
{
	return access(p, R_OK) == 0;
}

/* ../shared/models/stories260K.gguf relative to the checkout holding the
   binary (REPO/build/pdserve -> REPO/../shared/...). */
static int shared_next_to_binary(char *out, size_t n)
{
	char exe[PATH_MAX];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (len <= 0)
		return -1;
	exe[len] = '\0';
	for (int up = 0; up < 2; up++) { /* strip "pdserve", then the build dir */
		char *slash = strrchr(exe, '/');
		if (!slash)
			return -1;
		*slash = '\0';
	}
	/* build dirs may nest (build/san/pdserve): walk up until a Makefile is found */
	for (int up = 0; up < 3; up++) {
		char probe[PATH_MAX + 32];
		snprintf(probe, sizeof(probe), "%s/Makefile", exe);
		if (readable(probe)) {
			if ((size_t)snprintf(out, n, "%s/../shared/models/stories260K.gguf", exe) >= n)
				return -1;
			return readable(out) ? 0 : -1;
		}
		char *slash = strrchr(exe, '/');
		if (!slash)
			return -1;
		*slash = '\0';
	}
	return -1;
}

int cmd_model_path(const char *flag, char *out, size_t n, char err[ERR_LEN])
{
	const char *env = getenv("PDSERVE_MODEL");
	const char *pick = flag && *flag ? flag : (env && *env ? env : NULL);
	if (pick) {
		if ((size_t)snprintf(out, n, "%s", pick) >= n)
			return err_set(err, ERR_INVAL, "model path too long");
		return 0;
	}
	if (shared_next_to_binary(out, n) == 0 ||
	    (snprintf(out, n, "../shared/models/stories260K.gguf"), readable(out))) {
		LOGI("model", "no --model-path: using %s", out);
		return 0;
	}
	if (synth_default_path(out, n) < 0)
		return err_set(err, ERR_NOTFOUND,
			       "no model: pass --model-path or set PDSERVE_MODEL (no $HOME for a synthesized one)");
	if (readable(out)) {
		LOGI("model", "no --model-path: using the synthesized model %s", out);
		return 0;
	}
	synth_config cfg;
	synth_preset("tiny", &cfg);
	LOGI("model", "no --model-path and no ../shared: writing a random-weight model to %s", out);
	return synth_write(&cfg, out, err);
}

int cmd_kv_dtype(const char *s)
{
	if (!strcasecmp(s, "f32") || !strcasecmp(s, "float32"))
		return QTYPE_F32;
	if (!strcasecmp(s, "f16") || !strcasecmp(s, "float16") || !strcasecmp(s, "auto"))
		return QTYPE_F16;
	if (!strcasecmp(s, "bf16") || !strcasecmp(s, "bfloat16"))
		return QTYPE_BF16;
	return -1;
}

int cmd_parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int cmd_parse_float(const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int cmd_host_is_loopback(const char *host)
{
	return host && (!strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "::1") ||
			!strcmp(host, "[::1]"));
}
