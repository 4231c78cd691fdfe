import gzip
import os
import shutil
from pathlib import Path

import pytest
import torch

from course_lib import data


def _fake_idx(root: Path, name: str) -> None:
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    for f in data.IDX_FILES:
        (raw / f).write_bytes(b"x")


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty env dir, repo data dir and system dir, wired into the lookup."""
    env, repo, system = tmp_path / "env", tmp_path / "repo", tmp_path / "system"
    for p in (env, repo, system):
        p.mkdir()
    monkeypatch.setenv("COURSE_DATA_DIR", str(env))
    monkeypatch.setattr(data, "repo_data_dir", lambda: repo)
    monkeypatch.setattr(data, "SYSTEM_DIRS", (system,))
    return env, repo, system


def test_env_var_wins_over_repo_data(places):
    env, repo, _ = places
    _fake_idx(env, "MNIST")
    _fake_idx(repo, "MNIST")
    assert data.find_data_root("MNIST", allow_download=False) == env.resolve()


def test_repo_data_used_when_env_var_lacks_dataset(places):
    _, repo, _ = places
    _fake_idx(repo, "MNIST")
    assert data.find_data_root("MNIST", allow_download=False) == repo


def test_system_gz_files_are_unpacked_into_repo_data(places):
    _, repo, system = places
    src = system / "fashion-mnist"
    src.mkdir()
    for f in data.IDX_FILES:
        with gzip.open(src / f"{f}.gz", "wb") as g:
            g.write(f"payload {f}".encode())
    assert data.find_data_root("FashionMNIST", allow_download=False) == repo
    unpacked = repo / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    assert unpacked.read_bytes() == b"payload train-images-idx3-ubyte"


def test_not_found_lists_every_place_and_the_fix(places):
    env, repo, system = places
    with pytest.raises(data.DataNotFoundError) as info:
        data.find_data_root("flowers", allow_download=False)
    msg = str(info.value)
    for place in (env.resolve(), repo, system):
        assert str(place) in msg
    assert "COURSE_DATA_DIR" in msg and "Fix" in msg and "data/README.md" in msg
    assert "flowers/ with a folder per species (daisy, dandelion, rose, sunflower, tulip)" in msg


def test_failed_download_is_reported_not_raised_raw(places, monkeypatch):
    import socket
    seen, before = [], socket.getdefaulttimeout()

    def offline(name, target):
        seen.append(socket.getdefaulttimeout())
        raise OSError("network unreachable")
    monkeypatch.setattr(data, "_download", offline)
    monkeypatch.setenv("COURSE_NO_DOWNLOAD", "0")
    with pytest.raises(data.DataNotFoundError, match="download failed: OSError: network unreachable") as info:
        data.find_data_root("MNIST", allow_download=True)
    assert "MNIST/raw/ with its four idx files" in str(info.value)
    assert "run once with internet access so it downloads" in str(info.value)
    assert seen == [data.DOWNLOAD_TIMEOUT] and socket.getdefaulttimeout() == before   # restored
    monkeypatch.setenv("COURSE_NO_DOWNLOAD", "1")    # the reason to say: the switch, not the network
    with pytest.raises(data.DataNotFoundError, match="unset COURSE_NO_DOWNLOAD"):
        data.find_data_root("MNIST")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.find_data_root("CIFAR10")


def test_transform_and_inverse_round_trip():
    img = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    x = data.image_transform(16, 1)(img)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(data.to_display(x), img.float() / 255, atol=1e-6)
    assert data.to_display(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"x.float\(\) / 127.5 - 1"):   # pixels, not the course's floats
        data.to_display(img)


def test_flip_flips_only_width():
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    ds = data.ImageDataset(images, torch.tensor([0]), ["a"], flip=True)
    seen = {tuple(ds[0][0].flatten().tolist()) for _ in range(50)}
    assert seen == {tuple(images.flatten().tolist()), tuple(images.flip(-1).flatten().tolist())}


def test_context_dataset_applies_its_transform_after_the_flip():
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    ds = data.ImageContextDataset(images, torch.zeros(1, 2), flip=True, transform=lambda x: x[..., :1])
    seen = {tuple(ds[0][0].flatten().tolist()) for _ in range(50)}
    assert seen == {(0.0, 4.0, 8.0, 12.0), (3.0, 7.0, 11.0, 15.0)}


@pytest.mark.usefixtures("data_available")
def test_real_fashion_mnist_shapes_and_range():
    ds = data.load_fashion_mnist(size=16, limit=500)
    assert ds.images.shape == (500, 1, 16, 16)
    assert ds.images.min() == -1 and 0.9 < ds.images.max() <= 1  # resizing softens the peaks
    assert 0 <= ds.labels.min() and ds.labels.max() <= 9
    assert len(ds.classes) == 10 and ds.classes[9] == "Ankle boot"
    # FashionMNIST's mean pixel is 0.286 in [0, 1], i.e. about -0.43 in [-1, 1]
    full = data.load_fashion_mnist(size=28, flip=False)
    assert len(full) == 60000
    assert abs(full.images.mean().item() - (2 * 0.2860 - 1)) < 0.01


@pytest.mark.usefixtures("data_available")
def test_real_mnist_test_split():
    ds = data.load_mnist(train=False)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist()[:2] == [980, 1135]


@pytest.mark.usefixtures("data_available")
def test_real_flowers_default_classes_and_crop():
    ds = data.load_flowers(size=32, limit=64)
    assert ds.images.shape == (64, 3, 32, 32)
    assert ds.classes == ["daisy", "rose", "sunflower"]
    assert set(ds.labels.tolist()) <= {0, 1, 2}
    assert -1 <= ds.images.min() < ds.images.max() <= 1
    assert len(data.flower_files(["tulip"])) == 980
    assert len(ds.names) == 64 and all(n.split("/")[0] in ds.classes and n.endswith(".jpg")
                                       for n in ds.names)
    assert [ds.classes.index(n.split("/")[0]) for n in ds.names] == ds.labels.tolist()


def test_a_download_without_certificates_says_how_to_get_them(places, monkeypatch):
    """urllib's error when Python cannot check the server's certificate (macOS's python.org
    builds): the message says how to give Python certificates."""
    import ssl
    import urllib.error

    def unverified(name, target):
        raise urllib.error.URLError(ssl.SSLCertVerificationError(
            1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    monkeypatch.setattr(data, "_download", unverified)
    monkeypatch.setenv("COURSE_NO_DOWNLOAD", "0")
    with pytest.raises(data.DataNotFoundError, match="Install Certificates.command") as info:
        data.find_data_root("MNIST", allow_download=True)
    assert "SSL_CERT_FILE" in str(info.value)
    monkeypatch.setattr(data, "_download", lambda name, target: (_ for _ in ()).throw(
        OSError("network unreachable")))
    with pytest.raises(data.DataNotFoundError) as info:
        data.find_data_root("MNIST", allow_download=True)
    assert "SSL_CERT_FILE" not in str(info.value)


def test_downloaded_photos_are_shrunk_to_the_offline_copys_short_side(tmp_path):
    from PIL import Image

    (tmp_path / "daisy").mkdir()
    Image.new("RGB", (300, 200), (200, 180, 20)).save(tmp_path / "daisy" / "big.jpg")
    Image.new("RGB", (100, 90), (20, 180, 20)).save(tmp_path / "daisy" / "small.jpg")
    assert data.shrink_photos(tmp_path, short_side=128) == 1
    assert Image.open(tmp_path / "daisy" / "big.jpg").size == (192, 128)
    assert Image.open(tmp_path / "daisy" / "small.jpg").size == (100, 90)
    assert data.shrink_photos(tmp_path, short_side=128) == 0     # a second pass changes nothing


def test_unknown_flower_class():
    with pytest.raises(ValueError, match="unknown flower classes"):
        data.flower_files(["orchid"])


def test_loader_batches_and_drops_last():
    ds = data.ImageDataset(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long), ["a"])
    batches = list(data.make_loader(ds, batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4]


def _nbval_conftest(monkeypatch):
    """notebooks/conftest.py as a module, without letting it change this process's profile."""
    import importlib.util

    for name, value in (("COURSE_PROFILE", "full"), ("MPLBACKEND", "Agg")):
        monkeypatch.setenv(name, os.environ.get(name, value))
    spec = importlib.util.spec_from_file_location(
        "nbval_conftest", Path(__file__).resolve().parent.parent / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nbval_skips_the_notebooks_with_the_reason_when_data_cannot_be_had(monkeypatch):
    """No datasets and no downloads: every notebook skipped, saying why; under CI they run (and
    fail); with downloads allowed they run and fetch the data."""
    import course_lib.data as data_module

    def nowhere(name, allow_download=None):
        raise data_module.DataNotFoundError(f"{name} is in none of: /nowhere")

    monkeypatch.setattr(data_module, "find_data_root", nowhere)
    conftest = _nbval_conftest(monkeypatch)

    class Item:
        def __init__(self):
            self.markers = []

        def add_marker(self, marker):
            self.markers.append(marker)

    monkeypatch.setenv("COURSE_NO_DOWNLOAD", "1")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("COURSE_REQUIRE_DATA", raising=False)
    items = [Item(), Item()]
    conftest.pytest_collection_modifyitems(None, items)
    for item in items:
        (marker,) = item.markers
        assert marker.name == "skip" and "COURSE_DATA_DIR" in marker.kwargs["reason"]
        assert "FashionMNIST is in none of: /nowhere" in marker.kwargs["reason"]
    for required in ("CI", "COURSE_REQUIRE_DATA"):   # CI, and .ci/run's own switch: no skips
        monkeypatch.setenv(required, "1")
        items = [Item()]
        conftest.pytest_collection_modifyitems(None, items)
        assert items[0].markers == []
        monkeypatch.delenv(required)
    monkeypatch.setenv("COURSE_NO_DOWNLOAD", "0")
    assert conftest.missing_data() is None


def test_a_flowers_folder_missing_classes_is_not_taken_and_the_message_says_why(places):
    """TensorFlow's archive unpacked by hand names its folders in the plural: 04 and 05 would
    have trained on the one class spelt alike (none here), so the folder is refused, with the fix."""
    env, repo, _ = places
    for name in ("daisy", "dandelions", "roses", "sunflowers", "tulips"):
        (env / "flowers" / name).mkdir(parents=True)
    with pytest.raises(data.DataNotFoundError) as info:
        data.find_data_root("flowers", allow_download=False)
    msg = str(info.value)
    assert "lacks the class folder(s) dandelion, rose, sunflower, tulip" in msg, msg
    assert "rename dandelions, roses, sunflowers, tulips to the singular" in msg, msg
    assert "allow_download=False" in msg or "COURSE_NO_DOWNLOAD" in msg
    for name in data.FLOWER_CLASSES:
        (repo / "flowers" / name).mkdir(parents=True)
    assert data.find_data_root("flowers", allow_download=False) == repo


def test_an_interrupted_flower_download_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    """A truncated archive is deleted (torchvision would take any file of that name again) and
    no half-made flowers/ is left for the next lookup."""
    import torchvision.datasets.utils as tv_utils

    def truncated(url, download_root, extract_root=None, **kwargs):
        (Path(download_root) / Path(url).name).write_bytes(b"half an archive")
        (Path(extract_root) / "flower_photos" / "roses").mkdir(parents=True)
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", truncated)
    with pytest.raises(EOFError):
        data._download("flowers", tmp_path)
    assert not (tmp_path / "flower_photos.tgz").exists() and not (tmp_path / "flowers").exists()

    def whole(url, download_root, extract_root=None, **kwargs):
        for name in ("daisy", "dandelion", "roses", "sunflowers", "tulips"):
            (Path(extract_root) / "flower_photos" / name).mkdir(parents=True)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", whole)
    data._download("flowers", tmp_path)
    assert data._has_dataset(tmp_path, "flowers") and not (tmp_path / ".flowers-partial").exists()
    # a flowers/ someone made, incomplete: named, never downloaded over
    shutil.rmtree(tmp_path / "flowers" / "tulip")
    monkeypatch.setattr(tv_utils, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("downloaded over an existing flowers/"))
    with pytest.raises(FileExistsError, match="lacks the class folder.s. tulip; complete it, or remove it"):
        data._download("flowers", tmp_path)
