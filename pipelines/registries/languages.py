"""Language registry: the study's nine languages and MultiJail's ten, with codes each tool needs."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.registry import Registry


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the code used everywhere in safedrift (config, paths, metric names)
    name: str
    script: str  # ISO 15924
    nllb: str  # NLLB-200 / FLORES-200 code, e.g. "spa_Latn"
    study: bool = False  # one of the nine languages of the study
    multijail: bool = False  # MultiJail carries a human translation in this language


LANGUAGES: Registry[Language] = Registry("language")

for _lang in [
    Language("en", "English", "Latn", "eng_Latn", study=True, multijail=True),
    Language("zh", "Chinese", "Hans", "zho_Hans", study=True, multijail=True),
    Language("da", "Danish", "Latn", "dan_Latn", study=True),
    Language("el", "Greek", "Grek", "ell_Grek", study=True),
    Language("hi", "Hindi", "Deva", "hin_Deva", study=True),
    Language("ga", "Irish", "Latn", "gle_Latn", study=True),
    Language("pt", "Portuguese", "Latn", "por_Latn", study=True),
    Language("es", "Spanish", "Latn", "spa_Latn", study=True),
    Language("tl", "Tagalog", "Latn", "tgl_Latn", study=True),
    Language("it", "Italian", "Latn", "ita_Latn", multijail=True),
    Language("vi", "Vietnamese", "Latn", "vie_Latn", multijail=True),
    Language("ar", "Arabic", "Arab", "arb_Arab", multijail=True),
    Language("ko", "Korean", "Kore", "kor_Hang", multijail=True),
    Language("th", "Thai", "Thai", "tha_Thai", multijail=True),
    Language("bn", "Bengali", "Beng", "ben_Beng", multijail=True),
    Language("sw", "Swahili", "Latn", "swh_Latn", multijail=True),
    Language("jv", "Javanese", "Latn", "jav_Latn", multijail=True),
]:
    LANGUAGES.add(_lang.code, _lang)

STUDY_LANGUAGES: list[str] = [c for c, lang in LANGUAGES.items() if lang.study]


def language(code: str) -> Language:
    return LANGUAGES.get(code)
