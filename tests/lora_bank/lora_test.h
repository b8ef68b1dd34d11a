/* Helpers shared by the lora_bank tests: the PEFT reference set written by
 * tests/tools/make_tiny_lora.py (tests/fixtures/lora/ref.json), running the
 * tiny model over its tokens with an adapter, and NMSE.
 */
#ifndef LLOCO_TESTS_LORA_TEST_H
#define LLOCO_TESTS_LORA_TEST_H

#include <cjson/cJSON.h>

#include "lora_bank/lora_bank.h"
#include "test.h"

#define LT_MAX_TOKENS 64

typedef struct {
    cJSON *root;
    const cJSON *adapters; /* name -> {dir, r, ..., logits, merged_logits} */
    int32_t tokens[LT_MAX_TOKENS];
    int n_tokens;
} lt_ref;

/* 0, or a recorded test failure and -1. */
int lt_ref_load(lt_ref *r);
void lt_ref_free(lt_ref *r);
/* Fixture path of an adapter directory named in ref.json. */
const char *lt_adapter_dir(const char *name);
/* A reference array of the adapter (what = "logits" or "merged_logits"),
 * malloc'ed; NULL (and a failure recorded) if absent or of the wrong size. */
float *lt_ref_array(const cJSON *adapter, const char *what, size_t n);

/* Runs tokens[n] through a fresh cache in one forward call with adapter a
 * (NULL: the base model), logits at every position into logits. */
int lt_run(lloco_decoder *d, const int32_t *tokens, int n, const lloco_adapter_view *a,
           float *logits);

double lt_nmse(const float *ref, const float *got, size_t n);

/* CHECKs nmse(ref, got) <= bound, printing the first differences if not;
 * returns the NMSE. */
double lt_check_nmse(const char *what, const float *ref, const float *got, size_t n, double bound);

#endif
