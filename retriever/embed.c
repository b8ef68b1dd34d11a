/* embed: the retrieval embedder. A BERT encoder (word + position + token-type
 * embeddings, post-LN layers of biased self-attention and a GELU MLP) loaded
 * from a sentence-transformers folder and run on a backend's ops over
 * batches of windows, then pooled (mean or [CLS]) and L2-normalised.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "decoder/decoder.h"
#include "retriever.h"
#include "retriever/embed_internal.h"

#define MAX_CONFIG_BYTES ((size_t)16 << 20)
/* Activation rows per forward call (at least one window). The float matmul
 * packs each panel of weight rows once per call for all the rows: with 256
 * rows the packing took a fifth of its time, with 1024 (four windows of
 * all-MiniLM-L6-v2) under a tenth. */
#define BATCH_ROWS 1024

typedef struct {
    const void *w; /* [n][k] in t */
    lloco_dtype t;
    const float *b; /* [n] */
    int n, k;
} linear;

typedef struct {
    linear q, k, v, o, up, down;
    const float *ln1_w, *ln1_b; /* after attention */
    const float *ln2_w, *ln2_b; /* after the MLP */
} enc_layer;

/* A window: a run of one text's word pieces, run as [CLS] pieces [SEP]. */
typedef struct {
    int text;
    size_t off; /* into the piece pool */
    int n;
} window;

struct lloco_embedder {
    lloco_backend *be;
    lloco_st *st;
    lloco_wp *wp;
    int d, n_layer, n_head, head_dim, d_ff, n_pos, n_vocab;
    float eps;
    int gelu_approx;
    int pool_cls;
    int max_tokens; /* positions per window, specials included */
    int n_pre, n_suf;
    const int32_t *pre, *suf;
    const void *word; /* [n_vocab][d] in word_t */
    lloco_dtype word_t;
    const float *pos;   /* [n_pos][d] */
    const float *type0; /* [d]: token type 0 */
    const float *ln_w, *ln_b;
    enc_layer *layers;
    void **owned; /* converted or realigned copies of tensors */
    int n_owned;
    char hash[33];

    /* Working memory, kept between calls. */
    lloco_wp_scratch scratch;
    lloco_wp_ids pieces;
    window *win;
    size_t cap_win;
    int batch_rows;
    int32_t *tok; /* [batch_rows] */
    int32_t *pos_id;
    float *x, *q, *k, *v, *ctx, *tmp; /* [batch_rows][d] */
    float *ff;                        /* [batch_rows][d_ff] */
};

/* ---- config files ------------------------------------------------------------- */

/* dir/name parsed; *root NULL (0 returned) when absent and optional. */
static int read_json(const char *dir, const char *name, int optional, cJSON **root) {
    *root = NULL;
    char *path = lloco_path_join(dir, name);
    if (!path) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
    int rc = 0;
    if (!optional || lloco_is_file(path)) {
        char *text = NULL;
        size_t len = 0;
        rc = lloco_file_read(path, MAX_CONFIG_BYTES, &text, &len);
        if (!rc && !(*root = cJSON_ParseWithLength(text, len)))
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: not valid JSON", path);
        free(text);
    }
    free(path);
    return rc;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A positive integer field (absent: dflt, or an error when dflt is 0). */
static int cfg_int(const cJSON *cfg, const char *dir, const char *key, int dflt, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v) {
        if (!dflt)
            return lloco_error(LLOCO_ERR_FORMAT, "%s/config.json: no \"%s\"", dir, key);
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 1 && v->valuedouble <= 1 << 24) ||
        v->valuedouble != (double)(int)v->valuedouble)
        return lloco_error(LLOCO_ERR_FORMAT, "%s/config.json: \"%s\" is not a positive integer",
                           dir, key);
    *out = (int)v->valuedouble;
    return 0;
}

