"""Dashboard query latency at full COCO-2017 scale: a finalized database vs the same one as extracted.

Builds (once; reused after) an extraction database in the real schema with ~616k captions and ~6.5M
word rows: the real caption texts of captions_val2017.json repeated over 123,287 images (so word
frequencies follow COCO's own Zipf curve), synthetic metrics, and real-size 24 x 24 map blobs, written
through db.writer.write_images in image order like an extraction. That file is the baseline: rows in
image order, so a word lookup scans the whole table, and per-word aggregates are computed live. A copy
goes through db.writer.finalize (word_lookup sorted by category and word, word_summary, image_summary,
key_image_summary and key_summary).
The same db.queries calls are then timed on both files, side by side, in one process. Files of an older
schema version are rebuilt.

    .venv/bin/python -m bench.dashboard_bench --workdir /tmp/albef-dashboard-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from db import bootstrap, compare, queries, rankings, stats, writer
from db.queries import WordFilter
from db.sample import caption_words, category_lookup
from db.schema import SCHEMA_VERSION, schema_version

SHARED = Path(__file__).resolve().parents[2] / "shared" / "coco"
RUN_ID = "be0c0c0000000001"
METHOD, LAYER, GRID = "gradcam", 8, 24
IMAGES_PER_COMMIT = 4096
# The metrics the synthetic rows have (the rankings draw one of them per run).
SYNTHETIC_METRICS = ("peak_value", "entropy", "mask_mass", "box_mass", "background_mass", "pointing_hit",
                     "iou_top60", "itm_score")  # fmt: skip
# Words the synthetic rows class as attributes (the rest: objects when they name a category, else other).
ATTRIBUTES = ("white", "black", "red", "blue", "green", "yellow", "brown", "large", "small", "big", "young", "old")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/albef-dashboard-bench"),
        help="where raw.duckdb and finalized.duckdb are built (about 5 GB each) and reused",
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the databases even if they exist")
    p.add_argument("--images", type=int, default=123_287, help="images to build (COCO 2017 has 123,287)")
    p.add_argument("--captions-per-image", type=int, default=5, help="captions per image")
    p.add_argument(
        "--captions-json",
        type=Path,
        default=SHARED / "captions-full" / "captions_val2017.json",
        help="real COCO captions whose texts (and so word frequencies) are reused",
    )
    p.add_argument(
        "--instances-json",
        type=Path,
        default=SHARED / "val2017-small" / "annotations" / "instances_val2017_small.json",
        help="COCO instances JSON giving the 80 categories",
    )
    p.add_argument("--repeats", type=int, default=40, help="measured runs per query and layout (at most)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured runs first, to warm caches")
    p.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds per query and layout after which measuring stops (once 5 runs are in)",
    )
    p.add_argument("--only", nargs="*", default=None, help="time only the queries whose names contain one of these")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads (the target machine has 2 cores)")
    p.add_argument("--memory-limit", default="6GB", help="DuckDB memory limit while building and querying")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and of the query parameters")
    args = p.parse_args(argv)  # fmt: skip

    config = {"threads": args.threads, "memory_limit": args.memory_limit}
    raw, final = args.workdir / "raw.duckdb", args.workdir / "finalized.duckdb"
    if args.rebuild or not all(current_schema(path) for path in (raw, final)):
        build(args, raw, final, config)
    cons = {path: queries.connect_readonly(path, config) for path in (raw, final)}
    summary = queries.run_summary(cons[final], RUN_ID)
    print(
        f"{summary['n_images']:,} images, {summary['n_captions']:,} captions, {summary['n_words']:,} word rows",
        flush=True,
    )
    cases = benchmark_cases(cons[final], args.images, np.random.default_rng(args.seed), args.repeats + args.warmup)
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was

    print(f"\n{'query':<26}{'raw p50':>10}{'raw p95':>10}{'runs':>6}{'final p50':>11}{'final p95':>11}{'runs':>6}"
          f"{'p95 ratio':>11}")  # fmt: skip
    for name, call in cases.items():
        if args.only and not any(part in name for part in args.only):
            continue
        (r50, r95, rn), (f50, f95, fn) = (time_query(cons[path], call, args) for path in cons)
        print(
            f"{name:<26}{r50:>8.1f}ms{r95:>8.1f}ms{rn:>6}{f50:>9.1f}ms{f95:>9.1f}ms{fn:>6}{r95 / f95:>10.1f}x",
            flush=True,
        )
    print(f"\nDuckDB threads={args.threads}; {args.warmup} warm-up runs, then up to {args.repeats} measured runs "
          f"or {args.budget:.0f} s per query and file. Machine load average (1 min) before/after: "
          f"{load_before:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")  # fmt: skip
    print(f"databases: {raw} (raw: as extracted), {final} (finalized)")
    return 0


def current_schema(path: Path) -> bool:
    """Whether `path` is a database of this code's schema version."""
    if not path.is_file():
        return False
    with duckdb.connect(str(path), read_only=True) as con:
        return schema_version(con) == SCHEMA_VERSION


