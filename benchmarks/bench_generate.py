"""CPU generation time per image: greedy, batched, grammar-constrained for codec models.

    python benchmarks/bench_generate.py [--presets tiny compact] [--model DIR] [--batch-size 16]
                                        [--max-new-tokens 128] [--repeats 3] [--threads 1]
                                        [--eval-json SPLIT]

Times ``model.generate`` (encoder, greedy decoding and, for codec models, the grammar's logits
processor; decoding ids to text is not included) on one batch of GenCAD-sized drawings (or, with
``--eval-json``, the first test images of a split: what a trained model meets), after one warm-up
batch, and prints a markdown table: seconds per image (median of ``--repeats``), generated tokens
per image and tokens per second. A freshly initialised preset writes arbitrary lengths, so its
sequences are capped at ``--max-new-tokens``: compare presets by tokens/s, or
multiply the per-token time by the length of real programs (median ~33 codec tokens, see
``benchmarks/bench_codec.py``). Say what else ran on the machine (the load is printed).

``--vsr``: also run every generated program in the sandbox and count the failures by kind and
message (for a codec model under the grammar, no failure can be a syntax error: every program
parses, so what fails is geometry).
"""

import argparse
import os
from collections import Counter
import statistics
import sys
import time
from pathlib import Path


def _images(n: int, eval_json: str | None = None):
    from PIL import Image, ImageDraw

    if eval_json:
        from img2cq.data import load_split

        split = load_split(eval_json)
        return [split[i]["image"].convert("RGB") for i in range(min(n, len(split)))]
    out = []
    for i in range(n):
        im = Image.new("RGB", (448, 448), "white")
        ImageDraw.Draw(im).rectangle((60 + 5 * i, 80, 380, 360 - 5 * i), fill=(141, 141, 138), outline=(0, 0, 0))
        out.append(im)
    return out


def measure(generator, label: str, batch_size: int, max_new_tokens: int, repeats: int,
            eval_json: str | None = None) -> dict:
    import torch

    pixels = generator.pixel_values(_images(batch_size, eval_json))
    pad = generator.tokenizer.pad_token_id

    def run():
        start = time.perf_counter()
        with torch.no_grad():
            out = generator.model.generate(pixel_values=pixels, do_sample=False, num_beams=1,
                                           max_new_tokens=max_new_tokens,
                                           **generator.generation_constraints(max_new_tokens))
        seconds = time.perf_counter() - start
        return seconds, int((out[:, 1:] != pad).sum()), out

    run()  # warm-up
    timings = [run() for _ in range(repeats)]
    seconds = statistics.median(t for t, _, _ in timings)
    tokens = statistics.median(n for _, n, _ in timings)
    return {"model": label, "tokenizer": "codec" if generator.grammar is not None else "bpe",
            "s/image": seconds / batch_size, "tokens/image": tokens / batch_size, "tokens/s": tokens / seconds,
            "programs": generator.decode(timings[-1][2])}


def failure_kinds(programs: list[str], executor) -> Counter:
    """Validity of programs in the sandbox: "valid", else "kind: first words of the message"."""
    kinds = Counter()
    for r in executor.map(programs, mesh=False):
        kinds["valid" if r.ok else f"{r.error_kind}: {' '.join(r.message.split()[:6])}"] += 1
    return kinds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=["tiny", "compact"], help="freshly initialised presets")
    parser.add_argument("--model", action="append", default=[], help="a saved model directory (repeatable)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--vsr", action="store_true", help="run the generated programs and count failure kinds")
    parser.add_argument("--eval-json", default=None, help="time on the first test images of this split, not drawings")
    args = parser.parse_args(argv)
    if args.eval_json and not Path(args.eval_json).is_file():
        parser.error(f"no split at {args.eval_json}")

    import torch

    from img2cq.modeling import Img2CQ, build_model, load_pretrained

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        model, tokenizer, processor = build_model(preset)
        rows.append(measure(Img2CQ(model, tokenizer, processor, device="cpu"), f"fresh {preset}",
                            args.batch_size, args.max_new_tokens, args.repeats, args.eval_json))
    for model_dir in args.model:
        rows.append(measure(load_pretrained(model_dir, device="cpu"), model_dir, args.batch_size,
                            args.max_new_tokens, args.repeats, args.eval_json))
    print(f"greedy, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {args.threads} torch thread(s), "
          f"images: {args.eval_json or 'drawings'}, load {os.getloadavg()[0]:.2f}\n")
    print("| model | tokenizer | s/image | tokens/image | tokens/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['tokenizer']} | {r['s/image']:.3f} | {r['tokens/image']:.1f} | {r['tokens/s']:.0f} |")
    if args.vsr:
        from img2cq.sandbox import Executor

        with Executor(workers=2) as ex:
            for r in rows:
                print(f"\n{r['model']}: {len(r['programs'])} programs")
                for kind, n in failure_kinds(r["programs"], ex).most_common():
                    print(f"  {n:4d}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
