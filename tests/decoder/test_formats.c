/* Tests of the GGUF and safetensors readers: the tiny-llama fixtures must
 * read back with the metadata, shapes and bytes the generator wrote, and
 * damaged or hostile files (written to a temp dir) must fail with the right
 * code and a detail message, never crash.
 */
#include <ftw.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decoder/gguf.h"
#include "decoder/decoder.h"
#include "tests/test.h"

/* ---- helpers -------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + n > cap) cap *= 2;
        b->p = realloc(b->p, cap);
        LLOCO_ASSERT(b->p);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(buf *b, uint16_t v) { put(b, &v, 2); }
static void put_u32(buf *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(buf *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(buf *b, float v) { put(b, &v, 4); }
static void put_f64(buf *b, double v) { put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void pad_to(buf *b, size_t align) {
    while (b->n % align) put_u8(b, 0);
}
static void patch_u32(buf *b, size_t at, uint32_t v) { memcpy(b->p + at, &v, 4); }
static void patch_u64(buf *b, size_t at, uint64_t v) { memcpy(b->p + at, &v, 8); }

static char tmp_dir[256];

static const char *tmp_path(const char *name) {
    static char path[8][512];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 512, "%s/%s", tmp_dir, name);
    return p;
}

static void make_tmp_dir(void) {
    if (tmp_dir[0]) return;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/lloco-formats-XXXXXX");
    LLOCO_ASSERT(mkdtemp(tmp_dir));
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

__attribute__((destructor)) static void remove_tmp_dir(void) {
    if (tmp_dir[0]) nftw(tmp_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *write_tmp(const char *name, const void *data, size_t n) {
    make_tmp_dir();
    const char *path = tmp_path(name);
    FILE *f = fopen(path, "wb");
    LLOCO_ASSERT(f);
    LLOCO_ASSERT(n == 0 || fwrite(data, 1, n, f) == n);
    fclose(f);
    return path;
}

static const char *write_tmp_str(const char *name, const char *s) {
    return write_tmp(name, s, strlen(s));
}

static void read_all(const char *path, buf *out) {
    char *data;
    size_t len;
    int rc = lloco_file_read(path, (size_t)64 << 20, &data, &len);
    LLOCO_ASSERT(rc == 0);
    out->p = (uint8_t *)data;
    out->n = out->cap = len;
}

/* A failing open must carry a detail naming the file (every file these
 * tests damage lives under tmp_dir). */
#define CHECK_DETAIL()                                                                  \
    CHECKF(strstr(lloco_last_error(), tmp_dir) != NULL, "detail lacks the path: %s",   \
           lloco_last_error())

static int open_gguf_bytes(const buf *b, size_t n) {
    lloco_gguf *g = NULL;
    lloco_error_clear();
    int rc = lloco_gguf_open(write_tmp("t.gguf", b->p, n), &g);
    if (rc == 0) lloco_gguf_close(g);
    else CHECK_DETAIL();
    return rc;
}

#define CHECK_GGUF(b, err)                                                              \
    do {                                                                                \
        int rc__ = open_gguf_bytes((b), (b)->n);                                        \
        CHECKF(rc__ == (err), "expected %s, got %d: %s", lloco_strerror(err), rc__,     \
               lloco_last_error());                                                     \
    } while (0)

static int open_st_bytes(const char *name, const char *json, const void *data, size_t n_data,
                         lloco_st **out) {
    buf b = {0};
    put_u64(&b, strlen(json));
    put(&b, json, strlen(json));
    put(&b, data, n_data);
    lloco_st *st = NULL;
    lloco_error_clear();
    int rc = lloco_st_open(write_tmp(name, b.p, b.n), &st);
    free(b.p);
    if (rc) CHECK_DETAIL();
    if (out) *out = st;
    else lloco_st_close(st);
    return rc;
}

#define CHECK_ST(json, n_data, err)                                                     \
    do {                                                                                \
        static const uint8_t zeros__[256];                                              \
        int rc__ = open_st_bytes("t.safetensors", (json), zeros__, (n_data), NULL);     \
        CHECKF(rc__ == (err), "%s: expected %s, got %d: %s", (json), lloco_strerror(err), \
               rc__, lloco_last_error());                                               \
    } while (0)

/* ---- the tiny-llama fixtures --------------------------------------------- */

typedef struct {
    const char *file;
    lloco_dtype wtype;
    uint32_t file_type; /* llama.cpp LLAMA_FTYPE */
    size_t alignment;
    double tol; /* relative RMS error of dequantized weights vs the F32 model */
} variant;

static const variant variants[] = {
    {"tiny-llama/tiny-f16.gguf", LLOCO_DTYPE_F16, 1, 32, 1e-3},
    {"tiny-llama/tiny-q8_0.gguf", LLOCO_DTYPE_Q8_0, 7, 32, 0.01},
    {"tiny-llama/tiny-q4_0.gguf", LLOCO_DTYPE_Q4_0, 2, 32, 0.15},
    {"tiny-llama/tiny-q4_1.gguf", LLOCO_DTYPE_Q4_1, 3, 32, 0.15},
    {"tiny-llama/tiny-q4_k.gguf", LLOCO_DTYPE_Q4_K, 14, 64, 0.15},
    {"tiny-llama/tiny-q6_k.gguf", LLOCO_DTYPE_Q6_K, 18, 32, 0.04},
};

/* HF tensor name -> GGUF name; n_head > 0 for Q/K, whose rows the
 * converter permuted. */
static void gguf_name_of(const char *hf, char *out, size_t cap, int *n_head) {
    static const struct {
        const char *hf, *gguf;
        int n_head;
    } map[] = {
        {"self_attn.q_proj", "attn_q", 4},      {"self_attn.k_proj", "attn_k", 2},
        {"self_attn.v_proj", "attn_v", 0},      {"self_attn.o_proj", "attn_output", 0},
        {"mlp.gate_proj", "ffn_gate", 0},       {"mlp.up_proj", "ffn_up", 0},
        {"mlp.down_proj", "ffn_down", 0},       {"input_layernorm", "attn_norm", 0},
        {"post_attention_layernorm", "ffn_norm", 0},
    };
    *n_head = 0;
    if (!strcmp(hf, "model.embed_tokens.weight")) snprintf(out, cap, "token_embd.weight");
    else if (!strcmp(hf, "model.norm.weight")) snprintf(out, cap, "output_norm.weight");
    else if (!strcmp(hf, "lm_head.weight")) snprintf(out, cap, "output.weight");
    else {
        int layer = -1;
        char rest[128] = "";
        sscanf(hf, "model.layers.%d.%127s", &layer, rest);
        char *dot = strrchr(rest, '.');
        if (dot) *dot = 0; /* drop ".weight" */
        out[0] = 0;
        for (size_t i = 0; i < LLOCO_ARRAY_LEN(map); i++)
            if (!strcmp(rest, map[i].hf)) {
                snprintf(out, cap, "blk.%d.%s.weight", layer, map[i].gguf);
                *n_head = map[i].n_head;
            }
    }
}

/* Row of the HF matrix that GGUF row r holds: the converter's permute
 * reorders each head's rows from [two halves] to [interleaved pairs]. */
