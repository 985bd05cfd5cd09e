"""The model and metrics over HTTP: /generate (dynamically batched), /score and /files (the sandbox).

No route blocks the event loop. /generate goes through two batchers (``ModelService``): the
pictures of concurrent requests are generated in one batched call on one dedicated thread, then
their programs are checked in the sandbox as one batch, each distinct program once, spread over
the ``exec_workers`` sandbox workers. Requests with test-time search (seconds to minutes each) go
through a lane of their own, one at a time on a thread of their own, so that plain requests never
wait behind them. /score's pairs and /files' programs run in the sandbox through a ``Lane``. A
picture's size is read from its header and refused before it is decoded. Programs never run in
the server process.
"""

import asyncio
import base64
import gc
import hashlib
import io
import math
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, Field

from img2cq.cadfiles import FORMATS, CadFileError, cad_files
from img2cq.framing import picture_warning
from img2cq.scoring import execute, score_pair
from img2cq.search import DEFAULT_CANDIDATES, DEFAULT_REFINE_SECONDS, MAX_ALTERNATIVES
from img2cq.serving.batching import Batcher

MAX_PROGRAM_CHARS = 100_000


class ScoreRequest(BaseModel):
    reference: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program of the target part")
    candidate: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program to score")


class ScoreResult(BaseModel):
    reference_valid: bool
    candidate_valid: bool
    candidate_error: str | None
    iou: float | None = Field(description="0 when the candidate fails; null when the reference itself fails")
    metric_error: str | None = Field(None, description="why the metric could not score two valid solids (iou is 0)")


class Alternative(BaseModel):
    program: str
    source: str = Field(description="the proposal it is (library:<part>, greedy, ...)")
    agreement: float | None = Field(None, description="how well its render agrees with the picture (the same "
                                    "judge as the kept program's); null where it was not rendered")


class FilesRequest(BaseModel):
    program: str = Field(max_length=MAX_PROGRAM_CHARS, description="CadQuery program whose solid is wanted")


class ProgramFiles(BaseModel):
    volume: float = Field(description="volume of the program's solid")
    files: dict[str, str] = Field(description="the files asked for by ?embed=, base64")


class Generated(BaseModel):
    program: str
    valid: bool
    error: str | None
    source: str | None = Field(None, description="with test-time search: which proposal was kept (greedy, "
                               "beam4, sample, library:<part>, + \"+refined\"); null without search")
    agreement: float | None = Field(None, description="with test-time search: how well the kept program's "
                                    "render agrees with the picture; null without search")
    files: dict[str, str] | None = Field(None, description="with ?embed=: the kept program's files (png, step, "
                                         "stl, glb), base64; null when not asked for or the program builds no solid")
    alternatives: list[Alternative] | None = Field(None, description="with ?alternatives=N: up to N other candidates "
                                                   "of the search, best first; null when not asked for")
    warning: str | None = Field(None, description="what makes the picture hard to read (blank, a background taken "
                                "for the part, a part cut by the picture's edge); null when nothing does")


class SearchedProgram(str):
    """A program kept by test-time search, with the proposal it came from and its agreement."""

    source: str | None = None
    agreement: float | None = None
    alternatives: list[Alternative] | None = None

    @classmethod
    def of(cls, result, alternatives: bool = False) -> "SearchedProgram":
        """The kept program of a ``search.SearchResult`` (with its ``alternatives`` where asked for)."""
        program = cls(result.program)
        program.source = result.source
        program.agreement = finite_or_none(result.agreement)
        if alternatives:
            program.alternatives = [Alternative(program=c.program, source=c.source, agreement=finite_or_none(c.agreement))
                                    for c in result.alternatives]
        return program


def finite_or_none(score: float) -> float | None:
    """A judge's score for JSON: None where the candidate has none (it did not render)."""
    return float(score) if math.isfinite(score) else None


@dataclass(frozen=True)
class GenerateOptions:
    """How to generate; requests with equal options share one batched call."""

    max_new_tokens: int | None = None
    search: bool = False           # test-time search (img2cq.search), else the model's greedy program alone ...
    candidates: int = 1            # ... over the model's N proposals and the library's nearest parts ...
    refine_seconds: float = 0.0    # ... the best-ranked refined for this long
    alternatives: int = 0          # other candidates answered beside the kept program, best first


