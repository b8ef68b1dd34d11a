/* Private to decoder/: the tokenizer's data layout, shared by its loaders
 * (tokenizer_gguf.c, tokenizer_json.c), the text pipeline (tokenizer_pre.c)
 * and the encoder/decoder (tokenizer.c).
 */
#ifndef LLOCO_DECODER_TOKENIZER_INTERNAL_H
#define LLOCO_DECODER_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "decoder/decoder.h"
#include "decoder/gguf.h"

/* Loads the tokenizer described by a GGUF file's tokenizer.ggml.* keys
 * (model "gpt2": byte-level BPE, "llama": SentencePiece BPE). The tokenizer
 * copies what it needs: g may be closed afterwards. */
int lloco_tokenizer_load_gguf(const lloco_gguf *g, lloco_tokenizer **out);

/* Like lloco_tokenizer_load_json but with an explicit tokenizer_config.json
 * path (NULL: none) instead of the one beside json_path. */
int lloco_tokenizer_load_json_with_config(const char *json_path, const char *config_path,
                                          lloco_tokenizer **out);

/* ---- shared layout ------------------------------------------------------ */

/* Token types, numbered as GGUF's tokenizer.ggml.token_type stores them. */
typedef enum {
    LLOCO_TOK_TYPE_UNDEFINED = 0,
    LLOCO_TOK_TYPE_NORMAL = 1,
    LLOCO_TOK_TYPE_UNKNOWN = 2,
    LLOCO_TOK_TYPE_CONTROL = 3,
    LLOCO_TOK_TYPE_USER_DEFINED = 4,
    LLOCO_TOK_TYPE_UNUSED = 5,
    LLOCO_TOK_TYPE_BYTE = 6,
} lloco_tok_type;

typedef struct {
    uint32_t text_off; /* into lloco_tokenizer.arena (NUL-terminated there) */
    uint32_t text_len;
    uint32_t piece_off; /* detokenized bytes, into lloco_tokenizer.pieces */
    uint32_t piece_len;
    float score;   /* SentencePiece merge score (GGUF "llama" model) */
    uint8_t type;  /* lloco_tok_type */
    uint8_t lstrip; /* added token swallows whitespace on its left */
    uint8_t rstrip; /* ... and on its right */
    uint8_t eog;
} lloco_tok_entry;

/* Text normalizers (tokenizer.json "normalizer"), applied in order. */
typedef enum {
    LLOCO_NORM_NFC = 0,
    LLOCO_NORM_NFD,
    LLOCO_NORM_NFKC,
    LLOCO_NORM_NFKD,
    LLOCO_NORM_PREPEND, /* str before non-empty text */
    LLOCO_NORM_REPLACE, /* every match of re -> str */
} lloco_norm_kind;

/* How a split step treats the pieces its regex matches (HF's
 * SplitDelimiterBehavior). */
typedef enum {
    LLOCO_SPLIT_ISOLATED = 0,
    LLOCO_SPLIT_REMOVED,
    LLOCO_SPLIT_MERGED_WITH_PREVIOUS,
    LLOCO_SPLIT_MERGED_WITH_NEXT,
    LLOCO_SPLIT_CONTIGUOUS,
} lloco_split_behavior;

typedef enum {
    LLOCO_PRE_SPLIT = 0,     /* re splits every piece */
    LLOCO_PRE_PREFIX_SPACE,  /* ByteLevel(add_prefix_space): ' ' before each piece
                                that does not start with one */
    LLOCO_PRE_METASPACE,     /* ' ' -> str; str prepended per prepend mode */
} lloco_pre_kind;

typedef enum {
    LLOCO_PREPEND_NEVER = 0,
    LLOCO_PREPEND_FIRST,  /* only to the piece at the very start of the input */
    LLOCO_PREPEND_ALWAYS,
} lloco_prepend_mode;

/* One normalizer or pre-tokenizer step. re is a compiled pcre2_code_8*
 * (void* keeps PCRE2's header out of the other decoder files). */
typedef struct {
    int kind; /* lloco_norm_kind or lloco_pre_kind */
    void *re;
    char *str; /* owned, NUL-terminated */
    size_t str_len;
    lloco_split_behavior behavior;
    int invert;
    lloco_prepend_mode prepend;
} lloco_text_step;

typedef struct {
    uint64_t key; /* (left id + 1) << 32 | (right id + 1); 0: empty slot */
    int32_t rank;
    int32_t merged;
} lloco_merge_slot;

