"""Importers for checkpoints released by other codebases (`sphinx-x convert ...`).

accessory.py: LLaMA2-Accessory SPHINX releases (model-parallel shards merged by the official rules,
wq/wk permuted to transformers' rotary layout, streamed into a SPHINX-X model directory).
"""
