/* ingest: documents in, whole stored documents out. Reads .txt/.md/.jsonl
 * (or stdin), validates each document, skips those already stored with the
 * same content, tokenizes, compresses segment by segment, embeds each
 * segment's text for retrieval and writes the document with all its chunks
 * in one store transaction, then adds the chunks to the index.
 */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "ingest.h"

#define MAX_FILE_BYTES ((size_t)1 << 31)
#define MAX_NAME_BYTES 400 /* ids are LMDB keys (511 bytes at most) */

struct lloco_ingester {
    lloco_compressor *c;
    lloco_embedder *e;
    lloco_store *s;
    lloco_retriever *r;
    char *group;
    lloco_ingest_callbacks cb;
    lloco_ingest_stats st;
    double t0;
    const lloco_tokenizer *tok;
    int dm, dim;
    size_t slot_bytes; /* one segment's slots */
    /* per-document buffers, grown as needed */
    int32_t *tokens;
    int tok_cap;
    size_t *tok_end; /* byte offset in the text after each token */
    uint8_t *slots;
    int (*spans)[2];
    int seg_cap;
    const char **texts;
    size_t *lens;
    float *vecs;
    lloco_chunk_in *chunks;
    uint64_t *ids;
};

static int grow_segments(lloco_ingester *g, int n) {
    if (n <= g->seg_cap) return 0;
    int cap = n > 2 * g->seg_cap ? n : 2 * g->seg_cap;
    void *p[7] = {
        realloc(g->slots, g->slot_bytes * (size_t)cap), NULL, NULL, NULL, NULL, NULL, NULL};
    if (p[0]) g->slots = p[0];
    p[1] = realloc(g->spans, sizeof *g->spans * (size_t)cap);
    if (p[1]) g->spans = p[1];
    p[2] = realloc(g->texts, sizeof *g->texts * (size_t)cap);
    if (p[2]) g->texts = p[2];
    p[3] = realloc(g->lens, sizeof *g->lens * (size_t)cap);
    if (p[3]) g->lens = p[3];
    p[4] = realloc(g->vecs, sizeof(float) * (size_t)g->dim * (size_t)cap);
    if (p[4]) g->vecs = p[4];
    p[5] = realloc(g->chunks, sizeof *g->chunks * (size_t)cap);
    if (p[5]) g->chunks = p[5];
    p[6] = realloc(g->ids, sizeof *g->ids * (size_t)cap);
    if (p[6]) g->ids = p[6];
    for (int i = 0; i < 7; i++)
        if (!p[i]) return lloco_error(LLOCO_ERR_NOMEM, "out of memory for %d segments", n);
    g->seg_cap = cap;
    return 0;
}

int lloco_ingester_create(lloco_compressor *c, lloco_embedder *e, lloco_store *s,
                          lloco_retriever *r, const char *default_group,
                          const lloco_ingest_callbacks *cb, lloco_ingester **out) {
    *out = NULL;
    const lloco_store_fingerprint *fp = lloco_store_fingerprint_of(s);
    if (fp->embed_dim != lloco_embedder_dim(e))
        return lloco_error(LLOCO_ERR_MISMATCH, "the store holds %d-d vectors, the embedder makes %d",
                           fp->embed_dim, lloco_embedder_dim(e));
    lloco_ingester *g = calloc(1, sizeof *g);
    if (!g) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    g->c = c;
    g->e = e;
    g->s = s;
    g->r = r;
    g->group = strdup(default_group ? default_group : "");
    if (cb) g->cb = *cb;
    g->dm = fp->d_model;
    g->dim = fp->embed_dim;
    g->slot_bytes = lloco_dtype_row_bytes(fp->slot_dtype, (int64_t)fp->n_summary * fp->d_model);
    g->st.bytes_total = -1;
    g->tok = lloco_model_tokenizer(lloco_compressor_model(c));
    g->t0 = lloco_time_now();
    if (!g->group) {
        lloco_ingester_free(g);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    *out = g;
    return 0;
}

void lloco_ingester_free(lloco_ingester *g) {
    if (!g) return;
    free(g->group);
    free(g->tokens);
    free(g->tok_end);
    free(g->slots);
    free(g->spans);
    free(g->texts);
    free(g->lens);
    free(g->vecs);
    free(g->chunks);
    free(g->ids);
    free(g);
}

const lloco_ingest_stats *lloco_ingester_stats(const lloco_ingester *g) { return &g->st; }
void lloco_ingester_expect_bytes(lloco_ingester *g, int64_t n) { g->st.bytes_total = n; }

static void report_progress(lloco_ingester *g) {
    g->st.seconds = lloco_time_now() - g->t0;
    if (g->cb.progress) g->cb.progress(g->cb.ctx, &g->st);
}

/* Byte offset of the first invalid UTF-8 sequence, or -1. */
static ptrdiff_t utf8_invalid_at(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (k <= 0) return (ptrdiff_t)i;
        i += (size_t)k;
    }
    return -1;
}

