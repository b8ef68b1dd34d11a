/* peft: a PEFT LoRA directory. adapter_config.json says which (layer,
 * projection) pairs the adapter must hold and how to scale them, matching
 * module names as PEFT does; every tensor of adapter_model.safetensors must
 * be one of those pairs (lora.c then checks them against the base model).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "lora_internal.h"

/* ---- regular expressions (PEFT matches module names with Python's re) --- */

/* 1 if pattern matches s, 0 if not, negative on a bad pattern. fullmatch:
 * the whole of s (Python's re.fullmatch); otherwise PEFT's get_pattern_key
 * form re.match(r"(.*\.)?(key)$"). */
static int regex_match(const lora_ctx *c, const char *pattern, const char *s, int fullmatch,
                       const char *field) {
    size_t len = strlen(pattern) + 16;
    char *p = malloc(len);
    if (!p) return lora_fail(c, LLOCO_ERR_NOMEM, "out of memory");
    snprintf(p, len, fullmatch ? "(?:%s)" : "(.*\\.)?(%s)$", pattern);
    int err;
    PCRE2_SIZE off;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)p, PCRE2_ZERO_TERMINATED,
                      PCRE2_ANCHORED | (fullmatch ? PCRE2_ENDANCHORED : 0), &err, &off, NULL);
    free(p);
    if (!re) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(err, msg, sizeof msg);
        return lora_fail(c, LLOCO_ERR_FORMAT, "adapter_config.json: %s pattern '%s': %s", field,
                         pattern, (const char *)msg);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = md ? pcre2_match(re, (PCRE2_SPTR)s, strlen(s), 0, 0, md, NULL) : PCRE2_ERROR_NOMEMORY;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    if (rc == PCRE2_ERROR_NOMEMORY) return lora_fail(c, LLOCO_ERR_NOMEM, "out of memory");
    return rc >= 0;
}

/* ---- config --------------------------------------------------------------- */

typedef struct {
    int r;
    float alpha;
    int rslora;
    const cJSON *targets;                      /* array of strings, or a string (regex) */
    const cJSON *exclude;                      /* same, or NULL */
    const cJSON *layers;                       /* layers_to_transform: number, array, or NULL */
    const cJSON *rank_pattern, *alpha_pattern; /* objects or NULL */
    const char *base_model;
} config;

static int is_unset(const cJSON *v) {
    return !v || cJSON_IsNull(v) || cJSON_IsFalse(v) ||
           ((cJSON_IsArray(v) || cJSON_IsObject(v)) && !v->child) ||
           (cJSON_IsString(v) && !v->valuestring[0]);
}

/* Config keys that change what the adapter computes beyond W + s·B·A: each
 * must be absent, null, false or empty. */
static const struct {
    const char *key, *why;
} refused[] = {
    {"modules_to_save", "it replaces whole modules of the base model (e.g. lm_head), which lloco "
                        "does not load from adapters"},
    {"use_dora", "DoRA rescales the merged weight's columns"},
    {"lora_bias", "LoRA biases are not applied"},
    {"layer_replication", "it duplicates base layers"},
    {"trainable_token_indices", "it trains embedding rows"},
    {"target_parameters", "it adapts raw parameters (MoE experts), not projections"},
    {"alora_invocation_tokens", "activated LoRA switches on mid-sequence"},
    {"use_qalora", "QALoRA pools its input"},
};

