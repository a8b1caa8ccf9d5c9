#!/usr/bin/env python3
"""libloraforge from Python with ctypes only: train 2 LoRA steps with progress, then load the
model with the new adapter and chat, streaming tokens.

    cargo build -p loraforge-ffi
    python3 ffi/examples/finetune.py MODEL.gguf DATA_DIR OUT_DIR [path/to/libloraforge.so]

Ownership (see ffi/include/loraforge.h): strings returned through `char **` are ours to free with
lf_string_free, so those parameters are declared c_void_p (a c_char_p result would be copied
and the pointer lost); handles go back with their _free call.
"""
import ctypes as C
import json
import os
import sys

model, data, out = sys.argv[1:4]
here = os.path.dirname(os.path.abspath(__file__))
lib_path = sys.argv[4] if len(sys.argv) > 4 else os.path.join(here, "..", "..", "target", "debug", "libloraforge.so")
lf = C.CDLL(lib_path)


class Progress(C.Structure):  # lf_progress
    _fields_ = [("step", C.c_int64), ("total", C.c_int64), ("loss", C.c_double), ("lr", C.c_double),
                ("grad_norm", C.c_double), ("tokens_per_s", C.c_double), ("eta_s", C.c_double),
                ("epoch", C.c_double), ("eval_loss", C.c_double)]


class TrainParams(C.Structure):  # lf_train_params, field for field
    _fields_ = [(n, C.c_char_p) for n in ("model_name_or_path", "dataset", "dataset_dir", "output_dir",
                                          "template_name", "lora_target", "extra_json")] + [
        ("lora_rank", C.c_int32), ("lora_alpha", C.c_double), ("lora_dropout", C.c_double),
        ("learning_rate", C.c_double), ("num_train_epochs", C.c_double), ("max_steps", C.c_int64),
        ("per_device_train_batch_size", C.c_int32), ("gradient_accumulation_steps", C.c_int32),
        ("cutoff_len", C.c_int32), ("max_samples", C.c_int64), ("val_size", C.c_double),
        ("logging_steps", C.c_int32), ("save_steps", C.c_int32), ("seed", C.c_uint64),
        ("quantization_bit", C.c_int32), ("overwrite_output_dir", C.c_int32), ("resume_from_checkpoint", C.c_int32)]


PROGRESS_CB = C.CFUNCTYPE(C.c_int, C.POINTER(Progress), C.c_void_p)
TOKEN_CB = C.CFUNCTYPE(C.c_int, C.c_char_p, C.c_void_p)
lf.lf_version.restype = C.c_char_p
lf.lf_last_error.restype = C.c_char_p
lf.lf_train_default_params.restype = TrainParams
lf.lf_trainer_new.argtypes = [C.POINTER(TrainParams), C.POINTER(C.c_void_p)]
lf.lf_trainer_run.argtypes = [C.c_void_p, PROGRESS_CB, C.c_void_p]
lf.lf_trainer_save_adapter.argtypes = [C.c_void_p, C.c_char_p]
lf.lf_trainer_free.argtypes = [C.c_void_p]
lf.lf_model_new.argtypes = [C.c_char_p, C.c_char_p, C.c_char_p, C.POINTER(C.c_void_p)]
lf.lf_model_free.argtypes = [C.c_void_p]
lf.lf_chat.argtypes = [C.c_void_p, C.c_char_p, C.c_char_p, TOKEN_CB, C.c_void_p, C.POINTER(C.c_void_p)]
lf.lf_string_free.argtypes = [C.c_void_p]


def check(status):
    if status != 0:
        raise RuntimeError(f"status {status}: {lf.lf_last_error().decode()}")


print("libloraforge", lf.lf_version().decode())

# ---- train 2 steps
p = lf.lf_train_default_params()
p.model_name_or_path, p.dataset, p.dataset_dir = model.encode(), b"demo_identity", data.encode()
p.output_dir, p.lora_target = os.path.join(out, "run").encode(), b"q_proj,v_proj"
p.lora_rank, p.learning_rate, p.max_steps = 4, 1e-3, 2
p.per_device_train_batch_size, p.cutoff_len, p.max_samples, p.save_steps = 2, 64, 16, 0
trainer = C.c_void_p()
check(lf.lf_trainer_new(C.byref(p), C.byref(trainer)))


@PROGRESS_CB
def on_progress(pr, _user):
    pr = pr.contents
    print(f"step {pr.step}/{pr.total} loss {pr.loss:.4f} lr {pr.lr:.2e}", flush=True)
    return 0  # nonzero would cancel


check(lf.lf_trainer_run(trainer, on_progress, None))
adapter = os.path.join(out, "adapter")
check(lf.lf_trainer_save_adapter(trainer, adapter.encode()))
lf.lf_trainer_free(trainer)

# ---- chat with base + adapter, streamed
m = C.c_void_p()
check(lf.lf_model_new(model.encode(), adapter.encode(), None, C.byref(m)))
pieces = []


@TOKEN_CB
def on_token(piece, _user):
    pieces.append(piece.decode())
    print(pieces[-1], end="", flush=True)
    return 0


reply = C.c_void_p()
messages = json.dumps([{"role": "user", "content": "Who are you?"}]).encode()
check(lf.lf_chat(m, messages, b'{"max_new_tokens": 6}', on_token, None, C.byref(reply)))
text = C.string_at(reply).decode()
lf.lf_string_free(reply)
lf.lf_model_free(m)
print()
assert text == "".join(pieces), (text, pieces)
print("OK (python)")