static int line_of(const char *s, size_t off) {
    int line = 1;
    for (size_t i = 0; i < off; i++) line += s[i] == '\n';
    return line;
}

static int reject(lloco_ingester *g, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int reject(lloco_ingester *g, const char *where, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    g->st.docs_rejected++;
    if (g->cb.problem) g->cb.problem(g->cb.ctx, where, why);
    report_progress(g);
    return lloco_error(LLOCO_ERR_INVAL, "%s: %s", where, why);
}

static int check_name(const char *what, const char *s, char *why, size_t cap) {
    size_t n = strlen(s);
    if (n > MAX_NAME_BYTES) snprintf(why, cap, "%s is %zu bytes (at most %d)", what, n, MAX_NAME_BYTES);
    else if (utf8_invalid_at(s, n) >= 0) snprintf(why, cap, "%s is not valid UTF-8", what);
    else return 0;
    return -1;
}

static int tokenize(lloco_ingester *g, const char *text, size_t len, int *n) {
    for (;;) {
        int rc = lloco_tokenizer_encode(g->tok, text, len, 0, 0, g->tokens, g->tok_cap, n);
        if (rc != LLOCO_ERR_FULL) return rc;
        int32_t *t = realloc(g->tokens, sizeof(int32_t) * (size_t)*n);
        size_t *e = realloc(g->tok_end, sizeof(size_t) * (size_t)*n);
        if (t) g->tokens = t;
        if (e) g->tok_end = e;
        if (!t || !e) return lloco_error(LLOCO_ERR_NOMEM, "out of memory for %d tokens", *n);
        g->tok_cap = *n;
    }
}

typedef struct {
    lloco_ingester *g;
} seg_ctx;

static int on_segment(void *ctx, int seg, int tb, int te, const void *slots) {
    lloco_ingester *g = ((seg_ctx *)ctx)->g;
    memcpy(g->slots + g->slot_bytes * (size_t)seg, slots, g->slot_bytes);
    g->spans[seg][0] = tb;
    g->spans[seg][1] = te;
    return 0;
}

/* Byte offsets after each token, from the bytes each token stands for. For
 * byte-level BPE over valid UTF-8 they add up to the text exactly; when
 * they do not (a tokenizer that normalises), returns -1 and segment texts
 * are not sliced from the original. */
static int token_offsets(lloco_ingester *g, int n, size_t len) {
    size_t off = 0;
    char buf[256];
    for (int i = 0; i < n; i++) {
        int k = lloco_tokenizer_piece(g->tok, g->tokens[i], 0, buf, sizeof buf);
        if (k < 0) return -1;
        off += (size_t)k;
        g->tok_end[i] = off;
    }
    return off == len ? 0 : -1;
}

/* A segment boundary inside a UTF-8 character moves forward to the next
 * character start, so every chunk text is valid UTF-8. */
static size_t char_start(const char *s, size_t len, size_t off) {
    while (off < len && ((unsigned char)s[off] & 0xC0) == 0x80) off++;
    return off;
}

/* Each segment's raw text: a slice of the original when the token pieces
 * add up to it, else the segments detokenized into one buffer (*decoded,
 * freed by the caller). */
static int segment_texts(lloco_ingester *g, const lloco_doc_src *d, int n_tok, int n_seg,
                         char **decoded) {
    if (token_offsets(g, n_tok, d->len) == 0) {
        for (int s = 0; s < n_seg; s++) {
            const int tb = g->spans[s][0], te = g->spans[s][1];
            size_t b = char_start(d->text, d->len, tb ? g->tok_end[tb - 1] : 0);
            size_t e = char_start(d->text, d->len, g->tok_end[te - 1]);
            g->texts[s] = d->text + b;
            g->lens[s] = e - b;
        }
        return 0;
    }
    size_t total = 0;
    for (int s = 0; s < n_seg; s++) {
        int need = lloco_tokenizer_decode(g->tok, g->tokens + g->spans[s][0],
                                          g->spans[s][1] - g->spans[s][0], 0, NULL, 0);
        g->lens[s] = (size_t)need;
        total += (size_t)need + 1;
    }
    char *buf = malloc(total);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    char *at = buf;
    for (int s = 0; s < n_seg; s++) {
        lloco_tokenizer_decode(g->tok, g->tokens + g->spans[s][0], g->spans[s][1] - g->spans[s][0],
                               0, at, (int)g->lens[s] + 1);
        g->texts[s] = at;
        at += g->lens[s] + 1;
    }
    *decoded = buf;
    return 0;
}

int lloco_ingest_doc(lloco_ingester *g, const lloco_doc_src *d) {
    const char *where = d->where ? d->where : d->id;
    const char *group = d->group ? d->group : g->group;
    const char *title = d->title ? d->title : d->id;
    char why[256];
    g->st.bytes_done += (int64_t)d->len;
    if (!d->id || !d->id[0]) return reject(g, where, "document has no id");
    if (check_name("id", d->id, why, sizeof why) || check_name("title", title, why, sizeof why) ||
        check_name("group", group, why, sizeof why))
        return reject(g, where, "%s", why);
    ptrdiff_t bad = utf8_invalid_at(d->text, d->len);
    if (bad >= 0)
        return reject(g, where, "invalid UTF-8 at byte %td (line %d of the text)", bad,
                      line_of(d->text, (size_t)bad));
    size_t nonblank = 0;
    for (size_t i = 0; i < d->len && !nonblank; i++)
        nonblank = !strchr(" \t\r\n\f\v", d->text[i]);
    if (!nonblank) return reject(g, where, "empty document '%s'", d->id);

    lloco_doc_in doc = {.id = d->id, .title = title, .group = group};
    XXH3_state_t *h = XXH3_createState();
    if (!h) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    XXH3_128bits_reset(h);
    XXH3_128bits_update(h, title, strlen(title) + 1);
    XXH3_128bits_update(h, group, strlen(group) + 1);
    XXH3_128bits_update(h, d->text, d->len);
    XXH128_canonicalFromHash((XXH128_canonical_t *)doc.content_hash, XXH3_128bits_digest(h));
    XXH3_freeState(h);

    lloco_store_txn *t;
    int rc = lloco_store_read_begin(g->s, &t);
    if (rc) return rc;
    lloco_doc_view old;
    int same = lloco_store_get_doc(t, d->id, &old) == 0 &&
               !memcmp(old.content_hash, doc.content_hash, sizeof doc.content_hash);
    lloco_store_read_end(t);
    if (same) {
        g->st.docs_unchanged++;
        report_progress(g);
        return 0;
    }

    double t0 = lloco_time_now();
    int n_tok;
    if ((rc = tokenize(g, d->text, d->len, &n_tok))) return rc;
    if (n_tok == 0) return reject(g, where, "document '%s' has no tokens", d->id);
    const int n_seg = lloco_compressor_n_segments(g->c, n_tok);
    if ((rc = grow_segments(g, n_seg))) return rc;
    seg_ctx sc = {g};
    if ((rc = lloco_compress(g->c, g->tokens, n_tok, on_segment, &sc))) return rc;
    double t1 = lloco_time_now();

    const lloco_compress_params *cp = lloco_compressor_params(g->c);
    char *decoded = NULL;
    if ((rc = segment_texts(g, d, n_tok, n_seg, &decoded))) return rc;
    for (int s = 0; s < n_seg; s++)
        g->chunks[s] = (lloco_chunk_in){.ordinal = (uint32_t)s,
                                        .tok_begin = (uint32_t)g->spans[s][0],
                                        .tok_end = (uint32_t)g->spans[s][1],
                                        .text = g->texts[s],
                                        .text_len = g->lens[s],
                                        .n_slots = cp->n_summary,
                                        .slots = g->slots + g->slot_bytes * (size_t)s,
                                        .vec = g->vecs + (size_t)s * (size_t)g->dim};
    rc = lloco_embedder_embed(g->e, g->texts, g->lens, n_seg, g->vecs);
    double t2 = lloco_time_now();
    int written = 0;
    doc.n_tokens = (uint64_t)n_tok;
    if (!rc) rc = lloco_store_put_doc(g->s, &doc, g->chunks, n_seg, g->ids, &written);
    free(decoded);
    if (!rc && written) rc = lloco_retriever_add(g->r, n_seg, g->ids, g->vecs);
    if (rc) return rc;
    g->st.compress_seconds += t1 - t0;
    g->st.embed_seconds += t2 - t1;
    g->st.store_seconds += lloco_time_now() - t2;
    g->st.positions += lloco_compressor_positions(g->c);
    if (written) {
        g->st.docs_written++;
        g->st.chunks += n_seg;
        g->st.tokens += n_tok;
    } else {
        g->st.docs_unchanged++;
    }
    report_progress(g);
    return 0;
}

static const char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    return b ? b + 1 : path;
}

