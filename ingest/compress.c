/* compress: the context compressor. Runs the decoder in encoder mode over a
 * document's segments with summary (AutoCompressor) or memory (ICAE) token
 * embeddings appended, and returns the final post-norm hidden states at
 * those positions as the segment's slots.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest.h"

struct lloco_compressor {
    lloco_decoder *d;
    const lloco_model *m;
    lloco_compress_params p;
    int d_model, max_ctx;
    const char *init;
    float *summary; /* (n_summary, d_model) input embeddings of the summary tokens */
    lloco_kv *kv;
    /* One forward call's inputs: (cap, d_model) rows, token ids or
     * LLOCO_TOKEN_EMBD per position. */
    float *embd;
    int32_t *ids;
    int cap;
    int32_t *out_idx; /* (n_summary) */
    float *hidden;    /* (n_summary, d_model) */
    void *slots;      /* (n_summary, d_model) in slot_dtype */
    float *acc;       /* (acc_cap + n_summary, d_model) accumulated summaries,
                         oldest first */
    int acc_cap;      /* most rows that fit beside a full segment */
    int64_t positions;
};

void lloco_compress_params_default(lloco_compress_params *p, lloco_compress_method method) {
    p->method = method;
    p->slot_dtype = LLOCO_DTYPE_F16;
    p->encoder_adapter = NULL;
    if (method == LLOCO_COMPRESS_ICAE) {
        p->segment_tokens = 512;
        p->n_summary = 128;
        p->accumulate = 0;
    } else {
        p->segment_tokens = 1536;
        p->n_summary = 50;
        p->accumulate = 1;
    }
}

const char *lloco_compress_method_name(lloco_compress_method m) {
    return m == LLOCO_COMPRESS_ICAE ? "icae" : "autocompressor";
}

int lloco_compress_method_parse(const char *s, lloco_compress_method *out) {
    if (!strcmp(s, "autocompressor")) *out = LLOCO_COMPRESS_AUTOCOMPRESSOR;
    else if (!strcmp(s, "icae")) *out = LLOCO_COMPRESS_ICAE;
    else
        return lloco_error(LLOCO_ERR_INVAL, "unknown compression method '%s' (autocompressor, icae)",
                           s);
    return 0;
}

/* Summary/memory token embeddings: trained rows from the model files, else
 * n copies of the EOS embedding. */
static int load_summary(lloco_compressor *c) {
    const int n = c->p.n_summary, dm = c->d_model;
    const char *name = c->p.method == LLOCO_COMPRESS_ICAE ? "memory_token_embed.weight"
                                                          : "embed_summary.weight";
    int64_t rows, cols;
    float *w;
    int rc = lloco_model_tensor_f32(c->m, name, &rows, &cols, &w);
    if (rc == 0) {
        if (cols != dm || rows < n) {
            free(w);
            return lloco_error(LLOCO_ERR_FORMAT,
                               "'%s' is %lld x %lld, need at least %d rows of %d (n_summary x d_model)",
                               name, (long long)rows, (long long)cols, n, dm);
        }
        memcpy(c->summary, w, sizeof(float) * (size_t)n * (size_t)dm);
        free(w);
        c->init = c->p.method == LLOCO_COMPRESS_ICAE ? "memory_token_embed" : "embed_summary";
        return 0;
    }
    if (rc != LLOCO_ERR_NOTFOUND) return rc;
    int32_t eos = lloco_tokenizer_eos(lloco_model_tokenizer(c->m));
    if (eos < 0)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "the model has no '%s' and no EOS token to initialise it from", name);
    for (int i = 0; i < n; i++)
        if ((rc = lloco_model_embed_token(c->m, eos, c->summary + (size_t)i * dm))) return rc;
    c->init = "eos_row";
    return 0;
}

