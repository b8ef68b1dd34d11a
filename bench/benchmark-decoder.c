/* benchmark-decoder: prefill and decode speed of the decoder on a model
 * file, the memory bandwidth of this machine (a copy loop over a buffer far
 * larger than the caches, same thread count) and peak RSS. It first checks
 * the optimized backend against the reference on a short prompt, then
 * times; one JSON object per result line on stdout.
 *
 *   benchmark-decoder -m MODEL [--threads N] [--prefill 512,2048]
 *                     [--decode-ctx 512] [--decode 128] [--reps 3]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"

static int32_t *make_tokens(int n, int n_vocab) {
    int32_t *t = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; t && i < n; i++) t[i] = (int32_t)((i * 7919 + 100) % (n_vocab - 200) + 100);
    return t;
}

static double nmse(const float *ref, const float *got, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return num / (den > 0 ? den : 1);
}

static int last_logits(lloco_model *m, lloco_backend_kind kind, int threads, const int32_t *t, int n,
                       float *out) {
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.backend = kind;
    dp.n_threads = threads;
    lloco_decoder *d;
    lloco_kv *kv;
    int rc = lloco_decoder_create(m, &dp, &d);
    if (rc) return rc;
    rc = lloco_kv_create(m, 0, LLOCO_DTYPE_F16, &kv);
    lloco_seq_batch b = {.kv = kv, .n = n, .tokens = t, .n_out = 1, .logits = out};
    if (!rc) rc = lloco_decoder_forward(d, &b, 1);
    lloco_kv_free(kv);
    lloco_decoder_free(d);
    return rc;
}

/* ---- memory bandwidth ----------------------------------------------------- */

typedef struct {
    char *src, *dst;
    size_t n;
} copy_job;

static void *copy_part(void *arg) {
    copy_job *j = arg;
    memcpy(j->dst, j->src, j->n);
    return NULL;
}

/* GB/s of read traffic for a parallel memcpy (reads + writes counted as
 * bytes moved in both directions, as STREAM's copy does: 2 x bytes). */
