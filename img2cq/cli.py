"""The `img2cq` command: pictures to CadQuery programs and CAD files, the web server, scoring.

    img2cq generate bracket.png                    # bracket.py beside the picture (a search of a few seconds)
    img2cq generate bracket.png -o bracket.step    # the solid as STEP (format from the extension)
    img2cq generate shots/*.png -o out/ --format stl --candidates 8 --refine 8   # a longer search
    img2cq generate bracket.png --alternatives 3  # also bracket.alt1.py ... alt3.py: the next-best, in order
    img2cq generate bracket.png --no-search        # the model's greedy program alone
    img2cq serve --port 8000                       # the web page at http://127.0.0.1:8000/
    img2cq score reference.py prediction.py        # {"iou": ..., "reference_valid": ..., ...}
    img2cq export bracket.alt1.py -o bracket.step  # any program's solid as STEP, STL, GLB or a PNG render

Messages go to stderr, results to files (or stdout). Exit status: 0 done, 1 a program did not
build a solid, 2 bad input (a missing or unreadable picture or program, a bad flag). Programs run only in
the sandbox (img2cq.sandbox). Heavy modules (torch, CadQuery) are imported after the arguments
are read, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from img2cq.console import fail

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "img2cq-cpu"
FORMATS = ("py", "step", "stl")
EXPORT_FORMATS = ("step", "stl", "glb", "png")
MAX_PICTURE_BYTES = 20 * 2**20       # the server's defaults (img2cq.serving.settings)
MAX_PICTURE_PIXELS = 4096 * 4096
MAX_PICTURE_SIDE = 8192


class BadInput(Exception):
    """Exit 2 with this message."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise BadInput(f"{message} (see `{self.prog} --help`)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> Parser:
    parser = Parser(prog="img2cq", description="Pictures of mechanical parts to CadQuery programs and CAD files.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    gen = commands.add_parser("generate", help="write the CadQuery program (or CAD file) of each picture",
                              description="Write the CadQuery program of each picture (PNG or JPEG), or its solid "
                                          "as a CAD file built in the sandbox. By default a search of a few seconds: "
                                          "the model's program and the part library's nearest parts, ranked by how "
                                          "well their renders agree with the picture, the best refined for 1 s.")
    gen.add_argument("pictures", nargs="+", metavar="PICTURE", help="PNG or JPEG pictures of parts")
    gen.add_argument("-o", "--output", metavar="OUT",
                     help="one picture: the file to write ('-' for stdout, py only); several: a folder. "
                          "Default: beside each picture, with the format's extension")
    gen.add_argument("--format", choices=FORMATS,
                     help="py (the program), step or stl (its solid). Default: from OUT's extension, else py")
    gen.add_argument("--candidates", type=int, default=None, metavar="N",
                     help="the model's proposals beside the library's parts (1: its greedy program; default 1)")
    gen.add_argument("--refine", type=float, default=None, metavar="S",
                     help="seconds of refinement per picture, shared by the best-ranked proposals (default 1)")
    gen.add_argument("--alternatives", type=int, default=0, metavar="N",
                     help="also write the search's N next-best programs (or solids), best first, beside each "
                          "output as NAME.alt1.py, NAME.alt2.py, ... (default 0)")
    gen.add_argument("--no-search", action="store_true",
                     help="the model's greedy program alone: no part library, no rendering (faster, far less "
                          "accurate)")
    gen.add_argument("--model", metavar="DIR", default=str(DEFAULT_MODEL), help="model directory (default: the "
                                                                                "shipped models/img2cq-cpu)")

    serve = commands.add_parser("serve", help="run the web page and the API (uvicorn server:app)",
                                description="Run the web page (/) and the API (/docs) with uvicorn.")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--model", metavar="DIR", help="model directory (default: $IMG2CQ_MODEL, else the shipped "
                                                      "models/img2cq-cpu)")

    score = commands.add_parser("score", help="IoU of a predicted program's solid against a reference's",
                                description="Run both programs in the sandbox; print one JSON line with the IoU "
                                            "and whether each builds a solid.")
    score.add_argument("reference", metavar="REF.py")
    score.add_argument("prediction", metavar="PRED.py")

    export = commands.add_parser("export", help="the solid of each CadQuery program as a CAD file or a render",
                                 description="Run each CadQuery program in the sandbox and write its solid as a "
                                             "STEP, STL or GLB file, or a PNG render in the dataset's style.")
    export.add_argument("programs", nargs="+", metavar="PROGRAM.py", help="CadQuery programs")
    export.add_argument("-o", "--output", metavar="OUT",
                        help="one program: the file to write; several: a folder. Default: beside each program, "
                             "with the format's extension")
    export.add_argument("--format", choices=EXPORT_FORMATS,
                        help="step, stl, glb or png. Default: from OUT's extension, else step")
    return parser


