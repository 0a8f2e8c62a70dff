"""MedCLIP-SAM: text-prompted medical image segmentation from foundation models.

The package is layered in one direction of flow (see the README's project layout):
``data`` -> ``models`` -> ``losses``/``finetune`` -> ``saliency`` -> ``prompting`` -> ``pipeline``
-> ``weak``; ``metrics``, ``viz``, ``widgets`` and ``cli`` sit beside them.
"""

__version__ = "0.1.0"

__all__ = ["MedCLIPSAM", "PipelineConfig", "__version__", "show_environment"]


def __getattr__(name: str):
    # Lazy: ``import medclipsam`` stays cheap (no torch) until the pipeline is asked for.
    if name == "MedCLIPSAM":
        from .pipeline import MedCLIPSAM

        return MedCLIPSAM
    if name == "PipelineConfig":
        from .config import PipelineConfig

        return PipelineConfig
    if name == "show_environment":
        from .environment import show_environment

        return show_environment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
