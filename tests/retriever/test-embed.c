/* Tests of the retrieval embedder: WordPiece ids equal HF `tokenizers`' on a
 * corpus and a code-point sweep, embeddings of a tiny random BERT and of the
 * real all-MiniLM-L6-v2 match sentence-transformers (windowing included),
 * and broken model folders fail cleanly. Fixtures: make_embedder_golden.py.
 */
#include <cjson/cJSON.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "retriever/embed_internal.h"
#include "retriever/retriever.h"
#include "tests/test.h"

/* Parity bound on every sentence: float32 against PyTorch float32 differs
 * by rounding only (about 1e-7 relative), so anything below this is a bug. */
#define MIN_COS 0.9999

static const char *const TINY_FILES[] = {
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"};

/* ---- helpers -------------------------------------------------------------- */

static cJSON *load_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (lloco_file_read(path, (size_t)64 << 20, &text, &len)) return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    return j;
}

static size_t unhex(const char *hex, char *out) {
    size_t n = 0;
    for (; hex[0] && hex[1]; hex += 2) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (char)v;
    }
    return n;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    LLOCO_ASSERT(f);
    LLOCO_ASSERT(n == 0 || fwrite(data, 1, n, f) == n);
    fclose(f);
}

static void write_at(const char *dir, const char *name, const void *data, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, data, n);
}

static void write_str(const char *dir, const char *name, const char *s) {
    write_at(dir, name, s, strlen(s));
}

static void copy_file(const char *src, const char *dir, const char *name) {
    char *data = NULL;
    size_t len = 0;
    LLOCO_ASSERT(lloco_file_read(src, (size_t)64 << 20, &data, &len) == 0);
    write_at(dir, name, data, len);
    free(data);
}

/* A scratch copy of the tiny model folder in a new temp directory. */
static void tiny_copy(char *dir) {
    strcpy(dir, "/tmp/lloco-embed-XXXXXX");
    LLOCO_ASSERT(mkdtemp(dir));
    char sub[1024];
    snprintf(sub, sizeof sub, "%s/1_Pooling", dir);
    LLOCO_ASSERT(mkdir(sub, 0755) == 0);
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(TINY_FILES); i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "embedder/tiny/%s", TINY_FILES[i]);
        copy_file(lloco_test_fixture(rel), dir, TINY_FILES[i]);
    }
}

static void tmp_remove(const char *dir) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

/* The real model's folder, or NULL (then *looked names where it looked). */
static const char *real_model_dir_at(const char **looked) {
    static char buf[1024];
    const char *dir = getenv("LLOCO_MODELS");
    snprintf(buf, sizeof buf, "%s/embedder/all-MiniLM-L6-v2",
             dir && *dir ? dir : LLOCO_SOURCE_DIR "/models");
    char st[1100];
    snprintf(st, sizeof st, "%s/model.safetensors", buf);
    struct stat sb;
    if (looked) *looked = buf;
    return stat(st, &sb) == 0 ? buf : NULL;
}

static const char *real_model_dir(void) { return real_model_dir_at(NULL); }

/* The golden sentences (bytes) and one model's reference vectors. */
typedef struct {
    int n;
    char **text;
    size_t *len;
    int real_windows_max;
} sentences;

static int load_sentences(sentences *s, cJSON **golden) {
    *golden = load_json(lloco_test_fixture("embedder/embedder.golden.json"));
    if (!*golden) return 0;
    const cJSON *hex = cJSON_GetObjectItem(*golden, "sentences_hex");
    s->n = cJSON_GetArraySize(hex);
    s->text = calloc((size_t)s->n, sizeof *s->text);
    s->len = calloc((size_t)s->n, sizeof *s->len);
    for (int i = 0; i < s->n; i++) {
        const char *h = cJSON_GetArrayItem(hex, i)->valuestring;
        s->text[i] = malloc(strlen(h) / 2 + 1);
        s->len[i] = unhex(h, s->text[i]);
    }
    const cJSON *w;
    s->real_windows_max = 0;
    cJSON_ArrayForEach(w, cJSON_GetObjectItem(*golden, "real_windows")) {
        if (w->valueint > s->real_windows_max) s->real_windows_max = w->valueint;
    }
    return 1;
}

static void free_sentences(sentences *s) {
    for (int i = 0; i < s->n; i++) free(s->text[i]);
    free(s->text);
    free(s->len);
}