static int parse_config(lloco_embedder *e, const char *dir) {
    cJSON *cfg;
    int rc = read_json(dir, "config.json", 0, &cfg);
    if (rc) return rc;
    int n_type = 0;
    const char *mt = jstr(cfg, "model_type"), *act = jstr(cfg, "hidden_act"),
               *pe = jstr(cfg, "position_embedding_type");
    if (mt && strcmp(mt, "bert")) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED, "%s/config.json: model_type '%s' is not bert",
                         dir, mt);
    } else if (pe && strcmp(pe, "absolute")) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED,
                         "%s/config.json: position_embedding_type '%s' is not absolute", dir, pe);
    } else if (act && strcmp(act, "gelu") && strcmp(act, "gelu_new") &&
               strcmp(act, "gelu_pytorch_tanh")) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED, "%s/config.json: hidden_act '%s' is not GELU",
                         dir, act);
    } else if (!(rc = cfg_int(cfg, dir, "hidden_size", 0, &e->d)) &&
               !(rc = cfg_int(cfg, dir, "num_hidden_layers", 0, &e->n_layer)) &&
               !(rc = cfg_int(cfg, dir, "num_attention_heads", 0, &e->n_head)) &&
               !(rc = cfg_int(cfg, dir, "intermediate_size", 0, &e->d_ff)) &&
               !(rc = cfg_int(cfg, dir, "max_position_embeddings", 0, &e->n_pos)) &&
               !(rc = cfg_int(cfg, dir, "vocab_size", 0, &e->n_vocab)) &&
               !(rc = cfg_int(cfg, dir, "type_vocab_size", 2, &n_type))) {
        /* "gelu" is the exact erf form in transformers' ACT2FN. */
        e->gelu_approx = act && strcmp(act, "gelu") != 0;
        e->eps = 1e-12f;
        const cJSON *eps = cJSON_GetObjectItemCaseSensitive(cfg, "layer_norm_eps");
        if (cJSON_IsNumber(eps)) e->eps = (float)eps->valuedouble;
        if (!(e->eps > 0) || e->d % e->n_head)
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s/config.json: hidden_size %d not a multiple of "
                             "%d heads, or layer_norm_eps not positive", dir, e->d, e->n_head);
        e->head_dim = e->d / e->n_head;
    }
    cJSON_Delete(cfg);
    return rc;
}

/* The Pooling module's config, found through modules.json (else at
 * 1_Pooling/, else mean pooling, sentence-transformers' default). */
static int parse_pooling(lloco_embedder *e, const char *dir) {
    cJSON *mods, *pool = NULL;
    int rc = read_json(dir, "modules.json", 1, &mods);
    if (rc) return rc;
    char name[512] = "1_Pooling/config.json";
    const cJSON *m;
    cJSON_ArrayForEach(m, mods) {
        const char *type = jstr(m, "type"), *path = jstr(m, "path");
        size_t tl = type ? strlen(type) : 0;
        if (tl >= 7 && !strcmp(type + tl - 7, "Pooling") && path)
            snprintf(name, sizeof name, "%s/config.json", path);
    }
    cJSON_Delete(mods);
    if ((rc = read_json(dir, name, 1, &pool))) return rc;
    if (!pool) {
        lloco_log(LLOCO_LOG_INFO, "embedder: %s has no pooling config, using mean pooling", dir);
        return 0;
    }
    const char *mode = jstr(pool, "pooling_mode");
    int mean = 0, cls = 0, other = 0;
    if (mode) {
        mean = !strcmp(mode, "mean");
        cls = !strcmp(mode, "cls");
        other = !mean && !cls;
    } else {
        for (const cJSON *v = pool->child; v; v = v->next) {
            if (strncmp(v->string, "pooling_mode_", 13) || !cJSON_IsTrue(v)) continue;
            if (!strcmp(v->string, "pooling_mode_mean_tokens")) mean = 1;
            else if (!strcmp(v->string, "pooling_mode_cls_token")) cls = 1;
            else other = 1;
        }
    }
    cJSON_Delete(pool);
    if (other || mean + cls != 1)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s/%s: only one of mean or cls pooling is "
                           "supported", dir, name);
    e->pool_cls = cls;
    return 0;
}

