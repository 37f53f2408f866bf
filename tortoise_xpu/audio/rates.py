"""The sample rates of the Tortoise models, in one place.

The AR model, CLVP and the AR conditioning mel work on 22.05 kHz audio (a mel code covers
1024 samples there); the diffusion decoder's conditioning clip, the UnivNet vocoder and every
waveform the package writes are at 24 kHz.
"""

from __future__ import annotations

__all__ = ["AR_SAMPLE_RATE", "DIFFUSION_SAMPLE_RATE", "SAMPLE_RATE"]

#: The output sample rate: what the vocoders produce and every WAV the package writes.
SAMPLE_RATE = 24000
#: The rate voice clips are read at for the AR conditioning latent (and CLVP, CVVP).
AR_SAMPLE_RATE = 22050
#: The rate voice clips are read at for the diffusion conditioning latent: the output rate.
DIFFUSION_SAMPLE_RATE = SAMPLE_RATE