def generate_options(max_new_tokens: int | None, search: bool, candidates: int | None,
                     refine: float | None, alternatives: int = 0) -> GenerateOptions:
    """A /generate request's options: the search ``img2cq generate`` runs by default (its
    ``DEFAULT_CANDIDATES`` and ``DEFAULT_REFINE_SECONDS`` where not given), or with
    ``search=false`` the greedy program alone (then search settings are refused, 422)."""
    if not search:
        if candidates is not None or refine is not None or alternatives:
            raise HTTPException(422, "search=false takes no candidates, refine or alternatives (they set the search)")
        return GenerateOptions(max_new_tokens)
    return GenerateOptions(max_new_tokens, True, DEFAULT_CANDIDATES if candidates is None else candidates,
                           DEFAULT_REFINE_SECONDS if refine is None else refine, alternatives)


FALSE_WORDS = {"0", "off", "f", "false", "n", "no"}  # a boolean query parameter that reads false


def searching_query(query_string: bytes) -> bool:
    """Whether a /generate query searches: unless ``search`` reads false (a malformed one: yes, the
    route refuses it)."""
    query = parse_qs(query_string.decode("latin-1"))
    return query.get("search", ["true"])[-1].strip().lower() not in FALSE_WORDS


def generate_programs(model, images: list, options: GenerateOptions, executor=None, library=None) -> list[str]:
    """The one call into the model: a batch of images generated with the same options; with search
    options, each image's program is the proposal whose render agrees best with it (the model's
    and the part ``library``'s; ``executor`` must preload ``img2cq.search.PRELOAD``)."""
    if not options.search:
        return model.generate(images, max_new_tokens=options.max_new_tokens)
    from img2cq.search import search

    return [SearchedProgram.of(search(model, image, options.candidates, options.refine_seconds, executor=executor,
                                      library=library, max_new_tokens=options.max_new_tokens,
                                      alternatives=options.alternatives), options.alternatives > 0)
            for image in images]


class ModelUnavailable(Exception):
    pass


# The programs of one generated batch reach the checking batcher within one pass of the event loop.
CHECK_WAIT_S = 0.002


class ModelService:
    """The model (loaded at start with ``warm_up``, else on first use) behind a dynamic batcher
    (the greedy program alone) and a lane of its own for test-time search (one request at a time,
    at most ``search_queue`` waiting); and the batcher that checks generated programs in
    ``executor``. Only these two threads run torch, with one intra-op thread count for the process
    (set at load)."""

    def __init__(self, model_dir: str | None, *, torch_threads: int, max_batch: int, max_wait_s: float,
                 max_queue: int, executor, search_train_json: str | None = None, nice: int = 0,
                 search_queue: int = 8, warm_up: bool = False):
        self.model_dir, self.torch_threads, self.warm_up = model_dir, torch_threads, warm_up
        self.executor, self.search_train_json = executor, search_train_json
        self.model = self._library = None
        self._load_lock = threading.Lock()
        self.batcher = Batcher(self._run_batch, max_batch=max_batch, max_wait_s=max_wait_s,
                               max_queue=max_queue, name="generate", nice=nice)
        self.searcher = Batcher(self._run_batch, max_batch=1, max_wait_s=0, max_queue=search_queue, name="search",
                                nice=nice, waits_for="test-time search")
        # every request generated (queued or running) must find room here: none is refused after its generation
        self.checker = Batcher(self._check_batch, max_batch=max_batch, max_wait_s=CHECK_WAIT_S,
                               max_queue=max_queue + max_batch + search_queue + 1, name="check", nice=nice)

    def lane(self, searching: bool) -> Batcher:
        """Where a request goes: test-time search has a lane of its own."""
        return self.searcher if searching else self.batcher

    def start(self) -> None:
        self.batcher.start()
        self.searcher.start()
        self.checker.start()
        if self.warm_up and self.model_dir is not None:
            self.searcher.run_first(self._load_everything)

    def _load_everything(self) -> None:
        """What the first search needs, loaded ahead of it (on the search thread, at its priority);
        a failure is left for the first request to answer (503)."""
        try:
            self._load()
            self._search_library()
        except ModelUnavailable:
            pass

    async def stop(self) -> None:
        await self.batcher.stop()
        await self.searcher.stop()
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

    def _search_library(self):
        """The part library searches retrieve from: the library of ``search_train_json`` (built
        beside it once), else the shipped one; loaded on the first search, while the search's build
        workers start."""
        with self._load_lock:
            if self._library is None:
                from img2cq.build import shared_pool
                from img2cq.library import PartLibrary

                shared_pool().start()
                try:
                    self._library = (PartLibrary.from_split(self.search_train_json, progress=False)
                                     if self.search_train_json else PartLibrary.load())
                except (FileNotFoundError, ValueError) as e:
                    raise ModelUnavailable(f"test-time search has no part library: {e}") from None
            return self._library

    def _run_batch(self, items: list[tuple[Image.Image, GenerateOptions]]) -> list[str]:
        """One generate call per distinct set of options in the batch (usually one)."""
        model = self._load()
        programs: list[str | None] = [None] * len(items)
        groups: dict[GenerateOptions, list[int]] = {}
        for i, (_, options) in enumerate(items):
            groups.setdefault(options, []).append(i)
        for options, indices in groups.items():
            library = self._search_library() if options.search else None
            for i, program in zip(indices, generate_programs(model, [items[i][0] for i in indices], options,
                                                             self.executor, library), strict=True):
                programs[i] = program
        return programs


