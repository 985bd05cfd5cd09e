"""The program tokenizers: the codec's (dispatch, loading, length) and the BPE (exact round trips,
transformers loading, number handling options)."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from img2cq.sampler import sample_program
from img2cq.codec import CodecError, canonical_program
from img2cq.tokenizer import (BOS, CODEC_ASSET_PATH, EOS, NUMBER_MODES, PAD, build_codec_tokenizer, decode_program,
                              encode_program, is_codec_tokenizer, load_codec_tokenizer, load_tokenizer,
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


@pytest.fixture(scope="module")
def codec_tokenizer():
    return load_codec_tokenizer()


def test_shipped_codec_tokenizer_is_the_built_one(codec_tokenizer):
    assert codec_tokenizer.get_vocab() == build_codec_tokenizer().get_vocab()
    assert CODEC_ASSET_PATH.read_text() == build_codec_tokenizer().backend_tokenizer.to_str(pretty=True)


def test_dispatch_on_the_tokenizer(tokenizer, codec_tokenizer, programs):
    assert is_codec_tokenizer(codec_tokenizer) and not is_codec_tokenizer(tokenizer)
    ids = encode_program(codec_tokenizer, programs[0])
    assert decode_program(codec_tokenizer, ids) == canonical_program(programs[0])
    assert decode_program(tokenizer, encode_program(tokenizer, programs[0])) == programs[0]
    with pytest.raises(CodecError):
        encode_program(codec_tokenizer, EDGE_CASES[1])


def test_codec_special_tokens_match_the_bpe(tokenizer, codec_tokenizer):
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(codec_tokenizer, name) == getattr(tokenizer, name)


def test_autotokenizer_loads_a_saved_codec_tokenizer(codec_tokenizer, programs, tmp_path):
    codec_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert is_codec_tokenizer(loaded) and loaded.eos_token_id == codec_tokenizer.eos_token_id
    for program in programs[:20]:
        ids = encode_program(loaded, program)
        assert ids == encode_program(codec_tokenizer, program)
        assert decode_program(loaded, ids) == canonical_program(program)


def test_codec_is_at_least_four_times_shorter(tokenizer, codec_tokenizer, programs):
    bpe = sum(len(encode_program(tokenizer, p)) for p in programs)
    codec = sum(len(encode_program(codec_tokenizer, p)) for p in programs)
    assert codec * 4 <= bpe
