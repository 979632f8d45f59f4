"""Load Caffe2-era weights (Detectron / MSRA ``.pkl`` files) and match names by suffix.

Two pieces, both with Detectron2's behaviour:

* ``convert_basic_c2_names`` / ``convert_c2_detectron_names`` rename Caffe2 blob names
  (``res2_0_branch2a_bn_s``) to Detectron2 parameter names (``res2.0.conv1.norm.weight``), and
  drop / move the background-class rows of Detectron's box and mask predictors.
* ``align_and_update_state_dicts`` matches every model key with the checkpoint key that is its
  longest dot-aligned suffix, so an ImageNet backbone (``res2.0.conv1.weight``) loads into a
  detector (``backbone.bottom_up.res2.0.conv1.weight``). What matched is logged as one table.
"""

import logging
import re
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from tabulate import tabulate

__all__ = [
    "convert_basic_c2_names",
    "convert_c2_detectron_names",
    "align_and_update_state_dicts",
]

logger = logging.getLogger(__name__)

# A rule is (pattern, replacement): a compiled regex goes through ``re.sub``; a plain string is
# replaced literally wherever it occurs.
_Rule = Tuple[Union[str, "re.Pattern[str]"], str]


def _apply_rules(names: Sequence[str], rules: Sequence[_Rule]) -> List[str]:
    """Apply each rule, in order, to every name."""
    out = list(names)
    for pattern, replacement in rules:
        if isinstance(pattern, str):
            out = [n.replace(pattern, replacement) for n in out]
        else:
            out = [pattern.sub(replacement, n) for n in out]
    return out


# Blob names that Caffe2 gives the classifier of some ImageNet models, renamed before anything else.
_WHOLE_NAME_ALIASES = {"pred_w": "linear_w", "pred_b": "linear_b"}

# Rules applied after every "_" has become ".". Order matters: suffixes first, then the norm
# layers (Caffe2 BN is an affine "s"/"b" pair, sometimes with running statistics), then the
# ResNet structure.
_BASIC_RULES: List[_Rule] = [
    (re.compile(r"\.b$"), ".bias"),
    (re.compile(r"\.w$"), ".weight"),
    (re.compile(r"bn\.s$"), "norm.weight"),
    (re.compile(r"bn\.bias$"), "norm.bias"),
    (re.compile(r"bn\.rm"), "norm.running_mean"),
    (re.compile(r"bn\.running\.mean$"), "norm.running_mean"),
    (re.compile(r"bn\.riv$"), "norm.running_var"),
    (re.compile(r"bn\.running\.var$"), "norm.running_var"),
    (re.compile(r"bn\.gamma$"), "norm.weight"),
    (re.compile(r"bn\.beta$"), "norm.bias"),
    (re.compile(r"gn\.s$"), "norm.weight"),
    (re.compile(r"gn\.bias$"), "norm.bias"),
    # The stem: its norm is called "res_conv1_bn" in Caffe2, its conv "conv1".
    (re.compile(r"^res\.conv1\.norm\."), "conv1.norm."),
    # Only a leading "conv1." is the stem; "conv1" inside heads must stay as it is.
    (re.compile(r"^conv1\."), "stem.conv1."),
    # Residual blocks: projection shortcut and the three bottleneck convs.
    (".branch1.", ".shortcut."),
    (".branch2a.", ".conv1."),
    (".branch2b.", ".conv2."),
    (".branch2c.", ".conv3."),
    # DensePose heads (their names contain underscores that must survive).
    (re.compile(r"^body.conv.fcn"), "body_conv_fcn"),
    ("AnnIndex.lowres", "ann_index_lowres"),
    ("Index.UV.lowres", "index_uv_lowres"),
    ("U.lowres", "u_lowres"),
    ("V.lowres", "v_lowres"),
]


