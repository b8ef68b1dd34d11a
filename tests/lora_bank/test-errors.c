/* Damaged and unsupported adapters, made here from good ones (the PEFT
 * adapter tests/fixtures/lora/r8-qkvo and its GGUF conversion) in a
 * temporary directory: each must fail with its error code and a message
 * naming the adapter and the problem, and the process must go on loading
 * and running good adapters.
 */
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lora_test.h"

#define GOOD "r8-qkvo"

/* A tensor to write: name, safetensors dtype, shape, bytes. */
typedef struct {
    char name[192];
    const char *dtype;
    int n_dims;
    int64_t shape[2];
    const void *data;
    size_t nbytes;
} st_out;

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A safetensors file as PyTorch writes it: 8-byte header length, JSON
 * header padded with spaces to 8 bytes, then the data in order. */
static int write_st(const char *path, const st_out *t, int n) {
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(h, t[i].name);
        cJSON_AddStringToObject(e, "dtype", t[i].dtype);
        cJSON *shape = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t[i].n_dims; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + t[i].nbytes)));
        off += t[i].nbytes;
    }
    char *json = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    const size_t hl = (strlen(json) + 7) / 8 * 8;
    uint8_t *buf = calloc(1, 8 + hl + off);
    uint64_t hl64 = hl;
    memcpy(buf, &hl64, 8);
    memset(buf + 8, ' ', hl);
    memcpy(buf + 8, json, strlen(json));
    free(json);
    off = 8 + hl;
    for (int i = 0; i < n; i++) {
        memcpy(buf + off, t[i].data, t[i].nbytes);
        off += t[i].nbytes;
    }
    const int rc = write_file(path, buf, off);
    free(buf);
    return rc;
}

typedef struct {
    char root[256];
    lloco_st *src; /* the good adapter's tensors */
    cJSON *cfg;    /* its config */
    st_out t[64];
    int n;
} fixture;

static const char *dtype_str(lloco_dtype t) {
    return t == LLOCO_DTYPE_F32 ? "F32" : t == LLOCO_DTYPE_F16 ? "F16" : "BF16";
}

/* The good adapter's tensors, to be edited by a variant before writing. */
static void load_tensors(fixture *fx) {
    fx->n = 0;
    for (int64_t i = 0; i < lloco_st_n_tensors(fx->src) && fx->n < 64; i++) {
        const lloco_st_tensor *s = lloco_st_tensor_at(fx->src, i);
        st_out *o = &fx->t[fx->n++];
        snprintf(o->name, sizeof o->name, "%s", s->name);
        o->dtype = dtype_str(s->type);
        o->n_dims = s->n_dims;
        o->shape[0] = s->shape[0];
        o->shape[1] = s->shape[1];
        o->data = s->data;
        o->nbytes = s->nbytes;
    }
}

static st_out *find(fixture *fx, const char *name) {
    for (int i = 0; i < fx->n; i++)
        if (!strcmp(fx->t[i].name, name)) return &fx->t[i];
    CHECKF(0, "no tensor '%s' in the good adapter", name);
    return &fx->t[0];
}

/* Writes variant `name`: cfg (NULL: none) and the tensors (n < 0: no
 * safetensors file). Returns its directory. */
static const char *write_variant(fixture *fx, const char *name, const cJSON *cfg, int n) {
    static char dir[512];
    char path[600];
    snprintf(dir, sizeof dir, "%s/%s", fx->root, name);
    CHECK(mkdir(dir, 0755) == 0);
    if (cfg) {
        char *text = cJSON_Print(cfg);
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        CHECK(write_file(path, text, strlen(text)) == 0);
        free(text);
    }
    if (n >= 0) {
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        CHECK(write_st(path, fx->t, n) == 0);
    }
    return dir;
}

/* Opening dir must fail with err, the message naming the adapter and
 * containing `says`. */
static void expect_fail(const lloco_model *m, const char *dir, int err, const char *says) {
    char name[128];
    snprintf(name, sizeof name, "%s", strrchr(dir, '/') + 1);
    char *ext = strstr(name, ".gguf");
    if (ext) *ext = 0; /* the default name of a .gguf adapter */
    lloco_lora *ad = (lloco_lora *)1;
    CHECK_ERR(lloco_lora_open(dir, NULL, m, &ad), err);
    CHECKF(ad == NULL, "%s: handle not cleared on failure", name);
    const char *msg = lloco_last_error();
    char want[160];
    snprintf(want, sizeof want, "LoRA adapter '%s'", name);
    CHECKF(strstr(msg, want) && strstr(msg, says), "%s: message \"%s\" lacks \"%s\" or \"%s\"",
           name, msg, want, says);
}

