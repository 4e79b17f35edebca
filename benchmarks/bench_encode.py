"""Benchmark our native Hy3 encoder against ms-swift's `hy_v3` template encode, in one run.

    .venv/bin/python benchmarks/bench_encode.py [--rows 2000] [--repeats 3] [--doc docs/benchmarks.md]

Same rows, same tokenizer (the stand-in, byte-level BPE with Hy3's control tokens), same process.
The rows carry no reasoning_content (mixed efforts given as chat_template_kwargs, 1-4 turns, one in
ten with tool calls; text with natural-language word frequencies, a fifth of it CJK), so that
ms-swift's output is the right one and the two can be required equal:
every row's input_ids and labels are compared. Timed, each from raw row dicts to ids and labels:
- ms-swift `hy_v3`: `template.encode(row)` per row, as its dataset preprocessing calls it;
- ours, native: `Encoder.encode_many` over chunks of 512 rows, parsing and checking every row;
  with its word cache as a long run has it (filled by other rows drawn from the same
  distribution, not by the timed ones), and with an empty cache;
- ours through ms-swift: the `hy3` plugin template's `encode(row)` per row (for reference);
- `hy3 data encode` in-process: validation pass, encoding and writing the JSONL.
tokenizers' thread pool is off (TOKENIZERS_PARALLELISM=false, as the hy3 CLI sets it), so the
ratio is per core; it is taken in CPU seconds of this process, so that other work on a shared
machine disturbs it little (wall times are reported too). Medians of --repeats runs, alternating
order. Writes the section "data encode"
of docs/benchmarks.md and prints the results as JSON.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import DOC, REPO, publish  # noqa: E402

START, END = "<!-- bench_encode: start -->", "<!-- bench_encode: end -->"
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


class Words:
    """Text with a natural-language shape: 30k pseudo-words with Zipf frequencies, numbers and
    punctuation, and (one text in five) runs of 3000 CJK characters, also Zipf, without spaces."""

    def __init__(self, rng: random.Random, n: int = 30000):
        syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "ing", "er", "an", "st"]
        self.words = list(dict.fromkeys("".join(rng.choice(syl) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))))
                                        for _ in range(n * 2)))[:n]
        self.cum = list(itertools.accumulate(1 / (k + 1) ** 1.07 for k in range(len(self.words))))
        self.han = [chr(0x4E00 + i) for i in range(3000)]
        self.han_cum = list(itertools.accumulate(1 / (k + 1) ** 1.0 for k in range(3000)))

    def text(self, rng: random.Random, lo: int, hi: int) -> str:
        n = rng.randint(lo, hi)
        if rng.random() < 0.2:
            chars = rng.choices(self.han, cum_weights=self.han_cum, k=n * 2)
            return "".join(c + ("，" if rng.random() < 0.08 else "") for c in chars) + "。"
        out = []
        for w in rng.choices(self.words, cum_weights=self.cum, k=n):
            r = rng.random()
            out.append(str(rng.randint(0, 9999)) if r < 0.03 else w.capitalize() if r < 0.08 else w)
            if rng.random() < 0.1:
                out[-1] += rng.choice(",.;:?!")
        return " ".join(out) + "."


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = Words(rng)
    text = words.text
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": text(rng, 5, 40)}] if rng.random() < 0.6 else []
        for _ in range(rng.randint(1, 4)):
            msgs.append({"role": "user", "content": text(rng, 5, 120)})
            msgs.append({"role": "assistant", "content": text(rng, 10, 300)})
        row = {"messages": msgs, "chat_template_kwargs": {"reasoning_effort": rng.choice(["no_think", "low", "high"])}}
        if i % 10 == 0:
            row["tools"] = [TOOL]
            msgs[-1:] = [{"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": text(rng, 1, 2)}}}]},
                {"role": "tool", "content": json.dumps({"temperature": rng.randint(-10, 35)})},
                {"role": "assistant", "content": text(rng, 5, 60)}]
        rows.append(row)
    return rows


def templates(model: Path):
    """ms-swift's processor for the stand-in model, its `hy_v3` template and our `hy3` plugin template."""
    from swift.model import get_processor
    from swift.template import get_template
    from swift.utils import import_external_file

    from megatron_hy.swift.plugin import swift_plugin_path

    proc = get_processor(str(model), model_type="hy_v3", download_model=False)
    import_external_file(str(swift_plugin_path()))  # the file ms-swift imports; it registers the templates
    swift = get_template(proc, template_type="hy_v3")
    plugin = get_template(proc, template_type="hy3")
    for t in (swift, plugin):
        t.set_mode("train")
    return proc, swift, plugin


