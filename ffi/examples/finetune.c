/*
 * finetune.c: the whole libloraforge lifecycle from C.
 *   version + features + devices -> train a LoRA adapter (3 steps, progress printed) -> evaluate
 *   -> save the PEFT adapter -> a second run cancelled from its progress callback (checkpoint)
 *   -> resume it for one step -> export a llama.cpp GGUF adapter -> load base + adapter and chat.
 * Plus the misuse the header promises to detect (double free, use after free, NULL arguments).
 *
 * Build (what ffi/tests/c_example.rs does):
 *   cargo build -p loraforge-ffi
 *   cc -std=c99 -Wall -Wextra -Iffi/include ffi/examples/finetune.c -Ltarget/debug -lloraforge \
 *      -Wl,-rpath,$PWD/target/debug -o finetune
 *   ./finetune ~/.cache/loraforge/models/SmolLM2-135M-Instruct.Q4_1.gguf data /tmp/lf-out [nomodel|tiny]
 * `nomodel` (run under valgrind by the tests): version, devices, every misuse and error path, no model.
 * `tiny` (under valgrind on request, ~4 min): nomodel + model load + a one-token chat + frees.
 */
#include "loraforge.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                                \
    do {                                                                                           \
        int st_ = (call);                                                                          \
        if (st_ != LF_OK) {                                                                        \
            fprintf(stderr, "FAILED %s (line %d): status %d: %s\n", #call, __LINE__, st_,          \
                    lf_last_error());                                                              \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "EXPECTATION FAILED (line %d): %s\n", __LINE__, #cond);                \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static int on_progress(const lf_progress *p, void *user) {
    int *steps = (int *)user;
    *steps += 1;
    printf("  step %lld/%lld  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  eta %.1fs\n",
           (long long)p->step, (long long)p->total, p->loss, p->lr, p->grad_norm, p->tokens_per_s, p->eta_s);
    return 0;
}

/* Cancels after the first step. */
static int cancel_after_one(const lf_progress *p, void *user) {
    (void)user;
    printf("  step %lld/%lld  loss %.4f -> cancelling\n", (long long)p->step, (long long)p->total, p->loss);
    return 1;
}

static int on_token(const char *piece, void *user) {
    int *n = (int *)user;
    *n += 1;
    fputs(piece, stdout);
    fflush(stdout);
    return 0;
}

static void path_join(char *out, size_t n, const char *dir, const char *leaf) {
    snprintf(out, n, "%s/%s", dir, leaf);
}

static lf_train_params params_for(const char *model, const char *data, const char *out) {
    lf_train_params p = lf_train_default_params();
    p.model_name_or_path = model;
    p.dataset = "demo_identity";
    p.dataset_dir = data;
    p.output_dir = out;
    p.lora_target = "q_proj,v_proj";
    p.lora_rank = 4;
    p.learning_rate = 1e-3;
    p.max_steps = 3;
    p.per_device_train_batch_size = 2;
    p.cutoff_len = 64;
    p.max_samples = 16;
    p.val_size = 0.25;
    p.logging_steps = 1;
    p.save_steps = 0;
    p.seed = 7;
    return p;
}

/* The misuse the header promises to catch: NULL, double free, use after free, wrong handle type,
 * bad input; `freed` is a model handle already freed (or NULL to skip those checks). */
static void misuse(lf_model *freed) {
    char *s = NULL;
    if (freed != NULL) {
        EXPECT(lf_model_info(freed, &s) == LF_ERR_INVALID_ARGUMENT && s == NULL);
        EXPECT(strstr(lf_last_error(), "not a live handle") != NULL);
        lf_model_free(freed); /* double free: detected, nothing happens */
        EXPECT(strstr(lf_last_error(), "not a live handle") != NULL);
        EXPECT(lf_trainer_step((lf_trainer *)freed, NULL) == LF_ERR_INVALID_ARGUMENT);
    }
    EXPECT(lf_chat(NULL, "[]", NULL, NULL, NULL, NULL) == LF_ERR_INVALID_ARGUMENT);
    EXPECT(lf_model_new(NULL, NULL, NULL, NULL) == LF_ERR_INVALID_ARGUMENT);
    lf_model *m = (lf_model *)&s;
    EXPECT(lf_model_new("/nonexistent/model.gguf", NULL, NULL, &m) == LF_ERR_IO && m == NULL);
    lf_model_free(NULL);
    lf_trainer_free(NULL);
    lf_string_free(NULL);
    EXPECT(strcmp(lf_last_error(), "") == 0); /* free(NULL) is a successful no-op */
    lf_trainer *t = NULL;
    EXPECT(lf_trainer_new_from_yaml("model_name_or_path: [unclosed", &t) == LF_ERR_CONFIG && t == NULL);
    EXPECT(lf_trainer_new_from_json("{\"no_such_key\": 1}", &t) == LF_ERR_CONFIG && t == NULL);
    EXPECT(strstr(lf_last_error(), "no_such_key") != NULL);
    lf_train_params p = lf_train_default_params();
    EXPECT(lf_trainer_new(&p, &t) == LF_ERR_INVALID_ARGUMENT && t == NULL); /* no model path */
    EXPECT(lf_export("/nonexistent.gguf", NULL, 42, "/tmp/x", NULL, &s) == LF_ERR_INVALID_ARGUMENT && s == NULL);
    EXPECT(lf_trainer_cancel(NULL) == LF_ERR_INVALID_ARGUMENT);
    printf("misuse detected as documented (last: %s)\n", lf_last_error());
}

static void chat(lf_model *m, int max_tokens) {
    char gen[64];
    snprintf(gen, sizeof gen, "{\"max_new_tokens\": %d}", max_tokens);
    char *reply = NULL;
    int pieces = 0;
    printf("assistant: ");
    CHECK(lf_chat(m, "[{\"role\": \"user\", \"content\": \"Who are you?\"}]", gen, on_token, &pieces, &reply));
    printf("\n(%d pieces, reply \"%s\")\n", pieces, reply);
    EXPECT(reply != NULL && pieces >= 1);
    lf_string_free(reply);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf DATA_DIR OUT_DIR [nomodel|tiny]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *data = argv[2], *out = argv[3];
    int tiny = argc > 4 && strcmp(argv[4], "tiny") == 0;

    printf("libloraforge %s %s\n", lf_version(), lf_build_features());
    char *devices = NULL;
    CHECK(lf_devices(&devices));
    printf("devices: %s\n", devices);
    lf_string_free(devices);

    if (argc > 4 && strcmp(argv[4], "nomodel") == 0) {
        misuse(NULL);
        printf("OK (nomodel)\n");
        return 0;
    }
    if (tiny) {
        misuse(NULL);
        lf_model *m = NULL;
        CHECK(lf_model_new(model, NULL, NULL, &m));
        char *info = NULL;
        CHECK(lf_model_info(m, &info));
        printf("model: %s\n", info);
        lf_string_free(info);
        chat(m, 1);
        lf_model_free(m);
        misuse(m);
        printf("OK (tiny)\n");
        return 0;
    }

    /* ---- 1. train 3 steps, evaluate, save the adapter */
    char run1[1024], run2[1024], adapter[1024], gguf[1024];
    path_join(run1, sizeof run1, out, "run1");
    path_join(run2, sizeof run2, out, "run2");
    path_join(adapter, sizeof adapter, out, "adapter");
    path_join(gguf, sizeof gguf, out, "gguf_adapter");
    lf_train_params p = params_for(model, data, run1);
    lf_trainer *t = NULL;
    CHECK(lf_trainer_new(&p, &t));
    int steps = 0;
    printf("training %s\n", run1);
    CHECK(lf_trainer_run(t, on_progress, &steps));
    EXPECT(steps == 3);
    EXPECT(lf_trainer_step(t, NULL) == LF_ERR_STATE); /* finished */
    double eval_loss = NAN;
    CHECK(lf_trainer_evaluate(t, &eval_loss));
    printf("eval_loss %.4f\n", eval_loss);
    EXPECT(isfinite(eval_loss) && eval_loss > 0);
    CHECK(lf_trainer_save_adapter(t, adapter));
    lf_trainer_free(t);

    /* ---- 2. a second run, cancelled from the callback after one step, then resumed */
    p = params_for(model, data, run2);
    CHECK(lf_trainer_new(&p, &t));
    printf("training %s (cancelled after one step)\n", run2);
    int st = lf_trainer_run(t, cancel_after_one, NULL);
    EXPECT(st == LF_ERR_CANCELLED);
    printf("cancelled: %s\n", lf_last_error());
    EXPECT(strstr(lf_last_error(), "checkpoint-1") != NULL);
    lf_trainer_free(t);
    p.resume_from_checkpoint = 1;
    CHECK(lf_trainer_new(&p, &t));
    lf_progress pr;
    CHECK(lf_trainer_step(t, &pr));
    printf("resumed: step %lld/%lld loss %.4f\n", (long long)pr.step, (long long)pr.total, pr.loss);
    EXPECT(pr.step == 2 && pr.total == 3);
    char *info = NULL;
    CHECK(lf_trainer_info(t, &info));
    printf("trainer: %.200s...\n", info);
    lf_string_free(info);
    lf_trainer_free(t);

    /* ---- 3. export the first adapter as a llama.cpp GGUF LoRA */
    char *report = NULL;
    CHECK(lf_export(model, adapter, LF_EXPORT_GGUF_ADAPTER, gguf, NULL, &report));
    printf("export: %s\n", report);
    EXPECT(strstr(report, "adapter.gguf") != NULL);
    lf_string_free(report);

    /* ---- 4. chat with base + trained adapter */
    lf_model *m = NULL;
    CHECK(lf_model_new(model, adapter, NULL, &m));
    chat(m, 8);
    lf_model_free(m);
    misuse(m);
    printf("OK\n");
    return 0;
}
