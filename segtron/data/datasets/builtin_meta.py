"""Metadata of the builtin datasets: class ids, names and colours, keypoint definitions.

These are facts about the datasets (the ids and names the annotation files use, the colours
Detectron2 draws them with) and must stay identical to Detectron2's, because model-zoo
checkpoints index their classifier outputs in this order.

``_get_builtin_metadata(name)`` turns them into the ``Metadata`` fields registered for
"coco", "coco_panoptic_standard", "coco_panoptic_separated", "coco_person" and "cityscapes".
"""

from typing import Any, Dict, List

__all__ = [
    "COCO_CATEGORIES",
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_KEYPOINT_FLIP_MAP",
    "KEYPOINT_CONNECTION_RULES",
    "CITYSCAPES_CATEGORIES",
    "ADE20K_SEM_SEG_CATEGORIES",
]


def _coco(cat_id: int, isthing: int, name: str, color) -> Dict[str, Any]:
    return {"color": list(color), "isthing": isthing, "id": cat_id, "name": name}


# COCO: the 80 thing categories of the detection task (ids 1..90 with gaps) followed by the 53
# stuff categories of the panoptic task (ids 92..200), in the panoptic API's order.
# Columns: dataset id, isthing, name, visualisation colour (RGB).
COCO_CATEGORIES: List[Dict[str, Any]] = [
    _coco(1, 1, "person", (220, 20, 60)),
    _coco(2, 1, "bicycle", (119, 11, 32)),
    _coco(3, 1, "car", (0, 0, 142)),
    _coco(4, 1, "motorcycle", (0, 0, 230)),
    _coco(5, 1, "airplane", (106, 0, 228)),
    _coco(6, 1, "bus", (0, 60, 100)),
    _coco(7, 1, "train", (0, 80, 100)),
    _coco(8, 1, "truck", (0, 0, 70)),
    _coco(9, 1, "boat", (0, 0, 192)),
    _coco(10, 1, "traffic light", (250, 170, 30)),
    _coco(11, 1, "fire hydrant", (100, 170, 30)),
    _coco(13, 1, "stop sign", (220, 220, 0)),
    _coco(14, 1, "parking meter", (175, 116, 175)),
    _coco(15, 1, "bench", (250, 0, 30)),
    _coco(16, 1, "bird", (165, 42, 42)),
    _coco(17, 1, "cat", (255, 77, 255)),
    _coco(18, 1, "dog", (0, 226, 252)),
    _coco(19, 1, "horse", (182, 182, 255)),
    _coco(20, 1, "sheep", (0, 82, 0)),
    _coco(21, 1, "cow", (120, 166, 157)),
    _coco(22, 1, "elephant", (110, 76, 0)),
    _coco(23, 1, "bear", (174, 57, 255)),
    _coco(24, 1, "zebra", (199, 100, 0)),
    _coco(25, 1, "giraffe", (72, 0, 118)),
    _coco(27, 1, "backpack", (255, 179, 240)),
    _coco(28, 1, "umbrella", (0, 125, 92)),
    _coco(31, 1, "handbag", (209, 0, 151)),
    _coco(32, 1, "tie", (188, 208, 182)),
    _coco(33, 1, "suitcase", (0, 220, 176)),
    _coco(34, 1, "frisbee", (255, 99, 164)),
    _coco(35, 1, "skis", (92, 0, 73)),
    _coco(36, 1, "snowboard", (133, 129, 255)),
    _coco(37, 1, "sports ball", (78, 180, 255)),
    _coco(38, 1, "kite", (0, 228, 0)),
    _coco(39, 1, "baseball bat", (174, 255, 243)),
    _coco(40, 1, "baseball glove", (45, 89, 255)),
    _coco(41, 1, "skateboard", (134, 134, 103)),
    _coco(42, 1, "surfboard", (145, 148, 174)),
    _coco(43, 1, "tennis racket", (255, 208, 186)),
    _coco(44, 1, "bottle", (197, 226, 255)),
    _coco(46, 1, "wine glass", (171, 134, 1)),
    _coco(47, 1, "cup", (109, 63, 54)),
    _coco(48, 1, "fork", (207, 138, 255)),
    _coco(49, 1, "knife", (151, 0, 95)),
    _coco(50, 1, "spoon", (9, 80, 61)),
    _coco(51, 1, "bowl", (84, 105, 51)),
    _coco(52, 1, "banana", (74, 65, 105)),
    _coco(53, 1, "apple", (166, 196, 102)),
    _coco(54, 1, "sandwich", (208, 195, 210)),
    _coco(55, 1, "orange", (255, 109, 65)),
    _coco(56, 1, "broccoli", (0, 143, 149)),
    _coco(57, 1, "carrot", (179, 0, 194)),
    _coco(58, 1, "hot dog", (209, 99, 106)),
    _coco(59, 1, "pizza", (5, 121, 0)),
    _coco(60, 1, "donut", (227, 255, 205)),
    _coco(61, 1, "cake", (147, 186, 208)),
    _coco(62, 1, "chair", (153, 69, 1)),
    _coco(63, 1, "couch", (3, 95, 161)),
    _coco(64, 1, "potted plant", (163, 255, 0)),
    _coco(65, 1, "bed", (119, 0, 170)),
    _coco(67, 1, "dining table", (0, 182, 199)),
    _coco(70, 1, "toilet", (0, 165, 120)),
    _coco(72, 1, "tv", (183, 130, 88)),
    _coco(73, 1, "laptop", (95, 32, 0)),
    _coco(74, 1, "mouse", (130, 114, 135)),
    _coco(75, 1, "remote", (110, 129, 133)),
    _coco(76, 1, "keyboard", (166, 74, 118)),
    _coco(77, 1, "cell phone", (219, 142, 185)),
    _coco(78, 1, "microwave", (79, 210, 114)),
    _coco(79, 1, "oven", (178, 90, 62)),
    _coco(80, 1, "toaster", (65, 70, 15)),
    _coco(81, 1, "sink", (127, 167, 115)),
    _coco(82, 1, "refrigerator", (59, 105, 106)),
    _coco(84, 1, "book", (142, 108, 45)),
    _coco(85, 1, "clock", (196, 172, 0)),
    _coco(86, 1, "vase", (95, 54, 80)),
    _coco(87, 1, "scissors", (128, 76, 255)),
    _coco(88, 1, "teddy bear", (201, 57, 1)),
    _coco(89, 1, "hair drier", (246, 0, 122)),
    _coco(90, 1, "toothbrush", (191, 162, 208)),
    _coco(92, 0, "banner", (255, 255, 128)),
    _coco(93, 0, "blanket", (147, 211, 203)),
    _coco(95, 0, "bridge", (150, 100, 100)),
    _coco(100, 0, "cardboard", (168, 171, 172)),
    _coco(107, 0, "counter", (146, 112, 198)),
    _coco(109, 0, "curtain", (210, 170, 100)),
    _coco(112, 0, "door-stuff", (92, 136, 89)),
    _coco(118, 0, "floor-wood", (218, 88, 184)),
    _coco(119, 0, "flower", (241, 129, 0)),
    _coco(122, 0, "fruit", (217, 17, 255)),
    _coco(125, 0, "gravel", (124, 74, 181)),
    _coco(128, 0, "house", (70, 70, 70)),
    _coco(130, 0, "light", (255, 228, 255)),
    _coco(133, 0, "mirror-stuff", (154, 208, 0)),
    _coco(138, 0, "net", (193, 0, 92)),
    _coco(141, 0, "pillow", (76, 91, 113)),
    _coco(144, 0, "platform", (255, 180, 195)),
    _coco(145, 0, "playingfield", (106, 154, 176)),
    _coco(147, 0, "railroad", (230, 150, 140)),
    _coco(148, 0, "river", (60, 143, 255)),
    _coco(149, 0, "road", (128, 64, 128)),
    _coco(151, 0, "roof", (92, 82, 55)),
    _coco(154, 0, "sand", (254, 212, 124)),
    _coco(155, 0, "sea", (73, 77, 174)),
    _coco(156, 0, "shelf", (255, 160, 98)),
    _coco(159, 0, "snow", (255, 255, 255)),
    _coco(161, 0, "stairs", (104, 84, 109)),
    _coco(166, 0, "tent", (169, 164, 131)),
    _coco(168, 0, "towel", (225, 199, 255)),
    _coco(171, 0, "wall-brick", (137, 54, 74)),
    _coco(175, 0, "wall-stone", (135, 158, 223)),
    _coco(176, 0, "wall-tile", (7, 246, 231)),
    _coco(177, 0, "wall-wood", (107, 255, 200)),
    _coco(178, 0, "water-other", (58, 41, 149)),
    _coco(180, 0, "window-blind", (183, 121, 142)),
    _coco(181, 0, "window-other", (255, 73, 97)),
    _coco(184, 0, "tree-merged", (107, 142, 35)),
    _coco(185, 0, "fence-merged", (190, 153, 153)),
    _coco(186, 0, "ceiling-merged", (146, 139, 141)),
    _coco(187, 0, "sky-other-merged", (70, 130, 180)),
    _coco(188, 0, "cabinet-merged", (134, 199, 156)),
    _coco(189, 0, "table-merged", (209, 226, 140)),
    _coco(190, 0, "floor-other-merged", (96, 36, 108)),
    _coco(191, 0, "pavement-merged", (96, 96, 96)),
    _coco(192, 0, "mountain-merged", (64, 170, 64)),
    _coco(193, 0, "grass-merged", (152, 251, 152)),
    _coco(194, 0, "dirt-merged", (208, 229, 228)),
    _coco(195, 0, "paper-merged", (206, 186, 171)),
    _coco(196, 0, "food-other-merged", (152, 161, 64)),
    _coco(197, 0, "building-other-merged", (116, 112, 0)),
    _coco(198, 0, "rock-merged", (0, 114, 143)),
    _coco(199, 0, "wall-other-merged", (102, 102, 156)),
    _coco(200, 0, "rug-merged", (250, 141, 255)),
]

