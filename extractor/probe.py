"""The live probe: any caption over any image, through the run's checkpoint and the run's own code path.

One image and one caption become an `ImageItem`, then a batch of one through the run path: `collate`,
`batch_maps`, `word_outputs` and `batch_tables`; the rows that come back have the columns of the
`words` table (the map as a uint8 blob and its max), so the probe's maps are the extractor's maps for
the same image and caption. Per head on request: each head's attention goes through `word_outputs`
as a map of its own. The model is loaded once per process, lazily, on the first probe
(`loaded_model`); the dataset files of the run (object covers, category words) likewise.
Nothing here writes anywhere: a probe is never a run's row.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from extractor.batch import Batch, ImageItem, collate
from extractor.binding import tag_words
from extractor.categories import match_words
from extractor.checkpoint import CheckpointError, default_vocab, frozen_albef
from extractor.coco import MAX_PIXELS, CocoFormatError, ImageError, load_image
from extractor.config import ALBEFConfig
from extractor.covers import grid_covers
from extractor.dataset import CocoDataset, load_coco
from extractor.digest import current_sha256
from extractor.image import normalize, resized_pixels
from extractor.maps import ATTENTION, BatchMaps, batch_maps
from extractor.run import resolve_device
from extractor.summarize import HostCopy, Slice, batch_tables, run_slices, word_outputs
from extractor.text import Tokenizer, pre_caption

log = logging.getLogger(__name__)
PROBE_ID = -1  # image and caption id of what is not in the dataset (an uploaded image, a typed caption)
MEAN = -1  # the `head` of a map that is the mean over heads, as a run stores it


class ProbeError(ValueError):
    """Why a probe cannot run, in one sentence for the page."""


@dataclass(frozen=True)
class ProbeSettings:
    """What a probe takes from a run: its checkpoint, model config, maps kept, vocab and dataset files."""

    checkpoint: Path
    checkpoint_sha256: str | None  # the run's; None: whatever file is at `checkpoint`
    config: str  # ALBEFConfig as JSON (hashable)
    layers: tuple[int, ...]  # fusion layers with raw attention
    gradcam_layer: int | None
    captions_file: Path | None = None
    instances_file: Path | None = None
    vocab_file: Path | None = None  # the run's; None (a run that did not record it): `default_vocab(checkpoint)`
    vocab_sha256: str | None = None

    @classmethod
    def from_run(cls, run: Mapping[str, Any]) -> ProbeSettings:
        """The settings of a `runs` row."""

        def path(key: str) -> Path | None:
            return Path(run[key]) if run.get(key) else None

        gradcam = run.get("gradcam_layer")
        vocab = run.get("vocab")  # JSON text as DuckDB returns it, a dict as run.json holds it, or NULL
        if isinstance(vocab, str):
            vocab = json.loads(vocab)
        if not isinstance(vocab, Mapping):
            vocab = {}
        return cls(
            checkpoint=Path(run["checkpoint_path"]),
            checkpoint_sha256=run.get("checkpoint_sha256"),
            config=run["config"] if isinstance(run["config"], str) else json.dumps(run["config"]),
            layers=tuple(int(la) for la in (run.get("layers") if run.get("layers") is not None else ())),
            gradcam_layer=None if gradcam is None or pd.isna(gradcam) else int(gradcam),
            captions_file=path("captions_file"),
            instances_file=path("instances_file"),
            vocab_file=Path(vocab["path"]) if vocab.get("path") else None,
            vocab_sha256=vocab.get("sha256"),
        )

    @property
    def cfg(self) -> ALBEFConfig:
        return ALBEFConfig.from_dict(json.loads(self.config))

    @property
    def slices(self) -> list[Slice]:
        return run_slices(self.layers, self.gradcam_layer)

    @property
    def vocab(self) -> Path:
        """The run's vocab; for a run that did not record it, the one a run of this checkpoint reads by default."""
        return self.vocab_file or default_vocab(self.checkpoint)


@dataclass
class Probe:
    """A probe's result: one row per (word, method, layer, head) with the `words` table's columns
    (`map` a uint8 blob, `map_max` its scale; `head` -1 for the mean over heads, as a run stores it)."""

    caption: str  # as ALBEF's cleaning left it
    words: pd.DataFrame
    itm_score: float
    itc_score: float
    grid: int
    seconds: float  # the probe's own time, the model's load excluded


