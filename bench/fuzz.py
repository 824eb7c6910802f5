"""``semarc bench fuzz``: a seeded fuzz campaign over the decoders that take
untrusted bytes.

Targets:

* ``image:<codec>``: image records (the image section with its row's width and
  height), decoded as the decode job decodes them (``ImageWorker``'s checks,
  then ``ImageCoder.decode_batch``);
* ``caption``: caption sections (``CaptionCoder.decode_batch``);
* ``shard``: whole Parquet shards, opened and decoded as the decode job does
  (``open_shard``, then every ok row's image and caption).

Each case is a function of ``(seed, target, index)`` alone: a seed record (valid
bytes made at start from real photos and captions) and a mutation (bit flips,
truncation, extension, a splice of two records, headers with extreme values,
random bytes; for shards: truncation, flipped footer bytes, a footer naming an
unknown coder, another schema, row counts that disagree with the plan, an
empty file, a directory). ``semarc bench fuzz --replay TARGET:INDEX`` reruns one case.

Cases run in worker subprocesses, each under a memory limit (``RLIMIT_AS``:
the address space of the loaded coders plus ``--memory-mb``) and a per-case
time limit; a worker that crashes, runs out of memory or time is replaced
and its cases are run again one by one in a fresh worker: a case that fails
alone is recorded as a crash, timeout or out of memory (``worker_restarts``
counts the replacements). Outcomes: ``refused`` (a clear error),
``original`` (decoded to the seed's own output; or, where the mutated bytes
are another seed's valid record whole, as a splice at the start of both
records makes them, to that record's output), ``other`` (decoded to
something else, having passed every check), ``crash``, ``timeout``, ``oom``.
The report (``fuzz.json``, ``fuzz.md``) gives the counts per target and
mutation, the worst time per case, and every case that was not refused or
decoded to its original, with its replay name.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np

IMAGE_MUTATIONS = ("bitflip", "truncate", "extend", "splice", "header", "random", "check")
CAPTION_MUTATIONS = ("bitflip", "truncate", "extend", "splice", "random")
SHARD_MUTATIONS = ("truncate", "footer-flip", "unknown-coder", "schema", "rows-vs-plan", "rows-vs-footer",
                   "empty", "directory", "body-flip", "format")
OUTCOMES = ("refused", "original", "other", "crash", "timeout", "oom")
# header values a mutation writes: zero, edges of the bounds, the encoder's limit and past it, the
# size that crashed CompressAI's decoder, varint extremes
HEADER_VALUES = (0, 1, 2, 63, 64, 65, 1000, 2000, 6000, 6324, 6325, 20000, 1 << 20, (1 << 20) + 1, 1 << 31,
                 (1 << 63) - 1)
CAPTIONS = [
    "A red barn stands in a green field under a cloudy sky, with a wooden fence in front.",
    "Two cats sleep on a blue sofa next to a window; sunlight falls across the cushions.",
    "A cup of coffee with latte art sits on a wooden table beside a spoon and a napkin.",
    "",
]


def _rng(seed: int, target: str, index: int) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(f"{seed}/{target}/{index}".encode()).digest()[:8], "little")
    return np.random.default_rng(h)


def _mutate_bytes(b: bytes, kind: str, rng: np.random.Generator, other: bytes) -> bytes:
    a = bytearray(b)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            if a:
                i = int(rng.integers(0, len(a)))
                a[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(a)
    if kind == "truncate":
        return bytes(a[:int(rng.integers(0, max(1, len(a))))])
    if kind == "extend":
        return bytes(a) + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    if kind == "splice":
        i, j = int(rng.integers(0, len(a) + 1)), int(rng.integers(0, len(other) + 1))
        return bytes(a[:i]) + other[j:]
    if kind == "random":
        return rng.integers(0, 256, int(rng.integers(0, 2 * len(a) + 8)), dtype=np.uint8).tobytes()
    raise ValueError(kind)


# -- seeds ------------------------------------------------------------------------
def _photos() -> list[np.ndarray]:
    """Small crops of real photos (scikit-image's), at sizes off the strides."""
    import skimage.data as d

    out = []
    for f, (y, x, h, w) in ((d.astronaut, (40, 150, 64, 96)), (d.coffee, (100, 200, 48, 48)),
                            (d.chelsea, (30, 60, 80, 130)), (d.rocket, (200, 100, 33, 70))):
        out.append(np.ascontiguousarray(f()[y:y + h, x:x + w, :3]))
    return out


class _ImageTarget:
    def __init__(self, codec: str) -> None:
        from semarc.codec import record
        from semarc.codec.image import open_coder
        from semarc.workers.image_worker import ImageWorker

        self.worker = ImageWorker.__new__(ImageWorker)  # the worker's decode checks, without Ray
        self.worker.coder = open_coder(codec)  # a point or a mode set (codec/multires.py)
        self.n_modes = len(getattr(self.worker.coder, "modes", ()))  # 0: a point (no mode in the header)
        self.profiles = {"image": self.worker.coder.describe()}
        self.seeds = []
        for a in _photos():
            c = self.worker.coder.encode_batch([a])[0]
            section = record.pack_image(c.payload, c.check)
            out = self.worker._decode_arrays([section], self.profiles, [(c.width, c.height)])[0]
            self.seeds.append((section, (c.width, c.height), out))

    def case(self, rng: np.random.Generator) -> tuple[str, tuple]:
        from semarc.codec.varint import read_varint, write_varint

        k = int(rng.integers(0, len(self.seeds)))
        kind = IMAGE_MUTATIONS[int(rng.integers(0, len(IMAGE_MUTATIONS)))]
        section, size, _ = self.seeds[k]
        other = self.seeds[(k + 1) % len(self.seeds)][0]
        if kind == "header":
            mode, p = read_varint(section, 1) if self.n_modes else (0, 1)
            w, p = read_varint(section, p)
            h, p = read_varint(section, p)
            vals = [int(rng.choice(HEADER_VALUES)) if rng.random() < 0.7 else int(v + rng.integers(-70, 70))
                    for v in (w, h)]
            vals = [max(0, v) for v in vals]
            head = write_varint(vals[0]) + write_varint(vals[1])
            if self.n_modes:  # a mode set's header starts with the mode: any mode, or one beyond the set
                head = write_varint(int(rng.integers(0, self.n_modes + 2)) if rng.random() < 0.7 else mode) + head
            data = section[:1] + head + section[p:]
        elif kind == "check":
            data = section[:-2] + rng.integers(0, 256, 2, dtype=np.uint8).tobytes()
        else:
            data = _mutate_bytes(section, kind, rng, other)
        return kind, (k, data, size)

    def run(self, payload) -> str:
        k, data, size = payload
        got = self.worker._decode_arrays([data], self.profiles, [size])[0]
        if isinstance(got, dict):
            return "refused"
        # the bytes of another seed's record whole (a splice at both records' start) decode to that record
        want = next((s[2] for s in self.seeds if s[0] == data and s[1] == size), self.seeds[k][2])
        return "original" if isinstance(want, np.ndarray) and np.array_equal(got, want) else "other"


class _CaptionTarget:
    def __init__(self) -> None:
        import torch

        from semarc.codec.caption import CaptionCoder

        torch.set_num_threads(1)
        self.coder = CaptionCoder(batch_size=1)
        self.seeds = [(c.payload, t) for c, t in zip(self.coder.encode_batch(CAPTIONS), CAPTIONS)]

    def case(self, rng):
        k = int(rng.integers(0, len(self.seeds)))
        kind = CAPTION_MUTATIONS[int(rng.integers(0, len(CAPTION_MUTATIONS)))]
        data = _mutate_bytes(self.seeds[k][0], kind, rng, self.seeds[(k + 1) % len(self.seeds)][0])
        return kind, (k, data)

    def run(self, payload) -> str:
        return self.run_many([payload])[0]

    def run_many(self, payloads) -> list[str]:
        """One batch through the decoder, as the decode job sends them."""
        got = self.coder.decode_batch([d for _, d in payloads], errors="return")
        # the bytes of another seed's record whole (a splice at both records' start) decode to that record
        want = [next((t for b, t in self.seeds if b == d), self.seeds[k][1]) for k, d in payloads]
        return ["refused" if isinstance(g, Exception) else "original" if g == w else "other"
                for g, w in zip(got, want)]


class _ShardTarget:
    """A one-shard archive (3 records, the default codec) mutated as a whole."""

    def __init__(self) -> None:
        from semarc.codec import record
        from semarc.codec.image import ImageCoder
        from semarc.jobs import shards

        self.image = _ImageTarget.__new__(_ImageTarget)
        from semarc.workers.image_worker import ImageWorker
        self.image.worker = ImageWorker.__new__(ImageWorker)
        self.image.worker.coder = ImageCoder("semarc-f1")
        self.caption = _CaptionTarget()
        rows = []
        for i, a in enumerate(_photos()[:3]):
            c = self.image.worker.coder.encode_batch([a])[0]
            cap = self.caption.seeds[i][0]
            sec = record.pack_image(c.payload, c.check)
            rows.append({"key": f"k{i}", "uri": f"k{i}.png", "width": c.width, "height": c.height,
                         "caption_source": "manifest", "caption_fallback": False, "caption": cap, "image": sec,
                         "bytes_caption": len(cap), "bytes_image": len(sec), "bytes_total": len(cap) + len(sec),
                         "status": "ok", "error": None})
        self.profiles = {"caption": self.caption.coder.describe(), "image": self.image.worker.coder.describe()}
        self.rows = rows
        self.meta = {"semarc.format": shards.FORMAT, "semarc.profiles": json.dumps(self.profiles),
                     "semarc.stats": json.dumps(shards.shard_stats(rows))}
        self.data = shards.to_bytes(rows, self.meta)
        self.want = self._decode_bytes(self.data, 3)

    def case(self, rng):
        from semarc.jobs import shards

        kind = SHARD_MUTATIONS[int(rng.integers(0, len(SHARD_MUTATIONS)))]
        data, expect = self.data, 3
        if kind == "truncate":
            data = data[:int(rng.integers(0, len(data)))]
        elif kind == "footer-flip":  # bytes of the footer (metadata, its length, the magic)
            n = int.from_bytes(data[-8:-4], "little")
            a = bytearray(data)
            for _ in range(int(rng.integers(1, 5))):
                i = len(a) - 1 - int(rng.integers(0, n + 8))
                a[i] ^= 1 << int(rng.integers(0, 8))
            data = bytes(a)
        elif kind == "body-flip":
            a = bytearray(data)
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(4, len(a) - 8))
                a[i] ^= 1 << int(rng.integers(0, 8))
            data = bytes(a)
        elif kind == "unknown-coder":
            prof = json.loads(json.dumps(self.profiles))
            col = "image" if rng.random() < 0.5 else "caption"
            prof[col]["fingerprint"] = hashlib.sha256(rng.bytes(8)).hexdigest()
            if rng.random() < 0.5:
                prof[col]["codec" if col == "image" else "model"] = "no-such-coder"
            data = shards.to_bytes(self.rows, {**self.meta, "semarc.profiles": json.dumps(prof)})
        elif kind == "schema":
            import pyarrow as pa
            import pyarrow.parquet as pq
            t = pa.Table.from_pylist(self.rows, schema=shards.SCHEMA)
            if rng.random() < 0.5:
                t = t.set_column(t.schema.get_field_index("width"), "width", t.column("width").cast(pa.string()))
            else:
                t = t.drop_columns(["image"])
            t = t.replace_schema_metadata(self.meta)
            sink = pa.BufferOutputStream()
            pq.write_table(t, sink)
            data = sink.getvalue().to_pybytes()
        elif kind == "rows-vs-plan":
            expect = int(rng.choice([0, 1, 2, 4, 1000]))
        elif kind == "rows-vs-footer":
            rows = self.rows[:int(rng.integers(0, 3))]
            data = shards.to_bytes(rows, self.meta)
        elif kind == "empty":
            data = b""
        elif kind == "format":
            data = shards.to_bytes(self.rows, {**self.meta, "semarc.format": str(rng.choice(["1", "3", "x"]))})
        return kind, (kind, data, expect)

    def _decode_bytes(self, data: bytes, expect: int, directory: bool = False):
        import fsspec

        from semarc.codec import record
        from semarc.jobs import shards

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "part-00000.parquet")
            if directory:
                os.mkdir(path)
            else:
                with open(path, "wb") as f:
                    f.write(data)
            fs = fsspec.filesystem("file")
            try:
                table, kv = shards.open_shard(fs, path, expect_rows=expect)
            except shards.ShardError as e:
                return e
        profiles = json.loads(kv["semarc.profiles"])
        out = []
        for r in table.to_pylist():
            if r["status"] != "ok":
                out.append(("error-row", r["key"]))
                continue
            img = self.image.worker._decode_arrays([r["image"]], profiles, [(r["width"], r["height"])])[0]
            try:
                record.check_profile(profiles, "caption", self.caption.coder.describe())
                cap = self.caption.coder.decode_batch([r["caption"]], errors="return")[0]
            except record.FormatError as e:
                cap = e
            if isinstance(img, dict) or isinstance(cap, Exception):
                out.append(("refused-row", r["key"]))
            else:
                out.append((r["key"], hashlib.sha256(img.tobytes()).hexdigest(), cap))
        return out

    def run(self, payload) -> str:
        kind, data, expect = payload
        got = self._decode_bytes(data, expect, directory=kind == "directory")
        if isinstance(got, Exception):
            return "refused"
        if got == self.want:
            return "original"
        # rows refused one by one, the rest decoded to their originals: refused (as rows)
        good = {w[0]: w for w in self.want}
        if all(g[0] in ("refused-row", "error-row") or good.get(g[0]) == g for g in got) \
                and len(got) == len(self.want):
            return "refused"
        return "other"


