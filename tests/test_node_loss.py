"""Nodes lost mid-job, on a multi-node Ray cluster started here
(``ray.cluster_utils.Cluster``: a driver-only head with no CPUs and two
worker nodes, all on this machine; the jobs join it with ``--address``).

* encode: a node holding coding actors is killed (its raylet and every
  process on it, ``SIGKILL``) once the first shard is published; the job
  finishes on the other node, every input in exactly one row, the shards
  published before the loss untouched;
* decode: on one-CPU nodes, the node of the image pool's only actor is
  killed; no replacement fits the node that is left, so the pool starts one
  with no CPU reservation (``SEMARC_REPLACE_GRACE_S``) and the job finishes,
  every record decoded exactly once;
* the whole cluster killed mid-job: the driver exits 1 saying the cluster
  is gone (before Ray's own 60 s), and a rerun on a fresh cluster completes
  the job, every input in exactly one row.

Each job's ``--report`` shows that the loss was seen and worked around (the
actors the pools lost, the calls they sent again), so that a loss that came
too late to matter fails the test instead of passing it.

These are marked ``slow`` (CI runs them with ``-m 'slow and not scale'``);
the pool's own handling of a killed actor is tested in the default set."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from crops import check_exactly_once, make_crops
from semarc.bench.pipeline import _tree

N, SHARD = 40, 4


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("node-loss"), N)


@pytest.fixture
def cluster(monkeypatch):
    """``start(cpus)``: a head with no CPUs (the driver's node, as on a real
    cluster) and two worker nodes of ``cpus`` CPUs each. Shut down after the test."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    made = []

    def start(cpus: int):
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        made.append(c)
        for _ in range(2):
            c.add_node(num_cpus=cpus)
        c.wait_for_nodes()
        return c

    yield start
    for c in made:
        try:
            c.shutdown()
        except Exception:  # noqa: BLE001 - nodes this test killed already
            pass


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _coders_on(node) -> list[str]:
    """The coding actors running on ``node`` (processes under its raylet)."""
    raylet = node.all_processes["raylet"][0].process.pid
    names = [_cmdline(p).split(" ")[0] for p in _tree(raylet)]
    return [n for n in names if n.startswith(("ray::ImageWorker", "ray::CaptionWorker"))]


