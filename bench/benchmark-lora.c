/* benchmark-lora: what LoRA adapters cost the decoder on a model file.
 * Writes PEFT adapters (random A and B on q/k/v/o) for the model into a
 * temporary adapters directory, checks that a sequence decoded in a batch
 * of eight different adapters gets the logits it gets alone, then times,
 * for a batch of 8 sequences: decode with no adapter, all 8 on one adapter
 * and 8 different adapters (rank 8 and 64), merged mode and its swap cost,
 * adapter load time per MiB, and how long the running batch's decode steps
 * take while the bank loads another adapter on its loader thread.
 * One JSON object per result line on stdout.
 *
 *   benchmark-lora -m MODEL [--threads N] [--prompt 64] [--steps 32] [--reps 3]
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lora_bank/lora_bank.h"

#define N_SEQ 8
/* Decode steps the stall run may take while an adapter loads. */
#define STALL_MAX_STEPS 4096
/* Loads the stall is measured over. */
#define N_STALL 3

static const lloco_proj k_targets[] = {LLOCO_PROJ_Q, LLOCO_PROJ_K, LLOCO_PROJ_V, LLOCO_PROJ_O};

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

static float rng_f(uint64_t *s, float amp) {
    return amp * (2.0f * (float)(rng_next(s) >> 40) / (float)(1 << 24) - 1.0f);
}

/* Writes a PEFT adapter directory dir (rank r on q/k/v/o of every layer,
 * F32, alpha 2r) with values from seed; *bytes gets the safetensors size. */
static int write_peft(const lloco_model *m, const char *dir, int r, uint64_t seed, size_t *bytes) {
    const lloco_hparams *hp = lloco_model_hparams(m);
    if (mkdir(dir, 0755) && access(dir, F_OK)) return -1;
    char path[1024];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %d, \"bias\": \"none\", "
               "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]}\n",
            r, 2 * r);
    if (fclose(f)) return -1;

    size_t hcap = 256 * (size_t)hp->n_layer * 8 + 64, hlen = 0, off = 0;
    char *hdr = malloc(hcap);
    if (!hdr) return -1;
    hlen += (size_t)snprintf(hdr, hcap, "{");
    for (int l = 0; l < hp->n_layer; l++)
        for (int t = 0; t < 4; t++) {
            int n, k;
            lloco_proj_dims(m, k_targets[t], &n, &k);
            for (int ab = 0; ab < 2; ab++) {
                size_t sz = (size_t)r * (size_t)(ab ? n : k) * sizeof(float);
                hlen += (size_t)snprintf(
                    hdr + hlen, hcap - hlen,
                    "%s\"base_model.model.model.layers.%d.self_attn.%s.lora_%c.weight\":"
                    "{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                    hlen > 1 ? "," : "", l, lloco_proj_name(k_targets[t]), ab ? 'B' : 'A',
                    ab ? n : r, ab ? r : k, off, off + sz);
                off += sz;
            }
        }
    hlen += (size_t)snprintf(hdr + hlen, hcap - hlen, "}");
    while (hlen % 8) hdr[hlen++] = ' ';
    float *data = malloc(off);
    if (!data) {
        free(hdr);
        return -1;
    }
    /* A ~ U(-1/sqrt(k), 1/sqrt(k)) as PEFT initialises it; B small but not 0. */
    size_t i = 0;
    for (int l = 0; l < hp->n_layer; l++)
        for (int t = 0; t < 4; t++) {
            int n, k;
            lloco_proj_dims(m, k_targets[t], &n, &k);
            for (size_t e = 0; e < (size_t)r * (size_t)k; e++) data[i++] = rng_f(&seed, 0.04f);
            for (size_t e = 0; e < (size_t)r * (size_t)n; e++) data[i++] = rng_f(&seed, 0.01f);
        }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    f = fopen(path, "wb");
    uint64_t h64 = hlen;
    int ok = f && fwrite(&h64, 8, 1, f) == 1 && fwrite(hdr, 1, hlen, f) == hlen &&
             fwrite(data, 1, off, f) == off;
    if (f && fclose(f)) ok = 0;
    free(hdr);
    free(data);
    *bytes = 8 + hlen + off;
    return ok ? 0 : -1;
}

/* ---- a batch of N_SEQ sequences --------------------------------------- */

