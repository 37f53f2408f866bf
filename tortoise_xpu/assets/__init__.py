"""The files Tortoise needs: what they are (catalogue), where they lie (folder), fetching, checking.

``from tortoise_xpu import assets`` gives the public names of the four modules:
:mod:`~tortoise_xpu.assets.catalogue` (pure data), :mod:`~tortoise_xpu.assets.folder` (the models
folder and its manifest), :mod:`~tortoise_xpu.assets.fetch` (download) and
:mod:`~tortoise_xpu.assets.verification` (``models verify``).  Nothing here imports torch.
"""

from tortoise_xpu.assets.catalogue import (ASSETS, DATA_COMMIT, DATA_ENDPOINT, DATA_REPO, HF_REPO, HF_REVISION,
                                           MEL_NORMS_FILE, N_MEL_NORMS, TOKENIZER_FILE, Asset, asset,
                                           official_parameters, resolve_names)
from tortoise_xpu.assets.fetch import (ENV_DATA_ENDPOINT, ENV_HF_ENDPOINT, ENV_HF_REVISION, asset_url, download, ensure,
                                       missing_files)
from tortoise_xpu.assets.folder import (ENV_MODELS, MANIFEST_NAME, download_command, expected_checksum, find,
                                        is_sha256, models_dir, read_manifest, record, require, sha256_file,
                                        user_cache_dir)
from tortoise_xpu.assets.verification import VerifyRow, verify

__all__ = [
    "ASSETS", "Asset", "DATA_COMMIT", "DATA_ENDPOINT", "DATA_REPO", "ENV_DATA_ENDPOINT", "ENV_HF_ENDPOINT",
    "ENV_HF_REVISION", "ENV_MODELS", "HF_REPO", "HF_REVISION", "MANIFEST_NAME", "MEL_NORMS_FILE", "N_MEL_NORMS",
    "TOKENIZER_FILE", "VerifyRow", "asset", "asset_url", "download", "download_command", "ensure",
    "expected_checksum", "find", "is_sha256", "missing_files", "models_dir", "official_parameters", "read_manifest",
    "record", "require", "resolve_names", "sha256_file", "user_cache_dir", "verify",
]
