/* qtypes.c - the ggml type table. */
#include "kernels/qtypes.h"

#include <stdio.h>

/* Block sizes of types we do not compute with are still listed so a GGUF
   holding them can be parsed and reported by name. */
static const qtype_info table[QTYPE_COUNT] = {
	[0] = { "F32", 1, 4, 1, QTYPE_F32 },
	[1] = { "F16", 1, 2, 1, QTYPE_F16 },
	[2] = { "Q4_0", 32, 18, 1, QTYPE_Q8_0 },
	[3] = { "Q4_1", 32, 20, 1, QTYPE_Q8_1 },
	[6] = { "Q5_0", 32, 22, 1, QTYPE_Q8_0 },
	[7] = { "Q5_1", 32, 24, 1, QTYPE_Q8_1 },
	[8] = { "Q8_0", 32, 34, 1, QTYPE_Q8_0 },
	[9] = { "Q8_1", 32, 36, 0, QTYPE_Q8_1 },
	[10] = { "Q2_K", 256, 84, 0, QTYPE_Q8_K },
	[11] = { "Q3_K", 256, 110, 0, QTYPE_Q8_K },
	[12] = { "Q4_K", 256, 144, 1, QTYPE_Q8_K },
	[13] = { "Q5_K", 256, 176, 1, QTYPE_Q8_K },
	[14] = { "Q6_K", 256, 210, 1, QTYPE_Q8_K },
	[15] = { "Q8_K", 256, 292, 0, QTYPE_Q8_K },
	[16] = { "IQ2_XXS", 256, 66, 0, 0 },
	[17] = { "IQ2_XS", 256, 74, 0, 0 },
	[18] = { "IQ3_XXS", 256, 98, 0, 0 },
	[19] = { "IQ1_S", 256, 50, 0, 0 },
	[20] = { "IQ4_NL", 32, 18, 0, 0 },
	[21] = { "IQ3_S", 256, 110, 0, 0 },
	[22] = { "IQ2_S", 256, 82, 0, 0 },
	[23] = { "IQ4_XS", 256, 136, 0, 0 },
	[24] = { "I8", 1, 1, 0, 0 },
	[25] = { "I16", 1, 2, 0, 0 },
	[26] = { "I32", 1, 4, 0, 0 },
	[27] = { "I64", 1, 8, 0, 0 },
	[28] = { "F64", 1, 8, 0, 0 },
	[29] = { "IQ1_M", 256, 56, 0, 0 },
	[30] = { "BF16", 1, 2, 1, QTYPE_BF16 },
	[34] = { "TQ1_0", 256, 54, 0, 0 },
	[35] = { "TQ2_0", 256, 66, 0, 0 },
	[39] = { "MXFP4", 32, 17, 0, 0 },
};

const qtype_info *qtype_get(int type)
{
	if (type < 0 || type >= QTYPE_COUNT || !table[type].name)
		return NULL;
	return &table[type];
}

const char *qtype_name(int type)
{
	static _Thread_local char buf[32];
	const qtype_info *q = qtype_get(type);
	if (q)
		return q->name;
	snprintf(buf, sizeof(buf), "type %d", type);
	return buf;
}

size_t qtype_row_size(int type, int64_t n)
{
	const qtype_info *q = qtype_get(type);
	if (!q || n < 0 || n % q->blck)
		return 0;
	return (size_t)(n / q->blck) * (size_t)q->type_size;
}