static cJSON *cfg_with(const fixture *fx, const char *key, cJSON *value) {
    cJSON *c = cJSON_Duplicate(fx->cfg, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(c, key);
    if (value) cJSON_AddItemToObject(c, key, value);
    return c;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

#define T(l, proj, ab) "base_model.model.model.layers." #l ".self_attn." proj ".lora_" ab ".weight"

TEST_CASE(lora_damaged_adapters) {
    lloco_model *m = NULL;
    CHECK_OK(lloco_model_open(lloco_test_fixture("tiny-llama/hf"), &m));
    fixture fx = {0};
    const char *tmp = getenv("TMPDIR");
    snprintf(fx.root, sizeof fx.root, "%s/lloco-lora-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    char *text = NULL;
    if (!m || !mkdtemp(fx.root)) {
        CHECKF(0, "setup: %s", lloco_last_error());
        lloco_model_close(m);
        return;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/adapter_config.json", lt_adapter_dir(GOOD));
    CHECK_OK(lloco_file_read(path, 1 << 20, &text, NULL));
    fx.cfg = cJSON_Parse(text);
    free(text);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", lt_adapter_dir(GOOD));
    CHECK_OK(lloco_st_open(path, &fx.src));
    if (!fx.cfg || !fx.src) goto out;
    load_tensors(&fx);
    const int n = fx.n;
    CHECK(n == 16);
    const char *d;

    /* the file cut short */
    d = write_variant(&fx, "truncated", fx.cfg, n);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d);
    CHECK(truncate(path, 60000) == 0);
    expect_fail(m, d, LLOCO_ERR_FORMAT, "adapter_model.safetensors");

    /* a header byte flipped: the JSON no longer parses */
    d = write_variant(&fx, "bad-header", fx.cfg, n);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", d);
    FILE *f = fopen(path, "r+b");
    if (f) {
        fseek(f, 9, SEEK_SET);
        fputc('#', f);
        fclose(f);
    }
    expect_fail(m, d, LLOCO_ERR_FORMAT, "JSON");

    /* the config's rank is not the file's */
    cJSON *c = cfg_with(&fx, "r", cJSON_CreateNumber(4));
    expect_fail(m, write_variant(&fx, "wrong-rank", c, n), LLOCO_ERR_MISMATCH,
                "rank 8 in the file, 4 in adapter_config.json");
    cJSON_Delete(c);

    /* a tensor missing */
    load_tensors(&fx);
    *find(&fx, T(1, "v_proj", "B")) = fx.t[n - 1];
    expect_fail(m, write_variant(&fx, "missing-tensor", fx.cfg, n - 1), LLOCO_ERR_FORMAT,
                "missing tensor '" T(1, "v_proj", "B") "'");

    /* tensors of a deeper model (layer 2 of 2) */
    load_tensors(&fx);
    for (int i = 0; i < n; i++) {
        char *p = strstr(fx.t[i].name, "layers.1.");
        if (p) p[7] = '2';
    }
    expect_fail(m, write_variant(&fx, "wrong-layers", fx.cfg, n), LLOCO_ERR_MISMATCH,
                "is for layer 2, the base model has 2 layers");

    /* trained for a narrower model: A (8, 128) */
    load_tensors(&fx);
    st_out *a = find(&fx, T(0, "q_proj", "A"));
    a->shape[1] = 128;
    a->nbytes /= 2;
    expect_fail(m, write_variant(&fx, "wrong-dims", fx.cfg, n), LLOCO_ERR_MISMATCH,
                "do not fit the base model's 256 x 256 projection");

    /* B stored transposed: (r, out) */
    load_tensors(&fx);
    st_out *b = find(&fx, T(0, "k_proj", "B"));
    const int64_t s0 = b->shape[0];
    b->shape[0] = b->shape[1];
    b->shape[1] = s0;
    expect_fail(m, write_variant(&fx, "transposed", fx.cfg, n), LLOCO_ERR_MISMATCH, "k_proj");

    /* a NaN */
    load_tensors(&fx);
    st_out *v = find(&fx, T(1, "o_proj", "A"));
    float *nan_copy = malloc(v->nbytes);
    memcpy(nan_copy, v->data, v->nbytes);
    nan_copy[17] = NAN;
    v->data = nan_copy;
    expect_fail(m, write_variant(&fx, "nan", fx.cfg, n), LLOCO_ERR_FORMAT, "non-finite");
    free(nan_copy);

    /* a DoRA magnitude next to the pairs */
    load_tensors(&fx);
    fx.t[n] = fx.t[0];
    snprintf(fx.t[n].name, sizeof fx.t[n].name,
             "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector");
    expect_fail(m, write_variant(&fx, "dora-tensor", fx.cfg, n + 1), LLOCO_ERR_UNSUPPORTED, "DoRA");

    /* a whole replaced module (modules_to_save writes lm_head's weight) */
    load_tensors(&fx);
    fx.t[n] = fx.t[0];
    snprintf(fx.t[n].name, sizeof fx.t[n].name, "base_model.model.lm_head.weight");
    expect_fail(m, write_variant(&fx, "extra-tensor", fx.cfg, n + 1), LLOCO_ERR_UNSUPPORTED,
                "base_model.model.lm_head.weight");
    cJSON *list = cJSON_CreateArray();
    cJSON_AddItemToArray(list, cJSON_CreateString("lm_head"));
    c = cfg_with(&fx, "modules_to_save", list);
    expect_fail(m, write_variant(&fx, "modules-to-save", c, n + 1), LLOCO_ERR_UNSUPPORTED,
                "modules_to_save");
    cJSON_Delete(c);

    /* an integer tensor where a matrix should be */
    load_tensors(&fx);
    find(&fx, T(0, "v_proj", "A"))->dtype = "I32";
    expect_fail(m, write_variant(&fx, "int-tensor", fx.cfg, n), LLOCO_ERR_UNSUPPORTED,
                "not F32, F16 or BF16");

    /* the config targets fewer modules than the file holds */
    load_tensors(&fx);
    list = cJSON_CreateArray();
    cJSON_AddItemToArray(list, cJSON_CreateString("q_proj"));
    cJSON_AddItemToArray(list, cJSON_CreateString("v_proj"));
    c = cfg_with(&fx, "target_modules", list);
    expect_fail(m, write_variant(&fx, "untargeted", c, n), LLOCO_ERR_FORMAT, "does not target");
    cJSON_Delete(c);

    /* configs lloco refuses */
    list = cJSON_CreateArray();
    cJSON_AddItemToArray(list, cJSON_CreateString("q_proj"));
    cJSON_AddItemToArray(list, cJSON_CreateString("lm_head"));
    c = cfg_with(&fx, "target_modules", list);
    expect_fail(m, write_variant(&fx, "lm-head-target", c, n), LLOCO_ERR_UNSUPPORTED,
                "target module 'lm_head'");
    cJSON_Delete(c);
    c = cfg_with(&fx, "target_modules", cJSON_CreateString("(q_proj"));
    expect_fail(m, write_variant(&fx, "bad-regex", c, n), LLOCO_ERR_FORMAT,
                "target_modules pattern '(q_proj'");
    cJSON_Delete(c);
    c = cfg_with(&fx, "peft_type", cJSON_CreateString("LOHA"));
    expect_fail(m, write_variant(&fx, "loha", c, n), LLOCO_ERR_UNSUPPORTED, "peft_type 'LOHA'");
    cJSON_Delete(c);
    c = cfg_with(&fx, "use_dora", cJSON_CreateTrue());
    expect_fail(m, write_variant(&fx, "dora-config", c, n), LLOCO_ERR_UNSUPPORTED, "use_dora");
    cJSON_Delete(c);
    c = cfg_with(&fx, "bias", cJSON_CreateString("lora_only"));
    expect_fail(m, write_variant(&fx, "bias", c, n), LLOCO_ERR_UNSUPPORTED, "bias 'lora_only'");
    cJSON_Delete(c);
    c = cfg_with(&fx, "lora_alpha", NULL);
    expect_fail(m, write_variant(&fx, "no-alpha", c, n), LLOCO_ERR_FORMAT, "lora_alpha");
    cJSON_Delete(c);

    /* files missing or unreadable */
    expect_fail(m, write_variant(&fx, "no-config", NULL, n), LLOCO_ERR_NOTFOUND,
                "no adapter_config.json");
    expect_fail(m, write_variant(&fx, "no-weights", fx.cfg, -1), LLOCO_ERR_NOTFOUND,
                "no adapter_model.safetensors");
    d = write_variant(&fx, "pickle", fx.cfg, -1);
    snprintf(path, sizeof path, "%s/adapter_model.bin", d);
    CHECK(write_file(path, "PK", 2) == 0);
    expect_fail(m, d, LLOCO_ERR_UNSUPPORTED, "safe_serialization");
    d = write_variant(&fx, "bad-json", NULL, n);
    snprintf(path, sizeof path, "%s/adapter_config.json", d);
    CHECK(write_file(path, "{\"r\": 8,", 8) == 0);
    expect_fail(m, d, LLOCO_ERR_FORMAT, "not a JSON object");
    /* a llama.cpp adapter cut short */
    char *gg;
    size_t gl;
    CHECK_OK(lloco_file_read(lloco_test_fixture("lora/gguf/r8-qkvo-f32.gguf"), 1 << 24, &gg, &gl));
    snprintf(path, sizeof path, "%s/cut.gguf", fx.root);
    CHECK(gg && write_file(path, gg, gl / 2) == 0);
    free(gg);
    expect_fail(m, path, LLOCO_ERR_FORMAT, "cut.gguf: ");
    snprintf(path, sizeof path, "%s/no-such-adapter", fx.root);
    expect_fail(m, path, LLOCO_ERR_NOTFOUND, "no such file or directory");

    /* after all that, a good adapter still opens and runs (from a copy of
     * the good one written the same way, which proves the writer) */
    load_tensors(&fx);
    d = write_variant(&fx, "good-copy", fx.cfg, n);
    lloco_lora *ad = NULL;
    CHECK_OK(lloco_lora_open(d, NULL, m, &ad));
    lloco_decoder *dec = NULL;
    CHECK_OK(lloco_decoder_create(m, NULL, &dec));
    if (ad && dec) {
        float *lg = malloc(sizeof(float) * 3 * lloco_model_hparams(m)->n_vocab);
        const int32_t toks[3] = {257, 104, 105};
        CHECK_OK(lt_run(dec, toks, 3, lloco_lora_view(ad), lg));
        free(lg);
    }
    lloco_decoder_free(dec);
    lloco_lora_close(ad);
out:
    lloco_st_close(fx.src);
    cJSON_Delete(fx.cfg);
    nftw(fx.root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    lloco_model_close(m);
}

/* A view that does not fit the model is refused by the forward pass and
 * by the merge, naming the adapter, before any cache grows. */
TEST_CASE(lora_bad_view) {
    lloco_model *m = NULL;
    CHECK_OK(lloco_model_open(lloco_test_fixture("tiny-llama/hf"), &m));
    if (!m) return;
    lloco_decoder *d = NULL;
    CHECK_OK(lloco_decoder_create(m, NULL, &d));
    lloco_lora *ad = NULL;
    CHECK_OK(lloco_lora_open(lt_adapter_dir(GOOD), "hand", m, &ad));
    if (!d || !ad) goto out;
    const lloco_adapter_view *good = lloco_lora_view(ad);
    lloco_adapter_layer layers[2] = {good->layers[0], good->layers[1]};
    lloco_lora_mat wide = *good->layers[0].proj[LLOCO_PROJ_Q];
    wide.k = 128;
    layers[1].proj[LLOCO_PROJ_O] = &wide;
    const lloco_adapter_view bad_dims = {.name = "hand", .n_layer = 2, .layers = layers};
    const lloco_adapter_view bad_layers = {.name = "hand", .n_layer = 3, .layers = layers};
    lloco_kv *kv;
    CHECK_OK(lloco_kv_create(m, 16, LLOCO_DTYPE_F32, &kv));
    const int32_t tok = 65;
    float *lg = malloc(sizeof(float) * lloco_model_hparams(m)->n_vocab);
    lloco_seq_batch b[2] = {{.kv = kv, .n = 1, .tokens = &tok, .n_out = 1, .logits = lg},
                            {.kv = kv, .n = 1, .tokens = &tok}};
    const lloco_adapter_view *bad[] = {&bad_dims, &bad_layers};
    const char *says[] = {"layer 1 o_proj", "3 layers"};
    for (int i = 0; i < 2; i++) {
        b[0].adapter = bad[i];
        CHECK_ERR(lloco_decoder_forward(d, b, 1), LLOCO_ERR_MISMATCH);
        CHECKF(strstr(lloco_last_error(), "'hand'") && strstr(lloco_last_error(), says[i]),
               "message \"%s\"", lloco_last_error());
        CHECK(lloco_kv_len(kv) == 0);
        CHECK_ERR(lloco_decoder_merge_adapter(d, bad[i]), LLOCO_ERR_MISMATCH);
        CHECK(lloco_decoder_merged_adapter(d) == NULL);
    }
    b[0].adapter = good;
    CHECK_OK(lloco_decoder_forward(d, b, 1));
    CHECK(lloco_kv_len(kv) == 1);
    free(lg);
    lloco_kv_free(kv);
out:
    lloco_lora_close(ad);
    lloco_decoder_free(d);
    lloco_model_close(m);
}
