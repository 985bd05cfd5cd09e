"""Training throughput and peak memory of each model preset on this machine.

    python benchmarks/bench_train.py [--presets tiny small base] [--batch-size 4] [--steps 3] [--threads N]

Each preset runs in its own process (so peak RSS is its own): one warm-up step, then ``--steps``
timed optimiser steps on real sampler programs (median-length ones) with GenCAD-sized images.
Prints a markdown table.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def measure(preset: str, batch_size: int, steps: int, threads: int | None) -> dict:
    import torch
    from PIL import Image, ImageDraw

    from img2cq.modeling import build_model, count_parameters
    from img2cq.sampler import sample_program
    from img2cq.training import Collator

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    programs = sorted((sample_program(rng) for _ in range(101)), key=len)[50 - batch_size // 2:][:batch_size]
    image = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(image).rectangle((60, 80, 380, 360), fill=(141, 141, 138), outline=(0, 0, 0))
    model, tokenizer, processor = build_model(preset)
    batch = Collator(tokenizer, processor)([{"image": image, "cadquery": p} for p in programs])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up: allocations, optimiser state
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"preset": preset, "parameters": count_parameters(model),
            "image_size": processor.size["height"], "tokens_per_sample": float((batch["labels"] != -100).sum()) / batch_size,
            "samples_per_s": batch_size * steps / seconds, "s_per_step": seconds / steps,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one preset in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size, args.steps, args.threads)))
        return 0

    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"batch {args.batch_size}, {args.steps} timed steps, CPU only")
    print("| preset | parameters | image | tokens/sample | samples/s | s/step | peak RSS (MiB) | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps)] + (["--threads", str(args.threads)] if args.threads else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {preset} | failed: {done.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {r['preset']} | {r['parameters'] / 1e6:.1f}M | {r['image_size']} | {r['tokens_per_sample']:.0f} | "
              f"{r['samples_per_s']:.2f} | {r['s_per_step']:.2f} | {r['peak_rss_mib']:.0f} | {r['threads']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
