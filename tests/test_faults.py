"""raydebias.faults.isolated: one bad item never fails its batch, and every item is accounted for."""

from raydebias.faults import Failed, isolated


def test_a_failing_batch_is_redone_item_by_item_and_only_the_bad_item_fails():
    calls, freed = [], []

    def double(xs):
        calls.append(list(xs))
        if any(x == "bad" for x in xs):
            raise ValueError("cannot handle bad")
        return [x * 2 for x in xs]

    out = isolated(double, ["a", "bad", "c"], "test", after_failure=lambda: freed.append(1))
    assert out[0] == "aa" and out[2] == "cc" and out[1] == Failed("ValueError: cannot handle bad")
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]] and len(freed) == 2
    assert isolated(double, ["a", "b"], "test") == ["aa", "bb"] and isolated(double, [], "test") == []


def test_a_wrong_number_of_results_counts_as_a_failed_batch():
    out = isolated(lambda xs: [1] if len(xs) > 1 else [len(xs[0])], ["xy", "xyz"], "test")
    assert out == [2, 3]
