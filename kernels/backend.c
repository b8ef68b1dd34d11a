/* backend: creation of backend handles and the public lloco_op_* entry
 * points, which check their arguments (programmer errors assert) and forward
 * to the backend's op table (backend_impl.h).
 */
#include <stdlib.h>
#include <unistd.h>

#include "kernels/backend_impl.h"

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int create(lloco_backend_kind kind, int n_threads, lloco_cpu_isa isa, lloco_backend **out) {
    *out = NULL;
    if (n_threads <= 0) n_threads = online_cpus();
    lloco_backend *be = calloc(1, sizeof *be);
    if (!be) return lloco_error(LLOCO_ERR_NOMEM, "backend: out of memory");
    be->kind = kind;
    int rc;
    switch (kind) {
    case LLOCO_BACKEND_CPU_REF: rc = lloco_backend_init_cpu_ref(be); break;
    case LLOCO_BACKEND_CPU: rc = lloco_backend_init_cpu(be, n_threads, isa); break;
    case LLOCO_BACKEND_CUDA:
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED,
                         "backend: CUDA backend not built into this lloco (CPU backends only)");
        break;
    default: rc = lloco_error(LLOCO_ERR_INVAL, "backend: unknown kind %d", (int)kind); break;
    }
    if (rc != 0) {
        free(be);
        return rc;
    }
    *out = be;
    return 0;
}

int lloco_backend_create(lloco_backend_kind kind, int n_threads, lloco_backend **out) {
    return create(kind, n_threads, lloco_cpu_isa_detect(), out);
}

int lloco_backend_create_cpu_isa(int n_threads, lloco_cpu_isa isa, lloco_backend **out) {
    if ((unsigned)isa >= LLOCO_CPU_ISA_COUNT || isa > lloco_cpu_isa_detect()) {
        *out = NULL;
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "backend: this CPU cannot run the %s kernels",
                           lloco_cpu_isa_name(isa));
    }
    return create(LLOCO_BACKEND_CPU, n_threads, isa, out);
}

void lloco_backend_free(lloco_backend *be) {
    if (!be) return;
    be->iface->free(be);
    free(be);
}

const char *lloco_backend_name(const lloco_backend *be) { return be->name; }
const char *lloco_backend_describe(const lloco_backend *be) { return be->describe; }
int lloco_backend_n_threads(const lloco_backend *be) { return be->n_threads; }

/* ---- ops ---------------------------------------------------------------- */

static int is_cache_type(lloco_dtype t) { return t == LLOCO_DTYPE_F32 || t == LLOCO_DTYPE_F16; }

void lloco_op_matmul(lloco_backend *be, const void *w, lloco_dtype wt, int n, int k, const float *x,
                     int m, float *y) {
    LLOCO_ASSERT((unsigned)wt < LLOCO_DTYPE_COUNT && wt != LLOCO_DTYPE_Q8_1 &&
                 wt != LLOCO_DTYPE_Q8_K);
    LLOCO_ASSERT(n >= 0 && m >= 0 && k > 0 && k % lloco_dtype_block_elems(wt) == 0);
    if (n == 0 || m == 0) return;
    LLOCO_ASSERT(w && x && y);
    be->iface->matmul(be, w, wt, n, k, x, m, y);
}

void lloco_op_rmsnorm(lloco_backend *be, const float *x, const float *w, int m, int d, float eps,
                      float *y) {
    LLOCO_ASSERT(m >= 0 && d > 0);
    if (m == 0) return;
    LLOCO_ASSERT(x && w && y);
    be->iface->rmsnorm(be, x, w, m, d, eps, y);
}

void lloco_op_layernorm(lloco_backend *be, const float *x, const float *w, const float *b, int m,
                        int d, float eps, float *y) {
    LLOCO_ASSERT(m >= 0 && d > 0);
    if (m == 0) return;
    LLOCO_ASSERT(x && w && y);
    be->iface->layernorm(be, x, w, b, m, d, eps, y);
}

void lloco_op_rope(lloco_backend *be, float *x, int m, int n_heads, int head_dim, int rot_dim,
                   const int32_t *pos, const lloco_rope_params *rp, int neox) {
    LLOCO_ASSERT(m >= 0 && n_heads > 0 && head_dim > 0);
    LLOCO_ASSERT(rot_dim >= 0 && rot_dim <= head_dim && rot_dim % 2 == 0);
    if (m == 0 || rot_dim == 0) return;
    LLOCO_ASSERT(x && pos && rp);
    be->iface->rope(be, x, m, n_heads, head_dim, rot_dim, pos, rp, neox);
}

void lloco_op_softmax(lloco_backend *be, float *x, int m, int n) {
    LLOCO_ASSERT(m >= 0 && n > 0);
    if (m == 0) return;
    LLOCO_ASSERT(x);
    be->iface->softmax(be, x, m, n);
}

void lloco_op_silu_mul(lloco_backend *be, const float *gate, const float *up, float *out,
                       int64_t n) {
    LLOCO_ASSERT(n >= 0);
    if (n == 0) return;
    LLOCO_ASSERT(gate && up && out);
    be->iface->silu_mul(be, gate, up, out, n);
}

