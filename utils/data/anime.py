"""Anime Faces in the layouts students have (see data_links.md, section Anime Faces) and download
helpers for Colab.

The set is Chao's ≈ 21k anime faces (64×64 PNG, some RGBA). Copies in the wild, relative to the
folder you point ``data_dir`` at:

- the course copy: ``anime_face_dataset/data/<n>.png`` (21,376 files);
- Kaggle ``soumikrakshit/anime-faces``: ``data/<n>.png`` **and** a duplicate ``data/data/<n>.png``;
- Hugging Face ``huggan/anime-faces``: ``images/<n>.png`` and a duplicate ``images/data/<n>.png``
  (its ``data.zip`` archive carries the same duplication);
- any folder of PNGs directly in ``data_dir``.

A file in the nested ``data/`` folder with the same name and byte size as one in the image folder
is the duplicate copy and is skipped, so each face is counted once.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path


from ..io import safe_load
from .common import DatasetError, ImageSet, cache_path, decode_images, list_images, load_or_build_cache

# Where each known layout keeps its images, relative to the folder searched.
LAYOUTS = {
    "course": Path("anime_face_dataset/data"),
    "kaggle": Path("data"),
    "huggingface": Path("images"),
    "folder": Path("."),  # last: a stray image in data_dir must not hide a real copy
}
# Sub-folders of the download folder that each download helper writes into.
DOWNLOAD_FOLDERS = {"huggingface": "anime-faces-hf", "gdown": "anime-faces-gdown"}
KAGGLE_HANDLE = "soumikrakshit/anime-faces"
HF_REPO = "huggan/anime-faces"
NESTED_COPY = "data"  # the Kaggle and Hugging Face copies repeat every image in a nested data/ folder
HELP = "Get Anime Faces as data_links.md (section Anime Faces) describes, or set data_dir to the folder that holds it."


# ----------------------------------------------------------------------------- finding and listing
def find_anime(data_dir: str | Path) -> tuple[str, Path] | None:
    """Which layout ``data_dir`` holds: (layout name, folder of the images), or None.

    Also looks inside the sub-folders that ``download_anime`` writes.
    """
    data_dir = Path(data_dir)
    bases = [data_dir] + [data_dir / sub for sub in DOWNLOAD_FOLDERS.values()]
    for base in bases:
        for name, rel in LAYOUTS.items():
            root = base / rel
            if root.is_dir() and (list_images(root) or list_images(root / NESTED_COPY)):  # or only the nested copy
                return name, root
    return None


def list_anime_files(root: str | Path) -> tuple[list[Path], int]:
    """Every face under ``root`` once: its images plus the nested ones that are not copies of them.

    Returns (files, number of duplicates skipped). A file in the nested ``root/data/`` folder (the
    Kaggle and Hugging Face copies) is a duplicate when a file of the same name and byte size sits
    in ``root``; nested files without such a twin are kept. Comparing sizes, not contents, keeps
    this a directory listing, cheap enough to repeat every session on Google Drive.
    """
    root = Path(root)
    files = list_images(root)
    nested = root / NESTED_COPY
    if not nested.is_dir():
        return files, 0
    sizes = {p.name: p.stat().st_size for p in files}
    skipped = 0
    for path in list_images(nested):
        if sizes.get(path.name) == path.stat().st_size:
            skipped += 1
        else:
            files.append(path)
    return files, skipped


# ----------------------------------------------------------------------------- loading and caching
def _load_folder(layout: str, root: Path, cache_dir: Path, image_size: int, progress: bool) -> ImageSet:
    files, skipped = list_anime_files(root)
    source = f"Anime Faces ({layout} layout) in {root}"
    if skipped:
        source += f", {skipped:,} nested duplicates skipped"

    def build():
        images = decode_images(files, image_size, "RGB", progress=progress, what="anime faces")  # RGBA → RGB
        return {"images": images, "source": source}

    cached = load_or_build_cache(cache_path(cache_dir, "anime", files, image_size), build)
    return ImageSet(cached["images"], None, cached["source"])


def find_cache(cache_dir: str | Path, image_size: int = 64) -> Path | None:
    """The largest (most faces), then newest, decoded Anime Faces cache in ``cache_dir``, or None."""
    found = sorted(Path(cache_dir).glob(f"anime_{image_size}px_*.pt"), key=lambda p: (p.stat().st_size, p.stat().st_mtime))
    return found[-1] if found else None


def _load_cache_only(path: Path) -> ImageSet:
    try:
        payload = safe_load(path)
    except Exception as err:  # a truncated copy on Drive, an older format
        raise DatasetError(f"The cache {path} from an earlier session is unreadable ({err}). Delete it and run "
                           f"this cell again: the data will be decoded again. {HELP}") from err
    return ImageSet(payload["images"], None, f"{payload['source']} (cached in {path.name})")


def load_anime(data_dir: str | Path, cache_dir: str | Path, *, image_size: int = 64, download: str = "",
               download_dir: str | Path | None = None, gdown_id: str = "", progress: bool = True) -> ImageSet:
    """Anime faces as uint8 (N, 3, image_size, image_size), RGB in [0, 255], no labels.

    In this order:
    1. a known layout in ``data_dir`` (or ``download_dir``): every face once, decoded once into ``cache_dir``
       (or that cache, when it exists for exactly these files);
    2. else a cache from an earlier session in ``cache_dir`` (Colab: on Drive), without raw files;
    3. else ``download_anime(download_dir, download)`` with ``download`` "kaggle", "huggingface"
       or "gdown", then step 1 on what it wrote;
    4. else a ``DatasetError`` that says where it looked and what to do.
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    download_dir = Path(download_dir or data_dir)
    found = find_anime(data_dir) or find_anime(download_dir)  # an earlier download in this session
    if found is not None:
        return _load_folder(*found, cache_dir, image_size, progress)
    cached = find_cache(cache_dir, image_size)
    if cached is not None:
        return _load_cache_only(cached)
    if download:
        folder = download_anime(download_dir, download, gdown_id=gdown_id)
        found = find_anime(folder)
        if found is None:
            raise DatasetError(f"The {download} download into {folder} holds none of the known layouts "
                               f"({', '.join(str(p) for p in LAYOUTS.values())}). {HELP}")
        return _load_folder(*found, cache_dir, image_size, progress)
    layouts = ", ".join(str(data_dir / rel) for rel in LAYOUTS.values())
    raise DatasetError(f"No Anime Faces found. Looked for PNGs in {layouts}, and for a cache "
                       f"anime_{image_size}px_*.pt in {cache_dir}. Set download='kaggle' (or 'huggingface', "
                       f"'gdown') to fetch it. {HELP}")


