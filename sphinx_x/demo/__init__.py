"""`sphinx-x demo`: a Gradio page to try a model: upload images, chat with streamed answers, and see the
answer's boxes, points, grounded phrases and marks drawn on the image.

- `sphinx_x.demo.conversation`: the conversation state, upload checks and the streamed reply (no Gradio);
- `sphinx_x.demo.render`: what the page shows for an answer (overlay image, annotation rows, chat text);
- `sphinx_x.demo.callbacks`: the page's event handlers, plain functions testable without a browser;
- `sphinx_x.demo.examples`: example prompts for SPHINX's tasks;
- `sphinx_x.demo.app`: the Gradio layout and `launch`.
"""

from sphinx_x.demo.conversation import Conversation, DemoSettings

__all__ = ["Conversation", "DemoSettings"]
