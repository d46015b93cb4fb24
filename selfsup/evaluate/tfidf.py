"""TF-IDF features of raw documents: the no-learning baseline beside every number on text.

A bag of words weighted by inverse document frequency, then logistic regression (or kNN), is the classical text
classifier and the fair competitor for a small pretrained Transformer: it needs no pretraining, and on topic
classification it is hard to beat. The vocabulary and document frequencies are fitted on the training split's
documents only (the same documents MLM pretrained on, labels unused); the test split is only transformed.
"""
from __future__ import annotations

import numpy as np
import torch

TFIDF_ROW = "TF-IDF"
MAX_FEATURES = 5_000  # the most frequent words and bigrams of the training split


def tfidf_features(train_texts: list[str], test_texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) float32 TF-IDF matrices (N x V, rows L2-normalised) on `device`.

    Word unigrams and bigrams seen in at least 2 training documents, sublinear term frequency (1 + log tf),
    lower-cased: scikit-learn's TfidfVectorizer with the settings its text-classification examples use.
    Dense because the probes take dense features; the vocabulary is capped at MAX_FEATURES for memory.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(lowercase=True, ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                          max_features=MAX_FEATURES, dtype=np.float32)
    train = vec.fit_transform(train_texts)
    test = vec.transform(test_texts)

    def dense(m) -> torch.Tensor:
        return torch.from_numpy(m.toarray()).to(device)

    return dense(train), dense(test)
