"""Entry layer: `mjasync batch`'s input, read and checked into jobs with stable keys before anything is sent.

Input: a `.txt` file (one prompt per line; blank lines and `#` comments skipped) or a `.jsonl` file,
one `JobSpec` object per line: `{"prompt": ..., "id"?: ..., "params"?: {PromptParams fields},
"mode"?: "fast"|"relax"|"turbo", "image_urls"?: [...], "upscale"?: [1, 2]}`. The whole file is read
and every job built (so validated) before anything is sent; a bad line is exit 2 naming it. A prompt
longer than the limit (`MAX_PROMPT_CHARS`, or `--max-prompt-chars`) is refused as it is read, without
being echoed.

Each job has a key: its `id`, else `L<line>-<hash of its content>`; each upscale follow-up is
`<key>/upscale<n>`, sent after its grid finishes. Each job also has a number, its place among the file's
jobs (1, 2, ...), which names its images (`image_stem`: `007-a-red-fox-in-snow`) and its progress row.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal, cast

import msgspec

import mjasync
from mjasync import InvalidRequestError, PromptParams

from .._job import ImagineJob
from .._models.params import MAX_PROMPT_CHARS, check_prompt_length

__all__ = [
    "InputError",
    "InputJob",
    "JobSpec",
    "Unit",
    "digest",
    "grid_job",
    "image_stem",
    "iter_units",
    "load_jobs",
    "number_width",
    "parse_upscale",
    "prompt_slug",
    "validate_jobs",
]

_ID_RE: Final = re.compile(r"[^\s/]{1,200}")
#: An image prompt's URL, and the start of the prompt's `--flags`: neither belongs in a file name.
_URL_RE: Final = re.compile(r"\S+://\S*")
_FLAGS_RE: Final = re.compile(r"(?:^|\s)--[A-Za-z].*", re.DOTALL)
_WORD_RE: Final = re.compile(r"[a-z0-9]+")
#: Longest prompt part of an image name, in characters.
SLUG_CHARS: Final = 48


class InputError(Exception):
    """A bad input file or option, found before anything is sent."""


class JobSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One line of a .jsonl input file."""

    prompt: str
    id: str | None = None
    params: PromptParams | None = None
    mode: Literal["fast", "relax", "turbo"] | None = None
    image_urls: list[str] = []
    upscale: list[int] | None = None


_spec_decoder: Final = msgspec.json.Decoder(JobSpec)
_spec_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class InputJob:
    """One input job: where it came from, its key, and what to send."""

    key: str
    line: int
    prompt: str
    params: PromptParams | None = None
    mode: str | None = None
    image_urls: tuple[str, ...] = ()
    upscale: tuple[int, ...] = ()
    #: Its place among the input's jobs, from 1 (0: not read from a file).
    number: int = 0


@dataclass(frozen=True)
class Unit:
    """One unit of work: a job's grid (`upscale == 0`) or one upscale of it; one results line each."""

    job: InputJob
    upscale: int = 0

    @property
    def key(self) -> str:
        """The journal and results key: `<job key>` or `<job key>/upscale<n>`."""
        return self.job.key if not self.upscale else f"{self.job.key}/upscale{self.upscale}"

    @property
    def action(self) -> str:
        """`imagine`, or `upscale<n>` (also the images' name suffix)."""
        return f"upscale{self.upscale}" if self.upscale else "imagine"

    @property
    def label(self) -> str:
        """The unit's key as people read it in messages (`L7-0a1b2c3d4e5f`, `fox upscale2`)."""
        return self.job.key if not self.upscale else f"{self.job.key} {self.action}"


def prompt_slug(prompt: str, limit: int = SLUG_CHARS) -> str:
    """A file-name-safe digest of `prompt`'s words: lowercase ASCII letters and digits joined by `-`.

    Image URLs and everything from the first `--flag` on are left out, accents are dropped
    (`café` → `cafe`), and the words are cut at a word boundary within `limit` characters. A prompt
    with no such word (only URLs, or another script) gives `prompt`.
    """
    text = _FLAGS_RE.sub(" ", _URL_RE.sub(" ", prompt))
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = ""
    for word in _WORD_RE.findall(ascii_text.lower()):
        longer = f"{slug}-{word}" if slug else word
        if len(longer) > limit:
            slug = slug or word[:limit]
            break
        slug = longer
    return slug or "prompt"


def number_width(jobs: int) -> int:
    """Digits of a job's number in names for an input of `jobs` jobs: 3, or more for 1,000 jobs and up."""
    return max(3, len(str(jobs)))


