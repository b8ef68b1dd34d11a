/* Tokenizers against reference implementations, with the ids that
 * tests/tools/make_tokenizer_golden.py recorded for every case of
 * tests/fixtures/tokenizer/corpus.json: SmolLM2 (llama.cpp), a SentencePiece
 * BPE (sentencepiece, llama.cpp, tokenizers), byte-level BPEs under every
 * supported pre-tokenizer (llama.cpp, tokenizers); plus round trips, the
 * streaming detokenizer, special tokens, BOS and error paths.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "decoder/decoder.h"
#include "decoder/gguf.h"
#include "decoder/tokenizer_internal.h"
#include "test.h"

/* ---- helpers -------------------------------------------------------------- */

#define MAX_IDS 4096
#define MAX_TEXT 8192

static cJSON *read_golden(const char *rel) {
    char *buf;
    size_t len;
    int rc = lloco_file_read(lloco_test_fixture(rel), 16 << 20, &buf, &len);
    CHECKF(rc == 0, "%s: %s", rel, lloco_last_error());
    if (rc) return NULL;
    cJSON *root = cJSON_ParseWithLength(buf, len);
    free(buf);
    CHECKF(root != NULL, "%s: bad JSON", rel);
    return root;
}

static int hex_digit(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Decodes a fixture's hex string into out (MAX_TEXT bytes). */
static size_t unhex(const char *hex, char *out) {
    size_t n = strlen(hex) / 2;
    LLOCO_ASSERT(n <= MAX_TEXT);
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
    return n;
}

/* Reads a JSON id list; more than cap ids is a broken fixture. */
static int json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (n == cap) {
            CHECKF(0, "golden id list longer than %d", cap);
            break;
        }
        out[n++] = (int32_t)e->valuedouble;
    }
    return n;
}

static void fmt_ids(const int32_t *ids, int n, char *buf, size_t cap) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && o + 16 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%d", i ? " " : "", ids[i]);
    snprintf(buf + o, cap - o, "%s]", o + 16 >= cap ? " ..." : "");
}

static int is_valid_utf8(const char *s, size_t n) {
    char *clean;
    size_t cn;
    if (lloco_utf8_sanitize(s, n, &clean, &cn)) return 0;
    int ok = cn == n && memcmp(clean, s, n) == 0;
    free(clean);
    return ok;
}

/* Decoding ids one at a time through lloco_detok must give decode's bytes,
 * and no chunk may end inside a UTF-8 character when the whole is valid. */
static void check_stream(const lloco_tokenizer *t, const int32_t *ids, int n, int render_special,
                         const char *note) {
    static char want[MAX_TEXT], got[MAX_TEXT];
    int wn = lloco_tokenizer_decode(t, ids, n, render_special, want, MAX_TEXT);
    CHECKF(wn >= 0 && wn < MAX_TEXT, "'%s': decode -> %d", note, wn);
    if (wn < 0 || wn >= MAX_TEXT) return;
    int whole_valid = is_valid_utf8(want, (size_t)wn);
    lloco_detok d;
    lloco_detok_init(&d, t, render_special);
    int gn = 0;
    for (int i = 0; i <= n; i++) {
        char chunk[512];
        int k = i < n ? lloco_detok_push(&d, ids[i], chunk, (int)sizeof chunk)
                      : lloco_detok_flush(&d, chunk, (int)sizeof chunk);
        CHECKF(k >= 0 && k <= (int)sizeof chunk, "'%s': detok -> %d", note, k);
        if (k < 0 || k > (int)sizeof chunk || gn + k > MAX_TEXT) return;
        if (whole_valid && !is_valid_utf8(chunk, (size_t)k)) {
            CHECKF(0, "'%s': detok chunk %d (%d bytes) is not whole UTF-8", note, i, k);
            return;
        }
        memcpy(got + gn, chunk, (size_t)k);
        gn += k;
    }
    CHECKF(gn == wn && memcmp(got, want, (size_t)wn) == 0,
           "'%s': streamed %d bytes differ from decode's %d", note, gn, wn);
}

/* Which reference ids a tokenizer must reproduce. */
typedef struct {
    const char *key;   /* field of each golden case */
    int parse_special;
    int valid_only;    /* the reference differs on invalid UTF-8 by design */
} ref_spec;

/* Encodes every golden case and compares with each reference; prints the
 * first mismatch per reference with both id lists. Also round-trips and
 * streams every case. */
