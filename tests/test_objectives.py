"""Alignment methods side by side (docs/theory.md §11): closed forms against per-sequence brute
force, the two engines against each other, and ``toysim objectives`` (report, table, bad input).

The brute-force references build every reweighted policy from sequence probabilities
(``tests/reference.py``), never from the library's arrays. Tolerance 1e-12: sums of at most 27
terms of order one, and KLs of ratios of such sums.
"""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toysim
from toysim._cli import main

from . import reference

TOL = 1e-12
REWEIGHTINGS = ["tilt", "dpo", "ipo", "rejection_sampling", "best_of_n"]

POLICY = {
    "kind": "markov",
    "initial_logits": [0.2, -0.1, 0.4],
    "transition_logits": [[0.3, -0.2, 0.1], [1.0, 0.0, -0.5], [0.0, 0.6, -0.3]],
}
GRADED = {
    "format": "toysim.instance/1",
    "vocab_size": 3,
    "horizon": 3,
    "lambda": 1.5,
    "policy": POLICY,
    # graded harm: the number of token-2s read so far, capped at 2, over 2 (three harm levels)
    "harm": {
        "kind": "automaton",
        "start": 0,
        "transitions": [[0, 0, 1], [1, 1, 2], [2, 2, 2]],
        "final_harm": [0.0, 0.5, 1.0],
    },
}


def _instance(data=GRADED):
    return toysim.loads_instance(json.dumps(data))


def _brute(inst):
    """Sequence probabilities of ``π_0`` and the harm of every sequence (lexicographic order)."""
    policy = inst.policy
    probs = reference.sequence_probs(policy, inst.params)
    h = toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon)
    seqs = reference.sequences(policy.vocab_size, policy.horizon)
    return seqs, np.array([probs[y] for y in seqs]), np.asarray(h)


def _kl_profile(seqs, star, base, vocab, horizon):
    """``D_t`` and ``KL`` from two sequence laws given as arrays over ``seqs``."""
    s = dict(zip(seqs, star))
    b = dict(zip(seqs, base))
    out = []
    for t in range(horizon):
        total = 0.0
        for p in reference.sequences(vocab, t):
            ps, pb = reference.prefix_prob(s, p), reference.prefix_prob(b, p)
            if ps == 0:
                continue
            for tok in range(vocab):
                qs = reference.prefix_prob(s, p + (tok,)) / ps
                qb = reference.prefix_prob(b, p + (tok,)) / pb
                if qs > 0:
                    total += ps * qs * np.log(qs / qb)
        out.append(total)
    kl = sum(x * np.log(x / y) for x, y in zip(star, base) if x > 0)
    return np.array(out), kl


def _bon_reference(probs, h, n):
    """Best-of-N by listing every N-tuple of responses: least harm, ties uniform."""
    out = np.zeros_like(probs)
    for tup in itertools.product(range(len(probs)), repeat=n):
        p = np.prod(probs[list(tup)])
        best = min(h[i] for i in tup)
        winners = [i for i in tup if h[i] == best]
        for i in winners:
            out[i] += p / len(winners)
    return out


def _reference_law(name, probs, h, inst, settings):
    lam = inst.lam
    if name in ("tilt", "dpo"):
        w = probs * np.exp(-lam * h)  # DPO with beta_r = lam * beta is the tilt at lambda
    elif name == "ipo":
        g = np.array([np.sum(probs / (1 + np.exp(-settings.beta_r * (h - x)))) for x in h])
        w = probs * np.exp(g / settings.beta)
    elif name == "rejection_sampling":
        w = probs * (h <= settings.threshold)
    else:
        w = _bon_reference(probs, h, settings.n)
    return w / w.sum()


@pytest.fixture(scope="module")
def graded():
    inst = _instance()
    settings = toysim.MethodSettings(n=2, beta=2.0, recovery=[0], steps=60)
    tree = toysim.compare_methods(inst, only=toysim.METHODS, settings=settings, engine="enumerate")
    dp = toysim.compare_methods(inst, only=REWEIGHTINGS, settings=settings, engine="dp")
    return inst, settings, tree, dp


@pytest.mark.parametrize("name", REWEIGHTINGS)
def test_reweightings_match_brute_force_on_both_engines(graded, name):
    inst, settings, tree, dp = graded
    seqs, probs, h = _brute(inst)
    star = _reference_law(name, probs, h, inst, tree.settings)
    d_ref, kl_ref = _kl_profile(seqs, star, probs, 3, 3)
    for out in (tree, dp):
        m = out.methods[name]
        assert m.expected_harm == pytest.approx(float(star @ h), abs=TOL)
        np.testing.assert_allclose(m.kl_by_position, d_ref, atol=TOL)
        assert m.kl == pytest.approx(kl_ref, abs=TOL)
    a, b = tree.methods[name], dp.methods[name]
    np.testing.assert_allclose(a.attack_success, b.attack_success, atol=TOL)
    assert a.depth == b.depth and a.frontier_kl == pytest.approx(b.frontier_kl, abs=1e-10)


