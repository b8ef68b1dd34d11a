/* Private to decoder/: the in-memory LLaMA-family model every loader fills
 * and the forward pass reads. Weight pointers point into the file mappings
 * (or into `owned` buffers for tensors that needed conversion).
 */
#ifndef LLOCO_DECODER_MODEL_INTERNAL_H
#define LLOCO_DECODER_MODEL_INTERNAL_H

#include "decoder.h"
#include "gguf.h"
#include "decoder.h"

typedef struct {
    const void *data;
    lloco_dtype type;
    int rows; /* output features */
    int cols; /* input features: contiguous */
} lloco_weight;

typedef struct {
    const float *attn_norm; /* (d_model) */
    lloco_weight wq;        /* (n_head*head_dim, d_model) */
    lloco_weight wk;        /* (n_head_kv*head_dim, d_model) */
    lloco_weight wv;        /* (n_head_kv*head_dim, d_model) */
    lloco_weight wo;        /* (d_model, n_head*head_dim) */
    const float *bq, *bk, *bv; /* optional biases (Qwen2), NULL otherwise */
    const float *ffn_norm;  /* (d_model) */
    lloco_weight w_gate;    /* (d_ff, d_model) */
    lloco_weight w_up;      /* (d_ff, d_model) */
    lloco_weight w_down;    /* (d_model, d_ff) */
} lloco_layer;

struct lloco_model {
    lloco_hparams hp;
    lloco_model_format format;
    lloco_gguf *gguf;
    lloco_st *st;
    lloco_tokenizer *tok;
    char *chat_template;
    lloco_weight tok_embd; /* (n_vocab, d_model) */
    const float *out_norm; /* (d_model) */
    lloco_weight output;   /* (n_vocab, d_model); == tok_embd when tied */
    lloco_layer *layers;   /* (n_layer) */
    lloco_rope_params rope; /* freq_factors point into the file or into `owned` */
    void **owned;          /* converted tensors freed with the model */
    int n_owned;
};

/* The weight of projection p in layer L (adapter.c). */
lloco_weight *lloco_layer_proj(lloco_layer *L, lloco_proj p);
const lloco_weight *lloco_layer_proj_const(const lloco_layer *L, lloco_proj p);
/* LLOCO_ERR_MISMATCH, naming `who` and the adapter, unless every pair of a
 * fits the projection it is attached to. */
int lloco_adapter_check(const lloco_model *m, const lloco_adapter_view *a, const char *who);

#endif
