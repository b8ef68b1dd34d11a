/* wordpiece: BERT's tokenizer for the retrieval embedder, as HF `tokenizers`
 * runs it: added tokens split out of the raw text, BertNormalizer (clean
 * text, pad CJK ideographs, NFD + drop nonspacing marks, lowercase),
 * BertPreTokenizer (whitespace and punctuation) and greedy longest-match
 * WordPiece with "##" continuations. Unicode tables come from utf8proc.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "core/core.h"
#include "retriever/embed_internal.h"

#define MAX_JSON_BYTES ((size_t)256 << 20)
#define MAX_TOKEN_BYTES 1024

/* A vocabulary key: the token's bytes, or for a continuation key (cont=1)
 * the bytes after the continuing-subword prefix, so that "##ab" is found
 * from "ab" without building the prefixed string. */
typedef struct {
    uint32_t off, len;
    int32_t id; /* -1: empty slot */
    uint8_t cont;
} vocab_slot;

typedef struct {
    char *text;
    size_t len;
    int32_t id;
} added_token;

struct lloco_wp {
    char *arena; /* key bytes */
    size_t arena_len, arena_cap;
    vocab_slot *slots;
    uint32_t mask;
    uint32_t n_keys;
    size_t max_len[2]; /* longest plain / continuation key */
    char *prefix;      /* continuing-subword prefix, "##" */
    size_t prefix_len;
    int32_t unk;
    int max_chars; /* longer words are [UNK] whole */
    int clean_text, chinese, strip_accents, lowercase, bert_pre;
    added_token *added;
    int n_added;
    uint8_t added_first[256]; /* bytes an added token starts with */
    int32_t pre[LLOCO_WP_MAX_AFFIX], suf[LLOCO_WP_MAX_AFFIX];
    int n_pre, n_suf;
    int32_t n_vocab;
};

/* ---- vocabulary ------------------------------------------------------------ */

static uint64_t key_hash(const char *s, size_t len, int cont) {
    return XXH3_64bits_withSeed(s, len, (uint64_t)cont);
}

static int32_t vocab_find(const lloco_wp *wp, const char *s, size_t len, int cont) {
    if (!wp->slots) return -1;
    for (uint32_t i = (uint32_t)key_hash(s, len, cont) & wp->mask;; i = (i + 1) & wp->mask) {
        const vocab_slot *e = &wp->slots[i];
        if (e->id < 0) return -1;
        if (e->cont == cont && e->len == len && !memcmp(wp->arena + e->off, s, len)) return e->id;
    }
}

/* Later entries win, as a HashMap insert does in `tokenizers`. */
static int vocab_put(lloco_wp *wp, const char *s, size_t len, int cont, int32_t id) {
    if (len == 0) return 0;
    uint32_t i = (uint32_t)key_hash(s, len, cont) & wp->mask;
    for (;; i = (i + 1) & wp->mask) {
        vocab_slot *e = &wp->slots[i];
        if (e->id < 0) break;
        if (e->cont == cont && e->len == len && !memcmp(wp->arena + e->off, s, len)) {
            e->id = id;
            return 0;
        }
    }
    if (wp->arena_len + len > wp->arena_cap) {
        size_t cap = wp->arena_cap ? wp->arena_cap * 2 : 1 << 16;
        while (cap < wp->arena_len + len) cap *= 2;
        char *a = realloc(wp->arena, cap);
        if (!a) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for the vocabulary");
        wp->arena = a;
        wp->arena_cap = cap;
    }
    memcpy(wp->arena + wp->arena_len, s, len);
    wp->slots[i] = (vocab_slot){(uint32_t)wp->arena_len, (uint32_t)len, id, (uint8_t)cont};
    wp->arena_len += len;
    wp->n_keys++;
    if (len > wp->max_len[cont]) wp->max_len[cont] = len;
    return 0;
}

/* Sized for n tokens, each of which may add a continuation key too. */
static int vocab_init(lloco_wp *wp, size_t n) {
    size_t cap = 64;
    while (cap < 4 * n) cap *= 2;
    wp->slots = malloc(cap * sizeof *wp->slots);
    if (!wp->slots) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for the vocabulary");
    for (size_t i = 0; i < cap; i++) wp->slots[i].id = -1;
    wp->mask = (uint32_t)(cap - 1);
    return 0;
}

