/* The adapter bank: adapters on disk under one directory, loaded by one
 * loader thread on first use, kept resident under a byte budget with
 * least-recently-used eviction of the unpinned ones. Callers on the decode
 * path never wait for a load; they poll (or are notified) instead.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora_bank.h"

#define BANK_NAME_MAX 255
#define BANK_DEFAULT_BUDGET ((size_t)1 << 30)

/* What the bank knows about one adapter it has been asked for. */
typedef struct bank_ad {
    char *name;
    lloco_lora *lora; /* resident when non-NULL */
    int loading;      /* queued or being loaded */
    int pins;
    uint64_t last_use; /* of the bank's clock; LRU order */
    int err;           /* remembered load failure (0: none) */
    char *err_msg;
    /* the entry on disk when the failure happened: a rescan that sees it
     * changed forgets the failure */
    size_t err_bytes;
    struct timespec err_mtime;
    struct bank_ad *next;  /* all known adapters */
    struct bank_ad *qnext; /* load queue */
} bank_ad;

struct lloco_bank {
    char *dir; /* realpath of the adapters directory */
    size_t budget;
    const lloco_model *base;
    pthread_mutex_t mu;
    pthread_cond_t work; /* the loader waits for queued loads */
    pthread_cond_t done; /* acquire_wait waits for finished loads */
    pthread_t loader;
    int stop;
    bank_ad *ads;
    bank_ad *qhead, *qtail;
    size_t resident_bytes;
    int n_resident;
    uint64_t clock;
    void (*notify)(void *user, const char *name, int rc);
    void *notify_user;
};

