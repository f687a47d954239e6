"""The threads file: one thread id a line, '#' comments, a BOM and bad lines tolerated (--threads-file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.model import thread_id_problem


@dataclass(frozen=True, slots=True)
class ThreadsFile:
    ids: tuple[str, ...]
    invalid: tuple[tuple[int, str], ...]  # (line number, reason)


_BOM = "\ufeff"
NOT_UTF8 = "not UTF-8 text"


def _decoded_lines(data: str | bytes) -> list[str | None]:
    """The lines of data without a leading BOM; None for a line that is not UTF-8.

    Bytes are decoded line by line so that one bad byte costs one line, not the whole file.
    """
    if isinstance(data, str):
        return list(data.removeprefix(_BOM).splitlines())
    lines: list[str | None] = []
    for raw in data.removeprefix(_BOM.encode("utf-8")).splitlines():
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(None)
    return lines


def parse_threads(data: str | bytes) -> ThreadsFile:
    """One id a line; '#' starts a comment; blanks ignored; duplicates dropped keeping the first.

    A UTF-8 BOM at the start is ignored (editors on Windows write one); a line that is not UTF-8 is
    reported as invalid and the other lines are kept.
    """
    ids: list[str] = []
    seen: set[str] = set()
    invalid: list[tuple[int, str]] = []
    for number, line in enumerate(_decoded_lines(data), start=1):
        if line is None:
            invalid.append((number, NOT_UTF8))
            continue
        candidate = line.split("#", 1)[0].strip()
        if not candidate:
            continue
        problem = thread_id_problem(candidate)
        if problem:
            invalid.append((number, problem))
        elif candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ThreadsFile(tuple(ids), tuple(invalid))


def read_threads_file(path: Path) -> ThreadsFile:
    """The parsed threads file. Does not log: the caller logs once per change of the file and counts
    the invalid lines. Raises OSError if unreadable (the caller decides whether that is fatal)."""
    return parse_threads(path.read_bytes())


