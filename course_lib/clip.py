"""CLIP for notebook 05: pretrained open_clip weights when available, else the course's own small CLIP.

* :func:`load_pretrained` finds open_clip weights in a local file (``$COURSE_CLIP_WEIGHTS``),
  in open_clip's Hugging Face cache, or downloads them when allowed; returns None otherwise.
* :func:`small_clip` builds open_clip's own ``CLIP`` class with a small config;
  :func:`train_small_clip` trains it with open_clip's ``ClipLoss`` on flower photos captioned by
  :func:`caption` (species + dominant colour measured from the pixels + close-up or not).
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

from torch.utils.data import DataLoader, RandomSampler

from .config import downloads_allowed
from .data import ImageContextDataset, to_display
from .storage import load_tensors, save_atomic
from .train import History, train

PRETRAINED = ("ViT-B-32", "laion2b_s34b_b79k")
COLOURS = ("red", "pink", "orange", "yellow", "white", "purple")


# --- captions from pixels ------------------------------------------------------------------

def _hsv(image: torch.Tensor):
    """Hue (degrees), saturation and value of every pixel of an RGB image in [-1, 1]."""
    hsv = rgb_to_hsv(to_display(image).permute(1, 2, 0).numpy().reshape(-1, 3))
    return hsv[:, 0] * 360, hsv[:, 1], hsv[:, 2]


def _white(hue, sat, val):
    """Bright, unsaturated pixels that are not sky or clouds (bluish): white petals."""
    bluish = (hue >= 170) & (hue < 260) & (sat > 0.06)
    return (sat < 0.22) & (val > 0.7) & ~bluish


def dominant_colour(image: torch.Tensor) -> str:
    """Name of the dominant flower colour of one RGB image in [-1, 1] (from its central 3/4).

    Pixels are classed in HSV: low saturation and bright -> white; saturated pixels by hue
    (green foliage and blue sky are ignored as background). The most frequent class wins.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one RGB image (3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    hue, sat, val = _hsv(image[:, h // 8: h - h // 8, w // 8: w - w // 8])
    bright = val > 0.35
    counts = {"white": int(_white(hue, sat, val).sum())}
    coloured = bright & (sat >= 0.22)
    reddish = (hue < 15) | (hue >= 345)
    counts["red"] = int((coloured & reddish & (sat > 0.55)).sum())
    counts["pink"] = int((coloured & (((hue >= 290) & (hue < 345)) | (reddish & (sat <= 0.55)))).sum())
    counts["orange"] = int((coloured & (hue >= 15) & (hue < 40)).sum())
    counts["yellow"] = int((coloured & (hue >= 40) & (hue < 70)).sum())
    counts["purple"] = int((coloured & (hue >= 250) & (hue < 290)).sum())
    return max(counts, key=counts.get)


def is_close_up(image: torch.Tensor, colour: str | None = None) -> bool:
    """True when the flower's colour covers more than 40% of the whole picture."""
    colour = colour or dominant_colour(image)
    hue, sat, val = _hsv(image)
    if colour == "white":
        share = _white(hue, sat, val).mean()
    else:
        target = {"red": 0, "pink": 330, "orange": 27, "yellow": 55, "purple": 270}[colour]
        dist = np.minimum(abs(hue - target), 360 - abs(hue - target))
        share = ((dist < 25) & (sat >= 0.22) & (val > 0.35)).mean()
    return bool(share > 0.4)


def caption(image: torch.Tensor, species: str) -> str:
    """E.g. "a close-up photo of a yellow sunflower" or "a photo of an orange tulip"."""
    colour = dominant_colour(image)
    kind = "a close-up photo" if is_close_up(image, colour) else "a photo"
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{kind} of {article} {colour} {species}"


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

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if isinstance(
            self.model.text_projection, torch.Tensor) else self.model.text_projection.out_features

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> CLIP's input size and normalisation."""
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = v2.functional.resize(x, [self.image_size, self.image_size], antialias=True)
        return v2.functional.normalize(x, list(self.mean), list(self.std))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_image(self.preprocess(images).to(device), normalize=True)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(list(texts)).to(device), normalize=True)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of many images, in batches, without gradients, on the CPU."""
        self.model.eval()
        return torch.cat([self.encode_images(b).cpu() for b in images.split(batch_size)])

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        self.model.eval()
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

            repo, filename = os.path.split(hub)
            cached = try_to_load_from_cache(repo, filename or "open_clip_pytorch_model.bin")
            if isinstance(cached, str):
                where = cached
    if where is None and not allow_download:
        return None, (f"no {name} ({tag}) weights in $COURSE_CLIP_WEIGHTS or open_clip's cache, "
                      "and downloads are disabled")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=where or tag)
    except Exception as err:  # offline, interrupted download, corrupt file ...
        return None, f"loading {name} ({tag}) failed: {type(err).__name__}: {err}"
    norm = next(t for t in preprocess.transforms if hasattr(t, "mean"))
    clip = CourseClip(model.eval(), open_clip.get_tokenizer(name), model.visual.image_size[0],
                      tuple(norm.mean), tuple(norm.std), f"pretrained open_clip {name} ({tag})")
    return clip, f"loaded from {where or 'a download'}"


# --- 2. the course's small CLIP ----------------------------------------------------------------

def small_clip_config(image_size: int = 32, embed_dim: int = 128, width: int = 128,
                      layers: int = 4, context_length: int = 16) -> dict:
    """open_clip model config of a small CLIP: ViT (patch 4) and text transformer, 4 layers each."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "patch_size": image_size // 8, "width": width,
                       "layers": layers, "head_width": 32, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width,
                     "heads": width // 32, "layers": layers, "mlp_ratio": 2.0},
    }


def small_clip(config: dict | None = None, source: str = "the course's small CLIP (untrained)"
               ) -> CourseClip:
    """open_clip's ``CLIP`` class built from :func:`small_clip_config`; images normalised to [-1, 1]."""
    config = config or small_clip_config()
    model = open_clip.CLIP(**config)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(
        context_length=config["text_cfg"]["context_length"])
    return CourseClip(model, tokenizer, config["vision_cfg"]["image_size"], (0.5,) * 3, (0.5,) * 3,
                      source)


def train_small_clip(clip: CourseClip, images: torch.Tensor, captions: Sequence[str],
                     steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
                     device: torch.device | str = "cpu", seed: int = 0) -> History:
    """Contrastive training (open_clip ``ClipLoss``): each image must pick its own caption in the batch."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    data = ImageContextDataset(clip.preprocess(images), clip.tokenizer(list(captions)), flip=True)
    sampler = RandomSampler(data, num_samples=steps * batch_size,
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=True)
    loss = open_clip.ClipLoss()

    def loss_fn(model, batch):
        with torch.no_grad():  # as in open_clip's training: temperature scale at most 100
            model.logit_scale.clamp_(0, math.log(100))
        image_features, text_features, logit_scale = model(*batch)[:3]
        return loss(image_features, text_features, logit_scale)

    # weight decay on weight matrices only, not on gains, biases, embeddings or the temperature
    decay = [p for n, p in clip.model.named_parameters()
             if p.ndim >= 2 and "embedding" not in n and "token" not in n]
    rest = [p for p in clip.model.parameters() if all(p is not q for q in decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    history = train(clip.model, loader, loss_fn, epochs=1, device=device, optimizer=optimizer,
                    grad_clip=1.0, desc="small CLIP")
    clip.source = "the course's small CLIP, trained here on the flower photos"
    return history


def save_small_clip(clip: CourseClip, folder: str | os.PathLike, config: dict) -> Path:
    """Write an open_clip ``local-dir:`` folder (config + weights), atomically (temp dir + rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        (tmp / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": config,
            "preprocess_cfg": {"mean": list(clip.mean), "std": list(clip.std)},
        }, indent=2))
        torch.save(clip.model.state_dict(), tmp / "open_clip_pytorch_model.bin")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_small_clip(folder: str | os.PathLike) -> CourseClip:
    """Read a folder written by :func:`save_small_clip` through open_clip's ``local-dir:`` schema."""
    folder = Path(folder).resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"no small CLIP saved in {folder}; train it first")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    clip = small_clip(config, source=f"the course's small CLIP, loaded from {folder}")
    clip.model = model.eval()
    return clip