static int parse_config(const lora_ctx *c, const cJSON *j, config *cf) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "peft_type");
    if (cJSON_IsString(t) && strcmp(t->valuestring, "LORA") != 0)
        return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "peft_type '%s' is not LORA", t->valuestring);
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(refused); i++)
        if (!is_unset(cJSON_GetObjectItemCaseSensitive(j, refused[i].key)))
            return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "adapter_config.json sets %s: %s",
                             refused[i].key, refused[i].why);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(j, "bias");
    if (cJSON_IsString(bias) && strcmp(bias->valuestring, "none") != 0)
        return lora_fail(c, LLOCO_ERR_UNSUPPORTED,
                         "bias '%s': trained biases of the base model are not applied",
                         bias->valuestring);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 65536 ||
        r->valuedouble != floor(r->valuedouble))
        return lora_fail(c, LLOCO_ERR_FORMAT,
                         "adapter_config.json: 'r' missing or not a positive integer");
    cf->r = (int)r->valuedouble;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble))
        return lora_fail(c, LLOCO_ERR_FORMAT,
                         "adapter_config.json: 'lora_alpha' missing or not a number");
    cf->alpha = (float)a->valuedouble;
    cf->rslora = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora"));
    cf->targets = cJSON_GetObjectItemCaseSensitive(j, "target_modules");
    if (!cJSON_IsString(cf->targets) && !cJSON_IsArray(cf->targets))
        return lora_fail(
            c, LLOCO_ERR_FORMAT,
            "adapter_config.json: 'target_modules' missing or neither a list nor a string");
    cf->exclude = cJSON_GetObjectItemCaseSensitive(j, "exclude_modules");
    if (cJSON_IsNull(cf->exclude)) cf->exclude = NULL;
    if (cf->exclude && !cJSON_IsString(cf->exclude) && !cJSON_IsArray(cf->exclude))
        return lora_fail(c, LLOCO_ERR_FORMAT,
                         "adapter_config.json: 'exclude_modules' is neither a list nor a string");
    cf->layers = cJSON_GetObjectItemCaseSensitive(j, "layers_to_transform");
    if (is_unset(cf->layers)) cf->layers = NULL;
    cf->rank_pattern = cJSON_GetObjectItemCaseSensitive(j, "rank_pattern");
    cf->alpha_pattern = cJSON_GetObjectItemCaseSensitive(j, "alpha_pattern");
    const cJSON *lists[] = {cf->targets, cf->exclude};
    for (int i = 0; i < 2; i++) {
        const cJSON *e;
        if (!cJSON_IsArray(lists[i])) continue;
        cJSON_ArrayForEach(e, lists[i]) {
            if (!cJSON_IsString(e))
                return lora_fail(c, LLOCO_ERR_FORMAT, "adapter_config.json: %s holds a non-string",
                                 i ? "exclude_modules" : "target_modules");
        }
    }
    const cJSON *pats[] = {cf->rank_pattern, cf->alpha_pattern};
    for (int i = 0; i < 2; i++) {
        const cJSON *e;
        if (!pats[i] || cJSON_IsNull(pats[i])) continue;
        if (!cJSON_IsObject(pats[i]))
            return lora_fail(c, LLOCO_ERR_FORMAT, "adapter_config.json: %s is not an object",
                             i ? "alpha_pattern" : "rank_pattern");
        cJSON_ArrayForEach(e, pats[i]) {
            const int ok = cJSON_IsNumber(e) && e->valuedouble > 0 &&
                           (i || e->valuedouble == floor(e->valuedouble));
            if (!ok)
                return lora_fail(
                    c, LLOCO_ERR_FORMAT, "adapter_config.json: %s['%s'] is not a positive %s",
                    i ? "alpha_pattern" : "rank_pattern", e->string, i ? "number" : "integer");
        }
    }
    const cJSON *bm = cJSON_GetObjectItemCaseSensitive(j, "base_model_name_or_path");
    cf->base_model = cJSON_IsString(bm) ? bm->valuestring : "";
    return 0;
}

/* PEFT's module name of projection p in layer l of a LlamaForCausalLM. */
static void module_key(int l, int p, char *out, size_t cap) {
    snprintf(out, cap, "model.layers.%d.%s.%s", l, p <= LLOCO_PROJ_O ? "self_attn" : "mlp",
             lloco_proj_name((lloco_proj)p));
}

/* PEFT's list match: the key itself or a suffix after a dot. */
static int list_match(const char *item, const char *key) {
    size_t n = strlen(item), k = strlen(key);
    return !strcmp(item, key) || (k > n && key[k - n - 1] == '.' && !strcmp(key + k - n, item));
}

/* 1 if `spec` (a list or a regex string, as target_modules and
 * exclude_modules are) selects key; negative on error. */
static int spec_match(const lora_ctx *c, const cJSON *spec, const char *key, const char *field) {
    if (cJSON_IsString(spec)) {
        /* PEFT expands this shorthand when it creates the adapter; a config
         * that kept it means every linear layer but the output head. */
        if (!strcmp(field, "target_modules") && !strcasecmp(spec->valuestring, "all-linear"))
            return 1;
        return regex_match(c, spec->valuestring, key, 1, field);
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, spec) {
        if (list_match(e->valuestring, key)) return 1;
    }
    return 0;
}

static int layer_selected(const config *cf, int l) {
    if (!cf->layers) return 1;
    if (cJSON_IsNumber(cf->layers)) return (int)cf->layers->valuedouble == l;
    const cJSON *e;
    cJSON_ArrayForEach(e, cf->layers) {
        if (cJSON_IsNumber(e) && (int)e->valuedouble == l) return 1;
    }
    return 0;
}

