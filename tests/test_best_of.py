"""Best-of-N decoding keeps the first candidate that builds a valid solid, else the greedy program."""

import pytest
import torch
from PIL import Image

from img2cq.modeling import Img2CQ, build_model, pick_first_valid
from img2cq.tokenizer import encode_program

pytestmark = pytest.mark.integration


def test_pick_first_valid_keeps_the_first_that_builds(executor, reference_programs):
    box, cylinder = reference_programs["gencad_box"], reference_programs["cylinder"]
    broken = [reference_programs["syntax_error"], reference_programs["not_a_shape"]]
    assert pick_first_valid([*broken, cylinder, box], executor) == cylinder
    assert pick_first_valid([box, cylinder], executor) == box
    assert pick_first_valid(broken, executor) == broken[0]


def test_generate_best_of_selects_per_image(executor, reference_programs):
    """The decoder is replaced by a script of programs, so the choice made for each image is known."""
    p = reference_programs
    greedy = [p["syntax_error"], p["gencad_box"], p["runtime_error"]]
    sampled = [[p["no_solid"], p["cylinder"]],        # image 0: greedy fails -> the first valid sample
               [p["cylinder"], p["box"]],             # image 1: greedy builds -> kept, samples ignored
               [p["not_a_shape"], p["syntax_error"]]]  # image 2: nothing builds -> the greedy program
    model, tokenizer, processor = build_model("tiny", tokenizer="bpe")  # any program text can be scripted
    generator = Img2CQ(model, tokenizer, processor, device="cpu")
    calls = []

    def scripted_generate(pixel_values, do_sample=False, num_return_sequences=1, **kwargs):
        calls.append((len(pixel_values), do_sample, num_return_sequences))
        programs = [s for per_image in sampled for s in per_image] if do_sample else greedy
        ids = [[tokenizer.bos_token_id, *encode_program(tokenizer, s), tokenizer.eos_token_id] for s in programs]
        width = max(map(len, ids))
        return torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])

    generator.model.generate = scripted_generate
    images = [Image.new("RGB", (64, 64), "white") for _ in greedy]
    chosen = generator.generate(images, best_of=3, executor=executor)
    assert chosen == [p["cylinder"], p["gencad_box"], p["runtime_error"]]
    assert calls == [(3, False, 1), (3, True, 2)]  # one greedy pass, then N-1 samples per image
    calls.clear()
    assert generator.generate(images, executor=executor) == greedy and calls == [(3, False, 1)]
