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


def lock_versions() -> dict[str, str]:
    pins = (line.strip() for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines())
    return dict(normalise(pin).split("==") for pin in pins if pin and not pin.startswith("#"))


def test_the_azure_job_environment_has_the_workspace_plugin_and_what_it_requires():
    """Blocker 1: Azure ML jobs reach the workspace's MLflow only through azureml-mlflow, whose requirements
    (mlflow-skinny<=3.15.0, azure-storage-blob<=12.27.1, pytz<=2025.2 at 1.62.0.post6) the one pinned set meets."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    pip_section = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    assert any(normalise(pin).startswith("azureml-mlflow==") for pin in pip_section)
    lock = lock_versions()
    unmet = []
    for requirement in map(Requirement, requires("azureml-mlflow") or []):
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement
        name = normalise(f"{requirement.name}==").rstrip("=")
        if name not in lock or not requirement.specifier.contains(lock[name], prereleases=True):
            unmet.append(f"{requirement} (lock: {lock.get(name, 'absent')})")
    assert not unmet, f"azureml-mlflow's requirements the lock does not meet: {unmet}"
