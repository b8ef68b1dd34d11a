/* Tokenizer loader for GGUF files: reads the tokenizer.ggml.* metadata
 * (vocabulary, scores, token types, merges, pre-tokenizer name, special ids
 * and flags) with llama.cpp's defaults for what a file leaves out.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "decoder/tokenizer_internal.h"

/* An optional token id key: kept at *id's default when absent, a warning
 * (as in llama.cpp) when out of range. */
static int read_id(const lloco_gguf *g, const lloco_tokenizer *t, const char *key, int32_t *id) {
    int64_t v;
    int rc = lloco_gguf_get_i64(g, key, &v);
    if (rc == LLOCO_ERR_NOTFOUND) return 0;
    if (rc) return rc;
    if (v < 0 || v >= t->n_vocab) {
        lloco_log(LLOCO_LOG_WARN, "tokenizer: %s = %" PRId64 " outside the vocabulary, ignored",
                  key, v);
        return 0;
    }
    *id = (int32_t)v;
    return 0;
}

static int read_flag(const lloco_gguf *g, const char *key, int *flag) {
    int v;
    int rc = lloco_gguf_get_bool(g, key, &v);
    if (rc == LLOCO_ERR_NOTFOUND) return 0;
    if (rc) return rc;
    *flag = v;
    return 0;
}

/* A numeric per-token array (scores, token types) of at least n elements;
 * *data NULL when the key is absent. */
static int read_token_array(const lloco_gguf *g, const char *key, int32_t n,
                            lloco_gguf_type *type, const void **data) {
    uint64_t count;
    *data = NULL;
    int rc = lloco_gguf_get_arr(g, key, type, &count, data);
    if (rc == LLOCO_ERR_NOTFOUND) return 0;
    if (rc) return rc;
    if (*type != LLOCO_GGUF_FLOAT32 && *type != LLOCO_GGUF_INT32)
        return lloco_error(LLOCO_ERR_TYPE, "tokenizer: %s is an array of %s", key,
                           lloco_gguf_type_name(*type));
    if (count < (uint64_t)n)
        return lloco_error(LLOCO_ERR_FORMAT, "tokenizer: %s has %" PRIu64 " entries for %d tokens",
                           key, count, n);
    return 0;
}

static int load_merges(const lloco_gguf *g, lloco_tokenizer *t) {
    const char *key = "tokenizer.ggml.merges";
    int64_t ki = lloco_gguf_find_key(g, key);
    if (ki < 0) return lloco_error(LLOCO_ERR_NOTFOUND, "tokenizer: BPE model without %s", key);
    lloco_gguf_type et;
    uint64_t n;
    const void *data;
    int rc = lloco_gguf_kv_arr(g, ki, &et, &n, &data);
    if (rc) return rc;
    if (et != LLOCO_GGUF_STRING)
        return lloco_error(LLOCO_ERR_TYPE, "tokenizer: %s is an array of %s", key,
                           lloco_gguf_type_name(et));
    if (n > INT32_MAX) return lloco_error(LLOCO_ERR_RANGE, "tokenizer: %" PRIu64 " merges", n);
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if ((rc = lloco_gguf_kv_arr_str(g, ki, i, &s, &len))) return rc;
        /* "left right"; the left part may itself be a space (search from 1). */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) continue;
        size_t ll = (size_t)(sp - s);
        if ((rc = lloco_tok_add_merge(t, s, ll, sp + 1, len - ll - 1, (int32_t)i))) return rc;
    }
    return 0;
}

