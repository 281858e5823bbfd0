"""Example prompts for SPHINX's tasks, in the wording the training data uses (`sphinx_x.data.synth`), so a
model trained on that data answers them in its own format (boxes as `[x1,y1,x2,y2]` on the 0-1 canvas)."""

from __future__ import annotations

from sphinx_x.data.synth.ocr import SPOTTING_PROMPT, TRANSCRIBE_PROMPT
from sphinx_x.data.synth.scenes import DETECTION_PROMPT, GROUNDED_CAPTION_PROMPT, REC_PROMPT

# (label, prompt)
EXAMPLE_PROMPTS: list[tuple[str, str]] = [
    ("Describe with boxes", GROUNDED_CAPTION_PROMPT),
    ("Detect all X", DETECTION_PROMPT.format("circles")),
    ("Read the text", TRANSCRIBE_PROMPT),
    ("Spot the text (boxes)", SPOTTING_PROMPT),
    ("Referring expression", REC_PROMPT.format("the red object")),
    ("Plain question", "What is in the image?"),
]
