"""Install metadata: pyproject.toml and environment.yml must ask for the same packages."""
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pip_section_of_environment_yml() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    deps = []
    for line in lines[start + 1:]:
        match = re.match(r"\s+- (.+)", line)
        if not match:
            break
        deps.append(match.group(1).strip())
    return deps


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = [d for d in _pip_section_of_environment_yml() if d != "-e ."]
    assert sorted(conda) == sorted(pyproject)
    assert "-e ." in _pip_section_of_environment_yml()


def test_torch_and_torchvision_are_pinned_as_a_pair():
    """Exact pins, of a pair built together (torchvision 0.(m+15).p goes with torch 2.m.p), and the
    pair installed here: what the stored outputs and figures were measured with."""
    import importlib.metadata
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.fullmatch(r"(torch|torchvision)==(\S+)", d).groups() for d in deps
                if re.match(r"torch(vision)?==", d))
    (major, minor, patch), (v_major, v_minor, v_patch) = (
        map(int, pins[name].split(".")) for name in ("torch", "torchvision"))
    assert (major, v_major, v_minor, v_patch) == (2, 0, minor + 15, patch), pins
    installed = {name: importlib.metadata.version(name).split("+")[0] for name in pins}   # 2.14.1+cpu
    assert installed == pins


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make course", "make test"]
    assert readme.index("make course") < readme.index("## ")
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    # both commands are real targets: make can plan them (dry run, nothing executed)
    for target in ("course", "test"):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    assert "pytest --nbval notebooks/" in subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True).stdout


def test_shipped_weights_and_data_are_packaged():
    """Every file of course_lib that is not Python (the judges' weights, 00's measured runs)
    matches a package-data pattern, so a wheel carries it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["course_lib"]
    assert patterns == ["weights/*.pt", "weights/*.json", "weights/*.txt", "measured_runs.json"]
    package = ROOT / "course_lib"
    shipped = sorted(str(p.relative_to(package)) for p in package.rglob("*")
                     if p.is_file() and p.suffix not in (".py", ".pyc"))
    assert shipped == ["measured_runs.json", "weights/fashion_mnist_classifier.pt",
                       "weights/flowers_classifier.pt", "weights/flowers_held_out.txt",
                       "weights/framing_labels.json",
                       "weights/framing_probe.pt", "weights/mnist_classifier.pt"]
    assert all(any((package / name).match(f"course_lib/{pattern}") for pattern in patterns)
               for name in shipped)


def test_diffusers_is_a_test_only_extra_that_make_test_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("diffusers") for d in project["dependencies"])
    assert "diffusers==0.42.1" in project["optional-dependencies"]["test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: unit nbval browser\b", makefile, re.M)
    for part in ("unit", "nbval", "browser"):
        assert re.search(rf"^{part}: \$\(VENV\)/\.installed-test", makefile, re.M), part
    assert 'pip install -e ".[test]"' in makefile
    assert "pip install -e '.[test]'" in (ROOT / "environment.yml").read_text()


def test_a_cpu_only_install_takes_torch_from_the_index_asked_for_at_the_pinned_versions():
    """`make course TORCH_INDEX=...` (README): PyTorch's CPU build, before the package, at the
    versions pyproject.toml pins; without it, nothing but PyPI."""
    root = ROOT
    pins = re.findall(r'"(torch(?:vision)?==[^"]+)"', (root / "pyproject.toml").read_text())
    dry = subprocess.run(["make", "-n", "-B", ".venv/.installed", "TORCH_INDEX=https://example.invalid/cpu"],
                         cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    cpu = [i for i, line in enumerate(dry) if "--index-url https://example.invalid/cpu" in line]
    package = [i for i, line in enumerate(dry) if line.endswith("pip install -e .")]
    assert len(pins) == 2 and len(cpu) == 1 and package and cpu[0] < package[0], dry
    assert dry[cpu[0]].endswith(" ".join(pins)), dry[cpu[0]]
    plain = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=root, capture_output=True,
                           text=True, check=True).stdout
    assert "--index-url" not in plain
