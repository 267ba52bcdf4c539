"""The ``Sample`` type, the guarded image opener, and the load report.

A :class:`Sample` is one multiple-choice (or open) visual question: a lazily
opened image, the question, its options, the answer letter, and optional
ground truth for analysis (object boxes with captions, in original pixels).

Images are opened through :func:`open_image`, which reads only the header first
and refuses images over a pixel limit before decoding (decompression-bomb
guard), so a hostile or broken data file produces a ``ValueError`` naming the
sample, never an out-of-memory crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mapo.data.task import TaskSpec

# 8K HR-Bench images are 7680x4320 = 33 MP; allow 3x that. PIL's own guard
# (2 x Image.MAX_IMAGE_PIXELS = 179 MP) still applies above this.
DEFAULT_MAX_PIXELS = 100_000_000

LETTERS = string.ascii_uppercase

# The image formats mapo reads (the suffixes the readers accept: .jpg .jpeg .png .webp .bmp). PIL would
# otherwise open anything it has a plugin for, e.g. an EPS renamed .png, which runs Ghostscript.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


@dataclass
class Box:
    """An axis-aligned box ``(x1, y1, x2, y2)`` in original-image pixels, with its label and caption."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    caption: str = ""
    is_target: bool = False

    def __post_init__(self) -> None:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"Box needs x2 > x1 and y2 > y1, got ({self.x1}, {self.y1}, {self.x2}, {self.y2})")

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Box:
        if not isinstance(d, dict):
            raise ValueError(f"a box must be a mapping with x1, y1, x2, y2, got {type(d).__name__}")
        missing = [k for k in ("x1", "y1", "x2", "y2") if k not in d]
        if missing:
            raise ValueError(f"box is missing {', '.join(missing)}: {d!r}")
        return cls(
            float(d["x1"]), float(d["y1"]), float(d["x2"]), float(d["y2"]),
            label=str(d.get("label", "")), caption=str(d.get("caption", "")), is_target=bool(d.get("is_target", False)),
        )


ImageSource = str | Path | bytes | Image.Image


