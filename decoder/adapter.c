/* adapter: what the decoder knows about LoRA adapters: the projections they
 * target, their shapes in a given model, and the check that an adapter view
 * fits the model before the forward pass trusts its pointers.
 */
#include "model_internal.h"

static const char *const proj_names[LLOCO_PROJ_COUNT] = {
    [LLOCO_PROJ_Q] = "q_proj",       [LLOCO_PROJ_K] = "k_proj",       [LLOCO_PROJ_V] = "v_proj",
    [LLOCO_PROJ_O] = "o_proj",       [LLOCO_PROJ_GATE] = "gate_proj", [LLOCO_PROJ_UP] = "up_proj",
    [LLOCO_PROJ_DOWN] = "down_proj",
};

const char *lloco_proj_name(lloco_proj p) {
    return (unsigned)p < LLOCO_PROJ_COUNT ? proj_names[p] : "unknown";
}

const lloco_weight *lloco_layer_proj_const(const lloco_layer *L, lloco_proj p) {
    switch (p) {
    case LLOCO_PROJ_Q: return &L->wq;
    case LLOCO_PROJ_K: return &L->wk;
    case LLOCO_PROJ_V: return &L->wv;
    case LLOCO_PROJ_O: return &L->wo;
    case LLOCO_PROJ_GATE: return &L->w_gate;
    case LLOCO_PROJ_UP: return &L->w_up;
    case LLOCO_PROJ_DOWN: return &L->w_down;
    default: LLOCO_ASSERT(!"lloco_layer_proj: bad projection"); return NULL;
    }
}

lloco_weight *lloco_layer_proj(lloco_layer *L, lloco_proj p) {
    return (lloco_weight *)lloco_layer_proj_const(L, p);
}

void lloco_proj_dims(const lloco_model *m, lloco_proj p, int *n_out, int *k_in) {
    const lloco_weight *w = lloco_layer_proj_const(&m->layers[0], p);
    *n_out = w->rows;
    *k_in = w->cols;
}

int lloco_model_qk_permuted(const lloco_model *m) {
    return m->format == LLOCO_MODEL_FORMAT_GGUF && m->hp.rope_mode == LLOCO_ROPE_NORMAL;
}

int lloco_adapter_check(const lloco_model *m, const lloco_adapter_view *a, const char *who) {
    const char *name = a->name ? a->name : "(unnamed)";
    if (a->n_layer != m->hp.n_layer || !a->layers)
        return lloco_error(LLOCO_ERR_MISMATCH, "%s: adapter '%s' has %d layers, the model %d", who,
                           name, a->n_layer, m->hp.n_layer);
    if (!a->qk_permuted != !lloco_model_qk_permuted(m))
        return lloco_error(LLOCO_ERR_MISMATCH,
                           "%s: adapter '%s' was prepared for q/k rows in %s order, the model's "
                           "are in %s order (open the adapter against this model)",
                           who, name, a->qk_permuted ? "GGUF" : "HF",
                           lloco_model_qk_permuted(m) ? "GGUF" : "HF");
    for (int l = 0; l < a->n_layer; l++) {
        for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
            const lloco_lora_mat *x = a->layers[l].proj[p];
            if (!x) continue;
            const lloco_weight *w = lloco_layer_proj_const(&m->layers[l], (lloco_proj)p);
            const int float_type = x->type == LLOCO_DTYPE_F32 || x->type == LLOCO_DTYPE_F16 ||
                                   x->type == LLOCO_DTYPE_BF16;
            if (x->n != w->rows || x->k != w->cols || x->rank <= 0 || !x->a || !x->bt ||
                !float_type)
                return lloco_error(LLOCO_ERR_MISMATCH,
                                   "%s: adapter '%s' layer %d %s: %s rank %d, %d x %d, the model's "
                                   "projection is %d x %d",
                                   who, name, l, proj_names[p], lloco_dtype_name(x->type), x->rank,
                                   x->n, x->k, w->rows, w->cols);
        }
    }
    return 0;
}
