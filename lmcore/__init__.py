"""lmcore: tokenize text, build small language models, train, sample and save them.

A plain PyTorch library (no Streamlit): the Small LM Playground's pages are thin
views over it, and ``python -m lmcore`` drives it from a terminal.
"""

__version__ = "0.1.0"
