"""What runs inside the grading sandbox (``course_lib/sandbox.py``), each step a fresh process.

1. ``execute NOTEBOOK EXPORT RESULT``: run the notebook top to bottom in a new Jupyter kernel. Its
   last cell (appended by the grader) exports ``sample_digits`` *by value*, with the model, tensors
   and helper functions it uses, to EXPORT. On a failing cell, RESULT gets the cell and the error.
2. ``sample EXPORT SPEC OUT``, three times (:func:`sample`), each in a fresh copy of the folder
   step 1 left: a new Python process (no IPython, no input transformers, none of the notebook's
   monkeypatches) loads the export and calls ``sample_digits`` itself with the labels and seed of
   SPEC, which the grader writes only after step 1's processes are all gone. The third draw
   repeats the second after every network weight is shuffled (:func:`shuffle_weights`): a
   sampler that draws from its network has no digits left to draw, one that returns stored or
   hand-made pictures draws the same kind as before, and it cannot tell the two draws apart by
   counting its calls. The grader then judges each OUT from outside the sandbox.

So the code that asks for the graded samples is the grader's; what the submission controls is
``sample_digits`` and what it uses, and that is what the grader's checks judge.
"""
from __future__ import annotations

import builtins
import gc
import importlib.util
import json
import marshal
import pickle
import sys
import types
import warnings
from contextlib import contextmanager
from pathlib import Path


EXPORT_CELL = """
# --- added by course_lib.grade: export sample_digits for grading ---
import course_lib.grade_runner as _grade_runner
_grade_runner.export(globals(), {path!r})
"""
GRADER_FAILED = 5   # exit status: the grader's step failed before any of the notebook's code ran
NO_SAMPLER = "the notebook must define a function sample_digits(labels)"
NOT_EXPORTABLE = ("sample_digits could not be exported for grading ({}); keep sample_digits, its "
                  "model and the helpers it calls as plain top-level objects of the notebook")


class GraderFailed(Exception):
    """The grader's own step failed before the notebook's code could run: exit GRADER_FAILED.
    Only :func:`execute` says so: there the notebook runs in another process (its kernel), so its
    code cannot fake this exit; in :func:`sample` it runs in this one and could."""


# --- export by value ----------------------------------------------------------------------------

def _importable(obj) -> bool:
    """True when ``obj`` can be found again by module and name (pickled by reference)."""
    module = getattr(obj, "__module__", None)
    if not module or module == "__main__":
        return False
    try:
        found = importlib.import_module(module)
        for part in obj.__qualname__.split("."):
            found = getattr(found, part)
    except Exception:
        return False
    return found is obj


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _make_function(code: bytes, module: str | None, closure_size: int):
    globals_ = importlib.import_module(module).__dict__ if module else {"__builtins__": builtins}
    cells = tuple(types.CellType() for _ in range(closure_size)) or None
    return types.FunctionType(marshal.loads(code), globals_, None, None, cells)


def _set_function(func, state) -> None:
    globals_, cells, attrs = state
    if globals_:
        func.__globals__.update(globals_)
    for cell, value in zip(func.__closure__ or (), cells):
        if value is not _EMPTY:
            cell.cell_contents = value
    for key, value in attrs.items():
        setattr(func, key, value)


def _make_class(name: str, bases: tuple, metaclass):
    return types.new_class(name, bases, {"metaclass": metaclass})


def _set_class(cls, attrs: dict) -> None:
    for key, value in attrs.items():
        setattr(cls, key, value)


class _Empty:
    def __reduce__(self):
        return "_EMPTY"


_EMPTY = _Empty()


class _ByValue(pickle.Pickler):
    """Pickles the notebook's own functions and classes by value (their code, not their name)."""

    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        if isinstance(obj, types.FunctionType) and not _importable(obj):
            return self._function(obj)
        if isinstance(obj, type) and not _importable(obj):
            skip = {"__dict__", "__weakref__"}
            attrs = {k: v for k, v in vars(obj).items() if k not in skip}
            return (_make_class, (obj.__name__, obj.__bases__, type(obj)), attrs, None, None,
                    _set_class)
        if isinstance(obj, property):
            return property, (obj.fget, obj.fset, obj.fdel, obj.__doc__)
        if isinstance(obj, (staticmethod, classmethod)):
            return type(obj), (obj.__func__,)
        return NotImplemented

    @staticmethod
    def _function(func):
        module = func.__globals__.get("__name__")
        own = module in (None, "__main__") or module not in sys.modules
        globals_ = ({k: func.__globals__[k] for k in _names(func.__code__) if k in func.__globals__}
                    if own else None)
        cells = tuple(_cell(c) for c in func.__closure__ or ())
        attrs = {"__name__": func.__name__, "__qualname__": func.__qualname__,
                 "__defaults__": func.__defaults__, "__kwdefaults__": func.__kwdefaults__,
                 "__module__": func.__module__, "__doc__": func.__doc__, **vars(func)}
        return (_make_function, (marshal.dumps(func.__code__), None if own else module,
                                 len(cells)), (globals_, cells, attrs), None, None, _set_function)


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY


