/* engine: the answer pipeline's first half. Opens everything a question
 * needs (model, decoder, embedder, store, index, adapter bank) and turns a
 * query into the decoder's input: retrieval, chunk layout in document order,
 * summary slots or text in the mode's template, the chat template, the
 * group's adapter. Decoding is the scheduler's (sched.c).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

#define MAX_TOP_K 64

struct lloco_engine {
    lloco_model *model;
    lloco_decoder *dec;
    lloco_backend *emb_be; /* the embedder's own: it runs beside the decoder */
    lloco_embedder *emb;
    pthread_mutex_t emb_mu; /* one embedding at a time */
    lloco_store *store;
    lloco_retriever *ret;
    lloco_bank *bank;
    int n_ctx;
    int slots_ok;          /* the store was compressed with this model */
    char slots_why[512];   /* why not */
    char *templates[LLOCO_MODE_COUNT];
    char *system_prompt;
    char model_name[128];
    lloco_chat_format chat;
};

static const char *const k_mode_names[LLOCO_MODE_COUNT] = {"compressed", "text", "full", "none"};

const char *lloco_mode_name(lloco_mode m) {
    return m >= 0 && m < LLOCO_MODE_COUNT ? k_mode_names[m] : "?";
}

int lloco_mode_parse(const char *s, lloco_mode *out) {
    for (int i = 0; i < LLOCO_MODE_COUNT; i++)
        if (s && !strcmp(s, k_mode_names[i])) {
            *out = (lloco_mode)i;
            return 0;
        }
    return lloco_error(LLOCO_ERR_INVAL,
                       "unknown mode '%s' (expected compressed, text, full or none)", s ? s : "");
}

const char *lloco_mode_default_template(lloco_mode m) {
    if (m == LLOCO_MODE_TEXT || m == LLOCO_MODE_FULL)
        return "{context}\n\nAnswer the question using the text above.\nQuestion: {question}";
    return "{question}";
}

void lloco_engine_close(lloco_engine *e) {
    if (!e) return;
    lloco_bank_close(e->bank);
    lloco_retriever_close(e->ret);
    lloco_store_close(e->store);
    lloco_embedder_close(e->emb);
    lloco_backend_free(e->emb_be);
    lloco_decoder_free(e->dec);
    lloco_model_close(e->model);
    for (int i = 0; i < LLOCO_MODE_COUNT; i++) free(e->templates[i]);
    free(e->system_prompt);
    pthread_mutex_destroy(&e->emb_mu);
    free(e);
}

/* Compressed mode reads slots: they only mean something to the model that
 * wrote them. */
static int check_slots(lloco_engine *e) {
    const lloco_store_fingerprint *fp = lloco_store_fingerprint_of(e->store);
    char hash[33];
    int rc = lloco_model_hash(e->model, hash);
    if (rc) return rc;
    if (fp->d_model != lloco_model_hparams(e->model)->d_model || strcmp(fp->model_hash, hash))
        snprintf(e->slots_why, sizeof e->slots_why,
                 "store %s was compressed with model %s (d_model %d), not with %s: compressed "
                 "mode needs that model; text, full and none modes work",
                 lloco_store_dir(e->store), fp->model_hash, fp->d_model,
                 lloco_engine_model_name(e));
    else
        e->slots_ok = 1;
    return 0;
}