class Driver:
    """A ``semarc`` job in its own process (its output in files: a pipe
    nobody reads would block it)."""

    def __init__(self, tmp_path, name: str, *args, env=None):
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        e = dict(os.environ, RAY_AUTH_MODE="disabled", **(env or {}))
        with open(self.out, "w") as o, open(self.err, "w") as r:
            self.proc = subprocess.Popen([sys.executable, "-m", "semarc.cli", *map(str, args)], stdout=o, stderr=r,
                                         env=e, start_new_session=True)

    def wait_for(self, what, timeout: float = 900):
        t = time.time()
        while not what():
            assert self.proc.poll() is None, f"the job ended early:\n{self.text()}"
            assert time.time() - t < timeout, f"timed out:\n{self.text()}"
            time.sleep(0.2)

    def finish(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """End the job's process group if it still runs (a failed test)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()[-4000:]


def _encode(tmp_path, name, crops, out, address, *extra):
    return Driver(tmp_path, name, "encode", crops["manifest"], out, "--address", address, "--shard-size", SHARD,
                  "--codec", "semarc-fast", "--no-progress", *extra)


def _shards(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}


def _losses(report) -> tuple[int, int]:
    st = json.loads(report.read_text())["stages"]
    return sum(s["actors_lost"] for s in st.values()), sum(s["calls_resubmitted"] for s in st.values())


@pytest.mark.slow
def test_encode_finishes_when_a_node_with_coding_actors_is_lost(crops, cluster, tmp_path):
    c = cluster(2)
    out, report = tmp_path / "out", tmp_path / "report.json"
    job = _encode(tmp_path, "encode", crops, out, c.address, "--report", report)
    try:
        job.wait_for(lambda: _shards(out))
        victim = max(c.worker_nodes, key=lambda n: len(_coders_on(n)))
        assert _coders_on(victim), "no coding actor on either worker node"
        before = _shards(out)
        c.remove_node(victim, allow_graceful=False)
        assert job.finish() == 3, job.text()
    finally:
        job.stop()
    assert len(before) < N // SHARD, "the node was lost after the job's last shard"
    assert f"{N} records in {N // SHARD} shards" in job.text()
    lost, resubmitted = _losses(report)
    assert lost >= 1 and resubmitted >= 1, (lost, resubmitted, job.text())
    after = _shards(out)
    assert {k: after[k] for k in before} == before, "a shard published before the loss was rewritten"
    check_exactly_once([pq.read_table(out / k) for k in sorted(after)], crops)
    assert json.loads((out / "_SUCCESS").read_text())["records"] == N


@pytest.fixture(scope="module")
def archive(crops, tmp_path_factory):
    out = tmp_path_factory.mktemp("archive") / "out"
    r = run_cli("encode", crops["manifest"], out, "--shard-size", SHARD, "--num-cpus", "2", "--codec", "semarc-fast",
                "--no-progress")
    assert r.returncode == 3, r.stdout + r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_decode_finishes_when_the_node_of_a_pools_only_actor_is_lost(crops, archive, cluster, tmp_path):
    c = cluster(1)  # one caption and one image actor, one per node: the lost node takes a whole pool
    dec, report = tmp_path / "dec", tmp_path / "report.json"
    job = Driver(tmp_path, "decode", "decode", archive, dec, "--address", c.address, "--no-progress",
                 "--report", report, env={"SEMARC_REPLACE_GRACE_S": "5"})
    try:
        job.wait_for(lambda: list(dec.glob("_parts/part-*.jsonl")))
        victim = next(n for n in c.worker_nodes if "ray::ImageWorker" in " ".join(_coders_on(n)))
        done_before = len(list(dec.glob("_parts/part-*.jsonl")))
        c.remove_node(victim, allow_graceful=False)
        assert job.finish() == 0, job.text()
    finally:
        job.stop()
    assert done_before < N // SHARD, "the node was lost after the job's last shard"
    st = json.loads(report.read_text())["stages"]
    assert st["image decoding"]["actors_lost"] >= 1 and st["image decoding"]["calls_resubmitted"] >= 1, st
    want = {}
    for p in sorted(archive.glob("part-*.parquet")):
        for r in pq.read_table(p, columns=["key", "status"]).to_pylist():
            if r["status"] == "ok":
                want[r["key"]] = None
    rows = {json.loads(x)["key"]: json.loads(x)["caption"] for x in (dec / "captions.jsonl").read_text().splitlines()}
    got = [json.loads(x)["key"] for x in (dec / "captions.jsonl").read_text().splitlines()]
    assert sorted(got) == sorted(want), "lost or duplicated records"
    manifest = {json.loads(x)["key"]: json.loads(x)["caption"] for x in crops["manifest"].read_text().splitlines()}
    assert all(rows[k] == manifest[k] for k in rows)
    assert sorted(p.stem for p in (dec / "images").iterdir()) == sorted(want)
    assert not (dec / "errors.jsonl").exists()


@pytest.mark.slow
def test_a_job_whose_cluster_goes_away_fails_clearly_and_a_rerun_completes(crops, cluster, tmp_path):
    c = cluster(2)
    out = tmp_path / "out"
    job = _encode(tmp_path, "encode", crops, out, c.address)
    try:
        job.wait_for(lambda: _shards(out))
        t = time.time()
        for node in list(c.worker_nodes):
            c.remove_node(node, allow_graceful=False)
        c.remove_node(c.head_node, allow_graceful=False)
        rc = job.finish(timeout=300)
        took = time.time() - t
    finally:
        job.stop()
    assert rc == 1 and "job failed: the Ray cluster is gone" in job.text(), job.text()
    assert took < 60, f"{took:.0f} s: Ray's own timeout ended the job, not semarc"
    before = _shards(out)
    assert 1 <= len(before) < N // SHARD and not (out / "_SUCCESS").exists()

    c2 = cluster(2)
    rerun = _encode(tmp_path, "rerun", crops, out, c2.address)
    try:
        assert rerun.finish() == 3, rerun.text()
    finally:
        rerun.stop()
    assert f"({len(before)} already done)" in rerun.text()
    after = _shards(out)
    assert {k: after[k] for k in before} == before, "a published shard was rewritten"
    check_exactly_once([pq.read_table(out / k) for k in sorted(after)], crops)
    assert json.loads((out / "_SUCCESS").read_text())["records"] == N


def test_a_pool_replaces_a_killed_actor_and_sends_its_calls_again(tmp_path):
    """In process: a pool of two image coders; one actor's process is killed
    (SIGKILL) with calls queued on it; every call returns its result, from
    the other actor or the replacement, and the pool says what it did."""
    import ray
    from PIL import Image

    from semarc.cluster.ray_cluster import ray_session
    from semarc.workers.image_worker import ImageWorker
    from semarc.workers.pool import ActorPool, gather, submit_batches

    uris = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (48 + 4 * i, 32), (20 * i, 100, 200 - 10 * i)).save(p)
        uris.append(str(p))
    assert not ray.is_initialized()
    with ray_session(None, 2):
        pool = ActorPool(ImageWorker, 2, 1, args=("semarc-fast", 1, {}), name="image")
        pids = ray.get([a.pid.remote() for a in pool.actors])
        calls = submit_batches(pool, "encode", uris, 2)
        os.kill(pids[0], signal.SIGKILL)
        got = gather(pool, calls, len(uris))
        assert [(g["width"], g["height"]) for g in got] == [(48 + 4 * i, 32) for i in range(12)]
        assert pool.actors_lost == 1 and pool.calls_resubmitted >= 1
        assert len(pool.actors) == 2 and pids[0] not in ray.get([a.pid.remote() for a in pool.actors])
        # the replacement takes work once it answers
        for _ in range(50):
            pool._poll(timeout=1)
            if all(s.ready for s in pool._slots):
                break
        assert all(s.ready for s in pool._slots)
        assert len(pool.meters()) == 2
    assert not ray.is_initialized()