/* sentence-transformers' max_seq_length, else the position table's size. */
static int parse_max_tokens(lloco_embedder *e, const char *dir) {
    cJSON *sb;
    int rc = read_json(dir, "sentence_bert_config.json", 1, &sb);
    if (rc) return rc;
    e->max_tokens = e->n_pos;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sb, "max_seq_length");
    if (cJSON_IsNumber(v)) e->max_tokens = (int)v->valuedouble;
    cJSON_Delete(sb);
    if (e->max_tokens > e->n_pos || e->max_tokens <= e->n_pre + e->n_suf)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: max_seq_length %d must exceed the %d special "
                           "tokens and fit the %d positions", dir, e->max_tokens,
                           e->n_pre + e->n_suf, e->n_pos);
    return 0;
}

/* ---- weights -------------------------------------------------------------------- */

static int own(lloco_embedder *e, void *p) {
    void **o = realloc(e->owned, (size_t)(e->n_owned + 1) * sizeof *o);
    if (!o) {
        free(p);
        return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
    }
    e->owned = o;
    e->owned[e->n_owned++] = p;
    return 0;
}

/* Tensor prefix + name, checked to be [d0] (d1 == 0) or [d0, d1] of a
 * float dtype. */
static int tensor(lloco_embedder *e, const char *prefix, const char *name, int64_t d0, int64_t d1,
                  const lloco_st_tensor **out) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const lloco_st_tensor *t = lloco_st_find(e->st, full);
    if (!t) return lloco_error(LLOCO_ERR_FORMAT, "embedder: tensor '%s' missing", full);
    if (t->type == LLOCO_DTYPE_COUNT)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "embedder: tensor '%s' is not F32, F16 or BF16",
                           full);
    if (t->n_dims != (d1 ? 2 : 1) || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
        char want[48];
        if (d1) snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
        else snprintf(want, sizeof want, "[%lld]", (long long)d0);
        return lloco_error(LLOCO_ERR_FORMAT, "embedder: tensor '%s' has %d dims, shape[0] %lld, "
                           "expected %s", full, t->n_dims, (long long)t->shape[0], want);
    }
    *out = t;
    return 0;
}

/* The tensor as f32: in place when it is F32 and aligned, else converted
 * once into memory the embedder owns. */
static int tensor_f32(lloco_embedder *e, const char *prefix, const char *name, int64_t d0,
                      int64_t d1, const float **out) {
    const lloco_st_tensor *t;
    int rc = tensor(e, prefix, name, d0, d1, &t);
    if (rc) return rc;
    if (t->type == LLOCO_DTYPE_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
        *out = t->data;
        return 0;
    }
    size_t n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    float *buf = malloc(n * sizeof *buf);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory for '%s'", name);
    if (t->type == LLOCO_DTYPE_F32) memcpy(buf, t->data, n * sizeof *buf);
    else lloco_dequantize_row(t->type, t->data, buf, (int64_t)n);
    if ((rc = own(e, buf))) return rc;
    *out = buf;
    return 0;
}

/* A matrix kept in its file dtype (the matmul reads F32/F16/BF16), copied
 * only when the file leaves it misaligned for its element type. */
static int matrix(lloco_embedder *e, const char *prefix, const char *name, int64_t n, int64_t k,
                  const void **w, lloco_dtype *type) {
    const lloco_st_tensor *t;
    int rc = tensor(e, prefix, name, n, k, &t);
    if (rc) return rc;
    *type = t->type;
    *w = t->data;
    if ((uintptr_t)t->data % lloco_dtype_row_bytes(t->type, 1) == 0) return 0;
    void *buf = malloc(t->nbytes);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory for '%s'", name);
    memcpy(buf, t->data, t->nbytes);
    *w = buf;
    return own(e, buf);
}

