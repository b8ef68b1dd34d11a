/* generate: the prefill-then-sample loop shared by `lloco generate`, `lloco
 * chat` and the server's single-sequence path: streaming detokenization,
 * stop tokens, stop strings held back until they can no longer match.
 */
#include <stdlib.h>
#include <string.h>

#include "kv_internal.h"
#include "model_internal.h"

void lloco_generate_params_default(lloco_generate_params *p) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 128;
    lloco_sampler_params_default(&p->sampling);
}

typedef struct {
    char *buf;
    size_t len, cap;
} text_buf;

static int text_append(text_buf *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->cap + n + 1) * 2;
        char *b = realloc(t->buf, cap);
        if (!b) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        t->buf = b;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
    return 0;
}

/* How many bytes of pending text are final: everything before a complete
 * stop string (found = 1), else all but the longest tail that could still
 * grow into one. */
static size_t final_prefix(const text_buf *t, const lloco_generate_params *p, int *found) {
    *found = 0;
    size_t cut = t->len;
    for (int i = 0; i < p->n_stop; i++) {
        const char *hit = strstr(t->buf, p->stop[i]);
        if (hit && (size_t)(hit - t->buf) < cut) {
            cut = (size_t)(hit - t->buf);
            *found = 1;
        }
    }
    if (*found) return cut;
    for (int i = 0; i < p->n_stop; i++) {
        size_t sl = strlen(p->stop[i]);
        for (size_t k = sl - 1; k > 0; k--) {
            if (k <= t->len && t->len - k < cut && !memcmp(t->buf + t->len - k, p->stop[i], k)) {
                cut = t->len - k;
                break;
            }
        }
    }
    return cut;
}

static int emit(const lloco_generate_params *p, text_buf *t, size_t n) {
    int stop = 0;
    if (n && p->on_text) stop = p->on_text(t->buf, n, p->user);
    if (!t->buf) return stop; /* nothing appended yet */
    memmove(t->buf, t->buf + n, t->len - n + 1);
    t->len -= n;
    return stop;
}

int lloco_generate(lloco_decoder *d, lloco_kv *kv, const int32_t *prompt, int n_prompt,
                   const lloco_generate_params *p, int32_t *out_ids, int out_cap,
                   lloco_generate_stats *stats) {
    const lloco_model *m = lloco_decoder_model(d);
    const lloco_tokenizer *tok = m->tok;
    int n_vocab = m->hp.n_vocab;
    lloco_generate_stats st = {.n_prompt = n_prompt};
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0]) return lloco_error(LLOCO_ERR_INVAL, "empty stop string");
    if (n_prompt <= 0) return lloco_error(LLOCO_ERR_INVAL, "empty prompt");
    if (kv->len + n_prompt > kv->max)
        return lloco_error(LLOCO_ERR_FULL, "prompt of %d tokens does not fit the context of %d",
                           n_prompt, kv->max - kv->len);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    lloco_sampler *smp = NULL;
    text_buf text = {0};
    int rc = logits ? lloco_sampler_create(&p->sampling, n_vocab, &smp)
                    : lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    if (rc) goto done;
    lloco_detok dt;
    lloco_detok_init(&dt, tok, 0);

    double t0 = lloco_time_now();
    lloco_seq_batch b = {.kv = kv, .n = n_prompt, .tokens = prompt, .n_out = 1, .logits = logits,
                         .adapter = p->adapter};
    if ((rc = lloco_decoder_forward(d, &b, 1))) goto done;
    double t1 = lloco_time_now();
    st.t_prefill = t1 - t0;
    if (p->prompt_logits) memcpy(p->prompt_logits, logits, sizeof(float) * (size_t)n_vocab);
    st.stop = LLOCO_STOP_LENGTH;
    char piece[256];
    for (int i = 0; i < p->max_tokens; i++) {
        int32_t id = lloco_sampler_sample(smp, logits);
        if (lloco_tokenizer_is_eog(tok, id)) {
            st.stop = LLOCO_STOP_EOG;
            break;
        }
        if (out_ids && st.n_generated < out_cap) out_ids[st.n_generated] = id;
        st.n_generated++;
        /* No text for ids the tokenizer lacks (padded vocabularies) or for
         * pieces over 256 bytes, which are not text. */
        int n = lloco_detok_push(&dt, id, piece, sizeof piece);
        if (n < 0 || n > (int)sizeof piece) n = 0;
        if ((rc = text_append(&text, piece, (size_t)n))) goto done;
        int found;
        size_t fin = final_prefix(&text, p, &found);
        if (emit(p, &text, fin)) {
            st.stop = LLOCO_STOP_CALLBACK;
            break;
        }
        if (found) {
            st.stop = LLOCO_STOP_STRING;
            text.len = 0;
            break;
        }
        if (i + 1 == p->max_tokens) break;
        if (kv->len >= kv->max) {
            st.stop = LLOCO_STOP_CONTEXT;
            break;
        }
        b = (lloco_seq_batch){.kv = kv, .n = 1, .tokens = &id, .n_out = 1, .logits = logits,
                              .adapter = p->adapter};
        if ((rc = lloco_decoder_forward(d, &b, 1))) goto done;
    }
    if (st.stop != LLOCO_STOP_STRING && st.stop != LLOCO_STOP_CALLBACK) {
        int n = lloco_detok_flush(&dt, piece, sizeof piece);
        if (n > 0 && n <= (int)sizeof piece && (rc = text_append(&text, piece, (size_t)n))) goto done;
        emit(p, &text, text.len);
    }
    st.t_decode = lloco_time_now() - t1;
done:
    free(text.buf);
    free(logits);
    lloco_sampler_free(smp);
    if (stats) *stats = st;
    return rc;
}