static int64_t hf_row(int64_t r, int64_t rows, int n_head) {
    if (n_head == 0) return r;
    int64_t hd = rows / n_head, h = r / hd, i = (r % hd) / 2, j = r % 2;
    return h * hd + j * (hd / 2) + i;
}

static const char *key_str(const lloco_gguf *g, const char *key, char *out, size_t cap) {
    const char *s;
    size_t len;
    out[0] = 0;
    if (lloco_gguf_get_str(g, key, &s, &len) == 0) snprintf(out, cap, "%.*s", (int)len, s);
    return out;
}

TEST_CASE(gguf_fixture_metadata) {
    for (size_t v = 0; v < LLOCO_ARRAY_LEN(variants); v++) {
        lloco_gguf *g = NULL;
        CHECK_OK(lloco_gguf_open(lloco_test_fixture(variants[v].file), &g));
        if (!g) continue;
        char s[256];
        uint32_t u;
        int64_t i64;
        float f;
        int b;
        CHECK(lloco_gguf_version(g) == 3);
        CHECK(lloco_gguf_alignment(g) == variants[v].alignment);
        CHECK(!strcmp(key_str(g, "general.architecture", s, sizeof s), "llama"));
        CHECK_OK(lloco_gguf_get_u32(g, "general.file_type", &u));
        CHECK(u == variants[v].file_type);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.context_length", &u));
        CHECK(u == 512);
        CHECK_OK(lloco_gguf_get_i64(g, "llama.embedding_length", &i64));
        CHECK(i64 == 256);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.block_count", &u));
        CHECK(u == 2);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.feed_forward_length", &u));
        CHECK(u == 256);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.attention.head_count", &u));
        CHECK(u == 4);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.attention.head_count_kv", &u));
        CHECK(u == 2);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.rope.dimension_count", &u));
        CHECK(u == 64);
        CHECK_OK(lloco_gguf_get_u32(g, "llama.vocab_size", &u));
        CHECK(u == 260);
        CHECK_OK(lloco_gguf_get_f32(g, "llama.rope.freq_base", &f));
        CHECK(f == 10000.0f);
        CHECK_OK(lloco_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f));
        CHECK(f == 1e-5f);
        CHECK(!strcmp(key_str(g, "tokenizer.ggml.model", s, sizeof s), "gpt2"));
        CHECK(!strcmp(key_str(g, "tokenizer.ggml.pre", s, sizeof s), "gpt-2"));
        CHECK(strstr(key_str(g, "tokenizer.chat_template", s, sizeof s), "<|im_start|>"));
        CHECK_OK(lloco_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u));
        CHECK(u == 257);
        CHECK_OK(lloco_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u));
        CHECK(u == 258);
        CHECK_OK(lloco_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b));
        CHECK(b == 0);

        lloco_gguf_type et;
        uint64_t n;
        const void *data;
        const char *str;
        size_t len;
        CHECK_OK(lloco_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &data));
        CHECK(et == LLOCO_GGUF_STRING && n == 260);
        CHECK_OK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 65, &str, &len));
        CHECK(len == 1 && str[0] == 'A');
        CHECK_OK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 32, &str, &len));
        CHECK(len == 2 && !memcmp(str, "\xc4\xa0", 2)); /* byte-level 'Ġ' */
        CHECK_OK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 258, &str, &len));
        CHECK(len == 10 && !memcmp(str, "<|im_end|>", 10));
        CHECK_OK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 259, &str, &len));
        CHECK(len == 3 && !memcmp(str, "\xc4\xa0t", 3));
        CHECK_ERR(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 260, &str, &len),
                  LLOCO_ERR_RANGE);
        CHECK_OK(lloco_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &data));
        CHECK(et == LLOCO_GGUF_INT32 && n == 260);
        if (et == LLOCO_GGUF_INT32 && n == 260) {
            int32_t tt[260];
            memcpy(tt, data, sizeof tt);
            CHECK(tt[0] == 1 && tt[255] == 1 && tt[256] == 3 && tt[258] == 3 && tt[259] == 1);
        }
        CHECK_OK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.merges", 0, &str, &len));
        CHECK(len == 4 && !memcmp(str, "\xc4\xa0 t", 4));
        CHECK_ERR(lloco_gguf_get_arr_str(g, "tokenizer.ggml.token_type", 0, &str, &len),
                  LLOCO_ERR_TYPE);

        /* wrong type / absent */
        CHECK_ERR(lloco_gguf_get_str(g, "llama.block_count", &str, &len), LLOCO_ERR_TYPE);
        CHECK_ERR(lloco_gguf_get_f32(g, "general.architecture", &f), LLOCO_ERR_TYPE);
        CHECK_ERR(lloco_gguf_get_u32(g, "llama.rope.freq_base", &u), LLOCO_ERR_TYPE);
        CHECK_ERR(lloco_gguf_get_u32(g, "no.such.key", &u), LLOCO_ERR_NOTFOUND);
        CHECK_ERR(lloco_gguf_get_arr(g, "general.name", &et, &n, &data), LLOCO_ERR_TYPE);
        CHECK(lloco_gguf_find_key(g, "no.such.key") == -1);

        int64_t ki = lloco_gguf_find_key(g, "llama.context_length");
        CHECK(ki >= 0 && !strcmp(lloco_gguf_key_name(g, ki), "llama.context_length"));
        CHECK(lloco_gguf_kv_type(g, ki) == LLOCO_GGUF_UINT32);
        lloco_gguf_kv_format(g, ki, s, sizeof s);
        CHECK(!strcmp(s, "512"));
        lloco_gguf_kv_format(g, lloco_gguf_find_key(g, "general.architecture"), s, sizeof s);
        CHECK(!strcmp(s, "\"llama\""));
        lloco_gguf_kv_format(g, lloco_gguf_find_key(g, "tokenizer.ggml.tokens"), s, sizeof s);
        CHECK(!strcmp(s, "[STRING x 260]"));
        lloco_gguf_kv_format(g, lloco_gguf_find_key(g, "tokenizer.chat_template"), s, 40);
        CHECK(strlen(s) < 40 && strstr(s, "...\""));
        ki = lloco_gguf_find_key(g, "tokenizer.ggml.tokens");
        CHECK_OK(lloco_gguf_kv_arr_str(g, ki, 66, &str, &len));
        CHECK(len == 1 && str[0] == 'B');

        /* tensors */
        CHECK(lloco_gguf_n_tensors(g) == 2 * 9 + 3);
        lloco_dtype wt = variants[v].wtype;
        const struct {
            const char *name;
            lloco_dtype type;
            int n_dims;
            int64_t ne0, ne1;
        } want[] = {
            {"token_embd.weight", wt, 2, 256, 260},
            {"output.weight", wt, 2, 256, 260},
            {"output_norm.weight", LLOCO_DTYPE_F32, 1, 256, 1},
            {"blk.0.attn_q.weight", wt, 2, 256, 256},
            {"blk.1.attn_k.weight", wt, 2, 256, 128},
            {"blk.1.attn_v.weight", wt, 2, 256, 128},
            {"blk.1.ffn_down.weight", wt, 2, 256, 256},
            {"blk.0.ffn_norm.weight", LLOCO_DTYPE_F32, 1, 256, 1},
        };
        for (size_t k = 0; k < LLOCO_ARRAY_LEN(want); k++) {
            const lloco_gguf_tensor *t = lloco_gguf_find_tensor(g, want[k].name);
            CHECKF(t, "%s: no tensor %s", variants[v].file, want[k].name);
            if (!t) continue;
            CHECKF(t->type == want[k].type && t->n_dims == want[k].n_dims &&
                       t->ne[0] == want[k].ne0 && t->ne[1] == want[k].ne1 && t->ne[2] == 1 &&
                       t->ne[3] == 1,
                   "%s: %s is %s %d-D [%" PRId64 ", %" PRId64 "]", variants[v].file, t->name,
                   lloco_dtype_name(t->type), t->n_dims, t->ne[0], t->ne[1]);
            CHECK(t->nbytes == lloco_dtype_row_bytes(t->type, t->ne[0]) * (size_t)t->ne[1]);
            CHECK((uintptr_t)t->data % variants[v].alignment == 0);
        }
        CHECK(lloco_gguf_find_tensor(g, "blk.2.attn_q.weight") == NULL);
        CHECK(lloco_gguf_tensor_at(g, 0) != NULL && lloco_gguf_tensor_at(g, 21) == NULL);
        lloco_gguf_close(g);
    }
}

