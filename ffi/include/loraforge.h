/*
 * loraforge.h: the C ABI of libloraforge (LoRA / QLoRA fine-tuning, chat and export).
 * Rust side: ffi/src/ (*.rs). ffi/tests/header.rs checks that every prototype, struct field, callback
 * and constant here matches the Rust definitions, so the two cannot drift.
 *
 * The whole lifecycle (ffi/examples/finetune.c is this, with error checks):
 *
 *   printf("%s %s\n", lf_version(), lf_build_features());
 *   lf_train_params p = lf_train_default_params();
 *   p.model_name_or_path = "SmolLM2-135M-Instruct.Q4_1.gguf"; p.dataset = "demo_identity";
 *   p.dataset_dir = "data"; p.output_dir = "out"; p.max_steps = 3;
 *   lf_trainer *t = NULL;
 *   if (lf_trainer_new(&p, &t) != LF_OK) { fprintf(stderr, "%s\n", lf_last_error()); return 1; }
 *   lf_trainer_run(t, on_progress, NULL);          // on_progress returns nonzero to cancel
 *   lf_trainer_save_adapter(t, "out/adapter");  lf_trainer_free(t);
 *   lf_export("SmolLM2-135M-Instruct.Q4_1.gguf", "out/adapter", LF_EXPORT_GGUF_ADAPTER, "out/gguf", NULL, NULL);
 *   lf_model *m = NULL;  lf_model_new("SmolLM2-135M-Instruct.Q4_1.gguf", "out/adapter", NULL, &m);
 *   char *reply = NULL;
 *   lf_chat(m, "[{\"role\":\"user\",\"content\":\"Who are you?\"}]", "{\"max_new_tokens\":32}", on_token, NULL, &reply);
 *   lf_string_free(reply);  lf_model_free(m);
 *
 * Conventions
 * - Status: every call that can fail returns an int from enum lf_status (LF_OK = 0). On failure,
 *   lf_last_error() returns a message naming the call and the cause. The message is thread-local
 *   and valid until the next lf_ call on the same thread; each call clears it first, so after a
 *   success it is "". No Rust panic crosses this boundary: one is caught and reported as
 *   LF_ERR_INTERNAL with its message.
 * - Strings in: NUL-terminated UTF-8, borrowed only for the duration of the call. Optional ones
 *   may be NULL (an empty string means the same). Invalid UTF-8 gives LF_ERR_INVALID_ARGUMENT.
 * - Strings out: through a `char **out` parameter. On success *out is a new string OWNED BY THE
 *   CALLER: free it with lf_string_free (never with free()). On failure *out is set to NULL.
 *   `const char *` results (lf_version, lf_build_features, lf_last_error) are owned by the library:
 *   never free them.
 * - Handles (lf_model, lf_trainer) are opaque; each comes from a _new call and goes back with its
 *   _free call; _free(NULL) is a no-op. The library keeps a table of live handles: a freed
 *   handle, a double free, or a model passed as a trainer is detected and refused with
 *   LF_ERR_INVALID_ARGUMENT (_free sets lf_last_error and does nothing). Detection fails only if
 *   the allocator reused the address for a new handle of the same type; beyond that, passing a
 *   pointer that never came from this library is undefined behaviour.
 * - Threads: a handle may be used from any thread, but ONE CALL AT A TIME per handle. A second
 *   concurrent call on the same handle (or a re-entrant call from inside one of its callbacks)
 *   is refused with LF_ERR_STATE. Different handles may be used in parallel. The exception is
 *   lf_trainer_cancel, which may be called from any thread at any time, e.g. while another
 *   thread is inside lf_trainer_run. _free refuses a handle another thread is using.
 * - Callbacks run on the calling thread, inside the call that takes them; the pointers they
 *   receive are valid only during the callback.
 * - Compute: a trainer runs on the backend its config's `device` key names ("auto": a hardware
 *   GPU through wgpu when there is one, else the CPU; "cpu"; "wgpu"), e.g. lf_train_params.extra_json
 *   = "{\"device\": \"wgpu\"}". Models opened with lf_model_new run on the CPU; lf_model_new_on
 *   takes the device the same way ("cpu", "wgpu", "auto").
 *   lf_devices says what exists on this machine and why a device cannot be used.
 */
