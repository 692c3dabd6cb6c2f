"""The MLX executor: its generator equals the NumPy reference, and it follows the torch executor.

Tolerances (float32 on both backends, the same weights, different kernels):
* Rademacher perturbations and updates: bit for bit (the update is exact +-scale, one rounding);
* Gaussian perturbations: within one float32 ulp of the reference (bit for bit in practice);
* verbalizer logits: 1e-4 absolute (measured ~1e-7 on the tiny models, 4e-5 on SmolLM2-135M);
* losses: 1e-5 absolute.
"""

import math

import numpy as np
import pytest

# MLX is part of the test extra (mlx[cpu] on Linux): a missing one fails here, it is not skipped
import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402,F401

import torch  # noqa: E402

from edgezo import perturb  # noqa: E402
from edgezo.backends.mlx import perturb as mz  # noqa: E402
from edgezo.backends.mlx.executor import MLXExecutor  # noqa: E402
from edgezo.backends.mlx.factory import build_mlx_executor  # noqa: E402
from edgezo.backends.torch.factory import build_torch_executor  # noqa: E402
from edgezo.config import JobConfig  # noqa: E402
from edgezo.errors import EdgezoError  # noqa: E402
from edgezo.keys import Direction  # noqa: E402
from edgezo.tasks import get_task, load_examples  # noqa: E402

from executor_checks import sst2_loss_before_and_after_spzo  # noqa: E402
from support.executor_logits import verbalizer_logits  # noqa: E402

NAME = "model.layers.20.input_layernorm.weight"
DIRECTION = Direction(42, 3, 1, 2, 0, 5)
LOGIT_TOL = 1e-4
LOSS_TOL = 1e-5
PROMPTS = ["Review: a great movie . Sentiment:", "Review: bad , boring and too long . It was", "the film", "Review: ."]
LABELS = [1, 0, 1, 0]
PERTURBATION = [(Direction(1, 1, 0, 1, 0), 2e-2), (Direction(1, 1, 0, 2, 0, 1), -2e-2), (Direction(1, 1, 0, 0, 3), 1e-2)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: torch's thread pool only adds synchronisation (milliseconds per tiny matmul on a
    busy machine); one thread keeps this file fast. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the generator ---------------------------------------------------------------------------------


def test_mlx_uint32_multiplication_wraps():
    a = mx.array([0xFFFFFFFF, 0x12345678], dtype=mx.uint32) * mx.array(0x846CA68B, dtype=mx.uint32)
    want = np.array([0xFFFFFFFF, 0x12345678], dtype=np.uint32) * np.uint32(0x846CA68B)
    assert a.dtype == mx.uint32 and np.array_equal(np.array(a), want)


def test_mlx_golden_vectors():
    key = DIRECTION.tensor_key(NAME)
    assert np.array(mz.words(key, 0, 4)).tolist() == [1323769979, 1709909284, 2996906087, 235605442]
    signs = "".join("1" if v < 0 else "0" for v in np.array(mz.rademacher(key, 0, 64)))
    assert signs == "1101111000000100111001110111001000100100101001001101011110100110"
    assert np.array(mz.rademacher(key, 1000003, 8)).tolist() == [-1, 1, -1, 1, -1, 1, -1, -1]
    np.testing.assert_allclose(
        np.array(mz.gaussian(key, 0, 6)),
        [-1.2304906, 0.79847181, 0.10975304, 0.1743252, -2.5607569, -1.1470885],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "start,count",
    [(0, 1), (0, 64), (5, 1000), (31, 33), (12345, 70001), (2**31 + 7, 100), (32 * (2**32 - 1) - 3, 70)],
)
def test_mlx_rademacher_bit_exact(start, count):
    key = DIRECTION.tensor_key(NAME)
    assert np.array_equal(np.array(mz.rademacher(key, start, count)), perturb.rademacher(key, start, count))


def test_mlx_gaussian_within_one_ulp():
    for k in range(3):
        key = Direction(7, k, 0, 1, 3).tensor_key("w")
        a, b = np.array(mz.gaussian(key, 100 + 33 * k, 50000)), perturb.gaussian(key, 100 + 33 * k, 50000)
        assert a.dtype == np.float32
        assert np.all(np.abs(a - b) <= np.spacing(np.abs(b)))


@pytest.mark.parametrize("n", [31, 32, 4096, 3 * 4096 + 45])
def test_mlx_add_scaled_matches_reference(n, monkeypatch):
    monkeypatch.setattr(mz, "CHUNK", 1 << 12)  # several chunks, and a ragged tail
    key = Direction(9, 1, 0, 2, 0, 1).tensor_key("w")
    base = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    want = base + np.float32(-0.003) * perturb.rademacher(key, 0, n)
    got = mz.add_scaled(mx.array(base).reshape(1, n), key, -0.003)
    assert got.shape == (1, n) and np.array_equal(np.array(got).reshape(-1), want)
    want_g = base + np.float32(0.5) * perturb.gaussian(key, 0, n)
    got_g = np.array(mz.add_scaled(mx.array(base), key, 0.5, "gaussian"))
    assert np.all(np.abs(got_g - want_g) <= np.spacing(np.abs(want_g)))


