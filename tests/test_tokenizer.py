"""The program tokenizer: exact round trips, transformers loading, number handling options."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from img2cq.sampler import sample_program
from img2cq.tokenizer import (BOS, EOS, NUMBER_MODES, PAD, decode_program, encode_program, load_tokenizer,
                              train_tokenizer)

EDGE_CASES = [
    "solid=wp.moveTo(6.123233995736766e-17, -1.8369701987210297e-16).circle(0.24753289473684212)\n",
    "x = 1e-300 ; y=-0.0\t# tab and  double  spaces   \n\n\n",
    "s = 'unicode: µm, Ø 3 mm, 寸'  \r\n",
    " leading space and trailing space ",
    "",
]


@pytest.fixture(scope="module")
def programs():
    rng = np.random.default_rng(1234)
    return [sample_program(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_shipped_tokenizer_round_trips_every_program(tokenizer, programs):
    for program in programs + EDGE_CASES:
        assert decode_program(tokenizer, encode_program(tokenizer, program)) == program


def test_special_tokens_are_distinct_and_skipped(tokenizer, programs):
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(ids) == 3 and None not in ids
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, PAD)
    body = encode_program(tokenizer, programs[0])
    assert not ids & set(body)
    wrapped = [tokenizer.bos_token_id] + body + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert decode_program(tokenizer, wrapped) == programs[0]


def test_compresses_programs(tokenizer, programs):
    tokens = sum(len(encode_program(tokenizer, p)) for p in programs)
    chars = sum(len(p) for p in programs)
    assert tokens < chars / 2


def test_autotokenizer_loads_a_saved_tokenizer(tokenizer, programs, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.pad_token_id == tokenizer.pad_token_id and loaded.eos_token_id == tokenizer.eos_token_id
    for program in programs[:20]:
        ids = encode_program(loaded, program)
        assert ids == encode_program(tokenizer, program)
        assert decode_program(loaded, ids) == program


@pytest.mark.parametrize("mode", NUMBER_MODES)
def test_training_each_number_mode_round_trips(programs, mode):
    tok = train_tokenizer(programs[:100], vocab_size=600, number_mode=mode)
    assert len(tok) <= 600
    for program in programs[100:150] + EDGE_CASES:
        assert decode_program(tok, encode_program(tok, program)) == program


def test_digit_modes_split_numbers(programs):
    number = "0.24753289473684212"
    digit1 = train_tokenizer(programs[:50], vocab_size=600, number_mode="digit1")
    assert len(encode_program(digit1, number)) == len(number)  # one token per character
    digit3 = train_tokenizer(programs[:50], vocab_size=600, number_mode="digit3")
    assert all(len(digit3.decode([t]).strip(".")) <= 3 for t in encode_program(digit3, number))
