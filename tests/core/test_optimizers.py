import numpy as np
import pytest

from core.optimizers import SGD, Adagrad, build_optimizer

N = 7
STEPS = 5


def _problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(N).astype(dtype)
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    return p0, grads


def _run(opt, p0, grads, lr=None, lrs=None):
    """Steps at ``lr``, or at ``lrs[i]`` on step i (the schedule gives every step its rate)."""
    params = p0.copy()
    history = []
    for i, g in enumerate(grads):
        g_before = g.copy()
        opt.step(params, g, lr=lr if lrs is None else lrs[i])
        np.testing.assert_array_equal(g, g_before)   # grads are only read
        history.append(params.copy())
    return history


def _sgd_reference(p0, grads, lr, mu=0.0, nesterov=False, wd=0.0, lrs=None):
    """Per-element loops over the documented equations."""
    p = [float(x) for x in p0]
    v = [0.0] * len(p)
    history = []
    for step, grad in enumerate(grads):
        rate = lr if lrs is None else lrs[step]
        for i in range(len(p)):
            g = float(grad[i]) + wd * p[i]
            v[i] = mu * v[i] + g
            if nesterov:
                p[i] = p[i] - rate * (g + mu * v[i])
            else:
                p[i] = p[i] - rate * v[i]
        history.append(np.array(p))
    return history


def _adagrad_reference(p0, grads, lr, eps, wd=0.0):
    p = [float(x) for x in p0]
    s = [0.0] * len(p)
    history = []
    for grad in grads:
        for i in range(len(p)):
            g = float(grad[i]) + wd * p[i]
            s[i] += g * g
            p[i] = p[i] - lr * g / (s[i] ** 0.5 + eps)
        history.append(np.array(p))
    return history


def _assert_history(got, want, rtol=1e-12):
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14, err_msg=f"step {step}")


@pytest.mark.parametrize("mu,nesterov,wd", [
    (0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0), (0.9, False, 5e-3),
    (0.9, True, 0.0), (0.5, True, 0.1)])
def test_sgd_matches_reference(mu, nesterov, wd):
    p0, grads = _problem(1)
    opt = SGD(momentum=mu, nesterov=nesterov, weight_decay=wd)
    _assert_history(_run(opt, p0, grads, 0.05),
                    _sgd_reference(p0, grads, 0.05, mu, nesterov, wd))
    assert opt.steps == STEPS


def test_plain_sgd_first_step_by_hand():
    params = np.array([1.0, -2.0, 3.0])
    SGD(weight_decay=0.5).step(params, np.array([1.0, 1.0, -1.0]), lr=0.1)
    # g = grad + 0.5 p = [1.5, 0, 0.5]; p -= 0.1 g
    np.testing.assert_allclose(params, [0.85, -2.0, 2.95], rtol=1e-15)


def test_momentum_accumulates_velocity():
    params = np.zeros(2)
    opt = SGD(momentum=0.5)
    for _ in range(3):
        opt.step(params, np.ones(2), lr=1.0)
    # v = 1, 1.5, 1.75 -> p = -(1 + 1.5 + 1.75)
    np.testing.assert_allclose(params, [-4.25, -4.25], rtol=1e-15)
    np.testing.assert_allclose(opt.state_dict()["buffers"]["velocity"], [1.75, 1.75])


def test_the_learning_rate_is_the_step_s_and_the_optimizer_keeps_none():
    p0, grads = _problem(2)
    lrs = [0.1, 0.05, 0.0, 0.2, 0.01]
    opt = SGD(momentum=0.9, nesterov=True, weight_decay=1e-3)
    _assert_history(_run(opt, p0, grads, lrs=lrs),
                    _sgd_reference(p0, grads, None, 0.9, True, 1e-3, lrs=lrs))
    assert not hasattr(opt, "lr") and "lr" not in opt.hyperparameters()   # the schedule's


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adagrad_matches_reference(wd):
    p0, grads = _problem(3)
    opt = Adagrad(eps=1e-3, weight_decay=wd)
    _assert_history(_run(opt, p0, grads, 0.1), _adagrad_reference(p0, grads, 0.1, 1e-3, wd))


def test_adagrad_first_step_is_sign_times_lr():
    params = np.array([0.0, 0.0, 0.0])
    Adagrad().step(params, np.array([3.0, -0.2, 0.0]), lr=0.5)
    np.testing.assert_allclose(params, [-0.5, 0.5, 0.0], rtol=1e-9)


def test_float32_close_to_float64_reference():
    p0, grads = _problem(4, np.float32)
    got = _run(SGD(momentum=0.9, weight_decay=5e-4), p0, grads, 0.05)
    assert got[-1].dtype == np.float32
    _assert_history(got, _sgd_reference(p0, grads, 0.05, 0.9, False, 5e-4), rtol=1e-5)