static void check_golden(const lloco_tokenizer *t, const char *golden, const ref_spec *refs,
                         int n_refs) {
    cJSON *root = read_golden(golden);
    if (!root) return;
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(root, "cases");
    CHECKF(cJSON_GetArraySize(cases) >= 50, "%s: only %d cases", golden,
           cJSON_GetArraySize(cases));
    static char text[MAX_TEXT], dec[MAX_TEXT];
    static int32_t want[MAX_IDS], got[MAX_IDS];
    int mismatch[8] = {0}, n_checked = 0;
    LLOCO_ASSERT(n_refs <= 8);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *note = cJSON_GetObjectItemCaseSensitive(c, "note")->valuestring;
        size_t len = unhex(cJSON_GetObjectItemCaseSensitive(c, "hex")->valuestring, text);
        int valid = is_valid_utf8(text, len);
        for (int r = 0; r < n_refs; r++) {
            if (refs[r].valid_only && !valid) continue;
            int wn = json_ids(cJSON_GetObjectItemCaseSensitive(c, refs[r].key), want, MAX_IDS);
            int gn = 0;
            int rc = lloco_tokenizer_encode(t, text, len, 0, refs[r].parse_special, got, MAX_IDS,
                                            &gn);
            CHECKF(rc == 0, "%s '%s': encode -> %s: %s", golden, note, lloco_strerror(rc),
                   lloco_last_error());
            n_checked++;
            if (rc == 0 && (gn != wn || memcmp(got, want, (size_t)wn * sizeof *want) != 0) &&
                !mismatch[r]++) {
                char a[2048], b[2048];
                fmt_ids(want, wn, a, sizeof a);
                fmt_ids(got, gn, b, sizeof b);
                CHECKF(0, "%s '%s' (%s, parse_special=%d):\n    want %s\n    got  %s", golden,
                       note, refs[r].key, refs[r].parse_special, a, b);
            }
        }

        /* decode(encode(x)) == x, invalid bytes read as U+FFFD. */
        int gn = 0;
        CHECK_OK(lloco_tokenizer_encode(t, text, len, 0, 0, got, MAX_IDS, &gn));
        char *clean;
        size_t cn;
        CHECK_OK(lloco_utf8_sanitize(text, len, &clean, &cn));
        int dn = lloco_tokenizer_decode(t, got, gn, 0, dec, MAX_TEXT);
        CHECKF(dn == (int)cn && memcmp(dec, clean, cn) == 0,
               "%s '%s': decode(encode(x)) gives %d bytes '%.*s', want %zu", golden, note, dn,
               dn > 0 && dn < MAX_TEXT ? dn : 0, dec, cn);
        check_stream(t, got, gn, 0, note);
        /* Byte-level BPE also round-trips special tokens when they print. */
        CHECK_OK(lloco_tokenizer_encode(t, text, len, 0, 1, got, MAX_IDS, &gn));
        dn = lloco_tokenizer_decode(t, got, gn, 1, dec, MAX_TEXT);
        CHECKF(lloco_tokenizer_kind_of(t) != LLOCO_TOKENIZER_BPE ||
                   (dn == (int)cn && memcmp(dec, clean, cn) == 0),
               "%s '%s': decode(encode(x, specials), specials) gives %d bytes, want %zu", golden,
               note, dn, cn);
        free(clean);
        check_stream(t, got, gn, 1, note);
    }
    for (int r = 0; r < n_refs; r++)
        CHECKF(!mismatch[r], "%s: %d cases differ from %s", golden, mismatch[r], refs[r].key);
    CHECK(n_checked > 0);
    cJSON_Delete(root);
}

static lloco_tokenizer *open_gguf_tokenizer(const char *path) {
    lloco_gguf *g = NULL;
    lloco_tokenizer *t = NULL;
    int rc = lloco_gguf_open(path, &g);
    CHECKF(rc == 0, "gguf_open(%s): %s", path, lloco_last_error());
    if (rc) return NULL;
    rc = lloco_tokenizer_load_gguf(g, &t);
    CHECKF(rc == 0, "tokenizer_load_gguf(%s): %s", path, lloco_last_error());
    lloco_gguf_close(g); /* the tokenizer keeps copies */
    return t;
}

static lloco_tokenizer *open_json_tokenizer(const char *rel) {
    lloco_tokenizer *t = NULL;
    int rc = lloco_tokenizer_load_json(lloco_test_fixture(rel), &t);
    CHECKF(rc == 0, "tokenizer_load_json(%s): %s", rel, lloco_last_error());
    return t;
}

static int encode_str(const lloco_tokenizer *t, const char *s, int add_bos, int parse_special,
                      int32_t *out, int cap) {
    int n = -1;
    int rc = lloco_tokenizer_encode(t, s, strlen(s), add_bos, parse_special, out, cap, &n);
    CHECKF(rc == 0, "encode('%s'): %s", s, lloco_last_error());
    return rc ? -1 : n;
}

/* ---- parity --------------------------------------------------------------- */

TEST_CASE(tokenizer_smollm2_parity) {
    const char *path = lloco_test_default_model();
    CHECKF(path != NULL, "the SmolLM2 model is required for tokenizer parity");
    if (!path) return;
    lloco_tokenizer *t = open_gguf_tokenizer(path);
    if (!t) return;
    CHECK(lloco_tokenizer_kind_of(t) == LLOCO_TOKENIZER_BPE);
    CHECK(strcmp(lloco_tokenizer_pre_name(t), "smollm") == 0);
    CHECK(lloco_tokenizer_n_vocab(t) == 49152);
    const ref_spec refs[] = {{"ids", 0, 0}, {"ids_special", 1, 0}};
    check_golden(t, "tokenizer/smollm2.golden.json", refs, 2);
    lloco_tokenizer_free(t);
}

/* llama.cpp feeds invalid UTF-8 to its SentencePiece merger as raw bytes
 * (they come out as <0xNN>); sentencepiece, HF and lloco read U+FFFD. */
