/* gguf_lora: a llama.cpp LoRA adapter, as convert_lora_to_gguf.py writes
 * it: general.type "adapter", adapter.type "lora", adapter.lora.alpha, and
 * tensors blk.{i}.{attn_q,...}.weight.lora_a (ne [in, r]) and .lora_b
 * (ne [r, out]). It is read with llama.cpp's semantics: every pair in the
 * file is applied, scale = alpha / its rank (1 when alpha is 0), and q/k B
 * rows are in the GGUF order of the architecture's base weights.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_internal.h"

/* llama.cpp's tensor names of the seven projections, by lloco_proj. */
static const char *const gguf_proj[LLOCO_PROJ_COUNT] = {
    "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
};

/* Parses "blk.{i}.{proj}.weight.lora_{a,b}". */
static int parse_name(const char *name, int *layer, int *proj, int *is_b) {
    if (strncmp(name, "blk.", 4)) return 0;
    char *end;
    const long l = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || l < 0 || l > 1000000) return 0;
    for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
        const size_t n = strlen(gguf_proj[p]);
        if (strncmp(end + 1, gguf_proj[p], n)) continue;
        const char *rest = end + 1 + n;
        if (!strcmp(rest, ".weight.lora_a"))
            *is_b = 0;
        else if (!strcmp(rest, ".weight.lora_b"))
            *is_b = 1;
        else
            return 0;
        *layer = (int)l;
        *proj = p;
        return 1;
    }
    return 0;
}

static int str_key(const lloco_gguf *g, const char *key, char *out, size_t cap) {
    const char *s;
    size_t len;
    if (lloco_gguf_get_str(g, key, &s, &len)) return -1;
    snprintf(out, cap, "%.*s", (int)(len < cap ? len : cap - 1), s);
    return 0;
}

/* The metadata llama.cpp requires, against the base model. */
static int check_meta(const lora_ctx *c, const lloco_gguf *g, const lloco_model *base,
                      float *alpha) {
    char v[64];
    if (str_key(g, "general.type", v, sizeof v) || strcmp(v, "adapter"))
        return lora_fail(c, LLOCO_ERR_FORMAT,
                         "general.type is not \"adapter\" (a model, not an adapter?)");
    if (str_key(g, "adapter.type", v, sizeof v) || strcmp(v, "lora"))
        return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "adapter.type is not \"lora\"");
    const char *arch = lloco_model_hparams(base)->arch;
    if (str_key(g, "general.architecture", v, sizeof v) || strcmp(v, arch))
        return lora_fail(c, LLOCO_ERR_MISMATCH,
                         "made for architecture '%s', the base model is '%s'", v, arch);
    if (lloco_gguf_find_key(g, "adapter.alora.invocation_tokens") >= 0)
        return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "activated LoRA switches on mid-sequence");
    *alpha = 0.0f; /* llama.cpp's default: scale 1 */
    const int rc = lloco_gguf_get_f32(g, "adapter.lora.alpha", alpha);
    if (rc && rc != LLOCO_ERR_NOTFOUND)
        return lora_fail(c, LLOCO_ERR_FORMAT, "adapter.lora.alpha is not a number");
    return 0;
}

/* Matrices in a quantized type (convert_lora_to_gguf --outtype q8_0) are
 * dequantized into owned buffers: the LoRA op reads float types. */
typedef struct {
    float **bufs;
    int n;
} owned_bufs;

