"""Grammar-constrained decoding for the codec tokenizer: every sequence decodes to a program.

``CodecGrammar`` is the codec's token grammar (``img2cq.codec``) as a finite automaton over token
ids, with the fewest tokens each state needs to reach a finished program. ``GrammarLogitsProcessor``
is a ``transformers`` ``LogitsProcessor`` that, at every step and for every row (greedy, beam or
sampled, batched), allows only the tokens that keep the row a valid program prefix *and* leave
room to finish it within ``max_new_tokens``: a sequence that would be cut is steered to close its
loop, extrude and stop instead. What remains possible is only bad geometry (self-intersecting
loops, a cut that removes everything), never a program that does not parse.

Generation is a little stricter than the codec: a path loop needs two curves, or one arc.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from img2cq import codec

PLANE_SLOTS = ("origin", "origin", "origin", "scale")
TILTED_SLOTS = ("theta", "phi", "gamma", *PLANE_SLOTS)

# States (hashable tuples):
#   ("op", first)         the next sketch's op, or eos after a sketch
#   ("plane",)            a frame token or "tilted"
#   ("num", slots, then)  numbers for the given slots, then state `then`
#   ("loop", any_loops)   circle | move | (extrude | extrude_both once a loop exists)
#   ("seg", closable)     line | arc | (close once the path encloses an area); closable 0: nothing
#                         drawn yet, 1: one line, 2: closable
#   ("done",)             after eos: only eos / pad
START = ("op", True)
DONE = ("done",)


class CodecGrammar:
    """The codec token grammar over the ids of one codec tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.vocab_size = max(self.vocab.values()) + 1
        self._options: dict[tuple, dict[int, tuple]] = {}
        states = self._reachable()
        self.min_to_finish = self._min_to_finish(states)

    def _ids(self, *tokens: str) -> list[int]:
        return [self.vocab[t] for t in tokens]

    def _number_ids(self, slot: str) -> list[int]:
        low, high, zero = codec.number_range(slot)
        return [self.vocab[str(k)] for k in range(low, high + 1) if k or zero]

    def options(self, state: tuple) -> dict[int, tuple]:
        """Allowed token id -> next state."""
        if state in self._options:
            return self._options[state]
        kind = state[0]
        out: dict[int, tuple] = {}
        if kind == "op":
            first = state[1]
            for i in self._ids(*(("new",) if first else codec.OPS)):
                out[i] = ("plane",)
            if not first:
                out[self.eos] = DONE
        elif kind == "plane":
            for i in self._ids(*(f"plane{f}" for f in codec.FRAMES)):
                out[i] = ("num", PLANE_SLOTS, ("loop", False))
            out[self.vocab["tilted"]] = ("num", TILTED_SLOTS, ("loop", False))
        elif kind == "num":
            slots, then = state[1], state[2]
            following = ("num", slots[1:], then) if len(slots) > 1 else then
            out = dict.fromkeys(self._number_ids(slots[0]), following)
        elif kind == "loop":
            out[self.vocab["circle"]] = ("num", ("x", "y", "radius"), ("loop", True))
            out[self.vocab["move"]] = ("num", ("x", "y"), ("seg", 0))
            if state[1]:
                for t in ("extrude", "extrude_both"):
                    out[self.vocab[t]] = ("num", ("distance",), ("op", False))
        elif kind == "seg":
            closable = state[1]
            out[self.vocab["line"]] = ("num", ("x", "y"), ("seg", 1 if closable == 0 else 2))
            out[self.vocab["arc"]] = ("num", ("x", "y", "sweep"), ("seg", 2))
            if closable == 2:
                out[self.vocab["close"]] = ("loop", True)
        elif kind == "done":
            out = {self.eos: DONE, self.pad: DONE}
        self._options[state] = out
        return out

    def _reachable(self) -> set[tuple]:
        seen, todo = {START}, [START]
        while todo:
            for nxt in set(self.options(todo.pop()).values()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def _min_to_finish(self, states: set[tuple]) -> dict[tuple, int]:
        """Fewest tokens (eos included) from each state to a finished program (shortest paths)."""
        best = {s: (0 if s == DONE else 10**9) for s in states}
        changed = True
        while changed:
            changed = False
            for s in states:
                if s == DONE:
                    continue
                value = min(1 + best[n] for n in set(self.options(s).values()))
                if value < best[s]:
                    best[s], changed = value, True
        return best

    def step(self, state: tuple, token: int) -> tuple:
        """The state after a token; a token the grammar does not allow ends the sequence."""
        return self.options(state).get(token, DONE)

    def state_of(self, tokens) -> tuple:
        state = START
        for t in tokens:
            state = self.step(state, int(t))
        return state

    def allowed(self, state: tuple, budget: int) -> list[int]:
        """Tokens allowed with ``budget`` tokens left (this one included); eos if nothing fits."""
        ids = [t for t, nxt in self.options(state).items() if 1 + self.min_to_finish[nxt] <= budget]
        return ids or [self.eos]


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the codec grammar or not leave room to finish.

    One instance per ``generate`` call: it remembers each row's grammar state by its prefix, so
    beam reordering and batching need no bookkeeping. ``max_new_tokens`` is the same budget
    ``generate`` gets.
    """

    def __init__(self, grammar: CodecGrammar, max_new_tokens: int):
        self.grammar = grammar
        self.max_new_tokens = max_new_tokens
        self._prompt_length: int | None = None
        self._states: dict[tuple, tuple] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        # budgets above this never bind: every state can finish in fewer tokens
        self._enough = max(v for v in grammar.min_to_finish.values() if v < 10**9) + 1

    def _mask(self, state: tuple, budget: int, size: int, device) -> torch.Tensor:
        key = (state, min(budget, self._enough))
        if key not in self._masks:
            mask = torch.zeros(size, dtype=torch.bool)
            mask[self.grammar.allowed(state, key[1])] = True
            self._masks[key] = mask.to(device)
        return self._masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._prompt_length is None:
            self._prompt_length = input_ids.shape[1]
        generated = input_ids.shape[1] - self._prompt_length
        budget = self.max_new_tokens - generated
        states, masks = {}, []
        for row in input_ids.tolist():
            key = tuple(row)
            state = self._states.get(key[:-1]) if generated else START
            if state is None:
                state = self.grammar.state_of(row[self._prompt_length:])
            elif generated:
                state = self.grammar.step(state, row[-1])
            states[key] = state
            masks.append(self._mask(state, budget, scores.shape[-1], scores.device))
        self._states = states
        return scores.masked_fill(~torch.stack(masks), float("-inf"))
