"""COCO-style annotations for the Set-of-Mark builder: loading with clear errors, masks from
polygons or RLE (through pycocotools), and the point that stands for an object in text.

A mark point must lie inside its object. The box centre does for convex shapes but falls outside
rings, crescents and L-shapes, so when it misses the mask we take the mask's pole of inaccessibility
(the pixel farthest from the background, by a Euclidean distance transform).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from sphinx_x.fileio import read_json_object


class AnnotationError(ValueError):
    """The annotation file or one of its entries is malformed; the message names file and field."""


@dataclass
class CocoObject:
    ann_id: int
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels
    segmentation: object = None  # polygon list, RLE dict, or None (box only)
    iscrowd: bool = False


@dataclass
class CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int
    objects: list[CocoObject] = field(default_factory=list)


def load_coco(path: str | Path) -> list[CocoImage]:
    """Images (in file order) with their objects; images without annotations are kept (empty)."""
    path = Path(path)
    data = read_json_object(path, AnnotationError, "COCO annotations: images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{path}: {key}: required, a list")
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
        raise AnnotationError(f"{path}: categories: each needs an integer id and a name ({e!r})") from e
    images: dict[int, CocoImage] = {}
    for i, im in enumerate(data["images"]):
        try:
            img = CocoImage(int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]))
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(f"{path}: images[{i}]: needs id, file_name, width, height ({e!r})") from e
        if img.width <= 0 or img.height <= 0:
            raise AnnotationError(f"{path}: images[{i}]: width and height must be positive")
        images[img.image_id] = img
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        try:
            image_id, cat_id = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(f"{where}: needs image_id, category_id and bbox [x, y, w, h] ({e!r})") from e
        if image_id not in images:
            raise AnnotationError(f"{where}: image_id {image_id} is not in images")
        if cat_id not in categories:
            raise AnnotationError(f"{where}: category_id {cat_id} is not in categories")
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{where}: bbox width and height must be positive, got {[x, y, w, h]}")
        images[image_id].objects.append(CocoObject(int(ann.get("id", i)), categories[cat_id], (x, y, x + w, y + h),
                                                   ann.get("segmentation") or None, bool(ann.get("iscrowd", 0))))
    return list(images.values())


def decode_mask(obj: CocoObject, height: int, width: int) -> np.ndarray:
    """The object's mask as a (height, width) bool array: polygons and uncompressed or compressed
    RLE through pycocotools; an object without segmentation is its box."""
    seg = obj.segmentation
    if seg is None:
        mask = np.zeros((height, width), dtype=bool)
        x1, y1, x2, y2 = obj.box
        mask[max(0, int(y1)) : min(height, int(np.ceil(y2))), max(0, int(x1)) : min(width, int(np.ceil(x2)))] = True
        return mask
    try:
        if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
            polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
            if not polys:
                raise ValueError("no polygon with at least 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, *seg["size"])
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):  # compressed RLE
            rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str)
                   else seg["counts"]}
        else:
            raise ValueError(f"unknown segmentation of type {type(seg).__name__}")
        mask = mask_utils.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError) as e:
        raise AnnotationError(f"annotation {obj.ann_id}: segmentation cannot be decoded ({e})") from e
    if mask.shape != (height, width):
        raise AnnotationError(f"annotation {obj.ann_id}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                              f"image is {width}x{height}")
    return mask


def mark_point(mask: np.ndarray, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """A pixel point inside the object: the box centre when the mask covers it, else the mask's
    pole of inaccessibility. Returned at the pixel centre (x + 0.5, y + 0.5)."""
    h, w = mask.shape
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ix, iy = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
    if mask[iy, ix]:
        return ix + 0.5, iy + 0.5
    if not mask.any():
        return ix + 0.5, iy + 0.5  # an empty mask (object outside the image): callers filter it by area
    # Pad so the image border counts as background: a point on the edge is not "inside".
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return px + 0.5, py + 0.5


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of the mask within `width` of its boundary (for drawing the object's outline)."""
    inner = ndimage.binary_erosion(np.pad(mask, 1), iterations=max(1, width))[1:-1, 1:-1]
    return mask & ~inner
