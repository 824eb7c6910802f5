"""A benchmark's progress file: what a long run has measured so far, so that a
stopped run resumes where it stopped.

``semarc bench kodak`` with a latent search takes minutes per image; a run
over a set can outlast the machine it runs on. The journal is a JSON-lines
file in the output folder. Its first line is the run's identity (the images'
pixel digests, the metrics, the classical codecs' settings, each semarc
variant's checkpoint fingerprint and search); every other line is one
finished unit of work (a variant on an image, with its rows), appended and
flushed as soon as it is measured.

Rerunning the same command reads it back: the units it holds are not measured
again, so nothing is lost or measured twice. A journal made by another
configuration is refused with what differs (delete it, or give another
``--out``): results of different runs are never mixed. A torn last line (the
process killed mid-write) is dropped and that unit measured again; any other
unreadable line is an error. The run deletes the journal once its report is
written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class JournalError(RuntimeError):
    """The journal cannot be resumed from (another configuration, or damaged)."""


class Journal:
    def __init__(self, path: str | os.PathLike, identity: dict):
        self.path = Path(path)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file
        self._done: dict[tuple[str, str], list[dict]] = {}
        if self.path.exists():
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"identity": self.identity}) + "\n")

    def _load(self) -> None:
        text = self.path.read_text()
        lines = text.split("\n")
        torn = bool(lines) and lines[-1] != ""  # the last write did not finish its line
        complete = lines[:-1]
        if not complete:
            raise JournalError(f"{self.path}: no identity line; delete it to start over")
        try:
            head = json.loads(complete[0])
        except json.JSONDecodeError:
            raise JournalError(f"{self.path}: its first line is not JSON; delete it to start over") from None
        if not isinstance(head, dict) or "identity" not in head:
            raise JournalError(f"{self.path}: its first line is not a journal identity; delete it to start over")
        if head["identity"] != self.identity:
            raise JournalError(f"{self.path} was made by another configuration (it differs in: "
                               f"{', '.join(_differences(head['identity'], self.identity))}); delete it or "
                               f"give another --out")
        for n, line in enumerate(complete[1:], start=2):
            try:
                rec = json.loads(line)
                key, rows = (rec["unit"], rec["item"]), rec["rows"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise JournalError(f"{self.path}: line {n} is damaged; delete the file to start over") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise JournalError(f"{self.path}: line {n} holds no rows; delete the file to start over")
            self._done.setdefault(key, rows)
        if torn:  # drop the unfinished record, so the next append starts on a line of its own
            self.path.write_text("\n".join(complete) + "\n")

    def __len__(self) -> int:
        return len(self._done)

    def get(self, unit: str, item: str) -> list[dict] | None:
        """The rows measured for ``unit`` on ``item`` by an earlier run, or None."""
        return self._done.get((unit, item))

    def add(self, unit: str, item: str, rows: list[dict]) -> None:
        rec = {"unit": unit, "item": item, "rows": rows}
        line = json.dumps(rec)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._done[(unit, item)] = json.loads(line)["rows"]

    def close(self) -> None:
        """The run is reported: the journal has served its purpose."""
        self.path.unlink(missing_ok=True)


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)] or ["its layout"]