int lloco_engine_open(const lloco_engine_params *p, lloco_engine **out) {
    *out = NULL;
    if (!p->store_dir || !p->model_path || !p->embedder_dir)
        return lloco_error(LLOCO_ERR_INVAL, "engine: store, model and embedder are required");
    lloco_engine *e = calloc(1, sizeof *e);
    if (!e) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&e->emb_mu, NULL);
    const char *base = strrchr(p->model_path, '/');
    snprintf(e->model_name, sizeof e->model_name, "%s", base && base[1] ? base + 1 : p->model_path);
    char *dot = strrchr(e->model_name, '.');
    if (dot && !strcmp(dot, ".gguf")) *dot = '\0';

    int rc = 0;
    for (int i = 0; i < LLOCO_MODE_COUNT && !rc; i++) {
        const char *t = p->templates[i] ? p->templates[i] : lloco_mode_default_template(i);
        if (!(e->templates[i] = strdup(t))) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    if (!rc && p->system_prompt && !(e->system_prompt = strdup(p->system_prompt)))
        rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = p->n_threads;
    if (!rc) rc = lloco_model_open(p->model_path, &e->model);
    if (!rc) rc = lloco_decoder_create(e->model, &dp, &e->dec);
    if (!rc) rc = lloco_backend_create(LLOCO_BACKEND_CPU, 1, &e->emb_be);
    if (!rc) rc = lloco_embedder_open(p->embedder_dir, e->emb_be, &e->emb);
    if (!rc) rc = lloco_store_open(p->store_dir, NULL, 0, &e->store);
    if (!rc) {
        const lloco_store_fingerprint *fp = lloco_store_fingerprint_of(e->store);
        if (strcmp(fp->embedder_hash, lloco_embedder_hash(e->emb)))
            rc = lloco_error(LLOCO_ERR_MISMATCH,
                             "store %s was indexed with embedder %s, %s is %s", p->store_dir,
                             fp->embedder_hash, p->embedder_dir, lloco_embedder_hash(e->emb));
    }
    if (!rc) rc = lloco_retriever_open(e->store, NULL, &e->ret);
    if (!rc) rc = check_slots(e);
    if (!rc && p->adapters_dir) {
        lloco_bank_params bp = {.dir = p->adapters_dir, .budget_bytes = p->adapter_budget_bytes};
        rc = lloco_bank_open(&bp, e->model, &e->bank);
    }
    if (rc) {
        lloco_engine_close(e);
        return rc;
    }
    const int train = lloco_model_hparams(e->model)->n_ctx_train;
    e->n_ctx = p->n_ctx > 0 && p->n_ctx < train ? p->n_ctx : train;
    e->chat = lloco_chat_detect(e->model);
    *out = e;
    return 0;
}

lloco_decoder *lloco_engine_decoder(lloco_engine *e) { return e->dec; }
const lloco_model *lloco_engine_model(const lloco_engine *e) { return e->model; }
lloco_bank *lloco_engine_bank(lloco_engine *e) { return e->bank; }
lloco_store *lloco_engine_store(lloco_engine *e) { return e->store; }
int lloco_engine_n_ctx(const lloco_engine *e) { return e->n_ctx; }
const char *lloco_engine_model_name(const lloco_engine *e) { return e->model_name; }

void lloco_prepared_free(lloco_prepared *p) {
    if (!p) return;
    free(p->tokens);
    free(p->embd);
    free(p->group);
    free(p->adapter);
    for (int i = 0; i < p->n_chunks; i++) {
        free(p->chunks[i].doc_id);
        free(p->chunks[i].text);
    }
    free(p->chunks);
    memset(p, 0, sizeof *p);
}

/* ---- retrieval ------------------------------------------------------------ */

typedef struct {
    uint64_t id;
    float score;
    int doc_rank; /* rank of the document's best hit */
    uint32_t ordinal;
} pick;

static void keep_best(pick *best, int k, int *n, uint64_t id, float score) {
    int at;
    if (*n < k) at = (*n)++;
    else if (score > best[k - 1].score) at = k - 1;
    else return;
    while (at > 0 && best[at - 1].score < score) {
        best[at] = best[at - 1];
        at--;
    }
    best[at] = (pick){.id = id, .score = score};
}

/* Every chunk of the given documents, scored against q exactly. */
static int score_docs(lloco_store_txn *t, const lloco_query *q, const float *qv, int dim, pick *best,
                      int k, int *n, char *group, size_t gcap) {
    for (int i = 0; i < q->n_doc_ids; i++) {
        lloco_doc_view d;
        int rc = lloco_store_get_doc(t, q->doc_ids[i], &d);
        if (rc == LLOCO_ERR_NOTFOUND)
            return lloco_error(rc, "unknown document '%s'", q->doc_ids[i]);
        if (rc) return rc;
        if (q->group && strcmp(q->group, d.group))
            return lloco_error(LLOCO_ERR_INVAL, "document '%s' is in group '%s', not '%s'", d.id,
                               d.group, q->group);
        if (i == 0) snprintf(group, gcap, "%s", d.group);
        else if (strcmp(group, d.group))
            return lloco_error(LLOCO_ERR_INVAL,
                               "documents '%s' and '%s' are in different groups ('%s', '%s'): one "
                               "answer uses one group's adapter",
                               q->doc_ids[0], d.id, group, d.group);
        for (uint32_t c = 0; c < d.n_chunks; c++) {
            lloco_chunk_view cv;
            if ((rc = lloco_store_get_chunk(t, d.first_chunk + c, &cv))) return rc;
            if (cv.dim != dim) return lloco_error(LLOCO_ERR_FORMAT, "chunk vector of %d floats", cv.dim);
            float s = 0;
            for (int j = 0; j < dim; j++) s += cv.vec[j] * qv[j];
            keep_best(best, k, n, cv.id, s);
        }
    }
    return 0;
}

