"""`hy3 data ...`: validate, convert, encode and inspect Hy3 SFT data."""

from __future__ import annotations

from ..data.check_template import check_template
from ..data.convert import convert_file
from ..data.encode import Encoder, load_tokenizer
from ..data.output import encode_file
from ..data.stats import stats_file, stats_json
from ..data.tokenizer import write_standin_tokenizer
from ..data.validate import require_valid, validate_files
from ..errors import Hy3Error
from ..fields import COUNT, POSITIVE_INT
from ..formats.staging import new_dir
from ..outputs import OUT_DIR_HELP, OVERWRITE_DIR_HELP, OVERWRITE_FILE_HELP, TOKENIZER
from ..progress import log
from ..swift.plugin import swift_plugin_path
from .common import add_json, add_model_flag, add_model_operand, emit, model_operand

ROW_FORMAT = ("A Hy3 row is one JSON object: {\"reasoning_effort\": \"high|low|no_think\" (optional, default "
              "no_think), \"tools\": [...] (optional), \"messages\": [{\"role\": \"system|user|assistant|tool\", "
              "\"content\": ..., assistant only: \"reasoning_content\", \"tool_calls\", \"loss\"}]}. "
              "See docs/data.md.")


def register(sub) -> None:
    p = sub.add_parser("data", help="validate, convert and encode Hy3 SFT data",
                       description="Hy3 SFT data with per-row reasoning effort and reasoning_content. " + ROW_FORMAT)
    d = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_validate(d)
    _add_convert(d)
    _add_encode(d)
    _add_stats(d)
    _add_check_template(d)
    _add_plugin_path(d)
    _add_standin_tokenizer(d)


def _add_validate(d) -> None:
    q = d.add_parser("validate", help="check rows; every problem as file:line",
                     description="Check JSON or JSONL files of Hy3 rows, streamed (any size): schema, role order, "
                                 "reasoning_effort values, reasoning_content consistency, tool-call shape, empty "
                                 "turns, control tokens inside text; a file without rows is an error too. Exit 1 "
                                 "when any row has an error. " + ROW_FORMAT)
    q.add_argument("files", nargs="+", metavar="FILE", help=".jsonl (one row per line) or .json (an array of rows)")
    add_json(q, "print every finding as one JSON object")
    q.add_argument("--show", type=COUNT, default=50, metavar="N",
                   help="print at most N errors and N warnings, count the rest (default 50)")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=run_validate)


def _add_convert(d) -> None:
    q = d.add_parser("convert", help="ShareGPT, OpenAI messages, old Hunyuan or Alpaca rows to Hy3 rows",
                     description="Convert rows to Hy3 rows (JSONL). sharegpt: conversations with from/value or "
                                 "messages with role/content (OpenAI, ms-swift, Hy3 rows), function_call/tool_call "
                                 "and observation/tool turns as tool calls and results. hunyuan-legacy: the same, "
                                 "and <think>..</think><answer>..</answer> assistant text becomes "
                                 "reasoning_content, a /no_think (/think) prefix on the last user turn becomes "
                                 "reasoning_effort no_think (high). alpaca: instruction/input/output/history. "
                                 "A row's reasoning_effort, tools, and each message's reasoning_content, tool_calls, "
                                 "loss, name and tool_call_id are taken as given (OpenAI's weight 0/1 becomes loss); "
                                 "without an effort a row whose reply has reasoning becomes high, else no_think. "
                                 "Every other key is kept under the row's or the message's 'meta', and each written "
                                 "row records its source file:line in meta.converted_from. Prints how many rows were "
                                 "kept as given, converted and refused, each refused row with its file:line and "
                                 "reason. Exit status: 0 when every row was written; otherwise 1, and nothing is "
                                 "written unless --skip-bad or --allow-bad.")
    q.add_argument("--from", dest="fmt", required=True, choices=["sharegpt", "hunyuan-legacy", "alpaca"],
                   help="the input format")
    q.add_argument("input", metavar="IN", help="input .json or .jsonl")
    q.add_argument("output", metavar="OUT", help="output .jsonl (written under a temporary name beside it, renamed when complete)")
    q.add_argument("--skip-bad", action="store_true",
                   help="write the rows that convert, report the others, and exit 1 if any row was refused "
                        "(default: write nothing if any row cannot be converted)")
    q.add_argument("--allow-bad", action="store_true",
                   help="as --skip-bad, but exit 0 when rows were refused")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_FILE_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json(q)
    q.set_defaults(func=run_convert)