@dataclass
class Sample:
    """One visual question.

    ``image`` is a path, encoded bytes, or an in-memory PIL image; it is decoded
    only by :meth:`load_image`. ``answer`` is a letter ("A", "B", ...) when
    ``options`` is non-empty, else free text. ``boxes`` are in original pixels.
    ``meta`` holds the source name and anything benchmark-specific
    (``cycle_category``, ``task``, ``level``, ...). ``task`` is the typed
    :class:`~mapo.data.task.TaskSpec` of a generated sample (question family,
    grid, pixel budgets), ``None`` for benchmark samples.
    """

    id: str
    image: ImageSource
    question: str
    options: list[str] = field(default_factory=list)
    answer: str = ""
    category: str = ""
    boxes: list[Box] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    task: TaskSpec | None = None

    def __post_init__(self) -> None:
        if self.task is not None and not isinstance(self.task, TaskSpec):
            raise ValueError(f"Sample {self.id}: task must be a TaskSpec or None, got {type(self.task).__name__}")
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Sample.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.options, list) or not all(isinstance(o, str) for o in self.options):
            raise ValueError(f"Sample {self.id}: options must be a list of strings, got {self.options!r}")
        if self.options and self.answer not in LETTERS[: len(self.options)]:
            raise ValueError(
                f"Sample {self.id}: answer must be one of the option letters "
                f"{list(LETTERS[: len(self.options)])}, got {self.answer!r}"
            )

    def load_image(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """The image as RGB; ``ValueError`` naming this sample when it cannot be opened or is too large."""
        try:
            return open_image(self.image, max_pixels=max_pixels)
        except ValueError as e:
            raise ValueError(f"sample {self.id}: {e}") from None

    @property
    def target_boxes(self) -> list[Box]:
        return [b for b in self.boxes if b.is_target]

    @property
    def answer_text(self) -> str:
        """The option text of the answer letter, or the answer itself for open questions."""
        if self.options and len(self.answer) == 1 and self.answer in LETTERS[: len(self.options)]:
            return self.options[LETTERS.index(self.answer)]
        return self.answer


def open_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``src`` (path, bytes or PIL image) as RGB, refusing more than ``max_pixels`` pixels.

    The size is checked from the header before any pixel is decoded.
    Raises ``ValueError`` with a clear message for missing, broken or oversized images.
    """
    if isinstance(src, Image.Image):
        _check_pixels(src.size, max_pixels, "in-memory image")
        return src if src.mode == "RGB" else src.convert("RGB")
    if isinstance(src, (bytes, bytearray, memoryview)):
        where, fp = f"{len(src)}-byte image", io.BytesIO(bytes(src))
    elif isinstance(src, (str, Path)):
        where = str(src)
        _check_file(src)
        fp = where
    else:
        raise ValueError(f"image must be a path, bytes or PIL.Image, got {type(src).__name__}")
    try:
        with warnings.catch_warnings():
            # We apply our own limit; PIL's warning below its hard limit is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=IMAGE_FORMATS)
            _check_pixels(im.size, max_pixels, where)
            im.load()
    except Image.DecompressionBombError as e:
        raise ValueError(f"{where}: image over PIL's pixel limit (decompression-bomb guard): {e}") from None
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as e:
        raise ValueError(f"cannot decode image {where}: {e}") from None
    return im if im.mode == "RGB" else im.convert("RGB")


def probe_image(src: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The (width, height) of ``src`` from its header only, with the same checks as :func:`open_image`.

    Readers call this on every record so broken or oversized images are counted
    at load time without decoding every pixel.
    """
    if isinstance(src, Image.Image):
        _check_pixels(src.size, max_pixels, "in-memory image")
        return src.size
    if isinstance(src, (bytes, bytearray, memoryview)):
        where, fp = f"{len(src)}-byte image", io.BytesIO(bytes(src))
    elif isinstance(src, (str, Path)):
        where, fp = str(src), str(src)
        _check_file(src)
    else:
        raise ValueError(f"image must be a path, bytes or PIL.Image, got {type(src).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp, formats=IMAGE_FORMATS) as im:
                size = im.size
    except Image.DecompressionBombError as e:
        raise ValueError(f"{where}: image over PIL's pixel limit (decompression-bomb guard): {e}") from None
    except (OSError, SyntaxError, Image.UnidentifiedImageError) as e:
        raise ValueError(f"cannot decode image {where}: {e}") from None
    _check_pixels(size, max_pixels, where)
    return size


def _check_file(src: str | Path) -> None:
    """``ValueError`` unless ``src`` names a file (a path the OS cannot look up, e.g. too long, is named too)."""
    where = str(src) if len(str(src)) <= 200 else f"{str(src)[:200]}... ({len(str(src))} characters)"
    try:
        found = Path(src).is_file()
    except (OSError, ValueError) as e:
        raise ValueError(f"unusable image path {where}: {getattr(e, 'strerror', None) or e}") from None
    if not found:
        raise ValueError(f"image file not found: {where}")


def _check_pixels(size: tuple[int, int], max_pixels: int, where: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: image has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ValueError(
            f"{where}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(decompression-bomb guard; raise max_pixels if the image is trusted)"
        )


def shuffle_options(correct_first: list[str], key: str, seed: int = 0) -> tuple[list[str], str]:
    """Shuffle options whose correct one is first; return ``(options, answer_letter)``.

    The permutation depends only on ``(seed, key)`` (key = the sample id), not on
    reading order, so the same sample always gets the same letters. V* stores the
    correct option first; scoring it unshuffled makes "always A" score 100%.
    """
    if not correct_first:
        raise ValueError("shuffle_options needs at least one option (the correct one first)")
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    order = list(range(len(correct_first)))
    rng.shuffle(order)
    options = [correct_first[i] for i in order]
    return options, LETTERS[order.index(0)]


def correct_first(options: list[str], answer: str, key: str, seed: int = 0) -> list[str]:
    """``options`` with the correct one first, as V* stores them.

    When ``options`` came from :func:`shuffle_options` with this ``(seed, key)``
    the shuffle is inverted, so a file reader without mapo's extra field
    reshuffles them into the same letters; otherwise the correct option moves
    to the front and the others keep their order.
    """
    if answer not in LETTERS[: len(options)]:
        raise ValueError(f"answer must be one of the option letters {list(LETTERS[: len(options)])}, got {answer!r}")
    probe, _ = shuffle_options(list(range(len(options))), key, seed)  # probe[j] = index in correct-first order
    if probe.index(0) == LETTERS.index(answer):
        first = [""] * len(options)
        for j, i in enumerate(probe):
            first[i] = options[j]
        return first
    a = LETTERS.index(answer)
    return [options[a]] + options[:a] + options[a + 1 :]


def restore_option_order(correct_first_options: list[str], order: Any) -> tuple[list[str], str]:
    """The sample's own option order ``order`` (a permutation of ``correct_first_options``) and its answer letter.

    Raises:
        ValueError: when ``order`` is not a list of the same option strings, so
            the answer letter cannot be matched to the file's correct option.
    """
    if (
        not isinstance(order, list)
        or not all(isinstance(o, str) for o in order)
        or sorted(order) != sorted(correct_first_options)
    ):
        raise ValueError(
            f"the recorded option order {order!r} is not a reordering of the file's options {correct_first_options!r}"
        )
    if order.count(correct_first_options[0]) != 1:
        raise ValueError(f"the correct option {correct_first_options[0]!r} appears more than once in {order!r}")
    return list(order), LETTERS[order.index(correct_first_options[0])]


@dataclass
class LoadIssue:
    """A record that could not be loaded: where it is and why."""

    file: str
    row: int | str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} [row {self.row}]: {self.reason}"


@dataclass
class LoadReport:
    """What a reader did: counts and the reason for each skipped record."""

    source: str
    format: str = ""
    loaded: int = 0
    skipped: int = 0
    issues: list[LoadIssue] = field(default_factory=list)
    origins: dict[str, tuple[str, int | str]] = field(default_factory=dict, repr=False)  # loaded id -> (file, row)

    def add_issue(self, file: str | Path, row: int | str, reason: str) -> None:
        self.skipped += 1
        self.issues.append(LoadIssue(str(file), row, reason))

    def summary(self) -> str:
        lines = [f"{self.source} ({self.format}): loaded {self.loaded}, skipped {self.skipped}"]
        lines += [f"  {issue}" for issue in self.issues[:20]]
        if len(self.issues) > 20:
            lines.append(f"  ... and {len(self.issues) - 20} more")
        return "\n".join(lines)


class LoadResult(list):
    """A list of :class:`Sample` with the :class:`LoadReport` of how it was read (``.report``)."""

    def __init__(self, samples: list[Sample] = (), report: LoadReport | None = None):
        super().__init__(samples)
        self.report = report if report is not None else LoadReport(source="")
