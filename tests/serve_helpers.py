"""Helpers for the serve tests: the tiny QA model they answer with, and waiting for a condition."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tinyroberta_es.tiny import create_tiny_qa_model, spanish_texts, train_tokenizer


def build_tiny_model(root: Path) -> Path:
    """A tiny random RoBERTa-like QA model folder (byte-level BPE tokenizer) under `root`."""
    tokenizer = train_tokenizer("bpe", spanish_texts(), root / "tokenizer", vocab_size=1000)
    return create_tiny_qa_model(root / "model", tokenizer, seed=3)


async def until(condition, timeout: float = 30, interval: float = 0.001) -> None:
    """Run the event loop until `condition()` holds (polled every `interval` s); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(interval)
