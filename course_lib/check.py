"""Checkers for the notebooks' exercises: compare a student's version with the course's own.

Each ``check_*`` runs the student's code and the reference on the same random inputs,
prints one verdict line and returns True/False. A checker never raises, so an
unfinished exercise (a FIXME left in place) reads "not done yet" instead of a traceback.
An answer that only calls the library's version of what the exercise builds (imported a few
cells above, e.g. ``ddpm_step`` for the reverse step) matches by construction; the checker
names the call and asks for the student's own code instead (:func:`_shortcut`).
"""
from __future__ import annotations

import dis
import functools
import inspect
import types
from typing import Callable

import torch
from einops.layers.torch import Rearrange

from .blocks import DownBlock, ResidualConvBlock, SinusoidalPositionEmbedBlock, UpBlock
from .ddpm import CFGDenoiser, add_noise, cosine_schedule, ddim_step, ddpm_step, linear_schedule
from .editing import paste_back

PASS, FAIL = "✅", "❌"


def _verdict(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{PASS if ok else FAIL} {name}: {'correct' if ok else 'not yet'}"
          + (f" ({detail})" if detail else ""))
    return ok


def checker(name: str, rebuilds: tuple[str, ...] = (), own: tuple[str, ...] = ()):
    """Decorator: run the comparison, turn any exception into a clear "not done yet" verdict.

    ``rebuilds`` names the library's versions of what the exercise asks for: an answer that
    matches only by using one of them is not done yet. ``own`` names the methods a class answer
    must write itself (not inherit from the library's class, nor assign from it)."""
    def wrap(compare: Callable[..., tuple[bool, str]]):
        @functools.wraps(compare)
        def run(*student) -> bool:
            try:
                ok, detail = compare(*student)
            except (NameError, NotImplementedError) as err:
                return _verdict(name, False, f"not done yet: {err}")
            except Exception as err:
                return _verdict(name, False, f"{type(err).__name__}: {err}")
            try:
                called = ok and next(filter(None, (_shortcut(s, rebuilds, own) for s in student)),
                                     None)
            except Exception:   # the guard must never break a student's cell; it found nothing
                called = None
            if called:
                return _verdict(name, False, f"it uses {called}, the library's version of this "
                                             "exercise: write the computation yourself")
            return _verdict(name, ok, detail)
        return run
    return wrap


LIBRARIES = ("course_lib", "open_clip")
"""Packages whose own code an answer may not hand in as its own."""


def _names(code: types.CodeType, bound: frozenset = frozenset()) -> set[str]:
    """Every global, attribute and enclosing-scope name that ``code`` (and what it defines
    inside) uses; not the names of its own locals that code nested in it (a comprehension, a
    lambda) reads (``bound``)."""
    names = set(code.co_names) | (set(code.co_freevars) - bound)
    inner = bound | set(code.co_varnames) | set(code.co_cellvars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const, inner)
    return names


def _globals_read(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and what it defines inside) reads: not attribute names, not
    locals."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _globals_read(const)
    return names


def _library_name(obj) -> str | None:
    """``obj``'s name when it is the library's own: a function, method or class defined in one of
    LIBRARIES, or an instance of such a class (``open_clip.ClipLoss()``); else None."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        obj = type(obj)
    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] in LIBRARIES:
        return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return None


def _values(fn: types.FunctionType) -> dict[str, object]:
    """What ``fn``'s names stand for when it runs: the globals it names, its closure's cells and
    its defaults (an alias such as ``step = ddpm_step`` or ``def f(g=ddpm_step)``)."""
    found = {name: fn.__globals__[name] for name in _globals_read(fn.__code__)
             if name in fn.__globals__}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            found[name] = cell.cell_contents
        except ValueError:   # a cell not yet filled
            pass
    defaults = [*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()]
    found.update({f"default value {i + 1} ({type(v).__name__})": v for i, v in enumerate(defaults)})
    return found


def _uses(fn: types.FunctionType, rebuilds: tuple[str, ...], seen: set) -> str | None:
    """The first of ``rebuilds`` that ``fn`` uses by name or through an alias, here or in the
    helpers it calls that are not the library's; None when it uses none of them."""
    if fn in seen or len(seen) > 50:
        return None
    seen.add(fn)
    names = _names(fn.__code__)
    for name in rebuilds:
        if name in names:
            return f"`{name}`"
    for name, value in _values(fn).items():
        if isinstance(value, functools.partial):   # partial(ddpm_step, ...) is ddpm_step
            value = value.func
        library = _library_name(value)
        if library is not None:
            if set(library.split(".")) & set(rebuilds):   # UpBlock.forward, Schedule.q_sample
                return f"`{name}` (the library's `{library}`)"
        elif inspect.isfunction(value):
            inner = inspect.unwrap(value)
            found = _uses(inner, rebuilds, seen) if inspect.isfunction(inner) else None
            if found:
                return found
    return None


