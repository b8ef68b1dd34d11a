/* benchmark-ingest: ingest throughput (compress + embed + store + index, in
 * tokens of the document per second) against the decoder's plain prefill of
 * the same tokens in the same segments, in one run. It first checks that an
 * ingested document reads back whole (chunk texts == document), then times;
 * one JSON object per result line, then a summary.
 *
 *   benchmark-ingest [-m MODEL] [--embedder DIR] [--threads N] [--reps 2]
 *                    [--input FILE] [--min-tokens 8192]
 *                    [--segment-tokens 1536] [--n-summary 50] [--accumulate 1]
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ingest/ingest.h"

#define DIE(...)                                                                      \
    do {                                                                              \
        fprintf(stderr, "benchmark-ingest: " __VA_ARGS__);                           \
        fprintf(stderr, ": %s\n", lloco_last_error());                               \
        exit(1);                                                                      \
    } while (0)

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4400];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    closedir(d);
    rmdir(dir);
}

typedef struct {
    const char *doc_id;
    char *text;
    size_t len;
} concat_ctx;

static int concat_chunk(void *ctx, const lloco_chunk_view *c) {
    concat_ctx *x = ctx;
    if (!strcmp(c->doc_id, x->doc_id)) {
        memcpy(x->text + x->len, c->text, c->text_len);
        x->len += c->text_len;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *model = LLOCO_DEFAULT_MODELS_DIR "/SmolLM2-135M-Instruct.Q4_1.gguf";
    const char *embedder = LLOCO_DEFAULT_MODELS_DIR "/embedder/all-MiniLM-L6-v2";
    const char *input = "/usr/share/common-licenses/GPL-3";
    int threads = 2, reps = 2, min_tokens = 8192, seg = 0, ns = 0, accumulate = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--embedder")) embedder = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--input")) input = argv[i + 1];
        else if (!strcmp(argv[i], "--min-tokens")) min_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--segment-tokens")) seg = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--n-summary")) ns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--accumulate")) accumulate = atoi(argv[i + 1]) != 0;
        else {
            fprintf(stderr, "benchmark-ingest: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    lloco_model *m;
    lloco_decoder *d;
    lloco_compressor *c;
    lloco_embedder *e;
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = threads;
    lloco_compress_params cp;
    lloco_compress_params_default(&cp, LLOCO_COMPRESS_AUTOCOMPRESSOR);
    if (seg) cp.segment_tokens = seg;
    if (ns) cp.n_summary = ns;
    if (accumulate >= 0) cp.accumulate = accumulate;
    if (lloco_model_open(model, &m) || lloco_decoder_create(m, &dp, &d) ||
        lloco_compressor_create(d, &cp, &c) ||
        lloco_embedder_open(embedder, lloco_decoder_backend(d), &e))
        DIE("setting up");

    /* the document: the input repeated until it has min_tokens tokens */
    char *one;
    size_t one_len;
    if (lloco_file_read(input, 1 << 28, &one, &one_len)) DIE("reading %s", input);
    const lloco_tokenizer *tok = lloco_model_tokenizer(m);
    int n_one;
    lloco_tokenizer_encode(tok, one, one_len, 0, 0, NULL, 0, &n_one);
    int copies = n_one > 0 ? (min_tokens + n_one - 1) / n_one : 1;
    if (copies < 1) copies = 1;
    size_t len = one_len * (size_t)copies;
    char *text = malloc(len + 1);
    for (int i = 0; i < copies; i++) memcpy(text + one_len * (size_t)i, one, one_len);
    text[len] = '\0';
    free(one);
    int n_tok;
    lloco_tokenizer_encode(tok, text, len, 0, 0, NULL, 0, &n_tok);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tok);
    if (lloco_tokenizer_encode(tok, text, len, 0, 0, ids, n_tok, &n_tok)) DIE("tokenizing");

    lloco_store_fingerprint fp;
    if (lloco_compressor_fingerprint(c, &fp)) DIE("fingerprint");
    snprintf(fp.embedder_hash, sizeof fp.embedder_hash, "%s", lloco_embedder_hash(e));
    fp.embed_dim = lloco_embedder_dim(e);
    char dir[] = "/tmp/lloco-bench-ingest-XXXXXX";
    if (!mkdtemp(dir)) DIE("mkdtemp");
    lloco_store *s;
    lloco_retriever *r;
    lloco_ingester *ing;
    if (lloco_store_open(dir, &fp, LLOCO_STORE_CREATE, &s) || lloco_retriever_open(s, NULL, &r) ||
        lloco_ingester_create(c, e, s, r, "", NULL, &ing))
        DIE("opening the store");

    /* correctness: the first ingest reads back whole */
    lloco_doc_src doc = {.id = "check", .title = "benchmark", .text = text, .len = len};
    if (lloco_ingest_doc(ing, &doc)) DIE("ingesting");
    concat_ctx cc = {.doc_id = "check", .text = malloc(len + 1)};
    lloco_store_txn *t;
    if (lloco_store_read_begin(s, &t) || lloco_store_foreach_chunk(t, concat_chunk, &cc)) DIE("reading back");
    lloco_store_read_end(t);
    int whole = cc.len == len && !memcmp(cc.text, text, len);
    printf("{\"check\":\"document_reads_back_whole\",\"ok\":%s}\n", whole ? "true" : "false");
    free(cc.text);
    if (!whole) return 1;

    /* plain prefill of the same tokens in the same segments */
    lloco_kv *kv;
    if (lloco_kv_create(m, cp.segment_tokens + 8, LLOCO_DTYPE_F16, &kv)) DIE("kv");
    float *hidden = malloc(sizeof(float) * (size_t)lloco_model_hparams(m)->d_model);
    double best_prefill = 1e30, best_ingest = 1e30;
    lloco_ingest_stats best_st = {0};
    for (int rep = 0; rep < reps; rep++) {
        double t0 = lloco_time_now();
        for (int tb = 0; tb < n_tok; tb += cp.segment_tokens) {
            int n = n_tok - tb < cp.segment_tokens ? n_tok - tb : cp.segment_tokens;
            lloco_kv_truncate(kv, 0);
            lloco_seq_batch b = {.kv = kv, .n = n, .tokens = ids + tb, .n_out = 1, .hidden = hidden};
            if (lloco_decoder_forward(d, &b, 1)) DIE("prefill");
        }
        double dt = lloco_time_now() - t0;
        if (dt < best_prefill) best_prefill = dt;

        char id[32];
        snprintf(id, sizeof id, "rep-%d", rep);
        doc.id = id;
        lloco_ingest_stats before = *lloco_ingester_stats(ing);
        t0 = lloco_time_now();
        if (lloco_ingest_doc(ing, &doc) || lloco_ingest_finish(ing)) DIE("ingesting");
        dt = lloco_time_now() - t0;
        if (dt < best_ingest) {
            best_ingest = dt;
            const lloco_ingest_stats *after = lloco_ingester_stats(ing);
            best_st.compress_seconds = after->compress_seconds - before.compress_seconds;
            best_st.embed_seconds = after->embed_seconds - before.embed_seconds;
            best_st.store_seconds = after->store_seconds - before.store_seconds;
            best_st.positions = after->positions - before.positions;
            best_st.chunks = after->chunks - before.chunks;
        }
    }
    double prefill_tps = n_tok / best_prefill, ingest_tps = n_tok / best_ingest;
    printf("{\"bench\":\"prefill_segments\",\"threads\":%d,\"tokens\":%d,\"segment_tokens\":%d,"
           "\"tok_s\":%.1f}\n",
           threads, n_tok, cp.segment_tokens, prefill_tps);
    printf("{\"bench\":\"ingest\",\"threads\":%d,\"tokens\":%d,\"chunks\":%lld,\"positions\":%lld,"
           "\"tok_s\":%.1f,\"compress_s\":%.3f,\"embed_s\":%.3f,\"store_index_s\":%.3f,"
           "\"ratio_vs_prefill\":%.3f}\n",
           threads, n_tok, (long long)best_st.chunks, (long long)best_st.positions, ingest_tps,
           best_st.compress_seconds, best_st.embed_seconds,
           best_ingest - best_st.compress_seconds - best_st.embed_seconds, ingest_tps / prefill_tps);
    printf("\n%d tokens (%s x%d), %d-token segments, %d summary slots each, accumulated: %s, "
           "%d threads:\n",
           n_tok, input, copies, cp.segment_tokens, cp.n_summary, cp.accumulate ? "yes" : "no",
           threads);
    printf("  plain prefill  %8.1f tok/s\n", prefill_tps);
    printf("  ingest         %8.1f tok/s  -> %.2fx prefill (compress %.1f%%, embed %.1f%%, "
           "store+index %.1f%% of the time)\n",
           ingest_tps, ingest_tps / prefill_tps, 100 * best_st.compress_seconds / best_ingest,
           100 * best_st.embed_seconds / best_ingest,
           100 * (best_ingest - best_st.compress_seconds - best_st.embed_seconds) / best_ingest);
    printf("  compression    %8.1f tok/s  -> %.2fx prefill (%.1f%% extra decoder positions)\n",
           n_tok / best_st.compress_seconds, n_tok / best_st.compress_seconds / prefill_tps,
           100.0 * (double)(best_st.positions - n_tok) / n_tok);
    lloco_ingester_free(ing);
    lloco_retriever_close(r);
    lloco_store_close(s);
    rm_rf(dir);
    lloco_kv_free(kv);
    free(hidden);
    free(ids);
    free(text);
    lloco_embedder_close(e);
    lloco_compressor_free(c);
    lloco_decoder_free(d);
    lloco_model_close(m);
    return 0;
}
