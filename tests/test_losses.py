"""Loss formulas against hand-computed values, and InfoNCE's distributed negatives."""

import math

import pytest
import torch

from hf_ssl.losses import info_nce_loss, masked_token_cross_entropy


def test_info_nce_matches_hand_computed_value():
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    key = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # normalised to [0.7071, 0.7071]
    temperature = 0.5
    s = 1 / math.sqrt(2)
    # A -> B, row 0: sims to keys (1, s); positive 1.  Row 1: sims (0, s); positive s.
    loss_row0 = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + math.exp(s / temperature)))
    loss_row1 = -math.log(math.exp(s / temperature) / (math.exp(0.0) + math.exp(s / temperature)))
    # B -> A, key row 0 = [1,0]: sims to queries (1, 0), positive 1.  Row 1: sims (s, s), positive s.
    loss_back0 = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 1.0))
    loss_back1 = -math.log(0.5)
    expected = 0.5 * ((loss_row0 + loss_row1) / 2 + (loss_back0 + loss_back1) / 2)
    got = info_nce_loss(query, key, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    one_way = info_nce_loss(query, key, temperature=temperature, symmetric=False)
    assert one_way.item() == pytest.approx((loss_row0 + loss_row1) / 2, rel=1e-6)


def test_info_nce_is_low_for_matched_and_high_for_shuffled_pairs():
    torch.manual_seed(0)
    embeddings = torch.randn(16, 32)
    matched = info_nce_loss(embeddings, embeddings + 0.01 * torch.randn(16, 32), temperature=0.1)
    shuffled = info_nce_loss(embeddings, embeddings[torch.randperm(16)], temperature=0.1)
    assert matched < 0.1 < math.log(16) < shuffled + 1.0
    assert shuffled > 2.0


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match="must both be"):
        info_nce_loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(torch.randn(4, 8), torch.randn(4, 8), temperature=0.0)


def test_masked_token_cross_entropy_matches_hand_computed_value():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (B=1, M=2, V=3)
    targets = torch.tensor([[0, 2]])
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(1 / 3)
    assert masked_token_cross_entropy(logits, targets).item() == pytest.approx((first + second) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="disagree"):
        masked_token_cross_entropy(logits, torch.tensor([[0]]))


def _distributed_info_nce_worker(rank, world_size, port, query, key, results_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    local = query.shape[0] // world_size
    local_query = query[rank * local : (rank + 1) * local].clone().requires_grad_(True)
    local_key = key[rank * local : (rank + 1) * local].clone().requires_grad_(True)
    loss = info_nce_loss(local_query, local_key, temperature=0.3)
    # DDP averages gradients over processes; reproduce that to compare with one process.
    (loss / world_size).backward()
    torch.save((loss.item(), local_query.grad.clone(), local_key.grad.clone()), f"{results_dir}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_info_nce_gathers_negatives_across_processes_with_gradients(tmp_path):
    import socket
    from multiprocessing import resource_tracker

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    query, key = torch.randn(8, 5), torch.randn(8, 5)
    full_query, full_key = query.clone().requires_grad_(True), key.clone().requires_grad_(True)
    info_nce_loss(full_query, full_key, temperature=0.3).backward()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        mp.spawn(_distributed_info_nce_worker, args=(2, port, query, key, str(tmp_path)), nprocs=2, join=True)
    finally:
        # spawn starts multiprocessing's resource tracker, a process that would outlive the test
        resource_tracker._resource_tracker._stop()
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    # The full-batch loss is the mean of the per-process losses; gradients match the single process.
    mean_loss = (results[0][0] + results[1][0]) / 2
    expected = info_nce_loss(query, key, temperature=0.3).item()
    assert mean_loss == pytest.approx(expected, rel=1e-5)
    query_grad = torch.cat([results[0][1], results[1][1]])
    key_grad = torch.cat([results[0][2], results[1][2]])
    torch.testing.assert_close(query_grad, full_query.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(key_grad, full_key.grad, rtol=1e-4, atol=1e-6)
