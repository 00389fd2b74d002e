"""pyproject.toml and environment.yml must list the same dependencies and ranges."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def parse(spec: str) -> tuple[str, str]:
    name, rng = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec.strip()).groups()
    return CONDA_NAMES.get(name.lower(), name.lower()), rng.replace(" ", "")


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(parse(s) for s in project["dependencies"] + project["optional-dependencies"]["dev"])
    deps = []
    text = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in text.splitlines():
        m = re.match(r"\s+- ([A-Za-z].*)$", line)
        if m and not line.strip().startswith("- -e"):
            deps.append(m.group(1))
    conda = dict(parse(s) for s in deps if parse(s)[0] not in ("python", "pip"))
    assert conda == wanted