static int load_linear(lloco_embedder *e, const char *prefix, const char *name, int n, int k,
                       linear *l) {
    char w[200], b[200];
    snprintf(w, sizeof w, "%s.weight", name);
    snprintf(b, sizeof b, "%s.bias", name);
    l->n = n;
    l->k = k;
    int rc = matrix(e, prefix, w, n, k, &l->w, &l->t);
    return rc ? rc : tensor_f32(e, prefix, b, n, 0, &l->b);
}

static int load_weights(lloco_embedder *e) {
    /* Checkpoints of a BertFor* head model carry a "bert." prefix. */
    const char *p = lloco_st_find(e->st, "embeddings.word_embeddings.weight") ? "" : "bert.";
    int d = e->d, rc;
    if ((rc = tensor_f32(e, p, "embeddings.position_embeddings.weight", e->n_pos, d, &e->pos)) ||
        (rc = tensor_f32(e, p, "embeddings.LayerNorm.weight", d, 0, &e->ln_w)) ||
        (rc = tensor_f32(e, p, "embeddings.LayerNorm.bias", d, 0, &e->ln_b)))
        return rc;
    if ((rc = matrix(e, p, "embeddings.word_embeddings.weight", e->n_vocab, d, &e->word,
                     &e->word_t)))
        return rc;
    /* Token type 0 only: its table may have any number of rows. */
    char nm[128];
    snprintf(nm, sizeof nm, "%sembeddings.token_type_embeddings.weight", p);
    const lloco_st_tensor *tt = lloco_st_find(e->st, nm);
    if ((rc = tensor_f32(e, p, "embeddings.token_type_embeddings.weight",
                         tt && tt->n_dims == 2 && tt->shape[0] > 0 ? tt->shape[0] : 1, d,
                         &e->type0)))
        return rc;
    e->layers = calloc((size_t)e->n_layer, sizeof *e->layers);
    if (!e->layers) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
    for (int i = 0; i < e->n_layer && !rc; i++) {
        enc_layer *L = &e->layers[i];
#define TN(suffix) (snprintf(nm, sizeof nm, "encoder.layer.%d." suffix, i), nm)
        if ((rc = load_linear(e, p, TN("attention.self.query"), d, d, &L->q)) ||
            (rc = load_linear(e, p, TN("attention.self.key"), d, d, &L->k)) ||
            (rc = load_linear(e, p, TN("attention.self.value"), d, d, &L->v)) ||
            (rc = load_linear(e, p, TN("attention.output.dense"), d, d, &L->o)) ||
            (rc = tensor_f32(e, p, TN("attention.output.LayerNorm.weight"), d, 0, &L->ln1_w)) ||
            (rc = tensor_f32(e, p, TN("attention.output.LayerNorm.bias"), d, 0, &L->ln1_b)) ||
            (rc = load_linear(e, p, TN("intermediate.dense"), e->d_ff, d, &L->up)) ||
            (rc = load_linear(e, p, TN("output.dense"), d, e->d_ff, &L->down)) ||
            (rc = tensor_f32(e, p, TN("output.LayerNorm.weight"), d, 0, &L->ln2_w)))
            break;
        rc = tensor_f32(e, p, TN("output.LayerNorm.bias"), d, 0, &L->ln2_b);
#undef TN
    }
    return rc;
}

/* XXH3-128 of the weight file's bytes, as 32 hex digits. */
static int hash_file(const char *path, char out[33]) {
    lloco_mapped_file m;
    int rc = lloco_file_map(path, &m);
    if (rc) return rc;
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(m.data, m.size));
    lloco_file_unmap(&m);
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
    return 0;
}