# ----------------------------------------------------------------------------------------------
# generate

def read_picture(path: Path):
    """The picture in RGB; BadInput for a missing, unreadable, corrupt or huge one."""
    from PIL import Image

    if not path.exists():
        raise BadInput(f"no such picture: {path}")
    if not path.is_file():
        raise BadInput(f"not a file: {path}")
    if path.stat().st_size > MAX_PICTURE_BYTES:
        raise BadInput(f"picture {path} is larger than {MAX_PICTURE_BYTES >> 20} MiB")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PICTURE_PIXELS or max(width, height) > MAX_PICTURE_SIDE:
                raise BadInput(f"picture {path} of {width} x {height} pixels is too large: at most "
                               f"{MAX_PICTURE_PIXELS} pixels and {MAX_PICTURE_SIDE} per side")
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise BadInput(f"picture {path} is too large") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadInput(f"not a readable picture: {path} ({e})") from None


def alternative_path(out: Path, k: int) -> Path:
    """Where the ``k``-th alternative of an output goes: ``part.py`` -> ``part.alt1.py``."""
    return out.with_name(f"{out.stem}.alt{k}{out.suffix}")


def output_plan(pictures: list[Path], output: str | None, fmt: str | None,
                alternatives: int = 0, formats: tuple[str, ...] = FORMATS) -> tuple[str, list[Path | None]]:
    """The format (of ``formats``; default the first) and each input's output path (None: stdout);
    BadInput where they clash, or where an output or one of its ``alternatives`` would overwrite an
    input. OUT is a folder when several inputs are given, when it is one, or when it ends in a slash."""
    folder_named = output is not None and (output.endswith(("/", os.sep)) or Path(output).is_dir())
    if output is not None and len(pictures) == 1 and output != "-" and not folder_named:
        suffix = Path(output).suffix.lower().lstrip(".")
        suffix = {"stp": "step"}.get(suffix, suffix)
        if fmt is None and suffix in formats:
            fmt = suffix
        elif fmt is not None and suffix in formats and suffix != fmt:
            raise BadInput(f"-o {output} ends in .{suffix} but --format is {fmt}")
    fmt = fmt or formats[0]
    if output == "-":
        if len(pictures) > 1 or fmt != "py":
            raise BadInput("-o - (stdout) takes one input and the py format")
        if alternatives:
            raise BadInput("--alternatives writes files: give -o a file or folder instead of - (stdout)")
        return fmt, [None]
    if output is not None and len(pictures) == 1 and not folder_named:
        outs = [Path(output)]
    else:
        folder = Path(output) if output is not None else None
        if folder is not None and folder.exists() and not folder.is_dir():
            raise BadInput(f"-o {output}: with several inputs OUT must be a folder")
        outs = [(folder or p.parent) / f"{p.stem}.{fmt}" for p in pictures]
        seen: dict[Path, Path] = {}
        for picture, out in zip(pictures, outs):
            if out.resolve() in seen:
                raise BadInput(f"{picture} and {seen[out.resolve()]} would both be written to {out}")
            seen[out.resolve()] = picture
    inputs = {p.resolve() for p in pictures}
    for out in outs + [alternative_path(o, k) for o in outs for k in range(1, alternatives + 1)]:
        if out.resolve() in inputs or (out.exists() and any(out.samefile(p) for p in pictures)):
            raise BadInput(f"refusing to overwrite the input file {out}")
    return fmt, outs