def _parent_defining(cls: type, method: str) -> type | None:
    """The class after ``cls`` in its method order that defines ``method`` (what ``super()``
    reaches)."""
    return next((c for c in cls.__mro__[1:] if method in vars(c)), None)


def _shortcut(answer, rebuilds: tuple[str, ...], own: tuple[str, ...] = ()) -> str | None:
    """What of the library's own code ``answer`` hands in for the exercise, or None: the
    library's object itself; in a class, a method of ``own`` that the library's class wrote (inherited, or
    assigned from it), ``super`` in a method other than ``__init__`` (a subclass's forward
    that returns the library parent's); in the code of a function or of a class's own methods,
    a name in ``rebuilds``, used directly or through an alias or a helper."""
    library = _library_name(answer)
    if library is not None:
        return f"`{library}` itself"
    if inspect.isclass(answer):
        for method in own:
            library = _library_name(getattr(answer, method, None))
            if library is not None:
                return f"`{library}` (not written in the class itself)"
        methods = {k: inspect.unwrap(v) for k, v in vars(answer).items() if inspect.isfunction(v)}
    elif inspect.isfunction(answer):
        methods = {answer.__name__: answer}
    else:
        return None
    for method, fn in methods.items():
        found = _uses(fn, rebuilds, set())
        if found:
            return found
        parent = _parent_defining(answer, method) if inspect.isclass(answer) else None
        if ((method != "__init__" or method in own) and "super" in _names(fn.__code__)
                and _library_name(parent) is not None):   # the method is the library parent's
            return f"`super().{method}` (the library's `{parent.__qualname__}.{method}`)"
    return None


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> tuple[bool, str]:
    if not isinstance(a, torch.Tensor):
        return False, f"expected a tensor, got {type(a).__name__}"
    if a.shape != b.shape:
        return False, f"shape {tuple(a.shape)}, expected {tuple(b.shape)}"
    err = (a.float() - b.float()).abs().max().item()
    return err <= atol, f"max difference {err:.2e}"


def _on_copies(fn, names: tuple[str, ...], *args) -> tuple[object, str]:
    """``fn(*args)`` given copies of its tensor arguments: (its result, "" or why it fails: the
    arguments it changed in place, which the caller still needs as they were)."""
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    result = fn(*copies)
    changed = [name for name, a, c in zip(names, args, copies)
               if isinstance(a, torch.Tensor) and not torch.equal(a, c)]
    return result, (f"it changed its input {', '.join(changed)} in place (x *= ..., x += ...); "
                    "compute into a new tensor instead: the caller still needs the original"
                    if changed else "")


def _layer_difference(student: torch.nn.Module, reference: torch.nn.Module) -> str:
    """How the student's weights differ from the reference's, by name and shape ('' if alike)."""
    have, want = student.state_dict(), reference.state_dict()
    parts = []
    for what, keys in (("missing", [k for k in want if k not in have]),
                       ("not in the reference", [k for k in have if k not in want]),
                       ("of another shape", [f"{k} {tuple(have[k].shape)} instead of "
                                             f"{tuple(want[k].shape)}" for k in want
                                             if k in have and have[k].shape != want[k].shape])):
        if keys:
            parts.append(f"{what}: {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more"
                                                             if len(keys) > 3 else ""))
    return "; ".join(parts)


def _same_module(student: torch.nn.Module, reference: torch.nn.Module, *inputs):
    """Load the reference's weights into the student's module and compare outputs."""
    differ = _layer_difference(student, reference)
    if differ:   # e.g. bias=False before BatchNorm, a wrong in_ch, a Sequential nested once more
        return False, f"layers differ from the reference ({differ})"
    try:
        student.load_state_dict(reference.state_dict())
    except RuntimeError as err:
        return False, "layers differ from the reference: " + str(err).splitlines()[0]
    student.eval(), reference.eval()
    with torch.no_grad():
        return _close(student(*inputs), reference(*inputs))