static int tensor_src(const lora_ctx *c, const lloco_gguf_tensor *t, owned_bufs *ob, lora_src *s) {
    *s = (lora_src){t->data, t->type, t->n_dims, t->ne[1], t->ne[0]};
    if (t->type == LLOCO_DTYPE_F32 || t->type == LLOCO_DTYPE_F16 || t->type == LLOCO_DTYPE_BF16)
        return 0;
    if (t->type == LLOCO_DTYPE_Q8_1 || t->type == LLOCO_DTYPE_Q8_K || t->n_dims != 2)
        return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "tensor '%s': type %s", t->name,
                         lloco_dtype_name(t->type));
    float *buf = malloc(sizeof(float) * (size_t)(t->ne[0] * t->ne[1]));
    float **bufs = buf ? realloc(ob->bufs, sizeof *bufs * (size_t)(ob->n + 1)) : NULL;
    if (!bufs) {
        free(buf);
        return lora_fail(c, LLOCO_ERR_NOMEM, "out of memory");
    }
    ob->bufs = bufs;
    ob->bufs[ob->n++] = buf;
    const size_t rb = lloco_dtype_row_bytes(t->type, t->ne[0]);
    for (int64_t r = 0; r < t->ne[1]; r++)
        lloco_dequantize_row(t->type, (const uint8_t *)t->data + rb * (size_t)r, buf + r * t->ne[0],
                             t->ne[0]);
    s->data = buf;
    s->type = LLOCO_DTYPE_F32;
    return 0;
}

int lora_open_gguf(const lora_ctx *c, const lloco_model *base, lloco_lora **out) {
    lloco_gguf *g;
    int rc = lloco_gguf_open(c->path, &g);
    if (rc) return lora_fail(c, rc, "%s", lloco_last_error());
    const int nl = lloco_model_hparams(base)->n_layer;
    const char *arch = lloco_model_hparams(base)->arch;
    lora_pair *ps = calloc((size_t)nl * LLOCO_PROJ_COUNT, sizeof *ps);
    owned_bufs ob = {0};
    float alpha = 0.0f;
    if (!ps) rc = lora_fail(c, LLOCO_ERR_NOMEM, "out of memory");
    if (!rc) rc = check_meta(c, g, base, &alpha);
    for (int64_t i = 0; !rc && i < lloco_gguf_n_tensors(g); i++) {
        const lloco_gguf_tensor *t = lloco_gguf_tensor_at(g, i);
        int l, p, is_b;
        const size_t n = strlen(t->name);
        if (n > 12 && !strcmp(t->name + n - 12, "_norm.weight")) {
            /* mergekit-extract-lora stores norm weights here; llama.cpp
             * skips them, and so does lloco */
            lloco_log(LLOCO_LOG_WARN, "LoRA adapter '%s': tensor '%s' ignored, as llama.cpp does",
                      c->name, t->name);
            continue;
        }
        if (!parse_name(t->name, &l, &p, &is_b)) {
            rc = lora_fail(c, LLOCO_ERR_UNSUPPORTED,
                           "tensor '%s' is not a LoRA pair of one of the projections lloco adapts",
                           t->name);
        } else if (l >= nl) {
            rc = lora_fail(c, LLOCO_ERR_MISMATCH,
                           "tensor '%s' is for layer %d, the base model has %d layers", t->name, l,
                           nl);
        } else {
            lora_pair *x = &ps[l * LLOCO_PROJ_COUNT + p];
            x->expected = 1;
            x->scale = alpha;
            rc = tensor_src(c, t, &ob, is_b ? &x->b : &x->a);
        }
    }
    for (int i = 0; !rc && i < nl * LLOCO_PROJ_COUNT; i++)
        if (ps[i].expected && (!ps[i].a.data || !ps[i].b.data))
            rc = lora_fail(c, LLOCO_ERR_FORMAT, "missing tensor 'blk.%d.%s.weight.lora_%c'",
                           i / LLOCO_PROJ_COUNT, gguf_proj[i % LLOCO_PROJ_COUNT],
                           ps[i].a.data ? 'b' : 'a');
    if (!rc) {
        /* the converter permutes q/k exactly where it permutes the base
         * weights: the architectures whose GGUF models are in GGUF order */
        const lora_meta meta = {.base_model = "",
                                .alpha = alpha,
                                .src_qk_permuted =
                                    !strcmp(arch, "llama") || !strcmp(arch, "mistral"),
                                .rank_from = "the file"};
        rc = lora_build(c, base, ps, &meta, out);
    }
    for (int i = 0; i < ob.n; i++) free(ob.bufs[i]);
    free(ob.bufs);
    free(ps);
    lloco_gguf_close(g);
    return rc;
}