#ifndef LORAFORGE_H
#define LORAFORGE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status codes ---------------------------------------------------------------------------- */

/* Returned by every call that can fail. Values are ABI: they never change, new ones are appended. */
enum lf_status {
    LF_OK = 0,
    LF_ERR_INVALID_ARGUMENT = 1, /* NULL where a value is required, invalid UTF-8, bad handle, bad enum */
    LF_ERR_IO = 2,               /* a file or directory could not be read or written */
    LF_ERR_FORMAT = 3,           /* malformed file or JSON text (model, tokenizer, adapter, messages) */
    LF_ERR_CONFIG = 4,           /* a config / params / options value is unknown or out of range */
    LF_ERR_CANCELLED = 5,        /* training stopped on request; a checkpoint was written */
    LF_ERR_STATE = 6,            /* wrong moment: training finished, handle busy, no eval data, ... */
    LF_ERR_INTERNAL = 7,         /* a bug: a caught panic or an internal invariant */
    LF_ERR_UNSUPPORTED = 8,      /* a backend / feature not compiled in or not implemented yet */
    LF_ERR_OUT_OF_MEMORY = 9,    /* the device does not have the memory the run needs */
};

/* ---- Library --------------------------------------------------------------------------------- */

/* Version string, e.g. "0.1.0". Static: never NULL, never free. */
const char *lf_version(void);

/* JSON: {"version", "backends": {"cpu", "wgpu", "cuda"} (compiled in), "target", ...}.
 * Static: never NULL, never free. */
const char *lf_build_features(void);

/* This thread's last error message; "" after a successful call. Never NULL, never free; valid
 * until the next lf_ call on this thread. */
const char *lf_last_error(void);

/* Frees a string returned through a `char **` parameter. NULL is a no-op. */
void lf_string_free(char *s);

/* JSON array, one object per backend: {"name": "cpu", "available": true, "threads", "memory_bytes",
 * "detail"}, {"name": "wgpu", "available": false, "detail": "why"}, {"name": "cuda", ...}.
 * *out_json: caller frees with lf_string_free. */
int lf_devices(char **out_json);

/* ---- Models and chat ------------------------------------------------------------------------- */

typedef struct lf_model lf_model;

/* Called with each piece of generated text (complete UTF-8, NUL-terminated, valid during the
 * call only). Return 0 to continue, nonzero to stop generating (a normal end: lf_chat returns
 * LF_OK). The stop token (EOS / end of turn) is never passed. */
typedef int (*lf_token_cb)(const char *piece, void *user);

/* Loads a model: `path` is a .gguf file or a Hugging Face directory (config.json, *.safetensors,
 * tokenizer.json). `adapter_dir` (nullable): a PEFT LoRA adapter directory to apply (one trained on
 * a different GGUF file is refused). `template_name` (nullable): a built-in chat template
 * (chatml, llama3, gemma, smollm2, ...) instead of the model's own.
 * *out: a new handle, caller frees with lf_model_free; NULL on failure. */
int lf_model_new(const char *path, const char *adapter_dir, const char *template_name, lf_model **out);

/* lf_model_new on a chosen compute device: "cpu", "wgpu" or "auto" (a hardware GPU through wgpu
 * when there is one, else the CPU); NULL means "cpu". No usable device of that kind:
 * LF_ERR_UNSUPPORTED; an unknown name: LF_ERR_INVALID_ARGUMENT. */
int lf_model_new_on(const char *path, const char *adapter_dir, const char *template_name, const char *device,
                    lf_model **out);

/* Frees a model. NULL is a no-op. */
void lf_model_free(lf_model *m);

/* JSON: {"path", "adapter", "device", "arch", "vocab_size", "hidden_size", "num_hidden_layers", ...,
 * "parameters", "chat_template", "tokenizer"}. *out_json: caller frees with lf_string_free. */
int lf_model_info(lf_model *m, char **out_json);

/* Renders `messages_json` (a JSON array of {"role": "system"|"user"|"assistant", "content": "..."})
 * with the model's chat template plus the generation prompt, and generates the reply.
 * `gen_params_json` (nullable; unknown keys are refused with LF_ERR_CONFIG):
 *   {"max_new_tokens": 128, "temperature": 0 (greedy), "top_k": 0, "top_p": 1, "min_p": 0,
 *    "repetition_penalty": 1, "seed": 0}
 * `token_cb` (nullable) streams the reply; `user` is passed to it unchanged.
 * `out_text` (nullable): the whole reply, caller frees with lf_string_free.
 * LF_ERR_STATE if the model has no chat template (reload it with a template_name). */
