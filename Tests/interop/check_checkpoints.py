"""An independent oracle for hydra-mpi's checkpoints.

Reads a checkpoint with the `safetensors` library (not hydra-mpi's reader), rebuilds the model the
way Hugging Face's GPT2LMHeadModel (or torch's nn.Sequential of nn.Linear) defines it, in float64
numpy, evaluates it on the job's validation windows, and compares with the validation loss
hydra-mpi reported in summary.json. Names, shapes, layouts (Conv1D (in, out) vs Linear (out, in)),
the tied head, gelu_new, LayerNorm eps and the causal mask all have to agree for the losses to match.

usage: check_checkpoints.py OUTPUT_DIR   (the job's output folder; its job.toml says the rest)
"""
import json
import math
import sys
import tomllib

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gpt2_logits(w, cfg, idx):
    """idx: (B, T) int -> logits (B, T, V), GPT2LMHeadModel semantics, float64."""
    B, T = idx.shape
    C, H, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hs = C // H
    g = lambda name: w["transformer." + name].astype(np.float64)
    x = g("wte.weight")[idx] + g("wpe.weight")[np.arange(T)]
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        a = layer_norm(x, g(p + "ln_1.weight"), g(p + "ln_1.bias"), eps)
        qkv = a @ g(p + "attn.c_attn.weight") + g(p + "attn.c_attn.bias")  # Conv1D: (in, out)
        q, k, v = np.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, H, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        s[:, :, mask] = -np.inf
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        y = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ g(p + "attn.c_proj.weight") + g(p + "attn.c_proj.bias")
        m = layer_norm(x, g(p + "ln_2.weight"), g(p + "ln_2.bias"), eps)
        m = gelu_new(m @ g(p + "mlp.c_fc.weight") + g(p + "mlp.c_fc.bias"))
        x = x + m @ g(p + "mlp.c_proj.weight") + g(p + "mlp.c_proj.bias")
    x = layer_norm(x, g("ln_f.weight"), g("ln_f.bias"), eps)
    return x @ g("wte.weight").T  # lm_head tied to wte


def cross_entropy(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()


def check_gpt_init(folder, job, model, expected):
    """The job started from a GPT-2-style download (F16, no prefix, longer wpe) and trained with a
    learning rate too small to change an F32 weight: its loss is the download's own loss."""
    w = {("transformer." + k): v for k, v in load_file(f"{folder}/model.safetensors").items()}
    T = model["context"]
    w["transformer.wpe.weight"] = w["transformer.wpe.weight"][:T]
    cfg = {"n_embd": model["d_model"], "n_head": model["heads"], "layer_norm_epsilon": 1e-5, "n_layer": model["layers"]}
    return evaluate_gpt(w, cfg, job, model)


def evaluate_gpt(w, cfg, job, model):
    T, B = model["context"], job["train"]["batch_size"]
    data = np.fromfile(job["data"]["path"], dtype=np.uint8).astype(np.int64)
    n_val = int(math.floor(len(data) * job["data"]["validation_fraction"]))
    val = data[len(data) - n_val:]
    windows = min((len(val) - 1) // T, job["train"]["eval_batches"] * B)
    idx = np.stack([val[i * T:i * T + T] for i in range(windows)])
    tgt = np.stack([val[i * T + 1:i * T + T + 1] for i in range(windows)])
    return cross_entropy(gpt2_logits(w, cfg, idx), tgt)


def check_gpt(folder, job, model, expected):
    cfg = json.load(open(f"{folder}/config.json"))
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new", cfg
    assert cfg["tie_word_embeddings"] and cfg["resid_pdrop"] == 0.0
    with safe_open(f"{folder}/model.safetensors", framework="np") as f:
        assert f.metadata().get("format") == "pt", "transformers needs metadata format = pt"
    w = load_file(f"{folder}/model.safetensors")
    assert "lm_head.weight" not in w, "the head is tied and must not be stored"
    return evaluate_gpt(w, cfg, job, model)


def check_mlp(folder, job, model, expected):
    w = load_file(f"{folder}/model.safetensors")
    import gzip
    path = job["data"]["path"]
    opener = gzip.open if path.endswith(".gz") else open
    rows = np.loadtxt(opener(path, "rt"), delimiter=",", ndmin=2)
    assert job["data"].get("split", "last") == "last", "this check reproduces split = last only"
    n_val = int(math.floor(len(rows) * job["data"]["validation_fraction"]))
    val = rows[len(rows) - n_val:][: job["train"]["eval_batches"] * job["train"]["batch_size"]]
    label = job["data"]["label_column"] % rows.shape[1]
    x = np.delete(val, label, axis=1) * np.float32(job["data"]["feature_scale"])
    layers = len(model["hidden"]) + 1
    for i in range(layers):  # nn.Sequential(Linear, ReLU, ..., Linear): Linear i is entry 2i
        x = x @ w[f"{2 * i}.weight"].astype(np.float64).T + w[f"{2 * i}.bias"]
        if i < layers - 1:
            x = np.maximum(x, 0)
    return cross_entropy(x, val[:, label].astype(np.int64))


def main(out):
    job = tomllib.load(open(f"{out}/job.toml", "rb"))
    summary = json.load(open(f"{out}/summary.json"))
    checked = 0
    for m in summary["models"]:
        if m["status"] != "done":
            continue
        model, train = dict(job["model"]), dict(job["train"])
        for key, value in m["overrides"].items():
            table, name = key.split(".", 1)
            {"model": model, "train": train}[table][name] = value
        folder = f"{out}/checkpoints/{m['id']}"
        check = check_gpt if model["kind"] == "gpt" else check_mlp
        if model.get("init"):
            folder, check = model["init"], check_gpt_init
        loss = check(folder, dict(job, train=train), model, m["val_loss"])
        ok = abs(loss - m["val_loss"]) <= 1e-4 * max(1.0, abs(loss))
        print(f"{m['id']}: numpy {loss:.6f} vs hydra-mpi {m['val_loss']:.6f}: {'ok' if ok else 'MISMATCH'}")
        if not ok:
            sys.exit(1)
        checked += 1
    if checked == 0:
        sys.exit("no finished model to check")


if __name__ == "__main__":
    main(sys.argv[1])