# --- 01 --------------------------------------------------------------------------------------

@checker("add_noise (01)", rebuilds=("add_noise",))
def check_add_noise(fn):
    """One amount for the batch (as ``add_noise``), then one amount per image, shape (B,)."""
    x, noise = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)
    names = ("x", "amount", "noise")
    for amount in (0.0, 0.5, 0.8):
        got, changed = _on_copies(fn, names, x, amount, noise)
        ok, detail = (False, changed) if changed else _close(got, add_noise(x, amount, noise))
        if not ok:
            return False, f"amount={amount}: {detail}"
    amounts = torch.tensor([0.0, 0.3, 0.6, 1.0])
    try:
        got, changed = _on_copies(fn, names, x, amounts, noise)
        ok, detail = (False, changed) if changed else _close(got, add_noise(x, amounts, noise))
    except RuntimeError as err:
        ok, detail = False, str(err).splitlines()[0]
    if not ok:
        return False, (f"one amount per image {amounts.tolist()}: {detail}; a (B,) tensor must "
                       "broadcast over each image's (C, H, W)")
    return True, "matches for amounts 0, 0.5 and 0.8, and for one amount per image"


@checker("DownBlock (01)", rebuilds=("DownBlock",), own=("__init__",))
def check_down_block(cls):
    torch.manual_seed(0)
    return _same_module(cls(3, 8), DownBlock(3, 8), torch.randn(2, 3, 16, 16))


@checker("UpBlock.forward (01)", rebuilds=("UpBlock",), own=("forward",))
def check_up_block(cls):
    torch.manual_seed(0)
    return _same_module(cls(8, 4), UpBlock(8, 4), torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))


# --- 02 --------------------------------------------------------------------------------------

@checker("q_sample (02)", rebuilds=("q_sample",))
def check_q_sample(fn):
    s = linear_schedule(150)
    x0, noise = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 1, 30, 75, 148, 149])
    got, changed = _on_copies(fn, ("x0", "t", "noise", "alpha_bars"), x0, t, noise, s.alpha_bars)
    return (False, changed) if changed else _close(got, s.q_sample(x0, t, noise))


@checker("reverse step (02)", rebuilds=("ddpm_step", "sample_ddpm"))
def check_reverse_step(fn):
    s = linear_schedule(150)
    x, eps, z = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t in (149, 80, 1, 0):
        want = ddpm_step(x, t, eps, s, noise=z).x_prev
        got = fn(x, t, eps, s, z)
        ok, detail = _close(got, want)
        if ok:
            continue
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return False, f"t={t}: {detail}"
        mean = ddpm_step(x, t, eps, s, noise=torch.zeros_like(z)).x_prev
        return False, f"t={t}: " + _reverse_step_mistake(got.float() - mean, t, s, z, detail)
    return True, "matches at t = 149, 80, 1 and 0, noise and last step included"


def _reverse_step_mistake(extra: torch.Tensor, t: int, s, z: torch.Tensor, detail: str) -> str:
    """What a wrong reverse step got wrong, from ``extra``: its result minus the right mean."""
    scale = float((extra * z).sum() / z.square().sum())     # the best fit of extra as scale·z
    if t == 0 and _close(extra, scale * z)[0]:
        return "the last step must return the mean alone, with no noise added"
    if _close(extra, torch.zeros_like(z))[0]:
        if t == 1:
            return ("the noise term σ_t·z is missing; code steps count from 0, so the step "
                    "that returns the mean alone is t = 0, not t = 1")
        return "the noise term σ_t·z is missing (σ_t² = β_t)"
    named = {"√α_t": (1 - s.betas[t]).sqrt(),
             "√β̃_t (the posterior variance, DDPM's other choice)": s.posterior_variance[t].sqrt()}
    if t > 0:
        named["√β_{t−1} (betas[t - 1], one step early)"] = s.betas[t - 1].sqrt()
    if t + 1 < len(s.betas):
        named["√β_{t+1} (betas[t + 1], one step late)"] = s.betas[t + 1].sqrt()
    for name, sigma in named.items():
        if t > 0 and _close(extra, sigma * z)[0]:
            return (f"the mean is right, but the noise is scaled by {name}; this step's "
                    f"σ_t is √β_t = {s.betas[t].sqrt():.5f} (betas[t])")
    if t > 0 and _close(extra, scale * z)[0]:
        return (f"the mean is right, but the noise is scaled by {scale:.5f}; it should be "
                f"σ_t = √β_t = {s.betas[t].sqrt():.5f}")
    sigma = float(s.betas[t].sqrt())
    if t > 0 and abs(scale) < 0.3 * sigma and 0.5 * sigma < float(extra.std()) < 2 * sigma:
        return ("the mean looks right, but the noise is not the z passed in: add σ_t·z with "
                "that z (drawing fresh noise, e.g. torch.randn_like, cannot be checked)")
    return f"{detail}; check the mean (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t"