int lf_chat(lf_model *m, const char *messages_json, const char *gen_params_json, lf_token_cb token_cb, void *user,
            char **out_text);

/* ---- Training -------------------------------------------------------------------------------- */

typedef struct lf_trainer lf_trainer;

/* The common training knobs. Start from lf_train_default_params() and set what you need; any
 * other `loraforge train` key goes in extra_json. String fields are borrowed during
 * lf_trainer_new only. Names are the LLaMA-Factory config keys. */
typedef struct lf_train_params {
    const char *model_name_or_path; /* required: .gguf file, HF directory, or alias smollm2-135m / gemma3-270m */
    const char *dataset;            /* required: dataset names from dataset_dir/dataset_info.json, comma-separated */
    const char *dataset_dir;        /* NULL: "data" (relative to the working directory) */
    const char *output_dir;         /* required: adapter, logs, checkpoints go here */
    const char *template_name;      /* NULL: the model's own chat template */
    const char *lora_target;        /* NULL: "all" (every linear layer); or e.g. "q_proj,v_proj" */
    const char *extra_json;         /* NULL, or a JSON object of more config keys; they override the fields */
    int32_t lora_rank;              /* 8. Higher: more capacity, more memory */
    double lora_alpha;              /* 0: 2 * lora_rank. The update is scaled by alpha / rank */
    double lora_dropout;            /* 0. Dropout on the LoRA input */
    double learning_rate;           /* 5e-5. Peak AdamW learning rate (LoRA usually 1e-4 .. 1e-3) */
    double num_train_epochs;        /* 3. Used when max_steps is 0 */
    int64_t max_steps;              /* 0: from num_train_epochs. Optimizer steps to run */
    int32_t per_device_train_batch_size; /* 8. Rows per micro-batch; memory grows with it */
    int32_t gradient_accumulation_steps; /* 1. Micro-batches per optimizer step */
    int32_t cutoff_len;             /* 2048. Tokens per example at most (longer ones are truncated) */
    int64_t max_samples;            /* 0: all. Examples taken from each dataset at most */
    double val_size;                /* 0. Fraction (0..1) held out for lf_trainer_evaluate */
    int32_t logging_steps;          /* 500. Log (trainer_log.jsonl, stderr) every N steps */
    int32_t save_steps;             /* 500. Checkpoint every N steps; 0: only on cancel / request */
    uint64_t seed;                  /* 42. Data order, LoRA init, dropout: same seed, same run */
    int32_t quantization_bit;       /* 0: none. 4 (NF4) or 8 (int8): QLoRA on a dense base */
    int32_t overwrite_output_dir;   /* 0. Nonzero: allow an output_dir that holds another run */
    int32_t resume_from_checkpoint; /* 0. Nonzero: continue from the newest checkpoint in output_dir */
} lf_train_params;

/* What one optimizer step did. */
typedef struct lf_progress {
    int64_t step;        /* global step just completed, 1-based */
    int64_t total;       /* steps in the run */
    double loss;         /* mean loss of the step over its trained tokens */
    double lr;           /* learning rate used by the step */
    double grad_norm;    /* gradient norm before clipping */
    double tokens_per_s; /* tokens (prompt and padding included) per second of this step */
    double eta_s;        /* estimated seconds to the end of the run */
    double epoch;        /* fractional epoch */
    double eval_loss;    /* evaluation loss when this step evaluated, else NaN */
} lf_progress;

/* Called after every step of lf_trainer_run (`p` is valid during the call only). Return 0 to
 * continue, nonzero to cancel (same as lf_trainer_cancel). */
typedef int (*lf_progress_cb)(const lf_progress *p, void *user);

/* The defaults of a `loraforge train` config, with every string NULL. */
lf_train_params lf_train_default_params(void);

/* Creates a trainer: loads the model and data and prepares the run (nothing is trained yet).
 * LF_ERR_CONFIG for malformed YAML / JSON, bad values, unknown keys, a missing model or dataset,
 * an output_dir that holds another run (LF_ERR_FORMAT for malformed params.extra_json).
 * *out: caller frees with lf_trainer_free; NULL on failure. */
