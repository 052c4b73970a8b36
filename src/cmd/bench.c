/* bench.c - `pdserve bench WHAT [flags]`: the benchmark tools, one per
 * first argument.
 *
 *   pdserve bench serving ...   serving load generator (SGLang's bench_serving;
 *                               src/cmd/bench_serving.c, also `pdserve bench_serving`)
 *   pdserve bench engine ...    forward-pass pp/tg/batched tok/s, llama-bench style
 *                               (src/cmd/bench_engine.c)
 *   pdserve bench transfer ...  KV transfer per backend vs memcpy / TCP ceilings
 *                               (src/cmd/bench_transfer.c)
 *
 * Flags and wiring only: each tool parses its own flags.
 */
#include <stdio.h>
#include <string.h>

#include "cmd/cmd.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: pdserve bench serving [flags]   serving load generator (SGLang bench_serving flags)\n"
		   "       pdserve bench engine [flags]    engine and kernel timings\n"
		   "       pdserve bench transfer [flags]  KV transfer per backend vs memcpy and TCP\n"
		   "'pdserve bench serving --help' lists its flags.\n");
}

int cmd_bench(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "serving"))
		return cmd_bench_serving(argc - 1, argv + 1);
	if (!strcmp(argv[1], "transfer"))
		return cmd_bench_transfer(argc - 1, argv + 1);
	if (!strcmp(argv[1], "engine"))
		return cmd_bench_engine(argc - 1, argv + 1);
	fprintf(stderr, "pdserve bench: unknown benchmark '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
