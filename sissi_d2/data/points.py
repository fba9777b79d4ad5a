"""Point annotations (centre clicks) and the boxes made from them: the ``points`` data kind.

Clicking a cell's centre is about ten times faster than boxing it, and it is how many labs
annotate. This module reads the exports of the usual tools and turns every click into a box:

* **Formats** (:func:`read_point_file`, chosen by :func:`point_file_format`):

  - ``csv``: a header ``image,x,y`` with an optional ``class`` (or ``label``) column, one click a
    row, x / y in pixels from the image's top-left corner (``,``, ``;`` or tab separated; ``#``
    lines are comments). A napari points layer saved as CSV has the columns
    ``index,axis-0,axis-1`` (row, column): rename them to ``image,y,x`` and add the image name.
  - ``label_studio``: Label Studio's JSON export of an image task with ``KeyPointLabels`` (or
    ``KeyPoint``) results; x / y are percentages of the image size there. Cancelled annotations
    are skipped, the other annotations of a task are pooled (their duplicate clicks merge).
  - ``cvat_xml``: CVAT's "CVAT for images 1.1" export with ``<points>`` shapes (one shape may
    hold several ``x,y;x,y`` points); the shape's label is the class.
  - ``coco_keypoints``: a COCO keypoints json (CVAT's "COCO Keypoints 1.0" export): every visible
    keypoint (v > 0) is a click, its category the class.

* **Images** are found in ``image_root`` (default: the point file's folder) by their file name
  (:func:`~sissi_d2.data.label_files.image_key`; Label Studio's upload prefix ``1a2b3c4d-`` is
  ignored). Every image the file names becomes a record, with no box when it has no click (an
  image the annotator opened and found empty); images of the folder the file never names are left
  out, since nobody looked at them.

* **Checks**: a point outside its image, an image that is not in ``image_root``, a malformed row
  and a size the export states that differs from the file's raise :class:`PointFileError` naming
  the file and the line (for json, the line of the result's or annotation's ``id``). Clicks of one
  image closer than ``merge_distance`` pixels (default 2: a double click) are merged into their
  mean with one warning naming the lines.

* **Boxes** (:class:`BoxSizeRule`): each click becomes a box of one cell size centred on it and
  clipped to the image. The size comes from one of three places:

  - ``fixed``: one size given in the configuration (``cell_size``, pixels, ``40`` or ``40x30``);
  - ``class``: a size per class (``class_sizes={"rbc": 12, "wbc": "20x18"}``); clicks of a class
    not listed take ``cell_size`` if given, else raise;
  - ``weak_labels`` (the default when no size is given): estimated per image from the weak-label
    pipeline's components (``sissi_d2.weak_labels``). The pipeline runs on the image; its boxes
    that hold a click are (parts of) cells, and the median width and height of those boxes is the
    image's cell size. Unclicked components are left out (debris among them pulls the median
    down). An image with fewer than ``MIN_COMPONENTS`` (3) clicked components takes the median of
    the clicked components of all images (two clicks in one merged cluster would otherwise size
    every box of the image as the cluster). Measured on 16 synthetic 256 px target images
    (docs/points.md): at 25, 50 and 100 % of the cells clicked the estimate is 0.93-1.03 times the
    image's true median cell size (median over the images), with a median error of 17, 16 and 8 %
    per image; the components holding exactly one click (fragments stay, clusters go) drifted to
    0.80 of the height at 100 %.

* **Negatives**: clicks of the classes ``negative_classes`` (default ``artefact``, ``artifact``,
  ``negative``) mark debris, not cells: they get no box in ``annotations`` but are kept, boxed
  the same way, in the record's ``sissi_negatives`` list, from which the cut-paste synthesizer
  (``algorithms.cut_paste``) takes artefact patches that it pastes without a box.

``label_files`` is the project's one label I/O module: it reads point files through this module
(``label_files.read_point_file`` / ``label_files.load_point_boxes``).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..utils.atomic import atomic_open
from .image_io import read_bgr8, read_image_size
from .label_files import check_unique_ids, image_key, image_stem, list_image_files, make_record

__all__ = [
    "POINT_FORMATS", "SIZE_RULES", "NEGATIVE_CLASSES", "DEFAULT_MERGE_DISTANCE", "PointFileError", "Click",
    "PointFile", "ImagePoints", "BoxSizeRule", "point_file_format", "read_point_file", "resolve_points",
    "parse_size", "parse_class_sizes", "MIN_COMPONENTS", "clicked_components", "estimate_cell_size", "boxes_around", "point_boxes", "load_point_boxes",
    "write_points_csv",
]

logger = logging.getLogger(__name__)

POINT_FORMATS = ("csv", "label_studio", "cvat_xml", "coco_keypoints")
SIZE_RULES = ("fixed", "class", "weak_labels")
NEGATIVE_CLASSES = ("artefact", "artifact", "negative")
DEFAULT_MERGE_DISTANCE = 2.0
# Clicked weak-label components an image needs for its own cell size (else the data set's is used).
MIN_COMPONENTS = 3
_CSV_SUFFIXES = (".csv", ".tsv", ".txt")
# Label Studio prefixes uploaded files with 8 hex digits and a dash (1a2b3c4d-img001.png).
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
# Point files converted in this process: a weak-label size estimate runs a pipeline on every image
# and Detectron2 asks for a data set several times per run.
_CACHE: dict = {}


class PointFileError(ValueError):
    """A point file that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Click:
    """One click as the file states it. ``where`` names the file and line for messages;
    ``percent``: x / y are percentages of the image size (Label Studio); ``stated_size``: the
    (width, height) the file gives for the image, checked against the image file."""

    image: str
    x: float
    y: float
    label: str = ""
    where: str = ""
    percent: bool = False
    stated_size: tuple | None = None


