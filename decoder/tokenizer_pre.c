/* The tokenizer's text pipeline before BPE: UTF-8 repair, normalizers
 * (NFC/NFKC, Prepend, Replace), pre-tokenizers (regex splits with HF's
 * delimiter behaviors, ByteLevel's prefix space, Metaspace), the GPT-2 byte
 * alphabet, and the regex lists llama.cpp uses for each GGUF pre-tokenizer.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "core/core.h"
#include "decoder/tokenizer_internal.h"

/* ---- GPT-2 byte alphabet ------------------------------------------------- */

/* Printable bytes stand for themselves; the 68 others (controls, space,
 * 0x7F-0xA0, soft hyphen) are moved to U+0100.. in byte order. */
static uint32_t bytelevel_cp(uint8_t b) {
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 256u + 67u;
    return b;
}

int lloco_bytelevel_encode(uint8_t b, char out[2]) {
    uint32_t cp = bytelevel_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

int lloco_bytelevel_decode(uint32_t cp) {
    if (cp < 256) return bytelevel_cp((uint8_t)cp) == cp ? (int)cp : -1;
    if (cp <= 256 + 32) return (int)(cp - 256);
    if (cp <= 256 + 66) return (int)(cp - 256 - 33 + 0x7F);
    if (cp == 256 + 67) return 0xAD;
    return -1;
}

/* ---- UTF-8 repair --------------------------------------------------------- */

int lloco_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len) {
    const uint8_t *u = (const uint8_t *)s;
    size_t n_bad = 0;
    for (size_t i = 0; i < len;) {
        size_t k = lloco_utf8_decode(u + i, len - i, NULL);
        if (!k) {
            n_bad++;
            k = 1;
        }
        i += k;
    }
    /* U+FFFD takes 3 bytes where the bad byte took 1. */
    char *d = malloc(len + 2 * n_bad + 1);
    if (!d) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu bytes of text", len);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = lloco_utf8_decode(u + i, len - i, NULL);
        if (k) {
            memcpy(d + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(d + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    d[o] = 0;
    *out = d;
    *out_len = o;
    return 0;
}

/* ---- piece lists ---------------------------------------------------------- */

void lloco_pieces_free(lloco_pieces *p) {
    free(p->buf);
    free(p->span);
    memset(p, 0, sizeof *p);
}

static int buf_reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    char *b = realloc(*buf, c);
    if (!b) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu bytes", c);
    *buf = b;
    *cap = c;
    return 0;
}

static int span_push(size_t **span, size_t *n, size_t *cap, size_t start, size_t end) {
    if (start == end) return 0; /* empty pieces carry no token */
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        size_t *s = realloc(*span, c * 2 * sizeof *s);
        if (!s) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu pieces", c);
        *span = s;
        *cap = c;
    }
    (*span)[2 * *n] = start;
    (*span)[2 * *n + 1] = end;
    (*n)++;
    return 0;
}

int lloco_pieces_set(lloco_pieces *p, const char *text, size_t len) {
    int rc = buf_reserve(&p->buf, &p->cap, len + 1);
    if (rc) return rc;
    memcpy(p->buf, text, len);
    p->len = len;
    p->n = 0;
    return span_push(&p->span, &p->n, &p->span_cap, 0, len);
}

/* ---- regexes -------------------------------------------------------------- */

/* Unicode's White_Space property, which \s means to llama.cpp, Rust's regex
 * and Oniguruma; PCRE2's \s (with UCP) also matches U+180E. */
#define WHITE_SPACE                                                                        \
    "\\t\\n\\x{0b}\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}" \
    "\\x{205f}\\x{3000}"

/* Rewrites \s and \S into explicit White_Space classes (\S inside a class
 * is left alone: no tokenizer regex uses it). Returns a heap string. */
static char *rewrite_space_classes(const char *p, size_t len, size_t *out_len) {
    size_t ws = strlen(WHITE_SPACE), cap = len + 1, n = 0;
    for (size_t i = 0; i + 1 < len; i++)
        if (p[i] == '\\') {
            if (p[i + 1] == 's' || p[i + 1] == 'S') cap += ws + 3;
            i++;
        }
    char *o = malloc(cap);
    if (!o) return NULL;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < len) {
            char e = p[i + 1];
            i++;
            if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class) o[n++] = '[';
                if (e == 'S') o[n++] = '^';
                memcpy(o + n, WHITE_SPACE, ws);
                n += ws;
                if (!in_class) o[n++] = ']';
            } else {
                o[n++] = c;
                o[n++] = e;
            }
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[n++] = c;
            /* A ']' right after '[' or '[^' is a literal member. */
            if (i + 1 < len && p[i + 1] == '^') o[n++] = p[++i];
            if (i + 1 < len && p[i + 1] == ']') o[n++] = p[++i];
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[n++] = c;
    }
    o[n] = 0;
    *out_len = n;
    return o;
}

