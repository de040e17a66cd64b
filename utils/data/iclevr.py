"""iCLEVR in the layouts students have (see data_links.md, section iCLEVR) and its multi-hot labels.

The course ships ``iclevr/CLEVR_train_{scene:06d}_{k}.png`` (320×240 RGBA) and four label files:
``train.json`` (file name → object names), ``objects.json`` (24 names → index 0…23),
``test.json`` and ``new_test.json`` (32 lists of object names each). A label is a multi-hot
vector y ∈ {0, 1}^24 with y[objects[name]] = 1 for every object in the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import DatasetError, ImageSet, cache_path, decode_images, load_or_build_cache

LABEL_FILES = ("objects.json", "test.json", "new_test.json")
BUNDLED_LABELS = Path(__file__).resolve().parent / "iclevr_labels"   # the course's real label files
COURSE_LISTS = 32                   # label lists in test.json and in new_test.json
MIN_OBJECTS, MAX_OBJECTS = 1, 3     # objects per label list in the course's files
HELP = "Get iCLEVR as data_links.md (section iCLEVR) describes, or set data_dir to the folder that holds it."

# Colors of the CLEVR renderer (RGB), also used by the fixtures' flat-shape scenes (utils.fixtures).
COLORS = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
SHAPES = ("cube", "sphere", "cylinder")


# ----------------------------------------------------------------------------- labels
def _read_json(path: str | Path):
    """The JSON in ``path``, or a ``DatasetError`` naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON ({err}); the copy may be truncated. Copy it again "
                           f"from the course's lab files. {HELP}") from err


def load_objects(path: str | Path) -> dict[str, int]:
    """``objects.json``: the 24 object names → their index in the multi-hot vector."""
    objects = _read_json(path)
    if not isinstance(objects, dict) or sorted(objects.values()) != list(range(len(objects))):
        raise DatasetError(f"{path} should map each object name to an index 0…K−1, like the course's "
                           f"objects.json. {HELP}")
    return objects


