/* openai_fuzz.c - libFuzzer target: HTTP request bodies of every endpoint
 * (first byte picks /v1/completions, /v1/chat/completions or /generate). */
#include <stddef.h>
#include <stdint.h>

#include "server/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	static const openai_api apis[] = { OPENAI_API_COMPLETIONS, OPENAI_API_CHAT, OPENAI_API_GENERATE };
	openai_request r;
	openai_error e;
	if (openai_parse(apis[data[0] % 3], (const char *)data + 1, size - 1, &r, &e) == 0)
		openai_request_fini(&r);
	return 0;
}
