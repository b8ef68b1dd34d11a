/* forward: the LLaMA-family transformer over a batch of sequences. The new
 * positions of all sequences are concatenated into one step of at most
 * max_batch_tokens rows, so every matmul sees the whole batch; attention runs
 * per sequence against its own KV cache. Prefill and decode are the same
 * code path (decode is a step of one row per sequence). Each sequence may
 * carry its own LoRA adapter, applied by one batched op after each targeted
 * matmul, or the decoder may run on weights with one adapter merged in.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"
#include "model_internal.h"

#define LOGIT_ROWS 16 /* output rows whose logits are computed together */

struct lloco_decoder {
    const lloco_model *m;
    lloco_backend *be;
    int cap; /* rows per step */
    /* (n_layer) the weights the forward pass reads: the model's, or in
     * merged mode merged ones for the adapter's targets */
    lloco_layer *layers;
    const lloco_adapter_view *merged;
    void **merge_buf;     /* (n_layer * LLOCO_PROJ_COUNT) merged weights, or NULL */
    size_t *merge_bytes;  /* their sizes */
    const lloco_lora_mat **lora_rows; /* (cap) each row's pair for one projection */
    float *x;     /* (cap, d_model) residual stream */
    float *xb;    /* (cap, d_model) normed input of a block */
    float *q;     /* (cap, n_head*head_dim) */
    float *k;     /* (cap, kv_dim) */
    float *v;     /* (cap, kv_dim) */
    float *att;   /* (cap, n_head*head_dim) attention output */
    float *gate;  /* (cap, d_ff) */
    float *up;    /* (cap, d_ff) */
    float *tmp;   /* (cap, d_model) block output before the residual add */
    int32_t *pos; /* (cap) absolute position of each row */
    int32_t *ids; /* (cap) token id of each row, or LLOCO_TOKEN_EMBD */
    float *logit_buf; /* (LOGIT_ROWS, n_vocab) */
    float *out_x;     /* (LOGIT_ROWS, d_model) */
};

/* A contiguous run of one sequence's new positions inside a step. */
typedef struct {
    lloco_seq_batch *seq;
    int start; /* index within the sequence's new positions */
    int len;
    int p0; /* absolute position of its first row */
    int row; /* first row in the step */
} piece;

static void free_merged(lloco_decoder *d) {
    for (int i = 0; d->merge_buf && i < d->m->hp.n_layer * LLOCO_PROJ_COUNT; i++) {
        free(d->merge_buf[i]);
        d->merge_buf[i] = NULL;
        d->merge_bytes[i] = 0;
    }
}

void lloco_decoder_params_default(lloco_decoder_params *p) {
    p->backend = LLOCO_BACKEND_CPU;
    p->n_threads = 0;
    p->max_batch_tokens = 512;
}

void lloco_decoder_free(lloco_decoder *d) {
    if (!d) return;
    free_merged(d);
    free(d->merge_buf);
    free(d->merge_bytes);
    free(d->layers);
    free(d->lora_rows);
    lloco_backend_free(d->be);
    free(d->x);
    free(d->xb);
    free(d->q);
    free(d->k);
    free(d->v);
    free(d->att);
    free(d->gate);
    free(d->up);
    free(d->tmp);
    free(d->pos);
    free(d->ids);
    free(d->logit_buf);
    free(d->out_x);
    free(d);
}

static float *alloc_f32(size_t rows, size_t cols) { return malloc(sizeof(float) * rows * cols); }