def load_label_lists(path: str | Path, *, expected_lists: int | None = COURSE_LISTS) -> list[list[str]]:
    """``test.json`` / ``new_test.json``: a list of object-name lists, one per image to generate.

    A list of other than 1–3 objects, or a file of other than ``expected_lists`` lists (the course's
    32; None: any number), is an error that names the file and the list.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"No label file at {path}. {HELP}")
    lists = _read_json(path)
    if not isinstance(lists, list) or not all(isinstance(names, list) for names in lists):
        raise DatasetError(f"{path} should hold a list of lists of object names, like "
                           f'[["gray cube"], ["red cube", "blue sphere"]]. {HELP}')
    again = f"Copy the file again from the course's lab files. {HELP}"
    for i, names in enumerate(lists):
        if not MIN_OBJECTS <= len(names) <= MAX_OBJECTS:
            raise DatasetError(f"{path}: label list #{i} (0-based) {names} holds {len(names)} objects; the course's "
                               f"label lists hold {MIN_OBJECTS}–{MAX_OBJECTS} object names each. {again}")
    if expected_lists is not None and len(lists) != expected_lists:
        raise DatasetError(f"{path} holds {len(lists)} label lists, expected {expected_lists} (the course's test.json "
                           f"and new_test.json hold {COURSE_LISTS} each, one per image to generate). {again}")
    return lists


def encode_labels(label_lists: list[list[str]], objects: dict[str, int]) -> torch.Tensor:
    """Object-name lists → multi-hot float tensor (N, K) with K = len(objects), entries 0 or 1.

    An unknown name or a name listed twice in one image is an error that names it.
    """
    out = torch.zeros(len(label_lists), len(objects))
    for i, names in enumerate(label_lists):
        for name in names:
            if name not in objects:
                raise ValueError(f"Unknown object {name!r} in label list #{i} {names}. "
                                 f"Valid names ({len(objects)}): {', '.join(objects)}.")
            if out[i, objects[name]]:
                raise ValueError(f"Object {name!r} appears twice in label list #{i} {names}; "
                                 "a multi-hot label holds each object at most once.")
            out[i, objects[name]] = 1.0
    return out


def decode_labels(multi_hot: torch.Tensor, objects: dict[str, int]) -> list[list[str]]:
    """Multi-hot (N, K) or (K,) with entries 0/1 → object-name lists, in index order."""
    names = sorted(objects, key=objects.get)
    rows = multi_hot.reshape(-1, len(names)) if multi_hot.ndim == 1 else multi_hot
    if rows.shape[-1] != len(names):
        raise ValueError(f"Labels have {rows.shape[-1]} entries per image; objects.json has {len(names)} names.")
    return [[names[j] for j in torch.nonzero(row > 0.5).flatten().tolist()] for row in rows]


# ----------------------------------------------------------------------------- layout
@dataclass
class ICLEVRFiles:
    """Where one copy of iCLEVR keeps its parts."""

    label_dir: Path       # holds train.json, objects.json, test.json, new_test.json
    image_dir: Path | None  # holds CLEVR_train_*.png (None: not found)

    def label_file(self, name: str) -> Path:
        """``label_dir / name``, or an error naming the missing file."""
        path = self.label_dir / name
        if not path.exists():
            raise DatasetError(f"{name} is missing from {self.label_dir} (next to train.json). "
                               f"Copy it from the course's lab files. {HELP}")
        return path


def _label_dir_candidates(data_dir: Path) -> list[Path]:
    return [data_dir, data_dir / "iclevr", data_dir / "file", data_dir / "iclevr" / "file"]


def find_iclevr(data_dir: str | Path) -> ICLEVRFiles:
    """Find train.json (in ``data_dir``, ``data_dir/iclevr`` or ``data_dir/file``) and the folder
    holding the images it lists (``iclevr/`` next to it, or the same folder).

    ``image_dir`` is None when no folder holds the first listed image (a cache may still serve them).
    """
    data_dir = Path(data_dir)
    label_dir = next((d for d in _label_dir_candidates(data_dir) if (d / "train.json").is_file()), None)
    if label_dir is None:
        looked = ", ".join(str(d / "train.json") for d in _label_dir_candidates(data_dir))
        raise DatasetError(f"No iCLEVR train.json found. Looked for: {looked}. {HELP}")
    first = next(iter(_read_json(label_dir / "train.json")), None)
    if first is None:
        raise DatasetError(f"{label_dir / 'train.json'} lists no images. {HELP}")
    image_dir = next((d for d in _image_dir_candidates(data_dir, label_dir) if (d / first).is_file()), None)
    return ICLEVRFiles(label_dir, image_dir)


def _image_dir_candidates(data_dir: Path, label_dir: Path) -> list[Path]:
    return list(dict.fromkeys([label_dir / "iclevr", data_dir / "iclevr", data_dir / "iclevr" / "iclevr", label_dir]))


def _check_images(files: ICLEVRFiles, data_dir: Path, names: list[str]) -> list[Path]:
    """The image paths of ``names``, or an error naming the folders searched or the first missing files."""
    if files.image_dir is None:
        looked = ", ".join(map(str, _image_dir_candidates(data_dir, files.label_dir)))
        raise DatasetError(f"train.json lists {names[0]}, but no folder holds it. Looked in: {looked}. "
                           f"Unzip iclevr.zip next to train.json. {HELP}")
    paths = [files.image_dir / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(paths)} images listed in train.json are not in "
                           f"{files.image_dir}, for example: {', '.join(missing[:5])}. "
                           f"The unzip may be incomplete: unzip iclevr.zip again. {HELP}")
    return paths


def load_iclevr(data_dir: str | Path, cache_dir: str | Path, *, image_size: int = 64) -> ImageSet:
    """iCLEVR training images as uint8 (N, 3, size, size) with multi-hot float labels (N, 24).

    The 320×240 RGBA PNGs are converted to RGB and resized to size × size (squashed, like the
    course's ``Resize((64, 64))``), decoded once and cached in ``cache_dir``. The cache is keyed
    by the file names in train.json, so a later session needs only the JSON files and the cache.
    """
    data_dir = Path(data_dir)
    files = find_iclevr(data_dir)
    train_file = files.label_file("train.json")
    train = _read_json(train_file)
    if not isinstance(train, dict):
        raise DatasetError(f"{train_file} should map each image file name to its list of object names, like "
                           f'{{"CLEVR_train_001032_0.png": ["yellow sphere"]}}. {HELP}')
    objects_file = files.label_file("objects.json")
    try:
        labels = encode_labels(list(train.values()), load_objects(objects_file))  # (N, 24)
    except ValueError as err:
        raise DatasetError(f"{train_file} does not match {objects_file}: {err}") from err
    cache = cache_path(cache_dir, "iclevr", [Path(name) for name in train], image_size)

    def build():
        paths = _check_images(files, data_dir, list(train))
        # alpha dropped, not composited: the course's loader (and so its evaluator) uses .convert("RGB")
        return {"images": decode_images(paths, image_size, "RGB", what="iCLEVR images", flatten_alpha=False)}

    cached = load_or_build_cache(cache, build)
    return ImageSet(cached["images"], labels, f"iCLEVR in {files.image_dir or files.label_dir} ({cache.name})")


def object_names() -> list[str]:
    """The 24 names in the course's objects.json order (shape-major: 8 cubes, 8 spheres, 8 cylinders)."""
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS]
