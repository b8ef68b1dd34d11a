/* decoder: LLaMA-family models from GGUF or safetensors (+ config.json), their
 * tokenizers, the transformer forward pass over a batch of sequences (each
 * with its own KV cache, inputs as token ids or caller-supplied embeddings,
 * logits or final hidden states out), sampling and chat templates.
 *
 * Ownership: a lloco_model owns its file mappings and everything derived
 * from them; pointers it returns (hparams, tokenizer, token texts) are valid
 * until lloco_model_close(). A lloco_decoder and every lloco_kv created for a
 * model must be freed before the model is closed.
 */
#ifndef LLOCO_DECODER_H
#define LLOCO_DECODER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* ---- safetensors -------------------------------------------------------- */

/* Reader for one .safetensors file or a sharded checkpoint described by
 * model.safetensors.index.json (also used by the retrieval embedder and the
 * LoRA loader). Each file is mapped; every tensor's byte range, dtype and
 * shape are checked against the file on open, so a damaged file is an error
 * naming the problem.
 *
 * Ownership: tensor names and data pointers are valid until lloco_st_close().
 */
typedef struct lloco_st lloco_st;

typedef struct {
    const char *name;  /* NUL-terminated, owned by the reader */
    lloco_dtype type;  /* F32, F16 or BF16; LLOCO_DTYPE_COUNT marks the file's
                          other dtypes (I64, U8, F64...): listed and size-checked,
                          but no weight, so users refuse them */
    int n_dims;        /* 0..4 */
    int64_t shape[4];  /* safetensors order: shape[n_dims-1] is contiguous */
    const void *data;
    size_t nbytes;
    int shard;         /* index of the file it came from */
} lloco_st_tensor;

/* path: a .safetensors file, a model.safetensors.index.json, or a directory
 * holding either (index preferred). */
int lloco_st_open(const char *path, lloco_st **out);
void lloco_st_close(lloco_st *st);

int64_t lloco_st_n_tensors(const lloco_st *st);
const lloco_st_tensor *lloco_st_tensor_at(const lloco_st *st, int64_t i);
const lloco_st_tensor *lloco_st_find(const lloco_st *st, const char *name);
int lloco_st_n_shards(const lloco_st *st);
/* Value of a "__metadata__" string entry of the first shard, or NULL. */
const char *lloco_st_metadata(const lloco_st *st, const char *key);

/* ---- GGUF ---------------------------------------------------------------- */

/* Reader for GGUF v2/v3 files (also used by the LoRA loader for llama.cpp
 * adapters). The file is mapped and every offset and size checked on open.
 *
 * Ownership: everything returned (tensor names and data, strings) points
 * into the mapping and is valid until lloco_gguf_close(). Strings returned
 * as (ptr, len) are NOT NUL-terminated. */
typedef struct lloco_gguf lloco_gguf;

typedef struct {
    const char *name; /* NUL-terminated copy owned by the reader */
    lloco_dtype type;
    int n_dims;       /* 1..4 */
    int64_t ne[4];    /* ne[0] is the contiguous dimension; unused dims = 1 */
    const void *data; /* inside the mapping, aligned as the file declares */
    size_t nbytes;
} lloco_gguf_tensor;

/* Opens and validates path. On failure returns a negative code with a
 * lloco_error() detail naming the file and the problem (e.g. "tensor
 * 'blk.3.attn_q.weight' data [off, off+len) beyond end of file (size N)"). */
int lloco_gguf_open(const char *path, lloco_gguf **out);
void lloco_gguf_close(lloco_gguf *g);
/* Index of a metadata key (exact name), or -1 when absent. */
int64_t lloco_gguf_find_key(const lloco_gguf *g, const char *key);
/* Metadata by exact key: 0, LLOCO_ERR_NOTFOUND (absent) or LLOCO_ERR_TYPE
 * (another type). get_f32 accepts FLOAT32 and FLOAT64. */
int lloco_gguf_get_f32(const lloco_gguf *g, const char *key, float *out);
int lloco_gguf_get_str(const lloco_gguf *g, const char *key, const char **s, size_t *len);
int64_t lloco_gguf_n_tensors(const lloco_gguf *g);
const lloco_gguf_tensor *lloco_gguf_tensor_at(const lloco_gguf *g, int64_t i);
const lloco_gguf_tensor *lloco_gguf_find_tensor(const lloco_gguf *g, const char *name);

/* ---- tokenizer ---------------------------------------------------------- */

