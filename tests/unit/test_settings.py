"""Settings and the registry-URI contract every part reads models by."""

import pytest

from common.settings import RegistryRef, parse_registry_uri


def test_registry_uris_by_alias_or_version_and_nothing_else():
    assert parse_registry_uri("models:/digits-cnn@champion") == RegistryRef("digits-cnn", "champion", None)
    assert parse_registry_uri("models:/digits-cnn/3") == RegistryRef("digits-cnn", None, "3")
    for bad in ("models:/digits-cnn", "runs:/abc/model", "/tmp/model", "models:/@champion"):
        with pytest.raises(ValueError, match="is not models:/<name>@<alias>"):
            parse_registry_uri(bad)