@dataclass
class PointFile:
    """The clicks of one point file and every image it names (name -> where it is named)."""

    path: str
    format: str
    clicks: list = field(default_factory=list)
    images: dict = field(default_factory=dict)


@dataclass
class ImagePoints:
    """The clicks of one image after checking and merging: Nx2 pixel ``xy``, a class and a
    ``where`` per click."""

    file_name: str
    height: int
    width: int
    xy: np.ndarray
    labels: list
    wheres: list


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _number(text, what: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PointFileError(f"{where}: {what} {text!r} is not a number. Write the pixel coordinate, e.g. 12.5.") from None
    if not math.isfinite(value):
        raise PointFileError(f"{where}: {what} is {text!r}; coordinates must be finite numbers.")
    return value


def point_file_format(path) -> str:
    """The format of a point file: by its suffix (``.csv``/``.tsv``/``.txt``, ``.xml``), and for
    json by its content (a list of tasks: Label Studio; a dict with keypoints: COCO keypoints)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix == ".xml":
        return "cvat_xml"
    if suffix != ".json":
        raise PointFileError(
            f"{path}: unknown point file type {suffix!r}. Use a CSV (image,x,y[,class]), a Label Studio json "
            "export, a CVAT for images 1.1 xml export or a COCO keypoints json.")
    data = _load_json(path)[0]
    if isinstance(data, list):
        return "label_studio"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        if any(isinstance(a, dict) and "keypoints" in a for a in data["annotations"]):
            return "coco_keypoints"
        if data["annotations"] and all(isinstance(a, dict) and "bbox" in a for a in data["annotations"]):
            raise PointFileError(
                f"{path} is a COCO json of boxes, not of points: register it with kind 'coco' "
                "(SISSI.REGISTER (\"name=coco:path\",)).")
    raise PointFileError(
        f"{path}: a json point file must be a Label Studio export (a list of tasks) or a COCO keypoints json "
        "(annotations with 'keypoints'); this one is neither.")


def _load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Point file {path} does not exist.")
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        return json.loads(text), text
    except ValueError as e:
        raise PointFileError(f"{path}: not valid json ({e}). Export it again.") from None


def read_point_file(path) -> PointFile:
    """The clicks of a point file in any of :data:`POINT_FORMATS` (see the module docstring)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Point file {path} does not exist.")
    fmt = point_file_format(path)
    out = PointFile(path, fmt)
    {"csv": _read_csv, "label_studio": _read_label_studio, "cvat_xml": _read_cvat_xml,
     "coco_keypoints": _read_coco_keypoints}[fmt](path, out)
    return out


def _read_csv(path: str, out: PointFile) -> None:
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = f.read().splitlines()
    # Comment lines are blanked, not removed, so that line numbers stay those of the file.
    lines = ["" if ln.lstrip().startswith("#") else ln for ln in lines]
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise PointFileError(f"{name}: the file is empty. Write a header line image,x,y[,class] and one click a line.")
    header_line = lines[first]
    delimiter = max(",;\t", key=header_line.count)
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header = None
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            missing = [c for c in ("image", "x", "y") if c not in header]
            if missing:
                raise PointFileError(
                    f"{name}, line {line}: the header {row!r} lacks the column(s) {missing}. Expected "
                    "image,x,y with an optional class column.")
            col = {c: header.index(c) for c in ("image", "x", "y")}
            cls_col = header.index("class") if "class" in header else header.index("label") if "label" in header else None
            continue
        where = f"{name}, line {line}"
        if len(row) != len(header):
            raise PointFileError(f"{where}: {len(row)} columns but the header has {len(header)} ({','.join(header)}).")
        image = row[col["image"]].strip()
        if not image:
            raise PointFileError(f"{where}: the image column is empty; name the image file of the click.")
        x = _number(row[col["x"]].strip(), "x", where)
        y = _number(row[col["y"]].strip(), "y", where)
        label = row[cls_col].strip() if cls_col is not None else ""
        out.images.setdefault(image, where)
        out.clicks.append(Click(image, x, y, label, where))


class _JsonLines:
    """Line of each ``"id": value`` in a json text: one scan, so that messages about json point
    files can name a line like those about CSV files."""

    _ID = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)')

    def __init__(self, text: str, name: str):
        self.name = name
        self.lines: dict = {}
        line, pos = 1, 0
        for m in self._ID.finditer(text):
            line += text.count("\n", pos, m.start())
            pos = m.start()
            self.lines.setdefault(m.group(1).strip('"'), line)

    def where(self, ident, what: str) -> str:
        line = self.lines.get(str(ident)) if ident is not None else None
        return f"{self.name}, line {line} ({what})" if line else f"{self.name} ({what})"


