"""The sidecar's hash chain (format version 2): an edit anywhere in a sidecar is detected and named.

Every record after the header carries two fields: ``header_sha256``, the digest of the header line, and
``prev_sha256``, the digest of the record line just before it. A digest is the sha256 of a line's exact
UTF-8 bytes without its newline (records are written with sorted keys, so the bytes are the record).
Editing, inserting, removing or reordering any line therefore breaks the chain at the next line, and
editing the header breaks every record's ``header_sha256``.

What it does not do: the chain is not a signature. Whoever can write the file can recompute every digest
after an edit (a forger who rewrites the chain is not detected), and the *last* record has no successor
to vouch for it (its certificate is still recomputed from its counts, and its row compared with the TSV,
by :mod:`densepure.results.verify`). Removing the last images (records and rows) leaves a shorter valid
file. Files written before the chain (format version 1) have none: they are checked by recomputation only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREV, HEADER = "prev_sha256", "header_sha256"
CHAIN_FIELDS = frozenset({PREV, HEADER})
FIRST_CHAINED_VERSION = 2


def line_digest(line: str) -> str:
    """sha256 (hex) of one sidecar line, without its newline."""
    return hashlib.sha256(line.rstrip("\n").encode("utf-8")).hexdigest()


@dataclass
class Chain:
    """Where a writer is in the chain: the header's digest and the last line's (updated by :meth:`link`)."""

    header: str
    last: str

    @classmethod
    def start(cls, header_line: str) -> Chain:
        digest = line_digest(header_line)
        return cls(digest, digest)

    def link(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``record`` with its chain fields (the caller then writes it and calls :meth:`advance`)."""
        return {**record, PREV: self.last, HEADER: self.header}

    def advance(self, line: str) -> None:
        """The line just written becomes the one the next record points to."""
        self.last = line_digest(line)


@dataclass(frozen=True)
class ChainBreak:
    """A place where the chain does not hold: sidecar ``line`` (1-based) and what is wrong there."""

    line: int
    message: str


def check_chain(lines: Sequence[str], records: Sequence[Mapping[str, Any]], numbers: Sequence[int]) -> list[ChainBreak]:
    """Every break in a version-2 sidecar: ``lines`` its whole lines (the header first), ``records`` the parsed
    records after the header with their 1-based line ``numbers``. Blank lines are not part of the chain."""
    header = line_digest(lines[0])
    breaks: list[ChainBreak] = []
    previous_number, previous = 1, header
    for record, number in zip(records, numbers, strict=True):
        if not CHAIN_FIELDS <= record.keys():
            breaks.append(ChainBreak(number, "has no chain fields (prev_sha256, header_sha256): it was not written "
                                             "by the run (inserted or rewritten by hand)"))
        else:
            if record[HEADER] != header:
                breaks.append(ChainBreak(number, "vouches for another header: line 1 (the header: configuration, "
                                                 "seed) was edited after this record was written"))
            if record[PREV] != previous:
                breaks.append(ChainBreak(number, f"vouches for another line before it: line {previous_number} was "
                                                 "edited, or lines were inserted, removed or reordered there"))
        previous_number, previous = number, line_digest(lines[number - 1])
    return breaks
