"""The grader's judging steps: the verified judge, the samples file, and what a pass must show.

Every check raises :class:`Rejected` with a one-line reason (capped at ``REASON_CAP`` characters);
``course_lib/grade.py`` catches it in one place. Problems of the grader itself (weights missing or
not the pinned ones, no MNIST) raise :class:`CannotGrade`.

A pass must show *generated* digits:

- **read safely**: the samples file is opened with O_NOFOLLOW, must be a regular file under
  ``SAMPLES_CAP`` bytes, and holds a one-line JSON header and raw float32 pictures
  (:func:`write_samples`): nothing from the sandbox is unpickled or unzipped in the grader's
  process, where a crafted archive could fill its memory (``torch.load`` builds a ``bytearray`` of
  any size a 30-byte pickle asks for, and inflates compressed records);
- **well formed**: a float tensor of the right shape, finite, in [-1, 1];
- **drawn, not stored**: the second draw (another seed) differs from the first (at most
  ``DIFFER_SHARE`` the same), and one draw does not repeat itself (at most ``REPEAT_SHARE`` of its
  samples the same picture as another);
- **not memorised**: each sample is compared with every MNIST image, training and test set, at
  every shift of up to 2 pixels and two blurs, by cosine similarity (zero-mean, unit-norm, so
  brightness and contrast wash out): shifted, noised, blurred or brightened copies stay close;
- **realistic**: the Fréchet distance of the judge's features of the samples to those of real
  digits must stay within ``FRECHET_RATIO`` times what real digits with the same labels reach
  (fonts and class means are far off);
- **ink on a plain background**: on average at least ``PLAIN_SHARE`` of each picture's pixels lie
  within ``PLAIN_MARGIN`` of its darkest shade (digits: about 80%). Pixels tuned against
  classifiers fill the frame with texture (23% to 49%, ``bench/transfer_ascent.md``);
- **drawn from the network**: the grader draws once more with every network weight shuffled
  (``course_lib/grade_runner.py::shuffle_weights``), in a fresh process that the sampler cannot
  tell from the second draw's; fewer than ``SHUFFLED_LIMIT`` of those
  pictures may read as the digits asked for (stored, warped or hand-made pictures do not need
  the weights, and keep their digits), and they may not still be handwriting of other digits
  (stored pictures that a classifier, shuffled too, picks at random: :func:`still_handwriting`);
- **read as the digit asked for**, by the judge, at the threshold (default 95%); and the second
  draw too, within ``SECOND_DRAW_ERRORS`` standard errors of that threshold for its fewer samples
  (:func:`check_second_draw`): the first draw asks for more digits than the second, so a sampler
  that drew digits only when asked for many would otherwise hand noise to the second and the
  shuffled draw alike, and pass the network check without a network;
- **a second opinion agrees**: the course's judge is public (its weights ship with the course), so
  a sampler can optimise pixels against it until it reads any digit asked for, with realistic
  features and without copying (``tests/adversarial/cheats.py::judge_ascent``: 100% to the judge,
  from noise, in seconds). The grader therefore also asks ``PRIVATE_JUDGES`` private judges, of
  the same design but each trained on the grading machine from a secret seed and never shown to
  any sandbox (:func:`ensure_private_judge`): none may read more than ``SECOND_OPINION_GAP``
  fewer samples as asked than the course's judge does. Real digits and generated ones read alike
  on all of them. How much of a tuned picture carries over depends on a judge's seed (53% to 90%
  on average across six trainings, ``bench/private_judges.md``): one judge disputed 92% of the
  tuned sets there, the strictest of three every one. Still a hurdle, not a proof: tuned
  against three judges of the attacker's own training as well, the pictures carry over (the
  strictest of three read 98.1% as asked for, ``bench/transfer_ascent.md``), and only the plain
  background catches them. Tuned against that too, they pass as scratchy strokes on black: the
  report's grid of samples is the final check.

The thresholds are calibrated in ``bench/grading_checks.py`` (false rejects on real held-out
digits and on the answer key, catches on crafted cheats), whose figures are in
``bench/grading_checks.md``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
import signal
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REASON_CAP = 300
JUDGE_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
JUDGE_SHA256 = "b68c3bca6bce200639e3883cfe5e90cd1b2b9b96e7f6c3d7fd6514d95e0b4733"
SAMPLES_CAP = 64 * 2**20      # bytes: far above 2 x 300 float32 28x28 images
SAMPLES_FILE = "samples.bin"  # what each draw's sampling step leaves (write_samples)
HEADER_CAP = 1024             # bytes of the samples file's JSON header line
RANGE_SLACK = 0.05            # samples may overshoot [-1, 1] by this much
HOLD_OUT = 5000               # calibration only: test digits left out of the references (bench)
SHIFT = 2                     # pixels of translation the memorisation check tolerates
CANDIDATES = 20               # nearest reference images (coarse search) compared in detail
BLURS = (0.7, 1.3)            # the references are compared at these blurs (a blurred copy matches one)
COPY_COSINE = 0.985           # a sample this similar (aligned, 28x28) to a reference is a near-copy
COPY_SHARE = 0.25             # more than this share of near-copies fails (real digits: about 8%)
SAME_COSINE = 0.995           # two samples this similar are the same picture
DIFFER_SHARE = 0.5            # more than this share of second-draw samples equal to the first fails
REPEAT_SHARE = 0.25           # more than this share of one draw's samples repeating another fails
FRECHET_RATIO = 5.0           # realism: Fréchet distance at most this multiple of real digits' own
SHUFFLED_LIMIT = 0.6          # from the network: share read as asked for with shuffled weights
SECOND_DRAW_ERRORS = 5.0      # the second draw may fall this many standard errors below the threshold
SECOND_OPINION_GAP = 0.10     # each private judge may read at most this share fewer as asked for
PLAIN_MARGIN = 0.25           # a pixel this close to its picture's darkest shade is background
PLAIN_SHARE = 0.5             # the samples' mean share of background pixels must reach this
STROKES = 0.5                 # neighbouring pixels correlate at least this much in strokes (real
                              # digits: about 0.8; noise and scattered dots: about 0)
DISTINCT_SHARE = 0.5          # handwriting: at least this share of a draw's pictures are distinct


def one_line(text) -> str:
    """``text`` as one line of printable characters: a submission's messages reach the
    instructor's terminal and files, so control characters (terminal escapes, BEL, carriage
    returns that redraw a line) become spaces."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())