def _add_encode(d) -> None:
    q = d.add_parser("encode", help="rows -> input_ids and labels (JSONL, and an ms-swift cached dataset)",
                     description="Encode Hy3 rows as Hy3's chat template renders them for training and write one "
                                 "JSON line per example: input_ids, labels (-100: no loss), lengths, source "
                                 "(file:line), and position_ids when packed. The input is validated first; nothing "
                                 "is written if any row has an error, or if the file has no rows. With "
                                 "--swift-dataset both outputs appear together; a rerun after a kill completes "
                                 "them.")
    q.add_argument("input", metavar="FILE", help="Hy3 rows, .jsonl or .json")
    q.add_argument("output", metavar="OUT", help="output .jsonl (written under a temporary name beside it, renamed when complete)")
    _encoder_args(q)
    q.add_argument("--max-length", type=POSITIVE_INT, metavar="N", help="longest example in tokens (default: no limit)")
    q.add_argument("--overflow", choices=["skip", "truncate", "error"], default="skip",
                   help="an example longer than --max-length: skip it and report it (default), keep its first N "
                        "tokens (an example left with no token in the loss is dropped and counted), or stop with "
                        "an error")
    q.add_argument("--pack", action="store_true",
                   help="pack examples into rows of at most --max-length tokens (best-fit decreasing); "
                        "position_ids restart at each example so Megatron keeps them apart")
    q.add_argument("--swift-dataset", metavar="DIR",
                   help="also write an Arrow dataset for `megatron sft --cached_dataset DIR` (use with "
                        "--custom_register_path $(hy3 data plugin-path) --template hy3); a new or empty directory")
    q.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT, and an existing --swift-dataset DIR that hy3 wrote as a dataset "
                        "(never an input, never a directory hy3 did not write), once the new ones are complete")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    add_json(q)
    q.set_defaults(func=run_encode)


def _add_stats(d) -> None:
    q = d.add_parser("stats", help="length histogram, tokens in the loss, over-length rows",
                     description="Statistics of Hy3 rows (encoded with the tokenizer of --model) or of "
                                 "`hy3 data encode` output. A file without rows is an error.")
    q.add_argument("input", metavar="FILE", help="Hy3 rows or encoded rows (.jsonl or .json)")
    add_model_flag(q, "the model directory, for its tokenizer (needed for Hy3 rows, not for encoded ones)",
                   aliases=("--tokenizer",))
    q.add_argument("--variant", choices=["release", "preview"],
                   help="token set (default: from the tokenizer's bos_token)")
    q.add_argument("--loss-mode", choices=["all", "last", "per-turn"], default="all",
                   help="which assistant turns are in the loss (default all)")
    q.add_argument("--max-length", type=POSITIVE_INT, metavar="N", help="count and list examples longer than N tokens")
    add_json(q, "print one JSON object")
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=run_stats)


def _add_check_template(d) -> None:
    q = d.add_parser("check-template", help="rows where our renderer and the model's chat template disagree",
                     description="Encode every row with the native renderer and with the chat template in MODEL_DIR "
                                 "(apply_chat_template with is_training=True and the row's reasoning_effort) and "
                                 "report each row where ids or labels differ, with the text where they part. "
                                 "Exit 1 when any row disagrees.")
    add_model_operand(q, "model_dir", "MODEL_DIR", "directory with the tokenizer and its chat template")
    q.add_argument("input", metavar="FILE", help="Hy3 rows, .jsonl or .json")
    q.add_argument("--variant", choices=["release", "preview"],
                   help="token set (default: from the tokenizer's bos_token)")
    q.add_argument("--loss-mode", choices=["all", "last", "per-turn"], default="all",
                   help="compare the examples of this loss mode (default all; per-turn also renders each turn's "
                        "reasoning)")
    q.add_argument("--preserved-thinking", choices=["default", "true", "false"], default="default",
                   help="keep reasoning in turns before the last user turn: default follows the template "
                        "(only when the row has tools)")
    q.add_argument("--show", type=COUNT, default=20, metavar="N", help="print at most N disagreements (default 20)")
    add_json(q, "print one JSON object (rows, examples, every disagreement)")
    q.set_defaults(func=run_check_template)


def _add_plugin_path(d) -> None:
    q = d.add_parser("plugin-path", help="print the path of the ms-swift plugin file",
                     description="Print the absolute path of megatron_hy/swift/plugin/ms_swift.py, the one plugin for "
                                 "ms-swift (Hy3 for mcore-bridge, and the hy3 / hy3_preview templates), for "
                                 "`megatron sft --custom_register_path $(hy3 data plugin-path) --template hy3` "
                                 "(hy3_preview for Hy3 preview).")
    add_json(q, "print {\"plugin\": PATH} as JSON")
    q.set_defaults(func=run_plugin_path)


def _add_standin_tokenizer(d) -> None:
    q = d.add_parser("standin-tokenizer", help="write the small stand-in tokenizer that knows Hy3's tokens",
                     description="Write a 512-entry byte-level tokenizer with Hy3's release and preview control "
                                 "tokens and a chat template that follows Hy3's documented rules (for trying the "
                                 "data tools without the real tokenizer).")
    q.add_argument("outdir", metavar="DIR", help=OUT_DIR_HELP)
    q.add_argument("--variant", choices=["release", "preview"], default="release",
                   help="which token set's BOS/eos/template the tokenizer uses (default release)")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    add_json(q)
    q.set_defaults(func=run_standin)


