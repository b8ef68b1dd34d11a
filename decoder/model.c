/* model: opens a GGUF file or a safetensors checkpoint (+ config.json and
 * tokenizer.json) and maps its tensors onto the LLaMA-family weights the
 * forward pass reads, checking every shape against the hyper-parameters.
 */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "model_internal.h"
#include "tokenizer_internal.h"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int model_own(lloco_model *m, void *p) {
    void **n = realloc(m->owned, sizeof(void *) * (size_t)(m->n_owned + 1));
    if (!n) {
        free(p);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    m->owned = n;
    m->owned[m->n_owned++] = p;
    return 0;
}

/* A 1-D f32 view of a norm/bias vector of length d; converts F16/BF16
 * sources into a buffer the model owns. */
static int as_f32_vector(lloco_model *m, const char *name, const void *data, lloco_dtype t,
                         int64_t n, int64_t d, const float **out) {
    if (n != d)
        return lloco_error(LLOCO_ERR_FORMAT, "tensor '%s' has %lld elements, expected %lld",
                           name, (long long)n, (long long)d);
    if (t == LLOCO_DTYPE_F32) {
        *out = data;
        return 0;
    }
    float *buf = malloc(sizeof(float) * (size_t)d);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int rc = lloco_dequantize_row(t, data, buf, d);
    if (rc == 0) rc = model_own(m, buf);
    else free(buf);
    if (rc) return rc;
    *out = buf;
    return 0;
}

/* ---- hyper-parameters ---------------------------------------------------- */

static int check_hparams(lloco_hparams *hp, const char *src) {
    if (hp->n_layer <= 0 || hp->d_model <= 0 || hp->n_head <= 0 || hp->n_head_kv <= 0 ||
        hp->d_ff <= 0 || hp->n_vocab <= 0 || hp->head_dim <= 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: missing or non-positive hyper-parameters", src);
    if (hp->n_head % hp->n_head_kv != 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %d heads not a multiple of %d KV heads", src,
                           hp->n_head, hp->n_head_kv);
    if (hp->rope_dim <= 0) hp->rope_dim = hp->head_dim;
    if (hp->rope_dim > hp->head_dim || hp->rope_dim % 2)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: rope dimension %d invalid for head_dim %d",
                           src, hp->rope_dim, hp->head_dim);
    if (!(hp->rope_theta > 0)) hp->rope_theta = 10000.0f;
    if (!(hp->rms_eps > 0)) hp->rms_eps = 1e-5f;
    if (hp->n_ctx_train <= 0) hp->n_ctx_train = 2048;
    return 0;
}

/* The rotary embedding as llama.cpp hands it to GGML's ROPE: theta_scale
 * from the base and rotated dims, freq_scale from linear scaling, and
 * freq_factors (GGUF rope_freqs.weight, Llama-3) dividing the angles one by
 * one. HF checkpoints with llama3 rope_scaling carry no such tensor; their
 * factors are computed as llama.cpp's converter computes rope_freqs.weight,
 * in float as torch does, so that both formats rotate alike. */
