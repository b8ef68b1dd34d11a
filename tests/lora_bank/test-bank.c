/* The adapter bank over the PEFT fixtures (tests/fixtures/lora) and
 * temporary adapter directories made from them: name safety, loads off the
 * caller's thread, LRU eviction under a budget with pins, remembered load
 * failures, listing, and two threads acquiring at once.
 */
#include <ftw.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lora_test.h"

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    return remove(p);
}

static int copy_file(const char *from, const char *to) {
    char *buf;
    size_t n;
    if (lloco_file_read(from, 64 << 20, &buf, &n)) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(buf, 1, n, f) == n;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

/* Copies the fixture adapter `src` to root/dst. */
static void copy_adapter(const char *root, const char *src, const char *dst) {
    char d[512], from[512], to[600];
    snprintf(d, sizeof d, "%s/%s", root, dst);
    CHECK(mkdir(d, 0755) == 0);
    const char *const files[] = {"adapter_config.json", "adapter_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(from, sizeof from, "%s/%s", lt_adapter_dir(src), files[i]);
        snprintf(to, sizeof to, "%s/%s", d, files[i]);
        CHECKF(copy_file(from, to) == 0, "cannot copy %s", from);
    }
}

static lloco_model *open_tiny(void) {
    lloco_model *m = NULL;
    CHECK_OK(lloco_model_open(lloco_test_fixture("tiny-llama/hf"), &m));
    return m;
}

static lloco_bank *open_bank(const char *dir, size_t budget, const lloco_model *m) {
    lloco_bank_params p = {.dir = dir, .budget_bytes = budget};
    lloco_bank *b = NULL;
    CHECK_OK(lloco_bank_open(&p, m, &b));
    return b;
}

/* Counts loader notifications. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, last_rc;
    char last[64];
} notes;

static void on_loaded(void *user, const char *name, int rc) {
    notes *s = user;
    pthread_mutex_lock(&s->mu);
    s->n++;
    s->last_rc = rc;
    snprintf(s->last, sizeof s->last, "%s", name);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Waits (at most 30 s) until n notifications came. */
static int wait_notes(notes *s, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    pthread_mutex_lock(&s->mu);
    while (s->n < n)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl)) break;
    const int got = s->n;
    pthread_mutex_unlock(&s->mu);
    return got >= n;
}

/* Residency of one adapter, as foreach reports it (-1: not listed). */
typedef struct {
    const char *name;
    int resident, pins;
    char error[512];
} probe;

static int probe_one(void *user, const lloco_bank_entry *e) {
    probe *p = user;
    if (strcmp(e->name, p->name)) return 0;
    p->resident = e->resident;
    p->pins = e->pins;
    snprintf(p->error, sizeof p->error, "%s", e->error ? e->error : "");
    return 0;
}

static int resident(lloco_bank *b, const char *name) {
    probe p = {.name = name, .resident = -1};
    CHECK_OK(lloco_bank_foreach(b, probe_one, &p));
    return p.resident;
}

TEST_CASE(bank_names) {
    lloco_model *m = open_tiny();
    char root[] = "/tmp/lloco-bank-XXXXXX";
    if (!m || !mkdtemp(root)) {
        lloco_model_close(m);
        SKIP("no model or temporary directory");
    }
    char p[600];
    copy_adapter(root, "r8-qkvo", "a8");
    snprintf(p, sizeof p, "%s/inside", root);
    CHECK(symlink("a8", p) == 0);
    snprintf(p, sizeof p, "%s/outside", root);
    CHECK(symlink(lt_adapter_dir("r1-mlp-f16"), p) == 0);
    lloco_bank *b = open_bank(root, 0, m);
    const lloco_adapter_view *v = (const lloco_adapter_view *)1;
    const char *const bad[] = {"..", ".", "/abs", "a/b", "../a8", "", "a8\n", "x y"};
    for (size_t i = 0; b && i < LLOCO_ARRAY_LEN(bad); i++) {
        CHECK_ERR(lloco_bank_acquire(b, bad[i], &v), LLOCO_ERR_INVAL);
        CHECK(v == NULL);
        CHECKF(strstr(lloco_last_error(), "adapter '") && strstr(lloco_last_error(), "invalid name"),
               "message for '%s': %s", bad[i], lloco_last_error());
    }
    if (b) {
        CHECK_ERR(lloco_bank_acquire(b, "outside", &v), LLOCO_ERR_INVAL);
        CHECKF(strstr(lloco_last_error(), "'outside'") && strstr(lloco_last_error(), "outside the adapters"),
               "%s", lloco_last_error());
        CHECK_ERR(lloco_bank_acquire_wait(b, "missing", &v), LLOCO_ERR_NOTFOUND);
        CHECK(strstr(lloco_last_error(), "'missing'") != NULL);
        CHECK_OK(lloco_bank_acquire_wait(b, "inside", &v));
        CHECK(v != NULL);
        if (v) lloco_bank_release(b, "inside");
        CHECK(resident(b, "outside") == -1); /* not listed either */
        CHECK(resident(b, "inside") == 1);
        lloco_bank_close(b);
    }
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    lloco_model_close(m);
}