def read_image(data: bytes, max_pixels: int, max_side: int) -> Image.Image:
    """The picture in RGB; its size is read from its header and checked before it is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels or max(width, height) > max_side:
                raise HTTPException(400, f"picture of {width} x {height} pixels is too large: at most "
                                         f"{max_pixels} pixels and {max_side} per side")
            return image.convert("RGB")
    except Image.DecompressionBombError:  # PIL's own, far larger, limit: caught while reading the header
        raise HTTPException(400, f"picture is too large: at most {max_pixels} pixels and {max_side} per side") from None
    except (OSError, ValueError, SyntaxError) as e:
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


ANSWER_FORMATS = ("json", "py", *FORMATS)
FILE_ANSWER_FORMATS = ("json", *FORMATS)


def download_name(upload_name: str | None, program: str, extension: str) -> str:
    """The file name of an answer: the picture's name with the format's extension (safe characters
    only), else ``part-<hash of the program>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", (upload_name or "").rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("._")
    return f"{stem[:80] or 'part-' + hashlib.sha256(program.encode()).hexdigest()[:8]}.{extension}"


def attachment(content: bytes | str, media: str, name: str) -> Response:
    """A file answer, named for the browser's download."""
    return Response(content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def base64_files(files: dict[str, bytes]) -> dict[str, str]:
    """Files for a JSON answer: {format: base64 text}."""
    return {k: base64.b64encode(v).decode() for k, v in files.items()}


def embedded_formats(embed: str | None) -> list[str]:
    """The formats of ``?embed=png,stl``, checked (422 for an unknown one)."""
    names = [name.strip() for name in (embed or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise HTTPException(422, f"embed: unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


@router.post("/generate", response_model=Generated,
             responses={200: {"description": "the program and its check (format=json), or the file of the kept "
                              "program (py) or of its solid (step, stl, glb, png)",
                              "content": {"text/x-python": {}, **{media: {} for media, _ in FORMATS.values()}}},
                        400: {"description": "not a readable image, or too many pixels"},
                        413: {"description": "image too large"},
                        422: {"description": "bad parameters, or a CAD format asked for a program that builds no solid"},
                        503: {"description": "no model configured, or its queue is full (Retry-After)"},
                        504: {"description": "not answered within the request timeout"}})
async def generate(request: Request, image: UploadFile,
                   max_new_tokens: Annotated[int | None, Query(ge=1, le=4096, description="cap on generated tokens "
                                                                "(default: the model's context length)")] = None,
                   search: Annotated[bool, Query(description="test-time search (the default): the model's "
                                                 "programs beside the part library's nearest parts, the one whose "
                                                 "render agrees best with the picture refined and kept (IoU 0.69 "
                                                 "on real parts in about 2 s). false: the model's greedy program "
                                                 "alone, batched with other requests (IoU 0.28)")] = True,
                   candidates: Annotated[int | None, Query(ge=1, le=64, description="test-time search: how many "
                                                           "programs the model proposes (default 1, its greedy "
                                                           "program)")] = None,
                   refine: Annotated[float | None, Query(ge=0, le=120, description="test-time search: seconds "
                                                         "spent refining the best-ranked programs (default 1; "
                                                         "0: none)")] = None,
                   alternatives: Annotated[int, Query(ge=0, le=MAX_ALTERNATIVES, description="test-time search: also answer "
                                                      "this many other candidates, best first: ranked by their 3D "
                                                      "likeness to the kept part and to the judge's surest picks")] = 0,
                   format: Annotated[Literal[ANSWER_FORMATS], Query(  # type: ignore[valid-type]
                       description="json: the program and its check; py: the program as a file; step, stl, glb: "
                                   "the kept program's solid as a CAD file; png: a render of it")] = "json",
                   embed: Annotated[str | None, Query(max_length=64, description="with format=json: files of the "
                                                      "solid to include, base64, comma-separated: png,step,stl,glb")
                                    ] = None,
                   ) -> Generated | Response:
    """Write a CadQuery program for an uploaded picture, and check that it builds a solid; answer
    the program (JSON or a .py file) or a file of its solid, made in the sandbox."""
    state = request.app.state
    if state.model_dir is None:
        raise HTTPException(503, "no model configured: start the server with IMG2CQ_MODEL=/path/to/model_dir")
    embedded = embedded_formats(embed)
    settings = state.settings
    deadline = asyncio.get_running_loop().time() + settings.request_timeout
    data = await image.read(settings.max_image_bytes + 1)
    if len(data) > settings.max_image_bytes:
        raise HTTPException(413, f"image larger than {settings.max_image_bytes} bytes")
    picture = await run_in_threadpool(read_image, data, settings.max_image_pixels, settings.max_image_side)
    warning = await run_in_threadpool(picture_warning, picture)
    options = generate_options(max_new_tokens, search, candidates, refine, alternatives)
    async with client_gone(request) as disconnected:
        program = await state.model_service.lane(options.search).submit(
            (picture, options), timeout=_time_left(deadline), disconnected=disconnected)
        result = await state.model_service.checker.submit(program, timeout=_time_left(deadline),
                                                          disconnected=disconnected)
        wanted = [format] if format in FORMATS else embedded if format == "json" and result.ok else []
        files = None
        if wanted:
            if not result.ok:
                raise HTTPException(422, f"the program builds no solid, so there is no {format} file: {result.reason}")
            try:
                made = await state.sandbox.call(cad_files, str(program), wanted, state.executor,
                                                timeout=_time_left(deadline), disconnected=disconnected)
            except CadFileError as e:
                raise HTTPException(422, f"no {'/'.join(wanted)} file of the program's solid: {e.reason}") from None
            files = made.files
    if format != "json":
        media, extension = FORMATS.get(format, ("text/x-python; charset=utf-8", "py"))
        return attachment(files[format] if format in FORMATS else str(program), media,
                          download_name(image.filename, program, extension))
    return Generated(program=program, valid=result.ok, error=result.reason or None,
                     source=getattr(program, "source", None), agreement=getattr(program, "agreement", None),
                     alternatives=getattr(program, "alternatives", None),
                     files=base64_files(files) if files else None, warning=warning)


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


@router.post("/files", response_model=ProgramFiles,
             responses={200: {"description": "the files of the program's solid (format=json), or one file",
                              "content": {media: {} for media, _ in FORMATS.values()}},
                        422: {"description": "bad parameters, or the program builds no solid"},
                        503: {"description": "the queue is full (Retry-After)"},
                        504: {"description": "not answered within the request timeout"}})
async def files(request: Request, body: FilesRequest,
                format: Annotated[Literal[FILE_ANSWER_FORMATS], Query(  # type: ignore[valid-type]
                    description="json: the files of ?embed= and the volume; step, stl, glb: the solid as a CAD "
                                "file; png: a render of it")] = "json",
                embed: Annotated[str, Query(max_length=64, description="with format=json: files of the solid to "
                                            "include, base64, comma-separated: png,step,stl,glb")] = "png,step,stl",
                ) -> ProgramFiles | Response:
    """Build a CadQuery program in the sandbox and answer files of its solid: what a search's other
    candidates (``/generate?alternatives=N``) need to be looked at or downloaded."""
    state = request.app.state
    wanted = [format] if format in FORMATS else embedded_formats(embed)
    async with client_gone(request) as disconnected:
        try:
            made = await state.sandbox.call(cad_files, body.program, wanted, state.executor,
                                            timeout=state.settings.request_timeout, disconnected=disconnected)
        except CadFileError as e:
            raise HTTPException(422, f"the program builds no solid: {e.reason}") from None
    if format != "json":
        media, extension = FORMATS[format]
        return attachment(made.files[format], media, download_name(None, body.program, extension))
    return ProgramFiles(volume=made.volume, files=base64_files(made.files))
