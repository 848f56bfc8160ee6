"""Word lists for the content policy, kept as plain data so they can be reviewed and extended.

How to add a term:
  * Write it the way ``shared.policy.normalize`` would print it: lowercase ASCII, words separated by a
    single space, no punctuation ("pre teen", not "pre-teen"). ``tests/unit/test_policy.py`` asserts
    that every term is already normalized, so a typo here fails the tests instead of silently never
    matching.
  * Add inflections explicitly ("molest", "molested", "molesting"): matching is on whole words, which
    is what keeps "grape", "therapist" and "Sussex" from tripping the lists.
  * Leetspeak, homoglyphs, spacing and repeated letters are undone by normalization, so do not add
    obfuscated spellings here.
  * Before adding a short or ambiguous word, think about the benign sentences it appears in. Words that
    are only harmful in combination belong in the combination lists (e.g. ``MINOR_TERMS``), not in a
    list that blocks on its own.
"""

from __future__ import annotations

# Stable category names; services and logs key on these strings.
CATEGORY_MINORS = "minors"
CATEGORY_SEXUAL_VIOLENCE = "sexual_violence"
CATEGORY_BESTIALITY = "bestiality"
CATEGORY_EXPLICIT = "explicit"

# --- minors -------------------------------------------------------------------------------------

# Words that say a minor is present. Harmless alone ("kids at the beach"); hard-blocked only together
# with a sexual, nude or sexualizing term anywhere in the same text.
MINOR_TERMS: tuple[str, ...] = (
    "child", "children", "childs", "kid", "kids", "kiddie", "kiddies", "toddler", "toddlers",
    "infant", "infants", "newborn", "newborns", "preteen", "preteens", "pre teen", "pre teens",
    "tween", "tweens", "teen", "teens", "teenage", "teenaged", "teenager", "teenagers",
    "underage", "under age", "under aged", "underaged", "under 18", "under eighteen",
    "minor", "minors", "schoolgirl", "schoolgirls", "schoolboy", "schoolboys", "school girl",
    "school girls", "school boy", "school boys", "middle school", "middle schooler",
    "middle schoolers", "elementary school", "grade school", "grade schooler", "primary school",
    "junior high", "high schooler", "high schoolers", "kindergarten", "kindergartener",
    "kindergartner", "little girl", "little girls", "little boy", "little boys", "young girl",
    "young girls", "young boy", "young boys", "prepubescent", "pubescent", "loli", "lolis",
    "lolita", "shota", "shotas",
)  # fmt: skip

# Number words for ages 0-17; matched only with an age context ("twelve year old", "aged twelve"), since
# "twelve nude statues" is a count, not an age.
MINOR_AGE_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
)  # fmt: skip

# Oldest age (inclusive) that counts as a minor when written in digits.
MAX_MINOR_AGE = 17

# Terms that are about sexual content with minors on their own; blocked without a second term.
MINOR_INTRINSIC_TERMS: tuple[str, ...] = (
    "lolicon", "shotacon", "jailbait", "child porn", "child pornography", "kiddie porn", "kiddy porn",
    "csam", "pedo porn", "underage porn", "underage sex", "preteen porn", "teen porn", "pedophilia",
)  # fmt: skip

# Sexualizing words that are not explicit for adults (so not soft-blocked) but make a prompt about a
# minor unacceptable.
SEXUALIZING_TERMS: tuple[str, ...] = (
    "sexy", "sexier", "sexiest", "seductive", "seductively", "seduce", "seducing", "sensual",
    "provocative", "provocatively", "lingerie", "undress", "undresses", "undressed", "undressing",
    "disrobe", "disrobing", "stripping", "sexualized", "sexualised", "lewd", "erotic", "erotica",
    "fetish", "aroused", "horny", "slutty", "slut", "suggestive", "spread legs", "bedroom pose",
)  # fmt: skip

# --- sexual acts (shared by several rules) ------------------------------------------------------

# Sexual acts. Explicit on their own (soft block); combined with coercion, incapacitation or an animal
# they become a hard block.
SEXUAL_ACT_TERMS: tuple[str, ...] = (
    "sex", "having sex", "sexual", "sexually", "intercourse", "fuck", "fucks", "fucked", "fucking",
    "penetrate", "penetrates", "penetrated", "penetrating", "penetration", "grope", "gropes", "groped",
    "groping", "fondle", "fondles", "fondled", "fondling", "blowjob", "blowjobs", "blow job",
    "handjob", "hand job", "oral sex", "anal sex", "orgasm", "orgasms", "cum", "cumshot",
    "ejaculate", "ejaculates", "ejaculating", "ejaculation", "masturbate", "masturbates",
    "masturbating", "masturbation", "fellatio", "cunnilingus", "orgy", "orgies", "threesome",
    "gangbang", "humping", "sex act", "sex acts",
)  # fmt: skip

