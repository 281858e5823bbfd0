"""Evaluation: standard metrics (`sphinx_x.eval.metrics`: `METRICS`, `score_rows`) and the benchmark harness."""