class Rejected(Exception):
    """The submission failed a step; ``reason`` is one line that says what to fix."""

    def __init__(self, reason: str):
        reason = one_line(reason)
        if len(reason) > REASON_CAP:
            reason = reason[:REASON_CAP - 3] + "..."
        super().__init__(reason)
        self.reason = reason


class CannotGrade(Exception):
    """The grader cannot work (its judge, data or sandbox); the instructor must fix it."""


# --- the judge ------------------------------------------------------------------------------------

def verified_bytes(path: Path = JUDGE_WEIGHTS, sha256: str = JUDGE_SHA256) -> bytes:
    """The judge's weights file, read once and checked against the pinned hash."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise CannotGrade(f"the judge's weights {path} cannot be read ({err.strerror}); restore "
                          "them with `git checkout course_lib/weights/mnist_classifier.pt`") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CannotGrade(f"the judge's weights {path} have sha256 {digest[:16]}..., not the pinned "
                          f"{sha256[:16]}...: they were changed; restore them with "
                          "`git checkout course_lib/weights/mnist_classifier.pt`")
    return data


@dataclass
class Judge:
    """The classifier and the real-digit references every check compares against."""

    classifier: torch.nn.Module
    images: torch.Tensor             # memorisation reference: every MNIST digit (N, 1, 28, 28)
    labels: torch.Tensor
    coarse: torch.Tensor             # the same in coarse canonical form (N, 196), unit rows
    real_mean: torch.Tensor | None = None   # judge features of real digits: mean and covariance
    real_cov: torch.Tensor | None = None
    second: list[torch.nn.Module] | None = None   # the private judges (ensure_private_judge)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier.features(b) for b in images.float().split(500)])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier(b).argmax(1) for b in images.float().split(500)])


def load_judge(weights: Path = JUDGE_WEIGHTS, sha256: str = JUDGE_SHA256,
               hold_out: int = 0) -> Judge:
    """Verify and load the classifier, then build the references from all of MNIST.

    ``hold_out`` > 0 (calibration only, ``bench/grading_checks.py``) leaves the last ``hold_out``
    test digits out of both references, so that they can play unseen real digits.
    """
    from .classifier import DigitClassifier
    from .data import DataNotFoundError, load_mnist

    payload = torch.load(io.BytesIO(verified_bytes(weights, sha256)), weights_only=True)
    classifier = DigitClassifier()
    classifier.load_state_dict(payload["model"])
    classifier.eval()
    try:
        train, test = load_mnist(size=28, train=True), load_mnist(size=28, train=False)
    except DataNotFoundError as err:
        raise CannotGrade(f"MNIST is needed to judge the samples: {err}") from None
    keep = len(test.images) - hold_out
    images = torch.cat([train.images, test.images[:keep]])
    judge = Judge(classifier, images, torch.cat([train.labels, test.labels[:keep]]),
                  canonical(images))
    feats = judge.features(test.images[:keep]).double()
    judge.real_mean, judge.real_cov = feats.mean(0), torch.cov(feats.T)
    return judge


PRIVATE_JUDGES = 3
"""How many private judges give the second opinion (the strictest counts): one disputed 92% of
the sets tuned to the course's judge, the strictest of three every one (``bench/private_judges.md``)."""


