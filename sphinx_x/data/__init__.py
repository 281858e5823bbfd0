"""Everything between files on disk and a training batch (README "Data").

Modules (import them directly; this package imports nothing heavy so `sphinx_x.data.geometry` stays cheap):
  readers       JSON / lazy JSONL record readers, the mix YAML (`load_mix`), `DataError`
  conversation  record validation -> `Sample` (messages with chat roles, image paths)
  templates     dialogue templates (`get_template("accessory" | "chat", tokenizer)`)
  encode        `DialogueEncoder`: tokens, image-token runs, label masks, truncation
  sampler       `TypeGroupedBatchSampler`: one type per global batch, length buckets, resume, rank slices
  dataset       `MixDataset`, `Collator`, `build_dataloader`
  check         `check_mix` behind `sphinx-x data check`
  geometry      boxes, points, grounded phrases and marks in text
  synth         the synthetic multi-domain corpus
"""
