"""The English stop-word list used to build the GaLR-family word vocabularies.

This is the English list of the NLTK stop-words corpus (``nltk.corpus.stopwords.words('english')``, the
179-word version distributed with NLTK 3.x before 2023), written out here so that no corpus download is needed.
Source: NLTK, https://www.nltk.org/ (stopwords corpus by Porter et al.; NLTK is Apache-2.0 licensed, the
word list itself is a plain list of common function words). rsitr uses it only to reproduce the shipped
``*_splits_vocab.json`` files (METHODS.md A2): stop-words are left out of the vocabulary and therefore map to
``<unk>`` at encode time unless ``data.drop_stopwords`` is set.
"""
from __future__ import annotations

_WORDS = """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves
he him his himself she she's her hers herself it it's its itself they them their theirs themselves
what which who whom this that that'll these those am is are was were be been being have has had having
do does did doing a an the and but if or because as until while of at by for with about against between
into through during before after above below to from up down in out on off over under again further then
once here there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't
wouldn wouldn't
"""

ENGLISH_STOPWORDS: frozenset[str] = frozenset(_WORDS.split())