TEST_CASE(tokenizer_spm_gguf_parity) {
    lloco_tokenizer *t = open_gguf_tokenizer(lloco_test_fixture("tokenizer/spm/spm.gguf"));
    if (!t) return;
    CHECK(lloco_tokenizer_kind_of(t) == LLOCO_TOKENIZER_SPM);
    CHECK(lloco_tokenizer_n_vocab(t) == 1000);
    const ref_spec refs[] = {{"spm", 0, 0},
                             {"llamacpp", 0, 1},
                             {"llamacpp_special", 1, 1},
                             {"hf_special", 1, 0}};
    check_golden(t, "tokenizer/spm.golden.json", refs, 4);
    lloco_tokenizer_free(t);
}

TEST_CASE(tokenizer_spm_json_parity) {
    lloco_tokenizer *t = open_json_tokenizer("tokenizer/spm/tokenizer.json");
    if (!t) return;
    CHECK(lloco_tokenizer_kind_of(t) == LLOCO_TOKENIZER_SPM);
    const ref_spec refs[] = {{"spm", 0, 0}, {"hf", 0, 0}, {"hf_special", 1, 0}};
    check_golden(t, "tokenizer/spm.golden.json", refs, 3);
    lloco_tokenizer_free(t);
}

TEST_CASE(tokenizer_bpe_json_parity) {
    lloco_tokenizer *t = open_json_tokenizer("tokenizer/bpe/tokenizer.json");
    if (!t) return;
    CHECK(lloco_tokenizer_kind_of(t) == LLOCO_TOKENIZER_BPE);
    CHECK(strcmp(lloco_tokenizer_pre_name(t), "Sequence[Digits,ByteLevel]") == 0);
    const ref_spec refs[] = {{"ids", 0, 0}, {"ids_special", 1, 0}};
    check_golden(t, "tokenizer/bpe.golden.json", refs, 2);
    lloco_tokenizer_free(t);
}

/* ---- special tokens, BOS, EOG --------------------------------------------- */

TEST_CASE(tokenizer_special_tokens) {
    const char *path = lloco_test_default_model();
    CHECKF(path != NULL, "the SmolLM2 model is required");
    if (!path) return;
    lloco_tokenizer *t = open_gguf_tokenizer(path);
    if (!t) return;
    int32_t ids[64];
    int32_t im_start = lloco_tokenizer_find(t, "<|im_start|>");
    int32_t im_end = lloco_tokenizer_find(t, "<|im_end|>");
    CHECK(im_start == 1 && im_end == 2);
    CHECK(lloco_tokenizer_find(t, "no such token") == -1);
    CHECK(lloco_tokenizer_bos(t) == 1 && lloco_tokenizer_eos(t) == 2);
    CHECK(lloco_tokenizer_add_bos(t) == 0); /* tokenizer.ggml.add_bos_token = false */
    CHECK(lloco_tokenizer_is_eog(t, im_end));
    CHECK(lloco_tokenizer_is_eog(t, 0)); /* <|endoftext|> */
    CHECK(!lloco_tokenizer_is_eog(t, im_start));
    CHECK(!lloco_tokenizer_is_eog(t, 19556) && !lloco_tokenizer_is_eog(t, -1));

    int n = encode_str(t, "<|im_start|>user", 0, 1, ids, 64);
    CHECK(n == 2 && ids[0] == im_start);
    n = encode_str(t, "<|im_start|>user", 0, 0, ids, 64);
    CHECK(n > 2 && ids[0] != im_start);

    /* BOS is prepended on request whatever the model's default. */
    int32_t with[64], without[64];
    int a = encode_str(t, "Hello world", 1, 0, with, 64);
    int b = encode_str(t, "Hello world", 0, 0, without, 64);
    CHECK(a == b + 1 && with[0] == 1 && memcmp(with + 1, without, (size_t)b * 4) == 0);

    /* Control tokens print only when asked. */
    char buf[64];
    CHECK(lloco_tokenizer_piece(t, im_end, 0, buf, sizeof buf) == 0);
    CHECK(lloco_tokenizer_piece(t, im_end, 1, buf, sizeof buf) == 10 &&
          memcmp(buf, "<|im_end|>", 10) == 0);
    CHECK(lloco_tokenizer_piece(t, 49152, 1, buf, sizeof buf) == -1);
    CHECK(lloco_tokenizer_token_text(t, 49152) == NULL);
    CHECK(strcmp(lloco_tokenizer_token_text(t, 19556), "Hello") == 0);
    /* " world" is stored byte-level as "Ġworld". */
    CHECK(strcmp(lloco_tokenizer_token_text(t, 905), "\xC4\xA0world") == 0);
    CHECK(lloco_tokenizer_piece(t, 905, 0, buf, sizeof buf) == 6 && memcmp(buf, " world", 6) == 0);
    CHECK(lloco_tokenizer_piece(t, 905, 0, buf, 3) == 6 && memcmp(buf, " wo", 3) == 0);
    lloco_tokenizer_free(t);
}

