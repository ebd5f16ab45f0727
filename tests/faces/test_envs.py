"""The conda environments of the workflow install what pyproject.toml declares, and every rule uses one."""

from __future__ import annotations

import re

import pytest
import tomllib
import yaml
from paths import ROOT

ENVS = sorted((ROOT / "envs").glob("*.yaml"))


def _name(requirement: str) -> str:
    """PEP 503 normalized distribution name of a requirement string ('Pillow>=10' -> 'pillow')."""
    name = re.split(r"[\s<>=!~;\[(@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_requirements(env: dict) -> list[str]:
    for dep in env.get("dependencies", []):
        if isinstance(dep, dict) and "pip" in dep:
            return list(dep["pip"])
    return []


def test_there_is_an_env():
    assert ENVS, "envs/*.yaml: expected at least one conda environment file"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_names_the_pyproject_dependencies(path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    env = yaml.safe_load(path.read_text())
    got = {_name(r) for r in _pip_requirements(env) if not r.startswith("-")}
    assert got == wanted, f"only in {path.name}: {sorted(got - wanted)}; only in pyproject.toml: {sorted(wanted - got)}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_installs_the_package(path):
    """Snakemake copies env files away before creating them, so a relative `-e ..` cannot work there:
    the package comes from the post-deploy script, which Snakemake runs inside the new env."""
    script = path.with_suffix(".post-deploy.sh")
    assert script.is_file(), f"{script.name} missing: nothing would install the cpsnake command in {path.name}"
    text = script.read_text()
    assert re.search(r"pip install .*--no-deps", text), text


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_python_satisfies_requires_python(path):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minimum = tuple(int(v) for v in re.search(r">=\s*([\d.]+)", project["requires-python"]).group(1).split("."))
    env = yaml.safe_load(path.read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert pythons, f"{path.name}: no python pinned"
    version = tuple(int(v) for v in re.search(r"([\d.]+)", pythons[0]).group(1).split("."))
    assert version >= minimum


def test_every_rule_names_an_existing_env():
    rules = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
    n_rules = 0
    for smk in rules:
        text = smk.read_text()
        n_rules += len(re.findall(r"^(?:rule|checkpoint) \w+:", text, flags=re.M))
        envs = re.findall(r"conda:\s*\n\s*\"([^\"]+)\"", text)
        assert len(envs) == len(re.findall(r"^(?:rule|checkpoint) \w+:", text, flags=re.M)), (
            f"{smk.name}: a rule has no conda:"
        )
        for env in envs:
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: conda env {env} not found"
    assert n_rules >= 9