def convert_basic_c2_names(original_keys: Sequence[str]) -> List[str]:
    """Rename Caffe2 backbone blob names to Detectron2 parameter names.

    Handles what ImageNet backbones contain: ``_`` becomes ``.``; ``_w``/``_b`` become
    ``.weight``/``.bias``; BN/GN blobs ``_bn_s``, ``_bn_b``, ``_bn_rm``, ``_bn_riv`` (and
    ``gamma``/``beta``/``running_mean``/``running_var`` spellings) become ``.norm.weight``,
    ``.norm.bias``, ``.norm.running_mean``, ``.norm.running_var``; ``conv1``/``res_conv1_bn``
    become ``stem.conv1``; ``branch1`` becomes ``shortcut`` and ``branch2a/b/c`` become
    ``conv1/2/3``; ``pred_w``/``pred_b`` become ``linear.weight``/``linear.bias``.

    Args:
        original_keys: Caffe2 blob names.

    Returns:
        The renamed keys, one per input key, in the same order.
    """
    names = [_WHOLE_NAME_ALIASES.get(k, k) for k in original_keys]
    names = [k.replace("_", ".") for k in names]
    return _apply_rules(names, _BASIC_RULES)


def _fpn_name(name: str) -> str:
    """Map Detectron's FPN blob names to ``fpn_lateral{N}`` / ``fpn_output{N}``.

    ``fpn.inner.res{N}.{i}.sum.lateral.{p}`` is the 1x1 lateral conv of stage N;
    ``fpn.res{N}.{i}.sum.{p}`` is its 3x3 output conv. A ``norm`` part is kept.
    """
    parts = name.split(".")
    norm = ".norm" if "norm" in parts else ""
    if name.startswith("fpn.inner.") and len(parts) > 2 and parts[2].startswith("res"):
        return f"fpn_lateral{int(parts[2][3:])}{norm}.{parts[-1]}"
    if name.startswith("fpn.res"):
        return f"fpn_output{int(parts[1][3:])}{norm}.{parts[-1]}"
    return name


# Detection-model rules, applied after the basic ones. The "fpn2" variants come first: Detectron
# defines the shared RPN layers on FPN level 2 and reuses them on the other levels.
_RPN_AND_BOX_RULES: List[_Rule] = [
    ("conv.rpn.fpn2", "proposal_generator.rpn_head.conv"),
    ("conv.rpn", "proposal_generator.rpn_head.conv"),
    ("rpn.bbox.pred.fpn2", "proposal_generator.rpn_head.anchor_deltas"),
    ("rpn.cls.logits.fpn2", "proposal_generator.rpn_head.objectness_logits"),
    ("rpn.bbox.pred", "proposal_generator.rpn_head.anchor_deltas"),
    ("rpn.cls.logits", "proposal_generator.rpn_head.objectness_logits"),
    # Fast R-CNN box head and predictor.
    (re.compile(r"^bbox\.pred"), "bbox_pred"),
    (re.compile(r"^cls\.score"), "cls_score"),
    (re.compile(r"^fc6\."), "box_head.fc1."),
    (re.compile(r"^fc7\."), "box_head.fc2."),
    # 4conv1fc box head: head_conv1_w, head_conv1_gn_s, ...
    (re.compile(r"^head\.conv"), "box_head.conv"),
]

_MASK_AND_KEYPOINT_RULES: List[_Rule] = [
    # Mask head of StandardROIHeads: "_[mask]_fcn1_w" -> mask_head.mask_fcn1.weight.
    (".[mask].fcn", "mask_head.mask_fcn"),
    (re.compile(r"^\.mask\.fcn"), "mask_head.mask_fcn"),
    ("mask.fcn.logits", "mask_head.predictor"),
    # Res5ROIHeads (C4) upsampling layer.
    ("conv5.mask", "mask_head.deconv"),
    # Keypoint head: its convs are simply "conv_fcnX".
    ("conv.fcn", "roi_heads.keypoint_head.conv_fcn"),
    ("kps.score.lowres", "roi_heads.keypoint_head.score_lowres"),
    ("kps.score.", "roi_heads.keypoint_head.score."),
]


