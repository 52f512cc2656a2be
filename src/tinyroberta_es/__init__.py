"""tinyroberta-es: compact, fast extractive question answering in Spanish.

``from tinyroberta_es import QuestionAnswerer`` is the Python entry point (see README, "Python API"); it is
imported on first use, so ``import tinyroberta_es`` (and the CLI's start) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["InferenceConfig", "QuestionAnswerer", "__version__"]

if TYPE_CHECKING:
    from tinyroberta_es.inference import InferenceConfig, QuestionAnswerer


def __getattr__(name: str) -> Any:
    if name in ("InferenceConfig", "QuestionAnswerer"):
        from tinyroberta_es import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'tinyroberta_es' has no attribute {name!r}")
