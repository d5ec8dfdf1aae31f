"""`run.py --option tokenizers`: every tokenizer we can load, measured on English and Persian text.

Tokenizers compared (each loaded by tokenizer.py; a default file that is missing is skipped with a
printed note, a file given by flag that is missing is an error):
    llama2    Llama 2 tokenizer.model: SentencePiece BPE, 32,000 pieces, byte fallback
    llama3    Llama 3 tokenizer.model: byte-level BPE run by tiktoken, 128,000 ranks + 256 specials
    smollm2   SmolLM2's byte-level BPE (49,152 tokens) read from the default model's GGUF metadata
    --tokenizer FILE ...  any file Tokenizer.from_file reads (SentencePiece, Llama 3 tiktoken,
              tokenizer.json, GGUF, a model folder)
    sp-bpe-V / sp-unigram-V  SentencePiece trained here (tokenizer.train_sentencepiece) on
              --train_text (default the English sample) with --train_vocab_size (a soft limit:
              unigram stops early on a small corpus; V is the size reached); byte fallback, every
              space kept (as pico trains its BPE), so decode(encode(s)) == s. Trained on English
              only, it shows what a vocabulary that never saw Persian does with it; scored on its
              own training text, its English numbers are in-sample (optimistic).

The algorithms:
    BPE (Sennrich, Haddow & Birch 2016, arXiv:1508.07909, Algorithm 1): start from characters,
        repeatedly merge the most frequent adjacent pair into a new symbol, V - base merges;
        encoding replays the merges in learnt order.
    byte-level BPE (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners",
        Section 2.2): BPE over the UTF-8 bytes of regex pre-tokens (no merge crosses a letter /
        digit / punctuation boundary); 256 byte tokens are the base, so no text is unknown, but a
        token may hold part of a character (one byte of a 2-byte Persian letter).
    SentencePiece (Kudo & Richardson 2018, arXiv:1808.06226): language-independent, works on raw
        text with spaces written as U+2581 "▁", trains BPE or unigram; byte fallback turns a
        character outside the vocabulary into its UTF-8 bytes as pieces <0xD8><0xB3>.
    unigram LM (Kudo 2018, arXiv:1804.10959): a large seed vocabulary is pruned by EM to the
        pieces that keep the corpus likelihood prod p(piece) highest; encoding is the Viterbi
        segmentation argmax_seg sum log p(piece).

Why Persian costs more tokens per word in some vocabularies: merges (and unigram pieces) are
learnt from the training corpus, so a vocabulary trained mostly on English holds few Persian
pieces. Llama 2 (Touvron et al. 2023, arXiv:2307.09288, Table 10: ~90% English data) has most
Arabic-script letters as single pieces but almost no merges of them: about one token per character
on fa.txt (5.3 tokens per word), and Persian-only letters and digits (گ, ۳) fall back to 2 byte
pieces. SmolLM2's byte-level BPE (English-centric corpus) is worse still: many tokens are single
bytes of a letter. Llama 3 added 28K tokens for non-English text to tiktoken's 100K (Grattafiori
et al. 2024, arXiv:2407.21783, Section 3.2) and encodes Persian at nearly English's tokens per
word. A SentencePiece trained on English alone has no Persian letter at all: every one is 2 byte
pieces. Persian also attaches affixes (می‌ ، ها ، ی) and joins them with a zero-width non-joiner
(U+200C, no word break), so one whitespace word holds more morphemes than an English one.
Each extra token costs context length,
compute and money.

Metrics for one tokenizer x text (ids = encode(text), no bos/eos):
    words          len(text.split()): runs of Unicode whitespace separate words (ZWNJ does not)
    tokens / word  len(ids) / words
    bytes / token  len(text.encode("utf-8")) / len(ids): compression; a Persian letter is 2 bytes,
                   an English one 1, so compare scripts by characters / token
    chars / token  len(text) / len(ids)  (code points)
    byte/unk       SentencePiece: byte-fallback pieces <0xNN> + <unk> ids; byte-level BPE: tokens
                   whose bytes are not valid UTF-8 on their own (not whole characters)
    round trip     decode(encode(text)) == text exactly
    first pieces   the first --show_pieces tokens as text: spaces as "▁" (SentencePiece's own
                   pieces kept as they are), newline "↵", tab "⇥", other control / invisible
                   characters <U+200C>, bytes that are not a whole character <0xD8>; pieces are
                   separated by plain spaces (no piece contains one after this).

Right-to-left display: each piece holding a right-to-left letter (bidi class R or AL) is wrapped in
FIRST STRONG ISOLATE U+2068 ... POP DIRECTIONAL ISOLATE U+2069 (Unicode UAX #9, rules X5c, X6a).
Inside, the piece is laid out in its own direction (Persian right to left); outside, the isolate
counts as one neutral character, so the pieces keep their logical order, left to right, in a
left-to-right table, and neighbouring Persian pieces are not merged into one reversed run (which
would show piece 2 to the left of piece 1). An LRM between pieces also keeps their order, but a
piece's own neutral characters (its leading ▁, punctuation) then take the outer left-to-right
direction and show at the wrong end of the Persian word; inside an isolate they follow the piece.
Isolates are invisible in a bidi-aware terminal or browser; a terminal without bidi shows every
character left to right in logical order anyway. JSON keeps the pieces without isolates.

Outputs in --out_dir: tokenizers.md (vocabulary sizes and the table, also printed),
tokenizers.json (every number and the first pieces and ids), tokenizers.png (tokens per word,
grouped by text). Tests: tests/test_run_tokenizers.py (hand-counted metrics on bytes and a tiny
trained SentencePiece; the RTL rule; transformers' Llama tokenizer and TikTokenConverter as
oracles of the counts on the samples; the CLI end to end; bad flags as one-line errors).
Size: over 400 lines, because a report line shows pieces readably (bytes, right-to-left text,
markdown escapes) and that display code belongs to this one report.
"""
import os
import re
import unicodedata
from pathlib import Path