int lloco_tok_compile_regex(const char *pattern, size_t len, int literal, void **re) {
    int err;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    size_t rlen = len;
    char *rewritten = literal ? NULL : rewrite_space_classes(pattern, len, &rlen);
    if (!literal && !rewritten) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)(rewritten ? rewritten : pattern), rlen, opts,
                                     &err, &erroff, NULL);
    free(rewritten);
    if (!code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return lloco_error(LLOCO_ERR_FORMAT, "tokenizer: bad regex '%.*s': %s",
                           (int)(len > 200 ? 200 : len), pattern, (char *)msg);
    }
    /* JIT is an optimization only: without it the interpreter runs. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    *re = code;
    return 0;
}

/* Finds the next non-empty match of re in s[0..len) from off. Returns 1 with
 * [*ms, *me), 0 if none, or a negative lloco error. The subject is exactly the
 * piece, so lookarounds never see past it (as in llama.cpp and HF). */
static int regex_next(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t len,
                      size_t off, size_t *ms, size_t *me) {
    while (off < len) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                             NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return lloco_error(LLOCO_ERR_RANGE, "tokenizer: regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* Empty match: step over one character and look again. */
        off = ov[0] + 1;
        while (off < len && ((uint8_t)s[off] & 0xC0) == 0x80) off++;
    }
    return 0;
}

/* ---- normalizers ---------------------------------------------------------- */

static int norm_unicode(lloco_pieces *p, int kind) {
    utf8proc_option_t opt = UTF8PROC_STABLE;
    switch (kind) {
    case LLOCO_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case LLOCO_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case LLOCO_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n =
        utf8proc_map((const utf8proc_uint8_t *)p->buf, (utf8proc_ssize_t)p->len, &dst, opt);
    if (n < 0)
        return lloco_error(LLOCO_ERR_INVAL, "tokenizer: unicode normalization failed: %s",
                           utf8proc_errmsg(n));
    int rc = lloco_pieces_set(p, (const char *)dst, (size_t)n);
    free(dst);
    return rc;
}

static int norm_replace(lloco_pieces *p, const lloco_text_step *st, pcre2_match_data *md) {
    char *out = NULL;
    size_t olen = 0, ocap = 0, off = 0, ms, me;
    int rc;
    while ((rc = regex_next(st->re, md, p->buf, p->len, off, &ms, &me)) == 1) {
        if ((rc = buf_reserve(&out, &ocap, olen + (ms - off) + st->str_len + 1))) break;
        memcpy(out + olen, p->buf + off, ms - off);
        olen += ms - off;
        memcpy(out + olen, st->str, st->str_len);
        olen += st->str_len;
        off = me;
    }
    if (rc == 0 && !(rc = buf_reserve(&out, &ocap, olen + (p->len - off) + 1))) {
        memcpy(out + olen, p->buf + off, p->len - off);
        olen += p->len - off;
        rc = lloco_pieces_set(p, out, olen);
    }
    free(out);
    return rc;
}

int lloco_text_normalize(const lloco_text_step *steps, int n, lloco_pieces *p) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for regex match data");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const lloco_text_step *st = &steps[i];
        switch (st->kind) {
        case LLOCO_NORM_PREPEND:
            if (p->len == 0) break;
            if ((rc = buf_reserve(&p->buf, &p->cap, p->len + st->str_len + 1))) break;
            memmove(p->buf + st->str_len, p->buf, p->len);
            memcpy(p->buf, st->str, st->str_len);
            p->len += st->str_len;
            p->n = 0;
            rc = span_push(&p->span, &p->n, &p->span_cap, 0, p->len);
            break;
        case LLOCO_NORM_REPLACE: rc = norm_replace(p, st, md); break;
        default: rc = norm_unicode(p, st->kind); break;
        }
    }
    pcre2_match_data_free(md);
    return rc;
}

/* ---- pre-tokenizers ------------------------------------------------------- */

