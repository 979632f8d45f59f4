"""Checks run on a COCO-format json before it becomes dataset dicts.

``load_coco_json`` (in ``coco.py``) uses these helpers so that a broken annotation file fails
early with a message naming the file, the offending ids and the fix, and so that every
annotation it drops is counted in the log. Nothing here is part of Detectron2's API.
"""

import json
import logging
import math
import os
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Dict, Iterable, List, Sequence

__all__ = [
    "read_coco_json",
    "check_coco_structure",
    "check_coco_references",
    "check_image_files_exist",
    "MissingImageFilesError",
    "are_numbers",
    "are_finite",
    "bbox_is_well_formed",
    "DropCounter",
    "format_examples",
]

logger = logging.getLogger(__name__)

# How many example ids / paths an error or log line shows.
_NUM_EXAMPLES = 5

_REQUIRED_IMAGE_KEYS = ("id", "file_name", "height", "width")
_REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id")
_REQUIRED_CATEGORY_KEYS = ("id", "name")


def format_examples(items: Sequence[Any], limit: int = _NUM_EXAMPLES) -> str:
    """Return the first ``limit`` items of ``items`` as ``a, b, c`` (``, ...`` when cut)."""
    shown = ", ".join(repr(x) if isinstance(x, str) else str(x) for x in list(items)[:limit])
    return shown + (", ..." if len(items) > limit else "")


