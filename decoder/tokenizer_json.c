/* Tokenizer loader for HF tokenizer.json files (BPE model, byte-level or
 * SentencePiece-style with byte fallback), with bos/eos/add_bos from a
 * tokenizer_config.json beside it. Unsupported components are refused with
 * an error naming them rather than silently tokenizing differently.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "decoder/tokenizer_internal.h"

#define MAX_JSON_BYTES ((size_t)1 << 30)

/* GPT-2's split regex as tokenizers' ByteLevel pre-tokenizer uses it. */
static const char re_bytelevel[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

typedef struct {
    const char *path;
    lloco_tokenizer *t;
    int decode_bytes; /* a ByteLevel pre-tokenizer or decoder was seen */
} ctx;

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Booleans default to dflt when absent or null. */
static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int add_step(lloco_text_step **steps, int *n, lloco_text_step **out) {
    lloco_text_step *s = realloc(*steps, (size_t)(*n + 1) * sizeof *s);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    *steps = s;
    *out = &s[(*n)++];
    memset(*out, 0, sizeof **out);
    return 0;
}

static int set_str(lloco_text_step *st, const char *s) {
    st->str = strdup(s);
    if (!st->str) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    st->str_len = strlen(s);
    return 0;
}

/* {"String": "..."} or {"Regex": "..."} */
static int compile_pattern(const ctx *c, const cJSON *pat, const char *where, void **re) {
    const char *s = jstr(pat, "String");
    int literal = s != NULL;
    if (!s) s = jstr(pat, "Regex");
    if (!s)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s without a String or Regex pattern", c->path,
                           where);
    int rc = lloco_tok_compile_regex(s, strlen(s), literal, re);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", lloco_last_error());
        return lloco_error(rc, "%s: %s: %s", c->path, where, why);
    }
    return 0;
}

static int add_split(lloco_text_step **steps, int *n, const char *re_src, int literal,
                     lloco_split_behavior behavior, int invert) {
    lloco_text_step *st;
    int rc = add_step(steps, n, &st);
    if (rc) return rc;
    st->kind = LLOCO_PRE_SPLIT;
    st->behavior = behavior;
    st->invert = invert;
    return lloco_tok_compile_regex(re_src, strlen(re_src), literal, &st->re);
}

static int parse_normalizer(ctx *c, const cJSON *nz) {
    if (!nz || cJSON_IsNull(nz)) return 0;
    lloco_tokenizer *t = c->t;
    const char *type = jstr(nz, "type");
    if (!type) return lloco_error(LLOCO_ERR_FORMAT, "%s: normalizer without a type", c->path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(nz, "normalizers");
        if (!cJSON_IsArray(list))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: Sequence normalizer without normalizers",
                               c->path);
        const cJSON *e;
        cJSON_ArrayForEach(e, list) {
            int rc = parse_normalizer(c, e);
            if (rc) return rc;
        }
        return 0;
    }
    static const char *const unicode[] = {"NFC", "NFD", "NFKC", "NFKD"};
    static const lloco_norm_kind unicode_kind[] = {LLOCO_NORM_NFC, LLOCO_NORM_NFD,
                                                   LLOCO_NORM_NFKC, LLOCO_NORM_NFKD};
    lloco_text_step *st;
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(unicode); i++) {
        if (strcmp(type, unicode[i]) != 0) continue;
        int rc = add_step(&t->norm, &t->n_norm, &st);
        if (!rc) st->kind = unicode_kind[i];
        return rc;
    }
    if (strcmp(type, "Prepend") == 0) {
        const char *s = jstr(nz, "prepend");
        if (!s) return lloco_error(LLOCO_ERR_FORMAT, "%s: Prepend without prepend", c->path);
        int rc = add_step(&t->norm, &t->n_norm, &st);
        if (rc) return rc;
        st->kind = LLOCO_NORM_PREPEND;
        return set_str(st, s);
    }
    if (strcmp(type, "Replace") == 0) {
        const char *s = jstr(nz, "content");
        if (!s) return lloco_error(LLOCO_ERR_FORMAT, "%s: Replace without content", c->path);
        int rc = add_step(&t->norm, &t->n_norm, &st);
        if (rc) return rc;
        st->kind = LLOCO_NORM_REPLACE;
        if ((rc = set_str(st, s))) return rc;
        return compile_pattern(c, cJSON_GetObjectItemCaseSensitive(nz, "pattern"),
                               "Replace normalizer", &st->re);
    }
    return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: normalizer '%s' not supported", c->path, type);
}

