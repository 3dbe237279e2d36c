"""The kernel accuracy proxy: it ranks an informative set above a mislabelled one, its soft targets come from
the teacher, and it refuses what it cannot score."""
import numpy as np
import pytest
import torch

from core.data.datasets import LabelledImages
from core.evaluation.proxy import KernelProxy, ProxyConfig


def blobs(per_class: int, seed: int) -> LabelledImages:
    """Three classes of 1x32x32 images: a bright square in a class-specific corner, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(3 * per_class, 1, 32, 32), dtype=np.uint8)
    labels = np.repeat(np.arange(3), per_class)
    for i, c in enumerate(labels):
        y, x = [(2, 2), (2, 18), (18, 10)][c]
        images[i, 0, y:y + 12, x:x + 12] = 250
    return LabelledImages(images, labels, ("a", "b", "c"), f"blobs-{seed}")


class FakeTeacher:
    """Features: the image's mean brightness in each of the three squares; logits: the same, scaled."""

    def features(self, images):
        regions = [(2, 2), (2, 18), (18, 10)]
        return torch.stack([images[:, 0, y:y + 12, x:x + 12].mean((1, 2)) for y, x in regions], 1)

    def soft_labels(self, images, temperature):
        return torch.softmax(10 * self.features(images) / temperature, 1)


@pytest.mark.parametrize("config", [ProxyConfig(), ProxyConfig(kernel="rbf"),
                                    ProxyConfig(embedding="random-convnet", networks=2, width=16)])
@pytest.mark.parametrize("protocol", ["hard-dsa", "soft-online"])
def test_an_informative_set_scores_above_a_mislabelled_one(config, protocol):
    validation, train = blobs(30, seed=1), blobs(5, seed=2)
    proxy = KernelProxy(validation, FakeTeacher(), config)
    images = train.batch(slice(None))
    good = proxy.score(images, train.labels, protocol)
    if protocol == "hard-dsa":
        bad = proxy.score(images, (train.labels + 1) % 3, protocol)   # every label wrong
        assert good >= 0.9 and bad <= 0.1, (good, bad)
    else:   # soft targets come from the teacher, so the set's own labels do not matter
        assert good == proxy.score(images, (train.labels + 1) % 3, protocol) >= 0.9


def test_the_proxy_refuses_what_it_cannot_score():
    validation = blobs(5, seed=1)
    with pytest.raises(ValueError, match="needs a teacher"):
        KernelProxy(validation, None, ProxyConfig())
    proxy = KernelProxy(validation, None, ProxyConfig(embedding="random-convnet", networks=1, width=8))
    with pytest.raises(ValueError, match="soft labels, and there is no teacher"):
        proxy.score(validation.batch(slice(None)), validation.labels, "soft-online")
    with pytest.raises(ValueError, match="protocol must be one of"):
        proxy.score(validation.batch(slice(None)), validation.labels, "kip")
    with pytest.raises(ValueError, match="ridge"):
        ProxyConfig(ridge=0)