static int cmp_pick(const void *a, const void *b) {
    const pick *x = a, *y = b;
    if (x->doc_rank != y->doc_rank) return x->doc_rank - y->doc_rank;
    return (x->ordinal > y->ordinal) - (x->ordinal < y->ordinal);
}

/* Orders picks by document (best document first), then by ordinal. */
static int document_order(lloco_store_txn *t, pick *p, int n) {
    const char *docs[MAX_TOP_K];
    for (int i = 0; i < n; i++) {
        lloco_chunk_view c;
        int rc = lloco_store_get_chunk(t, p[i].id, &c);
        if (rc) return rc;
        p[i].ordinal = c.ordinal;
        docs[i] = c.doc_id;
        p[i].doc_rank = i;
        for (int j = 0; j < i; j++)
            if (!strcmp(docs[j], c.doc_id)) {
                p[i].doc_rank = p[j].doc_rank;
                break;
            }
    }
    qsort(p, (size_t)n, sizeof *p, cmp_pick);
    return 0;
}

/* ---- text ------------------------------------------------------------------ */

/* tmpl with {context} and {question} replaced. */
static int fill_template(const char *tmpl, const char *context, size_t context_len,
                         const char *question, char **out) {
    lloco_buf b = {0};
    int rc = lloco_buf_append(&b, "", 0);
    for (const char *p = tmpl; !rc && *p;) {
        if (!strncmp(p, "{context}", 9)) {
            rc = lloco_buf_append(&b, context, context_len);
            p += 9;
        } else if (!strncmp(p, "{question}", 10)) {
            rc = lloco_buf_append(&b, question, strlen(question));
            p += 10;
        } else {
            rc = lloco_buf_append(&b, p, 1);
            p++;
        }
    }
    if (rc) lloco_buf_free(&b);
    *out = rc ? NULL : b.data;
    return rc;
}

/* The prompt text around a context: the filled template, in the chat
 * template unless raw. */
static int render_prompt(lloco_engine *e, const lloco_query *q, const char *question,
                         const char *context, size_t context_len, char **out) {
    char *user = NULL;
    int rc = fill_template(e->templates[q->mode], context, context_len, question, &user);
    if (rc || q->raw) {
        *out = user;
        return rc;
    }
    int n = q->n_messages > 0 ? q->n_messages : 1;
    lloco_chat_msg *msgs = calloc((size_t)n + 1, sizeof *msgs);
    if (!msgs) {
        free(user);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    int k = 0, has_system = 0;
    for (int i = 0; i < q->n_messages; i++) has_system |= !strcmp(q->messages[i].role, "system");
    if (e->system_prompt && !has_system) msgs[k++] = (lloco_chat_msg){"system", e->system_prompt};
    int last_user = -1;
    for (int i = 0; i < q->n_messages; i++) {
        if (!strcmp(q->messages[i].role, "user")) last_user = k;
        msgs[k++] = q->messages[i];
    }
    if (q->n_messages == 0) last_user = k, msgs[k++] = (lloco_chat_msg){"user", NULL};
    msgs[last_user].content = user;
    rc = lloco_chat_render(e->chat, msgs, k, 1, out);
    free(msgs);
    free(user);
    return rc;
}

static int tokenize(const lloco_tokenizer *tok, const char *text, int add_bos, int32_t **ids,
                    int *n) {
    int cap = (int)(strlen(text) + 16 > 1u << 30 ? 1u << 30 : strlen(text) + 16);
    *ids = malloc(sizeof(int32_t) * (size_t)cap);
    if (!*ids) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    return lloco_tokenizer_encode(tok, text, strlen(text), add_bos, 1, *ids, cap, n);
}

/* ---- prepare --------------------------------------------------------------- */

static const char *question_of(const lloco_query *q) {
    if (q->question) return q->question;
    for (int i = q->n_messages - 1; i >= 0; i--)
        if (!strcmp(q->messages[i].role, "user")) return q->messages[i].content;
    return NULL;
}

/* The chunks to use (document order) for modes that retrieve. */
static int retrieve(lloco_engine *e, lloco_store_txn *t, const lloco_query *q, const char *question,
                    pick *best, int *n_best, char *group, size_t gcap) {
    const int dim = lloco_embedder_dim(e->emb);
    int k = q->top_k > 0 ? (q->top_k < MAX_TOP_K ? q->top_k : MAX_TOP_K) : 5;
    float *qv = malloc(sizeof(float) * (size_t)dim);
    if (!qv) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&e->emb_mu);
    size_t len = strlen(question);
    int rc = lloco_embedder_embed(e->emb, &question, &len, 1, qv);
    pthread_mutex_unlock(&e->emb_mu);
    *n_best = 0;
    if (!rc && q->n_doc_ids > 0) {
        rc = score_docs(t, q, qv, dim, best, k, n_best, group, gcap);
    } else if (!rc) {
        lloco_hit hits[MAX_TOP_K];
        int n = 0;
        rc = lloco_retriever_search(e->ret, t, qv, k, q->group, hits, &n);
        for (int i = 0; !rc && i < n; i++) {
            lloco_chunk_view c;
            lloco_doc_view d;
            rc = lloco_store_get_chunk(t, hits[i].chunk_id, &c);
            if (!rc) rc = lloco_store_get_doc(t, c.doc_id, &d);
            if (rc) break;
            if (i == 0) snprintf(group, gcap, "%s", d.group);
            else if (strcmp(group, d.group)) continue;
            best[(*n_best)++] = (pick){.id = hits[i].chunk_id, .score = hits[i].score};
        }
        if (!rc && n == 0)
            rc = q->group ? lloco_error(LLOCO_ERR_NOTFOUND, "no documents in group '%s'", q->group)
                          : lloco_error(LLOCO_ERR_NOTFOUND, "the store has no documents");
    }
    free(qv);
    if (!rc && *n_best == 0) rc = lloco_error(LLOCO_ERR_NOTFOUND, "the documents have no chunks");
    if (!rc && q->group) snprintf(group, gcap, "%s", q->group);
    return rc ? rc : document_order(t, best, *n_best);
}