static int compute_rope_params(lloco_model *m, const float *freq_factors) {
    const lloco_hparams *hp = &m->hp;
    lloco_rope_params *rp = &m->rope;
    rp->theta_scale = powf(hp->rope_theta, -2.0f / (float)hp->rope_dim);
    rp->freq_scale = hp->rope_scaling == LLOCO_ROPE_SCALING_LINEAR && hp->rope_factor > 0
                         ? 1.0f / hp->rope_factor
                         : 1.0f;
    rp->mscale = 1.0f;
    rp->freq_factors = freq_factors;
    if (hp->rope_scaling != LLOCO_ROPE_SCALING_LLAMA3 || freq_factors) return 0;
    const int half = hp->rope_dim / 2;
    float *ff = malloc(sizeof(float) * (size_t)half);
    if (!ff) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int rc = model_own(m, ff);
    if (rc) return rc;
    const float dim = (float)hp->head_dim;
    const float lo = hp->rope_low_freq_factor, hi = hp->rope_high_freq_factor;
    const float lo_wavelen = (float)((double)hp->rope_orig_ctx / lo);
    const float hi_wavelen = (float)((double)hp->rope_orig_ctx / hi);
    const float span = (float)((double)hi - lo);
    for (int j = 0; j < half; j++) {
        const float freq = 1.0f / powf(hp->rope_theta, (float)(2 * j) / dim);
        const float wavelen = (float)(2 * M_PI) / freq;
        if (wavelen < hi_wavelen) {
            ff[j] = 1.0f;
        } else if (wavelen > lo_wavelen) {
            ff[j] = hp->rope_factor;
        } else {
            const float smooth = ((float)hp->rope_orig_ctx / wavelen - lo) / span;
            ff[j] = 1.0f / ((1.0f - smooth) / hp->rope_factor + smooth);
        }
    }
    rp->freq_factors = ff;
    return 0;
}

/* ---- GGUF ----------------------------------------------------------------- */

static int gguf_hp_int(const lloco_gguf *g, const char *arch, const char *key, int required,
                       int *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    int rc = lloco_gguf_get_i64(g, k, &v);
    if (rc == LLOCO_ERR_NOTFOUND && !required) return 0;
    if (rc) return lloco_error(rc, "GGUF key '%s': %s", k, lloco_strerror(rc));
    if (v < 0 || v > INT_MAX) return lloco_error(LLOCO_ERR_RANGE, "GGUF key '%s' out of range", k);
    *out = (int)v;
    return 0;
}

static int gguf_hp_f32(const lloco_gguf *g, const char *arch, const char *key, float *out) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = lloco_gguf_get_f32(g, k, out);
    if (rc == LLOCO_ERR_NOTFOUND) return 0;
    if (rc) return lloco_error(rc, "GGUF key '%s': %s", k, lloco_strerror(rc));
    return 0;
}

/* A tensor of either file format, shape in row-major terms ([rows, cols]
 * for a matrix; GGUF lists dimensions the other way round). */
typedef struct {
    const void *data;
    lloco_dtype type;
    int n_dims;
    int64_t rows, cols, n;
} found_tensor;

static int find_tensor(const lloco_model *m, const char *name, found_tensor *f) {
    if (m->gguf) {
        const lloco_gguf_tensor *t = lloco_gguf_find_tensor(m->gguf, name);
        if (!t) return 0;
        *f = (found_tensor){t->data, t->type, t->n_dims, t->ne[1], t->ne[0],
                            t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]};
        return 1;
    }
    const lloco_st_tensor *t = lloco_st_find(m->st, name);
    if (!t || t->type == LLOCO_DTYPE_COUNT) return 0; /* integer buffers are no weights */
    *f = (found_tensor){t->data, t->type, t->n_dims, t->n_dims > 0 ? t->shape[0] : 1,
                        t->n_dims > 1 ? t->shape[1] : 1, 1};
    for (int i = 0; i < t->n_dims; i++) f->n *= t->shape[i];
    return 1;
}

static int model_weight(const lloco_model *m, const char *name, int rows, int cols, int optional,
                        lloco_weight *w) {
    found_tensor t;
    if (!find_tensor(m, name, &t)) {
        if (optional) return 0;
        return lloco_error(LLOCO_ERR_FORMAT, "tensor '%s' missing", name);
    }
    if (t.n_dims != 2 || t.rows != rows || t.cols != cols)
        return lloco_error(LLOCO_ERR_FORMAT, "tensor '%s' has %d dims, %lld x %lld, expected %d x %d",
                           name, t.n_dims, (long long)t.rows, (long long)t.cols, rows, cols);
    w->data = t.data;
    w->type = t.type;
    w->rows = rows;
    w->cols = cols;
    return 0;
}