static float *load_ref(const cJSON *golden, const char *name, int n, int *dim) {
    const cJSON *r = cJSON_GetObjectItem(cJSON_GetObjectItem(golden, "refs"), name);
    *dim = cJSON_GetObjectItem(r, "dim")->valueint;
    char rel[256];
    snprintf(rel, sizeof rel, "embedder/%s", cJSON_GetObjectItem(r, "file")->valuestring);
    char *data = NULL;
    size_t len = 0;
    if (lloco_file_read(lloco_test_fixture(rel), (size_t)16 << 20, &data, &len) ||
        len != (size_t)n * *dim * sizeof(float)) {
        free(data);
        return NULL;
    }
    return (float *)data;
}

static double cosine(const float *a, const float *b, int d) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < d; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

/* Embeds every sentence with the model in dir and checks each against ref
 * (cos >= MIN_COS) and that each has unit length. Returns the smallest cos. */
static double check_model(const char *dir, lloco_backend *be, const sentences *s, const float *ref,
                          int dim, int max_tokens) {
    lloco_embedder *e = NULL;
    CHECK_OK(lloco_embedder_open(dir, be, &e));
    if (!e) return 0;
    CHECK(lloco_embedder_dim(e) == dim);
    CHECK(lloco_embedder_max_tokens(e) == max_tokens);
    float *out = malloc(sizeof(float) * (size_t)s->n * dim);
    CHECK_OK(lloco_embedder_embed(e, (const char *const *)s->text, s->len, s->n, out));
    double worst = 1;
    for (int i = 0; i < s->n; i++) {
        double c = cosine(out + (size_t)i * dim, ref + (size_t)i * dim, dim);
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)out[i * dim + j] * out[i * dim + j];
        CHECKF(c >= MIN_COS, "%s: sentence %d: cos %.7f < %.4f", dir, i, c, MIN_COS);
        CHECKF(fabs(ss - 1) < 1e-5, "%s: sentence %d: |v|^2 = %.7f", dir, i, ss);
        if (c < worst) worst = c;
    }
    /* One text at a time gives the batch's bits. */
    float *one = malloc(sizeof(float) * dim);
    for (int i = 0; i < s->n; i += 7) {
        CHECK_OK(lloco_embedder_embed(e, (const char *const *)&s->text[i], &s->len[i], 1, one));
        CHECKF(!memcmp(one, out + (size_t)i * dim, sizeof(float) * dim),
               "sentence %d alone differs from its batched vector", i);
    }
    free(one);
    free(out);
    lloco_embedder_close(e);
    return worst;
}

/* ---- tokenizer ---------------------------------------------------------------- */

static void ids_add(lloco_wp_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        ids->cap = 2 * ids->cap + 8;
        ids->v = realloc(ids->v, ids->cap * sizeof *ids->v);
        LLOCO_ASSERT(ids->v);
    }
    ids->v[ids->n++] = id;
}

/* Every case of tokenizer.golden.json that has ids under key, through the
 * tokenizer of dir. */
static void check_ids(const char *dir, const cJSON *cases, const char *key) {
    lloco_wp *wp = NULL;
    CHECK_OK(lloco_wp_load(dir, &wp));
    if (!wp) return;
    lloco_wp_scratch s = {0};
    lloco_wp_ids ids = {0};
    const int32_t *pre, *suf;
    int n_pre = lloco_wp_prefix(wp, &pre), n_suf = lloco_wp_suffix(wp, &suf);
    int n_cases = 0, bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const cJSON *want = cJSON_GetObjectItem(c, key);
        if (!want) continue;
        const char *hex = cJSON_GetObjectItem(c, "hex")->valuestring;
        char *text = malloc(strlen(hex) / 2 + 1);
        size_t len = unhex(hex, text);
        ids.n = 0;
        for (int i = 0; i < n_pre; i++) ids_add(&ids, pre[i]);
        CHECK_OK(lloco_wp_encode(wp, text, len, &s, &ids));
        for (int i = 0; i < n_suf; i++) ids_add(&ids, suf[i]);
        int same = (size_t)cJSON_GetArraySize(want) == ids.n;
        for (size_t i = 0; same && i < ids.n; i++)
            same = cJSON_GetArrayItem(want, (int)i)->valueint == ids.v[i];
        if (!same && bad++ < 5) {
            size_t k = 0;
            while (k < ids.n && (int)k < cJSON_GetArraySize(want) &&
                   cJSON_GetArrayItem(want, (int)k)->valueint == ids.v[k])
                k++;
            CHECKF(0, "%s [%s] '%s': %zu ids, want %d; first difference at %zu (got %d)", dir,
                   key, cJSON_GetObjectItem(c, "note")->valuestring, ids.n,
                   cJSON_GetArraySize(want), k, k < ids.n ? ids.v[k] : -1);
        }
        n_cases++;
        free(text);
    }
    CHECKF(bad == 0, "%s: %d of %d cases differ", dir, bad, n_cases);
    CHECK(n_cases > 0);
    free(ids.v);
    lloco_wp_scratch_free(&s);
    lloco_wp_free(wp);
}