typedef enum {
    LLOCO_TOKENIZER_BPE = 0, /* GPT-2 byte-level BPE (SmolLM2, Llama-3, Qwen2) */
    LLOCO_TOKENIZER_SPM = 1, /* SentencePiece BPE with byte fallback (Llama-2) */
} lloco_tokenizer_kind;

typedef struct lloco_tokenizer lloco_tokenizer;

/* From a tokenizer.json (HF `tokenizers` format). tokenizer_config.json next
 * to it, if present, supplies bos/eos and add_bos. */
int lloco_tokenizer_load_json(const char *path, lloco_tokenizer **out);
void lloco_tokenizer_free(lloco_tokenizer *t);

lloco_tokenizer_kind lloco_tokenizer_kind_of(const lloco_tokenizer *t);
/* Pre-tokenizer name as the model declares it ("smollm", "llama-bpe", ...). */
const char *lloco_tokenizer_pre_name(const lloco_tokenizer *t);
int32_t lloco_tokenizer_n_vocab(const lloco_tokenizer *t);
int32_t lloco_tokenizer_bos(const lloco_tokenizer *t); /* -1 if none */
int32_t lloco_tokenizer_eos(const lloco_tokenizer *t); /* -1 if none */
int lloco_tokenizer_add_bos(const lloco_tokenizer *t); /* model's default */
/* End-of-generation: eos, eot, <|im_end|>, <|endoftext|>, </s> ... */
int lloco_tokenizer_is_eog(const lloco_tokenizer *t, int32_t id);
/* Token id of an exact piece text (e.g. "<|im_start|>"), or -1. */
int32_t lloco_tokenizer_find(const lloco_tokenizer *t, const char *piece);

/* Encodes text (len bytes, need not be valid UTF-8: invalid bytes are read
 * as U+FFFD, as llama.cpp does). add_bos prepends BOS when the model has one.
 * parse_special: occurrences of special/control token texts map to their ids
 * instead of being tokenized as text. Writes up to cap ids to out and the
 * total count to *n_out; LLOCO_ERR_FULL if cap was too small (*n_out then
 * says how many were needed). */
int lloco_tokenizer_encode(const lloco_tokenizer *t, const char *text, size_t len, int add_bos,
                           int parse_special, int32_t *out, int cap, int *n_out);

/* The bytes a token stands for when detokenized (byte-level decoded for
 * BPE, ▁ -> space and <0xNN> -> byte for SPM; special tokens give their text
 * only if render_special). Returns the byte count (may exceed cap: then only
 * cap bytes were written). -1 for an id out of range. */
int lloco_tokenizer_piece(const lloco_tokenizer *t, int32_t id, int render_special, char *buf,
                          int cap);
/* Raw vocabulary string of a token (NUL-terminated). NULL if out of range. */
const char *lloco_tokenizer_token_text(const lloco_tokenizer *t, int32_t id);

/* Detokenizes ids into buf (NUL-terminated if cap > 0); returns the byte
 * count needed. SPM drops the leading space of the first piece. */
int lloco_tokenizer_decode(const lloco_tokenizer *t, const int32_t *ids, int n,
                           int render_special, char *buf, int cap);

/* Streaming detokenizer: feed ids one at a time; it emits only complete
 * UTF-8 sequences, holding back an unfinished tail until it completes (or
 * until flush, which emits it as is). */
typedef struct {
    const lloco_tokenizer *tok;
    int render_special;
    int n_fed;
    char pending[8];
    int n_pending;
} lloco_detok;

void lloco_detok_init(lloco_detok *d, const lloco_tokenizer *t, int render_special);
/* Appends the printable bytes for id to out (cap bytes); returns the number
 * written, or the number needed if > cap (nothing consumed then). */
int lloco_detok_push(lloco_detok *d, int32_t id, char *out, int cap);
int lloco_detok_flush(lloco_detok *d, char *out, int cap);

/* ---- model -------------------------------------------------------------- */

typedef enum {
    LLOCO_ROPE_NORMAL = 0, /* adjacent pairs (GGUF llama convention) */
    LLOCO_ROPE_NEOX = 1,   /* halves (HF rotate_half) */
} lloco_rope_mode;

typedef enum {
    LLOCO_ROPE_SCALING_NONE = 0,
    LLOCO_ROPE_SCALING_LINEAR,
    LLOCO_ROPE_SCALING_LLAMA3,
} lloco_rope_scaling;

