#!/usr/bin/env python3
"""Checks one finished hydra-mpi run against a reference run of the same job (Scripts/test-mpi).

usage: check_run.py REFERENCE OUTPUT [--min-moves N] [--min-tensors N] [--from-step N]

- every checkpoint file (weights and optimizer state, *.safetensors, and trainer_state.json with
  every training loss and evaluation so far) of the reference exists in OUTPUT with the same bytes,
  and OUTPUT has no other model checkpoints;
- every model ends with the same status, step count and validation loss (exactly);
- trace.json: on each device the boxes do not overlap, and every shard task of every trained step
  of every model appears exactly once;
- summary.json's coordinator stats: at least N shard moves / N tensors sent between processes, and
  no tensor left over on any rank (every message sent was taken by the task it was for).
Prints one line of figures; exits 1 with the reasons on failure.
"""
import argparse
import json
import os
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("output")
    parser.add_argument("--min-moves", type=int, default=0)
    parser.add_argument("--min-tensors", type=int, default=0)
    parser.add_argument("--from-step", type=int, default=0, help="a resumed run: its trace starts here")
    options = parser.parse_args()
    ref, out = options.reference, options.output
    problems = []

    def checkpoints(root):
        # Per model: the files at the top (what transformers loads) and those of its newest
        # checkpoint unit (step-N/). Older units depend on when a run was paused, so they are not
        # compared.
        found = {}
        base = os.path.join(root, "checkpoints")
        for model in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            folder = os.path.join(base, model)
            for f in os.listdir(folder):
                if f.endswith(".safetensors"):
                    found[f"{model}/{f}"] = os.path.join(folder, f)
            units = sorted(u for u in os.listdir(folder) if u.startswith("step-"))
            if units:
                unit = os.path.join(folder, units[-1])
                for f in os.listdir(unit):
                    found[f"{model}/{units[-1]}/{f}"] = os.path.join(unit, f)
        return found

    mine, theirs = checkpoints(out), checkpoints(ref)
    if not theirs:
        problems.append(f"the reference {ref} has no checkpoints")
    for name, path in sorted(theirs.items()):
        if name not in mine:
            problems.append(f"missing checkpoint {name}")
        elif open(path, "rb").read() != open(mine[name], "rb").read():
            problems.append(f"checkpoint {name} differs from the reference")
    for name in sorted(set(mine) - set(theirs)):
        problems.append(f"unexpected checkpoint {name}")

    s_ref = json.load(open(os.path.join(ref, "summary.json")))
    s_out = json.load(open(os.path.join(out, "summary.json")))
    models_ref = {m["id"]: m for m in s_ref["models"]}
    models_out = {m["id"]: m for m in s_out["models"]}
    if set(models_ref) != set(models_out):
        problems.append(f"models {sorted(models_out)} != reference {sorted(models_ref)}")
    for mid, m in models_ref.items():
        o = models_out.get(mid)
        if o is None:
            continue
        for key in ("status", "steps", "val_loss", "train_loss"):
            if m.get(key) != o.get(key):
                problems.append(f"{mid}: {key} {o.get(key)} != reference {m.get(key)}")

    events = [e for e in json.load(open(os.path.join(out, "trace.json")))["traceEvents"] if e.get("ph") == "X"]
    by_device = {}
    for e in events:
        by_device.setdefault(e["tid"], []).append(e)
    for device, boxes in by_device.items():
        boxes.sort(key=lambda e: e["ts"])
        for a, b in zip(boxes, boxes[1:]):
            if b["ts"] < a["ts"] + a["dur"]:
                problems.append(f"device {device}: {b['name']} overlaps {a['name']}")
                break
    seen = {}
    for e in events:
        if e.get("cat") != "shard":
            continue
        key = (e["args"]["model"], e["args"]["step"], e["args"]["task"])
        seen[key] = seen.get(key, 0) + 1
    twice = [k for k, n in seen.items() if n != 1]
    if twice:
        problems.append(f"tasks run more than once: {twice[:3]}")
    for mid, m in models_out.items():
        shards = len(m["shards"])
        # A diverged model stops after the forward that found the bad loss.
        trained = m["steps"] if m["status"] != "diverged" else m["diverged_at_step"]
        for step in range(options.from_step, trained):
            for s in range(shards):
                for d in ("fwd", "bwd"):
                    if (mid, step, f"s{s} {d}") not in seen:
                        problems.append(f"{mid}: no s{s} {d} at step {step} on the trace")
                        break

    c = s_out.get("coordinator", {})
    moves, tensors = c.get("shard_moves", 0), c.get("tensors_sent", 0)
    if moves < options.min_moves:
        problems.append(f"{moves} shard moves, expected at least {options.min_moves}")
    if tensors < options.min_tensors:
        problems.append(f"{tensors} tensors sent between processes, expected at least {options.min_tensors}")
    if c.get("tensors_left_over", 0) != 0:
        problems.append(f"{c['tensors_left_over']} tensors were never taken by a task (lost or crossed messages)")
    makespan = s_out["makespan_seconds"]
    print(
        f"{len(theirs)} checkpoint files identical; {len(seen)} tasks; {moves} shard moves; "
        f"{tensors} tensors sent ({tensors / max(makespan, 1e-9):.0f}/s over {makespan:.2f} s)"
    )
    if problems:
        print("\n".join("  " + p for p in problems[:20]))
        sys.exit(1)


if __name__ == "__main__":
    main()
