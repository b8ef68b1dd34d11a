/* sched: continuous batching on one thread. Requests wait in a FIFO queue;
 * at every step boundary the queue's head joins the running set when a
 * sequence slot and its reserved KV memory are free and its adapter is
 * resident (one still loading lets the others pass). A step is one forward
 * pass: every decoding sequence's next position, then prompt chunks.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

typedef struct seq {
    struct seq *next; /* queue link */
    uint64_t id;
    atomic_int cancelled;
    /* input */
    int32_t *tokens;
    float *embd;
    int n, n_slots;
    char *adapter_name;
    int max_tokens, ignore_eos;
    lloco_sampler_params sampling;
    char **stop;
    int n_stop;
    int (*on_text)(const char *, size_t, void *);
    void (*on_done)(void *, const lloco_sched_result *);
    void *user;
    size_t kv_need;
    /* running state */
    const lloco_adapter_view *adapter;
    lloco_kv *kv;
    lloco_sampler *smp;
    lloco_textout *out;
    int fed;       /* prompt positions fed */
    int32_t last;  /* the token to feed next when decoding */
    int has_logits;
    int done;
    lloco_sched_result res;
    double t_submit, t_start, t_last_token;
} seq;

struct lloco_sched {
    lloco_engine *eng;
    lloco_decoder *dec;
    lloco_bank *bank;
    const lloco_tokenizer *tok;
    lloco_sched_params p;
    size_t kv_per_pos;
    int n_vocab, d_model;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int stop;
    uint64_t next_id;
    seq *qhead, *qtail;
    int n_queued;
    seq **running; /* [max_seqs]; only the thread touches it */
    int n_running;
    lloco_sched_stats st; /* under mu */

    float *logits; /* [max_seqs][n_vocab] */
    lloco_seq_batch *batch;
};

static const double k_bounds[LLOCO_SCHED_N_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 1.0 / 0.0};

const double *lloco_sched_bucket_bounds(void) { return k_bounds; }

static void observe(uint64_t *buckets, double *sum, uint64_t *count, double v) {
    int b = 0;
    while (b < LLOCO_SCHED_N_BUCKETS - 1 && v > k_bounds[b]) b++;
    buckets[b]++;
    *sum += v;
    (*count)++;
}

void lloco_sched_params_default(lloco_sched_params *p) {
    *p = (lloco_sched_params){.max_seqs = 16, .max_batch_tokens = 512, .prefill_chunk = 256,
                              .kv_budget_bytes = (size_t)1 << 30, .max_queue = 64};
}

static void seq_free(seq *q) {
    if (!q) return;
    free(q->tokens);
    free(q->embd);
    free(q->adapter_name);
    for (int i = 0; i < q->n_stop; i++) free(q->stop[i]);
    free(q->stop);
    lloco_kv_free(q->kv);
    lloco_sampler_free(q->smp);
    lloco_textout_free(q->out);
    free(q);
}

/* Ends a sequence: its pin and reservation go back, on_done runs (mu not
 * held), and it is freed. */
static void seq_finish(lloco_sched *s, seq *q, int rc) {
    if (rc && !q->res.rc) {
        q->res.rc = rc;
        snprintf(q->res.error, sizeof q->res.error, "%s", lloco_last_error());
    }
    const double now = lloco_time_now();
    if (q->res.n_generated > 0) q->res.t_decode = now - (q->t_submit + q->res.t_first_token);
    if (q->adapter) lloco_bank_release(s->bank, q->adapter_name);
    q->adapter = NULL;
    pthread_mutex_lock(&s->mu);
    if (q->kv_need) s->st.kv_reserved_bytes -= q->kv_need;
    q->kv_need = 0;
    if (q->res.rc == LLOCO_ERR_CANCELLED || q->res.stop == LLOCO_STOP_CALLBACK) s->st.cancelled++;
    else if (q->res.rc) s->st.failed++;
    else s->st.finished++;
    pthread_mutex_unlock(&s->mu);
    q->on_done(q->user, &q->res);
    seq_free(q);
}