static int model_vector(lloco_model *m, const char *name, int d, int optional, const float **out) {
    found_tensor t;
    *out = NULL;
    if (!find_tensor(m, name, &t)) {
        if (optional) return 0;
        return lloco_error(LLOCO_ERR_FORMAT, "tensor '%s' missing", name);
    }
    return as_f32_vector(m, name, t.data, t.type, t.n, d, out);
}

static int load_gguf(lloco_model *m, const char *path) {
    int rc = lloco_gguf_open(path, &m->gguf);
    if (rc) return rc;
    const lloco_gguf *g = m->gguf;
    lloco_hparams *hp = &m->hp;
    const char *arch;
    size_t arch_len;
    rc = lloco_gguf_get_str(g, "general.architecture", &arch, &arch_len);
    if (rc) return lloco_error(LLOCO_ERR_FORMAT, "%s: no general.architecture", path);
    if (arch_len >= sizeof hp->arch) arch_len = sizeof hp->arch - 1;
    memcpy(hp->arch, arch, arch_len);
    hp->arch[arch_len] = 0;
    int neox;
    if (!strcmp(hp->arch, "llama") || !strcmp(hp->arch, "mistral")) neox = 0;
    else if (!strcmp(hp->arch, "qwen2")) neox = 1;
    else
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: architecture '%s' is not LLaMA-family",
                           path, hp->arch);
    hp->rope_mode = neox ? LLOCO_ROPE_NEOX : LLOCO_ROPE_NORMAL;
    const char *a = hp->arch;
    if ((rc = gguf_hp_int(g, a, "block_count", 1, &hp->n_layer)) ||
        (rc = gguf_hp_int(g, a, "embedding_length", 1, &hp->d_model)) ||
        (rc = gguf_hp_int(g, a, "feed_forward_length", 1, &hp->d_ff)) ||
        (rc = gguf_hp_int(g, a, "attention.head_count", 1, &hp->n_head)) ||
        (rc = gguf_hp_int(g, a, "context_length", 0, &hp->n_ctx_train)))
        return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = gguf_hp_int(g, a, "attention.head_count_kv", 0, &hp->n_head_kv))) return rc;
    if (hp->n_head <= 0) return lloco_error(LLOCO_ERR_FORMAT, "%s: zero attention heads", path);
    hp->head_dim = hp->d_model / hp->n_head;
    if ((rc = gguf_hp_int(g, a, "attention.key_length", 0, &hp->head_dim)) ||
        (rc = gguf_hp_int(g, a, "rope.dimension_count", 0, &hp->rope_dim)) ||
        (rc = gguf_hp_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps)) ||
        (rc = gguf_hp_f32(g, a, "rope.freq_base", &hp->rope_theta)))
        return rc;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    const char *stype;
    size_t slen;
    if (lloco_gguf_get_str(g, key, &stype, &slen) == 0) {
        if (slen == 6 && !memcmp(stype, "linear", 6)) hp->rope_scaling = LLOCO_ROPE_SCALING_LINEAR;
        else if (!(slen == 4 && !memcmp(stype, "none", 4)))
            return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' not supported",
                               path, (int)slen, stype);
        if ((rc = gguf_hp_f32(g, a, "rope.scaling.factor", &hp->rope_factor))) return rc;
    }
    const lloco_gguf_tensor *te = lloco_gguf_find_tensor(g, "token_embd.weight");
    if (!te || te->n_dims != 2) return lloco_error(LLOCO_ERR_FORMAT, "%s: token_embd.weight missing", path);
    hp->n_vocab = (int)te->ne[1];
    if ((rc = check_hparams(hp, path))) return rc;

    int d = hp->d_model, qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    if ((rc = model_weight(m, "token_embd.weight", hp->n_vocab, d, 0, &m->tok_embd))) return rc;
    if ((rc = model_vector(m, "output_norm.weight", d, 0, &m->out_norm))) return rc;
    if ((rc = model_weight(m, "output.weight", hp->n_vocab, d, 1, &m->output))) return rc;
    hp->tied_embeddings = m->output.data == NULL;
    if (hp->tied_embeddings) m->output = m->tok_embd;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        lloco_layer *L = &m->layers[i];
        char n[96];
