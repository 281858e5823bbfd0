"""The synthetic multi-domain corpus (toy-scale SPHINX-X mix) and its held-out synth-bench.

One module per domain (scenes, ocr, charts, som, text); `corpus` writes everything to disk.
"""

from sphinx_x.data.synth.corpus import BENCH_TASKS, DOMAINS, generate_corpus, make_sample

__all__ = ["BENCH_TASKS", "DOMAINS", "generate_corpus", "make_sample"]
