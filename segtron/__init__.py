"""segtron: an instance-segmentation research codebase with the Detectron2 API.

Module paths mirror Detectron2 (``segtron.X`` <-> ``detectron2.X``); see ``segtron.compat`` to
let existing Detectron2 code import segtron unchanged.
"""

__version__ = "0.1.0"