def private_judge_path() -> Path:
    """Where this machine's private judges live: ``$COURSE_GRADER_DIR``, else
    ``~/.cache/course_lib/grader`` (the grader's home: hidden from every sandbox). One file holds
    all of them (a single judge's file of earlier versions, ``private_mnist_judge.pt``, is left)."""
    base = os.environ.get("COURSE_GRADER_DIR")
    folder = Path(base).expanduser() if base else Path.home() / ".cache" / "course_lib" / "grader"
    return folder / "private_mnist_judges.pt"


def ensure_private_judge(path: Path | None = None, progress: bool = True) -> Path:
    """The private judges' file, trained first if it is not there: ``PRIVATE_JUDGES`` runs of
    ``classifier.train_classifier`` for one epoch (about a minute each on 2 CPU cores, 99% on
    MNIST's test set), each from a seed drawn with ``secrets``, in a file only the grader can read
    (a folder it makes for it is the grader's alone too; one that exists, such as a shared folder
    named by ``--private-judge``, keeps its permissions). Once per grading machine."""
    path = Path(path) if path is not None else private_judge_path()
    if path.is_file():
        return path
    from .classifier import train_classifier
    from .data import DataNotFoundError
    from .storage import save_atomic

    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)   # another grader may make it at the same time
    if made:
        path.parent.chmod(0o700)
    print(f"training the grader's {PRIVATE_JUDGES} private judges, once for this machine (about a "
          f"minute each on 2 CPU cores) -> {path}", file=sys.stderr, flush=True)
    states = []
    try:
        for _ in range(PRIVATE_JUDGES):
            model, _ = train_classifier("mnist", epochs=1, seed=secrets.randbits(31),
                                        progress=progress)
            states.append(model.state_dict())
    except DataNotFoundError as err:
        raise CannotGrade(f"MNIST is needed to train the grader's private judges: {err}") from None
    save_atomic({"judges": states}, path, mode=0o600)   # all or nothing: a half-trained set is never kept
    return path