def _label_studio_image(task: dict, where: str) -> str:
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    for key in ("image", "img", "url"):
        if isinstance(data.get(key), str) and data[key]:
            return data[key]
    for value in data.values():
        if isinstance(value, str) and os.path.splitext(value.split("?")[0])[1].lower() in (
                ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"):
            return value
    if isinstance(task.get("file_upload"), str):
        return task["file_upload"]
    raise PointFileError(f"{where}: the task names no image (no data.image). Export the project's tasks with their data.")


def _read_label_studio(path: str, out: PointFile) -> None:
    data, text = _load_json(path)
    lines = _JsonLines(text, os.path.basename(path))
    skipped: dict = {}
    for t_index, task in enumerate(data):
        if not isinstance(task, dict):
            raise PointFileError(f"{lines.name}: task #{t_index} is not an object; is this a Label Studio JSON export?")
        task_where = lines.where(task.get("id"), f"task {task.get('id', t_index)}")
        image = _label_studio_image(task, task_where)
        out.images.setdefault(image, task_where)
        for ann in task.get("annotations") or task.get("completions") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            for res in ann.get("result") or []:
                rtype = res.get("type") if isinstance(res, dict) else None
                if rtype not in ("keypointlabels", "keypoint"):
                    skipped[rtype] = skipped.get(rtype, 0) + 1
                    continue
                where = lines.where(res.get("id"), f"task {task.get('id', t_index)}, result {res.get('id')}")
                if res.get("image_rotation"):
                    raise PointFileError(f"{where}: the image was rotated in Label Studio ({res['image_rotation']} "
                                         "degrees); its points are in the rotated frame. Export without rotation.")
                value = res.get("value") if isinstance(res.get("value"), dict) else {}
                x = _number(value.get("x"), "x", where)
                y = _number(value.get("y"), "y", where)
                labels = value.get("keypointlabels") or [""]
                ow, oh = res.get("original_width"), res.get("original_height")
                size = (int(ow), int(oh)) if ow and oh else None
                out.clicks.append(Click(image, x, y, str(labels[0]), where, percent=True, stated_size=size))
    if skipped:
        logger.warning("%s: ignored %s: not point results.", lines.name,
                       ", ".join(f"{n} result(s) of type {t!r}" for t, n in skipped.items()))


def _read_cvat_xml(path: str, out: PointFile) -> None:
    name = os.path.basename(path)
    parser = xml.parsers.expat.ParserCreate()
    state = {"image": None, "root": None}

    def start(tag, attrs):
        line = parser.CurrentLineNumber
        where = f"{name}, line {line}"
        if state["root"] is None:
            state["root"] = tag
            if tag != "annotations":
                raise PointFileError(f"{where}: the root element is <{tag}>, not <annotations>: export the task "
                                     "as 'CVAT for images 1.1'.")
        if tag == "image":
            if "name" not in attrs:
                raise PointFileError(f"{where}: <image> without a name attribute.")
            state["image"] = attrs["name"]
            w, h = attrs.get("width"), attrs.get("height")
            size = (int(_number(w, "width", where)), int(_number(h, "height", where))) if w and h else None
            state["size"] = size
            out.images.setdefault(attrs["name"], where)
        elif tag == "track":
            raise PointFileError(f"{where}: <track> elements belong to the 'CVAT for video' export; export the task "
                                 "as 'CVAT for images 1.1'.")
        elif tag == "points":
            if state["image"] is None:
                raise PointFileError(f"{where}: <points> outside an <image> element.")
            for pair in (attrs.get("points") or "").split(";"):
                parts = pair.split(",")
                if len(parts) != 2:
                    raise PointFileError(f"{where}: points={attrs.get('points')!r} is not a list of x,y pairs "
                                         "separated by ';'.")
                out.clicks.append(Click(state["image"], _number(parts[0], "x", where), _number(parts[1], "y", where),
                                        attrs.get("label", ""), where, stated_size=state["size"]))

    def end(tag):
        if tag == "image":
            state["image"] = None

    parser.StartElementHandler, parser.EndElementHandler = start, end
    with open(path, "rb") as f:
        try:
            parser.ParseFile(f)
        except xml.parsers.expat.ExpatError as e:
            raise PointFileError(f"{name}, line {e.lineno}: not well-formed xml ({e}). Export it again.") from None


def _read_coco_keypoints(path: str, out: PointFile) -> None:
    data, text = _load_json(path)
    lines = _JsonLines(text, os.path.basename(path))
    images, names = {}, {c.get("id"): str(c.get("name", "")) for c in data.get("categories") or [] if isinstance(c, dict)}
    for img in data.get("images") or []:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise PointFileError(f"{lines.name}: image entry {img!r} lacks 'id' or 'file_name'.")
        w, h = img.get("width"), img.get("height")
        images[img["id"]] = (img["file_name"], (int(w), int(h)) if w and h else None)
        out.images.setdefault(img["file_name"], lines.where(img["id"], f"image {img['id']}"))
    for ann in data["annotations"]:
        where = lines.where(ann.get("id"), f"annotation {ann.get('id')}")
        if "keypoints" not in ann:
            continue
        if ann.get("image_id") not in images:
            raise PointFileError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'.")
        kps = ann["keypoints"]
        if not isinstance(kps, list) or len(kps) % 3:
            raise PointFileError(f"{where}: 'keypoints' must be a flat list x1,y1,v1,x2,y2,v2,...")
        file_name, size = images[ann["image_id"]]
        for x, y, v in zip(kps[0::3], kps[1::3], kps[2::3]):
            if _number(v, "visibility", where) > 0:
                out.clicks.append(Click(file_name, _number(x, "x", where), _number(y, "y", where),
                                        names.get(ann.get("category_id"), ""), where, stated_size=size))


# ---------------------------------------------------------------------------------------------
# images, checks, duplicates
# ---------------------------------------------------------------------------------------------
def _image_finder(image_root: str):
    files = {image_key(p): p for p in list_image_files(image_root)}
    stripped: dict = {}
    for key, p in files.items():
        stripped.setdefault(_UPLOAD_PREFIX.sub("", key), p)

    def find(name: str) -> str | None:
        if os.path.isabs(name) and os.path.isfile(name):
            return name
        joined = os.path.join(image_root, name)
        if os.path.isfile(joined):
            return os.path.normpath(joined)
        key = image_key(name.split("?")[0])
        if key in files:
            return files[key]
        plain = _UPLOAD_PREFIX.sub("", key)
        return files.get(plain) or stripped.get(plain)

    return find


def _merge_duplicates(xy: np.ndarray, labels: list, wheres: list, distance: float, image: str):
    """Clicks closer than ``distance`` px become one (their mean, the first one's class)."""
    if len(xy) < 2 or distance <= 0:
        return xy, labels, wheres
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(xy).query_pairs(distance, output_type="ndarray")
    if not len(pairs):
        return xy, labels, wheres
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(xy), len(xy)))
    _, group = connected_components(graph, directed=False)
    keep_xy, keep_labels, keep_wheres, merged, n_merged = [], [], [], [], 0
    for g in dict.fromkeys(group.tolist()):  # groups in the order of their first click
        members = np.flatnonzero(group == g)
        keep_xy.append(xy[members].mean(axis=0))
        keep_labels.append(labels[members[0]])
        keep_wheres.append(wheres[members[0]])
        if len(members) > 1:
            n_merged += len(members) - 1
            classes = sorted({labels[i] for i in members})
            merged.append(" + ".join(wheres[i] for i in members)
                          + (f" (classes {classes}: kept {labels[members[0]]!r})" if len(classes) > 1 else ""))
    logger.warning("%s: %d duplicate click(s) less than %.1f px from another merged into it: %s", image,
                   n_merged, distance, "; ".join(merged))
    return np.asarray(keep_xy, np.float64).reshape(-1, 2), keep_labels, keep_wheres


