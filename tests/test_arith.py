import random

import pytest

from semarc.codec import arith


def _roundtrip(symbols, tables):
    enc = arith.Encoder()
    for s, cum in zip(symbols, tables):
        enc.encode(cum[s], cum[s + 1], cum[-1])
    data = enc.finish()
    dec = arith.Decoder(data)
    out = [arith.decode_symbol(dec, cum) for cum in tables]
    return data, out, dec


def _cum(freqs):
    c = [0]
    for f in freqs:
        c.append(c[-1] + f)
    return c


@pytest.mark.parametrize("seed", range(20))
def test_roundtrip_random_tables(seed):
    rng = random.Random(seed)
    n = rng.randint(0, 300)
    tables, syms = [], []
    for _ in range(n):
        v = rng.randint(2, 50)
        freqs = [rng.choice([1, 1, 2, 1000, 2**20]) for _ in range(v)]
        tables.append(_cum(freqs))
        syms.append(rng.randrange(v))
    data, out, dec = _roundtrip(syms, tables)
    assert out == syms
    assert dec.verify_end()


def test_cost_is_within_two_bits_of_information():  # plus byte rounding
    import math

    rng = random.Random(1)
    freqs = [1, 3, 60, 2**24 - 64]
    cum = _cum(freqs)
    syms = [rng.choices(range(4), weights=freqs)[0] for _ in range(2000)]
    info = sum(-math.log2(freqs[s] / cum[-1]) for s in syms)
    data, out, _ = _roundtrip(syms, [cum] * len(syms))
    assert out == syms
    assert 8 * len(data) <= info + 2 + 8  # <= 2 bits of termination, rounded up to a byte


def test_certain_message_costs_nothing():
    data, out, _ = _roundtrip([0, 0, 0], [[0, 1]] * 3)
    assert data == b"" and out == [0, 0, 0]


def test_extra_or_changed_bytes_fail_the_end_check():
    cum = _cum([5, 7, 9, 11])
    syms = [1, 2, 3, 0, 2]
    enc = arith.Encoder()
    for s in syms:
        enc.encode(cum[s], cum[s + 1], cum[-1])
    data = enc.finish(check=0xDEADBEEF, check_bits=6)

    def ends_ok(d, check=0xDEADBEEF):
        dec = arith.Decoder(d)
        assert [arith.decode_symbol(dec, cum) for _ in syms] == syms
        return dec.verify_end(check, 6)

    assert ends_ok(data)
    assert not ends_ok(data + b"\x01") and not ends_ok(data + b"\x00")
    assert not ends_ok(data, check=0x0EADBEEF)
    assert not ends_ok(data[:-1] + bytes([data[-1] ^ 1]))


@pytest.mark.parametrize("bits", [0, 2, 9, 25])
def test_check_bits_cost_at_most_their_length_plus_rounding(bits):
    import math

    rng = random.Random(bits)
    cum = _cum([3, 1, 12, 200])
    for _ in range(50):
        syms = [rng.randrange(4) for _ in range(rng.randint(0, 40))]
        enc = arith.Encoder()
        for s in syms:
            enc.encode(cum[s], cum[s + 1], cum[-1])
        info = sum(-math.log2((cum[s + 1] - cum[s]) / cum[-1]) for s in syms)
        data = enc.finish(rng.getrandbits(32), bits)
        assert 8 * len(data) < info + 2 + bits + 8


def test_bad_interval_rejected():
    with pytest.raises(ValueError):
        arith.Encoder().encode(3, 3, 10)
    with pytest.raises(ValueError):
        arith.Encoder().encode(0, 1, 2 ** 60)
