"""Downstream tasks: task JSONL, held-out likelihood, batched generation and scoring (ROUGE-L, chrF, BLEU, degeneracy,
paired bootstrap), for SWCM and any Hugging Face seq2seq model.

    jsonl.py        reading/validating task and prediction files; writing predictions atomically
    model_dir.py    checking and loading a seq2seq model directory (SWCM or any AutoModelForSeq2SeqLM)
    layouts.py      how each model takes source, target and languages (tags, language codes, none)
    likelihood.py   per-token NLL of the references under teacher forcing
    generation.py   batched beam search, one prediction per example in input order
    beam_budget.py  the memory a beam search needs, estimated before loading the model
    tokenize.py     the tokens ROUGE-L counts, per script (Chinese characters, Tibetan syllables, words)
    rouge.py        ROUGE-L F/P/R via the LCS, averaged per sample
    metrics.py      chrF and BLEU through sacrebleu (BLEU tokenizer per target language)
    degeneracy.py   distinct / repeated-unit / repeated-4-gram shares, the constant-output baseline
    bootstrap.py    paired bootstrap resampling of the difference between two systems
    scores.py       scores per target language and overall, comparisons, text tables
"""