TEST_CASE(embed_tokenizer_parity) {
    cJSON *g = load_json(lloco_test_fixture("embedder/tokenizer.golden.json"));
    CHECK(g);
    if (!g) return;
    const cJSON *cases = cJSON_GetObjectItem(g, "cases");
    /* vocab.txt + tokenizer_config.json (no tokenizer.json there) */
    check_ids(lloco_test_fixture("embedder/minilm-tokenizer"), cases, "real");
    /* tokenizer.json with a vocabulary cut down to ~500 pieces */
    check_ids(lloco_test_fixture("embedder/tiny"), cases, "tiny");
    const char *real = real_model_dir();
    if (real) check_ids(real, cases, "real");
    cJSON_Delete(g);
}

/* ---- tiny model ------------------------------------------------------------------ */

TEST_CASE(embed_tiny_parity) {
    sentences s;
    cJSON *g;
    CHECK(load_sentences(&s, &g));
    if (!g) return;
    int dim, max_tokens = cJSON_GetObjectItem(g, "tiny_max_seq_length")->valueint;
    float *ref = load_ref(g, "tiny", s.n, &dim), *ref_cls = load_ref(g, "tiny_cls", s.n, &dim),
          *ref16 = load_ref(g, "tiny_f16", s.n, &dim);
    CHECK(ref && ref_cls && ref16);
    lloco_backend *cpu = NULL, *cref = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU, 2, &cpu));
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &cref));
    if (ref && ref_cls && ref16 && cpu && cref) {
        const char *tiny = lloco_test_fixture("embedder/tiny");
        double w1 = check_model(tiny, cpu, &s, ref, dim, max_tokens);
        double w2 = check_model(tiny, cref, &s, ref, dim, max_tokens);
        char dir[64];
        tiny_copy(dir);
        static const char cls[] = "{\"word_embedding_dimension\": 32, "
                                  "\"pooling_mode\": \"cls\"}";
        write_str(dir, "1_Pooling/config.json", cls);
        double w3 = check_model(dir, cpu, &s, ref_cls, dim, max_tokens);
        copy_file(lloco_test_fixture("embedder/tiny-f16.safetensors"), dir, "model.safetensors");
        write_str(dir, "1_Pooling/config.json", "{\"pooling_mode_mean_tokens\": true}");
        double w4 = check_model(dir, cpu, &s, ref16, dim, max_tokens);
        tmp_remove(dir);
        fprintf(stderr, "  tiny: max 1 - cos %.1e (cpu) %.1e (cpu-ref) %.1e (cls) %.1e (f16)\n",
                1 - w1, 1 - w2, 1 - w3, 1 - w4);
    }
    lloco_backend_free(cpu);
    lloco_backend_free(cref);
    free(ref);
    free(ref_cls);
    free(ref16);
    free_sentences(&s);
    cJSON_Delete(g);
}

TEST_CASE(embed_tiny_hash_and_edges) {
    lloco_backend *be = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU, 2, &be));
    lloco_embedder *e = NULL, *e16 = NULL;
    CHECK_OK(lloco_embedder_open(lloco_test_fixture("embedder/tiny"), be, &e));
    char dir[64];
    tiny_copy(dir);
    copy_file(lloco_test_fixture("embedder/tiny-f16.safetensors"), dir, "model.safetensors");
    CHECK_OK(lloco_embedder_open(dir, be, &e16));
    if (e && e16) {
        const char *h = lloco_embedder_hash(e);
        CHECK(strlen(h) == 32 && strspn(h, "0123456789abcdef") == 32);
        CHECK(strcmp(h, lloco_embedder_hash(e16)) != 0);
        float v[2][32];
        CHECK_OK(lloco_embedder_embed(e, NULL, NULL, 0, NULL));
        /* lens NULL: NUL-terminated texts */
        const char *t[2] = {"hello world", "hello world and more"};
        size_t lens[2] = {11, 11};
        CHECK_OK(lloco_embedder_embed(e, t, NULL, 1, v[0]));
        CHECK_OK(lloco_embedder_embed(e, t + 1, lens + 1, 1, v[1]));
        CHECK(memcmp(v[0], v[1], sizeof v[0]) == 0);
        const char *nul[1] = {NULL};
        CHECK_ERR(lloco_embedder_embed(e, nul, NULL, 1, v[0]), LLOCO_ERR_INVAL);
        CHECK_ERR(lloco_embedder_embed(e, t, NULL, -1, v[0]), LLOCO_ERR_INVAL);
    }
    lloco_embedder_close(e);
    lloco_embedder_close(e16);
    tmp_remove(dir);
    lloco_backend_free(be);
}

