"""The long-form cases of docs/errors.md: changed settings, manifests, batch lines, --cluster."""

from __future__ import annotations

import json
import sys

import pytest

from tests.error_cases import TINY, check_case, fake_synth, run_cli  # noqa: F401  (fixture)

BOOK = "Chunk one of the book. | Chunk two of the book. | Chunk three of the book. | Chunk four of the book."


def _book(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text(BOOK, encoding="utf-8")
    return f


def test_read_rerun_with_other_settings_keeps_finished_chunks(tiny_models_dir, tmp_path, capsys, fake_synth):
    book, out = _book(tmp_path), tmp_path / "out"
    argv = ["read", book, "-o", out, "--models-dir", tiny_models_dir, *TINY, "--seed", "5"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    files = {p.name: p.read_bytes() for p in out.glob("chunk_*.wav")}
    fake_synth.clear()
    code, _, err = run_cli([*argv, "--temperature", "0.7"], capsys)
    check_case("longform.settings_changed", code, err)
    assert "temperature 0.8→0.7" in err and fake_synth == []
    code, out_json, err = run_cli([*argv, "--json"], capsys)  # the first command again: all done
    assert code == 0 and json.loads(out_json)["skipped_count"] == 4 and fake_synth == []
    assert {p.name: p.read_bytes() for p in out.glob("chunk_*.wav")} == files
    code, out_json, err = run_cli([*argv, "--temperature", "0.7", "--restart", "--json"], capsys)
    assert code == 0 and json.loads(out_json)["synthesised_count"] == 4 and len(fake_synth) == 4


def test_unknown_or_broken_manifest_is_refused(tiny_models_dir, tmp_path, capsys, fake_synth):
    book, out = _book(tmp_path), tmp_path / "out"
    out.mkdir()
    for content in ('{"version": 99, "chunks": []}', "{not json", '["a list"]'):
        (out / "manifest.json").write_text(content)
        code, _, err = run_cli(["read", book, "-o", out, "--models-dir", tiny_models_dir, *TINY], capsys)
        check_case("longform.manifest_unknown", code, err)
        assert (out / "manifest.json").read_text() == content and fake_synth == []  # untouched


BAD_LINES = [
    ('{"id": "a", "text": "Hi."}\n{"id": "a", "text": "Again."}', ":2: id 'a' is already used on line 1"),
    ('{"id": "a", "text": "Hi."}\nnot json', ":2: not a JSON object"),
    ('[1, 2]', ":1: each line must be a JSON object"),
    ('{"id": "a"}', ':1: "text" must be a non-empty string'),
    ('{"id": "../x", "text": "Hi."}', ':1: "id" must be'),
    ('{"id": "a", "text": "Hi.", "colour": 1}', ":1: unknown field(s) colour"),
    ('{"id": "a", "text": "Hi.", "preset": "turbo"}', ":1: unknown preset 'turbo'"),
    ('{"id": "a", "text": "Hi.", "seed": -1}', ':1: "seed" must be an integer'),
    ('{"id": "a", "text": "Hi.", "seed": 1.5}', ':1: "seed" must be an integer'),
    ('{"id": "a", "text": "Hi.", "output": "/etc/passwd"}', ':1: "output" must be a plain file name'),
    ('{"id": "a", "text": "Hi."}\n\n{"id": "b", "text": "Hi.", "output": "a.wav"}',
     ":3: output 'a.wav' is already written by line 1"),
    ('{"id": "a", "text": "Hi.", "voice": "nobody-at-all"}', ":1: unknown voice 'nobody-at-all'"),
]


@pytest.mark.parametrize("content,expect", BAD_LINES)
def test_batch_refuses_a_bad_line_naming_it(tiny_models_dir, tmp_path, capsys, fake_synth, content, expect):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run_cli(["batch", jobs, "-o", out, "--models-dir", tiny_models_dir, *TINY], capsys)
    msg = check_case("batch.bad_line", code, err)
    assert expect in msg and not out.exists() and fake_synth == []


def test_batch_with_no_jobs(tiny_models_dir, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    for content in ("", "\n  \n"):
        jobs.write_text(content)
        code, _, err = run_cli(["batch", jobs, "-o", tmp_path / "out", "--models-dir", tiny_models_dir, *TINY],
                               capsys)
        check_case("batch.empty", code, err)


def test_batch_runs_resumes_and_matches_read(tiny_models_dir, tmp_path, capsys, fake_synth):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "text": "Chunk one. | Chunk two.", "seed": 5}\n'
                    '{"id": "b", "text": "Another job.", "output": "bee.wav", "preset": "ultra_fast"}\n')
    out = tmp_path / "out"
    argv = ["batch", jobs, "-o", out, "--models-dir", tiny_models_dir, *TINY, "--seed", "3", "--json"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads(stdout)["synthesised_count"] == 3 and {p.name for p in out.glob("*.wav")} == {"a.wav", "bee.wav"}
    from tortoise_xpu.pipeline.longform import chunk_seed

    assert [c["seed"] for c in fake_synth] == [chunk_seed(5, 0), chunk_seed(5, 1), chunk_seed(3, 0)]
    fake_synth.clear()
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and json.loads(stdout)["skipped_count"] == 3 and fake_synth == []
    code, stdout, err = run_cli([*argv, "--regenerate", "b"], capsys)
    assert code == 0 and [c["seed"] for c in fake_synth] == [chunk_seed(3, 0, 1)]
    # a one-job batch writes what `read` writes for the same text and seed
    book = tmp_path / "a.txt"
    book.write_text("Chunk one. | Chunk two.")
    code, _, err = run_cli(["read", book, "-o", tmp_path / "r", "--models-dir", tiny_models_dir, *TINY,
                            "--seed", "5"], capsys)
    assert code == 0 and (tmp_path / "r" / "combined.wav").read_bytes() == (out / "a.wav").read_bytes()


def test_cluster_flag_without_ray(tiny_models_dir, tmp_path, capsys, monkeypatch, fake_synth):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "out"
    code, _, err = run_cli(["read", _book(tmp_path), "-o", out, "--cluster", "local:2", "--models-dir",
                            tiny_models_dir, *TINY], capsys)
    check_case("cluster.no_ray", code, err)
    assert not out.exists() and fake_synth == []


@pytest.mark.parametrize("value", ["tcp://x", "local:x", "ray://host", "ray://h:99999", "auto:3"])
def test_cluster_flag_bad_value(tiny_models_dir, tmp_path, capsys, value):
    out = tmp_path / "out"
    code, _, err = run_cli(["read", _book(tmp_path), "-o", out, "--cluster", value, "--models-dir",
                            tiny_models_dir, *TINY], capsys)
    check_case("cluster.bad_value", code, err)
    assert not out.exists()
    code, _, err = run_cli(["read", _book(tmp_path), "-o", out, "--cluster", "local:0", "--models-dir",
                            tiny_models_dir, *TINY], capsys)
    assert code == 2 and "worker count must be between 1 and 1024" in err


def test_cluster_unreachable(tiny_models_dir, tmp_path, capsys, monkeypatch, fake_synth):
    ray = pytest.importorskip("ray", reason="ray is not installed: the unreachable case needs its init")

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    out = tmp_path / "out"
    code, _, err = run_cli(["read", _book(tmp_path), "-o", out, "--cluster", "auto", "--models-dir",
                            tiny_models_dir, *TINY], capsys)
    check_case("cluster.unreachable", code, err)
    m = json.loads((out / "manifest.json").read_text())
    assert [c["status"] for c in m["chunks"]] == ["pending"] * 4  # nothing lost, nothing half-made


def test_combined_is_the_chunks_samples_joined(tiny_models_dir, tmp_path, capsys, fake_synth):
    """combined.wav is streamed from the chunk files: exactly their samples, in order."""
    import numpy as np
    import soundfile as sf

    out = tmp_path / "out"
    for extra in ([], ["--float32"]):
        code, _, err = run_cli(["read", _book(tmp_path), "-o", out, "--models-dir", tiny_models_dir, *TINY,
                                "--seed", "4", *extra], capsys)
        assert code == 0, err
        dtype = "float32" if extra else "int16"
        parts = [sf.read(out / f"chunk_{i:04d}.wav", dtype=dtype)[0] for i in range(1, 5)]
        joined, rate = sf.read(out / "combined.wav", dtype=dtype)
        assert rate == 24000 and np.array_equal(joined, np.concatenate(parts))
        assert sf.info(str(out / "combined.wav")).subtype == ("FLOAT" if extra else "PCM_16")
        out = tmp_path / "out32"