def test_best_of_n_kl_host_formula_and_bound(graded):
    inst, _, tree, _ = graded
    seqs, probs, h = _brute(inst)
    for n in (1, 2, 3):
        star = _bon_reference(probs, h, n)
        kl = sum(x * np.log(x / y) for x, y in zip(star, probs) if x > 0)
        assert toysim.best_of_n_kl(h, probs, n) == pytest.approx(kl, abs=TOL)
        assert kl <= toysim.best_of_n_kl_bound(n) + TOL
    assert toysim.best_of_n_kl(h, probs, 1) == 0.0


def test_reweightings_keep_pi0_at_determined_prefixes(graded):
    _, _, tree, _ = graded
    # the graded harm is decided once two token-2s are read; at T = 3 the last position can be
    # determined, and then D_3's only positive terms come from undetermined prefixes: compare the
    # per-prefix KL exactly on the tree
    inst = _instance()
    base = toysim.forward(inst.policy, inst.params)
    seqs, probs, h = _brute(inst)
    masks = toysim.determined_masks(jnp.asarray(h), 3, 3)
    assert any(np.asarray(m).any() for m in masks[:3])
    for log_w in (
        -1.5 * h,
        toysim.best_of_n_log_weights(h, probs, 3),
        toysim.rejection_log_weights(h, probs, 0.5),
    ):
        eq = toysim.reweight(base, jnp.asarray(log_w))
        for t in range(3):
            det = np.asarray(masks[t])
            assert np.all(np.asarray(eq.prefix_kl[t])[det] == 0.0)
            assert np.all(np.asarray(eq.levels.log_cond[t])[det] == np.asarray(base.log_cond[t])[det])


def test_frontier_and_certificates(graded):
    _, _, tree, _ = graded
    for name, m in tree.methods.items():
        assert m.frontier_kl is not None and m.kl >= m.frontier_kl - 1e-10, name
        cert = m.certificate
        assert cert.get("optimum") == "closed form" or cert["converged"], (name, cert)
        if "grad_norm" in cert and cert.get("optimum") == "closed form":
            assert cert["grad_norm"] < 1e-10, (name, cert)
    assert tree.methods["tilt"].kl - tree.methods["tilt"].frontier_kl == pytest.approx(0.0, abs=1e-12)
    # graded harm: IPO and best-of-N are reweightings but not tilts, so strictly above the frontier
    assert tree.methods["ipo"].kl - tree.methods["ipo"].frontier_kl > 1e-9
    assert tree.methods["best_of_n"].kl - tree.methods["best_of_n"].frontier_kl > 1e-9
    # token-wise constraint with every beta_t = 1 is the tilt
    np.testing.assert_allclose(
        tree.methods["token_wise_kl"].kl_by_position, tree.methods["tilt"].kl_by_position, atol=TOL
    )
    # the extras: best-of-N's usual KL formula bounds its exact KL; at the tilt the sequence-KL
    # objective is stationary while the per-token penalty's update is not (the score term)
    bon = tree.methods["best_of_n"]
    assert bon.kl <= bon.extras["kl_bound"] == pytest.approx(np.log(2) - 0.5)
    penalty = tree.methods["token_wise_kl"].extras["per_token_penalty"]
    assert penalty["sequence_kl_grad_norm"] < 1e-12 and penalty["gap_norm"] > 1e-4
    assert penalty["gap_norm"] == pytest.approx(penalty["per_token_update_norm"], abs=1e-12)
    # augmentation's sampled estimate (1000 draws) agrees with the exact term within 5 standard errors
    aug = tree.methods["augmentation"].extras
    est = aug["sampled_estimate"]
    assert aug["augmentation_term"] > 0 and 0 < est["standard_error"]
    assert abs(est["mean"] - aug["augmentation_term"]) <= 5 * est["standard_error"]
    # in-family (Markov) optima can do no better than the optimum over all policies
    for name, m in tree.in_family.items():
        assert m.kl >= m.frontier_kl - 1e-10, name


def test_depth_of_reweightings_is_at_most_the_attack_where_prefixes_are_determined(graded):
    _, _, tree, _ = graded
    base = tree.base_attack_success
    for name in ("tilt", "rejection_sampling", "best_of_n"):
        m = tree.methods[name]
        assert m.depth == toysim.attack_depth(m.attack_success, base)
    assert toysim.attack_depth([0.1, 0.2, 0.9], [0.5, 0.5, 1.0]) == 2
    assert toysim.attack_depth([0.1, 0.2], [0.5, 0.5]) == 2
    assert toysim.attack_depth([0.3, 0.1], [0.5, 0.5]) == 0


def test_token_wise_optimum_minimises_its_loss():
    inst = _instance()
    base = toysim.forward(inst.policy, inst.params)
    h = jnp.asarray(toysim.harm_values(inst.harm, 3, 3))
    betas = jnp.asarray([0.5, 2.0, 0.2])
    star = toysim.token_wise_optimum(base, h, 1.5, betas)
    policy = toysim.TabularPolicy(3, 3)

    def loss(z):
        return toysim.token_wise_loss(toysim.forward(policy, z), base, h, 1.5, betas)

    grad = jax.grad(loss)(tuple(star.log_cond))
    assert max(float(jnp.max(jnp.abs(g))) for g in grad) < 1e-12
    # and it is not the tilt
    tilt = toysim.tilt(base, h, 1.5)
    assert float(jnp.max(jnp.abs(star.log_cond[0] - tilt.levels.log_cond[0]))) > 1e-3