#define TN(suffix) (snprintf(n, sizeof n, "blk.%d." suffix, i), n)
        if ((rc = model_vector(m, TN("attn_norm.weight"), d, 0, &L->attn_norm)) ||
            (rc = model_weight(m, TN("attn_q.weight"), qd, d, 0, &L->wq)) ||
            (rc = model_weight(m, TN("attn_k.weight"), kvd, d, 0, &L->wk)) ||
            (rc = model_weight(m, TN("attn_v.weight"), kvd, d, 0, &L->wv)) ||
            (rc = model_weight(m, TN("attn_output.weight"), d, qd, 0, &L->wo)) ||
            (rc = model_vector(m, TN("attn_q.bias"), qd, 1, &L->bq)) ||
            (rc = model_vector(m, TN("attn_k.bias"), kvd, 1, &L->bk)) ||
            (rc = model_vector(m, TN("attn_v.bias"), kvd, 1, &L->bv)) ||
            (rc = model_vector(m, TN("ffn_norm.weight"), d, 0, &L->ffn_norm)) ||
            (rc = model_weight(m, TN("ffn_gate.weight"), hp->d_ff, d, 0, &L->w_gate)) ||
            (rc = model_weight(m, TN("ffn_up.weight"), hp->d_ff, d, 0, &L->w_up)) ||
            (rc = model_weight(m, TN("ffn_down.weight"), d, hp->d_ff, 0, &L->w_down)))
            return rc;
#undef TN
    }
    const float *freq_factors = NULL;
    if ((rc = model_vector(m, "rope_freqs.weight", hp->rope_dim / 2, 1, &freq_factors))) return rc;
    if ((rc = compute_rope_params(m, freq_factors))) return rc;

    if ((rc = lloco_tokenizer_load_gguf(g, &m->tok))) return rc;
    const char *tmpl;
    size_t tlen;
    if (lloco_gguf_get_str(g, "tokenizer.chat_template", &tmpl, &tlen) == 0) {
        m->chat_template = strndup(tmpl, tlen);
        if (!m->chat_template) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    return 0;
}

/* ---- safetensors + config.json ------------------------------------------ */

static int json_int(const cJSON *cfg, const char *key, int required, int *out, const char *src) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return lloco_error(LLOCO_ERR_FORMAT, "%s: '%s' missing", src, key);
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > INT_MAX ||
        v->valuedouble != floor(v->valuedouble))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: '%s' is not a non-negative integer", src, key);
    *out = (int)v->valuedouble;
    return 0;
}

static int json_float(const cJSON *cfg, const char *key, float *out, const char *src) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v)) return lloco_error(LLOCO_ERR_FORMAT, "%s: '%s' is not a number", src, key);
    *out = (float)v->valuedouble;
    return 0;
}

