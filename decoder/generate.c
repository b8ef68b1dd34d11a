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

struct lloco_textout {
    lloco_detok dt;
    char **stop;
    int n_stop;
    int (*on_text)(const char *text, size_t len, void *user);
    void *user;
    lloco_buf text; /* pending: decoded but maybe the start of a stop string */
    int ended;
};

int lloco_textout_create(const lloco_tokenizer *t, const char *const *stop, int n_stop,
                         int (*on_text)(const char *text, size_t len, void *user), void *user,
                         lloco_textout **out) {
    *out = NULL;
    for (int i = 0; i < n_stop; i++)
        if (!stop[i] || !stop[i][0]) return lloco_error(LLOCO_ERR_INVAL, "empty stop string");
    lloco_textout *o = calloc(1, sizeof *o);
    if (!o || (n_stop && !(o->stop = calloc((size_t)n_stop, sizeof *o->stop)))) {
        free(o);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_stop; i++, o->n_stop++)
        if (!(o->stop[i] = strdup(stop[i]))) {
            lloco_textout_free(o);
            return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        }
    lloco_detok_init(&o->dt, t, 0);
    o->on_text = on_text;
    o->user = user;
    *out = o;
    return 0;
}

void lloco_textout_free(lloco_textout *o) {
    if (!o) return;
    for (int i = 0; i < o->n_stop; i++) free(o->stop[i]);
    free(o->stop);
    lloco_buf_free(&o->text);
    free(o);
}

/* How many bytes of pending text are final: everything before a complete
 * stop string (found = 1), else all but the longest tail that could still
 * grow into one. */
static size_t final_prefix(const lloco_textout *o, int *found) {
    *found = 0;
    const char *buf = o->text.data;
    const size_t len = o->text.len;
    size_t cut = len;
    for (int i = 0; buf && i < o->n_stop; i++) {
        const char *hit = strstr(buf, o->stop[i]);
        if (hit && (size_t)(hit - buf) < cut) {
            cut = (size_t)(hit - buf);
            *found = 1;
        }
    }
    if (*found) return cut;
    for (int i = 0; i < o->n_stop; i++) {
        size_t sl = strlen(o->stop[i]);
        for (size_t k = sl - 1; k > 0; k--) {
            if (k <= len && len - k < cut && !memcmp(buf + len - k, o->stop[i], k)) {
                cut = len - k;
                break;
            }
        }
    }
    return cut;
}

/* Hands the first n pending bytes to on_text; 1 if it asked to stop. */
static int emit(lloco_textout *o, size_t n) {
    lloco_buf *t = &o->text;
    int stop = 0;
    if (n && o->on_text) stop = o->on_text(t->data, n, o->user) != 0;
    if (!t->data) return stop; /* nothing appended yet */
    memmove(t->data, t->data + n, t->len - n + 1);
    t->len -= n;
    return stop;
}

int lloco_textout_push(lloco_textout *o, int32_t id, lloco_stop_reason *stop) {
    if (o->ended) return 1;
    /* No text for ids the tokenizer lacks (padded vocabularies) or for
     * pieces over 256 bytes, which are not text. */
    char piece[256];
    int n = lloco_detok_push(&o->dt, id, piece, sizeof piece);
    if (n < 0 || n > (int)sizeof piece) n = 0;
    int rc = lloco_buf_append(&o->text, piece, (size_t)n);
    if (rc) return rc;
    int found;
    size_t fin = final_prefix(o, &found);
    if (emit(o, fin)) {
        *stop = LLOCO_STOP_CALLBACK;
        return o->ended = 1;
    }
    if (found) {
        *stop = LLOCO_STOP_STRING;
        o->text.len = 0;
        return o->ended = 1;
    }
    return 0;
}

int lloco_textout_finish(lloco_textout *o) {
    if (o->ended) return 0;
    o->ended = 1;
    char piece[16];
    int n = lloco_detok_flush(&o->dt, piece, sizeof piece);
    int rc = n > 0 && n <= (int)sizeof piece ? lloco_buf_append(&o->text, piece, (size_t)n) : 0;
    if (!rc) emit(o, o->text.len);
    return rc;
}

int lloco_generate(lloco_decoder *d, lloco_kv *kv, const int32_t *prompt, int n_prompt,
                   const lloco_generate_params *p, int32_t *out_ids, int out_cap,
                   lloco_generate_stats *stats) {
    const lloco_model *m = lloco_decoder_model(d);
    const lloco_tokenizer *tok = m->tok;
    int n_vocab = m->hp.n_vocab;
    lloco_generate_stats st = {.n_prompt = n_prompt};
    if (n_prompt <= 0) return lloco_error(LLOCO_ERR_INVAL, "empty prompt");
    if (kv->len + n_prompt > kv->max)
        return lloco_error(LLOCO_ERR_FULL, "prompt of %d tokens does not fit the context of %d",
                           n_prompt, kv->max - kv->len);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    lloco_sampler *smp = NULL;
    lloco_textout *text = NULL;
    int rc = logits ? lloco_sampler_create(&p->sampling, n_vocab, &smp)
                    : lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    if (!rc) rc = lloco_textout_create(tok, p->stop, p->n_stop, p->on_text, p->user, &text);
    if (rc) goto done;

    double t0 = lloco_time_now();
    lloco_seq_batch b = {.kv = kv, .n = n_prompt, .tokens = prompt, .n_out = 1, .logits = logits,
                         .adapter = p->adapter};
    if ((rc = lloco_decoder_forward(d, &b, 1))) goto done;
    double t1 = lloco_time_now();
    st.t_prefill = t1 - t0;
    if (p->prompt_logits) memcpy(p->prompt_logits, logits, sizeof(float) * (size_t)n_vocab);
    st.stop = LLOCO_STOP_LENGTH;
    for (int i = 0; i < p->max_tokens; i++) {
        int32_t id = lloco_sampler_sample(smp, logits);
        if (!p->ignore_eos && lloco_tokenizer_is_eog(tok, id)) {
            st.stop = LLOCO_STOP_EOG;
            break;
        }
        if (out_ids && st.n_generated < out_cap) out_ids[st.n_generated] = id;
        st.n_generated++;
        if ((rc = lloco_textout_push(text, id, &st.stop)) != 0) {
            if (rc > 0) rc = 0;
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
    if (!rc) rc = lloco_textout_finish(text);
    st.t_decode = lloco_time_now() - t1;
done:
    lloco_textout_free(text);
    free(logits);
    lloco_sampler_free(smp);
    if (stats) *stats = st;
    return rc;
}
