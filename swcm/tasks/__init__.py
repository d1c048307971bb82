"""Downstream tasks: task JSONL, batched generation and scoring (ROUGE-L, chrF, BLEU, paired bootstrap).

    jsonl.py       reading/validating task and prediction files; writing predictions atomically
    model_dir.py   checking and loading an exported SWCM directory
    generation.py  batched beam search, one prediction per example in input order
    tokenize.py    the tokens ROUGE-L counts, per script (Chinese characters, Tibetan syllables, words)
    rouge.py       ROUGE-L F/P/R via the LCS, averaged per sample
    metrics.py     chrF and BLEU through sacrebleu (BLEU tokenizer per target language)
    bootstrap.py   paired bootstrap resampling of the difference between two systems
    scores.py      scores per target language and overall, comparisons, text tables
"""
