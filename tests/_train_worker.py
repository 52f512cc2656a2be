"""Train a tiny model with `tinyroberta_es.train.train`: the subprocess that test_train.py kills and resumes,
and launches under torchrun. Also imported by the tests for the tiny model and synthetic windows.

    python tests/_train_worker.py OUT [--max-steps N] [--checkpoint-every K] [--delay S] [--digest-out DIR]

Writes the model as OUT/weights.pt; with --digest-out, each process writes DIR/rank<R>.json with digests of
its initial and final parameters. Prints {"step": ..., "already_finished": ...} on the last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tinyroberta_es.config import TrainConfig
from tinyroberta_es.features import Features
from tinyroberta_es.qa_loss import QALoss
from tinyroberta_es.train import train

VOCAB = 50


class TinyQAModel(torch.nn.Module):
    """Embedding, a tanh layer, LayerNorm, dropout and a start/end head: about 1,300 parameters.

    No parameter has a gradient that is zero in exact arithmetic (a bias of the head, or of the last norm,
    shifts every logit alike): Adam would blow the rounding noise of such gradients up to full-size steps.
    """

    def __init__(self, hidden: int = 16, dropout: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = torch.nn.Embedding(VOCAB, hidden)
            self.proj = torch.nn.Linear(hidden, hidden)
            self.norm = torch.nn.LayerNorm(hidden, bias=False)
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(hidden, 2, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        h = self.dropout(self.norm(torch.tanh(self.proj(self.embed(input_ids)))))  # (B, T, H)
        logits = self.head(h)  # (B, T, 2)
        return SimpleNamespace(start_logits=logits[..., 0], end_logits=logits[..., 1])


def synthetic_features(n: int = 24, seed: int = 0) -> Features:
    """`n` windows of 6 to 13 random tokens with random answer spans."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 14, size=n)
    starts = np.array([rng.integers(1, length - 2) for length in lengths], dtype=np.int64)
    return Features(
        input_ids=[rng.integers(3, VOCAB, size=length).astype(np.int32) for length in lengths],
        offsets=[np.full((length, 2), -1, dtype=np.int32) for length in lengths],
        example_index=np.arange(n, dtype=np.int64),
        start_positions=starts,
        end_positions=starts + rng.integers(0, 2, size=n),
        pad_token_id=1,
    )


def digest(module: torch.nn.Module) -> dict[str, object]:
    """A hash and a sum of all parameters."""
    tensors = [p.detach().cpu().contiguous() for p in module.parameters()]
    sha = hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()
    return {"sha256": sha, "sum": float(sum(t.double().sum() for t in tensors))}


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Parse the flags, train, write the digests; returns what it prints."""
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of sleep per forward pass")
    parser.add_argument("--digest-out", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    model = TinyQAModel(dropout=args.dropout)
    module = QALoss(model)
    if args.delay:
        module.register_forward_pre_hook(lambda *_: time.sleep(args.delay))
    initial = digest(model)
    config = TrainConfig(
        epochs=100.0,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=1e-2,
        warmup_ratio=0.1,
        precision="fp32",
        max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every,
        log_every=1,
        tensorboard=False,
        device="cpu",
    )
    result = train(
        module,
        synthetic_features(),
        config,
        args.output,
        save_model=lambda folder: torch.save(model.state_dict(), Path(folder) / "weights.pt"),
    )
    if args.digest_out:
        rank = int(os.environ.get("RANK", "0"))
        record = {"rank": rank, "initial": initial, "final": digest(model)}
        (Path(args.digest_out) / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {"step": result.step, "already_finished": result.already_finished}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