def test_per_token_penalty_gap_is_the_score_term():
    inst = _instance()
    policy = toysim.TabularPolicy(3, 3)
    base = toysim.forward(inst.policy, inst.params)
    theta = tuple(x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)) for x in base.log_cond)
    seq, tok = toysim.per_token_penalty_gap(lambda z: toysim.forward(policy, z), theta, base)
    # the score term by finite differences of sum_t E_{x~pi_theta'}[KL_t(x; theta)] in theta'
    levels = toysim.forward(policy, theta)
    kl_rows = [
        np.sum(np.exp(lc) * (np.asarray(lc) - np.asarray(lb)), axis=-1)
        for lc, lb in zip(levels.log_cond, base.log_cond)
    ]

    def weighted(z):
        lv = toysim.forward(policy, z)
        return sum(jnp.sum(jnp.exp(lv.log_prefix[t]) * kl_rows[t]) for t in range(3))

    score = jax.grad(weighted)(theta)
    for a, b, c in zip(seq, tok, score):
        np.testing.assert_allclose(np.asarray(a) - np.asarray(b), np.asarray(c), atol=1e-12)
    assert max(float(jnp.max(jnp.abs(c))) for c in score) > 1e-3


# ------------------------------------------------------------------------------ command line


def run(tmp_path, capsys, *args, data=GRADED):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(data))
    code = main(["objectives", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report(tmp_path, capsys):
    code, out, err = run(
        tmp_path, capsys, "--only", "tilt,best_of_n,rejection_sampling", "--recovery", "0", "--n", "3"
    )
    assert code == 0, err
    report = json.loads(out)
    assert set(report["methods"]) == {"tilt", "best_of_n", "rejection_sampling"}
    for m in report["methods"].values():
        assert {"expected_harm", "kl", "kl_by_position", "attack_success", "depth", "certificate"} <= set(m)
        assert len(m["kl_by_position"]) == 3 and len(m["attack_success"]) == 3
    assert report["settings"]["n"] == 3 and report["engine"] == "enumerate"
    code, out, err = run(tmp_path, capsys, "--only", "tilt", "--table")
    assert code == 0 and out.startswith("toysim objectives: markov policy") and "tilt" in out


def test_cli_dp_long_horizon(tmp_path, capsys):
    data = {**GRADED, "horizon": 1000}
    code, out, err = run(
        tmp_path, capsys, "--engine", "dp", "--recovery", "0", "--only", "tilt,best_of_n,sft"
    )
    assert code == 0, err
    report = json.loads(out)
    assert len(report["methods"]["tilt"]["kl_by_position"]) == 3
    code, out, err = run(tmp_path, capsys, "--recovery", "0", "--only", "tilt,best_of_n,sft", data=data)
    assert code == 0, err
    report = json.loads(out)
    assert report["engine"] == "dp" and report["skipped"] == {
        "sft": "the DP engine computes the closed-form reweightings only"
    }
    assert len(report["methods"]["best_of_n"]["kl_by_position"]) == 1000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--beta", "0"], "beta"),
        (["--beta", "-1"], "beta"),
        (["--beta-r", "0"], "beta_r"),
        (["--n", "0"], "--n"),
        (["--n", "2.5"], "--n"),
        (["--token-betas", "1,1"], "token betas"),
        (["--token-betas", "1,0,1"], "token betas"),
        (["--only", "bogus"], "bogus"),
        (["--only", ","], "--only"),
        (["--sft-kl", "-1"], "sft_kl"),
        (["--steps", "0"], "--steps"),
        (["--recovery", "7"], "recovery"),
        (["--threshold", "-1", "--only", "rejection_sampling"], "threshold"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, args, needle):
    code, out, err = run(tmp_path, capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("toysim: error:") and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[]", "empty"),
        ("[0, 0, 0]", "one weight per response"),
        ('{"w": 1}', "list of numbers"),
        ("[1, -1]", "list"),
        ("nope", "not valid JSON"),
    ],
)
def test_cli_bad_sft_data(tmp_path, capsys, content, needle):
    data = tmp_path / "d.json"
    if content == "[1, -1]":
        content = json.dumps([1.0] * 26 + [-1.0])
        needle = "non-negative"
    if content == "[]":
        content = json.dumps([0.0] * 27)
    data.write_text(content)
    code, out, err = run(tmp_path, capsys, "--only", "sft", "--sft-data", str(data))
    assert code == 2 and err.count("\n") == 1 and needle in err, err


def test_cli_refuses_pairs_beyond_memory(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOYSIM_MAX_BYTES", "3e4")
    code, out, err = run(tmp_path, capsys, "--only", "dpo")
    assert code == 2 and "pairs" in err and err.count("\n") == 1, err
