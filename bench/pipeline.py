"""``semarc bench pipeline --out DIR``: the whole encode job against its
slowest stage, and its memory, at 1,000 and 10,000 inputs.

Inputs: distinct crops of the bundled sample photos (PNG, ``--crop`` pixels
square), each with a real caption (COCO val2017 captions in a fixed shuffled
order, seed 0; ``--caption-every K`` puts one on every K-th input only), in a
local folder with a manifest; output to a local folder. For each size, in the
same run:

* ``stage_bound``: each stage's isolated per-input cost, measured in this
  process on a sample of the same inputs with one torch thread (image stage:
  read the file, decode it, code it in batches of the job's image batch;
  caption stage: code two whole batches of the job's caption batch
  size, as the job sends them, per input, i.e. times the share of inputs with
  a caption), turned into
  images/s with the job's pool sizes (``cluster.ray_cluster.size_pools``);
  the slowest stage bounds the job;
* ``throughput``: inputs / wall time of the whole ``semarc encode`` command
  (a fresh local Ray cluster started and stopped by it);
* ``overhead`` = 1 - throughput / stage_bound;
* ``marginal`` (two sizes or more): the steady-state throughput, (largest -
  smallest inputs) / (their wall-time difference), its overhead against the
  largest run's stage bound, and the implied fixed cost of a job (Ray start,
  loading the models into the actors, the last shard's tail);
* ``peak_rss_mb``: the peak resident memory (``VmHWM``) of the driver and of the
  largest Ray worker process, read from /proc while the job runs.

Writes ``DIR/pipeline.json`` and ``DIR/pipeline.md``.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def _make_inputs(d: Path, n: int, crop: int, captions: list[str], every: int) -> list[dict]:
    from PIL import Image

    from semarc.jobs.sample import write_sample

    sample = d / "sample"
    if not sample.exists():
        write_sample(str(sample))
    photos = [Image.open(p).convert("RGB") for p in sorted((sample / "images").iterdir())]
    img_dir = d / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        im = photos[i % len(photos)]
        x = (i * 37) % (im.width - crop)
        y = (i * 53 // len(photos)) % (im.height - crop)
        p = img_dir / f"{i:05d}.png"
        if not p.exists():
            buf = io.BytesIO()
            im.crop((x, y, x + crop, y + crop)).save(buf, "PNG", compress_level=1)
            p.write_bytes(buf.getvalue())
        row = {"uri": f"img/{i:05d}.png", "key": f"k{i:05d}"}
        if i % every == 0:
            row["caption"] = captions[i % len(captions)]
        rows.append(row)
    (d / f"manifest-{n}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def _stage_costs(d: Path, rows: list[dict], image_batch: int, caption_batch: int, sample: int = 96) -> dict:
    import torch

    from semarc.codec.caption import CaptionCoder
    from semarc.codec.image import ImageCoder
    from semarc.codec.imageio import read_image

    torch.set_num_threads(1)
    img, cap = ImageCoder(), CaptionCoder(batch_size=caption_batch)
    sub = rows[:sample]
    t = time.time()
    for b in range(0, len(sub), image_batch):
        arrs = [read_image((d / r["uri"]).read_bytes()) for r in sub[b:b + image_batch]]
        img.encode_batch(arrs)
    per_image = (time.time() - t) / len(sub)
    # two whole batches of captions, as the job sends them
    caps = [r["caption"] for r in rows if "caption" in r][:2 * caption_batch]
    cap.encode_batch(caps[:4])  # warm
    t = time.time()
    for b in range(0, len(caps), caption_batch):
        cap.encode_batch(caps[b:b + caption_batch])
    per_caption = (time.time() - t) / len(caps)
    share = sum("caption" in r for r in rows) / len(rows)
    return {"image_s_per_input": per_image, "caption_s_per_input": per_caption * share,
            "caption_s_per_caption": per_caption, "caption_share": share}


def _hwm_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                ppid = int(open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(e))
    out, stack = [], [pid]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _run_job(d: Path, n: int, num_cpus: int, image_batch: int) -> dict:
    out = d / f"out-{n}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh job each run: a finished one would only be skipped
    cmd = [sys.executable, "-m", "semarc.cli", "encode", str(d / f"manifest-{n}.jsonl"), str(out), "--shard-size",
           "256", "--num-cpus", str(num_cpus), "--image-batch", str(image_batch), "--no-progress"]
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    peaks = {"driver": 0, "worker": 0}
    t = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peaks["driver"] = max(peaks["driver"], _hwm_kb(proc.pid))
            for p in _tree(proc.pid):
                try:
                    cmdline = open(f"/proc/{p}/cmdline", "rb").read()
                except OSError:
                    continue
                if cmdline.startswith(b"ray::"):
                    peaks["worker"] = max(peaks["worker"], _hwm_kb(p))
            stop.wait(0.5)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    so, se = proc.communicate()
    wall = time.time() - t
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"encode of {n} inputs failed ({proc.returncode}): {se[-2000:]}")
    if "(0 already done)" not in so:
        raise SystemExit(f"encode of {n} inputs skipped finished shards; the timing would be meaningless: {so[-500:]}")
    return {"wall_s": wall, "driver_peak_rss_mb": peaks["driver"] / 1024, "worker_peak_rss_mb": peaks["worker"] / 1024,
            "stdout": so.strip().splitlines()[-1:]}


def run(out_dir: str, sizes=(1000, 10000), crop: int = 128, num_cpus: int = 2, image_batch: int = 4,
        caption_batch: int = 64, work: str | None = None, shared: str = "../shared/data",
        caption_every: int = 1) -> dict:
    from semarc.bench.captions import coco_shuffled
    from semarc.cluster.ray_cluster import size_pools

    work_dir = Path(work or (Path(out_dir) / "_pipeline_work"))
    work_dir.mkdir(parents=True, exist_ok=True)
    specs = size_pools(num_cpus, 0, caption_batch, image_batch)
    captions = coco_shuffled(Path(shared))  # the caption bench's order: its 500-caption sample comes first
    result = {"command": f"semarc bench pipeline --out {out_dir} --sizes {','.join(map(str, sizes))} --crop {crop} "
                         f"--num-cpus {num_cpus}" + (f" --caption-every {caption_every}" if caption_every != 1 else ""),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "crop": crop,
              "captions": f"COCO val2017 (shuffled, seed 0) on one input in {caption_every}"
                          if caption_every != 1 else "COCO val2017 (shuffled, seed 0) on every input",
              "pools": {k: {"size": s.size, "batch": s.batch_size} for k, s in specs.items()}, "runs": []}
    for n in sizes:
        print(f"[pipeline] {n} inputs", file=sys.stderr, flush=True)
        rows = _make_inputs(work_dir, n, crop, captions, caption_every)
        costs = _stage_costs(work_dir, rows, image_batch, caption_batch)
        bounds = {"image": specs["image"].size / costs["image_s_per_input"],
                  "caption": specs["caption"].size / costs["caption_s_per_input"]}
        stage_bound = min(bounds.values())
        job = _run_job(work_dir, n, num_cpus, image_batch)
        thr = n / job["wall_s"]
        rec = {"inputs": n, "throughput": round(thr, 2), "stage_bound": round(stage_bound, 2),
               "slowest_stage": min(bounds, key=bounds.get), "stage_images_per_s": {k: round(v, 2) for k, v in
                                                                                     bounds.items()},
               "overhead": round(1 - thr / stage_bound, 3),
               "peak_rss_mb": {"driver": round(job["driver_peak_rss_mb"], 1),
                               "largest_worker": round(job["worker_peak_rss_mb"], 1)},
               "wall_s": round(job["wall_s"], 1), "stage_costs": {k: round(v, 5) for k, v in costs.items()},
               "job_report": job["stdout"]}
        result["runs"].append(rec)
        print(json.dumps(rec), file=sys.stderr, flush=True)
    if len(result["runs"]) >= 2:
        first, last = result["runs"][0], result["runs"][-1]
        a, b = first["peak_rss_mb"], last["peak_rss_mb"]
        result["memory_growth"] = {k: round(b[k] / a[k] - 1, 3) if a[k] else None for k in a}
        # steady state: the extra inputs over the extra wall time (start-up, model loading and the
        # last shard's tail cancel out), against the larger run's stage bound
        marginal = (last["inputs"] - first["inputs"]) / (last["wall_s"] - first["wall_s"])
        result["marginal"] = {"throughput": round(marginal, 2),
                              "overhead": round(1 - marginal / last["stage_bound"], 3),
                              "fixed_cost_s": round(first["wall_s"] - first["inputs"] / marginal, 1)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Encode pipeline: whole job vs its slowest stage", "",
             f"Command: `{result['command']}` ({result['machine']}; pools {json.dumps(result['pools'])}).", "",
             f"Inputs: {crop}x{crop} crops of the bundled photos; captions: {result['captions']}.", "",
             "| inputs | throughput (img/s) | stage bound (img/s) | slowest stage | overhead | driver peak RSS (MB) | "
             "largest worker peak RSS (MB) | wall (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        lines.append(f"| {r['inputs']} | {r['throughput']} | {r['stage_bound']} | {r['slowest_stage']} | "
                     f"{r['overhead']:.1%} | {r['peak_rss_mb']['driver']} | {r['peak_rss_mb']['largest_worker']} | "
                     f"{r['wall_s']} |")
    if "memory_growth" in result:
        lines += ["", f"Peak memory growth from the smallest to the largest run: {json.dumps(result['memory_growth'])}."]
        m = result["marginal"]
        lines += ["", f"Steady state (extra inputs / extra wall time between the smallest and largest run): "
                      f"{m['throughput']} img/s, overhead {m['overhead']:.1%} against the largest run's stage bound; "
                      f"fixed cost (Ray start, actor and model loading, last shard) about {m['fixed_cost_s']} s."]
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    return result