int lloco_decoder_create(const lloco_model *m, const lloco_decoder_params *p, lloco_decoder **out) {
    *out = NULL;
    lloco_decoder_params def;
    if (!p) {
        lloco_decoder_params_default(&def);
        p = &def;
    }
    lloco_decoder *d = calloc(1, sizeof *d);
    if (!d) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    d->m = m;
    int rc = lloco_backend_create(p->backend, p->n_threads, &d->be);
    if (rc) {
        free(d);
        return rc;
    }
    const lloco_hparams *hp = &m->hp;
    size_t c = (size_t)(p->max_batch_tokens > 0 ? p->max_batch_tokens : 512);
    d->cap = (int)c;
    size_t qd = (size_t)hp->n_head * (size_t)hp->head_dim;
    size_t kvd = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    d->x = alloc_f32(c, (size_t)hp->d_model);
    d->xb = alloc_f32(c, (size_t)hp->d_model);
    d->tmp = alloc_f32(c, (size_t)hp->d_model);
    d->q = alloc_f32(c, qd);
    d->att = alloc_f32(c, qd);
    d->k = alloc_f32(c, kvd);
    d->v = alloc_f32(c, kvd);
    d->gate = alloc_f32(c, (size_t)hp->d_ff);
    d->up = alloc_f32(c, (size_t)hp->d_ff);
    d->pos = malloc(sizeof(int32_t) * c);
    d->ids = malloc(sizeof(int32_t) * c);
    d->logit_buf = alloc_f32(LOGIT_ROWS, (size_t)hp->n_vocab);
    d->out_x = alloc_f32(LOGIT_ROWS, (size_t)hp->d_model);
    d->lora_rows = malloc(sizeof *d->lora_rows * c);
    d->layers = malloc(sizeof *d->layers * (size_t)hp->n_layer);
    d->merge_buf = calloc((size_t)hp->n_layer * LLOCO_PROJ_COUNT, sizeof *d->merge_buf);
    d->merge_bytes = calloc((size_t)hp->n_layer * LLOCO_PROJ_COUNT, sizeof *d->merge_bytes);
    if (!d->x || !d->xb || !d->tmp || !d->q || !d->att || !d->k || !d->v || !d->gate || !d->up ||
        !d->pos || !d->ids || !d->logit_buf || !d->out_x || !d->lora_rows || !d->layers ||
        !d->merge_buf || !d->merge_bytes) {
        lloco_decoder_free(d);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory for decoder buffers");
    }
    memcpy(d->layers, m->layers, sizeof *d->layers * (size_t)hp->n_layer);
    *out = d;
    return 0;
}

lloco_backend *lloco_decoder_backend(lloco_decoder *d) { return d->be; }
const lloco_model *lloco_decoder_model(const lloco_decoder *d) { return d->m; }

static void matmul(lloco_decoder *d, const lloco_weight *w, const float *x, int m, float *y) {
    lloco_op_matmul(d->be, w->data, w->type, w->rows, w->cols, x, m, y);
}

/* Adds each row's LoRA update for projection p of layer l (x: the
 * projection's input rows, y: its output rows). */
static void apply_lora(lloco_decoder *d, const piece *pc, int n_pieces, int rows, int l,
                       lloco_proj p, const float *x, float *y) {
    if (d->merged) return; /* in the weights already */
    int any = 0;
    for (int i = 0; i < n_pieces; i++) {
        const lloco_adapter_view *a = pc[i].seq->adapter;
        const lloco_lora_mat *mat = a ? a->layers[l].proj[p] : NULL;
        for (int r = 0; r < pc[i].len; r++) d->lora_rows[pc[i].row + r] = mat;
        any |= mat != NULL;
    }
    if (!any) return;
    const lloco_weight *w = lloco_layer_proj_const(&d->layers[l], p);
    lloco_op_lora(d->be, x, rows, w->cols, w->rows, d->lora_rows, y);
}

static void add_bias(float *y, const float *b, int m, int n) {
    if (!b) return;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) y[(size_t)i * n + j] += b[j];
}

static int out_index(const lloco_seq_batch *s, int j) {
    return s->out_idx ? s->out_idx[j] : s->n - 1;
}

static void flush_logits(lloco_decoder *d, float **dst, int n) {
    int want = 0;
    for (int i = 0; i < n; i++) want |= dst[i] != NULL;
    if (!want) return;
    size_t nv = (size_t)d->m->hp.n_vocab;
    matmul(d, &d->m->output, d->out_x, n, d->logit_buf);
    for (int i = 0; i < n; i++)
        if (dst[i]) memcpy(dst[i], d->logit_buf + (size_t)i * nv, nv * sizeof(float));
}

/* Final norm, hidden states and logits for the rows of this step that the
 * callers asked for, LOGIT_ROWS at a time. */
