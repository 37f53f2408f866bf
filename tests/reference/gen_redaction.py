"""Goldens for redaction from the ORIGINAL ``tortoise/utils/wav2vec_alignment.py``.

Run from the repository root with the reference venv:

    /work/ref/.venv/bin/python tests/reference/gen_redaction.py   (or: -m tests.reference.gen_redaction)

Writes ``tests/reference/goldens/redaction/redaction.pt``:

- ``dp``: (expected, heard, original ``max_alignment``) for random string pairs over small
  alphabets (many ties and repeats, where the DP's choices show);
- ``align``: cases of the original ``Wav2VecAlignment.align`` run with a stand-in CTC model
  that returns fixed per-frame logits (no download) and a real ``Wav2Vec2CTCTokenizer`` on a
  small character vocabulary (``vocab``): the logits, the audio length, the text, the
  tokenizer's decoded string and the original's per-character sample positions.

The stand-in ignores the audio's values, so only its length matters.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

if __package__ in (None, ""):  # run as a file path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

OUT = Path(__file__).resolve().parent / "goldens" / "redaction"

# <pad> is the CTC blank, | the word delimiter (decoded as a space), as in wav2vec2 vocabularies.
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("abcdefghijklmnopqrstuvwxyz")
TEXTS = ["hello world", "the quick brown fox", "please feed me now", "a", "ab", "sad cat sat",
         "mississippi rivers", "no way out of here", "i am really sad please feed me"]


def dp_cases(rng: random.Random) -> list[tuple[str, str, str]]:
    from tortoise.utils.wav2vec_alignment import max_alignment

    cases = [("", "abc"), ("abc", ""), ("abc", "abc"), ("hello world", "helo wrld"), ("aaa", "aa"),
             ("abab", "baba"), ("sad cat", "sat")]
    for _ in range(300):
        alphabet = rng.choice(["ab", "abc", "abcd ", "hel o"])
        cases.append(("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))),
                      "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))))
    return [(a, b, max_alignment(a, b)) for a, b in cases]


def heard_frames(text: str, rng: random.Random) -> list[int]:
    """Per-frame argmax ids of a recogniser that mishears ``text`` a little: CTC-like runs and blanks."""
    ids = []
    for ch in text:
        r = rng.random()
        if r < 0.12:
            continue  # not heard at all
        token = VOCAB.index("|") if ch == " " else VOCAB.index(ch)
        if r < 0.2:
            token = VOCAB.index(rng.choice("abcdefghijklmnopqrstuvwxyz"))  # misheard
        ids += [token] * rng.randint(1, 3)
        ids += [0] * rng.randint(0, 2)  # blanks
    return [0] * rng.randint(0, 3) + ids + [0] * rng.randint(1, 4)


def align_cases(rng: random.Random) -> list[dict]:
    from transformers import Wav2Vec2CTCTokenizer

    from tortoise.utils.wav2vec_alignment import Wav2VecAlignment

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
        tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file))
    cases = []
    for index, text in enumerate(TEXTS * 3):
        frames = heard_frames(text, rng)
        logits = torch.randn(len(frames), len(VOCAB), generator=torch.Generator().manual_seed(index)) * 0.5
        logits[torch.arange(len(frames)), torch.tensor(frames)] += 4.0
        samples = len(frames) * 480 + rng.randint(0, 479)  # 20 ms frames at 24 kHz, plus a ragged tail

        aligner = Wav2VecAlignment.__new__(Wav2VecAlignment)  # skip __init__: it downloads the model
        aligner.model = lambda x, _l=logits: SimpleNamespace(logits=_l[None])
        aligner.model.to = lambda *a, **k: aligner.model  # the original moves the model around
        aligner.model.cpu = lambda: aligner.model
        aligner.tokenizer = tokenizer
        aligner.device = "cpu"
        audio = torch.randn(1, samples, generator=torch.Generator().manual_seed(100 + index))
        try:
            positions = aligner.align(audio, text)
        except AssertionError:
            continue  # the original gives up on this one (it dumps a debug file); ours interpolates
        finally:
            Path("alignment_debug.pth").unlink(missing_ok=True)
        cases.append({"text": text, "logits": logits, "samples": samples,
                      "heard": tokenizer.decode(logits.argmax(-1).tolist()),
                      "ids": tokenizer.encode(text), "positions": positions})
    return cases


def main() -> None:
    rng = random.Random(5)
    OUT.mkdir(parents=True, exist_ok=True)
    golden = {"vocab": VOCAB, "dp": dp_cases(rng), "align": align_cases(rng)}
    torch.save(golden, OUT / "redaction.pt")
    print(f"wrote {OUT / 'redaction.pt'}: {len(golden['dp'])} DP cases, {len(golden['align'])} align cases")


if __name__ == "__main__":
    main()