/* 1 if the config makes PEFT put a LoRA on projection p of layer l. */
static int targeted(const lora_ctx *c, const config *cf, int l, int p) {
    char key[96];
    module_key(l, p, key, sizeof key);
    if (cf->exclude) {
        int ex = spec_match(c, cf->exclude, key, "exclude_modules");
        if (ex) return ex < 0 ? ex : 0;
    }
    int t = spec_match(c, cf->targets, key, "target_modules");
    if (t <= 0) return t;
    /* layers_to_transform narrows list targets only (check_target_module_exists) */
    return cJSON_IsArray(cf->targets) ? layer_selected(cf, l) : 1;
}

/* Rank and alpha of projection p of layer l: the first rank_pattern /
 * alpha_pattern key that matches its module name, else r / lora_alpha. */
static int pair_params(const lora_ctx *c, const config *cf, int l, int p, int *rank, float *alpha) {
    char key[96];
    module_key(l, p, key, sizeof key);
    *rank = cf->r;
    *alpha = cf->alpha;
    const cJSON *pats[] = {cf->rank_pattern, cf->alpha_pattern};
    for (int i = 0; i < 2; i++) {
        const cJSON *e;
        if (!cJSON_IsObject(pats[i])) continue;
        cJSON_ArrayForEach(e, pats[i]) {
            int m = regex_match(c, e->string, key, 0, i ? "alpha_pattern" : "rank_pattern");
            if (m < 0) return m;
            if (!m) continue;
            if (i)
                *alpha = (float)e->valuedouble;
            else
                *rank = (int)e->valuedouble;
            break;
        }
    }
    return 0;
}

/* A list entry of target_modules that names none of the projections would
 * put a LoRA on a module lloco does not adapt (or, for PEFT, nowhere). */
static int check_list_targets(const lora_ctx *c, const config *cf, int n_layer) {
    if (!cJSON_IsArray(cf->targets)) return 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cf->targets) {
        int hit = 0;
        char key[96];
        for (int i = 0; i < n_layer * LLOCO_PROJ_COUNT && !hit; i++) {
            module_key(i / LLOCO_PROJ_COUNT, i % LLOCO_PROJ_COUNT, key, sizeof key);
            hit = list_match(e->valuestring, key);
        }
        if (!hit)
            return lora_fail(c, LLOCO_ERR_UNSUPPORTED,
                             "target module '%s' is not one of the projections lloco adapts "
                             "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)",
                             e->valuestring);
    }
    return 0;
}

/* ---- tensors ---------------------------------------------------------------- */

/* Parses a PEFT tensor name into layer, projection and A (0) or B (1).
 * The module path may lack the inner "model." (an adapter trained on the
 * bare LlamaModel). Returns 0 if the name is not a LoRA projection tensor. */
static int parse_name(const char *name, int *layer, int *proj, int *is_b) {
    static const char prefix[] = "base_model.model.";
    if (strncmp(name, prefix, sizeof prefix - 1)) return 0;
    const char *s = name + sizeof prefix - 1;
    if (!strncmp(s, "model.", 6)) s += 6;
    if (strncmp(s, "layers.", 7)) return 0;
    s += 7;
    char *end;
    long l = strtol(s, &end, 10);
    if (end == s || *end != '.' || l < 0 || l > 1000000) return 0;
    s = end + 1;
    for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
        char want[64];
        snprintf(want, sizeof want, "%s.%s.", p <= LLOCO_PROJ_O ? "self_attn" : "mlp",
                 lloco_proj_name((lloco_proj)p));
        size_t n = strlen(want);
        if (strncmp(s, want, n)) continue;
        if (!strcmp(s + n, "lora_A.weight"))
            *is_b = 0;
        else if (!strcmp(s + n, "lora_B.weight"))
            *is_b = 1;
        else
            return 0;
        *layer = (int)l;
        *proj = p;
        return 1;
    }
    return 0;
}

/* Why a tensor that is not a LoRA pair of a projection is in the file. */
static const char *unexpected_why(const char *name) {
    if (strstr(name, "lora_magnitude_vector")) return "a DoRA magnitude (DoRA is not supported)";
    if (strstr(name, "lora_embedding")) return "an embedding LoRA (not supported)";
    if (strstr(name, "lora_A") || strstr(name, "lora_B"))
        return strstr(name, ".bias") ? "a LoRA bias (not supported)"
                                     : "a LoRA on a module other than the seven projections";
    return "not a LoRA matrix (modules_to_save or another method's weights?)";
}

/* The pairs the config asks for, with their rank and scale. */
static int expected_pairs(const lora_ctx *c, const config *cf, int nl, lora_pair *ps) {
    int rc = check_list_targets(c, cf, nl);
    for (int i = 0; i < nl * LLOCO_PROJ_COUNT && !rc; i++) {
        const int l = i / LLOCO_PROJ_COUNT, p = i % LLOCO_PROJ_COUNT;
        const int t = targeted(c, cf, l, p);
        if (t < 0) return t;
        if (!t) continue;
        float alpha;
        if ((rc = pair_params(c, cf, l, p, &ps[i].rank, &alpha))) break;
        ps[i].scale = cf->rslora ? alpha / sqrtf((float)ps[i].rank) : alpha / (float)ps[i].rank;
        ps[i].expected = 1;
    }
    return rc;
}