/* Compares every GGUF tensor with the F32 safetensors model it was made
 * from: norms bit-exact, F16 weights equal to the rounded F32 values,
 * quantized ones within the format's error, all after undoing Q/K's
 * permutation (which must be there: the identity mapping must not fit). */
TEST_CASE(gguf_matches_safetensors) {
    lloco_st *st = NULL;
    CHECK_OK(lloco_st_open(lloco_test_fixture("tiny-llama/hf"), &st));
    if (!st) return;
    float *y = malloc(256 * sizeof *y);
    for (size_t v = 0; v < LLOCO_ARRAY_LEN(variants); v++) {
        lloco_gguf *g = NULL;
        CHECK_OK(lloco_gguf_open(lloco_test_fixture(variants[v].file), &g));
        if (!g) continue;
        for (int64_t i = 0; i < lloco_st_n_tensors(st); i++) {
            const lloco_st_tensor *ht = lloco_st_tensor_at(st, i);
            char name[128];
            int n_head;
            gguf_name_of(ht->name, name, sizeof name, &n_head);
            const lloco_gguf_tensor *t = lloco_gguf_find_tensor(g, name);
            CHECKF(t, "%s: no tensor %s for %s", variants[v].file, name, ht->name);
            if (!t) continue;
            const float *ref = ht->data;
            if (ht->n_dims == 1) {
                CHECK(t->type == LLOCO_DTYPE_F32 && t->nbytes == ht->nbytes &&
                      !memcmp(t->data, ht->data, ht->nbytes));
                continue;
            }
            int64_t rows = t->ne[1], cols = t->ne[0];
            CHECK(ht->shape[0] == rows && ht->shape[1] == cols && cols <= 256);
            if (ht->shape[0] != rows || ht->shape[1] != cols || cols > 256) continue;
            size_t row_bytes = lloco_dtype_row_bytes(t->type, cols);
            double err = 0, err_id = 0, norm = 0;
            int f16_exact = 1;
            for (int64_t r = 0; r < rows; r++) {
                const uint8_t *src = (const uint8_t *)t->data + (size_t)r * row_bytes;
                const float *want = ref + hf_row(r, rows, n_head) * cols;
                const float *ident = ref + r * cols;
                CHECK_OK(lloco_dequantize_row(t->type, src, y, cols));
                for (int64_t c = 0; c < cols; c++) {
                    err += (double)(y[c] - want[c]) * (y[c] - want[c]);
                    err_id += (double)(y[c] - ident[c]) * (y[c] - ident[c]);
                    norm += (double)want[c] * want[c];
                    if (t->type == LLOCO_DTYPE_F16) {
                        uint16_t h;
                        memcpy(&h, src + 2 * c, 2);
                        f16_exact &= h == lloco_fp32_to_fp16(want[c]);
                    }
                }
            }
            double rel = sqrt(err / norm);
            CHECKF(rel < variants[v].tol, "%s: %s rel. RMS error %.4g (tolerance %.3g)",
                   variants[v].file, name, rel, variants[v].tol);
            if (n_head) CHECKF(sqrt(err_id / norm) > 0.5, "%s: %s is not permuted",
                               variants[v].file, name);
            if (t->type == LLOCO_DTYPE_F16) CHECKF(f16_exact, "%s: f16 rounding differs", name);
        }
        lloco_gguf_close(g);
    }
    free(y);
    lloco_st_close(st);
}

TEST_CASE(safetensors_fixtures) {
    const char *paths[] = {"tiny-llama/hf", "tiny-llama/hf/model.safetensors"};
    for (size_t p = 0; p < LLOCO_ARRAY_LEN(paths); p++) {
        lloco_st *st = NULL;
        CHECK_OK(lloco_st_open(lloco_test_fixture(paths[p]), &st));
        if (!st) continue;
        CHECK(lloco_st_n_shards(st) == 1);
        CHECK(lloco_st_n_tensors(st) == 2 * 9 + 3);
        const char *fmt = lloco_st_metadata(st, "format");
        CHECK(fmt && !strcmp(fmt, "pt"));
        CHECK(lloco_st_metadata(st, "nope") == NULL);
        const lloco_st_tensor *t = lloco_st_find(st, "model.embed_tokens.weight");
        CHECK(t && t->type == LLOCO_DTYPE_F32 && t->n_dims == 2 && t->shape[0] == 260 &&
              t->shape[1] == 256 && t->nbytes == 260 * 256 * 4 && t->shard == 0);
        t = lloco_st_find(st, "model.layers.1.self_attn.k_proj.weight");
        CHECK(t && t->n_dims == 2 && t->shape[0] == 128 && t->shape[1] == 256);
        t = lloco_st_find(st, "model.norm.weight");
        CHECK(t && t->n_dims == 1 && t->shape[0] == 256 && t->shape[1] == 1);
        CHECK(lloco_st_find(st, "model.layers.2.mlp.up_proj.weight") == NULL);
        CHECK(lloco_st_tensor_at(st, -1) == NULL && lloco_st_tensor_at(st, 21) == NULL);
        lloco_st_close(st);
    }
}

