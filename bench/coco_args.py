"""The command-line arguments that the extraction benchmarks share."""

import argparse
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def add_coco_arguments(parser: argparse.ArgumentParser) -> None:
    """--coco (a COCO folder), --vocab and --image-res, defaulting to ../shared and fine-tuned ALBEF."""
    parser.add_argument("--coco", type=Path, default=SHARED / "coco" / "val2017-subset", help="COCO folder")
    parser.add_argument("--vocab", type=Path, default=SHARED / "bert-base-uncased" / "vocab.txt", help="vocab.txt")
    parser.add_argument("--image-res", type=int, default=384, help="resolution (384: fine-tuned ALBEF)")


def extract_command(args: argparse.Namespace, captions: Path, checkpoint: Path, *extra: str) -> list[str]:
    """`python -m extractor run` over `args.coco`'s images with these captions and checkpoint, and `extra`."""
    return [sys.executable, "-m", "extractor", "run", "--images", str(args.coco / "val2017"), "--captions",
            str(captions), "--checkpoint", str(checkpoint), "--vocab", str(args.vocab), *extra]  # fmt: skip