TEST_CASE(bank_load_notify) {
    lloco_model *m = open_tiny();
    lloco_bank *b = m ? open_bank(lloco_test_fixture("lora"), 0, m) : NULL;
    if (!b) {
        lloco_model_close(m);
        return;
    }
    notes s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    lloco_bank_set_notify(b, on_loaded, &s);
    const lloco_adapter_view *v = (const lloco_adapter_view *)1;
    CHECK_OK(lloco_bank_acquire(b, "r8-qkvo", &v));
    CHECK(v == NULL);
    CHECK(wait_notes(&s, 1));
    CHECK(s.last_rc == 0 && !strcmp(s.last, "r8-qkvo"));
    CHECK_OK(lloco_bank_acquire(b, "r8-qkvo", &v));
    CHECK(v != NULL);
    CHECK(lloco_bank_n_resident(b) == 1);
    CHECK(lloco_bank_resident_bytes(b) > 0);

    /* the view is the adapter lloco_lora_open gives: same logits */
    lloco_lora *ad = NULL;
    CHECK_OK(lloco_lora_open(lt_adapter_dir("r8-qkvo"), NULL, m, &ad));
    if (ad) CHECK(lloco_bank_resident_bytes(b) == lloco_lora_get_info(ad)->bytes);
    lloco_decoder *d = NULL;
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = 1;
    CHECK_OK(lloco_decoder_create(m, &dp, &d));
    const int nv = lloco_model_hparams(m)->n_vocab;
    const int32_t toks[4] = {1, 5, 9, 3};
    float *x = malloc(sizeof(float) * 4 * (size_t)nv), *y = malloc(sizeof(float) * 4 * (size_t)nv);
    if (d && ad && v) {
        CHECK_OK(lt_run(d, toks, 4, v, x));
        CHECK_OK(lt_run(d, toks, 4, lloco_lora_view(ad), y));
        CHECK(memcmp(x, y, sizeof(float) * 4 * (size_t)nv) == 0);
    }
    free(x);
    free(y);
    lloco_decoder_free(d);
    lloco_lora_close(ad);

    /* acquire_wait loads on the loader thread too, and pins */
    CHECK_OK(lloco_bank_acquire_wait(b, "r1-mlp-f16", &v));
    CHECK(v != NULL);
    CHECK(wait_notes(&s, 2));
    CHECK(lloco_bank_n_resident(b) == 2);
    CHECK_ERR(lloco_bank_unload(b, "r1-mlp-f16"), LLOCO_ERR_BUSY);
    CHECK(strstr(lloco_last_error(), "'r1-mlp-f16'") && strstr(lloco_last_error(), "pinned"));
    lloco_bank_release(b, "r1-mlp-f16");
    CHECK_OK(lloco_bank_unload(b, "r1-mlp-f16"));
    CHECK(lloco_bank_n_resident(b) == 1);
    lloco_bank_release(b, "r8-qkvo");
    CHECK_OK(lloco_bank_unload(b, "r8-qkvo"));
    CHECK(lloco_bank_n_resident(b) == 0 && lloco_bank_resident_bytes(b) == 0);
    CHECK_OK(lloco_bank_unload(b, "r8-qkvo")); /* not resident: nothing to do */

    /* prefetch: names checked, a load queued without a pin */
    CHECK_ERR(lloco_bank_prefetch(b, "../r8-qkvo"), LLOCO_ERR_INVAL);
    CHECK_ERR(lloco_bank_prefetch(b, "missing"), LLOCO_ERR_NOTFOUND);
    CHECK_OK(lloco_bank_prefetch(b, "r8-qkvo"));
    CHECK(wait_notes(&s, 3));
    CHECK(lloco_bank_n_resident(b) == 1);
    CHECK_OK(lloco_bank_prefetch(b, "r8-qkvo")); /* resident: nothing to do */
    CHECK_OK(lloco_bank_unload(b, "r8-qkvo")); /* unpinned */
    lloco_bank_close(b);
    lloco_model_close(m);
}

