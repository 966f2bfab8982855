"""The peer a hydra-mpi user would otherwise run: the same sweep of GPT models trained in PyTorch,
one model after another, in one process. Scripts/bench-peer runs it (in a virtual environment of its
own; PyTorch is a benchmark dependency, never one of hydra-mpi's).

Each model: GPT-2 blocks (token + position embedding, pre-LayerNorm blocks with causal multi-head
attention and a 4x tanh-GELU MLP, final LayerNorm, head tied to the token embedding, no dropout),
weights ~ N(0, 0.02) and the residual projections ~ N(0, 0.02 / sqrt(2 layers)), AdamW with
weight decay on matrices only, a constant learning rate; byte-level text as tokens, random
windows of `context + 1` bytes; one evaluation on the validation split at the end; then its
weights and AdamW moments written with safetensors (what hydra-mpi's final checkpoint holds), each
file fsynced.

Usage: torch_sweep.py --data FILE --out DIR --lrs 1e-4,3e-4 [--layers 12 --d-model 768 ...]
Prints one JSON line: the wall time of each model and of the whole run.
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, d, heads, context, vocab):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # the head tied to the token embedding


def windows(data, count, context, generator):
    starts = torch.randint(0, len(data) - context - 1, (count,), generator=generator)
    x = torch.stack([data[s : s + context] for s in starts])
    y = torch.stack([data[s + 1 : s + context + 1] for s in starts])
    return x, y


def fsynced_save(tensors, path):
    save_file(tensors, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def train_one(args, lr, index, data, validation):
    torch.manual_seed(args.seed + index)
    model = GPT(args.layers, args.d_model, args.heads, args.context, args.vocab)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(args.seed * 1000 + index)
    losses = []
    for _ in range(args.steps):
        x, y = windows(data, args.batch, args.context, g)
        loss = F.cross_entropy(model(x).view(-1, args.vocab), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        x, y = windows(validation, args.batch * args.eval_batches, args.context, g)
        val = F.cross_entropy(model(x).view(-1, args.vocab), y.view(-1)).item()
    out = os.path.join(args.out, f"m{index:03d}")
    os.makedirs(out, exist_ok=True)
    state = {n: p.detach().contiguous() for n, p in model.named_parameters()}
    fsynced_save(state, os.path.join(out, "model.safetensors"))
    moments = {}
    for n, p in model.named_parameters():
        s = optimizer.state[p]
        moments[n + ".exp_avg"] = s["exp_avg"].contiguous()
        moments[n + ".exp_avg_sq"] = s["exp_avg_sq"].contiguous()
    fsynced_save(moments, os.path.join(out, "optimizer.safetensors"))
    return losses, val


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--lrs", required=True, help="comma-separated learning rates, one model each")
    a.add_argument("--first-index", type=int, default=0)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--layers", type=int, default=12)
    a.add_argument("--d-model", type=int, default=768)
    a.add_argument("--heads", type=int, default=12)
    a.add_argument("--context", type=int, default=256)
    a.add_argument("--vocab", type=int, default=50257)
    a.add_argument("--batch", type=int, default=2)
    a.add_argument("--steps", type=int, default=6)
    a.add_argument("--eval-batches", type=int, default=1)
    a.add_argument("--weight-decay", type=float, default=0.1)
    a.add_argument("--seed", type=int, default=7)
    args = a.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    raw = torch.frombuffer(bytearray(open(args.data, "rb").read()), dtype=torch.uint8).long()
    cut = int(len(raw) * 0.95)
    data, validation = raw[:cut], raw[cut:]
    report = {"models": []}
    for i, lr in enumerate(float(v) for v in args.lrs.split(",")):
        t = time.perf_counter()
        losses, val = train_one(args, lr, args.first_index + i, data, validation)
        report["models"].append({"lr": lr, "seconds": time.perf_counter() - t, "train_loss": losses[-1], "val_loss": val})
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report))


if __name__ == "__main__":
    main()
