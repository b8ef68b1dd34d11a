/* safetensors reader: maps one file or every shard named by a
 * model.safetensors.index.json, parses each JSON header and checks dtypes,
 * shapes and data offsets against the mapping before handing tensors out.
 */
#include "decoder.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Real headers are a few hundred KB even for 70B models; the cap stops a
 * hostile length from making us copy and parse hundreds of MB of "JSON". */
#define ST_MAX_HEADER (100u << 20)
#define ST_MAX_INDEX (100u << 20)
/* JSON numbers are doubles: integers above 2^53 are not exact. */
#define ST_MAX_JSON_INT 9007199254740992.0

typedef struct {
    char *key, *value;
} st_meta;

struct lloco_st {
    int n_shards;
    lloco_mapped_file *maps;
    int64_t n_tensors, cap_tensors;
    lloco_st_tensor *tensors;
    lloco_st_tensor **sorted; /* by name, for lookup */
    int n_meta;
    st_meta *meta; /* first shard's __metadata__ */
};

static int cmp_tensor_ptr(const void *a, const void *b) {
    return strcmp((*(lloco_st_tensor *const *)a)->name, (*(lloco_st_tensor *const *)b)->name);
}

/* The file's dtype as ours and its element size; the safetensors dtypes
 * that are no weights (integers, bool, F64, F8) come out as
 * LLOCO_DTYPE_COUNT, so that checkpoints carrying buffers such as BERT's
 * int64 position_ids open. 0 for a dtype the format does not define. */
static size_t dtype_of(const char *s, lloco_dtype *out) {
    static const struct {
        const char *name;
        size_t size;
    } other[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
                 {"I16", 2},  {"U16", 2}, {"I32", 4}, {"U32", 4},     {"I64", 8},
                 {"U64", 8},  {"F64", 8}};
    *out = LLOCO_DTYPE_COUNT;
    if (!strcmp(s, "F32")) *out = LLOCO_DTYPE_F32;
    else if (!strcmp(s, "F16")) *out = LLOCO_DTYPE_F16;
    else if (!strcmp(s, "BF16")) *out = LLOCO_DTYPE_BF16;
    if (*out != LLOCO_DTYPE_COUNT) return lloco_dtype_row_bytes(*out, 1);
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (!strcmp(s, other[i].name)) return other[i].size;
    return 0;
}

/* A JSON number that is an exact integer in [0, 2^53]. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int add_tensor(lloco_st *st, const char *path, lloco_st_tensor **out) {
    if (st->n_tensors == st->cap_tensors) {
        int64_t cap = st->cap_tensors ? st->cap_tensors * 2 : 64;
        lloco_st_tensor *t = realloc(st->tensors, (size_t)cap * sizeof *t);
        if (!t) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
        st->tensors = t;
        st->cap_tensors = cap;
    }
    *out = &st->tensors[st->n_tensors++];
    memset(*out, 0, sizeof **out);
    return 0;
}

/* Checks a __metadata__ object (string values only) and, if keep, copies
 * it: only the first shard's is kept. */
static int parse_metadata(lloco_st *st, const char *path, const cJSON *m, int keep) {
    if (!cJSON_IsObject(m))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: __metadata__ is not an object", path);
    int n = cJSON_GetArraySize(m);
    if (keep) {
        st->meta = calloc((size_t)(n ? n : 1), sizeof *st->meta);
        if (!st->meta) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    }
    for (const cJSON *e = m->child; e; e = e->next) {
        if (!cJSON_IsString(e))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: __metadata__ entry '%s' is not a string",
                               path, e->string);
        if (!keep) continue;
        st_meta *me = &st->meta[st->n_meta++];
        me->key = strdup(e->string);
        me->value = strdup(e->valuestring);
        if (!me->key || !me->value) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    }
    return 0;
}

/* Checks one header entry and appends the tensor it describes. data is
 * the start of the file's data section, of data_size bytes. */
