"""tortoise-xpu: Tortoise text-to-speech with voice cloning on any accelerator.

One shared pipeline (``tortoise_xpu.pipeline``) runs on whatever device backend
(``tortoise_xpu.backends``) the user owns; the backend layer supplies dtype,
memory and batch-size policies, and nothing else in the package branches on a
device type.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "TextToSpeech"]


def __getattr__(name: str):
    # Lazy so that `import tortoise_xpu` (and the CLI start-up) stays cheap.
    if name == "TextToSpeech":
        from tortoise_xpu.pipeline import TextToSpeech

        return TextToSpeech
    raise AttributeError(name)
