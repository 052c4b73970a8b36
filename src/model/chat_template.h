/* chat_template.h - chat messages to a prompt string, per template family.
 *
 * We do not run Jinja. Each family below is a hand-written renderer whose
 * output is byte-identical to rendering that family's real Hugging Face
 * template with Python's jinja2 the way transformers' apply_chat_template
 * does (trim_blocks, lstrip_blocks, bos_token / eos_token, no tools), and
 * which fails with the template's own raise_exception() message where the
 * template raises. tools/gen_chat_expected.py renders the real templates into
 * tests/data/chat/, and tests/unit/chat_template_test.c holds us to it.
 *
 * A model's family comes from its GGUF tokenizer.chat_template text
 * (chat_template_detect) or from a --chat-template name
 * (chat_template_from_name). Unknown templates fall back to plain ChatML;
 * the caller should log a warning then.
 *
 * Out of scope: tools and tool calls (a "tool" message is rendered only from
 * its content; see chat_template_render), multimodal content parts, and any
 * template we have no renderer for.
 */
#ifndef PDSERVE_MODEL_CHAT_TEMPLATE_H
#define PDSERVE_MODEL_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/err.h"

typedef enum {
	CHAT_TMPL_CHATML,       /* "chatml": <|im_start|>role\ncontent<|im_end|>\n, no default system */
	CHAT_TMPL_QWEN2,        /* "qwen2": ChatML + "You are a helpful assistant" (Qwen2-Instruct) */
	CHAT_TMPL_QWEN25,       /* "qwen2.5": ChatML + "You are Qwen, created by Alibaba Cloud. ..." */
	CHAT_TMPL_LLAMA3,       /* "llama3": Meta-Llama-3-8B-Instruct (3.0), no system block */
	CHAT_TMPL_LLAMA31,      /* "llama3.1": system block with Cutting Knowledge / Today Date (3.1, 3.3) */
	CHAT_TMPL_LLAMA32,      /* "llama3.2": as 3.1, but today's date by default */
	CHAT_TMPL_MISTRAL_NEMO, /* "mistral-nemo": [INST]..[/INST] without spaces (v3 tekken) */
	CHAT_TMPL_GEMMA,        /* "gemma": Gemma 1 / 2 <start_of_turn>, no system role */
	CHAT_TMPL_PHI3,         /* "phi3": Phi-3.5-mini <|user|> ... <|end|> */
	CHAT_TMPL_DEEPSEEK_R1,  /* "deepseek-r1": R1 distills, <｜User｜>, drops reasoning before </think> */
	CHAT_TMPL_SMOLLM3,      /* "smollm3": ChatML with a metadata system block and /think, /no_think */
	CHAT_TMPL_COUNT,
} chat_tmpl_family;

/* One message. Both strings are borrowed, NUL-terminated UTF-8. role is one
   of "system", "user", "assistant", "tool"; content must not be NULL (an
   OpenAI null content is the caller's to turn into "" or refuse). */
typedef struct {
	const char *role;
	const char *content;
} chat_msg;

/* Zero-initialised = the template's defaults with no generation prompt and
   empty bos/eos text (what transformers passes as bos_token/eos_token is the
   tokenizer's token text, e.g. "<|begin_of_text|>"; pass that). */
typedef struct {
	bool add_generation_prompt; /* end with the assistant header */
	const char *bos_token;      /* NULL = "" */
	const char *eos_token;      /* NULL = "" */
	/* Llama 3.1/3.2 "Today Date: ..." text. NULL = what the template does:
	   "26 Jul 2024" for 3.1, today's local date as "%d %b %Y" for 3.2. */
	const char *date_string;
	/* SmolLM3 only: as chat_template_kwargs {"enable_thinking": false}. A
	   "/think" or "/no_think" in the system message still wins. */
	bool disable_thinking;
} chat_render_opts;

/* Family of a tokenizer.chat_template text (len bytes; need not be
   NUL-terminated; NULL or empty = the GGUF has none). Matches signature
   substrings of the templates we implement. When nothing matches it returns
   CHAT_TMPL_CHATML and sets *known (may be NULL) to false: the caller should
   log that it is falling back. A template with ChatML markers counts as
   plain ChatML only without tools, <think> tags and <|im_sep|>; Qwen3,
   QwQ, Hermes tool use, Phi-4 and the like are fallbacks. */
chat_tmpl_family chat_template_detect(const char *text, size_t len, bool *known);

/* Family by name, case-insensitive: our names (chat_template_name) plus
   llama.cpp's and SGLang's --chat-template names where one means the same
   format ("llama-3", "llama3.3", "mistral-v3-tekken", "gemma-it", "phi-3",
   ...). 0, or ERR_NOTFOUND (*out untouched). */
int chat_template_from_name(const char *name, chat_tmpl_family *out);

/* Canonical name of f ("llama3.1"); "?" when out of range. */
const char *chat_template_name(chat_tmpl_family f);

/* Render msgs[0..n) with family f. o may be NULL (all defaults).
   On success returns 0 and *out is a NUL-terminated prompt of *len bytes
   (the NUL not counted), owned by the caller, freed with alloc_free().
   On failure *out = NULL, *len = 0 and err (may be NULL) holds one sentence
   fit for an HTTP 400:
     ERR_INVAL  the template refuses the conversation, with its own message
                ("System role not supported", "After the optional system
                message, conversation roles must alternate ..."); or n == 0;
                or a message with a NULL string or a role outside the four
                above ("message 2: unknown role \"developer\" ...");
     ERR_NOMEM  allocation failed or the prompt would not fit in size_t.
   Roles are passed through as each template does: e.g. Qwen 2.5 wraps
   "tool" content in <tool_response>, Llama 3.x writes it as an ipython turn
   JSON-quoted, Phi 3.5 drops it, and Mistral Nemo refuses it (the template
   needs a tool call id, which chat_msg does not carry). Content may be any
   bytes; text that is not valid UTF-8 is copied through, never trimmed
   inside a broken sequence. */
int chat_template_render(chat_tmpl_family f, const chat_msg *msgs, size_t n,
			 const chat_render_opts *o, char **out, size_t *len, char err[ERR_LEN]);

/* What llama.cpp does before tokenizing a rendered prompt: when the tokenizer
   adds BOS itself, a leading bos text would become a second BOS, so drop it;
   likewise a trailing eos text when it adds EOS. bos / eos: the token text to
   strip, or NULL / "" to keep that end. Edits prompt in place (it stays
   NUL-terminated when it was) and returns the new length. This is the
   caller's job: chat_template_render never strips. */
size_t chat_template_strip_bos_eos(char *prompt, size_t len, const char *bos, const char *eos);

#endif
