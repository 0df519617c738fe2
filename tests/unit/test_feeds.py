import numpy as np

from raysight.train.feeds import ArrayFeed


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # each image holds its index
    return images, np.arange(n, dtype=np.int64)


def test_training_shards_are_disjoint_equal_and_reshuffled() -> None:
    images, labels = _data(103)
    feeds = [
        ArrayFeed(images, labels, rank=r, world=2, batch_size=10, train=True, seed=1)
        for r in range(2)
    ]
    assert [f.steps_per_epoch() for f in feeds] == [5, 5]
    seen = [np.concatenate([y.numpy() for _, y in f.epoch(0)]) for f in feeds]
    assert len(seen[0]) == len(seen[1]) == 50
    assert not set(seen[0]) & set(seen[1])
    again = np.concatenate([y.numpy() for _, y in feeds[0].epoch(1)])
    assert set(again) != set(seen[0])  # a new epoch draws a new permutation
    for x, y in feeds[0].epoch(0):
        assert x.dtype.is_floating_point is False and x.shape[1:] == (1, 1, 1)
        assert np.array_equal(x.numpy().reshape(-1), y.numpy().astype(np.uint8))


def test_evaluation_shards_cover_every_sample_once() -> None:
    images, labels = _data(23)
    seen = []
    for rank in range(3):
        feed = ArrayFeed(images, labels, rank=rank, world=3, batch_size=4, train=False)
        batches = list(feed.epoch(0))
        assert len(batches) == feed.steps_per_epoch()
        seen.extend(int(v) for _, y in batches for v in y)
    assert sorted(seen) == list(range(23))