# ----------------------------------------------------------------------------- downloads (Colab)
def _import(module: str, pip_name: str):
    """Import a download library lazily; if it is missing, say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DatasetError(f"The {module} library is not installed. Run `pip install {pip_name}` "
                           f"(Colab has it preinstalled), or get the data by hand. {HELP}") from err


def _unzip(archive: Path, dest: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dest)
    return dest


def _download_kaggle(dest: Path, gdown_id: str) -> Path:
    kagglehub = _import("kagglehub", "kagglehub")
    return Path(kagglehub.dataset_download(KAGGLE_HANDLE))  # unpacked into kagglehub's local cache


def _download_huggingface(dest: Path, gdown_id: str) -> Path:
    hub = _import("huggingface_hub", "huggingface_hub")
    folder = dest / DOWNLOAD_FOLDERS["huggingface"]
    archive = hub.hf_hub_download(HF_REPO, "data.zip", repo_type="dataset")  # 462 MB, one file
    return _unzip(Path(archive), folder)


def _download_gdown(dest: Path, gdown_id: str) -> Path:
    if not gdown_id:
        raise DatasetError("download='gdown' needs gdown_id: the id in the course's share link "
                           "https://drive.google.com/file/d/<id>/view. " + HELP)
    gdown = _import("gdown", "gdown")
    folder = dest / DOWNLOAD_FOLDERS["gdown"]
    folder.mkdir(parents=True, exist_ok=True)
    archive = gdown.download(id=gdown_id, output=str(folder / "anime_faces.zip"), quiet=False)
    if archive is None:  # gdown returns None when Drive refuses (quota, permissions)
        raise OSError(f"Google Drive refused file id {gdown_id} (quota exceeded or not shared publicly)")
    _unzip(Path(archive), folder)
    Path(archive).unlink()
    return folder


DOWNLOADERS = {"kaggle": _download_kaggle, "huggingface": _download_huggingface, "gdown": _download_gdown}
ADVICE = {
    "kaggle": "The dataset is public; if Kaggle asks for credentials run `kagglehub.login()` or set "
              "KAGGLE_USERNAME and KAGGLE_KEY.",
    "huggingface": "If HF_HUB_OFFLINE=1 is set, unset it.",
    "gdown": "Check that the file is shared as 'Anyone with the link'; if Drive's download quota is "
             "exceeded, wait a day or use download='kaggle'.",
}


def download_anime(dest: str | Path, source: str = "kaggle", *, gdown_id: str = "") -> Path:
    """Download Anime Faces (Colab: a minute or two) and return the folder to load it from.

    ``source``: "kaggle" (kagglehub, into its own cache), "huggingface" (``huggan/anime-faces``
    ``data.zip``, unpacked under ``dest``) or "gdown" (the course's Drive file ``gdown_id``,
    unpacked under ``dest``). Any failure, offline or refused, becomes a ``DatasetError`` that
    says what to do.
    """
    if source not in DOWNLOADERS:
        raise ValueError(f"source={source!r}: use one of {sorted(DOWNLOADERS)}.")
    try:
        return DOWNLOADERS[source](Path(dest), gdown_id)
    except DatasetError:
        raise
    except Exception as err:  # connection, HTTP, quota, credential and zip errors all mean "no data"
        others = " or ".join(repr(s) for s in DOWNLOADERS if s != source)
        raise DatasetError(f"Downloading Anime Faces with {source} failed: {type(err).__name__}: {err}\n"
                           f"Check the internet connection. {ADVICE[source]} Or try download={others}. "
                           f"{HELP}") from err