def resolve_points(point_file: PointFile, image_root=None, merge_distance: float = DEFAULT_MERGE_DISTANCE) -> list:
    """:class:`ImagePoints` of every image the file names, in file order: images found in
    ``image_root`` (default: the file's folder), clicks in pixels and inside their image,
    duplicates merged. Raises :class:`PointFileError` naming the file and line."""
    root = os.path.abspath(os.fspath(image_root)) if image_root is not None else os.path.dirname(point_file.path)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root} of the point file {point_file.path} does not exist; "
                                "pass the folder of the images (image_root= / --images).")
    find = _image_finder(root)
    by_image: dict = {}
    for name, where in point_file.images.items():
        file_name = find(name)
        if file_name is None:
            raise PointFileError(
                f"{where}: image {name!r} is not in {root}. Put the image there, fix its name, or give the "
                "folder that holds the images (image_root= / --images).")
        by_image.setdefault(file_name, {"name": name, "clicks": []})
    for click in point_file.clicks:
        by_image[find(click.image)]["clicks"].append(click)
    out = []
    for file_name, entry in by_image.items():
        height, width = read_image_size(file_name)
        xy, labels, wheres = [], [], []
        for c in entry["clicks"]:
            if c.stated_size is not None and tuple(c.stated_size) != (width, height):
                raise PointFileError(
                    f"{c.where}: the file says image {c.image!r} is {c.stated_size[0]}x{c.stated_size[1]} (WxH) but "
                    f"{file_name} is {width}x{height}: the clicks would land in the wrong place. Use the images "
                    "that were annotated.")
            x, y = (c.x * width / 100.0, c.y * height / 100.0) if c.percent else (c.x, c.y)
            if not (0.0 <= x <= width and 0.0 <= y <= height):
                raise PointFileError(
                    f"{c.where}: the point ({x:g}, {y:g}) is outside image {os.path.basename(file_name)} "
                    f"({width}x{height} px). Check that x is the column and y the row, in pixels.")
            xy.append((x, y))
            labels.append(c.label)
            wheres.append(c.where)
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        xy, labels, wheres = _merge_duplicates(xy, labels, wheres, float(merge_distance),
                                               f"{os.path.basename(point_file.path)} [{entry['name']}]")
        out.append(ImagePoints(file_name, height, width, xy, labels, wheres))
    return out


