"""The image -> program model: a ViT encoder and a GPT-2 decoder in a ``VisionEncoderDecoderModel``.

Everything a checkpoint directory needs travels together, so any ``transformers`` user can load it:

    model_dir/
      config.json, generation_config.json, model.safetensors   (VisionEncoderDecoderModel)
      tokenizer.json, tokenizer_config.json, ...                (AutoTokenizer: codec or BPE)
      preprocessor_config.json                                  (AutoImageProcessor)
      training_config.json                                      (how it was made)
      README.md                                                 (model card)

``load_pretrained(dir)`` returns an ``Img2CQ`` that turns PIL images into program strings. New
models write the program codec's tokens (``img2cq.codec``) and generate under its grammar
(``img2cq.grammar``), so every output parses; models with the byte-level BPE still load and run.
Model-written programs are never executed here: best-of-N goes through ``img2cq.sandbox``.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from img2cq.framing import SIZE as FRAME_SIZE, frame_silhouette
from img2cq.grammar import CodecGrammar, GrammarLogitsProcessor
from img2cq.tokenizer import decode_program, encode_program, is_codec_tokenizer, load_codec_tokenizer, load_tokenizer

# Longest GenCAD programs are ~4,000 characters; with the BPE tokenizer that is well under
# this many tokens (measured in the README, "Training").
MAX_PROGRAM_TOKENS = 2048
# Codec tokens (benchmarks/bench_codec.py): the longest of 131 real programs takes 150, of 3,000
# sampler programs 205; real programs spend at least 15.6 characters per token, so GenCAD's
# ~4,000-character maximum fits in ~260. Twice that leaves room.
MAX_CODEC_TOKENS = 512
# Nucleus sampling of the extra programs of best-of-N (and of the search's sampled proposals).
SAMPLING = {"top_p": 0.95, "temperature": 0.8}


logger = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model cannot be built or loaded (bad directory, unreachable hub, unknown preset)."""


@dataclass(frozen=True)
class Preset:
    """Sizes of one named model; ``image_size`` is the default input resolution."""

    image_size: int
    patch_size: int
    encoder_hidden: int
    encoder_layers: int
    encoder_heads: int
    decoder_hidden: int
    decoder_layers: int
    decoder_heads: int


PRESETS = {
    # for tests and smoke runs on a CPU: well under 2M parameters
    "tiny": Preset(image_size=64, patch_size=16, encoder_hidden=64, encoder_layers=2, encoder_heads=2,
                   decoder_hidden=128, decoder_layers=2, decoder_heads=2),
    # the CPU-trained default: 4.3M parameters, ~50 samples/s for the training step on one core
    "cpu": Preset(image_size=128, patch_size=16, encoder_hidden=128, encoder_layers=3, encoder_heads=4,
                  decoder_hidden=256, decoder_layers=3, decoder_heads=4),
    # ViT-S/16-like encoder (6 layers) + 6-layer GPT-2 decoder
    "small": Preset(image_size=224, patch_size=16, encoder_hidden=384, encoder_layers=6, encoder_heads=6,
                    decoder_hidden=512, decoder_layers=6, decoder_heads=8),
    # the shippable default: 23.6M parameters, so bf16 weights stay under 50 MB (small is ~80 MB)
    "compact": Preset(image_size=224, patch_size=16, encoder_hidden=384, encoder_layers=5, encoder_heads=6,
                      decoder_hidden=384, decoder_layers=5, decoder_heads=6),
    # ViT-B/16 encoder + GPT-2 (124M-sized) decoder with cross-attention
    "base": Preset(image_size=224, patch_size=16, encoder_hidden=768, encoder_layers=12, encoder_heads=12,
                   decoder_hidden=768, decoder_layers=12, decoder_heads=12),
}


def image_processor(image_size: int) -> ViTImageProcessorPil:
    """Resize to a square and scale pixels to [-1, 1].

    PIL's bilinear resize averages over the whole footprint when shrinking, so the 1-px edges of a
    448-px GenCAD render survive as grey lines instead of vanishing between samples.
    """
    return ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def model_input_frame(image: Image.Image, processor) -> Image.Image:
    """The picture framed (``frame_silhouette``) at twice the model's resolution, at most the 448 px of
    a GenCAD render: enough for the processor's antialiased downscale, and training's augmentation
    touches a fraction of the pixels of a full-size frame. Training and generation both frame here."""
    return frame_silhouette(image, size=min(FRAME_SIZE, 2 * processor.size["height"]))