static int vocab_add(lloco_wp *wp, const char *path, const char *tok, size_t len, int32_t id) {
    if (len > MAX_TOKEN_BYTES)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: token %d is %zu bytes long (at most %d)", path,
                           (int)id, len, MAX_TOKEN_BYTES);
    int rc = vocab_put(wp, tok, len, 0, id);
    if (!rc && len >= wp->prefix_len && !memcmp(tok, wp->prefix, wp->prefix_len))
        rc = vocab_put(wp, tok + wp->prefix_len, len - wp->prefix_len, 1, id);
    if (id >= wp->n_vocab) wp->n_vocab = id + 1;
    return rc;
}

static int add_added(lloco_wp *wp, const char *path, const char *text, int32_t id) {
    size_t len = strlen(text);
    if (len == 0) return lloco_error(LLOCO_ERR_FORMAT, "%s: empty added token (id %d)", path, id);
    added_token *a = realloc(wp->added, (size_t)(wp->n_added + 1) * sizeof *a);
    if (!a) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    wp->added = a;
    a[wp->n_added].text = strdup(text);
    if (!a[wp->n_added].text) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    a[wp->n_added].len = len;
    a[wp->n_added].id = id;
    wp->n_added++;
    wp->added_first[(uint8_t)text[0]] = 1;
    if (id >= wp->n_vocab) wp->n_vocab = id + 1;
    return 0;
}

/* ---- loading --------------------------------------------------------------- */

/* Parses a JSON file; *root NULL (and 0 returned) if it is absent and
 * optional. */
static int read_json(const char *path, int optional, cJSON **root) {
    *root = NULL;
    if (optional && !lloco_is_file(path)) return 0;
    char *text = NULL;
    size_t len = 0;
    int rc = lloco_file_read(path, MAX_JSON_BYTES, &text, &len);
    if (rc) return rc;
    *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*root) return lloco_error(LLOCO_ERR_FORMAT, "%s: not valid JSON", path);
    return 0;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Booleans default to dflt when absent or null. */
static int jbool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static int jint(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return 0;
    *out = (int64_t)d;
    return 1;
}

/* A special token in tokenizer_config.json / special_tokens_map.json: a
 * string or {"content": ...}. */
static const char *special_text(const cJSON *cfg, const cJSON *map, const char *key,
                                const char *dflt) {
    const cJSON *o[2] = {cfg, map};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o[i], key);
        if (cJSON_IsString(v)) return v->valuestring;
        if (cJSON_IsObject(v) && jstr(v, "content")) return jstr(v, "content");
    }
    return dflt;
}

static int set_prefix(lloco_wp *wp, const char *s) {
    wp->prefix = strdup(s);
    if (!wp->prefix) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory");
    wp->prefix_len = strlen(s);
    return 0;
}

static int find_unk(lloco_wp *wp, const char *path, const char *unk) {
    wp->unk = vocab_find(wp, unk, strlen(unk), 0);
    if (wp->unk < 0)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: unknown token '%s' is not in the vocabulary",
                           path, unk);
    return 0;
}

static int parse_normalizer(lloco_wp *wp, const char *path, const cJSON *n) {
    if (cJSON_IsNull(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type || strcmp(type, "BertNormalizer"))
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported "
                           "(only BertNormalizer)", path, type ? type : "?");
    wp->clean_text = jbool(n, "clean_text", 1);
    wp->chinese = jbool(n, "handle_chinese_chars", 1);
    wp->lowercase = jbool(n, "lowercase", 1);
    /* strip_accents null follows lowercase, as in `tokenizers`. */
    wp->strip_accents = jbool(n, "strip_accents", wp->lowercase);
    return 0;
}

static int parse_pre_tokenizer(lloco_wp *wp, const char *path, const cJSON *p) {
    if (cJSON_IsNull(p) || !p) return 0;
    const char *type = jstr(p, "type");
    if (!type || strcmp(type, "BertPreTokenizer"))
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: pre_tokenizer '%s' is not supported "
                           "(only BertPreTokenizer)", path, type ? type : "?");
    wp->bert_pre = 1;
    return 0;
}

