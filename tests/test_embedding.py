"""phi, the orchestrator's encoder: the real all-MiniLM-L6-v2 and the tiny policy, no mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedgrpo.services.orchestrator.competence import nearest_items
from fedgrpo.services.orchestrator.embedding import MiniLMEmbedder, PolicyEmbedder, make_embedder
from fedgrpo.tasks import build_questions

DOMAINS = ("add1", "letter_counting")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = make_embedder("minilm", Path("unused"), "cpu", "float32")
    assert isinstance(embedder, MiniLMEmbedder)
    return embedder


def test_minilm_gives_finite_float64_rows_of_384(minilm):
    texts = ["Calculate 7 + 9.", 'How many times does the letter "a" appear in the text: "of vibration"?', ""]
    vectors = minilm.embed(texts)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float64
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_is_deterministic_and_repeats_a_text_in_place(minilm):
    first = minilm.embed(["Calculate 3 + 4.", "Calculate 5 + 1."])
    again = minilm.embed(["Calculate 5 + 1.", "Calculate 3 + 4.", "Calculate 3 + 4."])
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[1], first[0])
    np.testing.assert_array_equal(again[2], first[0])
    # A fresh model gives the same vector as the cached one.
    fresh = MiniLMEmbedder("cpu").embed(["Calculate 3 + 4."])
    np.testing.assert_allclose(fresh[0], first[0], atol=1e-6)


def test_minilm_nearest_items_are_mostly_of_the_question_domain(minilm):
    items = [q for d in DOMAINS for q in build_questions(d, seed=7, size=10)]
    questions = [q for d in DOMAINS for q in build_questions(d, seed=1, size=10)]
    item_vectors = minilm.embed([q.text for q in items])
    question_vectors = minilm.embed([q.text for q in questions])
    k = 5
    same = sum(
        items[i].domain == question.domain
        for question, vector in zip(questions, question_vectors)
        for i in nearest_items(vector, item_vectors, k)
    )
    assert same / (k * len(questions)) >= 0.8


def test_policy_embedder_gives_rows_of_the_hidden_size(model_cache):
    model_dir = model_cache / "tiny-policy"
    embedder = make_embedder("policy", model_dir, "cpu", "float32")
    assert isinstance(embedder, PolicyEmbedder)
    vectors = embedder.embed(["Calculate 7 + 9.", "Calculate 9 + 3."])
    assert vectors.shape == (2, embedder.model.config.hidden_size)
    assert vectors.dtype == np.float64
    assert np.isfinite(vectors).all()


def test_unknown_embedding_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="policy, minilm"):
        make_embedder("nope", Path("unused"), "cpu", "float32")