/* The BF16 shards hold the F32 model rounded to nearest even. */
TEST_CASE(safetensors_sharded_bf16) {
    lloco_st *f32 = NULL, *bf = NULL, *bf_idx = NULL;
    CHECK_OK(lloco_st_open(lloco_test_fixture("tiny-llama/hf"), &f32));
    CHECK_OK(lloco_st_open(lloco_test_fixture("tiny-llama/hf-sharded-bf16"), &bf));
    CHECK_OK(lloco_st_open(
        lloco_test_fixture("tiny-llama/hf-sharded-bf16/model.safetensors.index.json"), &bf_idx));
    if (f32 && bf && bf_idx) {
        CHECK(lloco_st_n_shards(bf) == 2 && lloco_st_n_shards(bf_idx) == 2);
        CHECK(lloco_st_n_tensors(bf) == lloco_st_n_tensors(f32));
        int shard_seen[2] = {0, 0};
        for (int64_t i = 0; i < lloco_st_n_tensors(f32); i++) {
            const lloco_st_tensor *a = lloco_st_tensor_at(f32, i);
            const lloco_st_tensor *b = lloco_st_find(bf, a->name);
            CHECKF(b, "%s missing from the shards", a->name);
            if (!b) continue;
            CHECK(b->type == LLOCO_DTYPE_BF16 && b->n_dims == a->n_dims &&
                  b->shape[0] == a->shape[0] && b->shape[1] == a->shape[1] &&
                  b->nbytes * 2 == a->nbytes);
            if (b->shard >= 0 && b->shard < 2) shard_seen[b->shard] = 1;
            size_t n = a->nbytes / 4, bad = 0;
            for (size_t k = 0; k < n && b->nbytes * 2 == a->nbytes; k++) {
                float x;
                uint16_t h;
                memcpy(&x, (const uint8_t *)a->data + 4 * k, 4);
                memcpy(&h, (const uint8_t *)b->data + 2 * k, 2);
                bad += h != lloco_fp32_to_bf16(x);
            }
            CHECKF(bad == 0, "%s: %zu values differ from bf16(f32)", a->name, bad);
            const lloco_st_tensor *c = lloco_st_find(bf_idx, a->name);
            CHECK(c && c->shard == b->shard && c->data != b->data && c->nbytes == b->nbytes &&
                  !memcmp(c->data, b->data, b->nbytes));
        }
        CHECK(shard_seen[0] && shard_seen[1]);
    }
    lloco_st_close(f32);
    lloco_st_close(bf);
    lloco_st_close(bf_idx);
}

/* ---- synthetic GGUF ------------------------------------------------------- */

/* Byte positions of the fields the hostile cases patch. */
typedef struct {
    size_t version, n_tensors, n_kv;
    size_t key0_len, key_u8, type_u8, align_val, arr_i32_count, arr_str_count, arr_str_type;
    size_t t_name[4], t_ndims[4], t_ne[4], t_type[4], t_off[4];
    size_t data;
} synth_at;

static void kv_head(buf *b, const char *key, lloco_gguf_type t) {
    put_str(b, key);
    put_u32(b, t);
}

/* A GGUF v3 with one key of every value type, arrays of strings and of
 * arrays (three deep), and four tensors: a F32 [4,3], b Q8_0 [64,2],
 * c Q4_K [256], d BF16 [2,2,2,2], at data offsets 0, 64, 224, 384. */
static void build_synth(buf *b, synth_at *at) {
    memset(at, 0, sizeof *at);
    b->n = 0;
    put(b, "GGUF", 4);
    at->version = b->n;
    put_u32(b, 3);
    at->n_tensors = b->n;
    put_u64(b, 4);
    at->n_kv = b->n;
    put_u64(b, 18);

    at->key0_len = b->n;
    kv_head(b, "general.architecture", LLOCO_GGUF_STRING);
    put_str(b, "llama");
    kv_head(b, "general.alignment", LLOCO_GGUF_UINT32);
    at->align_val = b->n;
    put_u32(b, 32);
    at->key_u8 = b->n + 8;
    kv_head(b, "t.u8", LLOCO_GGUF_UINT8);
    at->type_u8 = b->n - 4;
    put_u8(b, 200);
    kv_head(b, "t.i8", LLOCO_GGUF_INT8);
    put_u8(b, (uint8_t)-5);
    kv_head(b, "t.u16", LLOCO_GGUF_UINT16);
    put_u16(b, 60000);
    kv_head(b, "t.i16", LLOCO_GGUF_INT16);
    put_u16(b, (uint16_t)-30000);
    kv_head(b, "t.u32", LLOCO_GGUF_UINT32);
    put_u32(b, 4000000000u);
    kv_head(b, "t.i32", LLOCO_GGUF_INT32);
    put_u32(b, (uint32_t)-2000000000);
    kv_head(b, "t.f32", LLOCO_GGUF_FLOAT32);
    put_f32(b, 1.5f);
    kv_head(b, "t.bool", LLOCO_GGUF_BOOL);
    put_u8(b, 1);
    kv_head(b, "t.u64", LLOCO_GGUF_UINT64);
    put_u64(b, (uint64_t)1 << 40);
    kv_head(b, "t.i64", LLOCO_GGUF_INT64);
    put_u64(b, (uint64_t)-((int64_t)1 << 40));
    kv_head(b, "t.f64", LLOCO_GGUF_FLOAT64);
    put_f64(b, -2.25);
    kv_head(b, "t.arr_i32", LLOCO_GGUF_ARRAY);
    put_u32(b, LLOCO_GGUF_INT32);
    at->arr_i32_count = b->n;
    put_u64(b, 3);
    put_u32(b, 1), put_u32(b, 2), put_u32(b, 3);
    kv_head(b, "t.arr_str", LLOCO_GGUF_ARRAY);
    at->arr_str_type = b->n;
    put_u32(b, LLOCO_GGUF_STRING);
    at->arr_str_count = b->n;
    put_u64(b, 3);
    put_str(b, "a"), put_str(b, ""), put_str(b, "h\xc3\xa9llo");
    /* [[1u8, 2u8], ["x", "yz"], [], [[7u16]]] */
    kv_head(b, "t.nested", LLOCO_GGUF_ARRAY);
    put_u32(b, LLOCO_GGUF_ARRAY);
    put_u64(b, 4);
    put_u32(b, LLOCO_GGUF_UINT8), put_u64(b, 2), put_u8(b, 1), put_u8(b, 2);
    put_u32(b, LLOCO_GGUF_STRING), put_u64(b, 2), put_str(b, "x"), put_str(b, "yz");
    put_u32(b, LLOCO_GGUF_FLOAT64), put_u64(b, 0);
    put_u32(b, LLOCO_GGUF_ARRAY), put_u64(b, 1);
    put_u32(b, LLOCO_GGUF_UINT16), put_u64(b, 1), put_u16(b, 7);
    kv_head(b, "t.empty_arr", LLOCO_GGUF_ARRAY);
    put_u32(b, LLOCO_GGUF_STRING);
    put_u64(b, 0);
    kv_head(b, "t.after", LLOCO_GGUF_STRING);
    put_str(b, "end");

    static const struct {
        const char *name;
        uint32_t n_dims, ggml_type;
        uint64_t ne[4], off;
    } ts[4] = {
        {"a", 2, 0, {4, 3}, 0},
        {"b", 2, 8, {64, 2}, 64},
        {"c", 1, 12, {256}, 224},
        {"d", 4, 30, {2, 2, 2, 2}, 384},
    };
    for (int i = 0; i < 4; i++) {
        at->t_name[i] = b->n;
        put_str(b, ts[i].name);
        at->t_ndims[i] = b->n;
        put_u32(b, ts[i].n_dims);
        at->t_ne[i] = b->n;
        for (uint32_t d = 0; d < ts[i].n_dims; d++) put_u64(b, ts[i].ne[d]);
        at->t_type[i] = b->n;
        put_u32(b, ts[i].ggml_type);
        at->t_off[i] = b->n;
        put_u64(b, ts[i].off);
    }
    pad_to(b, 32);
    at->data = b->n;
    for (int i = 0; i < 480; i++) put_u8(b, (uint8_t)(i * 7)); /* [416, 480) unused */
    for (int i = 0; i < 12; i++) memcpy(b->p + at->data + 4 * i, &(float){0.5f * i}, 4);
}

