"""A session-wide folder of tiny random models that fit together in the pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory):
    """Tiny random weights for every checkpoint, plus stand-in tokenizer.json and mel_norms.pth."""
    from tortoise_xpu.models.loading import write_random_weights, write_standin_data

    out = tmp_path_factory.mktemp("tiny-models")
    write_random_weights(out, tiny=True, seed=1234, sha=False)
    write_standin_data(out)
    return out
