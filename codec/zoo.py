"""The image codec zoo: the rate points semarc ships, named by what they are for.

Importable without torch (the command line and job drivers only need names).

Two kinds of name:

* a **zoo name** (``semarc-q1``, ``semarc-q2``, ``semarc-fast``): what a user
  picks, CompressAI-style quality levels. A zoo name may point at a newer
  checkpoint in a later release;
* a **checkpoint id** (``semarc-h05c``, ...): one file in ``codec/weights``,
  immutable. Archives record the checkpoint id and its fingerprint, never the
  zoo name, so an archive always names exactly the weights that wrote it.

``--codec`` takes either. From the first release on, a checkpoint that has
shipped stays decodable for good: it may leave ``ZOO``, never the package
(``docs/format.md``, "Codec points and compatibility"). Before 0.1, once, the
superseded points in ``RETIRED`` were removed; naming one fails with an error
that says so.

Figures: Kodak (24 images, never trained on), means per image; bpp counts the
whole stored image section (header, payload, check). Speed: images/s on Kodak,
one torch thread, encode with its verification (as jobs run it). From
``bench/results/kodak-zoo/kodak.md`` (``semarc-h05s``, ``semarc-h10s``) and
``bench/results/kodak.md`` (``semarc-f1``), ``bench/results/kodak-multires-q1``
and ``bench/results/kodak-speed-multires-q1`` (``semarc-q1-adaptive``); how each
checkpoint was trained: ``codec/weights/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import DEFAULT_CODEC as DEFAULT  # semarc-q1


@dataclass(frozen=True)
class ZooEntry:
    name: str              # zoo name, what --codec takes
    checkpoint: str        # immutable checkpoint id (codec/weights/<checkpoint>.pt), what archives record
    fingerprint: str       # SHA-256 of architecture, configuration and weights (docs/format.md)
    use: str               # what it is for
    arch: str              # the checkpoint's architecture (codec.image_models.build)
    size: str              # the network's size
    kodak_bpp: float
    psnr: float            # dB, 8-bit RGB
    lpips: float           # LPIPS-Alex v0.1
    encode_img_s: float    # Kodak images/s, one CPU thread, with the encode-time verification
    decode_img_s: float
    recipe: str            # the command that made the checkpoint (its earlier steps: codec/weights/README.md)
    loss: tuple[float, float] = (0.0, 0.0)  # (lambda, LPIPS-Alex weight) its transforms were last trained at:
    #                                         what a latent search (codec/latent_search.py) minimises

    def as_json(self, default: str) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint, "arch": self.arch, "kodak_bpp": self.kodak_bpp,
                "psnr": self.psnr, "lpips": self.lpips, "encode_img_s": self.encode_img_s,
                "decode_img_s": self.decode_img_s, "recipe": self.recipe, "default": self.name == default}


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="semarc-q1", checkpoint="semarc-h05s",
        fingerprint="8d93c2e18e742c0838881ef72cd7852fbec87b0ef46044b14eb07cba8b6de36d",
        use="lowest rate: the best point per bit (LPIPS 27% below the best classical codec at its bytes, "
            "PSNR 0.55 dB below it)",
        arch="checkerboard", size="N=128 M=192, 7.4 M params, means",
        kodak_bpp=0.0331, psnr=23.33, lpips=0.4321, encode_img_s=2.236, decode_img_s=1.502,
        recipe="semarc train-codec --run train_runs/semarc-h05s --arch checkerboard --N 128 --M 192 --batch 8 "
               "--crop 256 --quant mixed --hyper-input rounded --means hyper "
               "--init train_runs/semarc-h05s-ent/semarc-h05s-ent.pt --lmbda 0.00015 --lpips-weight 0.09 --lr 1e-4 "
               "--steps 1400 --lr-drop-step 1150 --log-every 25 --save-every 25 --threads 1 "
               "--corpus ~/.cache/semarc/corpus --export codec/weights/semarc-h05s.pt",
        loss=(0.00015, 0.09)),
    ZooEntry(
        name="semarc-q2", checkpoint="semarc-h10s",
        fingerprint="e6e346db6ad9af9aa31cb33e0ad25ea0a038fa392ca6cfbde88077ec80eaba8b",
        use="more detail for ~2.4x the bytes of q1 (LPIPS 32% below the best classical codec at its bytes, "
            "PSNR 0.75 dB below it)",
        arch="checkerboard", size="N=128 M=192, 7.4 M params, means",
        kodak_bpp=0.0810, psnr=25.34, lpips=0.2886, encode_img_s=1.99, decode_img_s=1.427,
        recipe="semarc train-codec --run train_runs/semarc-h10s --arch checkerboard --N 128 --M 192 --batch 16 "
               "--crop 192 --train-part entropy --entropy-data latents --hyper-input rounded --means hyper "
               "--init codec/weights/semarc-h10c.pt --lr 1e-4 --lr-fresh 1e-3 --steps 2000 --lr-drop-step 1600 "
               "--log-every 50 --save-every 100 --threads 1 --corpus ~/.cache/semarc/corpus "
               "--export codec/weights/semarc-h10s.pt",
        loss=(0.0006, 0.3)),  # semarc-h10n's joint stage; the later stages trained the entropy model alone
    ZooEntry(
        name="semarc-fast", checkpoint="semarc-f1",
        fingerprint="5b60fb3f207dd409d6f49f55cbe14865b2ceaea928e46344a649066668c7c910",
        use="speed and tests: a small MSE-only model, 3-4x faster, the weakest per bit "
            "(LPIPS 30% above the best classical codec at its bytes)",
        arch="factorized", size="N=64 M=96, 0.76 M params",
        kodak_bpp=0.0990, psnr=25.33, lpips=0.5180, encode_img_s=7.821, decode_img_s=4.987,
        recipe="semarc train-codec --run train_runs/semarc-f1 --N 64 --M 96 --lmbda 0.001 --steps 12000 --threads 1 "
               "--export codec/weights/semarc-f1.pt",
        loss=(0.001, 0.0)),
)


@dataclass(frozen=True)
class ModeSetEntry:
    """A named mode set (``codec/multires.py``): the encoder codes each image
    with one of several shipped points at one of several scales, whichever
    has the lowest loss (the first mode's training loss). Archives record the
    set's spelling with checkpoint ids."""

    name: str
    spec: str               # modes, with checkpoint ids
    use: str
    kodak_bpp: float
    psnr: float
    lpips: float
    encode_img_s: float     # Kodak images/s, one CPU thread, with the encode-time verification
    decode_img_s: float

    def as_json(self) -> dict:
        """The keys of ``ZooEntry.as_json``: ``checkpoint`` is what archives
        record (the modes), ``arch`` is ``multires``."""
        return {"name": self.name, "checkpoint": self.spec, "arch": "multires", "kodak_bpp": self.kodak_bpp,
                "psnr": self.psnr, "lpips": self.lpips, "encode_img_s": self.encode_img_s,
                "decode_img_s": self.decode_img_s, "recipe": f"--codec {self.spec} (shipped points, no training)",
                "default": False}


MODE_SETS: tuple[ModeSetEntry, ...] = (
    ModeSetEntry(
        name="semarc-q1-adaptive", spec="semarc-h05s+semarc-h10s@3/4+semarc-h10s@1/2",
        use="q1's band with adaptive resolution: each image at full resolution with semarc-h05s, or at 3/4 or "
            "1/2 with semarc-h10s, whichever has the lower loss; better PSNR and DISTS per bit, smooth images "
            "most; 5x slower to encode",
        kodak_bpp=0.0351, psnr=23.72, lpips=0.4285, encode_img_s=0.346, decode_img_s=1.768),
)


# Checkpoint ids removed before the first release, each with the shipped point that supersedes it.
RETIRED: dict[str, str] = {
    "semarc-f05": "semarc-h05s", "semarc-p1": "semarc-h10s", "semarc-p06": "semarc-h05s",
    "semarc-p11": "semarc-h10s", "semarc-h05b": "semarc-h05s", "semarc-h05d": "semarc-h05s",
    "semarc-h05m": "semarc-h05s", "semarc-h05p": "semarc-h05s", "semarc-h10b": "semarc-h10s",
    "semarc-h10d": "semarc-h10s", "semarc-h10m": "semarc-h10s", "semarc-h10n": "semarc-h10s",
    "semarc-h05c": "semarc-h05s", "semarc-h10c": "semarc-h10s",
}


class RetiredCodecError(ValueError):
    """A ``--codec`` name, or an archive's recorded codec, is a retired checkpoint."""


def retired_message(checkpoint: str) -> str:
    succ = RETIRED[checkpoint]
    zoo_name = next((e.name for e in ZOO if e.checkpoint == succ), None)
    return (f"codec {checkpoint} was retired before the first release and is no longer in this semarc; "
            f"it was superseded by {succ}" + (f" ({zoo_name})" if zoo_name else "") + ". Archives written "
            f"with {checkpoint} decode with the pre-release semarc that wrote them (its checkpoint is "
            f"codec/weights/{checkpoint}.pt in the repository's history); new archives: --codec "
            f"{zoo_name or succ}")


def entry(name: str) -> ZooEntry | None:
    """The zoo entry for a zoo name or a shipped checkpoint id, else None."""
    return next((e for e in ZOO if name in (e.name, e.checkpoint)), None)


def checkpoint_id(name: str) -> str:
    """``--codec NAME`` -> what archives record: a zoo name becomes its
    checkpoint id; a checkpoint id, a path or a CompressAI zoo name stays as
    it is; a mode set (``A+B@1/2``, ``codec/multires.py``, or a name in
    ``MODE_SETS``) becomes the same with each point's checkpoint id. A retired
    checkpoint id raises ``RetiredCodecError``."""
    named = next((m.spec for m in MODE_SETS if m.name == name), None)
    if named is not None:
        name = named
    if "+" in name:
        parts = [p.strip().partition("@") for p in name.split("+")]
        return "+".join(checkpoint_id(point) + sep + scale for point, sep, scale in parts)
    if name in RETIRED:
        raise RetiredCodecError(retired_message(name))
    e = entry(name)
    return e.checkpoint if e is not None else name


def names() -> list[str]:
    """Every name ``--codec`` takes for a shipped point: zoo names, then checkpoint ids."""
    return [e.name for e in ZOO] + [e.checkpoint for e in ZOO]


def table() -> str:
    """``semarc codecs``: the zoo as a text table, then each point's recipe."""
    head = ["name", "checkpoint", "arch", "size", "Kodak bpp", "PSNR", "LPIPS", "enc img/s", "dec img/s", "use"]
    rows = [[e.name + (" *" if e.name == DEFAULT else ""), e.checkpoint, e.arch, e.size, f"{e.kodak_bpp:.4f}",
             f"{e.psnr:.2f}", f"{e.lpips:.3f}", f"{e.encode_img_s:.2f}", f"{e.decode_img_s:.2f}", e.use]
            for e in ZOO]
    width = [max(len(r[i]) for r in [head] + rows) for i in range(len(head) - 1)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, width)) + "  " + r[-1]  # noqa: E731
    lines = [fmt(head)] + [fmt(r) for r in rows]
    lines += ["", f"* default. Kodak: 24 images, bpp of the whole image section; LPIPS-Alex; speed: one CPU "
                  f"thread, encode verified. --codec takes the name or the checkpoint id; archives record the "
                  f"checkpoint id.", "zoo:<arch>:<quality>: a CompressAI zoo model (downloads its weights), "
                                    "e.g. zoo:bmshj2018-factorized:1", "", "recipes (the command that made each "
                                    "checkpoint; every step: codec/weights/README.md):"]
    lines += [f"  {e.name}: {e.recipe}" for e in ZOO]
    lines += ["", "mode sets (codec/multires.py; --codec also takes POINT+POINT@NUM/DEN+...):"]
    lines += [f"  {m.name}: {m.spec}, Kodak {m.kodak_bpp:.4f} bpp, {m.psnr:.2f} dB, LPIPS {m.lpips:.3f}, "
              f"{m.encode_img_s:.2f}/{m.decode_img_s:.2f} img/s: {m.use}" for m in MODE_SETS]
    return "\n".join(lines)