def read_coco_json(json_file: str) -> Dict[str, Any]:
    """Read ``json_file`` and return the decoded top-level dict.

    Raises FileNotFoundError when the file does not exist and ValueError when it is not valid
    JSON (with the line and column of the problem) or its top level is not an object.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"COCO json file '{json_file}' does not exist. Check the path given to "
            "load_coco_json / register_coco_instances (and $SEGTRON_DATASETS for builtin sets)."
        )
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"COCO json file '{json_file}' is not valid JSON: {e.msg} at line {e.lineno}, "
            f"column {e.colno} (char {e.pos}). The file is probably truncated or corrupt; "
            "re-download or re-export it."
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(
            f"COCO json file '{json_file}' is not UTF-8 text ({e}). Is it really a json file?"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"COCO json file '{json_file}' must hold a JSON object with keys 'images', "
            f"'annotations' and 'categories', but its top level is a {type(data).__name__}."
        )
    return data


def _check_list_of_dicts(data: Dict[str, Any], key: str, required: Sequence[str], json_file: str):
    """Raise ValueError unless ``data[key]`` is a list of dicts that all hold ``required``."""
    items = data[key]
    if not isinstance(items, list):
        raise ValueError(
            f"'{key}' in COCO json file '{json_file}' must be a list, got "
            f"{type(items).__name__}."
        )
    not_dicts = [i for i, x in enumerate(items) if not isinstance(x, dict)]
    if not_dicts:
        raise ValueError(
            f"{len(not_dicts)} entries of '{key}' in COCO json file '{json_file}' are not "
            f"objects (list positions {format_examples(not_dicts)}). Each must be a JSON object."
        )
    for field in required:
        missing = [i for i, x in enumerate(items) if field not in x]
        if missing:
            ids = [items[i].get("id", f"#{i}") for i in missing]
            raise ValueError(
                f"{len(missing)} entries of '{key}' in COCO json file '{json_file}' have no "
                f"'{field}' field (ids or list positions: {format_examples(ids)}). Every entry "
                f"of '{key}' needs {', '.join(repr(k) for k in required)}."
            )


def _check_unique(items: List[Dict[str, Any]], key: str, json_file: str) -> None:
    """Raise ValueError if two entries of ``data[key]`` share an ``id``."""
    counts = Counter(x["id"] for x in items)
    dups = sorted((i for i, n in counts.items() if n > 1), key=str)
    if dups:
        raise ValueError(
            f"{len(dups)} {key} ids occur more than once in COCO json file '{json_file}' "
            f"(duplicated ids: {format_examples(dups)}). Ids within '{key}' must be unique; "
            "renumber them (e.g. id = position + 1) when merging or exporting annotations."
        )


def check_coco_structure(data: Dict[str, Any], json_file: str) -> None:
    """Check the top-level keys and per-entry required fields of a decoded COCO json.

    ``images`` and ``categories`` are required; every image needs id/file_name/height/width,
    every category id/name, every annotation id/image_id/category_id, and ids are unique within
    images and categories. A missing ``annotations`` key is accepted (it is how image-info
    files such as COCO test-dev are distributed) and ``data["annotations"]`` is set to ``[]``.
    Duplicate annotation ids are checked in ``check_coco_references``. Raises ValueError.
    """
    missing = [k for k in ("images", "categories") if k not in data]
    if missing:
        raise ValueError(
            f"COCO json file '{json_file}' has no top-level {' or '.join(repr(k) for k in missing)}"
            f" key (it has: {', '.join(repr(k) for k in data) or 'nothing'}). A COCO instances "
            "file needs 'images', 'annotations' and 'categories'; check that this is an "
            "instances (not captions/panoptic) annotation file."
        )
    if "annotations" not in data:
        logger.warning(
            "COCO json file '%s' has no 'annotations' key: loading its %s images without "
            "annotations (fine for image-info files such as COCO test-dev, wrong for training).",
            json_file,
            len(data["images"]) if isinstance(data["images"], list) else "?",
        )
        data["annotations"] = []
    _check_list_of_dicts(data, "images", _REQUIRED_IMAGE_KEYS, json_file)
    _check_list_of_dicts(data, "categories", _REQUIRED_CATEGORY_KEYS, json_file)
    _check_list_of_dicts(data, "annotations", _REQUIRED_ANNOTATION_KEYS, json_file)
    _check_unique(data["images"], "images", json_file)
    _check_unique(data["categories"], "categories", json_file)
    if len(data["images"]) == 0:
        raise ValueError(
            f"COCO json file '{json_file}' contains no images ('images' is empty), so the "
            "dataset would be empty. Check that the file was exported completely and that the "
            "right split was registered."
        )


def check_coco_references(data: Dict[str, Any], json_file: str) -> None:
    """Check that annotations point to existing images and categories and have unique ids.

    Duplicate annotation ids are an error unless ``json_file`` contains ``minival`` (the
    original COCO 2014 minival files carry known duplicates; Detectron2 tolerates them there),
    in which case they are logged. Raises ValueError naming the file, a few ids and the fix.
    """
    anns = data["annotations"]
    counts = Counter(a["id"] for a in anns)
    dups = sorted((i for i, n in counts.items() if n > 1), key=str)
    if dups:
        if "minival" in os.fspath(json_file):
            logger.warning(
                "COCO json file '%s' has %d duplicated annotation ids (e.g. %s); tolerated "
                "because it is a COCO minival file.",
                json_file,
                len(dups),
                format_examples(dups),
            )
        else:
            raise ValueError(
                f"{len(dups)} annotation ids occur more than once in COCO json file "
                f"'{json_file}' (duplicated ids: {format_examples(dups)}). Annotation ids must "
                "be unique; renumber them (e.g. id = position + 1) when merging or exporting."
            )

    cat_ids = {c["id"] for c in data["categories"]}
    bad_cat = defaultdict(list)  # unknown category id -> annotation ids
    for a in anns:
        if a["category_id"] not in cat_ids:
            bad_cat[a["category_id"]].append(a["id"])
    if bad_cat:
        n = sum(len(v) for v in bad_cat.values())
        detail = "; ".join(
            f"category_id={c!r} in annotation ids {format_examples(v)}"
            for c, v in list(bad_cat.items())[:_NUM_EXAMPLES]
        )
        raise ValueError(
            f"{n} annotations in COCO json file '{json_file}' use a category_id that is not in "
            f"'categories' ({detail}). Known category ids: {format_examples(sorted(cat_ids))}. "
            "Add the missing categories or fix/remove those annotations."
        )

    img_ids = {im["id"] for im in data["images"]}
    orphans = [a for a in anns if a["image_id"] not in img_ids]
    if orphans:
        pairs = ", ".join(f"{a['id']} -> {a['image_id']!r}" for a in orphans[:_NUM_EXAMPLES])
        pairs += ", ..." if len(orphans) > _NUM_EXAMPLES else ""
        raise ValueError(
            f"{len(orphans)} annotations in COCO json file '{json_file}' point to an image_id "
            f"that is not in 'images' (annotation id -> image_id: {pairs}). Add those images to "
            "'images' or remove the annotations."
        )


def _has_uri_scheme(path: str) -> bool:
    return "://" in path


class MissingImageFilesError(ValueError):
    """Image files referenced by a COCO json do not exist.

    Carries ``missing`` (the missing paths), ``total`` (how many paths were checked) and
    ``json_file``, so a caller that knows a better fix than checking ``image_root`` (e.g. a
    generated dataset, which can be drawn again) can re-raise with ``with_fix``.
    """

    def __init__(self, missing: Sequence[str], total: int, json_file: str, fix: str) -> None:
        self.missing = list(missing)
        self.total = total
        self.json_file = json_file
        super().__init__(
            f"{len(self.missing)} of {total} image files referenced by COCO json file "
            f"'{json_file}' do not exist (first: {format_examples(self.missing)}). {fix}"
        )

    def with_fix(self, fix: str) -> "MissingImageFilesError":
        """The same error (same files) with ``fix`` as the advice at the end of the message."""
        return MissingImageFilesError(self.missing, self.total, self.json_file, fix)


def check_image_files_exist(paths: Iterable[str], image_root: str, json_file: str) -> None:
    """Raise MissingImageFilesError (a ValueError) if any of ``paths`` (image files of
    ``json_file``) is missing.

    Each directory is listed once (cheap even for 100k+ images); names not found in the
    listing are confirmed with ``os.path.exists`` (case-insensitive file systems). Paths with a
    URI scheme (``s3://...``) cannot be checked here and are skipped. The message gives the
    count, the first few paths and the fix (check ``image_root``).
    """
    by_dir: Dict[str, List[str]] = defaultdict(list)
    n_skipped = 0
    for p in paths:
        if _has_uri_scheme(p):
            n_skipped += 1
            continue
        by_dir[os.path.dirname(p)].append(p)
    if n_skipped:
        logger.info("Not checking %d image paths with a URI scheme for existence.", n_skipped)

    missing: List[str] = []
    for directory, files in by_dir.items():
        try:
            names = set(os.listdir(directory or "."))
        except OSError:
            names = set()
        missing.extend(
            p for p in files if os.path.basename(p) not in names and not os.path.exists(p)
        )
    if missing:
        raise MissingImageFilesError(
            missing,
            sum(len(v) for v in by_dir.values()),
            json_file,
            f"Check image_root ('{image_root}'): it must be the directory the 'file_name' "
            "entries are relative to.",
        )


def are_numbers(values: Sequence[Any]) -> bool:
    """True when every entry of ``values`` is an int or float (not a bool, str or None)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def are_finite(values: Sequence[float]) -> bool:
    """True when every number of ``values`` is finite; json ``NaN``, ``Infinity`` and
    ``-Infinity`` decode to non-finite floats."""
    return all(math.isfinite(v) for v in values)


def bbox_is_well_formed(bbox: Any) -> bool:
    """True when ``bbox`` is a list of at least 4 numbers (COCO: ``[x, y, width, height]``)."""
    return isinstance(bbox, (list, tuple)) and len(bbox) >= 4 and are_numbers(bbox)


class DropCounter:
    """Counts annotations dropped for each reason and logs one line per reason.

    ``add(reason, ann_id)`` records one drop; ``log(json_file)`` writes a warning per reason
    with the count and a few example annotation ids.
    """

    def __init__(self) -> None:
        self._reasons: "OrderedDict[str, List[Any]]" = OrderedDict()

    def add(self, reason: str, ann_id: Any) -> None:
        """Record that annotation ``ann_id`` was dropped (or changed) because of ``reason``."""
        self._reasons.setdefault(reason, []).append(ann_id)

    def count(self, reason: str) -> int:
        """Return how many annotations were recorded under ``reason``."""
        return len(self._reasons.get(reason, []))

    def total(self) -> int:
        """Return the number of records over all reasons."""
        return sum(len(v) for v in self._reasons.values())

    def log(self, json_file: str) -> None:
        """Log one warning per reason: file, count, reason and example annotation ids."""
        for reason, ids in self._reasons.items():
            logger.warning(
                "%s: %d annotation(s) %s (annotation ids: %s).",
                json_file,
                len(ids),
                reason,
                format_examples(ids),
            )
