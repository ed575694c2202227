"""Checkpoint round-trips: a strategy restored in a new process continues exactly like the
uninterrupted one (same subsequent selections and weights)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastprune.prune import UCB, EpsilonGreedy

# Shared by this process and the subprocess: deterministic "training" with fake losses.
DRIVER = textwrap.dedent('''
    import numpy as np
    from fastprune.prune import EL2N, UCB, EpsilonGreedy, Forgetting, InfoBatch, UniformRandom

    N, EPOCHS, STOP = 997, 9, 4
    MAKERS = {
        "ucb": lambda: UCB(N, 0.3, seed=3, reselect_every=2),
        "egreedy": lambda: EpsilonGreedy(N, 0.4, eps=0.3, seed=4, labels=np.arange(N) % 5),
        "infobatch": lambda: InfoBatch(N, 0.6, epochs=EPOCHS, seed=5),
        "el2n": lambda: EL2N(N, 0.3, score_epochs=2, seed=6),
        "forgetting": lambda: Forgetting(N, 0.3, score_epochs=3, seed=7),
        "uniform": lambda: UniformRandom(N, 0.5, seed=8),
    }

    def fake_losses(indices, epoch):
        x = (indices * 2654435761 + epoch * 40503) % 10007
        return (x / 10007.0) ** 2 * (1 + (indices % 7))

    def run(strategy, epochs, first_half_done=False):
        """Train `epochs`; the first one may be an epoch whose first half was already fed."""
        out = []
        for epoch in epochs:
            sel = strategy.select(epoch)
            out.append((sel.indices.copy(), sel.weights.copy()))
            order = np.sort(sel.indices)
            half = len(order) // 2
            start = half if first_half_done else 0
            first_half_done = False
            for part in (order[start:half], order[max(start, half):]):
                if len(part):
                    strategy.update(part, fake_losses(part, epoch), (part + epoch) % 3 != 0)
        return out
''')


def load_driver():
    namespace = {}
    exec(DRIVER, namespace)
    return namespace


@pytest.mark.parametrize("name", ["ucb", "egreedy", "infobatch", "el2n", "forgetting", "uniform"])
def test_restored_in_new_process_continues_identically(name, tmp_path):
    d = load_driver()
    reference = d["run"](d["MAKERS"][name](), range(d["EPOCHS"]))

    # Interrupted run: full epochs before STOP, then half of epoch STOP, then checkpoint.
    strategy = d["MAKERS"][name]()
    d["run"](strategy, range(d["STOP"]))
    sel = strategy.select(d["STOP"])
    first = np.sort(sel.indices)[: len(sel) // 2]
    strategy.update(first, d["fake_losses"](first, d["STOP"]), (first + d["STOP"]) % 3 != 0)
    torch.save(strategy.state_dict(), tmp_path / "ckpt.pt")

    script = DRIVER + textwrap.dedent(f'''
        import torch
        strategy = MAKERS[{name!r}]()
        strategy.load_state_dict(torch.load({str(tmp_path / "ckpt.pt")!r}, weights_only=True))
        out = run(strategy, range(STOP, EPOCHS), first_half_done=True)
        np.savez({str(tmp_path / "out.npz")!r}, *[a for pair in out for a in pair])
    ''')
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    resumed = np.load(tmp_path / "out.npz")
    arrays = [resumed[f"arr_{i}"] for i in range(len(resumed.files))]
    for epoch, (indices, weights) in enumerate(reference[d["STOP"]:], start=d["STOP"]):
        np.testing.assert_array_equal(arrays[2 * (epoch - d["STOP"])], indices, err_msg=f"epoch {epoch}")
        np.testing.assert_array_equal(arrays[2 * (epoch - d["STOP"]) + 1], weights, err_msg=f"epoch {epoch}")


def test_state_dict_round_trip_in_process():
    a = UCB(50, 0.4, seed=1)
    a.update(np.arange(50), np.linspace(0, 1, 50))
    a.select(1)
    b = UCB(50, 0.4, seed=1)
    b.load_state_dict(a.state_dict())
    assert a.table.fields == b.table.fields == ("mean", "var", "seen", "forgets", "last_correct", "ever_correct")
    for name in a.table.fields + ("score",):
        np.testing.assert_array_equal(getattr(a.table, name), getattr(b.table, name))
    np.testing.assert_array_equal(a.select(2).indices, b.select(2).indices)


def test_load_rejects_mismatched_settings():
    state = UCB(50, 0.4, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 vs 2"):
        UCB(50, 0.4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="strategy="):
        EpsilonGreedy(50, 0.4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        UCB(50, 0.4, seed=1).load_state_dict({"format": "x"})
