/* server: the online path. The engine turns a question into the decoder's
 * input (retrieve chunks, lay out their summary slots or text, render the
 * prompt, pick the group's adapter); the scheduler decodes many such
 * requests together on its own thread (continuous batching, per-sequence
 * adapters, chunked prefill, a KV budget); the HTTP server (libuv) speaks an
 * OpenAI-compatible API on top of both. `lloco ask` uses the engine and the
 * scheduler in-process.
 *
 * Ownership: an engine owns the model, decoder, embedder, store, index and
 * adapter bank it opens; a scheduler borrows its engine (free the scheduler
 * first). A lloco_prepared owns its buffers (free with lloco_prepared_free).
 */
#ifndef LLOCO_SERVER_H
#define LLOCO_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "lora_bank/lora_bank.h"
#include "retriever/retriever.h"

/* ---- the answer pipeline ------------------------------------------------- */

typedef enum {
    LLOCO_MODE_COMPRESSED = 0, /* retrieved summary slots, then the prompt (LLoCO) */
    LLOCO_MODE_TEXT,           /* retrieved chunk text in the prompt (RAG baseline) */
    LLOCO_MODE_FULL,           /* the whole document in the prompt, up to the context */
    LLOCO_MODE_NONE,           /* the question alone */
    LLOCO_MODE_COUNT
} lloco_mode;

const char *lloco_mode_name(lloco_mode m);
/* LLOCO_ERR_INVAL with a message listing the modes for an unknown name. */
int lloco_mode_parse(const char *s, lloco_mode *out);

typedef struct {
    const char *store_dir;    /* required */
    const char *model_path;   /* the decoder; compressed mode needs the model
                                 the store was compressed with (hash checked) */
    const char *embedder_dir; /* the store's retrieval embedder (hash checked) */
    const char *adapters_dir; /* NULL: no adapters; a group mapped to one is an error */
    size_t adapter_budget_bytes; /* 0: the bank's default */
    int n_threads;            /* decoder threads; <= 0: all CPUs */
    int n_ctx;                /* positions per sequence; <= 0: the model's training context */
    /* Per mode, the user message (or, for raw prompts, the text before
     * generation) with {context} and {question} placeholders; NULL: the
     * defaults below. */
    const char *templates[LLOCO_MODE_COUNT];
    const char *system_prompt; /* NULL: none */
} lloco_engine_params;

/* Default templates: compressed "{question}" (the slots come before the
 * whole prompt), text and full "{context}\n\nAnswer the question using the
 * text above.\nQuestion: {question}", none "{question}". */
const char *lloco_mode_default_template(lloco_mode m);

typedef struct lloco_engine lloco_engine;

int lloco_engine_open(const lloco_engine_params *p, lloco_engine **out);
void lloco_engine_close(lloco_engine *e);
lloco_decoder *lloco_engine_decoder(lloco_engine *e);
const lloco_model *lloco_engine_model(const lloco_engine *e);
lloco_bank *lloco_engine_bank(lloco_engine *e); /* NULL without an adapters dir */
lloco_store *lloco_engine_store(lloco_engine *e);
int lloco_engine_n_ctx(const lloco_engine *e);
/* The model's name as the API reports it (file name without extension). */
const char *lloco_engine_model_name(const lloco_engine *e);

typedef struct {
    const char *question; /* the retrieval query and {question}; may be NULL
                             with messages (then the last user message) */
    const lloco_chat_msg *messages; /* a chat; NULL: a single user turn */
    int n_messages;
    int raw;              /* no chat template: question is a completion prompt */
    const char *group;    /* NULL: the group of the best hit (see below) */
    const char *const *doc_ids; /* restrict retrieval to these documents */
    int n_doc_ids;
    int top_k;            /* chunks to retrieve; <= 0: 5 */
    lloco_mode mode;
    const char *adapter;  /* NULL: the group's adapter; "": none */
    int max_tokens;       /* room the answer needs after the prompt */
} lloco_query;

typedef struct {
    uint64_t chunk_id;
    char *doc_id;
    uint32_t ordinal, tok_begin, tok_end;
    float score;
    int n_slots;
    char *text; /* the chunk's raw text (NUL-terminated copy) */
    size_t text_len;
} lloco_used_chunk;

