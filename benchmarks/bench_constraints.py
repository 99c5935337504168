"""Structured-generation libraries vs hf_crystal.constraints for the crystal format, in one run.

    python benchmarks/bench_constraints.py [--vocab 32000] [--batches 1,32] [--max-sites 8]

For each candidate (xgrammar, llguidance, outlines-core, lm-format-enforcer, transformers-cfg and our
`CrystalLogitsProcessor`) and each tokenizer (our crystal tokenizer; a LLaMA-style BPE: Metaspace,
single digits, byte fallback, padded to `--vocab` tokens with extra random tokens, as a 32k LLaMA
vocabulary is): build the constraint for the crystal regex (no composition: no library expresses
exact counts in any order compactly), sample with a random tiny Llama through transformers'
`generate`, check that every output decodes with `hf_crystal.text.decode`, and time the processor per
generation step at each batch size. The ratio is (model step + processor) / model step, the model a
random Llama (default hidden 256, 4 layers; the larger the model, the smaller the ratio). Libraries that
are not installed are reported as skipped, libraries that fail with their error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback

import torch
from transformers import LogitsProcessor

from hf_crystal.constraints import CrystalConstraint, CrystalLogitsProcessor
from hf_crystal.prompts import generation_prompt
from hf_crystal.testing import llama_style_tokenizer, tiny_llama
from hf_crystal.text import ELEMENT_SYMBOLS, try_decode
from hf_crystal.tokenization import build_crystal_tokenizer

# The crystal format (Gruver et al. 2024, `hf_crystal.text`) as a regular expression, the part a library can enforce.
LENGTH = r"[1-9][0-9]{0,2}\.[0-9]"
ANGLE = r"(?:[1-9]|[1-9][0-9]|1[0-7][0-9])"
ELEMENT = "(?:" + "|".join(ELEMENT_SYMBOLS) + ")"
COORDS = r"0\.[0-9][0-9] 0\.[0-9][0-9] 0\.[0-9][0-9]"


def crystal_regex(max_sites: int) -> str:
    return f"{LENGTH} {LENGTH} {LENGTH}\n{ANGLE} {ANGLE} {ANGLE}(?:\n{ELEMENT}\n{COORDS}){{1,{max_sites}}}"


class Timed(LogitsProcessor):
    """Wraps a processor (or none) and adds up the time spent in it."""

    def __init__(self, inner=None):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def __call__(self, input_ids, scores):
        start = time.perf_counter()
        out = scores if self.inner is None else self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


# Each builder: (tokenizer, max_sites, batch, prompt_length) -> (processor or None, prefix_allowed_tokens_fn or None).
def build_ours(tokenizer, max_sites, batch, prompt_length):
    return CrystalLogitsProcessor(tokenizer, CrystalConstraint(max_sites=max_sites), prompt_length), None


def build_xgrammar(tokenizer, max_sites, batch, prompt_length):
    import xgrammar as xgr
    import xgrammar.contrib.hf

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    compiled = xgr.GrammarCompiler(info).compile_regex(crystal_regex(max_sites))
    return xgrammar.contrib.hf.LogitsProcessor(compiled), None


class LLGuidanceProcessor(LogitsProcessor):
    """One llguidance matcher per row (llguidance ships no transformers processor)."""

    def __init__(self, tokenizer, max_sites, batch, prompt_length):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.torch = llguidance.torch
        lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
        grammar = llguidance.LLMatcher.grammar_from_regex(crystal_regex(max_sites))
        self.matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
        self.mask = self.torch.allocate_token_bitmask(batch, lltok.vocab_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_length:
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_stopped():
                    matcher.consume_token(token)
        for i, matcher in enumerate(self.matchers):
            self.torch.fill_next_token_bitmask(matcher, self.mask, i)
        self.torch.apply_token_bitmask_inplace(scores, self.mask)
        return scores


class OutlinesCoreProcessor(LogitsProcessor):
    """One outlines-core Guide per row over the Index of the regex (outlines-core ships no processor)."""

    def __init__(self, tokenizer, max_sites, batch, prompt_length):
        import outlines_core

        zero = tokenizer.convert_tokens_to_ids("0")
        special = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode(
            [[zero, t] for t in range(len(tokenizer))], clean_up_tokenization_spaces=False
        )
        vocab: dict[str, list[int]] = {}
        for token_id, text in enumerate(texts):
            if token_id not in special and text[1:]:
                vocab.setdefault(text[1:], []).append(token_id)
        index = outlines_core.Index(
            crystal_regex(max_sites), outlines_core.Vocabulary(tokenizer.eos_token_id, vocab)
        )
        self.guides = [outlines_core.Guide(index) for _ in range(batch)]
        self.prompt_length, self.eos = prompt_length, tokenizer.eos_token_id
        self.done = [False] * batch

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > self.prompt_length:
            for i, token in enumerate(input_ids[:, -1].tolist()):
                self.done[i] |= token == self.eos
                if not self.done[i]:
                    self.guides[i].advance(token)
        mask = torch.full_like(scores, float("-inf"))
        for i, guide in enumerate(self.guides):
            mask[i, [self.eos] if self.done[i] else guide.get_tokens()] = 0
        return scores + mask


def build_llguidance(tokenizer, max_sites, batch, prompt_length):
    return LLGuidanceProcessor(tokenizer, max_sites, batch, prompt_length), None


def build_outlines_core(tokenizer, max_sites, batch, prompt_length):
    return OutlinesCoreProcessor(tokenizer, max_sites, batch, prompt_length), None


def build_lmformatenforcer(tokenizer, max_sites, batch, prompt_length):
    from lmformatenforcer import RegexParser
    from lmformatenforcer.integrations.transformers import build_transformers_prefix_allowed_tokens_fn

    return None, build_transformers_prefix_allowed_tokens_fn(tokenizer, RegexParser(crystal_regex(max_sites)))


def build_transformers_cfg(tokenizer, max_sites, batch, prompt_length):
    from transformers_cfg.generation.logits_process import GrammarConstrainedLogitsProcessor
    from transformers_cfg.grammar_utils import IncrementalGrammarConstraint

    element = " | ".join(json.dumps(s) for s in ELEMENT_SYMBOLS)
    sites = " ".join(["site"] + ["site?"] * (max_sites - 1))
    grammar = f"""
