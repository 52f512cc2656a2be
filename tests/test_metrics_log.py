"""metrics.jsonl is standard JSON: a diverged loss or metric is written as null, never NaN or Infinity."""

from __future__ import annotations

import math

from cli_helpers import strict_loads
from tinyroberta_es.metrics_log import MetricsLog


def test_eval_rows_with_non_finite_values_are_standard_json(tmp_path):
    log = MetricsLog(tmp_path, total=10, start_step=0, tensorboard=False, enabled=True)
    log.write_eval(3, 0.5, 12.0, {"f1": math.nan, "exact_match": math.inf, "loss": 1.5}, best=False)
    [line] = (tmp_path / "metrics.jsonl").read_text().splitlines()
    row = strict_loads(line)
    assert row["eval"] == {"f1": None, "exact_match": None, "loss": 1.5}
    assert row["step"] == 3
