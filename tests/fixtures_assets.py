"""pytest plugin: the ``official_data`` fixture (the original package's data files and voices).

Registered from tests/conftest.py (``pytest_plugins``).  See tests/assets.py for how
the files are obtained (PyPI sdist of tortoise-tts 3.0.0, cached under ``.cache/``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import assets


@pytest.fixture(scope="session")
def official_data() -> Path:
    """Folder with tokenizer.json, mel_norms.pth, the other tortoise/data files and voices/<name>/*.

    Skips (with the reason) where the sdist cannot be downloaded or read.
    """
    try:
        return assets.official_data_dir()
    except assets.Unavailable as exc:
        pytest.skip(f"original tortoise-tts {assets.VERSION} data not available: {exc}")


@pytest.fixture(scope="session")
def official_tokenizer_file(official_data: Path) -> Path:
    """The original tokenizer.json."""
    return official_data / "tokenizer.json"


@pytest.fixture(scope="session")
def official_mel_norms_file(official_data: Path) -> Path:
    """The original mel_norms.pth."""
    return official_data / "mel_norms.pth"