static int alloc_work(lloco_embedder *e) {
    const size_t R = (size_t)(e->batch_rows = e->max_tokens > BATCH_ROWS ? e->max_tokens
                                                                          : BATCH_ROWS);
    const size_t d = (size_t)e->d;
    e->tok = malloc(R * sizeof *e->tok);
    e->pos_id = malloc(R * sizeof *e->pos_id);
    float **bufs[] = {&e->x, &e->q, &e->k, &e->v, &e->ctx, &e->tmp};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(bufs); i++) *bufs[i] = malloc(R * d * sizeof(float));
    e->ff = malloc(R * (size_t)e->d_ff * sizeof(float));
    if (!e->tok || !e->pos_id || !e->x || !e->q || !e->k || !e->v || !e->ctx || !e->tmp ||
        !e->ff)
        return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory for %zu-row buffers", R);
    return 0;
}

static int open_weights(lloco_embedder *e, const char *dir) {
    char *path = lloco_path_join(dir, "model.safetensors");
    if (!path) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
    int rc;
    if (!lloco_is_file(path)) {
        char *bin = lloco_path_join(dir, "pytorch_model.bin");
        rc = lloco_error(LLOCO_ERR_NOTFOUND, "%s: no model.safetensors%s", dir,
                         bin && lloco_is_file(bin) ? " (pytorch_model.bin is not read: convert it "
                                               "to safetensors)" : "");
        free(bin);
    } else if (!(rc = lloco_st_open(path, &e->st))) {
        rc = hash_file(path, e->hash);
    }
    free(path);
    return rc;
}

int lloco_embedder_open(const char *dir, lloco_backend *be, lloco_embedder **out) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return lloco_error(errno == ENOENT ? LLOCO_ERR_NOTFOUND : LLOCO_ERR_IO,
                           "%s: embedder model directory: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return lloco_error(LLOCO_ERR_INVAL, "%s: not a directory (an embedder is a "
                           "sentence-transformers model folder)", dir);
    lloco_embedder *e = calloc(1, sizeof *e);
    if (!e) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
    e->be = be;
    int rc;
    if ((rc = parse_config(e, dir)) || (rc = lloco_wp_load(dir, &e->wp))) goto fail;
    e->n_pre = lloco_wp_prefix(e->wp, &e->pre);
    e->n_suf = lloco_wp_suffix(e->wp, &e->suf);
    if (lloco_wp_n_vocab(e->wp) > e->n_vocab) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s: the tokenizer has ids up to %d but the model "
                         "only %d embedding rows", dir, lloco_wp_n_vocab(e->wp) - 1, e->n_vocab);
        goto fail;
    }
    if ((rc = parse_pooling(e, dir)) || (rc = parse_max_tokens(e, dir)) ||
        (rc = open_weights(e, dir)) || (rc = load_weights(e)) || (rc = alloc_work(e)))
        goto fail;
    lloco_log(LLOCO_LOG_INFO, "embedder: %s: %d layers, d %d, %d heads, FFN %d, %s pooling, "
              "%d-token windows, weights %s", dir, e->n_layer, e->d, e->n_head, e->d_ff,
              e->pool_cls ? "cls" : "mean", e->max_tokens, lloco_dtype_name(e->layers[0].q.t));
    *out = e;
    return 0;
fail:
    lloco_embedder_close(e);
    return rc;
}

void lloco_embedder_close(lloco_embedder *e) {
    if (!e) return;
    for (int i = 0; i < e->n_owned; i++) free(e->owned[i]);
    free(e->owned);
    free(e->layers);
    lloco_st_close(e->st);
    lloco_wp_free(e->wp);
    lloco_wp_scratch_free(&e->scratch);
    free(e->pieces.v);
    free(e->win);
    float *bufs[] = {e->x, e->q, e->k, e->v, e->ctx, e->tmp, e->ff};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(bufs); i++) free(bufs[i]);
    free(e->tok);
    free(e->pos_id);
    free(e);
}