def benchmark_cases(con, n_images: int, rng: np.random.Generator, n: int) -> dict[str, Callable]:
    """Query name -> call(con, i); the i-th run of each query draws the same parameters on both files."""
    vocab = queries.vocabulary(con, run_id=RUN_ID, limit=5000)
    # Words drawn by caption frequency, as users would click them: the most frequent ("a", 16% of all
    # word rows) is the slowest to rank and comes up often.
    words = rng.choice(vocab["word"], size=n, p=vocab["n"] / vocab["n"].sum()).tolist()
    categories = queries.list_categories(con, RUN_ID).query("n_words > 0")["category_id"]
    cats = rng.choice(categories, size=n).tolist()
    images = rng.integers(1, n_images + 1, size=n).tolist()
    metrics = rng.choice(SYNTHETIC_METRICS, size=n).tolist()
    pages = rng.integers(0, 40, size=n).tolist()  # the first pages of a ranking, as a user browses them
    slice_ = {"run_id": RUN_ID, "method": METHOD, "layer": LAYER}
    rank = {"run_id": RUN_ID, "method": METHOD, "layer": LAYER}
    compared = compare.Slice(**slice_)
    return {
        "search word (ranked)": lambda c, i: queries.search_words(c, WordFilter(word=words[i], **slice_)),
        "count word": lambda c, i: queries.count_words(c, WordFilter(word=words[i], **slice_)),
        "search word + ranges": lambda c, i: queries.search_words(
            c, WordFilter(word=words[i], ranges={"entropy": (None, 0.9), "itm_score": (0.5, None)}, **slice_),
            sort="peak_value"),
        "search category + object": lambda c, i: queries.search_words(
            c, WordFilter(category_id=cats[i], has_object=True, **slice_), sort="iou_top60", descending=False),
        "count category": lambda c, i: queries.count_words(c, WordFilter(category_id=cats[i], **slice_)),
        "vocabulary prefix": lambda c, i: queries.vocabulary(c, prefix=words[i][:2], run_id=RUN_ID),
        "image detail": lambda c, i: queries.image_detail(c, images[i], RUN_ID),
        "words at region": lambda c, i: queries.words_at_region(c, images[i], RUN_ID, METHOD, LAYER, 8, 8, 16, 16),
        "word stats": lambda c, i: stats.word_stats(c, RUN_ID, METHOD, LAYER, min_count=5),
        "category stats": lambda c, i: stats.category_stats(c, RUN_ID, METHOD, LAYER),
        "freq. alignment": lambda c, i: stats.word_frequency_alignment(c, RUN_ID, METHOD, LAYER),
        "layer comparison": lambda c, i: stats.layer_comparison(c, RUN_ID),
        # The overview, the best view and the search grouped by image (issue 11).
        "best slice of word": lambda c, i: rankings.best_slices(c, RUN_ID, word=words[i]),
        "best slice of category": lambda c, i: rankings.best_slices(c, RUN_ID, category_id=cats[i]),
        "best slice of run": lambda c, i: rankings.best_slices(c, RUN_ID),
        "ranked words": lambda c, i: rankings.ranked(c, **rank, metric=metrics[i], min_count=5),
        "ranked attributes": lambda c, i: rankings.ranked(
            c, **rank, metric=metrics[i], min_count=5, word_class="attribute"),
        "ranked categories": lambda c, i: rankings.ranked(c, by="category", **rank, metric=metrics[i]),
        "ranked images": lambda c, i: rankings.ranked_images(c, **rank, metric=metrics[i], offset=24 * pages[i]),
        "ranked images, category": lambda c, i: rankings.ranked_images(
            c, **rank, metric=metrics[i], category_id=cats[i]),
        "search word by image": lambda c, i: queries.search_images(c, WordFilter(word=words[i], **slice_)),
        "image page of word": lambda c, i: queries.search_words(
            c, WordFilter(word=words[i], image_ids=tuple(images[i : i + 24]), **slice_), limit=None),
        # Runs compared (issue 12, item 5): the run against itself, as the page asks (100 intervals): with the
        # bootstrap's weights kept from the call before (another metric), and hashed again (a first call); and
        # without intervals (the SQL alone: the page's first paint).
        "compare runs": lambda c, i: compare.changes(c, compared, compared, metrics[i], min_count=3, intervals=100),
        "compare runs, weights hashed": lambda c, i: bootstrap.clear_weights() or compare.changes(
            c, compared, compared, metrics[i], min_count=3, intervals=100),
        "compare runs, category": lambda c, i: compare.changes(
            c, compared, compared, metrics[i], "category", min_count=3, intervals=100),
        "compare runs, no intervals": lambda c, i: compare.changes(
            c, compared, compared, metrics[i], min_count=3, intervals=0),
    }  # fmt: skip


