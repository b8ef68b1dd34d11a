/* The scheduler on the tiny model: sequences batched with chunked prefill
 * and per-sequence adapters produce what lloco_generate produces alone; the
 * queue bound, the KV budget, cancellation and adapter failures.
 */
#include <ftw.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ingest/ingest.h"
#include "server/server.h"
#include "test.h"

#define MODEL "tiny-llama/hf"
#define EMBEDDER "embedder/tiny"

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    return remove(p);
}

typedef struct {
    char dir[64];
    lloco_engine *e;
    lloco_sched *s;
} rig;

/* An empty store with the tiny model's fingerprint, and an engine on it. */
static int rig_open(rig *g, const lloco_sched_params *sp) {
    memset(g, 0, sizeof *g);
    snprintf(g->dir, sizeof g->dir, "/tmp/lloco-test-sched-XXXXXX");
    if (!mkdtemp(g->dir)) return lloco_error(LLOCO_ERR_IO, "mkdtemp failed");
    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    lloco_compressor *c = NULL;
    lloco_embedder *emb = NULL;
    lloco_store *st = NULL;
    lloco_compress_params cp;
    lloco_compress_params_default(&cp, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    cp.segment_tokens = 64;
    cp.n_summary = 4;
    lloco_store_fingerprint fp;
    int rc = lloco_model_open(lloco_test_fixture(MODEL), &m);
    if (!rc) rc = lloco_decoder_create(m, NULL, &d);
    if (!rc) rc = lloco_compressor_create(d, &cp, &c);
    if (!rc) rc = lloco_compressor_fingerprint(c, &fp);
    if (!rc) rc = lloco_embedder_open(lloco_test_fixture(EMBEDDER), lloco_decoder_backend(d), &emb);
    if (!rc) {
        snprintf(fp.embedder_hash, sizeof fp.embedder_hash, "%s", lloco_embedder_hash(emb));
        fp.embed_dim = lloco_embedder_dim(emb);
        rc = lloco_store_open(g->dir, &fp, LLOCO_STORE_CREATE, &st);
    }
    lloco_store_close(st);
    lloco_embedder_close(emb);
    lloco_compressor_free(c);
    lloco_decoder_free(d);
    lloco_model_close(m);
    lloco_engine_params ep = {.store_dir = g->dir, .model_path = lloco_test_fixture(MODEL),
                              .embedder_dir = lloco_test_fixture(EMBEDDER),
                              .adapters_dir = lloco_test_fixture("lora"), .n_threads = 2};
    if (!rc) rc = lloco_engine_open(&ep, &g->e);
    if (!rc) rc = lloco_sched_create(g->e, sp, &g->s);
    return rc;
}

static void rig_close(rig *g) {
    lloco_sched_free(g->s);
    lloco_engine_close(g->e);
    nftw(g->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* One request's output, filled by the callbacks. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[4096];
    size_t len;
    int done;
    lloco_sched_result res;
} outcome;

static void outcome_init(outcome *o) {
    memset(o, 0, sizeof *o);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
}

static int got_text(const char *t, size_t n, void *user) {
    outcome *o = user;
    if (o->len + n < sizeof o->text) {
        memcpy(o->text + o->len, t, n);
        o->len += n;
    }
    return 0;
}

static void got_done(void *user, const lloco_sched_result *r) {
    outcome *o = user;
    pthread_mutex_lock(&o->mu);
    o->res = *r;
    o->done = 1;
    pthread_cond_broadcast(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

static void wait_done(outcome *o) {
    pthread_mutex_lock(&o->mu);
    while (!o->done) pthread_cond_wait(&o->cv, &o->mu);
    pthread_mutex_unlock(&o->mu);
}

static int submit(lloco_sched *s, const int32_t *tok, int n, const char *adapter, int max_tokens,
                  int ignore_eos, outcome *o, uint64_t *id) {
    lloco_prepared p = {.tokens = (int32_t *)tok, .n_tokens = n, .adapter = (char *)adapter};
    lloco_sched_request r = {.input = &p, .max_tokens = max_tokens, .ignore_eos = ignore_eos,
                             .on_text = got_text, .on_done = got_done, .user = o};
    lloco_sampler_params_default(&r.sampling);
    return lloco_sched_submit(s, &r, id);
}

/* What lloco_generate gives for the same prompt alone (greedy). */
static void generate_alone(lloco_engine *e, const int32_t *tok, int n, const char *adapter,
                           int max_tokens, outcome *o) {
    const lloco_model *m = lloco_engine_model(e);
    lloco_lora *ad = NULL;
    lloco_kv *kv = NULL;
    lloco_generate_params gp;
    lloco_generate_params_default(&gp);
    gp.max_tokens = max_tokens;
    gp.on_text = got_text;
    gp.user = o;
    if (adapter) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", lloco_test_fixture("lora"), adapter);
        CHECK_OK(lloco_lora_open(dir, NULL, m, &ad));
        gp.adapter = ad ? lloco_lora_view(ad) : NULL;
    }
    CHECK_OK(lloco_kv_create(m, n + max_tokens, LLOCO_DTYPE_F16, &kv));
    lloco_generate_stats st;
    if (kv) CHECK_OK(lloco_generate(lloco_engine_decoder(e), kv, tok, n, &gp, NULL, 0, &st));
    lloco_kv_free(kv);
    lloco_lora_close(ad);
}

static void make_prompt(int32_t *t, int n, int seed, int n_vocab) {
    for (int i = 0; i < n; i++) t[i] = (int32_t)(3 + (i * 131 + seed * 977) % (n_vocab - 3));
}

TEST_CASE(sched_matches_generate) {
    lloco_sched_params sp;
    lloco_sched_params_default(&sp);
    sp.prefill_chunk = 7; /* prompts split over several steps */
    sp.max_batch_tokens = 20;
    sp.max_seqs = 4;
    rig g;
    int rc = rig_open(&g, &sp);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    const int n_vocab = lloco_model_hparams(lloco_engine_model(g.e))->n_vocab;
    static const int lens[] = {3, 18, 41, 29, 9};
    static const char *const adapters[] = {NULL, "r8-qkvo", "r4-qv-layer1-fifo", NULL, "r8-qkvo"};
    enum { N = 5 };
    int32_t prompts[N][64];
    outcome batched[N], alone[N];
    for (int i = 0; i < N; i++) {
        make_prompt(prompts[i], lens[i], i, n_vocab);
        outcome_init(&batched[i]);
        outcome_init(&alone[i]);
    }
    /* five at once: more than max_seqs, so one joins when another ends */
    for (int i = 0; i < N; i++)
        CHECK_OK(submit(g.s, prompts[i], lens[i], adapters[i], 12, 1, &batched[i], NULL));
    for (int i = 0; i < N; i++) wait_done(&batched[i]);
    lloco_sched_stats st;
    lloco_sched_stats_get(g.s, &st);
    CHECK(st.finished == N && st.running == 0 && st.queued == 0 && st.kv_reserved_bytes == 0);
    CHECK(st.generated_tokens == N * 12);
    CHECK(st.ttft_count == N && st.itl_count == N * 11);
    for (int i = 0; i < N; i++) {
        CHECK_OK(batched[i].res.rc);
        CHECK(batched[i].res.n_generated == 12 && batched[i].res.stop == LLOCO_STOP_LENGTH);
        CHECK(batched[i].res.n_prompt == lens[i]);
        /* lloco_generate stops at end-of-generation; compare that far */
        generate_alone(g.e, prompts[i], lens[i], adapters[i], 12, &alone[i]);
        CHECKF(alone[i].len <= batched[i].len && !memcmp(alone[i].text, batched[i].text, alone[i].len),
               "prompt %d (%s): batched '%.*s' vs alone '%.*s'", i, adapters[i] ? adapters[i] : "base",
               (int)batched[i].len, batched[i].text, (int)alone[i].len, alone[i].text);
    }
    rig_close(&g);
}

TEST_CASE(sched_limits) {
    lloco_sched_params sp;
    lloco_sched_params_default(&sp);
    sp.max_seqs = 1;
    sp.max_queue = 2;
    rig g;
    int rc = rig_open(&g, &sp);
    CHECK_OK(rc);
    if (rc) {
        rig_close(&g);
        return;
    }
    const lloco_model *m = lloco_engine_model(g.e);
    const int n_ctx = lloco_engine_n_ctx(g.e);
    int32_t t[16];
    make_prompt(t, 16, 1, lloco_model_hparams(m)->n_vocab);
    /* more than the context: refused at once */
    outcome o;
    outcome_init(&o);
    CHECK_ERR(submit(g.s, t, 16, NULL, n_ctx, 0, &o, NULL), LLOCO_ERR_RANGE);
    /* one running, two queued, the fourth refused */
    outcome q[4];
    uint64_t ids[4] = {0};
    int busy = 0, accepted = 0;
    for (int i = 0; i < 4; i++) {
        outcome_init(&q[i]);
        rc = submit(g.s, t, 16, NULL, n_ctx - 16, 1, &q[i], &ids[i]);
        if (rc == LLOCO_ERR_BUSY) {
            busy++;
            continue;
        }
        CHECK_OK(rc);
        accepted += !rc;
    }
    CHECKF(busy >= 1 && accepted >= 2, "busy %d accepted %d", busy, accepted);
    CHECK(strstr(lloco_last_error(), "queue is full") != NULL);
    /* cancel everything accepted: each ends within a step, as cancelled */
    for (int i = 0; i < 4; i++)
        if (ids[i]) lloco_sched_cancel(g.s, ids[i]);
    for (int i = 0; i < 4; i++)
        if (ids[i]) {
            wait_done(&q[i]);
            CHECK(q[i].res.stop == LLOCO_STOP_CALLBACK || q[i].res.rc == LLOCO_ERR_CANCELLED);
            CHECK(q[i].res.n_generated < n_ctx - 16);
        }
    lloco_sched_stats st;
    lloco_sched_stats_get(g.s, &st);
    CHECK(st.running == 0 && st.queued == 0 && st.kv_reserved_bytes == 0);
    CHECK(st.cancelled == (uint64_t)accepted);

    /* an adapter that does not exist fails that request only */
    outcome bad, good;
    outcome_init(&bad);
    outcome_init(&good);
    CHECK_OK(submit(g.s, t, 16, "no-such-adapter", 4, 0, &bad, NULL));
    CHECK_OK(submit(g.s, t, 16, NULL, 4, 0, &good, NULL));
    wait_done(&bad);
    wait_done(&good);
    CHECK_ERR(bad.res.rc, LLOCO_ERR_NOTFOUND);
    CHECK(strstr(bad.res.error, "no-such-adapter") != NULL);
    CHECK_OK(good.res.rc);
    rig_close(&g);
}

TEST_CASE(sched_kv_budget) {
    lloco_sched_params sp;
    lloco_sched_params_default(&sp);
    rig g;
    int rc = rig_open(&g, &sp);
    if (rc) {
        CHECK_OK(rc);
        rig_close(&g);
        return;
    }
    const lloco_hparams *hp = lloco_model_hparams(lloco_engine_model(g.e));
    const size_t per_pos = (size_t)2 * hp->n_layer * hp->n_head_kv * hp->head_dim * 2;
    lloco_sched_free(g.s);
    /* room for one 16 + 8 position sequence at a time */
    sp.kv_budget_bytes = per_pos * 30;
    CHECK_OK(lloco_sched_create(g.e, &sp, &g.s));
    int32_t t[16];
    make_prompt(t, 16, 2, hp->n_vocab);
    outcome o[3];
    for (int i = 0; i < 3; i++) {
        outcome_init(&o[i]);
        CHECK_OK(submit(g.s, t, 16, NULL, 8, 1, &o[i], NULL));
    }
    outcome big;
    outcome_init(&big);
    CHECK_ERR(submit(g.s, t, 16, NULL, 20, 1, &big, NULL), LLOCO_ERR_RANGE);
    CHECK(strstr(lloco_last_error(), "KV") != NULL);
    for (int i = 0; i < 3; i++) {
        wait_done(&o[i]);
        CHECK_OK(o[i].res.rc);
        CHECK(o[i].res.n_generated == 8);
        CHECK(o[i].len == o[0].len && !memcmp(o[i].text, o[0].text, o[0].len));
    }
    lloco_sched_stats st;
    lloco_sched_stats_get(g.s, &st);
    CHECK(st.kv_reserved_bytes == 0 && st.finished == 3);
    rig_close(&g);
}
