"""(image, caption) pairs that are not in COCO format: a CSV or Parquet table of image paths and captions,
or WebDataset tar shards as img2dataset writes them (how CC3M, CC12M and LAION subsets are held).

Both are read as a stream: a table in record batches of its two columns, a shard member by member, only
the captions' text read and the images left where they are (a path under the images folder, or a member's
offset in its tar), so no table or tar is ever held whole. What is kept per pair is its ids, the image's
place and the caption. Either becomes a `CocoDataset` without instances: every word gets its maps and the
metrics that need no object; category matching still records what a word names.

Ids are stable: an image's id is a 53-bit hash of its key (the table's path as written, or the WebDataset
sample's key: its member name without the extension, e.g. `000000123` for img2dataset), a caption's the
hash of the key and the caption's position among the image's captions (table order; a WebDataset sample
has one). The same inputs give the same ids in any run, on any shard of them, and 53 bits stay exact in a
browser's numbers. Two keys of one input that collide are an error. Images run in the input's order.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from extractor.categories import COCO_CATEGORIES
from extractor.coco import ImageError, image_size
from extractor.dataset import CocoDataset, load_coco

if TYPE_CHECKING:
    from extractor.run import Options

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
"""The members of a WebDataset sample taken as its image, in this order of preference."""
TABLE_BATCH_ROWS = 65_536
SIZE_COLUMNS = ("width", "height")
"""Image sizes, taken where a table or a sample's KEY.json has them (img2dataset writes both); the others
are read from the images' headers when the dataset's rows are first written (`fill_sizes`)."""


class PairsFormatError(ValueError):
    """A pairs table or WebDataset shard that cannot be read as (image, caption) pairs."""


def stable_id(key: str) -> int:
    """A 53-bit id of `key`, the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 11


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar shard, read as a file (`open`, `read_bytes`) without the tar."""

    shard: Path
    name: str
    offset: int  # of the member's data in the shard
    size: int

    def exists(self) -> bool:
        return self.offset >= 0 and self.shard.is_file()  # offset -1: the sample has no image

    def is_file(self) -> bool:
        return self.shard.is_file()

    def stat(self) -> os.stat_result:
        return os.stat_result((0o100444, 0, 0, 1, 0, 0, self.size, 0, 0, 0))

    def read_bytes(self) -> bytes:
        with self.shard.open("rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def open(self, mode: str = "rb") -> io.BytesIO:
        return io.BytesIO(self.read_bytes())

    def __str__(self) -> str:
        return f"{self.shard}/{self.name}"


def image_source(images_dir: Path, record: dict) -> Path | TarMember:
    """Where an image record's bytes are: a file under `images_dir`, or a member of a WebDataset shard."""
    if "shard" in record:
        return TarMember(Path(record["shard"]), record["member"], record["offset"], record["size"])
    return images_dir / record["file_name"]


class _Pairs:
    """Builds a CocoDataset from (key, record, captions) in input order, checking that ids do not collide."""

    def __init__(self) -> None:
        self.dataset = CocoDataset(images={}, captions={}, order=[], categories={
            cid: {"name": c.name, "supercategory": c.supercategory} for cid, c in COCO_CATEGORIES.items()})  # fmt: skip
        self.keys: dict[int, str] = {}

    def add(self, key: str, record: dict, captions: list[str]) -> None:
        image_id = stable_id(key)
        if image_id not in self.keys:
            self.keys[image_id] = key
            self.dataset.images[image_id] = {"id": image_id, "width": None, "height": None, **record}
            self.dataset.order.append(image_id)
        elif self.keys[image_id] != key:
            raise PairsFormatError(f"the keys {self.keys[image_id]!r} and {key!r} hash to one image id; rename one")
        held = self.dataset.captions.setdefault(image_id, [])
        for text in captions:
            held.append({"id": stable_id(f"{key}\n{len(held)}"), "image_id": image_id, "caption": text})


def _check_columns(path: Path, required: list[str], names: list[str]) -> list[str]:
    """The columns to read: `required`, which must be there, and the size columns the table has."""
    if missing := [c for c in required if c not in names]:
        raise PairsFormatError(f"{path}: no column {missing[0]!r} (it has {', '.join(names)})")
    return [*required, *(c for c in SIZE_COLUMNS if c in names)]


def chunk_json(dataset: CocoDataset, records: list[dict]) -> str:
    """A chunk of images with their captions, for a process that does not read the inputs (a Ray actor)."""
    return json.dumps([[r, dataset.captions_of(r["id"])] for r in records])