static void step_outputs(lloco_decoder *d, const piece *pc, int n_pieces) {
    const lloco_hparams *hp = &d->m->hp;
    size_t dm = (size_t)hp->d_model, nv = (size_t)hp->n_vocab;
    float *dst[LOGIT_ROWS];
    int n = 0;
    for (int p = 0; p < n_pieces; p++) {
        const lloco_seq_batch *s = pc[p].seq;
        for (int j = 0; j < s->n_out; j++) {
            int idx = out_index(s, j);
            if (idx < pc[p].start || idx >= pc[p].start + pc[p].len) continue;
            float *row = d->out_x + (size_t)n * dm;
            lloco_op_rmsnorm(d->be, d->x + (size_t)(pc[p].row + idx - pc[p].start) * dm,
                             d->m->out_norm, 1, hp->d_model, hp->rms_eps, row);
            if (s->hidden) memcpy(s->hidden + (size_t)j * dm, row, dm * sizeof(float));
            dst[n++] = s->logits ? s->logits + (size_t)j * nv : NULL;
            if (n == LOGIT_ROWS) {
                flush_logits(d, dst, n);
                n = 0;
            }
        }
    }
    flush_logits(d, dst, n);
}

static void run_step(lloco_decoder *d, piece *pc, int n_pieces, int rows) {
    const lloco_model *m = d->m;
    const lloco_hparams *hp = &m->hp;
    lloco_backend *be = d->be;
    int dm = hp->d_model, hd = hp->head_dim;
    int qd = hp->n_head * hd, kvd = hp->n_head_kv * hd;

    /* Inputs: token rows through the embedding table, the rest copied. */
    for (int p = 0; p < n_pieces; p++) {
        const lloco_seq_batch *s = pc[p].seq;
        for (int i = 0; i < pc[p].len; i++) {
            int r = pc[p].row + i, src = pc[p].start + i;
            d->pos[r] = pc[p].p0 + i;
            d->ids[r] = s->tokens ? s->tokens[src] : LLOCO_TOKEN_EMBD;
            if (d->ids[r] == LLOCO_TOKEN_EMBD)
                memcpy(d->x + (size_t)r * dm, s->embd + (size_t)src * dm, sizeof(float) * (size_t)dm);
        }
    }
    for (int r = 0; r < rows;) {
        int e = r;
        while (e < rows && d->ids[e] != LLOCO_TOKEN_EMBD) e++;
        if (e > r)
            lloco_op_get_rows(be, m->tok_embd.data, m->tok_embd.type, dm, d->ids + r, e - r,
                              d->x + (size_t)r * dm);
        r = e + 1;
    }

    float scale = 1.0f / sqrtf((float)hd);
    int neox = hp->rope_mode == LLOCO_ROPE_NEOX;
    for (int l = 0; l < hp->n_layer; l++) {
        const lloco_layer *L = &d->layers[l];
        lloco_op_rmsnorm(be, d->x, L->attn_norm, rows, dm, hp->rms_eps, d->xb);
        matmul(d, &L->wq, d->xb, rows, d->q);
        matmul(d, &L->wk, d->xb, rows, d->k);
        matmul(d, &L->wv, d->xb, rows, d->v);
        add_bias(d->q, L->bq, rows, qd);
        add_bias(d->k, L->bk, rows, kvd);
        add_bias(d->v, L->bv, rows, kvd);
        /* PEFT adds the update to the base layer's output, bias included */
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_Q, d->xb, d->q);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_K, d->xb, d->k);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_V, d->xb, d->v);
        lloco_op_rope(be, d->q, rows, hp->n_head, hd, hp->rope_dim, d->pos, &m->rope, neox);
        lloco_op_rope(be, d->k, rows, hp->n_head_kv, hd, hp->rope_dim, d->pos, &m->rope, neox);
        for (int p = 0; p < n_pieces; p++) {
            lloco_kv *kv = pc[p].seq->kv;
            size_t off = (size_t)pc[p].p0 * lloco_kv_row_bytes(kv);
            lloco_op_store_rows(be, d->k + (size_t)pc[p].row * kvd, pc[p].len, kvd,
                                (uint8_t *)kv->k[l] + off, kv->type, kvd);
            lloco_op_store_rows(be, d->v + (size_t)pc[p].row * kvd, pc[p].len, kvd,
                                (uint8_t *)kv->v[l] + off, kv->type, kvd);
            lloco_op_attention(be, d->q + (size_t)pc[p].row * qd, pc[p].len, pc[p].p0, hp->n_head,
                               hp->n_head_kv, hd, kv->k[l], kv->v[l], kv->type, kvd, scale,
                               d->att + (size_t)pc[p].row * qd);
        }
        matmul(d, &L->wo, d->att, rows, d->tmp);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_O, d->att, d->tmp);
        lloco_op_add(be, d->x, d->tmp, (int64_t)rows * dm);

        lloco_op_rmsnorm(be, d->x, L->ffn_norm, rows, dm, hp->rms_eps, d->xb);
        matmul(d, &L->w_gate, d->xb, rows, d->gate);
        matmul(d, &L->w_up, d->xb, rows, d->up);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_GATE, d->xb, d->gate);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_UP, d->xb, d->up);
        lloco_op_silu_mul(be, d->gate, d->up, d->gate, (int64_t)rows * hp->d_ff);
        matmul(d, &L->w_down, d->gate, rows, d->tmp);
        apply_lora(d, pc, n_pieces, rows, l, LLOCO_PROJ_DOWN, d->gate, d->tmp);
        lloco_op_add(be, d->x, d->tmp, (int64_t)rows * dm);
    }
    step_outputs(d, pc, n_pieces);
    for (int p = 0; p < n_pieces; p++) pc[p].seq->kv->len = pc[p].p0 + pc[p].len;
}

