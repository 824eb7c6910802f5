"""A small seeded sample of the fuzz campaign (the full one is
``semarc bench fuzz``, its result checked in under bench/results/fuzz):
untrusted bytes into every decoder, each case in a memory- and time-limited
worker process."""

import pytest

from semarc.bench import fuzz


def test_the_harness_records_crashes_hangs_and_memory_exhaustion():
    rep = fuzz.campaign({"selftest": 12}, mem_mb=2048, timeout=5, progress=False)["targets"]["selftest"]
    want = {k: 0 for k in fuzz.OUTCOMES}
    for i in range(12):
        kind = fuzz._kind("selftest", 0, i)
        want[{"segfault": "crash", "hang": "timeout"}.get(kind, kind)] += 1
    assert rep["outcomes"] == want
    assert want["crash"] and want["timeout"] and want["oom"]  # the seed covers every kind
    assert rep["worker_restarts"] >= want["crash"] + want["timeout"]


@pytest.mark.parametrize("target,n", [("image:semarc-h05s", 200), ("image:semarc-f1", 200),
                                      ("image:semarc-f1+semarc-f1@1/2", 200), ("shard", 20)])
def test_a_seeded_sample_is_refused_or_decodes_to_its_original(target, n):
    rep = fuzz.campaign({target: n}, mem_mb=4096, timeout=600, progress=False)["targets"][target]
    o = rep["outcomes"]
    assert o["crash"] == o["timeout"] == o["oom"] == o["other"] == 0, rep["notable"]
    assert o["refused"] + o["original"] == n
    assert len(rep["by_mutation"]) >= 5  # the sample reaches most mutations


def test_replay_runs_one_case():
    got = fuzz.replay("image:semarc-f1:3")
    assert got["outcome"] in ("refused", "original") and got["kind"] in fuzz.IMAGE_MUTATIONS


def test_a_splice_that_is_another_valid_record_whole_decodes_to_that_record():
    """caption:311 splices the start of one seed onto another at offset 0: the
    bytes are the other seed's valid record, which decodes to its own caption
    (the campaign once counted that as "decoded to something else")."""
    t = fuzz._make_target("caption")
    kind, (k, data) = t.case(fuzz._rng(0, "caption", 311))
    other = next(i for i, (b, _) in enumerate(t.seeds) if b == data)
    assert kind == "splice" and other != k
    assert t.run((k, data)) == "original"
    assert t.run((k, t.seeds[k][0][:-1] + bytes([t.seeds[k][0][-1] ^ 1]))) == "refused"