struct lloco_tokenizer {
    lloco_tokenizer_kind kind;
    char pre_name[96];

    int32_t n_vocab;
    lloco_tok_entry *tok;
    char *arena; /* token texts */
    size_t arena_len, arena_cap;
    char *pieces; /* detokenized pieces */

    uint32_t *vocab_ht; /* id + 1 per slot, 0 = empty; open addressing */
    uint32_t vocab_mask;

    lloco_merge_slot *merge_ht;
    uint32_t merge_mask;
    int32_t n_merges;

    /* Encoding model. */
    int byte_level;       /* GPT-2 byte-to-unicode alphabet */
    int merge_by_score;   /* SentencePiece scores instead of merge ranks */
    int byte_fallback;    /* unknown characters -> <0xNN> tokens */
    int ignore_merges;    /* a piece that is a whole token is taken as is */
    int strip_space;      /* decoding drops the leading space of the first
                             non-empty piece (SentencePiece's dummy prefix) */
    int32_t byte_char_id[256]; /* byte-level: token of each byte's character */
    int32_t byte_tok_id[256];  /* byte fallback: <0xNN> tokens */

    lloco_text_step *norm;
    int n_norm;
    lloco_text_step *pre;
    int n_pre;

    int32_t bos, eos, eot, eom, unk;
    int add_bos;

    int32_t *specials; /* CONTROL/USER_DEFINED/UNKNOWN ids, longest text first */
    int n_specials;
};

/* ---- building blocks for the loaders (tokenizer.c) ---------------------- */

/* Allocates t with n_vocab empty NORMAL entries and no special ids. */
int lloco_tok_create(int32_t n_vocab, lloco_tokenizer **out);
/* Sets token id's text (copied). */
int lloco_tok_set_text(lloco_tokenizer *t, int32_t id, const char *s, size_t len);
/* Builds the text -> id index; call once all texts are set. Later ids win
 * when two tokens share a text, as in llama.cpp. */
int lloco_tok_index_vocab(lloco_tokenizer *t);
int32_t lloco_tok_lookup(const lloco_tokenizer *t, const char *s, size_t len);
/* Adds merge rule (a, b) with the given rank; rules whose parts or result
 * are not in the vocabulary are ignored (they could never apply). */
int lloco_tok_add_merge(lloco_tokenizer *t, const char *a, size_t alen, const char *b,
                        size_t blen, int32_t rank);
/* Derives byte tables, the special-token list, end-of-generation flags and
 * the detokenized pieces; call last. */
int lloco_tok_finish(lloco_tokenizer *t);

/* ---- text pipeline (tokenizer_pre.c) ------------------------------------ */

/* Compiles a PCRE2 pattern (literal: match the string as is) into *re. */
int lloco_tok_compile_regex(const char *pattern, size_t len, int literal, void **re);
/* Appends a GGUF pre-tokenizer's regex list (llama.cpp's, by name) as
 * isolated split steps and sets llama.cpp's ignore_merges and add_bos
 * defaults for it; LLOCO_ERR_UNSUPPORTED for unknown names. */
int lloco_tok_add_gguf_pre(lloco_tokenizer *t, const char *name);

/* GPT-2's byte -> unicode alphabet: the UTF-8 of byte b's character into
 * out (returns 1 or 2 bytes), and the reverse (-1: not an alphabet char). */
int lloco_bytelevel_encode(uint8_t b, char out[2]);
int lloco_bytelevel_decode(uint32_t cp);

/* A growable byte buffer with a list of [start, end) pieces over it. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t *span; /* 2 per piece */
    size_t n, span_cap;
} lloco_pieces;

void lloco_pieces_free(lloco_pieces *p);
/* Copies text into p as a single piece. */
int lloco_pieces_set(lloco_pieces *p, const char *text, size_t len);
/* Applies normalizer steps to p's single piece. */
int lloco_text_normalize(const lloco_text_step *steps, int n, lloco_pieces *p);
/* Applies pre-tokenizer steps; at_start says p begins the input text
 * (for LLOCO_PREPEND_FIRST). */
int lloco_text_pretokenize(const lloco_text_step *steps, int n, int at_start, lloco_pieces *p);
void lloco_text_steps_free(lloco_text_step *steps, int n);

/* Replaces every byte of s that does not start or continue a valid UTF-8
 * sequence with U+FFFD, into a heap buffer (caller frees). */
int lloco_utf8_sanitize(const char *s, size_t len, char **out, size_t *out_len);

#endif