TEST_CASE(tokenizer_spm_bos_and_space) {
    lloco_tokenizer *g = open_gguf_tokenizer(lloco_test_fixture("tokenizer/spm/spm.gguf"));
    lloco_tokenizer *j = open_json_tokenizer("tokenizer/spm/tokenizer.json");
    if (!g || !j) {
        lloco_tokenizer_free(g);
        lloco_tokenizer_free(j);
        return;
    }
    lloco_tokenizer *both[2] = {g, j};
    for (int k = 0; k < 2; k++) {
        lloco_tokenizer *t = both[k];
        CHECK(lloco_tokenizer_bos(t) == 1 && lloco_tokenizer_eos(t) == 2);
        CHECK(lloco_tokenizer_add_bos(t) == 1);
        CHECK(lloco_tokenizer_is_eog(t, 2) && !lloco_tokenizer_is_eog(t, 1));
        int32_t ids[64];
        int n = encode_str(t, "Hello", 1, 0, ids, 64);
        CHECK(n >= 2 && ids[0] == 1);
        /* The dummy-prefix space is dropped once, also after BOS. */
        char buf[64];
        CHECK(lloco_tokenizer_decode(t, ids, n, 0, buf, sizeof buf) == 5 &&
              strcmp(buf, "Hello") == 0);
        CHECK(lloco_tokenizer_decode(t, ids, n, 1, buf, sizeof buf) == 9 &&
              strcmp(buf, "<s> Hello") == 0);
        int32_t byte_a = lloco_tokenizer_find(t, "<0x41>");
        CHECK(byte_a >= 0 && lloco_tokenizer_piece(t, byte_a, 0, buf, 8) == 1 && buf[0] == 'A');
    }
    lloco_tokenizer_free(g);
    lloco_tokenizer_free(j);
}

TEST_CASE(tokenizer_bpe_json_config) {
    lloco_tokenizer *t = open_json_tokenizer("tokenizer/bpe/tokenizer.json");
    if (!t) return;
    int32_t start = lloco_tokenizer_find(t, "<|im_start|>");
    int32_t end = lloco_tokenizer_find(t, "<|im_end|>");
    int32_t tool = lloco_tokenizer_find(t, "<tool>");
    CHECK(start >= 0 && end >= 0 && tool >= 0);
    CHECK(lloco_tokenizer_bos(t) == start && lloco_tokenizer_eos(t) == end);
    CHECK(lloco_tokenizer_add_bos(t) == 0);
    CHECK(lloco_tokenizer_is_eog(t, end) && lloco_tokenizer_is_eog(t, 0));
    int32_t ids[64];
    /* A non-special added token is split out even without parse_special. */
    CHECK(encode_str(t, "<tool>", 0, 0, ids, 64) == 1 && ids[0] == tool);
    char buf[16];
    CHECK(lloco_tokenizer_piece(t, tool, 0, buf, sizeof buf) == 6);
    lloco_tokenizer_free(t);
}

/* ---- streaming ------------------------------------------------------------ */

TEST_CASE(tokenizer_detok_partial_utf8) {
    lloco_tokenizer *t = open_json_tokenizer("tokenizer/bpe/tokenizer.json");
    if (!t) return;
    /* The byte alphabet has one token per byte: "é" = C3 A9 comes out in two
     * pieces, the first of which must be held back. */
    char c3[3], a9[3];
    c3[lloco_bytelevel_encode(0xC3, c3)] = 0;
    a9[lloco_bytelevel_encode(0xA9, a9)] = 0;
    int32_t ids[3] = {lloco_tokenizer_find(t, "x"), lloco_tokenizer_find(t, c3),
                      lloco_tokenizer_find(t, a9)};
    CHECK(ids[0] >= 0 && ids[1] >= 0 && ids[2] >= 0);
    lloco_detok d;
    lloco_detok_init(&d, t, 0);
    char out[8];
    CHECK(lloco_detok_push(&d, ids[0], out, 8) == 1 && out[0] == 'x');
    CHECK(lloco_detok_push(&d, ids[1], out, 8) == 0);
    CHECK(lloco_detok_push(&d, ids[2], out, 1) == 2); /* too small: nothing taken */
    CHECK(lloco_detok_push(&d, ids[2], out, 8) == 2 && memcmp(out, "\xC3\xA9", 2) == 0);
    CHECK(lloco_detok_flush(&d, out, 8) == 0);
    /* An unfinished character left at the end comes out on flush. */
    CHECK(lloco_detok_push(&d, ids[1], out, 8) == 0);
    CHECK(lloco_detok_flush(&d, out, 0) == 1);
    CHECK(lloco_detok_flush(&d, out, 8) == 1 && (uint8_t)out[0] == 0xC3);
    CHECK(lloco_detok_push(&d, 1 << 20, out, 8) == LLOCO_ERR_RANGE);
    lloco_tokenizer_free(t);
}

/* ---- errors --------------------------------------------------------------- */

/* Scratch files live in one temporary directory, removed at exit. */
static char tmp_dir[64];
static char tmp_files[8][128];
static int n_tmp_files;

static void remove_tmp(void) {
    for (int i = 0; i < n_tmp_files; i++) unlink(tmp_files[i]);
    rmdir(tmp_dir);
}

static const char *write_tmp(const char *name, const char *content) {
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/lloco_tok_XXXXXX");
        CHECK(mkdtemp(tmp_dir) != NULL);
        atexit(remove_tmp);
    }
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    int k = 0;
    while (k < n_tmp_files && strcmp(tmp_files[k], path) != 0) k++;
    LLOCO_ASSERT(k < 8);
    if (k == n_tmp_files) snprintf(tmp_files[n_tmp_files++], 128, "%s", path);
    const char *p = tmp_files[k];
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(content, f);
        fclose(f);
    }
    return p;
}

