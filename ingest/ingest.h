/* ingest: turning documents into stored chunks. The context compressor
 * (AutoCompressor / LLoCO summary tokens, ICAE memory tokens) runs the
 * decoder in encoder mode over a document's segments and yields each
 * segment's slots; the ingester reads .txt/.md/.jsonl files, segments,
 * compresses, embeds and writes whole documents through retriever/'s store.
 *
 * Ownership: a compressor borrows its decoder (and the decoder's model),
 * which must outlive it. Slot buffers handed to callbacks are valid only
 * during the call.
 */
#ifndef LLOCO_INGEST_H
#define LLOCO_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "decoder/decoder.h"
#include "retriever/retriever.h"

/* ---- compressor ---------------------------------------------------------- */

typedef enum {
    LLOCO_COMPRESS_AUTOCOMPRESSOR = 0, /* LLoCO's encoder */
    LLOCO_COMPRESS_ICAE = 1,
} lloco_compress_method;

typedef struct {
    lloco_compress_method method;
    int segment_tokens;     /* AutoCompressor 1536 (LLoCO), ICAE 512 */
    int n_summary;          /* slots per segment: 50 (30.7x), ICAE k = 128 */
    int accumulate;         /* AutoCompressor: feed earlier summaries forward */
    lloco_dtype slot_dtype; /* F16 (default), F32 or BF16 */
    /* The encoder's LoRA (ICAE's encoder = base model + LoRA), applied to
     * every compression pass; NULL for none. Must outlive the compressor;
     * the fingerprint records its name. */
    const lloco_adapter_view *encoder_adapter;
} lloco_compress_params;

void lloco_compress_params_default(lloco_compress_params *p, lloco_compress_method method);
const char *lloco_compress_method_name(lloco_compress_method m);
int lloco_compress_method_parse(const char *s, lloco_compress_method *out);

typedef struct lloco_compressor lloco_compressor;

/* Takes the summary (memory) token embeddings from the model files when they
 * have them ("embed_summary.weight" for AutoCompressor checkpoints,
 * "memory_token_embed.weight" for ICAE, the first n_summary rows), else
 * initialises every row from the EOS token's embedding, as AutoCompressor
 * does; lloco_compressor_summary_init says which. */
int lloco_compressor_create(lloco_decoder *d, const lloco_compress_params *p,
                            lloco_compressor **out);
void lloco_compressor_free(lloco_compressor *c);
const lloco_compress_params *lloco_compressor_params(const lloco_compressor *c);
const lloco_model *lloco_compressor_model(const lloco_compressor *c);
/* "embed_summary", "memory_token_embed" or "eos_row". */
const char *lloco_compressor_summary_init(const lloco_compressor *c);
/* Fills every encoder field of fp (all but embedder_hash / embed_dim). */
int lloco_compressor_fingerprint(const lloco_compressor *c, lloco_store_fingerprint *fp);
/* Segments a document of n_tokens is cut into. */
int lloco_compressor_n_segments(const lloco_compressor *c, int n_tokens);
/* Positions the decoder ran for the last document (tokens + summary and
 * accumulated positions), for throughput accounting. */
int64_t lloco_compressor_positions(const lloco_compressor *c);

/* Called once per segment, in order: its token span in the document and
 * its n_summary x d_model slots in slot_dtype. Non-zero return stops the
 * compression and is returned. */
typedef int (*lloco_segment_fn)(void *ctx, int seg, int tok_begin, int tok_end,
                                const void *slots);

/* Compresses one document (tokens without BOS). AutoCompressor: segment k's
 * input is [summaries of segments < k (when accumulating)] ++ [its tokens]
 * ++ [the n_summary summary embeddings], positions 0..len-1, causal; its
 * slots are the final hidden states after the last norm at the summary
 * positions. Accumulated summaries are bounded by the model's context:
 * the oldest are dropped first when [summaries | segment | summary tokens]
 * would not fit. ICAE: each segment alone, followed by the memory tokens. */
int lloco_compress(lloco_compressor *c, const int32_t *tokens, int n_tokens, lloco_segment_fn fn,
                   void *ctx);

/* ---- ingester ----------------------------------------------------------- */

/* One document to ingest. group NULL: the ingester's default group. */
typedef struct {
    const char *id, *title, *group; /* NUL-terminated */
    const char *text;
    size_t len;
    const char *where; /* "file" or "file:line", for messages */
} lloco_doc_src;

typedef struct {
    int64_t docs_written, docs_unchanged, docs_rejected;
    int64_t files_failed;       /* unreadable or of an unknown type */
    int64_t chunks, tokens;     /* written */
    int64_t positions;          /* decoder positions run (tokens + summaries) */
    int64_t bytes_done, bytes_total; /* of the input, for an ETA; total -1: unknown */
    double seconds, compress_seconds, embed_seconds, store_seconds;
} lloco_ingest_stats;

typedef struct {
    /* after every document (written, unchanged or rejected) */
    void (*progress)(void *ctx, const lloco_ingest_stats *st);
    /* a document or input line refused: where ("file:line") and why */
    void (*problem)(void *ctx, const char *where, const char *why);
    void *ctx;
} lloco_ingest_callbacks;

typedef struct lloco_ingester lloco_ingester;

/* Borrows everything it is given (all must outlive it). default_group: for
 * documents that do not name one ("" when NULL). */
int lloco_ingester_create(lloco_compressor *c, lloco_embedder *e, lloco_store *s,
                          lloco_retriever *r, const char *default_group,
                          const lloco_ingest_callbacks *cb, lloco_ingester **out);
void lloco_ingester_free(lloco_ingester *ing);
const lloco_ingest_stats *lloco_ingester_stats(const lloco_ingester *ing);
void lloco_ingester_expect_bytes(lloco_ingester *ing, int64_t bytes_total);

/* Ingests one document in one store transaction: a document already stored
 * with the same content is left alone (counted unchanged). Bad input (empty
 * text, invalid UTF-8, bad id/title/group) is reported through the problem
 * callback and returns LLOCO_ERR_INVAL with nothing written; other errors
 * (store, model) are returned as they are. */
int lloco_ingest_doc(lloco_ingester *ing, const lloco_doc_src *d);

/* Ingests a file by its extension: .txt and .md are one document each (id
 * = the path as given; title = the first "# " heading of a .md, else the
 * file name); .jsonl has one {"id", "title", "group", "text"} object per
 * line (text required; id defaults to "FILE:LINE", title to the id, group
 * to the default). "-" reads stdin: JSON lines when its first non-blank
 * byte is '{', else one text document with id "stdin". Bad lines are
 * reported and skipped; so is an unreadable file or an unknown extension
 * (files_failed). Errors returned are those of the model or the store. */
int lloco_ingest_file(lloco_ingester *ing, const char *path);

/* Saves the index (stamped with the store generation). */
int lloco_ingest_finish(lloco_ingester *ing);

#endif
