import math
import random

from models.conformal import quantile


def test_rank_is_ceil_n_plus_one_times_coverage():
    r = list(range(1, 21))  # 20 residuals 1..20: rank ceil(21 * 0.9) = 19
    assert quantile(r) == 19
    assert quantile(list(range(1, 11))) == 10  # rank ceil(11 * 0.9) = 10 = n: the largest
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0  # rank ceil(4 * 0.5) = 2
    assert quantile([1.0, float("nan"), float("inf")]) == 1.0  # only finite residuals count
    assert quantile([]) is None


def test_covers_at_least_the_level_on_exchangeable_draws():
    rng = random.Random(0)
    for n in (9, 19, 40):
        hits = 0
        trials = 4000
        for _ in range(trials):
            cal = [abs(rng.gauss(0, 1)) for _ in range(n)]
            hits += abs(rng.gauss(0, 1)) <= quantile(cal)
        # the guarantee: coverage >= 0.9 (and below 0.9 + 1/(n+1) for continuous residuals); 3 standard errors slack
        se = math.sqrt(0.9 * 0.1 / trials)
        assert 0.9 - 3 * se <= hits / trials <= 0.9 + 1 / (n + 1) + 3 * se, (n, hits / trials)