TEST_CASE(gguf_synthetic_all_types) {
    buf b = {0};
    synth_at at;
    build_synth(&b, &at);
    lloco_gguf *g = NULL;
    CHECK_OK(lloco_gguf_open(write_tmp("ok.gguf", b.p, b.n), &g));
    if (g) {
        uint32_t u;
        int64_t i;
        float f;
        int bo;
        CHECK(lloco_gguf_n_kv(g) == 18 && lloco_gguf_n_tensors(g) == 4);
        CHECK(lloco_gguf_file_size(g) == b.n);
        CHECK(lloco_gguf_get_u32(g, "t.u8", &u) == 0 && u == 200);
        CHECK(lloco_gguf_get_i64(g, "t.i8", &i) == 0 && i == -5);
        CHECK_ERR(lloco_gguf_get_u32(g, "t.i8", &u), LLOCO_ERR_RANGE);
        CHECK(lloco_gguf_get_u32(g, "t.u16", &u) == 0 && u == 60000);
        CHECK(lloco_gguf_get_i64(g, "t.i16", &i) == 0 && i == -30000);
        CHECK(lloco_gguf_get_u32(g, "t.u32", &u) == 0 && u == 4000000000u);
        CHECK(lloco_gguf_get_i64(g, "t.i32", &i) == 0 && i == -2000000000);
        CHECK(lloco_gguf_get_f32(g, "t.f32", &f) == 0 && f == 1.5f);
        CHECK(lloco_gguf_get_bool(g, "t.bool", &bo) == 0 && bo == 1);
        CHECK_ERR(lloco_gguf_get_bool(g, "t.u8", &bo), LLOCO_ERR_TYPE);
        CHECK(lloco_gguf_get_i64(g, "t.u64", &i) == 0 && i == (int64_t)1 << 40);
        CHECK_ERR(lloco_gguf_get_u32(g, "t.u64", &u), LLOCO_ERR_RANGE);
        CHECK(lloco_gguf_get_i64(g, "t.i64", &i) == 0 && i == -((int64_t)1 << 40));
        CHECK(lloco_gguf_get_f32(g, "t.f64", &f) == 0 && f == -2.25f);
        const char *s;
        size_t len;
        CHECK(lloco_gguf_get_str(g, "t.after", &s, &len) == 0 && len == 3 && !memcmp(s, "end", 3));
        lloco_gguf_type et;
        uint64_t n;
        const void *data;
        CHECK(lloco_gguf_get_arr(g, "t.arr_i32", &et, &n, &data) == 0 &&
              et == LLOCO_GGUF_INT32 && n == 3);
        int32_t vals[3] = {0};
        if (n == 3) memcpy(vals, data, sizeof vals);
        CHECK(vals[0] == 1 && vals[1] == 2 && vals[2] == 3);
        CHECK(lloco_gguf_get_arr_str(g, "t.arr_str", 1, &s, &len) == 0 && len == 0);
        CHECK(lloco_gguf_get_arr_str(g, "t.arr_str", 2, &s, &len) == 0 && len == 6 &&
              !memcmp(s, "h\xc3\xa9llo", 6));
        CHECK(lloco_gguf_get_arr(g, "t.nested", &et, &n, &data) == 0 &&
              et == LLOCO_GGUF_ARRAY && n == 4);
        CHECK(lloco_gguf_get_arr(g, "t.empty_arr", &et, &n, &data) == 0 && n == 0);
        CHECK_ERR(lloco_gguf_get_arr_str(g, "t.empty_arr", 0, &s, &len), LLOCO_ERR_RANGE);
        char fmt[64];
        const char *keys[] = {"t.i8", "t.f64", "t.bool", "t.nested", "t.u64"};
        const char *want[] = {"-5", "-2.25", "true", "[ARRAY x 4]", "1099511627776"};
        for (int k = 0; k < 5; k++) {
            lloco_gguf_kv_format(g, lloco_gguf_find_key(g, keys[k]), fmt, sizeof fmt);
            CHECKF(!strcmp(fmt, want[k]), "%s formats as %s", keys[k], fmt);
        }
        CHECK(!strcmp(lloco_gguf_type_name(LLOCO_GGUF_FLOAT64), "FLOAT64"));

        const lloco_gguf_tensor *t = lloco_gguf_tensor_at(g, 0);
        CHECK(!strcmp(t->name, "a") && t->type == LLOCO_DTYPE_F32 && t->nbytes == 48);
        float x;
        memcpy(&x, (const uint8_t *)t->data + 4 * 11, 4);
        CHECK(x == 5.5f);
        t = lloco_gguf_find_tensor(g, "b");
        CHECK(t && t->type == LLOCO_DTYPE_Q8_0 && t->nbytes == 2 * 2 * 34);
        t = lloco_gguf_find_tensor(g, "c");
        CHECK(t && t->type == LLOCO_DTYPE_Q4_K && t->n_dims == 1 && t->nbytes == 144);
        t = lloco_gguf_find_tensor(g, "d");
        CHECK(t && t->type == LLOCO_DTYPE_BF16 && t->n_dims == 4 && t->ne[3] == 2 &&
              t->nbytes == 32);
        const lloco_gguf_tensor *a = lloco_gguf_find_tensor(g, "a");
        CHECK(a && t && (const uint8_t *)t->data - (const uint8_t *)a->data == 384);
        lloco_gguf_close(g);
    }
    /* general.alignment 64 is legal, and moves the data section: b at 64
     * stays aligned but c at 224 no longer is. */
    patch_u32(&b, at.align_val, 64);
    CHECK_GGUF(&b, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "'c'") && strstr(lloco_last_error(), "alignment"));
    free(b.p);
}