static size_t size_of(const lloco_model *m, const char *name) {
    lloco_lora *a = NULL;
    CHECK_OK(lloco_lora_open(lt_adapter_dir(name), NULL, m, &a));
    const size_t n = a ? lloco_lora_get_info(a)->bytes : 0;
    lloco_lora_close(a);
    return n;
}

TEST_CASE(bank_lru) {
    lloco_model *m = open_tiny();
    if (!m) return;
    const char *A = "r16-all-rslora", *B = "r8-qkvo", *C = "r4-qv-layer1-fifo", *D = "r1-mlp-f16";
    const size_t sa = size_of(m, A), sb = size_of(m, B), sc = size_of(m, C), sd = size_of(m, D);
    CHECK(sa > sb && sb > sc && sc > sd);
    lloco_bank *b = open_bank(lloco_test_fixture("lora"), sa + sb + sc, m);
    if (!b) {
        lloco_model_close(m);
        return;
    }
    const lloco_adapter_view *va, *v;
    CHECK_OK(lloco_bank_acquire_wait(b, A, &va)); /* A stays pinned */
    CHECK_OK(lloco_bank_acquire_wait(b, B, &v));
    lloco_bank_release(b, B);
    CHECK_OK(lloco_bank_acquire_wait(b, C, &v));
    lloco_bank_release(b, C);
    CHECK(lloco_bank_resident_bytes(b) == sa + sb + sc && lloco_bank_n_resident(b) == 3);
    /* D does not fit: B, unpinned and least recently used, goes */
    CHECK_OK(lloco_bank_acquire_wait(b, D, &v));
    lloco_bank_release(b, D);
    CHECK(resident(b, B) == 0 && resident(b, A) == 1 && resident(b, C) == 1 && resident(b, D) == 1);
    CHECK(lloco_bank_resident_bytes(b) == sa + sc + sd);
    /* C used again: when B comes back, D is now the least recent */
    CHECK_OK(lloco_bank_acquire(b, C, &v));
    CHECK(v != NULL);
    if (v) lloco_bank_release(b, C);
    CHECK_OK(lloco_bank_acquire_wait(b, B, &v));
    CHECK(resident(b, D) == 0 && resident(b, C) == 1 && resident(b, A) == 1 && resident(b, B) == 1);
    lloco_bank_release(b, B);
    CHECK(lloco_bank_resident_bytes(b) <= sa + sb + sc);
    lloco_bank_release(b, A);
    lloco_bank_close(b);

    /* a budget below one pinned adapter: it stays resident while pinned,
     * and everything unpinned is evicted */
    b = open_bank(lloco_test_fixture("lora"), sa / 2, m);
    if (b) {
        CHECK_OK(lloco_bank_acquire_wait(b, A, &va));
        CHECK_OK(lloco_bank_acquire_wait(b, B, &v));
        CHECK(lloco_bank_n_resident(b) == 2);
        lloco_bank_release(b, B);
        CHECK(lloco_bank_n_resident(b) == 1 && resident(b, A) == 1);
        lloco_bank_release(b, A);
        CHECK(lloco_bank_n_resident(b) == 0);
        lloco_bank_close(b);
    }
    lloco_model_close(m);
}

typedef struct {
    size_t bytes;
    int found;
    char names[8][64];
    int n;
} listing;