static int has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    return n > e && !strcmp(path + n - e, ext);
}

/* The text of a .md's first "# " heading line, or NULL. */
static char *md_title(const char *text, size_t len) {
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (end - i > 2 && text[i] == '#' && text[i + 1] == ' ') {
            size_t b = i + 2, e = end;
            while (e > b && (text[e - 1] == '\r' || text[e - 1] == ' ')) e--;
            if (e > b) return strndup(text + b, e - b);
        }
        i = end + 1;
    }
    return NULL;
}

static int ingest_text(lloco_ingester *g, const char *path, const char *id, const char *text,
                       size_t len, int markdown) {
    char *title = markdown ? md_title(text, len) : NULL;
    lloco_doc_src d = {.id = id, .title = title ? title : base_name(path), .text = text, .len = len,
                       .where = path};
    int rc = lloco_ingest_doc(g, &d);
    free(title);
    return rc == LLOCO_ERR_INVAL ? 0 : rc; /* reported and skipped */
}

static const char *json_str(const cJSON *o, const char *key, int *wrong_type) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return NULL;
    if (!cJSON_IsString(v)) {
        *wrong_type = 1;
        return NULL;
    }
    return v->valuestring;
}

static int ingest_jsonl(lloco_ingester *g, const char *path, const char *text, size_t len) {
    char where[4200], idbuf[4200];
    int line = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len, n = end - i;
        const char *ln = text + i;
        i = end + 1;
        line++;
        snprintf(where, sizeof where, "%s:%d", path, line);
        size_t k = 0;
        while (k < n && strchr(" \t\r", ln[k])) k++;
        if (k == n) {
            g->st.bytes_done += (int64_t)n + 1;
            continue; /* blank line */
        }
        cJSON *o = cJSON_ParseWithLength(ln, n);
        int wrong = 0, rc = 0;
        const char *id = NULL, *title = NULL, *group = NULL, *body = NULL;
        if (o && cJSON_IsObject(o)) {
            id = json_str(o, "id", &wrong);
            title = json_str(o, "title", &wrong);
            group = json_str(o, "group", &wrong);
            body = json_str(o, "text", &wrong);
        }
        if (!o || !cJSON_IsObject(o)) {
            g->st.bytes_done += (int64_t)n + 1;
            rc = reject(g, where, "not a JSON object: %s", o ? "another JSON value" : "malformed JSON");
        } else if (wrong) {
            g->st.bytes_done += (int64_t)n + 1;
            rc = reject(g, where, "\"id\", \"title\", \"group\" and \"text\" must be strings");
        } else if (!body) {
            g->st.bytes_done += (int64_t)n + 1;
            rc = reject(g, where, "no \"text\"");
        } else {
            if (!id) {
                snprintf(idbuf, sizeof idbuf, "%s:%d", base_name(path), line);
                id = idbuf;
            }
            lloco_doc_src d = {.id = id, .title = title, .group = group, .text = body,
                               .len = strlen(body), .where = where};
            rc = lloco_ingest_doc(g, &d);
            g->st.bytes_done += (int64_t)n + 1 - (int64_t)d.len;
        }
        cJSON_Delete(o);
        if (rc && rc != LLOCO_ERR_INVAL) return rc;
    }
    return 0;
}