typedef struct {
    lloco_decoder *d;
    lloco_kv *kv[N_SEQ];
    int32_t *prompt; /* [N_SEQ][n_prompt] */
    int n_prompt, n_vocab;
    float *logits; /* [N_SEQ][n_vocab] */
    int32_t next[N_SEQ];
} batch;

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Prefills every sequence from position 0 with its adapter. */
static int batch_prefill(batch *b, const lloco_adapter_view *const *ad) {
    lloco_seq_batch s[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        lloco_kv_truncate(b->kv[i], 0);
        s[i] = (lloco_seq_batch){.kv = b->kv[i], .n = b->n_prompt,
                                 .tokens = b->prompt + (size_t)i * b->n_prompt, .n_out = 1,
                                 .logits = b->logits + (size_t)i * b->n_vocab, .adapter = ad[i]};
    }
    int rc = lloco_decoder_forward(b->d, s, N_SEQ);
    for (int i = 0; i < N_SEQ && !rc; i++)
        b->next[i] = argmax(b->logits + (size_t)i * b->n_vocab, b->n_vocab);
    return rc;
}

static int batch_step(batch *b, const lloco_adapter_view *const *ad) {
    lloco_seq_batch s[N_SEQ];
    for (int i = 0; i < N_SEQ; i++)
        s[i] = (lloco_seq_batch){.kv = b->kv[i], .n = 1, .tokens = &b->next[i], .n_out = 1,
                                 .logits = b->logits + (size_t)i * b->n_vocab, .adapter = ad[i]};
    int rc = lloco_decoder_forward(b->d, s, N_SEQ);
    for (int i = 0; i < N_SEQ && !rc; i++)
        b->next[i] = argmax(b->logits + (size_t)i * b->n_vocab, b->n_vocab);
    return rc;
}