static double measure_bandwidth(int threads) {
    size_t n = (size_t)1 << 30;
    char *src = malloc(n), *dst = malloc(n);
    if (!src || !dst) return 0;
    memset(src, 1, n);
    memset(dst, 2, n);
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t th[64];
        copy_job jobs[64];
        size_t part = n / (size_t)threads;
        double t0 = lloco_time_now();
        for (int i = 0; i < threads; i++) {
            jobs[i] = (copy_job){src + part * (size_t)i, dst + part * (size_t)i, part};
            pthread_create(&th[i], NULL, copy_part, &jobs[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        double dt = lloco_time_now() - t0;
        double gbs = 2.0 * (double)n / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    free(src);
    free(dst);
    return best;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int threads = 0, decode_ctx = 512, n_decode = 128, reps = 3;
    int prefill[8] = {512, 2048}, n_prefill = 2;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "-m") && v) model = argv[++i];
        else if (!strcmp(argv[i], "--threads") && v) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode-ctx") && v) decode_ctx = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode") && v) n_decode = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && v) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prefill") && v) {
            n_prefill = 0;
            for (char *s = argv[++i]; *s && n_prefill < 8;) {
                prefill[n_prefill++] = (int)strtol(s, &s, 10);
                if (*s == ',') s++;
            }
        } else {
            fprintf(stderr, "usage: %s -m MODEL [--threads N] [--prefill 512,2048] [--decode-ctx N] "
                            "[--decode N] [--reps N]\n", argv[0]);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "%s: -m MODEL is required\n", argv[0]);
        return 2;
    }
    lloco_model *m;
    if (lloco_model_open(model, &m)) {
        fprintf(stderr, "error: %s\n", lloco_last_error());
        return 1;
    }
    const lloco_hparams *hp = lloco_model_hparams(m);
    int nv = hp->n_vocab;
    int max_n = decode_ctx + n_decode;
    for (int i = 0; i < n_prefill; i++)
        if (prefill[i] > max_n) max_n = prefill[i];
    int32_t *toks = make_tokens(max_n, nv);
    float *ref = malloc(sizeof(float) * (size_t)nv), *got = malloc(sizeof(float) * (size_t)nv);

    /* correctness first */
    if (last_logits(m, LLOCO_BACKEND_CPU_REF, 1, toks, 64, ref) ||
        last_logits(m, LLOCO_BACKEND_CPU, threads, toks, 64, got)) {
        fprintf(stderr, "error: %s\n", lloco_last_error());
        return 1;
    }
    /* the optimized backend repeats the reference's arithmetic bit for bit */
    double e = nmse(ref, got, nv);
    const int same = memcmp(ref, got, sizeof(float) * (size_t)nv) == 0;
    printf("{\"check\":\"optimized_vs_ref_logits\",\"nmse\":%.3g,\"identical\":%s,\"ok\":%s}\n", e,
           same ? "true" : "false", same ? "true" : "false");
    if (!same) return 1;

    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = threads;
    lloco_decoder *d;
    lloco_kv *kv;
    if (lloco_decoder_create(m, &dp, &d) || lloco_kv_create(m, 0, LLOCO_DTYPE_F16, &kv)) {
        fprintf(stderr, "error: %s\n", lloco_last_error());
        return 1;
    }
    int nt = lloco_backend_n_threads(lloco_decoder_backend(d));
    for (int p = 0; p < n_prefill; p++) {
        double best = 1e30;
        for (int r = 0; r < reps; r++) {
            lloco_kv_truncate(kv, 0);
            lloco_seq_batch b = {.kv = kv, .n = prefill[p], .tokens = toks, .n_out = 1, .logits = got};
            double t0 = lloco_time_now();
            if (lloco_decoder_forward(d, &b, 1)) return 1;
            double dt = lloco_time_now() - t0;
            if (dt < best) best = dt;
        }
        printf("{\"bench\":\"prefill\",\"engine\":\"lloco\",\"threads\":%d,\"tokens\":%d,\"tok_s\":%.2f}\n",
               nt, prefill[p], prefill[p] / best);
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        lloco_kv_truncate(kv, 0);
        lloco_seq_batch b = {.kv = kv, .n = decode_ctx, .tokens = toks, .n_out = 1, .logits = got};
        if (lloco_decoder_forward(d, &b, 1)) return 1;
        double t0 = lloco_time_now();
        for (int i = 0; i < n_decode; i++) {
            b = (lloco_seq_batch){.kv = kv, .n = 1, .tokens = &toks[decode_ctx + i], .n_out = 1, .logits = got};
            if (lloco_decoder_forward(d, &b, 1)) return 1;
        }
        double dt = lloco_time_now() - t0;
        if (dt < best) best = dt;
    }
    double tok_s = n_decode / best;
    /* before the bandwidth loop's 2 GiB of buffers */
    printf("{\"bench\":\"memory\",\"engine\":\"lloco\",\"peak_rss_mib\":%.1f,\"kv_mib\":%.1f}\n",
           lloco_rss_peak_bytes() / 1048576.0, lloco_kv_bytes(kv) / 1048576.0);
    size_t wbytes = lloco_model_weight_bytes(m);
    double bw = measure_bandwidth(nt);
    double bound = bw * 1e9 / (double)wbytes;
    printf("{\"bench\":\"decode\",\"engine\":\"lloco\",\"threads\":%d,\"ctx\":%d,\"tokens\":%d,\"tok_s\":%.2f,"
           "\"weight_bytes\":%zu,\"bandwidth_gb_s\":%.2f,\"bound_tok_s\":%.2f,\"fraction_of_bound\":%.3f}\n",
           nt, decode_ctx, n_decode, tok_s, wbytes, bw, bound, tok_s / bound);
    lloco_kv_free(kv);
    lloco_decoder_free(d);
    free(toks);
    free(ref);
    free(got);
    lloco_model_close(m);
    return 0;
}