# ---------------------------------------------------------------------------------------------
# the box of a click
# ---------------------------------------------------------------------------------------------
def parse_size(value, what: str = "cell_size") -> tuple:
    """(width, height) in pixels of ``40``, ``"40"``, ``"40x30"`` or ``(40, 30)``."""
    try:
        if isinstance(value, str):
            parts = [float(v) for v in value.lower().replace("*", "x").split("x")]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts = [float(value)]
        else:
            parts = [float(v) for v in value]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(math.isfinite(p) and p > 0 for p in parts):
        raise ValueError(f"{what}={value!r}: write a positive size in pixels, e.g. 40 or 40x30 (width x height).")
    return float(parts[0]), float(parts[1])


def parse_class_sizes(value) -> dict:
    """class -> (width, height) of a mapping or of ``"rbc=12,wbc=20x18"``."""
    if value is None:
        return {}
    if isinstance(value, str):
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, size = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"class_sizes entry {part!r}: write CLASS=SIZE, e.g. rbc=12 or wbc=20x18.")
            items.append((name.strip(), size))
    else:
        items = list(dict(value).items())
    return {str(k): parse_size(v, f"class_sizes[{k!r}]") for k, v in items}


@dataclass(frozen=True)
class BoxSizeRule:
    """Where the cell size of a click comes from (see the module docstring)."""

    size_from: str = "weak_labels"
    cell_size: tuple | None = None
    class_sizes: tuple = ()  # ((class, (w, h)), ...): hashable, so a rule can key a cache
    pipeline: str = "alive"
    pipeline_cell_size: float = 1.0
    pipeline_kwargs: tuple = ()

    @classmethod
    def make(cls, size_from=None, cell_size=None, class_sizes=None, pipeline="alive", pipeline_cell_size=1.0,
             pipeline_kwargs=None) -> "BoxSizeRule":
        sizes = parse_class_sizes(class_sizes)
        cell = parse_size(cell_size) if cell_size is not None else None
        if size_from is None:
            size_from = "class" if sizes else "fixed" if cell is not None else "weak_labels"
        if size_from not in SIZE_RULES:
            raise ValueError(f"size_from={size_from!r}: expected one of {SIZE_RULES}")
        if size_from == "fixed" and cell is None:
            raise ValueError("size_from='fixed' needs cell_size (pixels, e.g. 40 or 40x30)")
        if size_from == "class" and not sizes:
            raise ValueError("size_from='class' needs class_sizes, e.g. {'rbc': 12, 'wbc': '20x18'}")
        if size_from == "weak_labels":
            from ..weak_labels import available_pipelines

            if pipeline not in available_pipelines():
                raise ValueError(f"pipeline={pipeline!r}: expected one of {available_pipelines()}")
        return cls(size_from, cell, tuple(sorted(sizes.items())), str(pipeline), float(pipeline_cell_size),
                   tuple(sorted(dict(pipeline_kwargs or {}).items())))


