"""The environment files agree: pyproject's pins, conda.yaml's, and the resolved lock."""

import re
import tomllib

import yaml

from common.settings import PROJECT_ROOT


def normalise(requirement: str) -> str:
    name, _, pin = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={pin}"


def pyproject_pins() -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return {normalise(requirement) for requirement in project["dependencies"]}


def test_every_dependency_is_pinned_exactly():
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][0-9a-z.]*", pin) for pin in pyproject_pins())


def test_conda_yaml_has_the_same_pins_as_pyproject():
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    pip_section = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    assert {normalise(requirement) for requirement in pip_section} == pyproject_pins()


def test_the_lock_holds_every_pin_of_pyproject():
    lock = {
        normalise(line.strip())
        for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert pyproject_pins() <= lock