def search_settings(args) -> bool:
    """Whether ``generate`` searches; if so ``args.candidates`` and ``args.refine`` are set
    (defaults filled in) and the part library is there."""
    if args.no_search:
        if args.candidates is not None or args.refine is not None or args.alternatives:
            raise BadInput("--no-search takes no --candidates, --refine or --alternatives (they set the search)")
        return False
    from img2cq.search import DEFAULT_CANDIDATES, DEFAULT_REFINE_SECONDS, MAX_ALTERNATIVES

    if not 0 <= args.alternatives <= MAX_ALTERNATIVES:
        raise BadInput(f"--alternatives must be between 0 and {MAX_ALTERNATIVES}")
    args.candidates = DEFAULT_CANDIDATES if args.candidates is None else args.candidates
    args.refine = DEFAULT_REFINE_SECONDS if args.refine is None else args.refine
    if args.candidates < 1:
        raise BadInput("--candidates must be at least 1")
    if not 0 <= args.refine <= 3600:
        raise BadInput("--refine must be between 0 and 3600 seconds")
    from img2cq.library import LIBRARY_DIR

    if not (LIBRARY_DIR / "card.json").is_file():
        raise BadInput(f"test-time search needs the part library {LIBRARY_DIR}, which is missing "
                       "(build it with scripts/build_library.py, or pass --no-search)")
    return True


def generate(args) -> int:
    searching = search_settings(args)
    pictures = [Path(p) for p in args.pictures]
    fmt, outs = output_plan(pictures, args.output, args.format, args.alternatives)
    images = [read_picture(p) for p in pictures]
    from img2cq.framing import picture_warning

    for picture, image in zip(pictures, images):
        if problem := picture_warning(image):
            say(f"warning: {picture}: {problem}")
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise BadInput(f"no model in {model_dir} (expected its config.json)")
    library = None
    if searching:
        from img2cq.build import shared_pool

        shared_pool().start()  # the search's build workers start while the model loads
    say(f"loading the model from {model_dir} ...")
    from img2cq.cadfiles import PRELOAD
    from img2cq.sandbox import Executor
    from img2cq.modeling import ModelError, load_pretrained

    try:
        model = load_pretrained(model_dir)
    except (ModelError, OSError, ValueError) as e:
        raise BadInput(f"the model in {model_dir} could not be loaded: {e}") from None
    preload = PRELOAD
    if searching:
        from img2cq.library import PartLibrary
        from img2cq.search import PRELOAD as SEARCH_PRELOAD, default_shortlist, search

        library = PartLibrary.load()
        preload = tuple(dict.fromkeys(PRELOAD + SEARCH_PRELOAD))
    failed = 0
    with Executor(workers=1, preload=preload) as executor:
        alternatives = [[] for _ in pictures]
        if searching:
            programs = []
            for i, (picture, image) in enumerate(zip(pictures, images), 1):
                proposals = "greedy program" if args.candidates == 1 else f"{args.candidates} programs"
                say(f"[{i}/{len(pictures)}] {picture}: searching (the model's {proposals}, the library's "
                    f"{default_shortlist(args.refine)} nearest parts, {args.refine:g} s refinement) ...")
                result = search(model, image, args.candidates, args.refine, executor=executor, library=library,
                                alternatives=args.alternatives)
                say(f"[{i}/{len(pictures)}] kept {result.source} (agreement {result.agreement:.3f})")
                programs.append(result.program)
                alternatives[i - 1] = [c.program for c in result.alternatives]
        else:
            say(f"writing {len(images)} program{'s' * (len(images) > 1)} ...")
            programs = model.generate(images)
        for i, (picture, program, out) in enumerate(zip(pictures, programs, outs), 1):
            answers = [(program, out)] + [(other, alternative_path(out, k))
                                          for k, other in enumerate(alternatives[i - 1], 1)]
            failed += sum(not write_answer(f"[{i}/{len(pictures)}] {picture}", text, where, fmt, executor)
                          for text, where in answers)
    return 1 if failed else 0


