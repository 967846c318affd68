"""Small helpers shared by the architecture tests: real training runs and real CLI runs."""

from __future__ import annotations

from pathlib import Path

import torch

from lmcore.models import lm_loss

ROOT = Path(__file__).resolve().parents[1]


def unigram_entropy(ids: torch.Tensor) -> float:
    """The loss (nats per token) of always predicting the tokens' own frequencies."""
    p = torch.bincount(ids).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def short_training_run(model, ids: torch.Tensor, steps: int, lr: float, batch: int = 16) -> float:
    """A few Adam steps on random windows of the first 90%; the mean loss on fixed windows of the rest."""
    n = int(len(ids) * 0.9)
    train, val = ids[:n], ids[n:]
    T = model.config.block_size
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(len(train) - T - 1, (batch,), generator=g)
        x = torch.stack([train[s : s + T] for s in starts])
        y = torch.stack([train[s + 1 : s + T + 1] for s in starts])
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    starts = range(0, len(val) - T - 1, T)
    x = torch.stack([val[s : s + T] for s in starts])
    y = torch.stack([val[s + 1 : s + T + 1] for s in starts])
    with torch.no_grad():
        return float(lm_loss(model(x), y))


def assert_checkpoint_round_trip(path: Path, model, tok, model_class: type, prompt: str) -> None:
    """Save ``model`` to one .safetensors file, load it back: the same keys, class, config and logits."""
    from safetensors.torch import load_file

    from lmcore.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(path, model, tok)
    stored = set(load_file(str(path)))
    assert stored <= set(model.state_dict())  # a tied head is stored once, under the embedding's name
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, model_class) and loaded.config == model.config
    mine, theirs = model.state_dict(), loaded.model.state_dict()
    assert set(theirs) == set(mine)
    for name, tensor in mine.items():
        assert torch.equal(theirs[name], tensor), name
    idx = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx), model(idx), rtol=0, atol=0)


def assert_seeded_sampling_past_block_size(model, new_tokens: int, seed: int) -> None:
    """Sampling runs past the model's block size, and the same seed draws the same tokens."""
    from lmcore.sample import SamplingConfig, generate

    cfg = SamplingConfig(temperature=1.0, seed=seed)
    first = [e.token_id for e in generate(model, [1, 2, 3], max_new_tokens=new_tokens, sampling=cfg)]
    again = [e.token_id for e in generate(model, [1, 2, 3], max_new_tokens=new_tokens, sampling=cfg)]
    assert len(first) == new_tokens and first == again