static void name_append(lloco_tokenizer *t, const char *s) {
    size_t n = strlen(t->pre_name);
    snprintf(t->pre_name + n, sizeof t->pre_name - n, "%s", s);
}

static int parse_pre(ctx *c, const cJSON *pt) {
    lloco_tokenizer *t = c->t;
    const char *type = jstr(pt, "type");
    if (!type) return lloco_error(LLOCO_ERR_FORMAT, "%s: pre_tokenizer without a type", c->path);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
        if (!cJSON_IsArray(list))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: Sequence pre_tokenizer without pretokenizers",
                               c->path);
        name_append(t, "Sequence[");
        const cJSON *e;
        int first = 1;
        cJSON_ArrayForEach(e, list) {
            if (!first) name_append(t, ",");
            first = 0;
            int rc = parse_pre(c, e);
            if (rc) return rc;
        }
        name_append(t, "]");
        return 0;
    }
    name_append(t, type);
    lloco_text_step *st;
    int rc;
    if (strcmp(type, "ByteLevel") == 0) {
        c->decode_bytes = 1;
        if (jbool(pt, "add_prefix_space", 1)) {
            if ((rc = add_step(&t->pre, &t->n_pre, &st))) return rc;
            st->kind = LLOCO_PRE_PREFIX_SPACE;
        }
        if (!jbool(pt, "use_regex", 1)) return 0;
        return add_split(&t->pre, &t->n_pre, re_bytelevel, 0, LLOCO_SPLIT_ISOLATED, 0);
    }
    if (strcmp(type, "Digits") == 0)
        return add_split(&t->pre, &t->n_pre,
                         jbool(pt, "individual_digits", 0) ? "\\p{N}" : "\\p{N}+", 0,
                         LLOCO_SPLIT_ISOLATED, 0);
    if (strcmp(type, "Whitespace") == 0)
        return add_split(&t->pre, &t->n_pre, "\\w+|[^\\w\\s]+", 0, LLOCO_SPLIT_REMOVED, 1);
    if (strcmp(type, "WhitespaceSplit") == 0)
        return add_split(&t->pre, &t->n_pre, "\\s+", 0, LLOCO_SPLIT_REMOVED, 0);
    if (strcmp(type, "Split") == 0) {
        static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious",
                                            "MergedWithNext", "Contiguous"};
        const char *b = jstr(pt, "behavior");
        size_t k = 0;
        while (b && k < LLOCO_ARRAY_LEN(names) && strcmp(b, names[k]) != 0) k++;
        if (!b || k == LLOCO_ARRAY_LEN(names))
            return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: Split behavior '%s' not supported",
                               c->path, b ? b : "(missing)");
        if ((rc = add_step(&t->pre, &t->n_pre, &st))) return rc;
        st->kind = LLOCO_PRE_SPLIT;
        st->behavior = (lloco_split_behavior)k;
        st->invert = jbool(pt, "invert", 0);
        return compile_pattern(c, cJSON_GetObjectItemCaseSensitive(pt, "pattern"), "Split",
                               &st->re);
    }
    if (strcmp(type, "Metaspace") == 0) {
        const char *repl = jstr(pt, "replacement");
        if (!repl || !*repl)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: Metaspace without replacement", c->path);
        if ((rc = add_step(&t->pre, &t->n_pre, &st))) return rc;
        st->kind = LLOCO_PRE_METASPACE;
        if ((rc = set_str(st, repl))) return rc;
        const char *scheme = jstr(pt, "prepend_scheme");
        if (scheme) {
            if (strcmp(scheme, "always") == 0) st->prepend = LLOCO_PREPEND_ALWAYS;
            else if (strcmp(scheme, "first") == 0) st->prepend = LLOCO_PREPEND_FIRST;
            else if (strcmp(scheme, "never") == 0) st->prepend = LLOCO_PREPEND_NEVER;
            else
                return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: Metaspace prepend_scheme '%s'",
                                   c->path, scheme);
        } else {
            st->prepend = jbool(pt, "add_prefix_space", 1) ? LLOCO_PREPEND_ALWAYS
                                                           : LLOCO_PREPEND_NEVER;
        }
        if (!jbool(pt, "split", 1)) return 0;
        return add_split(&t->pre, &t->n_pre, repl, 1, LLOCO_SPLIT_MERGED_WITH_NEXT, 0);
    }
    return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: pre_tokenizer '%s' not supported", c->path,
                       type);
}

/* Decoding is fixed by the tokenizer kind; the decoder only says whether the
 * text is byte-level and whether a leading space is stripped. */
