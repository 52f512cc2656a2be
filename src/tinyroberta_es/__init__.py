"""tinyroberta-es: compact, fast extractive question answering in Spanish."""

__version__ = "0.1.0"