class _SelfTest:
    """The harness's own check: cases that crash, exhaust memory, hang or pass."""
    KINDS = ("segfault", "oom", "hang", "refused", "original")

    def case(self, rng):
        kind = self.KINDS[int(rng.integers(0, len(self.KINDS)))]
        return kind, kind

    def run(self, kind) -> str:
        import ctypes

        if kind == "segfault":
            ctypes.string_at(0)
        if kind == "oom":
            bytearray(1 << 40)
        if kind == "hang":
            time.sleep(3600)
        return kind


def _make_target(name: str):
    if name == "selftest":
        return _SelfTest()
    if name.startswith("image:"):
        return _ImageTarget(name[6:])
    if name == "caption":
        return _CaptionTarget()
    if name == "shard":
        return _ShardTarget()
    raise ValueError(f"unknown fuzz target {name!r}")


# -- worker process ---------------------------------------------------------------
def worker_main(target: str, seed: int, mem_mb: int) -> None:
    """Reads case indexes (one per line) on stdin, writes one JSON line per
    case: its mutation, outcome, error class and seconds."""
    import resource

    t = _make_target(target)
    if mem_mb:  # the coders are loaded: each case may use mem_mb more address space
        with open("/proc/self/status") as f:
            base = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) << 10
        resource.setrlimit(resource.RLIMIT_AS, (base + (mem_mb << 20), base + (mem_mb << 20)))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        idx = [int(x) for x in line.split(",")]
        cases = [t.case(_rng(seed, target, i)) for i in idx]
        t0 = time.perf_counter()
        detail = None
        try:
            if len(idx) > 1:
                outcomes = t.run_many([p for _, p in cases])
            else:
                outcomes = [t.run(cases[0][1])]
        except MemoryError:
            outcomes, detail = ["oom"] * len(idx), "MemoryError"
        except Exception as e:  # an exception that escaped the decoder's own refusals
            msg = str(e)
            oom = "can't allocate memory" in msg or "bad_alloc" in msg
            outcomes, detail = ["oom" if oom else "crash"] * len(idx), f"{type(e).__name__}: {msg[:200]}"
        dt = round((time.perf_counter() - t0) / len(idx), 6)
        print(json.dumps([{"i": i, "kind": k, "outcome": o, "detail": detail, "s": dt}
                          for i, (k, _), o in zip(idx, cases, outcomes)]), flush=True)