def _set_special_tokens(model: VisionEncoderDecoderModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Point every config at our bos/eos/pad (GPT-2's defaults point at id 50256)."""
    for cfg in (model.config, model.config.decoder, model.generation_config):
        cfg.decoder_start_token_id = tokenizer.bos_token_id
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    model.generation_config.max_length = None
    model.generation_config.max_new_tokens = model.config.decoder.n_positions - 1


def build_model(model_size: str = "tiny", image_size: int | None = None, tokenizer="codec"):
    """A freshly initialised model of a named preset, with its tokenizer and image processor.

    ``tokenizer``: "codec" (the default: GenCAD-Code programs, grammar-constrained generation),
    "bpe" (any CadQuery text), or a tokenizer object.
    """
    if model_size not in PRESETS:
        raise ModelError(f"unknown --model-size {model_size!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[model_size]
    image_size = image_size or p.image_size
    if image_size % p.patch_size:
        raise ModelError(f"--image-size must be a multiple of the patch size {p.patch_size}, got {image_size}")
    if isinstance(tokenizer, str):
        if tokenizer not in ("codec", "bpe"):
            raise ModelError(f"unknown tokenizer {tokenizer!r}; choose codec or bpe")
        tokenizer = load_codec_tokenizer() if tokenizer == "codec" else load_tokenizer()
    n_positions = MAX_CODEC_TOKENS if is_codec_tokenizer(tokenizer) else MAX_PROGRAM_TOKENS
    encoder = ViTConfig(
        image_size=image_size, patch_size=p.patch_size, hidden_size=p.encoder_hidden,
        num_hidden_layers=p.encoder_layers, num_attention_heads=p.encoder_heads,
        intermediate_size=4 * p.encoder_hidden,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=p.decoder_hidden,
        n_layer=p.decoder_layers, n_head=p.decoder_heads,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, add_cross_attention=True, is_decoder=True,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config=config)
    _set_special_tokens(model, tokenizer)
    return model, tokenizer, image_processor(image_size)


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_pretrained(encoder: str, decoder: str, image_size: int | None = None):
    """Warm-start from pretrained encoder / decoder checkpoints (hub names or local directories).

    The decoder's own tokenizer is used (its embeddings are tied to it). Without network access
    and with a hub name, this fails in seconds with a clear message instead of retrying for minutes.
    """
    for name in (encoder, decoder):
        if not Path(name).is_dir() and not _hub_reachable():
            raise ModelError(f"cannot reach the Hugging Face hub to download {name!r}: pass a local "
                             "directory, or train from scratch with --model-size tiny|small|base")
    tokenizer = AutoTokenizer.from_pretrained(decoder)
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ModelError(f"the tokenizer of {decoder!r} needs bos and eos tokens")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # built by hand: from_encoder_decoder_pretrained trips over GPT2Config in transformers 5.x
    decoder_config = AutoConfig.from_pretrained(decoder)
    decoder_config.is_decoder = True
    decoder_config.add_cross_attention = True  # fresh cross-attention layers, the rest pretrained
    model = VisionEncoderDecoderModel(
        encoder=AutoModel.from_pretrained(encoder),
        decoder=AutoModelForCausalLM.from_pretrained(decoder, config=decoder_config),
    )
    if model.config.decoder.n_positions < MAX_PROGRAM_TOKENS:
        logger.warning("note: decoder %r holds at most %d tokens; longer programs are truncated in training",
                       decoder, model.config.decoder.n_positions)
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    _set_special_tokens(model, tokenizer)
    return model, tokenizer, image_processor(image_size or model.config.encoder.image_size)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def model_card(training_config: dict, metrics: dict, n_params: int) -> str:
    """README.md written beside the weights: what the model is, how it was made, how it scores."""
    lines = [
        "---", "library_name: transformers", "pipeline_tag: image-to-text", "tags: [cadquery, cad, img2cq]", "---",
        "", "# img2cq model", "",
        "ViT encoder + GPT-2 decoder (`VisionEncoderDecoderModel`) that writes a CadQuery program for a",
        "GenCAD-style render of a mechanical part.", "",
        f"- parameters: {n_params:,}",
        "", "## Use", "", "```python", "from img2cq.modeling import load_pretrained",
        "model = load_pretrained('THIS_DIR')", "programs = model.generate([PIL.Image.open('part.png')])", "```",
        "", "## How it was made", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | `{v}` |" for k, v in training_config.items()]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines += ["not evaluated yet; run `python enhanced_eval.py THIS_DIR`"]
    return "\n".join(lines) + "\n"


def save_pretrained(out_dir, model, tokenizer, processor, training_config: dict | None = None,
                    metrics: dict | None = None) -> None:
    """Write model, tokenizer, image processor, training config and model card to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    training_config = training_config or {}
    (out_dir / "training_config.json").write_text(json.dumps(training_config, indent=2, default=str) + "\n")
    (out_dir / "README.md").write_text(model_card(training_config, metrics or {}, count_parameters(model)))


def prompt_prefix(tokenizer, prompt: str | None) -> list[int]:
    """The decoder's ids before the program: bos, or for a retrieve-and-edit model
    ``bos <prompt program's tokens> bos`` (``img2cq.editing``)."""
    if prompt is None:
        return [tokenizer.bos_token_id]
    return [tokenizer.bos_token_id, *encode_program(tokenizer, prompt), tokenizer.bos_token_id]


class Img2CQ:
    """A loaded model with its tokenizer and image processor: images in, program strings out.

    A retrieve-and-edit model (config ``retrieval_prompt``, ``img2cq.editing``) is prompted with the
    program of the part ``library`` holds nearest to each picture (default library: the shipped one,
    loaded on first use), unless the caller gives the prompts."""

    def __init__(self, model: VisionEncoderDecoderModel, tokenizer, processor, device=None, library=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        # Rows of a batch that finish early are padded while the others decode; those positions lie
        # after eos and are dropped, so GPT-2's one-time "pass an attention_mask" advice is noise here.
        self.model.decoder.transformer.warn_if_padding_and_no_attention_mask = lambda *args: None
        self.tokenizer = tokenizer
        self.processor = processor
        self.grammar = CodecGrammar(tokenizer) if is_codec_tokenizer(tokenizer) else None
        self.edits = bool(getattr(model.config, "retrieval_prompt", False))
        self.library_pictures = bool(getattr(model.config, "library_pictures", self.edits))
        self._library = library

    @property
    def library(self):
        if self._library is None:
            from img2cq.library import PartLibrary

            self._library = PartLibrary.load()
        return self._library

    @property
    def max_new_tokens(self) -> int:
        return self.model.config.decoder.n_positions - 1

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """A model trained on the library's parts reads every picture as their thumbnails look."""
        if self.library_pictures:
            from img2cq.editing import edit_picture

            images = [edit_picture(im) for im in images]
        images = [model_input_frame(im, self.processor) for im in images]
        return self.processor(images, return_tensors="pt")["pixel_values"].to(self.device)

    def prompts(self, images: list[Image.Image]) -> list[str | None]:
        """What each picture's program is written after: the nearest library part's program for a
        retrieve-and-edit model, else nothing."""
        if not self.edits:
            return [None] * len(images)
        from img2cq.editing import prompt_programs

        return prompt_programs(self.library, images)

    def decode(self, sequences) -> list[str]:
        return [decode_program(self.tokenizer, seq) for seq in sequences]

    def generation_constraints(self, max_new_tokens: int) -> dict:
        """Codec models decode under the grammar (one processor per call: it keeps row states)."""
        if self.grammar is None:
            return {}
        return {"logits_processor": LogitsProcessorList([GrammarLogitsProcessor(self.grammar, max_new_tokens)])}

    @torch.no_grad()
    def programs(self, pixels: torch.Tensor, prompts: list[str | None], n: int = 1, max_new_tokens: int | None = None,
                 **generate_kwargs) -> list[str]:
        """``n`` programs per picture (image-major) from ``model.generate(**generate_kwargs)`` for the
        ``pixel_values`` of the pictures: batched without prompts, one picture at a time with them
        (the prompt is the decoder's prefix)."""
        if all(p is None for p in prompts):
            budget = max_new_tokens or self.max_new_tokens
            return self.decode(self.model.generate(pixel_values=pixels, num_return_sequences=n, max_new_tokens=budget,
                                                   **generate_kwargs, **self.generation_constraints(budget)))
        out = []
        for k, prompt in enumerate(prompts):
            prefix = torch.tensor([prompt_prefix(self.tokenizer, prompt)], device=self.device)
            budget = min(max_new_tokens or self.max_new_tokens, self.model.config.decoder.n_positions - prefix.shape[1])
            sequences = self.model.generate(pixel_values=pixels[k:k + 1], decoder_input_ids=prefix,
                                            num_return_sequences=n, max_new_tokens=budget, **generate_kwargs,
                                            **self.generation_constraints(budget))
            out += self.decode(sequences[:, prefix.shape[1]:])
        return out

    def sampled(self, pixels: torch.Tensor, prompts: list[str | None], n: int,
                max_new_tokens: int | None = None) -> list[list[str]]:
        """``n`` programs per picture by nucleus sampling (``SAMPLING``), grouped by picture."""
        if n <= 0:
            return [[] for _ in prompts]
        programs = self.programs(pixels, prompts, n, max_new_tokens, do_sample=True, **SAMPLING)
        return [programs[i * n:(i + 1) * n] for i in range(len(prompts))]

    def sample(self, images: list[Image.Image], n: int, max_new_tokens: int | None = None,
               prompts: list[str | None] | None = None) -> list[list[str]]:
        """``n`` programs per image by nucleus sampling (``SAMPLING``)."""
        prompts = self.prompts(images) if prompts is None else prompts
        return self.sampled(self.pixel_values(images), prompts, n, max_new_tokens)

    def generate(self, images: list[Image.Image], num_beams: int = 1, max_new_tokens: int | None = None,
                 best_of: int | None = None, executor=None, prompts: list[str | None] | None = None) -> list[str]:
        """One program per image: greedy (``num_beams=1``) or beam search, batched.

        With the codec tokenizer, decoding is grammar-constrained: every program parses, and one
        that would run past ``max_new_tokens`` is closed within it.

        ``best_of=N``: the greedy/beam program plus N-1 sampled ones per image are run through the
        executor (``executor`` or the module default) and the first that builds a valid solid is
        kept; when none does, the greedy/beam program is returned.
        """
        pixels = self.pixel_values(images)
        prompts = self.prompts(images) if prompts is None else prompts
        programs = self.programs(pixels, prompts, 1, max_new_tokens, num_beams=num_beams, do_sample=False)
        if not best_of or best_of <= 1:
            return programs
        sampled = self.sampled(pixels, prompts, best_of - 1, max_new_tokens)
        return [pick_first_valid([first, *more], executor) for first, more in zip(programs, sampled)]


def pick_first_valid(candidates: list[str], executor=None) -> str:
    """The first candidate that runs to a valid solid in the sandbox, else the first candidate.

    Validity is judged as every score is (``img2cq.scoring.execute``), so a kept program counts valid there too.
    """
    from img2cq.scoring import execute, executor_or_new

    with executor_or_new(executor) as ex:
        results = execute(candidates, ex)
    for code, result in zip(candidates, results):
        if result.ok:
            return code
    return candidates[0]


def load_pretrained(model_dir, device=None, library=None) -> Img2CQ:
    """Load a directory written by ``save_pretrained`` (or by ``transformers`` directly); ``library``:
    the part library a retrieve-and-edit model is prompted from (default: the shipped one)."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelError(f"no model in {model_dir} (expected config.json from training, e.g. "
                         "`python train_vision_encoder_decoder.py --output-dir DIR`)")
    progress_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # loading takes a fraction of a second: its bar would only be noise
    try:
        model = VisionEncoderDecoderModel.from_pretrained(model_dir)
    finally:
        if progress_bars:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    generator = Img2CQ(model, tokenizer, processor, device=device, library=library)
    if generator.device.type == "cpu":  # bf16/fp16 exports (scripts/export_model.py): CPUs run fp32 best
        generator.model.float()
    return generator