static void scan_decoder(ctx *c, const cJSON *d) {
    const char *type = jstr(d, "type");
    if (!type) return;
    if (strcmp(type, "ByteLevel") == 0) c->decode_bytes = 1;
    if (strcmp(type, "Strip") == 0) {
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(d, "start");
        if (cJSON_IsNumber(start) && start->valuedouble >= 1) c->t->strip_space = 1;
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(d, "decoders")) scan_decoder(c, e);
    }
}

/* A TemplateProcessing post-processor (Llama-3 nests it in a Sequence)
 * whose single-sequence template opens with a special token adds that
 * token as BOS. */
static void scan_post_processor(lloco_tokenizer *t, const cJSON *pp) {
    const char *type = jstr(pp, "type");
    if (!type) return;
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(pp, "processors"))
            scan_post_processor(t, e);
        return;
    }
    if (strcmp(type, "TemplateProcessing") != 0) return;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
    const cJSON *first = cJSON_IsArray(single) ? cJSON_GetArrayItem(single, 0) : NULL;
    const char *bos = jstr(cJSON_GetObjectItemCaseSensitive(first, "SpecialToken"), "id");
    int32_t id = bos ? lloco_tok_lookup(t, bos, strlen(bos)) : -1;
    if (id >= 0) {
        t->bos = id;
        t->add_bos = 1;
    }
}

static int read_json(const char *path, cJSON **out) {
    char *text;
    size_t len;
    int rc = lloco_file_read(path, MAX_JSON_BYTES, &text, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= text && at <= text + len ? (size_t)(at - text) : len;
        free(text);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", path, off);
    }
    free(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: top level is not a JSON object", path);
    }
    *out = root;
    return 0;
}

static int token_id(const ctx *c, const cJSON *v, const char *what, int32_t *id) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= INT32_MAX / 2 ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %s has no valid token id", c->path, what);
    *id = (int32_t)v->valuedouble;
    return 0;
}

static int load_vocab(ctx *c, const cJSON *model, const cJSON *added) {
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: model has no \"vocab\" object", c->path);
    int32_t n = 0, id;
    int rc;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if ((rc = token_id(c, e, "a vocab entry", &id))) return rc;
        if (id + 1 > n) n = id + 1;
    }
    cJSON_ArrayForEach(e, added) {
        if ((rc = token_id(c, cJSON_GetObjectItemCaseSensitive(e, "id"), "an added token", &id)))
            return rc;
        if (id + 1 > n) n = id + 1;
    }
    if ((rc = lloco_tok_create(n, &c->t))) return rc;
    lloco_tokenizer *t = c->t;
    /* Ids no entry claims stay empty and print nothing. */
    for (int32_t i = 0; i < n; i++) t->tok[i].type = LLOCO_TOK_TYPE_UNUSED;
    cJSON_ArrayForEach(e, vocab) {
        id = (int32_t)e->valuedouble;
        if (t->tok[id].type != LLOCO_TOK_TYPE_UNUSED)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: token id %d appears twice in vocab", c->path,
                               id);
        if ((rc = lloco_tok_set_text(t, id, e->string, strlen(e->string)))) return rc;
        t->tok[id].type = LLOCO_TOK_TYPE_NORMAL;
    }
    cJSON_ArrayForEach(e, added) {
        const char *content = jstr(e, "content");
        if (!content)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: added token without content", c->path);
        id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        if ((rc = lloco_tok_set_text(t, id, content, strlen(content)))) return rc;
        t->tok[id].type = jbool(e, "special", 0) ? LLOCO_TOK_TYPE_CONTROL
                                                 : LLOCO_TOK_TYPE_USER_DEFINED;
        t->tok[id].lstrip = (uint8_t)jbool(e, "lstrip", 0);
        t->tok[id].rstrip = (uint8_t)jbool(e, "rstrip", 0);
    }
    return lloco_tok_index_vocab(t);
}

static int load_merges(ctx *c, const cJSON *model) {
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: BPE model has no \"merges\" array", c->path);
    int32_t rank = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(e)) {
            /* "left right": tokens in this form hold no spaces. */
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return lloco_error(LLOCO_ERR_FORMAT, "%s: merge %d \"%s\" is not \"left right\"",
                                   c->path, rank, e->valuestring);
            a = e->valuestring;
            al = (size_t)(sp - a);
            b = sp + 1;
            bl = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            al = strlen(a);
            bl = strlen(b);
        } else {
            return lloco_error(LLOCO_ERR_FORMAT, "%s: merge %d is neither a string nor a pair",
                               c->path, rank);
        }
        int rc = lloco_tok_add_merge(c->t, a, al, b, bl, rank++);
        if (rc) return rc;
    }
    return 0;
}

