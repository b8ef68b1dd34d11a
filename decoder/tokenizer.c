/* Tokenizer core: vocabulary and merge indexes, encoding (special-token
 * partition, text pipeline, BPE merging by rank or by SentencePiece score,
 * byte fallback) and decoding (pieces, decode, streaming detokenizer).
 * Loaders live in tokenizer_gguf.c and tokenizer_json.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "decoder/tokenizer_internal.h"

/* ---- construction -------------------------------------------------------- */

int lloco_tok_create(int32_t n_vocab, lloco_tokenizer **out) {
    *out = NULL;
    if (n_vocab <= 0)
        return lloco_error(LLOCO_ERR_FORMAT, "tokenizer: empty vocabulary");
    lloco_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    t->tok = calloc((size_t)n_vocab, sizeof *t->tok);
    if (!t->tok) {
        free(t);
        return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %d tokens", n_vocab);
    }
    t->n_vocab = n_vocab;
    for (int32_t i = 0; i < n_vocab; i++) t->tok[i].type = LLOCO_TOK_TYPE_NORMAL;
    t->bos = t->eos = t->eot = t->eom = t->unk = -1;
    *out = t;
    return 0;
}

void lloco_tokenizer_free(lloco_tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->arena);
    free(t->pieces);
    free(t->vocab_ht);
    free(t->merge_ht);
    lloco_text_steps_free(t->norm, t->n_norm);
    lloco_text_steps_free(t->pre, t->n_pre);
    free(t->specials);
    free(t);
}

int lloco_tok_set_text(lloco_tokenizer *t, int32_t id, const char *s, size_t len) {
    if (len > UINT32_MAX / 2 || t->arena_len + len + 1 > UINT32_MAX)
        return lloco_error(LLOCO_ERR_RANGE, "tokenizer: vocabulary text too large");
    if (t->arena_len + len + 1 > t->arena_cap) {
        size_t c = t->arena_cap ? t->arena_cap : 1 << 16;
        while (c < t->arena_len + len + 1) c *= 2;
        char *a = realloc(t->arena, c);
        if (!a) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for vocabulary");
        t->arena = a;
        t->arena_cap = c;
    }
    memcpy(t->arena + t->arena_len, s, len);
    t->arena[t->arena_len + len] = 0;
    t->tok[id].text_off = (uint32_t)t->arena_len;
    t->tok[id].text_len = (uint32_t)len;
    t->arena_len += len + 1;
    return 0;
}

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static const char *tok_text(const lloco_tokenizer *t, int32_t id) {
    return t->arena ? t->arena + t->tok[id].text_off : "";
}

int lloco_tok_index_vocab(lloco_tokenizer *t) {
    uint32_t size = 1024;
    while (size < 2u * (uint32_t)t->n_vocab) size *= 2;
    free(t->vocab_ht);
    t->vocab_ht = calloc(size, sizeof *t->vocab_ht);
    if (!t->vocab_ht) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for index");
    t->vocab_mask = size - 1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len = t->tok[id].text_len;
        if (!len) continue;
        const char *s = tok_text(t, id);
        uint32_t h = (uint32_t)hash_bytes(s, len) & t->vocab_mask;
        for (;; h = (h + 1) & t->vocab_mask) {
            uint32_t e = t->vocab_ht[h];
            if (!e) break;
            const lloco_tok_entry *o = &t->tok[e - 1];
            if (o->text_len == len && memcmp(tok_text(t, (int32_t)e - 1), s, len) == 0) break;
        }
        t->vocab_ht[h] = (uint32_t)id + 1;
    }
    return 0;
}

int32_t lloco_tok_lookup(const lloco_tokenizer *t, const char *s, size_t len) {
    if (!len || !t->vocab_ht) return -1;
    uint32_t h = (uint32_t)hash_bytes(s, len) & t->vocab_mask;
    for (;; h = (h + 1) & t->vocab_mask) {
        uint32_t e = t->vocab_ht[h];
        if (!e) return -1;
        const lloco_tok_entry *o = &t->tok[e - 1];
        if (o->text_len == len && memcmp(tok_text(t, (int32_t)e - 1), s, len) == 0)
            return (int32_t)e - 1;
    }
}