# The 17 COCO person keypoints, in the order of the annotation files' "keypoints" arrays.
COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)

# Keypoints that swap places when the image is flipped horizontally.
COCO_PERSON_KEYPOINT_FLIP_MAP = (
    ("left_eye", "right_eye"),
    ("left_ear", "right_ear"),
    ("left_shoulder", "right_shoulder"),
    ("left_elbow", "right_elbow"),
    ("left_wrist", "right_wrist"),
    ("left_hip", "right_hip"),
    ("left_knee", "right_knee"),
    ("left_ankle", "right_ankle"),
)

# Skeleton drawn by the visualizer: (keypoint, keypoint, RGB line colour).
KEYPOINT_CONNECTION_RULES = [
    # face
    ("left_ear", "left_eye", (102, 204, 255)),
    ("right_ear", "right_eye", (51, 153, 255)),
    ("left_eye", "nose", (102, 0, 204)),
    ("nose", "right_eye", (51, 102, 255)),
    # upper body
    ("left_shoulder", "right_shoulder", (255, 128, 0)),
    ("left_shoulder", "left_elbow", (153, 255, 204)),
    ("right_shoulder", "right_elbow", (128, 229, 255)),
    ("left_elbow", "left_wrist", (153, 255, 153)),
    ("right_elbow", "right_wrist", (102, 255, 224)),
    # lower body
    ("left_hip", "right_hip", (255, 102, 0)),
    ("left_hip", "left_knee", (255, 255, 77)),
    ("right_hip", "right_knee", (153, 255, 204)),
    ("left_knee", "left_ankle", (191, 255, 128)),
    ("right_knee", "right_ankle", (255, 195, 77)),
]