def run(args) -> dict:
    from megatron_hy.data.encode import Encoder
    from megatron_hy.data.output import encode_file
    from megatron_hy.data.rows import parse_row
    from megatron_hy.data.tokenizer import write_standin_model_dir

    logging.getLogger("swift").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="hy3-bench-encode-"))
    proc, swift, plugin = templates(write_standin_model_dir(work / "model"))
    rows = make_rows(args.rows, args.seed)
    # the steady state of a long run: words seen before are cached, but not these rows' own words
    warm = Encoder(proc)
    warm.encode_many([parse_row(r)[0] for r in make_rows(args.rows, args.seed + 1)])
    warm_cache = dict(warm._batch.__self__.cache)

    def warmed() -> Encoder:
        e = Encoder(proc)
        e._batch.__self__.cache = dict(warm_cache)
        return e

    src = work / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def ours(encoder):
        out = []
        for i in range(0, len(rows), 512):
            convs = [parse_row(r)[0] for r in rows[i:i + 512]]
            out += [ex for exs in encoder.encode_many(convs) for ex in exs]
        return out

    def through_plugin():
        plugin._hy3_enc = warmed()  # the plugin's own encoder, with the same cache as ours
        return [plugin.encode(r) for r in rows]

    plugin.encode(rows[0])  # builds the plugin's encoder for its loss mode
    cases = {
        "ms-swift hy_v3 encode": lambda: [swift.encode(r) for r in rows],
        "ours, native": lambda: ours(warmed()),
        "ours, native, word cache cold": lambda: ours(Encoder(proc)),
        "ours through ms-swift (hy3 plugin)": lambda: through_plugin(),
        "hy3 data encode (validate + encode + write)": lambda: encode_file(src, work / "out.jsonl", warmed(),
                                                                           quiet=True),
    }
    theirs, mine, via_plugin = cases["ms-swift hy_v3 encode"](), ours(Encoder(proc)), through_plugin()
    cpu, wall = time_cases(cases, args.repeats)
    shutil.rmtree(work, ignore_errors=True)
    tokens = sum(len(e.input_ids) for e in mine)
    return {"rows": len(rows), "tokens": tokens, "tool_rows": sum("tools" in r for r in rows),
            "identical_ids_and_labels": same_output(theirs, mine) and len(theirs) == len(mine) == len(rows),
            "plugin_identical": same_output(via_plugin, mine), "results": rates(cpu, wall, len(rows), tokens),
            "machine": versions(), "method": {"repeats": args.repeats, "statistic": "median", "seed": args.seed}}


def same_output(swift_rows: list[dict], ours: list) -> bool:
    return all(a["input_ids"] == b.input_ids and a["labels"] == b.labels for a, b in zip(swift_rows, ours))


def time_cases(cases: dict, repeats: int) -> tuple[dict, dict]:
    """CPU and wall seconds of each case, per repeat, in alternating order."""
    cpu = {name: [] for name in cases}
    wall = {name: [] for name in cases}
    for rep in range(repeats):
        for name in (list(cases) if rep % 2 == 0 else list(reversed(cases))):
            t0, c0 = time.perf_counter(), time.process_time()
            cases[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return cpu, wall


def rates(cpu: dict, wall: dict, rows: int, tokens: int) -> dict:
    base = statistics.median(cpu["ms-swift hy_v3 encode"])
    base_wall = statistics.median(wall["ms-swift hy_v3 encode"])
    results = {}
    for name, ts in cpu.items():
        med = statistics.median(ts)
        results[name] = {"cpu_seconds": round(med, 3), "rows_per_s": round(rows / med),
                         "tokens_per_s": round(tokens / med), "speedup_vs_ms_swift": round(base / med, 2),
                         "wall_seconds": round(statistics.median(wall[name]), 3),
                         "wall_speedup_vs_ms_swift": round(base_wall / statistics.median(wall[name]), 2),
                         "cpu_runs": [round(t, 3) for t in ts], "wall_runs": [round(t, 3) for t in wall[name]]}
    return results


def versions() -> dict:
    import swift
    import tokenizers
    import transformers

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "ms_swift": swift.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
            "load_average": round(os.getloadavg()[0], 2)}


def markdown(res: dict) -> str:
    r = res["results"]
    lines = ["## data encode", "",
             f"{res['rows']} synthetic Hy3 rows without reasoning ({res['tokens']} tokens; 1-4 turns, "
             f"{res['tool_rows']} with tool calls, mixed reasoning_effort), stand-in tokenizer, "
             f"{res['machine']['cpus']} CPUs, tokenizers thread pool off, ms-swift {res['machine']['ms_swift']}. "
             f"Median of {res['method']['repeats']} runs in one process, alternating order; rates are per CPU "
             f"second of this process (`time.process_time`), which other load on a shared machine disturbs far "
             f"less than wall time (load average {res['machine']['load_average']} at the end; wall times are "
             f"given too). Output identical to ms-swift's, "
             f"row by row: **{'yes' if res['identical_ids_and_labels'] else 'NO'}** (plugin: "
             f"{'yes' if res['plugin_identical'] else 'NO'}). Produced by `benchmarks/bench_encode.py`.", "",
             "| encoder | CPU seconds | rows/s | tokens/s | vs ms-swift | wall seconds | vs ms-swift (wall) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, v in r.items():
        lines.append(f"| {name} | {v['cpu_seconds']:.2f} | {v['rows_per_s']} | {v['tokens_per_s']} | "
                     f"{v['speedup_vs_ms_swift']:.2f}x | {v['wall_seconds']:.2f} | {v['wall_speedup_vs_ms_swift']:.2f}x |")
    lines += ["", "Target: the native encoder at least 3x ms-swift's `hy_v3` encode, with identical output.", "",
              "<details><summary>raw results (JSON)</summary>", "", "```json", json.dumps(res, indent=1), "```", "",
              "</details>"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="synthetic rows (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows (default 0)")
    p.add_argument("--doc", default=str(DOC), help="markdown file to update ('' = none)")
    args = p.parse_args()
    res = run(args)
    publish(res, res, args.doc, markdown(res), START, END)
    if not res["identical_ids_and_labels"]:
        sys.exit("output differs from ms-swift's")


if __name__ == "__main__":
    main()