int lf_trainer_new(const lf_train_params *params, lf_trainer **out);

/* Same, from the text of a YAML config file (the keys of `loraforge train`). */
int lf_trainer_new_from_yaml(const char *yaml, lf_trainer **out);

/* Same, from a JSON object with the same keys. */
int lf_trainer_new_from_json(const char *json, lf_trainer **out);

/* Frees a trainer. Nothing is saved. NULL is a no-op. */
void lf_trainer_free(lf_trainer *t);

/* Runs one optimizer step (plus the logging / evaluation / checkpoint it is due for).
 * `out` (nullable) receives the step's report. LF_ERR_STATE when all steps are done. */
int lf_trainer_step(lf_trainer *t, lf_progress *out);

/* Trains to the end, calling `cb` (nullable) after each step, then writes the final outputs
 * (adapter, metrics, trainer_state.json) into output_dir. A cancel request (cb returning nonzero,
 * or lf_trainer_cancel) stops at the end of the step in progress, writes
 * output_dir/checkpoint-STEP, and returns LF_ERR_CANCELLED (lf_last_error names the checkpoint).
 * The request is consumed: calling lf_trainer_run again continues training. */
int lf_trainer_run(lf_trainer *t, lf_progress_cb cb, void *user);

/* Requests cancellation of the current (or next) lf_trainer_run. Thread-safe: may be called from
 * any thread, also while another thread is inside lf_trainer_run. */
int lf_trainer_cancel(lf_trainer *t);

/* Writes output_dir/checkpoint-STEP now (resumable, and itself a PEFT adapter).
 * `out_path` (nullable): its path, caller frees with lf_string_free.
 * To resume later: a new trainer on the same output_dir with resume_from_checkpoint set (or the
 * config key resume_from_checkpoint: true / a checkpoint path). */
int lf_trainer_save_checkpoint(lf_trainer *t, char **out_path);

/* Mean loss over the evaluation data into *out_loss. LF_ERR_STATE without eval data (set
 * val_size, or eval_dataset in extra_json). */
int lf_trainer_evaluate(lf_trainer *t, double *out_loss);

/* Writes the final outputs after a loop of lf_trainer_step calls (lf_trainer_run does it itself). */
int lf_trainer_finish(lf_trainer *t);

/* Saves the trained LoRA adapter in PEFT format (adapter_model.safetensors, adapter_config.json)
 * into `dir` (created if needed). Usable by lf_model_new, lf_export, PEFT and LLaMA-Factory. */
int lf_trainer_save_adapter(lf_trainer *t, const char *dir);

/* JSON: {"global_step", "total_steps", "done", "finished", "output_dir", "checkpoint" (last one
 * written through this handle or null), "total_tokens", "notes", "description"}.
 * *out_json: caller frees with lf_string_free. */
int lf_trainer_info(lf_trainer *t, char **out_json);

/* ---- Export ---------------------------------------------------------------------------------- */

/* What lf_export writes. Values are ABI. */
enum lf_export_kind {
    LF_EXPORT_SAFETENSORS = 0,  /* merged model, Hugging Face directory (safetensors + config + tokenizer) */
    LF_EXPORT_GGUF = 1,         /* merged model, one GGUF file + Ollama Modelfile */
    LF_EXPORT_GGUF_ADAPTER = 2, /* the adapter as a llama.cpp GGUF LoRA file, not merged */
};

/* Exports `base_model` (.gguf file or HF directory) with the PEFT adapter in `adapter_dir`
 * (nullable for the merged kinds: the base alone is converted; required for LF_EXPORT_GGUF_ADAPTER)
 * into `export_dir`, which must not exist or be empty. `kind` is an lf_export_kind.
 * `options_json` (nullable): {"dtype": "bfloat16"|"float16"|"float32", "quant": "q8_0"|"q4_k_m"|...
 * (GGUF model only), "template": "chatml" or Jinja source, "export_size_gb": 5}.
 * `out_report_json` (nullable): {"files": [paths], "notes": [...]}, caller frees with lf_string_free. */
int lf_export(const char *base_model, const char *adapter_dir, int kind, const char *export_dir,
              const char *options_json, char **out_report_json);

#ifdef __cplusplus
}
#endif

#endif /* LORAFORGE_H */
