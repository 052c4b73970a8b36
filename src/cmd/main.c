/* main.c - the pdserve binary: one subcommand per program.
 *
 * Each subcommand lives in its own src/cmd/<name>.c and exports
 * `int cmd_<name>(int argc, char **argv)` where argv[0] is the subcommand name.
 * Only src/cmd/ may exit the process; subcommands return the exit status.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
} cmds[] = {
	{ "generate", cmd_generate, "generate text from a prompt with a GGUF model" },
	{ "model", cmd_model, "model info FILE | model synth [OUT]" },
	{ "tokenize", cmd_tokenize, "print the token ids of a text" },
	{ "detokenize", cmd_detokenize, "print the text of token ids" },
	{ "server", cmd_server, "OpenAI-compatible HTTP server (SGLang launch_server flags)" },
	{ "launch_server", cmd_server, "alias of server" },
	{ "router", cmd_router, "PD / load-balancing router in front of servers (SGLang router flags)" },
	{ "launch_router", cmd_router, "alias of router" },
	{ "bench", cmd_bench, "bench serving (load generator) | bench engine" },
	{ "bench_serving", cmd_bench_serving, "alias of bench serving (SGLang bench_serving flags)" },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: pdserve COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].help);
	fprintf(f, "\n'pdserve COMMAND --help' describes each.\n");
}

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "pdserve: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