/* Full mode: every chunk of the best document, in order. */
static int whole_document(lloco_store_txn *t, pick *best, int *n_best, pick **all, int *n_all) {
    lloco_chunk_view c;
    lloco_doc_view d;
    int rc = lloco_store_get_chunk(t, best[0].id, &c);
    if (!rc) rc = lloco_store_get_doc(t, c.doc_id, &d);
    if (rc) return rc;
    *all = calloc(d.n_chunks ? d.n_chunks : 1, sizeof **all);
    if (!*all) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < d.n_chunks; i++) {
        (*all)[i] = (pick){.id = d.first_chunk + i, .ordinal = i};
        for (int j = 0; j < *n_best; j++)
            if (best[j].id == d.first_chunk + i) (*all)[i].score = best[j].score;
    }
    *n_all = (int)d.n_chunks;
    return 0;
}

static int record_chunks(lloco_store_txn *t, const pick *p, int n, lloco_prepared *out) {
    out->chunks = calloc((size_t)(n ? n : 1), sizeof *out->chunks);
    if (!out->chunks) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        lloco_chunk_view c;
        int rc = lloco_store_get_chunk(t, p[i].id, &c);
        if (rc) return rc;
        lloco_used_chunk *u = &out->chunks[out->n_chunks++];
        *u = (lloco_used_chunk){.chunk_id = c.id, .ordinal = c.ordinal, .tok_begin = c.tok_begin,
                                .tok_end = c.tok_end, .score = p[i].score, .n_slots = c.n_slots};
        u->text = malloc(c.text_len + 1);
        if (!(u->doc_id = strdup(c.doc_id)) || !u->text)
            return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        memcpy(u->text, c.text, c.text_len);
        u->text[c.text_len] = '\0';
        u->text_len = c.text_len;
        out->n_raw_tokens += c.tok_end - c.tok_begin;
    }
    return 0;
}

