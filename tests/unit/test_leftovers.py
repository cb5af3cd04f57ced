"""LeftoverObjects: the bookkeeping of keys still to remove (no server)."""

from ray_valkey_spill.spill.leftovers import LeftoverObjects


def test_leftover_chunks_are_rechecked_for_a_while_then_forgotten(monkeypatch):
    """Objects stay due until a removal works, are rechecked for a while, then forgotten;
    the oldest go over the size cap."""
    leftovers = LeftoverObjects()
    monkeypatch.setattr(leftovers, "MAX_OBJECTS", 3)
    leftovers.add([("a", 1), ("b", 2)])
    leftovers.add([("c", 1), ("d", 4)])
    assert leftovers.due() == [("b", 2), ("c", 1), ("d", 4)]  # the oldest went over the cap
    assert leftovers.due() == [("b", 2), ("c", 1), ("d", 4)]  # due until one removal worked
    leftovers.removed([("b", 2)])
    assert leftovers.due() == [("c", 1), ("d", 4)]  # b's recheck waits RECHECK_EVERY_S
    monkeypatch.setattr(leftovers, "RECHECK_EVERY_S", 0.0)
    assert leftovers.due() == [("b", 2), ("c", 1), ("d", 4)]  # ... then b is removed again
    monkeypatch.setattr(leftovers, "RECHECK_S", -1.0)
    leftovers.removed([("c", 1), ("d", 4)])
    assert leftovers.due() == [("b", 2)]  # c and d: removed, and their recheck time is over
