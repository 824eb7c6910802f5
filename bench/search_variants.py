"""``semarc bench search-layout`` and ``semarc bench search-schedule``: one
point's latent search (``codec/latent_search.py``) in several variants, in
one run, on the same images.

- ``search-layout``: the search's convolutions on contiguous tensors against
  channels-last ones (the CPU default). The layout changes float rounding, so
  the two may settle on other symbols.
- ``search-schedule``: Adam's step sizes, ``SCHEDULE:PEAK`` each (e.g.
  ``constant:0.003,cosine:0.007``; ``latent_search.step_size``).

Each image is coded with every variant through the whole encoder (analysis,
search, entropy coding, verification), the order rotating per image, and the
bench reports encode seconds, bytes (the whole stored image section), PSNR
and LPIPS-Alex of the decoded images and the search's loss (the point's
training loss) of the latents it coded, per image and as means, with each
variant's time and bytes as ratios of the first variant's. Results:
``OUT/search_layout.{json,md}`` or ``OUT/search_schedule.{json,md}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

LAYOUTS = {"contiguous": {"channels_last": False}, "channels_last": {"channels_last": True}}
TITLES = {"search_layout": "Latent search: channels-last against contiguous tensors",
          "search_schedule": "Latent search: step schedules"}


def schedules(spec: str) -> dict[str, dict]:
    """``SCHEDULE:PEAK[,SCHEDULE:PEAK...]`` -> the variants of ``run``."""
    from semarc.codec import latent_search

    variants = {}
    for part in spec.split(","):
        kind, _, peak = part.strip().partition(":")
        try:
            value = float(peak)
            if not value > 0:
                raise ValueError
            latent_search.step_size(0, 1, value, kind)
        except ValueError:
            raise SystemExit(f"--schedules: expected SCHEDULE:PEAK with SCHEDULE one of "
                             f"{latent_search.SCHEDULES} and PEAK > 0, got {part!r}") from None
        variants[f"{kind}:{peak}"] = {"schedule": kind, "peak": value}
    if len(variants) < 2:
        raise SystemExit("--schedules: give at least two distinct schedules to compare")
    return variants


def run(out_dir: str, point: str, steps: int, variants: dict[str, dict] | None = None, name: str = "search_layout",
        threads: int = 1, shared: str = "../shared/data", corpus: str | None = None, max_side: int | None = None,
        images_dir: str | None = None, only: list[str] | None = None, command: str = "") -> dict:
    """Code each image with every variant (label -> keyword arguments of
    ``latent_search.search_latents``; default: the two layouts) and write
    ``OUT/NAME.json`` and ``OUT/NAME.md``."""
    import torch

    from semarc import metrics
    from semarc.bench import kodak
    from semarc.codec import latent_search, record
    from semarc.codec.image import ImageCoder

    if steps <= 0:
        raise SystemExit(f"semarc bench {name.replace('_', '-')}: --latent-steps must be one count > 0")
    variants = variants or LAYOUTS
    labels = list(variants)
    torch.set_num_threads(threads)
    images, _ = kodak.load_set(shared, corpus, max_side, images_dir, only)
    dataset = kodak.set_name(corpus, max_side, images_dir)
    coder = ImageCoder(point, latent_steps=steps)
    loss, lpips_alex = coder.latent_loss, metrics.LPIPSAlex()
    found = {}  # the search loss of the latents the last search returned

    def search(x, y, z, size, kw):
        ys, zs = latent_search.search_latents(coder.net, x, y, z, size, steps, loss, lpips_alex, **kw)
        with torch.no_grad():
            found["loss"] = latent_search.objective(coder.net, ys, zs, x[..., :size[0], :size[1]], loss,
                                                    lpips_alex).item()
        return ys, zs

    searches = {label: (lambda x, y, z, size, kw=kw: search(x, y, z, size, kw)) for label, kw in variants.items()}
    rows = []
    for i, (image, a) in enumerate(images):
        k = i % len(labels)
        for label in labels[k:] + labels[:k]:
            coder.arch.search = searches[label]
            t = time.perf_counter()
            (c,) = coder.encode_batch([a])
            seconds = time.perf_counter() - t
            section = record.pack_image(c.payload, c.check)
            back = coder.decode_batch([record.unpack_image(section)])[0]
            rows.append({"image": image, "variant": label, "encode_s": round(seconds, 2), "bytes": len(section),
                         "bpp": metrics.bpp(len(section), a.shape[0] * a.shape[1]),
                         "sha256": hashlib.sha256(section).hexdigest(), "loss": found["loss"],
                         "psnr": metrics.psnr(a, back), "lpips": metrics.lpips(a, back)})
            print(f"[{name}] {image} {label}: {seconds:.1f} s, {len(section)} B, "
                  f"{rows[-1]['psnr']:.2f} dB, LPIPS {rows[-1]['lpips']:.4f}, loss {found['loss']:.5f}", flush=True)
    means = {label: {k: float(np.mean([r[k] for r in rows if r["variant"] == label]))
                     for k in ("encode_s", "bytes", "bpp", "psnr", "lpips", "loss")} for label in labels}
    first = {r["image"]: r["sha256"] for r in rows if r["variant"] == labels[0]}
    for label in labels:
        m = means[label]
        m["time_ratio"] = m["encode_s"] / means[labels[0]]["encode_s"]
        m["bytes_ratio"] = m["bytes"] / means[labels[0]]["bytes"]
        m["identical_codes"] = sum(r["sha256"] == first[r["image"]] for r in rows if r["variant"] == label)
    result = {"command": command, "dataset": dataset, "point": point, "latent_steps": steps,
              "latent_loss": [loss.lmbda, loss.lpips_weight], "variants": variants, "machine": kodak.machine(),
              "torch_threads": threads, "versions": kodak.versions(), "images": len(images), "means": means,
              "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{name}.md").write_text(markdown(result, name))
    print(markdown(result, name))
    return result


def markdown(r: dict, name: str = "search_layout") -> str:
    labels = list(r["variants"])
    lines = [f"# {TITLES[name]}", "",
             f"Command: `{r['command']}`; {r['images']} images of {r['dataset']}; point `{r['point']}`, "
             f"{r['latent_steps']} steps against lambda {r['latent_loss'][0]:g}, LPIPS-Alex {r['latent_loss'][1]:g}; "
             f"machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), {r['torch_threads']} torch thread(s).", "",
             "Each image coded by the whole encoder with each variant (the order rotating per image); means over the "
             f"images. Ratios and identical sections are against the first variant, `{labels[0]}`.", "",
             "| variant | encode s/image | time ratio | bpp | bytes ratio | PSNR (dB) | LPIPS-Alex | search loss | "
             "identical sections |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label in labels:
        m = r["means"][label]
        lines.append(f"| `{label}` | {m['encode_s']:.1f} | {m['time_ratio']:.3f} | {m['bpp']:.5f} | "
                     f"{m['bytes_ratio']:.4f} | {m['psnr']:.3f} | {m['lpips']:.4f} | {m['loss']:.5f} | "
                     f"{m['identical_codes']} of {r['images']} |")
    return "\n".join(lines + [""])