/* A token named by a config entry: "text" or {"content": "text"}. */
static int32_t config_token(const lloco_tokenizer *t, const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : jstr(v, "content");
    return s ? lloco_tok_lookup(t, s, strlen(s)) : -1;
}

static int load_config(const char *path, lloco_tokenizer *t) {
    cJSON *cfg;
    int rc = read_json(path, &cfg);
    if (rc) return rc;
    int32_t id;
    if ((id = config_token(t, cfg, "bos_token")) >= 0) t->bos = id;
    if ((id = config_token(t, cfg, "eos_token")) >= 0) t->eos = id;
    if ((id = config_token(t, cfg, "unk_token")) >= 0) t->unk = id;
    t->add_bos = jbool(cfg, "add_bos_token", t->add_bos);
    cJSON_Delete(cfg);
    return 0;
}

static int load(ctx *c, const cJSON *root, const char *config_path) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: no \"model\" object", c->path);
    const char *mtype = jstr(model, "type");
    if (mtype && strcmp(mtype, "BPE") != 0)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: model type '%s' not supported (BPE only)",
                           c->path, mtype);
    if (jstr(model, "continuing_subword_prefix") && *jstr(model, "continuing_subword_prefix"))
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: continuing_subword_prefix not supported",
                           c->path);
    if (jstr(model, "end_of_word_suffix") && *jstr(model, "end_of_word_suffix"))
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: end_of_word_suffix not supported", c->path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0 && dropout->valuedouble < 1)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: BPE dropout not supported", c->path);

    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: added_tokens is not an array", c->path);
    int rc = load_vocab(c, model, cJSON_IsArray(added) ? added : NULL);
    if (rc) return rc;
    lloco_tokenizer *t = c->t;
    if ((rc = load_merges(c, model))) return rc;
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *unk = jstr(model, "unk_token");
    if (unk) t->unk = lloco_tok_lookup(t, unk, strlen(unk));

    if ((rc = parse_normalizer(c, cJSON_GetObjectItemCaseSensitive(root, "normalizer")))) return rc;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre)) {
        if ((rc = parse_pre(c, pre))) return rc;
    } else {
        snprintf(t->pre_name, sizeof t->pre_name, "none");
    }
    scan_decoder(c, cJSON_GetObjectItemCaseSensitive(root, "decoder"));
    /* The decoder may be byte-level even when the pre-tokenizer is not
     * (then the text is taken byte by byte with no regex split). */
    t->byte_level = c->decode_bytes;
    t->kind = t->byte_level ? LLOCO_TOKENIZER_BPE : LLOCO_TOKENIZER_SPM;
    if (!t->byte_level && t->byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            int32_t id = lloco_tok_lookup(t, hex, 6);
            if (id >= 0 && t->tok[id].type == LLOCO_TOK_TYPE_NORMAL)
                t->tok[id].type = LLOCO_TOK_TYPE_BYTE;
        }
    }
    if (t->unk >= 0) t->tok[t->unk].type = LLOCO_TOK_TYPE_UNKNOWN;

    scan_post_processor(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));

    if (config_path && (rc = load_config(config_path, t))) return rc;
    return lloco_tok_finish(t);
}

int lloco_tokenizer_load_json_with_config(const char *json_path, const char *config_path,
                                          lloco_tokenizer **out) {
    *out = NULL;
    cJSON *root;
    int rc = read_json(json_path, &root);
    if (rc) return rc;
    ctx c = {json_path, NULL, 0};
    rc = load(&c, root, config_path);
    cJSON_Delete(root);
    if (rc) {
        lloco_tokenizer_free(c.t);
        return rc;
    }
    *out = c.t;
    return 0;
}

int lloco_tokenizer_load_json(const char *path, lloco_tokenizer **out) {
    if (!path || !out) return lloco_error(LLOCO_ERR_INVAL, "tokenizer_load_json: NULL argument");
    /* tokenizer_config.json in the same directory, if there is one. */
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path) + 1 : 0;
    const char name[] = "tokenizer_config.json";
    char *cfg = malloc(dir + sizeof name);
    if (!cfg) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    memcpy(cfg, path, dir);
    memcpy(cfg + dir, name, sizeof name);
    FILE *f = fopen(cfg, "rb");
    if (f) fclose(f);
    int rc = lloco_tokenizer_load_json_with_config(path, f ? cfg : NULL, out);
    free(cfg);
    return rc;
}
