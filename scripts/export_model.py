"""Turn a trained model directory into the shippable artefact, and carry it in pieces.

    python scripts/export_model.py MODEL_DIR OUT_DIR                  # bf16 weights, <= 50 MB checked
    python scripts/export_model.py MODEL_DIR OUT_DIR --split-mib 15   # then packed and cut into pieces
    python scripts/export_model.py --join OUT_DIR                     # pieces -> the model directory again

The export is a ``from_pretrained`` directory (weights in bf16 or fp16 safetensors, tokenizer, image
processor, configs, a model card with the training command and the export's provenance).
``img2cq.modeling.load_pretrained`` turns the weights back to fp32 on a CPU.

The GPU machine returns at most 8 files of 16 MiB per command, so ``--split-mib`` packs the whole
directory into one tar and cuts it: OUT_DIR then holds ``model.tar.part-NNN`` and ``model.tar.sha256``
only; ``--join`` checks the checksum and unpacks in place.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from img2cq.console import fail
from img2cq.training_args import ArgumentError, parse_cli

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # the torch dtypes, loaded when exporting
WEIGHTS = "model.safetensors"
TAR = "model.tar"


class ExportError(ValueError):
    """Bad input or an artefact over its size limit: reported as one line."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str | None:
    """The checkout's commit, "+dirty" with uncommitted changes; None without git or a checkout."""
    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def export(model_dir: str | Path, out_dir: str | Path, dtype: str = "bf16", max_mb: float = 50,
           command: str = "") -> dict:
    """Write the half-precision ``from_pretrained`` directory; returns the export record."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    from img2cq.modeling import save_pretrained

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"no model in {model_dir} (expected config.json from a training run)")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model = VisionEncoderDecoderModel.from_pretrained(model_dir).to(getattr(torch, DTYPES[dtype]))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    config_path = model_dir / "training_config.json"
    training_config = json.loads(config_path.read_text()) if config_path.is_file() else {}

    save_pretrained(out_dir, model, tokenizer, processor, training_config)
    weights = out_dir / WEIGHTS
    record = {"source": str(model_dir), "dtype": dtype, "weights_bytes": weights.stat().st_size,
              "weights_sha256": sha256(weights), "git_commit": git_commit(),
              "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command}
    if max_mb and record["weights_bytes"] > max_mb * 1e6:
        raise ExportError(f"{weights} is {record['weights_bytes'] / 1e6:.1f} MB, over --max-mb {max_mb}: "
                          "export a smaller preset (e.g. --model-size compact)")
    (out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    with (out_dir / "README.md").open("a") as card:
        card.write("\n## Export\n\n"
                   f"Weights cast to {dtype} from `{model_dir}` by `{command}`.\n\n"
                   "| field | value |\n|---|---|\n"
                   + "".join(f"| {k} | `{v}` |\n" for k, v in record.items()))
    return record


def split(out_dir: str | Path, piece_mib: float) -> list[Path]:
    """Pack ``out_dir`` into one tar, cut it into pieces of at most ``piece_mib`` MiB, remove the rest."""
    out_dir = Path(out_dir)
    files = sorted(p for p in out_dir.iterdir() if p.is_file())
    tar_path = out_dir / TAR
    with tarfile.open(tar_path, "w") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    for path in files:
        path.unlink()
    (out_dir / f"{TAR}.sha256").write_text(sha256(tar_path) + "\n")
    size, pieces = int(piece_mib * 2**20), []
    with tar_path.open("rb") as f:
        for block in iter(lambda: f.read(size), b""):
            pieces.append(out_dir / f"{TAR}.part-{len(pieces):03d}")
            pieces[-1].write_bytes(block)
    tar_path.unlink()
    return pieces


def join(out_dir: str | Path) -> list[str]:
    """Reassemble the pieces written by ``split`` in place; returns the unpacked file names."""
    out_dir = Path(out_dir)
    pieces = sorted(out_dir.glob(f"{TAR}.part-*"))
    checksum = out_dir / f"{TAR}.sha256"
    if not pieces or not checksum.is_file():
        raise ExportError(f"no {TAR}.part-* pieces with {TAR}.sha256 in {out_dir}")
    tar_path = out_dir / TAR
    with tar_path.open("wb") as f:
        for piece in pieces:
            f.write(piece.read_bytes())
    if sha256(tar_path) != checksum.read_text().strip():
        tar_path.unlink()
        raise ExportError(f"the pieces in {out_dir} do not match {checksum.name}: a piece is missing or damaged")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        tar.extractall(out_dir, filter="data")
    for path in (*pieces, checksum, tar_path):
        path.unlink()
    return names


@dataclass
class ExportArguments:
    model_dir: str | None = field(default=None, metadata={
        "positional": True, "help": "directory written by a training script"})
    out_dir: str | None = field(default=None, metadata={"positional": True, "help": "where the exported model goes"})
    dtype: str = field(default="bf16", metadata={"help": "bf16 or fp16 (default: bf16)"})
    max_mb: float = field(default=50, metadata={"help": "fail if the weights exceed this many MB; 0: no check"})
    split_mib: float | None = field(default=None, metadata={
        "help": "pack and cut the export into pieces of this size"})
    join: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "reassemble the pieces in DIR into the model directory"})

    def __post_init__(self):
        if not self.join and not (self.model_dir and self.out_dir):
            raise ArgumentError("MODEL_DIR and OUT_DIR are needed (or --join DIR)")


def main(argv=None) -> int:
    a = parse_cli(ExportArguments, "Export a trained model as half-precision safetensors (and pieces).", argv,
                  config=False)
    command = " ".join(["python", "scripts/export_model.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        if a.join:
            print(f"joined {len(join(a.join))} files into {a.join}")
            return 0
        record = export(a.model_dir, a.out_dir, a.dtype, a.max_mb, command)
        print(f"exported {a.out_dir}: {WEIGHTS} {record['weights_bytes'] / 1e6:.1f} MB ({a.dtype})")
        if a.split_mib:
            pieces = split(a.out_dir, a.split_mib)
            print(f"cut into {len(pieces)} pieces of <= {a.split_mib} MiB in {a.out_dir}; "
                  f"reassemble with: python scripts/export_model.py --join {a.out_dir}")
    except ExportError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