int lloco_compressor_create(lloco_decoder *d, const lloco_compress_params *p,
                            lloco_compressor **out) {
    *out = NULL;
    const lloco_model *m = lloco_decoder_model(d);
    const lloco_hparams *hp = lloco_model_hparams(m);
    if (p->segment_tokens <= 0 || p->n_summary <= 0)
        return lloco_error(LLOCO_ERR_INVAL, "segment_tokens (%d) and n_summary (%d) must be positive",
                           p->segment_tokens, p->n_summary);
    if (p->segment_tokens + p->n_summary > hp->n_ctx_train)
        return lloco_error(LLOCO_ERR_INVAL,
                           "segment_tokens %d + n_summary %d exceed the model's context %d",
                           p->segment_tokens, p->n_summary, hp->n_ctx_train);
    if (p->slot_dtype != LLOCO_DTYPE_F32 && p->slot_dtype != LLOCO_DTYPE_F16 &&
        p->slot_dtype != LLOCO_DTYPE_BF16)
        return lloco_error(LLOCO_ERR_INVAL, "slot dtype %s: use f32, f16 or bf16",
                           lloco_dtype_name(p->slot_dtype));
    if (p->method == LLOCO_COMPRESS_ICAE && p->accumulate)
        return lloco_error(LLOCO_ERR_INVAL, "ICAE compresses each segment alone (no accumulate)");
    lloco_compressor *c = calloc(1, sizeof *c);
    if (!c) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    c->d = d;
    c->m = m;
    c->p = *p;
    c->d_model = hp->d_model;
    c->max_ctx = hp->n_ctx_train;
    const size_t dm = (size_t)c->d_model, ns = (size_t)p->n_summary;
    /* accumulated rows never exceed what fits beside a segment */
    c->acc_cap = p->accumulate ? c->max_ctx - p->segment_tokens - p->n_summary : 0;
    c->cap = p->accumulate ? c->max_ctx : p->segment_tokens + p->n_summary;
    c->summary = malloc(sizeof(float) * ns * dm);
    c->embd = malloc(sizeof(float) * (size_t)c->cap * dm);
    c->ids = malloc(sizeof(int32_t) * (size_t)c->cap);
    c->out_idx = malloc(sizeof(int32_t) * ns);
    c->hidden = malloc(sizeof(float) * ns * dm);
    c->slots = malloc(lloco_dtype_row_bytes(p->slot_dtype, (int64_t)(ns * dm)));
    c->acc = c->acc_cap ? malloc(sizeof(float) * ((size_t)c->acc_cap + ns) * dm) : NULL;
    int rc = 0;
    if (!c->summary || !c->embd || !c->ids || !c->out_idx || !c->hidden || !c->slots ||
        (c->acc_cap && !c->acc))
        rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory for the compressor");
    if (!rc) rc = load_summary(c);
    if (!rc) rc = lloco_kv_create(m, c->cap, LLOCO_DTYPE_F16, &c->kv);
    if (rc) {
        lloco_compressor_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void lloco_compressor_free(lloco_compressor *c) {
    if (!c) return;
    lloco_kv_free(c->kv);
    free(c->summary);
    free(c->embd);
    free(c->ids);
    free(c->out_idx);
    free(c->hidden);
    free(c->slots);
    free(c->acc);
    free(c);
}

const lloco_compress_params *lloco_compressor_params(const lloco_compressor *c) { return &c->p; }
const lloco_model *lloco_compressor_model(const lloco_compressor *c) { return c->m; }
const char *lloco_compressor_summary_init(const lloco_compressor *c) { return c->init; }
int64_t lloco_compressor_positions(const lloco_compressor *c) { return c->positions; }

int lloco_compressor_n_segments(const lloco_compressor *c, int n_tokens) {
    return n_tokens <= 0 ? 0 : (n_tokens + c->p.segment_tokens - 1) / c->p.segment_tokens;
}

int lloco_compressor_fingerprint(const lloco_compressor *c, lloco_store_fingerprint *fp) {
    memset(fp, 0, sizeof *fp);
    int rc = lloco_model_hash(c->m, fp->model_hash);
    if (rc) return rc;
    snprintf(fp->method, sizeof fp->method, "%s", lloco_compress_method_name(c->p.method));
    fp->n_summary = c->p.n_summary;
    fp->segment_tokens = c->p.segment_tokens;
    fp->accumulate = c->p.accumulate;
    fp->d_model = c->d_model;
    fp->slot_dtype = c->p.slot_dtype;
    snprintf(fp->summary_init, sizeof fp->summary_init, "%s", c->init);
    if (c->p.encoder_adapter)
        snprintf(fp->encoder_lora, sizeof fp->encoder_lora, "%s", c->p.encoder_adapter->name);
    return 0;
}

static void put_embd(lloco_compressor *c, int pos, const float *row) {
    c->ids[pos] = LLOCO_TOKEN_EMBD;
    memcpy(c->embd + (size_t)pos * c->d_model, row, sizeof(float) * (size_t)c->d_model);
}

int lloco_compress(lloco_compressor *c, const int32_t *tokens, int n_tokens, lloco_segment_fn fn,
                   void *ctx) {
    if (n_tokens <= 0) return lloco_error(LLOCO_ERR_INVAL, "empty document: nothing to compress");
    const int ns = c->p.n_summary, dm = c->d_model, seg = c->p.segment_tokens;
    const int n_vocab = lloco_model_hparams(c->m)->n_vocab;
    for (int i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return lloco_error(LLOCO_ERR_RANGE, "token %d at %d outside the vocabulary", tokens[i], i);
    /* acc rows [acc_first, n_acc) feed the next segment; the first
     * in_cache of them are already in the cache at positions 0.. from the
     * previous pass, whose prefix they were. */
    int n_acc = 0, acc_first = 0, in_cache = 0;
    c->positions = 0;
    lloco_kv_truncate(c->kv, 0);
    for (int s = 0, tb = 0; tb < n_tokens; s++, tb += seg) {
        const int te = tb + seg < n_tokens ? tb + seg : n_tokens, nt = te - tb;
        int first = acc_first;
        while (n_acc - first > c->max_ctx - nt - ns) first += ns; /* drop the oldest */
        if (first != acc_first) in_cache = 0; /* the prefix moved: recompute it */
        acc_first = first;
        lloco_kv_truncate(c->kv, in_cache);
        int n = 0;
        for (int r = acc_first + in_cache; r < n_acc; r++)
            put_embd(c, n++, c->acc + (size_t)r * dm);
        memcpy(c->ids + n, tokens + tb, sizeof(int32_t) * (size_t)nt);
        n += nt;
        for (int i = 0; i < ns; i++) {
            c->out_idx[i] = n;
            put_embd(c, n++, c->summary + (size_t)i * dm);
        }
        lloco_seq_batch b = {.kv = c->kv, .n = n, .tokens = c->ids, .embd = c->embd,
                             .n_out = ns, .out_idx = c->out_idx, .hidden = c->hidden,
                             .adapter = c->p.encoder_adapter};
        int rc = lloco_decoder_forward(c->d, &b, 1);
        if (rc) return rc;
        c->positions += n;
        rc = lloco_quantize_row(c->p.slot_dtype, c->hidden, c->slots, (int64_t)ns * dm);
        if (rc) return rc;
        if ((rc = fn(ctx, s, tb, te, c->slots))) return rc;
        if (c->p.accumulate && te < n_tokens) {
            in_cache = n_acc - acc_first; /* <= acc_cap: this segment was full */
            if (n_acc > c->acc_cap) { /* slide the window to the buffer's start */
                memmove(c->acc, c->acc + (size_t)acc_first * dm,
                        sizeof(float) * (size_t)(n_acc - acc_first) * dm);
                n_acc -= acc_first;
                acc_first = 0;
            }
            memcpy(c->acc + (size_t)n_acc * dm, c->hidden, sizeof(float) * (size_t)ns * dm);
            n_acc += ns;
        }
    }
    return 0;
}