static int parse_config(lloco_hparams *hp, const char *path) {
    char *text;
    int rc = lloco_file_read(path, 1 << 20, &text, NULL);
    if (rc) return rc;
    cJSON *cfg = cJSON_Parse(text);
    free(text);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: not a JSON object", path);
    }
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : "llama";
    if (strcmp(type, "llama") && strcmp(type, "mistral") && strcmp(type, "qwen2")) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: model_type '%s' is not LLaMA-family", path, type);
        goto done;
    }
    snprintf(hp->arch, sizeof hp->arch, "%s", type);
    hp->rope_mode = LLOCO_ROPE_NEOX; /* HF checkpoints rotate halves */
    if ((rc = json_int(cfg, "num_hidden_layers", 1, &hp->n_layer, path)) ||
        (rc = json_int(cfg, "hidden_size", 1, &hp->d_model, path)) ||
        (rc = json_int(cfg, "intermediate_size", 1, &hp->d_ff, path)) ||
        (rc = json_int(cfg, "num_attention_heads", 1, &hp->n_head, path)) ||
        (rc = json_int(cfg, "vocab_size", 1, &hp->n_vocab, path)) ||
        (rc = json_int(cfg, "max_position_embeddings", 0, &hp->n_ctx_train, path)))
        goto done;
    hp->n_head_kv = hp->n_head;
    if ((rc = json_int(cfg, "num_key_value_heads", 0, &hp->n_head_kv, path))) goto done;
    hp->head_dim = hp->n_head ? hp->d_model / hp->n_head : 0;
    if ((rc = json_int(cfg, "head_dim", 0, &hp->head_dim, path)) ||
        (rc = json_float(cfg, "rms_norm_eps", &hp->rms_eps, path)) ||
        (rc = json_float(cfg, "rope_theta", &hp->rope_theta, path)))
        goto done;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(cfg, "tie_word_embeddings");
    hp->tied_embeddings = cJSON_IsTrue(tie);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(cfg, "rope_scaling");
    if (cJSON_IsObject(rs)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!cJSON_IsString(t)) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
        const char *st = cJSON_IsString(t) ? t->valuestring : "";
        if (!strcmp(st, "linear")) hp->rope_scaling = LLOCO_ROPE_SCALING_LINEAR;
        else if (!strcmp(st, "llama3")) hp->rope_scaling = LLOCO_ROPE_SCALING_LLAMA3;
        else if (strcmp(st, "default")) {
            rc = lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: rope_scaling type '%s' not supported", path, st);
            goto done;
        }
        if ((rc = json_float(rs, "factor", &hp->rope_factor, path)) ||
            (rc = json_float(rs, "low_freq_factor", &hp->rope_low_freq_factor, path)) ||
            (rc = json_float(rs, "high_freq_factor", &hp->rope_high_freq_factor, path)) ||
            (rc = json_int(rs, "original_max_position_embeddings", 0, &hp->rope_orig_ctx, path)))
            goto done;
        if (hp->rope_scaling == LLOCO_ROPE_SCALING_LLAMA3 &&
            (hp->rope_factor <= 0 || hp->rope_orig_ctx <= 0 ||
             !(hp->rope_high_freq_factor > hp->rope_low_freq_factor))) {
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: incomplete llama3 rope_scaling", path);
            goto done;
        }
    }
    rc = check_hparams(hp, path);
done:
    cJSON_Delete(cfg);
    return rc;
}

