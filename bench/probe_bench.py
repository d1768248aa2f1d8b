"""The live probe's warm time for a 10-word caption: the demo model (function and page) and ALBEF base.

Side by side in one process, each after a warm-up: `extractor.probe.probe` with the committed demo model on a
demo scene (the model's load is timed apart), the Image page's probe panel in `streamlit.testing` (the
script's whole rerun after the caption is typed: probe, overlays, table), and the probe with ALBEF base
(ViT-B/16 at 384 px, BERT-base, `ALBEFConfig()`) with random weights: timing needs no checkpoint. Each
caption is new, so no cache answers it. The goal is 2 s to maps on screen for the demo model.

    .venv/bin/python -m bench.probe_bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import torch

from extractor import probe
from extractor.config import ALBEFConfig
from extractor.demo.prepare import prepare
from extractor.model import ALBEF

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 2.0
# 10 words each; a new caption per timed run, so neither the page's cache nor anything else answers it.
COLOURS = ("red", "blue", "green", "yellow", "pink", "white", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star", "heart", "hexagon", "diamond", "box")


def caption(i: int) -> str:
    """The i-th 10-word caption of the demo's grammar."""
    a, b = COLOURS[i % len(COLOURS)], COLOURS[(i // len(COLOURS) + 3) % len(COLOURS)]
    return f"a big {a} {SHAPES[i % len(SHAPES)]} left of a small {b} {SHAPES[(i + 3) % len(SHAPES)]}"


def timed(step: Callable[[int], object], warmup: int, repeat: int) -> list[float]:
    """Seconds of `repeat` calls `step(i)` after `warmup` untimed ones."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + repeat):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def demo_run(folder: Path) -> tuple[dict, Path, int]:
    """A small demo database's run row, its first image and that image's id."""
    db = prepare(folder, n_images=4, seed=0, res=128)
    with duckdb.connect(str(db), read_only=True) as con:
        run = con.execute("SELECT * FROM runs").df().iloc[0].to_dict()
        image_id, file_name = con.execute("SELECT image_id, file_name FROM images ORDER BY image_id").fetchone()
    return run, Path(run["images_dir"]) / file_name, int(image_id)


def page_step(db: Path, store: Path, image_id: int) -> Callable[[int], object]:
    """Typing caption i into the Image page's probe panel, as one AppTest rerun."""
    from streamlit.testing.v1 import AppTest

    sys.argv = [str(REPO / "dashboard" / "app.py"), "--db", str(db), "--review-db", str(store)]
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=300)
    at.run()
    at.query_params.update({"image": str(image_id)})
    at.switch_page("views/image.py").run()

    def step(i: int) -> object:
        at.text_input(key="probe_caption").input(caption(i)).run()
        if at.exception or at.error:
            raise RuntimeError(f"the page failed: {[e.value for e in [*at.exception, *at.error]]}")
        return at

    return step


def albef_base() -> tuple[torch.nn.Module, probe.ProbeSettings]:
    """ALBEF base with random weights, frozen, and the probe settings of a run of it (both methods, all layers)."""
    torch.manual_seed(0)
    cfg = ALBEFConfig()
    model = ALBEF(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    settings = probe.ProbeSettings(Path("random-albef-base.pth"), None, json.dumps(cfg.to_dict()),
                                   tuple(cfg.fusion_layers), cfg.gradcam_block)  # fmt: skip
    return model, settings


def line(name: str, times: list[float]) -> float:
    median = statistics.median(times)
    print(f"{name:<44} median {median:7.3f} s  (min {min(times):.3f}, max {max(times):.3f}, n={len(times)}); "
          f"{median / GOAL_S:5.2f}x the 2 s goal")  # fmt: skip
    return median


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10, help="timed probes per variant (ALBEF base: a third of it)")
    p.add_argument("--warmup", type=int, default=2, help="untimed probes before each variant")
    p.add_argument("--skip-base", action="store_true", help="leave out ALBEF base (a few GB of memory, slow)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        run, image, image_id = demo_run(Path(tmp) / "demo")
        settings = probe.ProbeSettings.from_run(run)
        start = time.perf_counter()
        probe.probe(settings, image, caption(0))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo model at {run['image_res']} px")
        print(f"{'demo: first probe (loads the model)':<44} {time.perf_counter() - start:7.3f} s")
        function = line("demo: probe() warm", timed(lambda i: probe.probe(settings, image, caption(i)),
                                                         args.warmup, args.repeat))  # fmt: skip
        heads = line("demo: probe() warm, each head", timed(lambda i: probe.probe(settings, image, caption(i),
                                                            heads=True), args.warmup, args.repeat))  # fmt: skip
        db = Path(tmp) / "demo" / "demo.duckdb"
        page = line("demo: Image page rerun after typing", timed(page_step(db, Path(tmp) / "review.sqlite", image_id),
                                                                 args.warmup, args.repeat))  # fmt: skip
        print(f"page / function {page / function:.1f}x; each head / mean only {heads / function:.1f}x")
        if not args.skip_base:
            n, (model, base_settings), cpu = max(1, args.repeat // 3), albef_base(), torch.device("cpu")

            def base_step(heads: bool) -> Callable[[int], object]:
                return lambda i: probe.probe_with(model, base_settings, image, caption(i), cpu, heads=heads)

            base = line("ALBEF base 384 px, CPU: probe_with() warm", timed(base_step(False), 1, n))
            base_heads = line("ALBEF base 384 px, CPU: each head", timed(base_step(True), 1, n))
            print(f"ALBEF base / demo {base / function:.0f}x; each head / mean only {base_heads / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
