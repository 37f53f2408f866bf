"""``tortoise-xpu serve``: an OpenAI-compatible speech server over one engine per device process.

Layers: :mod:`.app` (HTTP only: request shape, errors, streaming bodies), :mod:`.engine` and
:mod:`.scheduler` (admission, continuous AR batching, later stages, draining), :mod:`.runner`
(the one adapter onto the synthesis pipeline).  Needs the ``serve`` extra for the HTTP layer.
"""