int lloco_embedder_dim(const lloco_embedder *e) { return e->d; }
const char *lloco_embedder_hash(const lloco_embedder *e) { return e->hash; }
int lloco_embedder_max_tokens(const lloco_embedder *e) { return e->max_tokens; }

/* ---- forward ---------------------------------------------------------------------- */

/* y[m][l->n] = x[m][l->k] W^T + b */
static void run_linear(lloco_backend *be, const linear *l, const float *x, int m, float *y) {
    lloco_op_matmul(be, l->w, l->t, l->n, l->k, x, m, y);
    for (int i = 0; i < m; i++) lloco_op_add(be, y + (size_t)i * l->n, l->b, l->n);
}

/* Runs windows win[0..nw) (R rows in all, tokens in e->tok) through the
 * encoder and writes each window's pooled, normalised vector to
 * pooled[nw][d]. */
static void forward(lloco_embedder *e, const window *win, int nw, int R, float *pooled) {
    lloco_backend *be = e->be;
    const int d = e->d;
    float *x = e->x;
    lloco_op_get_rows(be, e->word, e->word_t, d, e->tok, R, x);
    /* HF's order: (word + token type) + position. */
    for (int i = 0; i < R; i++) {
        float *xi = x + (size_t)i * d;
        const float *pi = e->pos + (size_t)e->pos_id[i] * d;
        for (int j = 0; j < d; j++) xi[j] = (xi[j] + e->type0[j]) + pi[j];
    }
    /* A few rows are padded with zero rows to the float matmul's batch
     * size, so that a window's vector does not depend on its batch. */
    const int rows = R < LLOCO_MATMUL_FLOAT_ROWS ? LLOCO_MATMUL_FLOAT_ROWS : R;
    memset(x + (size_t)R * d, 0, (size_t)(rows - R) * d * sizeof(float));
    memset(e->ctx + (size_t)R * d, 0, (size_t)(rows - R) * d * sizeof(float));
    lloco_op_layernorm(be, x, e->ln_w, e->ln_b, rows, d, e->eps, x);
    const float scale = 1.0f / sqrtf((float)e->head_dim);
    for (int l = 0; l < e->n_layer; l++) {
        const enc_layer *L = &e->layers[l];
        run_linear(be, &L->q, x, rows, e->q);
        run_linear(be, &L->k, x, rows, e->k);
        run_linear(be, &L->v, x, rows, e->v);
        /* each window attends to itself, unmasked (it has no padding) */
        for (int w = 0, r0 = 0; w < nw; w++) {
            const int len = e->n_pre + win[w].n + e->n_suf;
            const size_t o = (size_t)r0 * d;
            lloco_op_attention_full(be, e->q + o, len, e->n_head, e->head_dim, e->k + o, e->v + o,
                                    d, scale, e->ctx + o);
            r0 += len;
        }
        run_linear(be, &L->o, e->ctx, rows, e->tmp);
        lloco_op_add(be, e->tmp, x, (int64_t)rows * d);
        lloco_op_layernorm(be, e->tmp, L->ln1_w, L->ln1_b, rows, d, e->eps, x);
        run_linear(be, &L->up, x, rows, e->ff);
        lloco_op_gelu(be, e->ff, (int64_t)rows * e->d_ff, e->gelu_approx);
        run_linear(be, &L->down, e->ff, rows, e->tmp);
        lloco_op_add(be, e->tmp, x, (int64_t)rows * d);
        lloco_op_layernorm(be, e->tmp, L->ln2_w, L->ln2_b, rows, d, e->eps, x);
    }
    for (int w = 0, r0 = 0; w < nw; w++) {
        const int len = e->n_pre + win[w].n + e->n_suf;
        float *p = pooled + (size_t)w * d;
        if (e->pool_cls) {
            memcpy(p, x + (size_t)r0 * d, (size_t)d * sizeof(float));
        } else {
            memset(p, 0, (size_t)d * sizeof(float));
            for (int i = 0; i < len; i++)
                for (int j = 0; j < d; j++) p[j] += x[(size_t)(r0 + i) * d + j];
            for (int j = 0; j < d; j++) p[j] /= (float)len;
        }
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)p[j] * p[j];
        /* torch.nn.functional.normalize's eps */
        const float inv = 1.0f / fmaxf((float)sqrt(ss), 1e-12f);
        for (int j = 0; j < d; j++) p[j] *= inv;
        r0 += len;
    }
}

