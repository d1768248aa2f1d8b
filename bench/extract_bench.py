"""Extraction speed at the real ALBEF-base size, three ways side by side in one process.

1. ViT forward alone (the floor: every extraction must encode the image once);
2. our full extraction, as `extractor run` does a batch of one image: one image encode, its 5 captions
   fused together, raw attention of every fusion layer and Grad-CAM from one backward, words merged,
   every metric and the uint8 maps computed on the device, copied back and laid out as Arrow rows;
3. a per-caption loop like ALBEF's visualization notebook: for each caption the image is encoded
   again and the whole model is back-propagated (model.zero_grad(); loss.backward()).

Weights are random (speed does not depend on them); images and captions are real COCO.
Goal: full <= 1.3 x ViT alone and >= 4 x faster than the per-caption loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from bench.coco_args import add_coco_arguments
from extractor.batch import ImageItem, collate
from extractor.coco import load_image
from extractor.config import ALBEFConfig
from extractor.image import eval_transform, resized_pixels
from extractor.maps import batch_maps
from extractor.model import ALBEF
from extractor.pipeline import device_outputs, host_rows
from extractor.summarize import run_slices
from extractor.text import Tokenizer, batch_tensors, pre_caption


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each measured call.

    CPU time is reported beside wall time because it is robust to other load on a shared machine.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco_arguments(parser)
    parser.add_argument("--images", type=int, default=3, help="distinct images, each timed")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs per image and variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = ALBEFConfig(image_res=args.image_res)
    model = ALBEF(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = Tokenizer(args.vocab, cfg.bert.max_position_embeddings)
    mapper = partial(batch_maps, model, layers=cfg.fusion_layers, gradcam=True)
    slices = run_slices(cfg.fusion_layers, cfg.gradcam_block)
    data = json.loads(next((args.coco / "annotations").glob("captions_*.json")).read_text())
    by_image: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    images = sorted(data["images"], key=lambda im: im["id"])[: args.images]

    results: dict[str, list[tuple[float, float]]] = {"vit": [], "full": [], "loop": []}
    for im in images:
        img = load_image(args.coco / "val2017" / im["file_name"])
        pixels = eval_transform(img, cfg.image_res)[None]
        caps = tokenizer([pre_caption(c, cfg.max_words) for c in by_image[im["id"]][:5]])

        def vit(pixels=pixels) -> None:
            with torch.no_grad():
                model.encode_image(pixels)

        captions = [(i, c, [None] * len(c.words)) for i, c in enumerate(caps)]
        item = ImageItem(im, args.coco / "val2017" / im["file_name"], resized_pixels(img, cfg.image_res), None,
                         None, captions, [])  # fmt: skip

        def full(item=item) -> None:
            batch = collate([item])
            host_rows(batch, device_outputs(batch, mapper, slices), slices, "bench")

        def loop(pixels=pixels, caps=caps) -> None:
            for p in model.parameters():
                p.requires_grad_(True)
            for cap in caps:
                ids, mask = batch_tensors([cap])
                image = model.encode_image(pixels)
                fused = model.fuse(model.encode_text(ids, mask), mask, image)
                attn = fused.cross_attentions[cfg.gradcam_block - cfg.bert.fusion_layer]
                attn.retain_grad()
                loss = model.itm_head(fused.hidden[:, 0])[:, 1].sum()
                model.zero_grad()
                loss.backward()
            for p in model.parameters():
                p.requires_grad_(False)

        for name, fn in (("vit", vit), ("full", full), ("loop", loop)):
            results[name] += timed(fn, warmup=1, repeats=args.repeats)

    print(
        f"ALBEF base at {cfg.image_res} px, {len(images)} COCO images x 5 captions, "
        f"{args.threads} CPU threads, median per image:"
    )
    for clock, i in (("wall", 0), ("CPU", 1)):
        med = {k: statistics.median(t[i] for t in v) for k, v in results.items()}
        print(
            f"  [{clock} time] ViT alone {med['vit']:.3f} s | full extraction {med['full']:.3f} s "
            f"= {med['full'] / med['vit']:.2f} x ViT (goal <= 1.30) | per-caption loop {med['loop']:.3f} s "
            f"= {med['loop'] / med['full']:.2f} x ours (goal >= 4)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