static void sched_notify(void *user, const char *name, int rc) {
    (void)name, (void)rc;
    lloco_sched *s = user;
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Moves admissible queued requests into the running set (mu held on entry
 * and exit). Requests that fail (adapter errors, cancelled while queued)
 * are put on *failed for the caller to finish without the lock. */
static void admit(lloco_sched *s, seq **failed) {
    seq **link = &s->qhead, *prev = NULL;
    while (*link && s->n_running < s->p.max_seqs) {
        seq *q = *link;
        int rc = atomic_load(&q->cancelled) ? LLOCO_ERR_CANCELLED : 0;
        if (rc) lloco_error(rc, "cancelled while queued");
        if (!rc && s->st.kv_reserved_bytes + q->kv_need > s->p.kv_budget_bytes) break; /* FIFO */
        if (!rc && q->adapter_name && !q->adapter) {
            rc = s->bank ? lloco_bank_acquire(s->bank, q->adapter_name, &q->adapter)
                         : lloco_error(LLOCO_ERR_NOTFOUND, "no adapters directory for '%s'",
                                       q->adapter_name);
            if (!rc && !q->adapter) { /* loading: let the others pass */
                prev = q;
                link = &q->next;
                continue;
            }
        }
        *link = q->next;
        if (s->qtail == q) s->qtail = prev;
        s->n_queued--;
        q->next = NULL;
        if (rc) {
            q->res.rc = rc;
            snprintf(q->res.error, sizeof q->res.error, "%s", lloco_last_error());
            q->kv_need = 0;
            q->next = *failed;
            *failed = q;
            continue;
        }
        s->st.kv_reserved_bytes += q->kv_need;
        q->t_start = lloco_time_now();
        q->res.t_queued = q->t_start - q->t_submit;
        s->running[s->n_running++] = q;
        s->st.running = s->n_running;
    }
}

/* After a step: the sequences that got logits sample their next token. */
static int after_step(lloco_sched *s, seq *q, float *logits) {
    if (q->fed < q->n) return 0; /* prompt not finished */
    const double now = lloco_time_now();
    if (q->res.n_generated == 0 && q->res.t_prefill == 0) q->res.t_prefill = now - q->t_start;
    if (q->max_tokens == 0) return 1;
    int32_t id = lloco_sampler_sample(q->smp, logits);
    if (!q->ignore_eos && lloco_tokenizer_is_eog(s->tok, id)) {
        q->res.stop = LLOCO_STOP_EOG;
        return 1;
    }
    pthread_mutex_lock(&s->mu);
    if (q->res.n_generated == 0)
        observe(s->st.ttft_buckets, &s->st.ttft_sum, &s->st.ttft_count, now - q->t_submit);
    else
        observe(s->st.itl_buckets, &s->st.itl_sum, &s->st.itl_count, now - q->t_last_token);
    s->st.generated_tokens++;
    pthread_mutex_unlock(&s->mu);
    if (q->res.n_generated == 0) q->res.t_first_token = now - q->t_submit;
    q->t_last_token = now;
    q->res.n_generated++;
    q->last = id;
    int rc = lloco_textout_push(q->out, id, &q->res.stop);
    if (rc) return rc;
    if (q->res.n_generated >= q->max_tokens) {
        q->res.stop = LLOCO_STOP_LENGTH;
        return 1;
    }
    if (lloco_kv_len(q->kv) >= lloco_kv_max(q->kv)) {
        q->res.stop = LLOCO_STOP_CONTEXT;
        return 1;
    }
    return 0;
}

/* One forward pass over the running sequences. */
static void step(lloco_sched *s) {
    int nb = 0, tokens = 0;
    seq *in[64];
    /* decodes first: they wait for nothing */
    for (int i = 0; i < s->n_running; i++) {
        seq *q = s->running[i];
        if (q->fed < q->n || tokens >= s->p.max_batch_tokens) continue;
        s->batch[nb] = (lloco_seq_batch){.kv = q->kv, .n = 1, .tokens = &q->last, .n_out = 1,
                                         .logits = s->logits + (size_t)nb * s->n_vocab,
                                         .adapter = q->adapter};
        in[nb++] = q;
        tokens++;
    }
    for (int i = 0; i < s->n_running && tokens < s->p.max_batch_tokens; i++) {
        seq *q = s->running[i];
        if (q->fed >= q->n) continue;
        int n = q->n - q->fed;
        if (n > s->p.prefill_chunk) n = s->p.prefill_chunk;
        if (n > s->p.max_batch_tokens - tokens) n = s->p.max_batch_tokens - tokens;
        const int last = q->fed + n == q->n;
        s->batch[nb] = (lloco_seq_batch){
            .kv = q->kv, .n = n, .tokens = q->tokens + q->fed,
            .embd = q->fed < q->n_slots ? q->embd + (size_t)q->fed * s->d_model : NULL,
            .n_out = last, .logits = last ? s->logits + (size_t)nb * s->n_vocab : NULL,
            .adapter = q->adapter};
        in[nb++] = q;
        tokens += n;
    }
    int rc = lloco_decoder_forward(s->dec, s->batch, nb);
    pthread_mutex_lock(&s->mu);
    s->st.steps++;
    s->st.last_batch_seqs = nb;
    s->st.last_batch_tokens = tokens;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < nb; i++) {
        seq *q = in[i];
        if (rc) {
            q->done = rc;
            continue;
        }
        if (q->fed < q->n) {
            const int n = s->batch[i].n;
            q->fed += n;
            pthread_mutex_lock(&s->mu);
            s->st.prompt_tokens += (uint64_t)n;
            pthread_mutex_unlock(&s->mu);
            if (q->fed < q->n) continue;
        }
        int r = after_step(s, q, s->logits + (size_t)i * s->n_vocab);
        if (r) q->done = r;
    }
}