static uint64_t merge_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1);
}

static lloco_merge_slot *merge_find(const lloco_tokenizer *t, uint64_t key) {
    if (!t->merge_ht) return NULL;
    uint32_t h = (uint32_t)hash_u64(key) & t->merge_mask;
    for (;; h = (h + 1) & t->merge_mask) {
        lloco_merge_slot *s = &t->merge_ht[h];
        if (s->key == key || !s->key) return s;
    }
}

static int merge_grow(lloco_tokenizer *t) {
    uint32_t old = t->merge_ht ? t->merge_mask + 1 : 0;
    uint32_t size = old ? old * 2 : 4096;
    lloco_merge_slot *ht = calloc(size, sizeof *ht);
    if (!ht) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for merges");
    lloco_merge_slot *prev = t->merge_ht;
    t->merge_ht = ht;
    t->merge_mask = size - 1;
    for (uint32_t i = 0; i < old; i++)
        if (prev[i].key) *merge_find(t, prev[i].key) = prev[i];
    free(prev);
    return 0;
}

int lloco_tok_add_merge(lloco_tokenizer *t, const char *a, size_t alen, const char *b,
                        size_t blen, int32_t rank) {
    int32_t ia = lloco_tok_lookup(t, a, alen), ib = lloco_tok_lookup(t, b, blen);
    if (ia < 0 || ib < 0) return 0;
    char stack[256];
    char *ab = alen + blen <= sizeof stack ? stack : malloc(alen + blen);
    if (!ab) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    memcpy(ab, a, alen);
    memcpy(ab + alen, b, blen);
    int32_t merged = lloco_tok_lookup(t, ab, alen + blen);
    if (ab != stack) free(ab);
    if (merged < 0) return 0;
    if (!t->merge_ht || 2u * (uint32_t)(t->n_merges + 1) > t->merge_mask + 1) {
        int rc = merge_grow(t);
        if (rc) return rc;
    }
    lloco_merge_slot *s = merge_find(t, merge_key(ia, ib));
    if (s->key) return 0; /* the first (lowest) rank wins, as in llama.cpp */
    s->key = merge_key(ia, ib);
    s->rank = rank;
    s->merged = merged;
    t->n_merges++;
    return 0;
}

/* Token texts that end generation when they are control tokens (the list
 * llama.cpp matches by text). */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>",   "<|end|>", "<end_of_turn>",   "<|endoftext|>",
    "</s>",       "<|eom_id|>",   "<EOT>",   "<|end_of_text|>",
};

/* Detokenized bytes of token id (render_special form) into out; returns
 * their count. */
static size_t build_piece(const lloco_tokenizer *t, int32_t id, char *out) {
    const lloco_tok_entry *e = &t->tok[id];
    const char *s = tok_text(t, id);
    size_t len = e->text_len, o = 0;
    switch (e->type) {
    case LLOCO_TOK_TYPE_CONTROL:
    case LLOCO_TOK_TYPE_UNKNOWN:
    case LLOCO_TOK_TYPE_USER_DEFINED:
        memcpy(out, s, len);
        o = len;
        break;
    case LLOCO_TOK_TYPE_BYTE: {
        unsigned v;
        char tail;
        if (len == 6 && sscanf(s, "<0x%2x%c", &v, &tail) == 2 && tail == '>') out[o++] = (char)v;
        break;
    }
    case LLOCO_TOK_TYPE_NORMAL:
        if (t->byte_level) {
            /* Characters outside the byte alphabet are kept as they are. */
            for (size_t i = 0; i < len;) {
                int k = lloco_utf8_seq_len((uint8_t)s[i]);
                if (k <= 0 || (size_t)k > len - i) k = 1;
                uint32_t cp = (uint8_t)s[i];
                if (k == 2) cp = ((cp & 0x1Fu) << 6) | ((uint8_t)s[i + 1] & 0x3Fu);
                int b = k <= 2 ? lloco_bytelevel_decode(cp) : -1;
                if (b >= 0) out[o++] = (char)b;
                else {
                    memcpy(out + o, s + i, (size_t)k);
                    o += (size_t)k;
                }
                i += (size_t)k;
            }
        } else {
            for (size_t i = 0; i < len;) {
                if (len - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                    out[o++] = ' ';
                    i += 3;
                } else {
                    out[o++] = s[i++];
                }
            }
        }
        break;
    default: break; /* unused/undefined tokens print nothing */
    }
    return o;
}

