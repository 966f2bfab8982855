"""Reads a run's TensorBoard event files with TensorBoard's own reader and checks them against
metrics.csv.

Usage: check_tensorboard.py OUTPUT_FOLDER [RUNS]

For every model in metrics.csv, <output>/tensorboard/<model>/ holds RUNS event files (one per run
of the job: a resumed run adds one) named events.out.tfevents.<seconds>.<host>, and TensorBoard's
EventAccumulator, which applies the purge of a resumed run's SessionLog START, shows:
  loss/train, lr      one point per train row, same steps; loss within float32 and the CSV's 6
                      decimals, lr exactly (the CSV prints the float32's shortest form)
  loss/val, accuracy/val  one point per val row, likewise
and nothing else.
"""

import csv
import math
import os
import re
import sys

import numpy

from tensorboard.backend.event_processing import event_accumulator


def close(seen, expected):
    if math.isnan(expected):
        return math.isnan(seen)
    return abs(seen - expected) <= 1e-6 * (1 + abs(expected))


def main():
    output = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rows = {}
    with open(os.path.join(output, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["model"], []).append(row)
    assert rows, f"{output}/metrics.csv has no rows"
    host = re.escape(os.uname().nodename.replace("/", "_"))
    points = 0
    for model, mine in sorted(rows.items()):
        folder = os.path.join(output, "tensorboard", model)
        names = sorted(os.listdir(folder))
        assert len(names) == runs, f"{folder}: {names}, expected {runs} event file(s)"
        for name in names:
            assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\." + host, name), name
        acc = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        tags = sorted(acc.Tags()[event_accumulator.SCALARS])
        wanted = {"loss/train", "lr"} | ({"loss/val", "accuracy/val"} if any(r["split"] == "val" for r in mine) else set())
        assert set(tags) == wanted, f"{model}: tags {tags}, expected {sorted(wanted)}"
        for split, tag, column, exact in [
            ("train", "loss/train", "loss", False),
            ("train", "lr", "lr", True),
            ("val", "loss/val", "loss", False),
            ("val", "accuracy/val", "accuracy", False),
        ]:
            expected = [r for r in mine if r["split"] == split]
            if not expected:
                continue
            seen = acc.Scalars(tag)
            steps = [e.step for e in seen]
            assert steps == [int(r["step"]) for r in expected], f"{model} {tag}: steps {steps}"
            for e, r in zip(seen, expected):
                value = float(r[column])
                if exact:
                    # The event holds a float32; the CSV its shortest decimal form.
                    ok = e.value == float(numpy.float32(r[column]))
                else:
                    ok = close(e.value, value)
                assert ok, f"{model} {tag} step {e.step}: {e.value} in the event file, {r[column]} in metrics.csv"
                points += 1
    print(f"tensorboard: {output}: {len(rows)} model(s), {points} scalars agree with metrics.csv")


if __name__ == "__main__":
    main()
