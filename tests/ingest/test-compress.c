/* The context compressor against the PyTorch reference of both procedures
 * (tests/tools/make_compressor_golden.py): AutoCompressor with trained and
 * EOS-initialised summary embeddings, with and without accumulation, with
 * the context window forcing old summaries out; ICAE with and without
 * trained memory embeddings. Plus slot dtypes and error paths.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"
#include "lora_bank/lora_bank.h"
#include "test.h"

/* The fixture model is F32; lloco's difference to transformers' float32 is
 * the F16 KV cache the compressor runs with (keys and values rounded to
 * 11-bit mantissas: ~1e-7 NMSE per layer), plus summation order. */
#define SLOT_NMSE_BOUND 1e-5

typedef struct {
    float *slots;
    int n_seg, ns, dm;
    lloco_dtype dt;
    int spans[64][2];
    int stop_at; /* segment index whose callback returns 7, -1 for none */
} collect;

static int on_segment(void *ctx, int seg, int tb, int te, const void *slots) {
    collect *c = ctx;
    if (seg == c->stop_at) return 7;
    if (seg < 64) {
        c->spans[seg][0] = tb;
        c->spans[seg][1] = te;
    }
    size_t n = (size_t)c->ns * (size_t)c->dm;
    float *dst = c->slots + (size_t)seg * n;
    if (c->dt == LLOCO_DTYPE_F32) memcpy(dst, slots, n * sizeof(float));
    else lloco_dequantize_row(c->dt, slots, dst, (int64_t)n);
    c->n_seg = seg + 1;
    return 0;
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

static cJSON *load_ref(int32_t **tokens, int *n_tokens) {
    char *text;
    if (lloco_file_read(lloco_test_fixture("compressor/ref.json"), 1 << 20, &text, NULL)) return NULL;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *toks = cJSON_GetObjectItem(root, "tokens");
    *n_tokens = cJSON_GetArraySize(toks);
    *tokens = malloc(sizeof(int32_t) * (size_t)*n_tokens);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, toks)(*tokens)[i++] = (int32_t)e->valueint;
    return root;
}

static int open_decoder(const char *rel, lloco_backend_kind be, lloco_model **m, lloco_decoder **d) {
    int rc = lloco_model_open(lloco_test_fixture(rel), m);
    if (rc) return rc;
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.backend = be;
    dp.n_threads = 2;
    return lloco_decoder_create(*m, &dp, d);
}

