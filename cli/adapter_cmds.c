/* The adapters subcommands: list the LoRA adapters of an adapters directory
 * (size, rank, targets, the groups of a store using each, residency), and
 * assign or unassign a group's adapter in a store. The bank (lora_bank/)
 * names, checks and loads adapters; the store (retriever/) keeps the map.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lora_bank/lora_bank.h"
#include "retriever/retriever.h"

typedef struct {
    const char *dir, *store, *model;
    const char *args[3];
    int n_args;
} adapter_opts;

static int parse_opts(int argc, char **argv, const char *allowed, adapter_opts *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            if (o->n_args == 3) return cli_usage_error("unexpected argument '%s'", a);
            o->args[o->n_args++] = a;
            continue;
        }
        char flag[64];
        snprintf(flag, sizeof flag, " %s ", a);
        if (!strstr(allowed, flag)) return cli_usage_error("unknown option '%s'", a);
        if (i + 1 >= argc) return cli_usage_error("option %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--dir")) o->dir = v;
        else if (!strcmp(a, "--store")) o->store = v;
        else o->model = v; /* -m, --model */
    }
    if (!o->dir) o->dir = cli_default_adapters_dir();
    if (!o->model) o->model = cli_default_model(DEFAULT_MODEL_FILE);
    return 0;
}

/* The model adapters are checked against, and a bank over the directory. */
static int open_bank(const adapter_opts *o, lloco_model **m, lloco_bank **b) {
    *b = NULL;
    int rc = lloco_model_open(o->model, m);
    if (rc) return rc;
    lloco_bank_params p = {.dir = o->dir};
    rc = lloco_bank_open(&p, *m, b);
    if (rc) {
        lloco_model_close(*m);
        *m = NULL;
    }
    return rc;
}

static void format_size(size_t n, char *buf, size_t cap) {
    if (n < 1024) snprintf(buf, cap, "%zu B", n);
    else if (n < (size_t)1 << 20) snprintf(buf, cap, "%.1f KiB", n / 1024.0);
    else if (n < (size_t)1 << 30) snprintf(buf, cap, "%.1f MiB", n / 1048576.0);
    else snprintf(buf, cap, "%.1f GiB", n / 1073741824.0);
}

/* ---- list ------------------------------------------------------------------ */

typedef struct {
    char *name;
    size_t bytes;
    int resident;
} listed;

typedef struct {
    listed *items;
    int n, cap;
    char **groups; /* group, adapter, group, adapter, ... */
    int n_groups, cap_groups;
} list_state;

static int collect_entry(void *user, const lloco_bank_entry *e) {
    list_state *s = user;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        listed *bigger = realloc(s->items, sizeof *bigger * (size_t)s->cap);
        if (!bigger) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        s->items = bigger;
    }
    listed *l = &s->items[s->n];
    if (!(l->name = strdup(e->name))) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    l->bytes = e->file_bytes;
    l->resident = e->resident;
    s->n++;
    return 0;
}

static int collect_group(void *user, const char *group, const char *adapter) {
    list_state *s = user;
    if (s->n_groups + 2 > s->cap_groups) {
        s->cap_groups = s->cap_groups ? 2 * s->cap_groups : 16;
        char **bigger = realloc(s->groups, sizeof *bigger * (size_t)s->cap_groups);
        if (!bigger) return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
        s->groups = bigger;
    }
    s->groups[s->n_groups] = strdup(group);
    s->groups[s->n_groups + 1] = strdup(adapter);
    s->n_groups += 2;
    if (!s->groups[s->n_groups - 2] || !s->groups[s->n_groups - 1])
        return lloco_error(LLOCO_ERR_NOMEM, "out of memory");
    return 0;
}

/* "g1,g2" for the groups using adapter name, "-" for none. */
static void groups_of(const list_state *s, const char *name, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < s->n_groups; i += 2) {
        if (strcmp(s->groups[i + 1], name)) continue;
        int w = snprintf(buf + used, cap - used, "%s%s", used ? "," : "",
                         s->groups[i][0] ? s->groups[i] : "(default)");
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
    if (!used) snprintf(buf, cap, "-");
}

static void targets_of(unsigned bits, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int p = 0; p < LLOCO_PROJ_COUNT; p++) {
        if (!(bits & (1u << p))) continue;
        const char *n = lloco_proj_name((lloco_proj)p);
        int w = snprintf(buf + used, cap - used, "%s%.*s", used ? "," : "",
                         (int)(strlen(n) > 5 ? strlen(n) - 5 : strlen(n)), n); /* no "_proj" */
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
    if (!used) snprintf(buf, cap, "-");
}

/* rank and targets of one adapter, while it is resident */
typedef struct {
    const char *name;
    int r, max_rank;
    unsigned targets;
} info_probe;

static int probe_info(void *user, const lloco_bank_entry *e) {
    info_probe *p = user;
    if (strcmp(e->name, p->name) || !e->info) return 0;
    p->r = e->info->r;
    p->max_rank = e->info->max_rank;
    p->targets = e->info->targets;
    return 1; /* found: stop */
}