typedef struct {
    size_t start, end;
    int is_match;
} segment;

/* Regex split of one piece, following tokenizers' SplitDelimiterBehavior. */
static int split_piece(const lloco_text_step *st, pcre2_match_data *md, const char *buf,
                       size_t start, size_t end, segment **seg, size_t *seg_cap, size_t **span,
                       size_t *n, size_t *cap) {
    size_t ns = 0, off = 0, ms, me, len = end - start;
    const char *s = buf + start;
    int rc;
    for (;;) {
        rc = regex_next(st->re, md, s, len, off, &ms, &me);
        if (rc < 0) return rc;
        size_t need = ns + 2;
        if (need > *seg_cap) {
            size_t c = *seg_cap ? *seg_cap * 2 : 64;
            while (c < need) c *= 2;
            segment *g = realloc(*seg, c * sizeof *g);
            if (!g) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for splits");
            *seg = g;
            *seg_cap = c;
        }
        if (rc == 0) {
            if (off < len) (*seg)[ns++] = (segment){start + off, end, st->invert};
            break;
        }
        if (ms > off) (*seg)[ns++] = (segment){start + off, start + ms, st->invert};
        (*seg)[ns++] = (segment){start + ms, start + me, !st->invert};
        off = me;
    }

    segment *g = *seg;
    size_t m = 0; /* merged segments are rebuilt in place in g[0..m) */
    switch (st->behavior) {
    case LLOCO_SPLIT_ISOLATED: m = ns; break;
    case LLOCO_SPLIT_REMOVED:
        for (size_t i = 0; i < ns; i++)
            if (!g[i].is_match) g[m++] = g[i];
        break;
    case LLOCO_SPLIT_MERGED_WITH_PREVIOUS: {
        int prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            segment cur = g[i];
            if (cur.is_match && !prev_match && m > 0) g[m - 1].end = cur.end;
            else g[m++] = cur;
            prev_match = cur.is_match;
        }
        break;
    }
    case LLOCO_SPLIT_MERGED_WITH_NEXT: {
        /* Walks backwards, as tokenizers does, then restores the order. */
        int next_match = 0;
        size_t w = ns;
        for (size_t i = ns; i-- > 0;) {
            segment cur = g[i];
            if (cur.is_match && !next_match && w < ns) g[w].start = cur.start;
            else g[--w] = cur;
            next_match = cur.is_match;
        }
        memmove(g, g + w, (ns - w) * sizeof *g);
        m = ns - w;
        break;
    }
    case LLOCO_SPLIT_CONTIGUOUS: {
        int prev_match = 0;
        for (size_t i = 0; i < ns; i++) {
            segment cur = g[i];
            if (cur.is_match == prev_match && m > 0) g[m - 1].end = cur.end;
            else g[m++] = cur;
            prev_match = cur.is_match;
        }
        break;
    }
    }
    for (size_t i = 0; i < m; i++)
        if ((rc = span_push(span, n, cap, g[i].start, g[i].end))) return rc;
    return 0;
}

/* Rewrites every piece into a new buffer: ByteLevel's prefix space or
 * Metaspace's replacement and prepend. */
static int rewrite_pieces(const lloco_text_step *st, int at_start, lloco_pieces *p) {
    lloco_pieces q = {0};
    int rc = 0;
    for (size_t i = 0; i < p->n && !rc; i++) {
        size_t s = p->span[2 * i], e = p->span[2 * i + 1];
        size_t worst = st->kind == LLOCO_PRE_METASPACE ? (e - s) * st->str_len + st->str_len
                                                        : e - s + 1;
        if ((rc = buf_reserve(&q.buf, &q.cap, q.len + worst + 1))) break;
        size_t qs = q.len;
        if (st->kind == LLOCO_PRE_PREFIX_SPACE) {
            if (p->buf[s] != ' ') q.buf[q.len++] = ' ';
            memcpy(q.buf + q.len, p->buf + s, e - s);
            q.len += e - s;
        } else {
            /* Spaces become the replacement, so a leading one counts. */
            int starts_repl = p->buf[s] == ' ' || (e - s >= st->str_len &&
                                                   memcmp(p->buf + s, st->str, st->str_len) == 0);
            int want = st->prepend == LLOCO_PREPEND_ALWAYS ||
                       (st->prepend == LLOCO_PREPEND_FIRST && at_start && s == 0);
            if (want && !starts_repl) {
                memcpy(q.buf + q.len, st->str, st->str_len);
                q.len += st->str_len;
            }
            for (size_t k = s; k < e; k++) {
                if (p->buf[k] == ' ') {
                    memcpy(q.buf + q.len, st->str, st->str_len);
                    q.len += st->str_len;
                } else {
                    q.buf[q.len++] = p->buf[k];
                }
            }
        }
        rc = span_push(&q.span, &q.n, &q.span_cap, qs, q.len);
    }
    if (rc) {
        lloco_pieces_free(&q);
        return rc;
    }
    lloco_pieces_free(p);
    *p = q;
    return 0;
}

