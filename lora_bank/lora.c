/* lora: the adapter object. Whatever the file format, the loaders hand over
 * (layer, projection) pairs; here they are checked against the base model
 * and copied into one block the adapter owns (B transposed, as the LoRA op
 * reads it, with q/k columns in the base model's row order), so no file
 * stays open.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora_internal.h"

struct lloco_lora {
    lloco_lora_info info;
    char *name, *dir, *base_model;
    lloco_adapter_view view;
    lloco_adapter_layer *layers; /* (n_layer) */
    lloco_lora_mat *mats;        /* (n_pairs) */
    uint8_t *data;               /* every A and B^T */
};

int lora_fail(const lora_ctx *c, int code, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lloco_error(code, "LoRA adapter '%s' (%s): %s", c->name, c->path, msg);
}

static int all_finite(const lora_src *s) {
    const size_t es = lloco_dtype_block_bytes(s->type);
    for (size_t i = 0; i < (size_t)(s->rows * s->cols); i++) {
        float v;
        lloco_dequantize_row(s->type, (const uint8_t *)s->data + i * es, &v, 1);
        if (!isfinite(v)) return 0;
    }
    return 1;
}

static void shape_str(const lora_src *s, char *buf, size_t cap) {
    if (s->n_dims == 2)
        snprintf(buf, cap, "[%lld, %lld]", (long long)s->rows, (long long)s->cols);
    else
        snprintf(buf, cap, "(%d dimensions)", s->n_dims);
}

/* A pair against the base model: A (rank, in), B (out, rank). */
static int check_pair(const lora_ctx *c, const lora_meta *meta, lora_pair *ps, int l, int p,
                      int n_out, int k_in) {
    char sa[64], sb[64];
    shape_str(&ps->a, sa, sizeof sa);
    shape_str(&ps->b, sb, sizeof sb);
    const char *pn = lloco_proj_name((lloco_proj)p);
    if (ps->a.n_dims != 2 || ps->b.n_dims != 2)
        return lora_fail(c, LLOCO_ERR_FORMAT, "layer %d %s: A %s and B %s are not matrices", l, pn,
                         sa, sb);
    if (ps->a.cols != k_in || ps->b.rows != n_out)
        return lora_fail(c, LLOCO_ERR_MISMATCH,
                         "layer %d %s: A %s and B %s do not fit the base model's %d x %d "
                         "projection (expected [rank, %d] and [%d, rank])",
                         l, pn, sa, sb, n_out, k_in, k_in, n_out);
    if (ps->a.rows != ps->b.cols || ps->a.rows < 1)
        return lora_fail(c, LLOCO_ERR_FORMAT, "layer %d %s: A %s and B %s disagree on the rank", l,
                         pn, sa, sb);
    if (ps->rank && ps->a.rows != ps->rank)
        return lora_fail(c, LLOCO_ERR_MISMATCH, "layer %d %s: rank %lld in the file, %d in %s", l,
                         pn, (long long)ps->a.rows, ps->rank, meta->rank_from);
    if (!ps->rank) {
        ps->rank = (int)ps->a.rows;
        ps->scale = ps->scale != 0.0f ? ps->scale / (float)ps->rank : 1.0f;
    }
    if (!all_finite(&ps->a) || !all_finite(&ps->b))
        return lora_fail(c, LLOCO_ERR_FORMAT, "layer %d %s: non-finite values (damaged file?)", l,
                         pn);
    return 0;
}

/* Output j of a q/k projection of head size hd in the other row order:
 * GGUF row j is HF row perm(j) (llama.cpp's converter interleaves each
 * head's two rotate_half halves), and HF row j is GGUF row inv(j). */
static int qk_row(int j, int hd, int to_gguf) {
    const int w = j % hd;
    return to_gguf ? j - w + (w % 2) * (hd / 2) + w / 2 : j - w + 2 * (w % (hd / 2)) + w / (hd / 2);
}

