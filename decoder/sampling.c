/* sampling: picks the next token from logits — greedy, or temperature with
 * optional top-k and top-p (nucleus) truncation, from a seeded generator so a
 * seed reproduces a run.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decoder.h"

typedef struct {
    float logit;
    int32_t id;
} cand;

struct lloco_sampler {
    lloco_sampler_params p;
    int n_vocab;
    uint64_t rng;
    cand *c; /* (n_vocab) scratch */
};

void lloco_sampler_params_default(lloco_sampler_params *p) {
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->seed = 0x5eed;
}

int lloco_sampler_create(const lloco_sampler_params *p, int n_vocab, lloco_sampler **out) {
    *out = NULL;
    if (n_vocab <= 0) return lloco_error(LLOCO_ERR_INVAL, "vocabulary size %d", n_vocab);
    if (isnan(p->temperature) || p->temperature < 0)
        return lloco_error(LLOCO_ERR_INVAL, "temperature must be >= 0");
    if (!(p->top_p > 0)) return lloco_error(LLOCO_ERR_INVAL, "top_p must be in (0, 1]");
    lloco_sampler *s = calloc(1, sizeof *s);
    if (!s) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    s->c = malloc(sizeof(cand) * (size_t)n_vocab);
    if (!s->c) {
        free(s);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = p->seed;
    *out = s;
    return 0;
}

void lloco_sampler_free(lloco_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

/* splitmix64: small, fast, and good enough for sampling. */
static uint64_t next_u64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->logit, y = ((const cand *)b)->logit;
    if (x != y) return x < y ? 1 : -1;
    return ((const cand *)a)->id - ((const cand *)b)->id;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int32_t lloco_sampler_sample(lloco_sampler *s, float *logits) {
    int n = s->n_vocab;
    if (s->p.temperature <= 0) return argmax(logits, n);
    cand *c = s->c;
    /* Tokens more than ~1e-9 of the best's probability below it cannot
     * matter at any temperature; dropping them keeps the sort short. */
    float best = logits[argmax(logits, n)];
    float floor_l = best - 20.7f * s->p.temperature;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= floor_l) c[m++] = (cand){logits[i], i};
    qsort(c, (size_t)m, sizeof(cand), cand_desc);
    int k = s->p.top_k > 0 && s->p.top_k < m ? s->p.top_k : m;
    float maxl = c[0].logit, sum = 0;
    for (int i = 0; i < k; i++) {
        c[i].logit = expf((c[i].logit - maxl) / s->p.temperature);
        sum += c[i].logit;
    }
    if (s->p.top_p < 1.0f) {
        float acc = 0;
        for (int i = 0; i < k; i++) {
            acc += c[i].logit / sum;
            if (acc >= s->p.top_p) {
                k = i + 1;
                break;
            }
        }
        sum = 0;
        for (int i = 0; i < k; i++) sum += c[i].logit;
    }
    double r = (double)(next_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
    double acc = 0;
    for (int i = 0; i < k; i++) {
        acc += c[i].logit;
        if (r < acc) return c[i].id;
    }
    return c[k - 1].id;
}