static int check_seq(const lloco_model *m, const lloco_seq_batch *s, int i) {
    if (!s->kv || s->n < 0) return lloco_error(LLOCO_ERR_INVAL, "sequence %d: no cache or negative length", i);
    if (s->n == 0) return 0;
    if (!s->tokens && !s->embd) return lloco_error(LLOCO_ERR_INVAL, "sequence %d: neither tokens nor embeddings", i);
    for (int j = 0; s->tokens && j < s->n; j++) {
        int32_t t = s->tokens[j];
        if (t == LLOCO_TOKEN_EMBD && !s->embd)
            return lloco_error(LLOCO_ERR_INVAL, "sequence %d position %d: embedding input but no embd", i, j);
        if (t != LLOCO_TOKEN_EMBD && (t < 0 || t >= m->hp.n_vocab))
            return lloco_error(LLOCO_ERR_RANGE, "sequence %d position %d: token id %d out of range [0, %d)",
                               i, j, t, m->hp.n_vocab);
    }
    if (s->n_out < 0 || (s->n_out > 1 && !s->out_idx))
        return lloco_error(LLOCO_ERR_INVAL, "sequence %d: %d outputs but no out_idx", i, s->n_out);
    for (int j = 0; j < s->n_out; j++) {
        int idx = out_index(s, j);
        if (idx < 0 || idx >= s->n)
            return lloco_error(LLOCO_ERR_RANGE, "sequence %d: output index %d outside [0, %d)", i, idx, s->n);
    }
    if (s->n_out > 0 && !s->logits && !s->hidden)
        return lloco_error(LLOCO_ERR_INVAL, "sequence %d: outputs requested but no buffer", i);
    return 0;
}

/* The adapter a sequence names must fit the model, and be the merged one
 * in merged mode. */
static int check_adapter(const lloco_decoder *d, const lloco_seq_batch *s, int i) {
    char who[32];
    snprintf(who, sizeof who, "sequence %d", i);
    if (d->merged && s->adapter != d->merged)
        return lloco_error(LLOCO_ERR_MISMATCH,
                           "%s: adapter '%s' requested, but the decoder has adapter '%s' merged",
                           who, s->adapter ? (s->adapter->name ? s->adapter->name : "(unnamed)")
                                           : "(none)",
                           d->merged->name ? d->merged->name : "(unnamed)");
    if (!s->adapter || d->merged) return 0;
    return lloco_adapter_check(d->m, s->adapter, who);
}