def load_private_judge(path: Path | None = None) -> list[torch.nn.Module]:
    """The private judges, in eval mode (trained first where needed)."""
    from .classifier import DigitClassifier
    from .storage import load_tensors

    judges = []
    try:
        for state in load_tensors(ensure_private_judge(path), "cpu")["judges"]:
            model = DigitClassifier()
            model.load_state_dict(state)
            judges.append(model.eval())
    except Exception as err:
        raise CannotGrade(f"the grader's private judges cannot be loaded ({err}); delete "
                          f"{path or private_judge_path()} and they are trained again") from None
    if not judges:
        raise CannotGrade(f"{path or private_judge_path()} holds no private judge; delete it and "
                          "they are trained again")
    return judges


# --- reading the samples file ---------------------------------------------------------------------

@contextmanager
def time_limit(seconds: float, what: str):
    """Raise Rejected if the block runs longer than ``seconds`` (main thread only)."""
    def expired(*_):
        raise Rejected(f"{what} took longer than {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class NotPlain(OSError):
    """A file the sandbox left is not a regular file under its size cap."""


class TooBig(NotPlain):
    """A regular file, over its size cap."""


def read_plain(path: Path, cap: int) -> bytes:
    """The bytes of a file that sandboxed code wrote, read safely on the grader's side: never
    through a link (a planted link to /dev/zero or a host file), never from a pipe or device,
    never more than ``cap`` bytes. Raises FileNotFoundError, NotPlain or another OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotPlain(f"{Path(path).name} is not a regular file")
        if info.st_size > cap:
            raise TooBig(f"{Path(path).name} is {info.st_size / 2**20:.0f} MiB, over the "
                           f"{cap / 2**20:.0f} MiB limit")
        return file.read(cap + 1)


def write_samples(images: torch.Tensor, path) -> None:
    """Save a draw for the grader (inside the sandbox): one line of JSON, the tensor's shape and
    dtype, then its values as little-endian float32 (none for a dtype that is not floating
    point). The grader reads it with :func:`read_samples`, without pickle or zip."""
    floating = images.dtype.is_floating_point
    body = images.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes() \
        if floating else b""
    header = json.dumps({"shape": list(images.shape), "dtype": str(images.dtype),
                         "floating": floating})
    with open(path, "wb") as file:
        file.write(header.encode() + b"\n" + body)


def read_samples(path: Path, cap: int = SAMPLES_CAP) -> torch.Tensor:
    """One draw's pictures, as :func:`write_samples` saved them in the sandbox: no links, no pipes,
    nothing huge, and nothing parsed but a short JSON line; the values must fill the shape it
    names exactly. Returns float32, or raises Rejected with what is wrong."""
    try:
        data = read_plain(path, cap)
    except FileNotFoundError:
        raise Rejected("no samples were saved (did sample_digits return?)") from None
    except NotPlain as err:
        raise Rejected(f"the samples file is not usable ({err})") from None
    except OSError as err:
        raise Rejected(f"the samples file cannot be opened ({err.strerror}); it must be a plain "
                       "file written by the grader's sampling step") from None
    foreign = Rejected("the samples file is not the one the grader's sampling step writes")
    end = data.find(b"\n", 0, HEADER_CAP)
    if end < 0:
        raise foreign
    try:
        header = json.loads(data[:end])
        shape, dtype, floating = header["shape"], header["dtype"], header["floating"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise foreign from None
    if (not isinstance(shape, list) or not isinstance(dtype, str) or type(floating) is not bool
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise foreign
    if not floating:
        raise Rejected(f"wrong dtype {one_line(dtype)[:40]}; expected floating point images in [-1, 1]")
    if len(shape) > 8 or max(shape, default=0) >= 2**31:   # what no picture batch is
        raise Rejected(f"wrong output shape {one_line(tuple(shape))[:80]}; expected (N, 1, 28, 28)")
    body, size = memoryview(data)[end + 1:], 4 * math.prod(shape)
    if len(body) != size:
        raise Rejected(f"the samples file holds {len(body)} bytes of values for shape "
                       f"{tuple(shape)}, not {size}; it must be the file the grader's sampling "
                       "step writes")
    return torch.from_numpy(np.frombuffer(body, dtype="<f4").astype(np.float32)).reshape(shape)


# --- what the samples must show -------------------------------------------------------------------

def check_samples(images, n_expected: int) -> None:
    """Shape, dtype, finiteness and range; raise Rejected with what is wrong."""
    if type(images) is not torch.Tensor:
        raise Rejected(f"samples must be a plain torch.Tensor, got {type(images).__name__}")
    if images.layout != torch.strided:
        raise Rejected(f"samples must be a dense tensor, got layout {images.layout}")
    if tuple(images.shape) != (n_expected, 1, 28, 28):
        raise Rejected(f"wrong output shape {tuple(images.shape)}; expected ({n_expected}, 1, 28, 28)")
    if not images.dtype.is_floating_point:
        raise Rejected(f"wrong dtype {images.dtype}; expected floating point images in [-1, 1]")
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).flatten(1).any(1).sum().item()
        raise Rejected(f"{bad} samples contain NaN or inf values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise Rejected(f"samples range over [{lo:.2f}, {hi:.2f}]; they must lie in [-1, 1] "
                       "(did you forget to scale, or to clamp the final x_0?)")
    if images.float().std().item() < 1e-3:
        raise Rejected("all samples are (nearly) constant images")


_BLUR = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def canonical(images: torch.Tensor) -> torch.Tensor:
    """Blurred, 14x14, zero-mean unit-norm rows: noise, blur, contrast and brightness wash out."""
    x = images.float().reshape(-1, 1, 28, 28)
    k = _BLUR.reshape(1, 1, 5, 1)
    x = F.conv2d(F.conv2d(x, k, padding=(2, 0)), k.transpose(2, 3), padding=(0, 2))
    x = F.avg_pool2d(x, 2).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


def _fine(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """28x28, lightly blurred, zero-mean unit-norm rows."""
    x = gaussian_blur(images.float().reshape(-1, 1, 28, 28), sigma)
    x = x.flatten(1) - x.flatten(1).mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, 1, H, W) blurred by a 7-tap Gaussian of ``sigma`` pixels, one axis at a time, with
    zero padding: the background beyond the edge is blank, as MNIST's is. (torchvision's
    ``gaussian_blur`` has the same kernel but reflects at the edge, which would mirror ink lying
    there; the copy thresholds were calibrated with this one.)"""
    r = torch.arange(-3, 4, dtype=torch.float32)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).reshape(1, 1, 7, 1)
    return F.conv2d(F.conv2d(x, k, padding=(3, 0)), k.transpose(2, 3), padding=(0, 3))


