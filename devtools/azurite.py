"""Azurite, the Azure Storage emulator that `make stack`, the tests and the benchmarks run blob storage on:
where `make azurite` installs it, the command that starts it on loopback, and its connection string."""

from __future__ import annotations

from pathlib import Path

from common.settings import PROJECT_ROOT

AZURITE_BLOB = PROJECT_ROOT / ".venv" / "node" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# the emulator's published development key: Azurite's documentation gives it to every user
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_command(port: int, folder: Path) -> list[str]:
    """The blob service on 127.0.0.1:`port`, keeping its data in `folder`."""
    if not AZURITE_BLOB.is_file():
        raise FileNotFoundError(f"{AZURITE_BLOB} is missing: `make azurite` installs the emulator (npm)")
    return [
        str(AZURITE_BLOB),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--location",
        str(folder),
        "--skipApiVersionCheck",
        "--loose",
        "--silent",
    ]


def accounts_env(account: str, key: str) -> dict[str, str]:
    """Azurite's environment for one account of our own (its well-known development account is then disabled)."""
    return {"AZURITE_ACCOUNTS": f"{account}:{key}"}


def connection_string(port: int, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint=http://127.0.0.1:{port}/{account};"
