"""The program codec: canonical round trips, exact GenCAD style, clear errors, constrained decoding."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2cq import codec
from img2cq.grammar import START, CodecGrammar, GrammarLogitsProcessor
from img2cq.modeling import Img2CQ, build_model
from img2cq.sampler import sample_program
from img2cq.tokenizer import decode_program, encode_program, load_codec_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "codec"
REAL_SAMPLE = ROOT / "benchmarks" / "real_dev" / "programs.jsonl"  # 131 real GenCAD-Code programs

HAND_WRITTEN = [
    'import cadquery as cq\nresult = cq.Workplane("XY").box(1, 2, 3)\n',
    "import cadquery as cq\nsolid = cq.Workplane('XY').circle(1).extrude(2).edges().fillet(0.1)\n",
    "import os\nsolid = 1\n",
    "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\n"
    "loop0=wp.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).close()\nsolid0=wp.add(loop0).extrude(x)\nsolid=solid0\n",
    "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\n"
    "loop0=wp.moveTo(0.0, 0.0).lineTo(1.0, 0.0).lineTo(1.0, 1.0).close()\nsolid0=wp.add(loop0).extrude(1.0)\n",
    "import cadquery as cq\nsolid = (\n",
    "import cadquery as cq\x00\n",
    "import cadquery as cq\nsolid = " + "-" * 100000 + "1\n",
    "",
]


@pytest.fixture(scope="module")
def sampler_programs():
    rng = np.random.default_rng(77)
    return [sample_program(rng) for _ in range(200)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_codec_tokenizer()


@pytest.fixture(scope="module")
def grammar(tokenizer):
    return CodecGrammar(tokenizer)


def test_sampler_programs_are_codec_fixed_points(sampler_programs):
    """The sampler prints through the codec: a codec target is exactly the program its image shows."""
    for program in sampler_programs:
        assert codec.canonical_program(program) == program


def test_sampler_programs_round_trip(sampler_programs, tokenizer):
    for program in sampler_programs:
        sketches = codec.parse(program)
        assert codec.from_tokens(codec.to_tokens(sketches)) == sketches
        canonical = codec.to_program(sketches)
        assert codec.parse(canonical) == sketches  # the canonical form is a fixed point
        assert codec.canonical_program(canonical) == canonical
        ids = encode_program(tokenizer, program)
        assert decode_program(tokenizer, [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]) == canonical


@pytest.mark.parametrize("name", ["union", "both", "cut"])
def test_gencad_programs_on_the_grid_print_back_byte_for_byte(name):
    program = (FIXTURES / f"gencad_{name}.py").read_text()
    assert codec.canonical_program(program) == program


def test_arcs_keep_their_shape_and_plane_noise_is_dropped():
    program = (FIXTURES / "gencad_arcs.py").read_text()
    canonical = codec.canonical_program(program)
    number = r"-?\d+\.\d+(?:e-?\d+)?"
    import re

    original, rebuilt = (np.array([float(x) for x in re.findall(number, p)]) for p in (program, canonical))
    assert original.shape == rebuilt.shape and np.abs(original - rebuilt).max() < 2e-4

    noisy = program.replace("cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)",
                            "cq.Vector(1.0, 6.123233995736766e-17, -6.123233995736766e-17), "
                            "cq.Vector(6.123233995736766e-17, -1.0, 6.123233995736766e-17)")
    assert noisy != program
    assert "cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, -1.0, 0.0)" in codec.canonical_program(noisy)
    assert "e-17" not in codec.canonical_program(noisy)


def test_arc_midpoint_from_sweep():
    mid = codec.arc_midpoint((1.0, 0.0), (-1.0, 0.0), math.pi)  # ccw half circle through (0, 1)
    assert mid == pytest.approx((0.0, 1.0))
    assert codec.arc_midpoint((1.0, 0.0), (0.0, 1.0), -1.5 * math.pi) == pytest.approx(
        (-math.sqrt(0.5), -math.sqrt(0.5)))


def test_tilted_planes_round_trip():
    program = (FIXTURES / "gencad_union.py").read_text().replace(
        "cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)",
        "cq.Vector(0.7071067811865476, 0.0, -0.7071067811865475), cq.Vector(0.7071067811865475, 0.0, 0.7071067811865476)")
    sketches = codec.parse(program)
    assert sketches[0].plane.frame is None and sketches[0].plane.angles == (90, 0, 0)
    assert "cq.Vector(0.7071067811865476, 0.0, -0.7071067811865475)" in codec.to_program(sketches)


@pytest.mark.parametrize("program", HAND_WRITTEN)
def test_programs_outside_the_grammar_get_one_clear_error(program, tokenizer):
    with pytest.raises(codec.CodecError):
        codec.parse(program)
    with pytest.raises(codec.CodecError):
        encode_program(tokenizer, program)


def test_bad_token_sequences():
    tokens = codec.to_tokens(codec.parse((FIXTURES / "gencad_union.py").read_text()))
    for broken in (tokens[:-1], ["union"] + tokens[1:], tokens[:5] + ["close"] + tokens[6:], tokens + ["new"]):
        with pytest.raises(codec.CodecError):
            codec.from_tokens(broken)
    first_sketch = tokens[:tokens.index("union")]
    assert codec.from_tokens(tokens[:-3], strict=False) == codec.from_tokens(first_sketch)


def test_real_sample_parses():
    programs = [json.loads(line)["cadquery"] for line in REAL_SAMPLE.open()]
    for program in programs:
        assert codec.parse(codec.canonical_program(program)) == codec.parse(program)


def test_grammar_accepts_every_encoded_sampler_program(sampler_programs, tokenizer, grammar):
    for program in sampler_programs:
        state = START
        for token in encode_program(tokenizer, program):
            assert token in grammar.options(state)
            state = grammar.step(state, token)
        assert tokenizer.eos_token_id in grammar.options(state)


def _random_walk(grammar, budget: int, rng: random.Random) -> list[int]:
    """Tokens drawn uniformly from what the processor allows, as sampling from flat logits would."""
    processor = GrammarLogitsProcessor(grammar, budget)
    ids = [grammar.tokenizer.bos_token_id]
    while len(ids) - 1 < budget:
        scores = torch.rand(1, grammar.vocab_size)
        allowed = torch.isfinite(processor(torch.tensor([ids]), scores))[0].nonzero().flatten().tolist()
        ids.append(rng.choice(allowed))
        if ids[-1] == grammar.eos:
            break
    return ids


@pytest.mark.parametrize("budget", [13, 14, 20, 40, 200])
def test_every_constrained_walk_finishes_within_its_budget(grammar, tokenizer, budget):
    rng = random.Random(budget)
    for _ in range(30):
        ids = _random_walk(grammar, budget, rng)
        assert ids[-1] == tokenizer.eos_token_id and len(ids) - 1 <= budget
        tokens = tokenizer.convert_ids_to_tokens(ids[1:-1])
        program = codec.to_program(codec.from_tokens(tokens))  # strict: a complete program
        assert decode_program(tokenizer, ids) == program
        codec.parse(program)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    model, tokenizer, processor = build_model("tiny")
    return Img2CQ(model, tokenizer, processor, device="cpu")


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("decoding", [dict(num_beams=1), dict(num_beams=3),
                                      dict(do_sample=True, num_return_sequences=3)])
def test_random_model_sequences_parse_and_close(tiny_model, decoding):
    budget = 30
    pixels = tiny_model.pixel_values(_images(3))
    out = tiny_model.model.generate(pixel_values=pixels, max_new_tokens=budget, **decoding,
                                    **tiny_model.generation_constraints(budget))
    tok = tiny_model.tokenizer
    for seq in out.tolist():
        assert tok.eos_token_id in seq[1:], "a cut sequence must be closed within max_new_tokens"
        body = seq[1:seq.index(tok.eos_token_id, 1)]
        codec.from_tokens(tok.convert_ids_to_tokens(body))
        assert codec.parse(decode_program(tok, seq))


def test_generate_uses_the_grammar_and_only_geometry_can_fail(tiny_model):
    from img2cq.sandbox import Executor

    programs = tiny_model.generate(_images(2), max_new_tokens=25) + tiny_model.generate(_images(1), num_beams=2,
                                                                                          max_new_tokens=40)
    assert all(codec.parse(p) for p in programs)
    with Executor(workers=1) as ex:
        for result in ex.map(programs, mesh=False):
            assert result.ok or result.error_kind in ("runtime", "empty", "invalid_shape"), result.message
            assert not any(e in result.message for e in ("NameError", "TypeError", "AttributeError", "SyntaxError"))