def test_update_is_in_place_and_buffers_are_reused():
    p0, grads = _problem(5)
    params = p0.copy()
    opt = SGD(momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt.step(params, grads[0], lr=0.05)
    ids = {k: id(v) for k, v in {**opt._state, **opt._scratch}.items()}
    opt.step(params, grads[1], lr=0.05)
    assert ids == {k: id(v) for k, v in {**opt._state, **opt._scratch}.items()}


def test_state_dict_roundtrip_continues_identically():
    p0, grads = _problem(6)
    full = SGD(momentum=0.9, weight_decay=1e-3)
    want = _run(full, p0, grads, 0.05)
    first = SGD(momentum=0.9, weight_decay=1e-3)
    params = p0.copy()
    for g in grads[:2]:
        first.step(params, g, lr=0.05)
    resumed = SGD(momentum=0.9, weight_decay=1e-3)
    resumed.load_state_dict(first.state_dict())
    for g in grads[2:]:
        resumed.step(params, g, lr=0.05)
    np.testing.assert_allclose(params, want[-1], rtol=1e-12)
    assert resumed.steps == STEPS


def test_loaded_state_takes_the_parameters_dtype():
    opt = SGD(momentum=0.5)
    opt.load_state_dict({"name": "sgd", "steps": 3, "buffers": {"velocity": np.full(2, 2.0)}})
    params = np.zeros(2, np.float32)
    opt.step(params, np.ones(2, np.float32), lr=1.0)
    np.testing.assert_array_equal(params, [-2.0, -2.0])   # v = 0.5 * 2 + 1
    assert opt.state_dict()["buffers"]["velocity"].dtype == np.float32


def test_adagrad_state_dict_roundtrip():
    p0, grads = _problem(7)
    want = _run(Adagrad(), p0, grads, 0.1)
    first, params = Adagrad(), p0.copy()
    first.step(params, grads[0], lr=0.1)
    resumed = Adagrad()
    resumed.load_state_dict(first.state_dict())
    for g in grads[1:]:
        resumed.step(params, g, lr=0.1)
    np.testing.assert_allclose(params, want[-1], rtol=1e-12)


def test_state_dict_is_a_copy():
    params = np.zeros(3)
    opt = SGD(momentum=0.9)
    opt.step(params, np.ones(3), lr=0.1)
    state = opt.state_dict()
    opt.step(params, np.ones(3), lr=0.1)
    np.testing.assert_array_equal(state["buffers"]["velocity"], np.ones(3))


def test_load_state_dict_rejects_mismatch():
    sgd_state = SGD(momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="sgd"):
        Adagrad().load_state_dict(sgd_state)
    opt = SGD(momentum=0.9)
    opt.load_state_dict({"name": "sgd", "steps": 1, "buffers": {"velocity": np.zeros(4)}})
    with pytest.raises(ValueError, match="velocity"):
        opt.step(np.zeros(5), np.zeros(5), lr=0.1)
    with pytest.raises(ValueError, match="unknown buffers"):
        SGD().load_state_dict({"name": "sgd", "buffers": {"sum_sq": np.zeros(4)}})


def test_step_rejects_bad_buffers():
    opt = SGD()
    with pytest.raises(ValueError, match="flat 1-D"):
        opt.step(np.zeros((2, 2)), np.zeros((2, 2)), lr=0.1)
    with pytest.raises(ValueError, match="same shape"):
        opt.step(np.zeros(3), np.zeros(4), lr=0.1)
    with pytest.raises(ValueError, match="dtype"):
        opt.step(np.zeros(3), np.zeros(3, np.float32), lr=0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"momentum": 1.0}, "momentum"), ({"weight_decay": -1}, "weight_decay"),
    ({"nesterov": True}, "nesterov"), ({"momentum": True}, "momentum")])
def test_sgd_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SGD(**kwargs)


def test_build_optimizer():
    opt = build_optimizer({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False,
                           "weight_decay": 5e-4})
    assert isinstance(opt, SGD)
    assert (opt.momentum, opt.nesterov, opt.weight_decay) == (0.9, False, 5e-4)
    opt = build_optimizer({"name": "adagrad", "lr": 0.01, "momentum": 0.9, "nesterov": False,
                           "weight_decay": 0.0})
    assert isinstance(opt, Adagrad) and opt.eps == 1e-10 and not hasattr(opt, "lr")
    with pytest.raises(ValueError, match="optimizer 'adam' is not one of sgd, adagrad"):
        build_optimizer({"name": "adam", "lr": 0.1})
    with pytest.raises(ValueError, match="betas"):
        build_optimizer({"name": "sgd", "lr": 0.1, "betas": 0.9})


@pytest.mark.parametrize("workers", [1, 2])
def test_a_buffer_of_many_blocks_is_updated_as_one(workers):
    from core.optimizers import BLOCK
    from layers import parallel
    rng = np.random.default_rng(9)
    n = 3 * BLOCK + 123                               # blocks over two workers, a short last one
    p0, grads = rng.standard_normal(n), [rng.standard_normal(n) for _ in range(3)]
    previous = parallel.workers()
    parallel.set_workers(workers)
    try:
        sgd = _run(SGD(momentum=0.9, nesterov=True, weight_decay=1e-3), p0, grads, 0.05)
        ada = _run(Adagrad(eps=1e-6, weight_decay=1e-2), p0, grads, 0.1)
    finally:
        parallel.set_workers(previous)
    v, p = np.zeros(n), p0.copy()
    for g in grads:                                   # the equations on the whole buffer
        g = g + 1e-3 * p
        v = 0.9 * v + g
        p = p - 0.05 * (g + 0.9 * v)
    np.testing.assert_allclose(sgd[-1], p, rtol=1e-12, atol=1e-15)
    s, p = np.zeros(n), p0.copy()
    for g in grads:
        g = g + 1e-2 * p
        s = s + g * g
        p = p - 0.1 * g / (np.sqrt(s) + 1e-6)
    np.testing.assert_allclose(ada[-1], p, rtol=1e-12, atol=1e-15)
    blocks = _run(SGD(momentum=0.9, nesterov=True, weight_decay=1e-3), p0[:7], [g[:7] for g in
                                                                               grads], 0.05)
    np.testing.assert_array_equal(sgd[-1][:7], blocks[-1])  # blocks, workers: the same bits
