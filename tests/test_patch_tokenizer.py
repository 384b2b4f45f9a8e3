"""SplitMask's patch tokenizer: vectors, assignment, k-means, alternatives."""

import pytest
import torch
import torch.nn.functional as F

from hf_ssl.tokenizer import (
    PatchTokenizer,
    assign_tokens,
    codebook_fingerprint,
    fit_kmeans_codebook,
    patch_vectors,
    quantization_error,
)


def test_patch_vectors_downsample_each_patch_to_8x8x3():
    images = torch.randn(2, 3, 32, 48)
    vectors = patch_vectors(images, patch_size=16, resolution=8)
    assert vectors.shape == (2, 2 * 3, 192)
    # Patch (row 1, col 2) of image 1 = index 1 * 3 + 2; its 8x8 version is a 2x2 average pool.
    patch = images[1, :, 16:32, 32:48]
    expected = F.avg_pool2d(patch.unsqueeze(0), 2).flatten()
    torch.testing.assert_close(vectors[1, 5], expected)


def test_assignment_equals_brute_force_argmax():
    torch.manual_seed(0)
    vectors, codebook = torch.randn(3, 10, 12), F.normalize(torch.randn(7, 12), dim=-1)
    tokens = assign_tokens(vectors, codebook)
    for b in range(3):
        for n in range(10):
            scores = [float(vectors[b, n] @ codebook[i]) for i in range(7)]
            assert tokens[b, n] == max(range(7), key=scores.__getitem__)


def test_targets_do_not_depend_on_the_autocast_around_them():
    """A bf16 training step encodes its targets in fp32: a bf16 similarity matmul ties near-equal
    codes and argmax picks the first, which changes a large share of the targets."""
    tokenizer = PatchTokenizer(vocab_size=2048, patch_size=8, resolution=4)
    images = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    tokenizer.fit(images, method="kmeans", num_epochs=1, progress=False)
    unseen = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    fp32_tokens = tokenizer.encode(unseen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tokenizer.encode(unseen), fp32_tokens)
        rounded = (tokenizer.vectors(unseen) @ tokenizer.codebook.T).argmax(-1)  # the bf16 matmul's targets
    assert (rounded != fp32_tokens).float().mean() > 0.05  # 15 % measured: the case is one that bf16 changes


def test_kmeans_lowers_quantization_error_over_iterations():
    generator = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(16, 24, generator=generator), dim=-1)
    batches = [centres[torch.randint(0, 16, (256,), generator=generator)] + 0.05 * torch.randn(256, 24, generator=generator)
               for _ in range(8)]
    codebook, errors = fit_kmeans_codebook(batches, vocab_size=16, num_epochs=4, generator=generator, progress=False)
    assert codebook.shape == (16, 24)
    torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(16))
    epoch_means = [sum(errors[i : i + 8]) / 8 for i in range(0, 32, 8)]
    assert all(later <= earlier + 1e-3 for earlier, later in zip(epoch_means, epoch_means[1:]))
    assert epoch_means[-1] < 0.7 * errors[0]  # well below the error of the initial codebook
    held_out = centres[torch.randint(0, 16, (512,), generator=generator)] + 0.05 * torch.randn(512, 24, generator=generator)
    random_codebook = F.normalize(torch.randn(16, 24, generator=generator), dim=-1)
    assert quantization_error(held_out, codebook) < 0.5 * quantization_error(held_out, random_codebook)


@pytest.mark.parametrize("method", ["kmeans", "random_patches", "uniform"])
def test_tokenizer_fit_methods_build_unit_codebooks(method):
    tokenizer = PatchTokenizer(vocab_size=32, patch_size=8, resolution=4)
    images = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    errors = tokenizer.fit(images, method=method, num_epochs=2, progress=False)
    assert tokenizer.codebook.shape == (32, 48)
    torch.testing.assert_close(tokenizer.codebook.norm(dim=-1), torch.ones(32))
    assert (len(errors) > 0) == (method == "kmeans")
    tokens = tokenizer.encode(images[0])
    assert tokens.shape == (4, 16) and tokens.dtype == torch.long
    assert int(tokens.max()) < 32


def test_fit_is_deterministic_and_fingerprint_tracks_content():
    images = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    first, second = PatchTokenizer(16, 4), PatchTokenizer(16, 4)
    first.fit(images, seed=3, progress=False)
    second.fit(images, seed=3, progress=False)
    assert codebook_fingerprint(first.codebook) == codebook_fingerprint(second.codebook)
    second.codebook[0, 0] += 1e-3
    assert codebook_fingerprint(first.codebook) != codebook_fingerprint(second.codebook)


def test_fit_refuses_unknown_method_and_empty_input():
    tokenizer = PatchTokenizer(8, 4)
    with pytest.raises(ValueError, match="method must be"):
        tokenizer.fit([torch.randn(1, 3, 8, 8)], method="dvae")
    with pytest.raises(ValueError, match="no image batches"):
        tokenizer.fit([], method="kmeans")