def image_stem(job: InputJob, width: int) -> str:
    """The start of `job`'s image names: its zero-padded number and its prompt's slug (`007-a-red-fox`).

    The number keeps the files in the input's order when listed by name (`001`, `002`, ... `010`, not
    `L1`, `L10`, `L2`), and makes the name unique among the run's jobs whatever their prompts; the
    same input file gives the same names in every run, so a resumed run names its images as the
    first run would have.
    """
    return f"{job.number:0{width}d}-{prompt_slug(job.prompt)}"


def digest(data: bytes) -> str:
    """A short hash of `data` (12 hex digits): the hash part of a key, or of a file name."""
    return hashlib.sha256(data).hexdigest()[:12]


def _check_upscale(values: Sequence[int], where: str) -> tuple[int, ...]:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
            raise InputError(f"{where}: upscale quadrants are 1 to 4, not {value!r}")
    return tuple(dict.fromkeys(values))


def parse_upscale(text: str) -> tuple[int, ...]:
    """`--upscale 1,2,4` as a tuple; argparse shows the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
        return _check_upscale(values, "--upscale")
    except (ValueError, InputError) as exc:
        raise argparse.ArgumentTypeError(
            f"expected quadrants 1-4 separated by commas, e.g. 1,2 ({exc})"
        ) from None


def load_jobs(
    path: Path,
    *,
    upscale: tuple[int, ...] = (),
    fmt: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> list[InputJob]:
    """Every job in a .txt or .jsonl file, checked against the schema; `InputError` names a bad line."""
    kind = fmt or {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{path}: name it .txt (one prompt per line) or .jsonl (one job per line), or pass --format"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    jobs: list[InputJob] = []
    lines_by_key: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or (kind == "txt" and line.startswith("#")):
            continue
        where = f"{path}:{number}"
        job = _txt_job(line, number, upscale) if kind == "txt" else _jsonl_job(line, number, where, upscale)
        try:
            check_prompt_length(job.prompt, max_prompt_chars, what="its prompt", setting="--max-prompt-chars")
        except InvalidRequestError as exc:
            raise InputError(f"{where}: {exc}") from None
        if job.key in lines_by_key:
            raise InputError(f"{where}: key {job.key!r} is already used on line {lines_by_key[job.key]}")
        lines_by_key[job.key] = number
        jobs.append(replace(job, number=len(jobs) + 1))
    if not jobs:
        raise InputError(f"{path}: no jobs in it")
    return jobs


def _txt_job(line: str, number: int, upscale: tuple[int, ...]) -> InputJob:
    return InputJob(key=f"L{number}-{digest(line.encode())}", line=number, prompt=line, upscale=upscale)


def _jsonl_job(line: str, number: int, where: str, default_upscale: tuple[int, ...]) -> InputJob:
    try:
        spec = _spec_decoder.decode(line)
    except msgspec.MsgspecError as exc:
        raise InputError(f"{where}: {exc}") from None
    if spec.id is not None and not _ID_RE.fullmatch(spec.id):
        raise InputError(f"{where}: id must be 1-200 characters without spaces or '/', not {spec.id!r}")
    # The key must not move when only the follow-ups change, so `upscale` stays out of the hash.
    content = _spec_encoder.encode(msgspec.structs.replace(spec, id=None, upscale=None))
    key = spec.id if spec.id is not None else f"L{number}-{digest(content)}"
    upscale = default_upscale if spec.upscale is None else _check_upscale(spec.upscale, where)
    return InputJob(
        key=key,
        line=number,
        prompt=spec.prompt,
        params=spec.params,
        mode=spec.mode,
        image_urls=tuple(spec.image_urls),
        upscale=upscale,
    )


def validate_jobs(
    jobs: Sequence[InputJob], *, source: Path, mode: str | None, builder: mjasync.Client | None = None
) -> None:
    """Build every grid job, so the client's own checks run before anything is sent."""
    # Building a job sends nothing, and a client that never sends never opens a session.
    builder = builder or mjasync.Client(api_key="validation-only", base_url="http://127.0.0.1")
    for job in jobs:
        try:
            grid_job(builder, job, mode).close()  # built for its checks only, never sent
        except InvalidRequestError as exc:
            raise InputError(f"{source}:{job.line}: {exc}") from None


def grid_job(mj: mjasync.Client, job: InputJob, mode: str | None) -> ImagineJob:
    """The grid (imagine) job for `job`, in its own mode else `mode`; built, not sent."""
    chosen = cast("mjasync.types.Mode | None", job.mode or mode)
    return mj.imagine(job.prompt, image_urls=job.image_urls, params=job.params, mode=chosen)


def iter_units(jobs: Sequence[InputJob]) -> Iterator[Unit]:
    """Every unit of `jobs`: each grid, then its upscales."""
    for job in jobs:
        yield Unit(job)
        for n in job.upscale:
            yield Unit(job, n)
