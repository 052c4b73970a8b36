/* testutil.h - helpers shared by the unit tests. */
#ifndef PDSERVE_TESTS_TESTUTIL_H
#define PDSERVE_TESTS_TESTUTIL_H

#include <stddef.h>

/* Absolute path of a file under ../shared/ (the fixture folder next to the
   checkout, e.g. "models/stories260K.gguf"), or NULL when it is not there.
   $PDSERVE_SHARED overrides the folder. Returns a static buffer per call slot
   (up to 8 live results). */
const char *test_shared(const char *rel);

/* Read a whole file into a malloc'd buffer (NUL-terminated; *len excludes
   the NUL). NULL on failure. */
char *test_read_file(const char *path, size_t *len);

/* Path of the pdserve binary under test ($PDSERVE_BIN, else build/pdserve). */
const char *test_pdserve_bin(void);

#endif