import atomic
import file_checks
import options
import plots
import weights
from tokenizer import SentencePieceTokenizer, Tokenizer, train_sentencepiece

ROOT = Path(__file__).resolve().parent
# ../shared/data beside the checkout, as run_pico.TINYSTORIES and tests/conftest.py locate it
DATA = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")) / "tokenizers"
DEFAULT_TOKENIZERS = {"llama2": "llama2-tokenizer.model", "llama3": "llama3-tokenizer.model"}
DEFAULT_TEXTS = ("en.txt", "fa.txt")          # samples/, see SOURCE.md
FSI, PDI = "\u2068", "\u2069"                 # FIRST STRONG ISOLATE, POP DIRECTIONAL ISOLATE
VISIBLE = {" ": "\u2581", "\n": "↵", "\t": "⇥"}
MODEL_TYPES = {"bpe": ("bpe",), "unigram": ("unigram",), "both": ("bpe", "unigram")}

# ----------------------------------------------------------------------------
# pieces a reader can see


def visible(text):
    """Spaces as ▁, newline ↵, tab ⇥; other control / format / separator characters <U+XXXX>."""
    out = []
    for char in text:
        if char in VISIBLE:
            out.append(VISIBLE[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            out.append(f"<U+{ord(char):04X}>")         # ZWNJ, NBSP, LRM, ...: invisible otherwise
        else:
            out.append(char)
    return "".join(out)


def readable_bytes(data):
    """A token's bytes as text: valid UTF-8 runs through visible(), other bytes as <0xNN>."""
    out = []
    while data:
        try:
            out.append(visible(data.decode("utf-8")))
            break
        except UnicodeDecodeError as err:
            out.append(visible(data[:err.start].decode("utf-8")))
            out += [f"<0x{b:02X}>" for b in data[err.start:err.end]]
            data = data[err.end:]
    return "".join(out)


def piece_text(tok, token_id):
    """One token as text: SentencePiece's own piece (▁, <0xNN> kept), else its readable bytes."""
    if isinstance(tok, SentencePieceTokenizer):
        return visible(tok.processor.id_to_piece(int(token_id)))
    return readable_bytes(tok.token_bytes(token_id))


def is_rtl(text):
    """True if text holds a right-to-left letter (bidi class R: Hebrew, AL: Arabic script)."""
    return any(unicodedata.bidirectional(char) in ("R", "AL") for char in text)


def isolate_rtl(piece):
    """FSI piece PDI for a right-to-left piece (see the docstring), other pieces unchanged."""
    return f"{FSI}{piece}{PDI}" if is_rtl(piece) else piece


def display_pieces(pieces):
    """Pieces in logical order, space separated, each right-to-left piece isolated."""
    return " ".join(isolate_rtl(p) for p in pieces)


def markdown_escape(text):
    """Backslash before the characters that would change a markdown table cell: | ` * _ \\,
    and < where it could open an HTML tag (<unk>; our <0xNN> and <U+XXXX> cannot)."""
    return re.sub(r"<(?=[A-Za-z/!?])(?!U\+)", r"\<", re.sub(r"([\\`*_|])", r"\\\1", text))


# ----------------------------------------------------------------------------
# metrics


def is_byte_piece(tok, token_id):
    """A SentencePiece byte-fallback piece <0xNN>, or a byte-level token that is not whole
    characters (its bytes are not valid UTF-8 on their own)."""
    if isinstance(tok, SentencePieceTokenizer):
        return tok.processor.is_byte(token_id)
    try:
        tok.token_bytes(token_id).decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def is_unknown(tok, token_id):
    """An <unk> id (SentencePiece only: a byte-level vocabulary cannot produce one)."""
    return isinstance(tok, SentencePieceTokenizer) and tok.processor.is_unknown(token_id)


def measure(tok, text, show_pieces=12):
    """The metrics of the docstring for one tokenizer on one text -> dict."""
    ids = tok.encode(text)
    words, num_bytes = len(text.split()), len(text.encode("utf-8"))
    byte_pieces = sum(is_byte_piece(tok, i) for i in ids)
    unknown = sum(is_unknown(tok, i) for i in ids)
    return {"words": words, "chars": len(text), "bytes": num_bytes, "tokens": len(ids),
            "tokens_per_word": len(ids) / words, "bytes_per_token": num_bytes / len(ids),
            "chars_per_token": len(text) / len(ids), "byte_pieces": byte_pieces,
            "unknown": unknown, "fallback_share": (byte_pieces + unknown) / len(ids),
            "round_trip": tok.decode(ids) == text, "first_ids": ids[:show_pieces],
            "pieces": [piece_text(tok, i) for i in ids[:show_pieces]]}


# ----------------------------------------------------------------------------
# the tokenizers and texts to compare


def unique_name(name, taken):
    """name, or name#2, name#3 ... if a row already uses it."""
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}#{n}"
    return name


def _default_sources():
    """(name, path) of the default tokenizers; a missing one is printed and skipped."""
    found = []
    for name, file in DEFAULT_TOKENIZERS.items():
        path = DATA / file
        if path.is_file():
            found.append((name, path))
        else:
            print(f"note: skipping {name}: {path} not found (the shared data folder; see README)")
    try:
        found.append(("smollm2", weights.default_model_path()))
    except FileNotFoundError as err:
        print(f"note: skipping smollm2: {err}")
    return found


def train_text_lines(path):
    """The non-blank lines of the training text (SentencePiece trains on sentences)."""
    return [line for line in file_checks.read_text(path, "--train_text").split("\n")
            if line.strip()]


def trained_tokenizers(args, train_path):
    """(name, tokenizer, source) for each SentencePiece model type asked for."""
    if train_path is None:
        return []
    lines, out = train_text_lines(train_path), []
    for model_type in MODEL_TYPES[args.train_model_type]:
        try:
            tok = train_sentencepiece(lines, args.train_vocab_size, model_type=model_type,
                                      exact_whitespace=True)
        except ValueError as err:
            raise ValueError(f"--train_vocab_size {args.train_vocab_size} with --train_text "
                             f"{train_path}: {err}") from None
        out.append((f"sp-{model_type}-{tok.vocab_size}", tok,
                    f"trained on {train_path} ({model_type}, exact whitespace)"))
    return out


def load_tokenizers(args, train_path):
    """[(name, tokenizer, source)]: defaults, then --tokenizer files, then the trained ones."""
    trained = trained_tokenizers(args, train_path)       # first: a too-small V fails fast
    sources = _default_sources() + [(Path(p).name, p) for p in args.tokenizer or []]
    loaded = [(name, Tokenizer.from_file(path), str(path)) for name, path in sources]
    named, taken = [], set()
    for name, tok, source in loaded + trained:
        name = unique_name(name, taken)
        taken.add(name)
        named.append((name, tok, source))
    return named


# ----------------------------------------------------------------------------
# report: markdown, JSON, figure

TABLE_HEAD = ("| tokenizer | V | text | words | tokens | tokens/word | bytes/token | chars/token "
              "| byte/unk | round trip | first pieces |\n"
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|")


def vocabulary_table(tokenizers):
    lines = ["| tokenizer | kind | vocabulary size | source |", "|---|---|---:|---|"]
    lines += [f"| {markdown_escape(name)} | {tok.kind} | {tok.vocab_size:,} | "
              f"{markdown_escape(source)} |" for name, tok, source in tokenizers]
    return "\n".join(lines)


def results_table(results):
    """One row per tokenizer x text."""
    lines = [TABLE_HEAD]
    for r in results:
        fallback = r["byte_pieces"] + r["unknown"]
        lines.append(
            f"| {markdown_escape(r['tokenizer'])} | {r['vocab_size']:,} | "
            f"{markdown_escape(r['text'])} | {r['words']:,} | {r['tokens']:,} | "
            f"{r['tokens_per_word']:.2f} | {r['bytes_per_token']:.2f} | "
            f"{r['chars_per_token']:.2f} | {fallback:,} ({100 * r['fallback_share']:.1f}%) | "
            f"{'yes' if r['round_trip'] else 'NO'} | "
            f"{display_pieces(markdown_escape(p) for p in r['pieces'])} |")
    return "\n".join(lines)


def report_markdown(tokenizers, results):
    return (f"Vocabulary sizes:\n\n{vocabulary_table(tokenizers)}\n\n"
            f"Tokens per whitespace word (ids without bos/eos):\n\n{results_table(results)}\n")


def plot_tokens_per_word(results, path):
    """Grouped bars: one group per text, one bar per tokenizer."""
    texts = list(dict.fromkeys(r["text"] for r in results))
    names = list(dict.fromkeys(r["tokenizer"] for r in results))
    value = {(r["tokenizer"], r["text"]): r["tokens_per_word"] for r in results}
    fig, ax = plots.pyplot().subplots(figsize=(2 + 1.2 * len(texts) * len(names) / 2, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [t + (k - (len(names) - 1) / 2) * width for t in range(len(texts))]
        bars = ax.bar(xs, [value.get((name, text), 0.0) for text in texts], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(texts)), texts)
    ax.set(ylabel="tokens per whitespace word", title="tokens per word (lower is cheaper)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_figure_atomic(fig, path)


# ----------------------------------------------------------------------------
# command line


# path flags, checked by run.py before any work (options.check_paths)
PATHS = options.PathFlags(inputs=("--tokenizer", "--text", "--train_text"),
                          folders=("--out_dir",))


def add_arguments(parser, option):
    add = parser.add_argument
    add("--tokenizer", action="append", default=None, metavar="FILE",
        help="another tokenizer to compare (repeatable): SentencePiece .model, Llama 3 "
             "tiktoken, tokenizer.json, GGUF or a model folder; llama2, llama3 and smollm2 "
             "are always included when found")
    add("--text", action="append", default=None, metavar="FILE",
        help=f"a UTF-8 text to measure on (repeatable); default {DATA}/samples/en.txt and fa.txt")
    add("--train_text", "--train-text", default=None, metavar="FILE",
        help=f"corpus for the SentencePiece trained here; default {DATA}/samples/en.txt")
    add("--train_vocab_size", "--train-vocab-size", type=int, default=1000,
        help="vocabulary size of the trained SentencePiece (>= 256 byte pieces + the corpus's "
             "characters + 3 specials)")
    add("--train_model_type", "--train-model-type", choices=sorted(MODEL_TYPES), default="both",
        help="SentencePiece model(s) to train: bpe, unigram or both")
    add("--show_pieces", "--show-pieces", type=int, default=12,
        help="how many first pieces of each text to show")
    add("--out_dir", "--out-dir", default="runs/tokenizers",
        help="folder for tokenizers.md, tokenizers.json, tokenizers.png")


def read_text(path, flag):
    """A text file's contents; missing, undecodable or wordless files are one-line errors."""
    text = file_checks.read_text(path, flag)
    if not text.split():
        raise ValueError(f"{flag} {path}: has no words; give a file with text in it")
    return text


def read_texts(args):
    """{name: text}: the --text files, else the default samples that exist."""
    texts = {}
    for path in args.text or []:
        texts[unique_name(Path(path).stem, texts)] = read_text(path, "--text")
    if args.text is None:
        for file in DEFAULT_TEXTS:
            path = DATA / "samples" / file
            if path.is_file():
                texts[Path(file).stem] = read_text(path, "default text")
            else:
                print(f"note: skipping default text {path}: not found (the shared data folder)")
    if not texts:
        raise FileNotFoundError(f"no text to measure: the default samples in {DATA / 'samples'} "
                                "are missing; give --text FILE")
    return texts


def train_text_path(args):
    """--train_text (checked), else the English sample, else None (nothing trained)."""
    if args.train_text is not None:
        read_text(args.train_text, "--train_text")
        return args.train_text
    default = DATA / "samples" / DEFAULT_TEXTS[0]
    if default.is_file():
        return default
    print(f"note: no SentencePiece trained: the default --train_text {default} is missing")
    return None


def check_arguments(args):
    """Every bad flag as one line, before any tokenizer is loaded -> (texts, train_path)."""
    if args.train_vocab_size < 1:
        raise ValueError(f"--train_vocab_size {args.train_vocab_size}: must be a positive "
                         "number of pieces, e.g. 1000")
    if args.show_pieces < 0:
        raise ValueError(f"--show_pieces {args.show_pieces}: must be >= 0")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise ValueError(f"--out_dir {args.out_dir}: is a file; give a folder path")
    for path in args.tokenizer or []:
        if not Path(path).exists():
            raise FileNotFoundError(f"--tokenizer {path}: no such file or folder; give a "
                                    "tokenizer file or a model folder")
    return read_texts(args), train_text_path(args)


def main(args):
    texts, train_path = check_arguments(args)
    tokenizers = load_tokenizers(args, train_path)
    if not tokenizers:
        raise FileNotFoundError(f"no tokenizer to compare: the defaults in {DATA} and the default "
                                "model are missing; give --tokenizer FILE or --train_text FILE")
    print("vocabulary sizes:")
    for name, tok, source in tokenizers:
        print(f"  {name:<20} {tok.kind:<16} V = {tok.vocab_size:>7,}  {source}")
    results = [{"tokenizer": name, "kind": tok.kind, "vocab_size": tok.vocab_size,
                "text": text_name, **measure(tok, text, args.show_pieces)}
               for name, tok, _ in tokenizers for text_name, text in texts.items()]
    table = report_markdown(tokenizers, results)
    out = Path(args.out_dir)
    atomic.write_text_atomic(out / "tokenizers.md", table)
    atomic.save_json_atomic(out / "tokenizers.json", {
        "tokenizers": [{"name": n, "kind": t.kind, "vocab_size": t.vocab_size, "source": s}
                       for n, t, s in tokenizers],
        "texts": {name: {"words": len(t.split()), "chars": len(t),
                         "bytes": len(t.encode("utf-8"))} for name, t in texts.items()},
        "results": results})
    plot_tokens_per_word(results, out / "tokenizers.png")
    print(table, flush=True)
    print(f"wrote {out / 'tokenizers.md'}, tokenizers.json, tokenizers.png", flush=True)
    return results
