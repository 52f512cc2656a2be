"""The settings of `tinyroberta-es serve`, one field per flag; the CLI reads its defaults here."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinyroberta_es.errors import UserError


@dataclass
class ServeConfig:
    """Batching, limits and operations of the server; each field is the `tinyroberta-es serve` flag."""

    max_batch: int = 16  # questions per model call
    # Tokens per model call (a window larger than this runs alone). A short question that arrives while a
    # long context's windows run waits for that call: on 2 CPU cores 1024 met "short p99 at most 2x beside
    # 20k-character contexts" where 4096 missed it, at no loss of throughput (benchmarks/serve_load.py). A GPU
    # wants larger calls: raise it there (Text Embeddings Inference's default is 16384).
    max_batch_tokens: int = 1_024
    batch_wait_ms: float = 5.0  # how long the first queued question waits for others to join its batch
    max_context_chars: int = 20_000  # longer contexts get 413 context_too_long
    max_question_chars: int = 1_000  # longer questions get 413 question_too_long
    max_batch_items: int = 32  # more items (or SQuAD questions) in one request get 413 too_many_items
    max_body_bytes: int = 1_000_000  # larger bodies get 413 body_too_large
    max_queue_tokens: int = 262_144  # tokens waiting for the model; a request that would pass it gets 503
    request_timeout_s: float = 30.0  # the deadline of a request (X-Request-Timeout may ask for less)
    shutdown_timeout_s: float = 20.0  # on SIGTERM: how long queued requests may still be answered
    model_name: str = "model"  # shown by /health and /metrics (the backend is the answerer's runner's)
    api_key: str | None = field(default=None, repr=False)  # when set, /v1/* need "Authorization: Bearer"

    def __post_init__(self) -> None:
        problems = [
            f"--{name.replace('_', '-')} {value} must be {rule}"
            for name, value, ok, rule in (
                ("max_batch", self.max_batch, self.max_batch >= 1, "at least 1"),
                ("max_batch_tokens", self.max_batch_tokens, self.max_batch_tokens >= 1, "at least 1"),
                ("batch_wait_ms", self.batch_wait_ms, 0 <= self.batch_wait_ms <= 10_000, "in 0..10000"),
                ("max_context_chars", self.max_context_chars, self.max_context_chars >= 1, "at least 1"),
                ("max_question_chars", self.max_question_chars, self.max_question_chars >= 1, "at least 1"),
                ("max_batch_items", self.max_batch_items, self.max_batch_items >= 1, "at least 1"),
                ("max_body_bytes", self.max_body_bytes, self.max_body_bytes >= 1024, "at least 1024"),
                (
                    "max_queue_tokens",
                    self.max_queue_tokens,
                    self.max_queue_tokens >= self.max_batch_tokens,
                    f"at least --max-batch-tokens ({self.max_batch_tokens})",
                ),
                ("request_timeout_s", self.request_timeout_s, self.request_timeout_s > 0, "above 0"),
                ("shutdown_timeout_s", self.shutdown_timeout_s, self.shutdown_timeout_s >= 0, "at least 0"),
            )
            if not ok
        ]
        if self.api_key is not None:
            self.api_key = self.api_key.strip()  # a key read from a file or variable, its newline dropped
        if self.api_key is not None and not self.api_key:
            problems.append("the API key is empty: put the key in the file (or unset the variable)")
        if problems:
            raise UserError("; ".join(problems))