@checker("DDIM step (02)", rebuilds=("ddim_step", "sample_ddim"))
def check_ddim_step(fn):
    s = linear_schedule(150)
    x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t, t_prev in ((149, 139), (50, 0), (0, -1)):
        want = ddim_step(x, t, eps, s, t_prev, eta=0.0).x_prev
        got = fn(x, t, eps, s, t_prev)
        ok, detail = _close(got, want, 1e-4)
        if ok:
            continue
        if t_prev == -1:
            return False, ("t_prev = -1 is the end: ᾱ_prev = 1, so the step returns the "
                           f"predicted x_0 ({detail})")
        x0 = s.predict_x0(x, t, eps)
        if _close(got, x0, 1e-4)[0]:
            return False, f"t={t}->{t_prev}: you returned x̂_0; jump to t_prev instead"
        return False, f"t={t}->{t_prev}: {detail}"
    return True, "deterministic DDIM (η = 0) matches, the final jump to x_0 included"


# --- 03 --------------------------------------------------------------------------------------

@checker("sinusoidal embedding (03)", rebuilds=("SinusoidalPositionEmbedBlock",))
def check_sinusoidal(fn):
    t = torch.tensor([0, 1, 7, 149])   # float32 rounding alone: up to ~2e-5 at t = 149
    want = SinusoidalPositionEmbedBlock(32)(t)
    got = fn(t, 32)
    ok, detail = _close(got, want, 1e-4)
    if ok or not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return ok, detail
    sin, cos = want[:, :16], want[:, 16:]
    if _close(got, torch.cat((cos, sin), dim=1), 1e-4)[0]:
        return False, f"{detail}: the cosines come first; the sines go first, then the cosines"
    if _close(got, torch.stack((sin, cos), dim=2).flatten(1), 1e-4)[0]:
        return False, (f"{detail}: sines and cosines are interleaved (the Transformer's layout); "
                       "here all the sines come first, then all the cosines")
    angles = t.float()[:, None] * 10_000 ** (-torch.arange(16) / 16)
    if _close(got, torch.cat((angles.sin(), angles.cos()), dim=1), 1e-4)[0]:
        return False, (f"{detail}: the exponents are k/(d/2); DDPM's run k/(d/2 − 1), so the last "
                       "frequency is exactly 10⁻⁴")
    return False, detail


@checker("Rearrange pooling (03)", rebuilds=("RearrangePoolBlock", "PixelUnshuffle", "PixelShuffle",
                                          "pixel_unshuffle", "pixel_shuffle"))