static int name_check(const char *name) {
    if (!name) return lloco_error(LLOCO_ERR_INVAL, "adapter (null): no name");
    const size_t n = strlen(name);
    if (n == 0 || n > BANK_NAME_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return lloco_error(LLOCO_ERR_INVAL, "adapter '%.300s': invalid name (1..255 characters, not . or ..)",
                           name);
    for (size_t i = 0; i < n; i++) {
        const char c = name[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return lloco_error(LLOCO_ERR_INVAL,
                               "adapter '%.300s': invalid name (one path component of A-Z a-z 0-9 . _ -)",
                               name);
    }
    return 0;
}

/* Size on disk (for a folder: its regular files) and newest mtime. */
static void entry_stamp(const char *path, const struct stat *st, size_t *bytes, struct timespec *mtime) {
    *bytes = 0;
    *mtime = st->st_mtim;
    if (!S_ISDIR(st->st_mode)) {
        *bytes = (size_t)st->st_size;
        return;
    }
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX];
    while ((e = readdir(d))) {
        struct stat fs;
        if (e->d_name[0] == '.') continue;
        if (snprintf(p, sizeof p, "%s/%s", path, e->d_name) >= (int)sizeof p) continue;
        if (stat(p, &fs) || !S_ISREG(fs.st_mode)) continue;
        *bytes += (size_t)fs.st_size;
        if (fs.st_mtim.tv_sec > mtime->tv_sec ||
            (fs.st_mtim.tv_sec == mtime->tv_sec && fs.st_mtim.tv_nsec > mtime->tv_nsec))
            *mtime = fs.st_mtim;
    }
    closedir(d);
}

/* Finds the entry of a (valid) name: the folder NAME holding
 * adapter_config.json, else the file NAME.gguf; it must resolve inside the
 * directory. path gets the entry's path as the directory names it. */
static int entry_resolve(const lloco_bank *b, const char *name, char *path, size_t cap,
                         struct stat *st) {
    char cfg[PATH_MAX];
    struct stat cs;
    snprintf(path, cap, "%s/%s", b->dir, name);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", path);
    if (!(stat(path, st) == 0 && S_ISDIR(st->st_mode) && stat(cfg, &cs) == 0)) {
        snprintf(path, cap, "%s/%s.gguf", b->dir, name);
        if (!(stat(path, st) == 0 && S_ISREG(st->st_mode)))
            return lloco_error(LLOCO_ERR_NOTFOUND,
                               "adapter '%s': no PEFT folder %s/%s (with adapter_config.json) "
                               "and no file %s/%s.gguf",
                               name, b->dir, name, b->dir, name);
    }
    char real[PATH_MAX];
    if (!realpath(path, real))
        return lloco_error(LLOCO_ERR_IO, "adapter '%s': %s: %s", name, path, strerror(errno));
    const size_t n = strlen(b->dir);
    if (strncmp(real, b->dir, n) != 0 || (n > 1 && real[n] != '/'))
        return lloco_error(LLOCO_ERR_INVAL,
                           "adapter '%s': %s resolves to %s, outside the adapters directory %s",
                           name, path, real, b->dir);
    return 0;
}

static bank_ad *find(lloco_bank *b, const char *name) {
    for (bank_ad *e = b->ads; e; e = e->next)
        if (!strcmp(e->name, name)) return e;
    return NULL;
}

static void evict(lloco_bank *b, bank_ad *e) {
    b->resident_bytes -= lloco_lora_get_info(e->lora)->bytes;
    b->n_resident--;
    lloco_lora_close(e->lora);
    e->lora = NULL;
}

/* Evicts unpinned adapters, least recently used first, until the resident
 * set fits the budget (pinned ones may keep it over). */
static void evict_to_budget(lloco_bank *b, const bank_ad *keep) {
    while (b->resident_bytes > b->budget) {
        bank_ad *lru = NULL;
        for (bank_ad *e = b->ads; e; e = e->next)
            if (e->lora && !e->pins && e != keep && (!lru || e->last_use < lru->last_use)) lru = e;
        if (!lru) return;
        evict(b, lru);
    }
}

static void forget_error(bank_ad *e) {
    free(e->err_msg);
    e->err_msg = NULL;
    e->err = 0;
}

static void *loader_main(void *arg) {
    lloco_bank *b = arg;
    /* Loads must not slow the decode steps running meanwhile: with SCHED_IDLE
     * the loader only gets CPU time the decoder leaves unused (between
     * dispatches and steps), so a load takes longer under full load but the
     * running batch is not stalled (bench/benchmark-lora measures it). */
    struct sched_param idle = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->stop && !b->qhead) pthread_cond_wait(&b->work, &b->mu);
        if (b->stop) break;
        bank_ad *e = b->qhead;
        b->qhead = e->qnext;
        if (!b->qhead) b->qtail = NULL;
        e->qnext = NULL;
        pthread_mutex_unlock(&b->mu);

        /* entries are never freed before close, so e outlives the unlock */
        char path[PATH_MAX];
        struct stat st;
        lloco_lora *a = NULL;
        int rc = entry_resolve(b, e->name, path, sizeof path, &st);
        if (!rc) rc = lloco_lora_open(path, e->name, b->base, &a);
        char *msg = rc ? strdup(lloco_last_error()) : NULL;
        size_t bytes = 0;
        struct timespec mtime = {0, 0};
        if (rc) entry_stamp(path, &st, &bytes, &mtime);

        pthread_mutex_lock(&b->mu);
        e->loading = 0;
        if (rc) {
            forget_error(e);
            e->err = rc;
            e->err_msg = msg;
            e->err_bytes = bytes;
            e->err_mtime = mtime;
        } else {
            e->lora = a;
            e->last_use = ++b->clock;
            b->resident_bytes += lloco_lora_get_info(a)->bytes;
            b->n_resident++;
            evict_to_budget(b, e);
        }
        void (*fn)(void *, const char *, int) = b->notify;
        void *user = b->notify_user;
        pthread_cond_broadcast(&b->done);
        pthread_mutex_unlock(&b->mu);
        if (fn) fn(user, e->name, rc);
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int lloco_bank_open(const lloco_bank_params *p, const lloco_model *base, lloco_bank **out) {
    *out = NULL;
    if (!p || !p->dir || !base) return lloco_error(LLOCO_ERR_INVAL, "bank: no adapters directory or model");
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(p->dir, real) || stat(real, &st) != 0)
        return lloco_error(errno == ENOENT ? LLOCO_ERR_NOTFOUND : LLOCO_ERR_IO,
                           "adapters directory %s: %s", p->dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return lloco_error(LLOCO_ERR_INVAL, "adapters directory %s: not a directory", p->dir);
    lloco_bank *b = calloc(1, sizeof *b);
    if (!b || !(b->dir = strdup(real))) {
        free(b);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    b->budget = p->budget_bytes ? p->budget_bytes : BANK_DEFAULT_BUDGET;
    b->base = base;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->work, NULL);
    pthread_cond_init(&b->done, NULL);
    if (pthread_create(&b->loader, NULL, loader_main, b) != 0) {
        pthread_cond_destroy(&b->done);
        pthread_cond_destroy(&b->work);
        pthread_mutex_destroy(&b->mu);
        free(b->dir);
        free(b);
        return lloco_error(LLOCO_ERR_NOMEM, "bank: cannot start the loader thread");
    }
    *out = b;
    return 0;
}

void lloco_bank_close(lloco_bank *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = 1;
    pthread_cond_signal(&b->work);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->loader, NULL);
    for (bank_ad *e = b->ads, *n; e; e = n) {
        n = e->next;
        LLOCO_ASSERT(e->pins == 0);
        lloco_lora_close(e->lora);
        free(e->err_msg);
        free(e->name);
        free(e);
    }
    pthread_cond_destroy(&b->done);
    pthread_cond_destroy(&b->work);
    pthread_mutex_destroy(&b->mu);
    free(b->dir);
    free(b);
}

