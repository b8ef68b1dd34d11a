/* The transformer against reference outputs: the tiny random-weight LLaMA
 * fixtures (tests/fixtures/tiny-llama, written by tests/tools/
 * make_tiny_llama.py with transformers) in every file format and dtype, on
 * every CPU backend; plus batching, chunking, embeddings input and the KV
 * cache behaving as documented.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"
#include "test.h"

typedef struct {
    cJSON *root;
    int n_vocab, d_model;
    int32_t tokens[64];
    int n_tokens;
    int32_t embd_tokens[64];
    int n_embd_tokens, n_embd_rows;
    float *embd_rows;
} ref_set;

static float *read_f32(const char *rel, size_t expect) {
    char *buf;
    size_t len;
    if (lloco_file_read(lloco_test_fixture(rel), 64 << 20, &buf, &len)) return NULL;
    if (len != expect * sizeof(float)) {
        free(buf);
        return NULL;
    }
    return (float *)buf;
}

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (n < cap) out[n] = (int32_t)e->valuedouble;
        n++;
    }
    return n <= cap ? n : -1;
}

static int ref_load(ref_set *r) {
    memset(r, 0, sizeof *r);
    char *text;
    if (lloco_file_read(lloco_test_fixture("tiny-llama/ref.json"), 1 << 20, &text, NULL)) return -1;
    r->root = cJSON_Parse(text);
    free(text);
    if (!r->root) return -1;
    r->n_vocab = cJSON_GetObjectItem(r->root, "n_vocab")->valueint;
    r->d_model = cJSON_GetObjectItem(r->root, "n_embd")->valueint;
    r->n_tokens = read_ids(cJSON_GetObjectItem(r->root, "tokens"), r->tokens, 64);
    const cJSON *ec = cJSON_GetObjectItem(r->root, "embd_case");
    r->n_embd_tokens = read_ids(cJSON_GetObjectItem(ec, "tokens"), r->embd_tokens, 64);
    r->n_embd_rows = cJSON_GetArrayItem(cJSON_GetObjectItem(ec, "rows_shape"), 0)->valueint;
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-llama/%s", cJSON_GetObjectItem(ec, "rows_file")->valuestring);
    r->embd_rows = read_f32(rel, (size_t)r->n_embd_rows * (size_t)r->d_model);
    return r->n_tokens > 0 && r->n_embd_tokens > 0 && r->embd_rows ? 0 : -1;
}

static void ref_free(ref_set *r) {
    cJSON_Delete(r->root);
    free(r->embd_rows);
}

static float *variant_array(const cJSON *v, const char *what, size_t n) {
    const cJSON *o = cJSON_GetObjectItem(v, what);
    if (!o) return NULL;
    char rel[256];
    snprintf(rel, sizeof rel, "tiny-llama/%s", cJSON_GetObjectItem(o, "file")->valuestring);
    return read_f32(rel, n);
}

static double nmse(const float *ref, const float *got, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}

/* Bound on the normalized MSE of logits and hidden states vs transformers.
 * Float weights: only summation order differs (f32 rounding, ~1e-12).
 * Quantized weights: lloco, like GGML, quantizes activations to 8 bits per
 * 32 (or 256) values before each matmul; that rounding (relative error up
 * to 1/254 per element) is the measured ~1e-5..1e-4, so the bound is 1e-3. */
static double bound_for(const char *variant) {
    if (strstr(variant, "q4") || strstr(variant, "q8") || strstr(variant, "q6")) return 1e-3;
    return 1e-7;
}

/* Runs n positions through the model in one forward call, outputs at all. */
static int run_all(lloco_model *m, lloco_backend_kind be, int chunk, const int32_t *tokens,
                   const float *embd, int n, float *logits, float *hidden) {
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.backend = be;
    dp.max_batch_tokens = chunk;
    lloco_decoder *d;
    lloco_kv *kv;
    int rc = lloco_decoder_create(m, &dp, &d);
    if (rc) return rc;
    if ((rc = lloco_kv_create(m, 0, LLOCO_DTYPE_F32, &kv))) {
        lloco_decoder_free(d);
        return rc;
    }
    int32_t idx[64];
    for (int i = 0; i < n; i++) idx[i] = i;
    lloco_seq_batch b = {.kv = kv, .n = n, .tokens = tokens, .embd = embd, .n_out = n,
                         .out_idx = idx, .logits = logits, .hidden = hidden};
    rc = lloco_decoder_forward(d, &b, 1);
    if (!rc && lloco_kv_len(kv) != n) rc = lloco_error(LLOCO_ERR_MISMATCH, "kv len %d != %d", lloco_kv_len(kv), n);
    lloco_kv_free(kv);
    lloco_decoder_free(d);
    return rc;
}

