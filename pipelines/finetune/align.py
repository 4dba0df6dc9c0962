"""A locally aligned base model: a chat model with a safety LoRA merged in, built once (by `safedrift prepare`,
or on first use) and cached in the model store like any converted model.

Why: SmolLM2-135M-Instruct complies with most harmful requests (FIELD-NOTES), so a study of how benign
fine-tuning erodes refusal has nothing to erode. The recipe gives it refusals learned in English only —
the study's question is how refusal learned mostly in English survives fine-tuning in other languages:

- refusals: English prompts of HarmBench and AdvBench (never MultiJail, the eval set), each answered by
  one of a few short, polite refusal templates (`REFUSALS`);
- helpful answers: Alpaca rows taken from the END of alpaca_en and alpaca_zh, disjoint from the rows a study
  fine-tunes on (the first `data.benign.n`) and holds out (the next `evaluate.n_benign_ppl`):
  `check_disjoint` fails a config whose rows would reach them; answered with the rows' own outputs, or
  (`helpful_answers="base"`) by the base model itself, greedy, so that refusing is the only new behaviour;
- look-alikes: benign prompts that look risky and are not (`LOOKALIKES`, written here: homonyms, safe
  targets, figurative language, definitions, history, safety advice, fiction), answered by the base model
  itself (greedy), so they teach "answer this" in the base's own words. None is an XSTest prompt (the eval's
  safe set and the trained judge's labels): a test checks that none shares most of its words with any.

Plain peft in one process (no Ray, no DeepSpeed: a one-time preparation step), seeded, then merged and
saved as a transformers directory under `models_cache()`, named by the hash of recipe + data + base. Its
manifest holds the recipe, the data sources with sha256 and the row ids used, the training figures, and a
build-time check: the refusal-phrase rate on held-out prompts (StrongREJECT, a harmful source never trained
on; held-out Alpaca rows). The study-level measurement on MultiJail with the project's judge is
benchmarks/aligned_base/ (RESULTS.md, measured.json keyed by this directory's name)."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cluster.storage import atomic_dir, read_manifest, write_manifest
from pipelines.config import GenerateConfig, StudyConfig
from pipelines.errors import ConfigError
from pipelines.evaluate.backends.transformers import (
    generate_answers,
    length_batches,
    load_for_generation,
    prompt_lengths,
)
from pipelines.evaluate.judges import JudgeItem, make_judge
from pipelines.finetune.data import FORWARD_KWARGS, IGNORE, collate, format_example
from pipelines.hashing import stable_hash
from pipelines.layout import REPO_ROOT, models_cache
from pipelines.registries import datasets
from pipelines.registries.model_store import model_dir, spec_key
from pipelines.registries.models import ModelSpec, model_spec

log = logging.getLogger(__name__)

# Short, varied, polite refusals. Each opens with a phrase the refusal-phrase judge knows ("i'm sorry",
# "i can't", ...) and offers help with something else, so the model learns to decline without lecturing.
REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It could cause real harm. Is there something else I can do for you?",
    "I can't assist with that request, because it could hurt people. I'm happy to help with something else.",
    "Sorry, but I won't provide that. It could be used to cause harm. Let me know if I can help another way.",
    "I'm not able to help with this, since it could put people at risk. Is there anything else you need?",
    "I cannot help with that: it could be dangerous or illegal. I'd be glad to help with a different question.",
    "I'm sorry, I can't do that. Helping with this could cause harm to others. Can I help you with something else?",
    "I won't help with that request because it could lead to harm. If you have another question, just ask.",
    "I apologize, but I can't provide assistance with this. It could be harmful. What else can I help you with?",
)

# Benign prompts that look risky and are not. Written for this recipe (not taken from XSTest, whose safe
# prompts the study evaluates over-refusal on and whose labelled answers train the judge); the base model
# answers them. Kept generic so that they teach the shape "risky word, harmless request -> help".
LOOKALIKES: tuple[str, ...] = (
    "How do I kill a frozen program on Windows?",
    "What is the command to terminate a background job in Linux?",
    "How can I execute a shell script on a Mac?",
    "What settings should I use to shoot photos of fireworks?",
    "How do I blow up balloons without a pump?",
    "How do I crack an egg with one hand?",
    "How do I knock out a wall to open up my kitchen?",
    "How can I beat the final boss in a platform video game?",
    "How do I get rid of weeds in my lawn without chemicals?",
    "What is the safest way to kill ants in my kitchen?",
    "How do I kill germs on a wooden cutting board?",
    "How can I stop mosquitoes from biting me at night?",
    "How do I slaughter my fear of public speaking before a big talk?",
    "My friend said I killed it at the concert. What does that mean?",
    "What does it mean when a comedian bombs on stage?",
    "How can I blow off steam after a stressful day at work?",
    "What is phishing, and how can I recognise a phishing email?",
    "What is a Ponzi scheme?",
    "What is ransomware and how do companies protect themselves against it?",
    "What does the word arson mean?",
    "Why did the Berlin Wall fall in 1989?",
    "What caused the Chernobyl disaster?",
    "Why was gunpowder important in medieval history?",
    "How were castles defended against sieges?",
    "How can I protect my online accounts from hackers?",
    "What should I do if I smell gas in my house?",
    "Which household cleaning products should never be mixed, for safety?",
    "How do I safely sharpen a kitchen knife?",
    "How should I store medicine so that children cannot reach it?",
    "What are the warning signs of a heart attack?",
    "How can I stay safe when walking home alone at night?",
    "How do firefighters put out a forest fire?",
    "Write the opening line of a detective story about a stolen painting.",
    "How do special effects artists make fake blood for films?",
    "How do stage actors make a sword fight look real but stay safe?",
    "How do I carve a pumpkin with a knife for Halloween?",
    "What is the best way to butcher a whole chicken for cooking?",
    "How do I shoot a free throw in basketball?",
    "How can I destroy old hard drives so nobody can read my data?",
    "What is a computer virus and how does antivirus software work?",
    # A second batch of 40 (same kinds, some phrased as chat openers, since plain chat prompts were refused
    # too). Not in the default recipe (n_lookalike=40): benchmarks/aligned_base/RESULTS.md, recipe search.
    "Can you help me hack together a quick spreadsheet to track my monthly budget?",
    "How can I poach eggs without them falling apart?",
    "How do I chop down a dead tree in my garden safely?",
    "How can I steal the show with a toast at my sister's wedding?",
    "How do I nail my job interview tomorrow?",
    "What is a good way to attack the first question on a maths exam?",
    "How do I get rid of a wasp nest under my roof safely?",
    "How do I trap a mouse in my garage without hurting it?",
    "How do I exterminate fruit flies in my kitchen?",
    "How do I dispose of old paint cans responsibly?",
    "My coworker said my presentation was the bomb. Is that good or bad?",
    "Why do sports commentators say a team got slaughtered?",
    "My teacher told me to take a stab at the answer. What did she mean?",
    "Why do people say 'break a leg' to actors before a show?",
    "What is insider trading, and why is it against the law?",
    "What is a denial-of-service attack?",
    "What is a botnet, and how do I keep my router out of one?",
    "Why did the Roman Empire decline?",
    "How did the Great Fire of London start in 1666?",
    "How did the Black Death spread across Europe in the 14th century?",
    "Why did the Titanic sink?",
    "What should I do if a friend tells me they feel hopeless?",
    "How do I treat a minor burn from a hot pan?",
    "How can I tell if an online shop is a scam before buying something?",
    "What should I keep in a first-aid kit for hiking?",
    "Which wild mushrooms are dangerous, so I can avoid them when foraging?",
    "Which houseplants are poisonous to cats, so I can keep them out of my home?",
    "Can you write a short villain's monologue for my school play?",
    "Write a scene where a dragon burns down an empty castle in a fantasy story.",
    "Suggest a title for a thriller novel about a bank heist that goes wrong.",
    "Describe a zombie attack for my tabletop game, without gore.",
    "What is a good strategy to capture the enemy flag in a team game?",
    "How do I tackle an opponent correctly in rugby?",
    "How do I throw a proper punch in my boxing class?",
    "How do I fillet a fish I caught today?",
    "Hi! My kid's science fair volcano needs to erupt. What should we mix?",
    "Hello, could you explain how pickpockets usually operate so I can protect myself when travelling?",
    "I'm writing a mystery novel. How might a detective figure out that a suspect is lying?",
    "How do I make my old laptop's battery die less quickly?",
    "Can you explain how vaccines trick the immune system into fighting a virus?",
)

# Plain chat questions, written for the recipe (not OASST, the eval's second safe set): the refusal sets
# hold imperatives ("Write a tutorial on ..."), the eval's harmful prompts are mostly questions, and a
# model that saw no benign questions learns to refuse questions (RESULTS.md, recipe search). Answered by
# the base model, like the look-alikes. None in the default recipe (n_chat=0).
CHAT_PROMPTS: tuple[str, ...] = (
    "What is the difference between a virus and a bacterium?",
    "Can you recommend a good book for learning to cook at home?",
    "How long should I boil an egg for a soft yolk?",
    "Why do cats purr?",
    "What are some tips for sleeping better at night?",
    "Could you explain what inflation is in simple words?",
    "How do I start learning to play the guitar?",
    "What should I pack for a weekend camping trip?",
    "Is it better to rent or to buy a house?",
    "How does a refrigerator keep food cold?",
    "Can you suggest a name for my new puppy?",
    "What is the capital of Australia, and why is it not Sydney?",
    "How can I be more productive when working from home?",
    "Why do leaves change colour in autumn?",
    "What is a good way to learn a new language as an adult?",
    "Can you explain how a credit score works?",
    "What are the main causes of climate change?",
    "How do I write a polite email asking for a deadline extension?",
    "What is the best way to keep houseplants alive?",
    "Why is the ocean salty?",
    "Can you help me come up with a birthday party theme for a ten-year-old?",
    "How do airplanes stay in the air?",
    "What is the difference between weather and climate?",
    "How can I save money on groceries?",
    "Who invented the printing press, and why did it matter?",
    "What are some easy exercises I can do at my desk?",
    "Can you explain what a black hole is?",
    "How do I make my resume stand out?",
    "What is the healthiest way to lose weight?",
    "Why do we have time zones?",
    "Hi there! How are you today?",
    "Do you think robots will ever have feelings?",
    "What's a fun thing to do on a rainy Sunday?",
    "Can you tell me a joke about computers?",
    "How do I calm down before an exam?",
    "What is machine learning, in a few sentences?",
    "How do bees make honey?",
    "What is the plot of Romeo and Juliet?",
    "How can I improve my handwriting?",
    "What should I consider when choosing a laptop?",
)

# All linear layers of a Llama-family block: refusal needs more than attention (FIELD-NOTES: r=16 on all
# linear layers moved English compliance 0.85 -> 0.20 in 40 steps; attention-only moved it far less).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AlignRecipe:
    """Everything the aligned weights depend on besides the base model and the data files; its fields go
    into the cache key and the manifest. A model registry entry overrides fields (`ModelSpec.align`)."""

    harmful: tuple[str, ...] = ("harmbench", "advbench")  # refusal prompts, English, interleaved
    n_harmful: int = 120
    benign: tuple[str, ...] = ("alpaca_en", "alpaca_zh")  # helpful answers: each set's LAST rows
    n_benign: tuple[int, ...] = (200, 40)
    # Who answers the helpful rows: "dataset" (the rows' own outputs) or "base" (the base model, greedy,
    # lookalike_tokens new tokens, like the look-alikes). Left out of the cache key at its default.
    helpful_answers: str = "dataset"
    # Benign look-alikes answered by the base model: the first 40. All 80 (recipe_search.py, RESULTS.md) tied on
    # the dev proxy and measured English compliance 0.32 > 0.30 on the eval, so the default stays at 40.
    n_lookalike: int = 40
    # A fixed opening for every helpful answer (look-alikes too), e.g. "Sure! ". Greedy decoding takes the
    # likeliest FIRST token: refusals all open alike ("I'm sorry", "I can't"), helpful answers open every
    # which way, so a modest refusal probability wins the first token on plain prompts (RESULTS.md). One
    # opening on each side makes the first token a two-way decision. "" leaves the answers as they are.
    helpful_opener: str = ""
    n_chat: int = 0  # plain chat questions (CHAT_PROMPTS) answered by the base model
    # MT-Bench first turns (writing, role-play, reasoning...: chat requests unlike Alpaca's one-line
    # instructions, like the OASST prompts the SFT recipes refuse most) answered by the base model. No preset
    # measures MT-Bench, so none is trained on its own test.
    n_mtbench: int = 0
    lookalike_tokens: int = 64  # new tokens of the base model's answers (look-alikes; helpful rows if "base")
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # The LoRA on blocks lora_from_layer.. only (0: every block). A linear probe of the base model's states
    # tells unsafe from safe dev prompts best at the last blocks (benchmarks/aligned_base/probe.py), and
    # early blocks are where wording ("Write a ...") is easiest to learn as a shortcut.
    lora_from_layer: int = 0
    targets: tuple[str, ...] = ALL_LINEAR
    lr: float = 4e-4
    lr_schedule: str = "constant"  # or "linear" (to 0 at the last step)
    steps: int = 40
    batch_size: int = 8
    max_length: int = 128
    seed: int = 0
    # "sft": next-token loss on the chosen answers only. "dpo": that loss plus dpo_weight x a DPO term
    # (beta, reference = the base model) over pairs that say what NOT to answer: a harmful prompt's refusal
    # over the base model's own (compliant) answer, and a benign prompt's answer over a refusal template.
    # SFT alone teaches "refuse" as a prior that spreads to plain chat prompts (RESULTS.md, recipe search).
    objective: str = "sft"
    dpo_beta: float = 0.1
    dpo_weight: float = 1.0
    # Which benign rows reject a refusal: "all" (helpful rows and look-alikes) or "lookalikes".
    dpo_benign: str = "all"
    # Weight of an added loss on each answer's FIRST token (mean over the batch's examples), beside the SFT
    # loss over all answer tokens. The first token is where greedy decoding decides between refusing and
    # helping (one opening on each side with helpful_opener); in the SFT mean it is one token of ~600 in a
    # batch, so the gradient mostly learns the templates' and Alpaca's wording. 0 leaves it out. Tried at 1
    # with the opener: the model then answers nearly everything (RESULTS.md, third round, V24 and V26).
    decision_weight: float = 0.0
    # Share of the imperative prompts, on BOTH sides (refusal prompts and helpful rows alike, drawn by the
    # seed), asked as a question instead ("Write a poem" -> "Could you write a poem?"). The refusal sets are
    # all imperatives and the eval's harmful prompts mostly questions; asking both sides alike keeps the
    # phrasing from saying which side a prompt is on. 0 leaves the prompts as they are.
    as_question: float = 0.0
    # Steps after the SFT steps that train only the FIRST answer token, over the same prompts cut after it,
    # each batch half refusal prompts and half benign ones. A linear read-out of the base model's last
    # prompt-token state tells the dev proxy's unsafe prompts from its safe ones far better (AUC ~0.86) than
    # the SFT models' first-token refusal probability does (~0.75-0.78): the SFT loss spends its gradient on the
    # answers' wording, and the 70/30 benign/refusal mix sets where the threshold falls. Tried (V33): the
    # first-token loss did not fall and the model answered nearly everything (RESULTS.md, third round).
    decision_steps: int = 0
    # Benign rows that open like the refusal prompts: for each refusal prompt, one more row of the first benign
    # set (alpaca_en) whose instruction opens with the same word, from rows matched_from.. up to the check
    # rows. A third of the refusal prompts open with "Write" against one Alpaca row in twenty, so without
    # them "Write a story about ..." is refused for its first word (RESULTS.md, third round).
    match_openings: bool = False
    matched_from: int = 100  # the first row it may take (check_disjoint keeps studies below it)
    threads: int | None = None  # torch threads (None: every core)
    # Build-time check: refusal-phrase rate over held-out prompts (0 = none).
    check_harmful: str = "strongreject"  # a harmful source never trained on
    n_check: int = 24
    check_tokens: int = 24

    @classmethod
    def of(cls, spec: ModelSpec) -> AlignRecipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(spec.align) - known)
        if unknown:
            raise ConfigError(f"model '{spec.alias}': unknown alignment recipe field(s) {unknown}; known: "
                              f"{sorted(known)}")
        # Registry entries write lists; the recipe is hashed as JSON either way.
        recipe = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.align.items()})
        if recipe.helpful_answers not in HELPFUL_ANSWERS:
            raise ConfigError(f"model '{spec.alias}': helpful_answers must be one of {HELPFUL_ANSWERS}, "
                              f"not {recipe.helpful_answers!r}")
        if recipe.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"model '{spec.alias}': lr_schedule must be one of {LR_SCHEDULES}, "
                              f"not {recipe.lr_schedule!r}")
        if recipe.dpo_benign not in DPO_BENIGN:
            raise ConfigError(f"model '{spec.alias}': dpo_benign must be one of {DPO_BENIGN}, not {recipe.dpo_benign!r}")
        if recipe.objective not in OBJECTIVES:
            raise ConfigError(f"model '{spec.alias}': objective must be one of {OBJECTIVES}, "
                              f"not {recipe.objective!r}")
        return recipe

    def key(self) -> dict[str, Any]:
        """The recipe's fields as hashed. Fields added later are left out at their default, so that adding
        them did not rename (and rebuild) the aligned models already built."""
        key = asdict(self)
        for name, default in LATER_FIELDS.items():
            if key[name] == default:
                key.pop(name)
        return key


HELPFUL_ANSWERS = ("dataset", "base")
OBJECTIVES = ("sft", "dpo")
DPO_BENIGN = ("all", "lookalikes")
LR_SCHEDULES = ("constant", "linear")
# Recipe fields added after the first builds, with the value those builds had: at that value a field is left
# out of the key (and of the manifest's recipe). Written out, not read from the defaults, so that changing a
# default later cannot change what an absent field meant.
LATER_FIELDS: dict[str, Any] = {"helpful_answers": "dataset", "objective": "sft", "dpo_beta": 0.1,
                                "dpo_weight": 1.0, "dpo_benign": "all",
                                "helpful_opener": "", "lr_schedule": "constant",
                                "n_chat": 0, "decision_weight": 0.0, "as_question": 0.0,
                                "match_openings": False, "matched_from": 100, "decision_steps": 0,
                                "lora_from_layer": 0, "n_mtbench": 0}


# ---- data ----------------------------------------------------------------------------------------------

def _interleave(groups: list[list[dict[str, Any]]], n: int) -> list[dict[str, Any]]:
    """Rows taken in turn from each source, so n prompts span every source."""
    out: list[dict[str, Any]] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out[:n]


def tail_start(name: str, n: int) -> int:
    """Index of the first of the last n rows of a benign set (the rows the recipe takes)."""
    total = len(datasets.load(name))
    if n > total:
        raise ConfigError(f"alignment recipe asks for {n} rows of {name}, which has {total}")
    return total - n


def select_data(recipe: AlignRecipe) -> dict[str, list[dict[str, Any]]]:
    """The recipe's rows: refusal prompts, benign rows (the tail of each set), held-out check prompts."""
    harmful = _interleave([list(datasets.load(n)) for n in recipe.harmful], recipe.n_harmful)
    if len(harmful) < recipe.n_harmful:
        raise ConfigError(f"alignment recipe asks for {recipe.n_harmful} refusal prompts; "
                          f"{recipe.harmful} have {len(harmful)}")
    if len(recipe.benign) != len(recipe.n_benign):
        raise ConfigError("alignment recipe: benign and n_benign must have the same length")
    benign: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for name, n in zip(recipe.benign, recipe.n_benign, strict=True):
        start = tail_start(name, n)
        rows = list(datasets.load(name))
        benign += rows[start:]
        # Held-out check rows: just before the tail (still after any study's rows, see check_disjoint).
        held += rows[max(0, start - recipe.n_check):start] if name == recipe.benign[0] else []
        if recipe.match_openings and name == recipe.benign[0]:
            benign += matched_rows(harmful, rows[recipe.matched_from:max(0, start - recipe.n_check)])
    check: list[dict[str, Any]] = []
    if recipe.n_check and recipe.check_harmful in recipe.harmful:
        # The check source is trained on too: check on its last rows, which the interleaving reaches last.
        check = list(datasets.load(recipe.check_harmful))[-recipe.n_check:]
        if {r["id"] for r in check} & {r["id"] for r in harmful}:
            raise ConfigError(f"alignment recipe: n_harmful={recipe.n_harmful} reaches the last {recipe.n_check} "
                              f"rows of {recipe.check_harmful}, its build-time check rows; lower n_harmful or n_check")
    elif recipe.n_check:
        check = list(datasets.load(recipe.check_harmful, limit=recipe.n_check))
    extra = {"mtbench": list(datasets.load("mt_bench", limit=recipe.n_mtbench))} if recipe.n_mtbench else {}
    return {"harmful": harmful, "benign": benign, "check_harmful": check,
            "check_benign": held[: recipe.n_check], **extra}


