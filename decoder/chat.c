/* chat: renders a conversation into the prompt text a model was trained on.
 * The formats are built in (ChatML, Llama-2 [INST], Llama-3 headers) and
 * picked from the model's template text, not by running its Jinja.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

lloco_chat_format lloco_chat_detect(const lloco_model *m) {
    const char *t = lloco_model_chat_template(m);
    if (t) {
        if (strstr(t, "<|im_start|>")) return LLOCO_CHAT_CHATML;
        if (strstr(t, "<|start_header_id|>")) return LLOCO_CHAT_LLAMA3;
        if (strstr(t, "[INST]")) return LLOCO_CHAT_LLAMA2;
    }
    const lloco_tokenizer *tok = lloco_model_tokenizer(m);
    if (lloco_tokenizer_find(tok, "<|im_start|>") >= 0) return LLOCO_CHAT_CHATML;
    if (lloco_tokenizer_find(tok, "<|start_header_id|>") >= 0) return LLOCO_CHAT_LLAMA3;
    return LLOCO_CHAT_LLAMA2;
}

typedef struct {
    char *s;
    size_t len, cap;
    int err;
} strbuf;

static void sb_add(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(strbuf *b, const char *fmt, ...) {
    if (b->err) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + (size_t)n;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->err = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void render_chatml(strbuf *b, const lloco_chat_msg *msgs, int n, int add_assistant) {
    for (int i = 0; i < n; i++) sb_add(b, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
    if (add_assistant) sb_add(b, "<|im_start|>assistant\n");
}

static void render_llama3(strbuf *b, const lloco_chat_msg *msgs, int n, int add_assistant) {
    sb_add(b, "<|begin_of_text|>");
    for (int i = 0; i < n; i++)
        sb_add(b, "<|start_header_id|>%s<|end_header_id|>\n\n%s<|eot_id|>", msgs[i].role,
               msgs[i].content);
    if (add_assistant) sb_add(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Llama-2: the system prompt folds into the first user turn; each
 * user/assistant exchange is one <s>[INST] ... [/INST] ... </s>. */
static void render_llama2(strbuf *b, const lloco_chat_msg *msgs, int n) {
    const char *sys = NULL;
    int i = 0;
    if (n > 0 && !strcmp(msgs[0].role, "system")) {
        sys = msgs[0].content;
        i = 1;
    }
    for (; i < n; i++) {
        if (!strcmp(msgs[i].role, "assistant")) {
            sb_add(b, " %s </s>", msgs[i].content);
            continue;
        }
        if (sys) {
            sb_add(b, "<s>[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]", sys, msgs[i].content);
            sys = NULL;
        } else {
            sb_add(b, "<s>[INST] %s [/INST]", msgs[i].content);
        }
    }
}

int lloco_chat_render(lloco_chat_format f, const lloco_chat_msg *msgs, int n, int add_assistant,
                      char **out) {
    *out = NULL;
    for (int i = 0; i < n; i++) {
        const char *r = msgs[i].role;
        if (!r || !msgs[i].content || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")))
            return lloco_error(LLOCO_ERR_INVAL, "message %d: role must be system, user or assistant", i);
    }
    strbuf b = {0};
    sb_add(&b, "%s", "");
    switch (f) {
    case LLOCO_CHAT_CHATML: render_chatml(&b, msgs, n, add_assistant); break;
    case LLOCO_CHAT_LLAMA3: render_llama3(&b, msgs, n, add_assistant); break;
    case LLOCO_CHAT_LLAMA2: render_llama2(&b, msgs, n); break;
    default:
        free(b.s);
        return lloco_error(LLOCO_ERR_INVAL, "unknown chat format %d", (int)f);
    }
    if (b.err) {
        free(b.s);
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    }
    *out = b.s;
    return 0;
}