def _encoder_args(q) -> None:
    add_model_flag(q, "the model directory, for its tokenizer", required=True, aliases=("--tokenizer",))
    q.add_argument("--variant", choices=["release", "preview"],
                   help="token set (default: from the tokenizer's bos_token)")
    q.add_argument("--loss-mode", choices=["all", "last", "per-turn"], default="all",
                   help="all: every assistant turn in one example (default); last: the final assistant turn "
                        "only; per-turn: one example per assistant turn. A message's \"loss\": true/false "
                        "overrides the mode for that turn")
    q.add_argument("--backend", choices=["native", "jinja"], default="native",
                   help="native: our renderer (fast, default); jinja: the tokenizer's own chat template")
    q.add_argument("--preserved-thinking", choices=["default", "true", "false"], default="default",
                   help="keep reasoning in turns before the last user turn: default follows Hy3's template "
                        "(only when the row has tools)")


def _preserved(v: str) -> bool | None:
    return {"default": None, "true": True, "false": False}[v]


def _encoder(args, path: str, backend: str):
    tok = load_tokenizer(path)
    return Encoder(tok, variant=args.variant, loss_mode=args.loss_mode, backend=backend,
                   preserved_thinking=_preserved(getattr(args, "preserved_thinking", "default")), where=path)


def run_validate(args) -> int:
    rep = validate_files(args.files, quiet=args.quiet)
    print(rep.to_json() if args.json else rep.to_text(args.show))
    return 0 if rep.ok else 1


def run_convert(args) -> int:
    s = convert_file(args.input, args.output, args.fmt, skip_bad=args.skip_bad or args.allow_bad,
                     overwrite=args.overwrite, quiet=args.quiet)
    emit(args, s.to_json(args.output), s.text())
    log(f"wrote {args.output}: {s.written} Hy3 rows")
    if s.refused and not args.allow_bad:
        raise Hy3Error(f"{len(s.refused)} of {s.rows} rows refused (listed above with their file:line); "
                       f"{args.output} holds the other {s.written}; pass --allow-bad to accept that with exit 0")
    return 0


def run_encode(args) -> int:
    enc = _encoder(args, args.model, args.backend)
    s = encode_file(args.input, args.output, enc, max_length=args.max_length, overflow=args.overflow,
                    pack=args.pack, swift_dataset=args.swift_dataset, quiet=args.quiet, tokenizer=args.model,
                    overwrite=args.overwrite)
    emit(args, s.to_json(args.output, args.swift_dataset), s.text())
    log(f"wrote {args.output}: {s.written} encoded rows")
    if args.swift_dataset:
        log(f"wrote {args.swift_dataset}: ms-swift cached dataset (megatron sft --cached_dataset {args.swift_dataset} "
            f"--custom_register_path {_plugin()} --template {'hy3_preview' if enc.ts.name == 'preview' else 'hy3'})")
    return 0


def run_stats(args) -> int:
    enc = _encoder(args, args.model, "native") if args.model else None
    st = stats_file(args.input, enc, args.max_length, quiet=args.quiet)
    print(stats_json(st) if args.json else st.text())
    return 0


def run_check_template(args) -> int:
    model = model_operand(args, "model_dir", "MODEL_DIR")
    tok = load_tokenizer(model)
    kw = dict(variant=args.variant, loss_mode=args.loss_mode, preserved_thinking=_preserved(args.preserved_thinking),
              where=model)
    require_valid(args.input)
    res = check_template(args.input, Encoder(tok, backend="native", **kw), Encoder(tok, backend="jinja", **kw))
    if args.json:
        emit(args, {"ok": not res.disagreements, "rows": res.rows, "examples": res.examples,
                    "disagreements": [str(d) for d in res.disagreements]})
        return 0 if not res.disagreements else 1
    for d in res.disagreements[:args.show]:
        print(d)
    if len(res.disagreements) > args.show:
        print(f"... and {len(res.disagreements) - args.show} more")
    verdict = "OK" if not res.disagreements else "DISAGREE"
    print(f"{verdict}: {res.rows} rows, {res.examples} examples, {len(res.disagreements)} disagreements between the "
          f"native renderer and {model}'s chat template")
    return 0 if not res.disagreements else 1


def _plugin() -> str:
    return str(swift_plugin_path())  # a file ms-swift imports by path


def run_plugin_path(args) -> int:
    emit(args, {"plugin": _plugin()}, _plugin())
    return 0


def run_standin(args) -> int:
    with new_dir(args.outdir, TOKENIZER, overwrite=args.overwrite) as tmp:
        write_standin_tokenizer(tmp, variant=args.variant)
    out = args.outdir
    log(f"wrote {out}: stand-in Hy3 {args.variant} tokenizer (tokenizer.json, tokenizer_config.json with chat "
        f"template)")
    emit(args, {"output": str(out), "variant": args.variant})
    return 0
