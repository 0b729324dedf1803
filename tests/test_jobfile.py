"""Reading job files: every input kind, stable ids, problems with file and line, streaming."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import JobFileError, Problem
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, load_spec
from orchestrator.models import Loaded, Prompts


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def loaded(path: Path, cli: dict[str, Any] | None = None) -> list[Loaded | Problem]:
    return list(read_requests(load_spec(path, cli or {})))


def test_batches_shape_lines(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "batch.jsonl",
        [
            {
                "custom_id": "a",
                "params": {
                    "model": "claude-opus-5",
                    "max_tokens": 9,
                    "messages": [{"role": "user", "content": "x"}],
                },
            },
            {"params": {"messages": [{"role": "user", "content": "y"}]}},
        ],
    )
    items = loaded(path)
    assert items[0] == Loaded(
        "a",
        {"model": "claude-opus-5", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]},
        str(path),
        1,
    )
    second = items[1]
    assert isinstance(second, Loaded)
    assert second.custom_id == "batch-2"
    assert second.params["model"] == DEFAULT_MODEL
    assert second.params["max_tokens"] == DEFAULT_MAX_TOKENS


def test_simple_prompt_lines_with_overrides(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        [{"prompt": "hi", "max_tokens": 5, "system": "be brief"}, "", {"prompt": "yo", "custom_id": "k"}],
    )
    items = loaded(path, {"model": "claude-sonnet-5", "temperature": 0.2})
    assert items == [
        Loaded(
            "p-1",
            {
                "model": "claude-sonnet-5",
                "max_tokens": 5,
                "temperature": 0.2,
                "system": "be brief",
                "messages": [{"role": "user", "content": "hi"}],
            },
            str(path),
            1,
        ),
        Loaded(
            "k",
            {
                "model": "claude-sonnet-5",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "temperature": 0.2,
                "messages": [{"role": "user", "content": "yo"}],
            },
            str(path),
            3,
        ),
    ]


def test_text_file_is_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "my prompts.txt"
    path.write_text("first\n\n  \nsecond line\n")
    items = loaded(path)
    assert [(i.custom_id, i.params["messages"][0]["content"]) for i in items if isinstance(i, Loaded)] == [
        ("my_prompts-1", "first"),
        ("my_prompts-4", "second line"),
    ]


def test_directory_is_one_prompt_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "essays"
    folder.mkdir()
    (folder / "b.md").write_text("# B\nbody")
    (folder / "a.txt").write_text("A")
    (folder / "notes.json").write_text("{}")
    items = loaded(folder)
    assert [(i.custom_id, i.params["messages"][0]["content"]) for i in items if isinstance(i, Loaded)] == [
        ("a", "A"),
        ("b", "# B\nbody"),
    ]


def test_toml_spec(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_lines(tmp_path / "in" / "q.jsonl", [{"prompt": "one"}])
    (tmp_path / "in" / "x.md").write_text("two")
    (tmp_path / "in" / "y.md").write_text("three")
    spec_path = tmp_path / "job.toml"
    spec_path.write_text(
        'name = "nightly"\ninputs = ["in/q.jsonl", "in/*.md"]\nresults = "out"\n'
        '[defaults]\nmodel = "claude-opus-5"\nmax_tokens = 50\n[run]\nconcurrency = 3\n'
    )
    spec = load_spec(spec_path, {"max_tokens": 60})
    assert spec.name == "nightly"
    assert spec.results == tmp_path / "out"
    assert spec.run == {"concurrency": 3}
    items = list(read_requests(spec))
    assert [i.custom_id for i in items if isinstance(i, Loaded)] == ["q-1", "x", "y"]
    assert all(
        isinstance(i, Loaded) and i.params["max_tokens"] == 60 and i.params["model"] == "claude-opus-5" for i in items
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('inputs = ["a.txt"]\nbogus = 1', "unknown key 'bogus'"),
        ("name = 'x'", "'inputs' must be a non-empty list"),
        ('inputs = ["missing.txt"]', "input 'missing.txt' matches no file"),
        ('inputs = ["a.txt"]\n[defaults]\nmessages = []', "[defaults] has unknown request field 'messages'"),
        ('inputs = ["a.txt"]\n[run]\nworkers = 3', "[run] has unknown key 'workers'"),
        ("inputs = [", "not valid TOML"),
    ],
)
def test_bad_specs(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "a.txt").write_text("x\n")
    path = tmp_path / "job.toml"
    path.write_text(spec)
    with pytest.raises(JobFileError) as caught:
        load_spec(path, {})
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "Nothing was sent" in str(caught.value)


def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "fine"},
            "{not json",
            {"custom_id": "x"},
            {"prompt": "hi", "colour": "red"},
            {"prompt": "hi", "custom_id": "has space"},
            {"prompt": "hi", "custom_id": "x" * 65},
            {"prompt": ""},
            {"prompt": "hi", "max_tokens": 0},
            {"custom_id": "b", "params": {"messages": []}},
            {"custom_id": "c", "params": {"messages": [{"role": "user", "content": "x"}], "stream": True}},
            {"custom_id": "d", "params": {}, "extra": 1},
            [1, 2],
        ],
    )
    items = loaded(path)
    problems = [i for i in items if isinstance(i, Problem)]
    assert [p.line for p in problems] == list(range(2, 13))
    assert all(p.path == str(path) for p in problems)
    messages = [p.message for p in problems]
    assert messages[0].startswith("malformed JSON")
    assert "missing prompt" in messages[1]
    assert "unknown field 'colour'" in messages[2]
    assert "invalid custom_id 'has space'" in messages[3]
    assert "invalid custom_id" in messages[4]
    assert "'prompt' must be a non-empty string" in messages[5]
    assert "'max_tokens' must be an integer at least 1, not 0" in messages[6]
    assert "'messages' must be a non-empty list" in messages[7]
    assert "unknown request field 'stream'" in messages[8]
    assert "unknown field 'extra'" in messages[9]
    assert "a line must be a JSON object" in messages[10]
    assert str(problems[0]) == f"{path}:2: {messages[0]}"


def test_prompt_lines_take_the_short_path_only_when_the_full_check_would_pass(tmp_path: Path) -> None:
    lines = [{"prompt": " \n\t"}, {"prompt": 5}, {"prompt": "hi", "custom_id": 7}, {"prompt": "hi", "custom_id": "ok"}]
    path = write_lines(tmp_path / "p.jsonl", [*lines, {"prompt": "hi"}, {"prompt": "hi", "custom_id": "nl\n"}])
    items = loaded(path)
    assert [p.message for p in items if isinstance(p, Problem)] == [
        "'prompt' must be a non-empty string",
        "'prompt' must be a non-empty string",
        "invalid custom_id 7: it must match ^[a-zA-Z0-9_-]{1,64}$",
        "invalid custom_id 'nl\\n': it must match ^[a-zA-Z0-9_-]{1,64}$",  # the whole id, final newline too
    ]
    assert [(i.custom_id, i.line) for i in items if isinstance(i, Loaded)] == [("ok", 4), ("p-5", 5)]
    # Defaults that fail the check fail every line, short shape or not.
    items = loaded(path, {"max_tokens": 0})
    assert len(items) == 6
    assert all(isinstance(i, Problem) for i in items)
    assert "'max_tokens' must be an integer at least 1" in str(items[3])


def test_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"ok\n\xff\xfe bad\n")
    items = loaded(path)
    assert isinstance(items[0], Loaded)
    assert items[1] == Problem(str(path), 2, "not UTF-8 text")


def test_fingerprint_changes_with_any_byte_or_default(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a\nb\n")
    first = load_spec(path, {}).fingerprint()
    assert load_spec(path, {}).fingerprint() == first
    assert load_spec(path, {"max_tokens": 5}).fingerprint() != first
    path.write_text("a\nc\n")
    assert load_spec(path, {}).fingerprint() != first


@pytest.mark.parametrize("bulk", [False, True], ids=["line-by-line", "bulk"])
def test_input_is_read_as_a_stream(tmp_path: Path, bulk: bool) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as handle:
        for i in range(200_000):
            handle.write(json.dumps({"prompt": f"prompt number {i} " + "x" * 40}) + "\n")
    spec = load_spec(path, {})
    tracemalloc.start()
    try:
        items = read_requests(spec, bulk=True) if bulk else read_requests(spec)
        count = sum(len(item.items) if isinstance(item, Prompts) else 1 for item in items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert path.stat().st_size > 15_000_000
    assert peak < 3_000_000  # a block of lines at a time, not the 15 MB file


def test_spec_limits_for_every_model_and_per_model(tmp_path: Path) -> None:
    from orchestrator.run.engine import limit_state
    from orchestrator.settings import JobSettings, LimitSpec

    (tmp_path / "a.txt").write_text("x\n")
    path = tmp_path / "job.toml"
    path.write_text('inputs = ["a.txt"]\n[limits]\nrpm = 100\n[limits."claude-opus-5"]\notpm = 9000\n')
    spec = load_spec(path, {})
    assert spec.limits == {"rpm": 100, "claude-opus-5": {"otpm": 9000}}
    state = limit_state(JobSettings(limits=spec.limits))
    assert state.model("claude-haiku-4-5", 0.0).spec == LimitSpec(rpm=100)
    assert state.model("claude-opus-5", 0.0).spec == LimitSpec(rpm=100, otpm=9000)
    path.write_text('inputs = ["a.txt"]\n[limits]\nrpm = -1\n[limits.m]\nfoo = 3\n')
    with pytest.raises(JobFileError) as caught:
        load_spec(path, {})
    assert str(caught.value).count("[limits]") == 2