/* The decoder's input for one query and what went into it. */
typedef struct {
    int32_t *tokens; /* [n_tokens]; LLOCO_TOKEN_EMBD marks slot positions */
    float *embd;     /* [n_slots][d_model]: the slots are positions 0..n_slots-1; or NULL */
    int n_tokens;
    int n_slots;
    char *group;     /* the group answered from (NULL in mode none without one) */
    char *adapter;   /* NULL: base model */
    lloco_used_chunk *chunks; /* in the order they appear in the input */
    int n_chunks;
    int64_t n_context_positions; /* positions the context takes (slots or tokens) */
    int64_t n_raw_tokens;        /* document tokens that context stands for */
    int truncated;               /* full mode: the document was cut to fit */
    double t_retrieve;           /* seconds: embed, search, read the store */
} lloco_prepared;

/* Retrieves and lays out the input for q. Retrieval: the question is
 * embedded and the store searched (in `group` when given, among `doc_ids`
 * when given: then every chunk of those documents is scored exactly);
 * without a group the best hit's group is taken and hits of other groups
 * dropped, since one sequence decodes with one adapter. Chunks are laid out
 * in document order (documents by their best hit, chunks by ordinal).
 * Modes: compressed = [slots] ++ prompt tokens, no BOS; text = chunk texts
 * in {context}; full = the best document's whole text in {context}, cut to
 * fit n_ctx - max_tokens (truncated = 1); none = no retrieval.
 * Errors (message says which): LLOCO_ERR_NOTFOUND for an unknown document
 * or adapter, or a group with no documents; LLOCO_ERR_RANGE when the input
 * plus max_tokens does not fit n_ctx; LLOCO_ERR_MISMATCH for compressed
 * mode on a store compressed with another model; LLOCO_ERR_INVAL for a bad
 * query. The group's adapter, if any, starts loading here (not pinned).
 * Thread-safe: may run on several threads at once. */
int lloco_engine_prepare(lloco_engine *e, const lloco_query *q, lloco_prepared *out);
void lloco_prepared_free(lloco_prepared *p);

/* ---- the scheduler -------------------------------------------------------
 * One thread decodes every admitted request together (continuous batching):
 * each step runs one forward pass over all running sequences, decodes
 * (one position each) first, then prompt chunks of at most prefill_chunk
 * positions up to max_batch_tokens, so a long prefill never holds the
 * running decodes back for more than one step. New requests join at step
 * boundaries, in arrival order, when a sequence slot and their KV memory
 * (input + max_tokens positions, reserved up front) are free; a request
 * whose adapter is still loading waits while those behind it start.
 * Sequences with different adapters share a step (per-row LoRA). */

typedef struct {
    int max_seqs;           /* running sequences; default 16 */
    int max_batch_tokens;   /* positions per step; default 512 */
    int prefill_chunk;      /* prompt positions per sequence per step; default 256 */
    size_t kv_budget_bytes; /* all KV caches together; 0: 1 GiB */
    int max_queue;          /* waiting requests; default 64 */
} lloco_sched_params;

void lloco_sched_params_default(lloco_sched_params *p);

typedef struct {
    int rc;                 /* 0, or the error that ended it (see error) */
    char error[256];
    lloco_stop_reason stop; /* CALLBACK: cancelled or on_text asked to stop */
    int n_prompt, n_generated;
    double t_queued;        /* submit -> first step that runs it (seconds) */
    double t_prefill;       /* its prompt's steps */
    double t_first_token;   /* submit -> first generated token */
    double t_decode;        /* first token -> end */
} lloco_sched_result;

/* Callbacks run on the scheduler thread and must be quick (hand the text
 * to another thread). on_done is called exactly once per accepted request,
 * last; after it the scheduler forgets the request. */
typedef struct {
    const lloco_prepared *input; /* tokens, slots and adapter name are copied */
    int max_tokens;
    lloco_sampler_params sampling;
    const char *const *stop; /* stop strings, copied */
    int n_stop;
    int ignore_eos; /* end-of-generation tokens do not stop (benchmarks) */
    int (*on_text)(const char *text, size_t len, void *user); /* non-zero: stop */
    void (*on_done)(void *user, const lloco_sched_result *r);
    void *user;
} lloco_sched_request;

typedef struct lloco_sched lloco_sched;

/* Starts the scheduler thread on e's decoder (and takes the bank's notify
 * callback). */