static int load_safetensors(lloco_model *m, const char *path) {
    char dir[4096];
    if (is_dir(path)) {
        snprintf(dir, sizeof dir, "%s", path);
    } else {
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    char cfg_path[4200];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    lloco_hparams *hp = &m->hp;
    int rc = parse_config(hp, cfg_path);
    if (rc) return rc;
    if ((rc = lloco_st_open(path, &m->st))) return rc;
    int d = hp->d_model, qd = hp->n_head * hp->head_dim, kvd = hp->n_head_kv * hp->head_dim;
    if ((rc = model_weight(m, "model.embed_tokens.weight", hp->n_vocab, d, 0, &m->tok_embd)) ||
        (rc = model_vector(m, "model.norm.weight", d, 0, &m->out_norm)) ||
        (rc = model_weight(m, "lm_head.weight", hp->n_vocab, d, hp->tied_embeddings, &m->output)))
        return rc;
    if (!m->output.data) {
        hp->tied_embeddings = 1;
        m->output = m->tok_embd;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (int i = 0; i < hp->n_layer; i++) {
        lloco_layer *L = &m->layers[i];
        char n[128];
#define TN(suffix) (snprintf(n, sizeof n, "model.layers.%d." suffix, i), n)
        if ((rc = model_vector(m, TN("input_layernorm.weight"), d, 0, &L->attn_norm)) ||
            (rc = model_weight(m, TN("self_attn.q_proj.weight"), qd, d, 0, &L->wq)) ||
            (rc = model_weight(m, TN("self_attn.k_proj.weight"), kvd, d, 0, &L->wk)) ||
            (rc = model_weight(m, TN("self_attn.v_proj.weight"), kvd, d, 0, &L->wv)) ||
            (rc = model_weight(m, TN("self_attn.o_proj.weight"), d, qd, 0, &L->wo)) ||
            (rc = model_vector(m, TN("self_attn.q_proj.bias"), qd, 1, &L->bq)) ||
            (rc = model_vector(m, TN("self_attn.k_proj.bias"), kvd, 1, &L->bk)) ||
            (rc = model_vector(m, TN("self_attn.v_proj.bias"), kvd, 1, &L->bv)) ||
            (rc = model_vector(m, TN("post_attention_layernorm.weight"), d, 0, &L->ffn_norm)) ||
            (rc = model_weight(m, TN("mlp.gate_proj.weight"), hp->d_ff, d, 0, &L->w_gate)) ||
            (rc = model_weight(m, TN("mlp.up_proj.weight"), hp->d_ff, d, 0, &L->w_up)) ||
            (rc = model_weight(m, TN("mlp.down_proj.weight"), d, hp->d_ff, 0, &L->w_down)))
            return rc;
#undef TN
    }
    if ((rc = compute_rope_params(m, NULL))) return rc;
    char tok_path[4200];
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir);
    if ((rc = lloco_tokenizer_load_json(tok_path, &m->tok))) return rc;
    if (lloco_tokenizer_n_vocab(m->tok) > hp->n_vocab)
        return lloco_error(LLOCO_ERR_MISMATCH, "%s: tokenizer has %d tokens, model only %d", dir,
                           lloco_tokenizer_n_vocab(m->tok), hp->n_vocab);
    return 0;
}

/* ---- public --------------------------------------------------------------- */

int lloco_model_open(const char *path, lloco_model **out) {
    *out = NULL;
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return lloco_error(LLOCO_ERR_NOTFOUND,
                           "model '%s' not found (the default model is fetched by ./scripts/setup.sh)",
                           path ? path : "(null)");
    lloco_model *m = calloc(1, sizeof *m);
    if (!m) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int rc;
    if (!S_ISDIR(st.st_mode) && ends_with(path, ".gguf")) {
        m->format = LLOCO_MODEL_FORMAT_GGUF;
        rc = load_gguf(m, path);
    } else {
        m->format = LLOCO_MODEL_FORMAT_SAFETENSORS;
        rc = load_safetensors(m, path);
    }
    if (rc) {
        /* Keep the loader's detail but make sure it names the model. */
        char detail[900];
        snprintf(detail, sizeof detail, "%s", lloco_last_error());
        lloco_model_close(m);
        if (strstr(detail, path)) return lloco_error(rc, "%s", detail);
        return lloco_error(rc, "%s: %s", path, detail);
    }
    *out = m;
    return 0;
}

void lloco_model_close(lloco_model *m) {
    if (!m) return;
    lloco_tokenizer_free(m->tok);
    if (m->gguf) lloco_gguf_close(m->gguf);
    if (m->st) lloco_st_close(m->st);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->chat_template);
    free(m);
}

const lloco_hparams *lloco_model_hparams(const lloco_model *m) { return &m->hp; }
const lloco_tokenizer *lloco_model_tokenizer(const lloco_model *m) { return m->tok; }
lloco_model_format lloco_model_format_of(const lloco_model *m) { return m->format; }
const char *lloco_model_chat_template(const lloco_model *m) { return m->chat_template; }

static size_t weight_bytes(const lloco_weight *w) {
    return w->data ? lloco_dtype_row_bytes(w->type, w->cols) * (size_t)w->rows : 0;
}