def candidates(images: torch.Tensor, coarse: torch.Tensor, shift: int = SHIFT) -> torch.Tensor:
    """Indices (N, CANDIDATES) of the references nearest each sample in coarse form, over even
    shifts of up to ±``shift`` pixels (the coarse form is half-resolution)."""
    even = [d for d in range(-shift, shift + 1) if d % 2 == 0]
    best = None
    for dy in even:
        for dx in even:
            moved = canonical(torch.roll(images.float(), (dy, dx), dims=(2, 3)))
            sims = torch.cat([moved @ chunk.T for chunk in coarse.split(20_000)], dim=1)
            best = sims if best is None else torch.maximum(best, sims)
    return best.topk(min(CANDIDATES, best.shape[1]), dim=1).indices


def copy_similarity(images: torch.Tensor, reference: torch.Tensor,
                    coarse: torch.Tensor | None = None, shift: int = SHIFT) -> torch.Tensor:
    """Per sample, the best cosine similarity to any reference image, over shifts of ±``shift``
    pixels and the blurs of BLURS: first the CANDIDATES nearest in coarse form, then in detail."""
    images = images.float()
    top = candidates(images, canonical(reference) if coarse is None else coarse, shift)
    shifts = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    result = torch.full((len(images),), -1.0)
    for sigma in BLURS:
        cands = _fine(reference[top.flatten()], sigma).reshape(len(images), top.shape[1], -1)
        for dy, dx in shifts:
            moved = _fine(torch.roll(images, (dy, dx), dims=(2, 3)), BLURS[0])
            sims = torch.einsum("nd,nkd->nk", moved, cands).max(1).values
            result = torch.maximum(result, sims)
    return result