static int push_window(lloco_embedder *e, size_t *nw, int text, size_t off, int n) {
    if (*nw == e->cap_win) {
        size_t cap = e->cap_win ? 2 * e->cap_win : 64;
        window *w = realloc(e->win, cap * sizeof *w);
        if (!w) return lloco_error(LLOCO_ERR_NOMEM, "embedder: no memory");
        e->win = w;
        e->cap_win = cap;
    }
    e->win[(*nw)++] = (window){text, off, n};
    return 0;
}

int lloco_embedder_embed(lloco_embedder *e, const char *const *texts, const size_t *lens, int n,
                         float *out) {
    if (n < 0 || (n > 0 && (!texts || !out)))
        return lloco_error(LLOCO_ERR_INVAL, "embedder: bad arguments (n = %d)", n);
    if (n == 0) return 0;
    const int d = e->d, per_window = e->max_tokens - e->n_pre - e->n_suf;
    /* Tokenize everything and cut it into windows. */
    size_t nw = 0;
    e->pieces.n = 0;
    int rc = 0;
    for (int t = 0; t < n && !rc; t++) {
        if (!texts[t]) return lloco_error(LLOCO_ERR_INVAL, "embedder: text %d is NULL", t);
        size_t off = e->pieces.n;
        rc = lloco_wp_encode(e->wp, texts[t], lens ? lens[t] : strlen(texts[t]), &e->scratch,
                             &e->pieces);
        size_t np = e->pieces.n - off;
        for (size_t b = 0; !rc && (b < np || b == 0); b += (size_t)per_window)
            rc = push_window(e, &nw, t, off + b,
                             (int)(np - b < (size_t)per_window ? np - b : (size_t)per_window));
    }
    if (rc) return rc;
    memset(out, 0, (size_t)n * d * sizeof(float));
    /* Batches of whole windows; each window's vector is added to its
     * text's, weighted by its word pieces. */
    for (size_t w0 = 0; w0 < nw;) {
        int R = 0;
        size_t w1 = w0;
        while (w1 < nw && R + e->n_pre + e->win[w1].n + e->n_suf <= e->batch_rows) {
            const window *w = &e->win[w1];
            int p = 0;
            for (int i = 0; i < e->n_pre; i++, p++) e->tok[R + p] = e->pre[i];
            memcpy(e->tok + R + p, e->pieces.v + w->off, (size_t)w->n * sizeof(int32_t));
            p += w->n;
            for (int i = 0; i < e->n_suf; i++, p++) e->tok[R + p] = e->suf[i];
            for (int i = 0; i < p; i++) e->pos_id[R + i] = i;
            R += p;
            w1++;
        }
        float *pooled = e->tmp; /* free after the last layer, R >= w1 - w0 rows */
        forward(e, e->win + w0, (int)(w1 - w0), R, pooled);
        for (size_t w = w0; w < w1; w++) {
            float *o = out + (size_t)e->win[w].text * d;
            const float wt = (float)(e->win[w].n > 0 ? e->win[w].n : 1);
            for (int j = 0; j < d; j++) o[j] += wt * pooled[(w - w0) * d + j];
        }
        w0 = w1;
    }
    for (int t = 0; t < n; t++) {
        float *o = out + (size_t)t * d;
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)o[j] * o[j];
        const float inv = 1.0f / fmaxf((float)sqrt(ss), 1e-12f);
        for (int j = 0; j < d; j++) o[j] *= inv;
    }
    return 0;
}