def _city(label_id: int, train_id: int, isthing: int, name: str, color) -> Dict[str, Any]:
    return {"color": tuple(color), "isthing": isthing, "id": label_id, "trainId": train_id,
            "name": name}


# The 19 Cityscapes classes that are trained and evaluated, in trainId order.
# Columns: label id (in *_labelIds.png), trainId (in *_labelTrainIds.png), isthing, name, colour.
CITYSCAPES_CATEGORIES: List[Dict[str, Any]] = [
    _city(7, 0, 0, "road", (128, 64, 128)),
    _city(8, 1, 0, "sidewalk", (244, 35, 232)),
    _city(11, 2, 0, "building", (70, 70, 70)),
    _city(12, 3, 0, "wall", (102, 102, 156)),
    _city(13, 4, 0, "fence", (190, 153, 153)),
    _city(17, 5, 0, "pole", (153, 153, 153)),
    _city(19, 6, 0, "traffic light", (250, 170, 30)),
    _city(20, 7, 0, "traffic sign", (220, 220, 0)),
    _city(21, 8, 0, "vegetation", (107, 142, 35)),
    _city(22, 9, 0, "terrain", (152, 251, 152)),
    _city(23, 10, 0, "sky", (70, 130, 180)),
    _city(24, 11, 1, "person", (220, 20, 60)),
    _city(25, 12, 1, "rider", (255, 0, 0)),
    _city(26, 13, 1, "car", (0, 0, 142)),
    _city(27, 14, 1, "truck", (0, 0, 70)),
    _city(28, 15, 1, "bus", (0, 60, 100)),
    _city(31, 16, 1, "train", (0, 80, 100)),
    _city(32, 17, 1, "motorcycle", (0, 0, 230)),
    _city(33, 18, 1, "bicycle", (119, 11, 32)),
]