static void *sched_main(void *arg) {
    lloco_sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        seq *failed = NULL;
        if (!s->stop) admit(s, &failed);
        s->st.queued = s->n_queued;
        s->st.running = s->n_running;
        if (failed || s->stop || s->n_running) {
            pthread_mutex_unlock(&s->mu);
            while (failed) {
                seq *q = failed;
                failed = q->next;
                seq_finish(s, q, q->res.rc);
            }
            if (s->stop) break;
            if (s->n_running) step(s);
            /* cancelled or finished sequences leave at the step boundary
             * (the array changes under mu: cancel reads it) */
            for (int i = 0; i < s->n_running; i++) {
                seq *q = s->running[i];
                int rc = q->done < 0 ? q->done : 0;
                if (!q->done && atomic_load(&q->cancelled)) {
                    q->res.stop = LLOCO_STOP_CALLBACK;
                    q->done = 1;
                }
                if (!q->done) continue;
                if (!rc && q->res.stop != LLOCO_STOP_CALLBACK) rc = lloco_textout_finish(q->out);
                pthread_mutex_lock(&s->mu);
                s->running[i--] = s->running[--s->n_running];
                s->st.running = s->n_running;
                pthread_mutex_unlock(&s->mu);
                seq_finish(s, q, rc);
            }
            pthread_mutex_lock(&s->mu);
            continue;
        }
        pthread_cond_wait(&s->cv, &s->mu);
    }
    /* shutting down: everything left is cancelled */
    pthread_mutex_lock(&s->mu);
    seq *left = s->qhead;
    s->qhead = s->qtail = NULL;
    s->n_queued = 0;
    const int n_run = s->n_running;
    s->n_running = 0;
    pthread_mutex_unlock(&s->mu);
    lloco_error(LLOCO_ERR_CANCELLED, "the server is shutting down");
    while (left) {
        seq *q = left;
        left = q->next;
        q->kv_need = 0;
        seq_finish(s, q, LLOCO_ERR_CANCELLED);
    }
    for (int i = 0; i < n_run; i++) seq_finish(s, s->running[i], LLOCO_ERR_CANCELLED);
    return NULL;
}

/* Everything but the thread. */
static void sched_release(lloco_sched *s) {
    if (s->bank) lloco_bank_set_notify(s->bank, NULL, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->running);
    free(s->logits);
    free(s->batch);
    free(s);
}

