"""MedCLIP-SAM: text-prompted medical image segmentation from foundation models.

The package is layered in one direction of flow (see ``docs/architecture.md``):
``data`` -> ``models`` -> ``losses``/``finetune`` -> ``saliency`` -> ``prompting`` -> ``pipeline``
-> ``weak``; ``metrics``, ``viz``, ``widgets`` and ``cli`` sit beside them.
"""

__version__ = "0.1.0"
