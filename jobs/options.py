"""The options of the encode and decode jobs: one dataclass per job whose
fields are the job's options, for ``semarc.encode`` / ``semarc.decode`` and
the ``semarc encode`` / ``semarc decode`` command line alike.

Each field carries its documentation in its metadata (``opt(...)``): the help
text, the command-line group, choices, and how the command line spells the
value (``--no-progress`` for ``progress=False``, comma-separated lists, a JSON
dict). ``semarc.cli`` builds its flags from these fields and
``semarc.api`` the Python functions' docstrings and keyword checks, so a flag
and an option cannot drift apart.

This module is light (no torch, Ray or pyarrow): ``import semarc`` and the
command line's parser import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ..codec import names

CODING_POOL_FIELDS = ("caption_batch", "image_batch", "caption_pool", "image_pool", "caption_gpus", "image_gpus")


def opt(default=dataclasses.MISSING, *, help: str, group: str | None = None, choices: tuple | None = None,
        metavar: str | None = None, parse=None, cli: bool = True, cli_help: str | None = None,
        default_factory=dataclasses.MISSING):
    """A documented job option. ``group``: the command line's argument group
    (``GROUPS``); ``parse``: turns the command line's string into the value
    (default: the field's type); ``cli=False``: an option of the Python API
    only; ``cli_help``: the flag's help where it differs (``--no-progress``)."""
    md = {"help": help, "group": group, "choices": choices, "metavar": metavar, "parse": parse, "cli": cli,
          "cli_help": cli_help}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=md)
    return field(default=default, metadata=md)


GROUPS = {
    "pools": ("coding pools", "actors, batch sizes and GPU shares of the caption-coding and image-coding stages "
                              "(default: by cluster size, docs/cluster.md)"),
    "captioning": ("captioning", "generate a caption for every record without a manifest caption "
                                 "(docs/captioning.md)"),
    "refine": ("generative refinement (the refine extra: diffusers)", None),
    "cluster": ("cluster and storage", None),
}


def parse_list(text: str) -> list[str]:
    """``a,b,c`` -> ["a", "b", "c"]; the name of a file -> its non-empty lines."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            return [k for k in f.read().splitlines() if k]
    return [k for k in text.split(",") if k]


def parse_json_dict(text: str) -> dict:
    d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError(f"not a JSON object: {text!r}")
    return d


@dataclass
class JobOptions:
    """What every job has: its coding pools, its cluster, storage and progress."""

    # coding pools
    caption_batch: int = opt(64, group="pools", help="captions per caption-coding call")
    image_batch: int = opt(4, group="pools", help="images per image-coding call")
    caption_pool: int | None = opt(None, group="pools", help="caption-coding actors (default: by cluster size)")
    image_pool: int | None = opt(None, group="pools", help="image-coding actors (default: by cluster size)")
    caption_gpus: float | None = opt(None, group="pools",
                                     help="GPUs per caption-coding actor (0: CPU only; default: a share of the "
                                          "GPUs left)")
    image_gpus: float | None = opt(None, group="pools",
                                   help="GPUs per image-coding actor (0: CPU only; default: a share of the GPUs left)")
    threads_per_actor: int = opt(1, group="pools", help="torch threads of each coding actor")
    # cluster and storage
    address: str | None = opt(None, group="cluster",
                              help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start a local "
                                   "one for the job (or use the Ray session this process already holds)")
    num_cpus: int | None = opt(None, group="cluster", help="CPUs of the local Ray cluster (default: all)")
    storage_options: dict = opt(default_factory=dict, group="cluster", parse=parse_json_dict,
                                metavar="JSON", help="fsspec storage options for SRC and DST (a dict; on the "
                                                     "command line JSON); credentials are better left to the "
                                                     "environment")
    progress: bool = opt(True, group="cluster", help="show a progress bar on stderr (command line: --no-progress)",
                         cli_help="no progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.storage_options, str):  # as the command line spells it
            self.storage_options = parse_json_dict(self.storage_options)

    def coding_pools(self) -> dict:
        """``size_pools`` keyword arguments for the caption- and image-coding pools."""
        return {k: getattr(self, k) for k in CODING_POOL_FIELDS}

    @classmethod
    def from_kwargs(cls, where: str, **kwargs):
        """The options from keyword arguments; an unknown name is a TypeError
        that lists the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"{where}() got unknown option{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}")
        return cls(**kwargs)