root ::= length " " length " " length "\\n" angle " " angle " " angle {sites}
length ::= [1-9] [0-9]? [0-9]? "." [0-9]
angle ::= [1-9] | [1-9] [0-9] | "1" [0-7] [0-9]
site ::= "\\n" element "\\n" coord " " coord " " coord
element ::= {element}
coord ::= "0." [0-9] [0-9]
"""
    return GrammarConstrainedLogitsProcessor(IncrementalGrammarConstraint(grammar, "root", tokenizer)), None


# name -> (module that must be importable, builder)
BUILDERS = {
    "hf_crystal (ours)": ("hf_crystal", build_ours),
    "xgrammar 0.2.8": ("xgrammar", build_xgrammar),
    "llguidance 1.9.1": ("llguidance", build_llguidance),
    "outlines-core 0.2.14": ("outlines_core", build_outlines_core),
    "lm-format-enforcer 0.11.3": ("lmformatenforcer", build_lmformatenforcer),
    "transformers-cfg 0.2.7": ("transformers_cfg", build_transformers_cfg),
}


def run(name, tokenizer, model, batch, max_sites, seed=0):
    """Sample `batch` crystals: (fraction that decode, processor seconds per step, build seconds)."""
    prompt = tokenizer([generation_prompt()] * batch, return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    processor, prefix_fn = BUILDERS[name][1](tokenizer, max_sites, batch, prompt.input_ids.shape[1])
    build = time.perf_counter() - start
    timed = Timed(processor)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            **prompt,
            do_sample=True,
            max_new_tokens=CrystalConstraint(max_sites=max_sites).max_new_tokens,
            logits_processor=[timed],
            prefix_allowed_tokens_fn=prefix_fn,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(out[:, prompt.input_ids.shape[1] :], skip_special_tokens=True)
    ok = sum(try_decode(t)[0] is not None for t in texts) / batch
    return ok, timed.seconds / max(timed.calls, 1), build


def model_step_seconds(tokenizer, model, batch, steps):
    """Seconds per generation step of the unconstrained model (a fixed number of steps)."""
    prompt = tokenizer([generation_prompt()] * batch, return_tensors="pt", add_special_tokens=False)
    kwargs = {"do_sample": True, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        model.generate(**prompt, max_new_tokens=2, **kwargs)  # warm-up
        start = time.perf_counter()
        model.generate(**prompt, max_new_tokens=steps, min_new_tokens=steps, **kwargs)
    return (time.perf_counter() - start) / steps


def compare(name, tok_name, tok, model, batches, base, max_sites):
    """One table row: per batch size, the fraction that decodes and the processor time per step.

    Each configuration runs twice, with different seeds: "first / second" run's ms per step (our automaton
    builds its tables lazily and caches them per tokenizer, so its first run pays for them); the ratio and
    the fraction that decodes are the second run's; build is the very first construction.
    """
    row, builds = [name, tok_name], []
    for b in batches:
        _, first, build = run(name, tok, model, b, max_sites)
        ok, second, _ = run(name, tok, model, b, max_sites, seed=1)
        builds.append(build)
        row += [f"{ok:.0%}", f"{first * 1e3:.2f} / {second * 1e3:.2f} ms ({1 + second / base[b]:.2f}x)"]
    return [*row, f"{builds[0] * 1e3:.0f} ms"]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=32000, help="size of the LLaMA-style vocabulary")
    parser.add_argument(
        "--max-sites", type=int, default=8, help="site bound of the regex and of our constraint"
    )
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a busy machine)"
    )
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the random Llama")
    parser.add_argument("--layers", type=int, default=4, help="layers of the random Llama")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    tokenizers = {
        "crystal": build_crystal_tokenizer(),
        f"llama-bpe-{args.vocab}": llama_style_tokenizer(args.vocab, bpe_size=1000),
    }
    header = ["library", "tokenizer"]
    for b in batches:
        header += [f"decodes b={b}", f"processor ms/step b={b}: 1st / 2nd run (ratio)"]
    rows = [header + ["build"]]
    for tok_name, tok in tokenizers.items():
        tok.padding_side = "left"
        model = tiny_llama(
            tok,
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
        base = {b: model_step_seconds(tok, model, b, 32) for b in batches}
        print(
            f"{tok_name}: model step " + ", ".join(f"b={b} {s * 1e3:.1f} ms" for b, s in base.items()),
            flush=True,
        )
        for name, (module, _) in BUILDERS.items():
            if importlib.util.find_spec(module) is None:
                row = [name, tok_name, "skipped: not installed"]
            else:
                try:
                    row = compare(name, tok_name, tok, model, batches, base, args.max_sites)
                except Exception as err:  # a library that fails is a result of the comparison
                    traceback.print_exc()
                    row = [name, tok_name, f"error: {type(err).__name__}: {str(err)[:90]}"]
            rows.append(row + [""] * (len(header) + 1 - len(row)))
            print(" | ".join(rows[-1]), flush=True)
    print()
    print("\n".join("| " + " | ".join(r) + " |" for r in rows[:1] + [["---"] * len(rows[0])] + rows[1:]))


if __name__ == "__main__":
    main()