static void expect_json_error(const char *content, int err, const char *detail) {
    lloco_tokenizer *t = (lloco_tokenizer *)1;
    const char *p = write_tmp("tokenizer.json", content);
    int rc = lloco_tokenizer_load_json(p, &t);
    CHECKF(rc == err, "'%s' -> %s, want %s", content, lloco_strerror(rc), lloco_strerror(err));
    CHECK(t == NULL);
    CHECKF(strstr(lloco_last_error(), detail) != NULL, "error '%s' lacks '%s'",
           lloco_last_error(), detail);
}

#define TINY_VOCAB "\"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"abc\": 4, \" \": 5}"

TEST_CASE(tokenizer_json_errors) {
    lloco_tokenizer *t = NULL;
    CHECK_ERR(lloco_tokenizer_load_json("/nonexistent/tokenizer.json", &t), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), "/nonexistent/tokenizer.json") != NULL);
    expect_json_error("{\"model\": {", LLOCO_ERR_FORMAT, "not valid JSON");
    expect_json_error("[1, 2]", LLOCO_ERR_FORMAT, "not a JSON object");
    expect_json_error("{}", LLOCO_ERR_FORMAT, "no \"model\" object");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"merges\": []}}", LLOCO_ERR_FORMAT,
                      "no \"vocab\" object");
    expect_json_error("{\"model\": {\"type\": \"BPE\", " TINY_VOCAB "}}", LLOCO_ERR_FORMAT,
                      "no \"merges\" array");
    expect_json_error("{\"model\": {\"type\": \"BPE\", " TINY_VOCAB ", \"merges\": [\"a\"]}}",
                      LLOCO_ERR_FORMAT, "merge 0");
    expect_json_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}",
                      LLOCO_ERR_FORMAT, "no valid token id");
    expect_json_error("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}",
                      LLOCO_ERR_UNSUPPORTED, "Unigram");
    expect_json_error("{\"model\": {\"type\": \"BPE\", " TINY_VOCAB ", \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}",
                      LLOCO_ERR_UNSUPPORTED, "BertPreTokenizer");
    expect_json_error("{\"model\": {\"type\": \"BPE\", " TINY_VOCAB ", \"merges\": []},"
                      " \"normalizer\": {\"type\": \"Lowercase\"}}",
                      LLOCO_ERR_UNSUPPORTED, "Lowercase");
    expect_json_error("{\"model\": {\"type\": \"BPE\", " TINY_VOCAB ", \"merges\": []},"
                      " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
                      " \"behavior\": \"Isolated\"}}",
                      LLOCO_ERR_FORMAT, "bad regex");
}

/* String merges, a literal Split and the unknown token, on a hand-made
 * tokenizer.json. */
TEST_CASE(tokenizer_json_tiny) {
    const char *p = write_tmp(
        "tokenizer.json",
        "{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"a\": 0, \"b\": 1,"
        " \"c\": 2, \"ab\": 3, \"abc\": 4, \"<unk>\": 5}, \"merges\": [\"a b\", \"ab c\"]},"
        " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \" \"},"
        " \"behavior\": \"Removed\"}}");
    lloco_tokenizer *t = NULL;
    CHECK_OK(lloco_tokenizer_load_json_with_config(p, NULL, &t));
    if (!t) return;
    int32_t ids[16];
    int n = encode_str(t, "abc ab  ba x", 0, 0, ids, 16);
    CHECKF(n == 5 && ids[0] == 4 && ids[1] == 3 && ids[2] == 1 && ids[3] == 0 && ids[4] == 5,
           "got %d ids", n);
    CHECK(lloco_tokenizer_bos(t) == -1 && lloco_tokenizer_eos(t) == -1);
    CHECK(strcmp(lloco_tokenizer_pre_name(t), "Split") == 0);

    /* cap too small: LLOCO_ERR_FULL, the count needed, the first ids. */
    int32_t small[2] = {-7, -7};
    int need = 0;
    CHECK_ERR(lloco_tokenizer_encode(t, "abc ab  ba x", 12, 0, 0, small, 2, &need), LLOCO_ERR_FULL);
    CHECK(need == 5 && small[0] == 4 && small[1] == 3);
    CHECK_ERR(lloco_tokenizer_encode(t, "abc", 3, 0, 0, NULL, 0, &need), LLOCO_ERR_FULL);
    CHECK(need == 1);
    CHECK_ERR(lloco_tokenizer_encode(t, NULL, 3, 0, 0, small, 2, &need), LLOCO_ERR_INVAL);

    /* decode into a short buffer: the length needed, a NUL-terminated prefix. */
    char buf[4];
    CHECK(lloco_tokenizer_decode(t, ids, 3, 0, buf, sizeof buf) == 6 && strcmp(buf, "abc") == 0);
    CHECK(lloco_tokenizer_decode(t, ids, 3, 0, NULL, 0) == 6);
    int32_t bad = 99;
    CHECK(lloco_tokenizer_decode(t, &bad, 1, 0, buf, sizeof buf) == LLOCO_ERR_RANGE);
    lloco_tokenizer_free(t);
}

/* BOS from a TemplateProcessing nested in a Sequence (Llama-3's form),
 * overridden by tokenizer_config.json. */