# ADE20K (SceneParsing challenge, 150 classes), in the order of objectInfo150.txt: class k is
# value k + 1 in the original annotation pngs and value k after `prepare_ade20k_sem_seg.py`
# (which turns the original 0 "other" into the ignore value 255). Names are the dataset's own,
# including the trailing space of "window ".
ADE20K_SEM_SEG_CATEGORIES = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road, route",
    "bed",
    "window ",
    "grass",
    "cabinet",
    "sidewalk, pavement",
    "person",
    "earth, ground",
    "door",
    "table",
    "mountain, mount",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting, picture",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock, stone",
    "wardrobe, closet, press",
    "lamp",
    "tub",
    "rail",
    "cushion",
    "base, pedestal, stand",
    "box",
    "column, pillar",
    "signboard, sign",
    "chest of drawers, chest, bureau, dresser",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator, icebox",
    "grandstand, covered stand",
    "path",
    "stairs",
    "runway",
    "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table",
    "pillow",
    "screen door, screen",
    "stairway, staircase",
    "river",
    "bridge, span",
    "bookcase",
    "blind, screen",
    "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm, palm tree",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel, hut, hutch, shack, shanty",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning, sunshade, sunblind",
    "street lamp",
    "booth",
    "tv",
    "plane",
    "dirt track",
    "clothes",
    "pole",
    "land, ground, soil",
    "bannister, banister, balustrade, balusters, handrail",
    "escalator, moving staircase, moving stairway",
    "ottoman, pouf, pouffe, puff, hassock",
    "bottle",
    "buffet, counter, sideboard",
    "poster, posting, placard, notice, bill, card",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt, conveyor belt, conveyer, conveyor, transporter",
    "canopy",
    "washer, automatic washer, washing machine",
    "plaything, toy",
    "pool",
    "stool",
    "barrel, cask",
    "basket, handbasket",
    "falls",
    "tent",
    "bag",
    "minibike, motorbike",
    "cradle",
    "oven",
    "ball",
    "food, solid food",
    "step, stair",
    "tank, storage tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket, cover",
    "sculpture",
    "hood, exhaust hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "trash can",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass, drinking glass",
    "clock",
    "flag",
]

# Colour Detectron2 gives the extra "things" class of the separated panoptic setting.
_THINGS_STUFF_COLOR = [82, 18, 128]


