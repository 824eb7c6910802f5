"""The Python API: ``semarc.encode``, ``semarc.decode`` (the jobs of the
``semarc encode`` / ``semarc decode`` commands, same options) and
``semarc.read`` (an archive as a Ray Dataset of decoded records,
``semarc/reader.py``).

Light to import: the options are plain dataclasses (``jobs/options.py``);
fsspec, pyarrow, Ray and torch load when a function is called.
"""

from __future__ import annotations

import dataclasses
import inspect

from semarc.jobs.options import DecodeOptions, EncodeOptions, describe, ordered_fields


def encode(src: str, dst: str, **options) -> "JobReport":  # noqa: F821 - semarc.jobs.encode.JobReport
    from semarc.jobs.encode import run_encode

    return run_encode(str(src), str(dst), EncodeOptions.from_kwargs("semarc.encode", **options))


def decode(src: str, dst: str, **options) -> "DecodeReport":  # noqa: F821 - semarc.jobs.decode.DecodeReport
    from semarc.jobs.decode import run_decode

    return run_decode(str(src), str(dst), DecodeOptions.from_kwargs("semarc.decode", **options))


encode.__doc__ = f"""Encode images into an archive of Parquet shards under ``dst``.

``src``: a folder of images, a glob, or a ``.jsonl``/``.csv``/``.parquet``
manifest with ``uri`` and optional ``caption`` and ``key`` columns; ``dst``: a
folder or any fsspec URL (``s3://bucket/prefix``). The same job as ``semarc
encode SRC DST``: each option below is the flag of the same name
(``shard_size`` is ``--shard-size``, ``progress=False`` is ``--no-progress``).

Rerunning the same call resumes: only the shards not yet published are
encoded, and no row is duplicated; other options on the same ``dst`` raise
``semarc.jobs.inputs.JobError``. Inputs that cannot be encoded (unreadable,
corrupt, not an image, too large) become error rows with a reason and the job
goes on.

Runs on the Ray session this process holds (``ray.init`` before calling),
else joins ``address``, else starts a local cluster for the job and stops it
afterwards.

Returns a ``JobReport``: ``records``, ``ok``, ``errors`` (error rows),
``shards``, ``shards_skipped``, ``bytes_total``, ``pixels``, ``seconds``,
``totals`` (with ``bpp``) and ``stages`` (each pool's busy time);
``exit_code`` is the command's exit status (0, or 3 with error rows). A job
that cannot run (bad ``src`` or ``dst``, a manifest error) raises ``JobError``.
An unknown option raises TypeError naming the valid ones.

Options (name: type = default):
{describe(EncodeOptions)}

Example::

    report = semarc.encode("photos/manifest.jsonl", "s3://bucket/archive", codec="semarc-q2", shard_size=512)
    print(report.ok, report.errors, report.totals["bpp"])
"""

decode.__doc__ = f"""Decode an archive to ``dst/images/<key>.<format>`` and ``dst/captions.jsonl``.

``src``: the archive (a folder or any fsspec URL); ``dst``: the output folder
or URL. The same job as ``semarc decode SRC DST``: each option below is the
flag of the same name (``keys=["a", "b"]`` is ``--keys a,b``). Records that
cannot be decoded exactly are listed in ``dst/errors.jsonl`` with the reason;
a rerun skips the shards already decoded. To get the records in memory
instead of files, use ``semarc.read``.

Runs on the Ray session this process holds, else joins ``address``, else
starts a local cluster for the job and stops it afterwards.

Returns a ``DecodeReport``: ``records``, ``decoded``, ``errors``,
``skipped_error_rows`` (the archive's own error rows), ``shards``,
``shards_skipped``, ``seconds``, ``stages``; ``exit_code`` as the command's.
A job that cannot run raises ``semarc.jobs.inputs.JobError``. An unknown
option raises TypeError naming the valid ones.

Options (name: type = default):
{describe(DecodeOptions)}

Example::

    report = semarc.decode("s3://bucket/archive", "out/decoded", keys=["cat", "dog"], format="webp")
"""


def _signature(cls) -> inspect.Signature:
    """``(src, dst, *, option=default, ...)``: what ``help()`` and editors show."""
    params = [inspect.Parameter("src", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str"),
              inspect.Parameter("dst", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str")]
    for f in ordered_fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=f.type))
    return inspect.Signature(params)


encode.__signature__ = _signature(EncodeOptions)
decode.__signature__ = _signature(DecodeOptions)
