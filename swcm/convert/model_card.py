"""The parts every exported model card shares (`to-hf` and `from-encoder`): the Hugging Face metadata block, the
licence note, the seq2seq convention and a fine-tuning snippet that runs as written with plain `transformers`.

Pipeline tag: `text-generation`. The Hub dropped `text2text-generation` as a pipeline type in July 2025
(huggingface.js #1590: it is now a subtask of `text-generation`, and seq2seq models are found by the
`text2text-generation` tag, which the card carries); transformers 5 removed the text2text pipelines.
"""

from __future__ import annotations

import re

from swcm.convert import ConversionError

DEFAULT_LICENSE = "other"
# Hub licence ids are lowercase letters, digits, dots and hyphens (apache-2.0, cc-by-nc-sa-4.0, mit, other).
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.\-]*")
TAGS = ("text2text-generation", "translation", "summarization", "encoder-decoder", "xlm-swcm", "swcm")

LICENSE_NOTE = """\
## Licence

The weights derive from the encoder they were initialised from (XLM-R: MIT; CINO: Apache-2.0) and from the text
they were trained on, each under its own terms; swcm cannot know them. `license: {license}` comes from
`convert_checkpoint.py --license` (default `other`, as in `launch/finetune.py`'s export): check the encoder's and
the data's terms before you publish."""

LOADING = """\
## Loading

The model is `modeling_swcm.py` in this directory: `AutoModelForSeq2SeqLM.from_pretrained(DIR,
trust_remote_code=True)`. The tokenizer is the stock XLM-R one: `AutoTokenizer.from_pretrained(DIR)`, no flag,
no question. `config.json` says `model_type: xlm-roberta` because the encoder is XLM-R's, and a model type that
transformers knows is what lets its tokenizer load without remote code; the model itself is an encoder-decoder,
so load it with `AutoModelForSeq2SeqLM`: `AutoModel.from_pretrained(DIR)` gives a randomly initialised
`XLMRobertaModel` (transformers lists every weight as missing)."""

CONVENTION = """\
## Inputs, labels and generation

- encoder input `<s> <src_lang> source </s>`: `tok("<zh>" + source)`
- labels `<tgt_lang> target </s>`: `tok(text_target="<bo>" + target)["input_ids"][1:]` (the tokenizer's leading
  `<s>` dropped). The target-language tag is the first label and is scored (mBART-50's convention).
- decoder inputs: the labels shifted right behind `<s>`; the model derives them from `labels`
  (`prepare_decoder_input_ids_from_labels`, which `DataCollatorForSeq2Seq` calls), so a batch needs only
  `input_ids`, `attention_mask` and `labels`.
- generation starts from `<s>`. Choose the target language by forcing its tag,
  `generate(..., forced_bos_token_id=tok.convert_tokens_to_ids("<bo>"))`, or by passing
  `decoder_input_ids=[[<s>, <bo>]]`. A model fine-tuned towards one language emits its tag unforced, and
  swcm's `launch/finetune.py` export also sets `generation_config.forced_bos_token_id` when its training data
  has one target language."""

SNIPPET = '''\
```python
# Fine-tune with plain Hugging Face tools (swcm is not needed). Run it from the directory that holds this model.
import json

from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                          Seq2SeqTrainingArguments)

MODEL = {model!r}  # this directory (or its Hub id once uploaded)
TRAIN = "train.jsonl"  # one {{"source": ..., "target": ..., "src_lang": "zh", "tgt_lang": "bo"}} per line
OUT = MODEL + "-finetuned"
# swcm's own fine-tuning defaults (configs/finetune/ntrex_zh_bo.json): a few minutes on a CPU for a small model.
MAX_LEN, BATCH, LR, STEPS = 128, 16, 3e-4, 200

tok = AutoTokenizer.from_pretrained(MODEL)  # the stock XLM-R tokenizer: no remote code
model = AutoModelForSeq2SeqLM.from_pretrained(MODEL, trust_remote_code=True)  # modeling_swcm.py, in this directory


def features(ex):
    """<s> <src_lang> source </s> -> labels <tgt_lang> target </s> (the tag is the first label, and scored)."""
    enc = tok(f"<{{ex['src_lang']}}>" + ex["source"], truncation=True, max_length=MAX_LEN)
    target = tok(text_target=f"<{{ex['tgt_lang']}}>" + ex["target"], truncation=True, max_length=MAX_LEN + 1)
    return {{**enc, "labels": target["input_ids"][1:]}}


examples = [json.loads(line) for line in open(TRAIN, encoding="utf-8") if line.strip()]
args = Seq2SeqTrainingArguments(output_dir=OUT, per_device_train_batch_size=BATCH, max_steps=STEPS,
                                learning_rate=LR, warmup_steps=STEPS // 10, logging_steps=10, save_strategy="no",
                                report_to=[])
trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=[features(ex) for ex in examples],
                         processing_class=tok, data_collator=DataCollatorForSeq2Seq(tok, model=model))
trainer.train()
trainer.save_model(OUT)

# Generation starts from <s>; force the target-language tag next.
ex = examples[0]
batch = tok(f"<{{ex['src_lang']}}>" + ex["source"], return_tensors="pt").to(model.device)
out = model.generate(**batch, num_beams=5, max_new_tokens=MAX_LEN,
                     forced_bos_token_id=tok.convert_tokens_to_ids(f"<{{ex['tgt_lang']}}>"))
print(tok.decode(out[0], skip_special_tokens=True))
```'''


def check_license(license: str) -> str:
    """`license` if it looks like a Hub licence id (lowercase letters, digits, `.`, `-`); ConversionError otherwise
    (it goes into the YAML block as written)."""
    if not _LICENSE_ID.fullmatch(license):
        raise ConversionError(f"--license {license!r}: expected a Hub licence id such as mit, apache-2.0 or other")
    return license


def front_matter(lang_codes, license: str) -> str:
    """The YAML metadata block the Hub reads: languages, licence (with a `license_name` when it is `other`),
    library, pipeline tag and tags."""
    lines = ["---", "language:", *(f"- {code}" for code in lang_codes), f"license: {check_license(license)}"]
    if license == "other":
        lines.append("license_name: inherited")   # from the encoder and the training data; see the Licence section
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:", *(f"- {t}" for t in TAGS),
              "---"]
    return "\n".join(lines) + "\n"


def usage_sections(model_dir_name: str, license: str) -> str:
    """How to load the model, the convention, the fine-tuning snippet (loading the model as `model_dir_name`,
    relative to the directory that holds it) and the licence note, as Markdown."""
    snippet = SNIPPET.format(model=model_dir_name)
    return f"{LOADING}\n\n{CONVENTION}\n\n## Fine-tune\n\n{snippet}\n\n{LICENSE_NOTE.format(license=license)}\n"