# --- sexual violence ----------------------------------------------------------------------------

SEXUAL_VIOLENCE_TERMS: tuple[str, ...] = (
    "rape", "rapes", "raped", "raping", "rapist", "rapists", "gangrape", "gangraped", "molest",
    "molests", "molested", "molesting", "molestation", "molester", "sexual assault",
    "sexually assault", "sexually assaulted", "sexually assaulting", "sexual abuse", "sexually abused",
    "forced sex", "noncon", "non con", "non consensual sex", "nonconsensual sex", "rape fantasy",
)  # fmt: skip

# Unambiguous lack of consent or capacity: hard block with any sexual act or explicit term in the text.
COERCION_TERMS: tuple[str, ...] = (
    "without consent", "without her consent", "without his consent", "without their consent",
    "against her will", "against his will", "against their will", "non consensual", "nonconsensual",
    "coerced", "drugged", "roofied", "roofie", "unconscious", "passed out", "blacked out",
    "knocked out", "sedated", "comatose", "in a coma", "incapacitated", "blackout drunk",
)  # fmt: skip

# Weaker signals ("two lovers sleeping after sex" is fine): only with a sexual act a few words away.
INCAPACITATION_NEAR_TERMS: tuple[str, ...] = (
    "asleep", "sleeping", "forced", "forcing", "forcibly", "drunk", "held down", "pinned down",
)  # fmt: skip

# How many words may separate an INCAPACITATION_NEAR_TERMS match from a sexual act.
NEAR_WINDOW_WORDS = 4

# --- bestiality ---------------------------------------------------------------------------------

BESTIALITY_TERMS: tuple[str, ...] = (
    "bestiality", "zoophilia", "zoophile", "zoophiles", "zoosadism", "animal sex", "animal porn",
    "zoo porn", "dog sex", "horse sex",
)  # fmt: skip

# Animals; blocked only in a sexual-act phrase ("sex with a dog", "horse fucking her").
ANIMAL_TERMS: tuple[str, ...] = (
    "animal", "animals", "dog", "dogs", "puppy", "horse", "horses", "pony", "donkey", "pig", "pigs",
    "goat", "goats", "sheep", "cow", "cows", "bull", "cat", "cats", "monkey", "ape", "dolphin",
    "octopus", "snake", "beast", "beasts", "stallion", "mare",
)  # fmt: skip

# --- explicit (soft block) ----------------------------------------------------------------------

# Explicit adult content: fine in unmoderated private chat, made safe for work elsewhere. Lingerie,
# bikinis and "sexy" are deliberately absent: they are not nudity.
EXPLICIT_TERMS: tuple[str, ...] = (
    "nude", "nudes", "nudity", "naked", "nakedness", "topless", "bottomless", "unclothed",
    "without clothes", "without clothing", "no clothes", "in the nude", "fully nude", "butt naked",
    "porn", "porno", "porns", "pornographic", "pornography", "nsfw", "x rated", "xx rated", "hentai",
    "ecchi", "smut", "sexually explicit", "genitals", "genitalia", "penis", "penises", "vagina",
    "vaginas", "vulva", "clitoris", "pussy", "boobs", "tits", "titties", "exposed breasts",
    "breasts exposed", "bare breasts", "exposed nipples", "nipples exposed", "nipple slip", "erection",
    "erect penis", "dildo", "dildos", "vibrator", "striptease", "strip tease", "stripper",
    "sexting", "bdsm", "milf", "creampie", "deepthroat", "semen", "rule 34", "onlyfans",
)  # fmt: skip

# --- benign phrases -----------------------------------------------------------------------------

# Phrases masked out before matching because they contain a listed word in an innocent sense. The
# negations matter: LLM-expanded prompts and SAFETY_SUFFIX itself say "no nudity".
BENIGN_PHRASES: tuple[str, ...] = (
    "no nudity", "no nude", "not nude", "non nude", "without nudity", "nudity free", "no sex",
    "not sexual", "non sexual", "nonsexual", "not sexualized", "no sexual content", "not sexy",
    "naked eye", "naked mole rat", "naked mole rats", "naked flame", "nude color", "nude colored",
    "nude colour", "nude coloured", "nude tone", "nude tones", "nude lipstick", "nude heels",
    "nude makeup", "nude palette", "sex reveal", "sex education", "sex ed", "same sex", "opposite sex",
    "forced perspective", "cum laude",
)  # fmt: skip