size_t lloco_model_weight_bytes(const lloco_model *m) {
    /* Decoding one token reads one embedding row, every layer, the head. */
    size_t total = weight_bytes(&m->output) + lloco_dtype_row_bytes(m->tok_embd.type, m->tok_embd.cols);
    for (int i = 0; i < m->hp.n_layer; i++) {
        const lloco_layer *L = &m->layers[i];
        total += weight_bytes(&L->wq) + weight_bytes(&L->wk) + weight_bytes(&L->wv) +
                 weight_bytes(&L->wo) + weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) +
                 weight_bytes(&L->w_down) + 2 * sizeof(float) * (size_t)m->hp.d_model;
    }
    return total;
}

int lloco_model_tensor_f32(const lloco_model *m, const char *name, int64_t *rows, int64_t *cols,
                           float **out) {
    found_tensor t;
    *out = NULL;
    if (!find_tensor(m, name, &t))
        return lloco_error(LLOCO_ERR_NOTFOUND, "tensor '%s' not in the model", name);
    int64_t c = t.n_dims <= 1 ? t.n : t.cols, r = t.n / (c ? c : 1);
    size_t bytes;
    if (c <= 0 || lloco_size_mul((size_t)t.n, sizeof(float), &bytes))
        return lloco_error(LLOCO_ERR_FORMAT, "tensor '%s' has no usable shape", name);
    float *buf = malloc(bytes);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "out of memory for tensor '%s'", name);
    size_t rb = lloco_dtype_row_bytes(t.type, c);
    for (int64_t i = 0; i < r; i++) {
        int rc = lloco_dequantize_row(t.type, (const uint8_t *)t.data + rb * (size_t)i, buf + c * i, c);
        if (rc) {
            free(buf);
            return lloco_error(rc, "tensor '%s': %s", name, lloco_last_error());
        }
    }
    *rows = r;
    *cols = c;
    *out = buf;
    return 0;
}

static void hash_tensor(XXH3_state_t *h, const char *name, lloco_dtype type, int n_dims,
                        const int64_t *dims, const void *data, size_t nbytes) {
    int32_t head[2] = {(int32_t)type, n_dims};
    XXH3_128bits_update(h, name, strlen(name) + 1);
    XXH3_128bits_update(h, head, sizeof head);
    XXH3_128bits_update(h, dims, sizeof(int64_t) * (size_t)n_dims);
    XXH3_128bits_update(h, data, nbytes);
}

int lloco_model_hash(const lloco_model *m, char out[33]) {
    XXH3_state_t *h = XXH3_createState();
    if (!h) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    XXH3_128bits_reset(h);
    XXH3_128bits_update(h, &m->hp, sizeof m->hp);
    for (int32_t i = 0; i < m->hp.n_vocab; i++) {
        const char *tt = lloco_tokenizer_token_text(m->tok, i);
        if (tt) XXH3_128bits_update(h, tt, strlen(tt) + 1);
    }
    if (m->gguf) {
        for (int64_t i = 0; i < lloco_gguf_n_tensors(m->gguf); i++) {
            const lloco_gguf_tensor *t = lloco_gguf_tensor_at(m->gguf, i);
            hash_tensor(h, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
        }
    } else {
        for (int64_t i = 0; i < lloco_st_n_tensors(m->st); i++) {
            const lloco_st_tensor *t = lloco_st_tensor_at(m->st, i);
            hash_tensor(h, t->name, t->type, t->n_dims, t->shape, t->data, t->nbytes);
        }
    }
    XXH128_hash_t d = XXH3_128bits_digest(h);
    XXH3_freeState(h);
    snprintf(out, 33, "%016llx%016llx", (unsigned long long)d.high64, (unsigned long long)d.low64);
    return 0;
}

int lloco_model_embed_token(const lloco_model *m, int32_t id, float *out) {
    if (id < 0 || id >= m->hp.n_vocab)
        return lloco_error(LLOCO_ERR_RANGE, "token id %d out of range [0, %d)", id, m->hp.n_vocab);
    size_t rb = lloco_dtype_row_bytes(m->tok_embd.type, m->tok_embd.cols);
    return lloco_dequantize_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + rb * (size_t)id,
                                out, m->tok_embd.cols);
}