/* [slots of every chunk] ++ prompt tokens (no BOS). */
static int layout_compressed(lloco_engine *e, lloco_store_txn *t, const int32_t *prompt, int n_prompt,
                             lloco_prepared *out) {
    const int dm = lloco_model_hparams(e->model)->d_model;
    int n_slots = 0;
    for (int i = 0; i < out->n_chunks; i++) n_slots += out->chunks[i].n_slots;
    const int n = n_slots + n_prompt;
    out->tokens = malloc(sizeof(int32_t) * (size_t)n);
    out->embd = n_slots ? malloc(sizeof(float) * (size_t)n_slots * (size_t)dm) : NULL;
    if (!out->tokens || (n_slots && !out->embd)) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    int at = 0;
    for (int i = 0; i < out->n_chunks; i++) {
        lloco_chunk_view c;
        int rc = lloco_store_get_chunk(t, out->chunks[i].chunk_id, &c);
        if (rc) return rc;
        const size_t row = lloco_dtype_row_bytes(c.slot_dtype, dm);
        for (int s = 0; s < c.n_slots; s++, at++) {
            rc = lloco_dequantize_row(c.slot_dtype, (const char *)c.slots + row * (size_t)s,
                                      out->embd + (size_t)at * (size_t)dm, dm);
            if (rc) return rc;
            out->tokens[at] = LLOCO_TOKEN_EMBD;
        }
    }
    memcpy(out->tokens + at, prompt, sizeof(int32_t) * (size_t)n_prompt);
    out->n_tokens = n;
    out->n_slots = n_slots;
    out->n_context_positions = n_slots;
    return 0;
}

/* The texts of the chunks, in order ("\n\n" between chunks of different
 * documents or non-adjacent ones; adjacent segments join as they were). */
static int chunk_texts(const lloco_prepared *p, lloco_buf *ctx) {
    int rc = lloco_buf_append(ctx, "", 0);
    for (int i = 0; !rc && i < p->n_chunks; i++) {
        const lloco_used_chunk *c = &p->chunks[i];
        int adjacent = i > 0 && !strcmp(p->chunks[i - 1].doc_id, c->doc_id) &&
                       p->chunks[i - 1].ordinal + 1 == c->ordinal;
        if (i > 0 && !adjacent) rc = lloco_buf_append(ctx, "\n\n", 2);
        if (!rc) rc = lloco_buf_append(ctx, c->text, c->text_len);
    }
    return rc;
}

/* Full mode: cut the document's text to `budget` tokens. */
static int cut_to_tokens(const lloco_tokenizer *tok, lloco_buf *ctx, int budget, int *cut) {
    int32_t *ids = NULL;
    int n = 0;
    int rc = tokenize(tok, ctx->data, 0, &ids, &n);
    *cut = 0;
    if (!rc && n > budget) {
        *cut = 1;
        if (budget < 0) budget = 0;
        int need = lloco_tokenizer_decode(tok, ids, budget, 0, NULL, 0);
        char *s = malloc((size_t)need + 1);
        if (!s) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        else {
            lloco_tokenizer_decode(tok, ids, budget, 0, s, need + 1);
            free(ctx->data);
            ctx->data = s;
            ctx->len = strlen(s);
            ctx->cap = (size_t)need + 1;
        }
    }
    free(ids);
    return rc;
}

/* 1 (which stops the walk) for a document of group ctx */
static int doc_in_group(void *ctx, const lloco_doc_view *d) { return !strcmp(d->group, ctx); }

/* Mode none retrieves nothing, so a group it names must be known some other
 * way: by an adapter assignment or a document. */
static int check_group_known(lloco_engine *e, const char *group) {
    lloco_store_txn *t;
    int rc = lloco_store_read_begin(e->store, &t);
    if (rc) return rc;
    rc = lloco_store_foreach_doc(t, doc_in_group, (void *)group);
    lloco_store_read_end(t);
    if (rc == 1) return 0;
    return rc ? rc : lloco_error(LLOCO_ERR_NOTFOUND, "no documents and no adapter in group '%s'",
                                 group);
}