# -- tiny models on both backends ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, sst2_dir):
    """A tiny Qwen2: q/k/v biases (random, so they matter), an untied LM head, sliding-window
    attention in the last two layers (window 3, shorter than the prompts)."""
    from tiny import sst2_vocab, tiny_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    vocab = sst2_vocab()
    torch.manual_seed(1)
    config = Qwen2Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=160, tie_word_embeddings=False, rope_theta=50000.0,
        use_sliding_window=True, sliding_window=3, max_window_layers=2,
    )
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    tiny_tokenizer(vocab).save_pretrained(folder)
    return folder


def both(folder, trainable, split=2, **kw):
    cfg = JobConfig(model=str(folder), trainable=trainable, split=split, seed=3, **kw)
    task = get_task("sst2")
    te, _ = build_torch_executor(cfg, task)
    me, _ = build_mlx_executor(cfg, task)
    return te, me


def torch_logits(te, batch, perturbation=()):
    with torch.no_grad():
        return te._block2_logits(te._block1(batch, perturbation), perturbation).numpy()


def assert_same_trainables(te, me):
    ta, ma = te.trainable_arrays(), me.trainable_arrays()
    assert list(ta) == list(ma)
    for name in ta:
        assert ma[name].dtype == np.float32 and np.array_equal(ta[name], ma[name]), name
    assert te.fingerprint() == me.fingerprint()


CASES = [("llama", "norm"), ("llama", "lora"), ("llama", "full"), ("qwen2", "bitfit"), ("qwen2", "lora:r=4,targets=q_proj+v_proj+lm_head")]


@pytest.fixture
def model_folder(request, tiny_llama, tiny_qwen2):
    return {"llama": tiny_llama, "qwen2": tiny_qwen2}[request.param]


@pytest.mark.parametrize("model_folder,trainable", CASES, indirect=["model_folder"], ids=[f"{a}-{t.split(':')[0]}" for a, t in CASES])
def test_mlx_follows_torch(model_folder, trainable):
    te, me = both(model_folder, trainable)
    assert me.backend == "mlx" and me.num_layers == te.num_layers and me.split == te.split
    assert me.names == te.names
    assert me.trainable_numel(1) == te.trainable_numel(1) and me.trainable_numel(2) == te.trainable_numel(2)
    assert_same_trainables(te, me)  # same base weights, same LoRA init (lora_A canonical, lora_B zero)
    tb, mb = te.encode(PROMPTS, LABELS), me.encode(PROMPTS, LABELS)
    assert np.array_equal(tb.input_ids.numpy(), np.array(mb.input_ids))
    assert np.array_equal(tb.target_positions.numpy(), np.array(mb.target_positions))
    assert me.forward_flops(mb) == te.forward_flops(tb)
    for p in ((), PERTURBATION):
        np.testing.assert_allclose(verbalizer_logits(me, mb, p), torch_logits(te, tb, p), rtol=0, atol=LOGIT_TOL)
        a_t, a_m = te.forward_block1(tb, p), me.forward_block1(mb, p)
        assert abs(me.forward_block2(a_m, mb, p) - te.forward_block2(a_t, tb, p)) < LOSS_TOL
    assert me.predict(mb) == te.predict(tb)
    assert_same_trainables(te, me)  # perturbed forwards left no trace
    # a few Rademacher updates, both blocks and whole-model directions: bit-identical replicas
    update = [(Direction(2, 1, s, b, i), c * (s + 1)) for s in range(3) for b, i, c in ((1, 0, 1e-3), (2, 1, -2e-3), (0, 0, 3e-4))]
    for k in range(2):
        te.apply_update(update[k::2])
        me.apply_update(update[k::2])
    assert_same_trainables(te, me)
    np.testing.assert_allclose(verbalizer_logits(me, mb), torch_logits(te, tb), rtol=0, atol=LOGIT_TOL)


@pytest.mark.parametrize("arch", ["qwen3", "mistral"])
def test_mlx_other_llama_family_models(arch, tmp_path, sst2_dir):
    """Qwen3 (q/k norms, explicit head_dim) and Mistral (sliding window 4 on every layer)."""
    from tiny import sst2_vocab, tiny_tokenizer
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    vocab = sst2_vocab()
    common = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160)
    torch.manual_seed(2)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=4, **common))
    model.save_pretrained(tmp_path / arch)
    tiny_tokenizer(vocab).save_pretrained(tmp_path / arch)
    te, me = both(tmp_path / arch, "full")
    assert_same_trainables(te, me)
    tb, mb = te.encode(PROMPTS, LABELS), me.encode(PROMPTS, LABELS)
    np.testing.assert_allclose(verbalizer_logits(me, mb, PERTURBATION), torch_logits(te, tb, PERTURBATION), rtol=0, atol=LOGIT_TOL)


