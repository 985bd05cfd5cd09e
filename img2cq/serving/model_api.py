"""The model and metrics over HTTP: /generate (dynamically batched) and /score (the sandbox).

Neither route blocks the event loop. /generate goes through two batchers (``ModelService``): the
pictures of concurrent requests are generated in one batched call on one dedicated thread, then
their programs are checked in the sandbox as one batch, each distinct program once, spread over
the ``exec_workers`` sandbox workers. /score's pairs run in the sandbox through a ``Lane``.
Programs never run in the server process.
"""

import asyncio
import gc
import io
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, Field

from img2cq.scoring import execute, score_pair
from img2cq.serving.batching import Batcher

MAX_PROGRAM_CHARS = 100_000
MAX_IMAGE_BYTES = 20 * 2**20


class ScoreRequest(BaseModel):
    reference: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program of the target part")
    candidate: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program to score")


class ScoreResult(BaseModel):
    reference_valid: bool
    candidate_valid: bool
    candidate_error: str | None
    iou: float | None = Field(description="0 when the candidate fails; null when the reference itself fails")
    metric_error: str | None = Field(None, description="why the metric could not score two valid solids (iou is 0)")


class Generated(BaseModel):
    program: str
    valid: bool
    error: str | None


@dataclass(frozen=True)
class GenerateOptions:
    """How to generate; requests with equal options share one batched call."""

    max_new_tokens: int | None = None
    candidates: int = 1            # > 1: test-time search over this many proposals (img2cq.search)
    refine_seconds: float = 0.0    # > 0: then tune the kept program's numbers for this long

    @property
    def searching(self) -> bool:
        return self.candidates > 1 or self.refine_seconds > 0


def generate_programs(model, images: list, options: GenerateOptions, executor=None, index=None) -> list[str]:
    """The one call into the model: a batch of images generated with the same options; with search
    options, each image's program is the proposal whose render agrees best with it (``executor``
    must preload ``img2cq.search.PRELOAD``; ``index``: retrieval candidates, or None)."""
    if not options.searching:
        return model.generate(images, max_new_tokens=options.max_new_tokens)
    from img2cq.search import search

    return [search(model, image, options.candidates, options.refine_seconds, executor=executor, index=index,
                   max_new_tokens=options.max_new_tokens).program for image in images]


class ModelUnavailable(Exception):
    pass


# The programs of one generated batch reach the checking batcher within one pass of the event loop.
CHECK_WAIT_S = 0.002


class ModelService:
    """The model, loaded on first use by the generation thread, behind a dynamic batcher; and the
    batcher that checks generated programs in ``executor``. Only the generation thread runs torch,
    so one intra-op thread count serves the process (set at load)."""

    def __init__(self, model_dir: str | None, *, torch_threads: int, max_batch: int, max_wait_s: float,
                 max_queue: int, executor, search_train_json: str | None = None, nice: int = 0):
        self.model_dir, self.torch_threads = model_dir, torch_threads
        self.executor, self.search_train_json = executor, search_train_json
        self.model = self._index = None
        self._load_lock = threading.Lock()
        self.batcher = Batcher(self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s,
                               max_queue=max_queue, name="generate", nice=nice)
        # every request generated (queued or running) must find room here: none is refused after its generation
        self.checker = Batcher(self._check_batch, max_batch=max_batch, max_wait_s=CHECK_WAIT_S,
                               max_queue=max_queue + max_batch, name="check", nice=nice)

    def start(self) -> None:
        self.batcher.start()
        self.checker.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.checker.stop()

    def _check_batch(self, programs: list[str]) -> list:
        """Sandbox results of a batch of programs, run as every score runs them (so /generate's
        `valid` agrees with /score and the metrics), each distinct program once."""
        return execute(programs, self.executor)

    def _load(self):
        with self._load_lock:
            if self.model is None:
                import torch

                from img2cq.modeling import ModelError, load_pretrained

                torch.set_num_threads(self.torch_threads)
                try:
                    self.model = load_pretrained(self.model_dir)
                except (ModelError, OSError, ValueError) as e:
                    raise ModelUnavailable(f"model in {self.model_dir} could not be loaded: {e}") from None
                # torch, transformers and the model are long-lived: out of the collector's sight, a
                # full collection no longer scans them (it stalled every thread for ~0.25 s under load)
                gc.freeze()
            return self.model

    def _search_index(self):
        """The retrieval index of ``search_train_json`` (loaded, or built and saved, on first search)."""
        if self._index is None and self.search_train_json:
            from img2cq.search import load_or_build_index

            self._index = load_or_build_index(self.search_train_json, progress=False)
        return self._index

    def _run_batch(self, items: list[tuple[Image.Image, GenerateOptions]]) -> list[str]:
        """One generate call per distinct set of options in the batch (usually one)."""
        model = self._load()
        programs: list[str | None] = [None] * len(items)
        groups: dict[GenerateOptions, list[int]] = {}
        for i, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(i)
        for options, indices in groups.items():
            index = self._search_index() if options.searching else None
            for i, program in zip(indices, generate_programs(model, [items[i][0] for i in indices], options,
                                                             self.executor, index), strict=True):
                programs[i] = program
        return programs