static int parse_entry(lloco_st *st, const char *path, int shard, const cJSON *e,
                       const uint8_t *data, size_t data_size) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s': entry is not an object", path,
                           name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s': missing or non-string dtype", path,
                           name);
    if (!cJSON_IsArray(shape))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s': missing or non-array shape", path,
                           name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets missing or not [begin, end]", path,
                           name);
    lloco_dtype type;
    size_t n_bytes = dtype_of(dt->valuestring, &type);
    if (!n_bytes)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: tensor '%s' has unknown dtype %s", path,
                           name, dt->valuestring);
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > 4)
        return lloco_error(LLOCO_ERR_UNSUPPORTED, "%s: tensor '%s' has %d dimensions (at most 4)",
                           path, name, n_dims);
    uint64_t begin, end;
    if (!json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &end))
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets are not non-negative integers", path,
                           name);
    if (end < begin)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 ") end before "
                           "they begin",
                           path, name, begin, end);
    if (end > data_size)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: tensor '%s' data [%" PRIu64 ", %" PRIu64 ") beyond the %zu-byte "
                           "data section",
                           path, name, begin, end, data_size);

    lloco_st_tensor *t = NULL;
    int rc = add_tensor(st, path, &t);
    if (rc) return rc;
    t->type = type;
    t->n_dims = n_dims;
    t->shard = shard;
    int d = 0;
    for (const cJSON *v = shape->child; v; v = v->next, d++) {
        uint64_t dim;
        if (!json_uint(v, &dim))
            return lloco_error(LLOCO_ERR_FORMAT,
                               "%s: tensor '%s': shape[%d] is not a non-negative integer", path,
                               name, d);
        t->shape[d] = (int64_t)dim;
        if (lloco_size_mul(n_bytes, (size_t)dim, &n_bytes))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s': shape overflows", path, name);
    }
    for (; d < 4; d++) t->shape[d] = 1;
    if (n_bytes != end - begin)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: tensor '%s': shape and dtype %s need %zu bytes, data_offsets "
                           "span %" PRIu64,
                           path, name, dt->valuestring, n_bytes, end - begin);
    t->nbytes = n_bytes;
    t->data = data + begin;
    t->name = strdup(name);
    if (!t->name) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    return 0;
}

static int cmp_data(const void *a, const void *b) {
    const lloco_st_tensor *x = *(lloco_st_tensor *const *)a, *y = *(lloco_st_tensor *const *)b;
    const uint8_t *p = x->data, *q = y->data;
    return p < q ? -1 : p > q;
}

/* Refuses tensors of one shard (tensors [first, n)) sharing bytes. */
static int check_overlap(lloco_st *st, const char *path, int64_t first) {
    if (st->n_tensors - first < 2) return 0;
    lloco_st_tensor **v = malloc((size_t)(st->n_tensors - first) * sizeof *v);
    if (!v) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    int64_t n = 0;
    for (int64_t i = first; i < st->n_tensors; i++)
        if (st->tensors[i].nbytes) v[n++] = &st->tensors[i]; /* empty ones share no bytes */
    qsort(v, (size_t)n, sizeof *v, cmp_data);
    int rc = 0;
    for (int64_t i = 1; i < n && !rc; i++) {
        const uint8_t *prev_end = (const uint8_t *)v[i - 1]->data + v[i - 1]->nbytes;
        if ((const uint8_t *)v[i]->data < prev_end)
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap", path,
                             v[i - 1]->name, v[i]->name);
    }
    free(v);
    return rc;
}

static int parse_header(lloco_st *st, const char *path, int shard, const cJSON *root,
                        const uint8_t *data, size_t data_size) {
    if (!cJSON_IsObject(root))
        return lloco_error(LLOCO_ERR_FORMAT, "%s: header is not a JSON object", path);
    int64_t first = st->n_tensors;
    for (const cJSON *e = root->child; e; e = e->next) {
        int rc;
        if (!strcmp(e->string, "__metadata__")) {
            rc = parse_metadata(st, path, e, shard == 0 && !st->meta);
        } else {
            rc = parse_entry(st, path, shard, e, data, data_size);
        }
        if (rc) return rc;
    }
    return check_overlap(st, path, first);
}