class _Worker:
    def __init__(self, target: str, seed: int, mem_mb: int, threads: int) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.p = subprocess.Popen([sys.executable, "-m", "semarc.bench.fuzz", "--worker", target, str(seed),
                                   str(mem_mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1, env=env)
        line = self.p.stdout.readline()
        if not line.startswith('{"ready"'):
            raise RuntimeError(f"fuzz worker for {target} did not start")

    def run(self, idx: list[int], timeout: float) -> list[dict] | None:
        """The cases' results, or None if the worker died or timed out (then it is killed)."""
        self.p.stdin.write(",".join(map(str, idx)) + "\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if r else ""
        if line:
            return json.loads(line)
        self.p.kill()
        self.p.wait()
        return None

    def close(self) -> None:
        """End the worker: its input closed, it exits; one still tearing down
        after 30 s (a loaded machine) is killed, its results being all in."""
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def default_targets() -> list[str]:
    from semarc.codec import image_models, zoo

    return ([f"image:{n}" for n in sorted(image_models.shipped_rate_points())]
            + [f"image:{m.spec}" for m in zoo.MODE_SETS] + ["caption", "shard"])


def campaign(cases: dict[str, int], seed: int = 0, mem_mb: int = 4096, timeout: float = 30.0, threads: int = 1,
             progress: bool = True, batch: dict[str, int] | None = None, checkpoint=None) -> dict:
    """Run ``cases[target]`` cases per target, ``batch[target]`` per decoder
    call (default 1; the time per case is then the call's time over its
    cases); returns the report. ``checkpoint(target, summary)`` is called
    with the target's summary so far every 50 cases (``cases_done`` tells
    how far it is)."""
    batch = batch or {}
    report = {"seed": seed, "memory_limit_mb": mem_mb, "case_timeout_s": timeout, "batch": batch, "targets": {}}
    for target, n in cases.items():
        counts: dict[str, Counter] = defaultdict(Counter)
        worst = {"s": 0.0, "case": None}
        notable, restarts, t0 = [], 0, time.time()
        w = _Worker(target, seed, mem_mb, threads)
        b = batch.get(target, 1) if batch else 1
        for start in range(0, n, b):
            idx = list(range(start, min(n, start + b)))
            got = w.run(idx, timeout * len(idx))
            if got is None:  # rerun the batch's cases one by one to find the one that killed it
                restarts += 1
                w = _Worker(target, seed, mem_mb, threads)
                got = []
                for i in idx:
                    r = w.run([i], timeout)
                    if r is None:
                        rc = w.p.returncode
                        outcome = "timeout" if rc == -9 else ("oom" if rc == -6 else "crash")
                        r = [{"i": i, "kind": _kind(target, seed, i), "outcome": outcome,
                              "detail": f"worker exit status {rc}", "s": timeout}]
                        restarts += 1
                        w = _Worker(target, seed, mem_mb, threads)
                    got += r
            if any(r["outcome"] in ("oom", "crash") for r in got):  # its state is suspect: a fresh worker
                w.close()
                restarts += 1
                w = _Worker(target, seed, mem_mb, threads)
            for r in got:
                i = r["i"]
                counts[r["kind"]][r["outcome"]] += 1
                if r["s"] > worst["s"]:
                    worst = {"s": r["s"], "case": f"{target}:{i}", "kind": r["kind"], "outcome": r["outcome"]}
                if r["outcome"] not in ("refused", "original") and len(notable) < 50:
                    notable.append({"case": f"{target}:{i}", **{k: r[k] for k in ("kind", "outcome", "detail")}})
            done = min(n, start + b)
            if progress and (start + b) // 1000 > start // 1000:
                print(f"fuzz {target}: {done}/{n} cases, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            if checkpoint is not None and done < n and (start + b) // 50 > start // 50:
                checkpoint(target, _summary(done, counts, worst, restarts, t0, notable))
        w.close()
        report["targets"][target] = _summary(n, counts, worst, restarts, t0, notable)
    return report


def _summary(done: int, counts: dict, worst: dict, restarts: int, t0: float, notable: list) -> dict:
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {"cases": done, "outcomes": {o: total.get(o, 0) for o in OUTCOMES},
            "by_mutation": {k: dict(v) for k, v in sorted(counts.items())}, "worst_case_s": worst,
            "worker_restarts": restarts, "seconds": round(time.time() - t0, 1), "notable": notable}


def _kind(target: str, seed: int, i: int) -> str:
    """The mutation of a case, computed without building the target's seeds."""
    rng = _rng(seed, target, i)
    if target.startswith("image:"):
        rng.integers(0, 4)
        return IMAGE_MUTATIONS[int(rng.integers(0, len(IMAGE_MUTATIONS)))]
    if target == "caption":
        rng.integers(0, len(CAPTIONS))
        return CAPTION_MUTATIONS[int(rng.integers(0, len(CAPTION_MUTATIONS)))]
    if target == "selftest":
        return _SelfTest.KINDS[int(rng.integers(0, len(_SelfTest.KINDS)))]
    return SHARD_MUTATIONS[int(rng.integers(0, len(SHARD_MUTATIONS)))]


def markdown(report: dict) -> str:
    commands = list(dict.fromkeys(r.get("command", "") for r in report["targets"].values()))
    lines = ["# Fuzz campaign: untrusted bytes into semarc's decoders", "",
             "Commands:", ""] + [f"- `{c}`" for c in commands] + ["",
             f"Seed {report['seed']}; each case in a worker process limited to {report['memory_limit_mb']} MB of "
             f"address space beyond its loaded coders and {report['case_timeout_s']} s per case, one case per decoder call.", "",
             "| target | cases | refused | original | other | crash | timeout | oom | worst case (s) | restarts |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t, r in report["targets"].items():
        o = r["outcomes"]
        done = f"{r['cases']}" if r.get("planned", r["cases"]) == r["cases"] else f"{r['cases']} of {r['planned']}"
        lines.append(f"| {t} | {done} | " + " | ".join(str(o[k]) for k in OUTCOMES)
                     + f" | {r['worst_case_s']['s']:.4f} ({r['worst_case_s']['kind']}) | {r['worker_restarts']} |")
    lines += ["", "By mutation:", ""]
    for t, r in report["targets"].items():
        for k, c in r["by_mutation"].items():
            lines.append(f"- {t} / {k}: " + ", ".join(f"{o} {n}" for o, n in sorted(c.items())))
    bad = [n for r in report["targets"].values() for n in r["notable"]]
    lines += ["", "Cases neither refused nor decoded to their original (replay with `--replay CASE`):", ""]
    lines += [f"- `{n['case']}` {n['kind']}: {n['outcome']} {n['detail'] or ''}" for n in bad] or ["- none"]
    return "\n".join(lines) + "\n"


def replay(case: str, seed: int = 0) -> dict:
    """Run one case in this process: ``TARGET:INDEX``."""
    target, _, i = case.rpartition(":")
    t = _make_target(target)
    kind, payload = t.case(_rng(seed, target, int(i)))
    return {"case": case, "kind": kind, "outcome": t.run(payload)}


def run(out: str, cases: dict[str, int], seed: int = 0, mem_mb: int = 4096, timeout: float = 30.0,
        command: str = "") -> dict:
    """Run the campaign target by target, writing ``fuzz.json``/``fuzz.md``
    after each. Targets already in ``out/fuzz.json`` from a run with the same
    seed and limits are kept beside the new ones (each with the command that
    made it), so targets can run as separate commands into one report."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "fuzz.json")
    state = {"rep": None}

    def write(target: str, summary: dict, planned: int) -> None:
        rep = {"seed": seed, "memory_limit_mb": mem_mb, "case_timeout_s": timeout, "targets": {}}
        if os.path.exists(path):  # read again now: another command may have added a target meanwhile
            with open(path) as f:
                old = json.load(f)
            if all(old.get(k) == rep[k] for k in ("seed", "memory_limit_mb", "case_timeout_s")):
                rep["targets"] = old["targets"]
        rep["targets"][target] = summary | {"planned": planned, "command": command}
        with open(path, "w") as f:
            json.dump(rep, f, indent=1)
        with open(os.path.join(out, "fuzz.md"), "w") as f:
            f.write(markdown(rep))
        state["rep"] = rep

    for target, n in cases.items():
        one = campaign({target: n}, seed=seed, mem_mb=mem_mb, timeout=timeout,
                       checkpoint=lambda t, summary, n=n: write(t, summary, n))
        write(target, one["targets"][target], n)
    return state["rep"]


DEFAULT_CASES = "image=100000,caption=2000,shard=400"


def parse_cases(spec: str | None) -> dict[str, int]:
    """``image=100000,caption=2000,shard=400`` -> cases per target; ``image``
    is split evenly over the shipped image points, ``image:NAME=N`` names one."""
    spec = spec or DEFAULT_CASES
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, n = part.partition("=")
        if name == "image":
            points = [t for t in default_targets() if t.startswith("image:")]
            for k, t in enumerate(points):
                out[t] = int(n) // len(points) + (1 if k < int(n) % len(points) else 0)
        else:
            out[name] = int(n)
    return out


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
