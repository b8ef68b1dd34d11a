/* inspect: the human-readable description of a model file behind `lloco
 * inspect` — architecture, hyper-parameters, tokenizer, metadata and the
 * tensor table.
 */
#include <stdio.h>
#include <string.h>

#include "model_internal.h"

static const char *rope_mode_name(lloco_rope_mode m) {
    return m == LLOCO_ROPE_NEOX ? "neox (halves)" : "normal (adjacent pairs)";
}

static void print_hparams(FILE *f, const lloco_model *m) {
    const lloco_hparams *hp = &m->hp;
    fprintf(f, "format          %s\n", m->format == LLOCO_MODEL_FORMAT_GGUF ? "gguf" : "safetensors");
    fprintf(f, "architecture    %s\n", hp->arch);
    fprintf(f, "layers          %d\n", hp->n_layer);
    fprintf(f, "d_model         %d\n", hp->d_model);
    fprintf(f, "heads           %d (kv %d, head_dim %d)\n", hp->n_head, hp->n_head_kv, hp->head_dim);
    fprintf(f, "ffn             %d\n", hp->d_ff);
    fprintf(f, "vocab           %d\n", hp->n_vocab);
    fprintf(f, "context         %d\n", hp->n_ctx_train);
    fprintf(f, "rms_eps         %g\n", (double)hp->rms_eps);
    fprintf(f, "rope            theta %g, dim %d, %s", (double)hp->rope_theta, hp->rope_dim,
            rope_mode_name(hp->rope_mode));
    if (hp->rope_scaling == LLOCO_ROPE_SCALING_LINEAR) fprintf(f, ", linear x%g", (double)hp->rope_factor);
    if (hp->rope_scaling == LLOCO_ROPE_SCALING_LLAMA3) fprintf(f, ", llama3 x%g", (double)hp->rope_factor);
    fprintf(f, "\n");
    fprintf(f, "embeddings      %s\n", hp->tied_embeddings ? "tied" : "separate output head");
    fprintf(f, "weight bytes    %.1f MiB read per token\n", lloco_model_weight_bytes(m) / 1048576.0);
    const lloco_tokenizer *t = m->tok;
    fprintf(f, "tokenizer       %s, pre-tokenizer %s, %d tokens, bos %d, eos %d, add_bos %d\n",
            lloco_tokenizer_kind_of(t) == LLOCO_TOKENIZER_BPE ? "byte-level BPE" : "SentencePiece BPE",
            lloco_tokenizer_pre_name(t), lloco_tokenizer_n_vocab(t), lloco_tokenizer_bos(t),
            lloco_tokenizer_eos(t), lloco_tokenizer_add_bos(t));
    static const char *chat_names[] = {"chatml", "llama2", "llama3"};
    fprintf(f, "chat template   %s%s\n", chat_names[lloco_chat_detect(m)],
            m->chat_template ? "" : " (no template in file; guessed)");
}

static void print_dims(FILE *f, const int64_t *d, int n) {
    char buf[96];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof buf - o, "[");
    for (int i = 0; i < n && o < sizeof buf; i++)
        o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%lld", i ? ", " : "", (long long)d[i]);
    if (o < sizeof buf) snprintf(buf + o, sizeof buf - o, "]");
    fprintf(f, "%-22s", buf);
}

static void print_gguf(FILE *f, const lloco_gguf *g) {
    fprintf(f, "\nGGUF v%u, alignment %zu, %lld metadata keys, %lld tensors\n", lloco_gguf_version(g),
            lloco_gguf_alignment(g), (long long)lloco_gguf_n_kv(g), (long long)lloco_gguf_n_tensors(g));
    char val[160];
    for (int64_t i = 0; i < lloco_gguf_n_kv(g); i++) {
        lloco_gguf_kv_format(g, i, val, sizeof val);
        fprintf(f, "  %-40s %s\n", lloco_gguf_key_name(g, i), val);
    }
    fprintf(f, "\n  %-36s %-6s %-22s %s\n", "tensor", "type", "shape (ne)", "bytes");
    for (int64_t i = 0; i < lloco_gguf_n_tensors(g); i++) {
        const lloco_gguf_tensor *t = lloco_gguf_tensor_at(g, i);
        fprintf(f, "  %-36s %-6s ", t->name, lloco_dtype_name(t->type));
        print_dims(f, t->ne, t->n_dims);
        fprintf(f, " %zu\n", t->nbytes);
    }
}

static void print_st(FILE *f, const lloco_st *st) {
    fprintf(f, "\nsafetensors, %d shard(s), %lld tensors\n", lloco_st_n_shards(st),
            (long long)lloco_st_n_tensors(st));
    fprintf(f, "\n  %-48s %-6s %-22s %s\n", "tensor", "type", "shape", "bytes");
    for (int64_t i = 0; i < lloco_st_n_tensors(st); i++) {
        const lloco_st_tensor *t = lloco_st_tensor_at(st, i);
        fprintf(f, "  %-48s %-6s ", t->name, lloco_dtype_name(t->type));
        print_dims(f, t->shape, t->n_dims);
        fprintf(f, " %zu\n", t->nbytes);
    }
}

int lloco_model_inspect(const char *path, void *file) {
    FILE *f = file;
    lloco_model *m;
    int rc = lloco_model_open(path, &m);
    if (rc) return rc;
    fprintf(f, "model           %s\n", path);
    print_hparams(f, m);
    if (m->gguf) print_gguf(f, m->gguf);
    if (m->st) print_st(f, m->st);
    lloco_model_close(m);
    return 0;
}
