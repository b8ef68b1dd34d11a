/* Sampling, chat templates and the generation loop: distributions and
 * truncation of the sampler, the exact prompt text of each chat format, and
 * stop strings / callbacks / limits of lloco_generate on the tiny model.
 */
#include <stdlib.h>
#include <string.h>

#include "decoder/decoder.h"
#include "test.h"

TEST_CASE(sampler_greedy_and_truncation) {
    lloco_sampler_params p;
    lloco_sampler_params_default(&p);
    lloco_sampler *s;
    float lg[5] = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f};
    CHECK_OK(lloco_sampler_create(&p, 5, &s));
    CHECK(lloco_sampler_sample(s, lg) == 1);
    lloco_sampler_free(s);

    /* probabilities 0.5, 0.3, 0.2 */
    float base[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    int counts[3];
    p.temperature = 1.0f;
    p.seed = 42;
    enum { N = 20000 };
    for (int mode = 0; mode < 3; mode++) {
        p.top_k = mode == 1 ? 2 : 0;
        p.top_p = mode == 2 ? 0.6f : 1.0f;
        CHECK_OK(lloco_sampler_create(&p, 3, &s));
        memset(counts, 0, sizeof counts);
        for (int i = 0; i < N; i++) {
            float l[3] = {base[0], base[1], base[2]};
            counts[lloco_sampler_sample(s, l)]++;
        }
        lloco_sampler_free(s);
        double f0 = counts[0] / (double)N, f1 = counts[1] / (double)N, f2 = counts[2] / (double)N;
        if (mode == 0) {
            CHECKF(fabs(f0 - 0.5) < 0.02 && fabs(f1 - 0.3) < 0.02 && fabs(f2 - 0.2) < 0.02,
                   "temperature 1: frequencies %.3f %.3f %.3f", f0, f1, f2);
        } else {
            /* top-k 2 and top-p 0.6 both keep {0, 1}, renormalized 5:3 */
            CHECKF(counts[2] == 0 && fabs(f0 - 0.625) < 0.02, "mode %d: frequencies %.3f %.3f %.3f", mode,
                   f0, f1, f2);
        }
    }
    /* the same seed reproduces the same draws */
    p.top_k = 0;
    p.top_p = 1.0f;
    lloco_sampler *a, *b;
    CHECK_OK(lloco_sampler_create(&p, 3, &a));
    CHECK_OK(lloco_sampler_create(&p, 3, &b));
    for (int i = 0; i < 100; i++) {
        float l1[3] = {base[0], base[1], base[2]}, l2[3] = {base[0], base[1], base[2]};
        CHECK(lloco_sampler_sample(a, l1) == lloco_sampler_sample(b, l2));
    }
    lloco_sampler_free(a);
    lloco_sampler_free(b);
    p.temperature = -1;
    CHECK_ERR(lloco_sampler_create(&p, 3, &s), LLOCO_ERR_INVAL);
    p.temperature = 1;
    p.top_p = 0;
    CHECK_ERR(lloco_sampler_create(&p, 3, &s), LLOCO_ERR_INVAL);
}

TEST_CASE(chat_templates_render) {
    lloco_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "Why?"}};
    char *out;
    CHECK_OK(lloco_chat_render(LLOCO_CHAT_CHATML, msgs, 4, 1, &out));
    CHECK(out && !strcmp(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                              "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
                              "<|im_start|>assistant\n"));
    free(out);
    CHECK_OK(lloco_chat_render(LLOCO_CHAT_LLAMA2, msgs, 4, 1, &out));
    CHECK(out && !strcmp(out, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
                              "<s>[INST] Why? [/INST]"));
    free(out);
    CHECK_OK(lloco_chat_render(LLOCO_CHAT_LLAMA3, msgs + 1, 1, 1, &out));
    CHECK(out && !strcmp(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                              "<|start_header_id|>assistant<|end_header_id|>\n\n"));
    free(out);
    lloco_chat_msg bad[] = {{"tool", "x"}};
    CHECK_ERR(lloco_chat_render(LLOCO_CHAT_CHATML, bad, 1, 1, &out), LLOCO_ERR_INVAL);
}

typedef struct {
    char text[4096];
    size_t len;
    int calls, stop_after;
} collect;

static int on_text(const char *t, size_t n, void *user) {
    collect *c = user;
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, t, n);
        c->len += n;
        c->text[c->len] = 0;
    }
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

static int generate(lloco_model *m, lloco_decoder *d, const char *const *stop, int n_stop, int max,
                    collect *c, lloco_generate_stats *st) {
    lloco_kv *kv;
    int rc = lloco_kv_create(m, 0, LLOCO_DTYPE_F16, &kv);
    if (rc) return rc;
    int32_t prompt[3] = {72, 105, 33};
    lloco_generate_params gp;
    lloco_generate_params_default(&gp);
    gp.max_tokens = max;
    gp.stop = stop;
    gp.n_stop = n_stop;
    gp.on_text = on_text;
    gp.user = c;
    rc = lloco_generate(d, kv, prompt, 3, &gp, NULL, 0, st);
    lloco_kv_free(kv);
    return rc;
}

TEST_CASE(generate_stops) {
    lloco_model *m;
    int rc = lloco_model_open(lloco_test_fixture("tiny-llama/tiny-q8_0.gguf"), &m);
    CHECK_OK(rc);
    if (rc) return;
    lloco_decoder *d;
    CHECK_OK(lloco_decoder_create(m, NULL, &d));
    collect full = {0};
    lloco_generate_stats st;
    CHECK_OK(generate(m, d, NULL, 0, 40, &full, &st));
    CHECK(st.stop == LLOCO_STOP_LENGTH || st.stop == LLOCO_STOP_EOG);
    if (st.stop == LLOCO_STOP_LENGTH) CHECK(st.n_generated == 40);
    CHECKF(full.len >= 12, "greedy output too short to test stops (%zu bytes)", full.len);
    if (full.len >= 12) {
        /* a stop string from the middle cuts the text at its first match */
        char stop[4];
        memcpy(stop, full.text + 8, 3);
        stop[3] = 0;
        const char *stops[] = {"\x01never", stop};
        collect cut = {0};
        CHECK_OK(generate(m, d, stops, 2, 40, &cut, &st));
        size_t first = (size_t)(strstr(full.text, stop) - full.text);
        CHECK(st.stop == LLOCO_STOP_STRING);
        CHECKF(cut.len == first && !memcmp(cut.text, full.text, first), "stop '%s': got '%s', want '%.*s'",
               stop, cut.text, (int)first, full.text);
    }
    collect one = {.stop_after = 1};
    CHECK_OK(generate(m, d, NULL, 0, 40, &one, &st));
    CHECK(st.stop == LLOCO_STOP_CALLBACK && one.calls == 1);
    const char *empty[] = {""};
    collect e = {0};
    CHECK_ERR(generate(m, d, empty, 1, 5, &e, &st), LLOCO_ERR_INVAL);
    lloco_decoder_free(d);
    lloco_model_close(m);
}