static int affix_push(lloco_wp *wp, const char *path, int after, int32_t id) {
    int *n = after ? &wp->n_suf : &wp->n_pre;
    if (*n == LLOCO_WP_MAX_AFFIX)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: post_processor adds more than %d tokens "
                           "on one side", path, LLOCO_WP_MAX_AFFIX);
    if (id < 0 || id >= wp->n_vocab)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: post_processor token id %d is out of range",
                           path, (int)id);
    (after ? wp->suf : wp->pre)[(*n)++] = id;
    return 0;
}

/* BertProcessing ([CLS] A [SEP]) or a TemplateProcessing whose "single"
 * template is special tokens around sequence A, all of token type 0 (the
 * embedder feeds type 0 only). */
static int parse_post(lloco_wp *wp, const char *path, const cJSON *p) {
    if (cJSON_IsNull(p) || !p) return 0;
    const char *type = jstr(p, "type");
    int64_t id;
    if (type && !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(p, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(p, "sep");
        if (!jint(cJSON_GetArrayItem(cls, 1), 0, INT32_MAX, &id))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: BertProcessing without a cls id", path);
        int rc = affix_push(wp, path, 0, (int32_t)id);
        if (rc) return rc;
        if (!jint(cJSON_GetArrayItem(sep, 1), 0, INT32_MAX, &id))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: BertProcessing without a sep id", path);
        return affix_push(wp, path, 1, (int32_t)id);
    }
    if (!type || strcmp(type, "TemplateProcessing"))
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: post_processor '%s' is not supported "
                           "(BertProcessing or TemplateProcessing)", path, type ? type : "?");
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    int seen_a = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(item, "Sequence");
        const cJSON *part = sp ? sp : seq;
        int64_t type_id = 0;
        const cJSON *tid = cJSON_GetObjectItemCaseSensitive(part, "type_id");
        if (tid && (!jint(tid, 0, 0, &type_id)))
            return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: post_processor uses a token type "
                               "other than 0", path);
        if (seq) {
            const char *which = jstr(seq, "id");
            if (seen_a || !which || strcmp(which, "A"))
                return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: post_processor template is not "
                                   "specials around one sequence A", path);
            seen_a = 1;
            continue;
        }
        const char *name = jstr(sp, "id");
        const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(specials, name) : NULL;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
        if (!cJSON_IsArray(ids) || cJSON_GetArraySize(ids) == 0)
            return lloco_error(LLOCO_ERR_FORMAT, "%s: post_processor special token '%s' has no "
                               "ids", path, name ? name : "?");
        const cJSON *v;
        cJSON_ArrayForEach(v, ids) {
            if (!jint(v, 0, INT32_MAX, &id))
                return lloco_error(LLOCO_ERR_FORMAT, "%s: post_processor special token '%s' "
                                   "has a bad id", path, name);
            int rc = affix_push(wp, path, seen_a, (int32_t)id);
            if (rc) return rc;
        }
    }
    if (!seen_a)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: post_processor template has no sequence A",
                           path);
    return 0;
}

static int parse_added(lloco_wp *wp, const char *path, const cJSON *list) {
    const cJSON *a;
    cJSON_ArrayForEach(a, list) {
        const char *content = jstr(a, "content");
        int64_t id;
        if (!content || !jint(cJSON_GetObjectItemCaseSensitive(a, "id"), 0, INT32_MAX, &id))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: added token without content or id", path);
        /* Normalized added tokens match in normalized text and the flags
         * change what surrounds a match: BERT checkpoints use neither. */
        if (jbool(a, "normalized", 0) || jbool(a, "lstrip", 0) || jbool(a, "rstrip", 0) ||
            jbool(a, "single_word", 0))
            return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: added token '%s' is normalized or "
                               "strips/single_word (not supported)", path, content);
        int rc = add_added(wp, path, content, (int32_t)id);
        if (rc) return rc;
    }
    return 0;
}

