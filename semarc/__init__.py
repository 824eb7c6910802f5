"""semarc: ultra-low-bitrate semantic image archiving.

The Python API (the command line's ``semarc encode`` / ``semarc decode`` run
the same jobs with the same options)::

    import semarc

    semarc.encode("photos/", "s3://bucket/archive", codec="semarc-q1")   # -> JobReport
    semarc.decode("s3://bucket/archive", "out/")                         # -> DecodeReport
    for batch in semarc.read("s3://bucket/archive").iter_batches():      # a Ray Dataset
        ...  # batch["key"], batch["caption"], batch["image"], batch["error"]

``help(semarc.encode)`` lists every option with its meaning and default.
Importing semarc loads neither torch nor Ray; they load when a job runs.
"""

__version__ = "0.1.0"

from semarc.api import decode, encode  # noqa: E402
from semarc.jobs.options import DecodeOptions, EncodeOptions  # noqa: E402
from semarc.reader import read  # noqa: E402

__all__ = ["encode", "decode", "read", "EncodeOptions", "DecodeOptions", "JobReport", "DecodeReport", "JobError"]


def __getattr__(name: str):  # the report and error types, without importing the jobs up front
    if name == "JobReport":
        from semarc.jobs.encode import JobReport

        return JobReport
    if name == "DecodeReport":
        from semarc.jobs.decode import DecodeReport

        return DecodeReport
    if name == "JobError":
        from semarc.jobs.inputs import JobError

        return JobError
    raise AttributeError(f"module 'semarc' has no attribute {name!r}")
