/* Private to cli/: helpers the subcommand files share. Exit statuses: 0 ok,
 * 1 failure, 2 usage error, 3 a named file or directory not found.
 */
#ifndef LLOCO_CLI_H
#define LLOCO_CLI_H

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"
#define DEFAULT_EMBEDDER_DIR "embedder/all-MiniLM-L6-v2"

/* Prints the last error and returns the exit status for rc. */
int cli_fail(int rc);
/* Prints "lloco: <fmt with arg>" and the help hint; returns 2. */
int cli_usage_error(const char *fmt, const char *arg);
int cli_parse_int(const char *s, long lo, long hi, int *out);
int cli_parse_float(const char *s, double lo, double hi, float *out);
/* rel under the models folder ($LLOCO_MODELS, else the one setup fills);
 * the string stays valid across the next three calls. */
const char *cli_default_model(const char *rel);
/* The adapters directory: $LLOCO_ADAPTERS, else adapters/ in the models folder. */
const char *cli_default_adapters_dir(void);

int cmd_ingest(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_reindex(int argc, char **argv);
int cmd_adapters(int argc, char **argv);
int cmd_ask(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
