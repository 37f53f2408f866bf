"""The files Tortoise needs, as data: names, descriptions, sources, sizes, sha256, parameter counts.

Nine checkpoints come from the Hugging Face repository ``Manmay/tortoise-tts`` (the one the
original's ``get_model_path`` downloads from); the two small data files the original ships in its
package (``tokenizer.json``, ``mel_norms.pth``) come from a pinned commit of
``neonbjb/tortoise-tts`` on GitHub.  Every file is described by an :class:`Asset`.

This module is the one home of these facts: the parameter counts here are what
:mod:`tortoise_xpu.models.registry` checks loaded networks against and what the run policy
(:mod:`tortoise_xpu.backends.policy`) sizes device memory from.  It imports nothing heavy and
nothing of the package but its errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from tortoise_xpu.errors import UserError

__all__ = [
    "ASSETS", "Asset", "DATA_COMMIT", "DATA_ENDPOINT", "DATA_REPO", "HF_REPO", "HF_REVISION", "MEL_NORMS_FILE",
    "N_MEL_NORMS", "TOKENIZER_FILE", "asset", "official_parameters", "resolve_names",
]

# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

HF_REPO = "Manmay/tortoise-tts"
#: The Hugging Face revision every checkpoint is fetched at.  It SHOULD be the 40-hex commit sha
#: of ``Manmay/tortoise-tts`` (see https://huggingface.co/Manmay/tortoise-tts/commits/main): this
#: catalogue was written offline, where the sha could not be looked up, so it still names the
#: branch.  Replace it with the sha (and fill in the sizes / sha256 below) once known; every
#: download records the commit the server actually served (``X-Repo-Commit``) in the manifest,
#: so the first real download tells you the value.  ``$TORTOISE_XPU_HF_REVISION`` overrides it.
HF_REVISION = "main"

#: The GitHub repository and commit the two small data files are fetched from.  The commit's
#: setup.py says version 3.0.0; the sha256 below are those of the files PyPI's
#: tortoise-tts==3.0.0 ships, so a different file at this commit fails the check.
DATA_REPO = "neonbjb/tortoise-tts"
DATA_COMMIT = "09566627fa9d348e2528524afacaee23456e336b"
DATA_ENDPOINT = "https://raw.githubusercontent.com"

#: The BPE vocabulary of the text front end (a Hugging Face ``tokenizers`` JSON file).
TOKENIZER_FILE = "tokenizer.json"
#: The per-band divisors of the AR conditioning mel: a torch file holding one float tensor.
MEL_NORMS_FILE = "mel_norms.pth"
#: How many values :data:`MEL_NORMS_FILE` holds: one per band of the 80-band conditioning mel.
N_MEL_NORMS = 80


@dataclass(frozen=True)
class Asset:
    """One file Tortoise uses.

    ``source`` is ``"hf"`` (``repo`` / ``revision`` on the Hugging Face hub) or ``"github"``
    (``repo`` / ``revision`` / ``path`` as a raw file).  ``size`` and ``sha256`` are None where
    not known.  ``parameters`` is the parameter count of the original class with the official
    config, counted as the file stores them (weight-norm gains included); None for data files.
    ``model`` is True for checkpoints that load into a network (see
    :mod:`tortoise_xpu.models.registry`).  ``core`` files are what speech synthesis needs;
    the others serve optional features (CVVP re-ranking, tortoise-detect, streaming).
    """

    name: str
    description: str
    source: str
    repo: str
    revision: str
    path: str = ""
    size: int | None = None
    sha256: str | None = None
    parameters: int | None = None
    model: bool = True
    core: bool = True
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def approx_bytes(self) -> int | None:
        """The file's size estimated from its parameters at float32 (display only)."""
        return self.parameters * 4 if self.parameters is not None else None


def _hf(name: str, description: str, params: int, core: bool = True, aliases: tuple[str, ...] = ()) -> Asset:
    return Asset(name=name, description=description, source="hf", repo=HF_REPO, revision=HF_REVISION,
                 parameters=params, core=core, aliases=aliases)


#: Every file, keyed by its file name.  Order: what synthesis needs first.
ASSETS: dict[str, Asset] = {a.name: a for a in (
    _hf("autoregressive.pth", "autoregressive model", 421_526_786,
        aliases=("autoregressive", "ar", "gpt")),
    _hf("diffusion_decoder.pth", "diffusion decoder", 292_334_380,
        aliases=("diffusion_decoder", "diffusion")),
    _hf("clvp2.pth", "CLVP candidate ranker", 243_846_145, aliases=("clvp2", "clvp")),
    _hf("vocoder.pth", "UnivNet vocoder", 14_865_506, aliases=("vocoder", "univnet")),
    _hf("rlg_auto.pth", "random voice, AR latent", 6_297_600,
        aliases=("rlg_auto",)),
    _hf("rlg_diffuser.pth", "random voice, diffusion latent", 25_178_112,
        aliases=("rlg_diffuser", "rlg_diffusion")),
    _hf("cvvp.pth", "CVVP voice ranker (off by default)", 37_780_225, core=False,
        aliases=("cvvp",)),
    _hf("classifier.pth", "tortoise-detect classifier", 15_224_002, core=False, aliases=("classifier",)),
    _hf("hifidecoder.pth", "HiFi-GAN decoder (streaming)", 17_844_226, core=False,
        aliases=("hifidecoder", "hifigan")),
    Asset(name=TOKENIZER_FILE, description="BPE text tokenizer", source="github",
          repo=DATA_REPO, revision=DATA_COMMIT, path=f"tortoise/data/{TOKENIZER_FILE}", size=4409,
          sha256="d1fa6e9b4741bb75b284331b833347c166ba8b0518e187f7370f123149ed87bb", model=False,
          aliases=("tokenizer",)),
    Asset(name=MEL_NORMS_FILE, description="mel band norms", source="github",
          repo=DATA_REPO, revision=DATA_COMMIT, path=f"tortoise/data/{MEL_NORMS_FILE}", size=1067,
          sha256="1f69422a8a8f344c4fca2f0c6b8d41d2151d6615b7321e48e6bb15ae949b119c", model=False,
          aliases=("mel_norms",)),
)}


def asset(name: str) -> Asset:
    """Look up a file by its name (``clvp2.pth``), stem (``clvp2``) or alias (``clvp``)."""
    if name in ASSETS:
        return ASSETS[name]
    key = name.strip().lower()
    for a in ASSETS.values():
        if key == a.name or key in a.aliases or key == Path(a.name).stem:
            return a
    raise UserError(f"unknown model file {name!r}; known: {', '.join(ASSETS)}")


def resolve_names(names: Iterable[str] | None, core_only: bool = False) -> list[str]:
    """File names for ``names`` (None: every file, or only the core ones), in catalogue order."""
    if not names:
        return [a.name for a in ASSETS.values() if a.core or not core_only]
    wanted = {asset(n).name for n in names}
    return [n for n in ASSETS if n in wanted]


def official_parameters(name: str) -> int:
    """The parameter count of checkpoint ``name``'s official file (name, stem or alias)."""
    a = asset(name)
    if a.parameters is None:
        raise UserError(f"{a.name} is a data file, not a model checkpoint")
    return a.parameters