static int is_special(const lloco_tok_entry *e) {
    return e->text_len && (e->type == LLOCO_TOK_TYPE_CONTROL || e->type == LLOCO_TOK_TYPE_UNKNOWN ||
                           e->type == LLOCO_TOK_TYPE_USER_DEFINED);
}

typedef struct {
    uint32_t len;
    int32_t id;
} special_key;

/* Longest first; equal lengths by id so that the order is deterministic. */
static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int lloco_tok_finish(lloco_tokenizer *t) {
    char enc[8];
    for (int b = 0; b < 256; b++) {
        t->byte_char_id[b] = -1;
        t->byte_tok_id[b] = -1;
        if (t->byte_level) {
            int k = lloco_bytelevel_encode((uint8_t)b, enc);
            t->byte_char_id[b] = lloco_tok_lookup(t, enc, (size_t)k);
        }
        snprintf(enc, sizeof enc, "<0x%02X>", b);
        t->byte_tok_id[b] = lloco_tok_lookup(t, enc, 6);
    }

    int n_sp = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special(&t->tok[i])) n_sp++;
    special_key *keys = malloc((size_t)(n_sp ? n_sp : 1) * sizeof *keys);
    free(t->specials);
    t->specials = malloc((size_t)(n_sp ? n_sp : 1) * sizeof *t->specials);
    if (!keys || !t->specials) {
        free(keys);
        return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    }
    n_sp = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special(&t->tok[i])) keys[n_sp++] = (special_key){t->tok[i].text_len, i};
    qsort(keys, (size_t)n_sp, sizeof *keys, cmp_special);
    for (int i = 0; i < n_sp; i++) t->specials[i] = keys[i].id;
    t->n_specials = n_sp;
    free(keys);

    for (int32_t i = 0; i < t->n_vocab; i++) {
        lloco_tok_entry *e = &t->tok[i];
        e->eog = i == t->eos || i == t->eot || i == t->eom;
        if (e->type != LLOCO_TOK_TYPE_CONTROL) continue;
        for (size_t k = 0; k < LLOCO_ARRAY_LEN(eog_texts); k++)
            if (strcmp(tok_text(t, i), eog_texts[k]) == 0) e->eog = 1;
    }

    /* A piece is never longer than its text: byte decoding and U+2581 -> ' '
     * only shrink it. */
    free(t->pieces);
    t->pieces = malloc(t->arena_len + 1);
    if (!t->pieces) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for pieces");
    size_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t n = build_piece(t, i, t->pieces + off);
        t->tok[i].piece_off = (uint32_t)off;
        t->tok[i].piece_len = (uint32_t)n;
        off += n;
    }
    return 0;
}

/* ---- accessors ------------------------------------------------------------ */

lloco_tokenizer_kind lloco_tokenizer_kind_of(const lloco_tokenizer *t) { return t->kind; }
const char *lloco_tokenizer_pre_name(const lloco_tokenizer *t) { return t->pre_name; }
int32_t lloco_tokenizer_n_vocab(const lloco_tokenizer *t) { return t->n_vocab; }
int32_t lloco_tokenizer_bos(const lloco_tokenizer *t) { return t->bos; }
int32_t lloco_tokenizer_eos(const lloco_tokenizer *t) { return t->eos; }
int lloco_tokenizer_add_bos(const lloco_tokenizer *t) { return t->add_bos; }