int lloco_text_pretokenize(const lloco_text_step *steps, int n, int at_start, lloco_pieces *p) {
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for regex match data");
    segment *seg = NULL;
    size_t seg_cap = 0;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const lloco_text_step *st = &steps[i];
        if (st->kind != LLOCO_PRE_SPLIT) {
            rc = rewrite_pieces(st, at_start, p);
            continue;
        }
        size_t *span = NULL, ns = 0, cap = 0;
        for (size_t k = 0; k < p->n && !rc; k++)
            rc = split_piece(st, md, p->buf, p->span[2 * k], p->span[2 * k + 1], &seg, &seg_cap,
                             &span, &ns, &cap);
        if (rc) {
            free(span);
            break;
        }
        free(p->span);
        p->span = span;
        p->n = ns;
        p->span_cap = cap;
    }
    free(seg);
    pcre2_match_data_free(md);
    return rc;
}

void lloco_text_steps_free(lloco_text_step *steps, int n) {
    for (int i = 0; i < n; i++) {
        pcre2_code_free(steps[i].re);
        free(steps[i].str);
    }
    free(steps);
}

/* ---- llama.cpp's pre-tokenizers ------------------------------------------ */

/* Regex lists from llama.cpp (src/llama-vocab.cpp, llm_tokenizer_bpe): each
 * regex splits every piece the previous one left, keeping matches and the
 * text between them as separate pieces. */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_LLAMA3                                                                          \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                        \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" \
                    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static const struct {
    const char *names; /* '|'-separated GGUF tokenizer.ggml.pre values */
    const char *re[4];
    int ignore_merges; /* llama.cpp's defaults for these models */
    int add_bos;
} gguf_pre[] = {
    {"default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
     0,
     0},
    {"llama3|llama-v3|llama-bpe|falcon3|falcon-h1|pixtral|midm-2.0|lfm2", {RE_LLAMA3}, 1, 1},
    {"dbrx|smaug-bpe", {RE_LLAMA3}, 0, 0},
    {"qwen2|deepseek-r1-qwen|megrez|stablelm2", {RE_QWEN2}, 0, 0},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b",
     {"\\p{N}", RE_GPT2},
     0,
     0},
    {"gpt-2|phi-2|jina-es|jina-de|gigachat|jina-v2-es|jina-v2-de|jina-v1-en|jina-v2-code|"
     "roberta-bpe|mpt|olmo|jais|exaone4",
     {RE_GPT2},
     0,
     0},
};

static int name_in_list(const char *name, const char *list) {
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

int lloco_tok_add_gguf_pre(lloco_tokenizer *t, const char *name) {
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(gguf_pre); i++) {
        if (!name_in_list(name, gguf_pre[i].names)) continue;
        int n = 0;
        while (n < 4 && gguf_pre[i].re[n]) n++;
        t->pre = calloc((size_t)n, sizeof *t->pre);
        if (!t->pre) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
        for (int k = 0; k < n; k++) {
            t->pre[k].kind = LLOCO_PRE_SPLIT;
            t->pre[k].behavior = LLOCO_SPLIT_ISOLATED;
            int rc = lloco_tok_compile_regex(gguf_pre[i].re[k], strlen(gguf_pre[i].re[k]), 0,
                                             &t->pre[k].re);
            if (rc) return rc;
            t->n_pre = k + 1;
        }
        t->ignore_merges = gguf_pre[i].ignore_merges;
        t->add_bos = gguf_pre[i].add_bos;
        return 0;
    }
    return lloco_error(LLOCO_ERR_UNSUPPORTED,
                       "tokenizer: unsupported pre-tokenizer '%s' (supported: default, gpt-2, "
                       "llama-bpe/llama3, qwen2, smollm, starcoder and their aliases)",
                       name);
}