static int read_stdin(char **out, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_FILE_BYTES) {
                free(buf);
                return lloco_error(LLOCO_ERR_RANGE, "stdin: more than %zu bytes", MAX_FILE_BYTES);
            }
            char *p = realloc(buf, cap * 2);
            if (!p) {
                free(buf);
                return lloco_error(LLOCO_ERR_NOMEM, "out of memory reading stdin");
            }
            buf = p;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) break;
    }
    if (ferror(stdin)) {
        free(buf);
        return lloco_error(LLOCO_ERR_IO, "stdin: read error");
    }
    *out = buf;
    *len = n;
    return 0;
}

static int file_failed(lloco_ingester *g, const char *path, const char *why) {
    g->st.files_failed++;
    if (g->cb.problem) g->cb.problem(g->cb.ctx, path, why);
    return 0;
}

int lloco_ingest_file(lloco_ingester *g, const char *path) {
    int is_stdin = !strcmp(path, "-"), kind; /* 0 text, 1 markdown, 2 jsonl */
    if (is_stdin) kind = -1;
    else if (has_ext(path, ".jsonl")) kind = 2;
    else if (has_ext(path, ".md")) kind = 1;
    else if (has_ext(path, ".txt") || !strchr(base_name(path), '.')) kind = 0;
    else
        return file_failed(g, path,
                           "unsupported file type (.txt, .md, .jsonl, or plain text without an extension)");
    char *text = NULL;
    size_t len = 0;
    int rc = is_stdin ? read_stdin(&text, &len) : lloco_file_read(path, MAX_FILE_BYTES, &text, &len);
    if (rc == LLOCO_ERR_NOMEM) return rc;
    if (rc) return file_failed(g, path, lloco_last_error());
    if (kind < 0) {
        size_t k = 0;
        while (k < len && strchr(" \t\r\n", text[k])) k++;
        kind = k < len && text[k] == '{' ? 2 : 0;
    }
    const char *name = is_stdin ? "stdin" : path;
    if (kind == 2) rc = ingest_jsonl(g, name, text, len);
    else rc = ingest_text(g, name, name, text, len, kind == 1);
    free(text);
    return rc;
}

int lloco_ingest_finish(lloco_ingester *g) { return lloco_retriever_save(g->r); }
