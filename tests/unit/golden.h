/* golden.h - compare an engine's logits with a llama.cpp golden file.
 *
 * The same measures as ../shared/tools/compare_logits.py (see the README of
 * ../shared/models/synth): per position max-abs and relative L2 error (over
 * the full row when the golden has a logits file, else over its top-K ids),
 * log-softmax error over the top-K ids, and top-1 agreement where the
 * golden's top-2 margin is at least tie_eps.
 */
#ifndef PDSERVE_TESTS_GOLDEN_H
#define PDSERVE_TESTS_GOLDEN_H

#include <json-c/json.h>
#include <stdint.h>

typedef struct {
	double max_abs, max_rel, mean_rel, max_logprob;
	int worst_pos;
	int agree, counted; /* top-1 over non-tie positions */
	int rows;
} golden_cmp;

/* Load a golden JSON (caller json_object_put()s it). NULL if unreadable. */
json_object *golden_load(const char *path);
/* prompts[i] of the golden, by name; NULL if absent. */
json_object *golden_prompt(json_object *golden, const char *name);
/* Integer array field of obj (e.g. "prompt_ids", "gen_ids"); *n gets the
   length. malloc'd; NULL if absent. */
int32_t *golden_ids(json_object *obj, const char *key, int *n);

/* Compare n_rows engine rows [n_rows][n_vocab] with prompt's
   teacher_forced data. golden_dir: folder of the JSON (for logits_file).
   0 on success, -1 on shape errors (message printed). */
int golden_compare(json_object *prompt, const char *golden_dir, const float *eng, int n_rows,
		   double tie_eps, golden_cmp *out);

#endif