int lloco_sched_create(lloco_engine *e, const lloco_sched_params *p, lloco_sched **out) {
    *out = NULL;
    lloco_sched *s = calloc(1, sizeof *s);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    lloco_sched_params_default(&s->p);
    if (p) {
        if (p->max_seqs > 0) s->p.max_seqs = p->max_seqs < 64 ? p->max_seqs : 64;
        if (p->max_batch_tokens > 0) s->p.max_batch_tokens = p->max_batch_tokens;
        if (p->prefill_chunk > 0) s->p.prefill_chunk = p->prefill_chunk;
        if (p->kv_budget_bytes > 0) s->p.kv_budget_bytes = p->kv_budget_bytes;
        if (p->max_queue > 0) s->p.max_queue = p->max_queue;
    }
    s->eng = e;
    s->dec = lloco_engine_decoder(e);
    s->bank = lloco_engine_bank(e);
    const lloco_model *m = lloco_engine_model(e);
    const lloco_hparams *hp = lloco_model_hparams(m);
    s->tok = lloco_model_tokenizer(m);
    s->n_vocab = hp->n_vocab;
    s->d_model = hp->d_model;
    s->kv_per_pos = (size_t)2 * (size_t)hp->n_layer * (size_t)hp->n_head_kv * (size_t)hp->head_dim * 2;
    s->st.kv_budget_bytes = s->p.kv_budget_bytes;
    s->running = calloc((size_t)s->p.max_seqs, sizeof *s->running);
    s->logits = malloc(sizeof(float) * (size_t)s->p.max_seqs * (size_t)s->n_vocab);
    s->batch = calloc((size_t)s->p.max_seqs, sizeof *s->batch);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (!s->running || !s->logits || !s->batch) {
        sched_release(s);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    if (s->bank) lloco_bank_set_notify(s->bank, sched_notify, s);
    if (pthread_create(&s->thread, NULL, sched_main, s)) {
        sched_release(s);
        return lloco_error(LLOCO_ERR_IO, "cannot start the scheduler thread");
    }
    *out = s;
    return 0;
}

void lloco_sched_free(lloco_sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    sched_release(s);
}

static int seq_from_request(lloco_sched *s, const lloco_sched_request *r, seq **out) {
    const lloco_prepared *in = r->input;
    seq *q = calloc(1, sizeof *q);
    if (!q) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    *out = q;
    q->n = in->n_tokens;
    q->n_slots = in->n_slots;
    q->max_tokens = r->max_tokens;
    q->ignore_eos = r->ignore_eos;
    q->sampling = r->sampling;
    q->on_text = r->on_text;
    q->on_done = r->on_done;
    q->user = r->user;
    q->res.n_prompt = in->n_tokens;
    q->tokens = malloc(sizeof(int32_t) * (size_t)(q->n ? q->n : 1));
    if (!q->tokens) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    memcpy(q->tokens, in->tokens, sizeof(int32_t) * (size_t)q->n);
    if (q->n_slots) {
        const size_t bytes = sizeof(float) * (size_t)q->n_slots * (size_t)s->d_model;
        if (!(q->embd = malloc(bytes))) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        memcpy(q->embd, in->embd, bytes);
    }
    if (in->adapter && !(q->adapter_name = strdup(in->adapter)))
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    const int ctx = q->n + q->max_tokens;
    int rc = lloco_kv_create(lloco_engine_model(s->eng), ctx, LLOCO_DTYPE_F16, &q->kv);
    if (!rc) rc = lloco_sampler_create(&q->sampling, s->n_vocab, &q->smp);
    if (!rc) rc = lloco_textout_create(s->tok, r->stop, r->n_stop, r->on_text, r->user, &q->out);
    q->kv_need = s->kv_per_pos * (size_t)ctx;
    return rc;
}

int lloco_sched_submit(lloco_sched *s, const lloco_sched_request *r, uint64_t *id) {
    if (!r->input || r->input->n_tokens <= 0 || !r->on_done || r->max_tokens < 0)
        return lloco_error(LLOCO_ERR_INVAL, "scheduler: empty input, no on_done or max_tokens < 0");
    const int n_ctx = lloco_engine_n_ctx(s->eng);
    if (r->input->n_tokens + r->max_tokens > n_ctx)
        return lloco_error(LLOCO_ERR_RANGE, "%d input positions + max_tokens %d exceed the context of %d",
                           r->input->n_tokens, r->max_tokens, n_ctx);
    const size_t need = s->kv_per_pos * (size_t)(r->input->n_tokens + r->max_tokens);
    if (need > s->p.kv_budget_bytes)
        return lloco_error(LLOCO_ERR_RANGE,
                           "the request needs %zu MiB of KV cache, over the budget of %zu MiB",
                           need >> 20, s->p.kv_budget_bytes >> 20);
    pthread_mutex_lock(&s->mu);
    int rc = s->stop ? lloco_error(LLOCO_ERR_CANCELLED, "the server is shutting down")
             : s->n_queued >= s->p.max_queue
                 ? lloco_error(LLOCO_ERR_BUSY, "the queue is full (%d requests waiting)", s->n_queued)
                 : 0;
    pthread_mutex_unlock(&s->mu);
    if (rc) return rc;
    seq *q = NULL;
    rc = seq_from_request(s, r, &q);
    if (rc) {
        seq_free(q);
        return rc;
    }
    q->t_submit = lloco_time_now();
    pthread_mutex_lock(&s->mu);
    if (s->stop || s->n_queued >= s->p.max_queue) { /* changed meanwhile */
        rc = s->stop ? lloco_error(LLOCO_ERR_CANCELLED, "the server is shutting down")
                     : lloco_error(LLOCO_ERR_BUSY, "the queue is full (%d requests waiting)",
                                   s->n_queued);
        pthread_mutex_unlock(&s->mu);
        seq_free(q);
        return rc;
    }
    q->id = ++s->next_id;
    if (s->qtail) s->qtail->next = q;
    else s->qhead = q;
    s->qtail = q;
    s->n_queued++;
    s->st.queued = s->n_queued;
    if (id) *id = q->id;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void lloco_sched_cancel(lloco_sched *s, uint64_t id) {
    pthread_mutex_lock(&s->mu);
    for (seq *q = s->qhead; q; q = q->next)
        if (q->id == id) atomic_store(&q->cancelled, 1);
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->id == id) atomic_store(&s->running[i]->cancelled, 1);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void lloco_sched_stats_get(lloco_sched *s, lloco_sched_stats *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}