# --- 3. using a CLIP -------------------------------------------------------------------------

def cached_image_embeddings(clip: CourseClip, images: torch.Tensor, path: str | os.PathLike
                            ) -> torch.Tensor:
    """Image embeddings, computed once and reused while the images and the CLIP are unchanged."""
    path = Path(path)
    digest = hashlib.sha1(images.detach().cpu().contiguous().numpy().tobytes())
    for tensor in clip.model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    key = [list(images.shape), digest.hexdigest()]
    if path.is_file():
        saved = load_tensors(path)
        if saved.get("key") == key:
            return saved["embeddings"]
    embeddings = clip.embed_images(images)
    save_atomic({"key": key, "embeddings": embeddings}, path)
    return embeddings


def caption_embeddings(clip: CourseClip, captions: Sequence[str]) -> torch.Tensor:
    """Text embeddings (N, d) of N captions, each distinct caption embedded once."""
    distinct = sorted(set(captions))
    table = clip.embed_text(distinct)
    index = {text: i for i, text in enumerate(distinct)}
    return table[torch.tensor([index[text] for text in captions])]


def zero_shot(clip: CourseClip, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Index of the best-matching prompt for each image (cosine similarity of embeddings)."""
    return (clip.embed_images(images) @ clip.embed_text(prompts).T).argmax(dim=1)


def clip_score(clip: CourseClip, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity between each image and its own prompt (Hessel et al. 2021, without the 2.5·max(·, 0))."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return (clip.embed_images(images) * clip.embed_text(prompts)).sum(dim=1)


# --- 4. one call for notebook 05 ---------------------------------------------------------------

def get_clip(images: torch.Tensor, captions: Sequence[str], folder: str | os.PathLike,
             steps: int = 300, device: torch.device | str = "cpu",
             allow_download: bool | None = None) -> tuple[CourseClip, History | None]:
    """The CLIP that 05 uses: pretrained weights if available, else the small CLIP saved in
    ``folder``, else a small CLIP trained now on ``images``/``captions`` (and saved there).

    Returns the CLIP (in eval mode, on ``device``) and the training History when it trained one.
    Prints which CLIP it chose and why.
    """
    clip, why = load_pretrained(allow_download=allow_download)
    history = None
    if clip is None:
        print("No pretrained CLIP:", why)
        try:
            clip = load_small_clip(folder)
        except FileNotFoundError:
            config = small_clip_config()
            clip = small_clip(config)
            history = train_small_clip(clip, images, captions, steps=steps, device=device)
            save_small_clip(clip, folder, config)
    clip.model.to(device).eval()
    print(f"THIS RUN USES: {clip.source}")
    return clip, history
