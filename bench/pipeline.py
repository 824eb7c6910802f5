"""``semarc bench pipeline --out DIR``: the whole encode job against its
slowest stage, and its memory, at 1,000 and 10,000 inputs.

Inputs: distinct crops of the bundled sample photos (PNG, ``--crop`` pixels
square), each with a real caption (COCO val2017 captions in a fixed shuffled
order, seed 0; ``--caption-every K`` puts one on every K-th input only), in a
local folder with a manifest; output to a local folder. For each size, in the
same run:

* ``stage_bound``: each stage's isolated per-input cost, measured in this
  process with one torch thread, as an actor runs, on calls spread evenly
  over the job's own list of calls (``_job_batches``: image stage, 24 calls
  of the job's image batch: read the files, decode, code; caption stage, 6
  whole caption batches as the job sends them, per input, i.e. times the
  share of inputs with a caption), timed before and after the job and
  averaged (both are recorded), turned into images/s with the job's pool
  sizes (``cluster.ray_cluster.size_pools``); the slowest stage bounds the job.
  (Timing only the job's first two batches, before the job, made the bound
  2-5% too high: those hold shorter captions than the average batch);
* ``throughput``: inputs / wall time of the whole ``semarc encode`` command
  (a fresh local Ray cluster started and stopped by it);
* ``overhead`` = 1 - throughput / stage_bound;
* ``marginal`` (two sizes or more): the steady-state throughput, (largest -
  smallest inputs) / (their wall-time difference), its overhead against the
  largest run's stage bound, and the implied fixed cost of a job (Ray start,
  loading the models into the actors, the last shard's tail);
* ``slowest_stage_in_job``: from the job's own report (``--report``, the
  pools' busy time, ``workers.meter``): the slowest stage's cost per input in
  the job, against the isolated figure, and its idle time (the wall time
  minus its busy time per actor: Ray start, model loading, the last shard's
  tail), which splits the overhead into start-up and steady state;
* ``peak_rss_mb``: the peak resident memory (``VmHWM``) of the driver and of the
  largest Ray worker process, read from /proc while the job runs.

The image codec is ``CODEC`` (``semarc-fast``): the bench measures the job
machinery against its stages, with the small codec its checked-in results
were made with.

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

CODEC = "semarc-fast"  # the image codec of the measured job (codec/zoo.py)


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


def _job_batches(rows: list[dict], shard_size: int, image_batch: int, caption_batch: int) -> tuple[list, list]:
    """The calls the job makes, in its order: per shard, the image uris in
    batches of ``image_batch``, and that shard's captions in batches of
    ``caption_batch`` (only records with a caption are sent; jobs/encode.py)."""
    img, cap = [], []
    for s in range(0, len(rows), shard_size):
        shard = rows[s:s + shard_size]
        img += [[r["uri"] for r in shard[b:b + image_batch]] for b in range(0, len(shard), image_batch)]
        caps = [r["caption"] for r in shard if "caption" in r]
        cap += [caps[b:b + caption_batch] for b in range(0, len(caps), caption_batch)]
    return img, cap


def _spread(items: list, k: int) -> list:
    """``k`` items evenly spaced over ``items``, first and last included."""
    if len(items) <= k:
        return list(items)
    return [items[round(j * (len(items) - 1) / (k - 1))] for j in range(k)]


class _Stages:
    """Each stage's isolated cost, timed in this process with one torch thread
    (as an actor runs) on calls spread over the job's own call list: the image
    stage reads, decodes and codes ``image_calls`` image batches, the caption
    stage codes ``caption_calls`` whole caption batches. Timing the first
    calls only would underestimate a large job's caption cost (later batches
    hold longer captions and padding makes a batch cost follow its longest)."""

    def __init__(self, d: Path, shard_size: int, image_batch: int, caption_batch: int) -> None:
        import torch

        from semarc.codec.caption import CaptionCoder
        from semarc.codec.image import ImageCoder

        torch.set_num_threads(1)
        self.d, self.batches = d, (shard_size, image_batch, caption_batch)
        self.img, self.cap = ImageCoder(CODEC), CaptionCoder(batch_size=caption_batch)
        self.cap.encode_batch(["A warm-up caption.", "Two dogs on a beach."])

    def measure(self, rows: list[dict], image_calls: int = 24, caption_calls: int = 6) -> dict:
        from semarc.codec.imageio import read_image

        img_b, cap_b = _job_batches(rows, *self.batches)
        img_b, cap_b = _spread(img_b, image_calls), _spread(cap_b, caption_calls)
        t = time.perf_counter()
        for uris in img_b:
            self.img.encode_batch([read_image((self.d / u).read_bytes()) for u in uris])
        per_image = (time.perf_counter() - t) / sum(map(len, img_b))
        t = time.perf_counter()
        for caps in cap_b:
            self.cap.encode_batch(caps)
        n_caps = sum(map(len, cap_b))
        per_caption = (time.perf_counter() - t) / n_caps if n_caps else 0.0
        share = sum("caption" in r for r in rows) / len(rows)
        return {"image_s_per_input": per_image, "caption_s_per_input": per_caption * share,
                "caption_s_per_caption": per_caption, "caption_share": share,
                "timed": {"image_calls": len(img_b), "caption_calls": len(cap_b), "captions": n_caps}}


def _rounded(costs: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in costs.items()}


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


def _run_job(d: Path, n: int, num_cpus: int, image_batch: int, shard_size: int) -> dict:
    out = d / f"out-{n}"
    report = d / f"report-{n}.json"
    shutil.rmtree(out, ignore_errors=True)  # a fresh job each run: a finished one would only be skipped
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "semarc.cli", "encode", str(d / f"manifest-{n}.jsonl"), str(out), "--shard-size",
           str(shard_size), "--num-cpus", str(num_cpus), "--image-batch", str(image_batch), "--codec", CODEC,
           "--no-progress", "--report", str(report)]
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
    rep = json.loads(report.read_text())
    if rep["shards_skipped"]:
        raise SystemExit(f"encode of {n} inputs skipped finished shards; the timing would be meaningless: {so[-500:]}")
    return {"wall_s": wall, "driver_peak_rss_mb": peaks["driver"] / 1024, "worker_peak_rss_mb": peaks["worker"] / 1024,
            "stdout": [x for x in so.strip().splitlines() if x.startswith("semarc encode:")], "stages": rep["stages"]}


def run(out_dir: str, sizes=(1000, 10000), crop: int = 128, num_cpus: int = 2, image_batch: int = 4,
        caption_batch: int = 64, work: str | None = None, shared: str = "../shared/data",
        caption_every: int = 1, shard_size: int = 256) -> dict:
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
    stages = None
    for n in sizes:
        print(f"[pipeline] {n} inputs", file=sys.stderr, flush=True)
        rows = _make_inputs(work_dir, n, crop, captions, caption_every)
        stages = stages or _Stages(work_dir, shard_size, image_batch, caption_batch)
        # the isolated costs, timed before and after the job (the machine's speed drifts) and averaged
        before = stages.measure(rows)
        job = _run_job(work_dir, n, num_cpus, image_batch, shard_size)
        after = stages.measure(rows)
        costs = {k: (before[k] + after[k]) / 2 for k in before if k != "timed"}
        bounds = {"image": specs["image"].size / costs["image_s_per_input"],
                  "caption": specs["caption"].size / costs["caption_s_per_input"]}
        stage_bound = min(bounds.values())
        slowest = min(bounds, key=bounds.get)
        thr = n / job["wall_s"]
        # the job's own pools (workers.meter): the slowest stage's busy time per actor, and the rest of the
        # wall time, when it had nothing to do (Ray start, model loading, the last shard's tail)
        in_job = job["stages"][{"image": "image coding", "caption": "caption coding"}[slowest]]
        busy = in_job["busy_s"] / in_job["actors"]
        rec = {"inputs": n, "throughput": round(thr, 2), "stage_bound": round(stage_bound, 2),
               "slowest_stage": slowest, "stage_images_per_s": {k: round(v, 2) for k, v in bounds.items()},
               "overhead": round(1 - thr / stage_bound, 3),
               "peak_rss_mb": {"driver": round(job["driver_peak_rss_mb"], 1),
                               "largest_worker": round(job["worker_peak_rss_mb"], 1)},
               "wall_s": round(job["wall_s"], 1),
               "stage_costs": _rounded(costs),
               "stage_costs_before_after": {"before": _rounded(before), "after": _rounded(after)},
               "slowest_stage_in_job": {"busy_s_per_actor": round(busy, 1),
                                        "s_per_input": round(in_job["busy_s"] / n, 5),
                                        "idle_s": round(job["wall_s"] - busy, 1)},
               "job_stages": job["stages"], "job_report": job["stdout"]}
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
             "largest worker peak RSS (MB) | wall (s) | slowest stage s/input: isolated before / after / in the job "
             "| its idle time in the job (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        key = f"{r['slowest_stage']}_s_per_input"
        ba, ij = r["stage_costs_before_after"], r["slowest_stage_in_job"]
        lines.append(f"| {r['inputs']} | {r['throughput']} | {r['stage_bound']} | {r['slowest_stage']} | "
                     f"{r['overhead']:.1%} | {r['peak_rss_mb']['driver']} | {r['peak_rss_mb']['largest_worker']} | "
                     f"{r['wall_s']} | {ba['before'][key]} / {ba['after'][key]} / {ij['s_per_input']} | "
                     f"{ij['idle_s']} |")
    if "memory_growth" in result:
        lines += ["", f"Peak memory growth from the smallest to the largest run: {json.dumps(result['memory_growth'])}."]
        m = result["marginal"]
        lines += ["", f"Steady state (extra inputs / extra wall time between the smallest and largest run): "
                      f"{m['throughput']} img/s, overhead {m['overhead']:.1%} against the largest run's stage bound; "
                      f"fixed cost (Ray start, actor and model loading, last shard) about {m['fixed_cost_s']} s."]
    (out / "pipeline.md").write_text("\n".join(lines) + "\n")
    return result