static double worst_nmse;

static void compare(const char *what, const char *variant, const float *ref, const float *got,
                    size_t n, double bound) {
    double e = nmse(ref, got, n);
    if (e > worst_nmse) worst_nmse = e;
    CHECKF(e <= bound, "%s %s: NMSE %.3g > bound %.1g", variant, what, e, bound);
    if (e > bound) {
        for (size_t i = 0, shown = 0; i < n && shown < 5; i++)
            if (fabsf(ref[i] - got[i]) > 1e-3f + 1e-2f * fabsf(ref[i])) {
                fprintf(stderr, "    [%zu] ref %.6f got %.6f\n", i, ref[i], got[i]);
                shown++;
            }
    }
}

TEST_CASE(tiny_llama_matches_transformers) {
    ref_set r;
    if (ref_load(&r)) {
        CHECKF(0, "cannot load tests/fixtures/tiny-llama/ref.json");
        return;
    }
    const cJSON *variants = cJSON_GetObjectItem(r.root, "variants");
    int n_variants = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, variants) {
        const char *name = v->string;
        char rel[256];
        snprintf(rel, sizeof rel, "tiny-llama/%s", cJSON_GetObjectItem(v, "model")->valuestring);
        lloco_model *m;
        int rc = lloco_model_open(lloco_test_fixture(rel), &m);
        CHECK_OK(rc);
        if (rc) continue;
        n_variants++;
        size_t nl = (size_t)r.n_tokens * (size_t)r.n_vocab, nh = (size_t)r.n_tokens * (size_t)r.d_model;
        float *ref_l = variant_array(v, "logits", nl), *ref_h = variant_array(v, "hidden", nh);
        int ne = r.n_embd_rows + r.n_embd_tokens;
        size_t nel = (size_t)ne * (size_t)r.n_vocab, neh = (size_t)ne * (size_t)r.d_model;
        float *ref_el = variant_array(v, "embd_logits", nel), *ref_eh = variant_array(v, "embd_hidden", neh);
        CHECKF(ref_l && ref_h && ref_el && ref_eh, "%s: reference files missing or wrong size", name);
        float *l = malloc(nl * sizeof(float)), *h = malloc(nh * sizeof(float));
        float *el = malloc(nel * sizeof(float)), *eh = malloc(neh * sizeof(float));
        float *embd = calloc(neh, sizeof(float));
        int32_t etok[64];
        for (int i = 0; i < ne; i++) etok[i] = i < r.n_embd_rows ? LLOCO_TOKEN_EMBD : r.embd_tokens[i - r.n_embd_rows];
        memcpy(embd, r.embd_rows, sizeof(float) * (size_t)r.n_embd_rows * (size_t)r.d_model);
        double bound = bound_for(name);
        worst_nmse = 0;
        for (int be = LLOCO_BACKEND_CPU_REF; be <= LLOCO_BACKEND_CPU && ref_l && ref_el; be++) {
            /* chunk 512: one step; chunk 5: the sequence split across steps */
            for (int chunk = 512; chunk >= 5; chunk = chunk == 512 ? 5 : 0) {
                char what[64];
                CHECK_OK(run_all(m, (lloco_backend_kind)be, chunk, r.tokens, NULL, r.n_tokens, l, h));
                snprintf(what, sizeof what, "logits (backend %d, chunk %d)", be, chunk);
                compare(what, name, ref_l, l, nl, bound);
                snprintf(what, sizeof what, "hidden (backend %d, chunk %d)", be, chunk);
                compare(what, name, ref_h, h, nh, bound);
                CHECK_OK(run_all(m, (lloco_backend_kind)be, chunk, etok, embd, ne, el, eh));
                snprintf(what, sizeof what, "embd logits (backend %d, chunk %d)", be, chunk);
                compare(what, name, ref_el, el, nel, bound);
                snprintf(what, sizeof what, "embd hidden (backend %d, chunk %d)", be, chunk);
                compare(what, name, ref_eh, eh, neh, bound);
            }
        }
        fprintf(stderr, "  %-16s worst NMSE %.2g (bound %.0e)\n", name, worst_nmse, bound);
        free(ref_l), free(ref_h), free(ref_el), free(ref_eh);
        free(l), free(h), free(el), free(eh), free(embd);
        lloco_model_close(m);
    }
    CHECKF(n_variants >= 8, "only %d variants checked", n_variants);
    ref_free(&r);
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Sequences batched together (different lengths, prefill and decode mixed)
 * get the same logits as each run alone. */