def chunk_dataset(text: str) -> tuple[CocoDataset, list[dict]]:
    """The dataset of one chunk (`chunk_json`) and its image records, in order."""
    dataset = _Pairs().dataset
    for record, captions in json.loads(text):
        dataset.images[record["id"]], dataset.captions[record["id"]] = record, captions
        dataset.order.append(record["id"])
    return dataset, dataset.images_with_captions()


def _table_batches(path: Path, required: list[str]) -> Iterator[pa.RecordBatch]:
    """The table's rows in record batches of the `required` columns (CSV: as text) and of `width` and `height`
    where it has them (img2dataset's Parquet output does), read as a stream."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        table = pq.ParquetFile(path)
        columns = _check_columns(path, required, table.schema_arrow.names)
        yield from table.iter_batches(batch_size=TABLE_BATCH_ROWS, columns=columns)
        return
    if suffix not in (".csv", ".tsv"):
        raise PairsFormatError(f"{path}: a pairs table must be .csv, .tsv or .parquet")
    parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=True)
    columns = _check_columns(path, required, pacsv.open_csv(path, parse_options=parse).schema.names)
    types = {c: pa.string() if c in required else pa.int64() for c in columns}
    convert = pacsv.ConvertOptions(include_columns=columns, column_types=types, strings_can_be_null=False)
    yield from pacsv.open_csv(path, parse_options=parse, convert_options=convert)


def _sizes(batch: pa.RecordBatch) -> Iterator[dict]:
    """Each row's {width, height}: the table's, where it has them, else unknown (None)."""
    known = [batch.column(c).to_pylist() if c in batch.schema.names else [None] * batch.num_rows for c in SIZE_COLUMNS]
    return (dict(zip(SIZE_COLUMNS, size, strict=True)) for size in zip(*known, strict=True))


def load_table(path: Path, image_column: str = "image", caption_column: str = "caption") -> CocoDataset:
    """A CSV/TSV/Parquet table of (image path relative to the images folder, caption) rows, with the images'
    `width` and `height` where it has those columns.

    Rows naming the same path are one image with several captions, in table order. A missing caption
    (NULL) is kept as an empty one, which the run records as a `caption` error.

    Raises:
        FileNotFoundError: no such file.
        PairsFormatError: not a table, a column missing, a row without an image path.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs table not found")
    pairs, row = _Pairs(), 0
    try:
        for batch in _table_batches(path, [image_column, caption_column]):
            images, captions = batch.column(image_column).to_pylist(), batch.column(caption_column).to_pylist()
            for image, caption, size in zip(images, captions, _sizes(batch), strict=True):
                if not image:
                    raise PairsFormatError(f"{path}: row {row} has no image path in column {image_column!r}")
                pairs.add(str(image), {"file_name": str(image), **size}, [str(caption or "")])
                row += 1
    except (pa.ArrowInvalid, OSError) as e:
        raise PairsFormatError(f"{path}: cannot read the table ({e})") from None
    return pairs.dataset


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from a brace range (`shards/{00000..00009}.tar`, zero-padding kept) and/or a glob
    (`shards/*.tar`), in sorted order within each pattern.

    Raises:
        FileNotFoundError: a pattern that matches no file.
    """
    patterns = [spec]
    while match := re.search(r"\{(\d+)\.\.(\d+)\}", patterns[0]):
        lo, hi = match.group(1), match.group(2)
        width = len(lo) if lo.startswith("0") else 0
        patterns = [p[: match.start()] + f"{i:0{width}d}" + p[match.end() :]
                    for p in patterns for i in range(int(lo), int(hi) + 1)]  # fmt: skip
    shards = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern] * os.path.isfile(pattern)
        if not found:
            raise FileNotFoundError(f"--webdataset {spec}: no shard {pattern}")
        shards += map(Path, found)
    return shards


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]]:
    """(key, {extension: member}, tar) per sample of a shard, in order: the members sharing a key."""
    try:
        with tarfile.open(shard, "r:") as tar:
            key, members = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                name = f"{folder}/{stem}" if folder else stem
                if name != key and members:
                    yield key, members, tar
                    members = {}
                key, members[ext.lower()] = name, member
                tar.members = []  # read once: never hold a shard's member list
            if members:
                yield key, members, tar
    except tarfile.ReadError as e:
        raise PairsFormatError(f"{shard}: not an uncompressed tar shard ({e})") from None


def _json_size(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict:
    """{width, height} from a sample's KEY.json, where it gives both as integers; else {}."""
    with suppress(ValueError):
        meta = json.loads(tar.extractfile(member).read())
        size = {c: meta.get(c) for c in SIZE_COLUMNS} if isinstance(meta, dict) else {}
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size.values()) and size:
            return size
    return {}