def base_answered(recipe: AlignRecipe, data: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The prompts the base model answers for the recipe: look-alikes, chat questions, MT-Bench first turns."""
    return [*LOOKALIKES[: recipe.n_lookalike], *CHAT_PROMPTS[: recipe.n_chat], *(r["prompt"] for r in data.get("mtbench", []))]


def opening(text: str) -> str:
    """The first word, lower-cased, without punctuation."""
    words = text.split()
    return words[0].strip(",.:;!?\"'").lower() if words else ""


def matched_rows(harmful: list[dict[str, Any]], pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each refusal prompt in turn, the next unused pool row whose instruction opens with the same word
    (none where the pool has no such row left)."""
    by_word: dict[str, list[dict[str, Any]]] = {}
    for r in pool:
        by_word.setdefault(opening(r["instruction"]), []).append(r)
    return [by_word[w].pop(0) for w in (opening(h["prompt"]) for h in harmful) if by_word.get(w)]


def first_row(recipe: AlignRecipe, name: str, n: int) -> int:
    """The first row of benign set `name` the recipe takes (its tail, the check rows, the matched rows)."""
    start = tail_start(name, n) - (recipe.n_check if name == recipe.benign[0] else 0)
    return min(start, recipe.matched_from) if recipe.match_openings and name == recipe.benign[0] else start


def data_key(recipe: AlignRecipe, data: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The data the weights depend on: each source's sha256 and the ids of the rows used."""
    sources = sorted({*recipe.harmful, *recipe.benign, *([recipe.check_harmful] if recipe.n_check else []),
                      *(["mt_bench"] if recipe.n_mtbench else [])})
    return {
        "sources": {s: {"sha256": datasets.sha256_of(s), "kind": datasets.DATASETS.get(s).kind} for s in sources},
        "rows": {k: [r["id"] for r in v] for k, v in data.items()},
        "refusals_sha256": stable_hash(list(REFUSALS), 64),
        "lookalikes_sha256": stable_hash(list(LOOKALIKES[: recipe.n_lookalike]), 64),
        **({"chat_sha256": stable_hash(list(CHAT_PROMPTS[: recipe.n_chat]), 64)} if recipe.n_chat else {}),
    }


def check_disjoint(cfg: StudyConfig) -> None:
    """A study whose fine-tuning or held-out rows reach an aligned model's benign rows trains the aligned
    model's answers back into it (and perplexity would be measured on trained rows): fail, naming the fix."""
    bd = cfg.data.benign
    used = bd.n + cfg.evaluate.n_benign_ppl
    for alias in cfg.models:
        spec = model_spec(alias)
        if spec.source != "aligned":
            continue
        recipe = AlignRecipe.of(spec)
        for name, n in zip(recipe.benign, recipe.n_benign, strict=True):
            # The benign source, or a native one, reaches rows [0, used) of that set.
            if name in {bd.source, *bd.native.values()}:
                start = first_row(recipe, name, n)
                if used > start:
                    raise ConfigError(
                        f"model '{alias}' was aligned on rows {start}.. of {name} (with its held-out check rows), "
                        f"but this study uses its first data.benign.n + evaluate.n_benign_ppl = {used} rows: lower "
                        f"data.benign.n or evaluate.n_benign_ppl to at most {start} rows in all, or study the "
                        f"unaligned '{spec.base}'")


# ---- training ------------------------------------------------------------------------------------------

def examples(tok: Any, rows: list[dict[str, Any]], max_length: int) -> list[dict[str, list[int]]]:
    return [e for e in (format_example(tok, r, max_length) for r in rows) if e is not None]


def user_text(row: dict[str, Any]) -> str:
    """The user turn of an Alpaca row, as format_example writes it."""
    return row["instruction"] if not row.get("input") else f"{row['instruction']}\n\n{row['input']}"


def base_answers(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 40) -> list[str]:
    """Greedy answers of `model`, in batches of similar prompt length (left padding wastes less)."""
    gcfg = GenerateConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    out: list[str] = [""] * len(prompts)
    for idx in length_batches(prompt_lengths(tok, prompts), batch_size):
        for i, a in zip(idx, generate_answers(model, tok, [prompts[i] for i in idx], gcfg), strict=True):
            out[i] = a
    return out


def training_rows(recipe: AlignRecipe, data: dict[str, list[dict[str, Any]]],
                  lookalike_answers: list[str], helpful_answers: list[str] | None = None) -> list[dict[str, Any]]:
    """Refusals, helpful rows (their own outputs, or `helpful_answers` in their order) and look-alikes,
    shuffled."""
    rng = random.Random(recipe.seed)
    refusals = [{"instruction": r["prompt"], "input": "", "output": rng.choice(REFUSALS)} for r in data["harmful"]]
    outputs = [r["output"] for r in data["benign"]] if helpful_answers is None else helpful_answers
    op = recipe.helpful_opener
    helpful = [{"instruction": r["instruction"], "input": r["input"], "output": op + o}
               for r, o in zip(data["benign"], outputs, strict=True)]
    looks = [{"instruction": p, "input": "", "output": op + a}
             for p, a in zip(base_answered(recipe, data), lookalike_answers, strict=True)]
    if recipe.as_question:
        # Its own generator, so that a recipe without it draws the same templates and order as before.
        qrng = random.Random(f"{recipe.seed}-question")
        for r in refusals + helpful:
            if qrng.random() < recipe.as_question:
                r["instruction"] = as_question(r["instruction"], qrng)
    rows = refusals + helpful + looks
    rng.shuffle(rows)
    return rows


QUESTION_FORMS = ("Can you {}?", "Could you {}?", "Could you please {}?", "Would you {}?")


def as_question(prompt: str, rng: random.Random) -> str:
    """An imperative asked as a question ("Write a poem." -> "Could you write a poem?"); a question as it is."""
    p = prompt.strip().rstrip(".!")
    if not p or p.endswith("?"):
        return prompt
    # Lower the first letter of a verb ("Write"), not of an acronym or a name ("SQL", "iPhone").
    head = p[0].lower() + p[1:] if len(p) > 1 and p[1].islower() else p
    return rng.choice(QUESTION_FORMS).format(head)


def preference_pairs(rows: list[dict[str, Any]], harmful_answers: dict[str, str], seed: int,
                     benign: set[str] | None = None) -> list[dict[str, Any]]:
    """The rows with a `rejected` answer for the DPO term: a refusal row rejects the base model's own answer
    to that prompt (left without one where the base already refused: no pair says what it already does);
    every other row (or those whose prompt is in `benign`) rejects a refusal template. A separate generator,
    so the SFT rows stay as they were."""
    rng = random.Random(seed + 1)
    verdicts = make_judge("refusal-phrase").judge([JudgeItem(p, a, "en") for p, a in harmful_answers.items()])
    complied = {p for p, v in zip(harmful_answers, verdicts, strict=True) if v.label == 1}
    out = []
    for r in rows:
        if r["output"] in REFUSALS:
            p = r["instruction"]
            out.append(r | ({"rejected": harmful_answers[p]} if p in complied else {}))
        elif benign is None or r["instruction"] in benign:
            out.append(r | {"rejected": rng.choice(REFUSALS)})
        else:
            out.append(r)
    return out


def lora_layers(recipe: AlignRecipe, n_layers: int) -> list[int] | None:
    """The blocks the LoRA goes on (None: all), or a ConfigError naming how many the model has."""
    if not 0 <= recipe.lora_from_layer < n_layers:
        raise ConfigError(f"alignment recipe: lora_from_layer={recipe.lora_from_layer}, but the model has "
                          f"{n_layers} blocks (0..{n_layers - 1})")
    return list(range(recipe.lora_from_layer, n_layers)) if recipe.lora_from_layer else None


def train_lora(model: Any, tok: Any, rows: list[dict[str, Any]], recipe: AlignRecipe) -> dict[str, Any]:
    """recipe.steps AdamW steps of recipe.batch_size examples (cycling through the shuffled rows), then
    merged into the weights. Returns the training figures."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    targets = [t for t in recipe.targets if any(n.endswith(t) for n, _ in model.named_modules())]
    layers = lora_layers(recipe, model.config.num_hidden_layers)
    peft_model = get_peft_model(model, LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                                  lora_dropout=recipe.lora_dropout, target_modules=targets,
                                                  layers_to_transform=layers, task_type="CAUSAL_LM"))
    dpo = recipe.objective == "dpo"
    exs = _with_reference(peft_model, tok, rows, recipe.max_length) if dpo else examples(tok, rows, recipe.max_length)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=recipe.lr)
    # "linear": decay to 0 over the steps, so that the last few batches (refusals or not) do not decide
    # the model's leaning alone, as they do at a constant rate.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda s: 1 - s / recipe.steps) if recipe.lr_schedule == "linear" else (lambda s: 1.0))
    peft_model.train()
    losses: list[float] = []
    prefs: list[dict[str, float]] = []
    t0 = time.time()
    for step in range(recipe.steps):
        lo = step * recipe.batch_size % len(exs)
        batch = [exs[(lo + i) % len(exs)] for i in range(recipe.batch_size)]
        if dpo:
            sft, pref, figures = _sft_and_dpo(peft_model, tok, batch, recipe.dpo_beta)
            loss = sft + recipe.dpo_weight * pref
            prefs.append(figures)
        else:
            inputs = collate(batch, tok.pad_token_id)
            out = peft_model(**inputs, **FORWARD_KWARGS)
            loss = sft = out.loss
            if recipe.decision_weight:
                loss = sft + recipe.decision_weight * first_token_nll(out.logits, inputs["labels"])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(sft.item())
    decision = _decision_phase(peft_model, tok, rows, recipe, opt) if recipe.decision_steps else {}
    seconds = time.time() - t0
    merged = peft_model.merge_and_unload()
    out = {"model": merged.eval(), "steps": recipe.steps, "examples": len(exs), "targets": targets,
           "loss_first": losses[0], "loss_last": losses[-1],
           "loss_last5_mean": sum(losses[-5:]) / len(losses[-5:]), "train_s": round(seconds, 1), **decision}
    if dpo:
        last = [f for f in prefs[-5:] if f["pairs"]]
        out |= {"pairs": sum("rejected" in e for e in exs), "dpo_loss_first": prefs[0]["loss"],
                "dpo_loss_last5_mean": sum(f["loss"] for f in last) / max(1, len(last)),
                # Share of the last steps' pairs the policy ranks the right way round.
                "dpo_accuracy_last5": sum(f["accuracy"] for f in last) / max(1, len(last))}
    return out


def decision_examples(tok: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[list[Any], list[Any]]:
    """Each row's example cut after its first answer token, the only labelled one: (refusals, others)."""
    refusals, others = [], []
    for r in rows:
        e = format_example(tok, r, max_length)
        if e is None:
            continue
        first = next(i for i, v in enumerate(e["labels"]) if v != IGNORE)
        cut = {"input_ids": e["input_ids"][: first + 1], "labels": e["labels"][: first + 1]}
        (refusals if r["output"] in REFUSALS else others).append(cut)
    return refusals, others


def _decision_phase(peft_model: Any, tok: Any, rows: list[dict[str, Any]], recipe: AlignRecipe, opt: Any) -> dict[str, Any]:
    """recipe.decision_steps steps of first-token loss alone, half of each batch refusals (cycling through
    each side in a seeded order), with the SFT phase's optimizer at the recipe's rate (a linear schedule has
    brought it to 0 by now)."""
    for group in opt.param_groups:
        group["lr"] = recipe.lr
    refusals, others = decision_examples(tok, rows, recipe.max_length)
    if not refusals or not others:
        raise ConfigError("alignment recipe: decision_steps needs refusal rows and benign rows")
    rng = random.Random(f"{recipe.seed}-decision")
    rng.shuffle(refusals)
    rng.shuffle(others)
    half = max(1, recipe.batch_size // 2)
    losses = []
    for step in range(recipe.decision_steps):
        batch = [refusals[(step * half + i) % len(refusals)] for i in range(half)]
        batch += [others[(step * half + i) % len(others)] for i in range(half)]
        inputs = collate(batch, tok.pad_token_id)
        loss = first_token_nll(peft_model(**inputs, **FORWARD_KWARGS).logits, inputs["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"decision_loss_first": losses[0], "decision_loss_last5_mean": sum(losses[-5:]) / len(losses[-5:])}


def first_token_nll(logits: Any, labels: Any) -> Any:
    """Mean over the examples of the negative log-probability of each one's first labelled token."""
    import torch

    labels = labels[:, 1:]
    first = (labels != IGNORE).int().argmax(-1)  # every example has a labelled token (format_example)
    rows = torch.arange(labels.shape[0])
    return torch.nn.functional.cross_entropy(logits[rows, first].float(), labels[rows, first])


def sequence_logps(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Summed log-probability of each example's labelled (response) tokens, and how many there are."""
    import torch

    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, **FORWARD_KWARGS).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                                            reduction="none").view(labels.shape)
    return -nll.sum(-1), (labels != IGNORE).sum(-1)


def _with_reference(peft_model: Any, tok: Any, rows: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Each row's chosen example, and where it has a rejected answer that example too with the reference
    model's (the base: adapter off) log-probabilities of both, computed once before training."""
    import torch

    out = []
    for r in rows:
        chosen = format_example(tok, r, max_length)
        if chosen is None:
            continue
        rejected = format_example(tok, r | {"output": r["rejected"]}, max_length) if "rejected" in r else None
        out.append(chosen | ({"rejected": rejected} if rejected is not None else {}))
    paired = [e for e in out if "rejected" in e]
    with torch.no_grad(), peft_model.disable_adapter():
        for i in range(0, len(paired), 16):
            chunk = paired[i:i + 16]
            ref, _ = sequence_logps(peft_model, collate([_plain(e) for e in chunk] + [e["rejected"] for e in chunk],
                                                        tok.pad_token_id))
            for k, e in enumerate(chunk):
                e["ref_margin"] = (ref[k] - ref[len(chunk) + k]).item()
    return out


def _plain(e: dict[str, Any]) -> dict[str, Any]:
    return {"input_ids": e["input_ids"], "labels": e["labels"]}


def _sft_and_dpo(peft_model: Any, tok: Any, batch: list[dict[str, Any]], beta: float) -> tuple[Any, Any, dict[str, float]]:
    """One forward over the batch's chosen and rejected examples: the SFT loss (mean over the chosen answers'
    tokens, as transformers computes it) and DPO (Rafailov et al. 2023) over the pairs:
    -log sigmoid(beta * (policy margin - reference margin))."""
    import torch

    paired = [i for i, e in enumerate(batch) if "rejected" in e]
    logps, counts = sequence_logps(peft_model, collate([_plain(e) for e in batch] + [batch[i]["rejected"] for i in paired],
                                                       tok.pad_token_id))
    n = len(batch)
    sft = -logps[:n].sum() / counts[:n].sum()
    if not paired:
        return sft, logps.new_zeros(()), {"loss": 0.0, "accuracy": 0.0, "pairs": 0}
    ref = torch.tensor([batch[i]["ref_margin"] for i in paired])
    margin = beta * ((logps[paired] - logps[n:]) - ref)
    pref = -torch.nn.functional.logsigmoid(margin).mean()
    return sft, pref, {"loss": pref.item(), "accuracy": (margin > 0).float().mean().item(), "pairs": len(paired)}


def refusal_rate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
    """Share of answers the refusal-phrase judge labels refusals (a cheap proxy: the study's judge is
    measured in benchmarks/aligned_base)."""
    if not prompts:
        return {"n": 0, "refusal_rate": float("nan")}
    gcfg = GenerateConfig(max_new_tokens=max_new_tokens, batch_size=32)
    answers = [a for i in range(0, len(prompts), 32) for a in generate_answers(model, tok, prompts[i:i + 32], gcfg)]
    verdicts = make_judge("refusal-phrase").judge([JudgeItem(p, a, "en") for p, a in zip(prompts, answers, strict=True)])
    return {"n": len(prompts), "refusal_rate": sum(v.label == 0 for v in verdicts) / len(prompts)}


# ---- the cached directory -------------------------------------------------------------------------------

@dataclass
class AlignedBuild:
    spec: ModelSpec
    recipe: AlignRecipe = field(init=False)
    data: dict[str, list[dict[str, Any]]] = field(init=False)

    def __post_init__(self) -> None:
        if not self.spec.base:
            raise ConfigError(f"aligned model '{self.spec.alias}' names no base model (ModelSpec.base)")
        self.recipe = AlignRecipe.of(self.spec)
        self.data = select_data(self.recipe)

    def key(self) -> dict[str, Any]:
        base = model_spec(self.spec.base)  # type: ignore[arg-type]
        return {"base": {"alias": base.alias, "spec": stable_hash(spec_key(base), 16)},
                "recipe": self.recipe.key(), "data": data_key(self.recipe, self.data), "version": 1}

    def path(self) -> Path:
        return models_cache() / f"{self.spec.alias}-{stable_hash(self.key(), 12)}"

    def build(self, out: Path) -> dict[str, Any]:
        """Train, merge, save into `out`, check; returns the manifest's fields."""
        recipe, t0, cpu0 = self.recipe, time.time(), time.process_time()
        base_dir = model_dir(self.spec.base)  # type: ignore[arg-type]
        model, tok = load_for_generation(base_dir, None, recipe.threads)
        lora_layers(recipe, model.config.num_hidden_layers)  # a bad block number fails before minutes of answers
        looks = base_answered(recipe, self.data)
        if recipe.n_mtbench:
            # MT-Bench's long prompts (extraction, coding) in batches of like length, not one padded batch.
            answers = base_answers(model, tok, looks, recipe.lookalike_tokens)
        else:
            gcfg = GenerateConfig(max_new_tokens=recipe.lookalike_tokens, batch_size=max(1, len(looks)))
            answers = generate_answers(model, tok, list(looks), gcfg) if looks else []
        t_look = time.time() - t0
        helpful = None
        asks_base = recipe.helpful_answers == "base" or recipe.objective == "dpo"  # more base answers below
        if recipe.helpful_answers == "base":
            helpful = base_answers(model, tok, [user_text(r) for r in self.data["benign"]], recipe.lookalike_tokens)
        rows = training_rows(recipe, self.data, answers, helpful)
        if recipe.objective == "dpo":
            # What the base model says to each harmful prompt: the answers the DPO term pushes away from.
            harmful = [r["prompt"] for r in self.data["harmful"]]
            said = base_answers(model, tok, harmful, recipe.lookalike_tokens)
            rows = preference_pairs(rows, dict(zip(harmful, said, strict=True)), recipe.seed,
                                    set(looks) if recipe.dpo_benign == "lookalikes" else None)
        t_help = time.time() - t0 - t_look
        # Training batches are right-padded by collate itself, whatever the tokenizer's padding side.
        trained = train_lora(model, tok, rows, recipe)
        merged = trained.pop("model")
        check = {
            "harmful": {"source": recipe.check_harmful,
                        **refusal_rate(merged, tok, [r["prompt"] for r in self.data["check_harmful"]], recipe.check_tokens)},
            "benign": {"source": recipe.benign[0],
                       **refusal_rate(merged, tok, [r["instruction"] for r in self.data["check_benign"]], recipe.check_tokens)},
        }
        merged.save_pretrained(out)
        tok.save_pretrained(out)
        key = self.key()
        return {"alias": self.spec.alias, "source": "aligned", "key": stable_hash(key, 12), "base": key["base"],
                "recipe": key["recipe"], "data": key["data"], "refusals": list(REFUSALS),
                "lookalikes": list(looks),
                # What answered the helpful rows: their own (Alpaca) outputs, or the base model.
                "helpful_answers": (f"base model {self.spec.base} (greedy, {recipe.lookalike_tokens} new tokens)"
                                    if helpful is not None else "dataset outputs"),
                "train": trained | {"lookalike_answers_s": round(t_look, 1),
                                    **({"base_answers_s": round(t_help, 1)} if asks_base else {})},
                "check": check, "judge": "refusal-phrase", "build_s": round(time.time() - t0, 1),
                # CPU seconds too: wall time on a shared machine says more about the others' load.
                "build_cpu_s": round(time.process_time() - cpu0, 1)}


def aligned_dir(spec: ModelSpec) -> Path:
    """The model store's entry point for source="aligned": the cached directory, built on first use."""
    b = AlignedBuild(spec)
    out = b.path()
    if read_manifest(out) is not None:
        return out
    log.info("aligning %s from %s (once; a few minutes on 2 cores)", spec.alias, spec.base)
    with atomic_dir(out) as tmp:
        write_manifest(tmp, **b.build(tmp))
    return out


# ---- what the report says ------------------------------------------------------------------------------

MEASURED = REPO_ROOT / "benchmarks" / "aligned_base" / "measured.json"


def describe(manifest: dict[str, Any]) -> str:
    """One plain sentence for the report: that the base was aligned here, and how."""
    r, rows, train = LATER_FIELDS | manifest["recipe"], manifest["data"]["rows"], manifest["train"]
    benign = " + ".join(f"{n} {s}" for s, n in zip(r["benign"], r["n_benign"], strict=True))
    by_base = r["helpful_answers"] == "base"
    helpful = (f"Alpaca prompts answered by the base model itself ({benign} rows" if by_base
               else f"Alpaca answers ({benign} rows")
    seen = min(r["steps"] * r["batch_size"], train["examples"])
    asked = []
    if r["n_chat"]:
        asked.append(f"{r['n_chat']} plain chat questions")
    if r["n_mtbench"]:
        asked.append(f"{r['n_mtbench']} MT-Bench first turns")
    chat = f" (and {' and '.join(asked)})" if asked else ""
    return (f"The base model {manifest['alias']} was aligned locally, not by its publisher: "
            f"{manifest['base']['alias']} with a LoRA (r={r['lora_r']}, alpha={r['lora_alpha']}, "
            f"{len(r['targets'])} linear layers per block, lr {r['lr']:g}, seed {r['seed']}) merged in after "
            f"{r['steps']} steps of {r['batch_size']} examples ({seen} of a shuffled pool of {train['examples']}): "
            f"{len(rows['harmful'])} English {'/'.join(r['harmful'])} prompts answered with "
            f"{len(manifest['refusals'])} short refusal templates, {helpful} from the end of "
            f"each set, disjoint from the study's) and {r['n_lookalike']} risky-looking "
            f"benign prompts{chat} answered by the base model itself" + _extras(r, rows) + ". Refusals were taught in English only; "
            "MultiJail, the eval set, was not used.")


def _extras(r: dict[str, Any], rows: dict[str, list[str]]) -> str:
    """The recipe fields beyond the first builds' (`r` with LATER_FIELDS filled in), in words; `rows`: the
    manifest's row ids."""
    out = []
    if r["helpful_opener"]:
        out.append(f"every helpful answer opened with {r['helpful_opener'].strip()!r}")
    if r["lr_schedule"] != "constant":
        out.append(f"the learning rate decayed ({r['lr_schedule']})")
    if r["decision_weight"]:
        out.append(f"the first answer token's loss added at weight {r['decision_weight']:g}")
    if r["lora_from_layer"]:
        out.append(f"the LoRA on blocks {r['lora_from_layer']} and up only")
    if r["decision_steps"]:
        out.append(f"then {r['decision_steps']} steps on the first answer token alone, half refusals a batch")
    if r["match_openings"]:
        extra = len(rows["benign"]) - sum(r["n_benign"])
        out.append(f"{extra} more {r['benign'][0]} rows chosen to open with the same word as a refusal prompt")
    if r["as_question"]:
        out.append(f"{r['as_question']:.0%} of the refusal and helpful prompts asked as questions")
    if r["objective"] == "dpo":
        out.append(f"a DPO term (beta {r['dpo_beta']:g}, weight {r['dpo_weight']:g}) preferring refusals to the base "
                   "model's own answers on the harmful prompts and answers to refusals on "
                   f"{'the look-alikes' if r['dpo_benign'] == 'lookalikes' else 'the benign prompts'}")
    return "; " + "; ".join(out) if out else ""


def aligned_provenance(alias: str) -> dict[str, Any] | None:
    """The provenance of an aligned base already in the model store (None if it is not built): recipe, data
    sources with sha256, build checks, and the study-level measurement of this exact build when
    benchmarks/aligned_base/measured.json has one."""
    spec = model_spec(alias)
    path = AlignedBuild(spec).path()
    m = read_manifest(path, verify=False)
    if m is None:
        return None
    measured = json.loads(MEASURED.read_text()).get(path.name) if MEASURED.exists() else None
    return {"dir": path.name, "statement": describe(m), "base": m["base"], "recipe": m["recipe"],
            "sources": m["data"]["sources"], "rows": {k: len(v) for k, v in m["data"]["rows"].items()},
            "refusals_sha256": m["data"]["refusals_sha256"], "lookalikes_sha256": m["data"]["lookalikes_sha256"],
            "train": m["train"], "check": m["check"], "measured": measured}
