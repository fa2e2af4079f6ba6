"""kn: reproduce the Physics of Language Models knowledge papers on synthetic data.

Stages: kn.data (people, biographies, QA, bioD, injection) -> kn.tokenize (tokenizer, token spans,
packed windows) -> training, evaluation, probing and capacity (later modules). A module's docstring
cites the definitions it implements in papers.md, the papers' reference: book/papers.md.
"""
__version__ = "0.1.0"
