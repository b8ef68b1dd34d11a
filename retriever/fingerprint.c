/* fingerprint: comparing the encoder a store was written with against the one
 * about to use it, field by field, so a refusal can say what differs. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "retriever.h"

typedef struct {
    char *msg;
    size_t cap, len;
    int n;
} diff_out;

static void add(diff_out *o, const char *fmt, ...) {
    o->n++;
    if (!o->msg || o->len + 1 >= o->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(o->msg + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (w > 0) o->len += (size_t)w < o->cap - o->len ? (size_t)w : o->cap - o->len - 1;
}

static void str_field(diff_out *o, const char *name, const char *a, const char *b) {
    if (strcmp(a, b) != 0)
        add(o, "%s%s: stored '%s', given '%s'", o->n ? "; " : "", name, a, b);
}

static void int_field(diff_out *o, const char *name, long long a, long long b) {
    if (a != b) add(o, "%s%s: stored %lld, given %lld", o->n ? "; " : "", name, a, b);
}

int lloco_store_fingerprint_diff(const lloco_store_fingerprint *a, const lloco_store_fingerprint *b,
                                 char *msg, size_t cap) {
    diff_out o = {msg, cap, 0, 0};
    if (msg && cap) msg[0] = '\0';
    str_field(&o, "model_hash", a->model_hash, b->model_hash);
    str_field(&o, "method", a->method, b->method);
    int_field(&o, "n_summary", a->n_summary, b->n_summary);
    int_field(&o, "segment_tokens", a->segment_tokens, b->segment_tokens);
    int_field(&o, "accumulate", a->accumulate, b->accumulate);
    int_field(&o, "d_model", a->d_model, b->d_model);
    if (a->slot_dtype != b->slot_dtype)
        add(&o, "%sslot_dtype: stored %s, given %s", o.n ? "; " : "",
            lloco_dtype_name(a->slot_dtype), lloco_dtype_name(b->slot_dtype));
    str_field(&o, "summary_init", a->summary_init, b->summary_init);
    str_field(&o, "encoder_lora", a->encoder_lora, b->encoder_lora);
    str_field(&o, "embedder_hash", a->embedder_hash, b->embedder_hash);
    int_field(&o, "embed_dim", a->embed_dim, b->embed_dim);
    return o.n;
}