int lloco_engine_prepare(lloco_engine *e, const lloco_query *q, lloco_prepared *out) {
    memset(out, 0, sizeof *out);
    const double t0 = lloco_time_now();
    const lloco_tokenizer *tok = lloco_model_tokenizer(e->model);
    const char *question = question_of(q);
    if (q->mode < 0 || q->mode >= LLOCO_MODE_COUNT)
        return lloco_error(LLOCO_ERR_INVAL, "unknown mode %d", (int)q->mode);
    if (!question || !question[0])
        return lloco_error(LLOCO_ERR_INVAL, "empty question (no user message)");
    if (q->max_tokens < 0) return lloco_error(LLOCO_ERR_INVAL, "max_tokens must be >= 0");
    if (q->mode == LLOCO_MODE_COMPRESSED && !e->slots_ok)
        return lloco_error(LLOCO_ERR_MISMATCH, "%s", e->slots_why);

    lloco_store_txn *t = NULL;
    pick best[MAX_TOP_K], *all = NULL;
    int n_best = 0, n_all = 0;
    char group[256] = "";
    lloco_buf ctx = {0};
    char *prompt = NULL;
    int32_t *ids = NULL;
    int n_ids = 0;
    int rc = lloco_store_read_begin(e->store, &t);
    if (!rc && q->mode != LLOCO_MODE_NONE)
        rc = retrieve(e, t, q, question, best, &n_best, group, sizeof group);
    else if (q->group)
        snprintf(group, sizeof group, "%s", q->group);
    if (!rc && q->mode == LLOCO_MODE_FULL) rc = whole_document(t, best, &n_best, &all, &n_all);
    if (!rc && q->mode != LLOCO_MODE_NONE)
        rc = q->mode == LLOCO_MODE_FULL ? record_chunks(t, all, n_all, out)
                                        : record_chunks(t, best, n_best, out);
    if (!rc && (q->mode == LLOCO_MODE_TEXT || q->mode == LLOCO_MODE_FULL)) rc = chunk_texts(out, &ctx);
    const int add_bos = q->mode != LLOCO_MODE_COMPRESSED && lloco_tokenizer_add_bos(tok);

    /* The prompt without its context: what the question and template cost. */
    int n_bare = 0;
    if (!rc) rc = render_prompt(e, q, question, "", 0, &prompt);
    if (!rc) rc = tokenize(tok, prompt, add_bos, &ids, &n_bare);
    if (!rc && q->mode == LLOCO_MODE_FULL) {
        free(ids);
        ids = NULL;
        rc = cut_to_tokens(tok, &ctx, e->n_ctx - q->max_tokens - n_bare - 8, &out->truncated);
    }
    if (!rc && ctx.data) {
        free(prompt);
        free(ids);
        ids = NULL;
        prompt = NULL;
        rc = render_prompt(e, q, question, ctx.data, ctx.len, &prompt);
        if (!rc) rc = tokenize(tok, prompt, add_bos, &ids, &n_ids);
        out->n_context_positions = n_ids - n_bare;
    } else {
        n_ids = n_bare;
    }
    if (!rc && q->mode == LLOCO_MODE_COMPRESSED) {
        rc = layout_compressed(e, t, ids, n_ids, out);
    } else if (!rc) {
        out->tokens = ids;
        out->n_tokens = n_ids;
        ids = NULL;
    }
    lloco_store_read_end(t);
    free(all);
    lloco_buf_free(&ctx);
    free(prompt);
    free(ids);

    /* the adapter: given, or the group's */
    char adapter[256] = "";
    if (!rc && q->adapter) snprintf(adapter, sizeof adapter, "%s", q->adapter);
    else if (!rc && group[0]) {
        int g = lloco_store_group_get(e->store, group, adapter, sizeof adapter);
        if (g && g != LLOCO_ERR_NOTFOUND) rc = g;
        if (g == LLOCO_ERR_NOTFOUND && q->mode == LLOCO_MODE_NONE) rc = check_group_known(e, group);
    }
    if (!rc && adapter[0]) {
        if (!e->bank)
            rc = lloco_error(LLOCO_ERR_NOTFOUND,
                             "adapter '%s'%s%s%s: no adapters directory is configured (--adapters-dir "
                             "or $LLOCO_ADAPTERS)", adapter,
                             q->adapter ? "" : " (group '", q->adapter ? "" : group,
                             q->adapter ? "" : "')");
        else rc = lloco_bank_prefetch(e->bank, adapter);
        if (!rc && !(out->adapter = strdup(adapter))) rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    if (!rc && (group[0] || q->mode != LLOCO_MODE_NONE) && !(out->group = strdup(group)))
        rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    if (!rc && out->n_tokens + q->max_tokens > e->n_ctx)
        rc = lloco_error(LLOCO_ERR_RANGE,
                         "the input takes %d positions and max_tokens %d more: over the context "
                         "of %d",
                         out->n_tokens, q->max_tokens, e->n_ctx);
    if (!rc && out->n_tokens == 0) rc = lloco_error(LLOCO_ERR_INVAL, "empty prompt");
    out->t_retrieve = lloco_time_now() - t0;
    if (rc) lloco_prepared_free(out);
    return rc;
}