/* Pins a resident adapter or queues its load; called with mu held. */
/* Not resident: the remembered failure, or a load queued (once). */
static int queue_load_locked(lloco_bank *b, bank_ad *e) {
    if (e->err) return lloco_error(e->err, "%s", e->err_msg ? e->err_msg : lloco_strerror(e->err));
    if (!e->loading) {
        e->loading = 1;
        if (b->qtail) b->qtail->qnext = e;
        else b->qhead = e;
        b->qtail = e;
        pthread_cond_signal(&b->work);
    }
    return 0;
}

static int acquire_locked(lloco_bank *b, bank_ad *e, const lloco_adapter_view **view) {
    if (e->lora) {
        e->pins++;
        e->last_use = ++b->clock;
        *view = lloco_lora_view(e->lora);
        return 0;
    }
    return queue_load_locked(b, e);
}

/* The entry for a name the caller has not seen yet: checked on disk before
 * the bank starts remembering it. Returns it with mu held, or an error
 * with mu released. */
static int lookup(lloco_bank *b, const char *name, bank_ad **out) {
    pthread_mutex_lock(&b->mu);
    if ((*out = find(b, name))) return 0;
    pthread_mutex_unlock(&b->mu);
    char path[PATH_MAX];
    struct stat st;
    int rc = entry_resolve(b, name, path, sizeof path, &st);
    if (rc) return rc;
    pthread_mutex_lock(&b->mu);
    if ((*out = find(b, name))) return 0;
    bank_ad *e = calloc(1, sizeof *e);
    if (!e || !(e->name = strdup(name))) {
        free(e);
        pthread_mutex_unlock(&b->mu);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    e->next = b->ads;
    b->ads = e;
    *out = e;
    return 0;
}

int lloco_bank_acquire(lloco_bank *b, const char *name, const lloco_adapter_view **view) {
    *view = NULL;
    int rc = name_check(name);
    bank_ad *e;
    if (!rc) rc = lookup(b, name, &e);
    if (rc) return rc;
    rc = acquire_locked(b, e, view);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int lloco_bank_prefetch(lloco_bank *b, const char *name) {
    int rc = name_check(name);
    bank_ad *e;
    if (!rc) rc = lookup(b, name, &e);
    if (rc) return rc;
    if (!e->lora) rc = queue_load_locked(b, e);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int lloco_bank_acquire_wait(lloco_bank *b, const char *name, const lloco_adapter_view **view) {
    *view = NULL;
    int rc = name_check(name);
    bank_ad *e;
    if (!rc) rc = lookup(b, name, &e);
    if (rc) return rc;
    /* a load that finishes and is evicted again before we pin it is queued
     * once more */
    while (!(rc = acquire_locked(b, e, view)) && !*view) {
        while (e->loading && !b->stop) pthread_cond_wait(&b->done, &b->mu);
        if (b->stop) {
            rc = lloco_error(LLOCO_ERR_CANCELLED, "adapter '%s': the bank is closing", name);
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void lloco_bank_release(lloco_bank *b, const char *name) {
    pthread_mutex_lock(&b->mu);
    bank_ad *e = name ? find(b, name) : NULL;
    LLOCO_ASSERT(e && e->pins > 0);
    e->pins--;
    e->last_use = ++b->clock;
    evict_to_budget(b, NULL);
    pthread_mutex_unlock(&b->mu);
}

void lloco_bank_set_notify(lloco_bank *b, void (*fn)(void *user, const char *name, int rc),
                           void *user) {
    pthread_mutex_lock(&b->mu);
    b->notify = fn;
    b->notify_user = user;
    pthread_mutex_unlock(&b->mu);
}

int lloco_bank_unload(lloco_bank *b, const char *name) {
    int rc = name_check(name);
    if (rc) return rc;
    pthread_mutex_lock(&b->mu);
    bank_ad *e = find(b, name);
    if (e && e->pins)
        rc = lloco_error(LLOCO_ERR_BUSY, "adapter '%s': pinned by %d sequence(s)", name, e->pins);
    else if (e && e->loading)
        rc = lloco_error(LLOCO_ERR_BUSY, "adapter '%s': being loaded", name);
    else if (e) {
        if (e->lora) evict(b, e);
        forget_error(e);
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* ---- listing ------------------------------------------------------------- */

typedef struct {
    char *name;
    size_t bytes;
    struct timespec mtime;
} scan_item;

static int scan_cmp(const void *x, const void *y) {
    return strcmp(((const scan_item *)x)->name, ((const scan_item *)y)->name);
}

/* The servable adapters in the directory, sorted and without duplicates
 * (a folder NAME hides NAME.gguf, as in entry_resolve). */
static int scan(lloco_bank *b, scan_item **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(b->dir);
    if (!d) return lloco_error(LLOCO_ERR_IO, "adapters directory %s: %s", b->dir, strerror(errno));
    scan_item *items = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char name[BANK_NAME_MAX + 1];
        size_t len = strlen(de->d_name);
        if (len > 5 && !strcmp(de->d_name + len - 5, ".gguf")) len -= 5;
        if (len > BANK_NAME_MAX) continue;
        memcpy(name, de->d_name, len);
        name[len] = '\0';
        char path[PATH_MAX];
        struct stat st;
        if (name_check(name) || entry_resolve(b, name, path, sizeof path, &st)) continue;
        int dup = 0;
        for (int i = 0; i < n && !dup; i++) dup = !strcmp(items[i].name, name);
        if (dup) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            scan_item *bigger = realloc(items, sizeof *items * (size_t)cap);
            if (!bigger) {
                rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
                break;
            }
            items = bigger;
        }
        if (!(items[n].name = strdup(name))) {
            rc = lloco_error(LLOCO_ERR_NOMEM, "out of memory");
            break;
        }
        entry_stamp(path, &st, &items[n].bytes, &items[n].mtime);
        n++;
    }
    closedir(d);
    lloco_error_clear();
    if (rc) {
        for (int i = 0; i < n; i++) free(items[i].name);
        free(items);
        return rc;
    }
    if (n) qsort(items, (size_t)n, sizeof *items, scan_cmp);
    *out = items;
    *n_out = n;
    return 0;
}

int lloco_bank_foreach(lloco_bank *b, int (*fn)(void *user, const lloco_bank_entry *e), void *user) {
    scan_item *items;
    int n, rc = scan(b, &items, &n);
    if (rc) return rc;
    pthread_mutex_lock(&b->mu);
    for (bank_ad *e = b->ads; e; e = e->next) {
        scan_item key = {.name = e->name};
        if (e->err && !(n && bsearch(&key, items, (size_t)n, sizeof *items, scan_cmp)))
            forget_error(e); /* gone from disk: a new one of that name gets its chance */
    }
    pthread_mutex_unlock(&b->mu);
    for (int i = 0; i < n && !rc; i++) {
        lloco_bank_entry ent = {.name = items[i].name, .file_bytes = items[i].bytes};
        pthread_mutex_lock(&b->mu);
        bank_ad *e = find(b, items[i].name);
        if (e && e->err &&
            (e->err_bytes != items[i].bytes || e->err_mtime.tv_sec != items[i].mtime.tv_sec ||
             e->err_mtime.tv_nsec != items[i].mtime.tv_nsec))
            forget_error(e); /* changed on disk since it failed: try again */
        if (e) {
            ent.resident = e->lora != NULL;
            ent.loading = e->loading;
            ent.pins = e->pins;
            ent.info = e->lora ? lloco_lora_get_info(e->lora) : NULL;
            e->pins++; /* keeps info alive through the callback */
        }
        /* the message is copied: a concurrent unload may forget it */
        char *err = e && e->err_msg ? strdup(e->err_msg) : NULL;
        ent.error = err;
        pthread_mutex_unlock(&b->mu);
        rc = fn(user, &ent);
        free(err);
        if (e) {
            pthread_mutex_lock(&b->mu);
            e->pins--;
            pthread_mutex_unlock(&b->mu);
        }
    }
    for (int i = 0; i < n; i++) free(items[i].name);
    free(items);
    return rc;
}

size_t lloco_bank_resident_bytes(const lloco_bank *b) {
    lloco_bank *m = (lloco_bank *)b; /* the mutex guards, it is not state */
    pthread_mutex_lock(&m->mu);
    const size_t v = m->resident_bytes;
    pthread_mutex_unlock(&m->mu);
    return v;
}

int lloco_bank_n_resident(const lloco_bank *b) {
    lloco_bank *m = (lloco_bank *)b;
    pthread_mutex_lock(&m->mu);
    const int v = m->n_resident;
    pthread_mutex_unlock(&m->mu);
    return v;
}
