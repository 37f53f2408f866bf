"""Checking the files of a models folder: checksums, and what can be checked of each file's content.

:func:`verify` gives one :class:`VerifyRow` per file: its sha256 against the catalogue (else the
folder's manifest), and its content: every checkpoint is loaded strictly into its network (unless
``load=False``), ``tokenizer.json`` must parse as a tokenizers file and ``mel_norms.pth`` must hold
80 finite, non-zero floats.  The models are imported only when a file is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tortoise_xpu.assets.catalogue import MEL_NORMS_FILE, N_MEL_NORMS, TOKENIZER_FILE, Asset, asset, resolve_names
from tortoise_xpu.assets.folder import download_command, expected_checksum, find, models_dir, read_manifest, sha256_file
from tortoise_xpu.errors import ModelFileError

__all__ = ["VerifyRow", "verify"]


@dataclass
class VerifyRow:
    """One line of ``tortoise-xpu models verify``.

    ``status`` is ``ok``, ``missing`` (not present: not a failure) or ``failed`` (``reason``
    says why).  ``checksum`` is ``match``, ``mismatch``, ``unknown`` (no hash known) or
    ``skipped``.
    """

    file: str
    model: str
    path: str | None
    parameters: int | None
    status: str
    checksum: str
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def verify(directory: str | os.PathLike | None = None, names: Iterable[str] | None = None, *,
           load: bool = True, checksums: bool = True) -> list[VerifyRow]:
    """Check every present file of ``names`` (default: all) in the models folder.

    A file is checked against its sha256 (catalogue, else the folder's manifest) and, with
    ``load``, loaded into its model with ``strict=True``; data files are always parsed and
    checked.  Missing files get status ``missing``; a file that fails a check gets ``failed``
    with the reason.
    """
    d = models_dir(directory)
    rows = []
    for n in resolve_names(names):
        rows.append(_verify_one(n, d, load=load, checksums=checksums))
    return rows


def _verify_one(name: str, d: Path, load: bool, checksums: bool) -> VerifyRow:
    a = asset(name)
    path = find(a.name, d)
    model_label = _model_label(a)
    if path is None:
        return VerifyRow(a.name, model_label, None, None, "missing", "skipped",
                         f"not downloaded: {download_command(a.name, d)}")
    checksum = "skipped"
    standin = (read_manifest(d).get(a.name) or {}).get("source") == "stand-in"
    if standin:
        # written by `models random-weights` for offline tests: not the official file, and says so
        checksum = "stand-in"
    elif checksums and path.suffix != ".safetensors":
        want, origin = expected_checksum(a.name, d)
        if want is None:
            checksum = "unknown"
        else:
            got = sha256_file(path)
            checksum = "match" if got == want else "mismatch"
            if got != want:
                return VerifyRow(a.name, model_label, str(path), None, "failed", checksum,
                                 f"sha256 {got[:12]}… differs from the {origin}'s {want[:12]}…; "
                                 f"fetch it again: {download_command(a.name, d)} --force")
    try:
        n_params = _content_check(a, path, d, load)
    except ModelFileError as exc:
        return VerifyRow(a.name, model_label, str(path), None, "failed", checksum, str(exc))
    return VerifyRow(a.name, model_label, str(path), n_params, "ok", checksum)


def _model_label(a: Asset) -> str:
    if not a.model:
        return {TOKENIZER_FILE: "BPE tokenizer", MEL_NORMS_FILE: "mel norms"}.get(a.name, "data")
    from tortoise_xpu.models.registry import SPECS

    spec = SPECS.get(a.name)
    return spec.class_name if spec else "?"


def check_tokenizer_file(path: Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` parses as a Hugging Face tokenizers file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{TOKENIZER_FILE} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ModelFileError(f"{TOKENIZER_FILE} has no 'model' section; not a tokenizers file")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library raises its own exception types
        raise ModelFileError(f"{TOKENIZER_FILE} does not load as a tokenizer: {str(exc)[:160]}") from None


def check_mel_norms_file(path: Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` holds 80 finite, non-zero floats."""
    import torch

    from tortoise_xpu.models.loading import load_state

    t = load_state(path)
    if not isinstance(t, torch.Tensor):
        raise ModelFileError(f"{MEL_NORMS_FILE} holds {type(t).__name__}, not a tensor of {N_MEL_NORMS} floats")
    if tuple(t.shape) != (N_MEL_NORMS,) or not t.is_floating_point():
        raise ModelFileError(f"{MEL_NORMS_FILE} holds a {str(t.dtype).replace('torch.', '')} tensor of shape "
                             f"{tuple(t.shape)}; expected {N_MEL_NORMS} floats, one per mel band")
    if not bool(torch.isfinite(t).all()) or bool((t == 0).any()):
        raise ModelFileError(f"{MEL_NORMS_FILE} holds non-finite or zero values; expected {N_MEL_NORMS} "
                             f"finite band norms")


def _content_check(a: Asset, path: Path, d: Path, load: bool) -> int | None:
    """Check what can be checked of ``path``'s content; return the parameter count (None for data).

    Data files are always checked (they are small); checkpoints only with ``load``.
    """
    if a.name == TOKENIZER_FILE:
        check_tokenizer_file(path)
        return None
    if a.name == MEL_NORMS_FILE:
        check_mel_norms_file(path)
        return None
    if not load or not a.model:
        return None
    from tortoise_xpu.models import loading, registry

    model = loading.load_model(a.name, d, path=path)
    # Counted as the file stores them (weight-norm gains included): the published figures.
    return registry.checkpoint_parameter_count(a.name, model)