static int open_file(lloco_st *st, const char *path, int shard) {
    lloco_mapped_file *m = &st->maps[shard];
    int rc = lloco_file_map(path, m);
    if (rc) return rc;
    uint64_t hlen;
    if (m->size < 8)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file",
                           path, m->size);
    memcpy(&hlen, m->data, 8);
    if (hlen > m->size - 8)
        return lloco_error(LLOCO_ERR_FORMAT,
                           "%s: header length %" PRIu64 " exceeds the file size %zu", path, hlen,
                           m->size);
    if (hlen > ST_MAX_HEADER)
        return lloco_error(LLOCO_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte cap",
                           path, hlen, ST_MAX_HEADER);
    /* Parsed from a NUL-terminated copy: the mapping may end right after
     * the header, and the parser must never be able to read past it. */
    char *json = malloc((size_t)hlen + 1);
    if (!json) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    memcpy(json, m->data + 8, (size_t)hlen);
    json[hlen] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    size_t at = end ? (size_t)(end - json) : 0;
    if (!root) {
        free(json);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", path,
                           8 + at);
    }
    /* The format pads the header with spaces; anything else after the
     * object means the length or the JSON is wrong. */
    for (; at < hlen; at++)
        if (!json[at] || !strchr(" \t\r\n", json[at])) break;
    free(json);
    if (at < hlen) {
        cJSON_Delete(root);
        return lloco_error(LLOCO_ERR_FORMAT, "%s: junk after the JSON header at byte %zu", path,
                           8 + at);
    }
    rc = parse_header(st, path, shard, root, m->data + 8 + hlen, m->size - 8 - (size_t)hlen);
    cJSON_Delete(root);
    return rc;
}

/* Builds the by-name index over every shard, refusing a name that occurs
 * twice (duplicate JSON keys, or the same tensor in two shards). */
static int index_names(lloco_st *st, const char *path) {
    st->sorted = malloc((size_t)(st->n_tensors ? st->n_tensors : 1) * sizeof *st->sorted);
    if (!st->sorted) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < st->n_tensors; i++) st->sorted[i] = &st->tensors[i];
    qsort(st->sorted, (size_t)st->n_tensors, sizeof *st->sorted, cmp_tensor_ptr);
    for (int64_t i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->sorted[i - 1]->name, st->sorted[i]->name))
            return lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s' appears twice", path,
                               st->sorted[i]->name);
    return 0;
}

/* ---- sharded checkpoints ------------------------------------------------- */

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A shard must be a plain file name next to the index: no directories,
 * so an index can never reach outside its folder. */
static int plain_name(const char *s) {
    return s[0] && !strchr(s, '/') && !strchr(s, '\\') && strcmp(s, ".") && strcmp(s, "..");
}

static int open_index(lloco_st *st, const char *path) {
    char *text = NULL;
    size_t len = 0;
    int rc = lloco_file_read(path, ST_MAX_INDEX, &text, &len);
    if (rc) return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root) return lloco_error(LLOCO_ERR_FORMAT, "%s: not valid JSON", path);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    char **names = NULL;
    char *dir = NULL;
    int n_names = 0;
    if (!cJSON_IsObject(wm)) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s: no \"weight_map\" object", path);
        goto done;
    }
    int n_entries = cJSON_GetArraySize(wm);
    names = calloc((size_t)(n_entries ? n_entries : 1), sizeof *names);
    if (!names) {
        rc = lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !plain_name(e->valuestring)) {
            rc = lloco_error(LLOCO_ERR_FORMAT,
                             "%s: weight_map entry '%s' must name a file in the same directory",
                             path, e->string);
            goto done;
        }
        names[n_names++] = e->valuestring;
    }
    if (n_names == 0) {
        rc = lloco_error(LLOCO_ERR_FORMAT, "%s: weight_map is empty", path);
        goto done;
    }
    /* Shards in name order, so shard 0 is model-00001-of-N. */
    qsort(names, (size_t)n_names, sizeof *names, cmp_str_ptr);
    int n_unique = 0;
    for (int i = 0; i < n_names; i++)
        if (i == 0 || strcmp(names[i], names[i - 1])) names[n_unique++] = names[i];
    st->maps = calloc((size_t)n_unique, sizeof *st->maps);
    if (!st->maps) {
        rc = lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    st->n_shards = n_unique;
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    for (int i = 0; i < n_unique && !rc; i++) {
        size_t nl = strlen(names[i]);
        char *p = realloc(dir, dir_len + nl + 1);
        if (!p) {
            rc = lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
            break;
        }
        dir = p;
        memcpy(dir, path, dir_len);
        memcpy(dir + dir_len, names[i], nl + 1);
        rc = open_file(st, dir, i);
        if (rc == LLOCO_ERR_NOTFOUND)
            rc = lloco_error(LLOCO_ERR_NOTFOUND, "%s: shard '%s' listed in the index is missing",
                             path, names[i]);
    }
    if (rc || (rc = index_names(st, path))) goto done;
    /* Every weight_map entry must be in the shard it names. */
    for (const cJSON *e = wm->child; e && !rc; e = e->next) {
        const lloco_st_tensor *t = lloco_st_find(st, e->string);
        if (!t)
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s' is not in shard '%s'", path,
                             e->string, e->valuestring);
        else if (strcmp(names[t->shard], e->valuestring))
            rc = lloco_error(LLOCO_ERR_FORMAT, "%s: tensor '%s' is in shard '%s', not '%s'", path,
                             e->string, names[t->shard], e->valuestring);
    }