def check_not_memorised(images: torch.Tensor, judge: Judge) -> int:
    """Raise Rejected when too many samples are (transformed) copies of MNIST; return the count."""
    similarity = copy_similarity(images, judge.images, judge.coarse)
    copies = int((similarity > COPY_COSINE).sum())
    if copies > COPY_SHARE * len(images):
        raise Rejected(f"{copies} of {len(images)} samples are near-copies of MNIST images (even "
                       "shifted, noised or blurred); samples must be generated by the model")
    return copies


def check_drawn(first: torch.Tensor, second: torch.Tensor, positions: list[int]) -> None:
    """Two seeds must give other pictures; one draw must not repeat a picture."""
    a, b = canonical(first[positions]), canonical(second)
    same = ((a * b).sum(1) > SAME_COSINE).float().mean().item()
    if same > DIFFER_SHARE:
        raise Rejected(f"{same:.0%} of the samples came out the same with another seed; "
                       "sample_digits must draw new samples from the random generator")
    count = repeats(first)
    if count > REPEAT_SHARE * len(first):
        raise Rejected(f"{count} of {len(first)} samples repeat another sample of the same draw; "
                       "sample_digits must draw each sample afresh")


def _same_pictures(images: torch.Tensor) -> torch.Tensor:
    """(n, n): which pictures of one draw are the same picture as which other (never itself)."""
    x = canonical(images)
    return (x @ x.T > SAME_COSINE) & ~torch.eye(len(x), dtype=torch.bool)


def repeats(images: torch.Tensor) -> int:
    """How many pictures of one draw are the same picture as another of it."""
    return int(_same_pictures(images).any(1).sum())


def distinct_share(images: torch.Tensor) -> float:
    """The share of a draw's pictures that are not the same picture as an earlier one of it (one
    picture over and over: 1/n; a few picked twice: close to 1)."""
    return 1 - _same_pictures(images).tril(-1).any(1).float().mean().item()


def stroke_correlation(images: torch.Tensor) -> torch.Tensor:
    """Per picture, the correlation of each pixel with its right and lower neighbours: strokes of
    ink make neighbours alike (real digits: about 0.8), noise and scattered dots do not (about 0);
    a blank picture counts 0."""
    x = images.float().reshape(len(images), 28, 28)
    a = torch.cat([x[:, :, :-1].flatten(1), x[:, :-1, :].flatten(1)], 1)
    b = torch.cat([x[:, :, 1:].flatten(1), x[:, 1:, :].flatten(1)], 1)
    # Pearson's r: the cosine of the centred pairs (torch's eps makes a blank picture's 0)
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1)