def clicked_components(weak_boxes, xy) -> np.ndarray:
    """The weak-label components (Nx4 XYXY) that hold at least one of the clicks ``xy`` (Mx2)."""
    boxes = np.asarray(weak_boxes, np.float64).reshape(-1, 4)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    inside = ((xy[None, :, 0] >= boxes[:, None, 0]) & (xy[None, :, 0] <= boxes[:, None, 2])
              & (xy[None, :, 1] >= boxes[:, None, 1]) & (xy[None, :, 1] <= boxes[:, None, 3]))
    return boxes[inside.any(axis=1)]


def _median_size(boxes) -> tuple | None:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return None
    return float(np.median(boxes[:, 2] - boxes[:, 0])), float(np.median(boxes[:, 3] - boxes[:, 1]))


def estimate_cell_size(weak_boxes, xy, min_components: int = MIN_COMPONENTS) -> tuple | None:
    """(width, height) of the cells of one image: the median size of its weak-label components
    ``weak_boxes`` that hold one of the clicks ``xy``; None with fewer than ``min_components`` of
    them (a median of one or two components is one cluster or fragment away from the truth)."""
    clicked = clicked_components(weak_boxes, xy)
    return _median_size(clicked) if len(clicked) >= max(1, int(min_components)) else None


def boxes_around(xy, sizes, width: float, height: float) -> np.ndarray:
    """Nx4 XYXY boxes of sizes ``sizes`` (Nx2 or one (w, h)) centred on ``xy``, clipped to the image."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    wh = np.broadcast_to(np.asarray(sizes, np.float64).reshape(-1, 2), xy.shape)
    boxes = np.concatenate([xy - wh / 2.0, xy + wh / 2.0], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, float(width))
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, float(height))
    return boxes


def _weak_components(points: Sequence[ImagePoints], rule: BoxSizeRule) -> list:
    """The weak-label pipeline's components (Nx4 XYXY) of every image with clicks."""
    from ..weak_labels import make_weak_labels

    out = []
    for p in points:
        if not len(p.xy):
            out.append(np.zeros((0, 4)))
            continue
        weak, _ = make_weak_labels(read_bgr8(p.file_name), rule.pipeline, rule.pipeline_cell_size,
                                   **dict(rule.pipeline_kwargs))
        out.append(np.asarray(weak, np.float64).reshape(-1, 4))
    return out


