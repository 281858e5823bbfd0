"""The Gradio page of `sphinx-x demo`: images and the drawn answer on the left, the chat on the right,
generation settings and example prompts below. Handlers are `sphinx_x.demo.callbacks.DemoCallbacks`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sphinx_x.demo.callbacks import RESET_OUTPUTS, SUBMIT_OUTPUTS, UPLOAD_OUTPUTS, DemoCallbacks
from sphinx_x.demo.conversation import Conversation, DemoSettings
from sphinx_x.demo.examples import EXAMPLE_PROMPTS
from sphinx_x.demo.render import ANNOTATION_HEADERS

INTRO = """# SPHINX-X: {name}
Upload one or more images, ask a question, and read the answer as it is generated. Boxes, points,
`<p>phrase</p>` groundings and marks in the answer are drawn on the latest image; later questions continue
the conversation (**Reset** starts a new one)."""


# Answers shown as written: Gradio's chat text collapses runs of spaces (white-space: pre-line), which
# matters for OCR and code answers.
CSS = "#chat .message-content span.md { white-space: pre-wrap; }"


def build_app(model: Any, settings: DemoSettings, name: str = "model", api: bool = True) -> gr.Blocks:
    """The page. `api=False` hides its events from Gradio's API (no API page, not callable by
    `gradio_client`): only the page itself can ask the model. Share buttons (they post to Hugging Face) are
    left out of every component."""
    cb = DemoCallbacks(model, settings)
    visibility = "public" if api else "private"
    with gr.Blocks(title=f"SPHINX-X demo: {name}", analytics_enabled=False) as app:
        gr.Markdown(INTRO.format(name=name))
        c: dict[str, Any] = {"state": gr.State(Conversation())}
        with gr.Row():
            with gr.Column(scale=5):
                c["upload"] = gr.File(file_count="multiple", label=f"Images (up to {settings.max_images} per "
                                      "question)", elem_id="upload", height=120)
                c["overlay"] = gr.Image(label="The answer drawn on the image", type="pil", format="png",
                                        interactive=False, elem_id="overlay", height=420,
                                        buttons=["download", "fullscreen"])
                c["annotations"] = gr.Dataframe(headers=ANNOTATION_HEADERS, label="Boxes and points",
                                                interactive=False, elem_id="annotations", wrap=True)
            with gr.Column(scale=6):
                c["chat"] = gr.Chatbot(label="Conversation", elem_id="chat", height=420, feedback_options=None,
                                      render_markdown=False, buttons=["copy", "copy_all"])
                c["question"] = gr.Textbox(label="Question", placeholder="Ask about the image…", lines=2,
                                           elem_id="question")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    reset = gr.Button("Reset", elem_id="reset")
                c["status"] = gr.Markdown(elem_id="status")
                with gr.Accordion("Generation settings", open=False):
                    max_new = gr.Slider(1, settings.max_new_tokens, value=settings.default_max_new_tokens, step=1,
                                        label="Max new tokens", elem_id="max-new-tokens")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                gr.Examples([[prompt] for _, prompt in EXAMPLE_PROMPTS], inputs=[c["question"]],
                            example_labels=[label for label, _ in EXAMPLE_PROMPTS], label="Example prompts")

        def out(names: tuple[str, ...]) -> list[Any]:
            return [c[n] for n in names]

        c["upload"].change(cb.upload, [c["upload"], c["state"]], out(UPLOAD_OUTPUTS), api_visibility=visibility)
        ask = ([c["question"], c["state"], max_new, temperature, top_p], out(SUBMIT_OUTPUTS))
        # both ways of asking share one queue slot: one answer at a time, the model is shared by every visitor
        send.click(cb.submit, *ask, api_name="ask", api_visibility=visibility, concurrency_id="model")
        c["question"].submit(cb.submit, *ask, api_visibility=visibility, concurrency_id="model")
        reset.click(cb.reset, None, out(RESET_OUTPUTS), api_name="reset", api_visibility=visibility)
    return app.queue(default_concurrency_limit=1)


def launch_options(share: bool, share_nothing: bool, max_upload_mb: float) -> dict[str, Any]:
    """`Blocks.launch` keywords: a public gradio.live link only with `share`, never an MCP server, uploads
    up to `max_upload_mb`; `share_nothing` also drops the footer (API page, settings, "built with")."""
    opts: dict[str, Any] = {"share": share, "max_file_size": int(max_upload_mb * 2**20), "mcp_server": False,
                            "css": CSS}
    if share_nothing:
        opts["footer_links"] = []
    return opts


def launch(model: Any, settings: DemoSettings, host: str, port: int, name: str = "model", share: bool = False,
           share_nothing: bool = False, max_upload_mb: float = 32.0, block: bool = True) -> gr.Blocks:
    if share and share_nothing:
        raise ValueError("share and share_nothing exclude each other")
    app = build_app(model, settings, name, api=not share_nothing)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
               **launch_options(share, share_nothing, max_upload_mb))
    return app