def export(namespace: dict, path: str) -> None:
    """The appended cell: write ``sample_digits`` and everything it uses, by value, to ``path``."""
    func = namespace.get("sample_digits")
    if func is None or not callable(func):
        raise RuntimeError("GRADER: " + NO_SAMPLER)
    try:
        with open(path, "wb") as file:
            _ByValue(file, protocol=pickle.HIGHEST_PROTOCOL).dump(func)
    except Exception as err:
        from .grade_checks import REASON_CAP   # the report keeps this many characters: the
        room = REASON_CAP - len(NOT_EXPORTABLE.format(""))   # advice after the detail must fit
        why = f"{type(err).__name__}: {err}"[:room]
        raise RuntimeError("GRADER: " + NOT_EXPORTABLE.format(why)) \
            from None


# --- the two steps --------------------------------------------------------------------------------

def execute(notebook: str, export_path: str, result: str) -> int:
    """Run the notebook in a new kernel; on a failing cell write its number and error to ``result``."""
    try:   # the grader's own modules (torch: the draws' and the notebook's) are not its to miss
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        if importlib.util.find_spec("torch") is None:   # found, not imported: its memory is the
            raise ImportError("No module named 'torch'")  # notebook's while the kernel runs
    except ImportError as err:
        raise GraderFailed(f"{type(err).__name__}: {err}") from err
    nb = nbformat.read(notebook, as_version=4)
    Path(notebook).unlink()   # read once: the notebook's code cannot read its own file for data
    nb.cells.append(nbformat.v4.new_code_cell(EXPORT_CELL.format(path=export_path)))
    started = []   # cells nbclient began (markdown too): until the first, no notebook code ran

    def cell_started(cell, cell_index) -> None:
        started.append(cell_index)

    client = NotebookClient(nb, timeout=None, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(Path(notebook).parent)}},
                            on_cell_start=cell_started)
    try:
        client.execute()
    except CellExecutionError as err:
        cell = next((i for i, c in enumerate(nb.cells, 1) if c.cell_type == "code"
                     and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        Path(result).write_text(json.dumps({"cell": cell, "last": cell == len(nb.cells),
                                            "ename": err.ename, "evalue": str(err.evalue)[:2000]}))
        return 3
    except Exception as err:
        if started:   # the notebook's kernel died or hung up while running its code
            raise
        raise GraderFailed(f"the Python kernel did not start ({type(err).__name__}: "
                           f"{str(err)[:300]})") from err
    return 0


def sample(export_path: str, spec_path: str, out: str) -> int:
    """Fresh process, one draw: load the export, call ``sample_digits``, save the pictures.

    The grader runs this three times, each in a fresh copy of the notebook's folder, with the same
    command line: draw ``a`` (every label, the first seed), ``b`` (a fifth of them, the second
    seed) and ``c`` (``b``'s labels and seed again, after :func:`shuffle_weights`). Nothing
    carries over from one draw to the next, and SPEC is deleted before the export is loaded, so
    ``sample_digits`` sees ``b`` and ``c`` alike: it cannot count its calls, or read which draw
    it is in, to cheat only in ``c``. A ``c`` call that raises or runs past its time gives no
    pictures (an empty tensor); in ``a`` and ``b`` either one is the submission's failure.
    """
    import torch

    from .grade_checks import write_samples

    spec = json.loads(Path(spec_path).read_text())
    Path(spec_path).unlink()
    save, manual_seed = write_samples, torch.manual_seed  # taken before any submission code runs
    torch.set_num_threads(int(spec.get("threads", 1)))
    generator = torch.Generator().manual_seed(spec["seed_shuffle"])
    keep = not spec["shuffle"]     # every draw does the shuffle's work; only the third keeps nothing

    def shuffle() -> None:
        shuffle_weights(generator, keep=keep)

    # The grader's modules are loaded (the runner starts with -P, so none came from this folder);
    # now the notebook's own modules may: one it wrote here and its functions use is found last.
    sys.path.append(str(Path(export_path).parent))
    with open(export_path, "rb") as file:
        sample_digits = pickle.load(file)
    shuffle()
    manual_seed(spec["seed"])
    with _reloads_shuffled(shuffle):
        images = _call(sample_digits, spec["labels"], float(spec["seconds"]), forgiving=not keep)
    save(images, out)
    return 0


def shuffle_weights(generator, keep: bool = False) -> int:
    """Shuffle the entries of every network weight in this process; return how many tensors.

    The weights are every floating parameter and buffer of every ``nn.Module`` and every other
    tensor that requires a gradient (a network written as plain tensors). Each keeps its shape and
    its values, in a random order: the network keeps its scale and loses what it learned.
    ``keep=True`` does the same work and draws the same random orders, but writes every weight
    back as it was: the draws that are not shuffled take as long, so timing cannot tell them apart.
    """
    import torch

    found = {}
    with warnings.catch_warnings():      # isinstance() wakes some of torch's deprecated aliases
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.nn.Module):
                for tensor in (*obj.parameters(recurse=False), *obj.buffers(recurse=False)):
                    found[id(tensor)] = tensor
            elif isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf:
                found[id(obj)] = obj
    shuffled = 0
    with torch.no_grad():
        for tensor in found.values():
            if tensor.is_floating_point() and tensor.layout == torch.strided and tensor.numel() > 1:
                try:
                    flat = tensor.detach().reshape(-1).clone()
                    order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
                    moved = flat[order]
                    tensor.copy_((flat if keep else moved).reshape(tensor.shape))
                except Exception:  # one that cannot be shuffled keeps what it holds, and is judged so
                    continue
                shuffled += 1
    return shuffled


@contextmanager
def _reloads_shuffled(shuffle):
    """While inside, weights that ``sample_digits`` loads from a file are shuffled as well: each
    load is followed by ``shuffle()`` (which, in the draws that are not shuffled, only does the
    work and keeps every weight).

    An honest sampler may reload its network (``model.load_state_dict(torch.load(path))``) on
    every call; the shuffled draw must not get the trained weights back that way.
    """
    import torch

    load, load_state_dict = torch.load, torch.nn.Module.load_state_dict

    def load_then_shuffle(*args, **kwargs):
        loaded = load(*args, **kwargs)
        shuffle()
        return loaded

    def load_state_dict_then_shuffle(module, *args, **kwargs):
        result = load_state_dict(module, *args, **kwargs)
        shuffle()
        return result

    torch.load, torch.nn.Module.load_state_dict = load_then_shuffle, load_state_dict_then_shuffle
    try:
        yield
    finally:
        torch.load, torch.nn.Module.load_state_dict = load, load_state_dict


def _call(sample_digits, labels, seconds: float, forgiving: bool = False):
    """Call ``sample_digits(labels)`` within ``seconds``. ``forgiving`` (the draw with shuffled
    weights): an error or the time running out gives an empty tensor, no pictures."""
    import torch

    from .grade_checks import Rejected, time_limit

    try:   # the alarm, even one that fires as time_limit disarms it, ends up in the except
        with time_limit(seconds, "sample_digits"), torch.no_grad():
            images = sample_digits(torch.tensor(labels))
        return _plain(images)
    except Exception as err:  # a network that lost its weights may well fail or hang: no digits
        if forgiving:
            return torch.empty(0)
        if isinstance(err, Rejected):
            raise RuntimeError(f"GRADER: time-out: {err.reason}") from None
        raise


def _plain(images):
    """A dense, plain CPU tensor, or a GRADER error saying what sample_digits returned instead."""
    import torch

    if type(images) is not torch.Tensor:
        raise RuntimeError(f"GRADER: sample_digits must return a plain torch.Tensor, got "
                           f"{type(images).__module__}.{type(images).__qualname__}")
    if images.layout != torch.strided:
        raise RuntimeError(f"GRADER: sample_digits returned a {images.layout} tensor; return a "
                           "dense one (call .to_dense())")
    return images.detach().cpu().clone().contiguous()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    step, args = argv[0], argv[1:]
    try:
        return {"execute": execute, "sample": sample}[step](*args)
    except GraderFailed as err:
        print(f"the grader's {step} step failed in the sandbox, before the notebook's code ran: "
              f"{err}", file=sys.stderr)
        return GRADER_FAILED
    except RuntimeError as err:
        if "GRADER:" not in str(err):
            raise
        print(str(err).split("GRADER:", 1)[1].strip(), file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