def _weak_label_sizes(pf: PointFile, points: Sequence[ImagePoints], rule: BoxSizeRule) -> tuple:
    """(per-image estimates, the data set's size): each image's own estimate where it has
    MIN_COMPONENTS clicked components, else the median of the clicked components of all images
    (of all components when no click is in one; ``cell_size`` when the pipeline finds nothing)."""
    components = _weak_components(points, rule)
    clicked = [clicked_components(c, p.xy) for c, p in zip(components, points)]
    per_image = [estimate_cell_size(c, p.xy) for c, p in zip(components, points)]
    pooled = _median_size(np.vstack(clicked + [np.zeros((0, 4))])) or _median_size(np.vstack(components + [np.zeros((0, 4))]))
    if pooled is None:
        pooled = rule.cell_size
    if pooled is None and any(len(p.xy) for p in points):
        raise PointFileError(
            f"{pf.path}: the weak-label pipeline {rule.pipeline!r} finds no component in any image, so no cell "
            "size can be estimated. Give the cell size (cell_size= / --cell-size) or another pipeline.")
    return per_image, pooled


def point_boxes(path, image_root=None, *, rule: BoxSizeRule | None = None, merge_distance: float = DEFAULT_MERGE_DISTANCE,
                negative_classes: Sequence[str] = NEGATIVE_CLASSES) -> tuple:
    """(records, info) of a point file: Detectron2 dataset dicts whose boxes are the clicks' boxes
    (``bbox_mode`` XYXY_ABS, category 0, the click kept as ``point`` and its class as
    ``point_class``; negative clicks in ``sissi_negatives``), and per image the cell size used and
    where it came from."""
    from detectron2.structures import BoxMode

    rule = rule or BoxSizeRule.make()
    pf = read_point_file(path)
    points = resolve_points(pf, image_root, merge_distance)
    negatives = {c.lower() for c in negative_classes}
    class_sizes = dict(rule.class_sizes)
    image_sizes, fallback = [None] * len(points), None
    if rule.size_from == "weak_labels":
        image_sizes, fallback = _weak_label_sizes(pf, points, rule)
    records, info = [], []
    for p, estimate in zip(points, image_sizes):
        annotations, negative_boxes, source = [], [], rule.size_from
        size = None
        if rule.size_from == "weak_labels" and len(p.xy):
            size, source = (estimate, "weak_labels") if estimate is not None else (fallback, "weak_labels, all images")
        for (x, y), label, where in zip(p.xy, p.labels, p.wheres):
            if rule.size_from == "fixed":
                wh = rule.cell_size
            elif rule.size_from == "class":
                wh = class_sizes.get(label, rule.cell_size)
                if wh is None:
                    raise PointFileError(f"{where}: class {label!r} has no size in class_sizes {sorted(class_sizes)} "
                                         "and no cell_size is given for other classes.")
            else:
                wh = size
            box = [float(v) for v in boxes_around([(x, y)], wh, p.width, p.height)[0]]
            if box[2] <= box[0] or box[3] <= box[1]:
                continue  # a click on the image's edge with a box clipped to nothing
            if label.lower() in negatives:
                negative_boxes.append(box)
                continue
            ann = {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "point": [float(x), float(y)]}
            if label:
                ann["point_class"] = label
            annotations.append(ann)
        record = make_record(p.file_name, p.height, p.width, image_stem(p.file_name), annotations)
        if negative_boxes:
            record["sissi_negatives"] = negative_boxes
        records.append(record)
        info.append({"image": image_key(p.file_name), "clicks": int(len(p.xy)), "boxes": len(annotations),
                     "negatives": len(negative_boxes), "cell_size": None if size is None else [round(v, 1) for v in size],
                     "size_from": source})
    check_unique_ids(records, pf.path)
    if rule.size_from == "weak_labels":
        est = [i for i in info if i["size_from"] == "weak_labels"]
        logger.info("%s: cell sizes from the %r weak labels of each image on %d of %d images, the others %s px "
                    "(all images' clicked components)", os.path.basename(pf.path), rule.pipeline, len(est), len(info),
                    fallback and f"{fallback[0]:.0f}x{fallback[1]:.0f}")
    return records, info