int lloco_sched_create(lloco_engine *e, const lloco_sched_params *p, lloco_sched **out);
/* Cancels what is queued or running (on_done with LLOCO_ERR_CANCELLED)
 * and joins the thread. */
void lloco_sched_free(lloco_sched *s);
/* Thread-safe. LLOCO_ERR_BUSY when the queue is full, LLOCO_ERR_RANGE when
 * the request can never fit (context or KV budget), LLOCO_ERR_CANCELLED
 * when shutting down; nothing is called back then. *id names it for
 * cancel. */
int lloco_sched_submit(lloco_sched *s, const lloco_sched_request *r, uint64_t *id);
/* Thread-safe; ends the request within one step (stop CALLBACK); unknown
 * or finished ids are ignored. */
void lloco_sched_cancel(lloco_sched *s, uint64_t id);

#define LLOCO_SCHED_N_BUCKETS 14
/* Upper bounds (seconds) of the latency histogram buckets, the last +inf. */
const double *lloco_sched_bucket_bounds(void);

typedef struct {
    int queued, running;
    int last_batch_seqs, last_batch_tokens;
    size_t kv_reserved_bytes, kv_budget_bytes;
    uint64_t steps, prompt_tokens, generated_tokens, finished, cancelled, failed;
    /* time to first token and time between tokens: per-bucket counts
     * (not cumulative), sums and counts */
    uint64_t ttft_buckets[LLOCO_SCHED_N_BUCKETS], itl_buckets[LLOCO_SCHED_N_BUCKETS];
    double ttft_sum, itl_sum;
    uint64_t ttft_count, itl_count;
} lloco_sched_stats;

void lloco_sched_stats_get(lloco_sched *s, lloco_sched_stats *out);

/* What an answer used, as a cJSON object the caller owns (cJSON_Delete):
 * mode, group, adapter, chunks (id, doc, ordinal, score, token span, slots,
 * and their text when with_text), input and context positions, the raw
 * tokens they stand for and the ratio, and timings (res may be NULL before
 * decoding; t_total: seconds since the question arrived). The API's
 * `lloco` object and `lloco ask --json` are this. */
struct cJSON;
struct cJSON *lloco_answer_json(const lloco_prepared *p, lloco_mode mode,
                                const lloco_sched_result *res, double t_total,
                                int with_text);

/* ---- the HTTP server -------------------------------------------------------
 * OpenAI-compatible API over an engine and a scheduler: POST
 * /v1/completions and /v1/chat/completions (non-streaming and SSE), GET
 * /v1/models, GET/POST/DELETE /v1/adapters, POST /v1/retrieve, GET /health,
 * GET /metrics. The event loop only parses, validates and writes:
 * retrieval, store reads and adapter loads run on libuv's worker threads,
 * decoding on the scheduler's. */

typedef struct {
    const char *host;          /* default 127.0.0.1 */
    int port;                  /* default 8080; 0: ephemeral */
    const char *api_key;       /* bearer token; NULL or "": no auth */
    size_t max_header_bytes;   /* default 16 KiB (431) */
    size_t max_body_bytes;     /* default 1 MiB (413) */
    int request_timeout_ms;    /* a request must arrive within this (408); default 10000 */
    int idle_timeout_ms;       /* keep-alive connections; default 30000 */
    int max_prompt_positions;  /* cap on a request's input; 0: the context */
    int max_tokens_cap;        /* cap on max_tokens; default 2048 */
    int default_max_tokens;    /* when the request gives none; default 256 */
    int shutdown_grace_ms;     /* in-flight requests may finish within this; default 30000 */
    int handle_signals;        /* SIGINT/SIGTERM start a graceful shutdown */
} lloco_server_params;

void lloco_server_params_default(lloco_server_params *p);

typedef struct lloco_server lloco_server;

/* Binds (the port is known after this) on a loop of its own. The engine
 * and scheduler must outlive the server. */
int lloco_server_create(lloco_engine *e, lloco_sched *s, const lloco_server_params *p,
                        lloco_server **out);
int lloco_server_port(const lloco_server *s);
/* Runs the loop until a shutdown finishes: stop accepting, let in-flight
 * requests finish (up to shutdown_grace_ms, then cancel them), close every
 * connection. */
int lloco_server_run(lloco_server *s);
/* Thread-safe and signal-safe: starts the graceful shutdown. */
void lloco_server_shutdown(lloco_server *s);
void lloco_server_free(lloco_server *s);

#endif