TEST_CASE(gguf_hostile_headers) {
    buf b = {0};
    synth_at at;
    const uint64_t huge = (uint64_t)1 << 62;
#define MUTATE(stmt, err)                                                             \
    do {                                                                              \
        build_synth(&b, &at);                                                         \
        stmt;                                                                         \
        lloco_error_clear();                                                          \
        int rc_ = open_gguf_bytes(&b, b.n);                                           \
        CHECKF(rc_ == (err), "%s: expected %s, got %d: %s", #stmt, lloco_strerror(err), \
               rc_, lloco_last_error());                                              \
    } while (0)

    MUTATE(b.p[0] = 'X', LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.version, 1), LLOCO_ERR_UNSUPPORTED);
    CHECK(strstr(lloco_last_error(), "version 1"));
    MUTATE(patch_u32(&b, at.version, 99), LLOCO_ERR_UNSUPPORTED);
    MUTATE(patch_u32(&b, at.version, 0), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.version, 0x03000000u), LLOCO_ERR_UNSUPPORTED); /* big-endian */
    CHECK(strstr(lloco_last_error(), "big-endian"));
    MUTATE(patch_u64(&b, at.n_tensors, huge), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.n_tensors, UINT64_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.n_kv, huge), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.n_kv, UINT64_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.n_tensors, 5), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.key0_len, huge), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.key0_len, UINT64_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.key0_len, b.n - at.key0_len - 8 + 1), LLOCO_ERR_FORMAT);
    MUTATE(b.p[at.key_u8 + 2] = 'i', LLOCO_ERR_FORMAT); /* t.u8 -> t.i8: duplicate key */
    CHECK(strstr(lloco_last_error(), "duplicate"));
    MUTATE(b.p[at.key_u8 + 1] = 0, LLOCO_ERR_FORMAT); /* NUL inside a key */
    MUTATE(patch_u32(&b, at.type_u8, 13), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.type_u8, UINT32_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.arr_i32_count, huge), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.arr_i32_count, UINT64_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.arr_str_count, huge), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.arr_str_count, 1000), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.arr_str_type, 13), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.align_val, 0), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "alignment"));
    MUTATE(patch_u32(&b, at.align_val, 3), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.align_val, 0x80000000u), LLOCO_ERR_FORMAT);

    /* tensor infos */
    MUTATE(patch_u32(&b, at.t_ndims[0], 5), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "'a'") && strstr(lloco_last_error(), "5 dimensions"));
    MUTATE(patch_u32(&b, at.t_ndims[0], 0), LLOCO_ERR_FORMAT);
    MUTATE(patch_u32(&b, at.t_ndims[0], UINT32_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.t_ne[0], huge), LLOCO_ERR_FORMAT); /* [2^62, 3] overflows */
    CHECK(strstr(lloco_last_error(), "overflow"));
    MUTATE(patch_u64(&b, at.t_ne[0], UINT64_MAX), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.t_ne[0], 0), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.t_ne[1], 48), LLOCO_ERR_FORMAT); /* Q8_0 ne0 not a block multiple */
    CHECK(strstr(lloco_last_error(), "block"));
    MUTATE((patch_u64(&b, at.t_ne[1], (uint64_t)1 << 40),
            patch_u64(&b, at.t_ne[1] + 8, (uint64_t)1 << 40)),
           LLOCO_ERR_FORMAT); /* fits int64 elements, but not the file */
    MUTATE(patch_u32(&b, at.t_type[0], 6), LLOCO_ERR_UNSUPPORTED); /* Q5_0 */
    CHECK(strstr(lloco_last_error(), "'a'") && strstr(lloco_last_error(), "type 6"));
    MUTATE(patch_u32(&b, at.t_type[2], 1000), LLOCO_ERR_UNSUPPORTED);
    CHECK(strstr(lloco_last_error(), "'c'") && strstr(lloco_last_error(), "1000"));
    MUTATE(patch_u64(&b, at.t_off[1], 65), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "'b'") && strstr(lloco_last_error(), "alignment"));
    MUTATE(patch_u64(&b, at.t_off[1], (uint64_t)1 << 40), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "beyond end of file"));
    MUTATE(patch_u64(&b, at.t_off[1], UINT64_MAX - 31), LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.t_off[3], 480), LLOCO_ERR_FORMAT); /* d ends 32 bytes past EOF */
    MUTATE(patch_u64(&b, at.t_off[2], 192), LLOCO_ERR_FORMAT); /* c overlaps b's [64, 200) */
    CHECK(strstr(lloco_last_error(), "overlap"));
    MUTATE(b.p[at.t_name[1] + 8] = 'a', LLOCO_ERR_FORMAT); /* two tensors named 'a' */
    CHECK(strstr(lloco_last_error(), "duplicate tensor name 'a'"));
    MUTATE(b.p[at.t_name[2] + 8] = 0, LLOCO_ERR_FORMAT);
    MUTATE(patch_u64(&b, at.t_name[0], 0), LLOCO_ERR_FORMAT); /* empty name */
    MUTATE(patch_u64(&b, at.t_name[0], huge), LLOCO_ERR_FORMAT);
    /* Tensors may lie in any order and with gaps, as long as they do not
     * overlap: move a (listed first) to the end of the data. */
    MUTATE(patch_u64(&b, at.t_off[0], 416), 0);
    MUTATE(patch_u64(&b, at.t_off[0], 448), LLOCO_ERR_FORMAT);
#undef MUTATE
    free(b.p);
}

/* Enough names to make the reader's name storage grow several times,
 * while both keys and tensor names are being read. */
TEST_CASE(gguf_many_names) {
    enum { N_KV = 300, N_T = 200 };
    buf b = {0};
    char name[128];
    put(&b, "GGUF", 4);
    put_u32(&b, 2); /* v2 has the same layout as v3 */
    put_u64(&b, N_T);
    put_u64(&b, N_KV);
    for (int i = 0; i < N_KV; i++) {
        snprintf(name, sizeof name, "some.rather.long.metadata.key.name.number.%04d.padding", i);
        kv_head(&b, name, LLOCO_GGUF_INT32);
        put_u32(&b, (uint32_t)(i * 3));
    }
    for (int i = 0; i < N_T; i++) {
        snprintf(name, sizeof name, "blk.%d.a.fairly.long.tensor.name.for.testing.weight", i);
        put_str(&b, name);
        put_u32(&b, 1);
        put_u64(&b, 8);
        put_u32(&b, 0);
        put_u64(&b, (uint64_t)i * 32);
    }
    pad_to(&b, 32);
    for (int i = 0; i < N_T * 32; i++) put_u8(&b, (uint8_t)i);
    lloco_gguf *g = NULL;
    CHECK_OK(lloco_gguf_open(write_tmp("many.gguf", b.p, b.n), &g));
    if (g) {
        CHECK(lloco_gguf_version(g) == 2);
        int bad = 0;
        for (int i = 0; i < N_KV; i++) {
            snprintf(name, sizeof name, "some.rather.long.metadata.key.name.number.%04d.padding",
                     i);
            int64_t v = -1;
            bad += lloco_gguf_get_i64(g, name, &v) != 0 || v != i * 3 ||
                   strcmp(lloco_gguf_key_name(g, i), name) != 0;
        }
        CHECKF(bad == 0, "%d keys wrong", bad);
        bad = 0;
        for (int i = 0; i < N_T; i++) {
            snprintf(name, sizeof name, "blk.%d.a.fairly.long.tensor.name.for.testing.weight", i);
            const lloco_gguf_tensor *t = lloco_gguf_find_tensor(g, name);
            bad += !t || t != lloco_gguf_tensor_at(g, i) || strcmp(t->name, name) != 0 ||
                   ((const uint8_t *)t->data)[0] != (uint8_t)(i * 32);
        }
        CHECKF(bad == 0, "%d tensors wrong", bad);
        lloco_gguf_close(g);
    }
    free(b.p);
}