static int adapters_list(int argc, char **argv) {
    adapter_opts o;
    int rc = parse_opts(argc, argv, " --dir --store -m --model ", &o);
    if (rc) return rc;
    if (o.n_args)
        return cli_usage_error("usage: lloco adapters list [--dir D] [--store DIR] [-m MODEL]%s", "");
    list_state s = {0};
    lloco_model *m = NULL;
    lloco_bank *b = NULL;
    lloco_store *st = NULL;
    if (o.store) {
        rc = lloco_store_open(o.store, NULL, LLOCO_STORE_READONLY, &st);
        if (!rc) rc = lloco_store_foreach_group(st, collect_group, &s);
        lloco_store_close(st);
    }
    if (!rc) rc = open_bank(&o, &m, &b);
    if (!rc) rc = lloco_bank_foreach(b, collect_entry, &s);
    if (!rc) {
        printf("adapters in %s\n", o.dir);
        printf("%-24s %10s %5s  %-22s %-16s %s\n", "NAME", "SIZE", "RANK", "TARGETS", "GROUPS", "RESIDENT");
    }
    /* rank and targets come from loading each adapter once against the model */
    for (int i = 0; !rc && i < s.n; i++) {
        char size[32], targets[64] = "-", rank[16] = "-", groups[256];
        const listed *l = &s.items[i];
        format_size(l->bytes, size, sizeof size);
        groups_of(&s, l->name, groups, sizeof groups);
        const lloco_adapter_view *v = NULL;
        char *err = NULL;
        if (lloco_bank_acquire_wait(b, l->name, &v) == 0) {
            info_probe pr = {.name = l->name};
            lloco_bank_foreach(b, probe_info, &pr);
            if (pr.max_rank) {
                if (pr.r && pr.r != pr.max_rank) snprintf(rank, sizeof rank, "%d-%d", pr.r, pr.max_rank);
                else snprintf(rank, sizeof rank, "%d", pr.max_rank);
            }
            targets_of(pr.targets, targets, sizeof targets);
            lloco_bank_release(b, l->name);
            lloco_bank_unload(b, l->name); /* one at a time in memory */
        } else {
            err = strdup(lloco_last_error());
        }
        printf("%-24s %10s %5s  %-22s %-16s %s\n", l->name, size, rank, targets, groups,
               l->resident ? "yes" : "no");
        if (err) printf("  %s: cannot load: %s\n", l->name, err);
        free(err);
    }
    for (int i = 0; !rc && i < s.n_groups; i += 2) {
        int found = 0;
        for (int j = 0; j < s.n && !found; j++) found = !strcmp(s.items[j].name, s.groups[i + 1]);
        if (!found)
            printf("note: group %s uses adapter '%s', which is not in %s\n",
                   s.groups[i][0] ? s.groups[i] : "(default)", s.groups[i + 1], o.dir);
    }
    for (int i = 0; i < s.n; i++) free(s.items[i].name);
    free(s.items);
    for (int i = 0; i < s.n_groups; i++) free(s.groups[i]);
    free(s.groups);
    lloco_bank_close(b);
    lloco_model_close(m);
    return rc ? cli_fail(rc) : 0;
}

/* ---- assign / unassign ------------------------------------------------------ */

static int adapters_assign(int argc, char **argv) {
    adapter_opts o;
    int rc = parse_opts(argc, argv, " --dir --store -m --model ", &o);
    if (rc) return rc;
    if (!o.store || o.n_args != 2)
        return cli_usage_error(
            "usage: lloco adapters assign --store DIR [--dir D] [-m MODEL] GROUP NAME%s", "");
    const char *group = o.args[0], *name = o.args[1];
    lloco_store *st = NULL;
    lloco_model *m = NULL;
    lloco_bank *b = NULL;
    /* the store first: it is cheap to open and the likelier typo */
    rc = lloco_store_open(o.store, NULL, 0, &st);
    if (!rc) rc = open_bank(&o, &m, &b);
    /* loaded once, so a name that is missing or does not fit the model is
     * refused now rather than at serving time */
    const lloco_adapter_view *v = NULL;
    if (!rc) rc = lloco_bank_acquire_wait(b, name, &v);
    if (v) lloco_bank_release(b, name);
    if (!rc) rc = lloco_store_group_set(st, group, name);
    if (!rc) printf("group %s -> adapter %s\n", group[0] ? group : "(default)", name);
    lloco_bank_close(b);
    lloco_model_close(m);
    lloco_store_close(st);
    return rc ? cli_fail(rc) : 0;
}

static int adapters_unassign(int argc, char **argv) {
    adapter_opts o;
    int rc = parse_opts(argc, argv, " --store ", &o);
    if (rc) return rc;
    if (!o.store || o.n_args != 1)
        return cli_usage_error("usage: lloco adapters unassign --store DIR GROUP%s", "");
    lloco_store *st = NULL;
    rc = lloco_store_open(o.store, NULL, 0, &st);
    if (!rc) rc = lloco_store_group_unset(st, o.args[0]);
    if (rc == LLOCO_ERR_NOTFOUND && st)
        rc = lloco_error(rc, "group %s has no adapter in %s", o.args[0], o.store);
    if (!rc) printf("group %s: no adapter\n", o.args[0]);
    lloco_store_close(st);
    return rc ? cli_fail(rc) : 0;
}

int cmd_adapters(int argc, char **argv) {
    const char *sub = argc > 0 ? argv[0] : "";
    if (!strcmp(sub, "list")) return adapters_list(argc - 1, argv + 1);
    if (!strcmp(sub, "assign")) return adapters_assign(argc - 1, argv + 1);
    if (!strcmp(sub, "unassign")) return adapters_unassign(argc - 1, argv + 1);
    return cli_usage_error("usage: lloco adapters list|assign|unassign ... (got '%s')", sub);
}