@dataclass
class EncodeOptions(JobOptions):
    """Options of the encode job (``semarc.encode``, ``semarc encode``)."""

    codec: str = opt(names.DEFAULT_CODEC,
                     help="image codec: a name or checkpoint id from `semarc codecs`, a checkpoint path, "
                          "zoo:ARCH:QUALITY, or a mode set POINT+POINT@NUM/DEN+... (adaptive resolution, "
                          "codec/multires.py)")
    caption_model: str = opt(names.DEFAULT_MODEL,
                             help="causal LM for caption coding: smollm2-135m (offline default), a hub id or a "
                                  "local path")
    caption_profile: str = opt("portable", choices=("portable", "vllm"),
                               help="portable: float64, decodes anywhere; vllm: top-k from a vLLM engine on a GPU, "
                                    "decodes under the same recorded conditions")
    shard_size: int = opt(256, help="records per shard")
    latent_steps: int = opt(0, metavar="N",
                            help="search each image's latents for N steps against the point's training loss "
                                 "before coding (codec/latent_search.py): at N=30, 2-3% fewer bytes with better "
                                 "PSNR, LPIPS and DISTS, for an encode about 100 times slower on a CPU (a job "
                                 "for GPU image workers); the decoder and format are unchanged (default 0: none)")
    latent_loss: str | None = opt(None, metavar="LAMBDA[,LPIPS]",
                                  help="the loss a latent search minimises, lambda and LPIPS-Alex weight as in "
                                       "train-codec (default: the one the point was trained at)")
    # captioning: records without a manifest caption get one generated by this model
    captioner: str | None = opt(None, group="captioning", metavar="MODEL",
                                help="image-text-to-text model (hub id or local folder) that writes the missing "
                                     "captions (default: none)")
    captioner_backend: str = opt("transformers", group="captioning", choices=("transformers", "vllm"),
                                 help="how the captioner runs")
    caption_prompt: str = opt("short", group="captioning",
                              help="short (a short factual description), misc (MISC-style: main items, one detail "
                                   "each, an overall description), or the prompt text itself")
    caption_max_tokens: int | None = opt(None, group="captioning",
                                         help="most new tokens per caption (default: 64 for short, 192 for misc)")
    captioner_batch: int = opt(8, group="captioning", help="images per captioning call")
    captioner_pool: int | None = opt(None, group="captioning", help="captioner actors (default: by cluster size)")
    captioner_gpus: float | None = opt(None, group="captioning",
                                       help="GPUs per captioner actor (default: 1, or 0.5 on a one-GPU cluster)")
    gpu_memory_utilization: float = opt(0.85, group="captioning",
                                        help="vllm captioner: fraction of the GPU's memory it may take")
    one_lmm: bool = opt(False, group="captioning",
                        help="code captions with the captioner's own language model (text-only context) instead "
                             "of caption_model (needs captioner)")

    def captioner_config(self):
        from ..generate.captioner import CaptionerConfig

        return CaptionerConfig(model=self.captioner, backend=self.captioner_backend, prompt=self.caption_prompt,
                               max_tokens=self.caption_max_tokens,
                               gpu_memory_utilization=self.gpu_memory_utilization)

    def job_config(self) -> dict:
        from ..codec import zoo
        from .inputs import JobError
        from .shards import FORMAT

        try:  # the checkpoint id (semarc-h05s), not the zoo name (semarc-q1): what the shards record
            codec = zoo.checkpoint_id(self.codec)
        except zoo.RetiredCodecError as e:
            raise JobError(str(e)) from None
        cfg = {"kind": "encode", "format": FORMAT, "codec": codec, "caption_model": self.caption_model,
               "caption_profile": self.caption_profile, "shard_size": self.shard_size}
        if self.latent_steps < 0:
            raise JobError(f"latent_steps must be >= 0, got {self.latent_steps}")
        if self.latent_loss is not None and not self.latent_steps:
            raise JobError("latent_loss is the loss of a latent search: give latent_steps N > 0 too")
        if self.latent_steps:  # recorded only when set, so archives written before it resume unchanged
            cfg["latent_steps"] = self.latent_steps
            if self.latent_loss is not None:
                from ..codec.search_loss import SearchLoss

                try:
                    loss = SearchLoss.parse(self.latent_loss)
                except ValueError as e:
                    raise JobError(f"latent_loss: {e}") from None
                cfg["latent_loss"] = [loss.lmbda, loss.lpips_weight]
        if self.one_lmm and not self.captioner:
            raise JobError("one LMM (--one-lmm) needs a captioner (--captioner MODEL)")
        if self.captioner:
            cfg["captioner"] = self.captioner_config().identity()
            if self.one_lmm:
                cfg["caption_model"] = f"lm-of:{self.captioner}"
        return cfg


