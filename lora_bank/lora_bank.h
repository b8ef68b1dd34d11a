/* lora_bank: LoRA adapters for the decoder. An adapter is opened from a PEFT
 * directory (adapter_config.json + adapter_model.safetensors) or a llama.cpp
 * GGUF adapter, checked against the base model it will run on, and held in
 * memory as the lloco_adapter_view the decoder applies (unmerged, per
 * sequence, or merged with lloco_decoder_merge_adapter).
 *
 * Ownership: a lloco_lora owns its matrices; the view, the info and every
 * string they return are valid until lloco_lora_close(). The base model is
 * only read during lloco_lora_open, but the view fits that model (and any
 * model of the same shapes and file layout, see lloco_model_qk_permuted).
 */
#ifndef LLOCO_LORA_BANK_H
#define LLOCO_LORA_BANK_H

#include <stddef.h>

#include "decoder/decoder.h"

typedef struct lloco_lora lloco_lora;

/* Opens the adapter at path for base model base: a directory is a PEFT
 * adapter, a file ending in .gguf a llama.cpp one. name is how messages and
 * the view call it (NULL: the last path component, without ".gguf").
 *
 * What PEFT writes for a LoRA on a LLaMA-family model is read faithfully:
 *  - tensors base_model.model.model.layers.{i}.{self_attn,mlp}.{q,k,v,o,
 *    gate,up,down}_proj.lora_{A,B}.weight, A (r, in) and B (out, r), in
 *    F32, F16 or BF16 (kept in that type: the LoRA op reads all three);
 *  - target_modules as a list (PEFT's exact-or-suffix match) or a regex
 *    string (full match; PCRE2, which agrees with Python's re on the
 *    patterns PEFT users write), exclude_modules, layers_to_transform,
 *    rank_pattern and alpha_pattern (PEFT's "(.*\.)?(key)$" match);
 *  - scale = alpha / r, or alpha / sqrt(r) with use_rslora, per module;
 *  - fan_in_fan_out describes the base weight's layout (Conv1D models); A
 *    and B have the same shapes either way, and PEFT resets the flag for
 *    LLaMA's nn.Linear projections, so it is accepted and has no effect.
 * Refused with LLOCO_ERR_UNSUPPORTED and a message saying why: other PEFT
 * types, modules_to_save (whole replaced modules, e.g. lm_head), DoRA,
 * LoRA biases (lora_bias, bias != "none"), layer_replication, trainable
 * tokens, target_parameters, aLoRA and QALoRA, pickled adapter_model.bin,
 * and targets other than the seven projections.
 * Every tensor is checked: a missing or unexpected tensor, a shape that
 * does not fit the base model (dimensions, rank, layer count), a damaged
 * file or non-finite values are errors (LLOCO_ERR_FORMAT, _MISMATCH,
 * _NOTFOUND) whose message names the adapter, the file and the problem.
 * llama.cpp adapters (convert_lora_to_gguf.py: blk.{i}.attn_q.weight.lora_a
 * and .lora_b, adapter.lora.alpha) are read as llama.cpp reads them: every
 * pair in the file, scale = alpha / rank (1 for alpha 0), matrices in
 * F32/F16/BF16 or quantized (dequantized to F32). The format keeps no
 * rsLoRA flag and no alpha_pattern, so adapters using them do not survive
 * the conversion; *_norm.weight tensors are skipped as llama.cpp does.
 * B's q/k rows are reordered between HF and GGUF order to match the base
 * model (see lloco_model_qk_permuted), whichever format either comes in. */
int lloco_lora_open(const char *path, const char *name, const lloco_model *base, lloco_lora **out);
void lloco_lora_close(lloco_lora *a);

/* The view to pass to the decoder (lloco_seq_batch.adapter,
 * lloco_generate_params.adapter or lloco_decoder_merge_adapter). */
const lloco_adapter_view *lloco_lora_view(const lloco_lora *a);

typedef struct {
    const char *name;
    const char *dir;        /* the path it was opened from */
    const char *base_model; /* base_model_name_or_path as written, or "" */
    int r;                  /* the config's r (0 for GGUF, which has none) */
    int max_rank;           /* over all pairs (rank_pattern may raise it) */
    float lora_alpha;
    int use_rslora;
    unsigned targets;  /* bit (1u << p) for each lloco_proj adapted in some layer */
    int n_pairs;       /* (layer, projection) pairs adapted */
    lloco_dtype dtype; /* of the matrices held */
    size_t bytes;      /* memory held for the matrices */
} lloco_lora_info;

const lloco_lora_info *lloco_lora_get_info(const lloco_lora *a);

/* ---- the bank ------------------------------------------------------------
 * Adapters on disk under one directory, named by their entry there (a PEFT
 * folder, or NAME.gguf), loaded on first use into memory under a byte
 * budget, evicted least-recently-used, pinned while a sequence uses them.
 * Loads run on the bank's own loader thread, never on the caller's.
 *
 * Names: one path component of [A-Za-z0-9._-], not "." or "..", and the
 * entry must resolve (symlinks followed) inside the directory; anything
 * else is LLOCO_ERR_INVAL naming the adapter. All functions are
 * thread-safe. */

typedef struct lloco_bank lloco_bank;

typedef struct {
    const char *dir;      /* the adapters directory */
    size_t budget_bytes;  /* resident matrices; 0: 1 GiB */
} lloco_bank_params;

int lloco_bank_open(const lloco_bank_params *p, const lloco_model *base, lloco_bank **out);
/* Waits for the loader thread; every pin must have been released. */
void lloco_bank_close(lloco_bank *b);

/* Non-blocking. Resident: pins it, *view set, returns 0. Not resident yet:
 * queues a load (once) and returns 0 with *view NULL; call again later (the
 * optional notify callback below says when). A name that does not exist
 * or whose load failed: the error (the failure is remembered until
 * lloco_bank_unload or a rescan, so a bad adapter is not retried in a loop),
 * and the bank goes on serving the others. Each successful pin needs one
 * lloco_bank_release. */
int lloco_bank_acquire(lloco_bank *b, const char *name, const lloco_adapter_view **view);
void lloco_bank_release(lloco_bank *b, const char *name);
/* Non-blocking, pins nothing: checks that name is an adapter on disk (or
 * returns its remembered load failure, as acquire does) and, when it is
 * not resident, queues its load so that a later acquire finds it ready. */
int lloco_bank_prefetch(lloco_bank *b, const char *name);
/* Blocking load (CLI use); pins like acquire. */
int lloco_bank_acquire_wait(lloco_bank *b, const char *name, const lloco_adapter_view **view);
/* Called on the loader thread after each load finishes (ok or not). */
void lloco_bank_set_notify(lloco_bank *b, void (*fn)(void *user, const char *name, int rc),
                           void *user);
/* Evicts an unpinned adapter now (LLOCO_ERR_BUSY while pinned)
 * and forgets a remembered load failure. */
int lloco_bank_unload(lloco_bank *b, const char *name);

typedef struct {
    const char *name;
    size_t file_bytes;          /* on disk */
    int resident, loading, pins;
    const lloco_lora_info *info; /* NULL unless resident */
    const char *error;           /* last load failure, or NULL */
} lloco_bank_entry;

/* Calls fn for every adapter on disk (rescanning the directory), sorted by
 * name; entries are valid during the call only. */
int lloco_bank_foreach(lloco_bank *b, int (*fn)(void *user, const lloco_bank_entry *e), void *user);
size_t lloco_bank_resident_bytes(const lloco_bank *b);
int lloco_bank_n_resident(const lloco_bank *b);

#endif