TEST_CASE(tokenizer_json_bos_template) {
    const char *p = write_tmp(
        "tokenizer.json",
        "{\"added_tokens\": [{\"id\": 3, \"content\": \"<s>\", \"special\": true}],"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
        " \"merges\": [[\"a\", \"b\"]]},"
        " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
        " \"post_processor\": {\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\"},"
        " {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\"}},"
        " {\"Sequence\": {\"id\": \"A\"}}]}]}}");
    lloco_tokenizer *t = NULL;
    CHECK_OK(lloco_tokenizer_load_json_with_config(p, NULL, &t));
    if (t) {
        CHECK(lloco_tokenizer_bos(t) == 3 && lloco_tokenizer_add_bos(t) == 1);
        int32_t ids[8];
        CHECK(encode_str(t, "ab", 1, 0, ids, 8) == 2 && ids[0] == 3 && ids[1] == 2);
        lloco_tokenizer_free(t);
    }
    const char *cfg = write_tmp("tokenizer_config.json",
                                "{\"add_bos_token\": false,"
                                " \"eos_token\": {\"content\": \"<s>\"}}");
    CHECK_OK(lloco_tokenizer_load_json_with_config(p, cfg, &t));
    if (t) {
        CHECK(lloco_tokenizer_add_bos(t) == 0 && lloco_tokenizer_eos(t) == 3);
        CHECK(lloco_tokenizer_is_eog(t, 3));
        lloco_tokenizer_free(t);
    }
    /* lloco_tokenizer_load_json finds the config beside the file. */
    CHECK_OK(lloco_tokenizer_load_json(p, &t));
    if (t) {
        CHECK(lloco_tokenizer_add_bos(t) == 0 && lloco_tokenizer_eos(t) == 3);
        lloco_tokenizer_free(t);
    }
    write_tmp("tokenizer_config.json", "{\"add_bos_token\": tru");
    CHECK_ERR(lloco_tokenizer_load_json(p, &t), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "tokenizer_config.json") != NULL);
    unlink(cfg);
}

/* A minimal GGUF v3 writer for metadata-only files: string keys, string
 * arrays and one int32 array. */
typedef struct {
    FILE *f;
    int n_kv;
} gguf_w;

static void w_u32(FILE *f, uint32_t v) { fwrite(&v, 4, 1, f); }
static void w_u64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }
static void w_str(FILE *f, const char *s) {
    w_u64(f, strlen(s));
    fwrite(s, 1, strlen(s), f);
}

static FILE *gguf_begin(const char *path, int n_kv) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return NULL;
    fwrite("GGUF", 1, 4, f);
    w_u32(f, 3);
    w_u64(f, 0); /* tensors */
    w_u64(f, (uint64_t)n_kv);
    return f;
}

static void gguf_kv_str(FILE *f, const char *key, const char *val) {
    w_str(f, key);
    w_u32(f, LLOCO_GGUF_STRING);
    w_str(f, val);
}

static void gguf_kv_strs(FILE *f, const char *key, const char *const *v, int n) {
    w_str(f, key);
    w_u32(f, LLOCO_GGUF_ARRAY);
    w_u32(f, LLOCO_GGUF_STRING);
    w_u64(f, (uint64_t)n);
    for (int i = 0; i < n; i++) w_str(f, v[i]);
}

static void gguf_kv_i32s(FILE *f, const char *key, const int32_t *v, int n) {
    w_str(f, key);
    w_u32(f, LLOCO_GGUF_ARRAY);
    w_u32(f, LLOCO_GGUF_INT32);
    w_u64(f, (uint64_t)n);
    fwrite(v, 4, (size_t)n, f);
}

static const char *const tiny_tokens[] = {"a", "b", "c", "ab", "abc", "\xC4\xA0", "\xC4\xA0\x61",
                                          "<|end|>"};
static const char *const tiny_merges[] = {"a b", "ab c", "\xC4\xA0 a"};
static const int32_t tiny_types[] = {1, 1, 1, 1, 1, 1, 1, 3};

/* Writes a byte-level GGUF tokenizer; `omit` names a key to leave out and
 * model/pre override those values. */
static const char *tiny_gguf(const char *omit, const char *model, const char *pre) {
    const char *p = write_tmp("tok.gguf", "");
    int n_kv = 4 + (pre != NULL) - (omit != NULL && strcmp(omit, "short types") != 0);
    FILE *f = gguf_begin(p, n_kv);
    if (!f) return p;
    if (!omit || strcmp(omit, "model")) gguf_kv_str(f, "tokenizer.ggml.model", model);
    if (pre) gguf_kv_str(f, "tokenizer.ggml.pre", pre);
    if (!omit || strcmp(omit, "tokens")) gguf_kv_strs(f, "tokenizer.ggml.tokens", tiny_tokens, 8);
    if (!omit || strcmp(omit, "merges")) gguf_kv_strs(f, "tokenizer.ggml.merges", tiny_merges, 3);
    if (!omit || strcmp(omit, "types"))
        gguf_kv_i32s(f, "tokenizer.ggml.token_type", tiny_types,
                     omit && !strcmp(omit, "short types") ? 5 : 8);
    fclose(f);
    return p;
}