int lloco_tokenizer_is_eog(const lloco_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->tok[id].eog;
}

int32_t lloco_tokenizer_find(const lloco_tokenizer *t, const char *piece) {
    return piece ? lloco_tok_lookup(t, piece, strlen(piece)) : -1;
}

const char *lloco_tokenizer_token_text(const lloco_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? tok_text(t, id) : NULL;
}

/* ---- encoding ------------------------------------------------------------- */

typedef struct {
    int32_t *v;
    size_t n, cap;
} idvec;

static int ids_push(idvec *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t c = ids->cap ? ids->cap * 2 : 256;
        int32_t *v = realloc(ids->v, c * sizeof *v);
        if (!v) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu ids", c);
        ids->v = v;
        ids->cap = c;
    }
    ids->v[ids->n++] = id;
    return 0;
}

typedef struct {
    int32_t start, len; /* bytes of the word; len 0 once merged away */
    int32_t prev, next;
    int32_t id;         /* token of the symbol's text, -1 if none */
} symbol;

typedef struct {
    double prio; /* merge rank, or -score: lowest first */
    int32_t left, right;
    int32_t size; /* combined length when queued; stale if it changed */
    int32_t id;
} bigram;

typedef struct {
    symbol *sym;
    size_t sym_cap;
    bigram *heap;
    size_t n_heap, heap_cap;
    char *enc;
    size_t enc_cap;
} bpe_scratch;

static int bigram_less(const bigram *a, const bigram *b) {
    if (a->prio != b->prio) return a->prio < b->prio;
    return a->left < b->left; /* ties: leftmost first, as llama.cpp and HF */
}

