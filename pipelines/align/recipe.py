"""The alignment recipe: the refusal templates, the look-alike prompts and the fields the aligned weights
depend on besides the base model and the data files. A model registry entry overrides fields
(`ModelSpec.align`); a field no entry uses is not kept here (the variants tried are recorded, with their
results, in benchmarks/aligned_base/RESULTS.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pipelines.errors import ConfigError
from pipelines.registries.models import ModelSpec

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
)

# All linear layers of a Llama-family block: refusal needs more than attention (measured on SmolLM2-135M:
# r=16 on all linear layers moved English compliance 0.85 -> 0.20 in 40 steps; attention-only moved it far less).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AlignRecipe:
    """Everything the aligned weights depend on besides the base model and the data files; its fields go
    into the cache key and the manifest."""

    harmful: tuple[str, ...] = ("harmbench", "advbench")  # refusal prompts, English, interleaved
    n_harmful: int = 120
    benign: tuple[str, ...] = ("alpaca_en", "alpaca_zh")  # helpful answers (the rows' own): each set's LAST rows
    n_benign: tuple[int, ...] = (200, 40)
    # Benign look-alikes answered by the base model. 80 tied with 40 on the dev proxy and measured English
    # compliance 0.32 > 0.30 on the eval (RESULTS.md, recipe search), so the recipe keeps 40.
    n_lookalike: int = 40
    lookalike_tokens: int = 64  # new tokens of the base model's answers to the look-alikes
    # Said to the base model before each look-alike, never trained on: the answers it then gives are what
    # the aligned model learns to give unprompted. For a base that over-refuses on its own (Qwen2.5-Coder-
    # 0.5B refused 13 of the 40 look-alikes, and 0 of those 13 behind this preface), its own answers would
    # teach it to refuse them. Empty: the look-alikes asked as they are.
    lookalike_preface: str = ""
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    targets: tuple[str, ...] = ALL_LINEAR
    lr: float = 4e-4
    steps: int = 40
    batch_size: int = 8
    max_length: int = 128
    seed: int = 0
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
        if recipe.n_lookalike > len(LOOKALIKES):
            raise ConfigError(f"model '{spec.alias}': n_lookalike={recipe.n_lookalike}, but the recipe has "
                              f"{len(LOOKALIKES)} look-alike prompts")
        return recipe

    def key(self) -> dict[str, Any]:
        """The recipe's fields as hashed (the fields of the first builds: their directories keep their names,
        so a field added later is hashed only where it is set)."""
        key = asdict(self)
        if not self.lookalike_preface:
            del key["lookalike_preface"]
        return key
