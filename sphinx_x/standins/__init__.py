"""nano's pretrained stand-ins: the vision experts (for CLIP / DINOv2) and the LLM (for the paper's pretrained
LLM), how they are made (`sphinx-x pretrain-experts`, `sphinx-x pretrain-llm`, `sphinx-x build-standins`)
and the set shipped in the package (docs/standins.md)."""