static int load_tiny(const char *path, lloco_tokenizer **t) {
    lloco_gguf *g = NULL;
    *t = NULL;
    int rc = lloco_gguf_open(path, &g);
    CHECKF(rc == 0, "gguf_open: %s", lloco_last_error());
    if (rc) return rc;
    rc = lloco_tokenizer_load_gguf(g, t);
    lloco_gguf_close(g);
    return rc;
}

TEST_CASE(tokenizer_gguf_tiny_and_errors) {
    lloco_tokenizer *t;
    CHECK_OK(load_tiny(tiny_gguf(NULL, "gpt2", NULL), &t));
    if (t) {
        /* No tokenizer.ggml.pre: llama.cpp's "default" regexes. */
        CHECK(strcmp(lloco_tokenizer_pre_name(t), "default") == 0);
        int32_t ids[16];
        CHECK(encode_str(t, "abc a", 0, 0, ids, 16) == 2 && ids[0] == 4 && ids[1] == 6);
        CHECK(lloco_tokenizer_is_eog(t, 7) && lloco_tokenizer_bos(t) == -1);
        CHECK(encode_str(t, "<|end|>", 0, 1, ids, 16) == 1 && ids[0] == 7);
        lloco_tokenizer_free(t);
    }
    CHECK_ERR(load_tiny(tiny_gguf("model", "gpt2", NULL), &t), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), "tokenizer.ggml.model") != NULL && t == NULL);
    CHECK_ERR(load_tiny(tiny_gguf(NULL, "bert", NULL), &t), LLOCO_ERR_UNSUPPORTED);
    CHECK(strstr(lloco_last_error(), "bert") != NULL);
    CHECK_ERR(load_tiny(tiny_gguf("merges", "gpt2", NULL), &t), LLOCO_ERR_NOTFOUND);
    CHECK(strstr(lloco_last_error(), "merges") != NULL);
    CHECK_ERR(load_tiny(tiny_gguf("tokens", "gpt2", NULL), &t), LLOCO_ERR_NOTFOUND);
    CHECK_ERR(load_tiny(tiny_gguf(NULL, "gpt2", "no-such-pre"), &t), LLOCO_ERR_UNSUPPORTED);
    CHECK(strstr(lloco_last_error(), "no-such-pre") != NULL);
    CHECK_ERR(load_tiny(tiny_gguf("short types", "gpt2", NULL), &t), LLOCO_ERR_FORMAT);
    CHECK(strstr(lloco_last_error(), "token_type") != NULL && t == NULL);
}

/* Copies the tokenizer of a byte-level GGUF into a new file whose
 * tokenizer.ggml.pre is pre. */
static const char *gguf_with_pre(const char *src, const char *pre) {
    lloco_gguf *g = NULL;
    CHECK_OK(lloco_gguf_open(src, &g));
    if (!g) return NULL;
    const char *p = write_tmp("pre.gguf", "");
    FILE *f = gguf_begin(p, 7);
    const char *s;
    size_t len;
    char model[16];
    CHECK_OK(lloco_gguf_get_str(g, "tokenizer.ggml.model", &s, &len));
    snprintf(model, sizeof model, "%.*s", (int)len, s);
    gguf_kv_str(f, "tokenizer.ggml.model", model);
    gguf_kv_str(f, "tokenizer.ggml.pre", pre);
    static const char *const arrays[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"};
    for (int a = 0; a < 2; a++) {
        int64_t ki = lloco_gguf_find_key(g, arrays[a]);
        lloco_gguf_type et;
        uint64_t n = 0;
        const void *data;
        CHECK_OK(lloco_gguf_kv_arr(g, ki, &et, &n, &data));
        w_str(f, arrays[a]);
        w_u32(f, LLOCO_GGUF_ARRAY);
        w_u32(f, LLOCO_GGUF_STRING);
        w_u64(f, n);
        for (uint64_t i = 0; i < n; i++) {
            CHECK_OK(lloco_gguf_kv_arr_str(g, ki, i, &s, &len));
            w_u64(f, len);
            fwrite(s, 1, len, f);
        }
    }
    lloco_gguf_type et;
    uint64_t n = 0;
    const void *data = NULL;
    CHECK_OK(lloco_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &data));
    gguf_kv_i32s(f, "tokenizer.ggml.token_type", data, (int)n);
    static const char *const ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"};
    for (int k = 0; k < 2; k++) {
        uint32_t v = 0;
        CHECK_OK(lloco_gguf_get_u32(g, ids[k], &v));
        w_str(f, ids[k]);
        w_u32(f, LLOCO_GGUF_UINT32);
        w_u32(f, v);
    }
    fclose(f);
    lloco_gguf_close(g);
    return p;
}

/* llama.cpp's regex list for each pre-tokenizer name, on a vocabulary whose
 * merges cross the boundaries those lists disagree on. */
TEST_CASE(tokenizer_gguf_pre_parity) {
    static const char *const pres[] = {"default", "gpt-2", "llama-bpe", "qwen2", "smollm"};
    for (size_t i = 0; i < LLOCO_ARRAY_LEN(pres); i++) {
        const char *p = gguf_with_pre(lloco_test_fixture("tokenizer/bpe_raw/raw.gguf"), pres[i]);
        if (!p) return;
        lloco_tokenizer *t = open_gguf_tokenizer(p);
        if (!t) return;
        CHECK(strcmp(lloco_tokenizer_pre_name(t), pres[i]) == 0);
        /* llama.cpp adds BOS by default for Llama-3's pre-tokenizer only. */
        CHECK(lloco_tokenizer_add_bos(t) == (strcmp(pres[i], "llama-bpe") == 0));
        const ref_spec refs[] = {{pres[i], 0, 0}};
        check_golden(t, "tokenizer/raw.golden.json", refs, 1);
        lloco_tokenizer_free(t);
    }
}