def read_image(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise HTTPException(400, f"not a readable image: {e}") from None


@asynccontextmanager
async def client_gone(request: Request) -> AsyncIterator[asyncio.Task]:
    """A task that ends when the client disconnects (the body is already read by then)."""
    async def until_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(until_disconnect())
    try:
        yield watcher
    finally:
        watcher.cancel()


def _time_left(deadline: float) -> float:
    return deadline - asyncio.get_running_loop().time()


router = APIRouter(tags=["model"])


@router.post("/generate", response_model=Generated,
             responses={400: {"description": "not a readable image"}, 413: {"description": "image too large"},
                        503: {"description": "no model configured, or the queue is full (Retry-After)"},
                        504: {"description": "not answered within the request timeout"}})
async def generate(request: Request, image: UploadFile,
                   max_new_tokens: Annotated[int | None, Query(ge=1, le=4096, description="cap on generated tokens "
                                                                "(default: the model's context length)")] = None,
                   candidates: Annotated[int, Query(ge=1, le=64, description="test-time search: propose N "
                                                    "programs and keep the one whose render agrees best with "
                                                    "the picture (1: plain greedy decoding)")] = 1,
                   refine: Annotated[float, Query(ge=0, le=120, description="test-time search: seconds spent "
                                                  "tuning the kept program's numbers (0: none)")] = 0.0,
                   ) -> Generated:
    """Write a CadQuery program for an uploaded picture, and check that it builds a solid."""
    state = request.app.state
    if state.model_dir is None:
        raise HTTPException(503, "no model configured: start the server with IMG2CQ_MODEL=/path/to/model_dir")
    deadline = asyncio.get_running_loop().time() + state.settings.request_timeout
    data = await image.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"image larger than {MAX_IMAGE_BYTES} bytes")
    picture = await run_in_threadpool(read_image, data)
    async with client_gone(request) as disconnected:
        program = await state.model_service.batcher.submit(
            (picture, GenerateOptions(max_new_tokens=max_new_tokens, candidates=candidates, refine_seconds=refine)),
            timeout=_time_left(deadline),
            disconnected=disconnected)
        result = await state.model_service.checker.submit(program, timeout=_time_left(deadline),
                                                          disconnected=disconnected)
    return Generated(program=program, valid=result.ok, error=result.reason or None)


@router.post("/score", response_model=ScoreResult,
             responses={503: {"description": "the queue is full (Retry-After)"},
                        504: {"description": "not answered within the request timeout"}})
async def score(request: Request, body: ScoreRequest) -> ScoreResult:
    """IoU of the candidate's solid against the reference's, both run in the sandbox."""
    state = request.app.state
    async with client_gone(request) as disconnected:
        result = await state.sandbox.call(score_pair, body.reference, body.candidate, executor=state.executor,
                                          timeout=state.settings.request_timeout, disconnected=disconnected)
    return ScoreResult(**result)