/* ---- real model ------------------------------------------------------------------ */

TEST_CASE(embed_real_parity) {
    const char *looked, *dir = real_model_dir_at(&looked);
    if (!dir) SKIP("%s missing (run ./scripts/setup.sh)", looked);
    sentences s;
    cJSON *g;
    CHECK(load_sentences(&s, &g));
    if (!g) return;
    int dim;
    float *ref = load_ref(g, "real", s.n, &dim);
    CHECK(ref && dim == 384 && s.real_windows_max > 1);
    lloco_backend *be = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU, 2, &be));
    if (ref && be) {
        double w = check_model(dir, be, &s, ref, dim, 256);
        fprintf(stderr, "  all-MiniLM-L6-v2: max 1 - cos %.1e over %d sentences\n", 1 - w, s.n);
        lloco_embedder *e = NULL;
        CHECK_OK(lloco_embedder_open(dir, be, &e));
        /* the XXH3-128 of the file setup.sh pins by sha256 */
        if (e) CHECK(!strcmp(lloco_embedder_hash(e), "340d94e989ceea9234cb29e344fee166"));
        lloco_embedder_close(e);
    }
    lloco_backend_free(be);
    free(ref);
    free_sentences(&s);
    cJSON_Delete(g);
}

/* ---- errors ------------------------------------------------------------------------- */

/* Opening dir must fail with err and a detail, and leave *out NULL. */
static void expect_open_error(const char *dir, lloco_backend *be, int err, const char *needle) {
    lloco_embedder *e = (lloco_embedder *)&e;
    lloco_error_clear();
    CHECK_ERR(lloco_embedder_open(dir, be, &e), err);
    CHECK(e == NULL);
    CHECKF(strstr(lloco_last_error(), needle), "detail '%s' lacks '%s'", lloco_last_error(),
           needle);
    if (e && e != (lloco_embedder *)&e) lloco_embedder_close(e);
}

static void put_config(const char *dir, const char *from, const char *to) {
    char *cfg = NULL;
    size_t len = 0;
    LLOCO_ASSERT(!lloco_file_read(lloco_test_fixture("embedder/tiny/config.json"), 1 << 20, &cfg,
                                  &len));
    char *at = strstr(cfg, from);
    LLOCO_ASSERT(at);
    char *out = malloc(len + strlen(to) + 1);
    size_t head = (size_t)(at - cfg);
    memcpy(out, cfg, head);
    strcpy(out + head, to);
    strcat(out, at + strlen(from));
    write_at(dir, "config.json", out, strlen(out));
    free(out);
    free(cfg);
}