/* Decode tokens/s of the batch (N_SEQ x steps tokens) after a prefill. */
static int batch_decode_rate(batch *b, const lloco_adapter_view *const *ad, int steps,
                             double *tok_s) {
    int rc = batch_prefill(b, ad);
    double t0 = lloco_time_now();
    for (int s = 0; s < steps && !rc; s++) rc = batch_step(b, ad);
    *tok_s = (double)N_SEQ * steps / (lloco_time_now() - t0);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int rm_one(const char *p, const struct stat *s, int flag, struct FTW *f) {
    (void)s, (void)flag, (void)f;
    return remove(p);
}

/* ---- the stall while the bank loads ---------------------------------- */

/* Decodes the batch on `running` for `warm` steps (the control window),
 * then asks the bank for `other` (not resident) and goes on stepping while
 * the loader thread reads it. Reports the step times of both windows and
 * how long the load took. */
static int stall_run(batch *b, lloco_bank *bank, const lloco_adapter_view *running,
                     const char *other, int warm, FILE *out, double *stall) {
    const lloco_adapter_view *ad[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) ad[i] = running;
    double *dt = malloc(sizeof(double) * STALL_MAX_STEPS);
    if (!dt) return LLOCO_ERR_NOMEM;
    int rc = batch_prefill(b, ad), n = 0;
    for (; n < warm && !rc; n++) {
        double t0 = lloco_time_now();
        rc = batch_step(b, ad);
        dt[n] = lloco_time_now() - t0;
    }
    const lloco_adapter_view *v = NULL;
    double t_load0 = lloco_time_now();
    if (!rc) rc = lloco_bank_acquire(bank, other, &v);
    while (!rc && !v) {
        if (n == STALL_MAX_STEPS) {
            rc = lloco_error(LLOCO_ERR_IO, "the load did not finish within %d steps", n - warm);
            break;
        }
        double t0 = lloco_time_now();
        rc = batch_step(b, ad);
        dt[n++] = lloco_time_now() - t0;
        if (!rc) rc = lloco_bank_acquire(bank, other, &v);
    }
    double t_load = lloco_time_now() - t_load0;
    if (v) lloco_bank_release(bank, other);
    if (!rc) {
        int n_during = n - warm;
        double sum = 0, worst_before = 0, worst = 0;
        int worst_at = 0;
        for (int i = 0; i < warm; i++) worst_before = dt[i] > worst_before ? dt[i] : worst_before;
        for (int i = warm; i < n; i++) {
            sum += dt[i];
            if (dt[i] > worst) worst = dt[i], worst_at = i - warm;
        }
        double med_before = median(dt, warm);
        double med_during = n_during ? median(dt + warm, n_during) : 0;
        fprintf(out,
                "{\"bench\":\"lora_stall\",\"adapter\":\"%s\",\"load_s\":%.4f,"
                "\"steps_before\":%d,\"step_median_before_ms\":%.3f,\"step_max_before_ms\":%.3f,"
                "\"steps_during_load\":%d,\"step_median_during_ms\":%.3f,"
                "\"step_mean_during_ms\":%.3f,\"step_max_during_ms\":%.3f,"
                "\"step_max_during_at\":%d,\"stall_in_steps\":%.2f}\n",
                other, t_load, warm, med_before * 1e3, worst_before * 1e3, n_during,
                med_during * 1e3, n_during ? sum / n_during * 1e3 : 0.0, worst * 1e3, worst_at,
                (worst - med_before) / med_before);
        *stall = (worst - med_before) / med_before;
    }
    free(dt);
    return rc;
}

int main(int argc, char **argv) {
    const char *model_path = NULL;
    int threads = 0, n_prompt = 64, steps = 32, reps = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc) n_prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: benchmark-lora -m MODEL [--threads N] [--prompt 64] [--steps 32] "
                    "[--reps 3]\n");
            return 2;
        }
    }
    if (!model_path || n_prompt < 1 || steps < 1 || reps < 1 || reps > 64) {
        fprintf(stderr, "benchmark-lora: -m MODEL is required; counts must be positive\n");
        return 2;
    }
    lloco_model *m = NULL;
    lloco_decoder *d = NULL;
    lloco_decoder_params dp;
    lloco_decoder_params_default(&dp);
    dp.n_threads = threads;
    int rc = lloco_model_open(model_path, &m);
    if (!rc) rc = lloco_decoder_create(m, &dp, &d);
    if (rc) {
        fprintf(stderr, "benchmark-lora: %s\n", lloco_last_error());
        return 1;
    }
    const lloco_hparams *hp = lloco_model_hparams(m);
    char root[] = "/tmp/lloco-bench-lora-XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }

    /* Adapters: r8-0..r8-7, r64-0..r64-7, and big-0..big-2 (r256) for the
     * stall, measured over several loads: one load's worst step is one
     * sample of a noisy machine. */
    static const int ranks[] = {8, 64};
    lloco_lora *lora[2][N_SEQ] = {{0}};
    double load_s[2] = {0}, load_bytes[2] = {0};
    char dir[1200];
    for (int ri = 0; ri < 2 && !rc; ri++)
        for (int a = 0; a < N_SEQ && !rc; a++) {
            size_t bytes = 0;
            snprintf(dir, sizeof dir, "%s/r%d-%d", root, ranks[ri], a);
            rc = write_peft(m, dir, ranks[ri], 0x9E3779B97F4A7C15ull * (uint64_t)(ri * 16 + a + 1),
                            &bytes);
            double t0 = lloco_time_now();
            if (!rc) rc = lloco_lora_open(dir, NULL, m, &lora[ri][a]);
            load_s[ri] += lloco_time_now() - t0;
            load_bytes[ri] += (double)bytes;
        }
    size_t big_bytes = 0;
    for (int i = 0; i < N_STALL && !rc; i++) {
        snprintf(dir, sizeof dir, "%s/big-%d", root, i);
        rc = write_peft(m, dir, 256, 42 + (uint64_t)i, &big_bytes);
    }
    if (rc) {
        fprintf(stderr, "benchmark-lora: writing or loading adapters: %s\n", lloco_last_error());
        return 1;
    }
    for (int ri = 0; ri < 2; ri++)
        printf("{\"bench\":\"lora_load\",\"rank\":%d,\"adapters\":%d,\"mib_each\":%.2f,"
               "\"ms_each\":%.2f,\"ms_per_mib\":%.3f}\n",
               ranks[ri], N_SEQ, load_bytes[ri] / N_SEQ / 1048576.0, load_s[ri] / N_SEQ * 1e3,
               load_s[ri] * 1e3 / (load_bytes[ri] / 1048576.0));

    batch b = {.d = d, .n_prompt = n_prompt, .n_vocab = hp->n_vocab};
    b.prompt = malloc(sizeof(int32_t) * N_SEQ * (size_t)n_prompt);
    b.logits = malloc(sizeof(float) * N_SEQ * (size_t)hp->n_vocab);
    float *alone = malloc(sizeof(float) * (size_t)hp->n_vocab);
    if (!b.prompt || !b.logits || !alone) return 1;
    for (int i = 0; i < N_SEQ * n_prompt; i++)
        b.prompt[i] = (int32_t)((i * 7919 + 100) % (hp->n_vocab - 200) + 100);
    for (int i = 0; i < N_SEQ && !rc; i++)
        rc = lloco_kv_create(m, n_prompt + steps + STALL_MAX_STEPS + 64, LLOCO_DTYPE_F16, &b.kv[i]);

    const lloco_adapter_view *none[N_SEQ] = {0}, *one[2][N_SEQ], *eight[2][N_SEQ];
    for (int ri = 0; ri < 2; ri++)
        for (int i = 0; i < N_SEQ; i++) {
            one[ri][i] = lloco_lora_view(lora[ri][0]);
            eight[ri][i] = lloco_lora_view(lora[ri][i]);
        }

    /* Correctness: each sequence of the mixed r64 batch gets, after the
     * prefill, the logits it gets alone. */
    if (!rc) rc = batch_prefill(&b, eight[1]);
    for (int i = 0; i < N_SEQ && !rc; i++) {
        lloco_kv *kv = NULL;
        rc = lloco_kv_create(m, n_prompt, LLOCO_DTYPE_F16, &kv);
        lloco_seq_batch s = {.kv = kv, .n = n_prompt, .tokens = b.prompt + (size_t)i * n_prompt,
                             .n_out = 1, .logits = alone, .adapter = eight[1][i]};
        if (!rc) rc = lloco_decoder_forward(d, &s, 1);
        lloco_kv_free(kv);
        if (!rc && memcmp(alone, b.logits + (size_t)i * hp->n_vocab,
                          sizeof(float) * (size_t)hp->n_vocab)) {
            fprintf(stderr, "benchmark-lora: sequence %d differs in the mixed batch\n", i);
            return 1;
        }
    }
    if (rc) {
        fprintf(stderr, "benchmark-lora: %s\n", lloco_last_error());
        return 1;
    }

    /* Decode rates, the conditions interleaved within each repetition. */
    enum { C_NONE, C_ONE8, C_EIGHT8, C_ONE64, C_EIGHT64, C_MERGED8, C_COUNT };
    static const char *const cname[C_COUNT] = {"none",     "one_r8",    "eight_r8",
                                               "one_r64",  "eight_r64", "merged_r8"};
    double rate[C_COUNT][64], merge_s[64];
    const lloco_adapter_view *const *cad[C_COUNT] = {none, one[0], eight[0], one[1], eight[1],
                                                     one[0]};
    for (int r = 0; r < reps && !rc; r++)
        for (int c = 0; c < C_COUNT && !rc; c++) {
            if (c == C_MERGED8) {
                double t0 = lloco_time_now();
                rc = lloco_decoder_merge_adapter(d, one[0][0]);
                merge_s[r] = lloco_time_now() - t0;
            }
            if (!rc) rc = batch_decode_rate(&b, cad[c], steps, &rate[c][r]);
            if (c == C_MERGED8 && !rc) rc = lloco_decoder_merge_adapter(d, NULL);
        }
    if (rc) {
        fprintf(stderr, "benchmark-lora: %s\n", lloco_last_error());
        return 1;
    }
    double med[C_COUNT];
    for (int c = 0; c < C_COUNT; c++) {
        med[c] = median(rate[c], reps);
        printf("{\"bench\":\"lora_decode\",\"batch\":%d,\"case\":\"%s\",\"threads\":%d,"
               "\"prompt\":%d,\"steps\":%d,\"tok_s\":%.2f,\"vs_none\":%.3f}\n",
               N_SEQ, cname[c], threads, n_prompt, steps, med[c], med[c] / med[C_NONE]);
    }
    printf("{\"bench\":\"lora_merge\",\"rank\":8,\"swap_ms\":%.2f}\n", median(merge_s, reps) * 1e3);

    /* The stall: decode on r8-0 (resident in the bank) while big-i loads. */
    lloco_bank *bank = NULL;
    lloco_bank_params bp = {.dir = root, .budget_bytes = 0};
    const lloco_adapter_view *run = NULL;
    rc = lloco_bank_open(&bp, m, &bank);
    if (!rc) rc = lloco_bank_acquire_wait(bank, "r8-0", &run);
    double stalls[N_STALL];
    for (int i = 0; i < N_STALL && !rc; i++) {
        char name[16];
        snprintf(name, sizeof name, "big-%d", i);
        rc = stall_run(&b, bank, run, name, 64, stdout, &stalls[i]);
    }
    if (run) lloco_bank_release(bank, "r8-0");
    lloco_bank_close(bank);
    if (rc) {
        fprintf(stderr, "benchmark-lora: stall run: %s\n", lloco_last_error());
        return 1;
    }

    fflush(stdout);
    fprintf(stderr,
            "batch of %d, %d threads: eight different r8 adapters %.2fx one adapter (r64: %.2fx); "
            "r8 costs %.1f%%, r64 %.1f%% vs no adapter; merged r8 %.2fx none; while a %.1f MiB "
            "adapter loads the slowest step is %.2f steps over the median (median of %d loads)\n",
            N_SEQ, threads, med[C_EIGHT8] / med[C_ONE8], med[C_EIGHT64] / med[C_ONE64],
            100.0 * (1 - med[C_ONE8] / med[C_NONE]), 100.0 * (1 - med[C_ONE64] / med[C_NONE]),
            med[C_MERGED8] / med[C_NONE], (double)big_bytes / 1048576.0, median(stalls, N_STALL),
            N_STALL);

    for (int i = 0; i < N_SEQ; i++) lloco_kv_free(b.kv[i]);
    for (int ri = 0; ri < 2; ri++)
        for (int a = 0; a < N_SEQ; a++) lloco_lora_close(lora[ri][a]);
    free(b.prompt);
    free(b.logits);
    free(alone);
    lloco_decoder_free(d);
    lloco_model_close(m);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
