"""kn: reproduce the Physics of Language Models knowledge papers on synthetic data.

Stages: kn.data (people, biographies, QA, bioD, injection) -> kn.tokenize (tokenizer, token spans,
packed windows) -> training, evaluation, probing and capacity (later modules).
"""
__version__ = "0.1.0"