TEST_CASE(embed_errors) {
    lloco_backend *be = NULL;
    CHECK_OK(lloco_backend_create(LLOCO_BACKEND_CPU_REF, 1, &be));
    if (!be) return;
    char dir[64], path[1024];
    tiny_copy(dir);
    expect_open_error("/nonexistent/lloco-embedder", be, LLOCO_ERR_NOTFOUND, "/nonexistent");
    snprintf(path, sizeof path, "%s/config.json", dir);
    expect_open_error(path, be, LLOCO_ERR_INVAL, "not a directory");

    /* weights: missing, truncated, header damaged, an I64 tensor in a
     * weight's place */
    char *st = NULL;
    size_t st_len = 0;
    LLOCO_ASSERT(!lloco_file_read(lloco_test_fixture("embedder/tiny/model.safetensors"), 1 << 24,
                                  &st, &st_len));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    remove(path);
    expect_open_error(dir, be, LLOCO_ERR_NOTFOUND, "model.safetensors");
    write_at(dir, "model.safetensors", st, st_len - 100);
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "model.safetensors");
    write_at(dir, "model.safetensors", st, 6);
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "too short");
    char *st2 = malloc(st_len);
    memcpy(st2, st, st_len);
    char *dt = strstr(st2 + 8, "\"dtype\":\"I64\"");
    char *pos = strstr(st2 + 8, "\"embeddings.LayerNorm.bias\":{\"dtype\":\"F32\"");
    LLOCO_ASSERT(dt && pos);
    /* F32 -> I32: same element size, so the header still checks out. */
    memcpy(pos + strlen("\"embeddings.LayerNorm.bias\":{\"dtype\":\""), "I32", 3);
    write_at(dir, "model.safetensors", st2, st_len);
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "embeddings.LayerNorm.bias");
    /* Every byte of the header flipped in turn: an error or a working
     * model, never a crash (ASan checks the reads). */
    uint64_t hlen;
    memcpy(&hlen, st, 8);
    int opened = 0, refused = 0;
    for (size_t i = 8; i < 8 + hlen; i += 3) {
        memcpy(st2, st, st_len);
        st2[i] ^= 0x5A;
        write_at(dir, "model.safetensors", st2, st_len);
        lloco_embedder *e = NULL;
        if (lloco_embedder_open(dir, be, &e) == 0) {
            float v[32];
            const char *t = "probe";
            CHECK_OK(lloco_embedder_embed(e, &t, NULL, 1, v));
            lloco_embedder_close(e);
            opened++;
        } else {
            CHECKF(lloco_last_error()[0], "no detail at header byte %zu", i);
            refused++;
        }
    }
    CHECK(refused > 0);
    fprintf(stderr, "  header flips: %d refused, %d opened\n", refused, opened);
    free(st2);
    write_at(dir, "model.safetensors", st, st_len);
    free(st);

    /* config: shapes that disagree with the weights, unsupported models */
    put_config(dir, "\"hidden_size\": 32", "\"hidden_size\": 48");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "expected");
    put_config(dir, "\"intermediate_size\": 64", "\"intermediate_size\": 65");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "intermediate.dense");
    put_config(dir, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "encoder.layer.2");
    put_config(dir, "\"vocab_size\": ", "\"vocab_size\": 1");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "word_embeddings");
    put_config(dir, "\"model_type\": \"bert\"", "\"model_type\": \"roberta\"");
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "roberta");
    put_config(dir, "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\"");
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "relu");
    put_config(dir, "\"hidden_size\": 32", "\"hidden_size\": 30");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "heads");
    put_config(dir, "\"hidden_size\": 32", "\"hidden_size\": \"32\"");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "hidden_size");
    write_str(dir, "config.json", "{");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "config.json");
    copy_file(lloco_test_fixture("embedder/tiny/config.json"), dir, "config.json");

    /* pooling and window length */
    write_str(dir, "1_Pooling/config.json", "{\"pooling_mode_max_tokens\": true}");
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "pooling");
    write_str(dir, "1_Pooling/config.json", "{\"pooling_mode\": \"mean\"}");
    write_str(dir, "sentence_bert_config.json", "{\"max_seq_length\": 65}");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "max_seq_length");
    write_str(dir, "sentence_bert_config.json", "{\"max_seq_length\": 2}");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "max_seq_length");
    copy_file(lloco_test_fixture("embedder/tiny/sentence_bert_config.json"), dir,
              "sentence_bert_config.json");

    /* tokenizer: missing, damaged, unsupported parts */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    remove(path);
    expect_open_error(dir, be, LLOCO_ERR_NOTFOUND, "vocab.txt");
    write_str(dir, "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}}");
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "WordPiece");
    static const char nfkc[] =
        "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"type\": \"WordPiece\", "
        "\"vocab\": {\"[UNK]\": 0, \"a\": 1}}}";
    write_str(dir, "tokenizer.json", nfkc);
    expect_open_error(dir, be, LLOCO_ERR_UNSUPPORTED, "NFKC");
    static const char no_unk[] = "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}";
    write_str(dir, "tokenizer.json", no_unk);
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "[UNK]");
    write_str(dir, "tokenizer.json", "[1, 2");
    expect_open_error(dir, be, LLOCO_ERR_FORMAT, "tokenizer.json");
    copy_file(lloco_test_fixture("embedder/tiny/tokenizer.json"), dir, "tokenizer.json");

    lloco_embedder *e = NULL;
    CHECK_OK(lloco_embedder_open(dir, be, &e));
    lloco_embedder_close(e);
    tmp_remove(dir);
    lloco_backend_free(be);
}
