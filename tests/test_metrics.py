import jax.numpy as jnp
import numpy as np
import sklearn.metrics

from mnist_jax.core import metrics


def _random_case(n=500, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=n)
    return logits, labels


def test_log_loss_matches_sklearn():
    logits, labels = _random_case()
    probs = np.exp(logits.astype(np.float64))
    probs /= probs.sum(1, keepdims=True)
    expected = sklearn.metrics.log_loss(labels, probs, labels=range(10))
    assert np.isclose(
        metrics.log_loss(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5
    )


def test_accuracy_matches_sklearn():
    logits, labels = _random_case(seed=1)
    expected = sklearn.metrics.accuracy_score(labels, logits.argmax(1))
    assert np.isclose(
        metrics.accuracy(jnp.asarray(logits), jnp.asarray(labels)), expected
    )


def test_confusion_matrix_matches_sklearn():
    logits, labels = _random_case(seed=2)
    pred = logits.argmax(1)
    counts = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(pred))
    np.testing.assert_array_equal(
        counts, sklearn.metrics.confusion_matrix(labels, pred, labels=range(10))
    )
    np.testing.assert_allclose(
        metrics.normalize_rows(counts),
        sklearn.metrics.confusion_matrix(
            labels, pred, labels=range(10), normalize="true"
        ),
        rtol=1e-6,
    )


def test_normalize_rows_leaves_absent_classes_at_zero():
    counts = jnp.zeros((10, 10), jnp.int32).at[3, 4].set(7)
    normalized = metrics.normalize_rows(counts)
    assert normalized[3, 4] == 1.0
    assert float(normalized.sum()) == 1.0


def test_normalize_rows_keeps_numpy_on_the_host():
    counts = np.random.default_rng(0).integers(0, 50, (10, 10))
    counts[5] = 0
    on_host = metrics.normalize_rows(counts)
    assert isinstance(on_host, np.ndarray)
    np.testing.assert_allclose(
        on_host, metrics.normalize_rows(jnp.asarray(counts)), rtol=1e-6
    )
    assert not on_host[5].any()
