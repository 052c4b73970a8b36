/* tokenize.c - placeholder until the subcommands land (this session). */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_tokenize(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "pdserve %s: not built yet\n", argv[0]);
	return 2;
}

int cmd_detokenize(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "pdserve %s: not built yet\n", argv[0]);
	return 2;
}