/* The default model (a real llama.cpp file), when it has been fetched. */
TEST_CASE(gguf_default_model) {
    const char *path = lloco_test_default_model();
    if (!path) SKIP("default model not fetched");
    lloco_gguf *g = NULL;
    CHECK_OK(lloco_gguf_open(path, &g));
    if (!g) return;
    uint32_t u;
    float f;
    const char *s;
    size_t len;
    CHECK(lloco_gguf_get_u32(g, "llama.block_count", &u) == 0 && u == 30);
    CHECK(lloco_gguf_get_u32(g, "llama.attention.head_count_kv", &u) == 0 && u == 3);
    CHECK(lloco_gguf_get_f32(g, "llama.rope.freq_base", &f) == 0 && f == 100000.0f);
    CHECK(lloco_gguf_get_str(g, "tokenizer.ggml.model", &s, &len) == 0 && len == 4 &&
          !memcmp(s, "gpt2", 4));
    CHECK(lloco_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 49151, &s, &len) == 0);
    lloco_gguf_type et;
    uint64_t n;
    CHECK(lloco_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n, NULL) == 0 &&
          et == LLOCO_GGUF_STRING && n > 40000);
    CHECK(lloco_gguf_n_tensors(g) == 272);
    const lloco_gguf_tensor *t = lloco_gguf_find_tensor(g, "blk.29.ffn_down.weight");
    CHECK(t && t->n_dims == 2 && t->ne[0] == 1536 && t->ne[1] == 576);
    t = lloco_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t && t->ne[0] == 576 && t->ne[1] == 49152);
    lloco_gguf_close(g);
}

/* Arrays of arrays nested past the reader's limit are refused (they would
 * otherwise recurse once per 12 bytes of file). */
TEST_CASE(gguf_deep_nesting) {
    for (int depth = 1; depth <= 40; depth += 39) {
        buf b = {0};
        put(&b, "GGUF", 4);
        put_u32(&b, 3);
        put_u64(&b, 0);
        put_u64(&b, 1);
        kv_head(&b, "deep", LLOCO_GGUF_ARRAY);
        for (int i = 0; i < depth; i++) put_u32(&b, LLOCO_GGUF_ARRAY), put_u64(&b, 1);
        put_u32(&b, LLOCO_GGUF_UINT8), put_u64(&b, 1), put_u8(&b, 9);
        int rc = open_gguf_bytes(&b, b.n);
        CHECKF(rc == (depth < 16 ? 0 : LLOCO_ERR_FORMAT), "depth %d: %d %s", depth, rc,
               lloco_last_error());
        free(b.p);
    }
}

/* Every prefix of a file shorter than min_len (its last tensor's end) is
 * refused: all lengths if every_byte, else the first 200 and every 1/37th. */
static void check_truncations(const buf *b, size_t min_len, int every_byte) {
    int n_bad = 0;
    size_t step = b->n / 37 + 1;
    for (size_t len = 0; len < min_len && n_bad < 5; len++) {
        if (!every_byte && len >= 200 && len % step != 0) continue;
        int rc = open_gguf_bytes(b, len);
        if (rc != LLOCO_ERR_FORMAT) {
            n_bad++;
            lloco_test_fail(__FILE__, __LINE__, "truncated to %zu of %zu: got %d: %s", len,
                            b->n, rc, lloco_last_error());
        }
    }
}

TEST_CASE(gguf_truncated) {
    buf b = {0};
    synth_at at;
    build_synth(&b, &at);
    check_truncations(&b, at.data + 416, 1);
    CHECK(open_gguf_bytes(&b, at.data + 416) == 0);
    free(b.p);

    /* The writer may pad after the last tensor, and losing that padding is
     * harmless, so the real file is cut short of its last alignment unit. */
    buf f = {0};
    read_all(lloco_test_fixture("tiny-llama/tiny-q4_0.gguf"), &f);
    CHECK(f.n > 64);
    check_truncations(&f, f.n - 32, 0);
    free(f.p);
}

/* Flipping any header byte of the synthetic file to a few values either
 * still parses or fails cleanly; under ASan this is the crash test. */
TEST_CASE(gguf_byte_flips) {
    buf b = {0};
    synth_at at;
    build_synth(&b, &at);
    static const uint8_t vals[] = {0x00, 0xff, 0x41};
    for (size_t pos = 0; pos < at.data; pos++) {
        for (size_t k = 0; k < LLOCO_ARRAY_LEN(vals); k++) {
            uint8_t orig = b.p[pos];
            if (orig == vals[k]) continue;
            b.p[pos] = vals[k];
            lloco_gguf *g = NULL;
            int rc = lloco_gguf_open(write_tmp("flip.gguf", b.p, b.n), &g);
            CHECKF(rc <= 0, "rc %d", rc);
            if (rc == 0) {
                for (int64_t i = 0; i < lloco_gguf_n_tensors(g); i++) {
                    const lloco_gguf_tensor *t = lloco_gguf_tensor_at(g, i);
                    volatile uint8_t sink = ((const uint8_t *)t->data)[t->nbytes - 1];
                    (void)sink;
                }
                lloco_gguf_close(g);
            } else {
                CHECKF(lloco_last_error()[0], "no detail at byte %zu", pos);
            }
            b.p[pos] = orig;
        }
    }
    free(b.p);
}

/* ---- safetensors ------------------------------------------------------------ */