static int load(const lloco_gguf *g, lloco_tokenizer **out) {
    const char *s;
    size_t len;
    int rc = lloco_gguf_get_str(g, "tokenizer.ggml.model", &s, &len);
    if (rc == LLOCO_ERR_NOTFOUND)
        return lloco_error(rc, "tokenizer: GGUF file has no tokenizer.ggml.model");
    if (rc) return rc;
    int is_bpe = len == 4 && memcmp(s, "gpt2", 4) == 0;
    int is_spm = len == 5 && memcmp(s, "llama", 5) == 0;
    if (!is_bpe && !is_spm)
        return lloco_error(LLOCO_ERR_UNSUPPORTED,
                           "tokenizer: model '%.*s' not supported (gpt2 or llama)", (int)len, s);

    const char *tkey = "tokenizer.ggml.tokens";
    int64_t ki = lloco_gguf_find_key(g, tkey);
    if (ki < 0) return lloco_error(LLOCO_ERR_NOTFOUND, "tokenizer: GGUF file has no %s", tkey);
    lloco_gguf_type et;
    uint64_t n;
    const void *data;
    if ((rc = lloco_gguf_kv_arr(g, ki, &et, &n, &data))) return rc;
    if (et != LLOCO_GGUF_STRING)
        return lloco_error(LLOCO_ERR_TYPE, "tokenizer: %s is an array of %s", tkey,
                           lloco_gguf_type_name(et));
    if (n == 0 || n > INT32_MAX / 2)
        return lloco_error(LLOCO_ERR_FORMAT, "tokenizer: %s has %" PRIu64 " tokens", tkey, n);

    lloco_tokenizer *t;
    if ((rc = lloco_tok_create((int32_t)n, &t))) return rc;
    *out = t;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if ((rc = lloco_gguf_kv_arr_str(g, ki, (uint64_t)i, &s, &len))) return rc;
        if ((rc = lloco_tok_set_text(t, i, s, len))) return rc;
    }

    lloco_gguf_type st, tt;
    const void *scores, *types;
    if ((rc = read_token_array(g, "tokenizer.ggml.scores", t->n_vocab, &st, &scores))) return rc;
    if ((rc = read_token_array(g, "tokenizer.ggml.token_type", t->n_vocab, &tt, &types)))
        return rc;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (scores) {
            if (st == LLOCO_GGUF_FLOAT32) {
                memcpy(&t->tok[i].score, (const char *)scores + 4 * (size_t)i, 4);
            } else {
                int32_t v;
                memcpy(&v, (const char *)scores + 4 * (size_t)i, 4);
                t->tok[i].score = (float)v;
            }
        }
        if (types) {
            int32_t v;
            memcpy(&v, (const char *)types + 4 * (size_t)i, 4);
            t->tok[i].type = v >= LLOCO_TOK_TYPE_NORMAL && v <= LLOCO_TOK_TYPE_BYTE
                                 ? (uint8_t)v
                                 : LLOCO_TOK_TYPE_UNDEFINED;
        }
    }
    if ((rc = lloco_tok_index_vocab(t))) return rc;

    const char *pre = "default";
    size_t pre_len = strlen(pre);
    rc = lloco_gguf_get_str(g, "tokenizer.ggml.pre", &s, &len);
    if (rc && rc != LLOCO_ERR_NOTFOUND) return rc;
    if (!rc) {
        pre = s;
        pre_len = len;
    }
    if (pre_len >= sizeof t->pre_name)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer name too long");
    memcpy(t->pre_name, pre, pre_len);
    t->pre_name[pre_len] = 0;

    int space_prefix = is_spm;
    if (is_bpe) {
        t->kind = LLOCO_TOKENIZER_BPE;
        t->byte_level = 1;
        if ((rc = load_merges(g, t))) return rc;
        if ((rc = lloco_tok_add_gguf_pre(t, t->pre_name))) return rc;
    } else {
        /* SentencePiece: merge by score, bytes for unknown characters, a
         * space before each text run (llama.cpp's add_space_prefix) and
         * spaces as U+2581. */
        t->kind = LLOCO_TOKENIZER_SPM;
        t->merge_by_score = 1;
        t->byte_fallback = 1;
        t->add_bos = 1;
        t->bos = 1;
        t->eos = 2;
        t->unk = 0;
        if ((rc = read_flag(g, "tokenizer.ggml.add_space_prefix", &space_prefix))) return rc;
        t->norm = calloc(2, sizeof *t->norm);
        if (!t->norm) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
        if (space_prefix) {
            t->norm[t->n_norm].kind = LLOCO_NORM_PREPEND;
            t->norm[t->n_norm].str = strdup(" ");
            t->norm[t->n_norm++].str_len = 1;
        }
        t->norm[t->n_norm].kind = LLOCO_NORM_REPLACE;
        t->norm[t->n_norm].str = strdup("\xE2\x96\x81");
        t->norm[t->n_norm++].str_len = 3;
        for (int i = 0; i < t->n_norm; i++)
            if (!t->norm[i].str) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
        if ((rc = lloco_tok_compile_regex(" ", 1, 1, &t->norm[t->n_norm - 1].re))) return rc;
        t->strip_space = space_prefix;
    }

    if ((rc = read_id(g, t, "tokenizer.ggml.bos_token_id", &t->bos)) ||
        (rc = read_id(g, t, "tokenizer.ggml.eos_token_id", &t->eos)) ||
        (rc = read_id(g, t, "tokenizer.ggml.eot_token_id", &t->eot)) ||
        (rc = read_id(g, t, "tokenizer.ggml.eom_token_id", &t->eom)) ||
        (rc = read_id(g, t, "tokenizer.ggml.unknown_token_id", &t->unk)) ||
        (rc = read_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos)))
        return rc;
    if (t->bos >= t->n_vocab) t->bos = -1;
    if (t->eos >= t->n_vocab) t->eos = -1;
    if (t->unk >= t->n_vocab) t->unk = -1;
    return lloco_tok_finish(t);
}

int lloco_tokenizer_load_gguf(const lloco_gguf *g, lloco_tokenizer **out) {
    lloco_tokenizer *t = NULL;
    *out = NULL;
    int rc = load(g, &t);
    if (rc) {
        lloco_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}
