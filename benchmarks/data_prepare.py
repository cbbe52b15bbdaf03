"""Data preparation: decode + synchronisation speed, peak memory, and the cost of a 6-trial sweep.

Writes the demo episodes as ROS 2 bags (rgb8 frames, or --encoding), then, each in a fresh process:

* **one preparation** on an empty cache: frames/s of decode + synchronise + cache write, and the
  process's peak RSS next to the size of the decoded frames (the original trainer held every frame
  in RAM plus a float32 copy: ~5x the frame bytes);
* **six trials at once** on an empty cache (six processes released together, as a sweep's trials
  start): wall time relative to one preparation (target ~1x: one decodes, five map the result),
  next to what six independent decodes (no shared cache, the original's way) cost.

    python benchmarks/data_prepare.py [--episodes 12] [--frames 100] [--size 240x320]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prepare(overrides: list[str], barrier, out) -> None:
    from tune_app.config import load_config
    from tune_app.data.sources import prepare_cache

    cfg = load_config(None, overrides)
    barrier.wait()
    tracemalloc.start()
    t0 = time.perf_counter()
    eps, built, _ = prepare_cache(cfg, log=lambda m: None)
    touched = int(eps.images[::7].sum() > 0)     # map the frames as a trial would
    heap_peak = tracemalloc.get_traced_memory()[1] / 2**20
    out.put((built, time.perf_counter() - t0, heap_peak, eps.num_frames, touched))


def run_group(n: int, overrides: list[str]) -> tuple[float, list]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_prepare, args=(overrides, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return max(r[1] for r in results), results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--encoding", default="rgb8")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))

    from tune_app.config import load_config
    from tune_app.data.bagwriter import write_demo_bags
    from tune_app.data.demo import make_demo

    work = Path(tempfile.mkdtemp(prefix="tune_app_bench_"))
    try:
        base = [f"conventions.image_resize=[{h}, {w}]", "data.camera_topic=/camera/color"]
        cfg = load_config(None, base)
        t0 = time.perf_counter()
        write_demo_bags(work / "bags", cfg, make_demo(args.episodes, args.frames, (h, w)), encoding=args.encoding)
        bag_mb = sum(f.stat().st_size for f in (work / "bags").rglob("*") if f.is_file()) / 2**20
        print(f"bags: {args.episodes} x {args.frames} frames at {h}x{w} ({args.encoding}), {bag_mb:.0f} MiB, "
              f"written in {time.perf_counter() - t0:.1f} s")
        overrides = [*base, f"data.bag_dir={work / 'bags'}"]

        one, res = run_group(1, [*overrides, f"data.cache_dir={work / 'c1'}"])
        built, _, heap, frames, _ = res[0]
        frame_mb = frames * h * w * 3 / 2**20
        print(f"one preparation: {one:.2f} s, {frames / one:.0f} frames/s (decode + sync + cache write); peak heap "
              f"{heap:.1f} MiB (tracemalloc: numpy + Python; the frames go to a file-backed memory map) for {frame_mb:.0f} MiB "
              f"of frames (original: every frame in RAM + a float32 copy, ~{5 * frame_mb:.0f} MiB)")

        six, res = run_group(6, [*overrides, f"data.cache_dir={work / 'c6'}"])
        decodes = sum(r[0] for r in res)
        print(f"six trials at once, shared cache: {six:.2f} s, {decodes} decode(s); ratio to one preparation {six / one:.2f}x")
        solo = []
        for i in range(6):
            t, _ = run_group(1, [*overrides, f"data.cache_dir={work / f'solo{i}'}"])
            solo.append(t)
        print(f"six independent decodes (no shared cache, one after another): {sum(solo):.2f} s = {sum(solo) / one:.2f}x "
              f"-> the shared cache saves {sum(solo) / six:.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