static void convert(const void *src, lloco_dtype st, void *dst, lloco_dtype dt) {
    float v;
    lloco_dequantize_row(st, src, &v, 1);
    lloco_quantize_row(dt, &v, dst, 1);
}

/* A and B^T of one pair into dst as type t. perm_hd > 0: B's rows are
 * reordered between HF and GGUF order (to_gguf says which way). */
static void copy_pair(const lora_pair *ps, lloco_dtype t, int perm_hd, int to_gguf, uint8_t *dst,
                      lloco_lora_mat *m) {
    const int rank = ps->rank, k = (int)ps->a.cols, n = (int)ps->b.rows;
    const size_t es = lloco_dtype_block_bytes(t), es_a = lloco_dtype_block_bytes(ps->a.type);
    const size_t es_b = lloco_dtype_block_bytes(ps->b.type);
    uint8_t *a = dst, *bt = dst + (size_t)rank * k * es;
    if (ps->a.type == t)
        memcpy(a, ps->a.data, (size_t)rank * k * es);
    else
        for (size_t i = 0; i < (size_t)rank * k; i++)
            convert((const uint8_t *)ps->a.data + i * es_a, ps->a.type, a + i * es, t);
    for (int j = 0; j < n; j++) {
        const int src = perm_hd > 0 ? qk_row(j, perm_hd, to_gguf) : j;
        for (int r = 0; r < rank; r++) {
            const uint8_t *from = (const uint8_t *)ps->b.data + ((size_t)src * rank + r) * es_b;
            uint8_t *to = bt + ((size_t)r * n + j) * es;
            if (ps->b.type == t)
                memcpy(to, from, es);
            else
                convert(from, ps->b.type, to, t);
        }
    }
    *m = (lloco_lora_mat){
        .a = a, .bt = bt, .type = t, .rank = rank, .k = k, .n = n, .scale = ps->scale};
}

static lloco_lora *lora_new(const lora_ctx *c, const lora_meta *meta) {
    lloco_lora *ad = calloc(1, sizeof *ad);
    if (!ad) return NULL;
    ad->name = strdup(c->name);
    ad->dir = strdup(c->path);
    ad->base_model = strdup(meta->base_model ? meta->base_model : "");
    if (!ad->name || !ad->dir || !ad->base_model) {
        lloco_lora_close(ad);
        return NULL;
    }
    ad->info = (lloco_lora_info){.name = ad->name,
                                 .dir = ad->dir,
                                 .base_model = ad->base_model,
                                 .r = meta->r,
                                 .lora_alpha = meta->alpha,
                                 .use_rslora = meta->use_rslora};
    return ad;
}

