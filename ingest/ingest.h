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

#endif