TEST_CASE(safetensors_synthetic) {
    static const char *hdr =
        "{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\"},"
        "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[32,34]},"
        "\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[34,34]}}   ";
    uint8_t data[34];
    for (int i = 0; i < 34; i++) data[i] = (uint8_t)i;
    lloco_st *st = NULL;
    CHECK_OK(open_st_bytes("ok.safetensors", hdr, data, sizeof data, &st));
    if (st) {
        CHECK(lloco_st_n_tensors(st) == 4 && lloco_st_n_shards(st) == 1);
        CHECK(lloco_st_metadata(st, "k") && !strcmp(lloco_st_metadata(st, "k"), "v"));
        const lloco_st_tensor *t = lloco_st_find(st, "w");
        CHECK(t && t->type == LLOCO_DTYPE_F32 && t->n_dims == 2 && t->shape[0] == 2 &&
              t->shape[1] == 3 && t->nbytes == 24 && ((const uint8_t *)t->data)[5] == 5);
        t = lloco_st_find(st, "h");
        CHECK(t && t->type == LLOCO_DTYPE_F16 && t->nbytes == 8 &&
              ((const uint8_t *)t->data)[0] == 24);
        t = lloco_st_find(st, "s");
        CHECK(t && t->type == LLOCO_DTYPE_BF16 && t->n_dims == 0 && t->nbytes == 2);
        t = lloco_st_find(st, "z");
        CHECK(t && t->n_dims == 2 && t->shape[0] == 0 && t->nbytes == 0);
        lloco_st_close(st);
    }

#define T(body) "{\"t\":{" body "}}"
    CHECK_ST("{}", 0, 0);
    CHECK_ST("not json", 8, LLOCO_ERR_FORMAT);
    CHECK_ST("{\"t\":{\"dtype\":\"F32\",", 8, LLOCO_ERR_FORMAT);
    CHECK_ST("[1,2]", 8, LLOCO_ERR_FORMAT);
    CHECK_ST("{} x", 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"shape\":[2],\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]"), 8, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "'t'"));
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,7.5]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]"), 8,
             LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]"), 8, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "beyond"));
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]"), 8,
             LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "12 bytes"));
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]"), 8,
             LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
               "\"data_offsets\":[0,8]"),
             8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]"), 8,
             LLOCO_ERR_UNSUPPORTED);
    /* Non-float dtypes (BERT's int64 position_ids) are listed with the
     * LLOCO_DTYPE_COUNT marker and their sizes checked; unknown ones refused. */
    static const uint8_t zeros_i64[8];
    lloco_st *ist = NULL;
    CHECK_OK(open_st_bytes("i64.safetensors", T("\"dtype\":\"I64\",\"shape\":[1],"
                                                 "\"data_offsets\":[0,8]"),
                           zeros_i64, 8, &ist));
    if (ist) {
        CHECK(lloco_st_n_tensors(ist) == 1 && lloco_st_find(ist, "t")->type == LLOCO_DTYPE_COUNT);
        lloco_st_close(ist);
    }
    CHECK_ST(T("\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]"), 8, LLOCO_ERR_FORMAT);
    CHECK_ST(T("\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]"), 8, 0);
    CHECK_ST(T("\"dtype\":\"Q99\",\"shape\":[1],\"data_offsets\":[0,8]"), 8,
             LLOCO_ERR_UNSUPPORTED);
    CHECK(strstr(lloco_last_error(), "'t'") && strstr(lloco_last_error(), "Q99"));
    CHECK_ST("{\"t\":3}", 8, LLOCO_ERR_FORMAT);
    CHECK_ST("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             12, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "overlap"));
    CHECK_ST("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "twice"));
    CHECK_ST("{\"__metadata__\":{\"n\":1}}", 0, LLOCO_ERR_FORMAT);
    CHECK_ST("{\"__metadata__\":[]}", 0, LLOCO_ERR_FORMAT);
#undef T

    /* header length field against the file */
    uint8_t raw[24] = {0};
    uint64_t hl = 100;
    memcpy(raw, &hl, 8);
    memcpy(raw + 8, "{}", 2);
    lloco_st *bad = NULL;
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, sizeof raw), &bad),
              LLOCO_ERR_FORMAT);
    CHECK_DETAIL();
    hl = UINT64_MAX;
    memcpy(raw, &hl, 8);
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, sizeof raw), &bad),
              LLOCO_ERR_FORMAT);
    hl = 16;
    memcpy(raw, &hl, 8);
    memset(raw + 8, ' ', 16);
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, sizeof raw), &bad),
              LLOCO_ERR_FORMAT); /* all spaces: no JSON */
    memcpy(raw + 8, "{}", 3); /* a NUL is not padding */
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, sizeof raw), &bad),
              LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "junk"));
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, 5), &bad), LLOCO_ERR_FORMAT);
    CHECK_ERR(lloco_st_open(write_tmp("a.safetensors", raw, 0), &bad), LLOCO_ERR_FORMAT);
    CHECK(bad == NULL);

    /* A header length within the file but past the size cap: a sparse
     * file makes the 200 MB cheap. */
    hl = (uint64_t)200 << 20;
    memcpy(raw, &hl, 8);
    const char *big = write_tmp("big.safetensors", raw, 10);
    CHECK(truncate(big, (off_t)(hl + 8)) == 0);
    CHECK_ERR(lloco_st_open(big, &bad), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "cap"));
    remove(big);
}

TEST_CASE(safetensors_truncated) {
    buf f = {0};
    read_all(lloco_test_fixture("tiny-llama/hf-sharded-bf16/model-00001-of-00002.safetensors"),
             &f);
    int n_bad = 0;
    for (size_t len = 0; len < f.n && n_bad < 5; len++) {
        if (len >= 200 && len % (f.n / 37 + 1) != 0 && len != f.n - 1) continue;
        lloco_st *st = NULL;
        lloco_error_clear();
        int rc = lloco_st_open(write_tmp("trunc.safetensors", f.p, len), &st);
        lloco_st_close(st);
        if (rc != LLOCO_ERR_FORMAT || !strstr(lloco_last_error(), tmp_dir)) {
            n_bad++;
            lloco_test_fail(__FILE__, __LINE__, "truncated to %zu of %zu: got %d: %s", len, f.n,
                            rc, lloco_last_error());
        }
    }
    free(f.p);
}

TEST_CASE(safetensors_index_errors) {
    /* A valid shard the indexes below point at. */
    static const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    static const uint8_t data[8];
    CHECK_OK(open_st_bytes("shard1.safetensors", hdr, data, sizeof data, NULL));

    lloco_st *st = NULL;
    const char *idx = write_tmp_str("good.index.json",
                                    "{\"metadata\":{},\"weight_map\":{\"w\":\"shard1.safetensors\"}}");
    CHECK_OK(lloco_st_open(idx, &st));
    if (st) {
        CHECK(lloco_st_n_shards(st) == 1 && lloco_st_find(st, "w"));
        lloco_st_close(st);
        st = NULL;
    }
    static const struct {
        const char *json;
        int err;
    } cases[] = {
        {"{\"weight_map\":{\"w\":\"missing.safetensors\"}}", LLOCO_ERR_NOTFOUND},
        {"{\"weight_map\":{\"w\":\"../x\"}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{\"w\":\"/etc/passwd\"}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{\"w\":\"..\"}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{\"w\":\"\"}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{\"w\":3}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{\"w\":\"shard1.safetensors\",\"v\":\"shard1.safetensors\"}}",
         LLOCO_ERR_FORMAT},
        {"{\"weight_map\":{}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":[]}", LLOCO_ERR_FORMAT},
        {"{\"metadata\":{}}", LLOCO_ERR_FORMAT},
        {"{\"weight_map\":", LLOCO_ERR_FORMAT},
    };
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(cases); i++) {
        lloco_error_clear();
        int rc = lloco_st_open(write_tmp_str("bad.index.json", cases[i].json), &st);
        CHECKF(rc == cases[i].err, "%s: got %d (%s)", cases[i].json, rc, lloco_last_error());
        CHECK_DETAIL();
        CHECK(st == NULL);
    }
    /* The same tensor in two shards. */
    CHECK_OK(open_st_bytes("shard2.safetensors", hdr, data, sizeof data, NULL));
    lloco_error_clear();
    CHECK_ERR(lloco_st_open(write_tmp_str("dup.index.json",
                                          "{\"weight_map\":{\"w\":\"shard1.safetensors\","
                                          "\"x\":\"shard2.safetensors\"}}"),
                            &st),
              LLOCO_ERR_FORMAT);
    CHECK_DETAIL();

    /* Directories: neither file present; a missing path. */
    make_tmp_dir();
    char sub[600];
    snprintf(sub, sizeof sub, "%s/empty", tmp_dir);
    LLOCO_ASSERT(mkdir(sub, 0700) == 0);
    CHECK_ERR(lloco_st_open(sub, &st), LLOCO_ERR_NOTFOUND);
    CHECK_DETAIL();
    CHECK_ERR(lloco_st_open(tmp_path("no-such.safetensors"), &st), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(lloco_gguf_open(tmp_path("no-such.gguf"), &(lloco_gguf *){NULL}),
              LLOCO_ERR_NOTFOUND);
}