def frechet(features: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Squared Fréchet distance between Gaussians fitted to ``features`` and (mean, cov)."""
    from .metrics import frechet_from_stats   # here: the sandbox's runner imports this module

    f = features.double()
    return frechet_from_stats(f.mean(0), torch.cov(f.T), mean.double(), cov.double())


def real_frechet(judge: Judge, labels: torch.Tensor, draws: int = 3, seed: int = 0) -> float:
    """The Fréchet distance that real MNIST digits with these labels reach (mean of a few draws):
    the distance grows as the number of samples shrinks, so the limit scales with it."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(draws):
        picks = []
        for d in labels.tolist():
            idx = (judge.labels == d).nonzero()[:, 0]
            picks.append(idx[torch.randint(len(idx), (1,), generator=g)])
        values.append(frechet(judge.features(judge.images[torch.cat(picks)]),
                              judge.real_mean, judge.real_cov))
    return sum(values) / len(values)


def check_realistic(images: torch.Tensor, labels: torch.Tensor, judge: Judge,
                    ratio: float = FRECHET_RATIO) -> tuple[float, float]:
    """Raise Rejected when the samples do not look like real digits to the judge.

    Returns (distance, limit): the Fréchet distance of the judge's features of the samples to
    those of real digits, and ``ratio`` times what real digits with the same labels reach.
    """
    distance = frechet(judge.features(images), judge.real_mean, judge.real_cov)
    limit = ratio * real_frechet(judge, labels)
    if distance > limit:
        raise Rejected(f"the samples do not look like handwritten digits (Fréchet distance "
                       f"{distance:.0f} to real MNIST digits, limit {limit:.0f}): fonts, "
                       "averages or drawn templates are not generated digits")
    return distance, limit


def plain_share(images: torch.Tensor, margin: float = PLAIN_MARGIN) -> torch.Tensor:
    """Per picture, the share of pixels within ``margin`` of its darkest shade (its 5th
    percentile, so a few stray dark pixels do not set it): the plain background that handwriting
    leaves, at whatever grey it sits. Real and generated digits: about 0.8."""
    flat = images.float().flatten(1)
    floor = flat.quantile(0.05, dim=1, keepdim=True)
    return (flat <= floor + margin).float().mean(1)


def check_plain_background(images: torch.Tensor, share: float = PLAIN_SHARE) -> float:
    """Raise Rejected when the samples are not ink on a plain background. Pixels optimised
    against classifiers, even against several of the attacker's own training, are textures
    over the whole frame that the classifiers read as digits (``bench/transfer_ascent.md``).
    Returns the mean share of background pixels."""
    mean = plain_share(images).mean().item()
    if mean < share:
        raise Rejected(f"only {mean:.0%} of the samples' pixels are plain background (real and "
                       f"generated digits: about 80%, at least {share:.0%} needed): digits are ink "
                       "on a plain background, these pictures fill the frame (noise the sampler "
                       "left, or texture tuned against classifiers)")
    return mean


@torch.no_grad()
def check_second_opinion(images: torch.Tensor, labels: torch.Tensor, accuracy: float,
                         judges: list[torch.nn.Module], gap: float = SECOND_OPINION_GAP) -> float:
    """Raise Rejected when any private judge reads far fewer samples as asked for than the
    course's judge (``accuracy``): pictures tuned against the public judge's weights fool that
    network, and carry over to other trainings by a share that varies with their seeds. Returns
    the strictest private judge's share."""
    shares = []
    with torch.no_grad():
        for judge in judges:
            read = torch.cat([judge(b).argmax(1) for b in images.float().split(500)])
            shares.append((read == labels).float().mean().item())
    share = min(shares)
    if share < accuracy - gap:
        raise Rejected(f"the course's judge reads {accuracy:.0%} of the samples as asked for, an "
                       f"independent one (the strictest of {len(judges)} private judges) only {share:.0%}: the samples are tuned to the course's "
                       "judge, not drawn as digits; sample_digits must draw them with its diffusion "
                       "model, without the judge")
    return share


def _shuffled_pictures(shuffled, labels: torch.Tensor) -> torch.Tensor | None:
    """The draw with shuffled weights as pictures (NaN reads as 0, values are clipped); None when
    it holds no pictures of the right shape."""
    if (type(shuffled) is not torch.Tensor or not shuffled.dtype.is_floating_point
            or tuple(shuffled.shape) != (len(labels), 1, 28, 28)):
        return None
    return torch.nan_to_num(shuffled.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)


def shuffled_share(shuffled, labels: torch.Tensor, judge: Judge) -> float | None:
    """The share of the draw with shuffled weights that the judge reads as ``labels``; None when
    the draw holds no pictures of the right shape."""
    images = _shuffled_pictures(shuffled, labels)
    return None if images is None else (judge.predict(images) == labels).float().mean().item()


def shuffled_realism(shuffled, labels: torch.Tensor, judge: Judge) -> dict | None:
    """How much the draw with shuffled weights still looks like handwriting, by what a first draw
    must show that needs no digit read right: its Fréchet distance to real digits over the limit
    samples keep within (``frechet_over_limit``, :func:`check_realistic`, for as many real digits
    with these labels), its mean share of plain background, the share of its pictures that are
    distinct (:func:`distinct_share`), and its mean :func:`stroke_correlation`; None when it
    holds no pictures. A shuffled network draws noise (many times past the limit) or one picture
    over and over; stored or warped digits stay handwriting, whatever their classes, even where
    a shuffled classifier picks a few of them twice (:func:`still_handwriting`,
    ``bench/network_check.md``)."""
    images = _shuffled_pictures(shuffled, labels)
    if images is None:
        return None
    distance = frechet(judge.features(images), judge.real_mean, judge.real_cov)
    return {"frechet_over_limit": distance / (FRECHET_RATIO * real_frechet(judge, labels)),
            "plain": plain_share(images).mean().item(), "distinct": distinct_share(images),
            "strokes": stroke_correlation(images).mean().item()}


def still_handwriting(realism: dict | None) -> bool:
    """Whether :func:`shuffled_realism` found handwriting: within the Fréchet limit, ink on a
    plain background, in strokes, and mostly distinct pictures, not one over and over."""
    return realism is not None and (realism["frechet_over_limit"] <= 1
                                    and realism["plain"] >= PLAIN_SHARE
                                    and realism["distinct"] >= DISTINCT_SHARE
                                    and realism["strokes"] >= STROKES)


def second_draw_floor(threshold: float, n: int) -> float:
    """The share of the second draw's ``n`` samples that must read as asked for: the pass
    threshold less ``SECOND_DRAW_ERRORS`` binomial standard errors at that share (95% and 20
    samples: 70.6%, so 15 of 20; a sampler that reads 95% as asked for falls below it about once
    in 3,000 gradings, one that reads 98% once in 500,000; noise reads about 10%)."""
    return threshold - SECOND_DRAW_ERRORS * math.sqrt(threshold * (1 - threshold) / n)


def check_second_draw(share: float, n: int, threshold: float) -> None:
    """Raise Rejected when the second draw (another seed, ``n`` samples) is read as asked for
    less often than :func:`second_draw_floor` allows: a sampler must draw as well at every call."""
    floor = second_draw_floor(threshold, n)
    if share < floor:
        raise Rejected(f"the second draw (another seed, {n} samples) was read as the digits asked "
                       f"for only {share:.0%} of the time, under the {floor:.0%} a sampler that "
                       "passes reaches; sample_digits must draw as well at every call, whatever "
                       "the number of labels")


def check_from_network(shuffled, labels: torch.Tensor, judge: Judge,
                       limit: float = SHUFFLED_LIMIT) -> float | None:
    """Raise Rejected when ``sample_digits`` still draws the digits asked for without its network.

    ``shuffled`` is the grader's draw of ``labels`` after every weight of the notebook's networks
    was shuffled (``course_lib/grade_runner.py::shuffle_weights``). A sampler that draws from its
    network then has noise for a network, and the judge reads a picture as asked for only by
    chance (the answer key's: 12% on average, ``bench/network_check.md``), and its pictures are
    far from handwriting (:func:`shuffled_realism`). Stored, warped or hand-made pictures never
    needed the weights: they keep their digits, or, where a classifier in the notebook chose
    which picture answers which label (its weights shuffled too), they are still handwriting, of
    other digits. Returns that share, or None when the draw gave no pictures (it raised, ran out
    of time or returned something else), which is what a broken network may well do.
    """
    share = shuffled_share(shuffled, labels, judge)
    if share is not None and share >= limit:
        raise Rejected(f"the samples do not come from the notebook's network: with every weight of "
                       f"its networks shuffled, sample_digits still drew {share:.0%} of "
                       f"{len(labels)} digits as asked for; sample_digits must draw its digits "
                       "with the notebook's trained network")
    realism = shuffled_realism(shuffled, labels, judge)
    if still_handwriting(realism):
        raise Rejected("the samples do not come from the notebook's network: with its weights "
                       "shuffled, sample_digits still drew handwritten digits, of other classes "
                       "(stored pictures picked by a classifier?); draw them with the trained "
                       "network")
    return share