typedef struct {
    char arch[32];       /* "llama" */
    int n_layer;
    int d_model;
    int n_head;
    int n_head_kv;
    int head_dim;
    int d_ff;
    int n_vocab;
    int n_ctx_train;
    float rms_eps;
    float rope_theta;
    int rope_dim;
    lloco_rope_mode rope_mode;
    lloco_rope_scaling rope_scaling;
    float rope_factor;           /* linear/llama3 factor */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_orig_ctx;           /* llama3 */
    int tied_embeddings;
} lloco_hparams;

typedef enum {
    LLOCO_MODEL_FORMAT_GGUF = 0,
    LLOCO_MODEL_FORMAT_SAFETENSORS = 1,
} lloco_model_format;

typedef struct lloco_model lloco_model;

/* path: a .gguf file, or a directory (or .safetensors / index file) with
 * config.json and tokenizer.json beside it. A missing path gives
 * LLOCO_ERR_NOTFOUND with a message naming the path. */
int lloco_model_open(const char *path, lloco_model **out);
void lloco_model_close(lloco_model *m);

const lloco_hparams *lloco_model_hparams(const lloco_model *m);
const lloco_tokenizer *lloco_model_tokenizer(const lloco_model *m);
lloco_model_format lloco_model_format_of(const lloco_model *m);
/* Chat template source text from the file, or NULL. */
const char *lloco_model_chat_template(const lloco_model *m);
/* Total bytes of weight data the forward pass reads per token. */
size_t lloco_model_weight_bytes(const lloco_model *m);
/* Token embedding row as f32 (d_model floats into out). */
int lloco_model_embed_token(const lloco_model *m, int32_t id, float *out);
/* Identity of the model's content: XXH3-128 in hex (32 chars + NUL into
 * out) over the hyper-parameters, the vocabulary and every tensor's name,
 * type, shape and bytes. Reads all weights once (tens of ms per 100 MB):
 * callers that need it more than once keep it. */
int lloco_model_hash(const lloco_model *m, char out[33]);
/* Any tensor of the model files by its name there (e.g. "embed_summary.weight"
 * or "memory_token_embed.weight", which the LLaMA loader does not use),
 * dequantised to f32 as rows x cols (cols = the contiguous dimension; a 1-D
 * tensor is 1 x n). *out is malloc'ed; the caller frees it.
 * LLOCO_ERR_NOTFOUND when the files have no such tensor. */
int lloco_model_tensor_f32(const lloco_model *m, const char *name, int64_t *rows, int64_t *cols,
                           float **out);

/* Prints architecture, hyper-parameters, tokenizer and the tensor table of a
 * model file or directory (the `lloco inspect` command) to f. */
int lloco_model_inspect(const char *path, void *file /* FILE* */);

/* ---- KV cache ----------------------------------------------------------- */

typedef struct lloco_kv lloco_kv;

/* A sequence's cache; grows on demand up to max_ctx positions (<= 0: the
 * model's training context). kv_type: F16 (default) or F32. */
int lloco_kv_create(const lloco_model *m, int max_ctx, lloco_dtype kv_type, lloco_kv **out);
void lloco_kv_free(lloco_kv *kv);
int lloco_kv_len(const lloco_kv *kv);
int lloco_kv_max(const lloco_kv *kv);
/* Forgets positions >= n. */
void lloco_kv_truncate(lloco_kv *kv, int n);
size_t lloco_kv_bytes(const lloco_kv *kv);

/* ---- LoRA adapters -------------------------------------------------------- */

/* The projections of a LLaMA layer a LoRA adapter can target (PEFT's q_proj,
 * k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj). */
typedef enum {
    LLOCO_PROJ_Q = 0,
    LLOCO_PROJ_K,
    LLOCO_PROJ_V,
    LLOCO_PROJ_O,
    LLOCO_PROJ_GATE,
    LLOCO_PROJ_UP,
    LLOCO_PROJ_DOWN,
    LLOCO_PROJ_COUNT
} lloco_proj;

/* PEFT's module name of a projection ("q_proj", ...). */
const char *lloco_proj_name(lloco_proj p);
/* Output and input features of projection p in model m (the n and k its
 * lloco_lora_mat must have). */
void lloco_proj_dims(const lloco_model *m, lloco_proj p, int *n_out, int *k_in);
/* 1 when the model's q and k weight rows are in GGML's RoPE order (a GGUF
 * llama/mistral file: llama.cpp's converter interleaves each head's two
 * rotate_half halves), 0 when they are in HF order. Output j of such a
 * projection of head size hd is HF output (j / hd) * hd + (j % 2) * (hd / 2)
 * + (j % hd) / 2. */