@lru_cache(maxsize=2)
def loaded_model(checkpoint: str, sha256: str | None, config: str, device: str) -> torch.nn.Module:
    """ALBEF with the checkpoint's weights, frozen, on `device`: loaded once per process and key.

    Raises:
        ProbeError: the checkpoint is missing on this machine, unreadable, of another model or not the run's.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ProbeError(f"The run's checkpoint {path} is not on this machine: copy it there to probe this run.")
    try:
        model, found = frozen_albef(ALBEFConfig.from_dict(json.loads(config)), path)
    except CheckpointError as e:
        raise ProbeError(str(e).splitlines()[0]) from None
    if sha256 and found != sha256:
        raise ProbeError(f"The checkpoint at {path} is not the run's (its sha256 differs): the maps would not compare.")
    log.info("probe model %s loaded on %s", path, device)
    return model.to(device)


@lru_cache(maxsize=4)
def tokenizer(vocab: Path, max_tokens: int) -> Tokenizer:
    return Tokenizer(vocab, max_tokens)


def run_vocab(settings: ProbeSettings) -> Path:
    """The run's vocab file, checked against the sha256 the run recorded. A run recorded elsewhere (another
    machine or checkout) names a path missing here: this checkpoint's default vocab stands in when its sha256
    is the recorded one.

    Raises:
        ProbeError: the file is not on this machine, or is not the one the run read.
    """
    vocab = settings.vocab
    if not vocab.is_file():
        default = default_vocab(settings.checkpoint)
        if settings.vocab_sha256 and default.is_file() and current_sha256(default) == settings.vocab_sha256:
            return default
        raise ProbeError(f"The vocab {vocab} is not on this machine: put bert-base-uncased's vocab.txt there.")
    if settings.vocab_sha256 and current_sha256(vocab) != settings.vocab_sha256:
        raise ProbeError(f"The vocab at {vocab} is not the run's (its sha256 differs): words would not split as the "
                         "run split them.")  # fmt: skip
    return vocab


@lru_cache(maxsize=2)
def run_dataset(captions_file: Path, instances_file: Path, mtimes: tuple[int, int]) -> CocoDataset | None:
    """The run's COCO files as the run read them (object covers, category words); None when they do not parse."""
    try:
        return load_coco(captions_file, instances_file)
    except CocoFormatError as e:
        log.warning("probe: the run's dataset cannot be read (%s); object metrics are left out", e)
        return None


def dataset_of(settings: ProbeSettings) -> CocoDataset | None:
    """The run's dataset when its files are on this machine, else None (no object metrics)."""
    files = (settings.captions_file, settings.instances_file)
    if not all(f is not None and f.is_file() for f in files):
        return None
    return run_dataset(*files, tuple(f.stat().st_mtime_ns for f in files))


def opened_image(image: Image.Image | Path | str | bytes) -> Image.Image:
    """The image as ALBEF reads it (`extractor.coco.load_image`: size checked from the header first).

    Raises:
        ProbeError: more than MAX_PIXELS pixels, not an image, truncated or corrupt.
    """
    if isinstance(image, Image.Image):
        if image.width * image.height > MAX_PIXELS:
            raise ProbeError(f"The image is {image.width}x{image.height}: more than the {MAX_PIXELS} pixels allowed.")
        return image.convert("RGB")
    if isinstance(image, bytes):
        with tempfile.NamedTemporaryFile(suffix=".img") as f:
            f.write(image)
            f.flush()
            return _loaded(f.name, "The uploaded file")
    return _loaded(image, str(image))


def _loaded(path: Path | str, name: str) -> Image.Image:
    """`load_image`, its ImageError a ProbeError that calls the file `name`."""
    try:
        return load_image(path)
    except ImageError as e:
        raise ProbeError(str(e).replace(str(path), name)) from None