/* Every tensor of the file is half of an expected pair; every expected
 * pair is complete. */
static int find_pairs(const lora_ctx *c, const lloco_st *st, int nl, lora_pair *ps) {
    for (int64_t ti = 0; ti < lloco_st_n_tensors(st); ti++) {
        const lloco_st_tensor *t = lloco_st_tensor_at(st, ti);
        int l, p, is_b;
        if (!parse_name(t->name, &l, &p, &is_b))
            return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "unexpected tensor '%s': %s", t->name,
                             unexpected_why(t->name));
        if (l >= nl)
            return lora_fail(c, LLOCO_ERR_MISMATCH,
                             "tensor '%s' is for layer %d, the base model has %d layers", t->name,
                             l, nl);
        if (t->type != LLOCO_DTYPE_F32 && t->type != LLOCO_DTYPE_F16 && t->type != LLOCO_DTYPE_BF16)
            return lora_fail(c, LLOCO_ERR_UNSUPPORTED, "tensor '%s' is not F32, F16 or BF16",
                             t->name);
        lora_pair *x = &ps[l * LLOCO_PROJ_COUNT + p];
        if (!x->expected)
            return lora_fail(c, LLOCO_ERR_FORMAT,
                             "tensor '%s' is for a module adapter_config.json does not target",
                             t->name);
        *(is_b ? &x->b : &x->a) =
            (lora_src){t->data, t->type, t->n_dims, t->shape[0], t->n_dims > 1 ? t->shape[1] : 1};
    }
    for (int i = 0; i < nl * LLOCO_PROJ_COUNT; i++) {
        if (!ps[i].expected || (ps[i].a.data && ps[i].b.data)) continue;
        char key[96];
        module_key(i / LLOCO_PROJ_COUNT, i % LLOCO_PROJ_COUNT, key, sizeof key);
        return lora_fail(c, LLOCO_ERR_FORMAT, "missing tensor 'base_model.model.%s.lora_%c.weight'",
                         key, ps[i].a.data ? 'B' : 'A');
    }
    return 0;
}

int lora_open_peft(const lora_ctx *c, const lloco_model *base, lloco_lora **out) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", c->path);
    if (!lloco_is_file(path)) return lora_fail(c, LLOCO_ERR_NOTFOUND, "no adapter_config.json");
    char *text;
    int rc = lloco_file_read(path, 1 << 20, &text, NULL);
    if (rc) return lora_fail(c, rc, "adapter_config.json: %s", lloco_last_error());
    cJSON *json = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        return lora_fail(c, LLOCO_ERR_FORMAT, "adapter_config.json is not a JSON object");
    }
    config cf = {0};
    lloco_st *st = NULL;
    lora_pair *ps = NULL;
    const int nl = lloco_model_hparams(base)->n_layer;
    if ((rc = parse_config(c, json, &cf))) goto done;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", c->path);
    if (!lloco_is_file(path)) {
        snprintf(path, sizeof path, "%s/adapter_model.bin", c->path);
        rc = lloco_is_file(path)
                 ? lora_fail(c, LLOCO_ERR_UNSUPPORTED,
                             "adapter_model.bin is a pickled PyTorch file, which lloco does "
                             "not read; save the adapter with safe_serialization=True")
                 : lora_fail(c, LLOCO_ERR_NOTFOUND, "no adapter_model.safetensors");
        goto done;
    }
    if ((rc = lloco_st_open(path, &st))) {
        rc = lora_fail(c, rc, "%s", lloco_last_error());
        goto done;
    }
    ps = calloc((size_t)nl * LLOCO_PROJ_COUNT, sizeof *ps);
    if (!ps) {
        rc = lora_fail(c, LLOCO_ERR_NOMEM, "out of memory");
        goto done;
    }
    const lora_meta meta = {.base_model = cf.base_model,
                            .r = cf.r,
                            .alpha = cf.alpha,
                            .use_rslora = cf.rslora,
                            .rank_from = "adapter_config.json"};
    if (!(rc = expected_pairs(c, &cf, nl, ps)) && !(rc = find_pairs(c, st, nl, ps)))
        rc = lora_build(c, base, ps, &meta, out);
done:
    free(ps);
    lloco_st_close(st);
    cJSON_Delete(json);
    return rc;
}
