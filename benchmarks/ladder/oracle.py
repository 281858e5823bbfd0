"""The `oracle` control: nano's experts replaced by perfect symbolic features, the token layout kept.

Each view token (the experts' feature_grid x feature_grid patches of every view, and the view's summary token
in front) gets [one-hot shape, one-hot colour, background] of the object that covers most of its patch, read
from the view's pixels (nearest of the corpus's colours; the shape comes from what the Encoder registered for
that image, since colours are unique within a ladder image). A fresh Linear + LayerNorm (nano's projector form,
named `projector` so levers such as `projector_ln_small` apply) maps it into the LLM. If the LLM learns to bind
with these features in this layout, what is missing on real images is in the experts; if not, it is in the
LLM or the layout.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from sphinx_x.canvas import ImageBatch, ImageViews
from sphinx_x.config import VisionConfig
from sphinx_x.data.synth.common import BACKGROUND, COLORS
from sphinx_x.data.synth.scenes import SHAPES

COLOR_NAMES = tuple(COLORS)
PALETTE = torch.tensor([COLORS[c] for c in COLOR_NAMES] + [BACKGROUND], dtype=torch.float32)  # (7, 3)
FEATURES = len(SHAPES) + len(COLOR_NAMES) + 1
MIN_SHARE = 0.05  # a patch with less of any colour than this is background

_shapes_by_image: dict[bytes, dict[str, str]] = {}


def _key(global_view: torch.Tensor) -> bytes:
    return hashlib.sha1(global_view.contiguous().numpy().tobytes()).digest()


def register(views: ImageViews, expert: str, objects) -> None:
    """Remember which shape each colour is in this image (keyed by its global view's pixels)."""
    _shapes_by_image[_key(views.views[expert][0])] = {o.color: o.shape for o in objects}


class OracleVisual(nn.Module):
    def __init__(self, vision: VisionConfig, d: int) -> None:
        super().__init__()
        self.expert = vision.experts[0].name
        self.grid = vision.feature_grid
        self.projector = nn.Sequential(nn.Linear(FEATURES, d), nn.LayerNorm(d))

    def symbols(self, views: torch.Tensor, shapes: dict[str, str]) -> torch.Tensor:
        """(V, 3, r, r) uint8 views of one image -> (V, 1 + G*G, FEATURES)."""
        v, _, r, _ = views.shape
        g, p = self.grid, r // self.grid
        px = views.float().permute(0, 2, 3, 1).reshape(v, r, r, 1, 3)
        nearest = ((px - PALETTE) ** 2).sum(-1).argmin(-1)  # (V, r, r) palette index
        onehot = nn.functional.one_hot(nearest, len(PALETTE)).float()  # (V, r, r, 7)
        share = onehot.reshape(v, g, p, g, p, -1).mean((2, 4)).reshape(v, g * g, -1)  # (V, G*G, 7)
        colour_share, colour = share[..., :-1].max(-1)
        out = torch.zeros(v, g * g, FEATURES)
        for i in range(v):
            for t in range(g * g):
                if colour_share[i, t] < MIN_SHARE:
                    out[i, t, -1] = 1
                    continue
                name = COLOR_NAMES[int(colour[i, t])]
                out[i, t, len(SHAPES) + int(colour[i, t])] = 1
                if name in shapes:
                    out[i, t, SHAPES.index(shapes[name])] = 1
        return torch.cat([out.mean(1, keepdim=True), out], dim=1)

    def batch_symbols(self, images: ImageBatch) -> torch.Tensor:
        """Every view of the batch -> (total_views, 1 + G*G, FEATURES), image by image."""
        views = images.views[self.expert]
        feats, v = [], 0
        for skipped in images.skipped.tolist():
            n = 1 + sum(not s for s in skipped)
            one = views[v : v + n]
            feats.append(self.symbols(one, _shapes_by_image.get(_key(one[0]), {})))
            v += n
        return torch.cat(feats)

    def forward(self, images: ImageBatch) -> torch.Tensor:
        weight = self.projector[0].weight
        return self.projector(self.batch_symbols(images).to(weight.device, weight.dtype))


def install(model: nn.Module) -> None:
    model.visual = OracleVisual(model.config.vision, model.llm.config.hidden_size)


class OracleEmbedVisual(OracleVisual):
    """The `oracle-embed` control: no projector, each token is E[colour] + E[shape] in the LLM's own word
    embeddings (" the" for background; the summary token the mean), as benchmarks/binding/jointbind.py's
    `--features embed` but in the real token layout. Its trained LLM is a stand-in that already binds."""

    def __init__(self, vision: VisionConfig, llm: nn.Module, tokenizer) -> None:
        super().__init__(vision, llm.config.hidden_size)
        del self.projector
        self.embed = [llm.get_input_embeddings()]  # a list: not registered twice as a submodule

        def first_id(word: str) -> int:
            return tokenizer.encode(" " + word, add_special_tokens=False)[0]

        words = [first_id(s) for s in SHAPES] + [first_id(c) for c in COLOR_NAMES] + [first_id("the")]
        self.register_buffer("word_ids", torch.tensor(words), persistent=False)

    def forward(self, images: ImageBatch) -> torch.Tensor:
        table = self.embed[0](self.word_ids)  # (FEATURES, d)
        return self.batch_symbols(images).to(table.dtype) @ table


def install_embed(model: nn.Module) -> None:
    from sphinx_x.tokenizer import load_tokenizer

    tok = model.tokenizer or load_tokenizer(model.config.tokenizer or "nano")
    model.visual = OracleEmbedVisual(model.config.vision, model.llm, tok)


class OracleWithExpertsVisual(OracleVisual):
    """The `oracle+experts` control: the oracle's exact symbols concatenated, token by token, with the frozen
    pretrained experts' own features (`--experts`), through one fresh Linear + LayerNorm. It asks whether the
    experts' other channels (their scale and variation) keep the LLM from using symbols that are there: if this
    binds like `oracle`, what the experts lack is exactness of what their tokens say, not a clean space around it."""

    def __init__(self, vision: VisionConfig, d: int, experts: nn.ModuleDict) -> None:
        super().__init__(vision, d)
        self.experts = experts  # frozen (requires_grad False, eval mode): from the model's own visual module
        channels = sum(e.channels for e in vision.experts)
        self.projector = nn.Sequential(nn.Linear(FEATURES + channels, d), nn.LayerNorm(d))

    def forward(self, images: ImageBatch) -> torch.Tensor:
        weight = self.projector[0].weight
        feats = [self.experts[name](images.views[name]).to(weight.dtype) for name in self.experts]
        symbols = self.batch_symbols(images).to(weight.device, weight.dtype)
        return self.projector(torch.cat([symbols, *feats], dim=-1))


def install_with_experts(model: nn.Module) -> None:
    model.visual = OracleWithExpertsVisual(model.config.vision, model.llm.config.hidden_size, model.visual.experts)