TEST_CASE(batch_equals_alone) {
    lloco_model *m;
    int rc = lloco_model_open(lloco_test_fixture("tiny-llama/tiny-q4_1.gguf"), &m);
    CHECK_OK(rc);
    if (rc) return;
    int nv = lloco_model_hparams(m)->n_vocab;
    lloco_decoder *d;
    CHECK_OK(lloco_decoder_create(m, NULL, &d));
    enum { NS = 3, STEPS = 6 };
    const int plen[NS] = {7, 1, 19};
    int32_t prompt[NS][32];
    for (int s = 0; s < NS; s++)
        for (int i = 0; i < plen[s]; i++) prompt[s][i] = (int32_t)((s * 31 + i * 17) % 256);
    /* alone: prefill then greedy decode */
    int32_t alone[NS][STEPS];
    float *lg = malloc(sizeof(float) * (size_t)nv * NS);
    for (int s = 0; s < NS; s++) {
        lloco_kv *kv;
        CHECK_OK(lloco_kv_create(m, 64, LLOCO_DTYPE_F16, &kv));
        lloco_seq_batch b = {.kv = kv, .n = plen[s], .tokens = prompt[s], .n_out = 1, .logits = lg};
        CHECK_OK(lloco_decoder_forward(d, &b, 1));
        for (int t = 0; t < STEPS; t++) {
            alone[s][t] = argmax(lg, nv);
            b = (lloco_seq_batch){.kv = kv, .n = 1, .tokens = &alone[s][t], .n_out = 1, .logits = lg};
            CHECK_OK(lloco_decoder_forward(d, &b, 1));
        }
        lloco_kv_free(kv);
    }
    /* together: sequence s starts at step s, so prefills and decodes mix */
    lloco_kv *kv[NS];
    int32_t last[NS];
    int done[NS] = {0};
    for (int s = 0; s < NS; s++) CHECK_OK(lloco_kv_create(m, 64, LLOCO_DTYPE_F16, &kv[s]));
    for (int step = 0; step < STEPS + NS; step++) {
        lloco_seq_batch b[NS];
        int owner[NS], nb = 0;
        for (int s = 0; s < NS; s++) {
            if (step < s || done[s] > STEPS) continue;
            if (step == s) b[nb] = (lloco_seq_batch){.kv = kv[s], .n = plen[s], .tokens = prompt[s]};
            else b[nb] = (lloco_seq_batch){.kv = kv[s], .n = 1, .tokens = &last[s]};
            b[nb].n_out = 1;
            b[nb].logits = lg + (size_t)nb * nv;
            owner[nb++] = s;
        }
        if (!nb) break;
        CHECK_OK(lloco_decoder_forward(d, b, nb));
        for (int i = 0; i < nb; i++) {
            int s = owner[i];
            last[s] = argmax(lg + (size_t)i * nv, nv);
            if (done[s] < STEPS) CHECKF(last[s] == alone[s][done[s]], "seq %d step %d: %d batched vs %d alone", s,
                                        done[s], last[s], alone[s][done[s]]);
            done[s]++;
        }
    }
    for (int s = 0; s < NS; s++) lloco_kv_free(kv[s]);
    free(lg);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

TEST_CASE(forward_rejects_bad_input) {
    lloco_model *m;
    int rc = lloco_model_open(lloco_test_fixture("tiny-llama/tiny-f16.gguf"), &m);
    CHECK_OK(rc);
    if (rc) return;
    lloco_decoder *d;
    lloco_kv *kv, *small;
    CHECK_OK(lloco_decoder_create(m, NULL, &d));
    CHECK_OK(lloco_kv_create(m, 0, LLOCO_DTYPE_F16, &kv));
    CHECK_OK(lloco_kv_create(m, 4, LLOCO_DTYPE_F16, &small));
    float lg[512];
    int32_t bad[2] = {5, 100000};
    lloco_seq_batch b = {.kv = kv, .n = 2, .tokens = bad, .n_out = 1, .logits = lg};
    CHECK_ERR(lloco_decoder_forward(d, &b, 1), LLOCO_ERR_RANGE);
    int32_t ok[5] = {1, 2, 3, 4, 5};
    b = (lloco_seq_batch){.kv = small, .n = 5, .tokens = ok, .n_out = 1, .logits = lg};
    CHECK_ERR(lloco_decoder_forward(d, &b, 1), LLOCO_ERR_FULL);
    CHECK(lloco_kv_len(small) == 0);
    int32_t idx = 7;
    b = (lloco_seq_batch){.kv = kv, .n = 5, .tokens = ok, .n_out = 1, .out_idx = &idx, .logits = lg};
    CHECK_ERR(lloco_decoder_forward(d, &b, 1), LLOCO_ERR_RANGE);
    int32_t e[1] = {LLOCO_TOKEN_EMBD};
    b = (lloco_seq_batch){.kv = kv, .n = 1, .tokens = e, .n_out = 1, .logits = lg};
    CHECK_ERR(lloco_decoder_forward(d, &b, 1), LLOCO_ERR_INVAL);
    lloco_seq_batch two[2] = {{.kv = kv, .n = 1, .tokens = ok}, {.kv = kv, .n = 1, .tokens = ok}};
    CHECK_ERR(lloco_decoder_forward(d, two, 2), LLOCO_ERR_INVAL);
    CHECK(lloco_kv_len(kv) == 0);
    lloco_kv *bad_kv;
    CHECK_ERR(lloco_kv_create(m, 0, LLOCO_DTYPE_Q4_0, &bad_kv), LLOCO_ERR_INVAL);
    lloco_kv_free(small);
    lloco_kv_free(kv);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

/* Truncating the cache and re-feeding gives the logits of a fresh run. */
TEST_CASE(kv_truncate_replays) {
    lloco_model *m;
    int rc = lloco_model_open(lloco_test_fixture("tiny-llama/tiny-q8_0.gguf"), &m);
    CHECK_OK(rc);
    if (rc) return;
    int nv = lloco_model_hparams(m)->n_vocab;
    lloco_decoder *d;
    lloco_kv *kv;
    CHECK_OK(lloco_decoder_create(m, NULL, &d));
    CHECK_OK(lloco_kv_create(m, 0, LLOCO_DTYPE_F16, &kv));
    int32_t a[6] = {10, 20, 30, 40, 50, 60}, b2[3] = {70, 80, 90};
    float *l1 = malloc(sizeof(float) * (size_t)nv), *l2 = malloc(sizeof(float) * (size_t)nv);
    lloco_seq_batch b = {.kv = kv, .n = 6, .tokens = a, .n_out = 1, .logits = l1};
    CHECK_OK(lloco_decoder_forward(d, &b, 1));
    lloco_kv_truncate(kv, 3);
    CHECK(lloco_kv_len(kv) == 3);
    b = (lloco_seq_batch){.kv = kv, .n = 3, .tokens = b2, .n_out = 1, .logits = l2};
    CHECK_OK(lloco_decoder_forward(d, &b, 1));
    lloco_kv_truncate(kv, 0);
    int32_t c[6] = {10, 20, 30, 70, 80, 90};
    b = (lloco_seq_batch){.kv = kv, .n = 6, .tokens = c, .n_out = 1, .logits = l1};
    CHECK_OK(lloco_decoder_forward(d, &b, 1));
    CHECKF(nmse(l1, l2, (size_t)nv) < 1e-10, "replayed logits differ: %g", nmse(l1, l2, (size_t)nv));
    free(l1), free(l2);
    lloco_kv_free(kv);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

TEST_CASE(model_open_errors) {
    lloco_model *m;
    CHECK_ERR(lloco_model_open("/nonexistent/model.gguf", &m), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), "setup.sh") != NULL);
    /* a directory without config.json */
    CHECK(lloco_model_open(lloco_test_fixture("tiny-llama/ref"), &m) != 0);
    CHECK(m == NULL);
}