def write_answer(label: str, program: str, out: Path | None, fmt: str, executor) -> bool:
    """Write ``program`` (py, ``out`` None: stdout) or its solid (step, stl, glb; png: a render;
    built in the sandbox) and say so; False where it builds no solid."""
    from img2cq.cadfiles import CadFileError, cad_files

    where = "stdout" if out is None else str(out)
    if fmt == "py":
        check = executor.run(program, mesh=False)
        if out is None:
            sys.stdout.write(program if program.endswith("\n") else program + "\n")
            sys.stdout.flush()
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(program)
        if not check.ok:
            say(f"error: {label}: the program written to {where} builds no solid: {check.reason}")
            return False
        say(f"{label} -> {where} (builds a solid, volume {check.volume:.6g})")
        return True
    try:
        made = cad_files(program, [fmt], executor)
    except CadFileError as e:
        say(f"error: {label}: the program builds no solid, so no {fmt} file was written to {where}: {e.reason}")
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(made.files[fmt])
    say(f"{label} -> {where} (volume {made.volume:.6g})")
    return True


# ----------------------------------------------------------------------------------------------
# serve, score and export

def serve(args) -> int:
    if not 0 < args.port < 65536:
        raise BadInput("--port must be 1-65535")
    model = args.model or os.environ.get("IMG2CQ_MODEL") or str(DEFAULT_MODEL)
    if not (Path(model) / "config.json").is_file():
        raise BadInput(f"no model in {model} (expected its config.json)")
    os.environ["IMG2CQ_MODEL"] = model
    if not (REPO / "server.py").is_file():
        raise BadInput(f"server.py is not in {REPO}: run `img2cq serve` from a checkout of img2cq")
    import uvicorn

    say(f"serving the web page at http://{args.host}:{args.port}/ (model {model}; Ctrl-C stops)")
    uvicorn.run("server:app", host=args.host, port=args.port, app_dir=str(REPO))
    return 0


def read_program(path: Path) -> str:
    """A program file's text; BadInput for a missing or unreadable one (it is run only in the sandbox)."""
    if not path.is_file():
        raise BadInput(f"no such program file: {path}")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read {path}: {e}") from None


def score(args) -> int:
    texts = [read_program(Path(name)) for name in (args.reference, args.prediction)]
    from img2cq.sandbox import Executor
    from img2cq.scoring import score_pair

    with Executor(workers=2) as executor:
        result = score_pair(texts[0], texts[1], executor=executor)
    print(json.dumps(result), flush=True)
    return 0 if result["reference_valid"] and result["candidate_valid"] else 1


def export(args) -> int:
    paths = [Path(p) for p in args.programs]
    fmt, outs = output_plan(paths, args.output, args.format, formats=EXPORT_FORMATS)
    texts = [read_program(path) for path in paths]
    from img2cq.cadfiles import PRELOAD
    from img2cq.sandbox import Executor

    with Executor(workers=1, preload=PRELOAD) as executor:
        failed = sum(not write_answer(f"[{i}/{len(paths)}] {path}", text, out, fmt, executor)
                     for i, (path, text, out) in enumerate(zip(paths, texts, outs), 1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"generate": generate, "serve": serve, "score": score, "export": export}[args.command](args)
    except BadInput as e:
        return fail(e)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - e.g. a machine that cannot sandbox: one line, not a traceback
        return fail(f"{type(e).__name__}: {e}", 1)


if __name__ == "__main__":
    sys.exit(main())