@dataclass
class DecodeOptions(JobOptions):
    """Options of the decode job (``semarc.decode``, ``semarc decode``)."""

    format: str = opt("png", choices=("png", "webp", "jpeg"), help="image file format of DST/images/<key>.<format>")
    shards: list[str] | None = opt(None, parse=parse_list,
                                   help="shard names (part-00003) or indices to decode (command line: "
                                        "comma-separated; default: all)")
    keys: list[str] | None = opt(None, parse=parse_list,
                                 help="keys to decode (command line: comma-separated, or a file with one key per "
                                      "line; default: all)")
    caption_model: str | None = opt(None, help="override the caption model named in the shards")
    codec: str | None = opt(None, help="override the image codec named in the shards")
    # generative refinement (generate/refiner.py): a diffusers image-to-image model
    refiner: str | None = opt(None, group="refine", metavar="MODEL",
                              help="a diffusers image-to-image model (hub id or local folder) that redraws each "
                                   "decoded image conditioned on its caption; default: none (the codec's "
                                   "reconstruction)")
    refine_strength: float = opt(0.3, group="refine", help="share of the diffusion schedule re-run")
    refine_steps: int = opt(20, group="refine", help="inference steps of the full schedule")
    refine_guidance: float = opt(5.0, group="refine", help="classifier-free guidance scale")
    refine_seed: int = opt(0, group="refine", help="job seed; each record's noise comes from it and its key")
    refiner_pool: int | None = opt(None, group="refine", help="refiner actors (default: by cluster size)")
    refiner_gpus: float | None = opt(None, group="refine",
                                     help="GPUs per refiner actor (default: 1, or 0.5 on a one-GPU cluster)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("shards", "keys"):  # "a,b" (or a file of lines) as on the command line; shard indices as str
            v = getattr(self, name)
            if isinstance(v, str):
                setattr(self, name, parse_list(v))
            elif v is not None:
                setattr(self, name, [str(x) for x in v])

    def refiner_config(self) -> dict | None:
        if not self.refiner:
            return None
        return {"model": self.refiner, "strength": self.refine_strength, "steps": self.refine_steps,
                "guidance": self.refine_guidance, "seed": self.refine_seed}


_GROUP_ORDER = (None, "captioning", "refine", "pools", "cluster")


def ordered_fields(cls) -> list:
    """The fields of an options class in the order they are documented: the
    job's own, then captioning or refinement, pools, cluster and storage."""
    return sorted(dataclasses.fields(cls), key=lambda f: _GROUP_ORDER.index(f.metadata.get("group")))


def describe(cls, indent: str = "    ") -> str:
    """The options of ``cls`` as docstring text: name, type, default, meaning."""
    lines = []
    for f in ordered_fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        choices = f" (one of {', '.join(f.metadata['choices'])})" if f.metadata.get("choices") else ""
        lines.append(f"{indent}{f.name}: {_type_name(f.type)} = {default!r}")
        lines.append(f"{indent}    {f.metadata.get('help', '')}{choices}")
    return "\n".join(lines)


def _type_name(t) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))
