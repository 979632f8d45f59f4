"""Checking the feature names a head reads against what the backbone outputs.

Every head that takes a config list of feature names (MODEL.RPN.IN_FEATURES,
MODEL.ROI_HEADS.IN_FEATURES, MODEL.RETINANET.IN_FEATURES, ...) checks it here, so a typo fails at
build time with the key, the bad names and the valid ones.
"""

from typing import Dict, List, Sequence

from ..layers import ShapeSpec

__all__ = ["UnknownFeatureError", "check_in_features"]


class UnknownFeatureError(KeyError, ValueError):
    """A config names a feature map the backbone does not output.

    A ``KeyError`` (a name looked up and not found) and a ``ValueError`` (a bad config value),
    so callers may catch either.
    """

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def check_in_features(
    in_features: Sequence[str], input_shape: Dict[str, ShapeSpec], key: str
) -> List[ShapeSpec]:
    """Shapes of the named features, in the order named.

    Args:
        in_features: feature names from the config, e.g. ``["p3", "p4"]``.
        input_shape: the backbone's outputs, name -> ``ShapeSpec``.
        key: the config key the names came from, for the message (e.g.
            "MODEL.RETINANET.IN_FEATURES").

    Raises:
        UnknownFeatureError: ``in_features`` is empty or names a feature not in
            ``input_shape``; the message gives the key, the bad names and the valid ones.
    """
    in_features = list(in_features)
    available = sorted(input_shape, key=lambda k: (input_shape[k].stride or 0, k))
    if not in_features:
        raise UnknownFeatureError(
            f"{key} is empty; name the backbone outputs to use, from {available}."
        )
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise UnknownFeatureError(
            f"{key}={in_features} names features {missing} that the backbone does not output "
            f"(it outputs {available}); fix {key} or the backbone's OUT_FEATURES."
        )
    return [input_shape[f] for f in in_features]