def convert_c2_detectron_names(
    weights: Mapping[str, Any],
) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Rename the blobs of a Detectron (Caffe2) detection model to Detectron2 names.

    Besides the backbone renames of ``convert_basic_c2_names`` this maps RPN, Fast R-CNN, FPN,
    mask and keypoint head blobs. Detectron's predictors carry the background class first;
    Detectron2 has no background row in ``bbox_pred`` / ``mask_head.predictor`` (they are
    dropped) and puts it last in ``cls_score`` (it is moved).

    Args:
        weights: Caffe2 blob name -> tensor (or array).

    Returns:
        ``(new_weights, new_to_original)``: Detectron2 name -> tensor, and Detectron2 name ->
        the Caffe2 name it came from.

    Raises:
        ValueError: if two blobs end up with the same name.
    """
    logger.info("Renaming Caffe2 weights to Detectron2 names ...")
    original_keys = sorted(weights.keys())
    names = convert_basic_c2_names(original_keys)
    names = _apply_rules(names, _RPN_AND_BOX_RULES)
    names = [_fpn_name(n) for n in names]
    names = _apply_rules(names, _MASK_AND_KEYPOINT_RULES)

    seen: Dict[str, str] = {}
    for orig, renamed in zip(original_keys, names):
        if renamed in seen:
            raise ValueError(
                f"Caffe2 blobs '{seen[renamed]}' and '{orig}' both map to the Detectron2 name "
                f"'{renamed}'; the checkpoint has duplicate or unsupported blob names. Remove one "
                "of them from the file, or rename the keys yourself and load the result as a "
                "plain state dict."
            )
        seen[renamed] = orig

    new_weights: Dict[str, Any] = {}
    for orig, renamed in zip(original_keys, names):
        value = weights[orig]
        if renamed.startswith(("bbox_pred.", "mask_head.predictor.")):
            skip = 4 if renamed.startswith("bbox_pred.") else 1
            new_weights[renamed] = value[skip:]
            logger.info(
                "Dropped the background-class rows of %s: shape %s -> %s.",
                renamed, tuple(value.shape), tuple(new_weights[renamed].shape),
            )
        elif renamed.startswith("cls_score."):
            tensor = torch.as_tensor(value)
            new_weights[renamed] = torch.cat([tensor[1:], tensor[:1]])
            logger.info(
                "Moved the background-class row of %s from index 0 to index %d.",
                renamed, tensor.shape[0] - 1,
            )
        else:
            new_weights[renamed] = value
    return new_weights, {renamed: orig for orig, renamed in zip(original_keys, names)}


def _longest_suffix_match(model_key: str, ckpt_keys: Mapping[str, Any]) -> Optional[str]:
    """The longest checkpoint key equal to ``model_key`` or to a suffix of it after a ``.``."""
    if model_key in ckpt_keys:
        return model_key
    pos = model_key.find(".")
    while pos != -1:
        candidate = model_key[pos + 1 :]
        if candidate in ckpt_keys:
            return candidate
        pos = model_key.find(".", pos + 1)
    return None


def align_and_update_state_dicts(
    model_state_dict: Mapping[str, torch.Tensor],
    ckpt_state_dict: Mapping[str, Any],
    c2_conversion: bool = True,
    *,
    original_names: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Rename checkpoint entries to the model's names by longest-suffix matching.

    Each model key takes the checkpoint key that equals it or is its longest suffix starting
    after a ``.`` (so ``backbone.bottom_up.res2.0.conv1.weight`` takes ``res2.0.conv1.weight``
    over ``conv1.weight``, and ``head.myconv1.weight`` never takes ``conv1.weight``). A match
    whose shape differs from the model's is skipped with a warning naming both keys and shapes.
    The matches are logged as one table.

    Args:
        model_state_dict: the model's ``state_dict()`` (only names and shapes are read).
        ckpt_state_dict: the checkpoint's weights (tensors).
        c2_conversion: first rename Caffe2 blob names with ``convert_c2_detectron_names``.
        original_names: checkpoint key -> the name it has in the file, when the caller renamed
            the keys already (only used to show file names in the log).

    Returns:
        A new state dict: matched weights under the model's names, plus the checkpoint entries
        that matched nothing under their (converted) names, so that loading reports them as
        unexpected keys. Weights skipped for a shape mismatch are left out.

    Raises:
        ValueError: if one checkpoint key is the best match of two model keys.
    """
    if c2_conversion:
        ckpt_state_dict, original_names = convert_c2_detectron_names(ckpt_state_dict)
    else:
        original_names = {k: (original_names or {}).get(k, k) for k in ckpt_state_dict}

    matched: Dict[str, str] = {}  # checkpoint key -> model key
    result: Dict[str, Any] = OrderedDict()
    skipped = set()
    for model_key in sorted(model_state_dict.keys()):
        ckpt_key = _longest_suffix_match(model_key, ckpt_state_dict)
        if ckpt_key is None:
            continue
        value = ckpt_state_dict[ckpt_key]
        model_shape = tuple(model_state_dict[model_key].shape)
        if tuple(value.shape) != model_shape:
            logger.warning(
                "Shape of '%s' in the checkpoint is %s but '%s' in the model is %s; it will "
                "not be loaded. Check the config (e.g. NUM_CLASSES) if this is unexpected.",
                original_names[ckpt_key], tuple(value.shape), model_key, model_shape,
            )
            skipped.add(ckpt_key)
            continue
        if ckpt_key in matched:
            raise ValueError(
                f"Checkpoint key '{original_names[ckpt_key]}' matches two model keys, "
                f"'{matched[ckpt_key]}' and '{model_key}', equally well. Rename the checkpoint "
                "keys to the model's full names and load it without matching heuristics."
            )
        matched[ckpt_key] = model_key
        result[model_key] = value

    if not matched:
        logger.warning("No weights in the checkpoint matched the model's parameter names.")
    else:
        _log_matches(model_state_dict, matched, original_names)

    for ckpt_key, value in ckpt_state_dict.items():
        if ckpt_key not in matched and ckpt_key not in skipped:
            result[ckpt_key] = value
    return result