int lora_build(const lora_ctx *c, const lloco_model *base, lora_pair *pairs, const lora_meta *meta,
               lloco_lora **out) {
    *out = NULL;
    const lloco_hparams *hp = lloco_model_hparams(base);
    const int nl = hp->n_layer;
    size_t bytes = 0;
    int n_pairs = 0, n_types = 0, max_rank = 0;
    unsigned targets = 0;
    lloco_dtype dtype = LLOCO_DTYPE_F32;
    for (int i = 0; i < nl * LLOCO_PROJ_COUNT; i++) {
        lora_pair *ps = &pairs[i];
        if (!ps->expected) continue;
        const int l = i / LLOCO_PROJ_COUNT, p = i % LLOCO_PROJ_COUNT;
        int n_out, k_in;
        lloco_proj_dims(base, (lloco_proj)p, &n_out, &k_in);
        int rc = check_pair(c, meta, ps, l, p, n_out, k_in);
        if (rc) return rc;
        for (int m = 0; m < 2; m++) {
            const lloco_dtype t = m ? ps->b.type : ps->a.type;
            if (!n_types++)
                dtype = t;
            else if (t != dtype)
                dtype = LLOCO_DTYPE_F32; /* mixed: held as F32 */
        }
        n_pairs++;
        max_rank = ps->rank > max_rank ? ps->rank : max_rank;
        targets |= 1u << p;
    }
    if (!n_pairs)
        return lora_fail(c, LLOCO_ERR_FORMAT, "no LoRA pairs for the base model's projections");
    for (int i = 0; i < nl * LLOCO_PROJ_COUNT; i++)
        if (pairs[i].expected)
            bytes += (size_t)pairs[i].rank * (size_t)(pairs[i].a.cols + pairs[i].b.rows) *
                     lloco_dtype_block_bytes(dtype);
    lloco_lora *ad = lora_new(c, meta);
    if (ad) {
        ad->data = malloc(bytes);
        ad->mats = calloc((size_t)n_pairs, sizeof *ad->mats);
        ad->layers = calloc((size_t)nl, sizeof *ad->layers);
    }
    if (!ad || !ad->data || !ad->mats || !ad->layers) {
        lloco_lora_close(ad);
        return lora_fail(c, LLOCO_ERR_NOMEM, "out of memory for %zu bytes of matrices", bytes);
    }
    const int dst_perm = lloco_model_qk_permuted(base);
    size_t off = 0;
    for (int i = 0, m = 0; i < nl * LLOCO_PROJ_COUNT; i++) {
        const lora_pair *ps = &pairs[i];
        if (!ps->expected) continue;
        const int p = i % LLOCO_PROJ_COUNT, qk = p == LLOCO_PROJ_Q || p == LLOCO_PROJ_K;
        const int perm = qk && dst_perm != meta->src_qk_permuted ? hp->head_dim : 0;
        copy_pair(ps, dtype, perm, dst_perm, ad->data + off, &ad->mats[m]);
        off +=
            (size_t)ps->rank * (size_t)(ps->a.cols + ps->b.rows) * lloco_dtype_block_bytes(dtype);
        ad->layers[i / LLOCO_PROJ_COUNT].proj[p] = &ad->mats[m++];
    }
    ad->info.n_pairs = n_pairs;
    ad->info.max_rank = max_rank;
    ad->info.targets = targets;
    ad->info.bytes = bytes;
    ad->info.dtype = dtype;
    ad->view = (lloco_adapter_view){
        .name = ad->name, .n_layer = nl, .layers = ad->layers, .qk_permuted = dst_perm};
    *out = ad;
    return 0;
}

int lloco_lora_open(const char *path, const char *name, const lloco_model *base, lloco_lora **out) {
    *out = NULL;
    char def_name[256];
    size_t n = strlen(path);
    const int gguf = n > 5 && !strcmp(path + n - 5, ".gguf");
    if (!name) { /* the last path component, without ".gguf" */
        while (n > 1 && path[n - 1] == '/') n--;
        size_t s = n;
        while (s > 0 && path[s - 1] != '/') s--;
        snprintf(def_name, sizeof def_name, "%.*s", (int)(n - s - (gguf ? 5 : 0)), path + s);
        name = def_name;
    }
    const lora_ctx c = {name, path};
    struct stat sb;
    if (stat(path, &sb) != 0) return lora_fail(&c, LLOCO_ERR_NOTFOUND, "no such file or directory");
    if (S_ISDIR(sb.st_mode)) return lora_open_peft(&c, base, out);
    if (gguf) return lora_open_gguf(&c, base, out);
    return lora_fail(&c, LLOCO_ERR_UNSUPPORTED,
                     "neither a PEFT adapter directory nor a llama.cpp .gguf adapter");
}

void lloco_lora_close(lloco_lora *a) {
    if (!a) return;
    free(a->data);
    free(a->mats);
    free(a->layers);
    free(a->name);
    free(a->dir);
    free(a->base_model);
    free(a);
}

const lloco_adapter_view *lloco_lora_view(const lloco_lora *a) { return &a->view; }
const lloco_lora_info *lloco_lora_get_info(const lloco_lora *a) { return &a->info; }