def load_point_boxes(path, image_root=None, size_from=None, cell_size=None, class_sizes=None, pipeline="alive",
                     pipeline_cell_size=1.0, pipeline_kwargs=None, merge_distance=DEFAULT_MERGE_DISTANCE,
                     negative_classes=NEGATIVE_CLASSES) -> list:
    """Dataset dicts of a point file (the loader of the ``points`` data kind; options as in
    :class:`BoxSizeRule` and :func:`point_boxes`). Converted once per process while the file is
    unchanged; every call returns fresh copies."""
    rule = BoxSizeRule.make(size_from, cell_size, class_sizes, pipeline, pipeline_cell_size, pipeline_kwargs)
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size, None if image_root is None else os.path.abspath(os.fspath(image_root)),
           repr(rule), float(merge_distance), tuple(negative_classes))  # repr: pipeline kwargs may hold lists
    if key not in _CACHE:
        _CACHE[key] = point_boxes(path, image_root, rule=rule, merge_distance=merge_distance,
                                  negative_classes=negative_classes)[0]
    return copy.deepcopy(_CACHE[key])


def write_points_csv(path, clicks: Mapping[str, Sequence]) -> str:
    """Write clicks ({image name: [(x, y) or (x, y, class), ...]}) as a point CSV, atomically."""
    path = os.path.abspath(os.fspath(path))
    with_class = any(len(c) > 2 for pts in clicks.values() for c in pts)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "x", "y"] + (["class"] if with_class else []))
        for image, pts in clicks.items():
            for c in pts:
                row = [image, f"{float(c[0]):.2f}", f"{float(c[1]):.2f}"]
                writer.writerow(row + ([c[2] if len(c) > 2 else ""] if with_class else []))
    return path
