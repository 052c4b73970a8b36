/* testutil.c - see testutil.h. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

const char *test_shared(const char *rel)
{
	static char bufs[8][4096];
	static int slot;
	char *b = bufs[slot++ & 7];
	const char *dir = getenv("PDSERVE_SHARED");
	if (dir && *dir)
		snprintf(b, 4096, "%s/%s", dir, rel);
	else
		snprintf(b, 4096, "%s/../shared/%s", PDSERVE_SRCDIR, rel);
	return access(b, R_OK) == 0 ? b : NULL;
}

char *test_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *b = malloc((size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	if (b) {
		b[n] = '\0';
		if (len)
			*len = (size_t)n;
	}
	return b;
}

const char *test_pdserve_bin(void)
{
	const char *b = getenv("PDSERVE_BIN");
	return b && *b ? b : PDSERVE_SRCDIR "/build/pdserve";
}
