"""swcm: XLM-SWCM shared-weight encoder-decoders for extremely low-resource languages."""

import os
import sys

__version__ = "0.1.0"

# DeepSpeed JIT-builds its CPU collective op through torch, into TORCH_EXTENSIONS_DIR or else one cache shared by
# every checkout and every other DeepSpeed user of the machine (each checkout then rebuilds what another built, and
# one program's lock blocks the others). Inside a virtual environment, unless the user chose a folder, ours is
# `torch_extensions` in it. Set here, at the first import of swcm, so that every process of ours (ranks, launched
# scripts, tests) inherits it before DeepSpeed builds or loads anything.
if sys.prefix != sys.base_prefix:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
