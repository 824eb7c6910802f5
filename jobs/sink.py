"""Where the encode and decode jobs write, in the shape of a Ray Data
``Datasink``: ``write`` per shard as the shard is finished, ``on_complete``
to commit the job once every shard is written. A job is done only when its
commit marker (``_SUCCESS``, written last) is there; a rerun skips the shards
written already (``pending``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from . import plan as plan_mod
from .inputs import JobError
from .shards import (FORMAT, ShardError, list_shards, publish, publish_file, read_metadata, shard_name, shard_stats,
                     write_shard)


class ShardSink:
    """The encode job's shards under ``root``, as its ``plan`` names them:
    each published at most once, with its stats, and read back; committed
    with ``_manifest.json`` (totals over every shard) and ``_SUCCESS``."""

    def __init__(self, fs, root: str, plan: plan_mod.Plan) -> None:
        self.fs, self.root, self.plan = fs, root, plan
        self.by_other = 0  # shards that another driver of this job published first (kept)

    def done(self, i: int, published: set[str] | None = None) -> bool:
        """Shard ``i`` is published, this job's, with the planned number of rows.
        ``published``: the shard file names listed once (else one lookup each)."""
        path = f"{self.root}/{shard_name(i)}.parquet"
        if not (f"{shard_name(i)}.parquet" in published if published is not None else self.fs.exists(path)):
            return False
        try:
            kv, n = read_metadata(self.fs, path)
            job = json.loads(kv.get("semarc.job", "{}"))
        except Exception:
            return False  # unreadable: pending; write_shard then refuses to replace it and says so
        return job.get("job_id") == self.plan.job_id and n == self.plan.shard_len(i)

    def pending(self) -> list[int]:
        """The plan's shards not done yet."""
        published = {p.rsplit("/", 1)[-1] for p in list_shards(self.fs, self.root)}
        return [i for i in range(self.plan.n_shards) if not self.done(i, published)]

    def published_meanwhile(self, i: int) -> bool:
        """Shard ``i`` is done now (another driver of this job published it), asked of the storage itself."""
        self.fs.invalidate_cache(f"{self.root}/{shard_name(i)}.parquet")  # object-store lookups are cached by fsspec
        return self.done(i)

    def write(self, i: int, rows: list[dict]) -> None:
        """Publish shard ``i`` (its footer: the record format, the plan's
        profiles and job, the shard's stats), unless another driver of this
        job did first; either way, the shard must read back."""
        stats = shard_stats(rows)
        meta = {"semarc.format": FORMAT,
                "semarc.profiles": json.dumps(self.plan.profiles, sort_keys=True),
                "semarc.job": json.dumps({"job_id": self.plan.job_id, "shard": i, "shards": self.plan.n_shards,
                                          "config": self.plan.config}, sort_keys=True),
                "semarc.stats": json.dumps(stats, sort_keys=True)}
        if not write_shard(self.fs, self.root, i, rows, meta, {"shard": shard_name(i), **stats}):
            self.by_other += 1
        if not self.done(i):
            raise JobError(f"shard {shard_name(i)} did not read back after publishing")

    def on_complete(self) -> dict:
        """Commit the job; returns the totals over every shard (finished
        earlier or now), from the shards' own footers."""
        plan = self.plan
        totals = {"records": 0, "ok": 0, "errors": 0, "caption_fallbacks": 0, "bytes_caption": 0,
                  "bytes_image": 0, "bytes_total": 0, "pixels": 0}
        for p in list_shards(self.fs, self.root):
            s = json.loads(read_metadata(self.fs, p)[0]["semarc.stats"])
            for k in totals:
                totals[k] += s.get(k, 0)
        totals["bpp"] = 8.0 * totals["bytes_total"] / totals["pixels"] if totals["pixels"] else None
        if totals["records"] != plan.n_records:
            raise JobError(f"shards hold {totals['records']} records but the plan has {plan.n_records}")
        manifest = {"job_id": plan.job_id, "config": plan.config, "profiles": plan.profiles,
                    "shards": [shard_name(i) for i in range(plan.n_shards)], "totals": totals,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        publish(self.fs, f"{self.root}/_manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
        publish(self.fs, f"{self.root}/_SUCCESS",
                json.dumps({"job_id": plan.job_id, **totals}, sort_keys=True).encode())
        return totals


def _part(shard_path: str) -> str:
    return shard_path.rsplit("/", 1)[-1].removesuffix(".parquet")


class DecodeSink:
    """The decode job's output under ``root`` besides the images (the actors
    write those): per shard, ``_parts/part-NNNNN.jsonl`` (its captions, and
    ``.errors.jsonl``, its errors), published after its images, marks the
    shard done; committed with ``captions.jsonl`` and ``errors.jsonl`` (the
    parts in shard order) and ``_SUCCESS``. ``refiner``: the refinement
    options, which every run on ``root`` must share."""

    def __init__(self, fs, root: str, refiner: dict | None) -> None:
        self.fs, self.root, self.refiner = fs, root, refiner

    def pending(self, paths: list[str]) -> list[str]:
        """The shards of ``paths`` without a published part."""
        done = set()
        if self.fs.exists(f"{self.root}/_parts"):
            done = {p.rsplit("/", 1)[-1] for p in self.fs.ls(f"{self.root}/_parts", detail=False)}
        return [p for p in paths if f"{_part(p)}.jsonl" not in done]

    def on_start(self, url: str, work: bool) -> None:
        """Refuse a DST decoded with other refinement options; record them
        (``_decode.json``) before any work (``work``: there is some)."""
        path = f"{self.root}/_decode.json"
        if self.fs.exists(path):
            if json.loads(self.fs.cat_file(path)).get("refiner") != self.refiner:
                raise JobError(f"{url} was decoded with other refinement options (see {url}/_decode.json); "
                               f"rerun with the same ones or use a new DST")
        elif work:
            publish(self.fs, path, json.dumps({"refiner": self.refiner}, sort_keys=True).encode())

    def _publish_part(self, name: str, lines: list[dict], errors: list[dict]) -> None:
        # the errors first: the captions part marks the shard done
        if errors:
            publish(self.fs, f"{self.root}/_parts/{name}.errors.jsonl",
                    "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in errors).encode())
        publish(self.fs, f"{self.root}/_parts/{name}.jsonl",
                "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())

    def write(self, path: str, keys: list[str], imgs: list, caps: list) -> None:
        """Publish a shard's part: its decoded captions, then its errors (if any)."""
        lines, errs = [], []
        for key, im, cap in zip(keys, imgs, caps):
            e = [x["error"] for x in (im, cap) if isinstance(x, dict) and "error" in x]
            if e:
                errs.append({"key": key, "error": "; ".join(dict.fromkeys(e))})
            else:
                lines.append({"key": key, "caption": cap["caption"]})
        self._publish_part(_part(path), lines, errs)

    def write_failed(self, path: str, err: ShardError) -> None:
        """A shard that cannot be read: one error line naming it, and its part
        published empty (a rerun finds the same bytes)."""
        name = _part(path)
        self._publish_part(name, [], [{"key": None, "shard": name, "error": f"shard: {err}"}])

    def on_complete(self, paths: list[str]) -> tuple[int, int]:
        """Commit: the parts of ``paths`` concatenated in shard order, streamed
        through local spool files (a job of millions of records never holds
        its captions in memory); the first errors printed. Returns (records
        decoded, errors)."""
        decoded = errors = 0
        with tempfile.TemporaryDirectory(prefix="semarc-decode-") as tmp:
            cap_path, err_path = os.path.join(tmp, "captions.jsonl"), os.path.join(tmp, "errors.jsonl")
            first_errors: list[str] = []
            with open(cap_path, "wb") as cf, open(err_path, "wb") as ef:
                for path in paths:
                    name = _part(path)
                    body = self.fs.cat_file(f"{self.root}/_parts/{name}.jsonl")
                    decoded += body.count(b"\n")
                    cf.write(body)
                    if self.fs.exists(f"{self.root}/_parts/{name}.errors.jsonl"):
                        ebody = self.fs.cat_file(f"{self.root}/_parts/{name}.errors.jsonl")
                        errors += ebody.count(b"\n")
                        ef.write(ebody)
                        first_errors += ebody.decode().splitlines()[:20 - len(first_errors)]
            publish_file(self.fs, f"{self.root}/captions.jsonl", cap_path)
            if errors:
                publish_file(self.fs, f"{self.root}/errors.jsonl", err_path)
                for line in first_errors:
                    print(f"semarc decode: ERROR {line}", flush=True)
        publish(self.fs, f"{self.root}/_SUCCESS", json.dumps({"decoded": decoded, "errors": errors,
                                                              "shards": len(paths), "refiner": self.refiner}).encode())
        return decoded, errors