def load_webdataset(spec: str, root: Path | None = None) -> tuple[CocoDataset, Path]:
    """WebDataset shards in img2dataset's layout: per sample `KEY.jpg` (or png, webp) and `KEY.txt`, its
    caption, and `KEY.json` for the image's width and height (other members are ignored). Returns the
    dataset and the images folder its file names are relative to (`root`, else the shards' common folder).

    A sample without a caption is left out; one without an image keeps its caption's key as a missing
    image, which the run records as an `image` error.

    Raises:
        FileNotFoundError: a shard pattern matching nothing.
        PairsFormatError: a compressed or broken tar, keys that collide.
    """
    shards = [s.resolve() for s in expand_shards(spec)]
    root = root.resolve() if root else Path(os.path.commonpath([s.parent for s in shards]))
    pairs = _Pairs()
    for shard in shards:
        shard_name = os.path.relpath(shard, root)
        for key, members, tar in _samples(shard):
            if "txt" not in members:
                continue
            caption = tar.extractfile(members["txt"]).read().decode("utf-8", errors="replace")
            size = _json_size(tar, members["json"]) if "json" in members else {}
            ext = next((e for e in IMAGE_SUFFIXES if e in members), None)
            image = members.get(ext)
            record = {"file_name": f"{shard_name}/{key}.{ext or 'jpg'}", "shard": str(shard),
                      "member": image.name if image else f"{key}.jpg",
                      "offset": image.offset_data if image else -1, "size": image.size if image else 0}  # fmt: skip
            pairs.add(key, {**record, **size}, [caption])
    return pairs.dataset, root


def fill_sizes(dataset: CocoDataset, images_dir: Path, threads: int = 16) -> None:
    """Give the images whose input has no size their file's, from its header (read in threads, as a file
    system needs many requests in flight); an image that cannot be read keeps none, and its run says why."""

    def fill(record: dict) -> None:
        with suppress(ImageError):
            record["height"], record["width"] = image_size(image_source(images_dir, record))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, [r for r in dataset.images.values() if r.get("width") is None]))


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that name a run's inputs: COCO files, a pairs table, or WebDataset shards."""
    p.add_argument("--images", type=Path, help="the images folder: COCO's (e.g. coco/val2017), or the root a "
                   "--pairs table's paths are relative to (default: the table's folder)")  # fmt: skip
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", type=Path, help="COCO captions JSON (captions_val2017.json); needs --images")
    source.add_argument("--pairs", type=Path, metavar="TABLE", help="a .csv, .tsv or .parquet table of (image path, "
                        "caption) rows, read as a stream; rows of one path are one image with several captions; "
                        "ids are hashes of the paths (README); no object metrics")  # fmt: skip
    source.add_argument("--webdataset", metavar="SHARDS", help="WebDataset tar shards as img2dataset writes them "
                        "(KEY.jpg + KEY.txt per sample), a brace range or a glob, quoted: 'cc3m/{00000..00331}.tar' "
                        "or 'cc3m/*.tar'; read member by member; ids are hashes of the keys; no object metrics",
                        )  # fmt: skip
    p.add_argument("--instances", type=Path, help="COCO instances JSON, with --captions; without it no object metrics")
    p.add_argument("--image-column", default="image", help="with --pairs: the column of image paths (default image)")
    p.add_argument("--caption-column", default="caption", help="with --pairs: the caption column (default caption)")


def read_inputs(opts: Options) -> tuple[CocoDataset, Path]:
    """The run's dataset and the folder its images' file names are relative to.

    Raises:
        ValueError: flags that do not go together (one line, for the CLI).
    """
    if opts.instances and not opts.captions:
        raise ValueError("--instances goes with --captions (COCO files); a pairs table or shards have no objects")
    if opts.webdataset:
        return load_webdataset(opts.webdataset, opts.images)
    if opts.pairs:
        return load_table(opts.pairs, opts.image_column, opts.caption_column), opts.images or opts.pairs.parent
    if opts.images is None:
        raise ValueError("--captions needs --images, the folder of the COCO images")
    return load_coco(opts.captions, opts.instances), opts.images


def input_files(opts: Options) -> list[Path]:
    """The files a run reads its pairs (and objects) from."""
    if opts.webdataset:
        return expand_shards(opts.webdataset)
    return [opts.pairs] if opts.pairs else [opts.captions, *([opts.instances] if opts.instances else [])]
