"""The paper's ablations in miniature (`launch/ablate.py`): the config, the HF warm start, the stages, the runner that
resumes them, the report."""