static int load_json(lloco_wp *wp, const char *path) {
    cJSON *root;
    int rc = read_json(path, 0, &root);
    if (rc) return rc;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *type = jstr(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    int64_t v;
    if (!type || strcmp(type, "WordPiece")) {
        rc = lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: model type '%s' is not WordPiece", path,
                         type ? type : "?");
        goto done;
    }
    if (!cJSON_IsObject(vocab)) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s: WordPiece model without a vocab object", path);
        goto done;
    }
    const char *prefix = jstr(model, "continuing_subword_prefix");
    if ((rc = set_prefix(wp, prefix ? prefix : "##"))) goto done;
    wp->max_chars = 100;
    const cJSON *mc = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
    if (mc && !cJSON_IsNull(mc)) {
        if (!jint(mc, 1, INT32_MAX, &v)) {
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: bad max_input_chars_per_word", path);
            goto done;
        }
        wp->max_chars = (int)v;
    }
    if ((rc = vocab_init(wp, (size_t)cJSON_GetArraySize(vocab)))) goto done;
    for (const cJSON *e = vocab->child; e && !rc; e = e->next) {
        if (!jint(e, 0, INT32_MAX - 1, &v))
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: vocab entry '%s' has no valid id", path,
                             e->string);
        else
            rc = vocab_add(wp, path, e->string, strlen(e->string), (int32_t)v);
    }
    const char *unk = jstr(model, "unk_token");
    if (rc || (rc = find_unk(wp, path, unk ? unk : "[UNK]"))) goto done;
    if ((rc = parse_added(wp, path, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"))) ||
        (rc = parse_normalizer(wp, path, cJSON_GetObjectItemCaseSensitive(root, "normalizer"))) ||
        (rc = parse_pre_tokenizer(wp, path,
                                  cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"))))
        goto done;
    rc = parse_post(wp, path, cJSON_GetObjectItemCaseSensitive(root, "post_processor"));
done:
    cJSON_Delete(root);
    return rc;
}

/* vocab.txt (one token per line, id = line number) configured as
 * transformers' BertTokenizerFast converts a slow BertTokenizer. */
static int load_vocab_txt(lloco_wp *wp, const char *dir, const char *path) {
    char *text = NULL;
    size_t len = 0;
    cJSON *cfg = NULL, *map = NULL;
    char *cfg_path = lloco_path_join(dir, "tokenizer_config.json");
    char *map_path = lloco_path_join(dir, "special_tokens_map.json");
    int rc = (!cfg_path || !map_path) ? lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory") : 0;
    if (rc || (rc = lloco_file_read(path, MAX_JSON_BYTES, &text, &len)) ||
        (rc = read_json(cfg_path, 1, &cfg)) || (rc = read_json(map_path, 1, &map)))
        goto done;
    size_t n_lines = 1;
    for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';
    if ((rc = set_prefix(wp, "##")) || (rc = vocab_init(wp, n_lines))) goto done;
    wp->max_chars = 100;
    int32_t id = 0;
    for (size_t i = 0; i < len && !rc; id++) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        size_t end = e; /* `tokenizers` trims trailing whitespace */
        while (end > i && strchr(" \t\r\v\f", text[end - 1])) end--;
        rc = vocab_add(wp, path, text + i, end - i, id);
        i = e + 1;
    }
    if (rc) goto done;
    wp->clean_text = 1;
    wp->lowercase = jbool(cfg, "do_lower_case", 1);
    wp->chinese = jbool(cfg, "tokenize_chinese_chars", 1);
    wp->strip_accents = jbool(cfg, "strip_accents", wp->lowercase);
    wp->bert_pre = 1;
    const char *unk = special_text(cfg, map, "unk_token", "[UNK]");
    if ((rc = find_unk(wp, path, unk))) goto done;
    static const char *const keys[] = {"pad_token", "unk_token", "cls_token", "sep_token",
                                       "mask_token"};
    static const char *const dflt[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    for (size_t k = 0; k < LLOCO_ARRAY_LEN(keys) && !rc; k++) {
        const char *s = special_text(cfg, map, keys[k], dflt[k]);
        int32_t sid = vocab_find(wp, s, strlen(s), 0);
        if (sid >= 0) rc = add_added(wp, path, s, sid);
        if (!rc && sid >= 0 && k == 2) rc = affix_push(wp, path, 0, sid);
        if (!rc && sid >= 0 && k == 3) rc = affix_push(wp, path, 1, sid);
    }
done:
    free(text);
    free(cfg_path);
    free(map_path);
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return rc;
}

int lloco_wp_load(const char *dir, lloco_wp **out) {
    *out = NULL;
    lloco_wp *wp = calloc(1, sizeof *wp);
    char *json = lloco_path_join(dir, "tokenizer.json"), *txt = lloco_path_join(dir, "vocab.txt");
    int rc = (!wp || !json || !txt) ? lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory") : 0;
    if (!rc) {
        if (lloco_is_file(json)) rc = load_json(wp, json);
        else if (lloco_is_file(txt)) rc = load_vocab_txt(wp, dir, txt);
        else rc = lloco_error(LLOCO_ERR_NOTFOUND, "%s: no tokenizer.json or vocab.txt", dir);
    }
    free(json);
    free(txt);
    if (rc) {
        lloco_wp_free(wp);
        return rc;
    }
    *out = wp;
    return 0;
}

void lloco_wp_free(lloco_wp *wp) {
    if (!wp) return;
    free(wp->arena);
    free(wp->slots);
    free(wp->prefix);
    for (int i = 0; i < wp->n_added; i++) free(wp->added[i].text);
    free(wp->added);
    free(wp);
}

int32_t lloco_wp_n_vocab(const lloco_wp *wp) { return wp->n_vocab; }

int lloco_wp_prefix(const lloco_wp *wp, const int32_t **ids) {
    *ids = wp->pre;
    return wp->n_pre;
}

int lloco_wp_suffix(const lloco_wp *wp, const int32_t **ids) {
    *ids = wp->suf;
    return wp->n_suf;
}

/* ---- Unicode classes as `tokenizers` defines them ----------------------------- */

/* `tokenizers` classes characters with the unicode_categories crate, whose
 * tables predate Unicode 9: characters added since are no mark, punctuation
 * or control to it, and three changed category later. These ranges are
 * where its classes and utf8proc's (Debian bookworm's, Unicode 15) part
 * ways, found by tokenizing every code point with both; cls is `tokenizers`'
 * class there (0: none). make_embedder_golden.py's sweep cases cover them. */
enum { HF_CONTROL = 1, HF_MARK = 2, HF_PUNCT = 4 };
static const struct {
    uint32_t lo, hi;
    uint8_t cls;
} hf_overrides[] = {
    {0x61D, 0x61D, 0}, {0x7FD, 0x7FD, 0}, {0x890, 0x891, 0}, {0x898, 0x89F, 0}, {0x8CA, 0x8E2, 0},
    {0x9FD, 0x9FE, 0}, {0xA76, 0xA76, 0}, {0xAFA, 0xAFF, 0}, {0xB55, 0xB55, 0}, {0xC04, 0xC04, 0},
    {0xC3C, 0xC3C, 0}, {0xC77, 0xC77, 0}, {0xC84, 0xC84, 0}, {0xD00, 0xD00, 0}, {0xD3B, 0xD3C, 0},
    {0xD81, 0xD81, 0}, {0xEBA, 0xEBA, 0}, {0xECE, 0xECE, 0}, {0x166D, 0x166D, HF_PUNCT},
    {0x1734, 0x1734, HF_MARK}, {0x180F, 0x180F, 0}, {0x1885, 0x1886, 0}, {0x1ABF, 0x1ACE, 0},
    {0x1B7D, 0x1B7E, 0}, {0x1DF6, 0x1DFB, 0}, {0x2E43, 0x2E4F, 0}, {0x2E52, 0x2E5D, 0},
    {0xA82C, 0xA82C, 0}, {0xA8C5, 0xA8C5, 0}, {0xA8FF, 0xA8FF, 0}, {0xA9BD, 0xA9BD, 0},
    {0x10D24, 0x10D27, 0}, {0x10EAB, 0x10EAD, 0}, {0x10EFD, 0x10EFF, 0}, {0x10F46, 0x10F50, 0},
    {0x10F55, 0x10F59, 0}, {0x10F82, 0x10F89, 0}, {0x11070, 0x11070, 0}, {0x11073, 0x11074, 0},
    {0x110C2, 0x110C2, 0}, {0x110CD, 0x110CD, 0}, {0x111C9, 0x111C9, HF_PUNCT},
    {0x111CF, 0x111CF, 0}, {0x1123E, 0x1123E, 0}, {0x11241, 0x11241, 0}, {0x1133B, 0x1133B, 0},
    {0x11438, 0x1143F, 0}, {0x11442, 0x11444, 0}, {0x11446, 0x11446, 0}, {0x1144B, 0x1144F, 0},
    {0x1145A, 0x1145B, 0}, {0x1145D, 0x1145E, 0}, {0x11660, 0x1166C, 0}, {0x116B9, 0x116B9, 0},
    {0x1182F, 0x11837, 0}, {0x11839, 0x1183B, 0}, {0x1193B, 0x1193C, 0}, {0x1193E, 0x1193E, 0},
    {0x11943, 0x11946, 0}, {0x119D4, 0x119D7, 0}, {0x119DA, 0x119DB, 0}, {0x119E0, 0x119E0, 0},
    {0x119E2, 0x119E2, 0}, {0x11A01, 0x11A0A, 0}, {0x11A33, 0x11A38, 0}, {0x11A3B, 0x11A47, 0},
    {0x11A51, 0x11A56, 0}, {0x11A59, 0x11A5B, 0}, {0x11A8A, 0x11A96, 0}, {0x11A98, 0x11A9C, 0},
    {0x11A9E, 0x11AA2, 0}, {0x11B00, 0x11B09, 0}, {0x11C30, 0x11C36, 0}, {0x11C38, 0x11C3D, 0},
    {0x11C3F, 0x11C3F, 0}, {0x11C41, 0x11C45, 0}, {0x11C70, 0x11C71, 0}, {0x11C92, 0x11CA7, 0},
    {0x11CAA, 0x11CB0, 0}, {0x11CB2, 0x11CB3, 0}, {0x11CB5, 0x11CB6, 0}, {0x11D31, 0x11D36, 0},
    {0x11D3A, 0x11D3A, 0}, {0x11D3C, 0x11D3D, 0}, {0x11D3F, 0x11D45, 0}, {0x11D47, 0x11D47, 0},
    {0x11D90, 0x11D91, 0}, {0x11D95, 0x11D95, 0}, {0x11D97, 0x11D97, 0}, {0x11EF3, 0x11EF4, 0},
    {0x11EF7, 0x11EF8, 0}, {0x11F00, 0x11F01, 0}, {0x11F36, 0x11F3A, 0}, {0x11F40, 0x11F40, 0},
    {0x11F42, 0x11F4F, 0}, {0x11FFF, 0x11FFF, 0}, {0x12FF1, 0x12FF2, 0}, {0x13430, 0x13440, 0},
    {0x13447, 0x13455, 0}, {0x16E97, 0x16E9A, 0}, {0x16F4F, 0x16F4F, 0}, {0x16FE2, 0x16FE2, 0},
    {0x16FE4, 0x16FE4, 0}, {0x1CF00, 0x1CF2D, 0}, {0x1CF30, 0x1CF46, 0}, {0x1E000, 0x1E006, 0},
    {0x1E008, 0x1E018, 0}, {0x1E01B, 0x1E021, 0}, {0x1E023, 0x1E024, 0}, {0x1E026, 0x1E02A, 0},
    {0x1E08F, 0x1E08F, 0}, {0x1E130, 0x1E136, 0}, {0x1E2AE, 0x1E2AE, 0}, {0x1E2EC, 0x1E2EF, 0},
    {0x1E4EC, 0x1E4EF, 0}, {0x1E944, 0x1E94A, 0}, {0x1E95E, 0x1E95F, 0},
};

/* -1 when utf8proc's category decides, else `tokenizers`' HF_* class. */
static int hf_class(uint32_t c) {
    size_t lo = 0, hi = LLOCO_ARRAY_LEN(hf_overrides);
    if (c < hf_overrides[0].lo) return -1;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (hf_overrides[mid].lo <= c) lo = mid;
        else hi = mid;
    }
    return c <= hf_overrides[lo].hi ? hf_overrides[lo].cls : -1;
}

/* Rust's char::is_whitespace: the White_Space property. */
static int is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* BertNormalizer's is_control: the "Other" categories its tables list
 * (Cc, Cf, Co, Cs; unassigned code points are kept), tab/LF/CR excepted. */
static int is_control(uint32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return 0;
    int hf = hf_class(c);
    if (hf >= 0) return hf == HF_CONTROL;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO ||
           k == UTF8PROC_CATEGORY_CS;
}

static int is_chinese(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* BertPreTokenizer: ASCII punctuation (which takes in $+<=>^`|~) or any
 * Unicode P* category. */
static int is_punct(uint32_t c) {
    if (c < 128) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
                        (c >= 123 && c <= 126);
    int hf = hf_class(c);
    if (hf >= 0) return hf == HF_PUNCT;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* Nonspacing marks, which strip_accents drops after NFD. */
static int is_mark(uint32_t c) {
    int hf = hf_class(c);
    if (hf >= 0) return hf == HF_MARK;
    return utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_MN;
}

/* ---- encoding ------------------------------------------------------------------- */

static int grow(void **buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 256;
    while (cap2 < need) cap2 *= 2;
    void *p = realloc(*buf, cap2 * elem);
    if (!p) return lloco_error(LLOCO_ERR_NOMEM, "tokenizer: no memory for %zu code points", need);
    *buf = p;
    *cap = cap2;
    return 0;
}

static int ids_push(lloco_wp_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        int rc = grow((void **)&ids->v, &ids->cap, ids->n + 1, sizeof *ids->v);
        if (rc) return rc;
    }
    ids->v[ids->n++] = id;
    return 0;
}

static void swap_bufs(lloco_wp_scratch *s) {
    uint32_t *b = s->cp;
    size_t c = s->cp_cap;
    s->cp = s->norm;
    s->cp_cap = s->norm_cap;
    s->norm = b;
    s->norm_cap = c;
}

/* BertNormalizer on text[0..len): the result is in s->norm (*n code
 * points). Steps in `tokenizers`' order, each reading s->cp and writing
 * s->norm, the buffers swapping between steps. */
static int normalize(const lloco_wp *wp, const char *text, size_t len, lloco_wp_scratch *s,
                     size_t *n_out) {
    const uint8_t *u = (const uint8_t *)text;
    int rc = grow((void **)&s->norm, &s->norm_cap, len, sizeof *s->norm);
    if (rc) return rc;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = lloco_utf8_decode(u + i, len - i, &c);
        if (!k) {
            c = 0xFFFD;
            k = 1;
        }
        s->norm[n++] = c;
        i += k;
    }
    if (wp->clean_text || wp->chinese) {
        swap_bufs(s);
        if ((rc = grow((void **)&s->norm, &s->norm_cap, 3 * n, sizeof *s->norm))) return rc;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t c = s->cp[i];
            if (wp->clean_text) {
                if (c == 0 || c == 0xFFFD || is_control(c)) continue;
                if (is_white_space(c)) c = ' ';
            }
            if (wp->chinese && is_chinese(c)) {
                s->norm[m++] = ' ';
                s->norm[m++] = c;
                s->norm[m++] = ' ';
            } else {
                s->norm[m++] = c;
            }
        }
        n = m;
    }
    if (wp->strip_accents) {
        swap_bufs(s);
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            utf8proc_int32_t d[8];
            int bound = 0;
            utf8proc_ssize_t k = utf8proc_decompose_char((utf8proc_int32_t)s->cp[i], d, 8,
                                                         UTF8PROC_DECOMPOSE, &bound);
            if (k < 1 || k > 8) { /* cannot happen for a valid code point */
                d[0] = (utf8proc_int32_t)s->cp[i];
                k = 1;
            }
            if ((rc = grow((void **)&s->norm, &s->norm_cap, m + (size_t)k, sizeof *s->norm)))
                return rc;
            for (utf8proc_ssize_t j = 0; j < k; j++) s->norm[m++] = (uint32_t)d[j];
        }
        /* Canonical ordering of combining marks completes NFD. */
        for (size_t i = 0; i + 1 < m;) {
            int c1 = utf8proc_get_property((utf8proc_int32_t)s->norm[i])->combining_class;
            int c2 = utf8proc_get_property((utf8proc_int32_t)s->norm[i + 1])->combining_class;
            if (c2 > 0 && c1 > c2) {
                uint32_t t = s->norm[i];
                s->norm[i] = s->norm[i + 1];
                s->norm[i + 1] = t;
                if (i > 0) i--;
            } else {
                i++;
            }
        }
        n = 0;
        for (size_t i = 0; i < m; i++)
            if (!is_mark(s->norm[i])) s->norm[n++] = s->norm[i];
    }
    if (wp->lowercase) {
        swap_bufs(s);
        if ((rc = grow((void **)&s->norm, &s->norm_cap, 2 * n, sizeof *s->norm))) return rc;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t c = s->cp[i];
            if (c == 0x130) { /* the one unconditional 1:2 lowercase mapping */
                s->norm[m++] = 'i';
                s->norm[m++] = 0x307;
            } else {
                s->norm[m++] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
            }
        }
        n = m;
    }
    *n_out = n;
    return 0;
}

/* WordPiece on one word (UTF-8, n_chars code points): greedy longest
 * prefix, then longest continuation, ...; the whole word is [UNK] if a
 * position has no match or the word is too long. */
static int wordpiece(const lloco_wp *wp, const char *w, size_t len, size_t n_chars,
                     lloco_wp_ids *ids) {
    if (n_chars > (size_t)wp->max_chars) return ids_push(ids, wp->unk);
    const size_t first = ids->n;
    for (size_t start = 0; start < len;) {
        const int cont = start > 0;
        size_t end = len - start > wp->max_len[cont] ? start + wp->max_len[cont] : len;
        while (end > start && end < len && (w[end] & 0xC0) == 0x80) end--;
        int32_t id = -1;
        while (end > start) {
            id = vocab_find(wp, w + start, end - start, cont);
            if (id >= 0) break;
            end--;
            while (end > start && (w[end] & 0xC0) == 0x80) end--;
        }
        if (id < 0) {
            ids->n = first;
            return ids_push(ids, wp->unk);
        }
        int rc = ids_push(ids, id);
        if (rc) return rc;
        start = end;
    }
    return 0;
}

static size_t utf8_put(uint32_t c, char *o) {
    if (c < 0x80) {
        o[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        o[0] = (char)(0xC0 | (c >> 6));
        o[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static int encode_word(const lloco_wp *wp, const uint32_t *cp, size_t n, lloco_wp_scratch *s,
                       lloco_wp_ids *ids) {
    int rc = grow((void **)&s->word, &s->word_cap, 4 * n, 1);
    if (rc) return rc;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += utf8_put(cp[i], s->word + len);
    return wordpiece(wp, s->word, len, n, ids);
}

/* A stretch of text between added tokens: normalize, pre-tokenize, and
 * WordPiece each word. */
static int encode_segment(const lloco_wp *wp, const char *text, size_t len, lloco_wp_scratch *s,
                          lloco_wp_ids *ids) {
    size_t n;
    int rc = normalize(wp, text, len, s, &n);
    if (rc) return rc;
    const uint32_t *c = s->norm;
    if (!wp->bert_pre) return n ? encode_word(wp, c, n, s, ids) : 0;
    for (size_t i = 0; i < n && !rc;) {
        if (is_white_space(c[i])) {
            i++;
            continue;
        }
        size_t j = i + 1;
        if (!is_punct(c[i]))
            while (j < n && !is_white_space(c[j]) && !is_punct(c[j])) j++;
        rc = encode_word(wp, c + i, j - i, s, ids);
        i = j;
    }
    return rc;
}

/* The longest added token starting at text[i], or -1. */
static int added_at(const lloco_wp *wp, const char *text, size_t len, size_t i) {
    int best = -1;
    for (int k = 0; k < wp->n_added; k++) {
        const added_token *a = &wp->added[k];
        if (a->len <= len - i && !memcmp(text + i, a->text, a->len) &&
            (best < 0 || a->len > wp->added[best].len))
            best = k;
    }
    return best;
}

int lloco_wp_encode(const lloco_wp *wp, const char *text, size_t len, lloco_wp_scratch *s,
                    lloco_wp_ids *ids) {
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        int k = wp->added_first[(uint8_t)text[i]] ? added_at(wp, text, len, i) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        int rc = encode_segment(wp, text + seg, i - seg, s, ids);
        if (!rc) rc = ids_push(ids, wp->added[k].id);
        if (rc) return rc;
        i += wp->added[k].len;
        seg = i;
    }
    return encode_segment(wp, text + seg, len - seg, s, ids);
}

void lloco_wp_scratch_free(lloco_wp_scratch *s) {
    free(s->cp);
    free(s->norm);
    free(s->word);
    memset(s, 0, sizeof *s);
}
