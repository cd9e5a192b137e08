#!/usr/bin/env python3
"""`trainer bench` against the reference PyTorch step, back to back, in pairs.

Each pair runs `trainer bench` (a release build) and `torch_msn_step.py` with the same model,
batch, views and EHR width, one after the other on the same machine, and prints both images/s,
their ratio (burn / PyTorch), the step parts and peak memory. The order alternates (burn first
in odd pairs, PyTorch first in even ones), so a machine that speeds up or slows down over the
pairs does not favour one side. After all pairs it prints the best, median and worst ratio:
the figures the README's `trainer bench` table quotes.

    python3 trainer/bench/compare_torch.py --pairs 3
    python3 trainer/bench/compare_torch.py --trainer target/release/trainer --model vit-small \
        --batch-size 16 --steps 5 --warmup 1

It needs `torch` in the Python that runs it (the Rust build never does).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# `--ehr demographics,scan,stay` is 13 columns wide (`trainer ehr-columns`).
EHR_WIDTH = {"demographics,scan,stay": 13, "none": 0}


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out.stdout


def burn(args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        cmd = [args.trainer, "bench", "--model", args.model, "--batch-size", str(args.batch_size),
               "--ehr", args.ehr, "--steps", str(args.steps), "--warmup", str(args.warmup), "--json", path]
        run(cmd)
        with open(path) as f:
            return json.load(f)


def torch(args):
    cmd = [sys.executable, os.path.join(HERE, "torch_msn_step.py"), "--model", args.model,
           "--batch-size", str(args.batch_size), "--ehr-width", str(args.ehr_width),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    last = run(cmd).strip().splitlines()[-1]
    return json.loads(last)


def parts(r):
    s = r["seconds"]
    return f"forward {s['forward']:.2f} s, backward {s['backward']:.2f} s, step {s['step']:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", default=os.path.join(ROOT, "target", "release", "trainer"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--model", default="vit-tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ehr", default="demographics,scan,stay")
    ap.add_argument("--ehr-width", type=int, default=None, help="default: the width of --ehr")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if args.ehr_width is None:
        if args.ehr not in EHR_WIDTH:
            ap.error(f"give --ehr-width for --ehr {args.ehr} (`trainer ehr-columns --ehr {args.ehr}` prints it)")
        args.ehr_width = EHR_WIDTH[args.ehr]
    if not os.path.exists(args.trainer):
        ap.error(f"{args.trainer} not found: build it with `cargo build --release -p trainer-cli` or give --trainer")

    ratios = []
    for pair in range(1, args.pairs + 1):
        if pair % 2:
            b = burn(args)
            t = torch(args)
        else:
            t = torch(args)
            b = burn(args)
        ratio = b["images_per_second"] / t["images_per_second"]
        ratios.append(ratio)
        print(f"pair {pair}: burn {b['images_per_second']:.2f} images/s ({parts(b)}, peak RSS {b['peak_rss_mb']:.0f} MB)")
        print(f"        pytorch {t['version']} {t['images_per_second']:.2f} images/s ({parts(t)}, peak RSS {t['peak_rss_mb']:.0f} MB)")
        print(f"        ratio {ratio:.2f}x", flush=True)
    middle = statistics.median(ratios)
    print(f"{args.model}, batch {args.batch_size}, {args.pairs} pairs: burn / PyTorch best {max(ratios):.2f}x, "
          f"median {middle:.2f}x, worst {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
