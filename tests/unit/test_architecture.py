"""The layout's rules hold: import contracts, a light `common`, and a help text for every command-line option."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from common.settings import PROJECT_ROOT, load_settings
from tests.helpers import VENV_BIN

CLI_MODULES = [
    "common.__main__",
    "loop.__main__",
    "training.__main__",
    "serving.__main__",
    "serving.batch",
    "simulation.__main__",
    "monitoring.__main__",
    "labeling.__main__",
    "cloud.__main__",
]


def test_the_import_contracts_of_pyproject_are_kept():
    result = subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _heavy_modules_loaded(script: str) -> set[str]:
    """The heavy packages (Spark, TensorFlow, Keras, Azure) loaded by `script`, and not by `import mlflow` alone."""
    probe = (
        "import sys\n"
        "heavy = lambda: {m.split('.')[0] for m in sys.modules} & {'pyspark', 'tensorflow', 'keras', 'azure'}\n"
        "import mlflow\n"  # MLflow itself imports pyspark when it is installed: that is not common's doing
        "before = heavy()\n"
        f"{script}\n"
        "print(','.join(sorted(heavy() - before)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(filter(None, result.stdout.strip().split(",")))


def test_importing_every_common_module_loads_no_spark_tensorflow_or_azure():
    modules = sorted(path.stem for path in (PROJECT_ROOT / "common").glob("*.py") if path.stem != "__main__")
    assert {"spark", "tracking"} <= set(modules)
    script = "import importlib\n" + "".join(f"importlib.import_module('common.{name}')\n" for name in modules)
    assert _heavy_modules_loaded(script) == set()


def test_the_spark_session_builder_imports_pyspark_only_when_called():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, common.spark; print('pyspark' in sys.modules)"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield parser.prog, action


@pytest.mark.parametrize("module_name", CLI_MODULES)
def test_every_command_line_option_has_a_help_text(module_name):
    module = importlib.import_module(module_name)
    build = module.build_parser
    parser = build(load_settings()) if build.__code__.co_argcount else build()
    missing = [f"{prog} {'/'.join(action.option_strings) or action.dest}" for prog, action in _options(parser) if not action.help]
    assert missing == []


def test_every_entry_point_sets_up_logging_through_common_logs():
    sources = [
        path
        for folder in (
            "common",
            "training",
            "serving",
            "simulation",
            "monitoring",
            "labeling",
            "cloud",
            "loop",
            "bench",
            "scripts",
        )
        for path in (PROJECT_ROOT / folder).rglob("*.py")
    ]
    elsewhere = [str(path.relative_to(PROJECT_ROOT)) for path in sources if "logging.basicConfig" in path.read_text()]
    assert elsewhere == ["common/logs.py"]