int lloco_model_qk_permuted(const lloco_model *m);

typedef struct {
    const lloco_lora_mat *proj[LLOCO_PROJ_COUNT]; /* NULL: projection not adapted */
} lloco_adapter_layer;

/* What the forward pass applies for one adapter: per layer and projection a
 * LoRA pair or NULL. Filled by lora_bank/ (lloco_lora_view) or by hand.
 * For a model whose q/k rows are permuted for GGML's RoPE (see
 * lloco_model_qk_permuted) the columns of q's and k's bt must be permuted
 * the same way, and qk_permuted says they are (lora_bank does both).
 * Ownership: the view and everything it points to are borrowed by the
 * decoder for the duration of each call that receives it (and, in merged
 * mode, until the next lloco_decoder_merge_adapter call). */
typedef struct {
    const char *name;                  /* for messages */
    int n_layer;                       /* must equal the model's */
    const lloco_adapter_layer *layers; /* (n_layer) */
    int qk_permuted;                   /* must equal lloco_model_qk_permuted() */
} lloco_adapter_view;

/* ---- forward pass ------------------------------------------------------- */

typedef struct lloco_decoder lloco_decoder;

typedef struct {
    lloco_backend_kind backend; /* default LLOCO_BACKEND_CPU */
    int n_threads;              /* <= 0: all online CPUs */
    int max_batch_tokens;       /* positions per internal step; <= 0: 512 */
} lloco_decoder_params;

void lloco_decoder_params_default(lloco_decoder_params *p);
int lloco_decoder_create(const lloco_model *m, const lloco_decoder_params *p,
                         lloco_decoder **out);
void lloco_decoder_free(lloco_decoder *d);
lloco_backend *lloco_decoder_backend(lloco_decoder *d);
const lloco_model *lloco_decoder_model(const lloco_decoder *d);

/* Use as a token id to take the position's input from embd instead. */
#define LLOCO_TOKEN_EMBD (-1)

/* One sequence's part of a forward call: n new positions appended to kv at
 * positions kv_len..kv_len+n-1. */
typedef struct {
    lloco_kv *kv;
    int n;
    const int32_t *tokens; /* [n]; LLOCO_TOKEN_EMBD entries read embd */
    const float *embd;     /* [n][d_model] or NULL (row i used when
                              tokens == NULL or tokens[i] == LLOCO_TOKEN_EMBD) */
    /* Outputs at chosen positions (indices 0..n-1 within this call). */
    int n_out;
    const int32_t *out_idx; /* [n_out]; NULL with n_out == 1 means the last */
    float *logits;          /* [n_out][n_vocab] or NULL */
    float *hidden;          /* [n_out][d_model] after the final norm, or NULL */
    /* The LoRA adapter this sequence decodes with; NULL = the base model.
     * Sequences of one call may use different adapters (or none): each
     * targeted matmul runs once over all rows, then one batched LoRA op
     * adds every row's own update. A sequence's cache is only meaningful
     * with the adapter it was filled with. */
    const lloco_adapter_view *adapter;
} lloco_seq_batch;

/* Runs all sequences' new positions through the model together (matmuls
 * over the concatenated rows; attention per sequence against its own cache)
 * and appends them to the caches. A sequence's outputs do not depend on the
 * other sequences of the call. On error no cache has grown;
 * LLOCO_ERR_MISMATCH when an adapter does not fit the model or, in merged
 * mode, is not the merged one. */
int lloco_decoder_forward(lloco_decoder *d, lloco_seq_batch *seqs, int n_seqs);

/* Merged mode, for a workload that uses one adapter: the decoder computes
 * W + scale·B·A for every projection the adapter targets, once, into
 * weights it owns, so the forward pass costs what the base model costs.
 * F32/F16/BF16 and Q8_0/Q4_0/Q4_1 weights are rebuilt in their own type
 * (quantized rows dequantized, updated and requantized with GGML's
 * reference rounding, so the merged weights carry one more rounding than
 * the unmerged path); K-quant weights (no quantizer here) become Q8_0.
 * While an adapter is merged every sequence must name that same view in
 * its `adapter` field (it is not applied a second time). a = NULL goes
 * back to the base weights and frees the merged ones; merging another
 * adapter replaces the current one, reusing its buffers. The time this
 * takes is the swap cost (bench/benchmark-kernels measures the op).
 * On error the decoder is back on the base weights. */
