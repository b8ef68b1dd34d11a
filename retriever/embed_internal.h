/* embed_internal: the WordPiece tokenizer the retrieval embedder runs
 * (wordpiece.c), shared with embed.c and the embedder's tests. Private to
 * retriever/.
 */
#ifndef LLOCO_EMBED_INTERNAL_H
#define LLOCO_EMBED_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Special tokens a template may put around one sequence ([CLS] ... [SEP]). */
#define LLOCO_WP_MAX_AFFIX 4

typedef struct lloco_wp lloco_wp;

/* A growable id list (v owned by whoever holds the struct; free(v)). */
typedef struct {
    int32_t *v;
    size_t n, cap;
} lloco_wp_ids;

/* Working memory of encode calls, reused from call to call so that
 * encoding allocates only when a text is longer than any before it.
 * Zero-initialise; release with lloco_wp_scratch_free(). */
typedef struct {
    uint32_t *cp;   /* code points of the segment being normalized */
    size_t cp_cap;
    uint32_t *norm; /* the normalized segment */
    size_t norm_cap;
    char *word;     /* one pre-tokenized word as UTF-8 */
    size_t word_cap;
} lloco_wp_scratch;

/* Loads the tokenizer of a BERT model folder: dir/tokenizer.json (HF
 * `tokenizers` format: WordPiece model, BertNormalizer, BertPreTokenizer,
 * Bert or Template post-processor) when present, else dir/vocab.txt with
 * the options of dir/tokenizer_config.json and special_tokens_map.json, as
 * transformers' fast BertTokenizer builds them. Components that would
 * tokenize differently are refused (LLOCO_ERR_UNSUPPORTED, naming them). */
int lloco_wp_load(const char *dir, lloco_wp **out);
void lloco_wp_free(lloco_wp *wp);

/* One more than the largest id the tokenizer can produce. */
int32_t lloco_wp_n_vocab(const lloco_wp *wp);
/* Ids the post-processor puts before / after a sequence ([CLS] / [SEP]);
 * they stay valid until lloco_wp_free(). */
int lloco_wp_prefix(const lloco_wp *wp, const int32_t **ids);
int lloco_wp_suffix(const lloco_wp *wp, const int32_t **ids);

/* Appends the word-piece ids of text (len bytes; invalid UTF-8 bytes read
 * as U+FFFD, as the decoder's tokenizers do) to ids, without the
 * post-processor's specials. Added tokens ([CLS], [MASK]...) written in the
 * text map to their ids, as in `tokenizers`. */
int lloco_wp_encode(const lloco_wp *wp, const char *text, size_t len, lloco_wp_scratch *s,
                    lloco_wp_ids *ids);
void lloco_wp_scratch_free(lloco_wp_scratch *s);

#endif