done:
    free(dir);
    free(names);
    cJSON_Delete(root);
    return rc;
}

/* ---- open ---------------------------------------------------------------- */

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int open_path(lloco_st *st, const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lloco_error(errno == ENOENT ? LLOCO_ERR_NOTFOUND : LLOCO_ERR_IO, "%s: %s", path,
                           strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        size_t n = strlen(path) + 64;
        char *p = malloc(n);
        if (!p) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
        int rc;
        snprintf(p, n, "%s/model.safetensors.index.json", path);
        if (lloco_is_file(p)) {
            rc = open_index(st, p);
        } else {
            snprintf(p, n, "%s/model.safetensors", path);
            if (lloco_is_file(p)) rc = open_path(st, p);
            else rc = lloco_error(LLOCO_ERR_NOTFOUND,
                                  "%s: no model.safetensors or model.safetensors.index.json",
                                  path);
        }
        free(p);
        return rc;
    }
    if (ends_with(path, ".json")) return open_index(st, path);
    st->maps = calloc(1, sizeof *st->maps);
    if (!st->maps) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    st->n_shards = 1;
    int rc = open_file(st, path, 0);
    return rc ? rc : index_names(st, path);
}

int lloco_st_open(const char *path, lloco_st **out) {
    *out = NULL;
    lloco_st *st = calloc(1, sizeof *st);
    if (!st) return lloco_error(LLOCO_ERR_NOMEM, "%s: out of memory", path);
    int rc = open_path(st, path);
    if (rc) {
        lloco_st_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

void lloco_st_close(lloco_st *st) {
    if (!st) return;
    for (int i = 0; st->maps && i < st->n_shards; i++) lloco_file_unmap(&st->maps[i]);
    free(st->maps);
    for (int64_t i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    free(st->tensors);
    free(st->sorted);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st);
}

int64_t lloco_st_n_tensors(const lloco_st *st) { return st->n_tensors; }

const lloco_st_tensor *lloco_st_tensor_at(const lloco_st *st, int64_t i) {
    return i >= 0 && i < st->n_tensors ? &st->tensors[i] : NULL;
}

const lloco_st_tensor *lloco_st_find(const lloco_st *st, const char *name) {
    if (!st->sorted || st->n_tensors == 0) return NULL;
    lloco_st_tensor key = {.name = name};
    const lloco_st_tensor *kp = &key;
    lloco_st_tensor *const *r =
        bsearch(&kp, st->sorted, (size_t)st->n_tensors, sizeof *st->sorted, cmp_tensor_ptr);
    return r ? *r : NULL;
}

int lloco_st_n_shards(const lloco_st *st) { return st->n_shards; }

const char *lloco_st_metadata(const lloco_st *st, const char *key) {
    for (int i = 0; i < st->n_meta; i++)
        if (!strcmp(st->meta[i].key, key)) return st->meta[i].value;
    return NULL;
}
