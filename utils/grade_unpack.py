"""Opening a student's hand-in (a zip or a folder) as untrusted input, for ``utils.grade``.

Nothing in a hand-in is ever executed or unpickled: the grader reads images, JSON and text only, each
through ``HandIn.read`` with a size cap, and decodes images with ``open_image`` (a few well-known
decoders, the pixel count checked before any pixel is decoded). Nothing is extracted either: entries are
read from the zip into memory, so a name with ``..``, an absolute path or a link can never write anywhere;
such entries are skipped and reported. What makes a whole hand-in ungradable (not a zip, an empty or
password-protected one, a zip bomb) raises ``Rejected`` with a reason a TA can forward to the student.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

# Decoders a hand-in image may use. Never all of PIL's: some hand files to outside programs (EPS runs Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
JUNK = re.compile(r"(^|/)(__MACOSX|\.ipynb_checkpoints)(/|$)|(^|/)(\.DS_Store|Thumbs\.db|desktop\.ini|\._[^/]*)$",
                  re.IGNORECASE)
MODEL_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".bin", ".npy", ".npz", ".joblib", ".h5",
                  ".safetensors", ".onnx")
ARCHIVE_SUFFIXES = (".rar", ".7z", ".tar", ".gz", ".tgz", ".bz2", ".xz")


@dataclass(frozen=True)
class Limits:
    """How far beyond a real hand-in a submission may go before it is refused (a real iCLEVR zip: ~75 files, 1–3 MB)."""

    max_entries: int = 5_000                 # files in one hand-in
    max_total_bytes: int = 2 * 2 ** 30       # declared size of all files once unpacked (a checkpoint may ride along)
    max_ratio: float = 200.0                 # unpacked / packed size of one entry (PNG and JPEG barely compress) ...
    ratio_floor_bytes: int = 8 * 2 ** 20     # ... checked for entries larger than this
    max_read_bytes: int = 32 * 2 ** 20       # of any one file the grader reads: an image, JSON, the readme, a zip in the zip
    max_pixels: int = 4096 * 4096            # declared width × height of one image (a real grid: 530 × 266)


class Rejected(Exception):
    """The hand-in cannot be graded at all; ``str()`` says why, in words a student can act on."""


class FileProblem(Exception):
    """One file of a hand-in cannot be used (too large, truncated, not an image); ``str()`` says why."""


@dataclass
class Note:
    """Something a TA should know about a hand-in: a short ``code`` (a CSV flag) and a sentence."""

    code: str
    message: str
    problem: bool = False        # True: the hand-in is not as the assignment asks (status "incomplete")


@dataclass
class HandIn:
    """An opened hand-in: its files by safe relative name (``test/0.png``) with their sizes, and notes on what was skipped."""

    entries: dict[str, int]
    notes: list[Note] = field(default_factory=list)
    inner_name: str = ""          # the zip actually graded, when the hand-in only wrapped it (a folder, a zip)
    _zip: zipfile.ZipFile | None = None
    _root: Path | None = None
    _infos: dict[str, zipfile.ZipInfo] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """The bytes of entry ``name``, at most ``max_bytes`` (default ``limits.max_read_bytes``), else ``FileProblem``."""
        cap = self.limits.max_read_bytes if max_bytes is None else max_bytes
        if self.entries[name] > cap:
            raise FileProblem(f"is {_size(self.entries[name])}, more than the {_size(cap)} the grader reads of one file")
        try:
            if self._zip is not None:
                with self._zip.open(self._infos[name]) as f:
                    data = f.read(cap + 1)
            else:
                with open(self._root / name, "rb") as f:
                    data = f.read(cap + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
            raise FileProblem(f"cannot be read from the hand-in ({_reason(err)})") from err
        if len(data) > cap:
            raise FileProblem(f"holds more than the {_size(cap)} the grader reads of one file")
        return data

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


# ----------------------------------------------------------------------------- opening
def open_hand_in(path: str | Path, limits: Limits = Limits()) -> HandIn:
    """Open a hand-in zip or folder for reading, or raise ``Rejected`` with the reason.

    A zip that holds nothing but one other zip (a student zipped the zip) is opened one level down, in memory;
    a folder that holds nothing but one zip (a course site's per-student download folder) opens that zip.
    """
    path = Path(path)
    if path.is_symlink():
        raise Rejected("is a link; links are not followed. Copy the hand-in itself into the folder.")
    if path.is_dir():
        folder = _open_folder(path, limits)
        if len(folder.entries) == 1 and next(iter(folder.entries)).lower().endswith(".zip"):   # a course site's
            inner = next(iter(folder.entries))                                                  # per-student folder
            hand_in = _open_zip(path / inner, limits, folder.entries[inner])
            hand_in.inner_name = PurePosixPath(inner).name
            hand_in.notes = folder.notes + [Note("nested_zip", f"the folder holds only a zip ({inner}); graded that one")]
            return hand_in
        return folder
    suffix = path.suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        raise Rejected(f"is a {suffix} archive; the assignment asks for a .zip. Ask the student for a zip.")
    if suffix != ".zip":
        raise Rejected("is neither a .zip nor a folder.")
    hand_in = _open_zip(path, limits, path.stat().st_size)
    inner = [n for n in hand_in.entries if n.lower().endswith(".zip")]
    if len(inner) == 1 and len(hand_in.entries) == 1:
        data = hand_in.read(inner[0])
        hand_in.close()
        nested = _open_zip(io.BytesIO(data), limits, len(data))
        nested.inner_name = PurePosixPath(inner[0]).name
        nested.notes = hand_in.notes + [Note("nested_zip", f"the zip holds only another zip ({inner[0]}); graded that one")]
        return nested
    return hand_in


def _open_zip(source, limits: Limits, packed_size: int) -> HandIn:
    count = _declared_entries(source)
    if count is None:
        raise Rejected("is not a zip file (or a damaged one: an interrupted upload?). Ask the student to upload it again.")
    if count > limits.max_entries:
        raise Rejected(f"declares {count:,} files; a hand-in has about a hundred (limit {limits.max_entries:,}). "
                       "Not unpacked (a zip bomb?).")
    try:
        archive = zipfile.ZipFile(source)
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise Rejected(f"is not a readable zip file ({_reason(err)}). Ask the student to upload it again.") from err
    try:
        return _zip_entries(archive, infos, limits, packed_size)
    except Rejected:
        archive.close()
        raise


def _zip_entries(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: Limits, packed_size: int) -> HandIn:
    files = [info for info in infos if not info.is_dir()]
    if any(info.flag_bits & 0x1 for info in files):
        raise Rejected("is password-protected (encrypted); the grader cannot open it. Ask the student for a zip "
                       "without a password.")
    total = sum(info.file_size for info in files)
    if total > limits.max_total_bytes:
        raise Rejected(f"unpacks to {_size(total)} (declared), far beyond a hand-in (limit "
                       f"{_size(limits.max_total_bytes)}); {_size(packed_size)} packed. Not unpacked (a zip bomb?).")
    for info in files:
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise Rejected(f"holds {info.filename!r}: {_size(info.file_size)} packed into {_size(info.compress_size)} "
                           f"(ratio {info.file_size / max(info.compress_size, 1):,.0f}:1; images barely compress). "
                           "Not unpacked (a zip bomb?).")
    entries, kept, unsafe, links, legacy = {}, {}, [], [], []
    for info in files:
        name = info.filename
        if not info.flag_bits & 0x800 and not name.isascii():   # no UTF-8 flag: zipfile read the name as cp437
            try:
                name = name.encode("cp437").decode("utf-8")     # macOS and 7-Zip write UTF-8 without the flag
            except UnicodeError:
                legacy.append(name)                             # a code page (Big5, GBK, Shift-JIS…): kept as read
        if stat.S_ISLNK(info.external_attr >> 16):
            links.append(name)
            continue
        safe = safe_name(name)
        if safe is None:
            unsafe.append(name)
        elif not JUNK.search(safe):
            entries[safe], kept[safe] = info.file_size, info
    if not entries:
        raise Rejected("is empty" + (" (only folders, links or unsafe names)" if files else "") +
                       ". Ask the student to zip the hand-in files again.")
    return HandIn(entries, _name_notes(unsafe, links, legacy), _zip=archive, _infos=kept, limits=limits)


def _open_folder(root: Path, limits: Limits) -> HandIn:
    entries, links, total = {}, [], 0
    for folder, dirs, names in os.walk(root):                  # os.walk does not follow links to folders
        base = Path(folder)
        for d in [d for d in dirs if (base / d).is_symlink()]:
            links.append((base / d).relative_to(root).as_posix())
            dirs.remove(d)
        for n in names:
            path = base / n
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file():
                links.append(rel)
                continue
            if JUNK.search(rel):
                continue
            size = path.stat().st_size
            entries[rel], total = size, total + size
            if len(entries) > limits.max_entries or total > limits.max_total_bytes:
                raise Rejected(f"holds more than {limits.max_entries:,} files or {_size(limits.max_total_bytes)}, far "
                               "beyond a hand-in. Not read.")
    if not entries:
        raise Rejected("is an empty folder.")
    return HandIn(entries, _name_notes([], links, []), _root=root, limits=limits)


def _name_notes(unsafe: list[str], links: list[str], legacy: list[str]) -> list[Note]:
    notes = []
    if unsafe:
        notes.append(Note("unsafe_path", f"{len(unsafe)} zip entr{'y' if len(unsafe) == 1 else 'ies'} with an absolute "
                          f"path or '..' ({_listing(unsafe)}): skipped, nothing was written for them", problem=True))
    if links:
        notes.append(Note("link", f"{len(links)} link{'s' * (len(links) > 1)} ({_listing(links)}): not followed"))
    if legacy:
        notes.append(Note("encoding", f"{len(legacy)} file name{'s' * (len(legacy) > 1)} not in UTF-8 (a zip tool that "
                          f"uses the system code page, e.g. Big5): {_listing(legacy)}; read as they are"))
    return notes


def safe_name(name: str) -> str | None:
    """``name`` as a relative POSIX path without ``.`` parts, or None when it is absolute or climbs out with ``..``."""
    if not name or any(ord(c) < 32 for c in name):
        return None
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _declared_entries(source) -> int | None:
    """The file count in a zip's end-of-central-directory record, read before ``zipfile`` builds its list of
    every entry (whose size a forged count would blow up); None when there is no such record. A Zip64 count
    (0xFFFF, more than 65,534 files) is returned as 65,535."""
    f = open(source, "rb") if isinstance(source, (str, Path)) else source
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        tail_start = max(0, size - (22 + 65_535))
        f.seek(tail_start)
        tail = f.read()
    finally:
        if f is not source:
            f.close()
        else:
            f.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    (total,) = struct.unpack("<H", tail[at + 10:at + 12])
    return total


# ----------------------------------------------------------------------------- images
def open_image(data: bytes, limits: Limits = Limits()) -> Image.Image:
    """Decode a hand-in image from its bytes, or raise ``FileProblem`` with what is wrong.

    Only ``IMAGE_FORMATS`` are tried; the declared size is checked against ``limits.max_pixels`` before any
    pixel is decoded (an image bomb declares huge dimensions in a few bytes). Returns the loaded image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise FileProblem(f"declares {width:,}×{height:,} px ({width * height / 1e6:,.0f} Mpx), far beyond a "
                                  "hand-in image: not decoded (an image bomb?)")
            image.load()
    except FileProblem:
        raise
    except UnidentifiedImageError as err:
        raise FileProblem(f"is not an image ({_sniff(data)})") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise FileProblem(f"is an image bomb ({_reason(err)}): not decoded") from err
    except Exception as err:   # PIL raises OSError, SyntaxError, ValueError… for damaged files
        raise FileProblem(f"cannot be decoded: truncated or damaged ({_reason(err)})") from err
    return image


def _sniff(data: bytes) -> str:
    """What a file that is not an image looks like, from its first bytes."""
    if not data:
        return "the file is empty"
    for magic, kind in ((b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip"), (b"\x80", "a Python pickle"),
                        (b"<", "HTML or XML text"), (b"{", "JSON text"), (b"%!PS", "PostScript")):
        if data.startswith(magic):
            return f"it looks like {kind}"
    return f"{len(data):,} bytes of unknown content"


def _listing(names: list[str], most: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _reason(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 160 else text[:157] + "…"


def _size(n: float) -> str:
    """``1536`` → ``1.5 KB``."""
    if n < 1024:
        return f"{n:,.0f} bytes"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:,.1f} {unit}"
