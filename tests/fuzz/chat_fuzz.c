/* chat_fuzz.c - libFuzzer target: conversations (NUL-separated role/content
 * pairs) rendered by every chat template family. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "model/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *roles[] = { "system", "user", "assistant", "tool", "developer" };
	char *buf = malloc(size + 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	buf[size] = '\0';
	chat_msg msgs[16];
	size_t n = 0;
	char *p = buf, *end = buf + size;
	while (p < end && n < 16) {
		size_t len = strlen(p);
		msgs[n].role = roles[(unsigned char)(len ? p[0] : 0) % 5];
		msgs[n].content = len ? p + 1 : p;
		n++;
		p += len + 1;
	}
	for (int f = 0; f < CHAT_TMPL_COUNT; f++) {
		chat_render_opts o;
		memset(&o, 0, sizeof(o));
		o.add_generation_prompt = size & 1;
		o.bos_token = "<s>";
		o.eos_token = "</s>";
		o.date_string = "26 Jul 2024";
		char *out = NULL, err[ERR_LEN];
		size_t len;
		if (chat_template_render((chat_tmpl_family)f, msgs, n, &o, &out, &len, err) == 0)
			alloc_free(out);
	}
	bool known;
	chat_template_detect(buf, size, &known);
	free(buf);
	return 0;
}