def _get_coco_instances_meta() -> Dict[str, Any]:
    """Metadata of COCO instance detection: the 80 thing classes, contiguous ids 0..79."""
    things = [c for c in COCO_CATEGORIES if c["isthing"] == 1]
    if len(things) != 80:
        raise AssertionError(f"COCO_CATEGORIES holds {len(things)} thing classes, expected 80.")
    return {
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
    }


def _get_coco_panoptic_separated_meta() -> Dict[str, Any]:
    """Metadata of the "separated" COCO panoptic setting (Panoptic FPN).

    Instances use the 80 thing classes (contiguous 0..79). The semantic branch predicts 54
    classes: 0 = all things merged ("things"), 1..53 = the stuff classes in COCO_CATEGORIES
    order, named without the "-other"/"-merged" suffixes. Dataset id 0 maps to 0.
    """
    stuff = [c for c in COCO_CATEGORIES if c["isthing"] == 0]
    if len(stuff) != 53:
        raise AssertionError(f"COCO_CATEGORIES holds {len(stuff)} stuff classes, expected 53.")
    stuff_id_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_id_map[0] = 0
    meta = {
        "stuff_dataset_id_to_contiguous_id": stuff_id_map,
        "stuff_classes": ["things"]
        + [c["name"].replace("-other", "").replace("-merged", "") for c in stuff],
        "stuff_colors": [list(_THINGS_STUFF_COLOR)] + [list(c["color"]) for c in stuff],
    }
    meta.update(_get_coco_instances_meta())
    return meta


def _get_coco_panoptic_standard_meta() -> Dict[str, Any]:
    """Metadata of the "standard" COCO panoptic setting (Panoptic-DeepLab and later).

    All 133 categories share one contiguous id space 0..132 (COCO_CATEGORIES order); names
    and colours are listed under both thing_* and stuff_*, as Detectron2's visualizer expects.
    """
    names = [c["name"] for c in COCO_CATEGORIES]
    colors = [list(c["color"]) for c in COCO_CATEGORIES]
    return {
        "thing_classes": list(names),
        "thing_colors": [list(c) for c in colors],
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(COCO_CATEGORIES) if not c["isthing"]
        },
    }


def _get_coco_person_meta() -> Dict[str, Any]:
    return {
        "thing_classes": ["person"],
        "keypoint_names": COCO_PERSON_KEYPOINT_NAMES,
        "keypoint_flip_map": COCO_PERSON_KEYPOINT_FLIP_MAP,
        "keypoint_connection_rules": KEYPOINT_CONNECTION_RULES,
    }


def _get_cityscapes_meta() -> Dict[str, Any]:
    # thing_classes: the 8 instance classes, contiguous ids 0..7 (label ids 24..33 in order);
    # stuff_classes: all 19 trainId classes (trainId k is stuff class k).
    return {
        "thing_classes": [c["name"] for c in CITYSCAPES_CATEGORIES if c["isthing"]],
        "stuff_classes": [c["name"] for c in CITYSCAPES_CATEGORIES],
    }


_BUILTIN_METADATA = {
    "coco": _get_coco_instances_meta,
    "coco_panoptic_separated": _get_coco_panoptic_separated_meta,
    "coco_panoptic_standard": _get_coco_panoptic_standard_meta,
    "coco_person": _get_coco_person_meta,
    "cityscapes": _get_cityscapes_meta,
}


def _get_builtin_metadata(dataset_name: str) -> Dict[str, Any]:
    """Return a fresh dict of Metadata fields for a builtin dataset family.

    ``dataset_name`` is one of "coco", "coco_panoptic_standard", "coco_panoptic_separated",
    "coco_person", "cityscapes". Raises KeyError naming the known families otherwise.
    """
    try:
        make = _BUILTIN_METADATA[dataset_name]
    except KeyError:
        raise KeyError(
            f"No builtin metadata for dataset '{dataset_name}'. Known: "
            f"{', '.join(sorted(_BUILTIN_METADATA))}. Set the metadata of your own dataset with "
            "MetadataCatalog.get(name).set(thing_classes=[...])."
        ) from None
    return make()