int lloco_decoder_forward(lloco_decoder *d, lloco_seq_batch *seqs, int n_seqs) {
    for (int i = 0; i < n_seqs; i++) {
        int rc = check_seq(d->m, &seqs[i], i);
        if (!rc) rc = check_adapter(d, &seqs[i], i);
        if (rc) return rc;
        for (int j = 0; j < i; j++)
            if (seqs[j].kv == seqs[i].kv && seqs[i].n)
                return lloco_error(LLOCO_ERR_INVAL, "sequences %d and %d share a KV cache", j, i);
    }
    for (int i = 0; i < n_seqs; i++) {
        int rc = lloco_kv_reserve(seqs[i].kv, seqs[i].kv->len + seqs[i].n);
        if (rc) return rc;
    }
    piece *pc = malloc(sizeof(piece) * (size_t)(n_seqs > 0 ? n_seqs : 1));
    if (!pc) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    /* Fill steps of d->cap rows greedily, splitting long sequences. */
    int n_pieces = 0, rows = 0;
    for (int i = 0; i < n_seqs; i++) {
        lloco_seq_batch *s = &seqs[i];
        for (int start = 0; start < s->n;) {
            int len = s->n - start;
            if (len > d->cap - rows) len = d->cap - rows;
            pc[n_pieces++] = (piece){s, start, len, s->kv->len, rows};
            rows += len;
            start += len;
            if (rows == d->cap) {
                run_step(d, pc, n_pieces, rows);
                n_pieces = rows = 0;
            }
        }
    }
    if (rows) run_step(d, pc, n_pieces, rows);
    free(pc);
    return 0;
}

/* ---- merged mode ---------------------------------------------------------- */

/* The type a merged weight is stored in: its own, when rows of it can be
 * quantized again; Q8_0 for the K-quants, the finest type that can. */
static lloco_dtype merged_type(lloco_dtype t) {
    switch (t) {
    case LLOCO_DTYPE_F32:
    case LLOCO_DTYPE_F16:
    case LLOCO_DTYPE_BF16:
    case LLOCO_DTYPE_Q8_0:
    case LLOCO_DTYPE_Q4_0:
    case LLOCO_DTYPE_Q4_1: return t;
    default: return LLOCO_DTYPE_Q8_0;
    }
}

int lloco_decoder_merge_adapter(lloco_decoder *d, const lloco_adapter_view *a) {
    const lloco_model *m = d->m;
    const int nl = m->hp.n_layer;
    if (a) {
        int rc = lloco_adapter_check(m, a, "merge");
        if (rc) return rc;
    }
    memcpy(d->layers, m->layers, sizeof *d->layers * (size_t)nl);
    d->merged = NULL;
    if (!a) {
        free_merged(d);
        return 0;
    }
    /* Every target into its buffer first, then the weights switch over, so
     * a failure leaves the base weights in place. */
    for (int l = 0; l < nl; l++) {
        for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
            const int i = l * LLOCO_PROJ_COUNT + p;
            const lloco_lora_mat *mat = a->layers[l].proj[p];
            if (!mat) {
                free(d->merge_buf[i]);
                d->merge_buf[i] = NULL;
                d->merge_bytes[i] = 0;
                continue;
            }
            const lloco_weight *w = lloco_layer_proj_const(&m->layers[l], (lloco_proj)p);
            const size_t bytes = lloco_dtype_row_bytes(merged_type(w->type), w->cols) * (size_t)w->rows;
            if (d->merge_bytes[i] != bytes) {
                free(d->merge_buf[i]);
                d->merge_buf[i] = malloc(bytes);
                d->merge_bytes[i] = d->merge_buf[i] ? bytes : 0;
                if (!d->merge_buf[i]) {
                    free_merged(d);
                    return lloco_error(LLOCO_ERR_NOMEM, "merge: no memory for %zu bytes of adapter '%s'",
                                       bytes, a->name ? a->name : "(unnamed)");
                }
            }
            lloco_op_lora_merge(d->be, w->data, w->type, mat, d->merge_buf[i], merged_type(w->type));
        }
    }
    for (int l = 0; l < nl; l++) {
        for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
            void *buf = d->merge_buf[l * LLOCO_PROJ_COUNT + p];
            if (!buf) continue;
            lloco_weight *w = lloco_layer_proj(&d->layers[l], (lloco_proj)p);
            w->data = buf;
            w->type = merged_type(w->type);
        }
    }
    d->merged = a;
    return 0;
}

const lloco_adapter_view *lloco_decoder_merged_adapter(const lloco_decoder *d) { return d->merged; }

size_t lloco_decoder_merged_bytes(const lloco_decoder *d) {
    size_t total = 0;
    for (int i = 0; i < d->m->hp.n_layer * LLOCO_PROJ_COUNT; i++) total += d->merge_bytes[i];
    return total;
}
