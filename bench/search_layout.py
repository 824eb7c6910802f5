"""``semarc bench search-layout``: the latent search with channels-last tensors
against the same search with contiguous ones, in one run, on the same images.

The search (``codec/latent_search.py``) runs its convolutions channels-last
on a CPU by default. The layout changes float rounding, so the two searches
may settle on other symbols: this bench codes each image with both, through
the whole encoder (analysis, search, entropy coding, verification),
alternating the order per image, and reports encode seconds, bytes (the
whole stored image section), PSNR and LPIPS-Alex of the decoded images, per
image and as means, and the ratio of the times. Results:
``OUT/search_layout.json`` and ``OUT/search_layout.md``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

LAYOUTS = ("contiguous", "channels_last")


def run(out_dir: str, point: str, steps: int, threads: int = 1, shared: str = "../shared/data",
        corpus: str | None = None, max_side: int | None = None, images_dir: str | None = None,
        only: list[str] | None = None, command: str = "") -> dict:
    import torch

    from semarc import metrics
    from semarc.bench import kodak
    from semarc.codec import latent_search, record
    from semarc.codec.image import ImageCoder

    if steps <= 0:
        raise SystemExit("semarc bench search-layout: --latent-steps must be one count > 0")
    torch.set_num_threads(threads)
    images, _ = kodak.load_set(shared, corpus, max_side, images_dir, only)
    dataset = kodak.set_name(corpus, max_side, images_dir)
    coder = ImageCoder(point, latent_steps=steps)
    loss, lpips_alex = coder.latent_loss, metrics.LPIPSAlex()
    searches = {layout: (lambda x, y, z, size, cl=(layout == "channels_last"): latent_search.search_latents(
        coder.net, x, y, z, size, steps, loss, lpips_alex, channels_last=cl)) for layout in LAYOUTS}
    rows = []
    for i, (name, a) in enumerate(images):
        order = LAYOUTS if i % 2 == 0 else LAYOUTS[::-1]
        for layout in order:
            coder.arch.search = searches[layout]
            t = time.perf_counter()
            (c,) = coder.encode_batch([a])
            seconds = time.perf_counter() - t
            section = record.pack_image(c.payload, c.check)
            back = coder.decode_batch([record.unpack_image(section)])[0]
            rows.append({"image": name, "layout": layout, "encode_s": round(seconds, 2), "bytes": len(section),
                         "bpp": metrics.bpp(len(section), a.shape[0] * a.shape[1]),
                         "sha256": hashlib.sha256(section).hexdigest(),
                         "psnr": metrics.psnr(a, back), "lpips": metrics.lpips(a, back)})
            print(f"[search-layout] {name} {layout}: {seconds:.1f} s, {len(section)} B, "
                  f"{rows[-1]['psnr']:.2f} dB, LPIPS {rows[-1]['lpips']:.4f}", flush=True)
    means = {layout: {k: float(np.mean([r[k] for r in rows if r["layout"] == layout]))
                      for k in ("encode_s", "bytes", "bpp", "psnr", "lpips")} for layout in LAYOUTS}
    same = sum(r["sha256"] == s["sha256"] for r, s in zip(rows[0::2], rows[1::2]))
    result = {"command": command, "dataset": dataset, "point": point, "latent_steps": steps,
              "latent_loss": [loss.lmbda, loss.lpips_weight], "machine": kodak.machine(), "torch_threads": threads,
              "versions": kodak.versions(), "images": len(images), "identical_codes": same, "means": means,
              "time_ratio": means["channels_last"]["encode_s"] / means["contiguous"]["encode_s"], "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_layout.json").write_text(json.dumps(result, indent=1))
    (out / "search_layout.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    m = r["means"]
    lines = ["# Latent search: channels-last against contiguous tensors", "",
             f"Command: `{r['command']}`; {r['images']} images of {r['dataset']}; point `{r['point']}`, "
             f"{r['latent_steps']} steps; machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), "
             f"{r['torch_threads']} torch thread(s).", "",
             "Each image coded by the whole encoder with each layout (the order alternating per image); "
             "means over the images.", "",
             "| layout | encode s/image | bpp | PSNR (dB) | LPIPS-Alex |", "| --- | --- | --- | --- | --- |"]
    for layout in LAYOUTS:
        lines.append(f"| {layout} | {m[layout]['encode_s']:.1f} | {m[layout]['bpp']:.5f} | {m[layout]['psnr']:.3f} "
                     f"| {m[layout]['lpips']:.4f} |")
    lines += ["", f"Time ratio, channels-last / contiguous: **{r['time_ratio']:.3f}**. Images whose stored section "
              f"(header, payload, check) is the same bit for bit with both: {r['identical_codes']} of {r['images']}.", ""]
    return "\n".join(lines)