int lloco_decoder_merge_adapter(lloco_decoder *d, const lloco_adapter_view *a);
/* The merged adapter, or NULL. */
const lloco_adapter_view *lloco_decoder_merged_adapter(const lloco_decoder *d);
/* Bytes of merged weights the decoder holds. */
size_t lloco_decoder_merged_bytes(const lloco_decoder *d);

/* ---- sampling ----------------------------------------------------------- */

typedef struct {
    float temperature; /* <= 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
} lloco_sampler_params;

typedef struct lloco_sampler lloco_sampler;
void lloco_sampler_params_default(lloco_sampler_params *p);
int lloco_sampler_create(const lloco_sampler_params *p, int n_vocab, lloco_sampler **out);
void lloco_sampler_free(lloco_sampler *s);
/* Picks a token from logits[n_vocab] (logits may be modified). */
int32_t lloco_sampler_sample(lloco_sampler *s, float *logits);

/* ---- generation --------------------------------------------------------- */

typedef enum {
    LLOCO_STOP_LENGTH = 0, /* max_tokens reached */
    LLOCO_STOP_EOG,        /* end-of-generation token */
    LLOCO_STOP_STRING,     /* a stop string appeared */
    LLOCO_STOP_CONTEXT,    /* the KV cache is full */
    LLOCO_STOP_CALLBACK,   /* on_text asked to stop */
} lloco_stop_reason;

typedef struct {
    int max_tokens;
    lloco_sampler_params sampling;
    const char *const *stop; /* stop strings (not emitted) */
    int n_stop;
    /* Called with each piece of text as it becomes final (whole UTF-8
     * characters, never part of a stop string); non-zero return stops. */
    int (*on_text)(const char *text, size_t len, void *user);
    void *user;
    float *prompt_logits; /* optional [n_vocab]: logits after the prompt */
    const lloco_adapter_view *adapter; /* LoRA adapter, or NULL (see lloco_seq_batch) */
    int ignore_eos; /* end-of-generation tokens do not stop (benchmarks) */
} lloco_generate_params;

typedef struct {
    int n_prompt, n_generated;
    double t_prefill, t_decode; /* seconds */
    lloco_stop_reason stop;
} lloco_generate_stats;

void lloco_generate_params_default(lloco_generate_params *p);

/* Generated ids -> final text: streaming detokenization (whole UTF-8
 * characters) and stop strings, whose text is held back while it could
 * still be the start of one and never emitted. on_text gets each final
 * piece (non-zero return stops). lloco_generate and the server's scheduler
 * both use it. The stop strings are copied. */
typedef struct lloco_textout lloco_textout;
int lloco_textout_create(const lloco_tokenizer *t, const char *const *stop, int n_stop,
                         int (*on_text)(const char *text, size_t len, void *user), void *user,
                         lloco_textout **out);
void lloco_textout_free(lloco_textout *o);
/* Feeds one generated id that is not end-of-generation. Returns 0 to go
 * on, 1 when generation must end (*stop = LLOCO_STOP_STRING or
 * LLOCO_STOP_CALLBACK), or a negative error. */
int lloco_textout_push(lloco_textout *o, int32_t id, lloco_stop_reason *stop);
/* At the end of generation (not after a stop): emits the held-back text. */
int lloco_textout_finish(lloco_textout *o);
/* Feeds prompt[n_prompt] (appended to kv) and samples up to max_tokens.
 * Generated token ids go to out_ids (cap out_cap, may be NULL). */
int lloco_generate(lloco_decoder *d, lloco_kv *kv, const int32_t *prompt, int n_prompt,
                   const lloco_generate_params *p, int32_t *out_ids, int out_cap,
                   lloco_generate_stats *stats);

/* ---- chat templates ----------------------------------------------------- */

typedef enum {
    LLOCO_CHAT_CHATML = 0, /* <|im_start|>role\n...<|im_end|>\n */
    LLOCO_CHAT_LLAMA2 = 1, /* <s>[INST] <<SYS>>...<</SYS>> ... [/INST] */
    LLOCO_CHAT_LLAMA3 = 2,
} lloco_chat_format;

typedef struct {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} lloco_chat_msg;

/* Detects the format from the model's template text (ChatML when absent
 * and the vocabulary has <|im_start|>, else Llama-2). */
lloco_chat_format lloco_chat_detect(const lloco_model *m);
/* Renders msgs (and, if add_assistant, the opening of the assistant turn)
 * into a heap string the caller frees. */
int lloco_chat_render(lloco_chat_format f, const lloco_chat_msg *msgs, int n,
                      int add_assistant, char **out);

#endif
