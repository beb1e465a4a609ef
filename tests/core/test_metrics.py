import numpy as np
import pytest

from core.metrics import topk_correct


def _reference(scores, labels, k):
    order = np.argsort(-scores, axis=1, kind="stable")
    return int(sum(labels[i] in order[i, :k] for i in range(len(labels))))


def test_small_example_by_hand():
    scores = np.array([[0.1, 0.5, 0.2, 0.2],    # label 1: rank 0
                       [0.4, 0.3, 0.2, 0.1],    # label 2: rank 2
                       [0.0, 0.1, 0.2, 0.9]])   # label 0: rank 3
    labels = np.array([1, 2, 0])
    assert topk_correct(scores, labels, ks=(1, 2, 3, 4)) == {1: 1, 2: 1, 3: 2, 4: 3}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sorting_reference(dtype):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((64, 10)).astype(dtype)
    labels = rng.integers(0, 10, 64)
    got = topk_correct(scores, labels, ks=(1, 3, 5))
    assert got == {k: _reference(scores, labels, k) for k in (1, 3, 5)}
    assert got[1] == int(np.sum(scores.argmax(1) == labels))


def test_ties_break_like_argmax():
    scores = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 2.0, 2.0]])
    labels = np.array([0, 2, 2])
    # row 0: label 0 wins the tie; row 1: label 2 is beaten by 0 and 1; row 2: beaten by 1
    assert topk_correct(scores, labels, ks=(1, 2, 3)) == {1: 1, 2: 2, 3: 3}


def test_k_larger_than_number_of_classes():
    scores = np.array([[0.3, 0.7], [0.9, 0.1]])
    assert topk_correct(scores, np.array([0, 1]), ks=(1, 5)) == {1: 0, 5: 2}


def test_nan_rows_are_wrong():
    scores = np.array([[np.nan, 0.0, 1.0], [0.0, 0.0, np.nan], [0.0, 1.0, 0.0]])
    assert topk_correct(scores, np.array([2, 0, 1]), ks=(1, 3)) == {1: 1, 3: 1}


def test_empty_batch_and_list_labels():
    assert topk_correct(np.zeros((0, 4)), np.zeros(0, np.int64)) == {1: 0, 5: 0}
    assert topk_correct(np.eye(3), [0, 1, 0], ks=(1,)) == {1: 2}


@pytest.mark.parametrize("scores,labels,ks,match", [
    (np.zeros(4), np.zeros(4, int), (1,), "scores"),
    (np.zeros((2, 3)), np.zeros(3, int), (1,), "labels"),
    (np.zeros((2, 3)), np.zeros(2), (1,), "labels"),
    (np.zeros((2, 3)), np.array([0, 3]), (1,), r"\[0, 3\)"),
    (np.zeros((2, 3)), np.array([0, -1]), (1,), r"\[0, 3\)"),
    (np.zeros((2, 3)), np.array([0, 1]), (0,), "k"),
])
def test_rejects_bad_input(scores, labels, ks, match):
    with pytest.raises(ValueError, match=match):
        topk_correct(scores, labels, ks)