def time_query(con, call: Callable, args: argparse.Namespace) -> tuple[float, float, int]:
    """p50 and p95 latency (ms) of call(con, i) over the measured runs, and their number."""
    for i in range(args.warmup):
        call(con, i)
    times: list[float] = []
    deadline = time.perf_counter() + args.budget
    for i in range(args.warmup, args.warmup + args.repeats):
        start = time.perf_counter()
        call(con, i)
        times.append((time.perf_counter() - start) * 1000)
        if len(times) >= 5 and time.perf_counter() > deadline:
            break
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), len(times)


def build(args: argparse.Namespace, raw: Path, final: Path, config: dict) -> None:
    """Write the raw database through db.writer, copy it, and finalize the copy; prints timings."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    for path in (raw, final):
        path.unlink(missing_ok=True)
    texts = [a["caption"] for a in json.loads(args.captions_json.read_text())["annotations"]]
    categories = pd.DataFrame(json.loads(args.instances_json.read_text())["categories"])
    categories = categories.rename(columns={"id": "category_id"})[["category_id", "name", "supercategory"]]
    data = SyntheticCoco(texts, category_lookup(categories), args.images, args.captions_per_image, args.seed)

    start = time.perf_counter()
    con = writer.connect(raw, config)
    writer.start_run(con, {"run_id": RUN_ID, "checkpoint_path": "benchmark (synthetic)", "method": METHOD,
                           "gradcam_layer": LAYER, "layers": [], "image_res": 384, "patch_size": 16,
                           "grid_size": GRID, "code_version": "bench"})  # fmt: skip
    writer.upsert_dataset(con, categories, data.images(), data.captions(), data.instances())
    for first in range(0, args.images, IMAGES_PER_COMMIT):
        ids = range(first + 1, min(first + IMAGES_PER_COMMIT, args.images) + 1)
        writer.write_images(con, RUN_ID, data.results(ids), ids)
    writer.finish_run(con, RUN_ID, time.perf_counter() - start, "complete", finalize_run=False)
    con.close()
    written = time.perf_counter()
    print(f"built {raw} ({raw.stat().st_size / 2**30:.1f} GiB) in {written - start:.0f} s", flush=True)

    shutil.copyfile(raw, final)
    con = writer.connect(final, config)
    copied = time.perf_counter()
    writer.finalize(con, RUN_ID)
    con.close()
    print(f"copied in {copied - written:.0f} s, finalized {final} in {time.perf_counter() - copied:.0f} s")


class SyntheticCoco:
    """COCO-2017-sized dataset and results: caption k of image k // per_image reuses real caption k % N."""

    def __init__(self, texts: list[str], lookup: dict[str, int], n_images: int, per_image: int, seed: int):
        self.texts, self.n_images, self.per_image, self.seed = texts, n_images, per_image, seed
        words = [caption_words(t) for t in texts]
        self.vocab = sorted({w for ws in words for w in ws})
        code = {w: i for i, w in enumerate(self.vocab)}
        self.codes = np.array([code[w] for ws in words for w in ws], dtype=np.int32)  # all words, flat
        self.lengths = np.array([len(ws) for ws in words])
        self.offsets = np.cumsum(self.lengths) - self.lengths
        self.category_of_code = np.array([lookup.get(w, -1) for w in self.vocab])
        self.attribute_of_code = np.isin(self.vocab, ATTRIBUTES)
        rng = np.random.default_rng(seed)
        self.itm = rng.uniform(size=n_images * per_image)
        rows, cols = np.mgrid[0:GRID, 0:GRID]
        centres, widths = rng.uniform(0, GRID, size=(256, 2)), rng.uniform(1, GRID / 3, size=256)
        bumps = np.exp(-((rows - centres[:, :1, None]) ** 2 + (cols - centres[:, 1:, None]) ** 2)
                       / (2 * widths[:, None, None] ** 2))  # fmt: skip
        self.pool = np.rint(239 * bumps).astype(np.uint8).reshape(256, GRID * GRID)  # (256, 576)

    def caption_ids(self, image_ids: range) -> np.ndarray:
        first, last = (image_ids.start - 1) * self.per_image, image_ids.stop * self.per_image - self.per_image
        return np.arange(first, last) + 1

    def images(self) -> pd.DataFrame:
        ids = np.arange(1, self.n_images + 1)
        return pd.DataFrame({"image_id": ids, "file_name": [f"{i:012d}.jpg" for i in ids], "width": 640,
                             "height": 480, "coco_url": None})  # fmt: skip

    def captions(self) -> pd.DataFrame:
        ids = self.caption_ids(range(1, self.n_images + 1))
        base = (ids - 1) % len(self.texts)
        raw = [self.texts[b] for b in base]
        text = [" ".join(caption_words(t)) for t in raw]
        return pd.DataFrame({"caption_id": ids, "image_id": (ids - 1) // self.per_image + 1, "raw": raw,
                             "text": text, "n_words": self.lengths[base]})  # fmt: skip

    def instances(self) -> pd.DataFrame:
        """About 7 labelled objects per image, like COCO (boxes and polygons are placeholders)."""
        rng = np.random.default_rng(self.seed + 1)
        image = np.repeat(np.arange(1, self.n_images + 1), rng.poisson(7.3, self.n_images))
        categories = np.unique(self.category_of_code[self.category_of_code >= 0])
        n = len(image)
        return pd.DataFrame({"annotation_id": np.arange(1, n + 1), "image_id": image,
                             "category_id": rng.choice(categories, n), "bbox_x": 10.0, "bbox_y": 10.0,
                             "bbox_w": 100.0, "bbox_h": 80.0, "area": 8000.0, "iscrowd": False,
                             "segmentation": "[[10, 10, 110, 10, 110, 90, 10, 90]]"})  # fmt: skip

    def results(self, image_ids: range) -> dict[str, pd.DataFrame]:
        """caption_results, caption_maps and words of a block of images, vectorised."""
        rng = np.random.default_rng([self.seed, image_ids.start])
        caption_id = self.caption_ids(image_ids)
        image_id = (caption_id - 1) // self.per_image + 1
        base = (caption_id - 1) % len(self.texts)
        lengths = self.lengths[base]
        n = int(lengths.sum())
        row_caption = np.repeat(caption_id, lengths)
        word_index = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        codes = self.codes[np.repeat(self.offsets[base], lengths) + word_index]
        category = self.category_of_code[codes]
        attribute = self.attribute_of_code[codes]
        has_object = (category >= 0) & (rng.uniform(size=n) < 0.7)
        mask_mass = np.where(has_object, rng.beta(2, 3, n), np.nan)
        words = pd.DataFrame({
            "image_id": (row_caption - 1) // self.per_image + 1, "caption_id": row_caption,
            "word_index": word_index.astype(np.int16),
            "word": pd.Categorical.from_codes(codes, categories=self.vocab),
            "n_pieces": 1 + (rng.uniform(size=n) < 0.1),
            "category_id": pd.array(np.where(category >= 0, category, None), dtype="Int32"),
            "word_class": np.where(category >= 0, "object", np.where(attribute, "attribute", "other")),
            "method": METHOD, "layer": LAYER,
            "peak_row": rng.integers(0, GRID, n), "peak_col": rng.integers(0, GRID, n),
            "peak_value": rng.uniform(0.005, 0.2, n), "entropy": rng.beta(8, 2, n), "mask_mass": mask_mass,
            "box_mass": np.minimum(1, mask_mass + rng.uniform(0, 0.2, n)), "background_mass": rng.beta(2, 3, n),
            "pointing_hit": pd.array(np.where(has_object, rng.uniform(size=n) < 0.3 + 0.7 * np.nan_to_num(mask_mass),
                                              None), dtype="boolean"),
            "iou_top60": np.where(has_object, rng.beta(2, 4, n), np.nan),
            "itm_score": self.itm[row_caption - 1], "map": self._maps(rng, n), "map_max": rng.uniform(0.01, 1, n),
        })  # fmt: skip
        m = len(caption_id)
        return {
            "caption_results": pd.DataFrame({"caption_id": caption_id, "image_id": image_id,
                                             "itm_score": self.itm[caption_id - 1],
                                             "itc_score": rng.uniform(-1, 1, m)}),
            "caption_maps": pd.DataFrame({"caption_id": caption_id, "image_id": image_id, "method": METHOD,
                                          "layer": LAYER, "map": self._maps(rng, m), "map_max": rng.uniform(0.01, 1, m),
                                          "cls_map": self._maps(rng, m), "cls_map_max": rng.uniform(0.01, 1, m)}),
            "words": words,
        }  # fmt: skip

    def _maps(self, rng: np.random.Generator, n: int) -> list[bytes]:
        """n distinct 576-byte maps: a pooled smooth bump plus per-cell noise (incompressible, like real maps)."""
        maps = self.pool[rng.integers(0, len(self.pool), n)]
        maps += rng.integers(0, 16, maps.shape, dtype=np.uint8)
        return list(map(bytes, maps))


if __name__ == "__main__":
    raise SystemExit(main())