static int heap_push(bpe_scratch *s, bigram b) {
    if (s->n_heap == s->heap_cap) {
        size_t c = s->heap_cap ? s->heap_cap * 2 : 256;
        bigram *h = realloc(s->heap, c * sizeof *h);
        if (!h) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for merge queue");
        s->heap = h;
        s->heap_cap = c;
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bigram_less(&b, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = b;
    return 0;
}

static bigram heap_pop(bpe_scratch *s) {
    bigram top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bigram_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!bigram_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static int try_pair(const lloco_tokenizer *t, bpe_scratch *s, const char *w, int32_t l,
                    int32_t r) {
    if (l < 0 || r < 0) return 0;
    const symbol *a = &s->sym[l], *b = &s->sym[r];
    bigram g = {0, l, r, a->len + b->len, -1};
    if (t->merge_by_score) {
        g.id = lloco_tok_lookup(t, w + a->start, (size_t)g.size);
        if (g.id < 0) return 0;
        g.prio = -(double)t->tok[g.id].score;
    } else {
        if (a->id < 0 || b->id < 0) return 0;
        const lloco_merge_slot *m = merge_find(t, merge_key(a->id, b->id));
        if (!m || !m->key) return 0;
        g.id = m->merged;
        g.prio = m->rank;
    }
    return heap_push(s, g);
}

/* Output of a symbol that is no token: its bytes as <0xNN> tokens (byte
 * fallback), else the unknown token. Byte-level symbols always have a token
 * in real vocabularies; llama.cpp drops them otherwise, and so do we. */
static int emit_unknown(const lloco_tokenizer *t, const char *w, const symbol *sym, idvec *ids) {
    if (t->byte_level) return 0;
    if (t->byte_fallback) {
        int all = 1;
        for (int32_t k = 0; k < sym->len; k++)
            if (t->byte_tok_id[(uint8_t)w[sym->start + k]] < 0) all = 0;
        if (all) {
            for (int32_t k = 0; k < sym->len; k++) {
                int rc = ids_push(ids, t->byte_tok_id[(uint8_t)w[sym->start + k]]);
                if (rc) return rc;
            }
            return 0;
        }
    }
    return t->unk >= 0 ? ids_push(ids, t->unk) : 0;
}

/* BPE over one pre-tokenized piece w[0..n). */
static int bpe_word(const lloco_tokenizer *t, bpe_scratch *s, const char *w, size_t n,
                    idvec *ids) {
    int rc;
    if (n == 0) return 0;
    if (n > INT32_MAX / 2)
        return lloco_error(LLOCO_ERR_RANGE, "tokenizer: piece of %zu bytes too long", n);
    if (t->ignore_merges) {
        int32_t id;
        if (t->byte_level) {
            if (2 * n > s->enc_cap) {
                char *e = realloc(s->enc, 2 * n);
                if (!e) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
                s->enc = e;
                s->enc_cap = 2 * n;
            }
            size_t o = 0;
            for (size_t i = 0; i < n; i++)
                o += (size_t)lloco_bytelevel_encode((uint8_t)w[i], s->enc + o);
            id = lloco_tok_lookup(t, s->enc, o);
        } else {
            id = lloco_tok_lookup(t, w, n);
        }
        if (id >= 0) return ids_push(ids, id);
    }

    if (n > s->sym_cap) {
        symbol *y = realloc(s->sym, n * sizeof *y);
        if (!y) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu symbols", n);
        s->sym = y;
        s->sym_cap = n;
    }
    int32_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t k = 1;
        if (!t->byte_level) {
            int q = lloco_utf8_seq_len((uint8_t)w[i]);
            k = q > 0 && (size_t)q <= n - i ? (size_t)q : 1;
        }
        symbol *y = &s->sym[ns];
        y->start = (int32_t)i;
        y->len = (int32_t)k;
        y->prev = ns - 1;
        y->next = i + k < n ? ns + 1 : -1;
        y->id = t->byte_level ? t->byte_char_id[(uint8_t)w[i]] : lloco_tok_lookup(t, w + i, k);
        ns++;
        i += k;
    }

    s->n_heap = 0;
    for (int32_t i = 1; i < ns; i++)
        if ((rc = try_pair(t, s, w, i - 1, i))) return rc;
    while (s->n_heap) {
        bigram g = heap_pop(s);
        symbol *l = &s->sym[g.left], *r = &s->sym[g.right];
        if (!l->len || !r->len || l->next != g.right || l->len + r->len != g.size) continue;
        l->len += r->len;
        l->id = g.id;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = g.left;
        if ((rc = try_pair(t, s, w, l->prev, g.left))) return rc;
        if ((rc = try_pair(t, s, w, g.left, l->next))) return rc;
    }

    for (int32_t i = 0; i != -1; i = s->sym[i].next) {
        const symbol *y = &s->sym[i];
        rc = y->id >= 0 ? ids_push(ids, y->id) : emit_unknown(t, w, y, ids);
        if (rc) return rc;
    }
    return 0;
}

/* A run of text, or a special token found in it. */
typedef struct {
    size_t off, len;
    int32_t id; /* -1: text */
} fragment;

typedef struct {
    fragment *f;
    size_t n, cap;
} fragvec;

static int frag_push(fragvec *v, size_t off, size_t len, int32_t id) {
    if (id < 0 && !len) return 0;
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 16;
        fragment *f = realloc(v->f, c * sizeof *f);
        if (!f) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for fragments");
        v->f = f;
        v->cap = c;
    }
    v->f[v->n++] = (fragment){off, len, id};
    return 0;
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Splits the text at special-token occurrences, longest token first, as
 * llama.cpp's tokenizer_st_partition does. Without parse_special only
 * user-defined tokens are split out (control and unknown ones are text). */
static int partition_special(const lloco_tokenizer *t, const char *s, size_t len,
                             int parse_special, fragvec *out) {
    fragvec cur = {0}, next = {0};
    int rc = frag_push(&cur, 0, len, -1);
    for (int k = 0; k < t->n_specials && !rc; k++) {
        int32_t id = t->specials[k];
        const lloco_tok_entry *e = &t->tok[id];
        if (!parse_special && e->type != LLOCO_TOK_TYPE_USER_DEFINED) continue;
        const char *st = tok_text(t, id);
        size_t sl = e->text_len;
        if (!memmem(s, len, st, sl)) continue;
        next.n = 0;
        for (size_t i = 0; i < cur.n && !rc; i++) {
            fragment f = cur.f[i];
            if (f.id >= 0) {
                rc = frag_push(&next, f.off, f.len, f.id);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            const char *m;
            while (!rc && (m = memmem(s + pos, end - pos, st, sl))) {
                size_t ms = (size_t)(m - s), left = ms;
                if (e->lstrip)
                    while (left > pos && is_space(s[left - 1])) left--;
                rc = frag_push(&next, pos, left - pos, -1);
                if (!rc) rc = frag_push(&next, ms, sl, id);
                pos = ms + sl;
                if (e->rstrip)
                    while (pos < end && is_space(s[pos])) pos++;
            }
            if (!rc) rc = frag_push(&next, pos, end - pos, -1);
        }
        fragvec tmp = cur;
        cur = next;
        next = tmp;
    }
    free(next.f);
    if (rc) {
        free(cur.f);
        return rc;
    }
    *out = cur;
    return 0;
}

int lloco_tokenizer_encode(const lloco_tokenizer *t, const char *text, size_t len, int add_bos,
                           int parse_special, int32_t *out, int cap, int *n_out) {
    if (n_out) *n_out = 0;
    if (!t || (!text && len) || (!out && cap > 0) || cap < 0 || !n_out)
        return lloco_error(LLOCO_ERR_INVAL, "tokenizer_encode: invalid arguments");
    idvec ids = {0};
    fragvec frags = {0};
    lloco_pieces p = {0};
    bpe_scratch scratch = {0};
    char *clean = NULL;
    size_t clen = 0;
    int rc = 0;

    if (add_bos && t->bos >= 0) rc = ids_push(&ids, t->bos);
    if (!rc) rc = lloco_utf8_sanitize(text ? text : "", len, &clean, &clen);
    if (!rc) rc = partition_special(t, clean, clen, parse_special, &frags);
    for (size_t i = 0; i < frags.n && !rc; i++) {
        const fragment *f = &frags.f[i];
        if (f->id >= 0) {
            rc = ids_push(&ids, f->id);
            continue;
        }
        rc = lloco_pieces_set(&p, clean + f->off, f->len);
        if (!rc) rc = lloco_text_normalize(t->norm, t->n_norm, &p);
        if (!rc) rc = lloco_text_pretokenize(t->pre, t->n_pre, f->off == 0, &p);
        for (size_t k = 0; k < p.n && !rc; k++)
            rc = bpe_word(t, &scratch, p.buf + p.span[2 * k], p.span[2 * k + 1] - p.span[2 * k],
                          &ids);
    }

    if (!rc && ids.n > (size_t)INT32_MAX)
        rc = lloco_error(LLOCO_ERR_RANGE, "tokenizer_encode: %zu tokens", ids.n);
    if (!rc) {
        *n_out = (int)ids.n;
        size_t n_copy = ids.n < (size_t)cap ? ids.n : (size_t)cap;
        if (n_copy) memcpy(out, ids.v, n_copy * sizeof *out);
        if (ids.n > (size_t)cap)
            rc = lloco_error(LLOCO_ERR_FULL, "tokenizer_encode: %zu tokens do not fit in %d",
                             ids.n, cap);
    }
    free(ids.v);
    free(frags.f);
    free(clean);
    lloco_pieces_free(&p);
    free(scratch.sym);
    free(scratch.heap);
    free(scratch.enc);
    return rc;
}

/* ---- decoding ------------------------------------------------------------- */

/* The bytes of id's piece, or LLOCO_ERR_RANGE. */
static int piece_of(const lloco_tokenizer *t, int32_t id, int render_special, const char **s,
                    size_t *n) {
    *s = "";
    *n = 0;
    if (id < 0 || id >= t->n_vocab)
        return lloco_error(LLOCO_ERR_RANGE, "tokenizer: token id %d outside [0, %d)", id,
                           t->n_vocab);
    const lloco_tok_entry *e = &t->tok[id];
    *s = t->pieces + e->piece_off;
    *n = e->piece_len;
    if (!render_special && (e->type == LLOCO_TOK_TYPE_CONTROL || e->type == LLOCO_TOK_TYPE_UNKNOWN))
        *n = 0;
    return 0;
}

int lloco_tokenizer_piece(const lloco_tokenizer *t, int32_t id, int render_special, char *buf,
                          int cap) {
    const char *s;
    size_t n;
    if (piece_of(t, id, render_special, &s, &n)) return -1;
    if (cap > 0 && n) memcpy(buf, s, n < (size_t)cap ? n : (size_t)cap);
    return (int)n;
}

int lloco_tokenizer_decode(const lloco_tokenizer *t, const int32_t *ids, int n,
                           int render_special, char *buf, int cap) {
    size_t total = 0;
    int strip = t->strip_space;
    for (int i = 0; i < n; i++) {
        const char *s;
        size_t len;
        int rc = piece_of(t, ids[i], render_special, &s, &len);
        if (rc) return rc;
        if (strip && len) {
            strip = 0;
            if (s[0] == ' ') {
                s++;
                len--;
            }
        }
        if (cap > 0 && len && total < (size_t)cap - 1) {
            size_t room = (size_t)cap - 1 - total;
            memcpy(buf + total, s, len < room ? len : room);
        }
        total += len;
        if (total > INT32_MAX) return lloco_error(LLOCO_ERR_RANGE, "tokenizer_decode: too long");
    }
    if (cap > 0) buf[total < (size_t)cap - 1 ? total : (size_t)cap - 1] = 0;
    return (int)total;
}

void lloco_detok_init(lloco_detok *d, const lloco_tokenizer *t, int render_special) {
    memset(d, 0, sizeof *d);
    d->tok = t;
    d->render_special = render_special;
}

/* n_fed counts the ids whose piece had bytes: the first of them loses its
 * leading space when the tokenizer strips one (as decode does). */
int lloco_detok_push(lloco_detok *d, int32_t id, char *out, int cap) {
    const char *s;
    size_t len;
    int rc = piece_of(d->tok, id, d->render_special, &s, &len);
    if (rc) return rc;
    int had_bytes = len > 0;
    if (had_bytes && d->n_fed == 0 && d->tok->strip_space && s[0] == ' ') {
        s++;
        len--;
    }
    size_t total = (size_t)d->n_pending + len;
    /* The unfinished tail lies within the last 4 bytes of pending + piece. */
    char last[8];
    size_t nl = total < sizeof last ? total : sizeof last;
    for (size_t i = 0; i < nl; i++) {
        size_t j = total - nl + i;
        last[i] = j < (size_t)d->n_pending ? d->pending[j] : s[j - (size_t)d->n_pending];
    }
    size_t tail = lloco_utf8_incomplete_tail(last, nl);
    size_t emit = total - tail;
    if (emit > INT32_MAX) return lloco_error(LLOCO_ERR_RANGE, "detok: piece too long");
    if (emit > (size_t)(cap > 0 ? cap : 0)) return (int)emit;

    size_t from_pending = emit < (size_t)d->n_pending ? emit : (size_t)d->n_pending;
    if (from_pending) memcpy(out, d->pending, from_pending);
    if (emit > from_pending) memcpy(out + from_pending, s, emit - from_pending);
    if (tail) memcpy(d->pending, last + nl - tail, tail);
    d->n_pending = (int)tail;
    if (had_bytes) d->n_fed++;
    return (int)emit;
}

int lloco_detok_flush(lloco_detok *d, char *out, int cap) {
    int n = d->n_pending;
    if (n > cap) return n;
    if (n) memcpy(out, d->pending, (size_t)n);
    d->n_pending = 0;
    return n;
}
