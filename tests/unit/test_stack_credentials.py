"""The team stack's secrets: made once, kept in a file only its owner reads, never replaced while kept."""

import json

from devtools.stack import credentials


def test_the_stacks_secrets_are_made_once_kept_private_and_survive_a_new_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITDRIFT_STACK_DIR", str(tmp_path))
    first = credentials()
    path = tmp_path / "credentials.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert {"postgres_password", "azurite_key", "mlflow_admin_password", "mlflow_reader_password", "api_key"} <= set(first)
    assert len(set(first.values())) == len(first) and all(len(secret) >= 24 for secret in first.values())
    assert credentials() == first  # read back, not made again: PostgreSQL's cluster and MLflow's users keep them


def test_a_credentials_file_missing_a_secret_keeps_what_it_has_and_gains_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITDRIFT_STACK_DIR", str(tmp_path))
    (tmp_path / "credentials.json").write_text(json.dumps({"postgres_password": "kept-from-an-earlier-stack"}))
    made = credentials()
    assert made["postgres_password"] == "kept-from-an-earlier-stack" and "api_key" in made
    assert json.loads((tmp_path / "credentials.json").read_text()) == made
