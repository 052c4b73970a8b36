/* generate.c - placeholder until the subcommand lands (this session). */
#include <stdio.h>

#include "cmd/cmd.h"

int cmd_generate(int argc, char **argv)
{
	(void)argc;
	fprintf(stderr, "pdserve %s: not built yet\n", argv[0]);
	return 2;
}