static void run_case(const cJSON *cs, const int32_t *tokens, lloco_backend_kind be) {
    const char *name = cJSON_GetObjectItem(cs, "name")->valuestring;
    const char *model = cJSON_GetObjectItem(cs, "model")->valuestring;
    lloco_compress_params p;
    lloco_compress_method method;
    CHECK_OK(lloco_compress_method_parse(cJSON_GetObjectItem(cs, "method")->valuestring, &method));
    lloco_compress_params_default(&p, method);
    p.segment_tokens = cJSON_GetObjectItem(cs, "segment_tokens")->valueint;
    p.n_summary = cJSON_GetObjectItem(cs, "n_summary")->valueint;
    p.accumulate = cJSON_GetObjectItem(cs, "accumulate")->valueint;
    p.slot_dtype = LLOCO_DTYPE_F32;
    const int n_tok = cJSON_GetObjectItem(cs, "n_tokens")->valueint;
    const int n_seg = cJSON_GetObjectItem(cs, "n_segments")->valueint;

    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    lloco_compressor *c = NULL;
    CHECK_OK(open_decoder(model, be, &m, &d));
    CHECK_OK(lloco_compressor_create(d, &p, &c));
    if (!c) goto done;
    const int dm = lloco_model_hparams(m)->d_model;
    CHECKF(!strcmp(lloco_compressor_summary_init(c), cJSON_GetObjectItem(cs, "summary_init")->valuestring),
           "%s: summary init %s", name, lloco_compressor_summary_init(c));
    CHECK(lloco_compressor_n_segments(c, n_tok) == n_seg);
    size_t per = (size_t)p.n_summary * (size_t)dm;
    collect col = {.slots = calloc((size_t)n_seg * per, sizeof(float)), .ns = p.n_summary, .dm = dm,
                   .dt = LLOCO_DTYPE_F32, .stop_at = -1};
    CHECK_OK(lloco_compress(c, tokens, n_tok, on_segment, &col));
    CHECK(col.n_seg == n_seg);
    for (int s = 0; s < n_seg && s < 64; s++) {
        int te = (s + 1) * p.segment_tokens < n_tok ? (s + 1) * p.segment_tokens : n_tok;
        CHECKF(col.spans[s][0] == s * p.segment_tokens && col.spans[s][1] == te,
               "%s: segment %d span [%d, %d)", name, s, col.spans[s][0], col.spans[s][1]);
    }
    char rel[128];
    snprintf(rel, sizeof rel, "compressor/%s.f32", name);
    char *ref;
    size_t len;
    CHECK_OK(lloco_file_read(lloco_test_fixture(rel), 64 << 20, &ref, &len));
    if (ref && len == (size_t)n_seg * per * sizeof(float)) {
        double worst = 0;
        for (int s = 0; s < n_seg; s++) {
            double e = nmse((const float *)ref + s * per, col.slots + s * per, per);
            if (e > worst) worst = e;
            CHECKF(e <= SLOT_NMSE_BOUND, "%s segment %d: slots NMSE %.3g > %.0e", name, s, e,
                   SLOT_NMSE_BOUND);
        }
        fprintf(stderr, "  %-13s %s: %d segments, worst slot NMSE %.2g (bound %.0e)\n", name,
                be == LLOCO_BACKEND_CPU_REF ? "cpu-ref" : "cpu", n_seg, worst, SLOT_NMSE_BOUND);
    } else {
        CHECKF(0, "%s: reference %s has %zu bytes", name, rel, len);
    }
    free(ref);
    free(col.slots);
done:
    lloco_compressor_free(c);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

static void run_all_cases(lloco_backend_kind be) {
    int32_t *tokens = NULL;
    int n_tokens = 0;
    cJSON *root = load_ref(&tokens, &n_tokens);
    CHECK(root != NULL);
    if (!root) return;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases")) {
        /* the plain reference kernels take ~40 s for the 1000-token case */
        if (be == LLOCO_BACKEND_CPU_REF && cJSON_GetObjectItem(cs, "n_tokens")->valueint > 100)
            continue;
        run_case(cs, tokens, be);
    }
    cJSON_Delete(root);
    free(tokens);
}

TEST_CASE(compress_matches_reference_cpu) { run_all_cases(LLOCO_BACKEND_CPU); }
TEST_CASE(compress_matches_reference_cpu_ref) { run_all_cases(LLOCO_BACKEND_CPU_REF); }

/* F16/BF16 slots are the F32 slots rounded once; the fingerprint describes
 * the encoder; a callback's non-zero return stops the run. */