def check_rearrange_pool(fn, undo=None):
    """``fn`` must equal the library's space-to-depth exactly; ``undo`` (depth-to-space), when
    given, must give every image back exactly, from ``fn``'s output and from the library's."""
    x = torch.randn(2, 3, 8, 8)
    pooled = Rearrange("b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)(x)
    ok, detail = _close(fn(x), pooled, 0.0)
    if not ok or undo is None:
        return ok, detail
    back, detail = _close(undo(pooled), x, 0.0)
    if not back:
        return False, f"the pooling is right, but undoing it does not give the image back ({detail})"
    return True, "pooled and undone exactly"


@checker("ResidualConvBlock (03)", rebuilds=("ResidualConvBlock",), own=("forward",))
def check_residual_block(cls):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    student, reference = cls(3, 8), ResidualConvBlock(3, 8)
    try:
        ok, detail = _same_module(student, reference, x)
    except RuntimeError as err:
        if "must match the size" not in str(err):
            raise
        return False, ("the sum's two terms differ in shape (here the input has 3 channels, "
                       "conv1's and conv2's outputs 8): both terms need out_ch channels")
    if ok or "layers differ" in detail:
        return ok, detail
    with torch.no_grad():
        if _close(student(x), reference.conv2(reference.conv1(x)))[0]:
            return False, "the residual sum is missing: the skip connection adds nothing"
    return False, f"{detail}; check what the skip connection adds, and to what"


# --- 04 --------------------------------------------------------------------------------------

@checker("classifier-free guidance (04)", rebuilds=("CFGDenoiser", "sample_guided"))
def check_guidance(fn):
    cond, uncond = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    for w in (-1.0, 0.0, 0.5, 2.0):
        got = fn(cond.clone(), uncond.clone(), w)   # clones: an in-place slip changes no reference
        ok, detail = _close(got, (1 + w) * cond - w * uncond)
        if not ok:
            if not isinstance(got, torch.Tensor) or got.shape != cond.shape:
                return False, f"w={w}: {detail}"
            if _close(got, uncond + w * (cond - uncond))[0]:
                return False, (f"w={w}: that is the other convention, ε_u + w·(ε_c − ε_u), where "
                               "w = 1 is the conditional model; this course's w = 0 is the "
                               "conditional model")
            point = {-1.0: "at w = -1 the guided noise must be ε_uncond itself (the unconditional "
                           "model alone)",
                     0.0: "at w = 0 it must be ε_cond itself (no guidance)"}.get(
                w, "right at w = -1 and w = 0, but not a straight line in w through those two points")
            return False, f"w={w}: {detail}; {point}"
    return True, "matches for w = -1, 0, 0.5 and 2"


def _paste_back_slip(got, x, photo, keep, t_prev, schedule, noise) -> str:
    """What a wrong paste-back did, told without handing over the line."""
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return "return x's shape: the sampler's x with the known pixels replaced"
    free = (keep == 0).expand_as(x)
    if not _close(got[free], x[free])[0]:
        return "where keep = 0 the sampler's x must stay as it is"
    if t_prev < 0:
        return ("after the last step no noise is left in the sampler's x: what should the known "
                "pixels be then?")
    if _close(got, paste_back(x, photo, keep, -1, schedule, noise))[0]:   # the last step's paste
        return ("the pasted pixels are the clean photo, but the sampler's x at t_prev is still "
                "noisy: the known pixels need the same noise level (02's forward process)")
    for other in (t_prev + 1, t_prev - 1):
        if 0 <= other < len(schedule.alpha_bars) and _close(
                got, paste_back(x, photo, keep, other, schedule, noise))[0]:
            return (f"the pasted pixels carry step {other}'s noise level; the sampler has just "
                    "stepped to t_prev")
    return "where keep = 1: the photo noised to t_prev's level with the noise given"


@checker("pasting back the known pixels (04)", rebuilds=("paste_back", "inpaint"))
def check_paste_back(fn):
    schedule = cosine_schedule(20)
    g = torch.Generator().manual_seed(0)
    x, photo, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    keep = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    for t_prev in (12, 3, -1):
        got = fn(x, photo, keep, t_prev, schedule, noise)
        ok, detail = _close(got, paste_back(x, photo, keep, t_prev, schedule, noise))
        if not ok:
            hint = _paste_back_slip(got, x, photo, keep, t_prev, schedule, noise)
            return False, f"t_prev={t_prev}: {detail}; {hint}"
    return True, "matches at t_prev = 12, 3 and -1 (the last step)"


@checker("guided noise in one forward pass (04)", rebuilds=("CFGDenoiser", "sample_guided"))
def check_guided_eps(fn):
    calls = []

    def toy_model(x, t, c=None, c_mask=None):
        calls.append(len(x))
        keep = c_mask.reshape(-1, 1, 1, 1)
        return x * 0.5 + keep * c.sum(1).reshape(-1, 1, 1, 1) + t.reshape(-1, 1, 1, 1) / 100

    torch.manual_seed(0)
    x, t, c = torch.randn(4, 1, 8, 8), torch.full((4,), 7), torch.randn(4, 10)
    for w in (0.5, 2.0):
        calls.clear()
        got = fn(toy_model, x, t, c, w)
        student_calls = list(calls)
        ok, detail = _close(got, CFGDenoiser(toy_model, w)(x, t, c))
        if not ok:
            return False, (f"w={w}: {detail}; split the output with .chunk(2) (context kept, "
                           "then dropped) and mix the halves with Exercise 2's formula")
        if student_calls != [2 * len(x)]:
            return False, (f"w={w}: the model ran on batches of {student_calls}; run it once on "
                           f"the doubled batch of {2 * len(x)} (context kept, then dropped)")
    return True, "matches for w = 0.5 and 2, with one forward pass of a doubled batch"


@checker("context with dropout (04)", rebuilds=("keep_mask", "mix_contexts"))
def check_context_drop(fn):
    labels = torch.randint(0, 10, (20_000,))
    masks = []
    for keep_prob in (0.9, 0.5, 0.5):   # another probability, and twice: a mask drawn each call
        c = fn(labels, 10, keep_prob)
        if not isinstance(c, torch.Tensor) or c.shape != (20_000, 10):
            return False, f"expected a (20000, 10) tensor, got {getattr(c, 'shape', type(c))}"
        kept = c.sum(dim=1)
        if not set(kept.unique().tolist()) <= {0.0, 1.0}:
            return False, "each row must be a one-hot vector or all zeros"
        if not torch.equal(c[kept == 1].argmax(dim=1), labels[kept == 1]):
            return False, "kept rows must be the one-hot vector of their own label"
        share = kept.mean().item()
        if abs(share - keep_prob) >= 0.015:
            return False, (f"with keep_prob={keep_prob}, {share:.1%} of contexts kept (expected "
                           f"about {keep_prob:.0%}): keep each row with probability keep_prob")
        masks.append(kept)
    if torch.equal(masks[1], masks[2]):
        return False, ("two calls dropped exactly the same rows: draw the mask at random on every "
                       "call (torch.rand), not as a fixed pattern or from a fixed seed")
    return True, "each row kept with probability keep_prob (90% and 50% tried), a new mask each call"


# --- 05 --------------------------------------------------------------------------------------

@checker("CLIP contrastive loss (05)", rebuilds=("ClipLoss",))
def check_clip_loss(fn):
    import open_clip
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    scale = torch.tensor(10.0)
    got = fn(img, txt, scale)
    ok, detail = _close(got, open_clip.ClipLoss()(img, txt, scale), 1e-5)
    if ok or not isinstance(got, torch.Tensor):
        return ok, detail
    logits, target = scale * img @ txt.T, torch.arange(len(img))
    one_way = {"images to captions": torch.nn.functional.cross_entropy(logits, target),
               "captions to images": torch.nn.functional.cross_entropy(logits.T, target)}
    for way, loss in one_way.items():
        if _close(got, loss, 1e-5)[0]:
            return False, (f"{detail}: only {way} is scored; CLIP's loss is the mean of both "
                           "directions' cross-entropies")
    if _close(got, sum(one_way.values()), 1e-5)[0]:
        return False, f"{detail}: both directions summed; CLIP's loss is their mean"
    return False, detail


@checker("zero-shot classification (05)", rebuilds=("zero_shot",))
def check_zero_shot(fn):
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(12, 16), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    lengths = torch.tensor([0.5, 4.0, 1.0, 0.25, 2.0])[:, None]   # prompts of unequal lengths
    got = fn(img * 3.0, txt * lengths)     # not unit length: the function must normalise
    want = (img @ txt.T).argmax(dim=1)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False, f"expected a tensor of {len(img)} indices, got {getattr(got, 'shape', got)}"
    if torch.equal(got, (img @ txt.T).argmin(dim=1)):
        return False, "you picked the least similar prompt: use argmax"
    if torch.equal(got.long(), (img @ (txt * lengths).T).argmax(dim=1)):
        return False, ("you took the argmax of dot products: normalise the prompts too (a longer "
                       "vector is not a closer one)")
    if not torch.equal(got.long(), want):
        return False, "indices differ: normalise both sets, then argmax of the cosine similarities"
    return True, "picks the most similar prompt for every image, whatever the vectors' lengths"