def _common_prefix_chars(names: Sequence[str]) -> str:
    """The longest common prefix of ``names``, character by character."""
    if not names:
        return ""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _common_prefix(names: Sequence[str]) -> str:
    """The longest common prefix of ``names`` that ends with ``.`` (or "")."""
    chars = _common_prefix_chars(names)
    return chars[: chars.rfind(".") + 1]


def _brace_group(names: Sequence[str]) -> str:
    """``a.b.x``, ``a.b.y`` -> ``a.b.{x,y}``; a single name is returned as is."""
    if len(names) == 1:
        return names[0]
    prefix = _common_prefix_chars(names)
    return prefix + "{" + ",".join(n[len(prefix) :] for n in names) + "}"


def _shape_str(tensor: Any) -> str:
    return str(tuple(tensor.shape)).replace(" ", "")


def _log_matches(
    model_state_dict: Mapping[str, torch.Tensor],
    matched: Mapping[str, str],
    original_names: Mapping[str, str],
) -> None:
    """Log one table row per model module: its matched parameters, source names and shapes."""
    model_to_ckpt = {m: original_names[c] for c, m in matched.items()}
    prefix = _common_prefix(sorted(model_to_ckpt))
    by_module: Dict[str, List[str]] = defaultdict(list)
    for model_key in sorted(model_to_ckpt):
        by_module[model_key.rsplit(".", 1)[0] if "." in model_key else model_key].append(model_key)

    rows = []
    for module, keys in by_module.items():
        if len(keys) == 1:
            rows.append((keys[0][len(prefix) :], model_to_ckpt[keys[0]], _shape_str(model_state_dict[keys[0]])))
        else:
            rows.append(
                (
                    module[len(prefix) :] + ".{" + ",".join(k.rsplit(".", 1)[1] for k in keys) + "}",
                    _brace_group([model_to_ckpt[k] for k in keys]),
                    " ".join(_shape_str(model_state_dict[k]) for k in keys),
                )
            )
    where = prefix[:-1] if prefix else "model"
    logger.info(
        "Weights matched with submodule %s - %d of %d model keys in %d modules:\n%s",
        where, len(model_to_ckpt), len(model_state_dict), len(rows),
        tabulate(rows, headers=["Names in Model", "Names in Checkpoint", "Shapes"], tablefmt="pipe"),
    )