TEST_CASE(compress_slot_dtypes_fingerprint_stop) {
    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    CHECK_OK(open_decoder("compressor/hf-ac", LLOCO_BACKEND_CPU, &m, &d));
    if (!d) return;
    const int dm = lloco_model_hparams(m)->d_model, ns = 4, n_tok = 50;
    int32_t tokens[50];
    for (int i = 0; i < n_tok; i++) tokens[i] = (i * 37 + 11) % 259;
    float *ref = NULL;
    const lloco_dtype dts[3] = {LLOCO_DTYPE_F32, LLOCO_DTYPE_F16, LLOCO_DTYPE_BF16};
    for (int k = 0; k < 3; k++) {
        lloco_compress_params p;
        lloco_compress_params_default(&p, LLOCO_COMPRESS_AUTOCOMPRESSOR);
        p.segment_tokens = 20;
        p.n_summary = ns;
        p.slot_dtype = dts[k];
        lloco_compressor *c = NULL;
        CHECK_OK(lloco_compressor_create(d, &p, &c));
        if (!c) break;
        size_t n = (size_t)3 * ns * dm;
        collect col = {.slots = calloc(n, sizeof(float)), .ns = ns, .dm = dm, .dt = dts[k],
                       .stop_at = -1};
        CHECK_OK(lloco_compress(c, tokens, n_tok, on_segment, &col));
        if (k == 0) {
            ref = col.slots;
            lloco_store_fingerprint fp;
            CHECK_OK(lloco_compressor_fingerprint(c, &fp));
            CHECK(strlen(fp.model_hash) == 32);
            CHECK(!strcmp(fp.method, "autocompressor") && fp.n_summary == ns &&
                  fp.segment_tokens == 20 && fp.accumulate == 1 && fp.d_model == dm &&
                  fp.slot_dtype == LLOCO_DTYPE_F32 && !strcmp(fp.summary_init, "embed_summary"));
            /* the hash is of the content: the same model opened as the
             * tiny-llama/hf checkpoint (no extra tensors) hashes differently,
             * the same files twice the same */
            char h2[33];
            CHECK_OK(lloco_model_hash(m, h2));
            CHECK(!strcmp(h2, fp.model_hash));
            lloco_model *m2 = NULL;
            CHECK_OK(lloco_model_open(lloco_test_fixture("tiny-llama/hf"), &m2));
            if (m2) {
                CHECK_OK(lloco_model_hash(m2, h2));
                CHECK(strcmp(h2, fp.model_hash) != 0);
                lloco_model_close(m2);
            }
            collect stop = {.slots = calloc(n, sizeof(float)), .ns = ns, .dm = dm, .dt = dts[k],
                            .stop_at = 1};
            CHECK(lloco_compress(c, tokens, n_tok, on_segment, &stop) == 7);
            CHECK(stop.n_seg == 1);
            free(stop.slots);
        } else if (ref) {
            for (size_t i = 0; i < n; i++) {
                float want = dts[k] == LLOCO_DTYPE_F16 ? lloco_fp16_to_fp32(lloco_fp32_to_fp16(ref[i]))
                                                       : lloco_bf16_to_fp32(lloco_fp32_to_bf16(ref[i]));
                if (col.slots[i] != want) {
                    CHECKF(0, "%s slot %zu: %g, expected %g", lloco_dtype_name(dts[k]), i,
                           col.slots[i], want);
                    break;
                }
            }
            free(col.slots);
        }
        lloco_compressor_free(c);
    }
    free(ref);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

/* An encoder LoRA (ICAE's encoder) changes the slots exactly as merging it
 * into the weights does, and the fingerprint names it. */
TEST_CASE(compress_encoder_lora) {
    lloco_model *m = NULL;
    lloco_decoder *d = NULL, *dm_ = NULL;
    lloco_lora *ad = NULL;
    CHECK_OK(open_decoder("tiny-llama/hf", LLOCO_BACKEND_CPU, &m, &d));
    if (d) CHECK_OK(lloco_decoder_create(m, NULL, &dm_));
    if (dm_) CHECK_OK(lloco_lora_open(lloco_test_fixture("lora/r8-qkvo"), NULL, m, &ad));
    if (!ad) goto out;
    CHECK_OK(lloco_decoder_merge_adapter(dm_, lloco_lora_view(ad)));
    const int dmod = lloco_model_hparams(m)->d_model, ns = 4, n_tok = 40;
    int32_t tokens[40];
    for (int i = 0; i < n_tok; i++) tokens[i] = (i * 53 + 7) % 200;
    const size_t n = (size_t)3 * ns * dmod;
    float *runs[3];
    for (int k = 0; k < 3; k++) { /* 0: unmerged LoRA, 1: merged, 2: none */
        lloco_compress_params p;
        lloco_compress_params_default(&p, LLOCO_COMPRESS_ICAE);
        p.segment_tokens = 16;
        p.n_summary = ns;
        p.slot_dtype = LLOCO_DTYPE_F32;
        /* a decoder with an adapter merged runs only sequences naming it */
        p.encoder_adapter = k < 2 ? lloco_lora_view(ad) : NULL;
        lloco_compressor *c = NULL;
        CHECK_OK(lloco_compressor_create(k == 1 ? dm_ : d, &p, &c));
        collect col = {.slots = calloc(n, sizeof(float)), .ns = ns, .dm = dmod,
                       .dt = LLOCO_DTYPE_F32, .stop_at = -1};
        runs[k] = col.slots;
        if (!c) continue;
        CHECK_OK(lloco_compress(c, tokens, n_tok, on_segment, &col));
        CHECK(col.n_seg == 3);
        lloco_store_fingerprint fp;
        CHECK_OK(lloco_compressor_fingerprint(c, &fp));
        CHECKF(!strcmp(fp.encoder_lora, k < 2 ? "r8-qkvo" : ""), "encoder_lora '%s'", fp.encoder_lora);
        lloco_compressor_free(c);
    }
    double same = nmse(runs[1], runs[0], n), differ = nmse(runs[2], runs[0], n);
    CHECKF(same < 1e-8, "unmerged vs merged encoder LoRA: nmse %g", same);
    CHECKF(differ > 1e-4, "the LoRA changed nothing: nmse %g vs no adapter", differ);
    for (int k = 0; k < 3; k++) free(runs[k]);
out:
    lloco_lora_close(ad);
    lloco_decoder_free(dm_);
    lloco_decoder_free(d);
    lloco_model_close(m);
}

TEST_CASE(compress_errors) {
    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    CHECK_OK(open_decoder("compressor/hf-ac", LLOCO_BACKEND_CPU, &m, &d));
    if (!d) return;
    lloco_compress_params p;
    lloco_compressor *c = NULL;
    lloco_compress_params_default(&p, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    /* the defaults (1536 + 50) do not fit the fixture's 512 context */
    CHECK_ERR(lloco_compressor_create(d, &p, &c), LLOCO_ERR_INVAL);
    CHECK(strstr(lloco_last_error(), "context") != NULL);
    p.segment_tokens = 16;
    p.n_summary = 0;
    CHECK_ERR(lloco_compressor_create(d, &p, &c), LLOCO_ERR_INVAL);
    p.n_summary = 65; /* the fixture's embed_summary has 64 rows */
    CHECK_ERR(lloco_compressor_create(d, &p, &c), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "embed_summary") != NULL);
    p.n_summary = 4;
    p.slot_dtype = LLOCO_DTYPE_Q4_0;
    CHECK_ERR(lloco_compressor_create(d, &p, &c), LLOCO_ERR_INVAL);
    lloco_compress_params_default(&p, LLOCO_COMPRESS_ICAE);
    p.segment_tokens = 16;
    p.n_summary = 4;
    p.accumulate = 1;
    CHECK_ERR(lloco_compressor_create(d, &p, &c), LLOCO_ERR_INVAL);
    p.accumulate = 0;
    CHECK_OK(lloco_compressor_create(d, &p, &c));
    if (c) {
        collect col = {.slots = calloc(4 * 256, sizeof(float)), .ns = 4, .dm = 256,
                       .dt = LLOCO_DTYPE_F16, .stop_at = -1};
        int32_t bad[3] = {1, 2, 999};
        CHECK_ERR(lloco_compress(c, bad, 0, on_segment, &col), LLOCO_ERR_INVAL);
        CHECK_ERR(lloco_compress(c, bad, 3, on_segment, &col), LLOCO_ERR_RANGE);
        CHECK(col.n_seg == 0);
        free(col.slots);
        lloco_compressor_free(c);
    }
    lloco_compress_method meth;
    CHECK_ERR(lloco_compress_method_parse("gist", &meth), LLOCO_ERR_INVAL);
    lloco_decoder_free(d);
    lloco_model_close(m);
}