def test_mlx_state_round_trips(tiny_llama):
    _, me = both(tiny_llama, "lora")
    start, snap = me.fingerprint(), me.snapshot()
    arrays = me.trainable_arrays()
    me.apply_update([(Direction(0, 1, 0, 0, 0), 0.1)])
    assert me.fingerprint() != start
    me.restore(snap)
    assert me.fingerprint() == start
    me.apply_update([(Direction(0, 1, 0, 0, 0), 0.1)])
    me.load_trainable(arrays)
    assert me.fingerprint() == start
    with pytest.raises(EdgezoError, match="lacks"):
        me.load_trainable({})
    bad = dict(arrays)
    bad[me.names[0]] = np.zeros((1, 1), np.float32)
    with pytest.raises(EdgezoError, match="shape"):
        me.load_trainable(bad)


def test_mlx_gaussian_updates_close_to_torch(tiny_llama):
    te, me = both(tiny_llama, "norm", distribution="gaussian")
    update = [(Direction(4, 1, 0, b, 0), c) for b, c in ((1, 1e-2), (2, -1e-2))]
    te.apply_update(update)
    me.apply_update(update)
    ta, ma = te.trainable_arrays(), me.trainable_arrays()
    for n in ta:  # torch may fuse the multiply-add: one float32 rounding apart at most
        assert np.all(np.abs(ta[n] - ma[n]) <= np.spacing(np.abs(ta[n]))), n
    tb, mb = te.encode(PROMPTS, LABELS), me.encode(PROMPTS, LABELS)
    np.testing.assert_allclose(verbalizer_logits(me, mb, PERTURBATION), torch_logits(te, tb, PERTURBATION), atol=LOGIT_TOL)


def test_mlx_local_rounds_decrease_the_loss(tiny_llama, sst2_dir):
    _, me = both(tiny_llama, "norm")
    start, end, outs = sst2_loss_before_and_after_spzo(me, sst2_dir)
    for out in outs:
        assert out.forwards1 == 2 * 2 * 2 and out.forwards2 == 2 * 2 * 2 * 4
        assert all(math.isfinite(loss) for loss in out.losses)
    assert end < start - 0.03, (start, end)


# -- errors the user can fix -----------------------------------------------------------------------


@pytest.mark.parametrize("split", [0, 4, 9])
def test_mlx_bad_split(split, tiny_llama):
    with pytest.raises(EdgezoError, match="--split 1..3"):
        build_mlx_executor(JobConfig(model=str(tiny_llama), split=split), get_task("sst2"))


def test_mlx_unsupported_model_type(tmp_path, sst2_dir):
    from tiny import save_tiny

    folder = save_tiny(tmp_path / "tiny-opt", "opt", layers=2, hidden=16)
    with pytest.raises(EdgezoError, match="llama.*qwen2"):
        build_mlx_executor(JobConfig(model=str(folder)), get_task("sst2"))


def test_mlx_bad_distribution_and_trainable(tiny_llama):
    with pytest.raises(EdgezoError, match="distribution"):
        build_mlx_executor(JobConfig(model=str(tiny_llama), distribution="uniform"), get_task("sst2"))
    with pytest.raises(EdgezoError, match="LoRA targets"):
        build_mlx_executor(JobConfig(model=str(tiny_llama), trainable="lora:targets=nothing"), get_task("sst2"))


def test_mlx_executor_rejects_unknown_trainable_names(tiny_llama):
    _, me = both(tiny_llama, "norm")
    with pytest.raises(EdgezoError, match="not in the model"):
        MLXExecutor(me.model, me.tokenizer, 2, ["model.nope.weight"], ("great", "terrible"))


# -- the real default model (by hand: pytest -m slow tests/test_mlx_backend.py) ---------------------


@pytest.mark.slow
def test_mlx_matches_torch_on_smollm2(sst2_dir):
    task = get_task("sst2")
    examples = load_examples(task, sst2_dir, "validation")[:8]
    prompts, labels = [task.prompt(e, "causal") for e in examples], [e.label for e in examples]
    cfg = JobConfig(model=None, trainable="norm")
    te, t_info = build_torch_executor(cfg, task)
    me, m_info = build_mlx_executor(cfg, task)
    assert m_info == t_info and me.fingerprint() == te.fingerprint()
    tb, mb = te.encode(prompts, labels), me.encode(prompts, labels)
    pert = [(Direction(1, 1, 0, 1, 0), 1e-3), (Direction(1, 1, 0, 2, 0, 1), -1e-3)]
    for p in ((), pert):
        np.testing.assert_allclose(verbalizer_logits(me, mb, p), torch_logits(te, tb, p), rtol=0, atol=2e-4)
    assert me.predict(mb) == te.predict(tb)
