"""Datasets: MNIST, Anime Faces and iCLEVR in the layouts students have (data_links.md), decoded
once into cached uint8 tensors, and the batch loader that feeds the training loop."""

from .anime import download_anime, find_anime, list_anime_files, load_anime
from .common import (DatasetError, ImageSet, BatchLoader, cache_path, decode_images, list_images,
                     fits_on_device, load_or_build_cache, to_model, to_unit)
from .iclevr import (ICLEVRFiles, decode_labels, encode_labels, find_iclevr, load_iclevr, load_label_lists,
                     load_objects, object_names)
from .mnist import find_mnist, load_mnist, offline_sample
