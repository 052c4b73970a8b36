/* golden.c - see golden.h. */
#include "golden.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_object *golden_load(const char *path)
{
	return json_object_from_file(path);
}

json_object *golden_prompt(json_object *golden, const char *name)
{
	json_object *ps;
	if (!json_object_object_get_ex(golden, "prompts", &ps))
		return NULL;
	for (size_t i = 0; i < json_object_array_length(ps); i++) {
		json_object *p = json_object_array_get_idx(ps, i), *n;
		if (json_object_object_get_ex(p, "name", &n) && !strcmp(json_object_get_string(n), name))
			return p;
	}
	return NULL;
}

int32_t *golden_ids(json_object *obj, const char *key, int *n)
{
	json_object *a;
	if (!json_object_object_get_ex(obj, key, &a))
		return NULL;
	*n = (int)json_object_array_length(a);
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
	for (int i = 0; i < *n; i++)
		ids[i] = json_object_get_int(json_object_array_get_idx(a, (size_t)i));
	return ids;
}

static double row_logsumexp(const float *r, int n)
{
	double m = r[0], s = 0;
	for (int i = 1; i < n; i++)
		m = r[i] > m ? r[i] : m;
	for (int i = 0; i < n; i++)
		s += exp(r[i] - m);
	return m + log(s);
}

static int row_argmax(const float *r, int n)
{
	int b = 0;
	for (int i = 1; i < n; i++)
		if (r[i] > r[b])
			b = i;
	return b;
}

int golden_compare(json_object *prompt, const char *golden_dir, const float *eng, int n_rows,
		   double tie_eps, golden_cmp *out)
{
	json_object *tf, *o;
	memset(out, 0, sizeof(*out));
	if (!json_object_object_get_ex(prompt, "teacher_forced", &tf))
		return -1;
	json_object_object_get_ex(tf, "n_positions", &o);
	int n_pos = json_object_get_int(o);
	json_object_object_get_ex(tf, "n_vocab", &o);
	int n_vocab = json_object_get_int(o);
	if (n_rows > n_pos) {
		fprintf(stderr, "golden: %d engine rows > %d positions\n", n_rows, n_pos);
		return -1;
	}
	float *full = NULL;
	if (json_object_object_get_ex(tf, "logits_file", &o) && json_object_get_string(o)) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", golden_dir, json_object_get_string(o));
		FILE *f = fopen(path, "rb");
		if (!f) {
			fprintf(stderr, "golden: cannot open %s\n", path);
			return -1;
		}
		full = malloc(sizeof(float) * (size_t)n_pos * n_vocab);
		size_t got = fread(full, sizeof(float), (size_t)n_pos * n_vocab, f);
		fclose(f);
		if (got != (size_t)n_pos * n_vocab) {
			fprintf(stderr, "golden: %s is short\n", path);
			free(full);
			return -1;
		}
	}
	json_object *top, *argm, *lse;
	json_object_object_get_ex(tf, "top", &top);
	json_object_object_get_ex(tf, "argmax", &argm);
	int have_lse = json_object_object_get_ex(tf, "logsumexp", &lse);
	double sum_rel = 0;
	for (int i = 0; i < n_rows; i++) {
		const float *e = eng + (size_t)i * n_vocab;
		json_object *ti = json_object_array_get_idx(top, (size_t)i);
		int k = (int)json_object_array_length(ti);
		double max_abs = 0, num = 0, den = 0;
		if (full) {
			const float *g = full + (size_t)i * n_vocab;
			for (int j = 0; j < n_vocab; j++) {
				double d = (double)e[j] - g[j];
				max_abs = fmax(max_abs, fabs(d));
				num += d * d;
				den += (double)g[j] * g[j];
			}
		}
		double g0 = 0, g1 = -INFINITY;
		double le = row_logsumexp(e, n_vocab), lg = have_lse ? json_object_get_double(json_object_array_get_idx(lse, (size_t)i)) : 0;
		double lp = 0;
		for (int j = 0; j < k; j++) {
			json_object *pr = json_object_array_get_idx(ti, (size_t)j);
			int id = json_object_get_int(json_object_array_get_idx(pr, 0));
			double v = (float)json_object_get_double(json_object_array_get_idx(pr, 1));
			if (j == 0)
				g0 = v;
			if (j == 1)
				g1 = v;
			if (!full) {
				double d = e[id] - v;
				max_abs = fmax(max_abs, fabs(d));
				num += d * d;
				den += v * v;
			}
			if (have_lse)
				lp = fmax(lp, fabs((e[id] - le) - (v - lg)));
		}
		if (isnan(le))
			max_abs = num = INFINITY;
		double rel = sqrt(num) / (den > 0 ? sqrt(den) : 1.0);
		if (max_abs > out->max_abs) {
			out->max_abs = max_abs;
			out->worst_pos = i;
		}
		out->max_rel = fmax(out->max_rel, rel);
		sum_rel += rel;
		out->max_logprob = fmax(out->max_logprob, lp);
		int g_arg = json_object_get_int(json_object_array_get_idx(argm, (size_t)i));
		int tie = (g0 - g1) < tie_eps;
		if (!tie) {
			out->counted++;
			out->agree += row_argmax(e, n_vocab) == g_arg;
		}
	}
	out->rows = n_rows;
	out->mean_rel = n_rows ? sum_rel / n_rows : 0;
	free(full);
	return 0;
}