/* The same vocabulary with Llama-3's tokenizer.json Split regex, (?i:...)
 * and all, through tokenizers. */
TEST_CASE(tokenizer_json_llama3_split_parity) {
    lloco_tokenizer *t = open_json_tokenizer("tokenizer/bpe_raw/tokenizer.json");
    if (!t) return;
    CHECK(strcmp(lloco_tokenizer_pre_name(t), "Sequence[Split,ByteLevel]") == 0);
    const ref_spec refs[] = {{"hf_llama3", 0, 0}};
    check_golden(t, "tokenizer/raw.golden.json", refs, 1);
    lloco_tokenizer_free(t);
}

/* Other normalizers and pre-tokenizers spliced into the small tokenizers,
 * against tokenizers (parse_special on, as HF encodes by default). */
TEST_CASE(tokenizer_json_variants_parity) {
    cJSON *gold = read_golden("tokenizer/variants.golden.json");
    cJSON *corpus = read_golden("tokenizer/corpus.json");
    const cJSON *v;
    int n_variants = 0;
    static char text[MAX_TEXT];
    static int32_t want[MAX_IDS], got[MAX_IDS];
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(gold, "variants")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(v, "name")->valuestring;
        char rel[128];
        snprintf(rel, sizeof rel, "tokenizer/%s",
                 cJSON_GetObjectItemCaseSensitive(v, "base")->valuestring);
        cJSON *base = read_golden(rel);
        if (!base) break;
        static const char *const parts[] = {"normalizer", "pre_tokenizer"};
        for (int k = 0; k < 2; k++)
            cJSON_ReplaceItemInObjectCaseSensitive(
                base, parts[k], cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(v, parts[k]), 1));
        char *js = cJSON_PrintUnformatted(base);
        cJSON_Delete(base);
        const char *path = write_tmp("variant.json", js);
        free(js);
        lloco_tokenizer *t = NULL;
        int rc = lloco_tokenizer_load_json_with_config(path, NULL, &t);
        CHECKF(rc == 0, "variant %s: %s", name, lloco_last_error());
        if (rc) continue;
        n_variants++;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(v, "ids");
        int i = 0, bad = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, corpus) {
            size_t len = unhex(cJSON_GetObjectItemCaseSensitive(c, "hex")->valuestring, text);
            int wn = json_ids(cJSON_GetArrayItem(ids, i++), want, MAX_IDS), gn = 0;
            CHECK_OK(lloco_tokenizer_encode(t, text, len, 0, 1, got, MAX_IDS, &gn));
            if ((gn != wn || memcmp(got, want, (size_t)wn * sizeof *want) != 0) && !bad++) {
                char a[2048], b[2048];
                fmt_ids(want, wn, a, sizeof a);
                fmt_ids(got, gn, b, sizeof b);
                CHECKF(0, "variant %s '%s':\n    want %s\n    got  %s", name,
                       cJSON_GetObjectItemCaseSensitive(c, "note")->valuestring, a, b);
            }
        }
        CHECKF(!bad, "variant %s: %d cases differ", name, bad);
        lloco_tokenizer_free(t);
    }
    CHECK(n_variants == 6);
    cJSON_Delete(gold);
    cJSON_Delete(corpus);
}

/* ---- speed ---------------------------------------------------------------- */

TEST_CASE(tokenizer_speed) {
    const char *path = lloco_test_default_model();
    CHECKF(path != NULL, "the SmolLM2 model is required");
    if (!path) return;
    lloco_tokenizer *t = open_gguf_tokenizer(path);
    if (!t) return;
    /* ~100 KB of mixed prose, code and numbers from the corpus. */
    cJSON *root = read_golden("tokenizer/corpus.json");
    size_t cap = 128 * 1024, len = 0;
    char *text = malloc(cap), piece[MAX_TEXT];
    const cJSON *c;
    while (root && len < 100 * 1024) {
        cJSON_ArrayForEach(c, root) {
            size_t n = unhex(cJSON_GetObjectItemCaseSensitive(c, "hex")->valuestring, piece);
            if (len + n > cap) break;
            memcpy(text + len, piece, n);
            len += n;
        }
    }
    cJSON_Delete(root);
    int32_t *ids = malloc(len * sizeof *ids);
    int n = 0;
    double t0 = lloco_time_now();
    CHECK_OK(lloco_tokenizer_encode(t, text, len, 0, 1, ids, (int)len, &n));
    double dt = lloco_time_now() - t0;
    fprintf(stderr, "  encode: %zu bytes -> %d tokens in %.1f ms (%.2f M tokens/s)\n", len, n,
            dt * 1e3, n / dt / 1e6);
    CHECKF(dt < 1.0, "100 KB took %.2f s", dt);
    free(ids);
    free(text);
    lloco_tokenizer_free(t);
}
