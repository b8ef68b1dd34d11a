/* The shared helpers of lora_test.h: the PEFT reference set, one forward
 * run with an adapter, NMSE checks.
 */
#include <stdlib.h>
#include <string.h>

#include "lora_test.h"

int lt_ref_load(lt_ref *r) {
    memset(r, 0, sizeof *r);
    char *text;
    int rc = lloco_file_read(lloco_test_fixture("lora/ref.json"), 1 << 20, &text, NULL);
    CHECKF(rc == 0, "cannot read tests/fixtures/lora/ref.json: %s", lloco_last_error());
    if (rc) return -1;
    r->root = cJSON_Parse(text);
    free(text);
    r->adapters = cJSON_GetObjectItem(r->root, "adapters");
    const cJSON *e, *toks = cJSON_GetObjectItem(r->root, "tokens");
    cJSON_ArrayForEach(e, toks) {
        if (r->n_tokens < LT_MAX_TOKENS) r->tokens[r->n_tokens++] = (int32_t)e->valuedouble;
    }
    CHECKF(cJSON_IsObject(r->adapters) && r->n_tokens > 0,
           "lora/ref.json lacks adapters or tokens");
    return cJSON_IsObject(r->adapters) && r->n_tokens > 0 ? 0 : -1;
}

void lt_ref_free(lt_ref *r) { cJSON_Delete(r->root); }

const char *lt_adapter_dir(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "lora/%s", name);
    return lloco_test_fixture(rel);
}

float *lt_ref_array(const cJSON *adapter, const char *what, size_t n) {
    const cJSON *o = cJSON_GetObjectItem(adapter, what);
    const cJSON *f = cJSON_GetObjectItem(o, "file");
    char rel[256], *buf = NULL;
    size_t len = 0;
    if (cJSON_IsString(f)) {
        snprintf(rel, sizeof rel, "lora/%s", f->valuestring);
        if (lloco_file_read(lloco_test_fixture(rel), 16 << 20, &buf, &len)) buf = NULL;
    }
    if (!buf || len != n * sizeof(float)) {
        CHECKF(0, "%s: reference '%s' missing or not %zu floats", adapter->string, what, n);
        free(buf);
        return NULL;
    }
    return (float *)buf;
}

int lt_run(lloco_decoder *d, const int32_t *tokens, int n, const lloco_adapter_view *a,
           float *logits) {
    lloco_kv *kv;
    int rc = lloco_kv_create(lloco_decoder_model(d), 0, LLOCO_DTYPE_F32, &kv);
    if (rc) return rc;
    int32_t idx[LT_MAX_TOKENS];
    for (int i = 0; i < n; i++) idx[i] = i;
    lloco_seq_batch b = {.kv = kv,
                         .n = n,
                         .tokens = tokens,
                         .n_out = n,
                         .out_idx = idx,
                         .logits = logits,
                         .adapter = a};
    rc = lloco_decoder_forward(d, &b, 1);
    lloco_kv_free(kv);
    return rc;
}

double lt_nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double dd = (double)got[i] - ref[i];
        num += dd * dd;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

double lt_check_nmse(const char *what, const float *ref, const float *got, size_t n, double bound) {
    const double e = lt_nmse(ref, got, n);
    CHECKF(e <= bound, "%s: NMSE %.3g > bound %.1g", what, e, bound);
    if (!(e <= bound))
        for (size_t i = 0, shown = 0; i < n && shown < 5; i++)
            if (fabsf(ref[i] - got[i]) > 1e-4f + 1e-3f * fabsf(ref[i])) {
                fprintf(stderr, "    %s [%zu] ref %.6f got %.6f\n", what, i, ref[i], got[i]);
                shown++;
            }
    return e;
}
