"""`hy3 data encode / stats / check-template`, end to end as a user runs them; the demo step."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_ok, assert_one_error, run_cli
from data_helpers import conv, encoder, model_dir, write_jsonl
from megatron_hy.data.demo_step import DEMO_DATA, step_data
from test_data_encode import ALL_ROWS, HIGH, MULTI


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_encode_writes_what_the_encoder_gives(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    out = tmp_path / "enc.jsonl"
    proc = assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), "--loss-mode", "per-turn", src, out))
    want = [(e.input_ids, e.labels) for r in ALL_ROWS for e in encoder(loss_mode="per-turn").encode(conv(r))]
    rows = read(out)
    assert [(r["input_ids"], r["labels"]) for r in rows] == want
    assert [r["lengths"] for r in rows] == [len(i) for i, _ in want]
    assert rows[0]["source"] == [f"{src}:1"]
    assert f"{len(want)} rows from {len(ALL_ROWS)} input rows" in proc.stdout
    assert not list(tmp_path.glob("*.partial"))


def test_over_length_examples_are_reported_skipped_or_truncated(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    lengths = [len(e) for r in ALL_ROWS for e in encoder().encode(conv(r))]
    limit = sorted(lengths)[len(lengths) // 2]
    over = [i + 1 for i, n in enumerate(lengths) if n > limit]
    out = tmp_path / "skip.jsonl"
    proc = assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), "--max-length", limit, src, out))
    assert len(read(out)) == len(lengths) - len(over)
    assert f"{len(over)} examples skipped" in proc.stdout
    for line in over:
        assert f"{src}:{line}: {lengths[line - 1]} tokens, longer than --max-length {limit}" in proc.stdout
    out = tmp_path / "trunc.jsonl"
    proc = assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), "--max-length", limit,
                             "--overflow", "truncate", src, out))
    examples = [e for r in ALL_ROWS for e in encoder().encode(conv(r))]
    no_loss = [e for e in examples if all(x == -100 for x in e.labels[:limit])]  # dropped, not kept (issue 11)
    assert no_loss and max(len(r["input_ids"]) for r in read(out)) == limit
    assert len(read(out)) == len(lengths) - len(no_loss)
    assert f"{len(no_loss)} examples dropped (truncated, no token left in the loss)" in proc.stdout
    proc = run_cli("data", "encode", "--tokenizer", model_dir(), "--max-length", limit, "--overflow", "error",
                   src, tmp_path / "err.jsonl")
    assert_one_error(proc, f"{src}:{over[0]}: {lengths[over[0] - 1]} tokens")
    assert not (tmp_path / "err.jsonl").exists() and not list(tmp_path.glob("*.partial"))


def test_pack_fills_rows_and_keeps_every_example(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS * 4)
    out = tmp_path / "packed.jsonl"
    assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), "--pack", "--max-length", 1024, src, out))
    rows = read(out)
    examples = sorted((tuple(e.input_ids), tuple(e.labels)) for r in ALL_ROWS * 4 for e in encoder().encode(conv(r)))
    got = []
    for r in rows:
        assert len(r["input_ids"]) <= 1024 and len(r["labels"]) == len(r["position_ids"]) == len(r["input_ids"])
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["input_ids"])]
        assert len(starts) - 1 == len(r["source"])
        got += [(tuple(r["input_ids"][a:b]), tuple(r["labels"][a:b])) for a, b in zip(starts, starts[1:])]
    assert sorted(got) == examples
    assert len(rows) < len(examples)
    assert_one_error(run_cli("data", "encode", "--tokenizer", model_dir(), "--pack", src, tmp_path / "x.jsonl"),
                     "--pack needs --max-length")


def test_stats_on_rows_and_on_encoded_output_agree(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    out = tmp_path / "enc.jsonl"
    assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), src, out))
    a = json.loads(assert_ok(run_cli("data", "stats", "--tokenizer", model_dir(), src, "--json",
                                     "--max-length", 200)).stdout)
    b = json.loads(assert_ok(run_cli("data", "stats", out, "--json", "--max-length", 200)).stdout)
    exs = [e for r in ALL_ROWS for e in encoder().encode(conv(r))]
    for s in (a, b):
        assert s["examples"] == len(exs) and s["tokens"] == sum(len(e) for e in exs)
        assert s["loss_tokens"] == sum(e.loss_tokens() for e in exs)
        assert s["over_max_length"] == sum(len(e) > 200 for e in exs)
        assert sum(h["count"] for h in s["histogram"]) == len(exs)
    text = assert_ok(run_cli("data", "stats", out)).stdout
    assert "histogram" in text and f"{len(exs)} examples" in text
    assert_one_error(run_cli("data", "stats", src), "pass --model")  # the one model-directory flag


def test_check_template_agrees_with_our_template_and_flags_a_different_one(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    proc = assert_ok(run_cli("data", "check-template", model_dir(), src, "--loss-mode", "per-turn"))
    assert "OK:" in proc.stdout and "0 disagreements" in proc.stdout
    # a template that keeps reasoning in history turns (as some read is_training=True) differs on MULTI only
    other = shutil.copytree(model_dir(), tmp_path / "other")
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("(loop.index0 > ns.last_user or keep_all)", "(true)")
    (other / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    proc = run_cli("data", "check-template", other, src)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = ALL_ROWS.index(MULTI) + 1
    assert proc.stdout.count(f"{src}:") == 1 and f"{src}:{line}: example 0: input_ids differ" in proc.stdout
    assert "1 disagreements" in proc.stdout
    assert_ok(run_cli("data", "check-template", other, src, "--preserved-thinking", "true"))


def test_tokenizer_errors_are_one_line(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", [HIGH])
    assert_one_error(run_cli("data", "encode", "--tokenizer", tmp_path / "nope", src, tmp_path / "o.jsonl"),
                     "no such tokenizer directory")
    bare = shutil.copytree(model_dir(), tmp_path / "bare")
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert_one_error(run_cli("data", "check-template", bare, src), "has no chat template")


def test_plugin_path_and_standin_tokenizer(tmp_path):
    from megatron_hy.swift.plugin import swift_plugin_path

    # the one ms-swift plugin, which also registers the hy3 templates of swift/templates.py
    assert assert_ok(run_cli("data", "plugin-path")).stdout.strip() == str(swift_plugin_path())
    assert_ok(run_cli("data", "standin-tokenizer", tmp_path / "tok", "--variant", "preview"))
    src = write_jsonl(tmp_path / "rows.jsonl", [HIGH])
    assert_ok(run_cli("data", "encode", "--tokenizer", tmp_path / "tok", src, tmp_path / "o.jsonl"))
    ids = read(tmp_path / "o.jsonl")[0]["input_ids"]
    assert ids == encoder("preview").encode(conv(HIGH))[0].input_ids


def test_demo_step_validates_and_encodes_the_bundled_dataset(tmp_path):
    line = step_data({"work": tmp_path})
    assert "rows valid" in line and "native renderer == chat template" in line
    rows = read(tmp_path / "data" / "encoded.jsonl")
    assert len(rows) == len(DEMO_DATA.read_text().splitlines())
    assert all(any(x != -100 for x in r["labels"]) for r in rows)


# --- empty input, interrupted encode, progress with totals (issue 21) -----------------------------------

@pytest.mark.parametrize("text", ["", "\n  \n\t\n"], ids=["empty", "blank-lines"])
def test_a_file_without_rows_is_an_error_everywhere(tmp_path, text):
    src = tmp_path / "rows.jsonl"
    src.write_text(text)
    proc = run_cli("data", "validate", src)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{src}:1: error: no rows: the file is empty or holds only blank lines" in proc.stdout
    assert "FAILED: 0 rows" in proc.stdout
    assert_one_error(run_cli("data", "convert", "--from", "sharegpt", src, tmp_path / "c.jsonl"), str(src), "no rows")
    assert_one_error(run_cli("data", "encode", "--tokenizer", model_dir(), src, tmp_path / "e.jsonl",
                             "--swift-dataset", tmp_path / "e.arrow"), str(src), "no rows")
    assert_one_error(run_cli("data", "stats", src, "--tokenizer", model_dir()), str(src), "no rows")
    assert_one_error(run_cli("data", "stats", src), str(src), "no rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]   # nothing written, nothing left behind


def test_encode_with_every_example_skipped_writes_nothing(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    proc = run_cli("data", "encode", "--tokenizer", model_dir(), "--max-length", 2, src, tmp_path / "e.jsonl")
    assert_one_error(proc, str(src), "no example left to write, nothing written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_swift_dataset_killed_between_the_outputs_is_completed_by_the_rerun(tmp_path):
    """Killed after the first output appeared: the rerun of the same command completes the pair (it does not
    refuse an output 'already exists'), and the pair equals an uninterrupted run's."""
    import datasets

    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    argv = ["data", "encode", "--tokenizer", model_dir(), src, tmp_path / "enc.jsonl", "--swift-dataset", tmp_path / "enc"]
    killed = run_cli(*argv, kill_at="encode:dataset-published")
    assert killed.returncode == -9, killed.stderr
    assert [p.exists() for p in (tmp_path / "enc", tmp_path / "enc.jsonl")] == [True, False]
    left = set(tmp_path.glob(".*partial*"))   # the killed run's hidden temporary JSONL, named as unfinished
    proc = assert_ok(run_cli(*argv))
    assert "already holds the dataset of these rows" in proc.stderr
    ref = assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), src, tmp_path / "ref.jsonl",
                            "--swift-dataset", tmp_path / "ref"))
    assert (tmp_path / "enc.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert datasets.load_from_disk(str(tmp_path / "enc")).to_list() == datasets.load_from_disk(str(tmp_path / "ref")).to_list()
    assert set(tmp_path.glob(".*partial*")) == left
    # a dataset made from other rows is still refused, as any existing output is
    other = write_jsonl(tmp_path / "other.jsonl", ALL_ROWS[:2])
    (tmp_path / "enc.jsonl").unlink()
    assert_one_error(run_cli("data", "encode", "--tokenizer", model_dir(), other, tmp_path / "enc.jsonl",
                             "--swift-dataset", tmp_path / "enc"), str(tmp_path / "enc"), "other rows")


def test_encode_progress_has_totals_and_results_go_to_stdout(tmp_path):
    src = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS)
    out, ds = tmp_path / "enc.jsonl", tmp_path / "enc"
    proc = assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), src, out, "--swift-dataset", ds))
    n = len(ALL_ROWS)
    for label in ("validate", "encode", "swift-dataset"):
        assert f"[{label}] " in proc.stderr, label
    assert f"[encode] {n} rows / {n} rows (100%)" in proc.stderr
    written = len(out.read_text().splitlines())
    assert f"[swift-dataset] {written} rows / {written} rows (100%)" in proc.stderr
    assert f"wrote {out}: {written} encoded rows" in proc.stderr and f"wrote {ds}: ms-swift cached dataset" in proc.stderr
    assert str(out) not in proc.stdout and f"rows from {n} input rows" in proc.stdout
    res = json.loads(assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), src, tmp_path / "j.jsonl",
                                       "--json", "--quiet")).stdout)
    assert (res["output"], res["rows"], res["written"]) == (str(tmp_path / "j.jsonl"), n, written)