static int list_one(void *user, const lloco_bank_entry *e) {
    listing *l = user;
    if (l->n < 8) snprintf(l->names[l->n], sizeof l->names[0], "%s", e->name);
    l->n++;
    if (!strcmp(e->name, "r8-qkvo")) {
        l->bytes = e->file_bytes;
        l->found = e->resident && e->info && e->info->r == 8 && e->pins == 1;
    }
    return 0;
}

TEST_CASE(bank_foreach) {
    lloco_model *m = open_tiny();
    lloco_bank *b = m ? open_bank(lloco_test_fixture("lora"), 0, m) : NULL;
    if (!b) {
        lloco_model_close(m);
        return;
    }
    const lloco_adapter_view *v;
    CHECK_OK(lloco_bank_acquire_wait(b, "r8-qkvo", &v));
    listing l = {0};
    CHECK_OK(lloco_bank_foreach(b, list_one, &l));
    const char *const want[] = {"r1-mlp-f16", "r16-all-rslora", "r2-pattern-bf16",
                                "r4-qv-layer1-fifo", "r8-qkvo"};
    CHECKF(l.n == 5, "%d adapters listed", l.n);
    for (int i = 0; i < 5 && i < l.n; i++)
        CHECKF(!strcmp(l.names[i], want[i]), "entry %d: %s, expected %s", i, l.names[i], want[i]);
    struct stat s1, s2;
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_config.json", lt_adapter_dir("r8-qkvo"));
    CHECK(stat(p, &s1) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", lt_adapter_dir("r8-qkvo"));
    CHECK(stat(p, &s2) == 0);
    CHECK(l.bytes == (size_t)(s1.st_size + s2.st_size));
    CHECK(l.found);
    lloco_bank_release(b, "r8-qkvo");
    lloco_bank_close(b);
    lloco_model_close(m);
}

TEST_CASE(bank_damaged) {
    lloco_model *m = open_tiny();
    char root[] = "/tmp/lloco-bank-XXXXXX";
    if (!m || !mkdtemp(root)) {
        lloco_model_close(m);
        SKIP("no model or temporary directory");
    }
    copy_adapter(root, "r8-qkvo", "bad");
    copy_adapter(root, "r1-mlp-f16", "good");
    char p[600], from[600];
    snprintf(p, sizeof p, "%s/bad/adapter_model.safetensors", root);
    CHECK(truncate(p, 1000) == 0);
    snprintf(from, sizeof from, "%s/r8-qkvo-f32.gguf", lloco_test_fixture("lora/gguf"));
    snprintf(p, sizeof p, "%s/g8.gguf", root);
    CHECK(copy_file(from, p) == 0);
    lloco_bank *b = open_bank(root, 0, m);
    if (b) {
        notes s = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
        lloco_bank_set_notify(b, on_loaded, &s);
        const lloco_adapter_view *v;
        CHECK_ERR(lloco_bank_acquire_wait(b, "bad", &v), LLOCO_ERR_FORMAT);
        CHECKF(strstr(lloco_last_error(), "bad") && strstr(lloco_last_error(), "adapter_model.safetensors"),
               "%s", lloco_last_error());
        CHECK(wait_notes(&s, 1) && s.last_rc == LLOCO_ERR_FORMAT);
        /* remembered: no second load */
        CHECK_ERR(lloco_bank_acquire(b, "bad", &v), LLOCO_ERR_FORMAT);
        CHECK(strstr(lloco_last_error(), "bad") != NULL);
        /* the others are still served, GGUF ones included */
        CHECK_OK(lloco_bank_acquire_wait(b, "good", &v));
        CHECK(v != NULL);
        lloco_bank_release(b, "good");
        CHECK_OK(lloco_bank_acquire_wait(b, "g8", &v));
        CHECK(v != NULL);
        lloco_bank_release(b, "g8");
        CHECK(wait_notes(&s, 3));
        pthread_mutex_lock(&s.mu);
        CHECKF(s.n == 3, "%d loads, expected 3 (the failed one is not retried)", s.n);
        pthread_mutex_unlock(&s.mu);
        probe pr = {.name = "bad", .resident = -1};
        CHECK_OK(lloco_bank_foreach(b, probe_one, &pr));
        CHECK(pr.resident == 0 && strstr(pr.error, "adapter_model.safetensors"));
        /* unload forgets the failure; once repaired, it loads */
        snprintf(from, sizeof from, "%s/adapter_model.safetensors", lt_adapter_dir("r8-qkvo"));
        snprintf(p, sizeof p, "%s/bad/adapter_model.safetensors", root);
        CHECK(copy_file(from, p) == 0);
        CHECK_OK(lloco_bank_unload(b, "bad"));
        CHECK_OK(lloco_bank_acquire_wait(b, "bad", &v));
        CHECK(v != NULL);
        lloco_bank_release(b, "bad");
        /* or a rescan that sees the entry changed on disk forgets it */
        copy_adapter(root, "r4-qv-layer1-fifo", "bad2");
        snprintf(p, sizeof p, "%s/bad2/adapter_model.safetensors", root);
        CHECK(truncate(p, 500) == 0);
        CHECK_ERR(lloco_bank_acquire_wait(b, "bad2", &v), LLOCO_ERR_FORMAT);
        pr = (probe){.name = "bad2", .resident = -1};
        CHECK_OK(lloco_bank_foreach(b, probe_one, &pr));
        CHECK(pr.resident == 0 && pr.error[0]);
        CHECK_ERR(lloco_bank_acquire_wait(b, "bad2", &v), LLOCO_ERR_FORMAT); /* unchanged */
        snprintf(from, sizeof from, "%s/adapter_model.safetensors", lt_adapter_dir("r4-qv-layer1-fifo"));
        CHECK(copy_file(from, p) == 0);
        pr = (probe){.name = "bad2", .resident = -1};
        CHECK_OK(lloco_bank_foreach(b, probe_one, &pr));
        CHECK(pr.resident == 0 && !pr.error[0]);
        CHECK_OK(lloco_bank_acquire_wait(b, "bad2", &v));
        CHECK(v != NULL);
        lloco_bank_release(b, "bad2");
        lloco_bank_close(b);
    }
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    lloco_model_close(m);
}

/* Two threads acquiring and releasing overlapping adapters under a budget
 * that forces evictions. */
typedef struct {
    lloco_bank *b;
    int seed, errors, served;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    const char *const names[] = {"r8-qkvo", "r1-mlp-f16", "r4-qv-layer1-fifo", "r2-pattern-bf16"};
    unsigned r = (unsigned)w->seed;
    for (int i = 0; i < 200; i++) {
        r = r * 1103515245u + 12345u;
        const char *n = names[(r >> 16) % 4];
        const lloco_adapter_view *v = NULL;
        int rc = (i % 3) ? lloco_bank_acquire(w->b, n, &v) : lloco_bank_acquire_wait(w->b, n, &v);
        if (rc) w->errors++;
        if (v) {
            w->served++;
            lloco_bank_release(w->b, n);
        } else {
            usleep(200);
        }
    }
    return NULL;
}

TEST_CASE(bank_two_threads) {
    lloco_model *m = open_tiny();
    lloco_bank *b = m ? open_bank(lloco_test_fixture("lora"), size_of(m, "r8-qkvo"), m) : NULL;
    if (!b) {
        lloco_model_close(m);
        return;
    }
    worker w[2] = {{b, 1, 0, 0}, {b, 2, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, work, &w[i]) == 0);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECKF(w[i].errors == 0, "thread %d: %d errors (%s)", i, w[i].errors, lloco_last_error());
        CHECK(w[i].served >= 200 / 3);
    }
    CHECK(lloco_bank_resident_bytes(b) <= size_of(m, "r8-qkvo"));
    const char *const names[] = {"r8-qkvo", "r1-mlp-f16", "r4-qv-layer1-fifo", "r2-pattern-bf16"};
    /* a load the workers queued may still run (the loader has the lowest
     * CPU priority): wait for each, then unload it: no pin is left */
    for (int i = 0; i < 4; i++) {
        const lloco_adapter_view *v = NULL;
        CHECK_OK(lloco_bank_acquire_wait(b, names[i], &v));
        if (v) lloco_bank_release(b, names[i]);
        CHECK_OK(lloco_bank_unload(b, names[i]));
    }
    CHECK(lloco_bank_n_resident(b) == 0);
    lloco_bank_close(b);
    lloco_model_close(m);
}
