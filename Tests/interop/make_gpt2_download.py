"""Writes a small checkpoint laid out like a GPT-2 download from the Hugging Face hub, made with the
`safetensors` library: names without the `transformer.` prefix, half precision (F16), the causal
mask buffers (`h.N.attn.bias`) stored beside the weights, and a position table longer than the job's
context. hydra-mpi must start from it (`[model] init`) exactly as GPT2LMHeadModel would.

usage: make_gpt2_download.py FOLDER LAYERS D_MODEL N_POSITIONS
"""
import json
import sys

import numpy as np
from safetensors.numpy import save_file

folder, layers, C, positions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
V = 256
rng = np.random.default_rng(5)
w = {
    "wte.weight": rng.normal(0, 0.3, (V, C)),
    "wpe.weight": rng.normal(0, 0.1, (positions, C)),
    "ln_f.weight": 1 + rng.normal(0, 0.1, C),
    "ln_f.bias": rng.normal(0, 0.1, C),
}
for l in range(layers):
    p = f"h.{l}."
    w[p + "ln_1.weight"] = 1 + rng.normal(0, 0.1, C)
    w[p + "ln_1.bias"] = rng.normal(0, 0.1, C)
    w[p + "attn.c_attn.weight"] = rng.normal(0, 0.2, (C, 3 * C))
    w[p + "attn.c_attn.bias"] = rng.normal(0, 0.1, 3 * C)
    w[p + "attn.c_proj.weight"] = rng.normal(0, 0.2, (C, C))
    w[p + "attn.c_proj.bias"] = rng.normal(0, 0.1, C)
    w[p + "ln_2.weight"] = 1 + rng.normal(0, 0.1, C)
    w[p + "ln_2.bias"] = rng.normal(0, 0.1, C)
    w[p + "mlp.c_fc.weight"] = rng.normal(0, 0.2, (C, 4 * C))
    w[p + "mlp.c_fc.bias"] = rng.normal(0, 0.1, 4 * C)
    w[p + "mlp.c_proj.weight"] = rng.normal(0, 0.2, (4 * C, C))
    w[p + "mlp.c_proj.bias"] = rng.normal(0, 0.1, C)
    w[p + "attn.bias"] = np.tril(np.ones((positions, positions))).reshape(1, 1, positions, positions)
w = {k: v.astype(np.float16) for k, v in w.items()}
save_file(w, f"{folder}/model.safetensors", metadata={"format": "pt"})
json.dump({"model_type": "gpt2", "n_layer": layers, "n_embd": C, "n_positions": positions}, open(f"{folder}/config.json", "w"))