def probe_item(
    settings: ProbeSettings, image: Image.Image, caption: str, image_id: int | None, images_dir: Path | None
) -> ImageItem:
    """The `ImageItem` a loader worker would make of this image with this one caption.

    An image of the run's dataset (`image_id`, its file in `images_dir`) brings its objects, laid on the
    file as the run lays them, and the run's category words; any other image is matched to COCO's
    categories and has no object metrics.
    """
    cfg = settings.cfg
    dataset = dataset_of(settings)
    (tok,) = tokenizer(run_vocab(settings), cfg.bert.max_position_embeddings)([pre_caption(caption, cfg.max_words)])
    if not tok.words:
        raise ProbeError("The caption is empty after ALBEF's cleaning: type some words.")
    record = dataset.images.get(image_id) if dataset is not None else None
    covers = None if record is None or images_dir is None else grid_covers(dataset, images_dir, record, cfg.grid_size)
    match = dataset.match if dataset is not None else match_words
    record = record or {"id": PROBE_ID, "file_name": "upload", "width": image.width, "height": image.height}
    tags = tag_words(tok.words, match(tok.words))
    pixels = resized_pixels(image, cfg.image_res)
    return ImageItem(record, Path(record["file_name"]), pixels, None, covers, [(PROBE_ID, tok, tags)], [])


def word_frame(batch: Batch, out: dict[str, np.ndarray], slices: list[Slice], head: int) -> pd.DataFrame:
    """The run's `words` rows of a batch (`batch_tables`) as a frame, its dictionary columns decoded (a caption's
    words repeat: "a", "the"), with the maps' `head`."""
    table = batch_tables(batch, out, slices, "probe")["words"]
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names).to_pandas().assign(head=head)


def head_maps(maps: BatchMaps, head: int) -> BatchMaps:
    """One head's raw attention as a batch's maps (no Grad-CAM): what `word_outputs` reads as the mean."""
    heads = {la: a[:, head : head + 1] for la, a in maps.attention.items()}
    return replace(maps, attention=heads, gradcam=None, head_attention=None)


def probe_with(
    model: torch.nn.Module,
    settings: ProbeSettings,
    image: Image.Image | Path | str | bytes,
    caption: str,
    device: torch.device,
    heads: bool = False,
    image_id: int | None = None,
    images_dir: Path | None = None,
) -> Probe:
    """`probe` with a model already loaded (the benchmark's random ALBEF base)."""
    started = time.perf_counter()
    item = probe_item(settings, opened_image(image), caption, image_id, images_dir)
    host = collate([item])  # its columns lay out the rows; its copy on the device feeds the model
    batch = host.to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        maps = batch_maps(model, normalize(batch.pixels), batch.input_ids, batch.attention_mask, batch.image_index,
                          settings.layers, settings.gradcam_layer is not None, keep_heads=heads)  # fmt: skip
    out = HostCopy(word_outputs(maps, batch, settings.slices)).arrays()
    frames = [word_frame(host, out, settings.slices, MEAN)]
    n_heads = next(iter(maps.attention.values())).shape[1] if heads and maps.attention else 0
    attention = [(ATTENTION, la) for la in settings.layers]
    for h in range(n_heads):
        one = HostCopy(word_outputs(head_maps(maps, h), batch, attention)).arrays()
        frames.append(word_frame(host, one, attention, h))
    words = pd.concat(frames, ignore_index=True).drop(columns=["run_id", "caption_id"])
    return Probe(item.captions[0][1].text, words, float(out["itm_score"][0]), float(out["itc_score"][0]),
                 settings.cfg.grid_size, time.perf_counter() - started)  # fmt: skip


def probe(
    settings: ProbeSettings,
    image: Image.Image | Path | str | bytes,
    caption: str,
    device: str = "auto",
    heads: bool = False,
    image_id: int | None = None,
    images_dir: Path | None = None,
) -> Probe:
    """Every word's maps (each fusion layer kept by the run, Grad-CAM; each head on request) and metrics.

    Args:
        settings: the run's (`ProbeSettings.from_run`).
        image: a PIL image, an image file, or its bytes (an upload).
        caption: any text; cleaned as ALBEF does.
        device: auto (CUDA when present, else CPU), cpu or cuda.
        heads: also each head's raw attention, as rows with `head` 0..H-1.
        image_id: the image's id when it is one of the run's (its objects give the object metrics).
        images_dir: the folder of the run's images.

    Raises:
        ProbeError: one sentence: checkpoint missing or unreadable, image too large or unreadable, empty caption.
    """
    where = resolve_device(device)
    model = loaded_model(str(settings.checkpoint), settings.checkpoint_sha256, settings.config, str(where))
    return probe_with(model, settings, image, caption, where, heads, image_id, images_dir)
