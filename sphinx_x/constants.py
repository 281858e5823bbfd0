"""Constants shared by data, model and inference code."""

IGNORE_INDEX = -100  # label of positions that carry no loss (transformers / PyTorch convention)
IMAGE_TOKEN_ID = -200  # input id of every visual-token position; replaced by image embeddings
IMAGE_PLACEHOLDER = "<image>"  # where an image goes in a conversation's text
