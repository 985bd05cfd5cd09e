"""Structured refinement: edits stay in the codec's grammar, and refinement recovers proportions."""
import dataclasses

import numpy as np

from img2cq import agreement, codec, structured
from img2cq.build import structure_views
from img2cq.data import draw_rng
from img2cq.sampler import sample_program


def test_every_edit_stays_a_codec_structure():
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(40):
        start = codec.parse(sample_program(draw_rng(5, "train", i)))
        before = codec.to_tokens(start)
        current = start
        for _ in range(10):
            current = structured.mutate(current, rng)
            assert codec.from_tokens(codec.to_tokens(current)) == current  # strict: every number in range
        assert codec.to_tokens(start) == before  # the input is never changed
        changed += current != start
    assert changed >= 35


def test_refinement_recovers_a_stretched_part(build_pool):
    target = codec.parse(sample_program(draw_rng(5, "train", 3)))
    first = target[0]
    stretched = [dataclasses.replace(first, scale=int(first.scale * 1.3), distance=int(first.distance * 0.6)), *target[1:]]
    reference = agreement.Masks.from_views(agreement.unpack_views(build_pool.map(structure_views, [target])[0]))
    start = structured.score_structures([stretched], reference, build_pool)[0]
    refined, score, evaluated = structured.refine(stretched, reference, build_pool, seconds=6.0, start_score=start)
    assert evaluated >= 16 and score > start + 0.03
    assert score == structured.score_structures([refined], reference, build_pool)[0]