void lloco_op_gelu(lloco_backend *be, float *x, int64_t n, int approx) {
    LLOCO_ASSERT(n >= 0);
    if (n == 0) return;
    LLOCO_ASSERT(x);
    be->iface->gelu(be, x, n, approx);
}

void lloco_op_add(lloco_backend *be, float *y, const float *x, int64_t n) {
    LLOCO_ASSERT(n >= 0);
    if (n == 0) return;
    LLOCO_ASSERT(y && x);
    be->iface->add(be, y, x, n);
}

void lloco_op_get_rows(lloco_backend *be, const void *table, lloco_dtype t, int d,
                       const int32_t *ids, int m, float *out) {
    LLOCO_ASSERT((unsigned)t < LLOCO_DTYPE_COUNT && d > 0 && m >= 0);
    LLOCO_ASSERT(d % lloco_dtype_block_elems(t) == 0);
    if (m == 0) return;
    LLOCO_ASSERT(table && ids && out);
    be->iface->get_rows(be, table, t, d, ids, m, out);
}

void lloco_op_attention(lloco_backend *be, const float *q, int m, int p0, int n_head, int n_kv_head,
                        int head_dim, const void *k, const void *v, lloco_dtype kv_type,
                        int kv_stride, float scale, float *out) {
    LLOCO_ASSERT(m >= 0 && p0 >= 0 && head_dim > 0);
    LLOCO_ASSERT(n_kv_head > 0 && n_head > 0 && n_head % n_kv_head == 0);
    LLOCO_ASSERT(is_cache_type(kv_type) && kv_stride >= n_kv_head * head_dim);
    if (m == 0) return;
    LLOCO_ASSERT(q && k && v && out);
    be->iface->attention(be, q, m, p0, n_head, n_kv_head, head_dim, k, v, kv_type, kv_stride, scale,
                         1, out);
}

void lloco_op_attention_full(lloco_backend *be, const float *q, int m, int n_head, int head_dim,
                             const float *k, const float *v, int kv_stride, float scale,
                             float *out) {
    LLOCO_ASSERT(m >= 0 && n_head > 0 && head_dim > 0 && kv_stride >= n_head * head_dim);
    if (m == 0) return;
    LLOCO_ASSERT(q && k && v && out);
    be->iface->attention(be, q, m, 0, n_head, n_head, head_dim, k, v, LLOCO_DTYPE_F32, kv_stride,
                         scale, 0, out);
}

void lloco_op_store_rows(lloco_backend *be, const float *x, int m, int d, void *dst, lloco_dtype t,
                         int stride) {
    LLOCO_ASSERT(m >= 0 && d > 0 && is_cache_type(t) && stride >= d);
    if (m == 0) return;
    LLOCO_ASSERT(x && dst);
    be->iface->store_rows(be, x, m, d, dst, t, stride);
}

static int is_float_type(lloco_dtype t) {
    return t == LLOCO_DTYPE_F32 || t == LLOCO_DTYPE_F16 || t == LLOCO_DTYPE_BF16;
}

static void check_lora_mat(const lloco_lora_mat *l) {
    LLOCO_ASSERT(l->a && l->bt && is_float_type(l->type) && l->rank > 0 && l->k > 0 && l->n > 0);
}

void lloco_op_lora(lloco_backend *be, const float *x, int m, int k, int n,
                   const lloco_lora_mat *const *per_row, float *y) {
    LLOCO_ASSERT(m >= 0 && k > 0 && n > 0);
    if (m == 0) return;
    LLOCO_ASSERT(x && per_row && y);
    for (int i = 0; i < m; i++) {
        if (!per_row[i]) continue;
        check_lora_mat(per_row[i]);
        LLOCO_ASSERT(per_row[i]->k == k && per_row[i]->n == n);
    }
    be->iface->lora(be, x, m, k, n, per_row, y);
}

void lloco_op_lora_merge(lloco_backend *be, const void *w, lloco_dtype wt, const lloco_lora_mat *l,
                         void *dst, lloco_dtype dst_type) {
    LLOCO_ASSERT(l && w && dst);
    check_lora_mat(l);
    LLOCO_ASSERT((unsigned)wt < LLOCO_DTYPE_COUNT && wt != LLOCO_DTYPE_Q8_1 &&
                 wt != LLOCO_DTYPE_Q8_K && l->k % lloco_dtype_block_elems(wt) == 0);
    LLOCO_ASSERT(is_float_type(dst_type) || dst_type == LLOCO_DTYPE_Q8_0 ||
                 dst_type == LLOCO_DTYPE_Q4_0 || dst_type == LLOCO_DTYPE_Q4_1);
    LLOCO_ASSERT(l->k % lloco_dtype_block_elems(dst_type) == 0);
    LLOCO_ASSERT(dst != w || dst_type == wt);
    be->iface->lora_merge(be, w, wt, l, dst, dst_type);
}
