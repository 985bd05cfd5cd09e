"""Training throughput and peak memory of each model preset, or the padding of batches.

    python benchmarks/bench_train.py [--presets tiny small base] [--batch-size 4] [--steps 3] [--threads N]
    python benchmarks/bench_train.py --padding [--programs 3000] [--batch-sizes 8 16 32]

Each preset runs in its own process (so peak RSS is its own): one warm-up step, then ``--steps``
timed optimiser steps on real sampler programs (median-length ones) with GenCAD-sized images.
``--padding`` batches sampler programs in the training loop's own epoch order (random, or
length-grouped with several group sizes) and reports the share of computed decoder positions that
are real tokens. Both print a markdown table.
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
    from img2cq.training import make_collator

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    programs = sorted((sample_program(rng) for _ in range(101)), key=len)[50 - batch_size // 2:][:batch_size]
    image = Image.new("RGB", (448, 448), "white")
    ImageDraw.Draw(image).rectangle((60, 80, 380, 360), fill=(141, 141, 138), outline=(0, 0, 0))
    model, tokenizer, processor = build_model(preset)
    batch = make_collator(model, tokenizer, processor)([{"image": image, "cadquery": p} for p in programs])
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


def padding(n_programs: int, batch_sizes: list[int], groups: list[int], max_program_tokens: int | None) -> None:
    """Real-token share of one epoch's batches, as the loop orders them (labels = tokens + eos)."""
    from img2cq.modeling import MAX_PROGRAM_TOKENS
    from img2cq.sampler import sample_program
    from img2cq.tokenizer import load_tokenizer
    from img2cq.training import TrainingArguments, epoch_order, program_lengths

    rng = np.random.default_rng(0)
    programs = [sample_program(rng) for _ in range(n_programs)]
    lengths = [min(n, MAX_PROGRAM_TOKENS - 1) + 1 for n in program_lengths(programs, load_tokenizer())]
    usable = [i for i, n in enumerate(lengths) if not max_program_tokens or n - 1 <= max_program_tokens]
    print(f"{len(usable)} sampler programs (seed 0{f', at most {max_program_tokens} tokens' if max_program_tokens else ''}): "
          f"mean {np.mean([lengths[i] for i in usable]):.0f}, median {np.median([lengths[i] for i in usable]):.0f} "
          "label tokens; one epoch of whole batches, seed 42")
    print("| batch | order | real tokens / computed positions | computed / real |")
    print("|---|---|---|---|")
    for batch_size in batch_sizes:
        for group in [None, *groups]:
            args = TrainingArguments(batch_size=batch_size, group_by_length=group is not None,
                                     length_group_batches=group or 1)
            order = epoch_order(usable, lengths, args, epoch=0)
            batches = [[lengths[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
            real = sum(sum(b) for b in batches)
            computed = sum(len(b) * max(b) for b in batches)
            name = "random" if group is None else f"grouped, {group} batches per group"
            print(f"| {batch_size} | {name} | {real / computed:.3f} | {computed / real:.2f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one preset in this process
    parser.add_argument("--padding", action="store_true", help="measure batch padding instead of speed")
    parser.add_argument("--programs", type=int, default=3000, help="--padding: sampler programs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32], help="--padding: batch sizes")
    parser.add_argument("--groups", type=int, nargs="+", default=[4, 16, 50],
                        help="--padding: batches per length group (--length-group-batches)")
    parser.add_argument("--max-program-tokens", type=int, default=None, help="--padding: as in training")
    args = parser.parse_args()
    if args.padding:
        padding(args.programs, args.batch_sizes, args.groups, args.max_program_tokens)
        return 0
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
